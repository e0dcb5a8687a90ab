//! The session cgroup of one forkmon run and the groups nested in it:
//! making groups, moving processes into them, killing a group and what is
//! nested in it, waiting for it to empty, removing the directories. See
//! the [module](super) for the layout.
use std::{
    cell::RefCell,
    collections::HashMap,
    fs::File,
    io::Write as _,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    fcntl::{OFlag, open},
    sys::stat::{Mode, fstat, mkdirat},
    unistd::{UnlinkatFlags, unlinkat},
};

use super::{
    CgroupError, KILL_TIMEOUT,
    files::{
        all_procs, dir_fd_populated, dir_populated, kill_and_wait, kill_tree, open_dir_at,
        open_file, read_procs, rmdir_at, unlimit, wait_events_empty, wait_until_empty, write_file,
    },
    hierarchy::own_cgroup_dir,
    mover::{Move, Mover, Sweep},
    stale,
    teardown::clean_up_session,
};
use crate::watchdog::Watchdog;

#[cfg(test)]
mod tests;

/// How long [`Session::end`] waits for the processes other than the
/// program before it leaves them to the watchdog.
const END_GRACE: Duration = Duration::from_millis(200);
/// Up to how many cgroups (about two per checkpoint) [`Session::end`] kills
/// the rest itself rather than leaving it to the watchdog.
const END_HERE_GROUPS: usize = 64;

/// How long a `rmdir` answering `EBUSY` is retried (it should not happen
/// once `cgroup.events` says `populated 0`; this only absorbs races).
const RMDIR_RETRY: Duration = Duration::from_millis(100);

/// How long dropping a session waits for its watchdog to exit.
const WATCHDOG_EXIT_WAIT: Duration = Duration::from_millis(500);

/// A group of a [`Session`]: a cheap handle, valid until the group is
/// killed. Ids are never reused within a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(u64);

/// One cgroup directory of a session.
struct Group {
    /// The directory, open `O_RDONLY | O_DIRECTORY` (usable as the dirfd of
    /// `*at` calls and for `CLONE_INTO_CGROUP`).
    dir: OwnedFd,
    /// Name in the parent directory (`c<id>`; the session's own name for the
    /// root).
    name: String,
    parent: Option<GroupId>,
    children: Vec<GroupId>,
    /// 0 for the session's root.
    depth: usize,
    /// Killed: waiting to be removed, no longer usable.
    dead: bool,
}

/// `cgroup.kill` and `cgroup.events` of one group, opened ahead (see
/// [`Session::prepare`]).
struct Prepared {
    group: GroupId,
    /// None on kernels without `cgroup.kill` (before 5.14).
    kill: Option<File>,
    events: File,
}

/// The session cgroup of one forkmon run, and the groups nested in it.
///
/// Dropping it kills every process of the session and removes every
/// directory (best effort; whatever it cannot remove is left to the
/// watchdog).
pub struct Session {
    /// Absolute path of the session directory (for messages, and for the
    /// watchdog).
    path: PathBuf,
    /// forkmon's own cgroup directory, which holds the session's.
    parent: OwnedFd,
    groups: HashMap<GroupId, Group>,
    next_id: u64,
    /// The session directory is removed.
    closed: bool,
    /// [`Session::end`] left processes still exiting to the watchdog.
    handed_over: bool,
    watchdog: Option<Watchdog>,
    prepared: Option<Prepared>,
    /// The thread that moves processes, made at the first move (see
    /// [`add_process_later`](Self::add_process_later)).
    mover: Option<Mover>,
    /// Children of moves cancelled by a kill: each with the group it was
    /// on its way to, and a pidfd that [`wait_empty`](Self::wait_empty)
    /// waits on, as on the group's members.
    dying: RefCell<Vec<(GroupId, OwnedFd)>>,
}

/// Counts sessions made by this process, so each has its own name.
static SESSIONS: AtomicU32 = AtomicU32::new(0);

const ROOT: GroupId = GroupId(0);

