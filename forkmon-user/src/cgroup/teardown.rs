//! Killing and removing a whole session directory from outside the
//! [`Session`](super::Session) that made it: by the watchdog once forkmon
//! is gone, or by a later forkmon finding it left behind.
use std::{
    fs, io,
    os::fd::AsFd as _,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    fcntl::{OFlag, open},
    sys::stat::{Mode, fstat},
};

use super::{
    CgroupError,
    files::{all_procs, kill_and_wait, remove_descendants},
};

/// How long a clean-up waits for killed processes to disappear.
const CLEAN_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// Kill every process of a session cgroup, wait for them to die (up to 5
/// s), and remove the session's directories, deepest first. Nothing to do
/// if `session_dir` does not exist, or if `ino` is given and is not the
/// directory's inode (cgroup inode numbers are never reused), so that a
/// watchdog never touches a newer session that happens to have the same
/// name.
pub fn clean_up_session(session_dir: &Path, ino: Option<u64>) -> Result<(), CgroupError> {
    let timeout = CLEAN_UP_TIMEOUT;
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
