//! Figure 4: full restart vs resume.
use std::{ffi::OsStr, fs, path::Path, process::Command, thread, time::Duration};

use super::{Delays, resume::measure_resumes};
use crate::{
    bench::{
        harness::{
            Bench, RESUME_TIMEOUT, START_TIMEOUT, monotonic_ns, number, start, tempdir, within,
            write_timed,
        },
        report::{Section, paired},
    },
    root_dir,
};

/// Figure 4 uses one representative size.
const RESTART_MB: u64 = 100;
const STARTUP_MS: u64 = 1000;

pub fn full_restart(b: &Bench, s: &mut Section) -> anyhow::Result<()> {
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
        let mut program = start("lua5.4 startup.lua", lua(dir.path()), false)?;
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
        let mut forkmon = b.forkmon_run(
            "forkmon run lua5.4 startup.lua",
            dir.path(),
            &Delays::ZERO.options(),
            [OsStr::new("lua5.4"), script.as_os_str()],
            false,
        )?;
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
