//! Copying a standby's heap before it runs.
//!
//! A resumed child shares every page with its checkpoint, so its first
//! write to each one copies it: a program that writes much of its heap
//! right after the open pays that on the resume's path. Measured with
//! `cargo xtask bench --only 7` (lua5.4, 200 MB heap, `require` of the
//! edited module): glibc's `malloc_consolidate` walks the free lists at
//! the loader's first buffer, ~47 000 copy-on-write faults, and the resume
//! took ~90 ms where the same steps take ~14 ms in a bare run; a full
//! collection right after took 60 ms instead of 24 ms. The standby has
//! time while it waits: forkmon copies its shared anonymous pages then, so
//! that the child owns them when it runs (the resume: 90 → 14 ms).
//!
//! Without the stub's help: each page is read and written back, one byte,
//! with `process_vm_readv`/`process_vm_writev` (a write from another
//! process breaks the sharing as the program's own would). That is safe
//! only while the standby runs none of the program's code — it waits in
//! the stub, which writes nothing but its own stack (never copied) — so
//! before "go" the supervisor calls [`Precopier::settle`], which stops the
//! copy and waits for the batch in flight (at most [`BATCH`] pages, tens
//! of microseconds).
//!
//! Only pages present and shared are copied (`/proc/PID/pagemap`), only in
//! writable private anonymous mappings (the heap, `mmap`ed memory; not the
//! stack, not file mappings), and only when all of them fit within
//! [`budget`]: each copy is memory the standby no longer shares.
use std::{
    fs,
    os::unix::fs::FileExt as _,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicI32, Ordering::SeqCst},
    },
    thread,
    time::{Duration, Instant},
};

use forkmon_common::prefault::PAGE;

/// Pages read and written back per pair of syscalls; also how long a
/// [`Precopier::settle`] may wait (~4 µs a page here).
const BATCH: usize = 16;

/// How long a standby waits before its copy starts: changes that come
/// faster (a save that formats the file, then saves again; the bench's 50
/// ms) would only cut it short, having cost its CPU time and memory.
const SETTLE_FIRST: Duration = Duration::from_millis(250);

/// The most a standby is given of its own: a quarter of the memory
/// available, at most 1 GiB.
fn budget() -> usize {
    const MAX: usize = 1 << 30;
    let available = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|kb| {
                    kb.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
        })
        .map_or(0, |kb| kb * 1024);
    (available / 4).min(MAX)
}

#[derive(Default)]
struct Shared {
    /// The standby to copy next, and whether the thread is to stop.
    job: Mutex<(Option<i32>, bool)>,
    wake: Condvar,
    /// The standby whose batch is being written, or 0.
    in_flight: AtomicI32,
    /// A standby that runs (or is gone): no more batches for it.
    cancelled: AtomicI32,
}

/// The thread that copies standbys' pages (see the module).
pub struct Precopier {
    shared: Arc<Shared>,
}

impl Precopier {
    pub fn new() -> std::io::Result<Precopier> {
        let shared = Arc::new(Shared::default());
        let theirs = Arc::clone(&shared);
        thread::Builder::new()
            .name("forkmon-copy".into())
            .spawn(move || work(&theirs))?;
        Ok(Precopier { shared })
    }

    /// Copies `pid`'s pages from now on, instead of any standby before.
    pub fn start(&self, pid: i32) {
        let mut job = lock(&self.shared.job);
        if let Some(before) = job.0.replace(pid) {
            self.shared.cancelled.store(before, SeqCst);
        }
        // A pid copied before and cancelled may be this one again (reused).
        let _ = self
            .shared
            .cancelled
            .compare_exchange(pid, 0, SeqCst, SeqCst);
        self.shared.wake.notify_one();
    }

    /// `pid` is about to run the program: no more of its pages are
    /// written from here once this returns.
    pub fn settle(&self, pid: i32) {
        self.shared.cancelled.store(pid, SeqCst);
        {
            let mut job = lock(&self.shared.job);
            if job.0 == Some(pid) {
                job.0 = None;
            }
        }
        // No wake-up (a futex call, ~20 µs on the resume's path): a thread
        // waiting to start on this standby checks `cancelled` when its wait
        // ends, and one copying checks it between batches.
        // Yielding: on two CPUs the copying thread may be waiting for this
        // one.
        while self.shared.in_flight.load(SeqCst) == pid {
            thread::yield_now();
        }
    }
}

