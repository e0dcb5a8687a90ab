//! `forkmon run`: sets the program up under the supervisor
//! ([`crate::supervisor`]), drives it from the kernel's records, the stubs'
//! messages, the watcher and signals, and leaves nothing behind.
use std::{
    fs, io,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    time::Duration,
};

use anyhow::Context as _;
use forkmon_common::{
    OpenRecord, PrefilterConfig, Record, open_flags, open_syscall, record_kind, stub,
};
use log::debug;
use nix::{
    sys::{
        prctl,
        signal::{SigHandler, Signal, signal},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};

use crate::{
    cgroup::Session,
    channel::Registrations,
    cli::RunArgs,
    events::Events,
    filter::Filter,
    journal::Journal,
    keys::{Key, Keys},
    launcher::{self, TargetUser},
    loader::Probes,
    output::Reporter,
    supervisor::{Candidate, Ended, Options, ReadOpen, Reader, Supervisor, live::LiveSystem},
    target::{Signals, Target},
    watcher::{Delays, Watcher},
};

/// The stub library, embedded at build time (see build.rs).
static STUB: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libforkmon_stub.so"));

pub async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let filter = Filter::new(&args.filter.globs, args.filter.lua_patterns(), &cwd)?;
    let journal = args.events.as_deref().map(Journal::open).transpose()?;
    let report = Reporter::new(args.quiet, crate::output::stderr_color(args.no_color))
        .clearing(args.clear)
        .journaling(journal);
    let mut probes = Probes::load()?;
    // The supervisor acts only on the files the tree reads that may match:
    // it watches them, and answers the opens the kernel stopped.
    let prefilter = PrefilterConfig {
        reads_only: 1,
        ..filter.prefilter().config()
    };
    probes.set_prefilter(&prefilter)?;
    let user = TargetUser::from_sudo_env()?;
    if let Some(user) = &user {
        crate::credentials::set_program_user(user)
            .context("cannot read its own supplementary groups")?;
    }
    if let Some(path) = crate::static_elf::statically_linked(&args.program.argv[0]) {
        report.warn(&format!(
            "'{}' is statically linked: forkmon's stub cannot load into it, so it runs \
             without checkpoints, and a change to a file it reads restarts it",
            crate::output::escape_path(&path)
        ));
    }
    let session = Session::create().context("cannot set up the cgroup for the program")?;
    let watcher = Watcher::new(Delays {
        restart: args.restart_delay.0,
        ignore: args.ignore_delay.0,
    })?;
    let mut events = Events::new(probes.take_events()).context("cannot poll the ring buffer")?;
    let (registrations, target_end) =
        Registrations::new().context("cannot create the stub socket")?;
    let library = stub_memfd()?;
    // How forkmon tells that a process still holds the socket.
    let stub_socket = (
        target_end.as_raw_fd(),
        fs::metadata(format!("/proc/self/fd/{}", target_end.as_raw_fd()))
            .context("cannot stat the stub socket")?
            .ino(),
    );

    let mut signals = Signals::new()?;
    // Orphans of killed subtrees are reparented to us, not to init (which
    // reaps them too, should this fail on some kernel).
    if let Err(e) = prctl::set_child_subreaper(true) {
        debug!("cannot become a subreaper: {e}");
    }

    // With --restart, no checkpoint is ever made: the program runs as it
    // would without forkmon, its opens observed by the kernel only.
    let mut env = Vec::new();
    if !args.restart {
        env.push((
            "LD_PRELOAD".into(),
            format!("/proc/self/fd/{}", library.as_raw_fd()).into(),
        ));
        env.push((
            stub::ENV_SOCKET.into(),
            target_end.as_raw_fd().to_string().into(),
        ));
    }
    // Output written before a checkpoint and still buffered would be
    // printed again by every resumed run: flushed at each checkpoint, and
    // Python's (which C stdio does not hold) not buffered at all, unless
    // the user chose otherwise.
    if !args.no_flush && !args.restart {
        env.push((stub::ENV_FLUSH.into(), "1".into()));
        if std::env::var_os("PYTHONUNBUFFERED").is_none() {
            env.push(("PYTHONUNBUFFERED".into(), "1".into()));
        }
    }
    // Keys first: a run that cannot have them fails before anything starts.
    let mut keys = if args.keys { Some(Keys::new()?) } else { None };
    let no_input = match keys {
        Some(_) => Some(fs::File::open("/dev/null").context("cannot open /dev/null")?),
        None => None,
    };
    let setup = launcher::Setup {
        stdin: no_input.as_ref().map(|null| null.as_raw_fd()),
        user: user.as_ref(),
        env,
        inherit: vec![library.as_raw_fd(), target_end.as_raw_fd()],
    };
    let root = session.root();
    let mut target = launch(&mut probes, &session, &args.program.argv, &setup)?;
    // `target_end` and `library` stay open: a restart hands them on again.
    launcher::reown_pages();

    let program_uid = user
        .as_ref()
        .map_or(nix::unistd::geteuid().as_raw(), |user| user.uid.as_raw());
    let options = Options {
        filter,
        report,
        no_standby: args.no_standby,
        program_uid,
        max_checkpoints: args.max_checkpoints as usize,
        pycache_prefix: std::env::var_os("PYTHONPYCACHEPREFIX")
            .filter(|prefix| !prefix.is_empty())
            .map(std::path::PathBuf::from),
        restart_only: args.restart,
    };
    let system = LiveSystem::new(probes, session, watcher, stub_socket, prefilter);
    let mut supervisor = Supervisor::new(system, options, target.pid.as_raw(), root);

    if keys.is_some() {
        supervisor.report().warn(crate::keys::HELP);
    }
    let status = loop {
        let key = async {
            match keys.as_mut() {
                Some(keys) => keys.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            key = key => {
                match key.context("reading the terminal")? {
                    Key::Quit => break supervisor.exit_status(libc::SIGINT),
                    Key::Help => supervisor.report().warn(crate::keys::HELP),
                    Key::Resume => supervisor.resume_latest()?,
                    Key::Restart => supervisor.restart_now("key R"),
                }
            }
            ready = registrations.readable() => {
                ready.context("reading the stub socket")?;
                on_registrations(&mut supervisor, &registrations)?;
            }
            ready = events.readable() => {
                ready.context("reading the ring buffer")?;
                on_records(&mut supervisor, &registrations, &mut events, &mut target)?;
            }
            event = supervisor.system.watcher.next_event() => {
                supervisor.on_watch_event(event?)?;
            }
            _ = signals.child.recv() => {
                // Its last words and opens first (a read that did not wake
                // forkmon may be the file whose change restarts it).
                on_records(&mut supervisor, &registrations, &mut events, &mut target)?;
                if let Some(ended) = reap(&mut supervisor)? {
                    break match ended {
                        Ended::Exited(code) | Ended::CheckpointsDied(code) => code,
                    };
                }
            }
            _ = signals.interrupt.recv() => break supervisor.exit_status(libc::SIGINT),
            _ = signals.terminate.recv() => break supervisor.exit_status(libc::SIGTERM),
            _ = signals.hangup.recv() => break supervisor.exit_status(libc::SIGHUP),
        }
        if let Some(restart) = supervisor.take_restart() {
            supervisor.stop_for_restart(&restart, root, args.stop_signal, args.stop_timeout.0)?;
            reap_now();
            // What the stopped run opened last names its processes.
            events.drain(|_| {});
            let system = &mut supervisor.system;
            target = launch(
                &mut system.probes,
                &system.session,
                &args.program.argv,
                &setup,
            )?;
            supervisor.restarted(target.pid.as_raw(), root);
        }
    };
    if args.stats {
        // Asked for: said even with --quiet.
        eprint!("{}", supervisor.stats().table());
    }
    let program = supervisor.program_group();
    let LiveSystem {
        probes,
        mut session,
        ..
    } = supervisor.system;
    let ended_here = session.end(program).context("cannot stop the program")?;
    if !ended_here {
        debug!("frozen checkpoints still exiting: left to the watchdog");
    }
    reap_orphans(session.watchdog_pid());
    // Detach the eBPF programs before the watchdog kills what is left:
    // detaching waits for RCU grace periods, which thousands of exiting
    // processes stretch to seconds. Dropping the session then wakes the
    // watchdog, if it has work.
    drop(probes);
    if !ended_here {
        // What the watchdog kills from now on is not ours to reap: without
        // this, each of thousands of exits would interrupt forkmon with a
        // SIGCHLD, for seconds.
        let _ = prctl::set_child_subreaper(false);
        // SAFETY: SIG_IGN runs no code of ours.
        let _ = unsafe { signal(Signal::SIGCHLD, SigHandler::SigIgn) };
    }
    drop(session);
    Ok(status)
}

/// Launches the program in the session's root group (at start, and at each
/// restart).
fn launch(
    probes: &mut Probes,
    session: &Session,
    argv: &[std::ffi::OsString],
    setup: &launcher::Setup,
) -> anyhow::Result<Target> {
    Target::launch(probes, argv, setup, |pid| {
        session
            .add_process(session.root(), pid.as_raw())
            .context("cannot move the program into its cgroup")
    })
}

/// The kernel's records now waiting, after the stub messages now waiting:
/// what a process said before it exited is read before its exit (a failed
/// checkpoint reports, then runs on as the program and may end at once).
fn on_records(
    supervisor: &mut Supervisor<LiveSystem>,
    registrations: &Registrations,
    events: &mut Events,
    target: &mut Target,
) -> anyhow::Result<()> {
    let mut records = Vec::new();
    events.drain(|record| records.push(owned(record)));
    on_registrations(supervisor, registrations)?;
    for record in records {
        on_record(supervisor, target, record)?;
    }
    Ok(())
}

/// Every stub message now waiting.
fn on_registrations(
    supervisor: &mut Supervisor<LiveSystem>,
    registrations: &Registrations,
) -> anyhow::Result<()> {
    for registration in registrations.drain()? {
        supervisor.on_registration(registration)?;
    }
    Ok(())
}

/// One record from the kernel: the process tree's changes feed the path
/// resolver (and tell the supervisor of exits); a signalled open is a
/// candidate the supervisor must answer.
fn on_record(
    supervisor: &mut Supervisor<LiveSystem>,
    target: &mut Target,
    record: Owned,
) -> anyhow::Result<()> {
    match record {
        Owned::Process(process) => {
            target.on_process(&process);
            if process.kind == record_kind::EXIT {
                supervisor.on_exit(process.pid as i32);
            }
        }
        Owned::Open(open) => {
            let path = target.resolve(&open);
            let reader = Reader {
                comm: crate::output::escape(forkmon_common::comm_str(&open.comm)).into_owned(),
                ancestors: target.ancestors(open.tgid),
            };
            if open.signalled != 0 {
                supervisor.on_candidate(Candidate {
                    pid: open.tgid as i32,
                    tid: open.tid as i32,
                    fd: open.ret,
                    syscall: open.syscall,
                    path,
                    reader,
                })?;
            } else if open.syscall == open_syscall::STAT || open_flags::reads_a_file(open.flags) {
                supervisor.on_read(ReadOpen {
                    pid: open.tgid as i32,
                    path,
                    reader,
                });
            } else if let (true, Some(path)) = (open_flags::writes(open.flags), path) {
                supervisor.on_write(&path);
            }
        }
    }
    Ok(())
}

/// Reaps what forkmon is the parent (or subreaper) of. Returns how the
/// program ended when it has for good: the target exited and there is no
/// checkpoint to resume from.
fn reap(supervisor: &mut Supervisor<LiveSystem>) -> anyhow::Result<Option<Ended>> {
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
        if pid.as_raw() == supervisor.target() {
            return Ok(supervisor.on_target_exit(code));
        }
        // An orphaned subprocess (or the watchdog).
    }
}

/// Reaps every zombie there is now, the stopped target's included: after a
/// restart's stop, whose processes are all gone.
fn reap_now() {
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            return;
        }
    }
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

/// The stub library in an anonymous in-memory file: the target loads it as
/// `/proc/self/fd/N`, and nothing is ever written to disk.
pub(crate) fn stub_memfd() -> anyhow::Result<OwnedFd> {
    let fd = nix::sys::memfd::memfd_create(c"forkmon-stub", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .context("cannot create the stub's memfd")?;
    let mut file = fs::File::from(fd);
    io::Write::write_all(&mut file, STUB).context("cannot write the stub's memfd")?;
    Ok(file.into())
}
