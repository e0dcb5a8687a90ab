//! When to look at touched files, and which of them changed: the C
//! forkmon's debounce, on time and [`Identity`] only.
//!
//! Nothing here reads the clock, the disk or inotify: events come in
//! through [`Debounce::mark`], the time through each call's `now`, and
//! identities through [`Debounce::evaluate`]'s `look`. So all of it can be
//! tested without waiting or touching files.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::time::Instant;

use super::identity::Identity;

/// How long a file missing at evaluation time is waited for before it is
/// reported anyway (as changed: gone).
pub(super) const MISSING_GRACE: Duration = Duration::from_secs(2);
/// A burst of only `MODIFY` events is evaluated once writes pause this long…
pub(super) const MODIFY_QUIET: Duration = Duration::from_millis(300);
/// …or this long after its first event, whichever comes first.
pub(super) const MODIFY_CAP: Duration = Duration::from_secs(2);
/// How long before a burst's evaluation [`WatchEvent::Imminent`] is
/// reported, and from when the watcher polls the clock instead of sleeping:
/// waking from a sleep on an idle CPU takes 50–100 µs on a VM, which would
/// be most of a resume. Long enough for forkmon and a standby to wake.
pub const EVALUATION_LEAD: Duration = Duration::from_micros(500);
/// Shortest interval between re-checks for a missing file (when
/// `restart` is 0).
const MIN_RECHECK: Duration = Duration::from_millis(10);

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

/// What [`Watcher::next_event`](super::Watcher::next_event) reports.
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum EventKind {
    /// Only `MODIFY`: a write, possibly of many.
    Modify,
    /// Anything else: the file was closed, replaced, removed or touched.
    Strong,
    /// Not an event for the file (queue overflow, its directory went away,
    /// a stale baseline): re-check it like `Strong`, but without evidence
    /// of a write (see [`FileState::touched`]).
    Recheck,
}

/// What the watcher does next (see [`Debounce::step`]).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// The pending files are due: [`Debounce::evaluate`] them now.
    Evaluate,
    /// Report this.
    Report(WatchEvent),
    /// The evaluation is due at this time, at most [`EVALUATION_LEAD`] away:
    /// poll the clock until then rather than sleep.
    Spin(Instant),
    /// Wait for events, or until this time (`None`: for events only).
    Wait(Option<Instant>),
}

struct FileState {
    /// Identity when last watched or reported; `None`: it did not exist.
    baseline: Option<Identity>,
    /// The baseline was taken within
    /// [`AMBIGUOUS_WINDOW`](super::identity::AMBIGUOUS_WINDOW) of its ctime.
    baseline_ambiguous: bool,
    /// An event for this file arrived after the baseline was taken.
    touched: bool,
    /// When an evaluation first found it missing (holding the batch).
    missing_since: Option<Instant>,
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

/// The watched files' baselines, the current burst and the ignore window.
pub(super) struct Debounce {
    delays: Delays,
    files: HashMap<PathBuf, FileState>,
    burst: Burst,
    /// End of the ignore window after the last report.
    ignore_until: Option<Instant>,
}

impl Debounce {
    pub(super) fn new(delays: Delays) -> Debounce {
        Debounce {
            delays,
            files: HashMap::new(),
            burst: Burst::default(),
            ignore_until: None,
        }
    }

    /// Starts following `file`, without a baseline until
    /// [`rebase`](Self::rebase): events for it count from now on. Nothing
    /// changes for a file already followed.
    pub(super) fn follow(&mut self, file: &Path) {
        self.files
            .entry(file.to_path_buf())
            .or_insert_with(|| FileState {
                baseline: None,
                baseline_ambiguous: false,
                touched: false,
                missing_since: None,
            });
    }