impl Session {
    /// Create the session cgroup under forkmon's own cgroup and start the
    /// watchdog.
    pub fn create() -> Result<Session, CgroupError> {
        Session::create_with(|dir, ino| Some(Watchdog::command(dir, ino)))
    }

    /// [`Session::create`] with another way of running the watchdog (tests
    /// run it from the test binary), or none.
    fn create_with(
        watchdog: impl FnOnce(&Path, u64) -> Option<Command>,
    ) -> Result<Session, CgroupError> {
        let parent_path = own_cgroup_dir()?;
        let parent = open(
            &parent_path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| CgroupError::io("cannot open cgroup", parent_path.display().to_string(), e))?;
        let pid = std::process::id();
        let mode = Mode::from_bits_truncate(0o755);
        let (name, path) = loop {
            let name = match SESSIONS.fetch_add(1, Ordering::Relaxed) {
                0 => format!("forkmon-{pid}"),
                n => format!("forkmon-{pid}-{n}"),
            };
            let path = parent_path.join(&name);
            let error = match mkdirat(&parent, name.as_str(), mode) {
                Ok(()) => break (name, path),
                Err(Errno::EEXIST) if !dir_populated(&path) => {
                    // Left behind by an earlier process with our pid whose
                    // cleanup failed: it is nobody's now.
                    log::warn!("removing stale cgroup {}", path.display());
                    clean_up_session(&path, None)?;
                    match mkdirat(&parent, name.as_str(), mode) {
                        Ok(()) => break (name, path),
                        Err(e) => e,
                    }
                }
                // Busy: a forkmon with our pid in another pid namespace.
                Err(Errno::EEXIST) => continue,
                Err(e) => e,
            };
            return Err(CgroupError::io(
                "cannot create cgroup",
                path.display().to_string(),
                error,
            ));
        };
        let dir = match open_dir_at(parent.as_fd(), name.as_str()) {
            Ok(dir) => stale::hold(dir),
            Err(e) => {
                let _ = unlinkat(&parent, name.as_str(), UnlinkatFlags::RemoveDir);
                return Err(CgroupError::io(
                    "cannot open cgroup",
                    path.display().to_string(),
                    e,
                ));
            }
        };
        let ino = match fstat(&dir) {
            Ok(st) => st.st_ino,
            Err(e) => {
                let _ = unlinkat(&parent, name.as_str(), UnlinkatFlags::RemoveDir);
                return Err(CgroupError::io(
                    "cannot stat cgroup",
                    path.display().to_string(),
                    e,
                ));
            }
        };
        for limit in ["cgroup.max.depth", "cgroup.max.descendants"] {
            if let Err(e) = unlimit(dir.as_fd(), limit) {
                log::debug!("cannot set {}/{limit} to max: {e}", path.display());
            }
        }
        let mut session = Session {
            path,
            parent,
            groups: HashMap::new(),
            next_id: 1,
            closed: false,
            handed_over: false,
            watchdog: None,
            prepared: None,
            mover: None,
            dying: RefCell::default(),
        };
        session.groups.insert(
            ROOT,
            Group {
                dir,
                name,
                parent: None,
                children: Vec::new(),
                depth: 0,
                dead: false,
            },
        );
        // From here on, dropping `session` removes the directory.
        if let Some(command) = watchdog(&session.path, ino) {
            session.watchdog = Some(Watchdog::spawn(command).map_err(CgroupError::Watchdog)?);
        }
        stale::remove_in_background(&session.parent, &parent_path);
        Ok(session)
    }

    /// The session cgroup itself.
    pub fn root(&self) -> GroupId {
        ROOT
    }

    /// Pid of the watchdog process (a child of forkmon), if there is one.
    pub fn watchdog_pid(&self) -> Option<u32> {
        self.watchdog.as_ref().map(Watchdog::pid)
    }

