//! A `forkmon run` in the background: its output collected as it comes
//! (see [`Process`]), and its process tree found by a marker, for tests
//! that edit files while it runs and for the bench.
use std::{
    ffi::OsStr,
    ops::{Deref, DerefMut},
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::{
    process::{Process, Setup},
    procfs::processes_with_env,
    workspace_dir,
};

/// How long a test waits for something forkmon or the program must print.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// The variable that marks a run's processes: the program inherits it.
const MARK: &str = "FORKMON_TEST_MARK";

/// The binary under test: `FORKMON_BIN` (set by `cargo xtask test`), or the
/// debug build.
pub fn forkmon_bin() -> PathBuf {
    // Relative to the workspace, not to the test's working directory.
    let bin = workspace_dir().join(
        std::env::var_os("FORKMON_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| "target/debug/forkmon".into()),
    );
    assert!(
        bin.is_file(),
        "{} missing: run the tests with `cargo xtask test`",
        bin.display()
    );
    // Tests run it from scratch directories.
    bin.canonicalize().unwrap()
}

/// `forkmon run OPTIONS -- PROGRAM…`, not started yet.
pub struct Run {
    /// Open to more (a process group, a variable for the program).
    pub command: Command,
    marker: String,
}

impl Run {
    /// `forkmon run OPTIONS -- PROGRAM…` in `dir`, where `forkmon` runs the
    /// binary (`sudo -E BINARY` for a caller that is not root). Our
    /// `FORKMON_FILTER` is not passed on, so that the options alone say
    /// what is watched; `NO_COLOR` keeps its messages plain text.
    pub fn new(
        mut forkmon: Command,
        dir: &Path,
        options: impl IntoIterator<Item = impl AsRef<OsStr>>,
        program: impl IntoIterator<Item = impl AsRef<OsStr>>,
    ) -> Run {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let marker = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        forkmon
            .current_dir(dir)
            .arg("run")
            .args(options)
            .arg("--")
            .args(program)
            .env(MARK, &marker)
            .env("NO_COLOR", "1")
            .env_remove("FORKMON_FILTER");
        Run {
            command: forkmon,
            marker,
        }
    }

    pub fn start(self, what: impl Into<String>, setup: Setup) -> anyhow::Result<Forkmon> {
        Ok(Forkmon {
            process: Process::start(what, self.command, setup)?,
            marker: self.marker,
        })
    }
}

/// A running `forkmon run`: a [`Process`] (its output, signals, stop) whose
/// tree can be found.
pub struct Forkmon {
    process: Process,
    /// An environment variable only this run's process tree carries.
    pub marker: String,
}

impl Deref for Forkmon {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.process
    }
}

impl DerefMut for Forkmon {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

/// For tests: the binary under test, failures as panics that show the
/// output, SIGKILL when dropped.
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
        let mut run = Run::new(Command::new(forkmon_bin()), dir, options, program);
        configure(&mut run.command);
        let setup = Setup {
            kill_on_drop: true,
            ..Setup::default()
        };
        run.start("forkmon", setup)
            .unwrap_or_else(|e| panic!("starting forkmon: {e:#}"))
    }

    fn wait_for(&self, what: &str, ready: impl Fn(&str, &str) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        if let Err(e) = self.wait_output(what, deadline, ready) {
            panic!("{e}");
        }
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

    /// Waits for forkmon to exit.
    pub fn wait(&mut self) -> ExitStatus {
        match self.wait_exit(PATIENCE) {
            Ok(status) => {
                // Let the readers catch the last output: the pipes may stay
                // open (a subprocess that escaped), so their end is no sign.
                thread::sleep(Duration::from_millis(50));
                status
            }
            Err(_) => panic!("forkmon did not exit\n{}", self.stderr()),
        }
    }

    /// Live processes (not zombies) of this run's tree, found by marker.
    pub fn tree(&self) -> Vec<i32> {
        processes_with_env(&format!("{MARK}={}", self.marker))
            .into_iter()
            .filter(|&pid| pid != self.pid())
            .collect()
    }
}
