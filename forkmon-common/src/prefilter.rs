//! The kernel half of the filter: a cheap test on the path as passed to
//! `open()` that never rejects a path user space's full filter accepts, so
//! that opens which cannot match cost no signal and no round trip.
//!
//! Written once for both sides: the eBPF program runs
//! [`PrefilterConfig::may_match`] on every candidate open, and user space's
//! tests run the very same code on the configuration it sends the kernel.
//! Hence the shape the BPF verifier can follow: loops with constant bounds,
//! indexes masked into the path buffer, no slices of runtime length.
// Plain index loops with constant bounds are what the verifier can follow.
#![allow(clippy::needless_range_loop)]

use crate::PATH_MAX;

/// Limits of the kernel prefilter (see [`PrefilterConfig`]).
pub const PREFILTER_MAX_SUFFIXES: usize = 8;
pub const PREFILTER_SUFFIX_LEN: usize = 16;
pub const PREFILTER_MAX_PREFIXES: usize = 4;
pub const PREFILTER_PREFIX_LEN: usize = 256;
/// Slots for excluded directories, picked by hash: a power of two.
pub const PREFILTER_MAX_EXCLUDED: usize = 16;
const _: () = assert!(PREFILTER_MAX_EXCLUDED.is_power_of_two());
/// The longest excluded directory (and its `/`): the kernel hashes no
/// further. Enough for `~/.pyenv/versions/3.11.7/lib/python3.11/` or a
/// project's `.venv`; each byte more is verifier work at every start.
pub const PREFILTER_EXCLUDED_LEN: usize = 128;

/// Keeps every index into a path buffer provably in bounds for the verifier.
const MASK: usize = PATH_MAX - 1;

/// Which opens of an armed process the kernel signals (see
/// [`PrefilterConfig::may_match`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PrefilterConfig {
    pub accept_all: u32,
    pub suffix_count: u32,
    pub prefix_count: u32,
    /// Non-zero: report only the successful read-only opens that may match
    /// the filter (`forkmon run` watches those, and answers the signalled
    /// ones); zero: report every open (`forkmon trace`).
    pub reads_only: u32,
    pub suffix_len: [u32; PREFILTER_MAX_SUFFIXES],
    pub suffixes: [[u8; PREFILTER_SUFFIX_LEN]; PREFILTER_MAX_SUFFIXES],
    pub prefix_len: [u32; PREFILTER_MAX_PREFIXES],
    pub prefixes: [[u8; PREFILTER_PREFIX_LEN]; PREFILTER_MAX_PREFIXES],
    /// Directories under which the filter matches nothing, each as the
    /// [`fnv1a`] hash and length of its path and a final `/`, learned by
    /// `forkmon run` from the opens it said no to: the standard library, a
    /// virtual environment's packages. Name globs such as `*.py` and the
    /// default filter (files under the current directory, which may hold a
    /// `.venv`) let those through, and each was a signal, a round trip and
    /// often a fork for nothing. (Hashes: comparing each directory's bytes
    /// took the verifier past its million instructions.)
    pub excluded_hash: [u64; PREFILTER_MAX_EXCLUDED],
    pub excluded_count: u32,
    pub excluded_len: [u32; PREFILTER_MAX_EXCLUDED],
    pub _padding: u32,
}

/// FNV-1a's start and its prime (64 bits).
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// Where an excluded directory's hash is kept: one slot to compare per
/// directory of a path, not eight.
#[inline(always)]
fn excluded_slot(hash: u64) -> usize {
    hash as usize & (PREFILTER_MAX_EXCLUDED - 1)
}

/// The 64-bit FNV-1a hash of `bytes`, as [`PrefilterConfig::may_match`]
/// computes it along a path.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |hash, &b| {
        (hash ^ b as u64).wrapping_mul(FNV_PRIME)
    })
}

impl PrefilterConfig {
    /// Signals nothing: the state before user space configures it.
    pub const NONE: PrefilterConfig = PrefilterConfig {
        accept_all: 0,
        suffix_count: 0,
        prefix_count: 0,
        reads_only: 0,
        suffix_len: [0; PREFILTER_MAX_SUFFIXES],
        suffixes: [[0; PREFILTER_SUFFIX_LEN]; PREFILTER_MAX_SUFFIXES],
        prefix_len: [0; PREFILTER_MAX_PREFIXES],
        prefixes: [[0; PREFILTER_PREFIX_LEN]; PREFILTER_MAX_PREFIXES],
        excluded_hash: [0; PREFILTER_MAX_EXCLUDED],
        excluded_count: 0,
        excluded_len: [0; PREFILTER_MAX_EXCLUDED],
        _padding: 0,
    };

    /// Adds `dir` (a directory's path and a final `/`) to the excluded
    /// directories, in the slot its hash picks; false when that slot is
    /// taken (or `dir` too long).
    pub fn exclude(&mut self, dir: &[u8]) -> bool {
        let hash = fnv1a(dir);
        let slot = excluded_slot(hash);
        if self.excluded_len[slot] != 0 || dir.is_empty() || dir.len() > PREFILTER_EXCLUDED_LEN {
            return false;
        }
        self.excluded_hash[slot] = hash;
        self.excluded_len[slot] = dir.len() as u32;
        self.excluded_count += 1;
        true
    }

