//! Lua 5.4 patterns, as `string.find` matches them (ported from
//! `lstrlib.c`), plus the static checks and the literal analysis the filter
//! needs. Patterns are validated up front so that matching cannot fail but
//! for the recursion limit, as Lua's own can.
const MAX_CAPTURES: usize = 32;
/// Lua's MAXCCALLS: how deep matching may recurse.
const MAX_DEPTH: usize = 200;
/// How much work one [`find`] may do, in pattern or subject bytes looked
/// at. Lua bounds only the depth, so a pattern as short as `.-.-x` takes
/// time cubic in the subject (minutes on a long path), and forkmon matches
/// while the program waits for its verdict: past this, it gives up as Lua
/// does at its depth limit. About 50 ms (seconds under the fuzzer's
/// sanitizers); a realistic pattern needs thousands, and the costliest
/// ordinary case, `.*%.lua$` failing on a 2 KB path, half of it (on a path
/// of PATH_MAX bytes it gives up: no match either way).
#[cfg(not(fuzzing))]
const MAX_STEPS: usize = 1 << 24;
/// The fuzzer checks that work is bounded, not the bound: at full size, a
/// costly pattern takes it seconds a run.
#[cfg(fuzzing)]
const MAX_STEPS: usize = 1 << 18;

/// Lua's "pattern too complex", or more work than [`MAX_STEPS`].
#[derive(Debug, PartialEq, Eq)]
pub struct TooComplex;

/// One pattern element, as far as the filter cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// Exactly this byte, once.
    Literal(u8),
    /// `(`, `()` or `)`: consumes nothing.
    Capture,
    /// The final `$`.
    End,
    /// Anything else: classes, quantified items, `%b`, `%f`, `%1`.
    Other,
}

/// C strings end in NUL and Lua relies on it at a few places.
fn byte(bytes: &[u8], i: usize) -> u8 {
    bytes.get(i).copied().unwrap_or(0)
}

/// Checks `pattern` as Lua would while matching it, with Lua's error
/// messages, and splits it into items (the leading `^` excluded).
pub fn parse(pattern: &[u8]) -> Result<Vec<Item>, String> {
    let body = pattern.strip_prefix(b"^").unwrap_or(pattern);
    let mut items = Vec::new();
    // Per capture, in order of opening: whether it is closed.
    let mut closed: Vec<bool> = Vec::new();
    let mut p = 0;
    while p < body.len() {
        let (item, next) = match (body[p], byte(body, p + 1)) {
            (b'(', second) => {
                if closed.len() == MAX_CAPTURES {
                    return Err("too many captures".into());
                }
                closed.push(second == b')');
                (Item::Capture, if second == b')' { p + 2 } else { p + 1 })
            }
            (b')', _) => {
                let open = closed.iter().rposition(|&c| !c);
                let open = open.ok_or("invalid pattern capture")?;
                closed[open] = true;
                (Item::Capture, p + 1)
            }
            (b'$', _) if p + 1 == body.len() => (Item::End, p + 1),
            (b'%', b'b') if p + 3 >= body.len() => {
                return Err("malformed pattern (missing arguments to '%b')".into());
            }
            (b'%', b'b') => (Item::Other, p + 4),
            (b'%', b'f') if byte(body, p + 2) != b'[' => {
                return Err("missing '[' after '%f' in pattern".into());
            }
            (b'%', b'f') => (Item::Other, class_end(body, p + 2)?),
            (b'%', digit @ b'0'..=b'9') => {
                let index = usize::from(digit - b'0');
                if index == 0 || !closed.get(index - 1).is_some_and(|&c| c) {
                    return Err(format!("invalid capture index %{index}"));
                }
                (Item::Other, p + 2)
            }
            (first, second) => {
                let end = class_end(body, p)?;
                if matches!(byte(body, end), b'*' | b'+' | b'?' | b'-') {
                    (Item::Other, end + 1)
                } else {
                    let literal = match first {
                        b'.' | b'[' => None,
                        // `%a` is a class; `%.` the character itself.
                        b'%' => (!second.is_ascii_alphanumeric()).then_some(second),
                        _ => Some(first),
                    };
                    (literal.map_or(Item::Other, Item::Literal), end)
                }
            }
        };
        items.push(item);
        p = next;
    }
    if closed.contains(&false) {
        return Err("unfinished capture".into());
    }
    Ok(items)
}

