//! `forkmon trace`: run a program and print every file its tree opens.
use std::{
    fs,
    io::{self, LineWriter, Write},
    time::Duration,
};

use anyhow::Context as _;
use forkmon_common::{Record, record_kind};
use log::warn;
use nix::{
    sys::{
        signal::{Signal, kill},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    cli::TraceArgs,
    events::{Events, poll_fd},
    launcher::{self, TargetUser},
    loader::{Losses, Probes},
    output::OpenLine,
    paths::PathResolver,
};

/// How long a program gets to exit after forkmon is interrupted before
/// everything left of its tree is killed.
const GRACE: Duration = Duration::from_secs(2);

pub async fn trace(args: TraceArgs) -> anyhow::Result<u8> {
    let mut probes = Probes::load()?;
    let user = TargetUser::from_sudo_env()?;
    let mut sink: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(LineWriter::new(
            fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?,
        )),
        None => Box::new(io::stderr()),
    };
    let mut events = Events::new(probes.take_events()).context("cannot poll the ring buffer")?;
    let mut logger = match probes.logger.take() {
        Some(logger) => Some(poll_fd(logger).context("cannot poll the eBPF log")?),
        None => None,
    };
    // Before the fork, so the child's exit cannot slip by unnoticed.
    let mut sigchld = signal(SignalKind::child())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    let setup = launcher::Setup {
        user: user.as_ref(),
        ..Default::default()
    };
    let paused = launcher::spawn_paused(&args.program.argv, &setup)?;
    let pid = paused.pid();
    probes.track(pid.as_raw() as u32)?;
    let start_ns = monotonic_ns();
    if let Err(e) = paused.release() {
        probes.untrack(pid.as_raw() as u32);
        return Err(e.into());
    }
    if !args.json {
        let _ = writeln!(sink, "{}", OpenLine::header());
    }

    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let mut paths = PathResolver::new(pid.as_raw() as u32, cwd);
    let mut print = |record: Record| match record {
        Record::Open(open) => {
            let line = OpenLine::new(open, paths.resolve(open), start_ns);
            let text = if args.json {
                line.to_json()
            } else {
                line.to_table_row()
            };
            let _ = writeln!(sink, "{text}");
        }
        Record::Process(process) => match process.kind {
            record_kind::FORK => paths.on_fork(process.pid, process.ppid),
            record_kind::CHDIR => paths.on_chdir(process.pid),
            record_kind::EXIT => paths.on_exit(process.pid),
            _ => {}
        },
    };
    let mut deadline: Option<tokio::time::Instant> = None;
    let status = loop {
        tokio::select! {
            ready = events.readable() => {
                ready.context("reading the ring buffer")?;
                events.drain(&mut print);
            }
            Some(ready) = readable_mut(&mut logger) => {
                let mut guard = ready.context("reading the eBPF log")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = sigchld.recv() => {
                if let Some(status) = exit_status(pid)? {
                    break status;
                }
            }
            _ = sigint.recv() => {
                let _ = kill(pid, Signal::SIGINT);
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + GRACE);
            }
            _ = sigterm.recv() => {
                let _ = kill(pid, Signal::SIGTERM);
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + GRACE);
            }
            _ = sleep_until(deadline) => {
                kill_tree(&probes);
            }
        }
    };
    // Records of the program's last opens are in the ring before its exit.
    events.drain(&mut print);
    let _ = sink.flush();
    if deadline.is_some() {
        kill_tree(&probes);
    }
    report_losses(probes.losses());
    Ok(status)
}

/// Readiness of an optional fd; never ready when there is none.
async fn readable_mut<T: std::os::fd::AsRawFd>(
    fd: &mut Option<AsyncFd<T>>,
) -> Option<io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, T>>> {
    match fd {
        Some(fd) => Some(fd.readable_mut().await),
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The program's exit status as a shell reports it, once it has exited.
fn exit_status(pid: Pid) -> anyhow::Result<Option<u8>> {
    match waitpid(pid, Some(WaitPidFlag::WNOHANG)).context("waiting for the program")? {
        WaitStatus::Exited(_, code) => Ok(Some(code as u8)),
        WaitStatus::Signaled(_, signal, _) => Ok(Some(128 + signal as u8)),
        _ => Ok(None),
    }
}

/// SIGKILL every process still in the traced tree.
fn kill_tree(probes: &Probes) {
    for pid in probes.tracked_pids() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

fn report_losses(losses: Losses) {
    if losses.ring_full > 0 {
        warn!(
            "{} records were lost because the ring buffer was full (forkmon fell behind)",
            losses.ring_full
        );
    }
    if losses.tracked_full > 0 {
        warn!(
            "{} new processes were not followed: too many at once",
            losses.tracked_full
        );
    }
}

/// `CLOCK_MONOTONIC` in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}
