//! `--filter` globs and Lua patterns: compiling them never panics, errors
//! are one line, and the kernel prefilter derived from a filter never
//! rejects an open the filter accepts (the property the unit tests check
//! with proptest, on any input).
#![no_main]

use std::{ffi::OsStr, os::unix::ffi::OsStrExt as _, path::Path};

use forkmon_common::PATH_MAX;
use forkmon_fuzz::filter::{Filter, absolute_lexical};
use libfuzzer_sys::{
    arbitrary::{self, Arbitrary},
    fuzz_target,
};

#[derive(Debug, Arbitrary)]
struct Case {
    /// Components of the directory forkmon starts in.
    base: Vec<String>,
    globs: Vec<String>,
    lua: Option<String>,
    /// Paths as passed to `open()`.
    paths: Vec<Vec<u8>>,
}

/// The kernel's answer, with the path laid out as in its per-CPU buffer:
/// the NUL, then what earlier, longer paths left (as in the unit tests).
fn may_match(config: &forkmon_common::PrefilterConfig, passed: &[u8]) -> bool {
    const STALE: &[u8] = b"/./x.lua/";
    let mut buffer: [u8; PATH_MAX] = std::array::from_fn(|i| STALE[i % STALE.len()]);
    buffer[..passed.len()].copy_from_slice(passed);
    buffer[passed.len()] = 0;
    config.may_match(&buffer, passed.len() as u32)
}

/// Only successful opens of regular files are signalled: the prefilter
/// relies on their last component being a file name.
fn could_open_a_file(passed: &[u8]) -> bool {
    let name = passed.rsplit(|&b| b == b'/').next().unwrap_or_default();
    !passed.is_empty()
        && passed.len() < PATH_MAX
        && !passed.contains(&0)
        && !matches!(name, b"" | b"." | b"..")
}

/// Paths more likely to match than random bytes: the pattern's text
/// without its operators.
fn literal(pattern: &str, operators: &str) -> Vec<u8> {
    pattern
        .chars()
        .filter(|c| !operators.contains(*c))
        .collect::<String>()
        .into_bytes()
}

fuzz_target!(|case: Case| {
    // getcwd's kind of path: absolute, no `.`, `..` or empty components.
    let components: Vec<&str> = case
        .base
        .iter()
        .map(String::as_str)
        .filter(|c| !matches!(*c, "" | "." | "..") && !c.contains(['/', '\0']))
        .take(8)
        .collect();
    let base = format!("/{}", components.join("/"));
    if base.len() >= PATH_MAX {
        return;
    }
    let base = Path::new(&base);
    let globs: Vec<String> = case.globs.into_iter().take(8).collect();
    let filter = match Filter::new(&globs, case.lua.as_deref(), base) {
        Ok(filter) => filter,
        Err(e) => {
            let message = e.to_string();
            assert!(!message.contains(['\n', '\r']), "{message:?}");
            return;
        }
    };
    let prefilter = filter.prefilter();
    let config = prefilter.config();
    let derived = globs.iter().map(|g| literal(g, "!*?[]{}\\,")).chain(
        case.lua
            .iter()
            .flat_map(|l| l.split(';'))
            .map(|l| literal(l, "^$%()[].*+-?")),
    );
    for passed in case.paths.into_iter().take(16).chain(derived) {
        if !could_open_a_file(&passed) {
            continue;
        }
        let abs = absolute_lexical(base, Path::new(OsStr::from_bytes(&passed)));
        if filter.matches(&abs) {
            assert!(
                may_match(&config, &passed),
                "{:?} accepted by the filter ({}), rejected by {prefilter:?}",
                String::from_utf8_lossy(&passed),
                filter.describe(),
            );
        }
    }
});
