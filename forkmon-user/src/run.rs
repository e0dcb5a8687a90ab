//! `forkmon run`: the supervisor. It answers the stubs' registrations and
//! the kernel's candidate opens, keeps the chain of checkpoints, and on a
//! change kills everything below the file's checkpoint and resumes it.
//!
//! The live program is always a chain: the target (or a checkpoint's fresh
//! child) runs; at each matching open it becomes a checkpoint and its child
//! runs on. `chain[i]` is the i-th checkpoint; the last one's child is the
//! *leaf*, the only process that may become the next checkpoint.
use std::{
    collections::HashMap,
    fs,
    io::{self, IsTerminal as _},
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use forkmon_common::{
    OpenRecord, PrefilterConfig, Record, record_kind,
    stub::{self, CMD_FORK, CMD_FORK_STANDBY, CMD_GO},
};
use log::{debug, warn};
use nix::{
    sys::{
        signal::{Signal, kill},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cgroup::{CgroupError, GroupId, KILL_TIMEOUT, Session},
    channel::{self, Registration, Registrations, send_command},
    cli::RunArgs,
    events::Events,
    filter::Filter,
    launcher::{self, TargetUser},
    loader::Probes,
    output::Reporter,
    paths::PathResolver,
    priority::Policy,
    watcher::{Delays, EVALUATION_LEAD, Identity, WatchEvent, Watcher},
};

/// How long a resume waits for the frozen checkpoints and standbys below it
/// to exit (see [`Supervisor::resume_from`]).
const FROZEN_GRACE: Duration = Duration::from_millis(1);

/// How much longer than [`EVALUATION_LEAD`] a primed standby polls for
/// "go" before it sleeps again (forkmon may be late on a loaded machine).
const STANDBY_SPIN_MARGIN: Duration = Duration::from_millis(2);

/// The stub library, embedded at build time (see build.rs).
static STUB: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libforkmon_stub.so"));

struct Checkpoint {
    /// The file whose open this checkpoint was made at.
    file: PathBuf,
    /// The checkpoint process, frozen in its stub.
    pid: i32,
    /// Its cgroup: the checkpoint's own (it was the leaf until now).
    group: GroupId,
    /// The child that runs (or ran) the program from here, and its cgroup,
    /// which holds everything below this checkpoint.
    child: Option<(i32, GroupId)>,
    /// A registered child waiting to run: the next resume wakes it instead
    /// of forking. Prepared while the program is idle (see `prepare_standbys`).
    standby: Option<i32>,
    /// A child was asked for and has not registered yet.
    forking: bool,
    /// No standby was ready when one was needed: the next child to
    /// register runs at once.
    run_next: bool,
    /// The child being forked to run at once started before a change was
    /// seen below this checkpoint: it runs stale content and must go.
    pending_stale: bool,
    /// The program's scheduling policy, given back to each child that runs
    /// it (the checkpoint and its standbys wait at idle priority).
    policy: Policy,
}

/// Everything below checkpoint `index` has been killed (see
/// [`Supervisor::stop_below`]), and the checkpoint is to resume.
struct Stopping {
    index: usize,
    /// The group of the processes that ran the program.
    running: Option<GroupId>,
    /// The group holding everything below the checkpoint: the same, plus
    /// the later checkpoints and their standbys.
    below: Option<GroupId>,
    /// [`Supervisor::prime_resume`] ran for this stop…
    primed: bool,
    /// …and told this standby the resume is imminent.
    spinning: Option<i32>,
}

/// How a checkpoint's child starts running the program.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    /// It runs already (armed by the eBPF program at the fork).
    Running,
    /// It waits: give it the program's priority, arm it, tell it to go.
    Go,
    /// It waits, polling, with priority and arming given (see
    /// [`Supervisor::prime_resume`]): tell it to go.
    Primed,
}

/// When a resume being prepared is due (see [`Supervisor::prime_resume`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Due {
    /// Within the watcher's `EVALUATION_LEAD`.
    Soon,
    /// Right after the preparation.
    Now,
}

/// A registered process: the only ones forkmon can talk to.
struct Process {
    eventfd: OwnedFd,
}

