//! When the runtime last woke up, so that events are dated from then.
//!
//! After a wake-up from idle the runtime takes 30–50 µs (traced, this VM)
//! before the watcher reads inotify; dated from the wake-up, the restart
//! delay runs during that time instead of after it.
use std::{cell::Cell, time::Duration};

use tokio::time::Instant;

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
/// brought them, if that was at most [`WAKE_UP_DATING`] ago.
pub(super) fn noticed_at(now: Instant) -> Instant {
    WOKE_AT
        .get()
        .filter(|woke| now.saturating_duration_since(*woke) <= WAKE_UP_DATING)
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
