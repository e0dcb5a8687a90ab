//! The supervisor of `forkmon run`: it answers the stubs' registrations and
//! the kernel's candidate opens, keeps the chain of checkpoints, and on a
//! change kills everything below the file's checkpoint and resumes it.
//!
//! Files the program's tree reads that are no checkpoint (read by a
//! subprocess, a process with threads or without the stub, or after the
//! most checkpoints) are watched too: a change to one resumes from the
//! checkpoint the reader ran below, or restarts the program from scratch
//! when there is none (see [`ReadFile`]).
//!
//! The live program is always a chain: the target (or a checkpoint's fresh
//! child) runs; at each matching open it becomes a checkpoint and its child
//! runs on. `chain[i]` is the i-th checkpoint; what runs below the last one
//! is the [`Program`], the only process that may become the next
//! checkpoint.
//!
//! Every state is an enum carrying its data ([`Program`], [`Next`],
//! [`Prime`]); every effect on the world (commands to the stubs, cgroups,
//! BPF maps, watches, `/proc`) goes through [`System`], which the tests
//! stand in for, so each transition is unit-tested without root.
use std::{
    collections::{HashMap, HashSet},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use forkmon_common::stub::{
    self, CHECKPOINT_ATFORK, CMD_FORK, CMD_FORK_STANDBY, CMD_GO, FAILED_THREADS_LEFT, StubMessage,
};
use log::{debug, warn};

use crate::{
    channel::{self, Kernel, Registration},
    filter::Filter,
    output::{Reporter, escape_path},
    priority::Policy,
    procfs::Thread,
    stats::Stats,
    watcher::{EVALUATION_LEAD, Identity, WatchError, WatchEvent},
};

pub mod live;
mod reads;
#[cfg(test)]
mod tests;

use reads::ReadFile;
pub use reads::{ReadOpen, Reader, Restart};

/// How long a resume waits for the frozen checkpoints and standbys below it
/// to exit (see [`Supervisor::resume_from`]).
const FROZEN_GRACE: Duration = Duration::from_millis(1);

/// How long a resume waits for the killed program to exit; a slower exit
/// does not stop the resume (see [`Supervisor::resume_from`]).
const KILL_TIMEOUT: Duration = crate::cgroup::KILL_TIMEOUT;

/// How much longer than [`EVALUATION_LEAD`] a primed standby polls for
/// "go" before it sleeps again (forkmon may be late on a loaded machine).
const STANDBY_SPIN_MARGIN: Duration = Duration::from_millis(2);

/// What the supervisor does to the world and asks of it. The live one
/// ([`live::LiveSystem`]) talks to the kernel; the tests' records.
pub trait System: Kernel {
    /// A cgroup: what the supervisor kills and waits for at once.
    type Group: Copy + Eq + std::fmt::Debug;

    // The stubs' command channels.
    /// From now on, commands to `pid` go to `eventfd`, which `pid` holds
    /// as its fd number `theirs`.
    fn connect(&mut self, pid: i32, eventfd: OwnedFd, theirs: i32);
    fn disconnect(&mut self, pid: i32);
    fn is_connected(&self, pid: i32) -> bool;
    /// Whether `pid` still holds its eventfd and the stub socket: a program
    /// may close every fd it did not open itself (`closefrom`, daemons).
    fn channels_intact(&self, pid: i32) -> bool;
    /// Writes `command` to `pid`'s eventfd.
    fn send(&mut self, pid: i32, command: u64) -> anyhow::Result<()>;

    // The eBPF program's maps.
    /// The kernel may signal `pid` at candidate opens.
    fn arm(&mut self, pid: i32) -> anyhow::Result<()>;
    /// …but not at its next candidate open: a resumed child of a bytecode
    /// cache's checkpoint, whose next open is the cache's source.
    fn arm_skipping_next_open(&mut self, pid: i32) -> anyhow::Result<()>;
    /// …and the next process `pid` forks, before it runs.
    fn arm_next_child(&mut self, pid: i32) -> anyhow::Result<()>;
    /// Takes that back if `pid` is still armed.
    fn keep_next_child_unarmed(&mut self, pid: i32) -> anyhow::Result<()>;
    /// The kernel no longer signals `pid`.
    fn disarm(&mut self, pid: i32);
    /// The kernel signals no open under `dir` (best effort: it has room
    /// for a few).
    fn skip_in_prefilter(&mut self, dir: &Path);

    // Cgroups: a group per running child, nested below its checkpoint's.
    fn new_group(&mut self, parent: Self::Group) -> anyhow::Result<Self::Group>;
    /// Moves `pid` into `group`; one that already exited needs no moving.
    fn move_into(&mut self, group: Self::Group, pid: i32) -> anyhow::Result<()>;
    fn members(&self, group: Self::Group) -> anyhow::Result<Vec<i32>>;
    /// Moves a checkpoint's child into `group`, with what it started
    /// before (see [`Adoption`]). The live system does it from a thread of
    /// its own and returns at once: a move waits for an RCU grace period
    /// (milliseconds), and the program, running meanwhile, must not wait
    /// for forkmon's verdicts that long.
    fn adopt(&mut self, group: Self::Group, adoption: Adoption<Self::Group>) -> anyhow::Result<()> {
        self.move_into(group, adoption.child)?;
        for other in self.members(adoption.from)? {
            if adoption.takes(other, |pid| self.alive_parent(pid)) {
                self.move_into(group, other)?;
            }
        }
        Ok(())
    }
    /// The processes in `group` and the groups nested in it (none if it
    /// cannot be read).
    fn all_members(&self, group: Self::Group) -> Vec<i32>;
    /// Sends `signal` to `pid`, if it is still there.
    fn signal(&mut self, pid: i32, signal: nix::sys::signal::Signal);
    /// Kills the group's processes without waiting for them.
    fn kill_now(&mut self, group: Self::Group) -> anyhow::Result<()>;
    /// Kills the group and everything nested in it, in the background.
    fn kill_in_background(&mut self, group: Self::Group) -> anyhow::Result<()>;
    /// Whether the group is empty, waiting up to `timeout` for it to be.
    fn wait_empty(&mut self, group: Self::Group, timeout: Duration) -> anyhow::Result<bool>;
    /// Opens ahead what killing the group will need.
    fn prepare(&mut self, group: Self::Group);
    /// Removes the killed groups that are empty.
    fn reap_empty(&mut self);

    /// `pid` is a standby of the checkpoint resumed last, the likeliest
    /// to run next: the live system copies the pages it shares with its
    /// checkpoint while it waits, within a memory budget, so the program
    /// does not copy them on the resume's path (see `live::precopy`).
    fn warm(&mut self, _pid: i32) {}
    /// `pid`, a standby, is about to run the program: whatever `warm`
    /// does to it stops first.
    fn before_go(&mut self, _pid: i32) {}

    // Processes.
    fn kill(&mut self, pid: i32);
    /// What `pid`'s fd `fd` is, if it is a regular file.
    fn opened_file(&self, pid: i32, fd: i64) -> Option<Identity>;
    /// What `path` is, looked at as the program's user; `None` if it is no
    /// regular file it can reach.
    fn file(&self, path: &Path) -> Option<Identity>;
    /// How many threads `pid` has (one stat, on the checkpoint's path).
    fn threads(&self, pid: i32) -> usize;
    /// Each of them, when there is more than one.
    fn thread_states(&self, pid: i32) -> Vec<Thread>;
    fn policy(&self, pid: i32) -> Policy;
    fn give(&mut self, policy: Policy, pid: i32);

    // Files.
    fn watch(&mut self, file: &Path, baseline: Option<Identity>) -> Result<(), WatchError>;
    fn unwatch(&mut self, file: &Path);
}

/// A checkpoint's child on its way into its own group, and what goes with
/// it: what it started before its move — its descendants, and those whose
/// parent has exited meanwhile (`sleep &` at the end of a script, a
/// daemon's double fork), reparented to forkmon — anything in the
/// checkpoint's group but the checkpoint, the children it forks itself (a
/// standby, one on its way) and the start-up it was made with (a server
/// the program launched before the checkpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adoption<G> {
    pub child: i32,
    /// The checkpoint's group, which the child leaves.
    pub from: G,
    pub checkpoint: i32,
    pub startup: Vec<i32>,
}