struct Supervisor {
    probes: Probes,
    session: Session,
    filter: Filter,
    watcher: Watcher,
    report: Reporter,
    paths: PathResolver,
    processes: HashMap<i32, Process>,
    chain: Vec<Checkpoint>,
    /// The process that runs the program now, and its cgroup.
    leaf: Option<(i32, GroupId)>,
    target: i32,
    /// Who the program runs as: stub messages from anyone else are not
    /// believed.
    program_uid: u32,
    last_status: Option<i32>,
    warned_threads: bool,
    stopping: Option<Stopping>,
    /// `--no-standby`: a resume forks its child.
    no_standby: bool,
    /// Candidate opens of processes not registered yet, answered when they
    /// are.
    unregistered: HashMap<i32, (Box<OpenRecord>, Option<PathBuf>)>,
}

pub async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let filter = Filter::new(&args.globs, args.lua_filter.as_deref(), &cwd)?;
    let report = Reporter::new(
        args.quiet,
        !args.no_color && !crate::cli::no_color_env() && io::stderr().is_terminal(),
    );
    let mut probes = Probes::load()?;
    // The supervisor acts only on the opens it must answer; the path of each
    // is resolved live from /proc while the process waits.
    probes.set_prefilter(&PrefilterConfig {
        signalled_only: 1,
        ..filter.prefilter().config()
    })?;
    let user = TargetUser::from_sudo_env()?;
    if let Some(user) = &user {
        crate::credentials::set_program_user(user).context("cannot read forkmon's own groups")?;
    }
    let session = Session::create().context("cannot set up the cgroup for the program")?;
    let watcher = Watcher::new(Delays {
        restart: Duration::from_millis(args.restart_delay),
        ignore: Duration::from_millis(args.ignore_delay),
    })?;
    let mut events = Events::new(probes.take_events()).context("cannot poll the ring buffer")?;
    let (registrations, target_end) =
        Registrations::new().context("cannot create the stub socket")?;
    let library = stub_memfd()?;

    let mut sigchld = signal(SignalKind::child())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    // Orphans of killed subtrees are reparented to us, not to init.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };

    let mut env = vec![
        (
            "LD_PRELOAD".into(),
            format!("/proc/self/fd/{}", library.as_raw_fd()).into(),
        ),
        (
            stub::ENV_SOCKET.into(),
            target_end.as_raw_fd().to_string().into(),
        ),
    ];
    if args.flush {
        env.push((stub::ENV_FLUSH.into(), "1".into()));
        env.push(("PYTHONUNBUFFERED".into(), "1".into()));
    }
    let setup = launcher::Setup {
        user: user.as_ref(),
        env,
        inherit: vec![library.as_raw_fd(), target_end.as_raw_fd()],
    };
    let paused = launcher::spawn_paused(&args.program.argv, &setup)?;
    let target = paused.pid().as_raw();
    let root = session.root();
    session
        .add_process(root, target)
        .context("cannot move the program into its cgroup")?;
    probes.track(target as u32)?;
    if let Err(e) = paused.release() {
        probes.untrack(target as u32);
        return Err(e.into());
    }
    // The tree holds its own copies now.
    drop(target_end);
    drop(library);
    launcher::reown_pages();

    let mut supervisor = Supervisor {
        probes,
        session,
        filter,
        watcher,
        report,
        paths: PathResolver::new(target as u32, cwd),
        processes: HashMap::new(),
        chain: Vec::new(),
        leaf: Some((target, root)),
        target,
        program_uid: user
            .as_ref()
            .map_or(nix::unistd::geteuid().as_raw(), |user| user.uid.as_raw()),
        last_status: None,
        warned_threads: false,
        stopping: None,
        no_standby: args.no_standby,
        unregistered: HashMap::new(),
    };

    let status = loop {
        tokio::select! {
            ready = events.readable() => {
                ready.context("reading the ring buffer")?;
                let mut records = Vec::new();
                events.drain(|record| records.push(owned(record)));
                for record in records {
                    supervisor.on_record(record)?;
                }
            }
            ready = registrations.readable() => {
                ready.context("reading the stub socket")?;
                for registration in registrations.drain()? {
                    supervisor.on_registration(registration)?;
                }
            }
            event = supervisor.watcher.next_event() => {
                supervisor.on_watch_event(event?)?;
            }
            _ = sigchld.recv() => {
                if let Some(status) = supervisor.reap()? {
                    break status;
                }
            }
            _ = sigint.recv() => break supervisor.exit_status(libc::SIGINT),
            _ = sigterm.recv() => break supervisor.exit_status(libc::SIGTERM),
            _ = sighup.recv() => break supervisor.exit_status(libc::SIGHUP),
        }
    };
    let program = supervisor.leaf.map(|(_, group)| group);
    let ended_here = supervisor
        .session
        .end(program)
        .context("cannot stop the program")?;
    if !ended_here {
        debug!("frozen checkpoints still exiting: left to the watchdog");
    }
    reap_orphans(supervisor.session.watchdog_pid());
    // Detach the eBPF programs before the watchdog kills what is left:
    // detaching waits for RCU grace periods, which thousands of exiting
    // processes stretch to seconds. Dropping the session then wakes the
    // watchdog, if it has work.
    let Supervisor {
        probes, session, ..
    } = supervisor;
    drop(probes);
    if !ended_here {
        // What the watchdog kills from now on is not ours to reap: without
        // this, each of thousands of exits would interrupt forkmon with a
        // SIGCHLD, for seconds.
        // SAFETY: prctl and signal with integer arguments; SIG_IGN runs no
        // code of ours.
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 0);
            libc::signal(libc::SIGCHLD, libc::SIG_IGN);
        }
    }
    drop(session);
    Ok(status)
}

