//! `cargo xtask`: set-up, build, run and test forkmon from a checkout.
//!
//! Every command first makes sure the machine has what building the eBPF
//! object and running the tests needs, so a fresh clone needs nothing but
//! `cargo xtask run -- …` or `cargo xtask test`.
use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod bench;
mod setup;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Developer tasks for forkmon")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks: Debian packages (LLVM dev
    /// libraries for bpf-linker, test interpreters), nightly rust-src,
    /// bpf-linker. Idempotent.
    Setup,
    /// Build forkmon (with its embedded eBPF object).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build and run forkmon with ARGS, through `sudo -E` when not root.
    ///
    /// Example: cargo xtask run -- trace -- python3 -c 'import json'
    Run {
        #[arg(long)]
        release: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Unit tests, clippy (warnings denied) for every crate including the
    /// eBPF one, rustfmt check, then the integration tests (as root).
    Test {
        /// Extra arguments for `cargo test` of the integration tests (a
        /// test name filter, `--nocapture`, …).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Benchmark forkmon against baselines measured in the same run; prints
    /// a table and writes target/bench/report.json (as root: `sudo -E`).
    Bench {
        /// A short run (under 3 minutes) with fewer sizes and repetitions.
        #[arg(long)]
        quick: bool,
        /// Only these figures, by number (e.g. `--only 3,6`); the others
        /// are left out of the table and the report.
        #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u8).range(1..=8))]
        only: Vec<u8>,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse().task) {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn run(task: Task) -> anyhow::Result<()> {
    match task {
        Task::Setup => setup::run(setup::Mode::Always),
        Task::Build { release } => {
            setup::run(setup::Mode::IfMissing)?;
            build(release).map(drop)
        }
        Task::Run { release, args } => {
            setup::run(setup::Mode::IfMissing)?;
            let forkmon = build(release)?;
            let mut cmd = as_root(&forkmon);
            cmd.args(args);
            let status = cmd.status().context("running forkmon")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Test { args } => {
            setup::run(setup::Mode::IfMissing)?;
            test(&args)
        }
        Task::Bench { quick, only } => bench::run(quick, &only),
    }
}

fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root_dir());
    cmd
}

pub fn run_checked(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Effective uid 0, read from /proc so xtask needs no libc bindings.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// `program`, run through `sudo -E` when we are not root.
pub fn as_root(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg("-E").arg(program);
        cmd
    }
}

fn build(release: bool) -> anyhow::Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--package", "forkmon-user"]);
    if release {
        cmd.arg("--release");
    }
    run_checked(&mut cmd)?;
    Ok(root_dir()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("forkmon"))
}

fn test(extra: &[OsString]) -> anyhow::Result<()> {
    run_checked(cargo().args(["fmt", "--all", "--check"]))?;
    run_checked(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "forkmon-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate only builds for the BPF target, with nightly.
    run_checked(
        Command::new("rustup")
            .env_remove("RUSTC")
            .env_remove("CARGO")
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--package",
                "forkmon-ebpf",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ])
            .current_dir(root_dir().join("forkmon-ebpf")),
    )?;
    let forkmon = build(false)?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--exclude", "forkmon-ebpf"])
        .env("FORKMON_BIN", &forkmon)
        .args(extra);
    if !is_root() {
        // The integration tests load BPF: run every test binary as root.
        cmd.env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", "sudo -E");
    }
    run_checked(&mut cmd)
}
