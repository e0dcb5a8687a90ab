//! Builds the two artifacts the `forkmon` binary embeds, so that `cargo
//! build` or `cargo install` yields one self-contained executable: the eBPF
//! object (by aya-build, with nightly) and the LD_PRELOAD stub (a cdylib,
//! which cargo cannot depend on directly).
//!
//! Both are nested cargo builds. Their output goes to logs under OUT_DIR,
//! named (with their last lines) only when they fail: aya-build forwards
//! every line of its cargo as a `cargo:warning`, which made each build of
//! forkmon print ~40 "warning:" lines of progress. Cargo's own progress bar
//! already shows the build script running.
use std::{
    env,
    fs::{self, File},
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, anyhow, bail};
use aya_build::{Package, Toolchain};

/// The build script runs itself with this argument to build the eBPF
/// object: aya-build prints to our stdout, which cargo reads, and a child's
/// stdout is ours to sort.
const EBPF_ONLY: &str = "--build-ebpf";

/// Lines of a failed build's log shown with its path.
const TAIL: usize = 30;

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", manifest_dir.display()))?;
    if env::args().nth(1).as_deref() == Some(EBPF_ONLY) {
        return build_ebpf(workspace);
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR").context("OUT_DIR")?);
    build_ebpf_quietly(&out_dir)?;
    build_stub(workspace, &out_dir)
}

/// Runs [`build_ebpf`] in a child: cargo directives pass on to cargo, and
/// aya-build's `cargo:warning` lines (the nested cargo's output) go to the
/// log.
fn build_ebpf_quietly(out_dir: &Path) -> anyhow::Result<()> {
    let log_path = out_dir.join("ebpf-build.log");
    let mut log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let me = env::current_exe().context("locating the build script")?;
    let output = Command::new(me)
        .arg(EBPF_ONLY)
        .stdin(Stdio::null())
        .output()
        .context("running the eBPF build")?;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        match line
            .strip_prefix("cargo:warning=")
            .or_else(|| line.strip_prefix("cargo::warning="))
        {
            Some(text) => writeln!(log, "{text}")?,
            None if line.starts_with("cargo:") => println!("{line}"),
            None => writeln!(log, "{line}")?,
        }
    }
    // Its own error, if any, after the output that led to it.
    log.write_all(&output.stderr)?;
    drop(log);
    if !output.status.success() {
        bail!(
            "building the eBPF programs failed (run `cargo xtask setup` if bpf-linker or \
             rust-src is missing); the whole output is in {}, its end:\n{}",
            log_path.display(),
            tail(&log_path)
        );
    }
    Ok(())
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
}

fn build_stub(workspace: &Path, out_dir: &Path) -> anyhow::Result<()> {
    for dir in ["forkmon-stub", "forkmon-common"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    // A target dir of its own: the outer cargo holds a lock on the usual one.
    let target_dir = out_dir.join("stub-target");
    let log_path = out_dir.join("stub-build.log");
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
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
        .arg(&target_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
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
        bail!(
            "building the LD_PRELOAD stub failed ({status}); the whole output is in {}, its \
             end:\n{}",
            log_path.display(),
            tail(&log_path)
        );
    }
    let built = target_dir.join("release/libforkmon_stub.so");
    fs::copy(&built, out_dir.join("libforkmon_stub.so"))
        .with_context(|| format!("copying {}", built.display()))?;
    Ok(())
}

/// The last [`TAIL`] lines of a log.
fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL)..].join("\n")
}
