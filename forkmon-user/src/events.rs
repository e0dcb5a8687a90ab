//! The stream of records from the kernel side, read as the ring buffer
//! becomes readable.
use std::{io, os::fd::AsRawFd};

use aya::maps::{MapData, RingBuf};
use forkmon_common::Record;
use tokio::io::unix::AsyncFd;

pub struct Events {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl Events {
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Events> {
        Ok(Events {
            ring: poll_fd(ring)?,
        })
    }

    /// Waits until records may be waiting; follow with [`Events::drain`].
    pub async fn readable(&self) -> io::Result<()> {
        let mut guard = self.ring.readable().await?;
        // Cleared before draining: a record that lands after the drain
        // raises readiness again, so none is left waiting.
        guard.clear_ready();
        Ok(())
    }

    /// Hands every record now in the ring to `handle`, oldest first.
    pub fn drain(&mut self, mut handle: impl FnMut(Record)) {
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            match Record::decode(&item) {
                Some(record) => handle(record),
                None => log::warn!("skipping a malformed record of {} bytes", item.len()),
            }
        }
    }
}

/// Registers a map-backed object (ring buffer, eBPF logger) with tokio for
/// read readiness.
pub fn poll_fd<T: AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: aya's RingBuf and EbpfLogger own their map fd: it stays open
    // and the same for as long as they (and so the AsyncFd) live.
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
}
