//! `cargo xtask bench [--quick]`: what forkmon costs, each figure next to a
//! baseline measured in the same run.
//!
//! The machine this runs on is shared and noisy, so nothing here asserts a
//! time: every figure is a distribution over its runs (median, p90, p99,
//! min, max) printed next to its baseline and their difference or ratio,
//! and the goals are printed as met / not met. A figure that fails records
//! its error (with forkmon's stderr) and the others still run. Results: a
//! table on stdout and `target/bench/report.json`.
//!
//! 1. openat+close cost: no forkmon / forkmon attached but this process not
//!    traced / traced but not matching, interleaved in rounds.
//! 2. Checkpoint cost: an open that is checkpointed vs a plain `fork()` of
//!    the same process.
//! 3. Resume latency: file written → resumed child running, per size and
//!    delays.
//! 4. Full restart (1 s start-up, from scratch) vs resume.
//! 5. Memory of a 100 MB checkpoint (PSS, Private, page tables).
//! 6. Scale: 1000 checkpoints — creation time, memory, resume latency.
//! 7. Real programs (lua5.4 with a 200 MB heap, python3 after heavy
//!    imports) and forkmon's resume next to the physical limit (an inotify
//!    waiter), and what copy-on-write costs a heap written at once.
//! 8. Restarts from scratch (node, a static binary): forkmon next to
//!    `node --watch` and watchexec.
//!
//! The C fixtures live in `bench/fixtures/` and are built into
//! `target/bench/`. Every process started here is a
//! [`tests::process::Process`] (the driver the integration tests use too),
//! which stops it (SIGINT, then SIGKILL after 5 s) when dropped, and every
//! wait has a deadline.
//!
//! [`figures`] holds one module per figure (its method, its rows and
//! goals), [`harness`] what they share to start, time and stop processes,
//! and [`report`] the statistics, the table and the JSON.

use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{build, root_dir, setup};
use harness::Bench;
use report::{Report, Section};

mod figures;
mod harness;
mod report;

pub fn run(quick: bool, only: &[u8]) -> anyhow::Result<()> {
    let started = Instant::now();
    setup::run(setup::Mode::IfMissing)?;
    let forkmon = build(true)?;
    let out_dir = root_dir().join("target").join("bench");
    harness::compile_fixtures(&out_dir)?;
    harness::raise_nofile_limit();
    let bench = Bench {
        plan: Plan::new(quick),
        forkmon,
        bin: out_dir.clone(),
        nonce: std::process::id(),
    };
    let load_before = report::loadavg();
    let measuring = Instant::now();
    let mut sections = Vec::new();
    for (number, (title, figure)) in (1..).zip(figures::FIGURES) {
        if !only.is_empty() && !only.contains(&number) {
            continue;
        }
        settle();
        eprintln!("xtask bench: {title}…");
        let figure_started = Instant::now();
        let mut section = Section::new(title);
        let result = figure(&bench, &mut section);
        section.attempt("figure", result);
        eprintln!(
            "xtask bench: {title}: {:.0} s, {} error(s)",
            figure_started.elapsed().as_secs_f64(),
            section.errors.len()
        );
        sections.push(section);
    }
    let report = Report {
        quick,
        sections,
        measured: measuring.elapsed(),
        total: started.elapsed(),
        load: (load_before, report::loadavg()),
    };
    print!("{report}");
    let path = out_dir.join("report.json");
    fs::write(&path, serde_json::to_string_pretty(&report.to_json())?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("report: {}", path.display());
    Ok(())
}

/// Waits (at most two minutes) until the machine is quiet: at most two
/// tasks running, ten samples 100 ms apart in a row. A figure must not
/// measure the end of the one before (killing the 2000 processes of
/// figure 6 kept both CPUs busy, and figure 7's latencies with them).
fn settle() {
    let running = || {
        fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| {
                stat.lines()
                    .find_map(|l| l.strip_prefix("procs_running "))
                    .and_then(|n| n.trim().parse::<u32>().ok())
            })
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut quiet = 0;
    while quiet < 10 && Instant::now() < deadline {
        // This process is one of them.
        quiet = if running() <= 2 { quiet + 1 } else { 0 };
        std::thread::sleep(Duration::from_millis(100));
    }
    if quiet < 10 {
        eprintln!("xtask bench: the machine is still busy; measuring anyway");
    }
}

/// How many runs of what: `--quick` or the full run.
pub struct Plan {
    pub openat_rounds: usize,
    pub openat_calls: u64,
    pub sizes_mb: &'static [u64],
    pub checkpoint_runs: usize,
    pub resumes: usize,
    pub restarts: usize,
    pub memory_runs: usize,
    pub scale_sessions: usize,
    pub scale_last_resumes: usize,
    /// For making all 1000 checkpoints.
    pub scale_deadline: Duration,
}

impl Plan {
    pub fn new(quick: bool) -> Self {
        if quick {
            Plan {
                openat_rounds: 5,
                openat_calls: 100_000,
                sizes_mb: &[10, 100],
                checkpoint_runs: 3,
                resumes: 10,
                restarts: 3,
                memory_runs: 2,
                scale_sessions: 1,
                scale_last_resumes: 3,
                scale_deadline: Duration::from_secs(100),
            }
        } else {
            Plan {
                openat_rounds: 15,
                openat_calls: 300_000,
                sizes_mb: &[10, 100, 1024],
                checkpoint_runs: 10,
                resumes: 50,
                restarts: 10,
                memory_runs: 5,
                scale_sessions: 3,
                scale_last_resumes: 10,
                scale_deadline: Duration::from_secs(240),
            }
        }
    }
}