impl<G> Adoption<G> {
    /// Whether `other`, in the checkpoint's group, goes with the child.
    pub fn takes(&self, other: i32, alive_parent: impl Fn(i32) -> Option<i32>) -> bool {
        if other == self.checkpoint || other == self.child || self.startup.contains(&other) {
            return false;
        }
        let the_checkpoints = !descends_from(&alive_parent, other, self.child)
            && (alive_parent(other) == Some(self.checkpoint)
                || self
                    .startup
                    .iter()
                    .any(|&up| descends_from(&alive_parent, other, up)));
        !the_checkpoints
    }
}

/// Where the program is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Program<G> {
    /// `pid` runs the program, in `group` (or ran it: it may have exited and
    /// wait for changes). The target, or the last checkpoint's child.
    Running { pid: i32, group: G },
    /// The next child of checkpoint `at` to register runs the program: its
    /// first, or a resume's when no standby was ready.
    Starting { at: usize },
    /// A change was seen: everything below checkpoint `at` is killed, and
    /// the program resumes from there once the delays have passed.
    Stopped(Stop<G>),
    /// Nothing runs, and no checkpoint is left to resume from.
    Gone,
}

/// What a stop left to do before the resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stop<G> {
    at: usize,
    /// The group of the processes that ran the program, until it is empty.
    running: Option<G>,
    /// The group holding everything below the checkpoint (the same, plus
    /// the later checkpoints and their standbys), until it is empty.
    below: Option<G>,
    prime: Prime,
}

/// How far the resume was prepared (see [`Supervisor::prime_resume`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prime {
    NotYet,
    Done,
    /// …and this standby was told that "go" is imminent: it polls.
    Spinning(i32),
}

/// A checkpoint's next child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// None prepared: the next resume forks one.
    Nothing,
    /// Asked for (or forked early, at the checkpoint itself) and not
    /// registered yet. `stale`: a change was seen below the checkpoint
    /// after it was forked to run, so if it runs already it runs old
    /// content, and must go.
    Forking { stale: bool },
    /// A registered child waiting to be told to run: the next resume wakes
    /// it instead of forking. Prepared while the program is idle (see
    /// [`Supervisor::prepare_standbys`]).
    Standby(i32),
}

struct Checkpoint<G> {
    /// The file whose open this checkpoint was made at.
    file: PathBuf,
    /// The checkpoint process, frozen in its stub.
    pid: i32,
    /// Its cgroup: the checkpoint's own (it was the program until now).
    group: G,
    /// The child that runs (or ran) the program from here, and its cgroup,
    /// which holds everything below this checkpoint.
    below: Option<(i32, G)>,
    next: Next,
    /// The program's scheduling policy, given back to each child that runs
    /// it (the checkpoint and its standbys wait at idle priority).
    policy: Policy,
    /// The processes of its group when it was made: the program's start-up
    /// (a server it launched, say), which stays with the checkpoint, unlike
    /// what runs after it (see [`Supervisor::run_child`]).
    startup: Vec<i32>,
    /// "watch" is yet to be said: said once its first child runs, for a
    /// process forked with handlers, whose fork may still leave threads
    /// and be given up (see [`Fork::WithHandlers`]).
    unannounced: bool,
    /// How many threads it had at the open.
    threads: usize,
    /// It was made at a bytecode cache's open, which its children but the
    /// first see fail: they open the source next.
    cache: bool,
    /// Its command name, for the lines that name it.
    comm: String,
    /// The start-up a resume from it skips: from the program's launch to
    /// this open, less the time spent waiting for changes.
    skipped: Duration,
}

/// How a process is forked at its checkpoint.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fork {
    /// It has one thread (the one stopped at the open): `_Fork()`, which
    /// runs no atfork handler.
    Alone,
    /// It has others (how many threads in all), none that forkmon can tell
    /// no handler stops: the stub forks with glibc's `fork()`
    /// (`CHECKPOINT_ATFORK`), whose atfork handlers stop the pools that
    /// registered one (OpenBLAS's), and keeps the checkpoint only if no
    /// other thread is left.
    WithHandlers(usize),
}

