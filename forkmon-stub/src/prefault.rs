//! Fault in a standby's pages before it runs.
//!
//! fork copies the page tables of anonymous memory, but not of file
//! mappings without private pages (program text, libraries, read-only
//! data): the kernel lets the child fault them in again. And the first
//! write to each page the child shares with its checkpoint copies it. In a
//! resumed child that was ~20 faults of 5–15 µs each on this VM between
//! "go" and the program's next output, most of a resume. A standby has
//! time while it waits, so it maps every page of its file mappings that is
//! in the page cache (never reading from disk), which costs page tables
//! only, and copies the few stack pages the program's frames are on.
use forkmon_common::prefault::{PAGE, Populate, for_each_mapping, populate_resident};

/// How much of the stack above this function's frame is copied: the frames
/// of the program, which it writes as soon as the signal handler returns.
const STACK_ABOVE: usize = 4 * PAGE;

/// Copies the stack pages from this frame up to [`STACK_ABOVE`] above it,
/// each alone (the stack may end sooner). Best effort.
///
/// # Safety
/// Async-signal-safe (raw syscalls only).
pub unsafe fn copy_stack_pages() {
    let marker = 0u8;
    let here = core::hint::black_box(&marker) as *const u8 as usize & !(PAGE - 1);
    for page in (here..here + STACK_ABOVE).step_by(PAGE) {
        // SAFETY: populating our own stack's pages, writable: this copies
        // them from the checkpoint; a page past the stack's end fails.
        if unsafe { libc::madvise(page as *mut _, PAGE, libc::MADV_POPULATE_WRITE) } != 0 {
            return;
        }
    }
}

/// Maps the resident pages of this process's file mappings (and the vDSO).
/// Best effort: any failure leaves the pages to be faulted in as usual.
///
/// # Safety
/// Async-signal-safe (raw syscalls only).
pub unsafe fn map_file_pages() {
    // SAFETY: async-signal-safe, and so is the closure.
    unsafe {
        for_each_mapping(|m| {
            if m.readable && (m.file || m.path == b"[vdso]") {
                populate_resident(m.start, m.end, Populate::Read);
            }
        })
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the page at `addr` is in this process's page tables
    /// (bit 63 of its `/proc/self/pagemap` entry).
    fn present(addr: usize) -> bool {
        use std::os::unix::fs::FileExt as _;
        let pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
        let mut entry = [0u8; 8];
        pagemap
            .read_exact_at(&mut entry, (addr / PAGE * 8) as u64)
            .unwrap();
        u64::from_le_bytes(entry) >> 63 == 1
    }

    #[test]
    fn cached_pages_of_a_file_mapping_get_mapped() {
        let dir = std::env::temp_dir().join(format!("forkmon-prefault-{}", std::process::id()));
        std::fs::write(&dir, vec![7u8; 4 * PAGE]).unwrap();
        let file = std::fs::File::open(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        use std::os::fd::AsRawFd as _;
        // SAFETY: a fresh read-only private mapping of a file we own.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4 * PAGE,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        let last = addr as usize + 3 * PAGE;
        // Written just now, so cached; never touched, so not mapped.
        assert!(!present(last));
        // SAFETY: raw syscalls only.
        unsafe { map_file_pages() };
        assert!(present(last));
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(addr, 4 * PAGE) };
    }
}
