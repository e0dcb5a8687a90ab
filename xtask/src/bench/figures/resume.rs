//! Figure 3: resume latency.
use std::{fs, path::Path, thread, time::Duration};

use anyhow::Context as _;
use tests::process::Process;

use super::{Delays, MEMORY_MB};
use crate::bench::{
    harness::{Bench, RESUME_TIMEOUT, START_TIMEOUT, number, tempdir, within, write_timed},
    report::Section,
};

pub fn resume_latency(b: &Bench, s: &mut Section) -> anyhow::Result<()> {
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
pub fn measure_resumes(
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

pub struct Resumed {
    /// From the write returning to the program's timestamp `t=`.
    pub latency_ms: f64,
    /// From before the file was opened for writing: an upper bound.
    pub from_before_ms: f64,
    /// The resumed program's line.
    pub line: String,
}

/// Rewrites `file` with `content` and waits for the program's line showing
/// it.
pub fn resume_once(
    p: &mut Process,
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
