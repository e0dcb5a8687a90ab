//! Analysis: from what one run showed to what the user asks of it — each
//! file once, whether `forkmon run` could checkpoint there and what that
//! would skip, the best places, and a filter that finds them.
//!
//! Pure: the file system is asked through [`Files`], so every rule is a
//! unit test.
use std::{
    collections::HashMap,
    ffi::OsStr,
    os::unix::ffi::OsStrExt as _,
    path::{Component, Path, PathBuf},
};

use serde::Serialize;

use super::collect::{Collected, Open};
use crate::{filter::Filter, output::errno_name};

/// The JSON's `schema` value; docs/profile.md describes this version.
pub const SCHEMA: &str = "forkmon-profile/1";

/// How many of the best checkpoints the summary names.
const BEST: usize = 5;
/// How many globs a suggested filter has at most: a filter to read and
/// copy, not a list of every directory.
const MAX_GLOBS: usize = 4;

/// Whose a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The user's own: what they edit, and what a filter should name.
    User,
    /// Dependencies, caches, interpreters' libraries, tools' own files
    /// (virtual environments, `site-packages`, `~/.pyenv`, `.git`).
    Environment,
    /// The operating system's (`/usr`, `/etc`, …).
    System,
    /// Kernel file systems (`/proc`, `/sys`, `/dev`): nothing to edit.
    Virtual,
}

/// Whether `forkmon run` could checkpoint at an open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Possible {
    Yes,
    /// The process had other threads: `run` forks it with fork()'s
    /// handlers and keeps the checkpoint only if they stop them (a
    /// library's pool does; docs/mechanism.md, "Threads").
    Maybe,
    No,
}

/// Why a checkpoint is impossible, or only maybe possible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    /// The open failed.
    Failed,
    /// Opened for writing (or `O_CREAT`/`O_TRUNC`): a re-open would
    /// change the file.
    Written,
    /// A directory, a device, a kernel file.
    NotAFile,
    /// Opened by another process than the program's own: `run`
    /// checkpoints only that one, and restarts for the others' files.
    Subprocess,
    /// Before the stub was loaded and registered (the dynamic loader's
    /// own opens, or after an exec).
    BeforeStub,
    /// The program never loaded the stub (statically linked, setuid).
    NoStub,
    /// Other threads (see [`Possible::Maybe`]).
    Threads,
}

