//! The table and summary `profile` prints.
//!
//! A Python program opens a thousand files, nearly all of them the
//! interpreter's: the user's files are what they came for. Those (and
//! whatever the filter matches) are listed in full; each stretch of
//! system, environment and kernel files between them is folded into one
//! line that says how many, where, and how many failed. `--all` lists
//! every file.
use std::{fmt::Write as _, os::unix::ffi::OsStrExt as _, path::Path};

use super::analysis::{File, Origin, Possible, Profile, Why};
use crate::output::{escape, escape_path};

/// How many places a folded line names.
const FOLD_AREAS: usize = 3;

/// The table, then the summary.
pub fn render(profile: &Profile, all: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>9} {:>5}  {:<22} {:<9} {:<6} {:<20} {:>9}  FILE",
        "TIME(ms)", "OPENS", "PROCESS", "RESULT", "FILTER", "CHECKPOINT", "SKIPS(ms)"
    );
    let cwd = profile.cwd.as_path();
    let mut folded: Vec<&File> = Vec::new();
    for file in &profile.files {
        // A stretch ends where another process (or program, after an
        // exec) took over: the folded lines then tell the run's story.
        let same_opener = |f: &&File| (f.pid, &f.comm) == (file.pid, &file.comm);
        if all || shown_in_full(file) || !folded.last().is_none_or(same_opener) {
            fold(&mut out, &folded, cwd);
            folded.clear();
        }
        if all || shown_in_full(file) {
            row(&mut out, file, cwd);
        } else {
            folded.push(file);
        }
    }
    fold(&mut out, &folded, cwd);
    out.push('\n');
    summary(&mut out, profile);
    out
}

/// The user's files and the filter's matches, but no directories: a
/// Python program lists every package's, and none is a place to edit.
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

/// One line for a stretch of files not shown in full.
fn fold(out: &mut String, files: &[&File], cwd: &Path) {
    let Some(first) = files.first() else {
        return;
    };
    let opens: u32 = files.iter().map(|f| f.opens).sum();
    let failed = files.iter().filter(|f| f.outcome != "ok").count();
    // Where they are, the most first.
    let mut areas: Vec<(String, usize)> = Vec::new();
    for file in files {
        let area = area(&file.path, cwd);
        match areas.iter_mut().find(|(a, _)| *a == area) {
            Some((_, n)) => *n += 1,
            None => areas.push((area, 1)),
        }
    }
    areas.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let mut places: Vec<String> = areas
        .iter()
        .take(FOLD_AREAS)
        .map(|(area, n)| format!("{area} ({n})"))
        .collect();
    if areas.len() > FOLD_AREAS {
        let more = areas.len() - FOLD_AREAS;
        places.push(format!(
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
        places.join(", ")
    );
}

/// Where a folded file is, coarsely: up to the last environment
/// directory it goes through (`…/lib/python3.11`, `…/site-packages`,
/// `~/.pyenv`); else, below the current directory its own directory
/// (`pkg/sub`, `.`), elsewhere its top directory (`/etc`, `/proc`; two for
/// `/usr`, `/var`, `/opt` and `/home`: `/usr/lib`).
fn area(path: &Path, cwd: &Path) -> String {
    const PACKAGES: &[&[u8]] = &[b"site-packages", b"dist-packages", b"node_modules"];
    const DEEPER: &[&[u8]] = &[b"usr", b"var", b"opt", b"home"];
    let (base, below) = match path.strip_prefix(cwd) {
        Ok(below) => (Some(cwd), below),
        Err(_) => (None, path),
    };
    let dirs: Vec<&std::ffi::OsStr> = below
        .parent()
        .into_iter()
        .flat_map(Path::components)
        .map(|c| c.as_os_str())
        .collect();
    let top = dirs.get(1).map(|d| d.as_bytes());
    let mut keep = match base {
        Some(_) => dirs.len(),
        None if top.is_some_and(|top| DEEPER.contains(&top)) => 3,
        None => 2,
    };
    for i in 0..dirs.len() {
        let name = dirs[i].as_bytes();
        let parent = if i > 0 { dirs[i - 1].as_bytes() } else { b"" };
        let python_lib = name.starts_with(b"python") && (parent == b"lib" || parent == b"lib64");
        if name.starts_with(b".") || python_lib || PACKAGES.contains(&name) {
            keep = i + 1;
        }
    }
    let shown: std::path::PathBuf = dirs[..keep.min(dirs.len())].iter().collect();
    if shown.as_os_str().is_empty() {
        ".".into()
    } else {
        escape_path(&shown).into_owned()
    }
}

fn summary(out: &mut String, profile: &Profile) {
    let s = &profile.summary;
    let _ = writeln!(
        out,
        "Ran {:.1} ms, exit status {}, {} process{}: {} opens of {} files ({} failed); \
         the filter ({}) matched {} file{} ({} opens).",
        s.duration_ms,
        s.exit_status,
        s.processes,
        if s.processes == 1 { "" } else { "es" },
        s.opens,
        s.files,
        s.files_failed,
        profile.filter,
        s.files_matched,
        if s.files_matched == 1 { "" } else { "s" },
        s.opens_matched,
    );
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
        let text = render(&python_run(), false);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with(" TIME(ms) OPENS"), "{text}");
        assert!(
            lines[1].contains("┄ 52 files: /usr/lib/python3.11 (50), /etc (1), /proc (1)"),
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
    fn all_lists_every_file() {
        let profile = python_run();
        let text = render(&profile, true);
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
