//! Notice when watched files change on disk (inotify, read/stat only).
//!
//! forkmon checkpoints a program when it opens a watched file and resumes it
//! from there when the file changes. This module reports those changes.
//!
//! - **Directories, not inodes.** Editors save by writing a new file and
//!   renaming it over the old one, so an inode watch would go quiet after the
//!   first save. Each watched file's parent directory is watched instead (one
//!   inotify watch per directory, shared by all its watched files and
//!   reference-counted), and events are matched by name. A file reached
//!   through a symlink is also watched under its target's directory, so edits
//!   to the target are seen too.
//! - **Identity decides.** Events only say "look now"; a file has changed when
//!   its [`Identity`] (dev, inode, size, mtime, ctime; symlinks followed)
//!   differs from the baseline given to [`Watcher::watch_with_baseline`] or
//!   recorded at the last report, or when it has disappeared.
//! - **Debounce** ([`Delays`], the C forkmon's semantics): a burst is
//!   evaluated `restart` after its first event, so writers have finished;
//!   after a report, nothing is reported for `ignore`, but changes seen then
//!   are reported when the window ends, never dropped. A file that is missing
//!   at evaluation time (delete-then-recreate saves) holds the batch until it
//!   reappears or [`MISSING_GRACE`] passes.
//! - **Cancel-safe.** [`Watcher::next_event`] keeps all its state in the
//!   `Watcher`: events are moved from the kernel into that state without an
//!   `.await` in between, so dropping the future (e.g. in `tokio::select!`)
//!   loses nothing.
use std::{
    cell::Cell,
    collections::HashMap,
    ffi::{OsStr, OsString},
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use nix::sys::{
    time::TimeSpec,
    timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags},
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::Instant,
};

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
///   `MODIFY` events is evaluated after the writes pause ([`MODIFY_QUIET`],
///   at most [`MODIFY_CAP`] after the first), not after `restart`, so a
///   save in progress is not reported half-written; any other event in the
///   burst brings the usual `restart` deadline.
/// - `DELETE_SELF`, `MOVE_SELF` (plus the implicit `IGNORED`, `UNMOUNT`):
///   the directory itself went away; its files are re-checked.
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

/// How long a file missing at evaluation time is waited for before it is
/// reported anyway (as changed: gone).
pub const MISSING_GRACE: Duration = Duration::from_secs(2);
/// A burst of only `MODIFY` events is evaluated once writes pause this long…
pub const MODIFY_QUIET: Duration = Duration::from_millis(300);
/// …or this long after its first event, whichever comes first.
pub const MODIFY_CAP: Duration = Duration::from_secs(2);
/// How long before a burst's evaluation [`WatchEvent::Imminent`] is
/// reported, and from when the watcher polls the clock instead of sleeping:
/// waking from a sleep on an idle CPU takes 50–100 µs on a VM, which would
/// be most of a resume. Long enough for forkmon and a standby to wake.
pub const EVALUATION_LEAD: Duration = Duration::from_micros(500);
/// Shortest interval between re-checks for a missing file (when
/// `restart` is 0).
const MIN_RECHECK: Duration = Duration::from_millis(10);
/// File timestamps come from a coarse clock (one kernel tick, up to 10 ms):
/// a same-size write in the same tick as the baseline's ctime leaves the
/// identity unchanged. A baseline this close to "now" is treated as
/// ambiguous: any later event for the file then counts as a change.
const AMBIGUOUS_WINDOW: Duration = Duration::from_millis(30);
/// Read buffer: many events per read(2); at least one event with the
/// longest name (16 + NAME_MAX + 1 bytes).
const READ_BUFFER: usize = 8192;
/// Events read at most this long after the runtime's wake-up are dated
/// from that wake-up (see [`noticed_at`]); so an event that came while the
/// runtime was busy is dated at most this much before it happened.
const WAKE_UP_DATING: Duration = Duration::from_micros(250);

thread_local! {
    /// When this thread's runtime last woke from waiting for I/O or a timer.
    static WOKE_AT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Records that the runtime's thread just woke up. `main` installs it as
/// tokio's `on_thread_unpark` hook.
pub fn note_wake_up() {
    WOKE_AT.set(Some(Instant::now()));
}

/// When events read at `now` were noticed: at the runtime's wake-up that
/// brought them, if that was at most [`WAKE_UP_DATING`] ago. After a
/// wake-up from idle the runtime takes 30–50 µs (traced, this VM) before
/// the watcher reads inotify; dated from the wake-up, the restart delay
/// runs during that time instead of after it.
fn noticed_at(now: Instant) -> Instant {
    WOKE_AT
        .get()
        .filter(|woke| now.saturating_duration_since(*woke) <= WAKE_UP_DATING)
        .unwrap_or(now)
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "the inotify instance limit was reached (or this process is out of file descriptors); \
         raise it with `sudo sysctl fs.inotify.max_user_instances=1024`"
    )]
    InstanceLimit,
    #[error("cannot start inotify: {source}")]
    Init { source: io::Error },
    #[error(
        "cannot watch {}: the inotify watch limit was reached; \
         raise it with `sudo sysctl fs.inotify.max_user_watches=524288`",
        dir.display()
    )]
    WatchLimit { dir: PathBuf },
    #[error("cannot watch directory {}: {source}", dir.display())]
    AddWatch { dir: PathBuf, source: io::Error },
    #[error("cannot watch {}: it has no parent directory", path.display())]
    NoParent { path: PathBuf },
    #[error("cannot read inotify events: {source}")]
    Read { source: io::Error },
}

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

