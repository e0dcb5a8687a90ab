//! The supervisor's [`System`] on the live kernel: the stubs' eventfds,
//! the eBPF maps, the session's cgroups, the watcher and `/proc`.
use std::{
    collections::HashMap,
    fs,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    },
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use forkmon_common::PrefilterConfig;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::{Adoption, System};
use crate::{
    cgroup::{CgroupError, GroupId, Session, Sweep},
    channel::{Kernel, send_command},
    loader::Probes,
    priority::Policy,
    procfs,
    watcher::{Identity, WatchError, Watcher},
};
use precopy::Precopier;

mod precopy;

pub struct LiveSystem {
    pub probes: Probes,
    pub session: Session,
    pub watcher: Watcher,
    /// The command channel of each registered process, and its number in
    /// that process.
    eventfds: HashMap<i32, (OwnedFd, i32)>,
    /// The stub socket's fd number in the program's processes, and its
    /// inode.
    stub_socket: (i32, u64),
    /// Made at the first standby warmed.
    precopier: Option<Precopier>,
    /// What the kernel's prefilter was last given.
    prefilter: PrefilterConfig,
}

impl LiveSystem {
    pub fn new(
        probes: Probes,
        session: Session,
        watcher: Watcher,
        stub_socket: (i32, u64),
        prefilter: PrefilterConfig,
    ) -> LiveSystem {
        LiveSystem {
            probes,
            session,
            watcher,
            eventfds: HashMap::new(),
            stub_socket,
            precopier: None,
            prefilter,
        }
    }
}

impl Kernel for LiveSystem {
    fn in_tree(&self, pid: i32) -> bool {
        u32::try_from(pid).is_ok_and(|pid| self.probes.is_tracked(pid))
    }

    fn alive_parent(&self, pid: i32) -> Option<i32> {
        procfs::alive_parent(pid)
    }
}

impl System for LiveSystem {
    type Group = GroupId;

    fn connect(&mut self, pid: i32, eventfd: OwnedFd, theirs: i32) {
        self.eventfds.insert(pid, (eventfd, theirs));
    }

    fn disconnect(&mut self, pid: i32) {
        self.eventfds.remove(&pid);
    }

    fn is_connected(&self, pid: i32) -> bool {
        self.eventfds.contains_key(&pid)
    }

    fn channels_intact(&self, pid: i32) -> bool {
        const KCMP_FILE: libc::c_int = 0;
        let Some((ours, theirs)) = self.eventfds.get(&pid) else {
            return false;
        };
        // SAFETY: kcmp compares two fds' open file descriptions by value;
        // it reads nothing of ours.
        let same_eventfd = unsafe {
            libc::syscall(
                libc::SYS_kcmp,
                std::process::id() as libc::pid_t,
                pid,
                KCMP_FILE,
                ours.as_raw_fd(),
                *theirs,
            )
        } == 0;
        let (socket_fd, socket_ino) = self.stub_socket;
        same_eventfd
            && fs::metadata(format!("/proc/{pid}/fd/{socket_fd}"))
                .is_ok_and(|meta| meta.ino() == socket_ino)
    }

    fn send(&mut self, pid: i32, command: u64) -> anyhow::Result<()> {
        let (eventfd, _) = self
            .eventfds
            .get(&pid)
            .with_context(|| format!("process {pid} has no command channel"))?;
        send_command(eventfd, command).with_context(|| format!("cannot command process {pid}"))
    }

    fn arm(&mut self, pid: i32) -> anyhow::Result<()> {
        Ok(self.probes.arm(pid as u32)?)
    }

    fn arm_skipping_next_open(&mut self, pid: i32) -> anyhow::Result<()> {
        Ok(self.probes.arm_skipping_next_open(pid as u32)?)
    }

    fn arm_next_child(&mut self, pid: i32) -> anyhow::Result<()> {
        Ok(self.probes.arm_next_child(pid as u32)?)
    }

    fn keep_next_child_unarmed(&mut self, pid: i32) -> anyhow::Result<()> {
        Ok(self.probes.keep_next_child_unarmed(pid as u32)?)
    }

    fn disarm(&mut self, pid: i32) {
        self.probes.disarm(pid as u32);
    }

    fn skip_in_prefilter(&mut self, dir: &Path) {
        let mut prefix = dir.as_os_str().as_bytes().to_vec();
        prefix.push(b'/');
        if !self.prefilter.exclude(&prefix) {
            log::debug!("no room in the prefilter to skip {}", dir.display());
            return;
        }
        match self.probes.set_prefilter(&self.prefilter) {
            Ok(()) => log::debug!("the prefilter skips {}", dir.display()),
            Err(e) => log::debug!("cannot make the prefilter skip {}: {e}", dir.display()),
        }
    }

    fn new_group(&mut self, parent: GroupId) -> anyhow::Result<GroupId> {
        Ok(self.session.new_child(parent)?)
    }

