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
//! pages its frames are on, and the small data segments of the program and
//! its libraries (the GOT that lazy binding writes, `.data`). Those copies
//! took the last two faults of a traced resume, ~20 µs together.
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

/// A data segment at most this long is copied whole: the writable private
/// mapping of an ELF object (`.got.plt`, `.data`), which the program writes
/// as soon as it calls one of the object's functions for the first time.
const SMALL_DATA: usize = 4 * PAGE;

/// At most this much is copied that way per standby: each copy is memory
/// the standby no longer shares with its checkpoint (a standby waits at
/// every checkpoint).
const DATA_BUDGET: usize = 16 * PAGE;

/// Data segments considered in one pass, at most.
const MAX_SEGMENTS: usize = 64;

/// Maps the resident pages of this process's file mappings (and the vDSO),
/// and copies its small data segments (see [`SMALL_DATA`]): the program's
/// own first, then the libraries', from the highest address down: the
/// dynamic loader, then the libraries it loaded first (libc). Best effort:
/// any failure leaves the pages to be faulted in as usual.
///
/// Only mappings of a file that also has executable code are copied, so
/// never a data file the program mapped private and writable: until
/// written, such a mapping shows later changes to the file, and a copy
/// would freeze it.
///
/// # Safety
/// Async-signal-safe (raw syscalls only).
pub unsafe fn prefault_mappings() {
    // SAFETY: as above.
    unsafe { prefault_within(DATA_BUDGET) }
}

/// [`prefault_mappings`], copying at most `budget` bytes of data segments.
unsafe fn prefault_within(budget: usize) {
    let mut segments = [(0usize, 0usize); MAX_SEGMENTS];
    let mut found = 0;
    // ELF objects map their code before their data: the path of the last
    // executable mapping seen names the object a data segment belongs to.
    let mut code_of = None;
    // SAFETY: async-signal-safe, and so is the closure.
    unsafe {
        for_each_mapping(|m| {
            if m.file && m.executable {
                code_of = Some(path_hash(m.path));
            }
            let is_data = m.file && m.writable && m.private && code_of == Some(path_hash(m.path));
            if is_data && m.end - m.start <= SMALL_DATA && found < MAX_SEGMENTS {
                segments[found] = (m.start, m.end);
                found += 1;
            } else if m.readable && (m.file || m.path == b"[vdso]") {
                populate_resident(m.start, m.end, Populate::Read);
            }
        })
    };
    let (program, libraries) = segments[..found].split_at(found.min(1));
    let mut budget = budget;
    for &(start, end) in program.iter().chain(libraries.iter().rev()) {
        let how = if end - start <= budget {
            budget -= end - start;
            Populate::Write
        } else {
            budget = 0;
            Populate::Read
        };
        // SAFETY: a private writable mapping of our own.
        unsafe { populate_resident(start, end, how) };
    }
}

/// FNV-1a: tells paths apart without keeping a copy of them.
fn path_hash(path: &[u8]) -> u64 {
    path.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
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

    /// `prefault_*` acts on every mapping of the process: tests that check
    /// pages before and after it must not run at the same time.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;

    /// A cached, unlinked file of `pages` pages, next to the test binary (a
    /// filesystem that allows executable mappings, unlike some /tmp).
    fn cached_file(name: &str, pages: usize) -> std::fs::File {
        let dir = std::env::current_exe().unwrap();
        let path = dir
            .parent()
            .unwrap()
            .join(format!("forkmon-{name}-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; pages * PAGE]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }

    /// Maps `pages` pages of `file` from page `offset`, private; at `at`
    /// (replacing what is there) unless null.
    fn map(
        file: &std::fs::File,
        at: *mut libc::c_void,
        pages: usize,
        offset: usize,
        prot: i32,
    ) -> usize {
        use std::os::fd::AsRawFd as _;
        let fixed = if at.is_null() { 0 } else { libc::MAP_FIXED };
        // SAFETY: a private mapping of a file we own, at an address we
        // reserved (or anywhere).
        let addr = unsafe {
            libc::mmap(
                at,
                pages * PAGE,
                prot,
                libc::MAP_PRIVATE | fixed,
                file.as_raw_fd(),
                (offset * PAGE) as i64,
            )
        };
        assert_ne!(
            addr,
            libc::MAP_FAILED,
            "{}",
            std::io::Error::last_os_error()
        );
        addr as usize
    }

    /// An ELF object's layout: one page of code, then `data_pages` of data
    /// (writable, private), from one file. Returns the data's address.
    fn map_object(name: &str, data_pages: usize) -> usize {
        let file = cached_file(name, 1 + data_pages);
        let code = map(
            &file,
            std::ptr::null_mut(),
            1 + data_pages,
            0,
            libc::PROT_READ,
        );
        map(
            &file,
            code as *mut _,
            1,
            0,
            libc::PROT_READ | libc::PROT_EXEC,
        );
        map(&file, (code + PAGE) as *mut _, data_pages, 1, RW)
    }

    #[test]
    fn cached_pages_of_a_file_mapping_get_mapped() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let file = cached_file("mapped", 4);
        let last = map(&file, std::ptr::null_mut(), 4, 0, libc::PROT_READ) + 3 * PAGE;
        // Written just now, so cached; never touched, so not mapped.
        assert!(!present(last));
        // SAFETY: raw syscalls only.
        unsafe { prefault_mappings() };
        assert!(present(last));
        assert!(!copied(last), "a read-only mapping must stay shared");
    }

    #[test]
    fn small_data_segments_get_copied_and_nothing_else() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let small = map_object("small", 2) + PAGE;
        let big = map_object("big", SMALL_DATA / PAGE + 1) + SMALL_DATA;
        let data_file = cached_file("data", 2);
        let plain = map(&data_file, std::ptr::null_mut(), 2, 0, RW) + PAGE;
        for page in [small, big, plain] {
            assert!(!present(page));
        }
        // SAFETY: raw syscalls only.
        unsafe { prefault_within(usize::MAX) };
        assert!(copied(small), "a small data segment must be copied");
        assert!(present(big) && !copied(big), "a big one only mapped");
        assert!(
            present(plain) && !copied(plain),
            "a data file mapped writable must still show changes to the file"
        );
    }

    #[test]
    fn copies_stay_within_the_budget() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let data = map_object("budget", 1);
        // SAFETY: raw syscalls only.
        unsafe { prefault_within(0) };
        assert!(present(data) && !copied(data));
    }
}
