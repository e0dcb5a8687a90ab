//! A `forkmon run` in the background, with its output collected as it
//! comes, for tests that edit files while it runs.
use std::{
    fs,
    io::Read,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use super::forkmon_bin;

/// How long a test waits for something forkmon or the program must print.
pub const PATIENCE: Duration = Duration::from_secs(15);

pub struct Forkmon {
    child: Option<Child>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    /// An environment variable only this run's process tree carries.
    pub marker: String,
}

fn collect(mut from: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

impl Forkmon {
    /// `forkmon run OPTIONS -- PROGRAM…` in `dir`.
    pub fn start(dir: &Path, options: &[&str], program: &[&str]) -> Forkmon {
        Self::start_with(dir, options, program, |_| {})
    }

    pub fn start_with(
        dir: &Path,
        options: &[&str],
        program: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Forkmon {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let marker = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut cmd = Command::new(forkmon_bin());
        cmd.current_dir(dir)
            .arg("run")
            .args(options)
            .arg("--")
            .args(program)
            .env("FORKMON_TEST_MARK", &marker)
            .env("NO_COLOR", "1")
            .env_remove("FORKMON_FILTER")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        configure(&mut cmd);
        let mut child = cmd.spawn().expect("starting forkmon");
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Forkmon {
            child: Some(child),
            stdout,
            stderr,
            marker,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn wait_for(&self, what: &str, ready: impl Fn(&str, &str) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if ready(&self.stdout(), &self.stderr()) {
                return;
            }
            thread::sleep(Duration::from_millis(5));
        }
        panic!(
            "timed out waiting for {what}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.stdout(),
            self.stderr()
        );
    }

    /// Waits until stdout holds `needle` at least `times` times.
    pub fn wait_stdout(&self, needle: &str, times: usize) {
        self.wait_for(&format!("{times}× {needle:?} on stdout"), |out, _| {
            out.matches(needle).count() >= times
        });
    }

    /// Waits until stderr holds `needle` at least `times` times.
    pub fn wait_stderr(&self, needle: &str, times: usize) {
        self.wait_for(&format!("{times}× {needle:?} on stderr"), |_, err| {
            err.matches(needle).count() >= times
        });
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Waits for forkmon to exit.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                // Let the readers catch the last output.
                thread::sleep(Duration::from_millis(50));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "forkmon did not exit\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Live processes (not zombies) of this run's tree, found by marker.
    pub fn tree(&self) -> Vec<i32> {
        processes_with_env(&format!("FORKMON_TEST_MARK={}", self.marker))
            .into_iter()
            .filter(|&pid| pid != self.pid())
            .collect()
    }
}

impl Drop for Forkmon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Pids of live processes whose environment holds `entry`.
pub fn processes_with_env(entry: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for proc_entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = proc_entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(environ) = fs::read(proc_entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|&b| b == 0)
            .any(|var| var == entry.as_bytes())
        {
            let zombie = fs::read_to_string(proc_entry.path().join("stat"))
                .map(|stat| {
                    stat.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(true);
            if !zombie {
                found.push(pid);
            }
        }
    }
    found
}

/// Zombies whose parent is `parent`.
pub fn zombies_of(parent: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for proc_entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = proc_entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(proc_entry.path().join("stat")) else {
            continue;
        };
        let mut fields = stat.rsplit(')').next().unwrap_or("").split_whitespace();
        let (state, ppid) = (fields.next(), fields.next());
        if state == Some("Z") && ppid.and_then(|p| p.parse().ok()) == Some(parent) {
            found.push(pid);
        }
    }
    found
}