    fn move_into(&mut self, group: GroupId, pid: i32) -> anyhow::Result<()> {
        match self.session.add_process(group, pid) {
            Err(CgroupError::Io { error, .. }) if error.raw_os_error() == Some(libc::ESRCH) => {
                Ok(())
            }
            result => Ok(result?),
        }
    }

    fn adopt(&mut self, group: GroupId, adoption: Adoption<GroupId>) -> anyhow::Result<()> {
        let (child, from) = (adoption.child, adoption.from);
        let sweep: Sweep = Arc::new(move |pid| adoption.takes(pid, procfs::alive_parent));
        Ok(self.session.add_process_later(group, child, from, sweep)?)
    }

    fn warm(&mut self, pid: i32) {
        // For measuring what it saves (`cargo xtask bench --only 7`).
        if std::env::var_os("FORKMON_NO_PRECOPY").is_some() {
            return;
        }
        if self.precopier.is_none() {
            match Precopier::new() {
                Ok(precopier) => self.precopier = Some(precopier),
                Err(e) => {
                    log::debug!("cannot start the thread that copies standbys' pages: {e}");
                    return;
                }
            }
        }
        if let Some(precopier) = &self.precopier {
            precopier.start(pid);
        }
    }

    fn before_go(&mut self, pid: i32) {
        if let Some(precopier) = &self.precopier {
            let started = std::time::Instant::now();
            precopier.settle(pid);
            log::debug!("settled standby {pid}'s copy in {:?}", started.elapsed());
        }
    }

    fn members(&self, group: GroupId) -> anyhow::Result<Vec<i32>> {
        Ok(self.session.procs(group)?)
    }

    fn all_members(&self, group: GroupId) -> Vec<i32> {
        self.session.all_procs(group)
    }

    fn signal(&mut self, pid: i32, signal: Signal) {
        let _ = kill(Pid::from_raw(pid), signal);
    }

    fn kill_now(&mut self, group: GroupId) -> anyhow::Result<()> {
        Ok(self.session.kill_now(group)?)
    }

    fn kill_in_background(&mut self, group: GroupId) -> anyhow::Result<()> {
        Ok(self.session.kill_in_background(group)?)
    }

    fn wait_empty(&mut self, group: GroupId, timeout: Duration) -> anyhow::Result<bool> {
        Ok(self.session.wait_empty(group, timeout)?)
    }

    fn prepare(&mut self, group: GroupId) {
        self.session.prepare(group);
    }

    fn reap_empty(&mut self) {
        self.session.reap_empty();
    }

    fn kill(&mut self, pid: i32) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }

    fn opened_file(&self, pid: i32, fd: i64) -> Option<Identity> {
        let opened = format!("/proc/{pid}/fd/{fd}");
        let meta = fs::metadata(&opened).ok().filter(fs::Metadata::is_file)?;
        (!made_up_by_the_kernel(Path::new(&opened))).then(|| Identity::from_metadata(&meta))
    }

    fn file(&self, path: &Path) -> Option<Identity> {
        // By the path first: `/proc/self/fd/N` leads to the file behind the
        // fd (the stub's memfd, say), no file of the program's either.
        if ["/proc", "/sys", "/dev"]
            .iter()
            .any(|top| path.starts_with(top))
        {
            return None;
        }
        let _as_user = crate::credentials::as_program_user();
        let meta = fs::metadata(path).ok().filter(fs::Metadata::is_file)?;
        (!made_up_by_the_kernel(path)).then(|| Identity::from_metadata(&meta))
    }

    fn threads(&self, pid: i32) -> usize {
        procfs::thread_count(pid)
    }

    fn thread_states(&self, pid: i32) -> Vec<procfs::Thread> {
        procfs::threads(pid)
    }

    fn policy(&self, pid: i32) -> Policy {
        Policy::of(pid).unwrap_or(Policy::NORMAL)
    }

    fn give(&mut self, policy: Policy, pid: i32) {
        policy.give(pid);
    }

    fn watch(&mut self, file: &Path, baseline: Option<Identity>) -> Result<(), WatchError> {
        self.watcher.watch_with_baseline(file, baseline)
    }

    fn unwatch(&mut self, file: &Path) {
        self.watcher.unwatch(file);
    }
}

/// Whether `path` is on a file system whose files the kernel makes up as
/// they are read (/proc, /sys, cgroups): regular files to stat, but nobody
/// edits them, inotify says nothing of them, and `/proc/self/…` names
/// another file for forkmon than for the program.
fn made_up_by_the_kernel(path: &Path) -> bool {
    use nix::sys::statfs::{
        CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, PROC_SUPER_MAGIC, SYSFS_MAGIC, statfs,
    };
    statfs(path).is_ok_and(|fs| {
        [
            PROC_SUPER_MAGIC,
            SYSFS_MAGIC,
            CGROUP2_SUPER_MAGIC,
            CGROUP_SUPER_MAGIC,
        ]
        .contains(&fs.filesystem_type())
    })
}
