//! Which opened files become checkpoints.
//!
//! Two layers decide it:
//! - [`Filter::matches`], in user space, on the lexically cleaned absolute
//!   path of the opened file (see [`absolute_lexical`]);
//! - [`Prefilter`], derived from the filter, whose [`PrefilterConfig`] the
//!   eBPF program runs on the path bytes as passed to `open()` so that opens
//!   which cannot match are never signalled. It may accept more than the
//!   filter, never less; the tests check that on the configuration itself,
//!   with the matching code the kernel runs (`forkmon-common`).
//!
//! Filters come from `--filter GLOB` (repeatable, `!GLOB` excludes) and from
//! the C-forkmon compatible `FORKMON_FILTER` (Lua patterns separated by `;`).
//! With neither, the filter is "files under the base directory" (the
//! directory forkmon was started in). The default and name or relative
//! globs leave out the environment's directories (version control,
//! dependencies, caches, a Python standard library: see
//! [`ENVIRONMENT_DIRS`]) unless the glob names them, and what the project's
//! ignore files leave out ([`ignored`]); absolute globs and Lua patterns
//! match what they say.
//!
//! Lua patterns are matched by the small port of Lua 5.4's matcher in
//! [`lua`] rather than by the `lua-patterns` crate: the crate panics on
//! ordinary inputs ("pattern too complex" once 200 partial matches have been
//! tried, e.g. `ab` against 200 `a`s, or any pattern of 200+ items), reads
//! past the end of its buffers, and writes into the subject on
//! back-references. The crate remains a test oracle.
use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    path::{Component, Path, PathBuf},
};

use globset::{GlobBuilder, GlobMatcher};

use forkmon_common::{
    PREFILTER_MAX_PREFIXES, PREFILTER_MAX_SUFFIXES, PREFILTER_PREFIX_LEN, PREFILTER_SUFFIX_LEN,
    PrefilterConfig,
};

// Public for the fuzz targets (fuzz/), which compile this module from its
// source; within forkmon, `filter` itself is private.
mod ignored;
pub mod lua;

use ignored::IgnoreFiles;

/// A filter the user wrote that cannot be used. Messages are one short
/// line whatever the input: see [`shown`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("invalid --filter glob '{}': {}; use e.g. '*.lua'", shown(.glob), shown(.reason))]
    Glob { glob: String, reason: String },
    #[error(
        "invalid {origin} pattern '{}': {}; see Lua patterns, e.g. '%.lua$'",
        shown(.pattern),
        shown(.reason)
    )]
    LuaPattern {
        origin: &'static str,
        pattern: String,
        reason: String,
    },
}

/// Lua patterns, `;`-separated, and where the user gave them: errors name
/// that place (`--lua-filter` or `FORKMON_FILTER`), so the user knows what
/// to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LuaPatterns<'a> {
    pub patterns: &'a str,
    pub origin: &'static str,
}

