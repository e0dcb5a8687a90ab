//! Figure 7: real programs, each next to its limit measured in the same
//! run.
//!
//! - The physical limit of any resume: `waiter` (inotify on the directory,
//!   then read the file and print), timed as forkmon's resume is.
//! - A lua5.4 program with a ~200 MB heap that `require`s the edited
//!   module, and a python3 program that imports it after heavy imports
//!   (bytecode caches on): the resume next to the program's own time from
//!   that open to its output in a bare run.
//! - What copy-on-write costs a resumed program that writes its whole heap
//!   at once: Lua's full collection, resumed and bare.
use std::{
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
};

use anyhow::Context as _;
use tests::{forkmon::Run, process::Process};

use super::{Delays, MEMORY_MB, resume::measure_resumes};
use crate::{
    as_root,
    bench::{
        harness::{
            Bench, RESUME_TIMEOUT, START_TIMEOUT, monotonic_ns, number, setup, start, tempdir,
            within, write_timed,
        },
        report::{Section, Stats},
    },
    root_dir,
};

/// The Lua program's heap.
const LUA_HEAP_MB: u64 = 200;
/// The goals: a resume within this many times the reference, plus the
/// physical limit for the real programs.
const GOAL_RATIO: f64 = 1.5;
/// Between changes to a real program: as a person edits, long enough for
/// the program to finish and its standby to be ready (and warmed).
const EDIT_SPACING: std::time::Duration = std::time::Duration::from_secs(1);

pub fn real_programs(b: &Bench, s: &mut Section) -> anyhow::Result<()> {
    let n = b.plan.resumes;
    s.note(format!(
        "changes written as figure 3 writes them (one write(2) over a file of the same length), \
         forkmon at delays 0/0: {n} for the waiter and the C fixture (50 ms apart), {} for Lua \
         (1 s apart, as a person edits: the standby is ready) and {n} for Python (0.5 s apart), \
         each with and without the standby's pages copied ahead (FORKMON_NO_PRECOPY); bare \
         runs: {} each, a fresh program that says \"ready\" before the open and is sent a byte. \
         \"program clock\": from the write (or the byte) to the program's own CLOCK_MONOTONIC \
         stamp after it read the file; \"read\": to the bench reading the program's line (Lua \
         has no monotonic clock; the pipe and the bench's wake-up are in every row timed so). \
         Limit: `waiter`, inotify on the directory, then read the file and print — what any \
         tool must do at least. At the save's end (the writer's close, as forkmon: a save of \
         several writes must not run half a file) for the goals; at the first write, for \
         reference",
        b.plan.restarts * 2,
        b.plan.restarts
    ));
    waiter(b, s, false);
    let limit = waiter(b, s, true);
    // forkmon's resume of the resume fixture, as in figure 3.
    let mut resumed = Vec::new();
    let measured = measure_resumes(b, MEMORY_MB, Delays::ZERO, &[], &[], n, &mut resumed);
    let latency: Vec<f64> = resumed.iter().map(|r| r.latency_ms).collect();
    let resume = s.row(
        format!("forkmon resume, C fixture {MEMORY_MB} MB: program clock"),
        "ms",
        &latency,
    );
    s.attempt("forkmon resume", measured);
    s.goal(
        format!("forkmon's resume ≤ {GOAL_RATIO} × the limit (medians, program clock)"),
        resume.map(|r| r.median),
        limit.program.map_or(f64::NAN, |l| GOAL_RATIO * l.median),
        "ms",
    );
    let lua = lua(b, s, limit.read);
    s.attempt("lua5.4", lua);
    let python = python(b, s, limit.program);
    s.attempt("python3", python);
    Ok(())
}

/// The limit's medians, both ways of timing.
#[derive(Clone, Copy, Default)]
struct Limit {
    program: Option<Stats>,
    read: Option<Stats>,
}

/// One change of `file` to `content` (and a newline), and the program's
/// line that ends with ` content={tag}`: (ms by the program's clock if its
/// line has `t=`, ms until the bench read it).
fn change(p: &mut Process, file: &Path, content: &str, tag: &str) -> anyhow::Result<(f64, f64)> {
    let wanted = format!("content={tag}");
    let (_, written) =
        write_timed(file, content).with_context(|| format!("cannot write {}", file.display()))?;
    let line = p.line(within(RESUME_TIMEOUT), |l| l.ends_with(&wanted))?;
    let read = monotonic_ns();
    let program = number(&line, "t").map_or(f64::NAN, |t| (t - written as f64) / 1e6);
    Ok((program, (read - written) as f64 / 1e6))
}

