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
//! only, and copies the few pages the program writes first: the stack
//! pages its frames are on, and its small data mappings (the GOT that lazy
//! binding writes, a library's `.data`). Those two copies were the last
//! faults of a traced resume, ~20 µs together.
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

/// A writable private file mapping at most this long is copied whole: the
/// data segment of a program or library (`.got.plt`, `.data`), which the
/// program writes as soon as it calls a function for the first time.
const SMALL_DATA: usize = 4 * PAGE;

/// At most this much is copied that way per standby: each copy is memory
/// the standby no longer shares with its checkpoint.
const DATA_BUDGET: usize = 16 * PAGE;

/// Maps the resident pages of this process's file mappings (and the vDSO),
/// and copies those of its small data mappings (see [`SMALL_DATA`]). Best
/// effort: any failure leaves the pages to be faulted in as usual.
///
/// # Safety
/// Async-signal-safe (raw syscalls only).
pub unsafe fn prefault_mappings() {
    let mut budget = DATA_BUDGET;
    // SAFETY: async-signal-safe, and so is the closure.
    unsafe {
        for_each_mapping(|m| {
            let len = m.end - m.start;
            if m.file && m.writable && m.private && len <= SMALL_DATA.min(budget) {
                budget -= len;
                populate_resident(m.start, m.end, Populate::Write);
            } else if m.readable && (m.file || m.path == b"[vdso]") {
                populate_resident(m.start, m.end, Populate::Read);
            }
        })
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `/proc/self/pagemap` entry of the page at `addr`.
    fn pagemap(addr: usize) -> u64 {
        use std::os::unix::fs::FileExt as _;
        let pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
        let mut entry = [0u8; 8];
        pagemap
            .read_exact_at(&mut entry, (addr / PAGE * 8) as u64)
            .unwrap();
        u64::from_le_bytes(entry)
    }

    /// Whether the page at `addr` is in this process's page tables.
    fn present(addr: usize) -> bool {
        pagemap(addr) >> 63 == 1
    }

    /// Whether the page at `addr` is present and a private copy (anonymous),
    /// no longer the file's page-cache page (bit 61).
    fn copied(addr: usize) -> bool {
        present(addr) && pagemap(addr) >> 61 & 1 == 0
    }

    /// A fresh private mapping of `pages` pages of a cached, unlinked file.
    fn map_cached_file(name: &str, pages: usize, prot: i32) -> *mut libc::c_void {
        let path = std::env::temp_dir().join(format!("forkmon-{name}-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; pages * PAGE]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        use std::os::fd::AsRawFd as _;
        // SAFETY: a fresh private mapping of a file we own.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                pages * PAGE,
                prot,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        addr
    }

    #[test]
    fn cached_pages_of_a_file_mapping_get_mapped() {
        let addr = map_cached_file("mapped", 4, libc::PROT_READ);
        let last = addr as usize + 3 * PAGE;
        // Written just now, so cached; never touched, so not mapped.
        assert!(!present(last));
        // SAFETY: raw syscalls only.
        unsafe { prefault_mappings() };
        assert!(present(last));
        assert!(!copied(last), "a read-only mapping must stay shared");
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(addr, 4 * PAGE) };
    }

    #[test]
    fn small_data_mappings_get_copied_and_big_ones_only_mapped() {
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let small = map_cached_file("small", 2, rw);
        let big = map_cached_file("big", SMALL_DATA / PAGE + 1, rw);
        let (small_last, big_last) = (small as usize + PAGE, big as usize + SMALL_DATA);
        assert!(!present(small_last) && !present(big_last));
        // SAFETY: raw syscalls only.
        unsafe { prefault_mappings() };
        // The budget is shared with the test binary's own data mappings,
        // which come first in the address space.
        assert!(copied(small_last), "a small data mapping must be copied");
        assert!(present(big_last) && !copied(big_last));
        // SAFETY: the mappings made above.
        unsafe {
            libc::munmap(small, 2 * PAGE);
            libc::munmap(big, (SMALL_DATA / PAGE + 1) * PAGE);
        }
    }
}