    /// Make a group nested in `parent`.
    pub fn new_child(&mut self, parent: GroupId) -> Result<GroupId, CgroupError> {
        let id = GroupId(self.next_id);
        let name = format!("c{}", id.0);
        let node = self.live(parent)?;
        let depth = node.depth + 1;
        let dir = match mkdirat(&node.dir, name.as_str(), Mode::from_bits_truncate(0o755)) {
            Ok(()) => open_dir_at(node.dir.as_fd(), name.as_str()).map_err(|e| {
                let _ = unlinkat(&node.dir, name.as_str(), UnlinkatFlags::RemoveDir);
                CgroupError::io("cannot open cgroup", self.describe_new(parent, &name), e)
            })?,
            Err(Errno::EAGAIN) => return Err(CgroupError::Limit(self.describe(parent))),
            Err(e) => {
                return Err(CgroupError::io(
                    "cannot create cgroup",
                    self.describe_new(parent, &name),
                    e,
                ));
            }
        };
        self.next_id += 1;
        self.groups.insert(
            id,
            Group {
                dir,
                name,
                parent: Some(parent),
                children: Vec::new(),
                depth,
                dead: false,
            },
        );
        if let Some(node) = self.groups.get_mut(&parent) {
            node.children.push(id);
        }
        Ok(id)
    }

    /// Move process `pid` (all its threads) into `group`.
    pub fn add_process(&self, group: GroupId, pid: i32) -> Result<(), CgroupError> {
        let node = self.live(group)?;
        write_file(node.dir.as_fd(), "cgroup.procs", pid.to_string().as_bytes())
            .map_err(|e| CgroupError::moving(pid, self.describe(group), e))
    }

    /// Moves `child` into `group` from a thread of its own, then what
    /// `sweep` picks among the processes of `from` (what the child started
    /// before its move); returns at once. Moves are done in the order
    /// asked. Until done, [`procs`](Self::procs) counts them as done, and a
    /// kill of `group` (or of a group it is nested in) kills them instead
    /// (see `mover`).
    pub fn add_process_later(
        &mut self,
        group: GroupId,
        child: i32,
        from: GroupId,
        sweep: Sweep,
    ) -> Result<(), CgroupError> {
        let dup = |id: GroupId| -> Result<OwnedFd, CgroupError> {
            self.live(id)?
                .dir
                .try_clone()
                .map_err(|e| CgroupError::moving(child, self.describe(id), e))
        };
        let (into_dir, from_dir) = (dup(group)?, dup(from)?);
        if self.mover.is_none() {
            let mover =
                Mover::new().map_err(|e| CgroupError::moving(child, self.describe(group), e))?;
            self.mover = Some(mover);
        }
        if let Some(mover) = &self.mover {
            mover.push(Move {
                child,
                into: group,
                into_dir,
                from_dir,
                sweep,
            });
        }
        Ok(())
    }

    /// Pids of the processes directly in `group` (not in nested groups),
    /// with those on their way there (see
    /// [`add_process_later`](Self::add_process_later)).
    pub fn procs(&self, group: GroupId) -> Result<Vec<i32>, CgroupError> {
        let node = self.live(group)?;
        // The groups they come from first: a process moved meanwhile is
        // then seen in one or the other.
        let mut pids = match &self.mover {
            Some(mover) => mover.pending_into(group),
            None => Vec::new(),
        };
        let here = read_procs(node.dir.as_fd())
            .map_err(|e| CgroupError::io("cannot read processes of", self.describe(group), e))?;
        pids.retain(|pid| !here.contains(pid));
        pids.extend(here);
        Ok(pids)
    }

    /// Holds moves back (or lets them go on), so that tests see them
    /// pending.
    #[cfg(test)]
    fn pause_moves(&mut self, paused: bool) {
        if self.mover.is_none() {
            self.mover = Some(Mover::new().unwrap());
        }
        if let Some(mover) = &self.mover {
            mover.pause(paused);
        }
    }

