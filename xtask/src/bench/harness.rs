//! What the figures share: the bench's context, starting and stopping
//! processes ([`Running`]), waiting with deadlines, timing writes, and
//! reading fixtures' `key=value` lines.
use std::{
    collections::VecDeque,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::Plan;
use crate::{as_root, root_dir, run_checked};

const FIXTURES: &[&str] = &["openat_loop", "checkpoint", "resume", "many_files"];
/// SIGINT, then SIGKILL after this long.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// forkmon loading its eBPF programs, plus touching up to 1 GB.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);
pub const RESUME_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between changes when the delays are 0: lets the previous run end.
pub const SETTLE: Duration = Duration::from_millis(50);
const STDERR_KEPT: usize = 20;
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
    pub fn forkmon(&self, dir: &Path) -> Command {
        let mut cmd = as_root(&self.forkmon);
        cmd.current_dir(dir);
        cmd
    }

    /// `forkmon run --quiet OPTIONS -- FIXTURE ARGS` in `dir`.
    pub fn under_forkmon(
        &self,
        dir: &Path,
        options: &[String],
        fixture: &str,
        args: &[String],
        stdin: bool,
    ) -> anyhow::Result<Running> {
        let mut cmd = self.forkmon(dir);
        cmd.args(["run", "--quiet"])
            .args(options)
            .arg("--")
            .arg(self.bin.join(fixture))
            .args(args);
        Running::start(format!("forkmon run {fixture}"), cmd, stdin)
    }

    /// The fixture alone, no forkmon.
    pub fn direct(&self, dir: &Path, fixture: &str, args: &[String]) -> anyhow::Result<Running> {
        self.direct_with(dir, fixture, args, false)
    }

    pub fn direct_with(
        &self,
        dir: &Path,
        fixture: &str,
        args: &[String],
        stdin: bool,
    ) -> anyhow::Result<Running> {
        let mut cmd = Command::new(self.bin.join(fixture));
        cmd.args(args).current_dir(dir);
        Running::start(fixture.to_string(), cmd, stdin)
    }

    /// Distinct contents, all of one length for one tag length (see
    /// [`write_timed`]).
    pub fn content(&self, tag: &str, k: usize) -> String {
        format!("{tag}{k:05}-{}", self.nonce)
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

// ---------------------------------------------------------------------------
// Processes.

/// A process the bench started (forkmon, or a fixture on its own). Its
/// stdout lines arrive on a channel, the end of its stderr is kept for error
/// messages, and it is stopped — SIGINT, SIGKILL after 5 s — when dropped,
/// error paths included.
pub struct Running {
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    /// Started through sudo: signals go through sudo too.
    sudo: bool,
    exited: Option<(ExitStatus, Instant)>,
}

impl Running {
    pub fn start(
        what: impl Into<String>,
        mut cmd: Command,
        stdin: bool,
    ) -> anyhow::Result<Running> {
        let what = what.into();
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() });
        let sudo = cmd.get_program() == "sudo";
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        let (sender, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let kept = Arc::clone(&stderr);
        let err = child.stderr.take().expect("stderr is piped");
        // For investigating: every stderr line, e.g. with FORKMON_LOG=debug.
        let mut log = std::env::var_os("FORKMON_BENCH_LOG").and_then(|path| {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
        });
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(log) = log.as_mut() {
                    let _ = writeln!(log, "{line}");
                }
                let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                if kept.len() == STDERR_KEPT {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        });
        Ok(Running {
            what,
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
            sudo,
            exited: None,
        })
    }

    /// The next stdout line for which `wanted` holds, others skipped. Fails
    /// at `deadline`, on an `error=` line from a fixture, or once the
    /// process has exited and its output is drained.
    pub fn line(
        &mut self,
        deadline: Instant,
        wanted: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "timed out waiting for output of {}{}",
                    self.what,
                    self.stderr_note()
                );
            }
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(line) if line.starts_with("error=") => {
                    bail!("{}: {line}{}", self.what, self.stderr_note())
                }
                Ok(line) if wanted(&line) => return Ok(line),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => self.check_running()?,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = self.wait_exit(Duration::from_secs(2));
                    bail!(
                        "{} closed its output ({}){}",
                        self.what,
                        self.status(),
                        self.stderr_note()
                    );
                }
            }
        }
    }

    /// Fails when the process has exited (a grace of 1 s lets its last
    /// lines arrive first).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if self.exited.is_none()
            && let Some(status) = self.child.try_wait()?
        {
            self.exited = Some((status, Instant::now()));
        }
        match self.exited {
            Some((status, at)) if at.elapsed() > Duration::from_secs(1) => {
                bail!("{} exited ({status}){}", self.what, self.stderr_note())
            }
            _ => Ok(()),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("stdin is not piped")?;
        stdin.write_all(bytes)?;
        Ok(stdin.flush()?)
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = within(timeout);
        loop {
            if let Some((status, _)) = self.exited {
                return Ok(status);
            }
            if let Some(status) = self.child.try_wait()? {
                self.exited = Some((status, Instant::now()));
            } else if Instant::now() > deadline {
                bail!("{} still running after {timeout:?}", self.what);
            } else {
                thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn status(&self) -> String {
        self.exited
            .map_or_else(|| "still running".into(), |(status, _)| status.to_string())
    }

    fn stderr_note(&self) -> String {
        let kept = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        if kept.is_empty() {
            String::new()
        } else {
            let lines: Vec<&str> = kept.iter().map(String::as_str).collect();
            format!("; its stderr: {}", lines.join(" | "))
        }
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.child.id() as i32;
        if !self.sudo {
            // SAFETY: kill with a pid we started and have not reaped.
            unsafe { libc::kill(pid, signal) };
            return;
        }
        // sudo relays SIGINT to forkmon; SIGKILL must reach forkmon itself.
        let mut pids = vec![pid.to_string()];
        if signal == libc::SIGKILL {
            pids.extend(children_of(pid.into()).iter().map(i64::to_string));
        }
        let _ = as_root("kill")
            .arg(format!("-{signal}"))
            .arg("--")
            .args(pids)
            .status();
    }

    fn stop(&mut self) {
        if self.wait_exit(Duration::ZERO).is_ok() {
            return;
        }
        self.stdin = None;
        self.signal(libc::SIGINT);
        if self.wait_exit(STOP_GRACE).is_ok() {
            return;
        }
        eprintln!(
            "xtask bench: {} ignored SIGINT for {STOP_GRACE:?}: SIGKILL",
            self.what
        );
        self.signal(libc::SIGKILL);
        let _ = self.wait_exit(STOP_GRACE);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn children_of(pid: i64) -> Vec<i64> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
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
