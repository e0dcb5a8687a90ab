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
//! forkmon dies, even by SIGKILL. It is forkmon's own binary re-executed as
//! `forkmon __watchdog <session dir> <inode>` (a fresh single-threaded
//! process, whatever threads forkmon runs), with the read end of a pipe as
//! its stdin. forkmon keeps the write end (close-on-exec, so no program it
//! runs inherits it). When forkmon is gone, for whatever reason, the
//! watchdog reads end-of-file, kills the session's cgroup, waits for it to
//! empty and removes every directory of it, deepest first. When forkmon
//! cleans up itself (dropping the [`Session`]), the directory is gone by the
//! time the watchdog wakes up, and it exits quietly. It runs in its own
//! process group and ignores SIGINT, SIGTERM, SIGHUP and friends, so a
//! Ctrl-C for forkmon does not stop it.
//!
//! `main` must hand the process over before doing anything else:
//!
//! ```ignore
//! let mut args = std::env::args_os().skip(1);
//! if args.next().as_deref() == Some(std::ffi::OsStr::new(cgroup::WATCHDOG_ARG)) {
//!     cgroup::watchdog_main(args);
//! }
//! ```
use std::{
    collections::HashMap,
    ffi::{OsStr, OsString},
    fs::{self, File},
    io::{self, Write as _},
    os::{
        fd::{AsFd, AsRawFd as _, BorrowedFd, OwnedFd},
        unix::{fs::FileExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    fcntl::{OFlag, open, openat},
    poll::{PollFd, PollFlags, ppoll},
    sys::{
        signal::{self, SigHandler, Signal},
        stat::{Mode, SFlag, fstat, mkdirat},
        time::TimeSpec,
    },
    unistd::{Pid, UnlinkatFlags, pipe2, unlinkat},
};

/// `argv[1]` that makes forkmon run as the watchdog: see [`watchdog_main`].
pub const WATCHDOG_ARG: &str = "__watchdog";

/// How long [`Session::kill`] waits for killed processes to disappear.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the watchdog waits for killed processes to disappear.
const WATCHDOG_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the watchdog waits for forkmon to finish exiting before it
/// cleans up.
const FORKMON_EXIT_WAIT: Duration = Duration::from_secs(2);
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

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("forkmon needs cgroup v2 (mount -t cgroup2 none /sys/fs/cgroup/unified)")]
    NoCgroup2,
    #[error("{what} {path}: {error}")]
    Io {
        what: &'static str,
        path: String,
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
            error: error.into(),
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

struct Watchdog {
    /// Write end of the pipe the watchdog reads: closing it (or dying) tells
    /// the watchdog forkmon is gone.
    pipe: OwnedFd,
    child: Child,
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
}

/// Counts sessions made by this process, so each has its own name.
static SESSIONS: AtomicU32 = AtomicU32::new(0);

const ROOT: GroupId = GroupId(0);

impl Session {
    /// Create the session cgroup under forkmon's own cgroup and start the
    /// watchdog.
    pub fn create() -> Result<Session, CgroupError> {
        Session::create_with(exe_watchdog)
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
                    clean_up_session(&path)?;
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
            Ok(dir) => dir,
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
            session.watchdog = Some(spawn_watchdog(command).map_err(CgroupError::Watchdog)?);
        }
        Ok(session)
    }

    #[cfg(test)]
    /// Absolute path of the session's cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The session cgroup itself.
    pub fn root(&self) -> GroupId {
        ROOT
    }

    /// Pid of the watchdog process (a child of forkmon), if there is one.
    pub fn watchdog_pid(&self) -> Option<u32> {
        self.watchdog.as_ref().map(|w| w.child.id())
    }

    #[cfg(test)]
    /// The group's directory, open `O_RDONLY | O_DIRECTORY` (e.g. for
    /// `clone3` with `CLONE_INTO_CGROUP`).
    pub fn dir_fd(&self, group: GroupId) -> Result<BorrowedFd<'_>, CgroupError> {
        Ok(self.live(group)?.dir.as_fd())
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
        write_file(node.dir.as_fd(), "cgroup.procs", pid.to_string().as_bytes()).map_err(|e| {
            CgroupError::Io {
                what: "cannot move process",
                path: format!("{pid} into {}", self.describe(group)),
                error: e,
            }
        })
    }

    /// Pids of the processes directly in `group` (not in nested groups).
    pub fn procs(&self, group: GroupId) -> Result<Vec<i32>, CgroupError> {
        let node = self.live(group)?;
        read_procs(node.dir.as_fd())
            .map_err(|e| CgroupError::io("cannot read processes of", self.describe(group), e))
    }

    #[cfg(test)]
    /// Whether `group` or a group nested in it holds a live process.
    pub fn is_populated(&self, group: GroupId) -> Result<bool, CgroupError> {
        Ok(dir_fd_populated(self.live(group)?.dir.as_fd()))
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
        self.remove_dead();
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
        let Some(node) = self.groups.get(&group) else {
            return Ok(true);
        };
        let killed = node.dead || group == ROOT;
        let deadline = Instant::now() + timeout;
        match self.prepared(group) {
            Some(prepared) => {
                wait_events_empty(node.dir.as_fd(), &prepared.events, deadline, killed)
            }
            None => wait_until_empty(node.dir.as_fd(), deadline, killed),
        }
        .map_err(|e| CgroupError::io("cannot wait for", self.describe(group), e))
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
        self.closed = true;
        Ok(())
    }

    /// Retry removing the directories of killed groups that were not empty
    /// yet (after [`CgroupError::KillTimeout`]). Returns how many killed
    /// groups are still there.
    pub fn reap_empty(&mut self) -> usize {
        self.remove_dead()
    }

    /// Remove the directories of dead groups, deepest first; returns how
    /// many are left.
    fn remove_dead(&mut self) -> usize {
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

    /// Forget the session without cleaning up, as if forkmon had died.
    #[cfg(test)]
    fn abandon(mut self) -> Option<Child> {
        self.closed = true;
        self.watchdog.take().map(|w| {
            drop(w.pipe);
            w.child
        })
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
        let Some(Watchdog { pipe, mut child }) = self.watchdog.take() else {
            return;
        };
        // The watchdog wakes up now and, finding nothing to clean, exits.
        drop(pipe);
        if !cleaned {
            // It has work to do: let it, without us.
            return;
        }
        let deadline = Instant::now() + WATCHDOG_EXIT_WAIT;
        // An error means someone else reaped it (forkmon as a subreaper).
        while let Ok(None) = child.try_wait() {
            if Instant::now() >= deadline {
                log::debug!("cgroup watchdog {} still running", child.id());
                break;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }
}

// ---------------------------------------------------------------------------
// Finding the cgroup v2 hierarchy
// ---------------------------------------------------------------------------

/// Directory of forkmon's own cgroup v2.
fn own_cgroup_dir() -> Result<PathBuf, CgroupError> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| CgroupError::io("cannot read", "/proc/self/mountinfo", e))?;
    let mounts = cgroup2_mounts(&mountinfo);
    if mounts.is_empty() {
        return Err(CgroupError::NoCgroup2);
    }
    let own = fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| CgroupError::io("cannot read", "/proc/self/cgroup", e))?;
    let own = own_cgroup_path(&own).ok_or(CgroupError::NoCgroup2)?;
    Ok(cgroup_dir(&mounts, &own).unwrap_or_else(|| {
        // Our cgroup is outside every mount (a cgroup namespace mounted
        // oddly): any place in the hierarchy will do.
        log::warn!(
            "cgroup {} is not visible in any cgroup2 mount; using {}",
            own.display(),
            mounts[0].1.display()
        );
        mounts[0].1.clone()
    }))
}