/// The literal bytes every match ends with, if `items` ends in `$`.
pub fn literal_tail(items: &[Item]) -> Vec<u8> {
    let Some((Item::End, rest)) = items.split_last() else {
        return Vec::new();
    };
    let mut tail = literal_run(rest.iter().rev());
    tail.reverse();
    tail
}

/// The literal bytes every match starts with, for an anchored pattern.
pub fn literal_head(items: &[Item]) -> Vec<u8> {
    literal_run(items.iter())
}

fn literal_run<'a>(items: impl Iterator<Item = &'a Item>) -> Vec<u8> {
    let mut run = Vec::new();
    for item in items {
        match item {
            Item::Literal(b) => run.push(*b),
            Item::Capture => {}
            Item::End | Item::Other => break,
        }
    }
    run
}

/// Where the single-character class starting at `p` ends.
fn class_end(pattern: &[u8], p: usize) -> Result<usize, String> {
    let mut p = p + 1;
    match pattern[p - 1] {
        b'%' if p >= pattern.len() => Err("malformed pattern (ends with '%')".into()),
        b'%' => Ok(p + 1),
        b'[' => {
            if byte(pattern, p) == b'^' {
                p += 1;
            }
            // The first character is never the closing `]`: `[]]`.
            loop {
                if p >= pattern.len() {
                    return Err("malformed pattern (missing ']')".into());
                }
                let c = pattern[p];
                p += 1;
                if c == b'%' && p < pattern.len() {
                    p += 1;
                }
                if byte(pattern, p) == b']' {
                    return Ok(p + 1);
                }
            }
        }
        _ => Ok(p),
    }
}

/// `string.find(subject, pattern)`: the first match's byte range.
/// `pattern` must have passed [`parse`].
pub fn find(pattern: &[u8], subject: &[u8]) -> Result<Option<(usize, usize)>, TooComplex> {
    let (anchored, pattern) = match pattern.strip_prefix(b"^") {
        Some(rest) => (true, rest),
        None => (false, pattern),
    };
    let mut state = State {
        subject,
        pattern,
        depth: MAX_DEPTH,
        steps: MAX_STEPS,
        level: 0,
        captures: [(0, Capture::Unfinished); MAX_CAPTURES],
    };
    for start in 0..=subject.len() {
        state.level = 0;
        if let Some(end) = state.do_match(start, 0)? {
            return Ok(Some((start, end)));
        }
        if anchored {
            break;
        }
    }
    Ok(None)
}

#[derive(Debug, Clone, Copy)]
enum Capture {
    Unfinished,
    Position,
    Len(usize),
}

/// Where the match ends, if it does.
type Step = Result<Option<usize>, TooComplex>;

struct State<'a> {
    subject: &'a [u8],
    pattern: &'a [u8],
    depth: usize,
    /// What is left of [`MAX_STEPS`].
    steps: usize,
    level: usize,
    /// Start and length of each capture.
    captures: [(usize, Capture); MAX_CAPTURES],
}