    /// Cancels the pending moves into `group` and the groups nested in it,
    /// and kills their children now (see `mover`).
    fn cancel_moves(&mut self, group: GroupId) {
        let Some(mover) = &self.mover else {
            return;
        };
        let doomed = self.nested(group);
        for child in mover.cancel(|into| doomed.contains(&into)) {
            let pid = nix::unistd::Pid::from_raw(child);
            // A pidfd before the signal: the pid is not reused meanwhile.
            // SAFETY: pidfd_open makes a new fd, which we own.
            let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, child, 0) };
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            if pidfd >= 0 {
                // SAFETY: a new fd, ours alone.
                let pidfd =
                    unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(pidfd as i32) };
                self.dying.get_mut().push((group, pidfd));
            }
        }
    }

    /// `group` and the groups nested in it.
    fn nested(&self, group: GroupId) -> Vec<GroupId> {
        let mut all = vec![group];
        let mut i = 0;
        while let Some(id) = all.get(i).copied() {
            if let Some(node) = self.groups.get(&id) {
                all.extend(node.children.iter().copied());
            }
            i += 1;
        }
        all
    }

    /// The processes in `group` and in the groups nested in it (none if it
    /// is unknown or cannot be read).
    pub fn all_procs(&self, group: GroupId) -> Vec<i32> {
        self.live(group)
            .map(|node| all_procs(node.dir.as_fd()))
            .unwrap_or_default()
    }

    /// SIGKILL every process in `group` and in all groups nested in it, wait
    /// until they are dead (zombies count as dead), and remove the groups,
    /// deepest first. The ids of `group` and the groups nested in it are no
    /// longer valid afterwards, except for the root: killing it kills every
    /// process of the session and removes every other group, and the
    /// session stays usable.
    ///
    /// Killing a group again, or one nested in a killed group, only retries
    /// the removal of whatever could not be removed.
    ///
    /// If some process is still alive after [`KILL_TIMEOUT`], this returns
    /// [`CgroupError::KillTimeout`]; the groups stay marked killed and are
    /// removed by [`Session::reap_empty`] once they are empty.
    pub fn kill(&mut self, group: GroupId) -> Result<(), CgroupError> {
        if self.closed {
            return Err(CgroupError::Closed(self.path.display().to_string()));
        }
        if self.groups.get(&group).is_some_and(|node| node.dead) {
            self.reap_empty();
            return Ok(());
        }
        self.kill_now(group)?;
        if !self.wait_empty(group, KILL_TIMEOUT)? {
            let pids = all_procs(self.groups[&group].dir.as_fd());
            return Err(CgroupError::kill_timeout(
                self.describe(group),
                KILL_TIMEOUT,
                &pids,
            ));
        }
        self.reap_empty();
        Ok(())
    }

    /// Sends SIGKILL to every process in `group` and below, and returns
    /// without waiting for them to exit: none of them runs another
    /// instruction of its own, but exiting (freeing memory, closing files)
    /// takes a while. The groups are marked killed; see
    /// [`wait_empty`](Self::wait_empty) and [`reap_empty`](Self::reap_empty).
    pub fn kill_now(&mut self, group: GroupId) -> Result<(), CgroupError> {
        if self.closed {
            return Err(CgroupError::Closed(self.path.display().to_string()));
        }
        self.cancel_moves(group);
        if !self.mark_dead(group) {
            return Ok(());
        }
        match self.prepared(group).and_then(|p| p.kill.as_ref()) {
            Some(mut kill) => kill.write_all(b"1"),
            None => kill_tree(self.groups[&group].dir.as_fd()),
        }
        .map_err(|e| CgroupError::io("cannot kill", self.describe(group), e))
    }

    /// Opens `group`'s `cgroup.kill` and `cgroup.events` now, so that
    /// [`kill_now`](Self::kill_now) and [`wait_empty`](Self::wait_empty) on
    /// it cost a write and a read: opening a cgroup file costs 25–30 µs here
    /// (traced), and a resume without a restart delay paid that on its path
    /// for both. Meant for the group that runs the program; the group
    /// prepared before is forgotten. Best effort: without it, those calls
    /// open the files themselves.
    pub fn prepare(&mut self, group: GroupId) {
        self.prepared = None;
        let Some(node) = self.groups.get(&group).filter(|node| !node.dead) else {
            return;
        };
        let dir = node.dir.as_fd();
        if let Ok(events) = open_file(dir, "cgroup.events", OFlag::O_RDONLY) {
            self.prepared = Some(Prepared {
                group,
                kill: open_file(dir, "cgroup.kill", OFlag::O_WRONLY).ok(),
                events,
            });
        }
    }

    fn prepared(&self, group: GroupId) -> Option<&Prepared> {
        self.prepared.as_ref().filter(|p| p.group == group)
    }

    /// Kills `group` and the groups nested in it from a thread of its own,
    /// one group after the other, the innermost first, each waited for (up
    /// to [`KILL_TIMEOUT`]) before the next is killed.
    ///
    /// For the idle checkpoints of a long chain, one nested group each: a
    /// process's exit walks every ancestor's share of its memory (the
    /// kernel's anon_vma chains, as long as the chain of forks), without a
    /// chance for others to run. Thousands exiting at once hold both CPUs
    /// for seconds; one level at a time, they leave a CPU to the program
    /// that runs meanwhile. The thread opens the groups itself, so this
    /// returns at once. A failure is only logged.
    pub fn kill_in_background(&mut self, group: GroupId) -> Result<(), CgroupError> {
        if self.closed {
            return Err(CgroupError::Closed(self.path.display().to_string()));
        }
        self.cancel_moves(group);
        let Some(node) = self.groups.get(&group).filter(|node| !node.dead) else {
            return Ok(());
        };
        let top = node
            .dir
            .try_clone()
            .map_err(|e| CgroupError::io("cannot kill", self.describe(group), e))?;
        // The nested groups in pre-order: (index of the parent, name).
        let mut nested: Vec<(usize, String)> = Vec::new();
        let mut stack: Vec<(usize, GroupId)> = node.children.iter().map(|&c| (0, c)).collect();
        while let Some((parent, id)) = stack.pop() {
            let Some(child) = self.groups.get(&id) else {
                continue;
            };
            nested.push((parent, child.name.clone()));
            let index = nested.len();
            stack.extend(child.children.iter().map(|&c| (index, c)));
        }
        self.mark_dead(group);
        let path = self.describe(group);
        std::thread::Builder::new()
            .name("forkmon-kill".into())
            .spawn(move || kill_nested(top, &nested, &path))
            .map(drop)
            .map_err(|e| CgroupError::io("cannot kill", self.describe(group), e))
    }

    /// Marks `group` and the groups nested in it killed: whatever happens
    /// next, they are done for. Returns false if it was already (or is
    /// unknown).
    fn mark_dead(&mut self, group: GroupId) -> bool {
        match self.groups.get(&group) {
            Some(node) if !node.dead => {}
            _ => return false,
        }
        let mut stack = vec![group];
        while let Some(id) = stack.pop() {
            if let Some(node) = self.groups.get_mut(&id) {
                node.dead = id != ROOT;
                stack.extend(node.children.iter().copied());
            }
        }
        true
    }

    /// Waits until no process is left in `group` and below (a killed
    /// group, or a live one), up to `timeout`. Returns whether it emptied;
    /// a group already removed is empty.
    pub fn wait_empty(&self, group: GroupId, timeout: Duration) -> Result<bool, CgroupError> {
        let deadline = Instant::now() + timeout;
        if !self.wait_dying(group, deadline) {
            return Ok(false);
        }
        let Some(node) = self.groups.get(&group) else {
            return Ok(true);
        };
        let killed = node.dead || group == ROOT;
        match self.prepared(group) {
            Some(prepared) => {
                wait_events_empty(node.dir.as_fd(), &prepared.events, deadline, killed)
            }
            None => wait_until_empty(node.dir.as_fd(), deadline, killed),
        }
        .map_err(|e| CgroupError::io("cannot wait for", self.describe(group), e))
    }

    /// Waits until the children of the moves into `group` (or a group nested
    /// in it) that a kill cancelled have exited, or `deadline` passes.
    /// Returns whether they have.
    fn wait_dying(&self, group: GroupId, deadline: Instant) -> bool {
        if self.dying.borrow().is_empty() {
            return true;
        }
        let within = self.nested(group);
        let mut all_gone = true;
        self.dying.borrow_mut().retain(|(into, pidfd)| {
            if !within.contains(into) {
                return true;
            }
            let gone = wait_readable(pidfd, deadline);
            all_gone &= gone;
            !gone
        });
        all_gone
    }

    /// Ends the session quickly: kills `program` (the group running the
    /// program) and waits for it, so the program is gone; then kills
    /// everything else and removes the directories if that is over within
    /// [`END_GRACE`]. Otherwise, or with more than [`END_HERE_GROUPS`]
    /// groups, the watchdog finishes the job once forkmon has exited:
    /// thousands of frozen checkpoints take seconds to exit, which a Ctrl-C
    /// should not wait for. Returns whether the session was removed here.
    pub fn end(&mut self, program: Option<GroupId>) -> Result<bool, CgroupError> {
        if self.closed {
            return Ok(true);
        }
        if let Some(group) = program.filter(|g| self.groups.contains_key(g)) {
            self.kill_now(group)?;
            if !self.wait_empty(group, KILL_TIMEOUT)? {
                log::warn!("the program is still exiting after SIGKILL");
            }
        }
        // Killing thousands of processes in one cgroup.kill takes the writer
        // a second (they start exiting and take both CPUs); the watchdog,
        // woken as soon as forkmon is gone, does it instead.
        if self.watchdog.is_some() {
            if self.groups.len() > END_HERE_GROUPS {
                self.handed_over = true;
                return Ok(false);
            }
            self.kill_now(ROOT)?;
            if !self.wait_empty(ROOT, END_GRACE)? {
                self.handed_over = true;
                return Ok(false);
            }
        }
        self.kill_all()?;
        Ok(true)
    }

    /// Kill every process of the session and remove every directory,
    /// including the session's own. The session is unusable afterwards.
    pub fn kill_all(&mut self) -> Result<(), CgroupError> {
        if self.closed {
            return Ok(());
        }
        self.kill(ROOT)?;
        let Some(root) = self.groups.get(&ROOT) else {
            self.closed = true;
            return Ok(());
        };
        if !root.children.is_empty() {
            return Err(CgroupError::io(
                "cannot remove cgroup",
                self.describe(ROOT),
                Errno::EBUSY,
            ));
        }
        rmdir_at(
            self.parent.as_fd(),
            root.name.as_str(),
            Instant::now() + RMDIR_RETRY,
        )
        .map_err(|e| CgroupError::io("cannot remove cgroup", self.describe(ROOT), e))?;
        self.groups.clear();
        self.prepared = None;
        self.mover = None;
        self.dying.get_mut().clear();
        self.closed = true;
        Ok(())
    }

    /// Remove the directories of killed groups that are empty by now,
    /// deepest first (after [`kill_now`](Self::kill_now), or
    /// [`CgroupError::KillTimeout`]). Returns how many killed groups are
    /// still there.
    pub fn reap_empty(&mut self) -> usize {
        // Children of cancelled moves that nobody waited for.
        self.dying
            .get_mut()
            .retain(|(_, pidfd)| !wait_readable(pidfd, Instant::now()));
        let mut dead: Vec<(usize, GroupId)> = self
            .groups
            .iter()
            .filter(|(_, g)| g.dead)
            .map(|(id, g)| (g.depth, *id))
            .collect();
        dead.sort_unstable_by(|a, b| b.cmp(a));
        let deadline = Instant::now() + RMDIR_RETRY;
        let mut left = 0;
        for (_, id) in dead {
            let node = &self.groups[&id];
            let Some(parent) = node.parent.filter(|_| node.children.is_empty()) else {
                left += 1;
                continue;
            };
            // Still exiting: rmdir would only fail (after retrying).
            if dir_fd_populated(node.dir.as_fd()) {
                left += 1;
                continue;
            }
            let parent_dir = self.groups[&parent].dir.as_fd();
            if let Err(e) = rmdir_at(parent_dir, node.name.as_str(), deadline) {
                log::debug!("cannot remove cgroup {}: {e}", self.describe(id));
                left += 1;
                continue;
            }
            self.groups.remove(&id);
            if let Some(parent) = self.groups.get_mut(&parent) {
                parent.children.retain(|c| *c != id);
            }
            if self.prepared.as_ref().is_some_and(|p| p.group == id) {
                self.prepared = None;
            }
        }
        left
    }

    /// The group, if it is still usable.
    fn live(&self, group: GroupId) -> Result<&Group, CgroupError> {
        if self.closed {
            return Err(CgroupError::Closed(self.path.display().to_string()));
        }
        match self.groups.get(&group) {
            Some(node) if !node.dead => Ok(node),
            _ => Err(CgroupError::StaleGroup),
        }
    }

    /// A group's path for messages, without spelling out 1000 levels.
    fn describe(&self, group: GroupId) -> String {
        match self.groups.get(&group) {
            Some(node) if node.depth == 1 => format!("{}/{}", self.path.display(), node.name),
            Some(node) if node.depth > 1 => format!(
                "{}/…/{} (depth {})",
                self.path.display(),
                node.name,
                node.depth
            ),
            _ => self.path.display().to_string(),
        }
    }

    fn describe_new(&self, parent: GroupId, name: &str) -> String {
        match self.groups.get(&parent) {
            Some(node) if node.depth == 0 => format!("{}/{name}", self.path.display()),
            Some(node) => format!(
                "{}/…/{name} (depth {})",
                self.path.display(),
                node.depth + 1
            ),
            None => self.path.display().to_string(),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.handed_over {
            // Closing the pipe wakes the watchdog, which finishes the job.
            self.watchdog.take();
            return;
        }
        let cleaned = match self.kill_all() {
            Ok(()) => true,
            Err(e) => {
                log::warn!("{e} (leaving it to the watchdog)");
                false
            }
        };
        let Some(watchdog) = self.watchdog.take() else {
            return;
        };
        if cleaned {
            // The watchdog wakes up now and, finding nothing to clean, exits.
            watchdog.close_and_wait(WATCHDOG_EXIT_WAIT);
        }
        // Otherwise it has work to do: dropped, it is woken up to do it,
        // without us.
    }
}

