//! The table and summary `profile` prints.
//!
//! A Python program opens a thousand files, nearly all of them the
//! interpreter's: the user's files are what they came for. Those (and
//! whatever the filter matches) are listed in full; each stretch of
//! system, environment and kernel files between them is folded into one
//! line that says how many, where, and how many failed. `--all` lists
//! every file.
use std::{collections::HashMap, fmt::Write as _, os::unix::ffi::OsStrExt as _, path::Path};

use super::analysis::{File, Origin, Possible, Profile, Why};
use crate::output::{escape, escape_path};

/// How many places a folded line names, and parts of each.
const FOLD_AREAS: usize = 3;
const FOLD_PARTS: usize = 4;

/// The table, then the summary.
/// `home` is shown as `~`.
pub fn render(profile: &Profile, all: bool, home: Option<&Path>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>9} {:>5}  {:<22} {:<9} {:<6} {:<20} {:>9}  FILE",
        "TIME(ms)", "OPENS", "PROCESS", "RESULT", "FILTER", "CHECKPOINT", "SKIPS(ms)"
    );
    let cwd = profile.cwd.as_path();
    let places = Places { cwd, home };
    let mut folded: Vec<&File> = Vec::new();
    for file in &profile.files {
        // The user's directories (a Python program lists every package's)
        // say nothing a row of theirs would not, and a fold line for each
        // would break up the list of their files.
        if !all && file.origin == Origin::User && file.checkpoint.why == Some(Why::NotAFile) {
            continue;
        }
        // A stretch ends where another process (or program, after an
        // exec) took over: the folded lines then tell the run's story.
        let same_opener = |f: &&File| (f.pid, &f.comm) == (file.pid, &file.comm);
        if all || shown_in_full(file) || !folded.last().is_none_or(same_opener) {
            fold(&mut out, &folded, &places);
            folded.clear();
        }
        if all || shown_in_full(file) {
            row(&mut out, file, cwd);
        } else {
            folded.push(file);
        }
    }
    fold(&mut out, &folded, &places);
    out.push('\n');
    summary(&mut out, profile);
    out
}

/// The user's files and the filter's matches, but no directories: none
/// is a place to edit.
fn shown_in_full(file: &File) -> bool {
    (file.filter || file.origin == Origin::User) && file.checkpoint.why != Some(Why::NotAFile)
}

fn row(out: &mut String, file: &File, cwd: &Path) {
    let checkpoint = match (file.checkpoint.possible, file.checkpoint.why) {
        (Possible::Yes, _) => "yes".to_owned(),
        (Possible::Maybe, why) => format!(
            "maybe: {}",
            why.map_or(String::new(), |w| w.words(file.checkpoint.threads))
        ),
        (Possible::No, why) => format!(
            "no: {}",
            why.map_or(String::new(), |w| w.words(file.checkpoint.threads))
        ),
    };
    let skips = file
        .checkpoint
        .skips_ms
        .map_or("-".to_owned(), |ms| format!("{ms:.1}"));
    let cache = if file.cache.is_some() { " (.pyc)" } else { "" };
    let _ = writeln!(
        out,
        "{:>9.1} {:>5}  {:<22} {:<9} {:<6} {:<20} {:>9}  {}{cache}",
        file.first_ms,
        file.opens,
        process(file),
        file.outcome,
        if file.filter { "match" } else { "-" },
        checkpoint,
        skips,
        shown_path(&file.path, cwd)
    );
}

fn process(file: &File) -> String {
    format!("{} {}", file.pid, escape(file.comm.as_bytes()))
}

/// Below the current directory, relative to it: the user's files read as
/// they would type them.
fn shown_path<'a>(path: &'a Path, cwd: &Path) -> std::borrow::Cow<'a, str> {
    match path.strip_prefix(cwd) {
        Ok(below) if !below.as_os_str().is_empty() => escape_path(below),
        _ => escape_path(path),
    }
}

/// One line for a stretch of files not shown in full: how many, and where,
/// the places with the most first, each with its busiest parts (a
/// standard library's packages: `email 25, encodings 12`).
fn fold(out: &mut String, files: &[&File], places: &Places) {
    let Some(first) = files.first() else {
        return;
    };
    let opens: u32 = files.iter().map(|f| f.opens).sum();
    let failed = files.iter().filter(|f| f.outcome != "ok").count();
    let mut counts = Tally::default();
    let mut parts: HashMap<String, Tally> = HashMap::new();
    for file in files {
        let (place, part) = places.area(&file.path);
        counts.add(&place);
        let of_place = parts.entry(place).or_default();
        if let Some(part) = part {
            of_place.add(&part);
        }
    }
    let ranked = counts.by_count();
    let mut named: Vec<String> = ranked
        .iter()
        .take(FOLD_AREAS)
        .map(|(place, n)| {
            let parts = parts.get_mut(place).map_or(&[][..], Tally::by_count);
            if parts.is_empty() {
                return format!("{place} ({n})");
            }
            let mut shown: Vec<String> = parts
                .iter()
                .take(FOLD_PARTS)
                .map(|(part, n)| format!("{part} {n}"))
                .collect();
            if parts.len() > FOLD_PARTS {
                shown.push("…".into());
            }
            format!("{place} ({n}: {})", shown.join(", "))
        })
        .collect();
    if ranked.len() > FOLD_AREAS {
        let more = ranked.len() - FOLD_AREAS;
        named.push(format!(
            "{more} more place{}",
            if more == 1 { "" } else { "s" }
        ));
    }
    let failed = if failed > 0 {
        format!(", {failed} failed")
    } else {
        String::new()
    };
    let noun = if files.len() == 1 { "file" } else { "files" };
    let _ = writeln!(
        out,
        "{:>9.1} {:>5}  {:<22} ┄ {} {noun}{failed}: {}",
        first.first_ms,
        opens,
        process(first),
        files.len(),
        named.join(", ")
    );
}