/// HotSpot's own threads, by the names it gives them (measured with
/// OpenJDK 17): its GC, compilers and VM thread run the program's code
/// along with it, and no atfork handler stops them.
const JVM_THREADS: [&str; 3] = ["VM Thread", "Reference Handl", "Signal Dispatch"];

/// Why forkmon can tell, without forking, that the handlers of `fork()`
/// cannot leave a process without `thread`.
fn cannot_fork_without(thread: &Thread) -> Option<String> {
    if JVM_THREADS.contains(&thread.name.as_str()) {
        return Some(format!(
            "a Java VM: its thread '{}' and others run with the program, and a fork keeps \
             only one",
            thread.name
        ));
    }
    if matches!(thread.state, 'T' | 't') {
        // A pool's handler would wait for it (OpenBLAS joins its workers).
        return Some(format!(
            "thread {} is stopped, and a fork's handlers would wait for it",
            thread.tid
        ));
    }
    None
}

/// How a checkpoint's child starts running the program.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
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

/// An open the kernel stopped a process at, waiting for a verdict.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub pid: i32,
    /// The thread that opened: stopped in the stub's handler, the one
    /// thread a fork keeps.
    pub tid: i32,
    /// The fd the open returned.
    pub fd: i64,
    /// Which open syscall (an `open_syscall` value), for the re-opens.
    pub syscall: u32,
    /// The absolute path, when it could be resolved.
    pub path: Option<PathBuf>,
    pub reader: Reader,
}

/// Why an open did not become a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// Not the process that runs the program (a subprocess).
    NotTheProgram,
    /// The file does not pass the filter, or is a checkpoint already:
    /// nothing to watch for it.
    NotWanted,
    /// Why it cannot be a checkpoint, for a restart's line.
    Cannot(String),
}

/// Why the program ended for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The target exited before any checkpoint was made.
    Exited(u8),
    /// The checkpoints were killed from outside; nothing is left to resume.
    CheckpointsDied(u8),
}

pub struct Supervisor<S: System> {
    pub system: S,
    filter: Filter,
    report: Reporter,
    chain: Vec<Checkpoint<S::Group>>,
    program: Program<S::Group>,
    target: i32,
    /// Who the program runs as: stub messages from anyone else are not
    /// believed.
    program_uid: u32,
    last_status: Option<i32>,
    warned_threads: bool,
    /// Processes whose fork (with handlers) left other threads: not forked
    /// again while they have them.
    threads_left: HashSet<i32>,
    /// Files at whose open such a fork left threads: the same program,
    /// restarted, is not forked there again (node waits ~10 ms for each
    /// try, on every restart).
    threads_left_at: HashSet<PathBuf>,
    /// Directories the kernel was told to signal no open under (see
    /// [`Filter::unmatched_dir`]).
    unmatched_dirs: HashSet<PathBuf>,
    /// A checkpoint was killed from outside (and the chain cut there).
    checkpoints_died: bool,
    /// `--no-standby`: a resume forks its child.
    no_standby: bool,
    max_checkpoints: usize,
    warned_max: bool,
    pycache_prefix: Option<PathBuf>,
    /// Candidate opens of processes not registered yet, answered when they
    /// are.
    unregistered: HashMap<i32, Candidate>,
    /// Pids of processes that registered and are still known.
    registered: HashSet<i32>,
    /// Files read that are no checkpoint (see [`ReadFile`]).
    read: HashMap<PathBuf, ReadFile>,
    /// Files the tree wrote (see [`Self::on_write`]).
    outputs: HashSet<PathBuf>,
    /// `--restart`: no checkpoint at all; every change restarts.
    restart_only: bool,
    /// A restart a change asked for, until the caller carries it out.
    restart: Option<Restart>,
    /// The program's stub said hello (a static binary's never does).
    stubbed: bool,
    /// When the running program started (launched, or resumed), and the
    /// start-up the checkpoint it resumed from had skipped: what a
    /// checkpoint made now skips.
    run_clock: (Instant, Duration),
    /// A resume under way since then: its line is said once the program
    /// runs.
    resuming: Option<Instant>,
    /// The checkpoint resumed last: its standby is warmed (see
    /// [`System::warm`]).
    pub(super) last_resumed: Option<usize>,
    /// The changed file that stopped the program, until that is said.
    trigger: Option<PathBuf>,
    /// …or a key did (`--keys`).
    by_key: bool,
    stats: Stats,
}

pub struct Options {
    pub filter: Filter,
    pub report: Reporter,
    pub no_standby: bool,
    pub program_uid: u32,
    /// `--max-checkpoints`.
    pub max_checkpoints: usize,
    /// `PYTHONPYCACHEPREFIX`, which the program inherits from forkmon:
    /// where bytecode caches may mirror their sources (see `python`).
    pub pycache_prefix: Option<PathBuf>,
    /// `--restart`: restart the program on every change, never resume it.
    pub restart_only: bool,
}

impl<S: System> Supervisor<S> {
    /// Supervises `target`, started (paused, then released) in `group`.
    pub fn new(system: S, options: Options, target: i32, group: S::Group) -> Self {
        Supervisor {
            system,
            filter: options.filter,
            report: options.report,
            chain: Vec::new(),
            program: Program::Running { pid: target, group },
            target,
            program_uid: options.program_uid,
            last_status: None,
            warned_threads: false,
            threads_left: HashSet::new(),
            threads_left_at: HashSet::new(),
            unmatched_dirs: HashSet::new(),
            checkpoints_died: false,
            no_standby: options.no_standby,
            max_checkpoints: options.max_checkpoints,
            pycache_prefix: options.pycache_prefix,
            warned_max: false,
            unregistered: HashMap::new(),
            registered: HashSet::new(),
            read: HashMap::new(),
            outputs: HashSet::new(),
            restart_only: options.restart_only,
            restart: None,
            stubbed: false,
            run_clock: (Instant::now(), Duration::ZERO),
            resuming: None,
            last_resumed: None,
            trigger: None,
            by_key: false,
            stats: Stats::default(),
        }
    }

    /// What each checkpoint did for the run (`--stats`).
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The group of what runs the program, for the final stop.
    pub fn program_group(&self) -> Option<S::Group> {
        match self.program {
            Program::Running { group, .. } => Some(group),
            _ => None,
        }
    }