/// `at_close`: woken at the save's end only (see `waiter.c`).
fn waiter(b: &Bench, s: &mut Section, at_close: bool) -> Limit {
    let (mut program, mut read) = (Vec::new(), Vec::new());
    let measured = (|| {
        let dir = tempdir()?;
        let data = dir.path().join("data.txt");
        fs::write(&data, format!("{}\n", b.content("i", 0)))?;
        let mut cmd = Command::new(b.bin.join("waiter"));
        cmd.current_dir(dir.path());
        if at_close {
            cmd.arg("close");
        }
        let mut waiter = start("waiter", cmd, false)?;
        waiter.line(within(START_TIMEOUT), |l| l == "ready")?;
        for k in 0..b.plan.resumes {
            thread::sleep(Delays::ZERO.spacing());
            let tag = b.content("w", k);
            let (p, r) = change(&mut waiter, &data, &tag, &tag)?;
            program.push(p);
            read.push(r);
        }
        anyhow::Ok(())
    })();
    let when = if at_close {
        "at the save's end"
    } else {
        "at the first write"
    };
    let limit = Limit {
        program: s.row(
            format!("limit (inotify waiter, {when}): program clock"),
            "ms",
            &program,
        ),
        read: s.row(format!("limit (inotify waiter, {when}): read"), "ms", &read),
    };
    s.attempt("waiter", measured);
    limit
}

fn fixture(name: &str) -> PathBuf {
    root_dir().join("bench").join("fixtures").join(name)
}

/// A bare run: the program says "ready" before the open, the bench sends
/// a line and times from there to its line with `tag` (and, with `gc`,
/// reads its `gc_ms=` line). Returns (program-clock ms, read ms, gc ms).
fn bare_once(cmd: Command, what: &str, tag: &str, gc: bool) -> anyhow::Result<[f64; 3]> {
    let mut p = start(what, cmd, true)?;
    p.line(within(START_TIMEOUT), |l| l == "ready")?;
    let before = monotonic_ns();
    p.send(b"\n")?;
    let wanted = format!("content={tag}");
    let line = p.line(within(RESUME_TIMEOUT), |l| l.ends_with(&wanted))?;
    let read = monotonic_ns();
    let program = number(&line, "t").map_or(f64::NAN, |t| (t - before as f64) / 1e6);
    let gc_ms = if gc {
        let line = p.line(within(RESUME_TIMEOUT), |l| l.starts_with("gc_ms="))?;
        number(&line, "gc_ms")?
    } else {
        f64::NAN
    };
    p.wait_exit(std::time::Duration::from_secs(10))?;
    Ok([program, (read - before) as f64 / 1e6, gc_ms])
}

/// `lua5.4 heap.lua 200 gc`: bare runs, then forkmon sessions resumed at
/// each change of edited.lua, with and without the standby's pages copied
/// ahead.
fn lua(b: &Bench, s: &mut Section, limit: Option<Stats>) -> anyhow::Result<()> {
    let script = fixture("heap.lua");
    let dir = tempdir()?;
    let module = dir.path().join("edited.lua");
    let source = |tag: &str| format!("return \"{tag}\"");
    let initial = b.content("i", 0);
    fs::write(&module, format!("{}\n", source(&initial)))?;
    let (mut bare, mut bare_gc) = (Vec::new(), Vec::new());
    let bare_runs = (0..b.plan.restarts).try_for_each(|_| {
        let mut cmd = Command::new("lua5.4");
        cmd.arg(&script)
            .args([&LUA_HEAP_MB.to_string(), "wait", "gc"])
            .current_dir(dir.path());
        let [_, read, gc] = bare_once(cmd, "lua5.4 heap.lua (bare)", &initial, true)?;
        bare.push(read);
        bare_gc.push(gc);
        anyhow::Ok(())
    });
    let what = format!("lua5.4, {LUA_HEAP_MB} MB heap, require");
    let bare = s.row(
        format!("{what}: bare, require → output (read)"),
        "ms",
        &bare,
    );
    let gc_bare = s.row(
        format!("{what}: full collection after it, bare (CPU)"),
        "ms",
        &bare_gc,
    );
    s.attempt("lua5.4 bare runs", bare_runs);
    for precopy in [true, false] {
        let (mut resume, mut resumed_gc) = (Vec::new(), Vec::new());
        let how = if precopy {
            ""
        } else {
            ", no pages copied ahead"
        };
        let resumes = (|| {
            let mut forkmon = session(
                b,
                dir.path(),
                [
                    OsStr::new("lua5.4"),
                    script.as_os_str(),
                    OsStr::new(&LUA_HEAP_MB.to_string()),
                    OsStr::new("gc"),
                ],
                precopy,
            )?;
            forkmon.line(within(START_TIMEOUT), |l| l.starts_with("gc_ms="))?;
            for k in 0..b.plan.restarts * 2 {
                thread::sleep(EDIT_SPACING);
                let tag = b.content(if precopy { "l" } else { "n" }, k);
                let (_, read) = change(&mut forkmon, &module, &source(&tag), &tag)?;
                resume.push(read);
                let gc = forkmon.line(within(RESUME_TIMEOUT), |l| {
                    l.starts_with("gc_ms=") && l.ends_with(&tag)
                })?;
                resumed_gc.push(number(&gc, "gc_ms")?);
            }
            anyhow::Ok(())
        })();
        let resumed = s.row(format!("{what}: forkmon resume{how} (read)"), "ms", &resume);
        if precopy {
            s.goal(
                format!("{what}: resume ≤ {GOAL_RATIO} × bare + limit (medians, read)"),
                resumed.map(|r| r.median),
                goal(bare, limit),
                "ms",
            );
        }
        let gc_resumed = s.row(
            format!("{what}: full collection after it, resumed{how} (CPU)"),
            "ms",
            &resumed_gc,
        );
        if let (Some(bare), Some(resumed)) = (gc_bare, gc_resumed) {
            s.note(format!(
                "copy-on-write of a heap written at once ({LUA_HEAP_MB} MB Lua, full \
                 collection){how}: resumed − bare = {:.1} ms (medians)",
                resumed.median - bare.median
            ));
        }
        s.attempt(format!("lua5.4 resumes{how}"), resumes);
    }
    Ok(())
}