/// `(root, mount point)` of every cgroup2 mount in `/proc/self/mountinfo`.
fn cgroup2_mounts(mountinfo: &str) -> Vec<(PathBuf, PathBuf)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // id parent major:minor root mount-point options [optional...] - fstype source super-options
            let (fields, rest) = line.split_once(" - ")?;
            if rest.split(' ').next()? != "cgroup2" {
                return None;
            }
            let mut fields = fields.split(' ');
            let root = fields.nth(3)?;
            let mount_point = fields.next()?;
            Some((unescape(root), unescape(mount_point)))
        })
        .collect()
}

/// Undo mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt as _;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |n, c| n * 8 + u32::from(c - b'0')));
        match octal.and_then(|n| u8::try_from(n).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// The `0::/path` entry of `/proc/self/cgroup`.
fn own_cgroup_path(proc_cgroup: &str) -> Option<PathBuf> {
    proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(PathBuf::from)
}

/// Where cgroup `own` (a path from the hierarchy's root) is, given the
/// `(root, mount point)` of the cgroup2 mounts.
fn cgroup_dir(mounts: &[(PathBuf, PathBuf)], own: &Path) -> Option<PathBuf> {
    mounts.iter().find_map(|(root, mount_point)| {
        let rel = own.strip_prefix(root).ok()?;
        Some(if rel.as_os_str().is_empty() {
            mount_point.clone()
        } else {
            mount_point.join(rel)
        })
    })
}

// ---------------------------------------------------------------------------
// cgroup files
// ---------------------------------------------------------------------------

fn open_dir_at<P: ?Sized + nix::NixPath>(dir: BorrowedFd<'_>, name: &P) -> nix::Result<OwnedFd> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

fn open_file(dir: BorrowedFd<'_>, name: &str, flags: OFlag) -> io::Result<File> {
    Ok(File::from(openat(
        dir,
        name,
        flags | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?))
}

fn write_file(dir: BorrowedFd<'_>, name: &str, content: &[u8]) -> io::Result<()> {
    open_file(dir, name, OFlag::O_WRONLY)?.write_all(content)
}

fn read_file(dir: BorrowedFd<'_>, name: &str) -> io::Result<String> {
    io::read_to_string(open_file(dir, name, OFlag::O_RDONLY)?)
}

/// Set a `max`-able limit file to `max` if it is not already.
fn unlimit(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    if read_file(dir, name)?.trim() != "max" {
        write_file(dir, name, b"max")?;
    }
    Ok(())
}

fn read_procs(dir: BorrowedFd<'_>) -> io::Result<Vec<i32>> {
    Ok(read_file(dir, "cgroup.procs")?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// The processes of `dir` and of all cgroups nested in it (best effort).
fn all_procs(dir: BorrowedFd<'_>) -> Vec<i32> {
    let mut pids = read_procs(dir).unwrap_or_default();
    let _ = for_each_descendant(dir, |_, _, sub| {
        pids.extend(read_procs(sub).unwrap_or_default());
    });
    pids
}

/// Whether the cgroup at `path` holds processes (or cannot be read).
fn dir_populated(path: &Path) -> bool {
    fs::read(path.join("cgroup.events")).map_or(true, |events| populated(&events))
}

/// Whether the group open at `dir` holds a process (or cannot be read).
fn dir_fd_populated(dir: BorrowedFd<'_>) -> bool {
    let mut buf = [0u8; 256];
    open_file(dir, "cgroup.events", OFlag::O_RDONLY)
        .and_then(|f| f.read_at(&mut buf, 0))
        .map_or(true, |n| populated(&buf[..n]))
}

/// Whether the content of `cgroup.events` says `populated 1`.
fn populated(events: &[u8]) -> bool {
    String::from_utf8_lossy(events)
        .lines()
        .any(|l| l.trim() == "populated 1")
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

/// Set once a write to `cgroup.kill` found no such file (Linux < 5.14).
static NO_CGROUP_KILL: AtomicBool = AtomicBool::new(false);

/// Kill everything in `dir` and below: `cgroup.kill`, or on Linux < 5.14
/// SIGKILL to each process (see [`wait_until_empty`]).
fn kill_tree(dir: BorrowedFd<'_>) -> io::Result<()> {
    match write_file(dir, "cgroup.kill", b"1") {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            NO_CGROUP_KILL.store(true, Ordering::Relaxed);
            signal_all(dir);
            Ok(())
        }
        result => result,
    }
}

/// [`kill_tree`], then [`wait_until_empty`].
fn kill_and_wait(dir: BorrowedFd<'_>, deadline: Instant) -> io::Result<bool> {
    kill_tree(dir)?;
    wait_until_empty(dir, deadline, true)
}

/// Waits until `cgroup.events` of `dir` says it is empty, or `deadline`
/// passes. Returns whether it emptied. Without `cgroup.kill` (Linux <
/// 5.14) killed processes may have forked between reading and signalling,
/// so the signal is sent again on every round; `killed` says whether the
/// group was killed.
fn wait_until_empty(dir: BorrowedFd<'_>, deadline: Instant, killed: bool) -> io::Result<bool> {
    let events = open_file(dir, "cgroup.events", OFlag::O_RDONLY)?;
    wait_events_empty(dir, &events, deadline, killed)
}

/// [`wait_until_empty`] with `dir`'s `cgroup.events` already open.
fn wait_events_empty(
    dir: BorrowedFd<'_>,
    events: &File,
    deadline: Instant,
    killed: bool,
) -> io::Result<bool> {
    let resignal = killed && NO_CGROUP_KILL.load(Ordering::Relaxed);
    let mut buf = [0u8; 256];
    loop {
        // Reading records the file's event count; poll() reports POLLPRI
        // when it changes after that, so no change is missed.
        let n = events.read_at(&mut buf, 0)?;
        if !populated(&buf[..n]) {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        // Bounded, in case a notification goes missing; to the
        // microsecond, for the short waits of a resume.
        let wait = (deadline - now).min(Duration::from_millis(10));
        let mut fds = [PollFd::new(events.as_fd(), PollFlags::POLLPRI)];
        match ppoll(&mut fds, Some(TimeSpec::from_duration(wait)), None) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        if resignal {
            signal_all(dir);
        }
    }
}

/// SIGKILL every process listed in `dir` and below (kernels without
/// `cgroup.kill`).
fn signal_all(dir: BorrowedFd<'_>) {
    for pid in all_procs(dir) {
        let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// `rmdir`, retrying `EBUSY` until `deadline`; a missing directory is fine.
fn rmdir_at(
    dir: BorrowedFd<'_>,
    name: &(impl nix::NixPath + ?Sized),
    deadline: Instant,
) -> nix::Result<()> {
    loop {
        match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::EBUSY) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Names of the directories (nested cgroups) in `dir`.
fn subdirs(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            names.push(entry.file_name());
        }
    }
    Ok(names)
}

/// Call `visit(parent, name, dir)` for every cgroup nested in `root` (not
/// `root` itself), children before their parent, keeping at most three
/// directories open whatever the depth: it goes back up with `..`.
fn for_each_descendant(
    root: BorrowedFd<'_>,
    mut visit: impl FnMut(BorrowedFd<'_>, &OsStr, BorrowedFd<'_>),
) -> io::Result<()> {
    let mut cur = open_dir_at(root, ".")?;
    // For each level from `root` down to `cur`: its name, and its children
    // not visited yet.
    let mut stack: Vec<(OsString, Vec<OsString>)> = vec![(OsString::new(), subdirs(cur.as_fd())?)];
    while let Some((_, pending)) = stack.last_mut() {
        if let Some(child) = pending.pop() {
            match open_dir_at(cur.as_fd(), child.as_os_str()) {
                Ok(fd) => {
                    let children = subdirs(fd.as_fd())?;
                    cur = fd;
                    stack.push((child, children));
                }
                // Removed meanwhile.
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(e.into()),
            }
            continue;
        }
        let (name, _) = stack.pop().expect("stack is not empty");
        if stack.is_empty() {
            break;
        }
        let parent = open_dir_at(cur.as_fd(), "..")?;
        visit(parent.as_fd(), &name, cur.as_fd());
        cur = parent;
    }
    Ok(())
}

/// Remove every cgroup nested in `dir`, deepest first. Returns the first
/// error, after trying them all.
fn remove_descendants(dir: BorrowedFd<'_>) -> io::Result<()> {
    let mut first_error = None;
    for_each_descendant(dir, |parent, name, _| {
        if let Err(e) = rmdir_at(parent, name, Instant::now()) {
            first_error.get_or_insert(e);
        }
    })?;
    first_error.map_or(Ok(()), |e| Err(e.into()))
}

// ---------------------------------------------------------------------------
// Watchdog
// ---------------------------------------------------------------------------

/// How forkmon runs its watchdog: itself, with [`WATCHDOG_ARG`].
fn exe_watchdog(session_dir: &Path, ino: u64) -> Option<Command> {
    let mut command = Command::new("/proc/self/exe");
    command
        .arg0("forkmon-wd")
        .arg(WATCHDOG_ARG)
        .arg(session_dir)
        .arg(ino.to_string());
    Some(command)
}

fn spawn_watchdog(mut command: Command) -> io::Result<Watchdog> {
    // Both ends close-on-exec: no program forkmon starts gets either; the
    // read end becomes the watchdog's stdin.
    let (read, write) = pipe2(OFlag::O_CLOEXEC)?;
    let child = command
        .stdin(Stdio::from(read))
        .stdout(Stdio::null())
        .current_dir("/")
        // Out of forkmon's process group: no Ctrl-C from the terminal.
        .process_group(0)
        .spawn()?;
    Ok(Watchdog { pipe: write, child })
}

/// Body of `forkmon __watchdog <session dir> <inode>`, with `args` the
/// arguments after `__watchdog`. `main` must call it before anything else
/// (before opening files or starting threads): it closes every inherited
/// file descriptor above stderr.
pub fn watchdog_main(args: impl IntoIterator<Item = OsString>) -> ! {
    let _ = nix::sys::prctl::set_name(c"forkmon-wd");
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGTSTP,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
        Signal::SIGPIPE,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        // SAFETY: ignoring a signal installs no handler, so no code of ours
        // runs in signal context.
        let _ = unsafe { signal::signal(sig, SigHandler::SigIgn) };
    }
    // Inherited non-close-on-exec descriptors (the pipes of whoever started
    // forkmon, say) must not be kept open by the watchdog.
    // SAFETY: close_range only closes descriptors; nothing in this process
    // owns one above 2 yet (watchdog_main runs first thing in main), and no
    // other thread exists.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    let mut args = args.into_iter();
    let session_dir = args.next().map(PathBuf::from);
    let ino = args
        .next()
        .and_then(|s| s.to_str().and_then(|s| s.parse::<u64>().ok()));
    let (Some(session_dir), Some(ino)) = (session_dir, ino) else {
        eprintln!(
            "usage: forkmon {WATCHDOG_ARG} SESSION-CGROUP-DIR INODE (forkmon runs this itself)"
        );
        std::process::exit(2);
    };
    let stdin = io::stdin();
    std::process::exit(run_watchdog(stdin.as_fd(), &session_dir, ino))
}

/// Wait until the write end of `pipe` is closed (forkmon is gone), then
/// clean up the session cgroup `session_dir` if it is still the one whose
/// inode is `ino`. Returns the exit status.
fn run_watchdog(pipe: BorrowedFd<'_>, session_dir: &Path, ino: u64) -> i32 {
    let is_pipe = fstat(pipe).is_ok_and(|st| {
        SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFIFO
    });
    if !is_pipe {
        eprintln!("forkmon watchdog: stdin is not forkmon's pipe");
        return 2;
    }
    // forkmon, to see it gone for good below.
    // SAFETY: pidfd_open with a pid and no flags.
    let forkmon = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getppid(), 0) } as i32;
    let mut buf = [0u8; 64];
    loop {
        match nix::unistd::read(pipe, &mut buf) {
            Ok(0) => break,
            Ok(_) | Err(Errno::EINTR) => {}
            // Cannot tell whether forkmon lives: cleaning up is the lesser
            // evil.
            Err(_) => break,
        }
    }
    if forkmon >= 0 && session_dir.exists() {
        // Left to us (forkmon cleaned up otherwise). The pipe closes while
        // forkmon is still exiting. Thousands of
        // killed checkpoints, exiting, would take the CPUs from it for
        // seconds: kill once it is gone (and its shell has the prompt).
        let mut gone = libc::pollfd {
            fd: forkmon,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own.
        unsafe { libc::poll(&mut gone, 1, FORKMON_EXIT_WAIT.as_millis() as i32) };
    }
    match clean_up(session_dir, Some(ino), WATCHDOG_TIMEOUT) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("forkmon watchdog: {e}");
            1
        }
    }
}

/// Kill every process of a session cgroup, wait for them to die (up to 5
/// s), and remove the session's directories, deepest first. Nothing to do
/// if `session_dir` does not exist.
pub fn clean_up_session(session_dir: &Path) -> Result<(), CgroupError> {
    clean_up(session_dir, None, WATCHDOG_TIMEOUT)
}

/// [`clean_up_session`], doing nothing unless the directory's inode is
/// `ino` (cgroup inode numbers are never reused), so that a watchdog never
/// touches a newer session that happens to have the same name.
fn clean_up(session_dir: &Path, ino: Option<u64>, timeout: Duration) -> Result<(), CgroupError> {
    let path = || session_dir.display().to_string();
    let dir = match open(
        session_dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(dir) => dir,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(CgroupError::io("cannot open cgroup", path(), e)),
    };
    if let Some(ino) = ino
        && fstat(&dir)
            .map_err(|e| CgroupError::io("cannot stat cgroup", path(), e))?
            .st_ino
            != ino
    {
        return Ok(());
    }
    // Gives up only when processes stop exiting for `timeout`: the chain of
    // a thousand checkpoints takes longer than that to exit in all.
    let mut left = usize::MAX;
    let emptied = loop {
        let deadline = Instant::now() + timeout;
        match kill_and_wait(dir.as_fd(), deadline) {
            Ok(true) => break true,
            Ok(false) => {}
            // Removed meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(CgroupError::io("cannot kill", path(), e)),
        }
        let now_left = all_procs(dir.as_fd()).len();
        if now_left >= left {
            break false;
        }
        left = now_left;
    };
    let deadline = Instant::now() + timeout;
    if !emptied {
        return Err(CgroupError::kill_timeout(
            path(),
            timeout,
            &all_procs(dir.as_fd()),
        ));
    }
    loop {
        match remove_descendants(dir.as_fd()).and_then(|()| match fs::remove_dir(session_dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }) {
            Ok(()) => return Ok(()),
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(CgroupError::io("cannot remove cgroup", path(), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead as _, BufReader},
        os::unix::process::ExitStatusExt as _,
    };

    use super::*;

    const WATCHDOG_ENV: &str = "FORKMON_TEST_WATCHDOG";
    const HOLDER_ENV: &str = "FORKMON_TEST_SESSION_HOLDER";

    /// The tests' watchdog: this test binary, running `watchdog_helper`.
    fn test_watchdog(dir: &Path, ino: u64) -> Option<Command> {
        let mut command = Command::new(std::env::current_exe().ok()?);
        command
            .args([
                "cgroup::tests::watchdog_helper",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WATCHDOG_ENV, format!("{ino}:{}", dir.display()));
        Some(command)
    }

    fn no_watchdog(_: &Path, _: u64) -> Option<Command> {
        None
    }

    /// Not a test: the watchdog process of the tests' sessions.
    #[test]
    fn watchdog_helper() {
        let Some(arg) = std::env::var_os(WATCHDOG_ENV) else {
            return;
        };
        let arg = arg.into_string().unwrap();
        let (ino, dir) = arg.split_once(':').unwrap();
        let stdin = io::stdin();
        std::process::exit(run_watchdog(
            stdin.as_fd(),
            Path::new(dir),
            ino.parse().unwrap(),
        ));
    }

    /// Not a test: a forkmon stand-in for `watchdog_survives_sigkill`.
    #[test]
    fn session_holder_helper() {
        if std::env::var_os(HOLDER_ENV).is_none() {
            return;
        }
        let mut session = Session::create_with(test_watchdog).unwrap();
        let group = session.new_child(session.root()).unwrap();
        let nested = session.new_child(group).unwrap();
        let mut child = spawn_in(&session, nested, "exec sleep 100");
        let mut stdout = io::stdout();
        writeln!(
            stdout,
            "\nSESSION {} {}",
            session.path().display(),
            child.id()
        )
        .unwrap();
        stdout.flush().unwrap();
        // Until the test SIGKILLs us.
        loop {
            let _ = child.try_wait();
            thread::sleep(Duration::from_secs(1));
        }
    }

    fn session(watchdog: fn(&Path, u64) -> Option<Command>) -> Option<Session> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return None;
        }
        match Session::create_with(watchdog) {
            Ok(session) => Some(session),
            Err(CgroupError::NoCgroup2) => {
                eprintln!("skipped: no cgroup v2");
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// Start `sh -c script` in `group`, before it runs any of `script`.
    fn spawn_in(session: &Session, group: GroupId, script: &str) -> Child {
        let mut child = Command::new("sh")
            .args(["-c", "read x || exit 1; exec sh -c \"$1\"", "sh", script])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        session.add_process(group, child.id() as i32).unwrap();
        child.stdin.take().unwrap().write_all(b"\n").unwrap();
        child
    }

    /// State letter of a process in /proc/<pid>/stat.
    fn state(pid: i32) -> Option<char> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?.1.trim_start().chars().next()
    }

    fn dead(pid: i32) -> bool {
        matches!(state(pid), None | Some('Z' | 'X'))
    }

    fn comm(pid: i32) -> String {
        fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn killed(child: &mut Child) -> bool {
        child.try_wait().unwrap().and_then(|s| s.signal()) == Some(libc::SIGKILL)
    }

    fn alive(child: &mut Child) -> bool {
        child.try_wait().unwrap().is_none()
    }

    fn group_path(session: &Session, groups: &[GroupId]) -> PathBuf {
        groups.iter().fold(session.path().to_owned(), |p, g| {
            p.join(format!("c{}", g.0))
        })
    }

    fn raise_nofile(want: u64) {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes a struct rlimit through a valid pointer.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        if limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            // SAFETY: setrlimit reads a struct rlimit through a valid pointer.
            assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
        }
    }

    #[test]
    fn parses_mountinfo() {
        let mountinfo = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:39 / /sys/fs/cgroup/memory rw shared:5 - cgroup cgroup rw,memory
43 22 0:38 /sub /mnt/with\\040space rw master:1 - cgroup2 none rw
";
        let mounts = cgroup2_mounts(mountinfo);
        assert_eq!(
            mounts,
            [
                ("/".into(), "/sys/fs/cgroup/unified".into()),
                ("/sub".into(), "/mnt/with space".into()),
            ]
        );
        assert_eq!(
            cgroup_dir(&mounts, Path::new("/")),
            Some("/sys/fs/cgroup/unified".into())
        );
        assert_eq!(
            cgroup_dir(&mounts, Path::new("/user.slice/a.scope")),
            Some("/sys/fs/cgroup/unified/user.slice/a.scope".into())
        );
        assert_eq!(
            cgroup_dir(&mounts[1..], Path::new("/sub/x")),
            Some("/mnt/with space/x".into())
        );
        assert_eq!(cgroup_dir(&mounts[1..], Path::new("/subx")), None);
        assert_eq!(unescape("a\\134b\\011"), PathBuf::from("a\\b\t"));
        assert_eq!(unescape("trailing\\"), PathBuf::from("trailing\\"));
    }

    #[test]
    fn parses_proc_cgroup() {
        assert_eq!(
            own_cgroup_path("4:memory:/x\n0::/user.slice/s.scope\n"),
            Some("/user.slice/s.scope".into())
        );
        assert_eq!(own_cgroup_path("0::/\n"), Some("/".into()));
        assert_eq!(own_cgroup_path("1:cpu:/\n"), None);
    }

    #[test]
    fn parses_events() {
        assert!(populated(b"populated 1\nfrozen 0\n"));
        assert!(!populated(b"populated 0\nfrozen 0\n"));
    }

    #[test]
    fn kill_child_group() {
        let Some(mut s) = session(test_watchdog) else {
            return;
        };
        let mut top = spawn_in(&s, s.root(), "exec sleep 100");
        let group = s.new_child(s.root()).unwrap();
        let mut child = spawn_in(&s, group, "exec sleep 100");
        let dir = group_path(&s, &[group]);
        assert!(dir.is_dir());
        assert_eq!(s.procs(group).unwrap(), [child.id() as i32]);
        assert!(s.is_populated(group).unwrap());
        s.kill(group).unwrap();
        assert!(!dir.exists());
        assert!(killed(&mut child));
        assert!(alive(&mut top));
        assert_eq!(s.procs(s.root()).unwrap(), [top.id() as i32]);
        assert!(matches!(
            s.add_process(group, 1),
            Err(CgroupError::StaleGroup)
        ));
        assert!(matches!(s.new_child(group), Err(CgroupError::StaleGroup)));
        // Killing again is harmless.
        s.kill(group).unwrap();
        // The root still takes new groups.
        let again = s.new_child(s.root()).unwrap();
        assert!(group_path(&s, &[again]).is_dir());
        drop(s);
        assert!(killed(&mut top));
    }

    /// A prepared group is killed and waited for through the files opened
    /// ahead, which are let go when the group is removed; preparing
    /// another group replaces them.
    #[test]
    fn prepared_group_is_killed_through_its_open_files() {
        let Some(mut s) = session(no_watchdog) else {
            return;
        };
        let first = s.new_child(s.root()).unwrap();
        let group = s.new_child(s.root()).unwrap();
        s.prepare(first);
        if s.prepared(first).unwrap().kill.is_none() {
            eprintln!("skipped: no cgroup.kill (Linux < 5.14)");
            return;
        }
        let mut child = spawn_in(&s, group, "exec sleep 100");
        s.prepare(group);
        assert!(s.prepared(first).is_none() && s.prepared(group).is_some());
        assert!(!s.wait_empty(group, Duration::ZERO).unwrap());
        s.kill_now(group).unwrap();
        assert!(s.wait_empty(group, Duration::from_secs(2)).unwrap());
        assert!(killed(&mut child));
        s.reap_empty();
        assert!(!group_path(&s, &[group]).exists());
        assert!(s.prepared.is_none());
        // A dead group is not prepared.
        s.prepare(group);
        assert!(s.prepared.is_none());
    }

    /// A killed process that its parent has not reaped does not keep its
    /// cgroup populated, and does not prevent removing it.
    #[test]
    fn zombies_do_not_keep_cgroup_populated() {
        let Some(mut s) = session(no_watchdog) else {
            return;
        };
        let group = s.new_child(s.root()).unwrap();
        let mut child = spawn_in(&s, group, "exec sleep 100");
        let pid = child.id() as i32;
        write_file(s.dir_fd(group).unwrap(), "cgroup.kill", b"1").unwrap();
        wait_for("the zombie", Duration::from_secs(2), || {
            state(pid) == Some('Z')
        });
        assert!(!s.is_populated(group).unwrap());
        assert!(s.procs(group).unwrap().is_empty());
        s.kill(group).unwrap();
        assert!(!group_path(&s, &[group]).exists());
        // Still not reaped.
        assert_eq!(state(pid), Some('Z'));
        assert!(killed(&mut child));
    }

    #[test]
    fn kill_middle_of_three_levels() {
        let Some(mut s) = session(test_watchdog) else {
            return;
        };
        let top = s.new_child(s.root()).unwrap();
        let middle = s.new_child(top).unwrap();
        let deepest = s.new_child(middle).unwrap();
        let mut p_top = spawn_in(&s, top, "exec sleep 100");
        let mut p_middle = spawn_in(&s, middle, "exec sleep 100");
        let mut p_deepest = spawn_in(&s, deepest, "exec sleep 100");
        assert!(group_path(&s, &[top, middle, deepest]).is_dir());
        s.kill(middle).unwrap();
        assert!(killed(&mut p_middle));
        assert!(killed(&mut p_deepest));
        assert!(alive(&mut p_top));
        assert!(group_path(&s, &[top]).is_dir());
        assert!(!group_path(&s, &[top, middle]).exists());
        assert!(matches!(s.procs(deepest), Err(CgroupError::StaleGroup)));
        s.kill_all().unwrap();
        assert!(killed(&mut p_top));
        assert!(!s.path().exists());
        assert!(matches!(s.new_child(ROOT), Err(CgroupError::Closed(_))));
    }

    #[test]
    fn kill_in_background_reaches_every_nested_group() {
        let Some(mut s) = session(test_watchdog) else {
            return;
        };
        let top = s.new_child(s.root()).unwrap();
        let middle = s.new_child(top).unwrap();
        let left = s.new_child(middle).unwrap();
        let right = s.new_child(middle).unwrap();
        let mut p_top = spawn_in(&s, top, "exec sleep 100");
        let mut below: Vec<Child> = [middle, left, right, right]
            .into_iter()
            .map(|g| spawn_in(&s, g, "exec sleep 100"))
            .collect();
        s.kill_in_background(middle).unwrap();
        // Marked at once: no new process can be put there.
        assert!(matches!(s.procs(left), Err(CgroupError::StaleGroup)));
        assert!(s.wait_empty(middle, KILL_TIMEOUT).unwrap());
        for p in &mut below {
            wait_for("a killed process to exit", KILL_TIMEOUT, || killed(p));
        }
        assert!(alive(&mut p_top));
        assert_eq!(s.reap_empty(), 0);
        assert!(!group_path(&s, &[top, middle]).exists());
        s.kill_all().unwrap();
        assert!(killed(&mut p_top));
    }

    #[test]
    fn kill_reaches_escaped_subprocesses() {
        let Some(mut s) = session(test_watchdog) else {
            return;
        };
        let group = s.new_child(s.root()).unwrap();
        let mut child = spawn_in(&s, group, "setsid sh -c 'sleep 100' & sleep 100");
        let sid = nix::unistd::getsid(Some(Pid::from_raw(child.id() as i32))).unwrap();
        let mut pids = Vec::new();
        wait_for("the sleeps", Duration::from_secs(5), || {
            pids = s.procs(group).unwrap();
            let sleeps: Vec<i32> = pids
                .iter()
                .copied()
                .filter(|p| comm(*p) == "sleep")
                .collect();
            sleeps.len() == 2
                && sleeps
                    .iter()
                    .any(|p| nix::unistd::getsid(Some(Pid::from_raw(*p))).is_ok_and(|s| s != sid))
        });
        s.kill(group).unwrap();
        assert!(killed(&mut child));
        for pid in pids {
            assert!(dead(pid), "{pid} survived");
        }
    }

    #[test]
    fn kill_root_keeps_session_usable() {
        let Some(mut s) = session(test_watchdog) else {
            return;
        };
        let mut at_root = spawn_in(&s, s.root(), "exec sleep 100");
        let a = s.new_child(s.root()).unwrap();
        let b = s.new_child(a).unwrap();
        let mut in_b = spawn_in(&s, b, "exec sleep 100");
        s.kill(s.root()).unwrap();
        assert!(killed(&mut at_root));
        assert!(killed(&mut in_b));
        assert!(subdirs(s.dir_fd(ROOT).unwrap()).unwrap().is_empty());
        let c = s.new_child(s.root()).unwrap();
        let mut in_c = spawn_in(&s, c, "exec sleep 100");
        assert!(alive(&mut in_c));
        drop(s);
        assert!(killed(&mut in_c));
    }

    #[test]
    fn thousand_deep() {
        const DEPTH: usize = 1000;
        let Some(mut s) = session(test_watchdog) else {
            return;
        };
        raise_nofile(4 * DEPTH as u64);
        let started = Instant::now();
        let mut groups = vec![s.root()];
        for _ in 0..DEPTH {
            groups.push(s.new_child(*groups.last().unwrap()).unwrap());
        }
        let created = started.elapsed();
        // Processes at every 10th level and at the bottom.
        let mut children: Vec<Child> = groups
            .iter()
            .enumerate()
            .filter(|(depth, _)| depth % 10 == 0 || *depth == DEPTH)
            .map(|(_, g)| spawn_in(&s, *g, "exec sleep 100"))
            .collect();
        let mut at_root = children.remove(0);
        let started = Instant::now();
        s.kill(groups[1]).unwrap();
        let killed_in = started.elapsed();
        eprintln!(
            "{DEPTH} nested cgroups: created in {created:?}, \
             killed {} processes and removed them in {killed_in:?}",
            children.len()
        );
        assert!(subdirs(s.dir_fd(ROOT).unwrap()).unwrap().is_empty());
        assert_eq!(s.groups.len(), 1);
        for child in &mut children {
            assert!(killed(child));
        }
        assert!(alive(&mut at_root));
        // Once more, for the watchdog's walk.
        let mut last = s.root();
        for _ in 0..DEPTH {
            last = s.new_child(last).unwrap();
        }
        let mut deepest = spawn_in(&s, last, "exec sleep 100");
        let path = s.path().to_owned();
        let started = Instant::now();
        let watchdog = s.abandon();
        clean_up_session(&path).unwrap();
        eprintln!(
            "clean_up_session of {DEPTH} nested cgroups: {:?}",
            started.elapsed()
        );
        assert!(!path.exists());
        assert!(killed(&mut deepest));
        assert!(killed(&mut at_root));
        if let Some(mut watchdog) = watchdog {
            assert!(watchdog.wait().unwrap().success());
        }
    }

    #[test]
    fn clean_up_session_kills_and_removes_everything() {
        let Some(mut s) = session(no_watchdog) else {
            return;
        };
        let a = s.new_child(s.root()).unwrap();
        let b = s.new_child(a).unwrap();
        let c = s.new_child(a).unwrap();
        let d = s.new_child(c).unwrap();
        let mut children = vec![
            spawn_in(&s, s.root(), "exec sleep 100"),
            spawn_in(&s, b, "exec sleep 100"),
            spawn_in(&s, d, "setsid sh -c 'sleep 100' & exec sleep 100"),
        ];
        let path = s.path().to_owned();
        assert!(s.abandon().is_none());
        let pids = {
            let dir = open(&path, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
            all_procs(dir.as_fd())
        };
        clean_up_session(&path).unwrap();
        assert!(!path.exists());
        for child in &mut children {
            assert!(killed(child));
        }
        for pid in pids {
            assert!(dead(pid), "{pid} survived");
        }
        // Nothing to do the second time.
        clean_up_session(&path).unwrap();
    }

    #[test]
    fn watchdog_cleans_up_when_forkmon_is_gone() {
        let Some(mut s) = session(test_watchdog) else {
            return;
        };
        let a = s.new_child(s.root()).unwrap();
        let b = s.new_child(a).unwrap();
        let mut children = vec![
            spawn_in(&s, s.root(), "exec sleep 100"),
            spawn_in(&s, b, "exec sleep 100"),
        ];
        let path = s.path().to_owned();
        let mut watchdog = s.abandon().unwrap();
        wait_for("the watchdog", Duration::from_secs(10), || {
            watchdog.try_wait().unwrap().is_some()
        });
        assert!(watchdog.wait().unwrap().success());
        assert!(!path.exists());
        for child in &mut children {
            assert!(killed(child));
        }
    }

    /// The real thing: a process holding a session is SIGKILLed.
    #[test]
    fn watchdog_survives_sigkill() {
        if session(no_watchdog).is_none() {
            return;
        }
        let mut holder = Command::new(std::env::current_exe().unwrap())
            .args([
                "cgroup::tests::session_holder_helper",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HOLDER_ENV, "1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
        let line = lines
            .find_map(|l| Some(l.ok()?.split_once("SESSION ")?.1.to_owned()))
            .expect("the holder's session");
        let (path, pid) = line.rsplit_once(' ').unwrap();
        let (path, pid) = (PathBuf::from(path), pid.parse::<i32>().unwrap());
        assert!(path.is_dir());
        assert!(!dead(pid));
        holder.kill().unwrap();
        holder.wait().unwrap();
        wait_for("the cleanup", Duration::from_secs(10), || !path.exists());
        assert!(dead(pid));
    }

    #[test]
    fn end_stops_the_program_and_leaves_a_big_session_to_the_watchdog() {
        let Some(mut s) = session(test_watchdog) else {
            return;
        };
        // Nested like a chain of checkpoints: the program runs innermost.
        let outer = s.new_child(s.root()).unwrap();
        let mut program = outer;
        for _ in 0..END_HERE_GROUPS {
            program = s.new_child(program).unwrap();
        }
        let mut running = spawn_in(&s, program, "exec sleep 100");
        let mut frozen = spawn_in(&s, outer, "exec sleep 100");
        wait_for("both to start", Duration::from_secs(5), || {
            s.procs(program).unwrap().len() == 1 && s.procs(outer).unwrap().len() == 1
        });
        let path = s.path().to_owned();
        assert!(!s.end(Some(program)).unwrap(), "left to the watchdog");
        wait_for("the program to die", Duration::from_secs(1), || {
            killed(&mut running)
        });
        assert!(alive(&mut frozen), "killed by the watchdog, not by end");
        drop(s);
        wait_for("the watchdog's clean-up", Duration::from_secs(10), || {
            killed(&mut frozen) && !path.exists()
        });
    }

    #[test]
    fn drop_leaves_nothing() {
        let Some(mut s) = session(test_watchdog) else {
            return;
        };
        let a = s.new_child(s.root()).unwrap();
        let b = s.new_child(a).unwrap();
        let mut children = vec![
            spawn_in(&s, s.root(), "exec sleep 100"),
            spawn_in(&s, a, "exec sleep 100"),
            spawn_in(&s, b, "setsid sh -c 'sleep 100' & exec sleep 100"),
        ];
        let path = s.path().to_owned();
        let watchdog = s.watchdog_pid().unwrap() as i32;
        wait_for("the escape", Duration::from_secs(5), || {
            s.procs(b).unwrap().len() >= 2
        });
        let pids = s.procs(b).unwrap();
        drop(s);
        assert!(!path.exists());
        for child in &mut children {
            assert!(killed(child));
        }
        for pid in pids {
            assert!(dead(pid), "{pid} survived");
        }
        // Exited and reaped.
        assert_eq!(state(watchdog), None);
    }
}
