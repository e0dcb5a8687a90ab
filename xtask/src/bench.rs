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
//!
//! The C fixtures live in `bench/fixtures/` and are built into
//! `target/bench/`. Every process started here is wrapped in [`Running`],
//! which stops it (SIGINT, then SIGKILL after 5 s) when dropped, and every
//! wait has a deadline.
use std::{
    collections::{HashSet, VecDeque},
    fmt, fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::{as_root, build, is_root, root_dir, run_checked, setup};

const FIXTURES: &[&str] = &["openat_loop", "checkpoint", "resume", "many_files"];
/// Figure 5 and 4 use one representative size.
const MEMORY_MB: u64 = 100;
const RESTART_MB: u64 = 100;
const STARTUP_MS: u64 = 1000;
const SCALE_FILES: usize = 1000;
/// SIGINT, then SIGKILL after this long.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// forkmon loading its eBPF programs, plus touching up to 1 GB.
const START_TIMEOUT: Duration = Duration::from_secs(120);
const RESUME_TIMEOUT: Duration = Duration::from_secs(20);
/// Between two lines while 1000 checkpoints are being made.
const SCALE_LINE_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between changes when the delays are 0: lets the previous run end.
const SETTLE: Duration = Duration::from_millis(50);
const STDERR_KEPT: usize = 20;
/// Before reading a tree's memory: lets forkmon fork its waiting children.
const TREE_SETTLE: Duration = Duration::from_millis(200);

pub fn run(quick: bool, only: &[u8]) -> anyhow::Result<()> {
    let started = Instant::now();
    setup::run(setup::Mode::IfMissing)?;
    let forkmon = build(true)?;
    let out_dir = root_dir().join("target").join("bench");
    compile_fixtures(&out_dir)?;
    raise_nofile_limit();
    let bench = Bench {
        plan: Plan::new(quick),
        forkmon,
        bin: out_dir.clone(),
        nonce: std::process::id(),
    };
    let load_before = loadavg();
    let measuring = Instant::now();
    let figures: [(&str, Figure); 6] = [
        ("1. openat+close cost", openat_cost),
        ("2. checkpoint cost", checkpoint_cost),
        ("3. resume latency", resume_latency),
        ("4. full restart vs resume", full_restart),
        ("5. memory of a checkpoint", memory),
        ("6. scale: 1000 checkpoints", scale),
    ];
    let mut sections = Vec::new();
    for (number, (title, figure)) in (1..).zip(figures) {
        if !only.is_empty() && !only.contains(&number) {
            continue;
        }
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
        load: (load_before, loadavg()),
    };
    print!("{report}");
    let path = out_dir.join("report.json");
    fs::write(&path, serde_json::to_string_pretty(&report.to_json())?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("report: {}", path.display());
    Ok(())
}

type Figure = fn(&Bench, &mut Section) -> anyhow::Result<()>;

/// How many runs of what: `--quick` or the full run.
struct Plan {
    openat_rounds: usize,
    openat_calls: u64,
    sizes_mb: &'static [u64],
    checkpoint_runs: usize,
    resumes: usize,
    restarts: usize,
    memory_runs: usize,
    scale_sessions: usize,
    scale_last_resumes: usize,
    /// For making all 1000 checkpoints.
    scale_deadline: Duration,
}

impl Plan {
    fn new(quick: bool) -> Self {
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

struct Bench {
    plan: Plan,
    forkmon: PathBuf,
    /// Where the fixtures were built.
    bin: PathBuf,
    /// Makes the contents written to watched files unique to this run.
    nonce: u32,
}

impl Bench {
    fn forkmon(&self, dir: &Path) -> Command {
        let mut cmd = as_root(&self.forkmon);
        cmd.current_dir(dir);
        cmd
    }

    /// `forkmon run --quiet OPTIONS -- FIXTURE ARGS` in `dir`.
    fn under_forkmon(
        &self,
        dir: &Path,
        options: &[String],
        fixture: &str,
        args: &[String],
        stdin: bool,
    ) -> anyhow::Result<Running> {
        let mut cmd = self.forkmon(dir);
        cmd.args(["run", "--quiet"])
            .args(options)
            .arg("--")
            .arg(self.bin.join(fixture))
            .args(args);
        Running::start(format!("forkmon run {fixture}"), cmd, stdin)
    }

    /// The fixture alone, no forkmon.
    fn direct(&self, dir: &Path, fixture: &str, args: &[String]) -> anyhow::Result<Running> {
        self.direct_with(dir, fixture, args, false)
    }

    fn direct_with(
        &self,
        dir: &Path,
        fixture: &str,
        args: &[String],
        stdin: bool,
    ) -> anyhow::Result<Running> {
        let mut cmd = Command::new(self.bin.join(fixture));
        cmd.args(args).current_dir(dir);
        Running::start(fixture.to_string(), cmd, stdin)
    }

    /// Distinct contents, all of one length for one tag length (see
    /// [`write_timed`]).
    fn content(&self, tag: &str, k: usize) -> String {
        format!("{tag}{k:05}-{}", self.nonce)
    }
}

fn compile_fixtures(out_dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(out_dir)?;
    let sources = root_dir().join("bench").join("fixtures");
    for name in FIXTURES {
        run_checked(
            Command::new("cc")
                .args(["-O2", "-Wall", "-Wextra", "-o"])
                .arg(out_dir.join(name))
                .arg(sources.join(format!("{name}.c"))),
        )?;
    }
    Ok(())
}

/// forkmon holds descriptors per checkpoint: give it (it inherits ours) the
/// hard limit.
fn raise_nofile_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

// ---------------------------------------------------------------------------
// Figure 1: openat+close cost.

fn openat_cost(b: &Bench, s: &mut Section) -> anyhow::Result<()> {
    let calls = b.plan.openat_calls;
    s.note(format!(
        "{} rounds of {calls} openat+close calls; per round (a) no forkmon, (b) `forkmon trace` \
         of another program running, (c) under `forkmon run --filter '*.nomatch'`",
        b.plan.openat_rounds
    ));
    let dir = tempdir()?;
    fs::write(dir.path().join("data.txt"), "x\n")?;
    let (mut plain, mut attached, mut traced) = (Vec::new(), Vec::new(), Vec::new());
    let measured = (0..b.plan.openat_rounds).try_for_each(|_| {
        // A round counts only when all three were measured.
        let round = (
            openat_plain(b, dir.path(), calls)?,
            openat_attached(b, dir.path(), calls)?,
            openat_traced(b, dir.path(), calls)?,
        );
        plain.push(round.0);
        attached.push(round.1);
        traced.push(round.2);
        anyhow::Ok(())
    });
    s.row("(a) no forkmon", "ns/call", &plain);
    s.row("(b) forkmon attached, not traced", "ns/call", &attached);
    s.row("(c) traced, not matching", "ns/call", &traced);
    let untraced = s.row(
        "(b) − (a)",
        "ns/call",
        &paired(&attached, &plain, |x, y| x - y),
    );
    let traced_cost = s.row(
        "(c) − (a)",
        "ns/call",
        &paired(&traced, &plain, |x, y| x - y),
    );
    s.row("(b) / (a)", "×", &paired(&attached, &plain, |x, y| x / y));
    s.row("(c) / (a)", "×", &paired(&traced, &plain, |x, y| x / y));
    s.goal(
        "openat overhead, attached but untraced ≤ 0.3 µs/call (median (b)−(a))",
        untraced.map(|st| st.median / 1e3),
        0.3,
        "µs/call",
    );
    s.goal(
        "openat overhead, traced non-matching ≤ 1 µs/call (median (c)−(a))",
        traced_cost.map(|st| st.median / 1e3),
        1.0,
        "µs/call",
    );
    measured
}

fn openat_args(calls: u64) -> Vec<String> {
    vec!["data.txt".into(), calls.to_string()]
}

fn openat_plain(b: &Bench, dir: &Path, calls: u64) -> anyhow::Result<f64> {
    let mut fixture = b.direct(dir, "openat_loop", &openat_args(calls))?;
    ns_per_call(&mut fixture)
}

/// forkmon's programs are attached (tracing a `sleep`), this process is not
/// traced.
fn openat_attached(b: &Bench, dir: &Path, calls: u64) -> anyhow::Result<f64> {
    let records = dir.join("trace.jsonl");
    let _ = fs::remove_file(&records);
    let mut cmd = b.forkmon(dir);
    cmd.args(["trace", "--json", "--output"])
        .arg(&records)
        .args(["--", "sleep", "600"]);
    let mut tracer = Running::start("forkmon trace -- sleep 600", cmd, false)?;
    // The first record (sleep's own opens) says the probes are attached.
    wait_until("forkmon trace to attach", START_TIMEOUT, || {
        tracer.check_running()?;
        Ok(fs::metadata(&records).is_ok_and(|m| m.len() > 0))
    })?;
    let mut fixture = b.direct(dir, "openat_loop", &openat_args(calls))?;
    ns_per_call(&mut fixture)
}

fn openat_traced(b: &Bench, dir: &Path, calls: u64) -> anyhow::Result<f64> {
    let options = ["--filter".to_string(), "*.nomatch".into()];
    let mut forkmon = b.under_forkmon(dir, &options, "openat_loop", &openat_args(calls), false)?;
    ns_per_call(&mut forkmon)
}

fn ns_per_call(p: &mut Running) -> anyhow::Result<f64> {
    let line = p.line(within(START_TIMEOUT), |l| l.starts_with("ns_per_call="))?;
    p.wait_exit(Duration::from_secs(10))?;
    number(&line, "ns_per_call")
}

// ---------------------------------------------------------------------------
// Figure 2: checkpoint cost.

fn checkpoint_cost(b: &Bench, s: &mut Section) -> anyhow::Result<()> {
    s.note(format!(
        "{} runs per size, a fresh forkmon each; open = open(\"data.txt\") timed in the \
         program, checkpoint included; fork = the median of 5 plain fork()s of the same process \
         just before",
        b.plan.checkpoint_runs
    ));
    for &mb in b.plan.sizes_mb {
        let (mut fork, mut open) = (Vec::new(), Vec::new());
        let measured = (0..b.plan.checkpoint_runs).try_for_each(|_| {
            let (f, o) = checkpoint_once(b, mb)?;
            fork.push(f);
            open.push(o);
            anyhow::Ok(())
        });
        s.row(format!("{mb} MB: plain fork(), median of 5"), "µs", &fork);
        s.row(format!("{mb} MB: open, checkpointed"), "µs", &open);
        let extra = s.row(
            format!("{mb} MB: open − fork"),
            "µs",
            &paired(&open, &fork, |o, f| o - f),
        );
        s.row(
            format!("{mb} MB: open / fork"),
            "×",
            &paired(&open, &fork, |o, f| o / f),
        );
        s.goal(
            format!("checkpoint ≤ fork + 50 µs ({mb} MB, median open − fork)"),
            extra.map(|st| st.median),
            50.0,
            "µs",
        );
        s.attempt(format!("{mb} MB"), measured);
    }
    Ok(())
}

/// One run: (fork µs, checkpointed open µs).
fn checkpoint_once(b: &Bench, mb: u64) -> anyhow::Result<(f64, f64)> {
    let dir = tempdir()?;
    fs::write(dir.path().join("data.txt"), "x\n")?;
    let options = Delays::ZERO.options();
    let mut forkmon =
        b.under_forkmon(dir.path(), &options, "checkpoint", &[mb.to_string()], false)?;
    let line = forkmon.line(within(START_TIMEOUT), |l| l.contains("open_ns="))?;
    Ok((
        number(&line, "fork_ns")? / 1e3,
        number(&line, "open_ns")? / 1e3,
    ))
}

// ---------------------------------------------------------------------------
// Figure 3: resume latency.

#[derive(Clone, Copy)]
struct Delays {
    restart_ms: u64,
    ignore_ms: u64,
}

impl Delays {
    const ZERO: Delays = Delays {
        restart_ms: 0,
        ignore_ms: 0,
    };
    const DEFAULT: Delays = Delays {
        restart_ms: 50,
        ignore_ms: 200,
    };

    fn options(self) -> Vec<String> {
        vec![
            "--restart-delay".into(),
            self.restart_ms.to_string(),
            "--ignore-delay".into(),
            self.ignore_ms.to_string(),
        ]
    }

    /// Changes this far apart are never postponed by the ignore delay.
    fn spacing(self) -> Duration {
        Duration::from_millis(self.restart_ms + self.ignore_ms) + SETTLE
    }
}

impl fmt::Display for Delays {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "delays {}/{}", self.restart_ms, self.ignore_ms)
    }
}

fn resume_latency(b: &Bench, s: &mut Section) -> anyhow::Result<()> {
    s.note(format!(
        "{} resumes per configuration: from the write(2) of data.txt returning (one write over \
         a file of the same length, no truncation: forkmon's first event is that write, so \
         the restart delay starts no earlier than the latency) to the resumed child's \
         clock_gettime after reading it; delays = \
         --restart-delay/--ignore-delay ms; changes spaced by restart + ignore + 50 ms. The \
         bench writes at real-time priority, so that forkmon, woken by the write, cannot run \
         before the bench reads its clock; \"from before the write\" (taken before open) \
         bounds the latency from above",
        b.plan.resumes
    ));
    for &mb in b.plan.sizes_mb {
        for delays in [Delays::ZERO, Delays::DEFAULT] {
            let mut resumed = Vec::new();
            let measured = measure_resumes(b, mb, delays, &[], &[], b.plan.resumes, &mut resumed);
            let latency: Vec<f64> = resumed.iter().map(|r| r.latency_ms).collect();
            let mut beyond = s.row(format!("{mb} MB, {delays}: resume"), "ms", &latency);
            let bound: Vec<f64> = resumed.iter().map(|r| r.from_before_ms).collect();
            s.row(
                format!("{mb} MB, {delays}: resume, from before the write"),
                "ms",
                &bound,
            );
            if delays.restart_ms > 0 {
                let restart = delays.restart_ms as f64;
                let extra: Vec<f64> = latency.iter().map(|l| l - restart).collect();
                beyond = s.row(format!("{mb} MB, {delays}: beyond the delay"), "ms", &extra);
            }
            if mb == MEMORY_MB {
                s.goal(
                    format!("resume beyond the delay ≤ 0.1 ms ({mb} MB, {delays}, median)"),
                    beyond.map(|st| st.median),
                    0.1,
                    "ms",
                );
            }
            s.attempt(format!("{mb} MB, {delays}"), measured);
        }
    }
    // The other way: no standby, each resume forks the checkpoint anew.
    for delays in [Delays::ZERO, Delays::DEFAULT] {
        let mut resumed = Vec::new();
        let measured = measure_resumes(
            b,
            MEMORY_MB,
            delays,
            &["--no-standby"],
            &[],
            b.plan.resumes,
            &mut resumed,
        );
        let latency: Vec<f64> = resumed.iter().map(|r| r.latency_ms).collect();
        let what = format!("{MEMORY_MB} MB, {delays}, --no-standby");
        s.row(format!("{what}: resume"), "ms", &latency);
        if delays.restart_ms > 0 {
            let restart = delays.restart_ms as f64;
            let extra: Vec<f64> = latency.iter().map(|l| l - restart).collect();
            s.row(format!("{what}: beyond the delay"), "ms", &extra);
        }
        s.attempt(what, measured);
    }
    Ok(())
}

/// One forkmon session of the `resume` fixture; `count` changes of
/// data.txt, each pushed to `out` as soon as measured.
fn measure_resumes(
    b: &Bench,
    mb: u64,
    delays: Delays,
    options: &[&str],
    extra: &[String],
    count: usize,
    out: &mut Vec<Resumed>,
) -> anyhow::Result<()> {
    let dir = tempdir()?;
    let data = dir.path().join("data.txt");
    // As long as the contents written later (see `write_timed`).
    let initial = b.content("i", 0);
    fs::write(&data, format!("{initial}\n"))?;
    let mut args = vec![mb.to_string()];
    args.extend_from_slice(extra);
    let mut all_options = delays.options();
    all_options.extend(options.iter().map(|o| o.to_string()));
    let mut forkmon = b.under_forkmon(dir.path(), &all_options, "resume", &args, false)?;
    let started = format!(" content={initial}");
    forkmon.line(within(START_TIMEOUT), |l| l.ends_with(&started))?;
    for k in 0..count {
        thread::sleep(delays.spacing());
        let resumed = resume_once(&mut forkmon, &data, &b.content("r", k), RESUME_TIMEOUT)
            .with_context(|| format!("resume {} of {count}", k + 1))?;
        out.push(resumed);
    }
    Ok(())
}

struct Resumed {
    /// From the write returning to the program's timestamp `t=`.
    latency_ms: f64,
    /// From before the file was opened for writing: an upper bound.
    from_before_ms: f64,
    /// The resumed program's line.
    line: String,
}

/// Rewrites `file` with `content` and waits for the program's line showing
/// it.
fn resume_once(
    p: &mut Running,
    file: &Path,
    content: &str,
    timeout: Duration,
) -> anyhow::Result<Resumed> {
    let wanted = format!(" content={content}");
    let (before, written) =
        write_timed(file, content).with_context(|| format!("cannot write {}", file.display()))?;
    let line = p.line(within(timeout), |l| l.ends_with(&wanted))?;
    let t = number(&line, "t")?;
    Ok(Resumed {
        latency_ms: (t - written as f64) / 1e6,
        from_before_ms: (t - before as f64) / 1e6,
        line,
    })
}

/// Writes `content` and a newline to `file`: CLOCK_MONOTONIC before the
/// open and right after the write returns.
///
/// Over a file of the same length it is one write(2), without truncation:
/// the first event forkmon sees then comes from that write, just before
/// the timestamp, so a restart delay counted from it starts no earlier than
/// the latency does. A truncating open would start it before the write.
///
/// The write runs at real-time priority: forkmon, woken by it, must not run
/// on this CPU between the write and the clock read (it would make the
/// latency look shorter by as long as it runs).
fn write_timed(file: &Path, content: &str) -> std::io::Result<(i64, i64)> {
    let data = format!("{content}\n");
    let same_length = fs::metadata(file).is_ok_and(|m| m.len() == data.len() as u64);
    let unpreempted = RealTime::enter();
    let before = monotonic_ns();
    let mut f = if same_length {
        fs::OpenOptions::new().write(true).open(file)?
    } else {
        fs::File::create(file)?
    };
    f.write_all(data.as_bytes())?;
    let written = monotonic_ns();
    // Not a moment longer: holding the CPU would delay forkmon, too.
    drop(unpreempted);
    drop(f);
    Ok((before, written))
}

/// This thread at `SCHED_FIFO` until dropped (the bench runs as root).
struct RealTime;

impl RealTime {
    fn enter() -> RealTime {
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: sets this thread's policy from a valid sched_param.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
            eprintln!(
                "xtask bench: cannot raise the writer's priority: {}",
                std::io::Error::last_os_error()
            );
        }
        RealTime
    }
}

impl Drop for RealTime {
    fn drop(&mut self) {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: as above.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
    }
}

// ---------------------------------------------------------------------------
// Figure 4: full restart vs resume.

fn full_restart(b: &Bench, s: &mut Section) -> anyhow::Result<()> {
    let n = b.plan.restarts;
    s.note(format!(
        "the resume fixture with {RESTART_MB} MB and a {STARTUP_MS} ms start-up before it \
         opens data.txt; {n} restarts from scratch (write, then start the program, no forkmon) \
         and {n} resumes by forkmon (delays 0/0): from before the write to the program's line; \
         then the same with a lua5.4 program whose start-up is real work (startup.lua)"
    ));
    let args = startup_args(RESTART_MB);
    let mut restart = Vec::new();
    let restarted = (0..n).try_for_each(|k| {
        restart.push(restart_once(b, &args, &b.content("restart", k))?);
        anyhow::Ok(())
    });
    let mut resumes = Vec::new();
    let resumed = measure_resumes(
        b,
        RESTART_MB,
        Delays::ZERO,
        &[],
        &args[1..],
        n,
        &mut resumes,
    );
    let resume: Vec<f64> = resumes.iter().map(|r| r.from_before_ms).collect();
    restart_rows(s, "", &restart, &resume, restarted, resumed);
    lua_restart(b, s);
    Ok(())
}

fn restart_rows(
    s: &mut Section,
    what: &str,
    restart: &[f64],
    resume: &[f64],
    restarted: anyhow::Result<()>,
    resumed: anyhow::Result<()>,
) {
    s.row(format!("{what}restart from scratch"), "ms", restart);
    s.row(format!("{what}resume by forkmon"), "ms", resume);
    s.row(
        format!("{what}restart / resume (speed-up)"),
        "×",
        &paired(restart, resume, |r, m| r / m),
    );
    s.attempt(format!("{what}restarts"), restarted);
    s.attempt(format!("{what}resumes"), resumed);
}

/// The same comparison with bench/fixtures/startup.lua under lua5.4: its
/// start-up is real work, not a sleep. Lua has no monotonic clock, so both
/// ways are timed by the bench, from before the write to its line.
fn lua_restart(b: &Bench, s: &mut Section) {
    let n = b.plan.restarts;
    let script = root_dir()
        .join("bench")
        .join("fixtures")
        .join("startup.lua");
    let lua = |dir: &Path| {
        let mut cmd = Command::new("lua5.4");
        cmd.arg(&script).current_dir(dir);
        cmd
    };
    let mut restart = Vec::new();
    let restarted = (0..n).try_for_each(|k| {
        let dir = tempdir()?;
        let content = b.content("lua-restart", k);
        let (before, _) = write_timed(&dir.path().join("data.txt"), &content)?;
        let mut program = Running::start("lua5.4 startup.lua", lua(dir.path()), false)?;
        program.line(within(START_TIMEOUT), |l| {
            l.ends_with(&format!(" content={content}"))
        })?;
        restart.push((monotonic_ns() - before) as f64 / 1e6);
        program.wait_exit(Duration::from_secs(10))?;
        anyhow::Ok(())
    });
    let mut resume = Vec::new();
    let resumed = (|| {
        let dir = tempdir()?;
        let data = dir.path().join("data.txt");
        fs::write(&data, "initial\n")?;
        let mut cmd = b.forkmon(dir.path());
        cmd.args(["run", "--quiet"])
            .args(Delays::ZERO.options())
            .arg("--")
            .arg("lua5.4")
            .arg(&script);
        let mut forkmon = Running::start("forkmon run lua5.4 startup.lua", cmd, false)?;
        forkmon.line(within(START_TIMEOUT), |l| l.ends_with(" content=initial"))?;
        for k in 0..n {
            thread::sleep(Delays::ZERO.spacing());
            let content = b.content("lua-resume", k);
            let (before, _) = write_timed(&data, &content)?;
            forkmon.line(within(RESUME_TIMEOUT), |l| {
                l.ends_with(&format!(" content={content}"))
            })?;
            resume.push((monotonic_ns() - before) as f64 / 1e6);
        }
        anyhow::Ok(())
    })();
    restart_rows(
        s,
        "lua5.4 startup.lua: ",
        &restart,
        &resume,
        restarted,
        resumed,
    );
}

fn startup_args(mb: u64) -> Vec<String> {
    vec![
        mb.to_string(),
        "--startup-ms".into(),
        STARTUP_MS.to_string(),
    ]
}

/// Write data.txt, then start the program from scratch: ms from before the
/// write until its line.
fn restart_once(b: &Bench, args: &[String], content: &str) -> anyhow::Result<f64> {
    let dir = tempdir()?;
    let (written, _) = write_timed(&dir.path().join("data.txt"), content)?;
    let mut program = b.direct(dir.path(), "resume", args)?;
    let wanted = format!(" content={content}");
    let line = program.line(within(START_TIMEOUT), |l| l.ends_with(&wanted))?;
    program.wait_exit(Duration::from_secs(10))?;
    Ok((number(&line, "t")? - written as f64) / 1e6)
}

// ---------------------------------------------------------------------------
// Figure 5: memory of a checkpoint.

/// From /proc/PID/smaps_rollup and /proc/PID/status, in KiB.
#[derive(Clone, Copy, Default)]
struct Memory {
    pss: f64,
    private: f64,
    page_tables: f64,
}

impl Memory {
    fn sum(mems: &[Memory]) -> Memory {
        mems.iter().fold(Memory::default(), |total, m| Memory {
            pss: total.pss + m.pss,
            private: total.private + m.private,
            page_tables: total.page_tables + m.page_tables,
        })
    }

    fn of(pid: i64) -> anyhow::Result<Memory> {
        let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .with_context(|| format!("cannot read /proc/{pid}/smaps_rollup"))?;
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("cannot read /proc/{pid}/status"))?;
        Ok(Memory {
            pss: kib(&rollup, "Pss:")?,
            private: kib(&rollup, "Private_Clean:")? + kib(&rollup, "Private_Dirty:")?,
            page_tables: kib(&status, "VmPTE:")?,
        })
    }
}