/// Reaps the zombies the killed tree leaves to us, its subreaper, so none
/// outlives forkmon. Everything is dead once `kill_all` returns; a
/// process's orphans reach us an instant after its exit, hence the short
/// grace.
fn reap_orphans(watchdog: Option<u32>) {
    let grace = std::time::Instant::now() + Duration::from_millis(50);
    while std::time::Instant::now() < grace {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(2)),
            Ok(status) => {
                if status.pid().map(|p| p.as_raw() as u32) == watchdog {
                    log::warn!("the cgroup watchdog exited early");
                }
            }
            Err(_) => return, // ECHILD: nothing left at all
        }
    }
}

/// A record detached from the ring buffer, so the ring can be released
/// before the records are acted on.
enum Owned {
    Open(Box<OpenRecord>),
    Process(forkmon_common::ProcessRecord),
}

fn owned(record: Record) -> Owned {
    match record {
        Record::Open(open) => Owned::Open(Box::new(*open)),
        Record::Process(process) => Owned::Process(process),
    }
}

impl Supervisor {
    fn on_record(&mut self, record: Owned) -> anyhow::Result<()> {
        match record {
            Owned::Process(process) => match process.kind {
                record_kind::FORK => self.paths.on_fork(process.pid, process.ppid),
                record_kind::CHDIR => self.paths.on_chdir(process.pid),
                record_kind::EXIT => {
                    self.paths.on_exit(process.pid);
                    self.unregistered.remove(&(process.pid as i32));
                    self.on_exit(process.pid as i32);
                }
                _ => {}
            },
            Owned::Open(open) => {
                let path = self.paths.resolve(&open);
                if open.signalled != 0 {
                    self.on_candidate(&open, path)?;
                }
            }
        }
        Ok(())
    }

    /// The kernel stopped `open.tgid` at an open that may match: answer it.
    fn on_candidate(&mut self, open: &OpenRecord, path: Option<PathBuf>) -> anyhow::Result<()> {
        let pid = open.tgid as i32;
        if !self.processes.contains_key(&pid) {
            // A checkpoint's child runs before forkmon has its registration
            // (from another channel): answer once it has.
            debug!("candidate open by {pid}, not registered yet");
            self.unregistered.insert(pid, (Box::new(*open), path));
            return Ok(());
        }
        // The very file the program opened, while it waits: one stat says
        // whether it is a regular file, and gives the identity the watch
        // compares with, so a save between the open and the watch is still
        // seen as a change.
        let opened = fs::metadata(format!("/proc/{pid}/fd/{}", open.ret)).ok();
        let checkpoint = match (&path, &opened) {
            (Some(path), Some(meta)) if meta.is_file() => self.should_checkpoint(pid, path),
            _ => false,
        };
        if !checkpoint {
            // The eBPF program armed its next child, in case the stub
            // forked before this verdict; a child forked later is the
            // program's own.
            self.probes.keep_next_child_unarmed(pid as u32)?;
            send_command(&self.processes[&pid].eventfd, CMD_GO)?;
            return Ok(());
        }
        let process = &self.processes[&pid];
        let path = path.expect("checked above");
        let opened = opened.as_ref().map(Identity::from_metadata);
        let (_, group) = self.leaf.take().expect("only the leaf checkpoints");
        self.chain.push(Checkpoint {
            file: path.clone(),
            pid,
            group,
            child: None,
            standby: None,
            forking: true,
            run_next: true,
            pending_stale: false,
            policy: Policy::of(pid).unwrap_or(Policy::NORMAL),
        });
        // Its child goes on at once: armed at the fork, as the eBPF program
        // set when it signalled this open. The stub may have forked it
        // already, before this verdict.
        send_command(&process.eventfd, stub::checkpoint_command(open.syscall))?;
        // While it forks. Its child may read the file before the watch is
        // in place: a save meanwhile still shows against `opened`.
        self.watcher.watch_with_baseline(&path, opened)?;
        self.report.watch(&path);
        Ok(())
    }

