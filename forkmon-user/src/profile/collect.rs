//! Collection: one run of the program, observed as `forkmon trace` observes
//! it, with the stub loaded but nothing armed, so that what only the stub
//! can tell (whether it was loaded and registered at a given open) is known
//! without a checkpoint ever being made.
use std::{
    ffi::OsString,
    os::{
        fd::AsRawFd as _,
        unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    },
    path::PathBuf,
};

use anyhow::Context as _;
use forkmon_common::{
    OpenRecord, Record, comm_str, path_state, record_kind,
    stub::{self, CMD_GO, StubMessage},
};

use crate::{
    channel::{self, Registration, Registrations},
    events::Events,
    launcher::{self, TargetUser},
    loader::{Losses, Probes},
    target::{Signals, Target, monotonic_ns},
    trace::{Observer, observe},
};

/// One open of the run, decoded and resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Open {
    /// `CLOCK_MONOTONIC` at the syscall's exit.
    pub ts_ns: u64,
    pub pid: i32,
    pub tid: i32,
    pub comm: String,
    /// The new fd, or `-errno`.
    pub ret: i64,
    pub flags: u64,
    /// Absolute when it could be resolved, else as passed.
    pub path: PathBuf,
    /// Threads of the process as forkmon found them when the record
    /// arrived (`/proc/PID/task`), for the program's own process only;
    /// `None` once it was gone.
    pub threads: Option<usize>,
}

/// A process of the tree: the program, or one it started.
#[derive(Debug, Clone, PartialEq)]
pub struct Process {
    pub pid: i32,
    pub parent: Option<i32>,
    pub start_ns: u64,
    pub end_ns: Option<u64>,
    /// Its name at its last record (after an exec, the new program's).
    pub comm: String,
}

/// What a run showed, in the kernel's clock.
#[derive(Debug, Default)]
pub struct Collected {
    pub argv: Vec<OsString>,
    /// The program's process (checkpoints are made in it only).
    pub pid: i32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub exit_status: u8,
    /// In the order the kernel reported them.
    pub opens: Vec<Open>,
    /// In the order they appeared, the program first.
    pub processes: Vec<Process>,
    /// When a process's stub registered, and so was ready to be armed: it
    /// waits for forkmon's answer, so none of its opens falls between its
    /// registration and this time.
    pub registered: Vec<(i32, u64)>,
    /// When a process's loader opened the stub (after an exec): until it
    /// registers again, a checkpoint is impossible there.
    pub stub_loads: Vec<(i32, u64)>,
    pub losses: Losses,
}

/// Runs `argv` to its end and returns what it opened.
pub async fn collect(argv: &[OsString]) -> anyhow::Result<Collected> {
    let mut probes = Probes::load()?;
    let user = TargetUser::from_sudo_env()?;
    let mut events = Events::new(probes.take_events()).context("cannot poll the ring buffer")?;
    let (registrations, target_end) =
        Registrations::new().context("cannot create the stub socket")?;
    let library = crate::run::stub_memfd()?;
    let mut signals = Signals::new()?;
    let stub_path = format!("/proc/self/fd/{}", library.as_raw_fd());
    let setup = launcher::Setup {
        stdin: None,
        user: user.as_ref(),
        env: vec![
            ("LD_PRELOAD".into(), stub_path.clone().into()),
            (
                stub::ENV_SOCKET.into(),
                target_end.as_raw_fd().to_string().into(),
            ),
        ],
        inherit: vec![library.as_raw_fd(), target_end.as_raw_fd()],
    };
    let target = Target::launch(&mut probes, argv, &setup, |_| Ok(()))?;
    // The tree holds its own copies now; the socket reads end of file
    // once every process of it has gone.
    drop(target_end);
    drop(library);
    let (pid, start_ns) = (target.pid, target.started_ns);
    let mut collector = Collector {
        target,
        stub_path: stub_path.into(),
        collected: Collected {
            argv: argv.to_vec(),
            pid: pid.as_raw(),
            start_ns,
            processes: vec![Process {
                pid: pid.as_raw(),
                parent: None,
                start_ns,
                end_ns: None,
                comm: String::new(),
            }],
            ..Collected::default()
        },
    };
    let status = observe(
        &mut probes,
        pid,
        &mut events,
        &mut signals,
        Some(&registrations),
        &mut collector,
    )
    .await?;
    let mut collected = collector.collected;
    collected.exit_status = status;
    let program_end = collected.processes[0].end_ns;
    collected.end_ns = program_end.unwrap_or_else(monotonic_ns).max(start_ns);
    collected.losses = probes.losses();
    Ok(collected)
}

