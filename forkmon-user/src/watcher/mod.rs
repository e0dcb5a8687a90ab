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
//!   to the target are seen too. A directory replaced under the same path
//!   (`rm -r dir; mkdir dir`) is watched anew, and one that is gone is
//!   waited for from its parent.
//! - **Identity decides.** Events only say "look now"; a file has changed when
//!   its [`Identity`] (dev, inode, size, mtime, ctime; symlinks followed)
//!   differs from the baseline given to [`Watcher::watch_with_baseline`] or
//!   recorded at the last report, or when it has disappeared.
//! - **Debounce** ([`Delays`], the C forkmon's semantics): a burst is
//!   evaluated `restart` after its first event, so writers have finished;
//!   after a report, nothing is reported for `ignore`, but changes seen then
//!   are reported when the window ends, never dropped. A file that is missing
//!   at evaluation time (delete-then-recreate saves) holds the batch until it
//!   reappears or [`MISSING_GRACE`](debounce::MISSING_GRACE) passes.
//! - **Cancel-safe.** [`Watcher::next_event`] keeps all its state in the
//!   `Watcher`: events are moved from the kernel into that state without an
//!   `.await` in between, so dropping the future (e.g. in `tokio::select!`)
//!   loses nothing.
//!
//! The [`Watcher`] ties together one room per job: [`debounce`] decides
//! when to look and what changed (time and identities only, no I/O);
//! [`dirs`] keeps the inotify watches and turns events into files;
//! [`identity`] stats a file; [`timer`] sleeps to the microsecond; [`wake`]
//! dates events from the runtime's wake-up.
mod debounce;
mod dirs;
mod identity;
mod timer;
mod wake;

use std::{io, path::Path, path::PathBuf};

use tokio::time::Instant;

pub use debounce::{DEFAULT_IGNORE_MS, DEFAULT_RESTART_MS, Delays, EVALUATION_LEAD, WatchEvent};
pub use identity::Identity;
pub use wake::note_wake_up;

use debounce::{Debounce, EventKind, Step};
use dirs::{Change, Dirs};
use identity::stat;
use timer::Timer;

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
        crate::output::escape_path(dir)
    )]
    WatchLimit { dir: PathBuf },
    #[error("cannot watch directory {}: {source}", crate::output::escape_path(dir))]
    AddWatch { dir: PathBuf, source: io::Error },
    #[error(
        "cannot watch {}: it has no parent directory",
        crate::output::escape_path(path)
    )]
    NoParent { path: PathBuf },
    #[error("cannot read inotify events: {source}")]
    Read { source: io::Error },
}

/// Watches files for changes; see the module docs.
pub struct Watcher {
    dirs: Dirs,
    debounce: Debounce,
    timer: Timer,
}