/// `Name:   1234 kB` → 1234.
fn kib(text: &str, name: &str) -> anyhow::Result<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no {name} line"))
}

/// A checkpoint's memory at one moment, and that of its waiting children
/// (forked ahead of a change, so that a resume costs no fork), summed.
struct Snapshot {
    checkpoint: Memory,
    waiting: usize,
    waiting_memory: Memory,
}

impl Snapshot {
    /// `in_chain`: the pids that are not waiting children (the running
    /// child, the next checkpoint).
    fn of(checkpoint: i64, in_chain: impl Fn(i64) -> bool) -> anyhow::Result<Snapshot> {
        let waiting: Vec<i64> = children_of(checkpoint)
            .into_iter()
            .filter(|&pid| !in_chain(pid))
            .collect();
        let memory = waiting
            .iter()
            .map(|&pid| Memory::of(pid))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Snapshot {
            checkpoint: Memory::of(checkpoint)?,
            waiting: waiting.len(),
            waiting_memory: Memory::sum(&memory),
        })
    }
}

/// The memory samples of figure 5, one per run and state.
#[derive(Default)]
struct MemorySamples {
    /// The checkpoint while its first child runs (shares every page).
    running: Vec<Snapshot>,
    /// The checkpoint, its child exited.
    idle: Vec<Snapshot>,
    /// The checkpoint while a resumed child runs.
    resumed: Vec<Snapshot>,
    /// That resumed child.
    child: Vec<Memory>,
    /// The program run without forkmon, in the state of `running`.
    alone: Vec<Memory>,
    /// The first child, while it runs (with `running`).
    first_child: Vec<Memory>,
}