/// How many times each name came up, in the order first seen.
#[derive(Default)]
struct Tally(Vec<(String, usize)>);

impl Tally {
    fn add(&mut self, name: &str) {
        match self.0.iter_mut().find(|(seen, _)| seen == name) {
            Some((_, n)) => *n += 1,
            None => self.0.push((name.to_owned(), 1)),
        }
    }

    /// The most first; among equals, the first seen first (a stable sort).
    fn by_count(&mut self) -> &[(String, usize)] {
        self.0.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        &self.0
    }
}

/// How folded files are placed: relative to the current directory, and
/// the home directory shown as `~`.
struct Places<'a> {
    cwd: &'a Path,
    home: Option<&'a Path>,
}

impl Places<'_> {
    /// Where a folded file is, coarsely, and the part of that place it is
    /// in (the directory below it, if the file is not right there). The
    /// place: up to the last environment directory the file goes through
    /// (`…/lib/python3.11`, `…/site-packages`, `~/.pyenv`); else, below the
    /// current directory its own directory (`pkg/sub`, `.`), elsewhere its
    /// top directory (`/etc`, `/proc`; two for `/usr`, `/var`, `/opt` and
    /// `/home`: `/usr/lib`).
    fn area(&self, path: &Path) -> (String, Option<String>) {
        const PACKAGES: &[&[u8]] = &[b"site-packages", b"dist-packages", b"node_modules"];
        const DEEPER: &[&[u8]] = &[b"usr", b"var", b"opt", b"home"];
        let (in_cwd, below) = match path.strip_prefix(self.cwd) {
            Ok(below) => (true, below),
            Err(_) => (false, path),
        };
        // `..` taken back lexically, for the eye only (a library's
        // `numpy/_core/../../numpy.libs`).
        let mut dirs: Vec<&std::ffi::OsStr> = Vec::new();
        for component in below.parent().into_iter().flat_map(Path::components) {
            match component {
                std::path::Component::ParentDir if dirs.len() > 1 => {
                    dirs.pop();
                }
                other => dirs.push(other.as_os_str()),
            }
        }
        let top = dirs.get(1).map(|d| d.as_bytes());
        let mut keep = match in_cwd {
            true => dirs.len(),
            false if top.is_some_and(|top| DEEPER.contains(&top)) => 3,
            false => 2,
        };
        for i in 0..dirs.len() {
            let name = dirs[i].as_bytes();
            let parent = if i > 0 { dirs[i - 1].as_bytes() } else { b"" };
            let python_lib =
                name.starts_with(b"python") && (parent == b"lib" || parent == b"lib64");
            if name.starts_with(b".") || python_lib || PACKAGES.contains(&name) {
                keep = i + 1;
            }
        }
        let keep = keep.min(dirs.len());
        let place: std::path::PathBuf = dirs[..keep].iter().collect();
        let part = dirs
            .get(keep)
            .map(|part| escape(part.as_bytes()).into_owned());
        let place = match self.home.and_then(|home| place.strip_prefix(home).ok()) {
            Some(below) if !in_cwd && !below.as_os_str().is_empty() => {
                format!("~/{}", escape_path(below))
            }
            _ if place.as_os_str().is_empty() => ".".into(),
            _ => escape_path(&place).into_owned(),
        };
        (place, part)
    }
}

