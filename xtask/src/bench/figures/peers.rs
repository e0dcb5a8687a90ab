//! Figure 8: restarts from scratch, where no checkpoint can serve — a node
//! program (threads) and a static binary (no stub) — by forkmon and by the
//! tools users would pick instead, in the same run: `node --watch` for the
//! node program, watchexec for both. A tool that is not installed is
//! skipped with one line saying how to install it.
use std::{
    ffi::OsString,
    fs,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::Context as _;
use tests::process::Process;

use super::Delays;
use crate::{
    bench::{
        harness::{
            Bench, RESUME_TIMEOUT, START_TIMEOUT, number, start, tempdir, within, write_timed,
        },
        report::{Section, Stats},
    },
    root_dir,
};

/// Between changes: the last run is over (node takes ~50 ms to start),
/// and a tool that ran the program twice for one save is done too.
const SPACING: Duration = Duration::from_millis(300);

/// A program that forkmon can only restart.
struct Program {
    name: &'static str,
    /// The file edited, and its contents for a tag.
    file: &'static str,
    source: fn(&str) -> String,
    argv: Vec<OsString>,
}

pub fn restart_peers(b: &Bench, s: &mut Section) -> anyhow::Result<()> {
    let n = b.plan.restarts * 2;
    s.note(format!(
        "{n} changes per tool and program, {SPACING:?} apart, written as in figure 3; from the \
         write returning to the restarted program's CLOCK_MONOTONIC stamp (its first output); \
         every tool at its smallest delay: forkmon --restart-delay 0 (default 50 ms), \
         watchexec -d 0 (default 50 ms), node --watch (none to set)"
    ));
    let node = Program {
        name: "node (threads)",
        file: "data.js",
        source: |tag| format!("module.exports = \"{tag}\";"),
        argv: vec![
            "node".into(),
            root_dir()
                .join("bench/fixtures/watched.js")
                .into_os_string(),
        ],
    };
    let reader = Program {
        name: "static binary",
        file: "data.txt",
        source: |tag| tag.to_string(),
        argv: vec![b.bin.join("reader").into_os_string()],
    };
    let watchexec = installed("watchexec", "--version");
    if !watchexec {
        s.note("watchexec is not installed: skipped (`cargo install watchexec-cli`)".into());
    }
    let node_watch = installed("node", "--version");
    if !node_watch {
        s.note("node is not installed: its program skipped (`apt-get install nodejs`)".into());
    }
    for program in [node, reader] {
        if program.argv[0] == "node" && !node_watch {
            continue;
        }
        let forkmon = measure(b, s, &program, "forkmon", n, |dir| {
            let mut cmd = crate::as_root(&b.forkmon);
            cmd.current_dir(dir)
                .args(["run", "--quiet"])
                .args(Delays::ZERO.options())
                .arg("--")
                .args(&program.argv);
            cmd
        });
        if program.argv[0] == "node" {
            let peer = measure(b, s, &program, "node --watch", n, |dir| {
                let mut cmd = Command::new("node");
                cmd.current_dir(dir).arg("--watch").args(&program.argv[1..]);
                cmd
            });
            compare(s, &program, forkmon, "node --watch", peer);
        }
        if watchexec {
            let peer = measure(b, s, &program, "watchexec", n, |dir| {
                let mut cmd = Command::new("watchexec");
                cmd.current_dir(dir)
                    .args(["-d", "0", "-w"])
                    .arg(dir)
                    .arg("--")
                    .args(&program.argv);
                cmd
            });
            compare(s, &program, forkmon, "watchexec", peer);
        }
    }
    Ok(())
}

fn installed(tool: &str, version: &str) -> bool {
    Command::new(tool)
        .arg(version)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// One session of `tool` running `program`: `n` changes, each timed to the
/// restarted program's stamp. Adds the row; returns its statistics.
fn measure(
    b: &Bench,
    s: &mut Section,
    program: &Program,
    tool: &str,
    n: usize,
    command: impl FnOnce(&Path) -> Command,
) -> Option<Stats> {
    let mut restarts = Vec::new();
    let measured = (|| {
        let dir = tempdir()?;
        let file = dir.path().join(program.file);
        let initial = b.content("i", 0);
        fs::write(&file, format!("{}\n", (program.source)(&initial)))?;
        let mut p = start(
            format!("{tool} {}", program.name),
            command(dir.path()),
            false,
        )?;
        p.line(within(START_TIMEOUT), |l| {
            l.ends_with(&format!("content={initial}"))
        })?;
        for k in 0..n {
            thread::sleep(SPACING);
            let tag = b.content("r", k);
            restarts.push(restart_once(&mut p, &file, &(program.source)(&tag), &tag)?);
        }
        anyhow::Ok(())
    })();
    let stats = s.row(
        format!("{}: restart by {tool}", program.name),
        "ms",
        &restarts,
    );
    s.attempt(format!("{tool} {}", program.name), measured);
    stats
}

fn restart_once(p: &mut Process, file: &Path, content: &str, tag: &str) -> anyhow::Result<f64> {
    let wanted = format!("content={tag}");
    let (_, written) =
        write_timed(file, content).with_context(|| format!("cannot write {}", file.display()))?;
    let line = p.line(within(RESUME_TIMEOUT), |l| l.ends_with(&wanted))?;
    Ok((number(&line, "t")? - written as f64) / 1e6)
}

fn compare(
    s: &mut Section,
    program: &Program,
    forkmon: Option<Stats>,
    peer: &str,
    theirs: Option<Stats>,
) {
    if let (Some(ours), Some(theirs)) = (forkmon, theirs) {
        s.note(format!(
            "{}: forkmon's restart / {peer}'s = {:.2} (medians {:.1} / {:.1} ms)",
            program.name,
            ours.median / theirs.median,
            ours.median,
            theirs.median
        ));
    }
}