fn memory(b: &Bench, s: &mut Section) -> anyhow::Result<()> {
    s.note(format!(
        "the resume fixture with {MEMORY_MB} MB (4 KB pages), {} runs; from \
         /proc/PID/smaps_rollup (Pss, Private_Clean+Private_Dirty) and /proc/PID/status (VmPTE)",
        b.plan.memory_runs
    ));
    let mut samples = MemorySamples::default();
    for run in 0..b.plan.memory_runs {
        let measured = memory_once(b, &mut samples);
        s.attempt(format!("run {}", run + 1), measured);
        let measured = memory_alone(b, &mut samples);
        s.attempt(format!("run {} without forkmon", run + 1), measured);
    }
    // PSS splits each shared page between the processes sharing it, so a
    // checkpoint that shares 100 MB with its child shows 50 MB of PSS
    // however little it adds. What it adds is the rise of the total: the
    // PSS of checkpoint and child together, minus that of the program run
    // alone in the same state.
    // (KiB added, the checkpoint's page tables in KiB), per run.
    let added: Vec<(f64, f64)> = samples
        .running
        .iter()
        .zip(&samples.first_child)
        .zip(&samples.alone)
        .map(|((snapshot, child), alone)| {
            let checkpoint = snapshot.checkpoint;
            (
                checkpoint.pss + child.pss - alone.pss,
                checkpoint.page_tables,
            )
        })
        .collect();
    s.row(
        "the program alone (no forkmon): PSS",
        "MiB",
        &mib(&samples.alone, |m| m.pss),
    );
    s.row(
        "checkpoint + its first child − the program alone: PSS",
        "MiB",
        &added
            .iter()
            .map(|(kib, _)| kib / 1024.0)
            .collect::<Vec<_>>(),
    );
    let cost: Vec<f64> = added.iter().map(|(kib, pte)| kib / pte).collect();
    let cost = s.row("  the same, over the checkpoint's PageTables", "×", &cost);
    s.goal(
        "PSS a checkpoint adds ≤ its PageTables (its first child running, median)",
        cost.map(|st| st.median),
        1.0,
        "× PageTables",
    );
    let states = [
        ("its first child running", &samples.running),
        ("child exited (idle)", &samples.idle),
        ("after a resume, child running", &samples.resumed),
    ];
    for (state, snapshots) in states {
        let checkpoints: Vec<Memory> = snapshots.iter().map(|s| s.checkpoint).collect();
        memory_rows(s, &format!("checkpoint, {state}"), &checkpoints);
        let waiting: Vec<f64> = snapshots.iter().map(|s| s.waiting as f64).collect();
        s.row(
            format!("  its waiting children, {state}"),
            "procs",
            &waiting,
        );
        let waiting_pss: Vec<Memory> = snapshots.iter().map(|s| s.waiting_memory).collect();
        s.row(
            format!("  their PSS, {state}"),
            "MiB",
            &mib(&waiting_pss, |m| m.pss),
        );
        let worst = checkpoints
            .iter()
            .map(|m| m.pss / m.page_tables)
            .reduce(f64::max);
        s.goal(
            format!("checkpoint PSS ≤ its PageTables ({state}, worst run)"),
            worst,
            1.0,
            "× PageTables",
        );
    }
    memory_rows(s, "the resumed child", &samples.child);
    Ok(())
}

