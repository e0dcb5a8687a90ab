//! The Lua pattern port: checking and matching any pattern on any subject
//! never panics, a match lies in the subject and has the literal head and
//! tail the prefilter takes from the pattern, and where the `lua-patterns`
//! crate is an oracle (see `lua_port_agrees_with_the_crate` in
//! forkmon-user/src/filter/lua.rs) the two agree.
#![no_main]

use std::panic::{self, AssertUnwindSafe};

use forkmon_fuzz::filter::lua;
use libfuzzer_sys::{
    arbitrary::{self, Arbitrary},
    fuzz_target,
};

#[derive(Debug, Arbitrary)]
struct Case {
    pattern: Vec<u8>,
    subject: Vec<u8>,
}

/// The crate's answer, or None where it is no oracle: it panics when
/// partial matches pile up ("pattern too complex").
fn crate_find(pattern: &[u8], subject: &[u8]) -> Option<Option<(usize, usize)>> {
    // NUL-terminated copies keep its unchecked reads in bounds.
    let pattern_z = [pattern, b"\0"].concat();
    let subject_z = [subject, b"\0"].concat();
    // libfuzzer-sys's hook aborts on any panic, before unwinding.
    let hook = panic::take_hook();
    panic::set_hook(Box::new(|_| {}));
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut m = lua_patterns::LuaPattern::from_bytes_try(&pattern_z[..pattern.len()]).ok()?;
        Some(
            m.matches_bytes(&subject_z[..subject.len()])
                .then(|| (m.range().start, m.range().end)),
        )
    }));
    panic::set_hook(hook);
    match result {
        Ok(found) => found,
        Err(e) => {
            let message = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            assert!(message.contains("too complex"), "lua-patterns: {message}");
            None
        }
    }
}

/// Where the crate is known to differ from Lua 5.4 (checked with lua5.4),
/// or to be unsafe.
fn crate_is_no_oracle(pattern: &[u8], subject: &[u8]) -> bool {
    // Its check reads the byte before an empty pattern; a set closes at
    // its first `]` for it, even in first place (`[]]`, `[^]]`).
    if pattern.is_empty() || pattern.windows(2).any(|w| w == b"[]" || w == b"^]") {
        return true;
    }
    pattern.windows(2).any(|w| match (w[0], w[1]) {
        // Back-references make it write into the subject.
        (b'%', b'0'..=b'9') => true,
        // `%z` matches `z` for it, NUL for Lua; `%F` matches `f`, not `F`.
        (b'%', b'z' | b'Z') => true,
        (b'%', c) if c.is_ascii_uppercase() && !b"ACDGLPSUWX".contains(&c) => true,
        // Its `%s` misses `\v`.
        (b'%', b's' | b'S') => subject.contains(&0x0b),
        _ => false,
    })
}

fuzz_target!(|case: Case| {
    let (pattern, subject) = (&case.pattern[..], &case.subject[..]);
    let Ok(items) = lua::parse(pattern) else {
        return;
    };
    let Ok(found) = lua::find(pattern, subject) else {
        return; // too complex, as Lua would say
    };
    if let Some((start, end)) = found {
        assert!(start <= end && end <= subject.len(), "{found:?}");
        let matched = &subject[start..end];
        if pattern.starts_with(b"^") {
            assert_eq!(start, 0);
            assert!(matched.starts_with(&lua::literal_head(&items)));
        }
        let tail = lua::literal_tail(&items);
        if !tail.is_empty() {
            assert_eq!(end, subject.len());
            assert!(matched.ends_with(&tail));
        }
    }
    if crate_is_no_oracle(pattern, subject) {
        return;
    }
    let Some(theirs) = crate_find(pattern, subject) else {
        return;
    };
    // It never tries the empty match at the end of a non-empty subject.
    let expected = match found {
        Some((start, _)) if start == subject.len() && !subject.is_empty() => None,
        ours => ours,
    };
    assert_eq!(theirs, expected, "ours (adjusted) vs lua-patterns");
});