/// See [`Session::kill_in_background`]: `nested` lists the groups below
/// `top` in pre-order, each with the index of its parent (0 for `top`,
/// i + 1 for `nested[i]`).
fn kill_nested(top: OwnedFd, nested: &[(usize, String)], path: &str) {
    let mut dirs: Vec<Option<OwnedFd>> = Vec::with_capacity(nested.len() + 1);
    dirs.push(Some(top));
    for (parent, name) in nested {
        let dir = dirs[*parent]
            .as_ref()
            .and_then(|parent| open_dir_at(parent.as_fd(), name.as_str()).ok());
        dirs.push(dir);
    }
    // Children come after their parent in pre-order: backwards, each
    // group's nested ones are gone before it is killed.
    for dir in dirs.iter().rev().flatten() {
        match kill_and_wait(dir.as_fd(), Instant::now() + KILL_TIMEOUT) {
            Ok(true) => {}
            Ok(false) => log::debug!("{path}: still exiting after SIGKILL"),
            Err(e) => log::warn!("cannot kill {path}: {e}"),
        }
    }
}

/// Whether `fd` (a pidfd) turned readable — its process exited — before
/// `deadline`.
fn wait_readable(fd: &OwnedFd, deadline: Instant) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) if Instant::now() >= deadline => return false,
            Ok(0) | Err(Errno::EINTR) => {}
            Ok(_) => return true,
            Err(_) => return true,
        }
    }
}