fn memory_rows(s: &mut Section, what: &str, mems: &[Memory]) {
    s.row(format!("{what}: PSS"), "MiB", &mib(mems, |m| m.pss));
    s.row(format!("{what}: Private"), "MiB", &mib(mems, |m| m.private));
    s.row(
        format!("{what}: PageTables"),
        "MiB",
        &mib(mems, |m| m.page_tables),
    );
}

fn mib(mems: &[Memory], field: impl Fn(&Memory) -> f64) -> Vec<f64> {
    mems.iter().map(|m| field(m) / 1024.0).collect()
}

/// The resume fixture without forkmon, at the point where, under forkmon,
/// its first child runs.
fn memory_alone(b: &Bench, samples: &mut MemorySamples) -> anyhow::Result<()> {
    let dir = tempdir()?;
    fs::write(dir.path().join("data.txt"), "initial\n")?;
    let args = [MEMORY_MB.to_string(), "--hold".into()];
    let mut program = b.direct_with(dir.path(), "resume", &args, true)?;
    let line = program.line(within(START_TIMEOUT), |l| l.ends_with(" content=initial"))?;
    thread::sleep(TREE_SETTLE);
    samples
        .alone
        .push(Memory::of(number(&line, "pid")? as i64)?);
    program.send(b"x")?;
    program.wait_exit(Duration::from_secs(10))?;
    Ok(())
}

