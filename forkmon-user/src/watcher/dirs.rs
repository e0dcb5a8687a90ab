//! The inotify side: which directories are watched for which files, and
//! what the kernel's events mean for those files.
//!
//! One inotify watch per directory, shared by all its watched files and
//! reference-counted; events are matched to files by name. A watch follows
//! an inode, a directory is known by its path: when the directory at a
//! path goes away or is replaced (`rm -r dir; mkdir dir`), the path is
//! watched anew (see [`Dirs::refresh`]), and while it is missing its parent
//! is watched to see it come back.
//!
//! Every look-up here (`canonicalize`, `inotify_add_watch`) is made on the
//! program's files, so callers hold the program user's credentials (see
//! `credentials`) around [`Dirs::watch`] and [`Dirs::refresh`].
use std::{
    collections::{HashMap, HashSet},
    ffi::{OsStr, OsString},
    fs, io,
    path::{Path, PathBuf},
};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use tokio::io::{Interest, unix::AsyncFd};

use super::{WatchError, debounce::EventKind};

/// What a directory watch listens to. Every way a file's content or identity
/// can change under its name:
/// - `CLOSE_WRITE`: in-place saves (truncate, write, close), reported once
///   the writer is done;
/// - `MOVED_TO`, `CREATE`: a new file takes the name (rename-over saves,
///   recreate after delete, hard links);
/// - `MOVED_FROM`, `DELETE`: the name goes away (backup-then-rename and
///   delete-then-recreate saves start this way; missing files are waited for);
/// - `ATTRIB`: `touch`, chmod, truncate through another name (ctime moves);
/// - `MODIFY`: writers that keep the file open (logs, `cat >`) never send
///   `CLOSE_WRITE`. Because it fires on every write(), a burst of only
///   `MODIFY` events is evaluated after the writes pause
///   ([`MODIFY_QUIET`](super::debounce::MODIFY_QUIET), at most
///   [`MODIFY_CAP`](super::debounce::MODIFY_CAP) after the first), not after
///   `restart`, so a save in progress is not reported half-written; any
///   other event in the burst brings the usual `restart` deadline.
/// - `DELETE_SELF`, `MOVE_SELF` (plus the implicit `IGNORED`, `UNMOUNT`):
///   the directory itself went away; its files are re-checked. (Not sent
///   while something keeps a deleted directory alive: see
///   [`Dirs::refresh`].)
///
/// The parent of a directory that went away is watched with the same mask,
/// for `CREATE` and `MOVED_TO` of the directory's name.
///
/// `EXCL_UNLINK` drops events from files already unlinked from the directory
/// (e.g. the old file after a rename-over, still open somewhere), and
/// `ONLYDIR` makes sure the parent really is a directory. mmap writes produce
/// no inotify event at all; they show up at the writer's next close or
/// metadata change.
const WATCH_MASK: WatchMask = WatchMask::CLOSE_WRITE
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::CREATE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::DELETE)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::MODIFY)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::EXCL_UNLINK)
    .union(WatchMask::ONLYDIR);

/// Read buffer: many events per read(2); at least one event with the
/// longest name (16 + NAME_MAX + 1 bytes).
const READ_BUFFER: usize = 8192;

/// Maps an `inotify_init1` failure: `EMFILE` is the per-user instance limit
/// (`fs.inotify.max_user_instances`) or the process's fd limit.
fn init_error(source: io::Error) -> WatchError {
    if source.raw_os_error() == Some(libc::EMFILE) {
        WatchError::InstanceLimit
    } else {
        WatchError::Init { source }
    }
}

/// Maps an `inotify_add_watch` failure: `ENOSPC` is the per-user watch limit
/// (`fs.inotify.max_user_watches`), not a full disk.
fn add_watch_error(dir: &Path, source: io::Error) -> WatchError {
    if source.raw_os_error() == Some(libc::ENOSPC) {
        WatchError::WatchLimit {
            dir: dir.to_path_buf(),
        }
    } else {
        WatchError::AddWatch {
            dir: dir.to_path_buf(),
            source,
        }
    }
}

/// A name in a watched directory.
type Key = (PathBuf, OsString);

fn split(path: &Path) -> Option<Key> {
    Some((
        path.parent()?.to_path_buf(),
        path.file_name()?.to_os_string(),
    ))
}