    fn should_checkpoint(&mut self, pid: i32, path: &Path) -> bool {
        if self.leaf.map(|(leaf, _)| leaf) != Some(pid) {
            return false;
        }
        if !self.filter.matches(path) {
            return false;
        }
        if self.chain.iter().any(|c| c.file == path) {
            return false; // the first open of each file is its checkpoint
        }
        let threads = thread_count(pid);
        if threads > 1 {
            if !self.warned_threads {
                self.report.warn(&format!(
                    "pid {pid} has {threads} threads: not checkpointing it (a fork keeps only one)"
                ));
                self.warned_threads = true;
            }
            return false;
        }
        true
    }

    fn on_registration(&mut self, registration: Registration) -> anyhow::Result<()> {
        let message = registration.message;
        let kernel = LiveTree(&self.probes);
        if let Err(distrust) =
            channel::check(&message, registration.sender, self.program_uid, &kernel)
        {
            self.report.warn(&format!(
                "ignoring a message on the stub socket: {distrust}"
            ));
            return Ok(());
        }
        match message.kind {
            stub::MSG_HELLO => {
                let Some(eventfd) = registration.eventfd else {
                    return Ok(());
                };
                // The target (or the leaf after an exec, e.g. a shim that
                // execs the real interpreter) can be checkpointed; any
                // other process is observed only.
                if self.leaf.map(|(leaf, _)| leaf) == Some(message.pid) {
                    self.probes.arm(message.pid as u32)?;
                }
                send_command(&eventfd, CMD_GO)?;
                self.processes.insert(message.pid, Process { eventfd });
            }
            stub::MSG_CHILD => {
                let Some(eventfd) = registration.eventfd else {
                    return Ok(());
                };
                let Some(index) = self.chain.iter().position(|c| c.pid == message.checkpoint)
                else {
                    debug!("child {} of a stale checkpoint", message.pid);
                    return Ok(());
                };
                self.paths
                    .on_fork(message.pid as u32, message.checkpoint as u32);
                self.processes.insert(message.pid, Process { eventfd });
                let waits = message.status != 0;
                let checkpoint = &mut self.chain[index];
                checkpoint.forking = false;
                if !waits && std::mem::take(&mut checkpoint.pending_stale) {
                    // It started before the change: stop it, and fork anew
                    // if it was to be the resume.
                    let _ = kill(Pid::from_raw(message.pid), Signal::SIGKILL);
                    self.processes.remove(&message.pid);
                    self.unregistered.remove(&message.pid);
                    return self.request_standby(index);
                }
                if std::mem::take(&mut checkpoint.run_next) {
                    let start = if waits { Start::Go } else { Start::Running };
                    self.run_child(index, message.pid, start)?;
                } else {
                    checkpoint.standby = Some(message.pid);
                }
                if let Some((open, path)) = self.unregistered.remove(&message.pid) {
                    self.on_candidate(&open, path)?;
                }
            }
            stub::MSG_EXITED => {
                self.processes.remove(&message.pid);
                if self.leaf.map(|(leaf, _)| leaf) == Some(message.pid) {
                    self.last_status = Some(message.status);
                    self.report.exited(message.status);
                    self.prepare_standbys()?;
                }
                if let Some(index) = self
                    .chain
                    .iter()
                    .position(|c| c.standby == Some(message.pid))
                {
                    // Killed from outside while waiting: prepare another.
                    self.chain[index].standby = None;
                    self.request_standby(index)?;
                }
            }
            stub::MSG_FAILED => {
                let Some(index) = self.chain.iter().position(|c| c.pid == message.pid) else {
                    return Ok(());
                };
                // No child took the arming meant for it.
                self.probes.arm(message.pid as u32)?;
                let error = nix::errno::Errno::from_raw(message.status).desc();
                if message.checkpoint != 0 {
                    // It runs on as the program, not as a checkpoint.
                    let checkpoint = self.chain.remove(index);
                    self.watcher.unwatch(&checkpoint.file);
                    self.forget_stop_from(index);
                    self.leaf = Some((checkpoint.pid, checkpoint.group));
                    self.session.prepare(checkpoint.group);
                    self.report.warn(&format!(
                        "cannot checkpoint at '{}': {error}",
                        checkpoint.file.display()
                    ));
                } else {
                    self.report.warn(&format!(
                        "cannot prepare a resume from '{}': {error}",
                        self.chain[index].file.display()
                    ));
                    self.chain[index].forking = false;
                }
            }
            kind => debug!("unknown stub message kind {kind}"),
        }
        Ok(())
    }