fn memory_once(b: &Bench, samples: &mut MemorySamples) -> anyhow::Result<()> {
    let dir = tempdir()?;
    let data = dir.path().join("data.txt");
    fs::write(&data, "initial\n")?;
    let args = [MEMORY_MB.to_string(), "--hold".into()];
    let mut forkmon =
        b.under_forkmon(dir.path(), &Delays::ZERO.options(), "resume", &args, true)?;
    let line = forkmon.line(within(START_TIMEOUT), |l| l.ends_with(" content=initial"))?;
    let (child, checkpoint) = (number(&line, "pid")? as i64, number(&line, "ppid")? as i64);
    thread::sleep(TREE_SETTLE);
    samples
        .running
        .push(Snapshot::of(checkpoint, |pid| pid == child)?);
    samples.first_child.push(Memory::of(child)?);

    // Let the child exit; its checkpoint reaps it.
    forkmon.send(b"x")?;
    wait_until("the child to exit", Duration::from_secs(10), || {
        Ok(!Path::new(&format!("/proc/{child}")).exists())
    })?;
    thread::sleep(TREE_SETTLE);
    samples.idle.push(Snapshot::of(checkpoint, |_| false)?);

    let resumed = resume_once(&mut forkmon, &data, &b.content("mem", 0), RESUME_TIMEOUT)?;
    let child = number(&resumed.line, "pid")? as i64;
    let parent = number(&resumed.line, "ppid")? as i64;
    if parent != checkpoint {
        bail!("resumed child {child} has parent {parent}, not the checkpoint {checkpoint}");
    }
    thread::sleep(TREE_SETTLE);
    samples
        .resumed
        .push(Snapshot::of(checkpoint, |pid| pid == child)?);
    samples.child.push(Memory::of(child)?);
    forkmon.send(b"x")
}

