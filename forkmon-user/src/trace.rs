//! `forkmon trace`: run a program and print every file its tree opens.
use std::{
    fs,
    io::{self, LineWriter, Write},
    time::Duration,
};

use anyhow::Context as _;
use forkmon_common::Record;
use log::warn;
use nix::{
    sys::{
        signal::{Signal, kill},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};
use tokio::io::unix::AsyncFd;

use crate::{
    channel::{Registration, Registrations},
    cli::TraceArgs,
    events::{Events, poll_fd},
    launcher::{self, TargetUser},
    loader::{Losses, Probes},
    output::OpenLine,
    target::{Signals, Target},
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
    let mut signals = Signals::new()?;
    let setup = launcher::Setup {
        stdin: None,
        user: user.as_ref(),
        ..Default::default()
    };
    let mut target = Target::launch(&mut probes, &args.program.argv, &setup, |_| Ok(()))?;
    let (pid, start_ns) = (target.pid, target.started_ns);
    if !args.json {
        let _ = writeln!(sink, "{}", OpenLine::header());
    }

    let mut printer = Printer {
        sink: &mut sink,
        target: &mut target,
        json: args.json,
        start_ns,
    };
    let status = observe(
        &mut probes,
        pid,
        &mut events,
        &mut signals,
        None,
        &mut printer,
    )
    .await?;
    let _ = sink.flush();
    Ok(status)
}

/// `trace`'s observer: one line per open, as it arrives.
struct Printer<'a> {
    sink: &'a mut Box<dyn Write>,
    target: &'a mut Target,
    json: bool,
    start_ns: u64,
}

impl Observer for Printer<'_> {
    fn on_record(&mut self, record: Record) {
        match record {
            Record::Open(open) => {
                let line = OpenLine::new(open, self.target.resolve(open), self.start_ns);
                let text = if self.json {
                    line.to_json()
                } else {
                    line.to_table_row()
                };
                let _ = writeln!(self.sink, "{text}");
            }
            Record::Process(process) => self.target.on_process(&process),
        }
    }
}

/// What a command that watches a run is handed as it goes.
pub trait Observer {
    /// A record from the kernel, in the order the ring buffer holds them.
    fn on_record(&mut self, record: Record);
    /// A message on the stub socket (only when the program was started
    /// with the stub). The stub that sent a `Hello` waits until it is
    /// answered.
    fn on_stub(&mut self, _registration: Registration) {}
}

/// Runs until the program `pid` exits and returns its exit status as a
/// shell reports it. Every record goes to `observer`, and with `stubs`
/// every stub message; Ctrl-C and SIGTERM are passed to the program, and
/// what is left of its tree is killed [`GRACE`] later.
pub async fn observe(
    probes: &mut Probes,
    pid: Pid,
    events: &mut Events,
    signals: &mut Signals,
    stubs: Option<&Registrations>,
    observer: &mut dyn Observer,
) -> anyhow::Result<u8> {
    let mut logger = match probes.logger.take() {
        Some(logger) => Some(poll_fd(logger).context("cannot poll the eBPF log")?),
        None => None,
    };
    let mut deadline: Option<tokio::time::Instant> = None;
    let status = loop {
        tokio::select! {
            ready = events.readable() => {
                ready.context("reading the ring buffer")?;
                events.drain(|record| observer.on_record(record));
            }
            Some(ready) = stub_messages(stubs) => {
                ready.context("reading the stub socket")?;
                drain_stubs(stubs, observer)?;
            }
            Some(ready) = readable_mut(&mut logger) => {
                let mut guard = ready.context("reading the eBPF log")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = signals.child.recv() => {
                if let Some(status) = exit_status(pid)? {
                    break status;
                }
            }
            _ = signals.interrupt.recv() => {
                let _ = kill(pid, Signal::SIGINT);
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + GRACE);
            }
            _ = signals.terminate.recv() => {
                let _ = kill(pid, Signal::SIGTERM);
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + GRACE);
            }
            _ = sleep_until(deadline) => {
                kill_tree(probes);
            }
        }
    };
    // Records of the program's last opens are in the ring before its exit.
    drain_stubs(stubs, observer)?;
    events.drain(|record| observer.on_record(record));
    if deadline.is_some() {
        kill_tree(probes);
    }
    report_losses(probes.losses());
    Ok(status)
}

async fn stub_messages(stubs: Option<&Registrations>) -> Option<io::Result<()>> {
    match stubs {
        Some(stubs) => Some(stubs.readable().await),
        None => std::future::pending().await,
    }
}

fn drain_stubs(stubs: Option<&Registrations>, observer: &mut dyn Observer) -> anyhow::Result<()> {
    for registration in stubs
        .map(Registrations::drain)
        .transpose()?
        .into_iter()
        .flatten()
    {
        observer.on_stub(registration);
    }
    Ok(())
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