impl Drop for Precopier {
    fn drop(&mut self) {
        lock(&self.shared.job).1 = true;
        self.shared.wake.notify_one();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn work(shared: &Shared) {
    loop {
        let pid = {
            let mut job = lock(&shared.job);
            loop {
                if job.1 {
                    return;
                }
                if let Some(pid) = job.0.take() {
                    break pid;
                }
                job = shared
                    .wake
                    .wait(job)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        };
        // Not before it has waited a while, unless it runs before that.
        {
            let deadline = Instant::now() + SETTLE_FIRST;
            let mut job = lock(&shared.job);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if job.1 || job.0.is_some() || left.is_zero() {
                    break;
                }
                job = shared
                    .wake
                    .wait_timeout(job, left)
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .0;
            }
            if job.1 || job.0.is_some() || shared.cancelled.load(SeqCst) == pid {
                // Closed, another standby to copy, or this one runs.
                continue;
            }
        }
        let started = Instant::now();
        match copy(shared, pid) {
            Ok(Some(pages)) => log::debug!(
                "copied {pages} pages of standby {pid} in {:?}",
                started.elapsed()
            ),
            Ok(None) => {}
            Err(e) => log::debug!("cannot copy the pages of standby {pid}: {e}"),
        }
    }
}

/// The shared pages of `pid`'s anonymous writable mappings, and the
/// program's own copies in its private writable file mappings, as page
/// addresses.
fn shared_pages(pid: i32) -> std::io::Result<Vec<usize>> {
    const PRESENT: u64 = 1 << 63;
    const FILE_PAGE: u64 = 1 << 61;
    const EXCLUSIVE: u64 = 1 << 56;
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let pagemap = fs::File::open(format!("/proc/{pid}/pagemap"))?;
    let mut pages = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let path = fields.nth(3).unwrap_or("");
        // Private and writable, anonymous or the brk heap: what the
        // program's allocator hands out. Not the stack (the stub runs on
        // it), not the kernel's ([vvar], [vdso]). In a file mapping (the
        // `.data` of the interpreter and its libraries: ~20 write faults
        // of a traced Python resume), only the pages the program wrote, its
        // own copies: a page still the file's would freeze the file's content
        // if copied. Not the stub's own (in a memfd), which it writes
        // while it waits.
        let file = path.starts_with('/') && !path.starts_with("/memfd:");
        if perms.as_bytes().get(1) != Some(&b'w')
            || perms.as_bytes().get(3) != Some(&b'p')
            || !(path.is_empty() || path == "[heap]" || file)
        {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        let count = (end - start) / PAGE;
        let mut entries = vec![0u8; count * 8];
        pagemap.read_exact_at(&mut entries, (start / PAGE * 8) as u64)?;
        for (i, entry) in entries.chunks_exact(8).enumerate() {
            let entry = u64::from_ne_bytes(entry.try_into().unwrap_or_default());
            if entry & PRESENT != 0 && entry & EXCLUSIVE == 0 && entry & FILE_PAGE == 0 {
                pages.push(start + i * PAGE);
            }
        }
    }
    Ok(pages)
}

/// Copies the shared pages of `pid` (see the module), unless there are
/// more than the budget. Returns how many it copied; None when over the
/// budget.
fn copy(shared: &Shared, pid: i32) -> std::io::Result<Option<usize>> {
    let pages = shared_pages(pid)?;
    let budget = budget();
    if pages.len() * PAGE > budget {
        log::debug!(
            "standby {pid} shares {} MiB: over the {} MiB it may have of its own, not copied",
            (pages.len() * PAGE) >> 20,
            budget >> 20
        );
        return Ok(None);
    }
    let mut bytes = [0u8; BATCH];
    let mut copied = 0;
    for batch in pages.chunks(BATCH) {
        shared.in_flight.store(pid, SeqCst);
        if shared.cancelled.load(SeqCst) == pid {
            shared.in_flight.store(0, SeqCst);
            log::debug!(
                "standby {pid} runs: {copied} of {} pages copied",
                pages.len()
            );
            return Ok(Some(copied));
        }
        let result = write_back(pid, batch, &mut bytes);
        shared.in_flight.store(0, SeqCst);
        copied += result?;
    }
    Ok(Some(copied))
}

/// Reads the first byte of each page and writes it back.
fn write_back(pid: i32, pages: &[usize], bytes: &mut [u8; BATCH]) -> std::io::Result<usize> {
    let n = pages.len().min(BATCH);
    let mut local: [libc::iovec; BATCH] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; BATCH];
    let mut remote = local;
    for i in 0..n {
        local[i] = libc::iovec {
            iov_base: bytes[i..].as_mut_ptr().cast(),
            iov_len: 1,
        };
        remote[i] = libc::iovec {
            iov_base: pages[i] as *mut libc::c_void,
            iov_len: 1,
        };
    }
    // SAFETY: the local iovecs point into `bytes`, which outlives the
    // calls; the remote ones are addresses in `pid`, checked by the
    // kernel.
    let read = unsafe {
        libc::process_vm_readv(pid, local.as_ptr(), n as u64, remote.as_ptr(), n as u64, 0)
    };
    if read < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let read = read as usize;
    // SAFETY: as above; only the bytes just read are written back.
    let written = unsafe {
        libc::process_vm_writev(
            pid,
            local.as_ptr(),
            read as u64,
            remote.as_ptr(),
            read as u64,
            0,
        )
    };
    if written < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(written as usize)
}