// ---------------------------------------------------------------------------
// Figure 6: scale.

#[derive(Default)]
struct ScaleSamples {
    /// From the program's start to its last checkpoint, s.
    created: Vec<f64>,
    /// Time from one checkpoint's line to the next, ms: the first and the
    /// last hundred checkpoints (does it grow with the depth?).
    early_steps: Vec<f64>,
    late_steps: Vec<f64>,
    /// Per checkpoint, KiB.
    pss: Vec<f64>,
    private: Vec<f64>,
    page_tables: Vec<f64>,
    /// Per session, all checkpoints together, MiB.
    total_pss: Vec<f64>,
    total_private: Vec<f64>,
    total_page_tables: Vec<f64>,
    /// Per session, the checkpoints' waiting children: how many, their PSS.
    waiting: Vec<f64>,
    waiting_pss: Vec<f64>,
    /// Resume latencies, ms.
    last: Vec<f64>,
    first: Vec<f64>,
}

fn scale(b: &Bench, s: &mut Section) -> anyhow::Result<()> {
    s.note(format!(
        "the many_files fixture opens f0000.txt … f0999.txt in order (each a checkpoint), \
         delays 0/0; {} session(s), each: creation, memory of the checkpoints, {} resumes from \
         the last file, then one from the first",
        b.plan.scale_sessions, b.plan.scale_last_resumes
    ));
    let mut samples = ScaleSamples::default();
    for session in 0..b.plan.scale_sessions {
        let measured = scale_session(b, session, &mut samples);
        s.attempt(format!("session {}", session + 1), measured);
    }
    s.row(
        "creation: program start → 1000th checkpoint",
        "s",
        &samples.created,
    );
    s.row(
        "one checkpoint, among the first 100",
        "ms",
        &samples.early_steps,
    );
    s.row(
        "one checkpoint, among the last 100",
        "ms",
        &samples.late_steps,
    );
    s.row("per checkpoint: PSS", "KiB", &samples.pss);
    s.row("per checkpoint: Private", "KiB", &samples.private);
    s.row("per checkpoint: PageTables", "KiB", &samples.page_tables);
    s.row("all checkpoints: PSS", "MiB", &samples.total_pss);
    s.row("all checkpoints: Private", "MiB", &samples.total_private);
    s.row(
        "all checkpoints: PageTables",
        "MiB",
        &samples.total_page_tables,
    );
    s.row("their waiting children", "procs", &samples.waiting);
    s.row("their waiting children: PSS", "MiB", &samples.waiting_pss);
    s.row("resume from the last file", "ms", &samples.last);
    let first = s.row("resume from the first file", "ms", &samples.first);
    s.goal(
        "resume from the first of 1000 checkpoints ≤ 5 ms (median)",
        first.map(|st| st.median),
        5.0,
        "ms",
    );
    let worst = samples
        .pss
        .iter()
        .zip(&samples.page_tables)
        .map(|(pss, pte)| pss / pte)
        .reduce(f64::max);
    s.goal(
        "checkpoint PSS ≤ its PageTables (1000 checkpoints, worst)",
        worst,
        1.0,
        "× PageTables",
    );
    Ok(())
}

fn scale_session(b: &Bench, session: usize, out: &mut ScaleSamples) -> anyhow::Result<()> {
    let dir = tempdir()?;
    let file = |i: usize| dir.path().join(format!("f{i:04}.txt"));
    for i in 0..SCALE_FILES {
        fs::write(file(i), "v0\n")?;
    }
    let args = [SCALE_FILES.to_string()];
    let options = Delays::ZERO.options();
    let mut forkmon = b.under_forkmon(dir.path(), &options, "many_files", &args, false)?;
    let chain = create_checkpoints(b, &mut forkmon, out)?;
    thread::sleep(TREE_SETTLE);
    measure_checkpoints(&chain, out)?;
    for k in 0..b.plan.scale_last_resumes {
        thread::sleep(SETTLE);
        let content = b.content(&format!("last{session}-"), k);
        let resumed = resume_once(
            &mut forkmon,
            &file(SCALE_FILES - 1),
            &content,
            RESUME_TIMEOUT,
        )
        .context("resume from the last file")?;
        out.last.push(resumed.latency_ms);
    }
    thread::sleep(SETTLE);
    let content = b.content(&format!("first{session}-"), 0);
    let resumed = resume_once(&mut forkmon, &file(0), &content, RESUME_TIMEOUT)
        .context("resume from the first file")?;
    out.first.push(resumed.latency_ms);
    Ok(())
}

/// Reads the fixture's lines up to "done": returns the chain, i.e. the
/// checkpoints' pids (each line's parent), then the last process's.
fn create_checkpoints(
    b: &Bench,
    forkmon: &mut Running,
    out: &mut ScaleSamples,
) -> anyhow::Result<Vec<i64>> {
    let deadline = Instant::now() + b.plan.scale_deadline;
    let start = forkmon.line(within(START_TIMEOUT), |l| l.starts_with("start "))?;
    let start = number(&start, "t")?;
    let mut previous = start;
    let mut checkpoints = Vec::with_capacity(SCALE_FILES + 1);
    let mut last = 0;
    while checkpoints.len() < SCALE_FILES {
        let next = deadline.min(within(SCALE_LINE_TIMEOUT));
        let line = forkmon
            .line(next, |l| l.starts_with("i="))
            .with_context(|| {
                format!(
                    "{} of {SCALE_FILES} checkpoints made in {:.1} s",
                    checkpoints.len(),
                    (monotonic_ns() as f64 - start) / 1e9
                )
            })?;
        checkpoints.push(number(&line, "ppid")? as i64);
        last = number(&line, "pid")? as i64;
        let t = number(&line, "t")?;
        let step = (t - previous) / 1e6;
        previous = t;
        match checkpoints.len() {
            n if n <= 100 => out.early_steps.push(step),
            n if n > SCALE_FILES - 100 => out.late_steps.push(step),
            _ => {}
        }
    }
    let done = forkmon.line(within(SCALE_LINE_TIMEOUT), |l| l.starts_with("done "))?;
    out.created.push((number(&done, "t")? - start) / 1e9);
    checkpoints.push(last);
    Ok(checkpoints)
}

