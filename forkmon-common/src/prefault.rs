//! Fault in a process's own pages ahead of time, from `/proc/self/maps`.
//!
//! A fork leaves work for later: the child faults in its file mappings
//! again, and both sides take a fault at the first write to each page they
//! shared. On this VM each fault costs 2–15 µs. Where that would land on a
//! path that is timed (a resume, a checkpoint), the process can take the
//! faults earlier, in one `madvise` per run of resident pages, which is
//! much cheaper than one fault each. Only pages already resident are
//! touched: nothing is read from disk. Memory is allocated only for the
//! private copies a caller asks for (`Populate::Write`).
//!
//! Async-signal-safe (raw syscalls only): the stub calls it in a forked
//! child inside a signal handler.
use core::ptr;

/// `/proc/self/maps` is read into this much memory at most.
const MAPS_BYTES: usize = 1 << 20;
/// Pages asked to `mincore` at once (one byte each, on the stack).
const CHUNK_PAGES: usize = 1024;
pub const PAGE: usize = 4096;

/// One line of `/proc/self/maps`: `start-end perms offset dev inode [path]`.
#[derive(Debug, PartialEq, Eq)]
pub struct Mapping<'a> {
    pub start: usize,
    pub end: usize,
    pub readable: bool,
    pub writable: bool,
    pub executable: bool,
    pub private: bool,
    /// Backed by a file (a non-zero inode).
    pub file: bool,
    pub path: &'a [u8],
}

impl Mapping<'_> {
    pub fn parse(line: &[u8]) -> Option<Mapping<'_>> {
        let mut fields = line.split(|b| *b == b' ').filter(|f| !f.is_empty());
        let range = fields.next()?;
        let perms = fields.next()?;
        let _offset = fields.next()?;
        let _dev = fields.next()?;
        let inode = fields.next()?;
        let path = fields.next().unwrap_or(b"");
        let dash = range.iter().position(|b| *b == b'-')?;
        if perms.len() != 4 {
            return None;
        }
        Some(Mapping {
            start: hex(&range[..dash])?,
            end: hex(&range[dash + 1..])?,
            readable: perms[0] == b'r',
            writable: perms[1] == b'w',
            executable: perms[2] == b'x',
            private: perms[3] == b'p',
            file: inode != b"0",
            path,
        })
    }
}

fn hex(digits: &[u8]) -> Option<usize> {
    let mut value = 0usize;
    for d in digits {
        let digit = (*d as char).to_digit(16)?;
        value = value.checked_mul(16)?.checked_add(digit as usize)?;
    }
    Some(value)
}

/// How to fault a page in.
#[derive(Clone, Copy)]
pub enum Populate {
    /// Map it (`MADV_POPULATE_READ`).
    Read,
    /// Make it writable, copying it if it is shared (`MADV_POPULATE_WRITE`).
    Write,
}

/// Calls `each` for every mapping of this process. Best effort: nothing
/// if `/proc/self/maps` cannot be read.
///
/// # Safety
/// Async-signal-safe; `each` must be too.
pub unsafe fn for_each_mapping(mut each: impl FnMut(&Mapping<'_>)) {
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
        if let Some(mapping) = Mapping::parse(line) {
            each(&mapping);
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

/// Faults in the resident pages of `[start, end)`, a range of this
/// process's own mappings, in runs. Best effort.
///
/// # Safety
/// Async-signal-safe. `Populate::Write` makes private copies of shared
/// pages: only for memory this process may write.
pub unsafe fn populate_resident(start: usize, end: usize, how: Populate) {
    let advice = match how {
        Populate::Read => libc::MADV_POPULATE_READ,
        Populate::Write => libc::MADV_POPULATE_WRITE,
    };
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
            // SAFETY: populating part of our own mapping.
            unsafe { libc::madvise((chunk + page * PAGE) as *mut _, run * PAGE, advice) };
            page += run;
        }
        chunk += pages * PAGE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_are_parsed() {
        let text = b"7f10a0000000-7f10a0028000 r-xp 00028000 fe:01 1835 /usr/lib/libc.so.6";
        let text = Mapping::parse(text).unwrap();
        assert_eq!((text.start, text.end), (0x7f10a0000000, 0x7f10a0028000));
        assert!(text.readable && !text.writable && text.executable && text.private && text.file);
        assert_eq!(text.path, b"/usr/lib/libc.so.6");
        let vdso = b"7ffd1b5f0000-7ffd1b5f2000 r-xp 00000000 00:00 0                  [vdso]";
        let vdso = Mapping::parse(vdso).unwrap();
        assert!(!vdso.file && vdso.path == b"[vdso]");
        let ring = b"7f10a0200000-7f10a0300000 rw-s 00000000 00:0f 1042 anon_inode:bpf-map";
        let ring = Mapping::parse(ring).unwrap();
        assert!(ring.writable && !ring.executable && !ring.private);
        let anon = b"7f10a0200000-7f10a0300000 rw-p 00000000 00:00 0 ";
        assert!(!Mapping::parse(anon).unwrap().file);
        assert_eq!(Mapping::parse(b""), None);
        assert_eq!(Mapping::parse(b"7g-8 rw-p 0 0 0"), None);
    }
}