    fn running_pid(&self) -> Option<i32> {
        match self.program {
            Program::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// A process of the tree exited (the kernel's word).
    pub fn on_exit(&mut self, pid: i32) {
        self.unregistered.remove(&pid);
        let Some(index) = self.chain.iter().position(|c| c.pid == pid) else {
            return;
        };
        // A checkpoint died: killed from outside, for it never exits by
        // itself. (One whose fork failed ran on as the program: its report
        // is read before its exit, see run.rs.) It and every later one are
        // gone, and nothing can be resumed from them.
        self.report.warn(&format!(
            "the checkpoint at '{}' was killed from outside; it can no longer be resumed",
            escape_path(&self.chain[index].file)
        ));
        self.checkpoints_died = true;
        self.cut_chain(index);
    }

    /// Forgets checkpoints `index..` (gone), and a program state that
    /// depended on one of them.
    fn cut_chain(&mut self, index: usize) {
        // Files read below the checkpoints that go are read again, if at
        // all, by what runs from now on.
        let stale: Vec<PathBuf> = self
            .read
            .iter()
            .filter(|(_, read)| read.resume_at.is_some_and(|at| at >= index))
            .map(|(file, _)| file.clone())
            .collect();
        for file in stale {
            self.read.remove(&file);
            if !self.chain.iter().any(|c| c.file == file) {
                self.system.unwatch(&file);
            }
        }
        for gone in self.chain.drain(index..) {
            if !self.read.contains_key(&gone.file) {
                self.system.unwatch(&gone.file);
            }
            forget(&mut self.system, &mut self.registered, gone.pid);
            if let Some((child, _)) = gone.below {
                forget(&mut self.system, &mut self.registered, child);
            }
            if let Next::Standby(standby) = gone.next {
                forget(&mut self.system, &mut self.registered, standby);
            }
        }
        match self.program {
            Program::Starting { at } if at >= index => self.program = Program::Gone,
            Program::Stopped(stop) if stop.at >= index => self.program = Program::Gone,
            _ => {}
        }
        if self.chain.is_empty() && self.checkpoints_died {
            self.program = Program::Gone;
        }
    }

    /// The kernel stopped `candidate.pid` at an open that may match: answer
    /// it.
    pub fn on_candidate(&mut self, candidate: Candidate) -> anyhow::Result<()> {
        let pid = candidate.pid;
        if !self.registered.contains(&pid) {
            // A checkpoint's child runs before forkmon has its registration
            // (from another channel): answer once it has.
            debug!("candidate open by {pid}, not registered yet");
            self.unregistered.insert(pid, candidate);
            return Ok(());
        }
        if !self.system.channels_intact(pid) {
            // Its stub cannot hear a verdict, and lets the open return
            // without one (it checks the same).
            self.report.warn(&format!(
                "pid {pid} closed the file descriptors forkmon gave it: it runs on, \
                 observed only (not checkpointed)"
            ));
            self.system.disarm(pid);
            forget(&mut self.system, &mut self.registered, pid);
            return Ok(());
        }
        // The very file the program opened, while it waits: one stat says
        // whether it is a regular file, and gives the identity the watch
        // compares with, so a save between the open and the watch is still
        // seen as a change.
        let mut opened = self.system.opened_file(pid, candidate.fd);
        let mut path = candidate.path;
        // A bytecode cache stands for its source (see `python`): the
        // source is what is matched, watched and named.
        let source = path
            .as_deref()
            .and_then(|p| crate::python::source_of_cache(p, self.pycache_prefix.as_deref()))
            .and_then(|source| Some((self.system.file(&source)?, source)));
        let cache = opened.is_some() && source.is_some();
        if let (true, Some((identity, source))) = (cache, source) {
            (opened, path) = (Some(identity), Some(source));
        }
        let (Some(path), Some(identity)) = (path, opened) else {
            return self.let_go(pid);
        };
        let fork = self.should_checkpoint(pid, candidate.tid, &path, &candidate.reader.comm);
        let (Program::Running { group, .. }, Ok(fork)) = (self.program, &fork) else {
            // It goes on first: the watch can wait.
            self.let_go(pid)?;
            match fork {
                Err(Refusal::NotWanted) => self.skip_unmatched_dir(&path),
                Err(Refusal::Cannot(why)) => {
                    self.note_read(&path, identity, pid, &candidate.reader, Some(why))
                }
                Ok(_) | Err(Refusal::NotTheProgram) => {
                    self.note_read(&path, identity, pid, &candidate.reader, None)
                }
            }
            return Ok(());
        };
        let fork = *fork;
        // Before the verdict lets anything run after the checkpoint (while
        // the stub forks, which takes longer).
        let startup = self.system.members(group).unwrap_or_default();
        self.chain.push(Checkpoint {
            file: path.clone(),
            pid,
            group,
            below: None,
            next: Next::Forking { stale: false },
            policy: self.system.policy(pid),
            startup,
            unannounced: false,
            threads: match fork {
                Fork::Alone => 1,
                Fork::WithHandlers(threads) => threads,
            },
            cache,
            skipped: self.run_clock.1 + self.run_clock.0.elapsed(),
            comm: candidate.reader.comm.clone(),
        });
        let skipped = self.chain.last().map(|c| c.skipped).unwrap_or_default();
        self.stats.made(&path, skipped);
        let at = self.chain.len() - 1;
        self.program = Program::Starting { at };
        // A file with a checkpoint resumes from it, whoever looked at it
        // before (a stat to check a cache's date, a test runner's
        // collection).
        self.read.remove(&path);
        // Its child goes on at once: armed at the fork, as the eBPF program
        // set when it signalled this open. The stub may have forked it
        // already, before this verdict.
        let mut command = stub::checkpoint_command(candidate.syscall, cache);
        if fork != Fork::Alone {
            command |= CHECKPOINT_ATFORK;
        }
        self.system.send(pid, command)?;
        // While it forks. Its child may read the file before the watch is
        // in place: a save meanwhile still shows against `opened`.
        match self.system.watch(&path, Some(identity)) {
            Ok(()) if fork != Fork::Alone => self.chain[at].unannounced = true,
            Ok(()) => self.report.watch(&path),
            // The program runs on; only this file's changes go unnoticed.
            Err(e) => self.report.warn(&format!(
                "{e}; changes to '{}' will go unnoticed",
                escape_path(&path)
            )),
        }
        Ok(())
    }

    /// `path`, refused, lies where the filter matches nothing (a standard
    /// library, a virtual environment): the kernel signals no more opens
    /// there. A Python project with its `.venv` in the current directory
    /// had its start-up 3× slower, every module a round trip and a fork.
    fn skip_unmatched_dir(&mut self, path: &Path) {
        if self.filter.matches(path) {
            return; // refused as a checkpoint already
        }
        let Some(dir) = self.filter.unmatched_dir(path) else {
            return;
        };
        if self.unmatched_dirs.insert(dir.clone()) {
            self.system.skip_in_prefilter(&dir);
        }
    }

    /// Lets `pid`, stopped at an open that is no checkpoint, go on.
    fn let_go(&mut self, pid: i32) -> anyhow::Result<()> {
        // The eBPF program armed its next child, in case the stub forked
        // before this verdict; a child forked later is the program's own.
        self.system.keep_next_child_unarmed(pid)?;
        self.system.send(pid, CMD_GO)
    }

    /// Whether `pid`'s open of `path` (by its thread `tid`) becomes a
    /// checkpoint, and how it is forked.
    fn should_checkpoint(
        &mut self,
        pid: i32,
        tid: i32,
        path: &Path,
        comm: &str,
    ) -> Result<Fork, Refusal> {
        if !self.filter.matches(path) || self.chain.iter().any(|c| c.file == path) {
            // The first open of each file is its checkpoint.
            return Err(Refusal::NotWanted);
        }
        if self.running_pid() != Some(pid) {
            return Err(Refusal::NotTheProgram);
        }
        if self.restart_only {
            return Err(Refusal::Cannot("--restart".into()));
        }
        if self.chain.len() >= self.max_checkpoints {
            if !std::mem::replace(&mut self.warned_max, true) {
                self.report.warn(&format!(
                    "{} checkpoints made, the most kept at once: later files are not \
                     checkpointed (--max-checkpoints)",
                    self.chain.len()
                ));
            }
            return Err(Refusal::Cannot(format!(
                "{} checkpoints made, the most kept at once",
                self.chain.len()
            )));
        }
        match self.fork_for(pid, tid, comm)? {
            Fork::WithHandlers(count) if self.threads_left_at.contains(path) => {
                Err(Refusal::Cannot(format!("{comm} has {count} threads")))
            }
            fork => Ok(fork),
        }
    }

    /// How `pid`, stopped at an open by its thread `tid`, can be forked, if
    /// it can. A fork keeps only `tid`. Other threads are forked the way
    /// Python's `os.fork()` forks, with glibc's `fork()`, whose atfork
    /// handlers stop the pools that registered one (`import numpy` starts
    /// OpenBLAS's); the stub keeps the checkpoint only if that leaves no
    /// other thread. Their states cannot tell a pool from a thread at work:
    /// OpenBLAS's workers spin in user space, state R, for ~100 ms after
    /// each BLAS call, then sleep in a futex, as idle threads no handler
    /// stops do (docs/mechanism.md, "Threads"). What forkmon can tell
    /// without forking is refused here.
    fn fork_for(&mut self, pid: i32, tid: i32, comm: &str) -> Result<Fork, Refusal> {
        let count = self.system.threads(pid);
        if count <= 1 {
            return Ok(Fork::Alone);
        }
        let others: Vec<Thread> = self
            .system
            .thread_states(pid)
            .into_iter()
            .filter(|thread| thread.tid != tid)
            .collect();
        if others.is_empty() {
            return Ok(Fork::Alone); // they ended meanwhile
        }
        let has_threads = || Refusal::Cannot(format!("{comm} has {count} threads"));
        if self.threads_left.contains(&pid) {
            return Err(has_threads()); // its last fork left them, and said so
        }
        if let Some(why) = others.iter().find_map(cannot_fork_without) {
            self.warn_threads(pid, count, &why);
            return Err(has_threads());
        }
        debug!("pid {pid} has {count} threads: forking it with fork()'s handlers");
        Ok(Fork::WithHandlers(count))
    }

    /// Says once per run why a process with threads is not checkpointed.
    fn warn_threads(&mut self, pid: i32, count: usize, why: &str) {
        if !std::mem::replace(&mut self.warned_threads, true) {
            self.report.warn(&format!(
                "pid {pid} has {count} threads: not checkpointing it ({why})"
            ));
        }
    }

    /// A message on the stub socket, once the kernel has vouched for its
    /// sender.
    pub fn on_registration(&mut self, registration: Registration) -> anyhow::Result<()> {
        let message = match channel::check(
            &registration.message,
            registration.sender,
            self.program_uid,
            &self.system,
        ) {
            Ok(message) => message,
            Err(distrust) => {
                self.report.warn(&format!(
                    "ignoring a message on the stub socket: {distrust}"
                ));
                return Ok(());
            }
        };
        match message {
            StubMessage::Hello {
                pid,
                eventfd: theirs,
            } => {
                let Some(eventfd) = registration.eventfd else {
                    return Ok(());
                };
                // The target (or the program after an exec, e.g. a shim
                // that execs the real interpreter) can be checkpointed; any
                // other process is observed only.
                if self.running_pid() == Some(pid) {
                    self.stubbed = true;
                    self.system.arm(pid)?;
                }
                self.system.connect(pid, eventfd, theirs);
                self.registered.insert(pid);
                self.system.send(pid, CMD_GO)?;
            }
            StubMessage::Child {
                pid,
                checkpoint,
                waits,
                eventfd: theirs,
                ..
            } => {
                let Some(eventfd) = registration.eventfd else {
                    return Ok(());
                };
                self.on_child(pid, checkpoint, waits, (eventfd, theirs))?;
            }
            StubMessage::Exited { pid, status, .. } => self.on_child_exited(pid, status)?,
            StubMessage::Failed {
                pid,
                errno,
                gave_up,
                ..
            } => self.on_fork_failed(pid, errno, gave_up)?,
        }
        Ok(())
    }

    fn on_child(
        &mut self,
        pid: i32,
        checkpoint: i32,
        waits: bool,
        (eventfd, theirs): (OwnedFd, i32),
    ) -> anyhow::Result<()> {
        let Some(index) = self.chain.iter().position(|c| c.pid == checkpoint) else {
            debug!("child {pid} of a stale checkpoint");
            return Ok(());
        };
        self.system.connect(pid, eventfd, theirs);
        self.registered.insert(pid);
        // Forked by the stub before the checkpoint's start-up was read, it
        // may be in it: it is no start-up of the program's, and what its
        // subprocesses read meanwhile is the checkpoint's.
        if self.chain[index].startup.contains(&pid) {
            self.chain[index].startup.retain(|&p| p != pid);
            self.reads_below_child(index, pid);
        }
        let stale = matches!(self.chain[index].next, Next::Forking { stale: true });
        self.chain[index].next = Next::Nothing;
        let starting = self.program == Program::Starting { at: index };
        if !waits && (stale || !starting) {
            // It started before the change (or runs when nothing asked it
            // to): stop it, and fork anew.
            self.system.kill(pid);
            forget(&mut self.system, &mut self.registered, pid);
            self.unregistered.remove(&pid);
            return self.request_fork(index);
        }
        if starting {
            let start = if waits { Start::Go } else { Start::Running };
            self.run_child(index, pid, start)?;
        } else {
            self.chain[index].next = Next::Standby(pid);
            // Before any resume, the file opened last is likely the one
            // being worked on.
            if self.last_resumed.unwrap_or(self.chain.len() - 1) == index {
                self.system.warm(pid);
            }
        }
        if let Some(candidate) = self.unregistered.remove(&pid) {
            self.on_candidate(candidate)?;
        }
        Ok(())
    }

    fn on_child_exited(&mut self, pid: i32, status: i32) -> anyhow::Result<()> {
        forget(&mut self.system, &mut self.registered, pid);
        if self.running_pid() == Some(pid) {
            self.last_status = Some(status);
            self.report.exited(status);
            self.prepare_standbys()?;
        }
        if let Some(index) = self.chain.iter().position(|c| c.next == Next::Standby(pid)) {
            // Killed from outside while waiting: prepare another.
            self.chain[index].next = Next::Nothing;
            self.request_fork(index)?;
        }
        Ok(())
    }

    fn on_fork_failed(&mut self, pid: i32, errno: i32, gave_up: bool) -> anyhow::Result<()> {
        let Some(index) = self.chain.iter().position(|c| c.pid == pid) else {
            return Ok(());
        };
        // No child took the arming meant for it.
        self.system.arm(pid)?;
        let error = if errno == FAILED_THREADS_LEFT {
            "threads outlived fork's handlers".to_string()
        } else {
            nix::errno::Errno::from_raw(errno).desc().to_string()
        };
        if gave_up {
            // It runs on as the program, not as a checkpoint.
            let Checkpoint {
                file,
                group,
                threads,
                comm,
                ..
            } = self.chain.remove(index);
            self.cut_chain(index);
            self.program = Program::Running { pid, group };
            self.system.prepare(group);
            // Its file is still one it read: watched for a resume from the
            // checkpoint before, or a restart.
            let reader = Reader {
                ancestors: self.chain.iter().rev().map(|c| c.pid).collect(),
                comm: comm.clone(),
            };
            let why = if errno == FAILED_THREADS_LEFT {
                format!("{comm} has {threads} threads")
            } else {
                format!("cannot checkpoint {comm}: {error}")
            };
            // Its watch stays: it becomes a file read (or goes with the
            // file).
            match self.system.file(&file) {
                Some(identity) => self.note_read(&file, identity, pid, &reader, Some(why)),
                None => self.system.unwatch(&file),
            }
            if errno == FAILED_THREADS_LEFT {
                // Its fork with handlers left threads the child would lack
                // (the stub killed that child before it ran).
                self.threads_left.insert(pid);
                self.threads_left_at.insert(file.clone());
                self.warn_threads(
                    pid,
                    threads,
                    "some are not stopped by fork's handlers, and a fork keeps only one",
                );
            } else {
                self.report.warn(&format!(
                    "cannot checkpoint at '{}': {error}",
                    escape_path(&file)
                ));
            }
        } else {
            self.report.warn(&format!(
                "cannot prepare a resume from '{}': {error}",
                escape_path(&self.chain[index].file)
            ));
            self.chain[index].next = Next::Nothing;
        }
        Ok(())
    }

    /// Lets checkpoint `index`'s registered child `pid` run the program (or
    /// takes note that it does), and moves it into its own cgroup.
    ///
    /// The child runs first and is moved into its own cgroup right after,
    /// by the system, off this loop (see [`System::adopt`]): moving a
    /// process between cgroups waits for an RCU grace period (~10 ms
    /// here), which must delay neither the run nor the verdicts it waits
    /// for. What it spawns meanwhile is swept along, found by ancestry.
    fn run_child(&mut self, index: usize, pid: i32, start: Start) -> anyhow::Result<()> {
        let checkpoint = &mut self.chain[index];
        if std::mem::take(&mut checkpoint.unannounced) {
            // Its fork kept it: it has one thread now.
            self.report.watch(&checkpoint.file);
        }
        let (policy, parent_pid, parent_group, cache) = (
            checkpoint.policy,
            checkpoint.pid,
            checkpoint.group,
            checkpoint.cache,
        );
        if start == Start::Go {
            self.system.give(policy, pid);
            arm_resumed(&mut self.system, pid, cache)?;
        }
        if start != Start::Running {
            self.system.before_go(pid);
            self.system.send(pid, CMD_GO)?;
            // Woken or polling, perhaps on this CPU (see `prime_resume`):
            // let it go before the bookkeeping below.
            std::thread::yield_now();
        }
        let skipped = self.chain[index].skipped;
        self.run_clock = (Instant::now(), skipped);
        if let Some(since) = self.resuming.take() {
            let file = &self.chain[index].file;
            self.report.resumed(file, since.elapsed(), skipped);
            self.stats.resumed(file);
        }
        // The checkpoint reaps and reports this child: at the program's
        // priority, so its exit is known at once.
        self.system.give(policy, parent_pid);
        let started = std::time::Instant::now();
        let group = self.system.new_group(parent_group)?;
        // Once moved, what it starts is born in its group; what it started
        // before goes with it.
        let adoption = Adoption {
            child: pid,
            from: parent_group,
            checkpoint: parent_pid,
            startup: self.chain[index].startup.clone(),
        };
        self.system.adopt(group, adoption)?;
        debug!(
            "{pid} on its way into its cgroup in {:?}",
            started.elapsed()
        );
        self.chain[index].below = Some((pid, group));
        self.program = Program::Running { pid, group };
        self.system.prepare(group);
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
            self.system.give(Policy::IDLE, self.chain[index].pid);
            self.request_fork(index)?;
        }
        Ok(())
    }

    /// Asks checkpoint `index` to fork its next child — one that runs at
    /// once if the program is starting there, a standby otherwise — unless
    /// one is there or on its way (one command outstanding at most).
    fn request_fork(&mut self, index: usize) -> anyhow::Result<()> {
        let starting = self.program == Program::Starting { at: index };
        let checkpoint = &mut self.chain[index];
        if checkpoint.next != Next::Nothing {
            return Ok(());
        }
        checkpoint.next = Next::Forking { stale: false };
        let pid = checkpoint.pid;
        let command = if starting {
            self.system.arm_next_child(pid)?;
            CMD_FORK
        } else {
            CMD_FORK_STANDBY
        };
        if self.system.is_connected(pid) {
            self.system.send(pid, command)?;
        } else {
            warn!("checkpoint {pid} is gone");
        }
        Ok(())
    }

    /// A change is seen: stop the program below the earliest checkpoint
    /// concerned at once, and resume once the delays have passed (even if
    /// the files turn out unchanged: what ran is gone).
    ///
    /// A change to a file that no checkpoint serves asks for a restart
    /// instead (see [`take_restart`](Self::take_restart)), once the delays
    /// have passed: a restart stops the program gently, which is not worth
    /// starting before the editor is done.
    pub fn on_watch_event(&mut self, event: WatchEvent) -> anyhow::Result<()> {
        match event {
            // Only a checkpoint's own file stops the program before the
            // delay: a file it merely read may be its own output, which a
            // writing open (arriving meanwhile) rules out.
            WatchEvent::Touched(files) => {
                match self.chain.iter().position(|c| files.contains(&c.file)) {
                    Some(index) => {
                        self.note_trigger(&files, index);
                        self.stop_below(index)
                    }
                    None => Ok(()),
                }
            }
            WatchEvent::Imminent => self.prime_resume(Due::Soon),
            WatchEvent::Changed(files) => {
                // The burst ends here. A file touched but found unchanged (a
                // second event for a save already resumed from) names no
                // change: the line names one that changed.
                let touched = self.trigger.take();
                if let Some(restart) = self.restart_for(&files) {
                    self.restart = Some(restart);
                    return Ok(());
                }
                let stopped = match self.program {
                    Program::Stopped(stop) => Some(stop.at),
                    _ => None,
                };
                let Some(index) = self.earliest_of(&files).into_iter().chain(stopped).min() else {
                    return Ok(());
                };
                self.trigger = touched.filter(|file| files.is_empty() || files.contains(file));
                self.note_trigger(&files, index);
                let resumed = self.resume_from(index);
                // Said already if the resume was primed before.
                self.trigger = None;
                resumed
            }
        }
    }

    /// The earliest checkpoint a resume for `files` must start from: made
    /// at one of them, or one that a reader of them ran below.
    fn earliest_of(&self, files: &[PathBuf]) -> Option<usize> {
        let made_at = self.chain.iter().position(|c| files.contains(&c.file));
        let read_below = files
            .iter()
            .filter_map(|file| self.read.get(file)?.resume_at)
            .min();
        made_at.into_iter().chain(read_below).min()
    }

    /// Remembers which of `files` makes the program resume from checkpoint
    /// `index`, for the line that says so (the first named wins).
    fn note_trigger(&mut self, files: &[PathBuf], index: usize) {
        if self.trigger.is_some() {
            return;
        }
        self.trigger = files
            .iter()
            .find(|file| {
                self.chain[index].file == **file
                    || self
                        .read
                        .get(*file)
                        .is_some_and(|r| r.resume_at == Some(index))
            })
            .cloned();
    }

    /// What forkmon says, for the caller's own lines.
    pub fn report(&self) -> &Reporter {
        &self.report
    }

    /// Kills everything below checkpoint `index` without waiting for it to
    /// exit: first what runs the program, then the later checkpoints and
    /// their standbys. Called as soon as a change is seen, so the exits
    /// overlap the restart delay; [`resume_from`](Self::resume_from) then
    /// waits for what is left.
    fn stop_below(&mut self, index: usize) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let running = match self.program {
            Program::Stopped(stop) if stop.at <= index => return Ok(()),
            Program::Stopped(stop) => stop.running,
            Program::Running { pid, group } => {
                self.system.kill_now(group)?;
                forget(&mut self.system, &mut self.registered, pid);
                Some(group)
            }
            Program::Starting { at } => {
                // Its child may not have registered yet (it is in the
                // checkpoint's own group until then).
                if let Next::Forking { stale } = &mut self.chain[at].next {
                    *stale |= at == index;
                }
                None
            }
            Program::Gone => return Ok(()),
        };
        let below = self.chain[index].below.take().map(|(child, group)| {
            forget(&mut self.system, &mut self.registered, child);
            group
        });
        if let Some(group) = below {
            self.system.kill_in_background(group)?;
        }
        debug!(
            "killed the program below {} in {:?}",
            self.chain[index].pid,
            started.elapsed()
        );
        self.program = Program::Stopped(Stop {
            at: index,
            running,
            below,
            prime: Prime::NotYet,
        });
        self.cut_chain(index + 1);
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
        let Program::Stopped(mut stop) = self.program else {
            return Ok(());
        };
        if stop.prime != Prime::NotYet {
            return Ok(());
        }
        stop.prime = Prime::Done;
        let checkpoint = &self.chain[stop.at];
        self.report.clear_screen();
        let trigger = self.trigger.take();
        if std::mem::take(&mut self.by_key) {
            self.report.warn(&format!(
                "resuming from '{}' (key r)..",
                escape_path(&checkpoint.file)
            ));
        } else {
            self.report.changed(
                trigger.as_deref().unwrap_or(&checkpoint.file),
                &checkpoint.file,
            );
        }
        for group in [&mut stop.running, &mut stop.below] {
            if let Some(g) = *group
                && self.system.wait_empty(g, Duration::ZERO).unwrap_or(false)
            {
                *group = None;
            }
        }
        let (policy, next, cache) = (checkpoint.policy, checkpoint.next, checkpoint.cache);
        self.program = Program::Stopped(stop);
        if due == Due::Now && stop.running.is_none() && stop.below.is_none() {
            return Ok(());
        }
        let Next::Standby(standby) = next else {
            return Ok(());
        };
        if !self.system.is_connected(standby) {
            return Ok(());
        }
        self.system.give(policy, standby);
        arm_resumed(&mut self.system, standby, cache)?;
        let budget = (EVALUATION_LEAD + STANDBY_SPIN_MARGIN).as_micros() as u64;
        self.system.send(standby, stub::spin_command(budget))?;
        stop.prime = Prime::Spinning(standby);
        self.program = Program::Stopped(stop);
        Ok(())
    }