/// The (directory, name) pairs under which `file` is watched: its own, and
/// its symlink target's if that differs, so edits to the target are seen
/// too.
fn watch_keys(file: &Path) -> Result<Vec<Key>, WatchError> {
    let own = split(file).ok_or_else(|| WatchError::NoParent {
        path: file.to_path_buf(),
    })?;
    let mut keys = vec![own];
    if let Ok(target) = fs::canonicalize(file)
        && let Some(key) = split(&target)
        && !keys.contains(&key)
    {
        keys.push(key);
    }
    Ok(keys)
}

/// Whether an `inotify_add_watch` failed because there is no directory at
/// that path (`ENOTDIR`: a file took its name, or one of its parents').
fn is_gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR))
}

#[derive(Default)]
struct DirState {
    /// `None` when the directory went away; re-added at the next evaluation
    /// (or `watch`) if it is back.
    wd: Option<WatchDescriptor>,
    /// Watched names in this directory, and the watched files they stand for
    /// (usually one; more when symlinks lead to the same target).
    names: HashMap<OsString, Vec<PathBuf>>,
    /// Subdirectories that went away, by name: this directory is watched to
    /// see them come back.
    lost: HashSet<OsString>,
    /// A name went away from it since the last [`Dirs::refresh`]: the
    /// directory itself may be going (`rm -r` empties it first).
    emptied: bool,
}

impl DirState {
    fn in_use(&self) -> bool {
        !self.names.is_empty() || !self.lost.is_empty()
    }
}

/// What events say about the watched files.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Change {
    /// Events of this kind for these files ([`EventKind::Recheck`]: their
    /// directory went away).
    Files(Vec<PathBuf>, EventKind),
    /// The kernel's queue overflowed: events were lost, for any file.
    Overflow,
}

/// The inotify instance and its watches.
pub(super) struct Dirs {
    inotify: AsyncFd<Inotify>,
    buffer: Vec<u8>,
    /// Watched files, and where each is watched (see [`watch_keys`]).
    files: HashMap<PathBuf, Vec<Key>>,
    dirs: HashMap<PathBuf, DirState>,
    /// Watch descriptor → the directory paths it watches (more than one
    /// when several paths lead to the same directory).
    wds: HashMap<i32, Vec<PathBuf>>,
}

impl Dirs {
    /// Starts an inotify instance. Must be called inside a tokio runtime
    /// (any flavour) with IO enabled.
    pub(super) fn new() -> Result<Dirs, WatchError> {
        // `Inotify::init` opens the fd with IN_NONBLOCK | IN_CLOEXEC.
        let inotify = Inotify::init().map_err(init_error)?;
        // SAFETY: the fd returned by `Inotify::as_raw_fd` is the one opened
        // just above; `Inotify` keeps it open until it is dropped (we never
        // call `Inotify::close`, which needs it by value and so out of the
        // `AsyncFd`), and always returns that same fd.
        let inotify = unsafe { AsyncFd::register_with_interest(inotify, Interest::READABLE) }
            .map_err(|e| WatchError::Init {
                source: e.into_parts().1,
            })?;
        Ok(Dirs {
            inotify,
            buffer: vec![0; READ_BUFFER],
            files: HashMap::new(),
            dirs: HashMap::new(),
            wds: HashMap::new(),
        })
    }

    /// Watches the directories `file` is in (its own, and its symlink
    /// target's). On a file already watched, re-resolves where a symlink
    /// points. Fails, changing nothing, when its own directory cannot be
    /// watched.
    pub(super) fn watch(&mut self, file: &Path) -> Result<(), WatchError> {
        let wanted = watch_keys(file)?;
        let old = self.files.get(file).cloned().unwrap_or_default();
        let mut keys = Vec::with_capacity(wanted.len());
        let mut added = Vec::new();
        for (i, key) in wanted.into_iter().enumerate() {
            match self.add_key(&key, file) {
                Ok(()) => {
                    if !old.contains(&key) {
                        added.push(key.clone());
                    }
                    keys.push(key);
                }
                // The file's own directory is required, and a full watch
                // table is worth stopping for; a symlink target's directory
                // we cannot read only costs its events.
                Err(e) if i == 0 || matches!(e, WatchError::WatchLimit { .. }) => {
                    for key in &added {
                        self.remove_key(key, file);
                    }
                    return Err(e);
                }
                Err(e) => {
                    log::warn!("{e}; changes made through the symlink's target may go unnoticed");
                }
            }
        }
        for key in &old {
            if !keys.contains(key) {
                self.remove_key(key, file);
            }
        }
        self.files.insert(file.to_path_buf(), keys);
        Ok(())
    }