/// `forkmon run --quiet` at delays 0/0 of `program` in `dir`, Python as
/// users run it, and with the standby's pages copied ahead or not.
fn session(
    b: &Bench,
    dir: &Path,
    program: impl IntoIterator<Item = impl AsRef<OsStr>>,
    precopy: bool,
) -> anyhow::Result<tests::forkmon::Forkmon> {
    let mut run = Run::new(
        as_root(&b.forkmon),
        dir,
        ["--quiet"]
            .into_iter()
            .map(String::from)
            .chain(Delays::ZERO.options()),
        program,
    );
    python_env(&mut run.command);
    if !precopy {
        run.command.env("FORKMON_NO_PRECOPY", "1");
    }
    run.start("forkmon run", setup(false))
}

fn goal(bare: Option<Stats>, limit: Option<Stats>) -> f64 {
    match (bare, limit) {
        (Some(bare), Some(limit)) => GOAL_RATIO * bare.median + limit.median,
        _ => f64::NAN,
    }
}

/// python3 as users run it: bytecode caches on, stdout buffered (forkmon
/// unbuffers it itself).
fn python_env(cmd: &mut Command) {
    cmd.env_remove("PYTHONDONTWRITEBYTECODE")
        .env_remove("PYTHONUNBUFFERED");
}

/// `python3 heavy.py`: bare runs (after one that writes the caches), then
/// forkmon sessions resumed at each change of edited.py, with and without
/// the standby's pages copied ahead.
fn python(b: &Bench, s: &mut Section, limit: Option<Stats>) -> anyhow::Result<()> {
    let script = fixture("heavy.py");
    let dir = tempdir()?;
    let module = dir.path().join("edited.py");
    let source = |tag: &str| format!("VALUE = \"{tag}\"");
    let initial = b.content("i", 0);
    fs::write(&module, format!("{}\n", source(&initial)))?;
    let python = |wait: bool| {
        let mut cmd = Command::new("python3");
        cmd.arg(&script).current_dir(dir.path());
        if wait {
            cmd.arg("wait");
        }
        python_env(&mut cmd);
        cmd
    };
    // The caches of an earlier run, as users have them.
    let status = python(false).stdout(std::process::Stdio::null()).status()?;
    anyhow::ensure!(status.success(), "python3 heavy.py: {status}");
    let mut bare = Vec::new();
    let bare_runs = (1..=b.plan.restarts).try_for_each(|k| {
        // As after an edit: the source's mtime (whole seconds in the
        // cache's header) no longer matches, so Python opens the cache,
        // finds it stale, compiles the source and writes the cache again
        // (a resumed import is handed no cache, and compiles too).
        let mtime = std::time::SystemTime::now() + std::time::Duration::from_secs(k as u64);
        fs::File::options()
            .write(true)
            .open(&module)?
            .set_modified(mtime)?;
        let [program, _, _] = bare_once(python(true), "python3 heavy.py (bare)", &initial, false)?;
        bare.push(program);
        anyhow::Ok(())
    });
    let what = "python3, heavy imports, import";
    let bare = s.row(
        format!("{what}: bare, stale cache (mtime), import → output (program clock)"),
        "ms",
        &bare,
    );
    s.attempt("python3 bare runs", bare_runs);
    for precopy in [true, false] {
        let how = if precopy {
            ""
        } else {
            ", no pages copied ahead"
        };
        let mut resume = Vec::new();
        let resumes = (|| {
            let mut forkmon = session(
                b,
                dir.path(),
                [OsStr::new("python3"), script.as_os_str()],
                precopy,
            )?;
            forkmon.line(within(START_TIMEOUT), |l| l.contains(" content="))?;
            for k in 0..b.plan.resumes {
                thread::sleep(EDIT_SPACING / 2);
                let tag = b.content(if precopy { "p" } else { "q" }, k);
                let (program, _) = change(&mut forkmon, &module, &source(&tag), &tag)?;
                resume.push(program);
            }
            anyhow::Ok(())
        })();
        let resumed = s.row(
            format!("{what}: forkmon resume{how} (program clock)"),
            "ms",
            &resume,
        );
        if precopy {
            s.goal(
                format!("{what}: resume ≤ {GOAL_RATIO} × bare + limit (medians, program clock)"),
                resumed.map(|r| r.median),
                goal(bare, limit),
                "ms",
            );
        }
        s.attempt(format!("python3 resumes{how}"), resumes);
    }
    Ok(())
}
