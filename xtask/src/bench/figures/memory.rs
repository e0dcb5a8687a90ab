//! Figure 5: memory of a checkpoint.
use std::{fs, path::Path, thread, time::Duration};

use anyhow::{Context as _, bail};
use tests::procfs::children_of;

use super::{Delays, MEMORY_MB, resume::resume_once};
use crate::bench::{
    harness::{
        Bench, RESUME_TIMEOUT, START_TIMEOUT, TREE_SETTLE, number, tempdir, wait_until, within,
    },
    report::Section,
};

/// From /proc/PID/smaps_rollup and /proc/PID/status, in KiB.
#[derive(Clone, Copy, Default)]
pub struct Memory {
    pub pss: f64,
    pub private: f64,
    pub page_tables: f64,
}

impl Memory {
    fn sum(mems: &[Memory]) -> Memory {
        mems.iter().fold(Memory::default(), |total, m| Memory {
            pss: total.pss + m.pss,
            private: total.private + m.private,
            page_tables: total.page_tables + m.page_tables,
        })
    }

    pub fn of(pid: i32) -> anyhow::Result<Memory> {
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
pub struct Snapshot {
    pub checkpoint: Memory,
    pub waiting: usize,
    pub waiting_memory: Memory,
}

impl Snapshot {
    /// `in_chain`: the pids that are not waiting children (the running
    /// child, the next checkpoint).
    pub fn of(checkpoint: i32, in_chain: impl Fn(i32) -> bool) -> anyhow::Result<Snapshot> {
        let waiting: Vec<i32> = children_of(checkpoint)
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

pub fn memory(b: &Bench, s: &mut Section) -> anyhow::Result<()> {
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

pub fn mib(mems: &[Memory], field: impl Fn(&Memory) -> f64) -> Vec<f64> {
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
        .push(Memory::of(number(&line, "pid")? as i32)?);
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
    let (child, checkpoint) = (number(&line, "pid")? as i32, number(&line, "ppid")? as i32);
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
    let child = number(&resumed.line, "pid")? as i32;
    let parent = number(&resumed.line, "ppid")? as i32;
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
