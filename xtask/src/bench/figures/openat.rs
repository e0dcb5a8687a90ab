//! Figure 1: openat+close cost.
use std::{fs, path::Path, time::Duration};

use tests::process::Process;

use crate::bench::{
    harness::{Bench, START_TIMEOUT, number, start, tempdir, wait_until, within},
    report::{Section, paired},
};

pub fn openat_cost(b: &Bench, s: &mut Section) -> anyhow::Result<()> {
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
    let mut tracer = start("forkmon trace -- sleep 600", cmd, false)?;
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

fn ns_per_call(p: &mut Process) -> anyhow::Result<f64> {
    let line = p.line(within(START_TIMEOUT), |l| l.starts_with("ns_per_call="))?;
    p.wait_exit(Duration::from_secs(10))?;
    number(&line, "ns_per_call")
}