    /// Stops watching `file`; its directory stays watched while other
    /// watched files are in it. Unknown paths are ignored.
    pub(super) fn unwatch(&mut self, file: &Path) {
        let Some(keys) = self.files.remove(file) else {
            return;
        };
        for key in &keys {
            self.remove_key(key, file);
        }
    }

    /// Registers `file` under `key`, adding the directory watch if needed.
    fn add_key(&mut self, (dir, name): &Key, file: &Path) -> Result<(), WatchError> {
        let has_wd = self.dirs.get(dir).is_some_and(|d| d.wd.is_some());
        if !has_wd {
            self.add_watch(dir).map_err(|e| add_watch_error(dir, e))?;
            self.stop_waiting(dir);
        }
        let files = self
            .dirs
            .get_mut(dir)
            .expect("registered above")
            .names
            .entry(name.clone())
            .or_default();
        if !files.iter().any(|f| f == file) {
            files.push(file.to_path_buf());
        }
        Ok(())
    }

    /// Unregisters `file` from `key`; drops the directory watch when no
    /// watched file is left in it.
    fn remove_key(&mut self, (dir, name): &Key, file: &Path) {
        let Some(state) = self.dirs.get_mut(dir) else {
            return;
        };
        if let Some(files) = state.names.get_mut(name) {
            files.retain(|f| f != file);
            if files.is_empty() {
                state.names.remove(name);
            }
        }
        self.release(dir);
    }

    /// Forgets `dir`, and drops its watch, once nothing needs it: no watched
    /// file in it, no lost subdirectory to wait for.
    fn release(&mut self, dir: &Path) {
        if self.dirs.get(dir).is_none_or(DirState::in_use) {
            return;
        }
        if let Some(wd) = self.dirs.remove(dir).and_then(|d| d.wd) {
            self.let_go(dir, wd);
        }
        // Its parent may have been watched only to see it come back.
        self.stop_waiting(dir);
    }

    /// `dir` no longer uses watch `wd`, which is removed unless another
    /// path still does.
    fn let_go(&mut self, dir: &Path, wd: WatchDescriptor) {
        let id = wd.get_watch_descriptor_id();
        if let Some(paths) = self.wds.get_mut(&id) {
            paths.retain(|p| p != dir);
            if !paths.is_empty() {
                return; // another path still uses this directory's watch
            }
            self.wds.remove(&id);
        }
        if let Err(e) = self.inotify.get_ref().watches().remove(wd) {
            log::debug!("watcher: removing the watch on {}: {e}", dir.display());
        }
    }

    /// Adds the watch on `dir` and files it under that path: the one place
    /// a watch is added, for a directory watched for the first time, one
    /// that is back, and one that replaced the watched one under the same
    /// path (whose watch is let go). Returns whether the directory at `dir`
    /// is not the one watched there before (or none was).
    fn add_watch(&mut self, dir: &Path) -> io::Result<bool> {
        let wd = self.inotify.get_ref().watches().add(dir, WATCH_MASK)?;
        let paths = self.wds.entry(wd.get_watch_descriptor_id()).or_default();
        if !paths.iter().any(|p| p == dir) {
            paths.push(dir.to_path_buf());
        }
        let state = self.dirs.entry(dir.to_path_buf()).or_default();
        match state.wd.replace(wd.clone()) {
            // The kernel gives the same watch back for the same inode.
            Some(old) if old == wd => Ok(false),
            Some(old) => {
                self.let_go(dir, old);
                Ok(true)
            }
            None => Ok(true),
        }
    }

    /// `dir` is gone: its parent is watched to see it come back (and the
    /// parent's parent, if the parent is gone too).
    fn wait_for(&mut self, dir: &Path) {
        let Some((parent, name)) = split(dir) else {
            return;
        };
        let state = self.dirs.entry(parent.clone()).or_default();
        state.lost.insert(name);
        if state.wd.is_some() {
            return;
        }
        match self.add_watch(&parent) {
            Ok(_) => {}
            Err(e) if is_gone(&e) => self.wait_for(&parent),
            // Retried at each refresh, as a lost directory.
            Err(e) => log::debug!(
                "watcher: cannot watch {} for {} to come back: {e}",
                parent.display(),
                dir.display()
            ),
        }
    }

