//! Install what building and testing forkmon needs, idempotently.
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::{as_root, run_checked};

/// Test targets and build inputs from Debian. The LLVM packages are added
/// with the major version of the nightly rustc's LLVM.
const PACKAGES: &[&str] = &[
    "libzstd-dev",
    "zlib1g-dev",
    "gcc",
    "libc6-dev",
    "lua5.4",
    "tcc",
    "perl",
    "ruby",
    "util-linux", // setpriv, for the not-root test
];

#[derive(PartialEq, Eq)]
pub enum Mode {
    /// `cargo xtask setup`: check everything and say so.
    Always,
    /// Before build/run/test: stay quiet when nothing is missing.
    IfMissing,
}

pub fn run(mode: Mode) -> anyhow::Result<()> {
    let llvm_major = nightly_llvm_major()?;
    let mut packages: Vec<String> = PACKAGES.iter().map(|p| p.to_string()).collect();
    packages.push(format!("llvm-{llvm_major}-dev"));
    packages.push(format!("libpolly-{llvm_major}-dev"));
    if which::which("python3").is_err() {
        packages.push("python3".into());
    }
    // The restart tests' programs, from Debian where the machine has none
    // of its own (this one has node from NodeSource, which Debian's
    // nodejs would conflict with).
    for (program, package) in [
        ("node", "nodejs"),
        ("java", "default-jre-headless"),
        ("make", "make"),
    ] {
        if which::which(program).is_err() {
            packages.push(package.into());
        }
    }
    if !python_makes_venvs() {
        // Debian's python3 makes virtual environments only with it.
        packages.push("python3-venv".into());
    }
    let missing: Vec<String> = packages
        .into_iter()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        say(&mode, "Debian packages: all installed");
    } else {
        eprintln!(
            "xtask setup: installing Debian packages: {}",
            missing.join(" ")
        );
        run_checked(as_root("apt-get").args(["update", "-q"]))?;
        run_checked(
            as_root("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }

    if rust_src_dir()?.join("core").is_dir() {
        say(&mode, "nightly rust-src: installed");
    } else {
        eprintln!("xtask setup: adding the nightly rust-src component (eBPF builds core)");
        run_checked(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    let wanted = format!("llvm-{llvm_major}");
    match bpf_linker_llvm() {
        Some(built_with) if built_with == wanted => {
            say(&mode, &format!("bpf-linker: installed ({wanted})"))
        }
        found => {
            eprintln!(
                "xtask setup: installing bpf-linker against {wanted} (found: {}), about a minute",
                found.as_deref().unwrap_or("none")
            );
            run_checked(
                Command::new("cargo")
                    .args([
                        "install",
                        "bpf-linker",
                        "--locked",
                        "--force",
                        "--no-default-features",
                    ])
                    .args(["--features", &wanted])
                    .env("LLVM_PREFIX", format!("/usr/lib/llvm-{llvm_major}"))
                    .env_remove("RUSTC")
                    .env_remove("CARGO"),
            )?;
            std::fs::write(stamp_path()?, &wanted).context("recording bpf-linker's LLVM")?;
        }
    }
    python_packages(&mode)
}

/// Where the tests find the Python packages they run (numpy, pytest): a
/// virtual environment of its own, so that neither the system's Python
/// nor the user's is changed.
pub const NUMPY_VENV: &str = "target/pyenv";

/// From PyPI: numpy, for the tests of programs with idle worker threads
/// (`import numpy` starts OpenBLAS's pool), and pytest, for the test loop
/// example (examples/pytest-loop).
const PYTHON_PACKAGES: &[&str] = &["numpy", "pytest"];

fn python_packages(mode: &Mode) -> anyhow::Result<()> {
    let venv = crate::root_dir().join(NUMPY_VENV);
    let python = venv.join("bin/python");
    let imports = format!("import {}", PYTHON_PACKAGES.join(", "));
    let has_them = |python: &std::path::Path| {
        Command::new(python)
            .args(["-c", &imports])
            .output()
            .is_ok_and(|out| out.status.success())
    };
    let names = PYTHON_PACKAGES.join(" ");
    if has_them(&python) {
        say(mode, &format!("{names}: installed ({NUMPY_VENV})"));
        return Ok(());
    }
    eprintln!("xtask setup: installing {names} from PyPI into {NUMPY_VENV}");
    if !python.is_file() {
        run_checked(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run_checked(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PYTHON_PACKAGES),
    )?;
    if !has_them(&python) {
        bail!("{names} installed into {NUMPY_VENV}, but its python cannot import them");
    }
    Ok(())
}

/// Whether `python3` can make a virtual environment (Debian's needs the
/// python3-venv package for ensurepip). False without a python3: Debian's
/// then comes without it.
fn python_makes_venvs() -> bool {
    Command::new("python3")
        .args(["-c", "import ensurepip, venv"])
        .output()
        .is_ok_and(|out| out.status.success())
}

fn say(mode: &Mode, what: &str) {
    if *mode == Mode::Always {
        eprintln!("xtask setup: {what}");
    }
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// bpf-linker must link with the same LLVM major as the nightly rustc that
/// emits the bitcode; read it rather than hard-code it.
fn nightly_llvm_major() -> anyhow::Result<u32> {
    let version = output(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]))
        .context("the nightly toolchain is needed to build the eBPF object")?;
    version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|major| major.trim().parse().ok())
        .context("`rustc +nightly -vV` printed no LLVM version")
}

fn rust_src_dir() -> anyhow::Result<PathBuf> {
    let sysroot =
        output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))?;
    Ok(PathBuf::from(sysroot.trim()).join("lib/rustlib/src/rust/library"))
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

/// Where xtask records which LLVM the installed bpf-linker was built with
/// (bpf-linker does not say).
fn stamp_path() -> anyhow::Result<PathBuf> {
    let linker = which::which("bpf-linker").context("bpf-linker not in PATH after install")?;
    Ok(linker.with_file_name(".bpf-linker-llvm"))
}

/// The LLVM the installed bpf-linker was built with, if one is installed.
/// One installed by hand (no stamp) is trusted if it runs.
fn bpf_linker_llvm() -> Option<String> {
    let linker = which::which("bpf-linker").ok()?;
    Command::new(&linker)
        .arg("--version")
        .output()
        .ok()?
        .status
        .success()
        .then_some(())?;
    match std::fs::read_to_string(linker.with_file_name(".bpf-linker-llvm")) {
        Ok(stamp) => Some(stamp.trim().to_string()),
        Err(_) => nightly_llvm_major().ok().map(|m| format!("llvm-{m}")),
    }
}
