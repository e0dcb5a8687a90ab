//! What the figures share: the bench's context and how it starts forkmon
//! and the fixtures (through the `tests` library's driver, as the
//! integration tests do), waiting with deadlines, timing writes, and
//! reading fixtures' `key=value` lines.
use std::{
    ffi::{OsStr, OsString},
    fs,
    io::Write as _,
    iter,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tests::{
    forkmon::{Forkmon, Run},
    process::{Process, Setup},
};

use super::Plan;
use crate::{as_root, root_dir, run_checked};

const FIXTURES: &[&str] = &[
    "openat_loop",
    "checkpoint",
    "resume",
    "many_files",
    "waiter",
];
/// forkmon loading its eBPF programs, plus touching up to 1 GB.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);
pub const RESUME_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between changes when the delays are 0: lets the previous run end.
pub const SETTLE: Duration = Duration::from_millis(50);
/// Before reading a tree's memory: lets forkmon fork its waiting children.
pub const TREE_SETTLE: Duration = Duration::from_millis(200);

pub struct Bench {
    pub plan: Plan,
    pub forkmon: PathBuf,
    /// Where the fixtures were built.
    pub bin: PathBuf,
    /// Makes the contents written to watched files unique to this run.
    pub nonce: u32,
}

impl Bench {
    /// forkmon, through sudo when we are not root.
    pub fn forkmon(&self, dir: &Path) -> Command {
        let mut cmd = as_root(&self.forkmon);
        cmd.current_dir(dir);
        cmd
    }

    /// `forkmon run --quiet OPTIONS -- PROGRAM…` in `dir`.
    pub fn forkmon_run(
        &self,
        what: impl Into<String>,
        dir: &Path,
        options: &[String],
        program: impl IntoIterator<Item = impl AsRef<OsStr>>,
        stdin: bool,
    ) -> anyhow::Result<Forkmon> {
        let options = iter::once("--quiet").chain(options.iter().map(String::as_str));
        Run::new(as_root(&self.forkmon), dir, options, program).start(what, setup(stdin))
    }

    /// `forkmon run --quiet OPTIONS -- FIXTURE ARGS` in `dir`.
    pub fn under_forkmon(
        &self,
        dir: &Path,
        options: &[String],
        fixture: &str,
        args: &[String],
        stdin: bool,
    ) -> anyhow::Result<Forkmon> {
        let program = iter::once(self.bin.join(fixture).into_os_string())
            .chain(args.iter().map(OsString::from));
        self.forkmon_run(
            format!("forkmon run {fixture}"),
            dir,
            options,
            program,
            stdin,
        )
    }

    /// The fixture alone, no forkmon.
    pub fn direct(&self, dir: &Path, fixture: &str, args: &[String]) -> anyhow::Result<Process> {
        self.direct_with(dir, fixture, args, false)
    }

    pub fn direct_with(
        &self,
        dir: &Path,
        fixture: &str,
        args: &[String],
        stdin: bool,
    ) -> anyhow::Result<Process> {
        let mut cmd = Command::new(self.bin.join(fixture));
        cmd.args(args).current_dir(dir);
        start(fixture, cmd, stdin)
    }

    /// Distinct contents, all of one length for one tag length (see
    /// [`write_timed`]).
    pub fn content(&self, tag: &str, k: usize) -> String {
        format!("{tag}{k:05}-{}", self.nonce)
    }
}

/// A process other than `forkmon run`: a fixture alone, lua, `forkmon
/// trace`.
pub fn start(what: impl Into<String>, cmd: Command, stdin: bool) -> anyhow::Result<Process> {
    Process::start(what, cmd, setup(stdin))
}

/// How the bench runs every process: its stdout lines are read as they
/// come, the end of its stderr is kept for error messages, and it is
/// stopped — SIGINT, SIGKILL after 5 s — when dropped, error paths
/// included, so that nothing of one measurement runs into the next.
pub fn setup(stdin: bool) -> Setup {
    Setup {
        stdin,
        // The fixtures' way to say what failed.
        error_prefix: Some("error="),
        // For investigating: all of stderr, e.g. with FORKMON_LOG=debug.
        stderr_copy: std::env::var_os("FORKMON_BENCH_LOG").and_then(|path| {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
        }),
        kill_on_drop: false,
    }
}

pub fn compile_fixtures(out_dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(out_dir)?;
    let sources = root_dir().join("bench").join("fixtures");
    for name in FIXTURES {
        run_checked(
            Command::new("cc")
                .args(["-O2", "-Wall", "-Wextra", "-o"])
                .arg(out_dir.join(name))
                .arg(sources.join(format!("{name}.c"))),
        )?;
    }
    // A static binary: no stub is loaded into it, so forkmon restarts it.
    run_checked(
        Command::new("cc")
            .args(["-O2", "-Wall", "-Wextra", "-static", "-o"])
            .arg(out_dir.join("reader"))
            .arg(sources.join("reader.c")),
    )?;
    Ok(())
}

/// forkmon holds descriptors per checkpoint: give it (it inherits ours) the
/// hard limit.
pub fn raise_nofile_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Writes `content` and a newline to `file`: CLOCK_MONOTONIC before the
/// open and right after the write returns.
///
/// Over a file of the same length it is one write(2), without truncation:
/// the first event forkmon sees then comes from that write, just before
/// the timestamp, so a restart delay counted from it starts no earlier than
/// the latency does. A truncating open would start it before the write.
///
/// The write runs at real-time priority: forkmon, woken by it, must not run
/// on this CPU between the write and the clock read (it would make the
/// latency look shorter by as long as it runs).
pub fn write_timed(file: &Path, content: &str) -> std::io::Result<(i64, i64)> {
    let data = format!("{content}\n");
    let same_length = fs::metadata(file).is_ok_and(|m| m.len() == data.len() as u64);
    let unpreempted = RealTime::enter();
    let before = monotonic_ns();
    let mut f = if same_length {
        fs::OpenOptions::new().write(true).open(file)?
    } else {
        fs::File::create(file)?
    };
    f.write_all(data.as_bytes())?;
    let written = monotonic_ns();
    // Not a moment longer: holding the CPU would delay forkmon, too.
    drop(unpreempted);
    drop(f);
    Ok((before, written))
}

/// This thread at `SCHED_FIFO` until dropped (the bench runs as root).
struct RealTime;

impl RealTime {
    fn enter() -> RealTime {
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: sets this thread's policy from a valid sched_param.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
            eprintln!(
                "xtask bench: cannot raise the writer's priority: {}",
                std::io::Error::last_os_error()
            );
        }
        RealTime
    }
}

impl Drop for RealTime {
    fn drop(&mut self) {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: as above.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
    }
}

/// Polls `done` every 5 ms until it holds, fails, or `timeout` passes.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = within(timeout);
    while !done()? {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

pub fn within(timeout: Duration) -> Instant {
    Instant::now() + timeout
}

pub fn tempdir() -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("forkmon-bench-")
        .tempdir()
        .context("cannot create a temporary directory")
}

/// CLOCK_MONOTONIC in ns: the clock the fixtures print.
pub fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// `key=value` from a fixture's line.
pub fn number(line: &str, key: &str) -> anyhow::Result<f64> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .and_then(|value| value.parse().ok())
        .with_context(|| format!("no number {key}= in {line:?}"))
}