/// Debounce delays (see the module docs). Both may be zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delays {
    /// After the first event of a burst, wait this long before looking, so
    /// the writer has finished.
    pub restart: Duration,
    /// After a report, report nothing for this long; changes seen meanwhile
    /// are reported when it ends.
    pub ignore: Duration,
}

/// The C forkmon's default restart delay (`FORKMON_RESTART_DELAY`), in
/// milliseconds as the command line takes it. The CLI's defaults are these
/// constants, so the value lives in one place.
pub const DEFAULT_RESTART_MS: u64 = 50;
/// The C forkmon's default ignore delay (`FORKMON_IGNORE_DELAY`), in
/// milliseconds.
pub const DEFAULT_IGNORE_MS: u64 = 200;

impl Delays {}

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
    fn is_recent(&self) -> bool {
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        now_ns - self.ctime_ns < AMBIGUOUS_WINDOW.as_nanos() as i128
    }
}

/// Stats `path` now; `None` when it does not exist (or cannot be reached).
fn stat(path: &Path) -> Option<Identity> {
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

/// A name in a watched directory.
type Key = (PathBuf, OsString);

fn split(path: &Path) -> Option<Key> {
    Some((
        path.parent()?.to_path_buf(),
        path.file_name()?.to_os_string(),
    ))
}

/// The (directory, name) pairs under which `file` is watched: its own, and
/// its symlink target's if that differs.
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

struct FileState {
    /// Identity when last watched or reported; `None`: it did not exist.
    baseline: Option<Identity>,
    /// The baseline was taken within [`AMBIGUOUS_WINDOW`] of its ctime.
    baseline_ambiguous: bool,
    /// An event for this file arrived after the baseline was taken.
    touched: bool,
    /// When an evaluation first found it missing (holding the batch).
    missing_since: Option<Instant>,
    /// Where it is watched (see [`watch_keys`]).
    keys: Vec<Key>,
}

#[derive(Default)]
struct DirState {
    /// `None` when the directory went away; re-added at the next evaluation
    /// or `watch`.
    wd: Option<WatchDescriptor>,
    /// Watched names in this directory, and the watched files they stand for
    /// (usually one; more when symlinks lead to the same target).
    names: HashMap<OsString, Vec<PathBuf>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EventKind {
    /// Only `MODIFY`: a write, possibly of many.
    Modify,
    /// Anything else: the file was closed, replaced, removed or touched.
    Strong,
    /// Not an event for the file (queue overflow, its directory went away,
    /// a stale baseline): re-check it like `Strong`, but without evidence
    /// of a write (see [`FileState::touched`]).
    Recheck,
}

/// Files with unevaluated events, and when to evaluate them.
#[derive(Default)]
struct Burst {
    /// In the order first seen.
    pending: Vec<PathBuf>,
    /// Files an event named during this burst, in the order first seen…
    touched: Vec<PathBuf>,
    /// …and those of them not yet announced ([`WatchEvent::Touched`]).
    unannounced: Vec<PathBuf>,
    strong_at: Option<Instant>,
    modify_first: Option<Instant>,
    modify_last: Option<Instant>,
    /// Re-check time while holding for a missing file.
    recheck_at: Option<Instant>,
    /// [`WatchEvent::Imminent`] was reported.
    imminent: bool,
}

/// What [`Watcher::next_event`] reports.
#[derive(Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// An event named these files: they have likely changed, which a later
    /// `Changed` confirms (or not) once the delays have passed.
    Touched(Vec<PathBuf>),
    /// The burst of `Touched` files is evaluated in at most
    /// [`EVALUATION_LEAD`] (the watcher polls the clock until then); reported
    /// once per burst, when it has a delay.
    Imminent,
    /// The files that changed, in the order their first event was seen;
    /// empty when the touched files all turned out unchanged.
    Changed(Vec<PathBuf>),
}

/// Watches files for changes; see the module docs.
pub struct Watcher {
    inotify: AsyncFd<Inotify>,
    timer: Timer,
    delays: Delays,
    files: HashMap<PathBuf, FileState>,
    dirs: HashMap<PathBuf, DirState>,
    /// Watch descriptor → the directory paths it watches (more than one
    /// when several paths lead to the same directory).
    wds: HashMap<i32, Vec<PathBuf>>,
    burst: Burst,
    /// End of the ignore window after the last report.
    ignore_until: Option<Instant>,
}

impl Watcher {
    /// Starts an inotify instance. Must be called inside a tokio runtime
    /// (any flavour) with IO enabled.
    pub fn new(delays: Delays) -> Result<Watcher, WatchError> {
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
        let timer = Timer::new().map_err(|source| WatchError::Init { source })?;
        Ok(Watcher {
            inotify,
            timer,
            delays,
            files: HashMap::new(),
            dirs: HashMap::new(),
            wds: HashMap::new(),
            burst: Burst::default(),
            ignore_until: None,
        })
    }

    /// Watches `file` (absolute, lexically clean; its parent directory must
    /// exist) for changes from `baseline`, its identity when the program
    /// opened it (`None`: it did not exist). If the file already differs
    /// from it, that is reported like any change, so nothing between open
    /// and watch is missed. Idempotent: on an already watched file it only
    /// replaces the baseline (re-arm after the program re-opened it) and
    /// re-resolves where a symlink points.
    pub fn watch_with_baseline(
        &mut self,
        file: &Path,
        baseline: Option<Identity>,
    ) -> Result<(), WatchError> {
        self.watch_inner(file, baseline)
    }

    /// Stops watching `file`; its directory stays watched while other
    /// watched files are in it. Unknown paths are ignored.
    pub fn unwatch(&mut self, file: &Path) {
        let Some(state) = self.files.remove(file) else {
            return;
        };
        for key in &state.keys {
            self.remove_key(key, file);
        }
        self.burst.pending.retain(|p| p != file);
    }

    #[cfg(test)]
    /// The identity `file` is compared against (`None` if it is not watched
    /// or did not exist).
    pub fn baseline(&self, file: &Path) -> Option<Identity> {
        self.files.get(file).and_then(|s| s.baseline)
    }

    /// Waits for what happens next to the watched files, debounced as the
    /// module docs describe: [`WatchEvent::Touched`] as soon as an event
    /// names a watched file (once per file and burst), before the delays
    /// have passed; [`WatchEvent::Imminent`] just before the burst is
    /// evaluated; then [`WatchEvent::Changed`] with the files that changed,
    /// in the order their first event was seen (empty when the touched files
    /// all turned out unchanged). Each reported file's baseline is then its
    /// identity at report time.
    ///
    /// Cancel-safe: all progress lives in `self`.
    pub async fn next_event(&mut self) -> Result<WatchEvent, WatchError> {
        loop {
            self.drain()?;
            let now = Instant::now();
            let ready = self.ready_at(now);
            if let Some(at) = ready
                && at <= now
            {
                if let Some(batch) = self.evaluate(now) {
                    return Ok(WatchEvent::Changed(batch));
                }
                continue;
            }
            if !self.burst.unannounced.is_empty() {
                return Ok(WatchEvent::Touched(std::mem::take(
                    &mut self.burst.unannounced,
                )));
            }
            if let Some(at) = ready
                && now + EVALUATION_LEAD >= at
            {
                if !self.burst.imminent && !self.burst.touched.is_empty() {
                    self.burst.imminent = true;
                    return Ok(WatchEvent::Imminent);
                }
                // Blocks the runtime for at most the lead. Yields, so that a
                // process woken on this CPU (the standby told to poll) runs
                // at once rather than after us.
                while Instant::now() < at {
                    std::thread::yield_now();
                }
                continue;
            }
            let wake_at = ready.map(|at| at.checked_sub(EVALUATION_LEAD).unwrap_or(at));
            tokio::select! {
                guard = self.inotify.readable() => {
                    // Forget the readiness, then drain to EAGAIN at the top
                    // of the loop: an event arriving in between sets it
                    // again, so no wake-up is lost.
                    guard.map_err(|source| WatchError::Read { source })?.clear_ready();
                }
                () = self.timer.sleep_until(wake_at) => {}
            }
        }
    }

    fn watch_inner(&mut self, file: &Path, baseline: Option<Identity>) -> Result<(), WatchError> {
        // The program's file, with the program user's permissions: where a
        // symlink leads, and which directories are watched.
        let _as_user = crate::credentials::as_program_user();
        let wanted = watch_keys(file)?;
        let old = self
            .files
            .get(file)
            .map(|s| s.keys.clone())
            .unwrap_or_default();
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
        let state = self
            .files
            .entry(file.to_path_buf())
            .or_insert_with(|| FileState {
                baseline: None,
                baseline_ambiguous: false,
                touched: false,
                missing_since: None,
                keys: Vec::new(),
            });
        state.keys = keys;
        // The directory watch is in place: events from now on are seen. Those
        // already queued describe the past, which the stat below includes.
        let drained = self.drain();
        let now = stat(file);
        let state = self.files.get_mut(file).expect("inserted above");
        state.baseline = baseline;
        state.baseline_ambiguous = baseline.is_some_and(|b| b.is_recent());
        state.touched = false;
        state.missing_since = None;
        if now != baseline {
            self.mark_pending(file, EventKind::Recheck, Instant::now());
        }
        drained
    }

    /// Registers `file` under `key`, adding (or re-adding) the directory
    /// watch if needed.
    fn add_key(&mut self, (dir, name): &Key, file: &Path) -> Result<(), WatchError> {
        let has_wd = self.dirs.get(dir).is_some_and(|d| d.wd.is_some());
        if !has_wd {
            let wd = self
                .inotify
                .get_ref()
                .watches()
                .add(dir, WATCH_MASK)
                .map_err(|e| add_watch_error(dir, e))?;
            let paths = self.wds.entry(wd.get_watch_descriptor_id()).or_default();
            if !paths.contains(dir) {
                paths.push(dir.clone());
            }
            self.dirs.entry(dir.clone()).or_default().wd = Some(wd);
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
        if !state.names.is_empty() {
            return;
        }
        let Some(wd) = self.dirs.remove(dir).and_then(|d| d.wd) else {
            return;
        };
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

    /// Moves every queued event from the kernel into `self`. Never awaits.
    fn drain(&mut self) -> Result<(), WatchError> {
        let mut buffer = [0u8; READ_BUFFER];
        loop {
            let events: Vec<(i32, EventMask, Option<OsString>)> =
                match self.inotify.get_mut().read_events(&mut buffer) {
                    Ok(events) => events
                        .map(|e| {
                            (
                                e.wd.get_watch_descriptor_id(),
                                e.mask,
                                e.name.map(OsStr::to_os_string),
                            )
                        })
                        .collect(),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(source) => return Err(WatchError::Read { source }),
                };
            let now = noticed_at(Instant::now());
            for (wd, mask, name) in events {
                self.handle_event(wd, mask, name.as_deref(), now);
            }
        }
    }

    fn handle_event(&mut self, wd: i32, mask: EventMask, name: Option<&OsStr>, now: Instant) {
        if mask.contains(EventMask::Q_OVERFLOW) {
            log::warn!("inotify queue overflowed: re-checking every watched file");
            let mut all: Vec<PathBuf> = self.files.keys().cloned().collect();
            all.sort();
            for file in all {
                self.mark_pending(&file, EventKind::Recheck, now);
            }
            return;
        }
        let Some(dirs) = self.wds.get(&wd) else {
            return; // a watch we removed
        };
        if mask.intersects(
            EventMask::IGNORED | EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::UNMOUNT,
        ) {
            self.dir_lost(wd, mask.contains(EventMask::MOVE_SELF), now);
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
        for file in files {
            log::trace!("watcher: {mask:?} on {}", file.display());
            self.mark_pending(&file, kind, now);
        }
    }

    /// The directory behind watch `wd` was deleted, moved or unmounted: its
    /// watch is gone (or, when moved, now watches another place and is
    /// removed). Everything in it is re-checked; the watch is re-added at
    /// the next evaluation if the path exists again.
    fn dir_lost(&mut self, wd: i32, remove: bool, now: Instant) {
        let Some(dirs) = self.wds.remove(&wd) else {
            return;
        };
        let mut files = Vec::new();
        let mut descriptor = None;
        for dir in &dirs {
            log::debug!("watcher: directory {} went away", dir.display());
            if let Some(state) = self.dirs.get_mut(dir) {
                descriptor = state.wd.take().or(descriptor);
                files.extend(state.names.values().flatten().cloned());
            }
        }
        if remove
            && let Some(descriptor) = descriptor
            && let Err(e) = self.inotify.get_ref().watches().remove(descriptor)
        {
            log::debug!("watcher: removing a moved directory's watch: {e}");
        }
        for file in files {
            self.mark_pending(&file, EventKind::Recheck, now);
        }
    }

    fn mark_pending(&mut self, file: &Path, kind: EventKind, now: Instant) {
        let Some(state) = self.files.get_mut(file) else {
            return;
        };
        let burst = &mut self.burst;
        if kind != EventKind::Recheck {
            state.touched = true;
            if !burst.touched.iter().any(|p| p == file) {
                burst.touched.push(file.to_path_buf());
                burst.unannounced.push(file.to_path_buf());
            }
        }
        if !burst.pending.iter().any(|p| p == file) {
            burst.pending.push(file.to_path_buf());
        }
        // New activity: a held batch waits `restart` from here again.
        burst.recheck_at = None;
        match kind {
            EventKind::Strong | EventKind::Recheck => {
                burst.strong_at.get_or_insert(now);
            }
            EventKind::Modify => {
                burst.modify_first.get_or_insert(now);
                burst.modify_last = Some(now);
            }
        }
    }

    /// When the pending files are due for evaluation (`None`: none pending).
    fn ready_at(&self, now: Instant) -> Option<Instant> {
        let burst = &self.burst;
        if burst.pending.is_empty() {
            return None;
        }
        let restart = self.delays.restart;
        // `restart` after the burst's first event (the writer's first write
        // usually), or at once when the file is closed (or replaced) later.
        let first = [burst.strong_at, burst.modify_first]
            .into_iter()
            .flatten()
            .min();
        let strong = burst
            .strong_at
            .zip(first)
            .map(|(strong, first)| strong.max(first + restart));
        let modify = burst.modify_first.map(|first| {
            let last = burst.modify_last.unwrap_or(first);
            (last + MODIFY_QUIET)
                .min(first + MODIFY_CAP)
                .max(first + restart)
        });
        let at = [strong, modify, burst.recheck_at]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now);
        Some(self.ignore_until.map_or(at, |until| at.max(until)))
    }

    /// Re-stats the pending files. Returns the changed ones and makes their
    /// current identity the baseline, or holds everything while a file is
    /// missing (within [`MISSING_GRACE`]), or forgets unchanged files.
    fn evaluate(&mut self, now: Instant) -> Option<Vec<PathBuf>> {
        // See `watch_inner`: a file that became a symlink to one the user
        // may not reach is missing, not compared.
        let _as_user = crate::credentials::as_program_user();
        self.rewatch_lost_dirs();
        let pending = std::mem::take(&mut self.burst.pending);
        let mut results = Vec::with_capacity(pending.len());
        let mut hold = false;
        for file in &pending {
            let Some(state) = self.files.get_mut(file) else {
                continue;
            };
            let current = stat(file);
            let changed = match (current, state.baseline) {
                (None, None) => false,
                (None, Some(_)) => {
                    let since = *state.missing_since.get_or_insert(now);
                    let gave_up = now.duration_since(since) >= MISSING_GRACE;
                    hold |= !gave_up;
                    gave_up
                }
                (Some(current), baseline) => {
                    state.missing_since = None;
                    Some(current) != baseline || (state.baseline_ambiguous && state.touched)
                }
            };
            results.push((file, current, changed));
        }
        if hold {
            self.burst.pending = pending;
            let burst = &mut self.burst;
            burst.strong_at = None;
            burst.modify_first = None;
            burst.modify_last = None;
            burst.recheck_at = Some(now + self.delays.restart.max(MIN_RECHECK));
            return None;
        }
        let announced = !std::mem::take(&mut self.burst).touched.is_empty();
        let mut batch = Vec::new();
        for (file, current, changed) in results {
            let Some(state) = self.files.get_mut(file) else {
                continue;
            };
            state.touched = false;
            if changed {
                state.baseline = current;
                state.baseline_ambiguous = current.is_some_and(|c| c.is_recent());
                state.missing_since = None;
                batch.push(file.clone());
            }
        }
        if batch.is_empty() {
            // Said to be touched, then unchanged: that burst is over too.
            return announced.then_some(batch);
        }
        log::debug!("watcher: changed: {batch:?}");
        self.ignore_until = Some(now + self.delays.ignore);
        Some(batch)
    }

    /// Re-adds watches on directories that went away, if they are back.
    /// Their files are pending already (see [`dir_lost`](Self::dir_lost)),
    /// and the watch is in place before they are stat'ed.
    fn rewatch_lost_dirs(&mut self) {
        let lost: Vec<PathBuf> = self
            .dirs
            .iter()
            .filter(|(_, d)| d.wd.is_none())
            .map(|(dir, _)| dir.clone())
            .collect();
        for dir in lost {
            match self.inotify.get_ref().watches().add(&dir, WATCH_MASK) {
                Ok(wd) => {
                    let paths = self.wds.entry(wd.get_watch_descriptor_id()).or_default();
                    if !paths.contains(&dir) {
                        paths.push(dir.clone());
                    }
                    if let Some(state) = self.dirs.get_mut(&dir) {
                        state.wd = Some(wd);
                    }
                }
                Err(e) => log::debug!("watcher: cannot re-watch {}: {e}", dir.display()),
            }
        }
    }
}

/// A timer precise to tens of microseconds: tokio's timer wheel rounds up
/// to the next millisecond, and forkmon resumes a program `restart` after a
/// change to the microsecond if it can.
struct Timer {
    fd: AsyncFd<TimerHandle>,
}

/// `AsyncFd` wants `AsRawFd`, which nix's `TimerFd` does not implement.
struct TimerHandle(TimerFd);

impl std::os::fd::AsRawFd for TimerHandle {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsFd::as_fd(&self.0).as_raw_fd()
    }
}

impl Timer {
    fn new() -> io::Result<Timer> {
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        // SAFETY: `TimerHandle` owns the timerfd and returns that same fd
        // until it is dropped, which the `AsyncFd` does before closing it.
        let fd = unsafe { AsyncFd::register_with_interest(TimerHandle(timer), Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Timer { fd })
    }

    /// Sleeps until `at`, or forever when `None`. Cancel-safe: each call
    /// sets the timer anew.
    async fn sleep_until(&self, at: Option<Instant>) {
        let Some(at) = at else {
            return std::future::pending().await;
        };
        let left = at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let armed = self.fd.get_ref().0.set(
            Expiration::OneShot(TimeSpec::from_duration(left)),
            TimerSetTimeFlags::empty(),
        );
        if let Err(e) = armed {
            // Never expected; tokio's timer is only less precise.
            log::debug!("watcher: cannot set the timer: {e}");
            return tokio::time::sleep_until(at).await;
        }
        loop {
            let Ok(mut guard) = self.fd.readable().await else {
                return tokio::time::sleep_until(at).await;
            };
            // Reading clears the expiration count; EAGAIN means the
            // readiness was stale (an earlier, cancelled sleep).
            match guard.try_io(|fd| fd.get_ref().0.wait().map_err(io::Error::from)) {
                Ok(_) => return,
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        os::{fd::AsRawFd as _, unix::fs::PermissionsExt as _},
        thread,
    };

    const PATIENCE: Duration = Duration::from_secs(3);

    fn watcher(restart_ms: u64, ignore_ms: u64) -> Watcher {
        Watcher::new(Delays {
            restart: Duration::from_millis(restart_ms),
            ignore: Duration::from_millis(ignore_ms),
        })
        .unwrap()
    }

    /// Watches `file` as forkmon does: against its identity when the
    /// program opened it (here, just before).
    fn watch(w: &mut Watcher, file: &Path) {
        w.watch_with_baseline(file, Identity::of(file).ok())
            .unwrap();
    }

    /// The next batch of changed files that is not empty.
    async fn changed(w: &mut Watcher) -> Result<Vec<PathBuf>, WatchError> {
        loop {
            if let WatchEvent::Changed(batch) = w.next_event().await?
                && !batch.is_empty()
            {
                return Ok(batch);
            }
        }
    }

    /// Whether `file`'s baseline is what it is now (`None`: missing).
    fn up_to_date(w: &Watcher, file: &Path) -> bool {
        w.baseline(file) == Identity::of(file).ok()
    }

    /// The watches the kernel holds for the watcher's inotify instance.
    fn kernel_watches(w: &Watcher) -> usize {
        let fdinfo = format!("/proc/self/fdinfo/{}", w.inotify.as_raw_fd());
        fs::read_to_string(fdinfo)
            .unwrap()
            .lines()
            .filter(|line| line.starts_with("inotify wd:"))
            .count()
    }

    /// The next batch, failing the test instead of hanging.
    async fn next(w: &mut Watcher) -> Vec<PathBuf> {
        tokio::time::timeout(PATIENCE, changed(w))
            .await
            .expect("no change reported within 3 s")
            .unwrap()
    }

    /// Asserts that nothing is reported for `ms`.
    async fn quiet(w: &mut Watcher, ms: u64) {
        if let Ok(batch) = tokio::time::timeout(Duration::from_millis(ms), changed(w)).await {
            panic!("unexpected report: {batch:?}");
        }
    }

    #[test]
    fn events_are_dated_from_a_recent_wake_up_only() {
        let now = Instant::now();
        WOKE_AT.set(None);
        assert_eq!(noticed_at(now), now, "no wake-up recorded");
        let recent = now - WAKE_UP_DATING / 2;
        WOKE_AT.set(Some(recent));
        assert_eq!(noticed_at(now), recent);
        let old = now - WAKE_UP_DATING * 2;
        WOKE_AT.set(Some(old));
        assert_eq!(noticed_at(now), now, "a wake-up long before the read");
        // The hook records when it ran, and a read within the window after
        // it is dated from then.
        let before = Instant::now();
        note_wake_up();
        let after = Instant::now();
        let noticed = noticed_at(before + WAKE_UP_DATING);
        assert!(
            before <= noticed && noticed <= after,
            "dated from the wake-up"
        );
    }

    fn setup(names: &[&str]) -> (tempfile::TempDir, Vec<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let paths = names
            .iter()
            .map(|n| {
                let p = dir.path().join(n);
                fs::write(&p, format!("old {n}\n")).unwrap();
                p
            })
            .collect();
        (dir, paths)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn in_place_save_is_reported() {
        let (_dir, p) = setup(&["x"]);
        let mut w = watcher(50, 200);
        watch(&mut w, &p[0]);
        fs::write(&p[0], "new\n").unwrap(); // truncate + write + close
        assert_eq!(next(&mut w).await, vec![p[0].clone()]);
        assert_eq!(w.baseline(&p[0]), Identity::of(&p[0]).ok());
    }

    /// The next event but `Imminent`.
    async fn next_event(w: &mut Watcher) -> WatchEvent {
        loop {
            match any_event(w).await {
                WatchEvent::Imminent => continue,
                event => return event,
            }
        }
    }

    async fn any_event(w: &mut Watcher) -> WatchEvent {
        tokio::time::timeout(PATIENCE, w.next_event())
            .await
            .expect("no event within 3 s")
            .unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn imminent_comes_once_just_before_the_evaluation() {
        let (_dir, p) = setup(&["x"]);
        let delay = Duration::from_millis(300);
        let mut w = watcher(delay.as_millis() as u64, 200);
        watch(&mut w, &p[0]);
        let saved = Instant::now();
        fs::write(&p[0], "new\n").unwrap();
        assert_eq!(
            any_event(&mut w).await,
            WatchEvent::Touched(vec![p[0].clone()])
        );
        fs::write(&p[0], "newer\n").unwrap();
        assert_eq!(any_event(&mut w).await, WatchEvent::Imminent);
        // The delay counts from when the watcher saw the first event, after
        // `saved`: these are lower bounds.
        assert!(saved.elapsed() >= delay - EVALUATION_LEAD);
        assert_eq!(
            any_event(&mut w).await,
            WatchEvent::Changed(vec![p[0].clone()])
        );
        assert!(saved.elapsed() >= delay);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn without_a_delay_nothing_is_imminent() {
        let (_dir, p) = setup(&["x"]);
        let mut w = watcher(0, 0);
        watch(&mut w, &p[0]);
        fs::write(&p[0], "new\n").unwrap();
        loop {
            match any_event(&mut w).await {
                WatchEvent::Touched(_) => continue,
                WatchEvent::Imminent => panic!("imminent without a delay"),
                WatchEvent::Changed(files) => break assert_eq!(files, vec![p[0].clone()]),
            }
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_touched_file_is_announced_before_the_delay() {
        let (_dir, p) = setup(&["x", "y"]);
        // A delay no test machine can overrun: the announcement comes first.
        let mut w = watcher(2000, 200);
        watch(&mut w, &p[0]);
        watch(&mut w, &p[1]);
        let saved = Instant::now();
        fs::write(&p[1], "new\n").unwrap();
        assert_eq!(
            next_event(&mut w).await,
            WatchEvent::Touched(vec![p[1].clone()])
        );
        assert!(saved.elapsed() < Duration::from_millis(2000));
        // Once per file and burst.
        fs::write(&p[1], "newer\n").unwrap();
        fs::write(&p[0], "new\n").unwrap();
        assert_eq!(
            next_event(&mut w).await,
            WatchEvent::Touched(vec![p[0].clone()])
        );
        assert_eq!(
            next_event(&mut w).await,
            WatchEvent::Changed(vec![p[1].clone(), p[0].clone()])
        );
        assert!(saved.elapsed() >= Duration::from_millis(2000));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_touched_but_unchanged_file_ends_its_burst_empty() {
        let (_dir, p) = setup(&["x"]);
        // Past the window in which a baseline's timestamps are ambiguous.
        thread::sleep(AMBIGUOUS_WINDOW + Duration::from_millis(20));
        let mut w = watcher(20, 200);
        watch(&mut w, &p[0]);
        // Opened for writing and closed: CLOSE_WRITE, nothing changed.
        drop(fs::OpenOptions::new().append(true).open(&p[0]).unwrap());
        assert_eq!(
            next_event(&mut w).await,
            WatchEvent::Touched(vec![p[0].clone()])
        );
        assert_eq!(next_event(&mut w).await, WatchEvent::Changed(vec![]));
        assert!(up_to_date(&w, &p[0]));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn rename_over_save_is_reported() {
        let (dir, p) = setup(&["x"]);
        let mut w = watcher(50, 200);
        watch(&mut w, &p[0]);
        let tmp = dir.path().join(".x.swp");
        fs::write(&tmp, "new\n").unwrap();
        fs::rename(&tmp, &p[0]).unwrap();
        assert_eq!(next(&mut w).await, vec![p[0].clone()]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn backup_then_write_save_is_reported() {
        let (dir, p) = setup(&["x"]);
        let mut w = watcher(50, 200);
        watch(&mut w, &p[0]);
        fs::rename(&p[0], dir.path().join("x~")).unwrap();
        fs::write(&p[0], "new\n").unwrap();
        assert_eq!(next(&mut w).await, vec![p[0].clone()]);
        assert_eq!(fs::read_to_string(&p[0]).unwrap(), "new\n");
        // The backup is not watched.
        fs::write(dir.path().join("x~"), "other\n").unwrap();
        quiet(&mut w, 400).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn delete_then_recreate_waits_for_the_new_file() {
        let (_dir, p) = setup(&["x"]);
        let mut w = watcher(20, 200);
        watch(&mut w, &p[0]);
        let file = p[0].clone();
        let writer = thread::spawn(move || {
            fs::remove_file(&file).unwrap();
            thread::sleep(Duration::from_millis(100));
            fs::write(&file, "new\n").unwrap();
        });
        assert_eq!(next(&mut w).await, vec![p[0].clone()]);
        writer.join().unwrap();
        // Reported once the new file exists, not while it was missing.
        assert!(w.baseline(&p[0]).is_some());
        assert_eq!(w.baseline(&p[0]), Identity::of(&p[0]).ok());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_file_gone_for_good_is_reported_after_the_grace() {
        let (_dir, p) = setup(&["x"]);
        let mut w = watcher(20, 200);
        watch(&mut w, &p[0]);
        fs::remove_file(&p[0]).unwrap();
        let batch = tokio::time::timeout(MISSING_GRACE + PATIENCE, changed(&mut w))
            .await
            .expect("deletion not reported")
            .unwrap();
        assert_eq!(batch, vec![p[0].clone()]);
        assert_eq!(w.baseline(&p[0]), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn untouched_and_unrelated_files_are_not_reported() {
        let (dir, p) = setup(&["x", "y"]);
        let mut w = watcher(50, 200);
        watch(&mut w, &p[0]);
        quiet(&mut w, 300).await;
        fs::write(&p[1], "new\n").unwrap();
        fs::write(dir.path().join("z"), "new\n").unwrap();
        fs::rename(dir.path().join("z"), dir.path().join("w")).unwrap();
        let _ = fs::read_to_string(&p[0]).unwrap(); // reading is not a change
        quiet(&mut w, 300).await;
        assert!(up_to_date(&w, &p[0]));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn rapid_saves_end_with_the_last_content() {
        let (_dir, p) = setup(&["x"]);
        let mut w = watcher(50, 200);
        watch(&mut w, &p[0]);
        let file = p[0].clone();
        let writer = thread::spawn(move || {
            let mut elapsed = 0;
            for (i, at) in [0u64, 60, 150, 400].into_iter().enumerate() {
                thread::sleep(Duration::from_millis(at - elapsed));
                elapsed = at;
                // Same size each time: only the timestamps tell them apart.
                fs::write(&file, format!("version {i}\n")).unwrap();
            }
        });
        let mut reports = 0;
        loop {
            let batch = tokio::time::timeout(PATIENCE, changed(&mut w)).await;
            match batch {
                Ok(batch) => {
                    assert_eq!(batch.unwrap(), vec![p[0].clone()]);
                    reports += 1;
                }
                Err(_) => panic!("the last save was not reported"),
            }
            if writer.is_finished() && w.baseline(&p[0]) == Identity::of(&p[0]).ok() {
                break;
            }
        }
        writer.join().unwrap();
        assert!(reports >= 1);
        assert_eq!(fs::read_to_string(&p[0]).unwrap(), "version 3\n");
        // Nothing left over: restart + ignore + a wide margin.
        quiet(&mut w, 800).await;
        assert_eq!(w.baseline(&p[0]), Identity::of(&p[0]).ok());
        assert!(up_to_date(&w, &p[0]));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_change_inside_the_ignore_window_is_reported_after_it() {
        let (_dir, p) = setup(&["x"]);
        let mut w = watcher(20, 600);
        watch(&mut w, &p[0]);
        fs::write(&p[0], "first\n").unwrap();
        assert_eq!(next(&mut w).await, vec![p[0].clone()]);
        let reported = Instant::now();
        fs::write(&p[0], "second\n").unwrap();
        assert_eq!(next(&mut w).await, vec![p[0].clone()]);
        // Held back until the window ended (lower bound only: the VM is noisy).
        assert!(reported.elapsed() >= Duration::from_millis(500));
        assert_eq!(w.baseline(&p[0]), Identity::of(&p[0]).ok());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn changes_in_one_burst_arrive_in_one_batch() {
        let (_dir, p) = setup(&["a", "b", "c"]);
        let mut w = watcher(300, 200);
        for f in &p {
            watch(&mut w, f);
        }
        fs::write(&p[1], "new\n").unwrap();
        fs::write(&p[0], "new\n").unwrap();
        assert_eq!(next(&mut w).await, vec![p[1].clone(), p[0].clone()]);
        quiet(&mut w, 400).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unwatching_one_file_keeps_its_neighbour_watched() {
        let (_dir, p) = setup(&["a", "b"]);
        let mut w = watcher(50, 200);
        watch(&mut w, &p[0]);
        watch(&mut w, &p[1]);
        assert_eq!(
            (w.dirs.len(), kernel_watches(&w)),
            (1, 1),
            "one watch per directory"
        );
        w.unwatch(&p[0]);
        fs::write(&p[0], "new\n").unwrap();
        quiet(&mut w, 300).await;
        fs::write(&p[1], "new\n").unwrap();
        assert_eq!(next(&mut w).await, vec![p[1].clone()]);
        w.unwatch(&p[1]);
        assert!(w.dirs.is_empty() && w.wds.is_empty());
        assert_eq!(kernel_watches(&w), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn rewatching_refreshes_the_baseline() {
        let (_dir, p) = setup(&["x"]);
        let mut w = watcher(50, 200);
        watch(&mut w, &p[0]);
        watch(&mut w, &p[0]); // idempotent
        assert_eq!((w.dirs.len(), kernel_watches(&w)), (1, 1));
        fs::write(&p[0], "new\n").unwrap();
        assert!(!up_to_date(&w, &p[0]));
        // The program re-opened the file: it has seen this content.
        watch(&mut w, &p[0]);
        assert!(up_to_date(&w, &p[0]));
        quiet(&mut w, 300).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_change_before_watch_is_reported_against_an_earlier_baseline() {
        let (_dir, p) = setup(&["x"]);
        let mut w = watcher(50, 200);
        let at_open = Identity::of(&p[0]).ok();
        fs::write(&p[0], "changed before the watch\n").unwrap();
        w.watch_with_baseline(&p[0], at_open).unwrap();
        assert_eq!(next(&mut w).await, vec![p[0].clone()]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn edits_to_a_symlink_target_are_reported() {
        let (dir, p) = setup(&["target"]);
        let links = tempfile::tempdir().unwrap();
        let link = links.path().join("link");
        std::os::unix::fs::symlink(&p[0], &link).unwrap();
        let mut w = watcher(50, 200);
        watch(&mut w, &link);
        assert_eq!((w.dirs.len(), kernel_watches(&w)), (2, 2));
        let tmp = dir.path().join("target.tmp");
        fs::write(&tmp, "new\n").unwrap();
        fs::rename(&tmp, &p[0]).unwrap();
        assert_eq!(next(&mut w).await, vec![link.clone()]);
        w.unwatch(&link);
        assert!(w.dirs.is_empty() && w.wds.is_empty());
        assert_eq!(kernel_watches(&w), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn queue_overflow_rechecks_every_file() {
        let (_dir, p) = setup(&["a", "b", "flood-1", "flood-2"]);
        let mut w = watcher(20, 200);
        watch(&mut w, &p[0]);
        watch(&mut w, &p[1]);
        // Fill the queue with events for names nobody watches (alternating,
        // so that the kernel cannot merge them): b's save is then lost, and
        // only the overflow says that anything happened.
        let limit: usize = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        for i in 0..=limit {
            let mode = if i % 4 < 2 { 0o600 } else { 0o644 };
            fs::set_permissions(&p[2 + i % 2], fs::Permissions::from_mode(mode)).unwrap();
        }
        fs::write(&p[1], "new\n").unwrap();
        assert_eq!(next(&mut w).await, vec![p[1].clone()]);
        quiet(&mut w, 300).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn dropping_the_future_loses_nothing() {
        let (_dir, p) = setup(&["x"]);
        let mut w = watcher(50, 100);
        watch(&mut w, &p[0]);
        let file = p[0].clone();
        let writer = thread::spawn(move || {
            thread::sleep(Duration::from_millis(30));
            fs::write(&file, "new\n").unwrap();
        });
        let deadline = Instant::now() + PATIENCE;
        let batch = loop {
            assert!(Instant::now() < deadline, "change lost");
            tokio::select! {
                batch = changed(&mut w) => break batch.unwrap(),
                () = tokio::time::sleep(Duration::from_millis(3)) => {}
            }
        };
        writer.join().unwrap();
        assert_eq!(batch, vec![p[0].clone()]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn zero_delays_work() {
        let (_dir, p) = setup(&["x"]);
        let mut w = watcher(0, 0);
        watch(&mut w, &p[0]);
        fs::write(&p[0], "new\n").unwrap();
        assert_eq!(next(&mut w).await, vec![p[0].clone()]);
        fs::write(&p[0], "newer\n").unwrap();
        assert_eq!(next(&mut w).await, vec![p[0].clone()]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn watch_needs_an_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = watcher(50, 200);
        let err = w
            .watch_with_baseline(&dir.path().join("nope/x"), None)
            .unwrap_err();
        assert!(matches!(err, WatchError::AddWatch { .. }), "{err}");
        assert!(w.dirs.is_empty() && w.files.is_empty());
    }

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

    #[test]
    fn default_delays_match_c_forkmon() {
        assert_eq!((DEFAULT_RESTART_MS, DEFAULT_IGNORE_MS), (50, 200));
    }
}
