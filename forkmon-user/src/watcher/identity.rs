//! What a file is, as far as change detection goes.
use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// File timestamps come from a coarse clock (one kernel tick, up to 10 ms):
/// a same-size write in the same tick as the baseline's ctime leaves the
/// identity unchanged. A baseline this close to "now" is treated as
/// ambiguous: any later event for the file then counts as a change.
pub(super) const AMBIGUOUS_WINDOW: Duration = Duration::from_millis(30);

/// What a file is, as far as change detection goes. Two stats of an
/// unchanged file give equal identities; a save (in place or by rename)
/// changes at least one field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl Identity {
    /// Stats `path`, following symlinks. Never opens or writes the file.
    pub fn of(path: &Path) -> io::Result<Identity> {
        Ok(Identity::from_metadata(&fs::metadata(path)?))
    }

    pub fn from_metadata(meta: &fs::Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }

    /// Whether a write in the same timestamp tick as this identity's ctime
    /// could still happen (see [`AMBIGUOUS_WINDOW`]).
    pub(super) fn is_recent(&self) -> bool {
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        now_ns - self.ctime_ns < AMBIGUOUS_WINDOW.as_nanos() as i128
    }
}

/// Stats `path` now; `None` when it does not exist (or cannot be reached).
/// Callers hold the program user's credentials (see `credentials`).
pub(super) fn stat(path: &Path) -> Option<Identity> {
    match Identity::of(path) {
        Ok(identity) => Some(identity),
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                log::debug!("watcher: cannot stat {}: {e}", path.display());
            }
            None
        }
    }
}