impl State<'_> {
    fn charge(&mut self, steps: usize) -> Result<(), TooComplex> {
        self.steps = self.steps.checked_sub(steps).ok_or(TooComplex)?;
        Ok(())
    }

    fn do_match(&mut self, s: usize, p: usize) -> Step {
        self.depth = self.depth.checked_sub(1).ok_or(TooComplex)?;
        let result = self.match_from(s, p);
        self.depth += 1;
        result
    }

    /// Lua's `match`; its tail calls (`goto init`) are the loop.
    fn match_from(&mut self, mut s: usize, mut p: usize) -> Step {
        let pat = self.pattern;
        loop {
            self.charge(1)?;
            if p == pat.len() {
                return Ok(Some(s));
            }
            match (pat[p], byte(pat, p + 1)) {
                (b'(', b')') => return self.start_capture(s, p + 2, Capture::Position),
                (b'(', _) => return self.start_capture(s, p + 1, Capture::Unfinished),
                (b')', _) => return self.end_capture(s, p + 1),
                (b'$', _) if p + 1 == pat.len() => {
                    return Ok((s == self.subject.len()).then_some(s));
                }
                (b'%', b'b') => match self.match_balance(s, p + 2)? {
                    Some(end) => (s, p) = (end, p + 4),
                    None => return Ok(None),
                },
                (b'%', b'f') => {
                    let set = p + 2;
                    let Ok(end) = class_end(pat, set) else {
                        return Ok(None);
                    };
                    self.charge(end - set)?;
                    let previous = if s == 0 { 0 } else { self.subject[s - 1] };
                    let current = byte(self.subject, s);
                    if bracket_class(previous, pat, set, end - 1)
                        || !bracket_class(current, pat, set, end - 1)
                    {
                        return Ok(None);
                    }
                    p = end;
                }
                (b'%', digit @ b'0'..=b'9') => match self.match_capture(s, digit)? {
                    Some(end) => (s, p) = (end, p + 2),
                    None => return Ok(None),
                },
                _ => {
                    let Ok(end) = class_end(pat, p) else {
                        return Ok(None);
                    };
                    // Finding the end and matching a byte both read the item.
                    self.charge(end - p)?;
                    let quantifier = byte(pat, end);
                    if !self.single_match(s, p, end) {
                        if !matches!(quantifier, b'*' | b'?' | b'-') {
                            return Ok(None);
                        }
                        p = end + 1;
                        continue;
                    }
                    match quantifier {
                        b'?' => {
                            if let Some(found) = self.do_match(s + 1, end + 1)? {
                                return Ok(Some(found));
                            }
                            p = end + 1;
                        }
                        b'+' => return self.max_expand(s + 1, p, end),
                        b'*' => return self.max_expand(s, p, end),
                        b'-' => return self.min_expand(s, p, end),
                        _ => (s, p) = (s + 1, end),
                    }
                }
            }
        }
    }

    fn single_match(&self, s: usize, p: usize, end: usize) -> bool {
        let Some(&c) = self.subject.get(s) else {
            return false;
        };
        match self.pattern[p] {
            b'.' => true,
            b'%' => class(c, byte(self.pattern, p + 1)),
            b'[' => bracket_class(c, self.pattern, p, end - 1),
            literal => literal == c,
        }
    }

    fn max_expand(&mut self, s: usize, p: usize, end: usize) -> Step {
        let mut count = 0;
        while self.single_match(s + count, p, end) {
            count += 1;
        }
        self.charge(count.saturating_mul(end - p))?;
        for i in (0..=count).rev() {
            if let Some(found) = self.do_match(s + i, end + 1)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    fn min_expand(&mut self, mut s: usize, p: usize, end: usize) -> Step {
        loop {
            if let Some(found) = self.do_match(s, end + 1)? {
                return Ok(Some(found));
            }
            self.charge(end - p)?;
            if !self.single_match(s, p, end) {
                return Ok(None);
            }
            s += 1;
        }
    }

    fn start_capture(&mut self, s: usize, p: usize, what: Capture) -> Step {
        // parse() bounds the number of captures.
        let Some(slot) = self.captures.get_mut(self.level) else {
            return Ok(None);
        };
        *slot = (s, what);
        self.level += 1;
        let found = self.do_match(s, p)?;
        if found.is_none() {
            self.level -= 1;
        }
        Ok(found)
    }

    fn end_capture(&mut self, s: usize, p: usize) -> Step {
        let open = self.captures[..self.level]
            .iter()
            .rposition(|(_, len)| matches!(len, Capture::Unfinished));
        let Some(open) = open else {
            return Ok(None);
        };
        self.captures[open].1 = Capture::Len(s - self.captures[open].0);
        let found = self.do_match(s, p)?;
        if found.is_none() {
            self.captures[open].1 = Capture::Unfinished;
        }
        Ok(found)
    }

    fn match_balance(&mut self, s: usize, p: usize) -> Step {
        let (Some(&open), Some(&close)) = (self.pattern.get(p), self.pattern.get(p + 1)) else {
            return Ok(None);
        };
        if self.subject.get(s) != Some(&open) {
            return Ok(None);
        }
        let mut depth = 1;
        let mut end = None;
        for (i, &c) in self.subject.iter().enumerate().skip(s + 1) {
            if c == close {
                depth -= 1;
                if depth == 0 {
                    end = Some(i + 1);
                    break;
                }
            } else if c == open {
                depth += 1;
            }
        }
        self.charge(end.unwrap_or(self.subject.len()) - s)?;
        Ok(end)
    }

    /// `%1`..`%9`: the same bytes as that capture again.
    fn match_capture(&mut self, s: usize, digit: u8) -> Step {
        let Some(index) = digit.checked_sub(b'1').map(usize::from) else {
            return Ok(None);
        };
        if index >= self.level {
            return Ok(None);
        }
        let (start, Capture::Len(len)) = self.captures[index] else {
            return Ok(None); // a position capture never matches
        };
        self.charge(len)?;
        let Some(again) = self.subject.get(s..s + len) else {
            return Ok(None);
        };
        Ok((again == &self.subject[start..start + len]).then_some(s + len))
    }
}

/// `%a` and friends, in the C locale; other characters stand for
/// themselves.
fn class(c: u8, class: u8) -> bool {
    let matches = match class.to_ascii_lowercase() {
        b'a' => c.is_ascii_alphabetic(),
        b'c' => c.is_ascii_control(),
        b'd' => c.is_ascii_digit(),
        b'g' => c.is_ascii_graphic(),
        b'l' => c.is_ascii_lowercase(),
        b'p' => c.is_ascii_punctuation(),
        // C's isspace includes \v, unlike is_ascii_whitespace.
        b's' => matches!(c, b' ' | b'\t'..=b'\r'),
        b'u' => c.is_ascii_uppercase(),
        b'w' => c.is_ascii_alphanumeric(),
        b'x' => c.is_ascii_hexdigit(),
        // Deprecated, but Lua 5.4 still has it.
        b'z' => c == 0,
        _ => return class == c,
    };
    matches != class.is_ascii_uppercase()
}

/// `[set]` from `pattern[p]` (the `[`) to `pattern[close]` (the `]`).
fn bracket_class(c: u8, pattern: &[u8], mut p: usize, close: usize) -> bool {
    let mut found = true;
    if pattern[p + 1] == b'^' {
        found = false;
        p += 1;
    }
    p += 1;
    while p < close {
        if pattern[p] == b'%' {
            p += 1;
            if class(c, pattern[p]) {
                return found;
            }
        } else if pattern[p + 1] == b'-' && p + 2 < close {
            if (pattern[p]..=pattern[p + 2]).contains(&c) {
                return found;
            }
            p += 2;
        } else if pattern[p] == c {
            return found;
        }
        p += 1;
    }
    !found
}

#[cfg(test)]
mod tests {
    use std::panic::{self, AssertUnwindSafe};

    use proptest::{collection::vec, prelude::*, sample::select};

    use super::*;

    fn find(pattern: &str, subject: &str) -> Option<(usize, usize)> {
        parse(pattern.as_bytes()).unwrap();
        super::find(pattern.as_bytes(), subject.as_bytes()).unwrap()
    }

    #[test]
    fn lua_matching_follows_lua() {
        assert_eq!(find("%.lua$", "/a/x.lua"), Some((4, 8)));
        assert_eq!(find("$", "abc"), Some((3, 3)));
        assert_eq!(find("x*$", "abc"), Some((3, 3)));
        assert_eq!(find("^$", ""), Some((0, 0)));
        assert_eq!(find("^b", "ab"), None);
        assert_eq!(find("a^b$", "xa^b"), Some((1, 4)));
        assert_eq!(find("%f[%w]lua", "/xlua/lua"), Some((6, 9)));
        assert_eq!(find("%f[%W]", "ab"), Some((2, 2)));
        assert_eq!(find("%b()", "a(b(c)d)e"), Some((1, 8)));
        assert_eq!(find("(a+)b%1", "aabaa"), Some((0, 5)));
        assert_eq!(find("(a)%1", "ab"), None);
        assert_eq!(find("()a%1", "aa"), None);
        assert_eq!(find("[]]", "a]"), Some((1, 2)));
        // The lua-patterns crate closes the set at the first `]`.
        assert_eq!(find("[]]\x01", "bOOOOO]\x01"), Some((6, 8)));
        assert_eq!(find("[^/]*%.lua$", "/a/b.lua"), Some((3, 8)));
        assert_eq!(find("[a-c]+", "xxbcay"), Some((2, 5)));
        assert_eq!(find("[%a-]+", "1a-b2"), Some((1, 4)));
        assert_eq!(find("%A+", "ab12"), Some((2, 4)));
        assert_eq!(find("%s", "a\x0bb"), Some((1, 2)));
        assert_eq!(find("a-b", "aaab"), Some((0, 4)));
        assert_eq!(find("a.-b", "aXbYb"), Some((0, 3)));
        assert_eq!(find("^a?b", "b"), Some((0, 1)));
        assert_eq!(find("()a", "ba"), Some((1, 2)));
        assert_eq!(find("%z", "z"), None);
        assert_eq!(find("%z", "a\0b"), Some((1, 2)));
        assert_eq!(find("%Z+", "\0ab"), Some((1, 3)));
        assert_eq!(find("[%z]", "a\0"), Some((1, 2)));
        // Not a class: the letter itself, in its own case.
        assert_eq!(find("%F", "fF"), Some((1, 2)));
    }

    #[test]
    fn lua_gives_up_past_its_recursion_limit() {
        let deep = "a?".repeat(250);
        let subject = "a".repeat(250);
        assert_eq!(
            super::find(deep.as_bytes(), subject.as_bytes()),
            Err(TooComplex)
        );
    }

    /// A path as long as the kernel takes, of `a/` components.
    fn longest_path() -> String {
        format!("/{}", "a/".repeat(forkmon_common::PATH_MAX / 2 - 1))
    }

    #[test]
    fn matching_work_is_bounded() {
        // Cubic in the subject: minutes without the bound.
        let path = longest_path();
        for pattern in [
            ".-.-.-x",
            ".-%b/a.-x",
            &format!("[{}]*x", "b".repeat(60_000)),
        ] {
            parse(pattern.as_bytes()).unwrap();
            let started = std::time::Instant::now();
            assert_eq!(
                super::find(pattern.as_bytes(), path.as_bytes()),
                Err(TooComplex),
                "{}",
                &pattern[..10]
            );
            // Generous: a debug build, on a busy machine.
            assert!(started.elapsed().as_secs() < 30, "{:?}", started.elapsed());
        }
        // Exponential in the pattern rather than the path: eight nested `-`
        // (the fuzzer's find, ten seconds a run under its sanitizers).
        let dashes = format!("{}x", "--".repeat(8));
        assert_eq!(
            super::find(dashes.as_bytes(), "-".repeat(24).as_bytes()),
            Err(TooComplex)
        );
        // The costliest ordinary pattern stays within the bound on paths
        // of 2 KB, and on longer ones fails only where it would not match.
        let path = &path[..2048];
        assert_eq!(super::find(b".*%.lua$", path.as_bytes()), Ok(None));
        let lua_path = format!("{}.lua", &path[..path.len() - 4]);
        assert_eq!(
            super::find(b".*%.lua$", lua_path.as_bytes()),
            Ok(Some((0, lua_path.len())))
        );
    }

    #[test]
    fn huge_and_deep_patterns_are_checked_not_crashed() {
        let huge = "a".repeat(128 * 1024);
        assert_eq!(
            parse(huge.as_bytes()).map(|items| items.len()),
            Ok(huge.len())
        );
        assert_eq!(
            super::find(huge.as_bytes(), huge.as_bytes()),
            Ok(Some((0, huge.len())))
        );
        assert_eq!(super::find(huge.as_bytes(), b"aaa"), Ok(None));
        let deep = format!("{}a{}", "(".repeat(10_000), ")".repeat(10_000));
        assert_eq!(parse(deep.as_bytes()), Err("too many captures".into()));
        let nested = format!("{}a{}", "(".repeat(32), ")".repeat(32));
        parse(nested.as_bytes()).unwrap();
        assert_eq!(super::find(nested.as_bytes(), b"xa"), Ok(Some((1, 2))));
        let unclosed = "[".repeat(100_000);
        assert!(parse(unclosed.as_bytes()).is_err());
        let classes = "%a".repeat(50_000);
        assert_eq!(
            super::find(classes.as_bytes(), huge.as_bytes()),
            Ok(Some((0, 50_000)))
        );
    }

    /// The `lua-patterns` crate as an oracle, where it works: it never
    /// tries the empty match at the end of a non-empty subject, and
    /// panics when partial matches pile up ("pattern too complex").
    fn crate_find(pattern: &str, subject: &str) -> Option<Option<(usize, usize)>> {
        // NUL-terminated copies keep its unchecked reads in bounds.
        let pattern_z = format!("{pattern}\0");
        let subject_z = format!("{subject}\0");
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            let mut m =
                lua_patterns::LuaPattern::from_bytes(&pattern_z.as_bytes()[..pattern.len()]);
            m.matches_bytes(&subject_z.as_bytes()[..subject.len()])
                .then(|| (m.range().start, m.range().end))
        }));
        match result {
            Ok(found) => Some(found),
            Err(e) if format!("{:?}", e.downcast_ref::<String>()).contains("too complex") => None,
            Err(e) => panic::resume_unwind(e),
        }
    }

    const LUA_ITEMS: &[&str] = &[
        "a", "b", "/", ".", "%.", "%a", "%A", "[ab]", "[^a]", "[a-b/]", "a*", "b+", "a-", "/?",
        ".-", ".*", "%bab", "%f[a]", "%f[^a]", "()", "$", "^",
    ];

    fn differential_pattern() -> impl Strategy<Value = String> {
        let items = vec(select(LUA_ITEMS), 1..5);
        (any::<bool>(), items, any::<bool>(), any::<bool>()).prop_map(
            |(anchor, items, capture, end)| {
                let body = items.concat();
                let body = if capture { format!("({body})") } else { body };
                format!(
                    "{}{body}{}",
                    if anchor { "^" } else { "" },
                    if end { "$" } else { "" }
                )
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn lua_port_agrees_with_the_crate(
            pattern in differential_pattern(),
            subject in "[ab/.]{0,8}",
        ) {
            prop_assert!(parse(pattern.as_bytes()).is_ok());
            let ours = super::find(pattern.as_bytes(), subject.as_bytes()).unwrap();
            let Some(theirs) = crate_find(&pattern, &subject) else {
                return Ok(());
            };
            let expected = match ours {
                Some((start, _)) if start == subject.len() && !subject.is_empty() => None,
                ours => ours,
            };
            prop_assert_eq!(theirs, expected);
        }
    }
}