    /// `dir` is watched again, or no longer needed: its parent stops
    /// waiting for it.
    fn stop_waiting(&mut self, dir: &Path) {
        let Some((parent, name)) = split(dir) else {
            return;
        };
        if let Some(state) = self.dirs.get_mut(&parent)
            && state.lost.remove(&name)
        {
            self.release(&parent);
        }
    }

    /// The watched files in `dir` and in its lost subdirectories.
    fn files_under(&self, dir: &Path) -> Vec<PathBuf> {
        let Some(state) = self.dirs.get(dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = state.names.values().flatten().cloned().collect();
        for name in &state.lost {
            files.extend(self.files_under(&dir.join(name)));
        }
        files
    }

    /// Watches each directory that may have gone or been replaced as it is
    /// now: those whose watch went away ([`dir_lost`](Self::dir_lost)), and
    /// those a name went away from since the last refresh. A directory
    /// removed (`rm -r`) while something keeps it alive, as a checkpoint
    /// holding the watched file open does, sends no `DELETE_SELF` until
    /// then: its watch would stay on the deleted directory, and a new one
    /// made under the same path would go unseen. The names it lost are the
    /// only sign. Re-adding the watch by path tells: the same directory
    /// gives the same watch back; another one gets a new watch, and the old
    /// one is let go; none is waited for from the parent.
    ///
    /// Returns the files in the directories that are back, replaced or
    /// gone, to be re-checked; the caller looks at them after this, with
    /// the watches in place.
    pub(super) fn refresh(&mut self) -> Vec<PathBuf> {
        let mut suspects: Vec<PathBuf> = self
            .dirs
            .iter()
            .filter(|(_, d)| d.wd.is_none() || d.emptied)
            .map(|(dir, _)| dir.clone())
            .collect();
        // Parents first: one that is back is watched before its children.
        suspects.sort();
        let mut recheck = Vec::new();
        for dir in suspects {
            let Some(state) = self.dirs.get_mut(&dir) else {
                continue; // released meanwhile
            };
            state.emptied = false;
            match self.add_watch(&dir) {
                Ok(false) => {}
                Ok(true) => {
                    log::debug!("watcher: watching {} again", dir.display());
                    self.stop_waiting(&dir);
                    recheck.extend(self.files_under(&dir));
                }
                Err(e) if is_gone(&e) => {
                    // Its watch, if any, is on a directory no longer there.
                    if let Some(old) = self.dirs.get_mut(&dir).and_then(|d| d.wd.take()) {
                        log::debug!("watcher: directory {} went away", dir.display());
                        self.let_go(&dir, old);
                        recheck.extend(self.files_under(&dir));
                    }
                    self.wait_for(&dir);
                }
                Err(e) => log::debug!("watcher: cannot re-watch {}: {e}", dir.display()),
            }
        }
        recheck
    }

    /// Waits until the kernel has events queued. Cancel-safe.
    pub(super) async fn readable(&self) -> Result<(), WatchError> {
        let mut guard = self
            .inotify
            .readable()
            .await
            .map_err(|source| WatchError::Read { source })?;
        // Forget the readiness; the caller then reads to EAGAIN: an event
        // arriving in between sets it again, so no wake-up is lost.
        guard.clear_ready();
        Ok(())
    }

    /// Reads the events queued, with one read(2), and says what they mean;
    /// `None` when there are none. Never blocks.
    pub(super) fn read(&mut self) -> Result<Option<Vec<Change>>, WatchError> {
        let events: Vec<(i32, EventMask, Option<OsString>)> = loop {
            match self.inotify.get_mut().read_events(&mut self.buffer) {
                Ok(events) => {
                    break events
                        .map(|e| {
                            (
                                e.wd.get_watch_descriptor_id(),
                                e.mask,
                                e.name.map(OsStr::to_os_string),
                            )
                        })
                        .collect();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(WatchError::Read { source }),
            }
        };
        let mut changes = Vec::with_capacity(events.len());
        for (wd, mask, name) in events {
            self.interpret(wd, mask, name.as_deref(), &mut changes);
        }
        Ok(Some(changes))
    }

    /// What one event means for the watched files, added to `changes`.
    fn interpret(
        &mut self,
        wd: i32,
        mask: EventMask,
        name: Option<&OsStr>,
        changes: &mut Vec<Change>,
    ) {
        if mask.contains(EventMask::Q_OVERFLOW) {
            changes.push(Change::Overflow);
            return;
        }
        let Some(dirs) = self.wds.get(&wd) else {
            return; // a watch we removed
        };
        if mask.intersects(
            EventMask::IGNORED | EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::UNMOUNT,
        ) {
            let files = self.dir_lost(wd, mask.contains(EventMask::MOVE_SELF));
            changes.push(Change::Files(files, EventKind::Recheck));
            return;
        }
        let Some(name) = name else {
            return;
        };
        let kind = if mask.contains(EventMask::MODIFY) {
            EventKind::Modify
        } else {
            EventKind::Strong
        };
        let files: Vec<PathBuf> = dirs
            .iter()
            .filter_map(|dir| self.dirs.get(dir)?.names.get(name))
            .flatten()
            .cloned()
            .collect();
        for file in &files {
            log::trace!("watcher: {mask:?} on {}", file.display());
        }
        // A lost subdirectory of that name may be back: its files are
        // re-checked, and the evaluation watches it again.
        let back: Vec<PathBuf> = dirs
            .iter()
            .filter(|dir| self.dirs.get(*dir).is_some_and(|d| d.lost.contains(name)))
            .flat_map(|dir| self.files_under(&dir.join(name)))
            .collect();
        if mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM) {
            for dir in dirs {
                if let Some(state) = self.dirs.get_mut(dir) {
                    state.emptied = true;
                }
            }
        }
        changes.push(Change::Files(files, kind));
        if !back.is_empty() {
            changes.push(Change::Files(back, EventKind::Recheck));
        }
    }

    /// The directory behind watch `wd` was deleted, moved or unmounted: its
    /// watch is gone (or, when moved, now watches another place and is
    /// removed). Returns the files in it, to be re-checked; the next
    /// [`refresh`](Self::refresh) watches the path again if it exists, or
    /// its parent.
    fn dir_lost(&mut self, wd: i32, remove: bool) -> Vec<PathBuf> {
        let Some(dirs) = self.wds.remove(&wd) else {
            return Vec::new();
        };
        let mut files = Vec::new();
        let mut descriptor = None;
        for dir in &dirs {
            log::debug!("watcher: directory {} went away", dir.display());
            if let Some(state) = self.dirs.get_mut(dir) {
                descriptor = state.wd.take().or(descriptor);
            }
            files.extend(self.files_under(dir));
        }
        if remove
            && let Some(descriptor) = descriptor
            && let Err(e) = self.inotify.get_ref().watches().remove(descriptor)
        {
            log::debug!("watcher: removing a moved directory's watch: {e}");
        }
        files
    }

    /// How many directory paths are watched, and how many watches the
    /// kernel holds for them.
    #[cfg(test)]
    pub(super) fn watch_count(&self) -> (usize, usize) {
        use std::os::fd::AsRawFd as _;
        let fdinfo = format!("/proc/self/fdinfo/{}", self.inotify.as_raw_fd());
        let kernel = fs::read_to_string(fdinfo)
            .unwrap()
            .lines()
            .filter(|line| line.starts_with("inotify wd:"))
            .count();
        (self.dirs.len(), kernel)
    }

    /// Nothing is watched, and nothing is left of what was.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.files.is_empty() && self.dirs.is_empty() && self.wds.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_errors_say_how_to_raise_them() {
        let dir = Path::new("/some/dir");
        let err = add_watch_error(dir, io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(matches!(err, WatchError::WatchLimit { .. }));
        let msg = err.to_string();
        assert!(msg.contains("inotify watch limit"), "{msg}");
        assert!(
            msg.contains("sudo sysctl fs.inotify.max_user_watches=524288"),
            "{msg}"
        );
        assert!(msg.contains("/some/dir") && !msg.contains('\n'), "{msg}");

        let err = add_watch_error(dir, io::Error::from_raw_os_error(libc::EACCES));
        assert!(matches!(err, WatchError::AddWatch { .. }));

        let msg = init_error(io::Error::from_raw_os_error(libc::EMFILE)).to_string();
        assert!(
            msg.contains("sudo sysctl fs.inotify.max_user_instances=1024"),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
        let err = init_error(io::Error::from_raw_os_error(libc::ENOMEM));
        assert!(matches!(err, WatchError::Init { .. }));
    }
}