    /// Whether the open of the path in the first `len` bytes of `path` (as
    /// passed to `open()`, NUL excluded) may match the filter, so user space
    /// must judge it:
    /// 1. `accept_all`;
    /// 2. else, if any suffix ends the path;
    /// 3. else, if there are no prefixes: no;
    /// 4. else, if the path is relative (does not start with `/`: the kernel
    ///    does not know the cwd), or any prefix starts it, or it is not
    ///    canonical: `//`, `/./` or `/../` starts at one of the first
    ///    PREFILTER_PREFIX_LEN bytes (cleaning could then change the bytes a
    ///    prefix is compared with; beyond them it cannot matter).
    ///
    /// An open that may match is then signalled unless
    /// [`excludes`](Self::excludes) says otherwise.
    ///
    /// Suffixes need no such care: cleaning keeps the last component of a
    /// path that can open a regular file (non-empty, not ending in `/`, `.`
    /// or `..`), and only such opens — successful ones — are ever signalled.
    ///
    /// `path[len]` must be the path's NUL (as `bpf_probe_read_user_str`
    /// leaves it), which makes an empty path relative. No byte after it is
    /// read: the kernel's per-CPU buffer still holds earlier, longer paths
    /// there.
    // Inlined into the one eBPF call site, as when it lived there: no
    // bpf-to-bpf call on every open.
    #[inline(always)]
    pub fn may_match(&self, path: &[u8; PATH_MAX], len: u32) -> bool {
        self.includes(path, len)
    }

    /// Steps 1 to 4 of [`may_match`](Self::may_match).
    #[inline(always)]
    fn includes(&self, path: &[u8; PATH_MAX], len: u32) -> bool {
        if self.accept_all != 0 {
            return true;
        }
        let len = len as usize & MASK;
        for i in 0..PREFILTER_MAX_SUFFIXES {
            if i as u32 >= self.suffix_count {
                break;
            }
            let suffix_len = self.suffix_len[i] as usize;
            if suffix_len == 0 || suffix_len > PREFILTER_SUFFIX_LEN || suffix_len > len {
                continue;
            }
            let start = len - suffix_len;
            let mut equal = true;
            for j in 0..PREFILTER_SUFFIX_LEN {
                if j >= suffix_len {
                    break;
                }
                if path[(start + j) & MASK] != self.suffixes[i][j] {
                    equal = false;
                    break;
                }
            }
            if equal {
                return true;
            }
        }
        if self.prefix_count == 0 {
            return false;
        }
        if path[0] != b'/' {
            return true; // relative: resolved against a cwd only user space knows
        }
        for i in 0..PREFILTER_MAX_PREFIXES {
            if i as u32 >= self.prefix_count {
                break;
            }
            let prefix_len = self.prefix_len[i] as usize;
            if prefix_len == 0 || prefix_len > PREFILTER_PREFIX_LEN || prefix_len > len {
                continue;
            }
            let mut equal = true;
            for j in 0..PREFILTER_PREFIX_LEN {
                if j >= prefix_len {
                    break;
                }
                if path[j] != self.prefixes[i][j] {
                    equal = false;
                    break;
                }
            }
            if equal {
                return true;
            }
        }
        !is_canonical(path, len)
    }

    /// Whether the path lies in a directory the filter cannot match (see
    /// [`excluded_hash`](Self::excluded_hash)): its open is reported, not
    /// signalled. Tested only for an open about to be signalled, so that
    /// the verifier follows this loop along few paths (in `may_match`, it
    /// added ~0.2 s to forkmon's start).
    ///
    /// It never compares with `len` (the path's NUL ends it): a loop that
    /// leaves at a different bound of `len` each time made the verifier
    /// follow the other loops once per exit, past its million instructions.
    #[inline(always)]
    pub fn excludes(&self, path: &[u8; PATH_MAX]) -> bool {
        if self.excluded_count == 0 || path[0] != b'/' {
            return false;
        }
        // One pass: the hash of each leading directory, at its `/`.
        let mut hash = FNV_OFFSET;
        for j in 0..PREFILTER_EXCLUDED_LEN {
            let byte = path[j];
            if byte == 0 {
                break;
            }
            hash = (hash ^ byte as u64).wrapping_mul(FNV_PRIME);
            if byte != b'/' {
                continue;
            }
            // `//`, `/./`, `/../` (or at the end): cleaning could move what
            // follows anywhere.
            let at = |k: usize| path[(j + k) & MASK];
            let ends = |k: usize| at(k) == b'/' || at(k) == 0;
            if at(1) == b'/' || (at(1) == b'.' && (ends(2) || (at(2) == b'.' && ends(3)))) {
                return false;
            }
            let slot = excluded_slot(hash);
            if self.excluded_len[slot] as usize == j + 1 && self.excluded_hash[slot] == hash {
                return true;
            }
        }
        false
    }
}

/// No `//`, `/./` or `/../` where a prefix could reach: cleaning (dropping
/// `.` components and doubled slashes, resolving `..`) then leaves the first
/// PREFILTER_PREFIX_LEN bytes as they are, so the byte prefix test is exact.
#[inline(always)]
fn is_canonical(path: &[u8; PATH_MAX], len: usize) -> bool {
    // A byte at or past `len` ends the component.
    let ends = |at: usize| at >= len || path[at & MASK] == b'/';
    for i in 0..PREFILTER_PREFIX_LEN {
        if i + 1 >= len {
            break;
        }
        if path[i] != b'/' {
            continue;
        }
        // `//`, `/./` and `/../`, not a name that starts with a dot
        // (`~/.pyenv`, `.venv`: every module of such an interpreter
        // would otherwise be signalled, each a fork for nothing).
        let dot_or_dot_dot =
            path[i + 1] == b'.' && (ends(i + 2) || (path[(i + 2) & MASK] == b'.' && ends(i + 3)));
        if path[i + 1] == b'/' || dot_or_dot_dot {
            return false;
        }
    }
    true
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] plain data with explicit padding; every bit pattern is
// valid.
unsafe impl aya::Pod for PrefilterConfig {}