struct Collector {
    target: Target,
    /// What `LD_PRELOAD` names: its opens are forkmon's, not the program's.
    stub_path: PathBuf,
    collected: Collected,
}

impl Collector {
    fn on_open(&mut self, open: &OpenRecord) {
        let pid = open.tgid as i32;
        let passed = std::ffi::OsStr::from_bytes(open.path_bytes());
        let path = self.target.resolve(open).unwrap_or_else(|| passed.into());
        if path == self.stub_path && open.path_state & path_state::TRUNCATED == 0 {
            self.collected.stub_loads.push((pid, open.ts_ns));
            return;
        }
        // Read while the record is fresh: the kernel reports no thread
        // starts, and by the end of the run the threads are gone. A thread
        // that opened is proof of a second one even if it has gone since.
        let threads = (pid == self.collected.pid)
            .then(|| thread_count(pid))
            .flatten()
            .map(|count| count.max(if open.tid != open.tgid { 2 } else { 1 }));
        let comm = String::from_utf8_lossy(comm_str(&open.comm)).into_owned();
        if let Some(process) = self.process_mut(pid) {
            process.comm.clone_from(&comm);
        }
        self.collected.opens.push(Open {
            ts_ns: open.ts_ns,
            pid,
            tid: open.tid as i32,
            comm,
            ret: open.ret,
            flags: open.flags,
            path,
            threads,
        });
    }

    fn process_mut(&mut self, pid: i32) -> Option<&mut Process> {
        // The newest first: pids are reused, rarely within one run.
        self.collected
            .processes
            .iter_mut()
            .rev()
            .find(|process| process.pid == pid && process.end_ns.is_none())
    }
}

impl Observer for Collector {
    fn on_record(&mut self, record: Record) {
        match record {
            Record::Open(open) => self.on_open(open),
            Record::Process(process) => {
                self.target.on_process(&process);
                let pid = process.pid as i32;
                let comm = String::from_utf8_lossy(comm_str(&process.comm)).into_owned();
                match process.kind {
                    record_kind::FORK => self.collected.processes.push(Process {
                        pid,
                        parent: Some(process.ppid as i32),
                        start_ns: process.ts_ns,
                        end_ns: None,
                        comm,
                    }),
                    record_kind::EXIT => {
                        if let Some(ended) = self.process_mut(pid) {
                            ended.end_ns = Some(process.ts_ns);
                            ended.comm = comm;
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn on_stub(&mut self, registration: Registration) {
        let now = monotonic_ns();
        let Some(eventfd) = &registration.eventfd else {
            return;
        };
        // Only a process that speaks for itself, as the kernel vouches, is
        // noted; every stub that waits is answered, or it would wait
        // forever.
        let message = StubMessage::decode(&registration.message);
        if let (Some(StubMessage::Hello { pid, .. }), Some(sender)) = (message, registration.sender)
            && sender.pid == pid
        {
            self.collected.registered.push((pid, now));
        }
        if let Err(e) = channel::send_command(eventfd, CMD_GO) {
            log::debug!("cannot answer a stub: {e}");
        }
    }
}

/// `pid`'s threads, if it is still there: procfs gives `/proc/PID/task`
/// two links plus one per thread.
fn thread_count(pid: i32) -> Option<usize> {
    let task = std::fs::metadata(format!("/proc/{pid}/task")).ok()?;
    Some((task.nlink() as usize).saturating_sub(2).max(1))
}
