//! A child process whose stdout and stderr are collected as they come,
//! read line by line or waited for with a deadline, and which is stopped
//! when dropped, error paths and panics included.
use std::{
    fs,
    io::{ErrorKind, Read, Write as _},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::procfs::children_of;

/// SIGINT, then SIGKILL after this long.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// The end of stderr quoted in errors.
const STDERR_KEPT: usize = 20;

/// How a [`Process`] is started, and what dropping it does.
#[derive(Default)]
pub struct Setup {
    /// A pipe to its stdin, for [`Process::send`]; /dev/null otherwise.
    pub stdin: bool,
    /// Stdout lines starting with this report a failure: [`Process::line`]
    /// fails on them (the bench's fixtures print `error=…`).
    pub error_prefix: Option<&'static str>,
    /// Gets every byte of stderr as it comes, for investigating (e.g. with
    /// FORKMON_LOG=debug): what errors quote is only its end.
    pub stderr_copy: Option<fs::File>,
    /// Dropping it sends SIGKILL at once: a test is over and forkmon's
    /// watchdog cleans up. Otherwise SIGINT first, so that forkmon stops
    /// its tree itself before the next measurement.
    pub kill_on_drop: bool,
}

pub struct Process {
    /// What it is, for error messages.
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    output: Arc<Output>,
    /// How far [`Process::line`] has read stdout.
    read_to: usize,
    error_prefix: Option<&'static str>,
    /// Started through sudo: signals go through sudo too.
    sudo: bool,
    kill_on_drop: bool,
    exited: Option<(ExitStatus, Instant)>,
}

/// Both streams, all of them, and a wake-up for whoever waits on them: a
/// test looks at all of its output, the bench at each line as it comes.
#[derive(Default)]
struct Output {
    streams: Mutex<Streams>,
    grew: Condvar,
}

#[derive(Default)]
struct Streams {
    stdout: Stream,
    stderr: Stream,
}

#[derive(Default)]
struct Stream {
    bytes: Vec<u8>,
    /// At its end: nothing more will come.
    closed: bool,
}

impl Output {
    fn lock(&self) -> MutexGuard<'_, Streams> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits up to `timeout` for more output.
    fn wait<'a>(
        &self,
        streams: MutexGuard<'a, Streams>,
        timeout: Duration,
    ) -> MutexGuard<'a, Streams> {
        self.grew
            .wait_timeout(streams, timeout)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }
}

impl Stream {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The line at `*from`, which then moves past it: a complete one, or
    /// the last once the stream is closed.
    fn line_at(&self, from: &mut usize) -> Option<String> {
        let rest = &self.bytes[*from..];
        let line = match rest.iter().position(|&b| b == b'\n') {
            Some(end) => {
                *from += end + 1;
                &rest[..end]
            }
            None if self.closed && !rest.is_empty() => {
                *from += rest.len();
                rest
            }
            None => return None,
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        Some(String::from_utf8_lossy(line).into_owned())
    }
}

/// Reads `from` into the stream `which` picks until its end.
fn collect(
    output: &Arc<Output>,
    mut from: impl Read + Send + 'static,
    which: fn(&mut Streams) -> &mut Stream,
    mut copy: Option<fs::File>,
) {
    let output = Arc::clone(output);
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            let n = match from.read(&mut buf) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Ok(n) => n,
                Err(_) => 0,
            };
            if let Some(copy) = copy.as_mut() {
                let _ = copy.write_all(&buf[..n]);
            }
            let mut streams = output.lock();
            let stream = which(&mut streams);
            stream.bytes.extend_from_slice(&buf[..n]);
            stream.closed = n == 0;
            drop(streams);
            output.grew.notify_all();
            if n == 0 {
                break;
            }
        }
    });
}

impl Process {
    /// Starts `cmd` with its stdout and stderr piped (and its stdin, as
    /// `setup` says).
    pub fn start(
        what: impl Into<String>,
        mut cmd: Command,
        setup: Setup,
    ) -> anyhow::Result<Process> {
        let what = what.into();
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if setup.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let sudo = cmd.get_program() == "sudo";
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        let output = Arc::new(Output::default());
        let stdout = child.stdout.take().expect("stdout is piped");
        collect(&output, stdout, |s| &mut s.stdout, None);
        let stderr = child.stderr.take().expect("stderr is piped");
        collect(&output, stderr, |s| &mut s.stderr, setup.stderr_copy);
        Ok(Process {
            what,
            stdin: child.stdin.take(),
            child,
            output,
            read_to: 0,
            error_prefix: setup.error_prefix,
            sudo,
            kill_on_drop: setup.kill_on_drop,
            exited: None,
        })
    }

    /// Its pid (sudo's, when started through sudo).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// All its stdout so far.
    pub fn stdout(&self) -> String {
        self.output.lock().stdout.text()
    }

    /// All its stderr so far.
    pub fn stderr(&self) -> String {
        self.output.lock().stderr.text()
    }