/// The checkpoints' memory, and that of their waiting children: the
/// processes below a checkpoint that are neither the next checkpoint nor
/// the program's last process.
fn measure_checkpoints(chain: &[i64], out: &mut ScaleSamples) -> anyhow::Result<()> {
    let in_chain: HashSet<i64> = chain.iter().copied().collect();
    let checkpoints = &chain[..chain.len() - 1];
    let snapshots = checkpoints
        .iter()
        .map(|&pid| Snapshot::of(pid, |p| in_chain.contains(&p)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mems: Vec<Memory> = snapshots.iter().map(|s| s.checkpoint).collect();
    out.pss.extend(mems.iter().map(|m| m.pss));
    out.private.extend(mems.iter().map(|m| m.private));
    out.page_tables.extend(mems.iter().map(|m| m.page_tables));
    out.total_pss.push(mib(&mems, |m| m.pss).iter().sum());
    out.total_private
        .push(mib(&mems, |m| m.private).iter().sum());
    out.total_page_tables
        .push(mib(&mems, |m| m.page_tables).iter().sum());
    let waiting: Vec<Memory> = snapshots.iter().map(|s| s.waiting_memory).collect();
    out.waiting
        .push(snapshots.iter().map(|s| s.waiting as f64).sum());
    out.waiting_pss.push(mib(&waiting, |m| m.pss).iter().sum());
    Ok(())
}

// ---------------------------------------------------------------------------
// Processes.

/// A process the bench started (forkmon, or a fixture on its own). Its
/// stdout lines arrive on a channel, the end of its stderr is kept for error
/// messages, and it is stopped — SIGINT, SIGKILL after 5 s — when dropped,
/// error paths included.
struct Running {
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    /// Started through sudo: signals go through sudo too.
    sudo: bool,
    exited: Option<(ExitStatus, Instant)>,
}

impl Running {
    fn start(what: impl Into<String>, mut cmd: Command, stdin: bool) -> anyhow::Result<Running> {
        let what = what.into();
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() });
        let sudo = cmd.get_program() == "sudo";
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        let (sender, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let kept = Arc::clone(&stderr);
        let err = child.stderr.take().expect("stderr is piped");
        // For investigating: every stderr line, e.g. with FORKMON_LOG=debug.
        let mut log = std::env::var_os("FORKMON_BENCH_LOG").and_then(|path| {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
        });
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(log) = log.as_mut() {
                    let _ = writeln!(log, "{line}");
                }
                let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                if kept.len() == STDERR_KEPT {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        });
        Ok(Running {
            what,
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
            sudo,
            exited: None,
        })
    }

    /// The next stdout line for which `wanted` holds, others skipped. Fails
    /// at `deadline`, on an `error=` line from a fixture, or once the
    /// process has exited and its output is drained.
    fn line(&mut self, deadline: Instant, wanted: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "timed out waiting for output of {}{}",
                    self.what,
                    self.stderr_note()
                );
            }
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(line) if line.starts_with("error=") => {
                    bail!("{}: {line}{}", self.what, self.stderr_note())
                }
                Ok(line) if wanted(&line) => return Ok(line),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => self.check_running()?,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = self.wait_exit(Duration::from_secs(2));
                    bail!(
                        "{} closed its output ({}){}",
                        self.what,
                        self.status(),
                        self.stderr_note()
                    );
                }
            }
        }
    }

    /// Fails when the process has exited (a grace of 1 s lets its last
    /// lines arrive first).
    fn check_running(&mut self) -> anyhow::Result<()> {
        if self.exited.is_none()
            && let Some(status) = self.child.try_wait()?
        {
            self.exited = Some((status, Instant::now()));
        }
        match self.exited {
            Some((status, at)) if at.elapsed() > Duration::from_secs(1) => {
                bail!("{} exited ({status}){}", self.what, self.stderr_note())
            }
            _ => Ok(()),
        }
    }

    fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("stdin is not piped")?;
        stdin.write_all(bytes)?;
        Ok(stdin.flush()?)
    }

    fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = within(timeout);
        loop {
            if let Some((status, _)) = self.exited {
                return Ok(status);
            }
            if let Some(status) = self.child.try_wait()? {
                self.exited = Some((status, Instant::now()));
            } else if Instant::now() > deadline {
                bail!("{} still running after {timeout:?}", self.what);
            } else {
                thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn status(&self) -> String {
        self.exited
            .map_or_else(|| "still running".into(), |(status, _)| status.to_string())
    }

    fn stderr_note(&self) -> String {
        let kept = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        if kept.is_empty() {
            String::new()
        } else {
            let lines: Vec<&str> = kept.iter().map(String::as_str).collect();
            format!("; its stderr: {}", lines.join(" | "))
        }
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.child.id() as i32;
        if !self.sudo {
            // SAFETY: kill with a pid we started and have not reaped.
            unsafe { libc::kill(pid, signal) };
            return;
        }
        // sudo relays SIGINT to forkmon; SIGKILL must reach forkmon itself.
        let mut pids = vec![pid.to_string()];
        if signal == libc::SIGKILL {
            pids.extend(children_of(pid.into()).iter().map(i64::to_string));
        }
        let _ = as_root("kill")
            .arg(format!("-{signal}"))
            .arg("--")
            .args(pids)
            .status();
    }

    fn stop(&mut self) {
        if self.wait_exit(Duration::ZERO).is_ok() {
            return;
        }
        self.stdin = None;
        self.signal(libc::SIGINT);
        if self.wait_exit(STOP_GRACE).is_ok() {
            return;
        }
        eprintln!(
            "xtask bench: {} ignored SIGINT for {STOP_GRACE:?}: SIGKILL",
            self.what
        );
        self.signal(libc::SIGKILL);
        let _ = self.wait_exit(STOP_GRACE);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

fn children_of(pid: i64) -> Vec<i64> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Polls `done` every 5 ms until it holds, fails, or `timeout` passes.
fn wait_until(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = within(timeout);
    while !done()? {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn within(timeout: Duration) -> Instant {
    Instant::now() + timeout
}

fn tempdir() -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("forkmon-bench-")
        .tempdir()
        .context("cannot create a temporary directory")
}

/// CLOCK_MONOTONIC in ns: the clock the fixtures print.
fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// `key=value` from a fixture's line.
fn number(line: &str, key: &str) -> anyhow::Result<f64> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .and_then(|value| value.parse().ok())
        .with_context(|| format!("no number {key}= in {line:?}"))
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Statistics and the report.

#[derive(Clone, Copy)]
struct Stats {
    median: f64,
    p90: f64,
    p99: f64,
    min: f64,
    max: f64,
    runs: usize,
}

impl Stats {
    fn of(samples: &[f64]) -> Option<Stats> {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        // Nearest rank.
        let rank = |p: f64| sorted[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Stats {
            median,
            p90: rank(0.90),
            p99: rank(0.99),
            min: sorted[0],
            max: sorted[n - 1],
            runs: n,
        })
    }
}

/// `f(a[i], b[i])` for the runs both measured.
fn paired(a: &[f64], b: &[f64], f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
}

struct Row {
    name: String,
    unit: &'static str,
    stats: Stats,
}

struct Goal {
    text: String,
    /// None: not measured (an error, see the section's errors).
    measured: Option<f64>,
    limit: f64,
    unit: &'static str,
}

impl Goal {
    fn met(&self) -> Option<bool> {
        self.measured.map(|m| m <= self.limit)
    }
}

/// One figure: its rows, its goals, what went wrong.
struct Section {
    title: &'static str,
    notes: Vec<String>,
    rows: Vec<Row>,
    goals: Vec<Goal>,
    errors: Vec<String>,
}

impl Section {
    fn new(title: &'static str) -> Section {
        Section {
            title,
            notes: Vec::new(),
            rows: Vec::new(),
            goals: Vec::new(),
            errors: Vec::new(),
        }
    }

    fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// Adds a row when there are samples; returns its statistics.
    fn row(
        &mut self,
        name: impl Into<String>,
        unit: &'static str,
        samples: &[f64],
    ) -> Option<Stats> {
        let stats = Stats::of(samples)?;
        self.rows.push(Row {
            name: name.into(),
            unit,
            stats,
        });
        Some(stats)
    }

    fn goal(
        &mut self,
        text: impl Into<String>,
        measured: Option<f64>,
        limit: f64,
        unit: &'static str,
    ) {
        self.goals.push(Goal {
            text: text.into(),
            measured,
            limit,
            unit,
        });
    }

    /// Records `result`'s error, if any, and goes on.
    fn attempt(&mut self, what: impl fmt::Display, result: anyhow::Result<()>) {
        if let Err(e) = result {
            self.errors.push(format!("{what}: {e:#}"));
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let rows: Vec<_> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "name": r.name, "unit": r.unit, "median": r.stats.median,
                    "p90": r.stats.p90, "p99": r.stats.p99, "min": r.stats.min,
                    "max": r.stats.max, "runs": r.stats.runs,
                })
            })
            .collect();
        let goals: Vec<_> = self
            .goals
            .iter()
            .map(|g| {
                json!({
                    "goal": g.text, "measured": g.measured, "limit": g.limit,
                    "unit": g.unit, "met": g.met(),
                })
            })
            .collect();
        json!({
            "figure": self.title, "notes": self.notes, "rows": rows,
            "goals": goals, "errors": self.errors,
        })
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "\n== {} ==", self.title)?;
        for note in &self.notes {
            writeln!(f, "   {note}")?;
        }
        writeln!(
            f,
            "   {:<56} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>5}",
            "", "unit", "median", "p90", "p99", "min", "max", "runs"
        )?;
        for r in &self.rows {
            let s = r.stats;
            writeln!(
                f,
                "   {:<56} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>5}",
                r.name,
                r.unit,
                num(s.median),
                num(s.p90),
                num(s.p99),
                num(s.min),
                num(s.max),
                s.runs
            )?;
        }
        for g in &self.goals {
            let (verdict, measured) = match (g.met(), g.measured) {
                (Some(true), Some(m)) => ("met", format!("{} {}", num(m), g.unit)),
                (Some(false), Some(m)) => ("NOT MET", format!("{} {}", num(m), g.unit)),
                _ => ("n/a", "not measured (see the errors)".into()),
            };
            writeln!(
                f,
                "   goal [{verdict}] {}: {measured} (limit {} {})",
                g.text,
                num(g.limit),
                g.unit
            )?;
        }
        for e in &self.errors {
            writeln!(f, "   ERROR {e}")?;
        }
        Ok(())
    }
}

