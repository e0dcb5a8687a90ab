//! Containment of the program's process tree with cgroup v2.
//!
//! # Layout
//!
//! Every forkmon run owns a *session* cgroup, `forkmon-<pid>`, created under
//! forkmon's own cgroup v2 (the `0::/path` line of `/proc/self/cgroup`, found
//! in the hierarchy mounted with fstype `cgroup2` in `/proc/self/mountinfo`;
//! `/sys/fs/cgroup` on a pure v2 system, `/sys/fs/cgroup/unified` on a hybrid
//! one). Below it, groups nest like the checkpoints: the child a checkpoint
//! runs goes into a new group nested in the checkpoint's group, so the group
//! of a checkpoint's child contains every later checkpoint, everything they
//! spawned, and anything that escaped with `setsid` or a double fork.
//! Killing all of that is one write of `1` to the group's `cgroup.kill`
//! (Linux ≥ 5.14; older kernels fall back to signalling every pid listed in
//! `cgroup.procs` until the subtree is empty).
//!
//! No controllers are enabled anywhere, so the "no internal processes" rule
//! of cgroup v2 does not apply and a group may hold processes and children.
//!
//! # Depth
//!
//! A run may nest 1000 groups and more. No long path is ever built: every
//! group keeps an open directory fd (so a `Session` holds one fd per live
//! group: forkmon's `RLIMIT_NOFILE` soft limit must leave room for that) and
//! children are made with `mkdirat`/`openat` relative to their parent's fd,
//! with short names (`c<n>`). The kernel limits nesting only through
//! `cgroup.max.depth` and `cgroup.max.descendants` ("max", i.e. unlimited,
//! by default). The session sets its own to "max"; a limit set on one of its
//! ancestors is left alone and makes [`Session::new_child`] fail with
//! [`CgroupError::Limit`].
//!
//! # Zombies
//!
//! Measured on Linux 6.18 (test `zombies_do_not_keep_cgroup_populated`): a
//! killed process that its parent has not reaped yet does **not** keep its
//! cgroup populated. A task leaves its cgroup's population count in
//! `cgroup_exit()`, before it turns into a zombie; `cgroup.events` says
//! `populated 0`, `cgroup.procs` no longer lists it, and `rmdir` succeeds
//! while the zombie still waits for its parent. So [`Session::kill`] waits
//! for `populated 0` of the killed group (woken by `poll(POLLPRI)` on
//! `cgroup.events`) and removes the directories right away; a checkpoint
//! reaping its killed child later is not needed for that. Only a process
//! that does not die (uninterruptible sleep, say) delays removal: `kill`
//! then gives up after [`KILL_TIMEOUT`] with [`CgroupError::KillTimeout`]
//! and leaves the killed groups to [`Session::reap_empty`], [`Drop`], or the
//! watchdog.
//!
//! # Watchdog
//!
//! [`Session::create`] starts a watchdog that cleans the session up when
//! forkmon dies, even by SIGKILL: forkmon re-executed, see
//! [`crate::watchdog`]. It does so with [`clean_up_session`]. A session
//! whose forkmon and watchdog were killed together is removed by the next
//! forkmon run: see `stale`.
//!
//! # Rooms
//!
//! - `session`: the session, its groups, killing and waiting;
//! - `hierarchy`: where the cgroup v2 hierarchy and forkmon's own cgroup are;
//! - `files`: the cgroup files and directories, one operation each;
//! - `mover`: the thread that moves processes into groups, off the event
//!   loop (a move waits for an RCU grace period);
//! - `teardown`: killing and removing a whole session directory from
//!   outside the session (the watchdog, a stale session);
//! - `stale`: telling the sessions of dead runs from live ones, and
//!   removing them.
use std::{io, time::Duration};

mod files;
mod hierarchy;
mod mover;
mod session;
mod stale;
mod teardown;
#[cfg(test)]
mod testing;

pub use mover::Sweep;
pub use session::{GroupId, Session};
pub use stale::hold_session;
pub use teardown::clean_up_session;

/// How long [`Session::kill`] waits for killed processes to disappear.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("needs cgroup v2: mount it with `sudo mount -t cgroup2 none /sys/fs/cgroup/unified`")]
    NoCgroup2,
    /// `path` is the cgroup directory or file acted on (elided below the
    /// first level of a deep session: see `Session::describe`); `pid`, the
    /// process that was to be moved into it, if that was the action. One
    /// variant for both, so that callers tell an error's cause (`ESRCH`: the
    /// process is gone already) in one place whatever the operation.
    #[error(
        "{what}{} {path}: {error}",
        .pid.map(|pid| format!(" {pid} into")).unwrap_or_default()
    )]
    Io {
        what: &'static str,
        path: String,
        pid: Option<i32>,
        error: io::Error,
    },
    #[error(
        "cannot create a cgroup in {0}: nesting limit reached \
         (see cgroup.max.depth and cgroup.max.descendants of its ancestors)"
    )]
    Limit(String),
    #[error("this cgroup was killed")]
    StaleGroup,
    #[error("processes in {path} still alive {secs} s after SIGKILL: {pids}")]
    KillTimeout {
        path: String,
        secs: u64,
        pids: String,
    },
    #[error("cannot start the cgroup watchdog: {0}")]
    Watchdog(io::Error),
    #[error("cgroup session {0} is already removed")]
    Closed(String),
}

impl CgroupError {
    fn io(what: &'static str, path: impl Into<String>, error: impl Into<io::Error>) -> Self {
        CgroupError::Io {
            what,
            path: path.into(),
            pid: None,
            error: error.into(),
        }
    }

    /// Moving process `pid` into the cgroup at `path` failed.
    fn moving(pid: i32, path: String, error: io::Error) -> Self {
        CgroupError::Io {
            what: "cannot move process",
            path,
            pid: Some(pid),
            error,
        }
    }

    fn kill_timeout(path: String, secs: Duration, pids: &[i32]) -> Self {
        const SHOWN: usize = 10;
        let mut list: Vec<String> = pids.iter().take(SHOWN).map(i32::to_string).collect();
        if pids.len() > SHOWN {
            list.push(format!("and {} more", pids.len() - SHOWN));
        }
        CgroupError::KillTimeout {
            path,
            secs: secs.as_secs(),
            pids: list.join(", "),
        }
    }
}