    /// Lets checkpoint `index`'s registered child `pid` run the program (or
    /// takes note that it does), and moves it into its own cgroup.
    ///
    /// The child runs first and is moved into its own cgroup right after:
    /// moving a process between cgroups waits for an RCU grace period
    /// (~10 ms here), which must not delay the run. What it spawns
    /// meanwhile is swept along, found by ancestry.
    fn run_child(&mut self, index: usize, pid: i32, start: Start) -> anyhow::Result<()> {
        let checkpoint = &self.chain[index];
        if start == Start::Go {
            checkpoint.policy.give(pid);
            self.probes.arm(pid as u32)?;
        }
        if start != Start::Running {
            send_command(&self.processes[&pid].eventfd, CMD_GO)?;
            // Woken or polling, perhaps on this CPU (see `prime_resume`):
            // let it go before the bookkeeping below.
            std::thread::yield_now();
        }
        // The checkpoint reaps and reports this child: at the program's
        // priority, so its exit is known at once.
        checkpoint.policy.give(checkpoint.pid);
        let started = std::time::Instant::now();
        let parent_group = self.chain[index].group;
        let group = self.session.new_child(parent_group)?;
        self.move_process(group, pid)?;
        for other in self.session.procs(parent_group)? {
            if descends_from(other, pid) {
                self.move_process(group, other)?;
            }
        }
        debug!("moved {pid} into its cgroup in {:?}", started.elapsed());
        self.chain[index].child = Some((pid, group));
        self.leaf = Some((pid, group));
        self.session.prepare(group);
        Ok(())
    }

    /// The program finished and waits for changes: have every checkpoint
    /// fork the child its next resume will wake. Done while idle, so the
    /// forks compete with nothing, and a resume costs no fork.
    fn prepare_standbys(&mut self) -> anyhow::Result<()> {
        if self.no_standby {
            return Ok(());
        }
        // The files opened last are usually the ones being worked on.
        for index in (0..self.chain.len()).rev() {
            // From now on it only waits, and the standby it forks inherits
            // its priority.
            Policy::IDLE.give(self.chain[index].pid);
            self.request_standby(index)?;
        }
        Ok(())
    }

    /// Asks checkpoint `index` to fork its next waiting child, unless one
    /// is there or on its way (one command outstanding at most).
    fn request_standby(&mut self, index: usize) -> anyhow::Result<()> {
        let checkpoint = &mut self.chain[index];
        if checkpoint.standby.is_some() || checkpoint.forking {
            return Ok(());
        }
        checkpoint.forking = true;
        let command = if checkpoint.run_next {
            CMD_FORK
        } else {
            CMD_FORK_STANDBY
        };
        if command == CMD_FORK {
            self.probes.arm_next_child(checkpoint.pid as u32)?;
        }
        match self.processes.get(&checkpoint.pid) {
            Some(process) => send_command(&process.eventfd, command)?,
            None => warn!("checkpoint {} is gone", checkpoint.pid),
        }
        Ok(())
    }

