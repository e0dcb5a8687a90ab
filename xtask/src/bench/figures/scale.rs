//! Figure 6: scale.
use std::{
    collections::HashSet,
    fs, thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tests::process::Process;

use super::{
    Delays,
    memory::{Memory, Snapshot, mib},
    resume::resume_once,
};
use crate::bench::{
    harness::{
        Bench, RESUME_TIMEOUT, SETTLE, START_TIMEOUT, TREE_SETTLE, monotonic_ns, number, tempdir,
        within,
    },
    report::Section,
};

const SCALE_FILES: usize = 1000;
/// Between two lines while 1000 checkpoints are being made.
const SCALE_LINE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Default)]
struct ScaleSamples {
    /// From the program's start to its last checkpoint, s.
    created: Vec<f64>,
    /// Time from one checkpoint's line to the next, ms: the first and the
    /// last hundred checkpoints (does it grow with the depth?).
    early_steps: Vec<f64>,
    late_steps: Vec<f64>,
    /// Per checkpoint, KiB.
    pub pss: Vec<f64>,
    pub private: Vec<f64>,
    pub page_tables: Vec<f64>,
    /// Per session, all checkpoints together, MiB.
    total_pss: Vec<f64>,
    total_private: Vec<f64>,
    total_page_tables: Vec<f64>,
    /// Per session, the checkpoints' waiting children: how many, their PSS.
    pub waiting: Vec<f64>,
    waiting_pss: Vec<f64>,
    /// Resume latencies, ms.
    last: Vec<f64>,
    first: Vec<f64>,
}

pub fn scale(b: &Bench, s: &mut Section) -> anyhow::Result<()> {
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
    forkmon: &mut Process,
    out: &mut ScaleSamples,
) -> anyhow::Result<Vec<i32>> {
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
        checkpoints.push(number(&line, "ppid")? as i32);
        last = number(&line, "pid")? as i32;
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
fn measure_checkpoints(chain: &[i32], out: &mut ScaleSamples) -> anyhow::Result<()> {
    let in_chain: HashSet<i32> = chain.iter().copied().collect();
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
