//! The kernel half of the filter: a cheap test on the path as passed that
//! never rejects what user space's full filter accepts (see
//! `PrefilterConfig`). Non-matching opens cost no signal and no round trip.
// Plain index loops with constant bounds are what the verifier can follow.
#![allow(clippy::needless_range_loop)]
use forkmon_common::{
    PATH_MAX, PREFILTER_MAX_PREFIXES, PREFILTER_MAX_SUFFIXES, PREFILTER_PREFIX_LEN,
    PREFILTER_SUFFIX_LEN,
};

use crate::maps::PREFILTER;

const MASK: usize = PATH_MAX - 1;

pub fn may_match(path: &[u8; PATH_MAX], len: u32) -> bool {
    let Some(config) = PREFILTER.get(0) else {
        return false;
    };
    if config.accept_all != 0 {
        return true;
    }
    let len = len as usize & MASK;
    for i in 0..PREFILTER_MAX_SUFFIXES {
        if i as u32 >= config.suffix_count {
            break;
        }
        let suffix_len = config.suffix_len[i] as usize;
        if suffix_len == 0 || suffix_len > PREFILTER_SUFFIX_LEN || suffix_len > len {
            continue;
        }
        let start = len - suffix_len;
        let mut equal = true;
        for j in 0..PREFILTER_SUFFIX_LEN {
            if j >= suffix_len {
                break;
            }
            if path[(start + j) & MASK] != config.suffixes[i][j] {
                equal = false;
                break;
            }
        }
        if equal {
            return true;
        }
    }
    if config.prefix_count == 0 {
        return false;
    }
    if path[0] != b'/' {
        return true; // relative: resolved against a cwd only user space knows
    }
    for i in 0..PREFILTER_MAX_PREFIXES {
        if i as u32 >= config.prefix_count {
            break;
        }
        let prefix_len = config.prefix_len[i] as usize;
        if prefix_len == 0 || prefix_len > PREFILTER_PREFIX_LEN || prefix_len > len {
            continue;
        }
        let mut equal = true;
        for j in 0..PREFILTER_PREFIX_LEN {
            if j >= prefix_len {
                break;
            }
            if path[j] != config.prefixes[i][j] {
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

/// No `//` and no `/.` where a prefix could reach: cleaning (dropping `.`
/// components and doubled slashes) then leaves the first
/// PREFILTER_PREFIX_LEN bytes as they are, so the byte prefix test is exact.
fn is_canonical(path: &[u8; PATH_MAX], len: usize) -> bool {
    for i in 0..PREFILTER_PREFIX_LEN {
        if i + 1 >= len {
            break;
        }
        if path[i] == b'/' && (path[i + 1] == b'/' || path[i + 1] == b'.') {
            return false;
        }
    }
    true
}
