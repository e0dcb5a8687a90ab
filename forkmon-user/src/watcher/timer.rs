//! A timer precise to tens of microseconds: tokio's timer wheel rounds up
//! to the next millisecond, and forkmon resumes a program `restart` after a
//! change to the microsecond if it can.
use std::io;

use nix::sys::{
    time::TimeSpec,
    timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags},
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::Instant,
};

pub(super) struct Timer {
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
    pub(super) fn new() -> io::Result<Timer> {
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
    pub(super) async fn sleep_until(&self, at: Option<Instant>) {
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
    use std::{future::Future as _, pin::pin, task::Poll, time::Duration};

    #[tokio::test(flavor = "current_thread")]
    async fn a_cancelled_sleep_does_not_end_the_next_one_early() {
        let timer = Timer::new().unwrap();
        // A sleep that sets the timer, then is dropped after it fired: the
        // fd is left readable.
        {
            let mut first =
                pin!(timer.sleep_until(Some(Instant::now() + Duration::from_millis(1))));
            std::future::poll_fn(|cx| {
                assert!(first.as_mut().poll(cx).is_pending());
                Poll::Ready(())
            })
            .await;
            std::thread::sleep(Duration::from_millis(5));
            tokio::task::yield_now().await;
        }
        let at = Instant::now() + Duration::from_millis(30);
        timer.sleep_until(Some(at)).await;
        assert!(Instant::now() >= at, "woken by the cancelled sleep");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn sleeps_until_the_given_time() {
        let timer = Timer::new().unwrap();
        let at = Instant::now() + Duration::from_micros(1500);
        timer.sleep_until(Some(at)).await;
        assert!(Instant::now() >= at);
        // A time already past returns at once.
        timer.sleep_until(Some(Instant::now())).await;
    }
}