impl Watcher {
    /// Starts an inotify instance. Must be called inside a tokio runtime
    /// (any flavour) with IO enabled.
    pub fn new(delays: Delays) -> Result<Watcher, WatchError> {
        Ok(Watcher {
            dirs: Dirs::new()?,
            debounce: Debounce::new(delays),
            timer: Timer::new().map_err(|source| WatchError::Init { source })?,
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
        // The program's file, with the program user's permissions: where a
        // symlink leads, and which directories are watched.
        let _as_user = crate::credentials::as_program_user();
        self.dirs.watch(file)?;
        self.debounce.follow(file);
        // The directory watch is in place: events from now on are seen. Those
        // already queued describe the past, which the stat below includes.
        let drained = self.drain();
        let current = stat(file);
        self.debounce
            .rebase(file, baseline, current, Instant::now());
        drained
    }

    /// Stops watching `file`; its directory stays watched while other
    /// watched files are in it. Unknown paths are ignored.
    pub fn unwatch(&mut self, file: &Path) {
        self.dirs.unwatch(file);
        self.debounce.forget(file);
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
            match self.debounce.step(now) {
                Step::Evaluate => {
                    if let Some(batch) = self.evaluate(now) {
                        return Ok(WatchEvent::Changed(batch));
                    }
                }
                Step::Report(event) => return Ok(event),
                Step::Spin(until) => {
                    // Blocks the runtime for at most the lead. Yields, so
                    // that a process woken on this CPU (the standby told to
                    // poll) runs at once rather than after us.
                    while Instant::now() < until {
                        std::thread::yield_now();
                    }
                }
                Step::Wait(until) => {
                    tokio::select! {
                        readable = self.dirs.readable() => readable?,
                        () = self.timer.sleep_until(until) => {}
                    }
                }
            }
        }
    }

    /// Moves every queued event from the kernel into `self`. Never awaits.
    fn drain(&mut self) -> Result<(), WatchError> {
        while let Some(changes) = self.dirs.read()? {
            let now = wake::noticed_at(Instant::now());
            for change in changes {
                match change {
                    Change::Files(files, kind) => {
                        for file in files {
                            self.debounce.mark(&file, kind, now);
                        }
                    }
                    Change::Overflow => {
                        log::warn!("inotify queue overflowed: re-checking every watched file");
                        self.debounce.recheck_all(now);
                    }
                }
            }
        }
        Ok(())
    }

    /// Looks at the pending files now (see [`Debounce::evaluate`]).
    fn evaluate(&mut self, now: Instant) -> Option<Vec<PathBuf>> {
        // See `watch_with_baseline`: a file that became a symlink to one the
        // user may not reach is missing, not compared.
        let _as_user = crate::credentials::as_program_user();
        for file in self.dirs.refresh() {
            self.debounce.mark(&file, EventKind::Recheck, now);
        }
        self.debounce.evaluate(now, stat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{fs, os::unix::fs::PermissionsExt as _, thread, time::Duration};

    use super::{debounce::MISSING_GRACE, identity::AMBIGUOUS_WINDOW};

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
        w.debounce.baseline(file) == Identity::of(file).ok()
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
        assert_eq!(w.debounce.baseline(&p[0]), Identity::of(&p[0]).ok());
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
        // It comes only if the watcher wakes within the lead of the deadline;
        // woken later (a loaded machine: one run in three at load 7 on this
        // VM), it evaluates at once without it, by design. So a few tries,
        // each checking the order and the timing.
        for _ in 0..5 {
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
            let changed = WatchEvent::Changed(vec![p[0].clone()]);
            let event = any_event(&mut w).await;
            let imminent = event == WatchEvent::Imminent;
            if imminent {
                // The delay counts from when the watcher saw the first
                // event, after `saved`: these are lower bounds.
                assert!(saved.elapsed() >= delay - EVALUATION_LEAD);
                assert_eq!(any_event(&mut w).await, changed);
            } else {
                assert_eq!(event, changed);
            }
            assert!(saved.elapsed() >= delay);
            if imminent {
                return;
            }
        }
        panic!("never imminent in five tries");
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
        assert!(w.debounce.baseline(&p[0]).is_some());
        assert_eq!(w.debounce.baseline(&p[0]), Identity::of(&p[0]).ok());
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
        assert_eq!(w.debounce.baseline(&p[0]), None);
    }

    /// The watched file's directory is removed and made again (`rm -r`,
    /// `mkdir`, write): the new file is reported, once, and so are later
    /// edits. While the old file is open (as a checkpoint keeps it), it
    /// keeps the old directory alive, and the kernel says nothing about that
    /// directory going until it is closed.
    #[tokio::test(flavor = "current_thread")]
    async fn a_replaced_directory_is_watched_again() {
        for held_open in [false, true] {
            let top = tempfile::tempdir().unwrap();
            let dir = top.path().join("sub");
            fs::create_dir(&dir).unwrap();
            let file = dir.join("data.txt");
            fs::write(&file, "old\n").unwrap();
            let mut w = watcher(20, 200);
            watch(&mut w, &file);
            let held = held_open.then(|| fs::File::open(&file).unwrap());
            fs::remove_dir_all(&dir).unwrap();
            fs::create_dir(&dir).unwrap();
            fs::write(&file, "new\n").unwrap();
            assert_eq!(next(&mut w).await, vec![file.clone()], "held: {held_open}");
            assert!(up_to_date(&w, &file), "held: {held_open}");
            quiet(&mut w, 300).await;
            fs::write(&file, "newer\n").unwrap();
            assert_eq!(next(&mut w).await, vec![file.clone()], "held: {held_open}");
            // The old directory's end, announced now, changes nothing.
            drop(held);
            quiet(&mut w, 300).await;
            w.unwatch(&file);
            assert!(w.dirs.is_empty());
            assert_eq!(w.dirs.watch_count(), (0, 0));
        }
    }

    /// A directory gone for longer than the grace is waited for from its
    /// parent: once it is back, its file is seen again.
    #[tokio::test(flavor = "current_thread")]
    async fn a_directory_back_after_the_grace_is_watched_again() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("sub");
        fs::create_dir(&dir).unwrap();
        let file = dir.join("data.txt");
        fs::write(&file, "old\n").unwrap();
        let mut w = watcher(20, 200);
        watch(&mut w, &file);
        fs::remove_dir_all(&dir).unwrap();
        let gone = tokio::time::timeout(MISSING_GRACE + PATIENCE, changed(&mut w))
            .await
            .expect("deletion not reported")
            .unwrap();
        assert_eq!(gone, vec![file.clone()]);
        assert_eq!(w.debounce.baseline(&file), None);
        fs::create_dir(&dir).unwrap();
        fs::write(&file, "new\n").unwrap();
        assert_eq!(next(&mut w).await, vec![file.clone()]);
        assert!(up_to_date(&w, &file));
        assert_eq!(w.dirs.watch_count(), (1, 1), "the parent is let go");
        fs::write(&file, "newer\n").unwrap();
        assert_eq!(next(&mut w).await, vec![file.clone()]);
        w.unwatch(&file);
        assert!(w.dirs.is_empty());
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
            if writer.is_finished() && w.debounce.baseline(&p[0]) == Identity::of(&p[0]).ok() {
                break;
            }
        }
        writer.join().unwrap();
        assert!(reports >= 1);
        assert_eq!(fs::read_to_string(&p[0]).unwrap(), "version 3\n");
        // Nothing left over: restart + ignore + a wide margin.
        quiet(&mut w, 800).await;
        assert_eq!(w.debounce.baseline(&p[0]), Identity::of(&p[0]).ok());
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
        assert_eq!(w.debounce.baseline(&p[0]), Identity::of(&p[0]).ok());
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
        assert_eq!(w.dirs.watch_count(), (1, 1), "one watch per directory");
        w.unwatch(&p[0]);
        fs::write(&p[0], "new\n").unwrap();
        quiet(&mut w, 300).await;
        fs::write(&p[1], "new\n").unwrap();
        assert_eq!(next(&mut w).await, vec![p[1].clone()]);
        w.unwatch(&p[1]);
        assert!(w.dirs.is_empty());
        assert_eq!(w.dirs.watch_count(), (0, 0));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn rewatching_refreshes_the_baseline() {
        let (_dir, p) = setup(&["x"]);
        let mut w = watcher(50, 200);
        watch(&mut w, &p[0]);
        watch(&mut w, &p[0]); // idempotent
        assert_eq!(w.dirs.watch_count(), (1, 1));
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
        assert_eq!(w.dirs.watch_count(), (2, 2));
        let tmp = dir.path().join("target.tmp");
        fs::write(&tmp, "new\n").unwrap();
        fs::rename(&tmp, &p[0]).unwrap();
        assert_eq!(next(&mut w).await, vec![link.clone()]);
        w.unwatch(&link);
        assert!(w.dirs.is_empty());
        assert_eq!(w.dirs.watch_count(), (0, 0));
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
        assert!(w.dirs.is_empty() && !w.debounce.follows(&dir.path().join("nope/x")));
    }

    #[test]
    fn default_delays_match_c_forkmon() {
        assert_eq!((DEFAULT_RESTART_MS, DEFAULT_IGNORE_MS), (50, 200));
    }
}