impl<'a> LuaPatterns<'a> {
    pub fn flag(patterns: &'a str) -> LuaPatterns<'a> {
        LuaPatterns {
            patterns,
            origin: "--lua-filter",
        }
    }

    pub fn environment(patterns: &'a str) -> LuaPatterns<'a> {
        LuaPatterns {
            patterns,
            origin: "FORKMON_FILTER",
        }
    }
}

/// Longest text of the user's shown whole in a message.
const SHOWN_MAX: usize = 60;

/// `text` for a one-line message: control characters escaped (a newline in
/// a glob would otherwise split the line), and the middle of a long text
/// elided — a 100 KB glob helps no one on a terminal.
fn shown(text: &str) -> String {
    let escaped = |part: &str| -> String {
        part.chars()
            .map(|c| match c {
                c if c.is_control() => c.escape_default().to_string(),
                c => c.to_string(),
            })
            .collect()
    };
    let count = text.chars().count();
    if count <= SHOWN_MAX {
        return escaped(text);
    }
    let head: String = text.chars().take(SHOWN_MAX * 2 / 3).collect();
    let tail: String = text.chars().skip(count - SHOWN_MAX / 3).collect();
    format!(
        "{}…{} ({} bytes)",
        escaped(&head),
        escaped(&tail),
        text.len()
    )
}

/// `base.join(passed)` with `.` components and doubled slashes removed; `..`
/// is kept, since resolving it needs the file system (symlinks). This is the
/// path [`Filter::matches`] expects for a path passed to `open()`.
pub fn absolute_lexical(base: &Path, passed: &Path) -> PathBuf {
    clean(&base.join(passed))
}

fn clean(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// Directories whose files are the environment's, not the user's work:
/// version control, dependencies and caches.
const ENVIRONMENT_DIRS: &[&str] = &[
    ".git",
    ".hg",
    ".svn",
    "node_modules",
    "__pycache__",
    "site-packages",
    "dist-packages",
    ".venv",
    "venv",
    ".tox",
    ".nox",
    ".mypy_cache",
    ".pytest_cache",
    "target",
];

/// The system's top directories: what programs and their libraries read
/// (the dynamic loader's cache, shared libraries, locales, time zones).
const SYSTEM_DIRS: &[&str] = &[
    "bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "opt", "proc", "run", "sbin",
    "snap", "sys", "usr", "var",
];

/// Whether `abs_path` is the system's, from where the user works at
/// `base`: in one of [`SYSTEM_DIRS`], unless `base` is in that one too
/// (someone working in `/etc` means its files).
fn is_system_file(abs_path: &Path, base: &Path) -> bool {
    let Some(dir) = top_dir(abs_path) else {
        return false;
    };
    SYSTEM_DIRS.iter().any(|system| dir == *system) && top_dir(base) != Some(dir)
}

/// The first directory of an absolute path (`usr` of `/usr/lib`).
fn top_dir(path: &Path) -> Option<&OsStr> {
    path.components().nth(1).map(Component::as_os_str)
}

/// Whether `path` goes through an environment directory — one of
/// [`ENVIRONMENT_DIRS`], or a Python standard library (`lib/python3.11`)
/// — and the first it goes through is not named in `named` (a glob's
/// text).
pub fn in_environment(path: &Path, named: &str) -> bool {
    // Once the glob names one, what lies below is what it means.
    environment_dir(path).is_some_and(|dir| {
        let name = dir.file_name().unwrap_or_default();
        !named.contains(&*name.to_string_lossy())
    })
}

/// The first environment directory `path` goes through (see
/// [`in_environment`]), as a path: `path`'s own start up to it.
fn environment_dir(path: &Path) -> Option<PathBuf> {
    let mut parent: Option<&OsStr> = None;
    let mut dir = PathBuf::new();
    for component in path.parent().into_iter().flat_map(Path::components) {
        let name = component.as_os_str();
        dir.push(component);
        let stdlib = name.as_bytes().starts_with(b"python")
            && parent.is_some_and(|p| p == "lib" || p == "lib64");
        if stdlib || ENVIRONMENT_DIRS.iter().any(|env| name == *env) {
            return Some(dir);
        }
        parent = Some(name);
    }
    None
}

/// The user's choice of files to checkpoint at.
#[derive(Debug, Clone)]
pub struct Filter {
    base: PathBuf,
    /// The project's `.gitignore` and `.ignore` files.
    ignored: IgnoreFiles,
    includes: Vec<PathGlob>,
    excludes: Vec<PathGlob>,
    lua: Vec<String>,
}

impl Filter {
    /// `globs` are `--filter` values (`!` excludes), `lua_patterns`
    /// `--lua-filter` or `FORKMON_FILTER`, `base` the absolute directory
    /// forkmon started in.
    pub fn new(
        globs: &[String],
        lua_patterns: Option<LuaPatterns<'_>>,
        base: &Path,
    ) -> Result<Filter, FilterError> {
        let mut includes = Vec::new();
        let mut excludes = Vec::new();
        for glob in globs {
            match glob.strip_prefix('!') {
                Some(excluded) => excludes.push(PathGlob::new(excluded, glob)?),
                None => includes.push(PathGlob::new(glob, glob)?),
            }
        }
        let origin = lua_patterns.map_or("", |lua| lua.origin);
        let lua = lua_patterns
            .into_iter()
            .flat_map(|lua| lua.patterns.split(';'))
            .filter(|pattern| !pattern.is_empty())
            .map(|pattern| {
                lua::parse(pattern.as_bytes())
                    .map(|_| pattern.to_owned())
                    .map_err(|reason| FilterError::LuaPattern {
                        origin,
                        pattern: pattern.to_owned(),
                        reason,
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Filter {
            ignored: IgnoreFiles::of(&clean(base)),
            base: clean(base),
            includes,
            excludes,
            lua,
        })
    }

    /// Whether the file at `abs_path` (absolute, lexically cleaned) is one
    /// to checkpoint at.
    pub fn matches(&self, abs_path: &Path) -> bool {
        self.is_included(abs_path)
            && !self
                .excludes
                .iter()
                .any(|glob| glob.matches(abs_path, &self.base))
    }

    fn is_included(&self, abs_path: &Path) -> bool {
        if self.is_default() {
            return abs_path
                .strip_prefix(&self.base)
                .is_ok_and(|below| !below.as_os_str().is_empty() && !in_environment(below, ""))
                && !is_system_file(abs_path, &self.base)
                && !self.ignored.ignores(abs_path);
        }
        let bytes = abs_path.as_os_str().as_bytes();
        self.includes.iter().any(|glob| {
            glob.matches(abs_path, &self.base)
                && !glob.reaches_into_environment(abs_path, &self.base)
                && (glob.scope == Scope::Absolute
                    || glob.names_a_file()
                    || !self.ignored.ignores(abs_path))
        }) || self.lua.iter().any(|pattern| lua_matches(pattern, bytes))
    }

    /// A directory holding `abs_path` (absolute, lexically cleaned) under
    /// which this filter matches nothing: the first environment directory
    /// on its path that no glob names, or a system directory (`/usr`) from
    /// outside it. `None` when no such directory is certain: Lua patterns
    /// and absolute globs mean what they say anywhere, `__pycache__` holds
    /// caches that stand for their sources, and a `..` needs the file
    /// system. The kernel's prefilter then signals no open under it.
    pub fn unmatched_dir(&self, abs_path: &Path) -> Option<PathBuf> {
        if !self.lua.is_empty()
            || self
                .includes
                .iter()
                .any(|glob| glob.scope == Scope::Absolute)
            || abs_path.components().any(|c| c == Component::ParentDir)
        {
            return None;
        }
        let (dir, environment) = match environment_dir(abs_path) {
            Some(dir) => (dir, true),
            None if is_system_file(abs_path, &self.base) => {
                (Path::new("/").join(top_dir(abs_path)?), false)
            }
            None => return None,
        };
        let name = dir.file_name()?.to_string_lossy();
        if name == "__pycache__" || self.base.starts_with(&dir) {
            return None;
        }
        if dir.starts_with(&self.base) {
            // The default filter and relative globs see the path from the
            // base: they skip the environment if they see the same one
            // there (`lib/python3.11` is none from a base `…/lib`) and do
            // not name it; relative globs never skip a system directory
            // (forkmon run from `/`).
            let below = abs_path.strip_prefix(&self.base).ok()?;
            let seen_from_base =
                environment && environment_dir(below).is_some_and(|d| self.base.join(d) == dir);
            if environment && !seen_from_base && self.is_default() {
                return None;
            }
            let relative_may_match = |glob: &PathGlob| {
                glob.scope == Scope::Relative && (!seen_from_base || glob.text.contains(&*name))
            };
            if self.includes.iter().any(relative_may_match) {
                return None;
            }
        }
        Some(dir)
    }

    /// Whether the project's `.gitignore`/`.ignore` files leave `abs_path`
    /// out.
    pub fn ignores(&self, abs_path: &Path) -> bool {
        self.ignored.ignores(abs_path)
    }

    /// Only excludes (or nothing) given: they narrow the default.
    fn is_default(&self) -> bool {
        self.includes.is_empty() && self.lua.is_empty()
    }

    /// One line for logs, e.g. `files under /home/u/p` or
    /// `*.lua, lua:%.rs$, !vendor/**`.
    pub fn describe(&self) -> String {
        let default = self
            .is_default()
            .then(|| format!("files under {}", self.base.display()));
        default
            .into_iter()
            .chain(self.includes.iter().map(|glob| glob.text.clone()))
            .chain(self.lua.iter().map(|pattern| format!("lua:{pattern}")))
            .chain(self.excludes.iter().map(|glob| glob.text.clone()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The kernel's share of the work. Only includes contribute: excludes
    /// merely narrow, which a prefilter may ignore.
    pub fn prefilter(&self) -> Prefilter {
        if self.is_default() {
            let mut prefix = self.base.as_os_str().as_bytes().to_vec();
            if !prefix.ends_with(b"/") {
                prefix.push(b'/');
            }
            return Prefilter::from_rules([Rule::prefix(&prefix)]);
        }
        let globs = self.includes.iter().map(PathGlob::rule);
        let lua = self.lua.iter().map(|pattern| lua_rule(pattern));
        Prefilter::from_rules(globs.chain(lua))
    }
}

fn lua_matches(pattern: &str, subject: &[u8]) -> bool {
    match lua::find(pattern.as_bytes(), subject) {
        Ok(found) => found.is_some(),
        Err(lua::TooComplex) => {
            log::warn!(
                "Lua pattern '{}' is too complex; treating as no match",
                shown(pattern)
            );
            false
        }
    }
}

/// How deep `{…}` alternatives may nest. globset turns each level into up
/// to three levels of regex syntax, which its regex parser refuses past
/// 250 — and globset then panics (`compile_matcher`), from about 80 braces
/// deep; building the glob also recurses once per level, which overflows
/// the stack (an abort, past any `catch_unwind`) well within the length of
/// one argument. No real glob comes near this.
const MAX_BRACE_DEPTH: usize = 32;

/// How deep `{…}` nest in `glob`, read the way globset reads it: `\`
/// escapes the next character, and in a class (`[…]`, where a `]` first
/// or after `[!` / `[^` is a member) braces are plain characters. A class
/// left open is globset's error to report; nothing after it can nest.
fn brace_depth(glob: &str) -> usize {
    let mut chars = glob.chars();
    let (mut depth, mut deepest) = (0usize, 0);
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '[' => {
                let mut first = chars.next();
                if matches!(first, Some('!' | '^')) {
                    first = chars.next();
                }
                if first.is_none() || !chars.any(|c| c == ']') {
                    break;
                }
            }
            '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// What part of the path a glob is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// No `/`: the file name, in any directory.
    Name,
    /// Starts with `/`: the whole absolute path.
    Absolute,
    /// Other globs with a `/`: the path below the base directory.
    Relative,
}

#[derive(Debug, Clone)]
struct PathGlob {
    /// As the user wrote it, `!` included, for messages.
    text: String,
    scope: Scope,
    matcher: GlobMatcher,
}

impl PathGlob {
    /// Whether it names its file literally (`libplugin.so`,
    /// `build/gen.py`): the user means that file, even one the ignore
    /// files leave out (a build's output, as a plugin is).
    fn names_a_file(&self) -> bool {
        let name = self.text.rsplit('/').next().unwrap_or(&self.text);
        !name.contains(['*', '?', '[', '{'])
    }

    fn new(glob: &str, text: &str) -> Result<PathGlob, FilterError> {
        let error = |reason: String| FilterError::Glob {
            glob: text.to_owned(),
            reason,
        };
        let scope = if glob.starts_with('/') {
            Scope::Absolute
        } else if glob.contains('/') {
            Scope::Relative
        } else {
            Scope::Name
        };
        // `./src/*.rs` means `src/*.rs`, but is still relative to the base.
        let mut pattern = glob;
        while let Some(rest) = pattern.strip_prefix("./") {
            pattern = rest;
        }
        if pattern.is_empty() {
            return Err(error("empty pattern".to_owned()));
        }
        let depth = brace_depth(pattern);
        if depth > MAX_BRACE_DEPTH {
            return Err(error(format!(
                "braces nested {depth} deep, more than {MAX_BRACE_DEPTH}"
            )));
        }
        let matcher = GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| error(e.kind().to_string()))?
            .compile_matcher();
        Ok(PathGlob {
            text: text.to_owned(),
            scope,
            matcher,
        })
    }

    fn matches(&self, abs_path: &Path, base: &Path) -> bool {
        match self.scope {
            Scope::Name => abs_path
                .file_name()
                .is_some_and(|name| self.matcher.is_match(name)),
            Scope::Absolute => self.matcher.is_match(abs_path),
            Scope::Relative => abs_path
                .strip_prefix(base)
                .is_ok_and(|below| self.matcher.is_match(below)),
        }
    }

    /// Whether `abs_path` lies in an environment directory (see
    /// [`in_environment`]) that the glob does not name itself: a name glob
    /// (`*.py`) means the user's files, not the standard library's; a
    /// relative one (`**/*.py`) not a virtual environment's, unless it says
    /// `.venv/**`. An absolute glob names what it means.
    fn reaches_into_environment(&self, abs_path: &Path, base: &Path) -> bool {
        match self.scope {
            Scope::Absolute => false,
            Scope::Name => in_environment(abs_path, "") || is_system_file(abs_path, base),
            Scope::Relative => abs_path
                .strip_prefix(base)
                .is_ok_and(|below| in_environment(below, &self.text)),
        }
    }

    /// Every match ends with the glob's final literal run, and that run lies
    /// after its last `/`, so within the file name — which is also how the
    /// path as passed ends, relative or not.
    fn rule(&self) -> Rule {
        let glob = self.text.as_bytes();
        let start = glob
            .iter()
            .rposition(|b| b"/*?[]{}\\".contains(b))
            .map_or(0, |i| i + 1);
        Rule::suffix(&glob[start..])
    }
}

/// A `$`-anchored literal tail gives a suffix (cut to the file name, as a
/// relative path as passed has no directories); failing that, a `^`-anchored
/// literal head gives a prefix.
fn lua_rule(pattern: &str) -> Rule {
    let Ok(items) = lua::parse(pattern.as_bytes()) else {
        return Rule::AcceptAll;
    };
    let tail = lua::literal_tail(&items);
    let name_tail = match tail.iter().rposition(|&b| b == b'/') {
        Some(slash) => &tail[slash + 1..],
        None => &tail[..],
    };
    if !name_tail.is_empty() {
        return Rule::suffix(name_tail);
    }
    if pattern.starts_with('^') {
        return Rule::prefix(&lua::literal_head(&items));
    }
    Rule::AcceptAll
}

/// One include's contribution to the prefilter.
enum Rule {
    AcceptAll,
    Suffix(Vec<u8>),
    Prefix(Vec<u8>),
}

impl Rule {
    /// A shorter suffix is implied by a longer one, so truncating is sound.
    fn suffix(tail: &[u8]) -> Rule {
        if tail.is_empty() {
            return Rule::AcceptAll;
        }
        Rule::Suffix(tail[tail.len().saturating_sub(PREFILTER_SUFFIX_LEN)..].to_vec())
    }

    /// Likewise for prefixes.
    fn prefix(head: &[u8]) -> Rule {
        if head.is_empty() {
            return Rule::AcceptAll;
        }
        Rule::Prefix(head[..head.len().min(PREFILTER_PREFIX_LEN)].to_vec())
    }
}

/// What the kernel prefilter accepts, before it is laid out for the kernel
/// by [`Prefilter::config`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefilter {
    pub accept_all: bool,
    /// Each 1..=PREFILTER_SUFFIX_LEN bytes, at most PREFILTER_MAX_SUFFIXES.
    pub suffixes: Vec<Vec<u8>>,
    /// Each 1..=PREFILTER_PREFIX_LEN bytes, at most PREFILTER_MAX_PREFIXES.
    pub prefixes: Vec<Vec<u8>>,
}

impl Prefilter {
    const ACCEPT_ALL: Prefilter = Prefilter {
        accept_all: true,
        suffixes: Vec::new(),
        prefixes: Vec::new(),
    };

    fn from_rules(rules: impl IntoIterator<Item = Rule>) -> Prefilter {
        let mut suffixes = Vec::new();
        let mut prefixes = Vec::new();
        for rule in rules {
            match rule {
                Rule::AcceptAll => return Prefilter::ACCEPT_ALL,
                Rule::Suffix(suffix) => suffixes.push(suffix),
                Rule::Prefix(prefix) => prefixes.push(prefix),
            }
        }
        // Python opens a module's bytecode cache rather than its source
        // (`__pycache__/mod.cpython-311.pyc` for `mod.py`), and forkmon
        // checkpoints a cache as its source (see `python`): a filter that
        // may match sources must let caches through.
        if suffixes.iter().any(|s: &Vec<u8>| s.ends_with(b"py")) {
            suffixes.push(b".pyc".to_vec());
        }
        let suffixes = minimal(suffixes, |long, short| long.ends_with(short));
        let prefixes = minimal(prefixes, |long, short| long.starts_with(short));
        if suffixes.len() > PREFILTER_MAX_SUFFIXES || prefixes.len() > PREFILTER_MAX_PREFIXES {
            return Prefilter::ACCEPT_ALL;
        }
        Prefilter {
            accept_all: false,
            suffixes,
            prefixes,
        }
    }

    /// The configuration the kernel matches paths with
    /// ([`PrefilterConfig::may_match`]); `reads_only` is left to the
    /// caller. What does not fit the kernel's slots accepts everything.
    pub fn config(&self) -> PrefilterConfig {
        let fits = self.suffixes.len() <= PREFILTER_MAX_SUFFIXES
            && self.prefixes.len() <= PREFILTER_MAX_PREFIXES
            && self
                .suffixes
                .iter()
                .all(|s| !s.is_empty() && s.len() <= PREFILTER_SUFFIX_LEN)
            && self
                .prefixes
                .iter()
                .all(|p| !p.is_empty() && p.len() <= PREFILTER_PREFIX_LEN);
        if self.accept_all || !fits {
            return PrefilterConfig {
                accept_all: 1,
                ..PrefilterConfig::NONE
            };
        }
        let mut config = PrefilterConfig::NONE;
        config.suffix_count = self.suffixes.len() as u32;
        for (i, suffix) in self.suffixes.iter().enumerate() {
            config.suffix_len[i] = suffix.len() as u32;
            config.suffixes[i][..suffix.len()].copy_from_slice(suffix);
        }
        config.prefix_count = self.prefixes.len() as u32;
        for (i, prefix) in self.prefixes.iter().enumerate() {
            config.prefix_len[i] = prefix.len() as u32;
            config.prefixes[i][..prefix.len()].copy_from_slice(prefix);
        }
        config
    }
}

/// Drops duplicates and entries implied by a shorter one: fewer kernel
/// slots, same answers. Sorted, so the result does not depend on the order
/// the user gave the filters in.
fn minimal(mut all: Vec<Vec<u8>>, implied_by: impl Fn(&[u8], &[u8]) -> bool) -> Vec<Vec<u8>> {
    all.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
    let mut kept: Vec<Vec<u8>> = Vec::new();
    for entry in all {
        if !kept.iter().any(|k| implied_by(&entry, k)) {
            kept.push(entry);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use forkmon_common::{PATH_MAX, PREFILTER_EXCLUDED_LEN};

    use super::*;

    fn filter(globs: &[&str], lua: Option<&str>) -> Filter {
        let globs: Vec<String> = globs.iter().map(|g| g.to_string()).collect();
        Filter::new(&globs, lua.map(LuaPatterns::flag), Path::new("/home/u/p")).unwrap()
    }

    fn error(globs: &[&str], lua: Option<&str>) -> String {
        let globs: Vec<String> = globs.iter().map(|g| g.to_string()).collect();
        Filter::new(&globs, lua.map(LuaPatterns::flag), Path::new("/home/u/p"))
            .unwrap_err()
            .to_string()
    }

    fn accepts(filter: &Filter, path: &str) -> bool {
        filter.matches(Path::new(path))
    }

    #[test]
    fn name_glob_matches_the_file_name_anywhere() {
        let f = filter(&["*.lua"], None);
        assert!(accepts(&f, "/a/b/x.lua"));
        assert!(accepts(&f, "/x.lua"));
        assert!(!accepts(&f, "/a/b/x.lua.bak"));
        assert!(!accepts(&f, "/a/x.lua/y"));
    }

    #[test]
    fn absolute_glob_star_stays_in_one_directory() {
        let f = filter(&["/a/*.lua"], None);
        assert!(accepts(&f, "/a/x.lua"));
        assert!(!accepts(&f, "/a/b/x.lua"));
        let f = filter(&["/a/**/*.lua"], None);
        assert!(accepts(&f, "/a/x.lua"));
        assert!(accepts(&f, "/a/b/c/x.lua"));
        assert!(!accepts(&f, "/b/x.lua"));
    }

    #[test]
    fn relative_glob_is_below_the_base() {
        for glob in ["src/**/*.rs", "./src/**/*.rs"] {
            let f = filter(&[glob], None);
            assert!(accepts(&f, "/home/u/p/src/a/b.rs"), "{glob}");
            assert!(accepts(&f, "/home/u/p/src/b.rs"), "{glob}");
            assert!(!accepts(&f, "/home/u/q/src/b.rs"), "{glob}");
            assert!(!accepts(&f, "/home/u/p/lib/src/b.rs"), "{glob}");
        }
        let f = filter(&["./x.lua"], None);
        assert!(accepts(&f, "/home/u/p/x.lua"));
        assert!(!accepts(&f, "/home/u/p/sub/x.lua"));
    }

    #[test]
    fn excludes_narrow_the_includes() {
        let f = filter(&["*.lua", "!vendor/**"], None);
        assert!(accepts(&f, "/home/u/p/x.lua"));
        assert!(!accepts(&f, "/home/u/p/vendor/a/x.lua"));
        assert!(accepts(&f, "/elsewhere/vendor/x.lua"));
        let f = filter(&["*.lua", "!test_*"], None);
        assert!(!accepts(&f, "/a/test_x.lua"));
    }

    #[test]
    fn only_excludes_narrow_the_default() {
        let f = filter(&["!*.tmp"], None);
        assert!(accepts(&f, "/home/u/p/a.c"));
        assert!(!accepts(&f, "/home/u/p/a.tmp"));
        assert!(!accepts(&f, "/etc/a.c"));
    }

    #[test]
    fn default_is_files_under_the_base() {
        let f = filter(&[], None);
        assert!(accepts(&f, "/home/u/p/x"));
        assert!(accepts(&f, "/home/u/p/sub/x.lua"));
        assert!(!accepts(&f, "/home/u/p"));
        assert!(!accepts(&f, "/home/u/pq/x"));
        assert!(!accepts(&f, "/tmp/x"));
        let f = filter(&[], Some(";;"));
        assert!(accepts(&f, "/home/u/p/x"));
        assert!(!accepts(&f, "/tmp/x"));
    }

    #[test]
    fn lua_patterns_match_like_string_find() {
        let f = filter(&[], Some("%.lua$"));
        assert!(accepts(&f, "/a/x.lua"));
        assert!(!accepts(&f, "/a/xlua"));
        assert!(!accepts(&f, "/a/x.lua.bak"));
        let f = filter(&[], Some(";%.lua$;;%.rs$;"));
        assert!(accepts(&f, "/a/x.lua"));
        assert!(accepts(&f, "/a/x.rs"));
        assert!(!accepts(&f, "/a/x.c"));
        let f = filter(&[], Some("^/etc/"));
        assert!(accepts(&f, "/etc/x"));
        assert!(!accepts(&f, "/home/etc/x"));
        let f = filter(&[], Some("lib"));
        assert!(accepts(&f, "/usr/lib/x"));
    }

    #[test]
    fn globs_and_lua_patterns_combine() {
        let f = filter(&["*.rs", "!vendor/**"], Some("%.lua$"));
        assert!(accepts(&f, "/a/x.rs"));
        assert!(accepts(&f, "/a/x.lua"));
        assert!(!accepts(&f, "/a/x.c"));
        assert!(!accepts(&f, "/home/u/p/vendor/x.lua"));
        let f = filter(&["!*.tmp.lua"], Some("%.lua$"));
        assert!(accepts(&f, "/elsewhere/x.lua"));
        assert!(!accepts(&f, "/home/u/p/x.tmp.lua"));
    }

    #[test]
    fn errors_name_the_source_and_the_fix() {
        assert_eq!(
            error(&["[a"], None),
            "invalid --filter glob '[a': unclosed character class; missing ']'; use e.g. '*.lua'"
        );
        assert_eq!(
            error(&["!"], None),
            "invalid --filter glob '!': empty pattern; use e.g. '*.lua'"
        );
        assert_eq!(
            error(&[], Some("%.lua$;%")),
            "invalid --lua-filter pattern '%': malformed pattern (ends with '%'); \
             see Lua patterns, e.g. '%.lua$'"
        );
        let base = Path::new("/");
        let from_env = Filter::new(&[], Some(LuaPatterns::environment("%")), base).unwrap_err();
        assert!(
            from_env
                .to_string()
                .starts_with("invalid FORKMON_FILTER pattern '%'"),
            "{from_env}"
        );
        let lua_error = |pattern| error(&[], Some(pattern));
        assert!(lua_error("[a").contains("'[a': malformed pattern (missing ']')"));
        assert!(lua_error("(a").contains("unfinished capture"));
        assert!(lua_error("a)").contains("invalid pattern capture"));
        assert!(lua_error("(a)%2").contains("invalid capture index %2"));
        assert!(lua_error("(a%1)").contains("invalid capture index %1"));
        assert!(lua_error("%0").contains("invalid capture index %0"));
        assert!(lua_error("%ba").contains("missing arguments to '%b'"));
        assert!(lua_error("%fa").contains("missing '[' after '%f'"));
        assert!(lua_error(&"()".repeat(33)).contains("too many captures"));
    }

    fn nested(depth: usize, level: &str, leaf: &str) -> String {
        format!("{}{leaf}{}", level.repeat(depth), "}".repeat(depth))
    }

    #[test]
    fn deeply_nested_globs_get_an_error_not_a_panic() {
        // globset panics from 82 braces deep, and overflows the stack from
        // some thousands (60 000 fit in one argument).
        for depth in [33, 82, 250, 60_000] {
            let glob = nested(depth, "{", "a");
            let message = error(&[&glob], None);
            assert!(
                message.contains(&format!("braces nested {depth} deep, more than 32")),
                "{message}"
            );
        }
        assert_eq!(
            error(&[&nested(250, "{", "a")], None),
            "invalid --filter glob '{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{…}}}}}}}}}}}}}}}}}}}} \
             (501 bytes)': braces nested 250 deep, more than 32; use e.g. '*.lua'"
        );
        let excluded = format!("!{}", nested(40, "{x,", "a"));
        assert!(error(&["*.lua", &excluded], None).contains("nested 40 deep"));
        // As deep as allowed, in the shape that costs globset's regex most.
        let deepest = format!("{}**{}", "{x,**/a".repeat(32), "}".repeat(32));
        let f = filter(&[&deepest], None);
        assert!(accepts(&f, "/home/u/p/x"));
        assert!(!accepts(&f, "/home/u/p/y"));
        // Braces escaped or in a class do not nest.
        for flat in [
            "\\{".repeat(100),
            "[{]".repeat(100),
            "[]{]".repeat(100),
            "[!{]".repeat(100),
        ] {
            filter(&[&flat], None);
        }
        let f = filter(&[&format!("{}a\\}}", "\\{".repeat(100))], None);
        assert!(accepts(&f, &format!("/x/{}a}}", "{".repeat(100))));
    }

    #[test]
    fn bad_input_gets_one_short_line() {
        let huge = format!("{}[", "a".repeat(128 * 1024));
        for message in [
            error(&["[\n"], None),
            error(&["[z-\n]"], None),
            error(&[&huge], None),
            error(&[], Some(&format!("{huge}%"))),
            error(&[], Some("\n%")),
        ] {
            assert_eq!(message.lines().count(), 1, "{message}");
            assert!(message.len() < 200, "{message}");
        }
        assert!(error(&["[\n"], None).starts_with("invalid --filter glob '[\\n'"));
    }

    #[test]
    fn bad_lua_patterns_never_crash_or_hang() {
        let f = filter(&[], Some(&"a".repeat(128 * 1024)));
        assert!(!accepts(&f, "/a"));
        let message = error(&[], Some(&nested(250, "(", "a").replace('}', ")")));
        assert!(message.contains("too many captures"), "{message}");
        // Past Lua's own bound of work: no match, and soon.
        let path = format!("/{}", "a/".repeat(PATH_MAX / 2 - 1));
        assert!(!accepts(&filter(&[], Some(".-.-.-x")), &path));
    }

    #[test]
    fn describe_is_one_line() {
        assert_eq!(filter(&[], None).describe(), "files under /home/u/p");
        assert_eq!(
            filter(&["*.lua", "!vendor/**"], None).describe(),
            "*.lua, !vendor/**"
        );
        assert_eq!(
            filter(&["!*.tmp"], None).describe(),
            "files under /home/u/p, !*.tmp"
        );
        assert_eq!(
            filter(&["*.rs"], Some("%.lua$;^/etc/")).describe(),
            "*.rs, lua:%.lua$, lua:^/etc/"
        );
    }

    /// The kernel's answer for an open of `passed`: the shared matching, on
    /// the configuration the kernel is given, with the path laid out as in
    /// its per-CPU buffer — followed by the NUL and by what earlier, longer
    /// paths left there.
    fn may_match(prefilter: &Prefilter, passed: &[u8]) -> bool {
        const STALE: &[u8] = b"/./x.lua/";
        let mut buffer: [u8; PATH_MAX] = std::array::from_fn(|i| STALE[i % STALE.len()]);
        buffer[..passed.len()].copy_from_slice(passed);
        buffer[passed.len()] = 0;
        prefilter.config().may_match(&buffer, passed.len() as u32)
    }

    /// Whether the kernel would leave the open of `passed` unsignalled with
    /// `dirs` excluded (each a directory, without its final `/`), in the
    /// same buffer as [`may_match`].
    fn excluded(dirs: &[&Path], passed: &[u8]) -> bool {
        const STALE: &[u8] = b"/./x.lua/";
        let mut config = PrefilterConfig::NONE;
        for dir in dirs {
            let mut prefix = dir.as_os_str().as_bytes().to_vec();
            prefix.push(b'/');
            config.exclude(&prefix);
        }
        let mut buffer: [u8; PATH_MAX] = std::array::from_fn(|i| STALE[i % STALE.len()]);
        buffer[..passed.len()].copy_from_slice(passed);
        buffer[passed.len()] = 0;
        config.excludes(&buffer)
    }

    #[test]
    fn excluded_directories_are_whole_components_of_canonical_paths() {
        let venv = [Path::new("/home/u/p/.venv")];
        assert!(excluded(&venv, b"/home/u/p/.venv/lib/x.py"));
        assert!(excluded(&venv, b"/home/u/p/.venv/x"));
        assert!(!excluded(&venv, b"/home/u/p/.venvx/x"));
        assert!(!excluded(&venv, b"/home/u/p/.venv"));
        assert!(!excluded(&venv, b"/home/u/p/.venv/../main.py"), "dot-dot");
        assert!(!excluded(&venv, b"/home/u/p/.venv/./x"), "dot");
        assert!(!excluded(&venv, b"/home/u/p//.venv/x"), "doubled slash");
        assert!(!excluded(&venv, b".venv/x"), "relative");
        assert!(!excluded(&[], b"/home/u/p/.venv/x"));
        let both = [Path::new("/usr"), Path::new("/home/u/p/.venv")];
        assert!(excluded(&both, b"/usr/lib/x.so"));
        assert!(excluded(&both, b"/home/u/p/.venv/x"));
        let long = format!("/{}", "d".repeat(PREFILTER_EXCLUDED_LEN));
        let mut config = PrefilterConfig::NONE;
        assert!(!config.exclude(format!("{long}/").as_bytes()), "too long");
    }

    fn only(suffixes: &[&str], prefixes: &[&str]) -> Prefilter {
        let bytes = |v: &[&str]| v.iter().map(|s| s.as_bytes().to_vec()).collect();
        Prefilter {
            accept_all: false,
            suffixes: bytes(suffixes),
            prefixes: bytes(prefixes),
        }
    }

    #[test]
    fn unmatched_directories_are_environments_and_systems_no_glob_names() {
        let venv = "/home/u/p/.venv/lib/python3.11/site-packages/requests/api.py";
        let stdlib = "/root/.pyenv/versions/3.11.7/lib/python3.11/json/decoder.py";
        let dir =
            |globs: &[&str], lua, path: &str| filter(globs, lua).unmatched_dir(Path::new(path));
        assert_eq!(dir(&[], None, venv), Some("/home/u/p/.venv".into()));
        assert_eq!(
            dir(&["*.py"], None, stdlib),
            Some("/root/.pyenv/versions/3.11.7/lib/python3.11".into())
        );
        assert_eq!(
            dir(&["*.so"], None, "/usr/lib/x86_64-linux-gnu/libm.so"),
            Some("/usr".into())
        );
        assert_eq!(
            dir(&["src/*.py"], None, venv),
            Some("/home/u/p/.venv".into())
        );
        // What a glob names, or may name, is never skipped.
        assert_eq!(dir(&[".venv/**/*.py"], None, venv), None);
        assert_eq!(dir(&["/home/**/*.py"], None, venv), None);
        assert_eq!(dir(&[], Some("%.py$"), venv), None);
        // A cache without its source is no sign for the other caches.
        assert_eq!(
            dir(&[], None, "/home/u/p/__pycache__/gone.cpython-311.pyc"),
            None
        );
        assert_eq!(dir(&[], None, "/home/u/p/src/../.venv/x.py"), None);
        assert_eq!(dir(&[], None, "/home/u/p/src/main.py"), None);
        // From `/`, a relative glob reaches into /usr.
        let from_root = Filter::new(&["**/*.py".into()], None, Path::new("/")).unwrap();
        assert_eq!(from_root.unmatched_dir(Path::new("/usr/share/x.py")), None);
        let default_from_lib = Filter::new(&[], None, Path::new("/opt/lib")).unwrap();
        assert_eq!(
            default_from_lib.unmatched_dir(Path::new("/opt/lib/python3.11/x.py")),
            None,
            "no standard library seen from the base"
        );
    }

    #[test]
    fn the_environment_is_left_out_unless_named() {
        let matches = |globs: &[&str], path: &str| filter(globs, None).matches(Path::new(path));
        let base = "/home/u/p";
        // The default: under the base, but not in its environment.
        assert!(matches(&[], &format!("{base}/app.py")));
        assert!(matches(&[], &format!("{base}/src/mod.py")));
        for env in [
            ".venv/lib/python3.11/site-packages/numpy/__init__.py",
            "env/lib/python3.11/site-packages/x.py",
            "node_modules/left-pad/index.js",
            ".git/HEAD",
            "__pycache__/mod.cpython-311.pyc",
        ] {
            assert!(!matches(&[], &format!("{base}/{env}")), "{env}");
        }
        // Name globs: the user's files, not the standard library's.
        assert!(matches(&["*.py"], &format!("{base}/app.py")));
        assert!(matches(&["*.py"], "/elsewhere/lib/mine.py"));
        assert!(!matches(&["*.py"], "/usr/lib/python3.11/json/__init__.py"));
        assert!(!matches(
            &["*.py"],
            "/root/.pyenv/versions/3.11.7/lib/python3.11/enum.py"
        ));
        // Named explicitly.
        assert!(matches(
            &[".venv/**/*.py"],
            &format!("{base}/.venv/lib/python3.11/site-packages/x.py")
        ));
        assert!(matches(
            &["/usr/lib/python3.11/**"],
            "/usr/lib/python3.11/json/__init__.py"
        ));
        assert!(!matches(
            &["**/*.py"],
            &format!("{base}/.venv/lib/python3.11/site-packages/x.py")
        ));
        let lua = filter(&[], Some("%.py$"));
        assert!(lua.matches(Path::new("/usr/lib/python3.11/json/__init__.py")));
    }

    #[test]
    fn the_systems_files_are_left_out_unless_the_user_works_among_them() {
        let matches = |base: &str, globs: &[&str], path: &str| {
            let globs: Vec<String> = globs.iter().map(|g| g.to_string()).collect();
            Filter::new(&globs, None, Path::new(base))
                .unwrap()
                .matches(Path::new(path))
        };
        // From `/`, the default is not every file the loader reads.
        for system in [
            "/etc/ld.so.cache",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/x.so",
        ] {
            assert!(!matches("/", &[], system), "{system}");
            assert!(!matches("/home/u", &["*.so*"], system), "{system}");
        }
        assert!(matches("/", &[], "/home/u/app.lua"));
        // Working in /etc means its files.
        assert!(matches("/etc", &[], "/etc/nginx/nginx.conf"));
        assert!(matches("/etc", &["*.conf"], "/etc/nginx/nginx.conf"));
        assert!(!matches("/etc", &["*.conf"], "/usr/share/x.conf"));
        // Named: what it says.
        assert!(matches("/home/u", &["/etc/**"], "/etc/hosts"));
    }

    #[test]
    fn ignore_files_leave_out_what_they_ignore_unless_an_absolute_glob_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        std::fs::create_dir(base.join(".git")).unwrap();
        std::fs::write(base.join(".gitignore"), "generated/\n").unwrap();
        let matches = |globs: &[&str], path: &Path| {
            let globs: Vec<String> = globs.iter().map(|g| g.to_string()).collect();
            Filter::new(&globs, None, base).unwrap().matches(path)
        };
        let generated = base.join("generated/schema.py");
        let mine = base.join("src/app.py");
        for globs in [&[][..], &["*.py"], &["**/*.py"]] {
            assert!(!matches(globs, &generated), "{globs:?}");
            assert!(matches(globs, &mine), "{globs:?}");
        }
        // Named: what it says.
        let absolute = format!("{}/generated/*.py", base.display());
        assert!(matches(&[&absolute], &generated));
        assert!(matches(&["schema.py"], &generated));
        assert!(matches(&["generated/schema.py"], &generated));
    }

    #[test]
    fn prefilter_derivation() {
        let pf = |globs: &[&str], lua| filter(globs, lua).prefilter();
        assert_eq!(pf(&["*.lua"], None), only(&[".lua"], &[]));
        assert_eq!(pf(&[], Some("%.lua$")), only(&[".lua"], &[]));
        assert_eq!(pf(&[], None), only(&[], &["/home/u/p/"]));
        assert_eq!(pf(&["!*.c"], None), only(&[], &["/home/u/p/"]));
        assert_eq!(pf(&["src/**/*.rs", "!x.rs"], None), only(&[".rs"], &[]));
        assert_eq!(pf(&["foo.lua"], None), only(&["foo.lua"], &[]));
        assert_eq!(pf(&["/abs/dir/foo.lua"], None), only(&["foo.lua"], &[]));
        assert_eq!(pf(&["src/*.{c,h}"], None), Prefilter::ACCEPT_ALL);
        assert_eq!(pf(&["{a,b}.c"], None), only(&[".c"], &[]));
        assert_eq!(pf(&["*"], None), Prefilter::ACCEPT_ALL);
        assert_eq!(pf(&["src/**"], None), Prefilter::ACCEPT_ALL);
        assert_eq!(pf(&["*.lu?"], None), Prefilter::ACCEPT_ALL);
        assert_eq!(
            pf(&["a_very_long_file_name.lua"], None),
            only(&["ng_file_name.lua"], &[])
        );
        assert_eq!(
            pf(&["*.lua", "a.lua", "x.rs"], Some("%.lua$;main%.rs$")),
            only(&[".lua", "x.rs", "main.rs"], &[])
        );
        assert_eq!(
            pf(
                &["*.lua", "a.lua", "x.rs", "*.rs"],
                Some("%.lua$;main%.rs$")
            ),
            only(&[".rs", ".lua"], &[])
        );
        assert_eq!(
            pf(&[], Some("^/etc/app/;^/etc/app/x;^/usr/")),
            only(&[], &["/usr/", "/etc/app/"])
        );
        assert_eq!(pf(&[], Some("^/etc/.*$")), only(&[], &["/etc/"]));
        assert_eq!(pf(&["x.lua"], Some("x$")), only(&["x", "x.lua"], &[]));
        assert_eq!(pf(&[], Some("(.*)%.lua$")), only(&[".lua"], &[]));
        assert_eq!(pf(&[], Some("src/main%.lua$")), only(&["main.lua"], &[]));
        assert_eq!(pf(&[], Some("a*$")), Prefilter::ACCEPT_ALL);
        assert_eq!(pf(&[], Some("%a$")), Prefilter::ACCEPT_ALL);
        assert_eq!(pf(&[], Some("/$")), Prefilter::ACCEPT_ALL);
        assert_eq!(pf(&[], Some("lua")), Prefilter::ACCEPT_ALL);
        // A filter that may match Python sources lets their caches through.
        assert_eq!(pf(&["*.py"], None), only(&[".py", ".pyc"], &[]));
        assert_eq!(pf(&["app.py"], None), only(&[".pyc", "app.py"], &[]));
        assert_eq!(pf(&["*.lua"], Some("x")), Prefilter::ACCEPT_ALL);
        let many: Vec<String> = (0..9).map(|i| format!("*.e{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(pf(&many, None), Prefilter::ACCEPT_ALL);
        assert_eq!(pf(&many[1..], None).suffixes.len(), 8);
    }

    #[test]
    fn may_match_with_suffixes_only() {
        let pf = only(&[".lua"], &[]);
        assert!(may_match(&pf, b"x.lua"));
        assert!(may_match(&pf, b"/a/b.lua"));
        assert!(!may_match(&pf, b"x.rs"));
        assert!(!may_match(&pf, b"rel/x.c"));
        // Only prefixes care about canonical form.
        assert!(!may_match(&pf, b"/home/u/.cache//x"));
    }

    #[test]
    fn may_match_with_prefixes() {
        let pf = only(&[".lua"], &["/home/u/p/"]);
        assert!(may_match(&pf, b"/etc/x.lua"));
        assert!(may_match(&pf, b"/home/u/p/x.c"));
        assert!(may_match(&pf, b"x.c"), "relative");
        assert!(may_match(&pf, b"./x.c"), "relative");
        assert!(!may_match(&pf, b"/etc/x.c"));
        assert!(!may_match(&pf, b"/home/u/px.c"));
        assert!(may_match(&pf, b"/home/u//p/x.c"), "doubled slash");
        assert!(may_match(&pf, b"/home/u/q/../p/x.c"), "dot-dot");
        assert!(may_match(&pf, b"/home/./u/p/x.c"), "dot");
        assert!(may_match(&pf, b"/home/u/p/q/.."), "dot-dot at the end");
        assert!(may_match(&pf, b"/home/./u"), "dot");
        // A name that starts with a dot is a name: an interpreter under
        // `~/.pyenv` is not signalled at each module.
        assert!(!may_match(&pf, b"/etc/.hidden"));
        assert!(!may_match(&pf, b"/root/.pyenv/lib/x.c"));
        assert!(!may_match(&pf, b"/root/..pyenv/x.c"));
        let far = format!("/etc/{}//x.c", "a".repeat(PREFILTER_PREFIX_LEN));
        assert!(!may_match(&pf, far.as_bytes()), "beyond any prefix");
        assert!(may_match(&Prefilter::ACCEPT_ALL, b"/etc/x.c"));
    }

    #[test]
    fn what_the_kernel_cannot_hold_accepts_all() {
        let many: Vec<String> = (0..=PREFILTER_MAX_SUFFIXES)
            .map(|i| format!(".e{i}"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let long = "/".repeat(PREFILTER_PREFIX_LEN + 1);
        for pf in [only(&many, &[]), only(&[], &[&long]), only(&[""], &[])] {
            assert_eq!(pf.config().accept_all, 1, "{pf:?}");
            assert!(may_match(&pf, b"/etc/x.c"), "{pf:?}");
        }
        assert_eq!(only(&[".lua"], &["/p/"]).config().accept_all, 0);
    }

    #[test]
    fn absolute_lexical_drops_dots_and_doubled_slashes() {
        let abs = |passed| absolute_lexical(Path::new("/b"), Path::new(passed));
        assert_eq!(abs("x.lua"), Path::new("/b/x.lua"));
        assert_eq!(abs("./x/./y"), Path::new("/b/x/y"));
        assert_eq!(abs("x//y/"), Path::new("/b/x/y"));
        assert_eq!(abs("/a//c/../d"), Path::new("/a/c/../d"));
        assert_eq!(abs("../y"), Path::new("/b/../y"));
        assert_eq!(abs("."), Path::new("/b"));
        assert_eq!(abs(""), Path::new("/b"));
    }

    #[test]
    fn lua_matching_never_panics() {
        // Each of these panics in the lua-patterns crate.
        let many_a = format!("/{}b", "a".repeat(300));
        assert!(accepts(&filter(&[], Some("ab")), &many_a));
        let long = format!("^/{}$", "a".repeat(300));
        assert!(accepts(
            &filter(&[], Some(&long)),
            &format!("/{}", "a".repeat(300))
        ));
        // Lua itself gives up on this one (see lua::tests): no match, not a
        // crash.
        let (deep, subject) = ("a?".repeat(250), "a".repeat(250));
        let deep = format!("^/{deep}");
        assert!(!accepts(&filter(&[], Some(&deep)), &format!("/{subject}")));
    }

    mod properties {
        use proptest::{
            collection::vec, option, prelude::*, sample::select, strategy::ValueTree,
            test_runner::TestRunner,
        };

        use super::*;

        const BASES: &[&str] = &["/home/u/p", "/p", "/"];
        const DIRS: &[&str] = &[
            "a",
            "b",
            "p",
            "u",
            "src",
            "home",
            "lua",
            "x.lua",
            ".venv",
            "site-packages",
            "lib",
            "python3.11",
            "usr",
            "__pycache__",
        ];
        const FILES: &[&str] = &[
            "a.lua", "x.lua", "aa.lua", ".lua", "main.lua", "b.rs", "main.rs", "x.c", "lua", "a",
            "src",
        ];
        const GLOB_PARTS: &[&str] = &[
            "*",
            "**",
            "a",
            "p",
            "u",
            "home",
            "src",
            "*.lua",
            "a.lua",
            "*.rs",
            "x*",
            "[ab].lua",
            "{a,x}.lua",
            "?.rs",
            "*a.lua",
            "lua",
            "*.{lua,rs}",
            "main.rs",
            ".venv",
            "site-packages",
            "usr",
        ];
        const EXTS: &[&str] = &["lua", "rs", "c"];
        const NAMES: &[&str] = &["a", "x", "main", "/a", "/x", "src/main", "p/a", "u/p/x"];
        const LUA_DIRS: &[&str] = &["home", "home/u/p", "p", "src", "home/u", "p/src"];
        const LUA_ODD: &[&str] = &[
            "a*$",
            "(.*)%.lua$",
            "[ab]%.lua$",
            "/a$",
            "%w+%.rs$",
            "^/home/u/(p)/",
            "lu?a$",
            "%a$",
            "^/",
            "x%-$",
            "^(/p)/.-%.lua$",
            "src/.*%.rs$",
            "/p/a%.lua$",
            "^/p$",
            "%.lua",
            "^/home/u/p/src/main%.rs$",
        ];

        #[derive(Debug, Clone)]
        struct Case {
            base: String,
            globs: Vec<String>,
            lua: Option<String>,
            passed: String,
        }

        fn glob() -> impl Strategy<Value = String> {
            let parts = vec(select(GLOB_PARTS), 1..4);
            (0..3u8, parts, prop::bool::weighted(0.2)).prop_map(|(scope, parts, exclude)| {
                let glob = match scope {
                    0 => parts[0].to_owned(),
                    1 => format!("/{}", parts.join("/")),
                    _ if parts.len() == 1 => format!("./{}", parts[0]),
                    _ => parts.join("/"),
                };
                if exclude { format!("!{glob}") } else { glob }
            })
        }

        fn lua_pattern() -> impl Strategy<Value = String> {
            prop_oneof![
                select(EXTS).prop_map(|ext| format!("%.{ext}$")),
                (select(NAMES), select(EXTS)).prop_map(|(n, ext)| format!("{n}%.{ext}$")),
                select(LUA_DIRS).prop_map(|dir| format!("^/{dir}/")),
                ("[ab/.lux]{1,5}", any::<bool>()).prop_map(|(lit, end)| if end {
                    format!("{lit}$")
                } else {
                    lit
                }),
                select(LUA_ODD).prop_map(String::from),
            ]
        }

        /// Directory noise: `.`, `..` and empty components (`//`).
        fn component() -> impl Strategy<Value = &'static str> {
            prop_oneof![6 => select(DIRS), 1 => Just("."), 1 => Just(".."), 1 => Just("")]
        }

        /// A path as passed: relative, absolute, or absolute under the base.
        fn passed(base: &'static str) -> impl Strategy<Value = String> {
            let start = prop_oneof![2 => Just(0u8), 1 => Just(1), 2 => Just(2)];
            (start, vec(component(), 0..4), select(FILES)).prop_map(move |(start, dirs, file)| {
                let mut parts: Vec<&str> = match start {
                    0 => vec![],
                    1 => vec![""],
                    _ => vec![base.trim_end_matches('/')],
                };
                parts.extend(dirs);
                parts.push(file);
                parts.join("/")
            })
        }

        fn lua_escape(text: &str) -> String {
            text.chars()
                .flat_map(|c| match c {
                    'a'..='z' | '0'..='9' | '/' => vec![c],
                    _ => vec!['%', c],
                })
                .collect()
        }

        fn glob_escape(text: &str) -> String {
            text.chars()
                .flat_map(|c| match c {
                    '*' | '?' | '[' | ']' | '{' | '}' | '\\' => vec!['\\', c],
                    _ => vec![c],
                })
                .collect()
        }

        /// Patterns cut from the path that will be opened, so that many
        /// cases match, including by tails and heads that cross a `/`.
        fn derived_lua(abs: String) -> impl Strategy<Value = String> {
            (1..=abs.len(), any::<bool>()).prop_map(move |(len, head)| {
                if head {
                    format!("^{}", lua_escape(&abs[..len]))
                } else {
                    format!("{}$", lua_escape(&abs[abs.len() - len..]))
                }
            })
        }

        fn derived_glob(abs: String, base: &'static str) -> impl Strategy<Value = String> {
            let name = abs.rsplit('/').next().unwrap_or_default().to_owned();
            (0..4u8, 0..=name.len()).prop_map(move |(kind, cut)| match kind {
                0 => glob_escape(&abs),
                1 => format!("*{}", glob_escape(&name[cut..])),
                2 => match abs.strip_prefix(base).map(|r| r.trim_start_matches('/')) {
                    Some(below) if below.contains('/') => glob_escape(below),
                    _ => glob_escape(&name),
                },
                _ => glob_escape(&name),
            })
        }

        fn case() -> impl Strategy<Value = Case> {
            select(BASES)
                .prop_flat_map(|base| (Just(base), passed(base)))
                .prop_flat_map(|(base, passed)| {
                    let abs = absolute_lexical(Path::new(base), Path::new(&passed));
                    let abs = abs.to_str().unwrap().to_owned();
                    let glob = prop_oneof![3 => glob().boxed(), 1 => derived_glob(abs.clone(), base).boxed()];
                    let lua = prop_oneof![3 => lua_pattern().boxed(), 1 => derived_lua(abs).boxed()];
                    let lua = option::weighted(0.5, vec(lua, 0..3).prop_map(|v| v.join(";")));
                    (vec(glob, 0..3), lua).prop_map(move |(globs, lua)| Case {
                        base: base.to_owned(),
                        globs,
                        lua,
                        passed: passed.clone(),
                    })
                })
        }

        /// The case's filter, and the absolute path of what it opens.
        fn filter_of(case: &Case) -> (Filter, PathBuf) {
            let base = Path::new(&case.base);
            let filter = Filter::new(
                &case.globs,
                case.lua.as_deref().map(LuaPatterns::flag),
                base,
            )
            .unwrap();
            (filter, absolute_lexical(base, Path::new(&case.passed)))
        }

        fn judge(case: &Case) -> (bool, Prefilter) {
            let (filter, abs) = filter_of(case);
            (filter.matches(&abs), filter.prefilter())
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: 2000,
                max_shrink_iters: 4096,
                ..ProptestConfig::default()
            })]

            /// The kernel is told to skip what lies under an unmatched
            /// directory: no file there may match.
            #[test]
            fn an_unmatched_directory_holds_no_match(
                (case, other) in case().prop_flat_map(|case| {
                    let base = *BASES.iter().find(|b| **b == case.base).unwrap();
                    (Just(case), passed(base))
                })
            ) {
                let (filter, abs) = filter_of(&case);
                let refused = absolute_lexical(Path::new(&case.base), Path::new(&other));
                if let Some(dir) = filter.unmatched_dir(&refused) {
                    prop_assert!(!filter.matches(&refused), "{refused:?} in {dir:?}");
                    if abs.starts_with(&dir) {
                        prop_assert!(!filter.matches(&abs), "{case:?}: {abs:?} in {dir:?}");
                    }
                    // What the kernel then skips, from the path as passed.
                    if excluded(&[&dir], case.passed.as_bytes()) {
                        prop_assert!(!filter.matches(&abs), "{case:?}: skipped in {dir:?}");
                    }
                }
            }

            #[test]
            fn prefilter_never_rejects_a_match(case in case()) {
                let (matched, prefilter) = judge(&case);
                if matched {
                    prop_assert!(
                        may_match(&prefilter, case.passed.as_bytes()),
                        "{case:?} rejected by {prefilter:?}"
                    );
                }
            }
        }

        /// The property above is only worth something if matches are common
        /// and the prefilter often rejects.
        #[test]
        fn generated_cases_exercise_both_layers() {
            let mut runner = TestRunner::deterministic();
            let strategy = case();
            let (mut matched, mut rejected) = (0, 0);
            const CASES: u32 = 2000;
            for _ in 0..CASES {
                let case = strategy.new_tree(&mut runner).unwrap().current();
                let (m, prefilter) = judge(&case);
                matched += u32::from(m);
                rejected += u32::from(!may_match(&prefilter, case.passed.as_bytes()));
            }
            assert!(matched > CASES / 4, "only {matched} of {CASES} match");
            assert!(rejected > CASES / 10, "only {rejected} of {CASES} rejected");
        }

        #[test]
        fn common_filters_give_a_real_prefilter() {
            let base = Path::new("/home/u/p");
            for (globs, lua) in [(vec!["*.lua".to_owned()], None), (vec![], Some("%.lua$"))] {
                let lua = lua.map(LuaPatterns::environment);
                let prefilter = Filter::new(&globs, lua, base).unwrap().prefilter();
                assert_eq!(prefilter, only(&[".lua"], &[]));
            }
            let default = Filter::new(&[], None, base).unwrap().prefilter();
            assert_eq!(default, only(&[], &["/home/u/p/"]));
        }
    }
}