    /// Moves `pid` into `group`; one that already exited (it ran while we
    /// got to it) needs no moving.
    fn move_process(&self, group: GroupId, pid: i32) -> anyhow::Result<()> {
        match self.session.add_process(group, pid) {
            Err(CgroupError::Io { error, .. }) if error.raw_os_error() == Some(libc::ESRCH) => {
                Ok(())
            }
            result => Ok(result?),
        }
    }

    /// A change is seen: stop the program below the earliest checkpoint
    /// concerned at once, and resume once the delays have passed (even if
    /// the files turn out unchanged: what ran is gone).
    fn on_watch_event(&mut self, event: WatchEvent) -> anyhow::Result<()> {
        match event {
            WatchEvent::Touched(files) => match self.earliest_of(&files) {
                Some(index) => self.stop_below(index),
                None => Ok(()),
            },
            WatchEvent::Imminent => self.prime_resume(Due::Soon),
            WatchEvent::Changed(files) => {
                let stopped = self.stopping.as_ref().map(|s| s.index);
                match self.earliest_of(&files).into_iter().chain(stopped).min() {
                    Some(index) => self.resume_from(index),
                    None => Ok(()),
                }
            }
        }
    }

    /// The earliest checkpoint made at one of `files`.
    fn earliest_of(&self, files: &[PathBuf]) -> Option<usize> {
        self.chain.iter().position(|c| files.contains(&c.file))
    }

    /// Kills everything below checkpoint `index` without waiting for it to
    /// exit: first what runs the program, then the later checkpoints and
    /// their standbys. Called as soon as a change is seen, so the exits
    /// overlap the restart delay; [`resume_from`](Self::resume_from) then
    /// waits for what is left.
    fn stop_below(&mut self, index: usize) -> anyhow::Result<()> {
        if self.stopping.as_ref().is_some_and(|s| s.index <= index) {
            return Ok(());
        }
        let previous = self.stopping.take();
        let started = std::time::Instant::now();
        let running = match self.leaf.take() {
            Some((_, group)) => {
                self.session.kill_now(group)?;
                Some(group)
            }
            None => previous.and_then(|p| p.running),
        };
        let checkpoint = &mut self.chain[index];
        // Its child running the program may not have registered yet (it is
        // in the checkpoint's own cgroup until then).
        checkpoint.pending_stale |= checkpoint.forking && checkpoint.run_next;
        let below = self.chain[index].child.take().map(|(child, group)| {
            self.processes.remove(&child);
            group
        });
        if let Some(group) = below {
            self.session.kill_in_background(group)?;
        }
        debug!(
            "killed the program below {} in {:?}",
            self.chain[index].pid,
            started.elapsed()
        );
        for later in self.chain.drain(index + 1..) {
            self.watcher.unwatch(&later.file);
            self.processes.remove(&later.pid);
        }
        self.stopping = Some(Stopping {
            index,
            running,
            below,
            primed: false,
            spinning: None,
        });
        Ok(())
    }

    /// The resume is due within [`EVALUATION_LEAD`]: do now what can be
    /// done before it. Tell the standby of the stopped checkpoint, so that
    /// it polls for "go" rather than sleeps, and give it what it needs to
    /// run (the program's priority, the signal); say which file changed;
    /// and check whether what was killed is gone (the first look at a
    /// cgroup not prepared ahead costs ~30 µs).
    ///
    /// When the resume is due now and nothing killed is left to wait for,
    /// the standby is not told to poll: "go" follows at once, and a polling
    /// standby woken on this CPU would only take it from forkmon (~20 µs,
    /// traced).
    fn prime_resume(&mut self, due: Due) -> anyhow::Result<()> {
        let Some(stopping) = self.stopping.as_mut().filter(|s| !s.primed) else {
            return Ok(());
        };
        stopping.primed = true;
        let checkpoint = &self.chain[stopping.index];
        self.report.changed(&checkpoint.file);
        for group in [&mut stopping.running, &mut stopping.below] {
            if group.is_some_and(|g| self.session.wait_empty(g, Duration::ZERO).unwrap_or(false)) {
                *group = None;
            }
        }
        if due == Due::Now && stopping.running.is_none() && stopping.below.is_none() {
            return Ok(());
        }
        let Some(standby) = checkpoint.standby else {
            return Ok(());
        };
        let Some(process) = self.processes.get(&standby) else {
            return Ok(());
        };
        checkpoint.policy.give(standby);
        self.probes.arm(standby as u32)?;
        let budget = (EVALUATION_LEAD + STANDBY_SPIN_MARGIN).as_micros() as u64;
        send_command(&process.eventfd, stub::spin_command(budget))?;
        stopping.spinning = Some(standby);
        Ok(())
    }

