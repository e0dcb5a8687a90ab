//! Builds the two artifacts the `forkmon` binary embeds, so that `cargo
//! build` or `cargo install` yields one self-contained executable: the eBPF
//! object (by aya-build, with nightly) and the LD_PRELOAD stub (a cdylib,
//! which cargo cannot depend on directly).
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", manifest_dir.display()))?;
    build_ebpf(workspace)?;
    build_stub(workspace)
}

fn build_ebpf(workspace: &Path) -> anyhow::Result<()> {
    let ebpf_dir = workspace.join("forkmon-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: "forkmon-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context(
        "building the eBPF programs (run `cargo xtask setup` if bpf-linker or rust-src is missing)",
    )
}

fn build_stub(workspace: &Path) -> anyhow::Result<()> {
    for dir in ["forkmon-stub", "forkmon-common"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR").context("OUT_DIR")?);
    // A target dir of its own: the outer cargo holds a lock on the usual one.
    let target_dir = out_dir.join("stub-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args([
            "build",
            "--package",
            "forkmon-stub",
            "--release",
            "--target-dir",
        ])
        .arg(&target_dir);
    // Settings meant for the outer build (clippy's wrapper, a cross target)
    // must not leak into this one.
    for key in [
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(key);
    }
    // The stub is mapped into every process of the program's tree: keep it
    // small (resident pages count in each checkpoint's memory). It never
    // unwinds (a panic in a signal handler could not), so it needs no
    // libgcc_s either.
    cmd.env("CARGO_PROFILE_RELEASE_PANIC", "abort")
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "s")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("building the LD_PRELOAD stub failed: {status}");
    }
    let built = target_dir.join("release/libforkmon_stub.so");
    std::fs::copy(&built, out_dir.join("libforkmon_stub.so"))
        .with_context(|| format!("copying {}", built.display()))?;
    Ok(())
}