    /// Makes `baseline` what `file` is compared against; `current` is its
    /// identity now. If they differ the file is re-checked, so a change
    /// made before the baseline was given is reported like any other.
    pub(super) fn rebase(
        &mut self,
        file: &Path,
        baseline: Option<Identity>,
        current: Option<Identity>,
        now: Instant,
    ) {
        let Some(state) = self.files.get_mut(file) else {
            return;
        };
        state.baseline = baseline;
        state.baseline_ambiguous = baseline.is_some_and(|b| b.is_recent());
        state.touched = false;
        state.missing_since = None;
        if current != baseline {
            self.mark(file, EventKind::Recheck, now);
        }
    }

    /// Stops following `file`. Unknown paths are ignored.
    pub(super) fn forget(&mut self, file: &Path) {
        if self.files.remove(file).is_some() {
            self.burst.pending.retain(|p| p != file);
        }
    }

    /// An event of `kind` for `file` was noticed at `now`.
    pub(super) fn mark(&mut self, file: &Path, kind: EventKind, now: Instant) {
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

    /// Events may have been lost: every file is re-checked.
    pub(super) fn recheck_all(&mut self, now: Instant) {
        let mut all: Vec<PathBuf> = self.files.keys().cloned().collect();
        all.sort();
        for file in all {
            self.mark(&file, EventKind::Recheck, now);
        }
    }

    /// What to do at `now`: evaluate, announce touched files or the
    /// imminent evaluation, poll the clock, or wait.
    pub(super) fn step(&mut self, now: Instant) -> Step {
        let ready = self.ready_at(now);
        if let Some(at) = ready
            && at <= now
        {
            return Step::Evaluate;
        }
        if !self.burst.unannounced.is_empty() {
            return Step::Report(WatchEvent::Touched(std::mem::take(
                &mut self.burst.unannounced,
            )));
        }
        if let Some(at) = ready
            && now + EVALUATION_LEAD >= at
        {
            if !self.burst.imminent && !self.burst.touched.is_empty() {
                self.burst.imminent = true;
                return Step::Report(WatchEvent::Imminent);
            }
            return Step::Spin(at);
        }
        Step::Wait(ready.map(|at| at.checked_sub(EVALUATION_LEAD).unwrap_or(at)))
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

    /// Looks at the pending files (`look` gives a file's identity now,
    /// `None` when it is missing). Returns the changed ones and makes their
    /// current identity the baseline, or holds everything while a file is
    /// missing (within [`MISSING_GRACE`]), or forgets unchanged files.
    /// `None`: nothing to report (held, or nothing changed and nothing had
    /// been announced).
    pub(super) fn evaluate(
        &mut self,
        now: Instant,
        mut look: impl FnMut(&Path) -> Option<Identity>,
    ) -> Option<Vec<PathBuf>> {
        let pending = std::mem::take(&mut self.burst.pending);
        let mut results = Vec::with_capacity(pending.len());
        let mut hold = false;
        for file in &pending {
            let Some(state) = self.files.get_mut(file) else {
                continue;
            };
            let current = look(file);
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

    /// The identity `file` is compared against (`None` if it is not
    /// followed or did not exist).
    #[cfg(test)]
    pub(super) fn baseline(&self, file: &Path) -> Option<Identity> {
        self.files.get(file).and_then(|s| s.baseline)
    }

    #[cfg(test)]
    pub(super) fn follows(&self, file: &Path) -> bool {
        self.files.contains_key(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn debounce(restart_ms: u64, ignore_ms: u64) -> Debounce {
        Debounce::new(Delays {
            restart: MS * restart_ms as u32,
            ignore: MS * ignore_ms as u32,
        })
    }

    /// An identity whose timestamps are long past (not ambiguous).
    fn id(version: u64) -> Identity {
        Identity {
            dev: 1,
            ino: 7,
            size: version,
            mtime_ns: 0,
            ctime_ns: 0,
        }
    }

    /// Files `names`, followed from identity 0.
    fn followed(d: &mut Debounce, names: &[&str], now: Instant) -> Vec<PathBuf> {
        names
            .iter()
            .map(|name| {
                let file = PathBuf::from(format!("/w/{name}"));
                d.follow(&file);
                d.rebase(&file, Some(id(0)), Some(id(0)), now);
                file
            })
            .collect()
    }

    /// `evaluate` with the identities in `disk` (missing when absent).
    fn evaluate(d: &mut Debounce, now: Instant, disk: &[(&PathBuf, u64)]) -> Option<Vec<PathBuf>> {
        d.evaluate(now, |file| {
            disk.iter()
                .find(|(f, _)| f.as_path() == file)
                .map(|(_, v)| id(*v))
        })
    }

    #[test]
    fn a_burst_is_announced_then_evaluated_restart_after_its_first_event() {
        let t0 = Instant::now();
        let mut d = debounce(50, 200);
        let f = followed(&mut d, &["x"], t0);
        assert_eq!(d.step(t0), Step::Wait(None));
        d.mark(&f[0], EventKind::Strong, t0);
        assert_eq!(d.step(t0), Step::Report(WatchEvent::Touched(f.clone())));
        // A second event later in the burst does not move the deadline.
        d.mark(&f[0], EventKind::Strong, t0 + 10 * MS);
        let due = t0 + 50 * MS;
        assert_eq!(
            d.step(t0 + 10 * MS),
            Step::Wait(Some(due - EVALUATION_LEAD))
        );
        let close = due - EVALUATION_LEAD / 2;
        assert_eq!(d.step(close), Step::Report(WatchEvent::Imminent));
        assert_eq!(d.step(close), Step::Spin(due));
        assert_eq!(d.step(due), Step::Evaluate);
        assert_eq!(evaluate(&mut d, due, &[(&f[0], 1)]), Some(f.clone()));
        assert_eq!(d.baseline(&f[0]), Some(id(1)));
        assert_eq!(d.step(due), Step::Wait(None), "the burst is over");
    }

    #[test]
    fn writes_alone_wait_for_a_pause_or_the_cap() {
        let t0 = Instant::now();
        let mut d = debounce(50, 200);
        let f = followed(&mut d, &["log"], t0);
        d.mark(&f[0], EventKind::Modify, t0);
        let _touched = d.step(t0);
        // Writes every 100 ms: each pushes the evaluation back…
        let mut t = t0;
        while t < t0 + MODIFY_CAP - 100 * MS {
            t += 100 * MS;
            d.mark(&f[0], EventKind::Modify, t);
            assert_ne!(d.step(t), Step::Evaluate, "evaluated mid-write");
        }
        // …up to the cap.
        assert_eq!(d.step(t0 + MODIFY_CAP), Step::Evaluate);

        // A pause ends it sooner; a close brings back the usual deadline.
        let mut d = debounce(50, 200);
        let f = followed(&mut d, &["log"], t0);
        d.mark(&f[0], EventKind::Modify, t0);
        assert_ne!(d.step(t0 + MODIFY_QUIET - MS), Step::Evaluate);
        assert_eq!(d.step(t0 + MODIFY_QUIET), Step::Evaluate);
        let mut d = debounce(50, 200);
        let f = followed(&mut d, &["log"], t0);
        d.mark(&f[0], EventKind::Modify, t0);
        d.mark(&f[0], EventKind::Strong, t0 + 20 * MS);
        assert_eq!(d.step(t0 + 50 * MS), Step::Evaluate);
    }

    #[test]
    fn a_change_in_the_ignore_window_waits_for_its_end() {
        let t0 = Instant::now();
        let mut d = debounce(20, 600);
        let f = followed(&mut d, &["x"], t0);
        d.mark(&f[0], EventKind::Strong, t0);
        let reported = t0 + 20 * MS;
        assert_eq!(evaluate(&mut d, reported, &[(&f[0], 1)]), Some(f.clone()));
        d.mark(&f[0], EventKind::Strong, reported + MS);
        let _touched = d.step(reported + MS);
        assert_ne!(d.step(reported + 599 * MS), Step::Evaluate);
        assert_eq!(d.step(reported + 600 * MS), Step::Evaluate);
        assert_eq!(
            evaluate(&mut d, reported + 600 * MS, &[(&f[0], 2)]),
            Some(f.clone())
        );
    }

    #[test]
    fn a_missing_file_holds_the_batch_until_it_is_back_or_the_grace_ends() {
        let t0 = Instant::now();
        let mut d = debounce(20, 200);
        let f = followed(&mut d, &["x", "y"], t0);
        d.mark(&f[1], EventKind::Strong, t0);
        d.mark(&f[0], EventKind::Strong, t0);
        let t = t0 + 20 * MS;
        assert_eq!(evaluate(&mut d, t, &[(&f[1], 1)]), None, "held");
        // Re-checked `restart` later, and it is back: one batch.
        let _touched = d.step(t);
        assert_eq!(
            d.step(t + 19 * MS),
            Step::Wait(Some(t + 20 * MS - EVALUATION_LEAD))
        );
        let t = t + 20 * MS;
        assert_eq!(
            evaluate(&mut d, t, &[(&f[1], 1), (&f[0], 1)]),
            Some(vec![f[1].clone(), f[0].clone()])
        );

        // Gone for good: reported once the grace is over (which starts
        // after the ignore window that followed the report).
        d.mark(&f[0], EventKind::Strong, t);
        let first_look = t + 200 * MS;
        let mut now = first_look;
        while now < first_look + MISSING_GRACE {
            assert_eq!(d.step(now), Step::Evaluate);
            assert_eq!(evaluate(&mut d, now, &[]), None, "held");
            now += 500 * MS;
        }
        assert_eq!(evaluate(&mut d, now, &[]), Some(vec![f[0].clone()]));
        assert_eq!(d.baseline(&f[0]), None);
    }

    #[test]
    fn an_unchanged_burst_ends_empty_only_if_it_was_announced() {
        let t0 = Instant::now();
        let mut d = debounce(20, 200);
        let f = followed(&mut d, &["x"], t0);
        d.mark(&f[0], EventKind::Strong, t0);
        assert_eq!(evaluate(&mut d, t0 + 20 * MS, &[(&f[0], 0)]), Some(vec![]));
        // A re-check is no event the user saw: nothing to end.
        d.recheck_all(t0 + 30 * MS);
        assert_eq!(
            d.step(t0 + 30 * MS),
            Step::Wait(Some(t0 + 50 * MS - EVALUATION_LEAD))
        );
        assert_eq!(evaluate(&mut d, t0 + 50 * MS, &[(&f[0], 0)]), None);
    }

    #[test]
    fn a_recent_baseline_takes_any_write_as_a_change() {
        let t0 = Instant::now();
        let mut d = debounce(20, 200);
        let file = PathBuf::from("/w/x");
        let wall_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        let fresh = Identity {
            ctime_ns: wall_now,
            ..id(0)
        };
        d.follow(&file);
        d.rebase(&file, Some(fresh), Some(fresh), t0);
        // Same size, same timestamp tick: the identity cannot tell.
        d.mark(&file, EventKind::Strong, t0);
        assert_eq!(
            d.evaluate(t0 + 20 * MS, |_| Some(fresh)),
            Some(vec![file.clone()])
        );
    }

    #[test]
    fn a_baseline_older_than_the_file_is_rechecked_at_once() {
        let t0 = Instant::now();
        let mut d = debounce(50, 200);
        let file = PathBuf::from("/w/x");
        d.follow(&file);
        d.rebase(&file, Some(id(0)), Some(id(1)), t0);
        assert_eq!(d.step(t0 + 50 * MS), Step::Evaluate);
        assert_eq!(
            d.evaluate(t0 + 50 * MS, |_| Some(id(1))),
            Some(vec![file.clone()])
        );
        // Unfollowed, it is no longer evaluated.
        d.rebase(&file, Some(id(1)), Some(id(2)), t0);
        d.forget(&file);
        assert_eq!(d.step(t0 + 50 * MS), Step::Wait(None));
    }
}