    /// Checkpoint `index` and those after it are gone: a stop below one of
    /// them has nothing left to resume.
    fn forget_stop_from(&mut self, index: usize) {
        if self.stopping.as_ref().is_some_and(|s| s.index >= index) {
            self.stopping = None;
        }
    }

    /// Kill everything below checkpoint `index` (if not done yet) and run
    /// its standby, or the next child it forks if none is ready.
    ///
    /// What ran the program is waited for, so that what it held (a port,
    /// a lock) is free before the program runs again. The frozen
    /// checkpoints and standbys below are waited for only briefly: they
    /// run nothing, and thousands of them take long to exit.
    fn resume_from(&mut self, index: usize) -> anyhow::Result<()> {
        self.stop_below(index)?;
        // Without a delay nothing was imminent: prime now, so that the
        // standby wakes while the killed program exits.
        self.prime_resume(Due::Now)?;
        let stopping = self.stopping.take().expect("stopped just above");
        let started = std::time::Instant::now();
        if let Some(group) = stopping.running {
            match self.session.wait_empty(group, KILL_TIMEOUT) {
                Ok(true) => {}
                // SIGKILLed processes run no more code of theirs; a slow
                // exit (a loaded machine) must not stop the resume.
                Ok(false) => warn!("the program is still exiting after SIGKILL"),
                Err(e) => warn!("{e}"),
            }
        }
        if let Some(group) = stopping.below {
            let _ = self.session.wait_empty(group, FROZEN_GRACE);
        }
        debug!(
            "stopped the program below {} in {:?}",
            self.chain[index].pid,
            started.elapsed()
        );
        let checkpoint = &mut self.chain[index];
        let result = match checkpoint.standby.take() {
            Some(standby) => {
                let start = if stopping.spinning == Some(standby) {
                    Start::Primed
                } else {
                    Start::Go
                };
                self.run_child(index, standby, start)
            }
            None => {
                // Its fork is on the resume's path now.
                debug!("no standby ready at checkpoint {index}: forking one");
                checkpoint.policy.give(checkpoint.pid);
                checkpoint.run_next = true;
                self.request_standby(index)
            }
        };
        // Killed groups already empty, from this resume or earlier ones.
        self.session.reap_empty();
        result
    }

    /// A checkpoint died (killed from outside): it and every later one are
    /// gone, and nothing can be resumed from them.
    fn on_exit(&mut self, pid: i32) {
        let Some(index) = self.chain.iter().position(|c| c.pid == pid) else {
            return;
        };
        self.report.warn(&format!(
            "the checkpoint at '{}' died; it can no longer be resumed",
            self.chain[index].file.display()
        ));
        for gone in self.chain.drain(index..) {
            self.watcher.unwatch(&gone.file);
            self.processes.remove(&gone.pid);
        }
        self.forget_stop_from(index);
        if self.chain.is_empty() {
            self.leaf = None;
        }
    }

    /// Reaps what forkmon is the parent (or subreaper) of. Returns the exit
    /// status when the program has ended for good: the target exited and
    /// there is no checkpoint to resume from.
    fn reap(&mut self) -> anyhow::Result<Option<u8>> {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return Ok(None),
                Ok(status) => status,
                Err(e) => return Err(e).context("waiting for the program"),
            };
            let (pid, code) = match status {
                WaitStatus::Exited(pid, code) => (pid, code),
                WaitStatus::Signaled(pid, signal, _) => (pid, 128 + signal as i32),
                _ => continue,
            };
            if pid.as_raw() != self.target {
                continue; // an orphaned subprocess (or the watchdog)
            }
            self.processes.remove(&self.target);
            if self.chain.is_empty() {
                self.report.exited_for_good(code, &self.filter.describe());
                return Ok(Some(code as u8));
            }
            // The first checkpoint itself died: nothing is left to resume.
            self.report
                .warn("the program's first checkpoint died; stopping");
            return Ok(Some(code as u8));
        }
    }

    fn exit_status(&self, signal: i32) -> u8 {
        match self.last_status {
            Some(status) => wait_status_code(status),
            None => 128 + signal as u8,
        }
    }
}

