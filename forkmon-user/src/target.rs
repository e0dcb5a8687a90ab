//! The program under observation, as `run` and `trace` both start it: paused
//! until the eBPF program tracks it, so not one of its opens is missed,
//! then released to exec as the invoking user.
use std::{collections::HashMap, ffi::OsString};

use anyhow::Context as _;
use forkmon_common::{OpenRecord, ProcessRecord, record_kind};
use nix::unistd::Pid;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::{launcher, loader::Probes, paths::PathResolver};

/// The signals a command reacts to. Set up before the program is spawned,
/// so its exit cannot slip by unnoticed.
pub struct Signals {
    pub child: Signal,
    pub interrupt: Signal,
    pub terminate: Signal,
    pub hangup: Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            child: signal(SignalKind::child())?,
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }
}

/// The running program: its pid, and where its processes' relative paths
/// lead.
pub struct Target {
    pub pid: Pid,
    /// `CLOCK_MONOTONIC` when it was released: the records' time zero.
    pub started_ns: u64,
    paths: PathResolver,
    /// Each process's parent, as forked: kept after either exits, so that
    /// an orphan (or a short-lived process whose record arrives late) still
    /// tells where it came from.
    parents: HashMap<u32, u32>,
}

impl Target {
    /// Spawns the program paused, lets `place` put it where it belongs
    /// while it cannot run yet (a cgroup), has `probes` track it, and lets
    /// it exec. Nothing is left behind if any step fails.
    pub fn launch(
        probes: &mut Probes,
        argv: &[OsString],
        setup: &launcher::Setup,
        place: impl FnOnce(Pid) -> anyhow::Result<()>,
    ) -> anyhow::Result<Target> {
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        // A paused child that is dropped (on an error below) exits.
        let paused = launcher::spawn_paused(argv, setup)?;
        let pid = paused.pid();
        place(pid)?;
        probes.track(pid.as_raw() as u32)?;
        let started_ns = monotonic_ns();
        if let Err(e) = paused.release() {
            probes.untrack(pid.as_raw() as u32);
            return Err(e.into());
        }
        Ok(Target {
            pid,
            started_ns,
            paths: PathResolver::new(pid.as_raw() as u32, cwd),
            parents: HashMap::new(),
        })
    }

    /// A process of the tree forked, changed directory or exited: what the
    /// path resolver needs to know.
    pub fn on_process(&mut self, record: &ProcessRecord) {
        match record.kind {
            record_kind::FORK => {
                self.paths.on_fork(record.pid, record.ppid);
                self.parents.insert(record.pid, record.ppid);
            }
            record_kind::CHDIR => self.paths.on_chdir(record.pid),
            record_kind::EXIT => self.paths.on_exit(record.pid),
            _ => {}
        }
    }

    /// `pid`'s parent, grandparent, … within the tree, nearest first.
    pub fn ancestors(&self, pid: u32) -> Vec<i32> {
        let mut ancestors = Vec::new();
        let mut pid = pid;
        // Bounded: pids are reused, and a reused one may close a loop.
        while let Some(&parent) = self.parents.get(&pid) {
            if ancestors.len() >= 256 {
                break;
            }
            ancestors.push(parent as i32);
            pid = parent;
        }
        ancestors
    }

    /// The absolute path `open` opened, if it can be known.
    pub fn resolve(&mut self, open: &OpenRecord) -> Option<std::path::PathBuf> {
        self.paths.resolve(open)
    }
}

/// `CLOCK_MONOTONIC` in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}