    /// Kill everything below checkpoint `index` (if not done yet) and run
    /// its standby, or the next child it forks if none is ready.
    ///
    /// What ran the program is waited for, so that what it held (a port,
    /// a lock) is free before the program runs again. The frozen
    /// checkpoints and standbys below are waited for only briefly: they
    /// run nothing, and thousands of them take long to exit.
    fn resume_from(&mut self, index: usize) -> anyhow::Result<()> {
        self.resuming = Some(Instant::now());
        self.last_resumed = Some(index);
        self.stop_below(index)?;
        // Without a delay nothing was imminent: prime now, so that the
        // standby wakes while the killed program exits.
        self.prime_resume(Due::Now)?;
        let Program::Stopped(stop) = self.program else {
            return Ok(()); // nothing left to resume from
        };
        let started = std::time::Instant::now();
        if let Some(group) = stop.running {
            match self.system.wait_empty(group, KILL_TIMEOUT) {
                Ok(true) => {}
                // SIGKILLed processes run no more code of theirs; a slow
                // exit (a loaded machine) must not stop the resume.
                Ok(false) => warn!("the program is still exiting after SIGKILL"),
                Err(e) => warn!("{e}"),
            }
        }
        if let Some(group) = stop.below {
            let _ = self.system.wait_empty(group, FROZEN_GRACE);
        }
        let at = stop.at;
        debug!(
            "stopped the program below {} in {:?}",
            self.chain[at].pid,
            started.elapsed()
        );
        let result = match self.chain[at].next {
            Next::Standby(standby) => {
                self.chain[at].next = Next::Nothing;
                let start = if stop.prime == Prime::Spinning(standby) {
                    Start::Primed
                } else {
                    Start::Go
                };
                self.run_child(at, standby, start)
            }
            Next::Nothing | Next::Forking { .. } => {
                // Its fork is on the resume's path now (or on its way: the
                // child it forks runs once it registers).
                debug!("no standby ready at checkpoint {at}: forking one");
                let checkpoint = &self.chain[at];
                self.system.give(checkpoint.policy, checkpoint.pid);
                self.program = Program::Starting { at };
                self.request_fork(at)
            }
        };
        // Killed groups already empty, from this resume or earlier ones.
        self.system.reap_empty();
        result
    }