/// A raw wait status as a shell's exit code.
fn wait_status_code(status: i32) -> u8 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as u8
    } else {
        128 + libc::WTERMSIG(status) as u8
    }
}

/// Whether `ancestor` is `pid`'s parent, grandparent, … (by /proc).
fn descends_from(mut pid: i32, ancestor: i32) -> bool {
    for _ in 0..64 {
        let Some(parent) = parent_of(pid) else {
            return false;
        };
        if parent == ancestor {
            return true;
        }
        if parent <= 1 {
            return false;
        }
        pid = parent;
    }
    false
}

fn parent_of(pid: i32) -> Option<i32> {
    stat_field(pid, 4)
}

/// Field `field` (numbered from 1, as in proc(5)) of `/proc/PID/stat`, in
/// one read.
fn stat_field<T: std::str::FromStr>(pid: i32, field: usize) -> Option<T> {
    stat_fields(pid)?
        .split_whitespace()
        .nth(field.checked_sub(3)?)?
        .parse()
        .ok()
}

/// The fields of `/proc/PID/stat` after the command name (field 2, which
/// may hold spaces, ')' and bytes that are not UTF-8), from field 3 on.
fn stat_fields(pid: i32) -> Option<String> {
    let mut buf = [0u8; 1024];
    let len = io::Read::read(
        &mut fs::File::open(format!("/proc/{pid}/stat")).ok()?,
        &mut buf,
    )
    .ok()?;
    let end = buf[..len].iter().rposition(|b| *b == b')')?;
    Some(std::str::from_utf8(&buf[end + 1..len]).ok()?.to_owned())
}

/// `pid`'s parent if `pid` is alive: not gone, not a zombie, and not on
/// its way out (`PF_EXITING`: the eBPF program forgets a process at the
/// start of its exit).
fn alive_parent(pid: i32) -> Option<i32> {
    const PF_EXITING: u64 = 0x4;
    let fields = stat_fields(pid)?;
    let mut fields = fields.split_whitespace();
    let state = fields.next()?; // field 3
    let parent = fields.next()?.parse().ok()?; // 4
    let flags: u64 = fields.nth(4)?.parse().ok()?; // 9
    let dead = matches!(state, "Z" | "X" | "x");
    (!dead && flags & PF_EXITING == 0).then_some(parent)
}

/// The live kernel, as [`channel::check`] asks it.
struct LiveTree<'a>(&'a Probes);

impl channel::Kernel for LiveTree<'_> {
    fn in_tree(&self, pid: i32) -> bool {
        u32::try_from(pid).is_ok_and(|pid| self.0.is_tracked(pid))
    }

    fn alive_parent(&self, pid: i32) -> Option<i32> {
        alive_parent(pid)
    }
}

/// The process's threads, from one `stat` of `/proc/PID/task` (on the
/// checkpoint's path): procfs gives that directory 2 links plus one per
/// thread, and a stat costs a quarter of reading `/proc/PID/stat`.
fn thread_count(pid: i32) -> usize {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata(format!("/proc/{pid}/task"))
        .map_or(1, |m| (m.nlink() as usize).saturating_sub(2).max(1))
}

/// The stub library in an anonymous in-memory file: the target loads it as
/// `/proc/self/fd/N`, and nothing is ever written to disk.
fn stub_memfd() -> anyhow::Result<OwnedFd> {
    let fd = nix::sys::memfd::memfd_create(c"forkmon-stub", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .context("cannot create the stub's memfd")?;
    let mut file = fs::File::from(fd);
    io::Write::write_all(&mut file, STUB).context("cannot write the stub's memfd")?;
    Ok(file.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields_are_read_after_the_command_name() {
        let me = std::process::id() as i32;
        assert_eq!(parent_of(me), Some(nix::unistd::getppid().as_raw()));
        // Other tests run in threads of this process: only a bound here.
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let extra = std::thread::spawn(move || stopped.recv());
        assert!(thread_count(me) >= 2);
        stop.send(()).unwrap();
        extra.join().unwrap().unwrap();
        let mut single = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert_eq!(thread_count(single.id() as i32), 1);
        single.kill().unwrap();
        single.wait().unwrap();
        assert_eq!(
            stat_field::<i32>(me, 2),
            None,
            "the command name is not a field here"
        );
    }
}
