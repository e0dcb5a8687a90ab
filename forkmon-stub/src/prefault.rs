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
use core::ptr;

/// `/proc/self/maps` is read into this much memory at most.
const MAPS_BYTES: usize = 1 << 20;
/// Pages asked to `mincore` at once (one byte each, on the stack).
const CHUNK_PAGES: usize = 1024;
const PAGE: usize = 4096;

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
/// Async-signal-safe (raw syscalls only); call from a single-threaded
/// child.
pub unsafe fn map_file_pages() {
    // SAFETY: an anonymous mapping we own, released below.
    let buf = unsafe {
        libc::mmap(
            ptr::null_mut(),
            MAPS_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if buf == libc::MAP_FAILED {
        return;
    }
    // SAFETY: `buf` is MAPS_BYTES of writable memory.
    let maps = unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), MAPS_BYTES) };
    // SAFETY: reads into memory we own.
    let len = unsafe { read_maps(maps) };
    for line in maps[..len].split(|b| *b == b'\n') {
        if let Some((start, end)) = file_mapping(line) {
            // SAFETY: a range this process has mapped.
            unsafe { map_resident(start, end) };
        }
    }
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(buf, MAPS_BYTES) };
}

/// Reads `/proc/self/maps` into `out`; returns the length (whole lines
/// only if it did not fit).
unsafe fn read_maps(out: &mut [u8]) -> usize {
    // SAFETY: plain syscalls on a NUL-terminated path and our buffer.
    unsafe {
        let fd = libc::open(
            c"/proc/self/maps".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return 0;
        }
        let mut len = 0;
        while len < out.len() {
            let n = libc::read(fd, out[len..].as_mut_ptr().cast(), out.len() - len);
            if n <= 0 {
                break;
            }
            len += n as usize;
        }
        libc::close(fd);
        if len == out.len() {
            len = out.iter().rposition(|b| *b == b'\n').unwrap_or(0);
        }
        len
    }
}

/// The range of a readable file mapping (or the vDSO) in a maps line:
/// `start-end perms offset dev inode [path]`.
fn file_mapping(line: &[u8]) -> Option<(usize, usize)> {
    let mut fields = line.split(|b| *b == b' ').filter(|f| !f.is_empty());
    let range = fields.next()?;
    let perms = fields.next()?;
    let _offset = fields.next()?;
    let _dev = fields.next()?;
    let inode = fields.next()?;
    let path = fields.next().unwrap_or(b"");
    let file = inode != b"0" || path == b"[vdso]";
    if !file || perms.first() != Some(&b'r') {
        return None;
    }
    let dash = range.iter().position(|b| *b == b'-')?;
    Some((hex(&range[..dash])?, hex(&range[dash + 1..])?))
}

fn hex(digits: &[u8]) -> Option<usize> {
    let mut value = 0usize;
    for d in digits {
        let digit = (*d as char).to_digit(16)?;
        value = value.checked_mul(16)?.checked_add(digit as usize)?;
    }
    Some(value)
}

/// Maps the pages of `[start, end)` that are in the page cache, in runs.
unsafe fn map_resident(start: usize, end: usize) {
    let mut resident = [0u8; CHUNK_PAGES];
    let mut chunk = start;
    while chunk < end {
        let pages = ((end - chunk) / PAGE).min(CHUNK_PAGES);
        // SAFETY: `resident` has room for `pages` bytes.
        if unsafe { libc::mincore(chunk as *mut _, pages * PAGE, resident.as_mut_ptr()) } != 0 {
            return;
        }
        let mut page = 0;
        while page < pages {
            if resident[page] & 1 == 0 {
                page += 1;
                continue;
            }
            let run = resident[page..pages]
                .iter()
                .position(|r| r & 1 == 0)
                .unwrap_or(pages - page);
            // SAFETY: populating part of our own mapping, read-only.
            unsafe {
                libc::madvise(
                    (chunk + page * PAGE) as *mut _,
                    run * PAGE,
                    libc::MADV_POPULATE_READ,
                )
            };
            page += run;
        }
        chunk += pages * PAGE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_mappings_are_told_from_the_others() {
        let text = b"7f10a0000000-7f10a0028000 r-xp 00028000 fe:01 1835 /usr/lib/x86_64-linux-gnu/libc.so.6";
        assert_eq!(file_mapping(text), Some((0x7f10a0000000, 0x7f10a0028000)));
        let vdso =
            b"7ffd1b5f0000-7ffd1b5f2000 r-xp 00000000 00:00 0                          [vdso]";
        assert_eq!(file_mapping(vdso), Some((0x7ffd1b5f0000, 0x7ffd1b5f2000)));
        let heap =
            b"55d0c2a8f000-55d0c2ab0000 rw-p 00000000 00:00 0                          [heap]";
        assert_eq!(file_mapping(heap), None);
        let anon = b"7f10a0200000-7f10a0300000 rw-p 00000000 00:00 0 ";
        assert_eq!(file_mapping(anon), None);
        let guard = b"7f10a0028000-7f10a0029000 ---p 00028000 fe:01 1835 /usr/lib/libc.so.6";
        assert_eq!(file_mapping(guard), None);
        assert_eq!(file_mapping(b""), None);
        assert_eq!(hex(b"7fFf"), Some(0x7fff));
        assert_eq!(hex(b"7g"), None);
    }

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
        // SAFETY: a fresh read-only shared mapping of a file we own.
        let addr = unsafe {
            libc::mmap(
                ptr::null_mut(),
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