    /// The target exited (forkmon reaped it). Returns how the program
    /// ended for good, if it has: no checkpoint is left to resume from.
    pub fn on_target_exit(&mut self, code: i32) -> Option<Ended> {
        forget(&mut self.system, &mut self.registered, self.target);
        let code = code as u8;
        if self.checkpoints_died {
            // The first checkpoint (the target itself) was killed.
            self.report
                .warn("the program's first checkpoint was killed from outside; stopping");
            return Some(Ended::CheckpointsDied(code));
        }
        if self.chain.is_empty() && !self.read.is_empty() {
            // Files it read are watched: a change restarts it.
            let status = shell_code_status(code);
            self.last_status = Some(status);
            self.report.exited(status);
            return None;
        }
        if self.chain.is_empty() {
            self.report
                .exited_for_good(code as i32, &self.filter.describe());
            return Some(Ended::Exited(code));
        }
        // The first checkpoint itself died: nothing is left to resume.
        self.report
            .warn("the program's first checkpoint died; stopping");
        Some(Ended::CheckpointsDied(code))
    }

    pub fn target(&self) -> i32 {
        self.target
    }

    /// forkmon's exit status when `signal` ends it: the program's last.
    pub fn exit_status(&self, signal: i32) -> u8 {
        match self.last_status {
            Some(status) => wait_status_code(status),
            None => 128 + signal as u8,
        }
    }
}

/// Drops `pid`'s command channel: it is gone, or about to be.
fn forget(system: &mut impl System, registered: &mut HashSet<i32>, pid: i32) {
    if registered.remove(&pid) {
        system.disconnect(pid);
    }
}

/// A shell's exit code (128 + N for signal N) as a raw wait status.
fn shell_code_status(code: u8) -> i32 {
    match code {
        129..=192 => i32::from(code - 128),
        _ => i32::from(code) << 8,
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

/// Whether `ancestor` is `pid`'s parent, grandparent, …
fn descends_from(alive_parent: &impl Fn(i32) -> Option<i32>, mut pid: i32, ancestor: i32) -> bool {
    for _ in 0..64 {
        let Some(parent) = alive_parent(pid) else {
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

/// Arms a standby about to run the program from its checkpoint. One of a
/// bytecode cache's checkpoint is not signalled at its next open: the
/// cache's source, which has its checkpoint (the cache's) already.
fn arm_resumed<S: System>(system: &mut S, standby: i32, cache: bool) -> anyhow::Result<()> {
    if cache {
        system.arm_skipping_next_open(standby)
    } else {
        system.arm(standby)
    }
}
