//! Figure 2: checkpoint cost.
use std::fs;

use super::Delays;
use crate::bench::{
    harness::{Bench, START_TIMEOUT, number, tempdir, within},
    report::{Section, paired},
};

pub fn checkpoint_cost(b: &Bench, s: &mut Section) -> anyhow::Result<()> {
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
