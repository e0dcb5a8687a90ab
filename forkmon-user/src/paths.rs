//! Turn the paths processes pass to open into absolute paths.
//!
//! A relative path resolves against the process's cwd or a directory fd.
//! The cwd is known from the start (the target inherits forkmon's) and
//! passed on at fork; a chdir (reported by the eBPF program) makes the
//! resolver read it again from /proc. A directory fd is read live from
//! /proc when the record arrives, but a short-lived process may be gone by
//! then; so the resolver also keeps the directories the process opened and
//! falls back to those.
use std::{
    collections::HashMap,
    ffi::OsStr,
    fs,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use forkmon_common::{OpenRecord, open_syscall, path_state};

use crate::filter::absolute_lexical;

#[derive(Default)]
struct ProcessPaths {
    cwd: Option<PathBuf>,
    /// Absolute paths of fds the process opened (or inherited at fork).
    fds: HashMap<i32, PathBuf>,
}

#[derive(Default)]
pub struct PathResolver {
    processes: HashMap<u32, ProcessPaths>,
}

impl PathResolver {
    /// The target starts in `cwd` (it inherits forkmon's).
    pub fn new(target: u32, cwd: PathBuf) -> PathResolver {
        let mut resolver = PathResolver::default();
        resolver.processes.entry(target).or_default().cwd = Some(cwd);
        resolver
    }

    /// A child starts with its parent's cwd and fds.
    pub fn on_fork(&mut self, child: u32, parent: u32) {
        let inherited = self.processes.get(&parent).map(|p| ProcessPaths {
            cwd: p.cwd.clone(),
            fds: p.fds.clone(),
        });
        self.processes.insert(child, inherited.unwrap_or_default());
    }

    pub fn on_exit(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }

    /// The process changed its working directory: read it again when
    /// needed.
    pub fn on_chdir(&mut self, pid: u32) {
        if let Some(known) = self.processes.get_mut(&pid) {
            known.cwd = None;
        }
    }

    /// The absolute path `record` opened, if it can be known.
    pub fn resolve(&mut self, record: &OpenRecord) -> Option<PathBuf> {
        if record.path_state & path_state::UNREADABLE != 0 {
            return None;
        }
        let pid = record.tgid;
        let path = Path::new(OsStr::from_bytes(record.path_bytes()));
        let resolved = if path.is_absolute() {
            Some(absolute_lexical(Path::new("/"), path))
        } else {
            self.base_dir(pid, record.dirfd)
                .map(|base| absolute_lexical(&base, path))
        };
        let opened = record.syscall != open_syscall::STAT;
        if let (Some(abs), Ok(fd), true) = (&resolved, i32::try_from(record.ret), opened) {
            self.processes
                .entry(pid)
                .or_default()
                .fds
                .insert(fd, abs.clone());
        }
        resolved
    }

    fn base_dir(&mut self, pid: u32, dirfd: i32) -> Option<PathBuf> {
        let known = self.processes.entry(pid).or_default();
        if dirfd == libc::AT_FDCWD {
            // Known from the start or a fork, and forgotten at a chdir
            // (the eBPF program reports those): reading /proc costs 30–40
            // µs on a checkpoint's path.
            if known.cwd.is_none() {
                known.cwd = fs::read_link(format!("/proc/{pid}/cwd")).ok();
            }
            known.cwd.clone()
        } else {
            fs::read_link(format!("/proc/{pid}/fd/{dirfd}"))
                .ok()
                .or_else(|| known.fds.get(&dirfd).cloned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use forkmon_common::{OpenRecord, PATH_MAX, record_kind};

    fn record(pid: u32, dirfd: i32, path: &str, ret: i64) -> OpenRecord {
        let mut rec = OpenRecord {
            kind: record_kind::OPEN,
            syscall: 1,
            ts_ns: 0,
            tgid: pid,
            tid: pid,
            ret,
            flags: 0,
            mode: 0,
            dirfd,
            path_len: path.len() as u32,
            path_state: 0,
            signalled: 0,
            comm: [0; 16],
            path: [0; PATH_MAX],
        };
        rec.path[..path.len()].copy_from_slice(path.as_bytes());
        rec
    }

    #[test]
    fn resolves_live_processes_from_proc() {
        let me = std::process::id();
        let mut paths = PathResolver::default();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            paths.resolve(&record(me, libc::AT_FDCWD, "./a/b", -2)),
            Some(cwd.join("a/b"))
        );
        assert_eq!(
            paths.resolve(&record(me, 12345, "/x/./y//z", -2)),
            Some(PathBuf::from("/x/y/z"))
        );
        let dir = fs::File::open("/usr").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&dir);
        assert_eq!(
            paths.resolve(&record(me, fd, "lib", -2)),
            Some(PathBuf::from("/usr/lib"))
        );
    }

    #[test]
    fn a_known_cwd_is_used_until_a_chdir() {
        let me = std::process::id();
        let mut paths = PathResolver::new(me, PathBuf::from("/known"));
        assert_eq!(
            paths.resolve(&record(me, libc::AT_FDCWD, "x", -2)),
            Some(PathBuf::from("/known/x")),
            "no /proc read while the cwd is known"
        );
        paths.on_chdir(me);
        assert_eq!(
            paths.resolve(&record(me, libc::AT_FDCWD, "x", -2)),
            Some(std::env::current_dir().unwrap().join("x"))
        );
    }

    #[test]
    fn falls_back_to_what_was_learnt_once_the_process_is_gone() {
        // Pids above pid_max never exist in /proc.
        let (target, child) = (4_194_400, 4_194_401);
        let mut paths = PathResolver::new(target, PathBuf::from("/work"));
        assert_eq!(
            paths.resolve(&record(target, libc::AT_FDCWD, "src", 5)),
            Some(PathBuf::from("/work/src"))
        );
        paths.on_fork(child, target);
        assert_eq!(
            paths.resolve(&record(child, libc::AT_FDCWD, "x", 3)),
            Some(PathBuf::from("/work/x")),
            "cwd inherited at fork"
        );
        assert_eq!(
            paths.resolve(&record(child, 5, "lib.rs", 4)),
            Some(PathBuf::from("/work/src/lib.rs")),
            "directory fd inherited at fork"
        );
        paths.on_exit(child);
        assert_eq!(paths.resolve(&record(child, 5, "lib.rs", 4)), None);
    }
}