fn summary(out: &mut String, profile: &Profile) {
    let s = &profile.summary;
    let _ = writeln!(out, "Ran {}.", profile.headline());
    if s.lost_records > 0 {
        let _ = writeln!(
            out,
            "{} opens were lost (the ring buffer was full): this profile misses them.",
            s.lost_records
        );
    }
    if !s.best_checkpoints.is_empty() {
        let _ = writeln!(
            out,
            "Best checkpoints (edit the file, and each resume skips the start-up before it):"
        );
        for best in &s.best_checkpoints {
            let mut notes = Vec::new();
            if best.possible == Possible::Maybe {
                notes.push("if fork's handlers stop its threads");
            }
            if best.filter {
                notes.push("matched");
            }
            let notes = if notes.is_empty() {
                String::new()
            } else {
                format!("  ({})", notes.join("; "))
            };
            let _ = writeln!(
                out,
                "  {:>9.1} ms  {}{notes}",
                best.skips_ms,
                shown_path(&best.path, &profile.cwd)
            );
        }
    }
    if let Some(why) = &s.no_checkpoint {
        let _ = writeln!(out, "No checkpoint at your files: {why}.");
        // Where one is possible all the same: for work on a library, which
        // an absolute --filter can name.
        let latest = profile
            .files
            .iter()
            .filter(|f| f.checkpoint.possible != Possible::No && f.origin != Origin::Virtual)
            .max_by(|a, b| a.skips().total_cmp(&b.skips()));
        if let Some(file) = latest {
            let _ = writeln!(
                out,
                "The latest possible checkpoint is at {} ({:.1} ms), {}: an absolute --filter names it.",
                escape_path(&file.path),
                file.skips(),
                match file.origin {
                    Origin::System => "a system file",
                    _ => "an environment file",
                }
            );
        }
    }
    if let Some(suggestion) = &s.suggested_filter {
        let _ = writeln!(
            out,
            "Suggested filter ({} of your files; a resume skips up to {:.1} ms):\n  {}",
            suggestion.files, suggestion.skips_ms, suggestion.command
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::analysis::tests::{analyze_in, open, run_of};

    fn python_run() -> Profile {
        let mut opens = vec![open(0, 100, "/etc/ld.so.cache")];
        for i in 0..50 {
            opens.push(open(2, 100, &format!("/usr/lib/python3.11/m{i}.py")));
        }
        opens.push(open(3, 100, "/proc/self/maps"));
        opens.push(open(5, 100, "/w/main.py"));
        for i in 0..30 {
            let mut missing = open(
                6,
                100,
                &format!("/w/.venv/lib/python3.11/site-packages/d{i}.py"),
            );
            missing.ret = -2;
            opens.push(missing);
        }
        opens.push(open(8, 100, "/w/pkg/a.py"));
        let run = run_of(opens);
        analyze_in("/w", &run, &[])
    }

    #[test]
    fn the_users_files_in_full_the_rest_folded() {
        let text = render(&python_run(), false, Some(Path::new("/root")));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with(" TIME(ms) OPENS"), "{text}");
        assert!(
            lines[1].contains("┄ 52 files: /usr/lib/python3.11 (50), /etc (1), /proc (1: self 1)"),
            "{text}"
        );
        assert!(lines[2].ends_with("  main.py"), "{text}");
        assert!(lines[2].contains(" yes "), "{text}");
        assert!(
            lines[3].contains("┄ 30 files, 30 failed: .venv/lib/python3.11/site-packages (30)"),
            "{text}"
        );
        assert!(lines[4].ends_with("  pkg/a.py"), "{text}");
        assert!(text.contains("Suggested filter (2 of your files; a resume skips up to 8.0 ms):\n  forkmon run --filter 'pkg/**/*.py' --filter './*.py' -- python3 main.py"), "{text}");
        assert!(text.contains("Best checkpoints"), "{text}");
    }

    #[test]
    fn folded_files_are_placed_by_their_environment_and_its_parts() {
        let places = Places {
            cwd: Path::new("/w"),
            home: Some(Path::new("/home/me")),
        };
        let area = |path: &str| places.area(Path::new(path));
        let part = |place: &str, part: Option<&str>| (place.to_owned(), part.map(str::to_owned));
        let stdlib = "~/.pyenv/versions/3.11.7/lib/python3.11";
        for (path, expected) in [
            (
                "/home/me/.pyenv/versions/3.11.7/lib/python3.11/email/mime/text.py",
                part(stdlib, Some("email")),
            ),
            (
                "/home/me/.pyenv/versions/3.11.7/lib/python3.11/os.py",
                part(stdlib, None),
            ),
            (
                "/w/.venv/lib/python3.11/site-packages/numpy/core/x.py",
                part(".venv/lib/python3.11/site-packages", Some("numpy")),
            ),
            (
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                part("/usr/lib", Some("x86_64-linux-gnu")),
            ),
            ("/etc/ld.so.cache", part("/etc", None)),
            (
                "/v/lib/python3.11/site-packages/numpy/_core/../../numpy.libs/libopenblas.so",
                part("/v/lib/python3.11/site-packages", Some("numpy.libs")),
            ),
            ("/w/pkg/sub", part("pkg", None)),
            ("/w", part(".", None)),
        ] {
            assert_eq!(area(path), expected, "{path}");
        }
    }

    #[test]
    fn all_lists_every_file() {
        let profile = python_run();
        let text = render(&profile, true, None);
        assert!(!text.contains('┄'), "{text}");
        assert!(text.contains("/usr/lib/python3.11/m49.py"));
        assert!(text.contains("no: before the stub"), "{text}");
        assert_eq!(
            text.lines()
                .filter(|l| l.contains(" ok ") || l.contains(" ENOENT "))
                .count(),
            profile.files.len()
        );
    }
}
