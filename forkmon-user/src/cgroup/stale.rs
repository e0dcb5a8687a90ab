//! Sessions left behind by forkmon runs that are gone, and removing them.
//!
//! A forkmon killed together with its watchdog (both SIGKILLed at once, as
//! a session's whole process group or cgroup may be) leaves its session
//! directory behind, with whatever outlived the program in it (a
//! subprocess started with `setsid` escapes the parent-death signals). The
//! next forkmon would only remove one whose name its own pid reuses, so
//! every new session removes the stale ones beside it.
//!
//! Other forkmon runs may be alive at the same time, in the same cgroup:
//! theirs must never be touched. A session is alive as long as its forkmon
//! or its watchdog is: both hold a shared `flock` on the session directory
//! for as long as they live (the kernel drops it with their last
//! descriptor), so an exclusive lock taken without waiting proves both
//! gone, whatever pid namespace the session was made in and however pids
//! were reused since. It also keeps two new runs from removing the same
//! session at once, and a new run from racing a watchdog at work.
//! forkmons from before the lock take none: for their sessions, and as a
//! first, cheaper test, a session whose `forkmon-PID` names a live process
//! called `forkmon…` is left alone (that also spares the sessions of test
//! binaries, `forkmon-<hash>`).
use std::{
    fs::{self, File},
    io,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use nix::{
    fcntl::{OFlag, open},
    sys::stat::{Mode, fstat},
};

use super::{
    files::{open_dir_at, subdirs},
    teardown::clean_up_session,
};

/// Marks the session open at `dir` alive for as long as this process
/// keeps the descriptor open: a shared lock, which the kernel drops with
/// the last descriptor of it, however the process ends. Best effort: an
/// unlocked session is still spared while its forkmon lives.
pub(super) fn hold(dir: OwnedFd) -> OwnedFd {
    let dir = File::from(dir);
    if let Err(e) = dir.try_lock_shared() {
        log::debug!("cannot lock the session cgroup: {e}");
    }
    dir.into()
}

/// [`hold`] for the watchdog: opens `session_dir` if it is still the
/// session whose inode is `ino`. Keep the descriptor for as long as the
/// session is to be spared.
pub fn hold_session(session_dir: &Path, ino: u64) -> Option<OwnedFd> {
    let dir = open(
        session_dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    (fstat(&dir).ok()?.st_ino == ino).then(|| hold(dir))
}

/// Removes, from a thread of its own, the stale sessions in `parent` (the
/// cgroup open at `parent_path`): a new session should not wait for
/// processes a dead run left to exit.
pub(super) fn remove_in_background(parent: &OwnedFd, parent_path: &Path) {
    let parent = match parent.try_clone() {
        Ok(parent) => parent,
        Err(e) => {
            log::debug!("cannot look for stale cgroups: {e}");
            return;
        }
    };
    let parent_path = parent_path.to_owned();
    let spawned = std::thread::Builder::new()
        .name("forkmon-stale".into())
        .spawn(move || remove(&parent, &parent_path));
    if let Err(e) = spawned {
        log::debug!("cannot look for stale cgroups: {e}");
    }
}

/// Kills what is left in every stale session in `parent` and removes it;
/// returns the paths of those removed. Failures are only logged: the next
/// run tries again.
fn remove(parent: &OwnedFd, parent_path: &Path) -> Vec<PathBuf> {
    let names = match subdirs(parent.as_fd()) {
        Ok(names) => names,
        Err(e) => {
            log::debug!("cannot list {}: {e}", parent_path.display());
            return Vec::new();
        }
    };
    let own = std::process::id();
    let mut removed = Vec::new();
    for name in names {
        let Some(pid) = name.to_str().and_then(session_pid) else {
            continue;
        };
        if pid == own || forkmon_lives(pid) {
            continue;
        }
        let Ok(dir) = open_dir_at(parent.as_fd(), name.as_os_str()) else {
            continue;
        };
        let dir = File::from(dir);
        // Held: alive (or being removed by another run).
        if dir.try_lock().is_err() {
            continue;
        }
        let Ok(ino) = fstat(&dir).map(|st| st.st_ino) else {
            continue;
        };
        let path = parent_path.join(&name);
        log::info!("removing stale cgroup {}", path.display());
        match clean_up_session(&path, Some(ino)) {
            Ok(()) => removed.push(path),
            Err(e) => log::debug!("cannot remove stale cgroup: {e}"),
        }
    }
    removed
}

/// The pid in a session's name, `forkmon-PID` or `forkmon-PID-N`.
fn session_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("forkmon-")?;
    let (pid, n) = rest.split_once('-').unwrap_or((rest, "0"));
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if number(pid) && number(n) {
        pid.parse().ok()
    } else {
        None
    }
}

/// Whether process `pid` exists and is a forkmon (or a forkmon test
/// binary). In doubt, it is.
fn forkmon_lives(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) => comm.starts_with("forkmon"),
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use std::{
        os::unix::fs::MetadataExt as _,
        sync::atomic::{AtomicU32, Ordering},
    };

    use super::*;
    use crate::cgroup::{
        files::all_procs,
        hierarchy::own_cgroup_dir,
        testing::{killed, root, spawn_moved},
    };

    #[test]
    fn reads_the_pid_in_session_names() {
        assert_eq!(session_pid("forkmon-123"), Some(123));
        assert_eq!(session_pid("forkmon-123-4"), Some(123));
        assert_eq!(session_pid("forkmon-"), None);
        assert_eq!(session_pid("forkmon-12x"), None);
        assert_eq!(session_pid("forkmon-123-"), None);
        assert_eq!(session_pid("forkmon-123-4-5"), None);
        assert_eq!(session_pid("forkmon-test-1"), None);
        assert_eq!(session_pid("forkmonx-1"), None);
        assert_eq!(session_pid("c1"), None);
    }

    /// A cgroup of this test's own beside this process's, where no other
    /// run looks for stale sessions; removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            static N: AtomicU32 = AtomicU32::new(0);
            let path = own_cgroup_dir().unwrap().join(format!(
                "fmtest-stale-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir(&path).unwrap();
            Scratch(path)
        }

        fn mkdir(&self, name: &str) -> PathBuf {
            let path = self.0.join(name);
            fs::create_dir_all(&path).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::write(self.0.join("cgroup.kill"), "1");
            let _ = clean_up_session(&self.0, None);
        }
    }

    fn pid_max() -> u32 {
        fs::read_to_string("/proc/sys/kernel/pid_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Sessions of no process, or of a process that is not forkmon, are
    /// removed with what is left in them; a session that is held, or whose
    /// forkmon lives, and whatever is not a session, are left alone.
    #[test]
    fn removes_the_sessions_of_dead_runs_only() {
        if !root() {
            return;
        }
        let scratch = Scratch::new();
        let no_process = pid_max() + 1;
        let dead_run = scratch.mkdir(&format!("forkmon-{no_process}/c1/c2"));
        let mut left = spawn_moved("exec sleep 100", |pid| {
            fs::write(dead_run.join("cgroup.procs"), pid.to_string()).unwrap();
        });
        // pid 1 is init, not a forkmon: the pid was reused.
        let reused = scratch.mkdir("forkmon-1-2");
        // Held, as by a live forkmon or watchdog in another pid namespace.
        let held = scratch.mkdir(&format!("forkmon-{}", no_process + 1));
        let _lock = hold_session(&held, fs::metadata(&held).unwrap().ino()).expect("held");
        // This very process: a forkmon test binary.
        let ours = scratch.mkdir(&format!("forkmon-{}-7", std::process::id()));
        let other = scratch.mkdir(&format!("other-{no_process}"));

        let parent = open(
            &scratch.0,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        let mut removed = remove(&parent, &scratch.0);
        removed.sort();
        let mut expected = vec![scratch.0.join(format!("forkmon-{no_process}")), reused];
        expected.sort();
        assert_eq!(removed, expected);
        assert!(removed.iter().all(|p| !p.exists()));
        assert!(killed(&mut left));
        assert!(held.is_dir() && ours.is_dir() && other.is_dir());
        assert!(all_procs(parent.as_fd()).is_empty());
    }
}