/// Four significant digits or so.
fn num(x: f64) -> String {
    match x.abs() {
        a if a >= 1000.0 => format!("{x:.0}"),
        a if a >= 100.0 => format!("{x:.1}"),
        a if a >= 10.0 => format!("{x:.2}"),
        _ => format!("{x:.3}"),
    }
}

struct Report {
    quick: bool,
    sections: Vec<Section>,
    /// The figures alone, and with set-up and builds.
    measured: Duration,
    total: Duration,
    /// /proc/loadavg before and after.
    load: (String, String),
}

impl Report {
    fn to_json(&self) -> serde_json::Value {
        json!({
            "quick": self.quick,
            "measured_s": self.measured.as_secs_f64(),
            "total_s": self.total.as_secs_f64(),
            "nproc": thread::available_parallelism().map_or(0, |n| n.get()),
            "kernel": fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default().trim(),
            "loadavg_before": self.load.0,
            "loadavg_after": self.load.1,
            "root": is_root(),
            "figures": self.sections.iter().map(Section::to_json).collect::<Vec<_>>(),
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "\nforkmon bench ({}): {:.0} s measuring, {:.0} s in all; load average {} before, {} after",
            if self.quick { "--quick" } else { "full" },
            self.measured.as_secs_f64(),
            self.total.as_secs_f64(),
            self.load.0,
            self.load.1
        )?;
        for section in &self.sections {
            write!(f, "{section}")?;
        }
        let goals = self.sections.iter().flat_map(|s| &s.goals);
        let met = goals.clone().filter(|g| g.met() == Some(true)).count();
        let failed = self.sections.iter().map(|s| s.errors.len()).sum::<usize>();
        writeln!(
            f,
            "\ngoals met: {met} of {}; errors: {failed}",
            goals.count()
        )
    }
}
