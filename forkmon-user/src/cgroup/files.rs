//! The cgroup files and directories, one operation each: opening relative
//! to a directory fd, reading and writing the interface files, killing a
//! subtree and waiting for it to empty, removing directories.
use std::{
    ffi::{OsStr, OsString},
    fs::{self, File},
    io::{self, Write as _},
    os::{
        fd::{AsFd, AsRawFd as _, BorrowedFd, OwnedFd},
        unix::fs::FileExt as _,
    },
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    fcntl::{OFlag, openat},
    poll::{PollFd, PollFlags, ppoll},
    sys::{
        signal::{self, Signal},
        stat::Mode,
        time::TimeSpec,
    },
    unistd::{Pid, UnlinkatFlags, unlinkat},
};

pub(super) fn open_dir_at<P: ?Sized + nix::NixPath>(
    dir: BorrowedFd<'_>,
    name: &P,
) -> nix::Result<OwnedFd> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

pub(super) fn open_file(dir: BorrowedFd<'_>, name: &str, flags: OFlag) -> io::Result<File> {
    Ok(File::from(openat(
        dir,
        name,
        flags | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?))
}

pub(super) fn write_file(dir: BorrowedFd<'_>, name: &str, content: &[u8]) -> io::Result<()> {
    open_file(dir, name, OFlag::O_WRONLY)?.write_all(content)
}

fn read_file(dir: BorrowedFd<'_>, name: &str) -> io::Result<String> {
    io::read_to_string(open_file(dir, name, OFlag::O_RDONLY)?)
}

/// Set a `max`-able limit file to `max` if it is not already.
pub(super) fn unlimit(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    if read_file(dir, name)?.trim() != "max" {
        write_file(dir, name, b"max")?;
    }
    Ok(())
}

pub(super) fn read_procs(dir: BorrowedFd<'_>) -> io::Result<Vec<i32>> {
    Ok(read_file(dir, "cgroup.procs")?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// The processes of `dir` and of all cgroups nested in it (best effort).
pub(super) fn all_procs(dir: BorrowedFd<'_>) -> Vec<i32> {
    let mut pids = read_procs(dir).unwrap_or_default();
    let _ = for_each_descendant(dir, |_, _, sub| {
        pids.extend(read_procs(sub).unwrap_or_default());
    });
    pids
}

/// Whether the cgroup at `path` holds processes (or cannot be read).
pub(super) fn dir_populated(path: &Path) -> bool {
    fs::read(path.join("cgroup.events")).map_or(true, |events| populated(&events))
}

/// Whether the group open at `dir` holds a process (or cannot be read).
pub(super) fn dir_fd_populated(dir: BorrowedFd<'_>) -> bool {
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

/// Set once a write to `cgroup.kill` found no such file (Linux < 5.14).
static NO_CGROUP_KILL: AtomicBool = AtomicBool::new(false);

/// Kill everything in `dir` and below: `cgroup.kill`, or on Linux < 5.14
/// SIGKILL to each process (see [`wait_until_empty`]).
pub(super) fn kill_tree(dir: BorrowedFd<'_>) -> io::Result<()> {
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
pub(super) fn kill_and_wait(dir: BorrowedFd<'_>, deadline: Instant) -> io::Result<bool> {
    kill_tree(dir)?;
    wait_until_empty(dir, deadline, true)
}

/// Waits until `cgroup.events` of `dir` says it is empty, or `deadline`
/// passes. Returns whether it emptied. Without `cgroup.kill` (Linux <
/// 5.14) killed processes may have forked between reading and signalling,
/// so the signal is sent again on every round; `killed` says whether the
/// group was killed.
pub(super) fn wait_until_empty(
    dir: BorrowedFd<'_>,
    deadline: Instant,
    killed: bool,
) -> io::Result<bool> {
    let events = open_file(dir, "cgroup.events", OFlag::O_RDONLY)?;
    wait_events_empty(dir, &events, deadline, killed)
}

/// [`wait_until_empty`] with `dir`'s `cgroup.events` already open.
pub(super) fn wait_events_empty(
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
pub(super) fn rmdir_at(
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
pub(super) fn subdirs(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
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
pub(super) fn remove_descendants(dir: BorrowedFd<'_>) -> io::Result<()> {
    let mut first_error = None;
    for_each_descendant(dir, |parent, name, _| {
        if let Err(e) = rmdir_at(parent, name, Instant::now()) {
            first_error.get_or_insert(e);
        }
    })?;
    first_error.map_or(Ok(()), |e| Err(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events() {
        assert!(populated(b"populated 1\nfrozen 0\n"));
        assert!(!populated(b"populated 0\nfrozen 0\n"));
    }
}
