//! Moves into cgroups, done by a thread of their own.
//!
//! Moving a process between cgroups (a write to `cgroup.procs`) takes the
//! kernel's `cgroup_threadgroup_rwsem` for writing, and that waits for an
//! RCU grace period: 7–20 ms on the development VM while a CPU is busy
//! (measured with a write per 20 ms, a process in `pause()`). forkmon's
//! event loop, blocked there, left a resumed program that opened another
//! candidate file right away (Lua's `require` opens the module twice)
//! waiting for its verdict just as long. So the loop hands each move to
//! [`Mover`] and goes on; the program runs meanwhile, as it did before
//! (it was told to run first, then moved).
//!
//! What the session must still guarantee, with moves pending:
//! - **What the child spawned before its move goes with it**: after moving
//!   the child, the thread reads the group it came from and moves whatever
//!   [`Move::sweep`] says belongs to the child (the supervisor's rule:
//!   descendants, orphans, not the checkpoint's start-up). Moves are done
//!   in the order asked, so a move out of a group whose own move is pending
//!   reads it once that is done.
//! - **A kill reaches a pending move**: killing a group cancels the pending
//!   moves into it and the groups nested in it ([`Mover::cancel`]): their
//!   children get SIGKILL at once from the caller, and the thread, when it
//!   gets to them, kills what their sweep would have moved instead of
//!   moving it. The session waits for those children as for the group's
//!   members (`Session::wait_empty`).
//! - **A group's members count its pending moves** ([`Mover::pending_into`]):
//!   the start-up a checkpoint records is read from its group, which the
//!   checkpoint may not have reached yet.
use std::{
    collections::VecDeque,
    os::fd::{AsFd as _, OwnedFd},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread,
};

use nix::{
    errno::Errno,
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::{
    GroupId,
    files::{read_procs, write_file},
};

/// Whether a process found in the group a child left goes with the child.
pub type Sweep = Arc<dyn Fn(i32) -> bool + Send + Sync>;

/// One move: `child` into `into`, then what `sweep` picks in `from`.
pub struct Move {
    pub child: i32,
    pub into: GroupId,
    /// `into`'s directory (a duplicate, the thread's own).
    pub into_dir: OwnedFd,
    /// The group it leaves.
    pub from_dir: OwnedFd,
    pub sweep: Sweep,
}

struct Job {
    id: u64,
    mv: Arc<Move>,
    cancelled: bool,
}

#[derive(Default)]
struct State {
    /// The job being done (first) and those waiting, in order.
    queue: VecDeque<Job>,
    next_id: u64,
    closed: bool,
    /// Tests hold the thread back to see moves pending.
    #[cfg(test)]
    paused: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The thread that moves processes into cgroups (see the module).
pub struct Mover {
    shared: Arc<Shared>,
}

impl Mover {
    pub fn new() -> std::io::Result<Mover> {
        let shared = Arc::new(Shared::default());
        let theirs = Arc::clone(&shared);
        thread::Builder::new()
            .name("forkmon-move".into())
            .spawn(move || work(&theirs))?;
        Ok(Mover { shared })
    }

    /// Queues `mv`; returns at once.
    pub fn push(&self, mv: Move) {
        let mut state = self.shared.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.queue.push_back(Job {
            id,
            mv: Arc::new(mv),
            cancelled: false,
        });
        self.shared.wake.notify_one();
    }

    /// Cancels the pending moves into the groups `doomed` names: the thread
    /// kills what they would have moved. Returns their children, for the
    /// caller to kill now.
    pub fn cancel(&self, doomed: impl Fn(GroupId) -> bool) -> Vec<i32> {
        let mut state = self.shared.lock();
        state
            .queue
            .iter_mut()
            .filter(|job| !job.cancelled && doomed(job.mv.into))
            .map(|job| {
                job.cancelled = true;
                job.mv.child
            })
            .collect()
    }

    /// What the pending moves into `group` will bring: their children and
    /// what their sweeps pick in the groups they come from now.
    pub fn pending_into(&self, group: GroupId) -> Vec<i32> {
        let pending: Vec<Arc<Move>> = self
            .shared
            .lock()
            .queue
            .iter()
            .filter(|job| !job.cancelled && job.mv.into == group)
            .map(|job| Arc::clone(&job.mv))
            .collect();
        let mut pids = Vec::new();
        for mv in pending {
            pids.push(mv.child);
            let left = read_procs(mv.from_dir.as_fd()).unwrap_or_default();
            pids.extend(
                left.into_iter()
                    .filter(|&pid| pid != mv.child && (mv.sweep)(pid)),
            );
        }
        pids
    }

    /// Holds the thread back before its next move, or lets it go on.
    #[cfg(test)]
    pub fn pause(&self, paused: bool) {
        self.shared.lock().paused = paused;
        self.shared.wake.notify_one();
    }
}

impl Drop for Mover {
    fn drop(&mut self) {
        // The thread ends after the move under way, if any: the rest were
        // the session's, which is being torn down.
        let mut state = self.shared.lock();
        state.closed = true;
        state.queue.retain(|_| false);
        self.shared.wake.notify_one();
    }
}

fn work(shared: &Shared) {
    loop {
        let (id, mv) = {
            let mut state = shared.lock();
            loop {
                if state.closed {
                    return;
                }
                #[cfg(test)]
                let paused = state.paused;
                #[cfg(not(test))]
                let paused = false;
                if let Some(job) = state.queue.front().filter(|_| !paused) {
                    break (job.id, Arc::clone(&job.mv));
                }
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        };
        let cancelled = || {
            shared
                .lock()
                .queue
                .iter()
                .any(|job| job.id == id && job.cancelled)
        };
        carry_out(&mv, cancelled);
        let mut state = shared.lock();
        if state.queue.front().is_some_and(|job| job.id == id) {
            state.queue.pop_front();
        }
    }
}

/// Moves the child, then what the sweep picks; once `cancelled`, kills
/// instead (what was moved already is in a killed group, or dies with the
/// child's own SIGKILL, which the canceller sent).
fn carry_out(mv: &Move, cancelled: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    if !cancelled() {
        move_one(mv, mv.child);
    }
    let left = match read_procs(mv.from_dir.as_fd()) {
        Ok(left) => left,
        Err(e) => {
            log::debug!("cannot read the group {} left: {e}", mv.child);
            Vec::new()
        }
    };
    let mut killing = cancelled();
    for pid in left {
        if pid == mv.child || !(mv.sweep)(pid) {
            continue;
        }
        killing = killing || cancelled();
        if killing {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        } else {
            move_one(mv, pid);
            if cancelled() {
                killing = true;
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
    if killing {
        let _ = kill(Pid::from_raw(mv.child), Signal::SIGKILL);
    }
    log::debug!(
        "moved {} into its cgroup in {:?}{}",
        mv.child,
        started.elapsed(),
        if killing { " (killed meanwhile)" } else { "" }
    );
}

fn move_one(mv: &Move, pid: i32) {
    match write_file(
        mv.into_dir.as_fd(),
        "cgroup.procs",
        pid.to_string().as_bytes(),
    ) {
        Ok(()) => {}
        // Gone already: nothing to move.
        Err(e) if e.raw_os_error() == Some(Errno::ESRCH as i32) => {}
        // Its group was killed and removed meanwhile.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV)) => {
            log::debug!("cannot move process {pid} into its cgroup: {e}")
        }
        Err(e) => log::warn!("cannot move process {pid} into its cgroup: {e}"),
    }
}