impl Why {
    /// A few words for the table.
    pub fn words(self, threads: Option<usize>) -> String {
        match self {
            Why::Failed => "open failed".into(),
            Why::Written => "opened to write".into(),
            Why::NotAFile => "not a file".into(),
            Why::Subprocess => "subprocess".into(),
            Why::BeforeStub => "before the stub".into(),
            Why::NoStub => "no stub".into(),
            Why::Threads => format!("{} threads", threads.unwrap_or(2)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Checkpoint {
    pub possible: Possible,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<Why>,
    /// The process's threads at the open, when more than one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// The start-up a resume from here skips: from the start of the
    /// process tree to the open. Only when possible (or maybe).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skips_ms: Option<f64>,
}

/// One file, as first opened.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct File {
    /// Absolute (unless it could not be resolved); a bytecode cache's
    /// source for the cache.
    #[serde(serialize_with = "lossy")]
    pub path: PathBuf,
    /// The bytecode cache that was opened, when `path` is its source.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "lossy_some")]
    pub cache: Option<PathBuf>,
    pub first_ms: f64,
    pub opens: u32,
    pub pid: i32,
    pub comm: String,
    /// `ok`, or the error name of the first open (`ENOENT`).
    pub outcome: String,
    /// The first open asked for reading only.
    pub read_only: bool,
    /// The filter matches it.
    pub filter: bool,
    pub origin: Origin,
    /// At its first open where one is possible; otherwise why not, at its
    /// first open.
    pub checkpoint: Checkpoint,
}

impl File {
    /// The start-up a checkpoint here skips; 0 where none is possible.
    pub fn skips(&self) -> f64 {
        self.checkpoint.skips_ms.unwrap_or(0.0)
    }
}

/// One open, pointing into `files`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpenEvent {
    pub ms: f64,
    pub pid: i32,
    pub tid: i32,
    pub file: usize,
    pub outcome: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Process {
    pub pid: i32,
    pub parent: Option<i32>,
    pub comm: String,
    pub start_ms: f64,
    /// `None`: still running when the program ended.
    pub end_ms: Option<f64>,
    /// The program's own process (the one `run` checkpoints).
    pub program: bool,
    pub opens: u32,
    /// When its stub first registered.
    pub stub_ms: Option<f64>,
    /// The programs it ran, from each exec on (known by the loader's
    /// open of the stub, so not for a statically linked one).
    pub execs: Vec<Exec>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Exec {
    pub ms: f64,
    /// The name of what it ran (its first open's `comm` after the exec).
    pub comm: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Best {
    #[serde(serialize_with = "lossy")]
    pub path: PathBuf,
    pub skips_ms: f64,
    pub possible: Possible,
    pub filter: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Suggestion {
    /// `--filter` values, the largest saving first.
    pub globs: Vec<String>,
    /// The whole command line, ready to copy.
    pub command: String,
    /// How many of the user's files it matches.
    pub files: usize,
    /// The largest start-up it lets a resume skip.
    pub skips_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub duration_ms: f64,
    pub exit_status: u8,
    pub processes: usize,
    pub opens: usize,
    pub files: usize,
    pub files_failed: usize,
    pub files_matched: usize,
    pub opens_matched: usize,
    pub best_checkpoints: Vec<Best>,
    pub suggested_filter: Option<Suggestion>,
    /// Why no checkpoint is possible at the user's files, when none is.
    pub no_checkpoint: Option<String>,
    /// Records the kernel could not deliver (the ring buffer was full):
    /// the profile misses that many opens.
    pub lost_records: u64,
}

/// Everything `profile` shows, and the JSON it writes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    pub schema: &'static str,
    pub command: Vec<String>,
    #[serde(serialize_with = "lossy")]
    pub cwd: PathBuf,
    /// The filter, described as `run` describes it.
    pub filter: String,
    pub summary: Summary,
    pub processes: Vec<Process>,
    pub files: Vec<File>,
    pub opens: Vec<OpenEvent>,
}

impl Profile {
    /// The run in one line: time, status, processes, opens, what the
    /// filter matched.
    pub fn headline(&self) -> String {
        let s = &self.summary;
        let plural =
            |n: usize, one: &'static str, more: &'static str| if n == 1 { one } else { more };
        format!(
            "{:.1} ms, exit status {}, {} process{}: {} opens of {} files ({} failed); \
             the filter ({}) matched {} file{} ({} opens)",
            s.duration_ms,
            s.exit_status,
            s.processes,
            plural(s.processes, "", "es"),
            s.opens,
            s.files,
            s.files_failed,
            self.filter,
            s.files_matched,
            plural(s.files_matched, "", "s"),
            s.opens_matched,
        )
    }
}

/// What a path is on disk, asked only for the files the run opened.
pub trait Files {
    /// Whether `path` is a regular file now (`None`: it is gone).
    fn is_regular(&self, path: &Path) -> Option<bool>;
}

/// The live file system.
pub struct Disk;

impl Files for Disk {
    fn is_regular(&self, path: &Path) -> Option<bool> {
        std::fs::metadata(path).ok().map(|m| m.is_file())
    }
}

/// How the analysis is set up.
pub struct Setup<'a> {
    pub filter: &'a Filter,
    pub cwd: &'a Path,
    /// `PYTHONPYCACHEPREFIX`, as `run` reads it.
    pub pycache_prefix: Option<&'a Path>,
    /// forkmon was started through sudo: so is the suggested command.
    pub sudo: bool,
    pub files: &'a dyn Files,
}

fn ms(ns: u64, start_ns: u64) -> f64 {
    // Microsecond resolution: the JSON stays short, and nothing finer
    // means anything here.
    (ns.saturating_sub(start_ns) / 1000) as f64 / 1000.0
}

/// Builds the profile.
pub fn analyze(run: &Collected, setup: &Setup) -> Profile {
    let stub = StubTimes::new(run);
    let venvs = virtual_environments(run);
    let mut files: Vec<File> = Vec::new();
    let mut index: HashMap<PathBuf, usize> = HashMap::new();
    let mut opens = Vec::with_capacity(run.opens.len());
    for open in &run.opens {
        let (path, cache) = match crate::python::source_of_cache(&open.path, setup.pycache_prefix) {
            Some(source) if setup.files.is_regular(&source) == Some(true) => {
                (source, Some(open.path.clone()))
            }
            _ => (open.path.clone(), None),
        };
        let outcome = outcome(open.ret);
        let at = ms(open.ts_ns, run.start_ns);
        let (possible, why) = verdict(open, run.pid, &stub, || {
            setup.files.is_regular(&path) != Some(false)
                && origin(&path, setup.cwd, &venvs) != Origin::Virtual
        });
        let checkpoint = Checkpoint {
            possible,
            why,
            threads: open.threads.filter(|&n| n > 1),
            skips_ms: (possible != Possible::No).then_some(at),
        };
        let file = *index.entry(path.clone()).or_insert_with(|| {
            files.push(File {
                // A directory the program listed matches no filter: only
                // files become checkpoints.
                filter: setup.filter.matches(&path) && setup.files.is_regular(&path) != Some(false),
                origin: match origin(&path, setup.cwd, &venvs) {
                    // A file that is not there, outside the current
                    // directory: a loader's or interpreter's search path
                    // (`LD_LIBRARY_PATH`, `sys.path`), not the user's.
                    Origin::User if open.ret < 0 && !path.starts_with(setup.cwd) => {
                        Origin::Environment
                    }
                    // Build output, generated files: what the project's
                    // ignore files leave out is not the user's work.
                    Origin::User if setup.filter.ignores(&path) => Origin::Environment,
                    whose => whose,
                },
                path,
                cache: None,
                first_ms: at,
                opens: 0,
                pid: open.pid,
                comm: open.comm.clone(),
                outcome: outcome.clone(),
                read_only: is_read_only(open.flags),
                checkpoint: checkpoint.clone(),
            });
            files.len() - 1
        });
        let entry = &mut files[file];
        entry.opens += 1;
        if entry.cache.is_none() {
            entry.cache = cache;
        }
        // The first open where a checkpoint is possible is where `run`
        // makes it (a file is checkpointed once); `Maybe` gives way to a
        // later `Yes` only if none came first.
        if entry.checkpoint.possible == Possible::No && possible != Possible::No {
            entry.checkpoint = checkpoint;
        }
        opens.push(OpenEvent {
            ms: at,
            pid: open.pid,
            tid: open.tid,
            file,
            outcome,
        });
    }
    let processes = processes(run, &opens, &stub);
    let summary = summarize(run, setup, &files, &opens, processes.len());
    Profile {
        schema: SCHEMA,
        command: run
            .argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        cwd: setup.cwd.to_path_buf(),
        filter: setup.filter.describe(),
        summary,
        processes,
        files,
        opens,
    }
}

/// The Python virtual environments the run used, whatever they are
/// called: an interpreter reads `pyvenv.cfg` at the top of its own.
fn virtual_environments(run: &Collected) -> Vec<PathBuf> {
    let mut venvs: Vec<PathBuf> = run
        .opens
        .iter()
        .filter(|open| open.ret >= 0 && open.path.file_name() == Some(OsStr::new("pyvenv.cfg")))
        .filter_map(|open| open.path.parent().map(Path::to_path_buf))
        .collect();
    venvs.sort();
    venvs.dedup();
    venvs
}

fn outcome(ret: i64) -> String {
    if ret >= 0 {
        "ok".into()
    } else {
        errno_name(ret)
    }
}

/// As the eBPF program decides which opens may be signalled: no write
/// access, no `O_CREAT`/`O_TRUNC`, not `O_DIRECTORY`/`O_PATH`.
fn is_read_only(flags: u64) -> bool {
    let flags = flags as i32;
    flags & libc::O_ACCMODE == libc::O_RDONLY && flags & (libc::O_CREAT | libc::O_TRUNC) == 0
}

fn is_directory_like(flags: u64) -> bool {
    flags as i32 & (libc::O_DIRECTORY | libc::O_PATH) != 0
}

/// Whether `run` could checkpoint at `open`, checked in the order it
/// checks. `regular` is asked last: it looks at the disk.
fn verdict(
    open: &Open,
    program: i32,
    stub: &StubTimes,
    regular: impl FnOnce() -> bool,
) -> (Possible, Option<Why>) {
    let no = |why| (Possible::No, Some(why));
    if open.ret < 0 {
        return no(Why::Failed);
    }
    if !is_read_only(open.flags) {
        return no(Why::Written);
    }
    if is_directory_like(open.flags) {
        return no(Why::NotAFile);
    }
    if open.pid != program {
        return no(Why::Subprocess);
    }
    match stub.ready(open.pid, open.ts_ns) {
        Ready::Yes => {}
        Ready::NotYet => return no(Why::BeforeStub),
        Ready::Never => return no(Why::NoStub),
    }
    if !regular() {
        return no(Why::NotAFile);
    }
    match open.threads {
        Some(n) if n > 1 => (Possible::Maybe, Some(Why::Threads)),
        _ => (Possible::Yes, None),
    }
}

enum Ready {
    Yes,
    NotYet,
    Never,
}

/// When each process's stub was loaded (by its loader, after an exec) and
/// when it registered, in time order.
struct StubTimes {
    events: HashMap<i32, Vec<(u64, bool)>>,
}

impl StubTimes {
    fn new(run: &Collected) -> StubTimes {
        let mut events: HashMap<i32, Vec<(u64, bool)>> = HashMap::new();
        for &(pid, at) in &run.stub_loads {
            events.entry(pid).or_default().push((at, false));
        }
        for &(pid, at) in &run.registered {
            events.entry(pid).or_default().push((at, true));
        }
        for list in events.values_mut() {
            list.sort();
        }
        StubTimes { events }
    }

    /// Whether `pid`'s stub was registered at `ts`: its latest event
    /// before then is a registration, not a load (an exec's new image
    /// that has not registered yet).
    fn ready(&self, pid: i32, ts: u64) -> Ready {
        let Some(list) = self.events.get(&pid) else {
            return Ready::Never;
        };
        if !list.iter().any(|&(_, registered)| registered) {
            return Ready::Never;
        }
        match list.iter().rev().find(|&&(at, _)| at <= ts) {
            Some(&(_, true)) => Ready::Yes,
            _ => Ready::NotYet,
        }
    }

    fn first_registration(&self, pid: i32) -> Option<u64> {
        self.events
            .get(&pid)?
            .iter()
            .find(|&&(_, registered)| registered)
            .map(|&(at, _)| at)
    }
}

/// Top directories of the operating system's files.
const SYSTEM_ROOTS: &[&str] = &[
    "usr", "lib", "lib32", "lib64", "libx32", "bin", "sbin", "etc", "var", "opt", "run", "snap",
    "nix", "boot", "srv",
];
const VIRTUAL_ROOTS: &[&str] = &["proc", "sys", "dev"];

/// Whose `path` is. In a Python virtual environment (one of `venvs`), the
/// environment's. Below the current directory, the user's unless it
/// goes through an environment directory (as `run`'s default filter
/// decides) or a hidden one; elsewhere, the system's by its top
/// directory, the environment's through such directories (`~/.pyenv`,
/// `~/.cache`), the user's otherwise.
pub fn origin(path: &Path, cwd: &Path, venvs: &[PathBuf]) -> Origin {
    if venvs.iter().any(|venv| path.starts_with(venv)) {
        return Origin::Environment;
    }
    let environment =
        |below: &Path| {
            crate::filter::in_environment(below, "")
                || below.parent().into_iter().flat_map(Path::components).any(
                    |c| matches!(c, Component::Normal(name) if name.as_bytes().starts_with(b".")),
                )
        };
    if let Ok(below) = path.strip_prefix(cwd) {
        return if environment(below) {
            Origin::Environment
        } else {
            Origin::User
        };
    }
    let top = match path.components().nth(1) {
        Some(Component::Normal(top)) if path.is_absolute() => top,
        // Unresolved (relative) paths: not the user's to be sure of.
        _ => return Origin::System,
    };
    if VIRTUAL_ROOTS.iter().any(|root| top == OsStr::new(root)) {
        Origin::Virtual
    } else if SYSTEM_ROOTS.iter().any(|root| top == OsStr::new(root)) {
        Origin::System
    } else if environment(path) {
        Origin::Environment
    } else {
        Origin::User
    }
}

fn processes(run: &Collected, opens: &[OpenEvent], stub: &StubTimes) -> Vec<Process> {
    let mut counts: HashMap<i32, u32> = HashMap::new();
    for open in opens {
        *counts.entry(open.pid).or_default() += 1;
    }
    run.processes
        .iter()
        .enumerate()
        .map(|(i, p)| Process {
            pid: p.pid,
            parent: p.parent,
            comm: p.comm.clone(),
            start_ms: ms(p.start_ns, run.start_ns),
            end_ms: p.end_ns.map(|end| ms(end, run.start_ns)),
            program: i == 0,
            // A reused pid's opens count for each of its processes; rare
            // enough within one run not to be worth telling apart.
            opens: counts.get(&p.pid).copied().unwrap_or(0),
            stub_ms: stub
                .first_registration(p.pid)
                .map(|at| ms(at, run.start_ns)),
            execs: execs(run, p),
        })
        .collect()
}

/// `process`'s execs: each new image's loader opens the stub first.
fn execs(run: &Collected, process: &super::collect::Process) -> Vec<Exec> {
    let alive = |at: u64| at >= process.start_ns && process.end_ns.is_none_or(|end| at <= end);
    run.stub_loads
        .iter()
        .filter(|&&(pid, at)| pid == process.pid && alive(at))
        .map(|&(_, at)| Exec {
            ms: ms(at, run.start_ns),
            comm: run
                .opens
                .iter()
                .find(|open| open.pid == process.pid && open.ts_ns >= at)
                .map_or_else(|| process.comm.clone(), |open| open.comm.clone()),
        })
        .collect()
}

fn summarize(
    run: &Collected,
    setup: &Setup,
    files: &[File],
    opens: &[OpenEvent],
    processes: usize,
) -> Summary {
    let possible = |f: &&File| f.checkpoint.possible != Possible::No;
    let mut best: Vec<&File> = files
        .iter()
        .filter(|f| f.origin == Origin::User || f.filter)
        .filter(possible)
        .collect();
    best.sort_by(|a, b| b.skips().total_cmp(&a.skips()));
    Summary {
        duration_ms: ms(run.end_ns, run.start_ns),
        exit_status: run.exit_status,
        processes,
        opens: opens.len(),
        files: files.len(),
        files_failed: files.iter().filter(|f| f.outcome != "ok").count(),
        files_matched: files.iter().filter(|f| f.filter).count(),
        opens_matched: opens.iter().filter(|o| files[o.file].filter).count(),
        best_checkpoints: best
            .iter()
            .take(BEST)
            .map(|f| Best {
                path: f.path.clone(),
                skips_ms: f.skips(),
                possible: f.checkpoint.possible,
                filter: f.filter,
            })
            .collect(),
        suggested_filter: suggest(run, setup, files),
        no_checkpoint: no_checkpoint(files),
        lost_records: run.losses.ring_full,
    }
}

/// Why none of the user's files can be a checkpoint, if none can.
fn no_checkpoint(files: &[File]) -> Option<String> {
    // Directories are no files to edit.
    let users: Vec<&File> = files
        .iter()
        .filter(|f| f.origin == Origin::User && f.checkpoint.why != Some(Why::NotAFile))
        .collect();
    if users.is_empty() {
        return Some(
            "the program opened none of your files, only system and environment ones".into(),
        );
    }
    if users.iter().any(|f| f.checkpoint.possible != Possible::No) {
        return None;
    }
    // The reason most of them share.
    let mut counts: Vec<(Why, usize)> = Vec::new();
    for why in users.iter().filter_map(|f| f.checkpoint.why) {
        match counts.iter_mut().find(|(w, _)| *w == why) {
            Some((_, n)) => *n += 1,
            None => counts.push((why, 1)),
        }
    }
    counts.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
    let (why, _) = counts.first()?;
    Some(
        match why {
            Why::Subprocess => {
                "your files are opened by subprocesses, not the program's own process: \
                 forkmon run restarts the command when they change"
            }
            Why::NoStub => {
                "the program did not load forkmon's stub (statically linked or setuid?): \
                 forkmon run restarts it when your files change"
            }
            Why::BeforeStub => "your files are opened before forkmon's stub is loaded",
            Why::Written => "your files are opened to be written",
            Why::Failed => "the opens of your files failed",
            Why::NotAFile | Why::Threads => unreachable!("not counted: directories, maybe"),
        }
        .into(),
    )
}

/// A filter for `run`: globs for the directories and extensions of the
/// user's files where a checkpoint is possible, the group with the
/// largest saving first. Checked against the run: a glob that would also
/// match a system or environment file it opened is left out.
fn suggest(run: &Collected, setup: &Setup, files: &[File]) -> Option<Suggestion> {
    // glob → (largest saving, files)
    let mut groups: Vec<(String, f64, usize)> = Vec::new();
    for file in files {
        if file.origin != Origin::User || file.checkpoint.possible == Possible::No {
            continue;
        }
        let glob = glob_for(&file.path, setup.cwd);
        match groups.iter_mut().find(|(g, _, _)| *g == glob) {
            Some((_, best, count)) => {
                *best = best.max(file.skips());
                *count += 1;
            }
            None => groups.push((glob, file.skips(), 1)),
        }
    }
    groups.sort_by(|a, b| b.1.total_cmp(&a.1));
    let others: Vec<&Path> = files
        .iter()
        .filter(|f| f.origin != Origin::User)
        .map(|f| f.path.as_path())
        .collect();
    let mut globs = Vec::new();
    let (mut covered, mut largest) = (0, 0.0_f64);
    for (glob, saving, count) in groups {
        let Ok(alone) = Filter::new(std::slice::from_ref(&glob), None, setup.cwd) else {
            continue;
        };
        if others.iter().any(|path| alone.matches(path)) {
            log::debug!("not suggesting {glob}: it matches files that are not yours");
            continue;
        }
        globs.push(glob);
        covered += count;
        largest = largest.max(saving);
        if globs.len() == MAX_GLOBS {
            break;
        }
    }
    if globs.is_empty() {
        return None;
    }
    let mut words: Vec<String> = Vec::new();
    if setup.sudo {
        words.push("sudo".into());
    }
    words.extend(["forkmon".into(), "run".into()]);
    for glob in &globs {
        words.push("--filter".into());
        words.push(shell_word(glob));
    }
    words.push("--".into());
    words.extend(run.argv.iter().map(|a| shell_word(&a.to_string_lossy())));
    Some(Suggestion {
        command: words.join(" "),
        globs,
        files: covered,
        skips_ms: largest,
    })
}

/// The glob for a file's group: below the current directory, its top
/// directory and extension (`pkg/**/*.py`, or `./*.py` for the directory
/// itself); elsewhere its own directory, absolute. A name without an
/// extension stands for itself.
fn glob_for(path: &Path, cwd: &Path) -> String {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let pattern = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && !ext.is_empty() => format!("*.{ext}"),
        _ => name.into_owned(),
    };
    let pattern = escape_glob_aware(&pattern);
    match path.strip_prefix(cwd) {
        Ok(below) => {
            let mut parts = below.components();
            let top = parts.next();
            match (top, parts.next()) {
                (Some(top), Some(_)) => format!(
                    "{}/**/{pattern}",
                    escape_glob(&top.as_os_str().to_string_lossy())
                ),
                _ => format!("./{pattern}"),
            }
        }
        Err(_) => {
            let dir = path.parent().unwrap_or(Path::new("/"));
            format!(
                "{}/{pattern}",
                escape_glob(dir.to_string_lossy().trim_end_matches('/'))
            )
        }
    }
}

/// A literal for a glob: its special characters escaped.
fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "*?[]{}\\!".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// As [`escape_glob`], leaving a leading `*.` of an extension pattern.
fn escape_glob_aware(pattern: &str) -> String {
    match pattern.strip_prefix("*.") {
        Some(ext) => format!("*.{}", escape_glob(ext)),
        None => escape_glob(pattern),
    }
}

/// `argv` as one would type it.
pub fn command_line(argv: &[String]) -> String {
    argv.iter()
        .map(|word| shell_word(word))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `word` as a POSIX shell reads it back: bare when safe, else in single
/// quotes.
pub fn shell_word(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn lossy<S: serde::Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

fn lossy_some<S: serde::Serializer>(path: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match path {
        Some(path) => lossy(path, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::profile::collect::Process as Proc;

    pub const START: u64 = 1_000_000_000;

    /// A regular file everywhere but under /proc and for names ending in
    /// `/` (directories).
    pub struct FakeDisk;

    impl Files for FakeDisk {
        fn is_regular(&self, path: &Path) -> Option<bool> {
            if path.to_string_lossy().contains("missing") {
                return None;
            }
            Some(!path.starts_with("/proc") && !path.ends_with("dir"))
        }
    }

    pub fn open(ms: u64, pid: i32, path: &str) -> Open {
        Open {
            ts_ns: START + ms * 1_000_000,
            pid,
            tid: pid,
            comm: if pid == 100 { "python3" } else { "sh" }.into(),
            ret: 3,
            flags: libc::O_RDONLY as u64 | libc::O_CLOEXEC as u64,
            path: path.into(),
            threads: (pid == 100).then_some(1),
        }
    }

    /// The program (pid 100) registers its stub at 1 ms; a subprocess
    /// (200) runs from 50 to 60 ms.
    pub fn run_of(opens: Vec<Open>) -> Collected {
        Collected {
            argv: vec!["python3".into(), "main.py".into()],
            pid: 100,
            start_ns: START,
            end_ns: START + 200_000_000,
            exit_status: 0,
            opens,
            processes: vec![
                Proc {
                    pid: 100,
                    parent: None,
                    start_ns: START,
                    end_ns: Some(START + 200_000_000),
                    comm: "python3".into(),
                },
                Proc {
                    pid: 200,
                    parent: Some(100),
                    start_ns: START + 50_000_000,
                    end_ns: Some(START + 60_000_000),
                    comm: "sh".into(),
                },
            ],
            registered: vec![(100, START + 1_000_000)],
            stub_loads: vec![(100, START + 500_000)],
            losses: Default::default(),
        }
    }

    pub fn analyze_in(cwd: &str, run: &Collected, globs: &[&str]) -> Profile {
        let globs: Vec<String> = globs.iter().map(|g| g.to_string()).collect();
        let filter = Filter::new(&globs, None, Path::new(cwd)).unwrap();
        analyze(
            run,
            &Setup {
                filter: &filter,
                cwd: Path::new(cwd),
                pycache_prefix: None,
                sudo: false,
                files: &FakeDisk,
            },
        )
    }

    fn file<'a>(profile: &'a Profile, path: &str) -> &'a File {
        profile
            .files
            .iter()
            .find(|f| f.path == Path::new(path))
            .unwrap_or_else(|| panic!("no {path} in {:#?}", profile.files))
    }

    #[test]
    fn each_file_once_in_order_of_first_open_with_its_count() {
        let run = run_of(vec![
            open(0, 100, "/etc/ld.so.cache"),
            open(2, 100, "/w/a.py"),
            open(3, 100, "/w/b.py"),
            open(4, 100, "/w/a.py"),
        ]);
        let profile = analyze_in("/w", &run, &[]);
        let order: Vec<_> = profile.files.iter().map(|f| f.path.clone()).collect();
        assert_eq!(
            order,
            ["/etc/ld.so.cache", "/w/a.py", "/w/b.py"].map(PathBuf::from)
        );
        assert_eq!(file(&profile, "/w/a.py").opens, 2);
        assert_eq!(file(&profile, "/w/a.py").first_ms, 2.0);
        assert_eq!(profile.opens.len(), 4);
        assert_eq!(profile.opens[3].file, 1);
        assert_eq!(profile.summary.duration_ms, 200.0);
    }

    #[test]
    fn says_why_a_checkpoint_is_impossible_in_runs_order() {
        let mut failed = open(5, 100, "/w/missing.py");
        failed.ret = -2;
        let mut written = open(6, 100, "/w/out.txt");
        written.flags = (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC) as u64;
        let mut dir = open(7, 100, "/w/dir");
        dir.flags = (libc::O_RDONLY | libc::O_DIRECTORY) as u64;
        let mut threaded = open(9, 100, "/w/late.py");
        threaded.threads = Some(3);
        let run = run_of(vec![
            open(0, 100, "/etc/ld.so.cache"),
            failed,
            written,
            dir,
            open(8, 100, "/proc/self/status"),
            open(55, 200, "/w/sub.txt"),
            threaded,
            open(10, 100, "/w/main.py"),
        ]);
        let profile = analyze_in("/w", &run, &[]);
        let why = |path| {
            let c = &file(&profile, path).checkpoint;
            (c.possible, c.why)
        };
        assert_eq!(
            why("/etc/ld.so.cache"),
            (Possible::No, Some(Why::BeforeStub))
        );
        assert_eq!(why("/w/missing.py"), (Possible::No, Some(Why::Failed)));
        assert_eq!(file(&profile, "/w/missing.py").outcome, "ENOENT");
        assert_eq!(why("/w/out.txt"), (Possible::No, Some(Why::Written)));
        assert!(!file(&profile, "/w/out.txt").read_only);
        assert_eq!(why("/w/dir"), (Possible::No, Some(Why::NotAFile)));
        assert_eq!(
            why("/proc/self/status"),
            (Possible::No, Some(Why::NotAFile))
        );
        assert_eq!(why("/w/sub.txt"), (Possible::No, Some(Why::Subprocess)));
        assert_eq!(why("/w/late.py"), (Possible::Maybe, Some(Why::Threads)));
        assert_eq!(file(&profile, "/w/late.py").checkpoint.threads, Some(3));
        assert_eq!(why("/w/main.py"), (Possible::Yes, None));
        assert_eq!(file(&profile, "/w/main.py").checkpoint.skips_ms, Some(10.0));
        assert_eq!(file(&profile, "/w/out.txt").checkpoint.skips_ms, None);
    }

    #[test]
    fn a_program_without_the_stub_or_after_an_exec_cannot_be_checkpointed() {
        let mut run = run_of(vec![open(2, 100, "/w/a.py"), open(30, 100, "/w/b.py")]);
        // Exec'd at 20 ms: the new image loads the stub, registers at 40.
        run.stub_loads.push((100, START + 20_000_000));
        run.registered.push((100, START + 40_000_000));
        let profile = analyze_in("/w", &run, &[]);
        assert_eq!(file(&profile, "/w/a.py").checkpoint.possible, Possible::Yes);
        assert_eq!(
            file(&profile, "/w/b.py").checkpoint.why,
            Some(Why::BeforeStub)
        );
        run.registered.clear();
        let profile = analyze_in("/w", &run, &[]);
        assert_eq!(file(&profile, "/w/a.py").checkpoint.why, Some(Why::NoStub));
        assert!(
            profile
                .summary
                .no_checkpoint
                .as_deref()
                .unwrap()
                .contains("stub"),
            "{:?}",
            profile.summary.no_checkpoint
        );
    }

    #[test]
    fn a_virtual_environment_is_known_by_its_pyvenv_cfg() {
        let run = run_of(vec![
            open(1, 100, "/home/me/envs/py/pyvenv.cfg"),
            open(2, 100, "/home/me/envs/py/lib/python3.11/site-packages/x.py"),
            open(3, 100, "/home/me/envs/py/bin/tool.conf"),
            open(4, 100, "/home/me/envs/other.txt"),
        ]);
        let profile = analyze_in("/w", &run, &[]);
        for path in [
            "/home/me/envs/py/pyvenv.cfg",
            "/home/me/envs/py/lib/python3.11/site-packages/x.py",
            "/home/me/envs/py/bin/tool.conf",
        ] {
            assert_eq!(file(&profile, path).origin, Origin::Environment, "{path}");
        }
        assert_eq!(
            file(&profile, "/home/me/envs/other.txt").origin,
            Origin::User
        );
    }

    #[test]
    fn a_search_paths_misses_are_not_the_users() {
        let mut miss = open(1, 100, "/home/me/build/libc.so.6");
        miss.ret = -2;
        let mut lua_try = open(2, 100, "/w/util.lua");
        lua_try.ret = -2;
        let run = run_of(vec![miss, lua_try]);
        let profile = analyze_in("/w", &run, &[]);
        assert_eq!(
            file(&profile, "/home/me/build/libc.so.6").origin,
            Origin::Environment
        );
        assert_eq!(file(&profile, "/w/util.lua").origin, Origin::User);
    }

    #[test]
    fn a_later_open_can_be_the_checkpoint() {
        let mut first = open(3, 100, "/w/a.py");
        first.ret = -2;
        let run = run_of(vec![first, open(7, 100, "/w/a.py")]);
        let profile = analyze_in("/w", &run, &[]);
        let a = file(&profile, "/w/a.py");
        assert_eq!(a.outcome, "ENOENT", "the first open's");
        assert_eq!(a.checkpoint.possible, Possible::Yes);
        assert_eq!(a.checkpoint.skips_ms, Some(7.0));
    }

    #[test]
    fn a_bytecode_cache_is_its_source() {
        let run = run_of(vec![
            open(2, 100, "/w/pkg/__pycache__/mod.cpython-311.pyc"),
            open(3, 100, "/w/pkg/mod.py"),
            open(4, 100, "/w/pkg/__pycache__/missing.cpython-311.pyc"),
        ]);
        let profile = analyze_in("/w", &run, &["*.py"]);
        let module = file(&profile, "/w/pkg/mod.py");
        assert_eq!(module.opens, 2);
        assert_eq!(
            module.cache.as_deref(),
            Some(Path::new("/w/pkg/__pycache__/mod.cpython-311.pyc"))
        );
        assert!(module.filter, "the filter sees the source");
        // No source: the cache stays itself.
        file(&profile, "/w/pkg/__pycache__/missing.cpython-311.pyc");
    }

    #[test]
    fn tells_the_users_files_from_the_systems() {
        for (path, cwd, expected) in [
            ("/w/main.py", "/w", Origin::User),
            ("/w/pkg/sub/m.py", "/w", Origin::User),
            (
                "/w/.venv/lib/python3.11/site-packages/x.py",
                "/w",
                Origin::Environment,
            ),
            ("/w/.git/HEAD", "/w", Origin::Environment),
            ("/usr/lib/python3.11/os.py", "/w", Origin::System),
            ("/etc/ld.so.cache", "/w", Origin::System),
            ("/proc/self/maps", "/w", Origin::Virtual),
            ("/dev/null", "/w", Origin::Virtual),
            (
                "/root/.pyenv/versions/3.11.9/lib/python3.11/os.py",
                "/w",
                Origin::Environment,
            ),
            ("/home/me/.cache/x", "/w", Origin::Environment),
            ("/home/me/lib/util.lua", "/w", Origin::User),
            // A hidden current directory (tempfile's) is no environment.
            ("/tmp/.tmpAb12/main.lua", "/tmp/.tmpAb12", Origin::User),
            // Working in /usr/src: the project is still the user's.
            ("/usr/src/p/main.c", "/usr/src/p", Origin::User),
            ("relative.txt", "/w", Origin::System),
        ] {
            assert_eq!(
                origin(Path::new(path), Path::new(cwd), &[]),
                expected,
                "{path}"
            );
        }
    }

    #[test]
    fn suggests_the_users_directories_and_extensions_by_saving() {
        let run = run_of(vec![
            open(1, 100, "/usr/lib/python3.11/os.py"),
            open(2, 100, "/w/main.py"),
            open(5, 100, "/w/pkg/a.py"),
            open(9, 100, "/w/pkg/sub/b.py"),
            open(12, 100, "/w/conf/settings.toml"),
            open(13, 100, "/w/.venv/lib/python3.11/site-packages/dep.py"),
            open(14, 100, "/home/me/lib/util.lua"),
            open(55, 200, "/w/tool/helper.py"),
        ]);
        let profile = analyze_in("/w", &run, &[]);
        let suggestion = profile.summary.suggested_filter.clone().unwrap();
        assert_eq!(
            suggestion.globs,
            [
                "/home/me/lib/*.lua",
                "conf/**/*.toml",
                "pkg/**/*.py",
                "./*.py"
            ]
        );
        assert_eq!(suggestion.files, 5);
        assert_eq!(suggestion.skips_ms, 14.0);
        assert_eq!(
            suggestion.command,
            "forkmon run --filter '/home/me/lib/*.lua' --filter 'conf/**/*.toml' \
             --filter 'pkg/**/*.py' --filter './*.py' -- python3 main.py"
        );
        // What it suggests matches the user's files, and none of the rest.
        let filter = Filter::new(&suggestion.globs, None, Path::new("/w")).unwrap();
        for f in &profile.files {
            let users = f.origin == Origin::User && f.checkpoint.possible != Possible::No;
            assert_eq!(filter.matches(&f.path), users, "{}", f.path.display());
        }
        let best: Vec<_> = profile
            .summary
            .best_checkpoints
            .iter()
            .map(|b| b.path.to_str().unwrap())
            .collect();
        assert_eq!(
            best,
            [
                "/home/me/lib/util.lua",
                "/w/conf/settings.toml",
                "/w/pkg/sub/b.py",
                "/w/pkg/a.py",
                "/w/main.py"
            ]
        );
    }

    #[test]
    fn suggestions_quote_for_the_shell_and_say_sudo() {
        assert_eq!(shell_word("main.py"), "main.py");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
        assert_eq!(
            glob_for(Path::new("/w/[x]/a.py"), Path::new("/w")),
            r"\[x\]/**/*.py"
        );
        assert_eq!(
            glob_for(Path::new("/w/Makefile"), Path::new("/w")),
            "./Makefile"
        );
        assert_eq!(glob_for(Path::new("/w/.env"), Path::new("/w")), "./.env");
        let run = run_of(vec![open(2, 100, "/w/main.py")]);
        let filter = Filter::new(&[], None, Path::new("/w")).unwrap();
        let profile = analyze(
            &run,
            &Setup {
                filter: &filter,
                cwd: Path::new("/w"),
                pycache_prefix: None,
                sudo: true,
                files: &FakeDisk,
            },
        );
        let command = profile.summary.suggested_filter.unwrap().command;
        assert!(
            command.starts_with("sudo forkmon run --filter "),
            "{command}"
        );
    }

    #[test]
    fn no_suggestion_when_only_subprocesses_read_the_users_files() {
        let run = run_of(vec![
            open(1, 100, "/usr/lib/x.so"),
            open(55, 200, "/w/main.c"),
        ]);
        let profile = analyze_in("/w", &run, &[]);
        assert_eq!(profile.summary.suggested_filter, None);
        assert!(profile.summary.best_checkpoints.is_empty());
        let why = profile.summary.no_checkpoint.unwrap();
        assert!(why.contains("subprocesses"), "{why}");
    }

    #[test]
    fn counts_what_the_filter_matches_and_the_processes() {
        let run = run_of(vec![
            open(2, 100, "/w/a.lua"),
            open(3, 100, "/w/a.lua"),
            open(4, 100, "/w/b.txt"),
        ]);
        let profile = analyze_in("/w", &run, &["*.lua"]);
        assert_eq!(profile.summary.files_matched, 1);
        assert_eq!(profile.summary.opens_matched, 2);
        assert!(profile.processes[0].program && !profile.processes[1].program);
        assert_eq!(profile.processes[0].opens, 3);
        assert_eq!(profile.processes[0].stub_ms, Some(1.0));
        assert_eq!(
            profile.processes[0].execs,
            [Exec {
                ms: 0.5,
                comm: "python3".into()
            }]
        );
        assert!(profile.processes[1].execs.is_empty());
        assert_eq!(profile.processes[1].start_ms, 50.0);
        assert_eq!(profile.filter, "*.lua");
    }
}