    /// The next stdout line for which `wanted` holds, others skipped. Fails
    /// at `deadline`, on a line with the error prefix, or once the process
    /// has exited and its output is drained.
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
            match self.next_line(left.min(Duration::from_millis(100))) {
                Next::Line(line)
                    if self
                        .error_prefix
                        .is_some_and(|prefix| line.starts_with(prefix)) =>
                {
                    bail!("{}: {line}{}", self.what, self.stderr_note())
                }
                Next::Line(line) if wanted(&line) => return Ok(line),
                Next::Line(_) => {}
                Next::Nothing => self.check_running()?,
                Next::Closed => {
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

    /// The next stdout line, as soon as it comes, if within `timeout`.
    fn next_line(&mut self, timeout: Duration) -> Next {
        let deadline = Instant::now() + timeout;
        let mut streams = self.output.lock();
        loop {
            if let Some(line) = streams.stdout.line_at(&mut self.read_to) {
                return Next::Line(line);
            }
            if streams.stdout.closed {
                return Next::Closed;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Next::Nothing;
            }
            streams = self.output.wait(streams, left);
        }
    }

    /// Waits until `ready(stdout, stderr)` holds, looking again each time
    /// output comes; fails at `deadline` with both.
    pub fn wait_output(
        &self,
        what: &str,
        deadline: Instant,
        ready: impl Fn(&str, &str) -> bool,
    ) -> anyhow::Result<()> {
        let mut streams = self.output.lock();
        loop {
            let (stdout, stderr) = (streams.stdout.text(), streams.stderr.text());
            if ready(&stdout, &stderr) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("timed out waiting for {what}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}");
            }
            streams = self.output.wait(streams, left);
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
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((status, _)) = self.exited {
                return Ok(status);
            }
            if let Some(status) = self.child.try_wait()? {
                self.exited = Some((status, Instant::now()));
            } else if Instant::now() > deadline {
                bail!("{} still running after {timeout:?}", self.what);
            } else {
                thread::sleep(Duration::from_millis(5));
            }
        }
    }

    fn status(&self) -> String {
        self.exited
            .map_or_else(|| "still running".into(), |(status, _)| status.to_string())
    }

    fn stderr_note(&self) -> String {
        let stderr = self.stderr();
        let lines: Vec<&str> = stderr.lines().collect();
        if lines.is_empty() {
            String::new()
        } else {
            let kept = &lines[lines.len().saturating_sub(STDERR_KEPT)..];
            format!("; its stderr: {}", kept.join(" | "))
        }
    }

    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.pid();
        if !self.sudo {
            // SAFETY: kill with a pid we started and have not reaped.
            unsafe { libc::kill(pid, signal) };
            return;
        }
        // sudo relays SIGINT to forkmon; SIGKILL must reach forkmon itself.
        let mut pids = vec![pid.to_string()];
        if signal == libc::SIGKILL {
            pids.extend(children_of(pid).iter().map(i32::to_string));
        }
        // Started through sudo: we are not root.
        let _ = Command::new("sudo")
            .args(["-E", "kill"])
            .arg(format!("-{signal}"))
            .arg("--")
            .args(pids)
            .status();
    }

    /// SIGINT, and SIGKILL if it still runs after [`STOP_GRACE`].
    pub fn stop(&mut self) {
        if self.wait_exit(Duration::ZERO).is_ok() {
            return;
        }
        self.stdin = None;
        self.signal(libc::SIGINT);
        if self.wait_exit(STOP_GRACE).is_ok() {
            return;
        }
        eprintln!("{} ignored SIGINT for {STOP_GRACE:?}: SIGKILL", self.what);
        self.signal(libc::SIGKILL);
        let _ = self.wait_exit(STOP_GRACE);
    }
}

enum Next {
    Line(String),
    /// Not yet.
    Nothing,
    /// Stdout is closed and read to its end.
    Closed,
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.kill_on_drop {
            let _ = self.child.kill();
            let _ = self.child.wait();
        } else {
            self.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn sh(script: &str, setup: Setup) -> Process {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        Process::start("sh", cmd, setup).unwrap()
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[test]
    fn lines_are_read_in_order_skipping_the_unwanted_and_the_last_needs_no_newline() {
        let mut p = sh("printf 'a=1\\r\\nb=2\\nc=3'", Setup::default());
        assert_eq!(p.line(soon(), |l| l.starts_with("b=")).unwrap(), "b=2");
        assert_eq!(p.line(soon(), |_| true).unwrap(), "c=3");
        let end = p.line(soon(), |_| true).unwrap_err().to_string();
        assert!(end.contains("sh closed its output"), "{end}");
        // All of it stays for who looks at the whole.
        assert_eq!(p.stdout(), "a=1\r\nb=2\nc=3");
    }

    #[test]
    fn an_error_line_fails_quoting_the_end_of_stderr() {
        let setup = Setup {
            error_prefix: Some("error="),
            ..Setup::default()
        };
        let mut p = sh("echo oops >&2; echo error=broken; exec sleep 10", setup);
        let e = p.line(soon(), |_| true).unwrap_err().to_string();
        assert!(e.starts_with("sh: error=broken"), "{e}");
        p.wait_output("stderr", soon(), |_, err| err == "oops\n")
            .unwrap();
    }

    #[test]
    fn waits_end_at_their_deadline_and_drop_stops_the_process() {
        let mut p = sh("sleep 10", Setup::default());
        let pid = p.pid();
        let e = p.line(Instant::now(), |_| true).unwrap_err().to_string();
        assert!(e.starts_with("timed out waiting for output of sh"), "{e}");
        assert!(p.wait_output("x", Instant::now(), |_, _| false).is_err());
        drop(p);
        // Reaped: no such process any more (sh has no SIGINT handler).
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn stdin_is_piped_when_asked() {
        let setup = Setup {
            stdin: true,
            ..Setup::default()
        };
        let mut p = sh("read line; echo got=$line", setup);
        p.send(b"hi\n").unwrap();
        assert_eq!(p.line(soon(), |_| true).unwrap(), "got=hi");
        assert!(p.wait_exit(Duration::from_secs(10)).unwrap().success());
    }
}
