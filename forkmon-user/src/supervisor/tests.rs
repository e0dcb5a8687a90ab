//! Each transition of the supervisor, through a [`System`] that records
//! what would have been done to the world: no root, no kernel.
use std::{
    collections::{HashMap, HashSet},
    os::fd::{FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    time::Duration,
};

use forkmon_common::{
    open_syscall,
    stub::{
        self, CHECKPOINT_ATFORK, CMD_FORK, CMD_FORK_STANDBY, CMD_GO, FAILED_THREADS_LEFT,
        StubMessage,
    },
};

use super::*;
use crate::channel::Sender;
use nix::sys::signal::Signal;

/// What the supervisor did, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Did {
    Sent(i32, u64),
    Armed(i32),
    ArmedNextChild(i32),
    ArmedSkippingNextOpen(i32),
    Skipped(PathBuf),
    KeptNextChildUnarmed(i32),
    Disarmed(i32),
    NewGroup { group: u32, parent: u32 },
    Moved(u32, i32),
    KilledNow(u32),
    KilledInBackground(u32),
    Killed(i32),
    Watched(PathBuf),
    Unwatched(PathBuf),
    Signalled(i32, nix::sys::signal::Signal),
}

const USER: u32 = 1000;
const TARGET: i32 = 100;

/// The world as the supervisor sees it: a tree of live processes (pid →
/// parent), groups numbered from 0 (the target's), regular files.
struct FakeSystem {
    did: Vec<Did>,
    alive: HashMap<i32, i32>,
    connected: HashSet<i32>,
    groups: u32,
    /// Each group's parent group.
    nested_in: HashMap<u32, u32>,
    members: HashMap<u32, Vec<i32>>,
    /// Groups that still hold processes when asked.
    busy: HashSet<u32>,
    /// Each process's threads (absent: one).
    threads: HashMap<i32, Vec<Thread>>,
    /// What the program's fds are: absent, not a regular file.
    regular: bool,
    watch_error: bool,
    /// Processes that closed the fds forkmon gave them.
    closed_fds: HashSet<i32>,
    /// Files that exist, as the program's user sees them.
    files: HashSet<PathBuf>,
}

impl FakeSystem {
    fn new() -> FakeSystem {
        FakeSystem {
            did: Vec::new(),
            alive: HashMap::from([(TARGET, 1)]),
            connected: HashSet::new(),
            groups: 1,
            nested_in: HashMap::new(),
            members: HashMap::from([(0, vec![TARGET])]),
            busy: HashSet::new(),
            threads: HashMap::new(),
            regular: true,
            watch_error: false,
            closed_fds: HashSet::new(),
            files: HashSet::new(),
        }
    }

    /// Commands sent to `pid`, in order.
    fn sent_to(&self, pid: i32) -> Vec<u64> {
        self.did
            .iter()
            .filter_map(|d| match d {
                Did::Sent(to, command) if *to == pid => Some(*command),
                _ => None,
            })
            .collect()
    }
}

impl Kernel for FakeSystem {
    fn in_tree(&self, pid: i32) -> bool {
        // The program's tree: the target and the pids after it.
        self.alive.contains_key(&pid) && pid >= TARGET
    }

    fn alive_parent(&self, pid: i32) -> Option<i32> {
        self.alive.get(&pid).copied()
    }
}

impl System for FakeSystem {
    type Group = u32;

    fn connect(&mut self, pid: i32, _eventfd: OwnedFd, _theirs: i32) {
        self.connected.insert(pid);
    }

    fn disconnect(&mut self, pid: i32) {
        self.connected.remove(&pid);
    }

    fn is_connected(&self, pid: i32) -> bool {
        self.connected.contains(&pid)
    }

    fn channels_intact(&self, pid: i32) -> bool {
        self.connected.contains(&pid) && !self.closed_fds.contains(&pid)
    }

    fn send(&mut self, pid: i32, command: u64) -> anyhow::Result<()> {
        anyhow::ensure!(self.connected.contains(&pid), "{pid} is not connected");
        self.did.push(Did::Sent(pid, command));
        Ok(())
    }

    fn arm(&mut self, pid: i32) -> anyhow::Result<()> {
        self.did.push(Did::Armed(pid));
        Ok(())
    }

    fn arm_skipping_next_open(&mut self, pid: i32) -> anyhow::Result<()> {
        self.did.push(Did::ArmedSkippingNextOpen(pid));
        Ok(())
    }

    fn arm_next_child(&mut self, pid: i32) -> anyhow::Result<()> {
        self.did.push(Did::ArmedNextChild(pid));
        Ok(())
    }

    fn keep_next_child_unarmed(&mut self, pid: i32) -> anyhow::Result<()> {
        self.did.push(Did::KeptNextChildUnarmed(pid));
        Ok(())
    }

    fn disarm(&mut self, pid: i32) {
        self.did.push(Did::Disarmed(pid));
    }

    fn skip_in_prefilter(&mut self, dir: &Path) {
        self.did.push(Did::Skipped(dir.to_owned()));
    }

    fn new_group(&mut self, parent: u32) -> anyhow::Result<u32> {
        let group = self.groups;
        self.groups += 1;
        self.nested_in.insert(group, parent);
        self.did.push(Did::NewGroup { group, parent });
        Ok(group)
    }

    fn move_into(&mut self, group: u32, pid: i32) -> anyhow::Result<()> {
        for members in self.members.values_mut() {
            members.retain(|&p| p != pid);
        }
        self.members.entry(group).or_default().push(pid);
        self.did.push(Did::Moved(group, pid));
        Ok(())
    }

    fn members(&self, group: u32) -> anyhow::Result<Vec<i32>> {
        Ok(self.members.get(&group).cloned().unwrap_or_default())
    }

    fn all_members(&self, group: u32) -> Vec<i32> {
        // The groups nested in `group`, as the supervisor made them (in
        // order: a parent before its children).
        let mut groups = vec![group];
        for nested in 0..self.groups {
            if self
                .nested_in
                .get(&nested)
                .is_some_and(|p| groups.contains(p))
            {
                groups.push(nested);
            }
        }
        groups
            .iter()
            .flat_map(|g| self.members.get(g).cloned().unwrap_or_default())
            .collect()
    }

    fn signal(&mut self, pid: i32, signal: nix::sys::signal::Signal) {
        self.did.push(Did::Signalled(pid, signal));
    }

    fn kill_now(&mut self, group: u32) -> anyhow::Result<()> {
        self.did.push(Did::KilledNow(group));
        Ok(())
    }

    fn kill_in_background(&mut self, group: u32) -> anyhow::Result<()> {
        self.did.push(Did::KilledInBackground(group));
        Ok(())
    }

    fn wait_empty(&mut self, group: u32, _timeout: Duration) -> anyhow::Result<bool> {
        Ok(!self.busy.contains(&group))
    }

    fn prepare(&mut self, _group: u32) {}

    fn reap_empty(&mut self) {}

    fn kill(&mut self, pid: i32) {
        self.alive.remove(&pid);
        self.did.push(Did::Killed(pid));
    }

    fn opened_file(&self, _pid: i32, fd: i64) -> Option<Identity> {
        self.regular.then_some(Identity {
            dev: 1,
            ino: fd as u64,
            size: 4,
            mtime_ns: 0,
            ctime_ns: 0,
        })
    }

    fn file(&self, path: &Path) -> Option<Identity> {
        self.files.contains(path).then_some(Identity {
            dev: 1,
            ino: 99,
            size: 4,
            mtime_ns: 0,
            ctime_ns: 0,
        })
    }

    fn threads(&self, pid: i32) -> usize {
        self.threads.get(&pid).map_or(1, Vec::len)
    }

    fn thread_states(&self, pid: i32) -> Vec<Thread> {
        self.threads.get(&pid).cloned().unwrap_or_default()
    }

    fn policy(&self, _pid: i32) -> Policy {
        Policy::NORMAL
    }

    fn give(&mut self, _policy: Policy, _pid: i32) {}

    fn watch(&mut self, file: &Path, _baseline: Option<Identity>) -> Result<(), WatchError> {
        if self.watch_error {
            return Err(WatchError::WatchLimit {
                dir: file.parent().unwrap().to_path_buf(),
            });
        }
        self.did.push(Did::Watched(file.to_path_buf()));
        Ok(())
    }

    fn unwatch(&mut self, file: &Path) {
        self.did.push(Did::Unwatched(file.to_path_buf()));
    }
}

fn eventfd() -> OwnedFd {
    // SAFETY: eventfd returns a new fd we own, or -1 (checked).
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: just created, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A supervisor of `TARGET`, registered and running, filter: `/w/**`.
fn supervisor() -> Supervisor<FakeSystem> {
    let cwd = Path::new("/w");
    let options = Options {
        filter: Filter::new(&["/w/**".to_string()], None, cwd).unwrap(),
        report: Reporter::new(true, false),
        no_standby: false,
        program_uid: USER,
        max_checkpoints: 3,
        pycache_prefix: None,
        restart_only: false,
    };
    let mut s = Supervisor::new(FakeSystem::new(), options, TARGET, 0);
    s.message(
        TARGET,
        StubMessage::Hello {
            pid: TARGET,
            eventfd: 5,
        },
    );
    s
}

impl Supervisor<FakeSystem> {
    /// `message` sent by `sender`, with an eventfd.
    fn message(&mut self, sender: i32, message: StubMessage) {
        self.on_registration(Registration {
            message: message.encode(),
            eventfd: Some(eventfd()),
            sender: Some(Sender {
                pid: sender,
                uid: USER,
            }),
        })
        .unwrap();
    }

    /// `pid` opened `/w/NAME` as fd 3 and waits for the verdict.
    fn opens(&mut self, pid: i32, name: &str) {
        self.opens_in_thread(pid, pid, name);
    }

    /// …from its thread `tid`.
    fn opens_in_thread(&mut self, pid: i32, tid: i32, name: &str) {
        self.on_candidate(Candidate {
            pid,
            tid,
            fd: 3,
            syscall: open_syscall::OPENAT,
            path: Some(Path::new("/w").join(name)),
            reader: self.reader(pid),
        })
        .unwrap();
    }

    /// Who `pid` is, as the kernel's fork records tell: its ancestors in
    /// the fake tree.
    fn reader(&self, pid: i32) -> Reader {
        let mut ancestors = Vec::new();
        let mut at = pid;
        while let Some(&parent) = self.system.alive.get(&at) {
            if parent <= 1 {
                break;
            }
            ancestors.push(parent);
            at = parent;
        }
        Reader {
            comm: format!("p{pid}"),
            ancestors,
        }
    }

    /// `pid`, which did not wait for a verdict, read `/w/NAME`.
    fn reads(&mut self, pid: i32, name: &str) {
        let path = Path::new("/w").join(name);
        self.system.files.insert(path.clone());
        self.on_read(ReadOpen {
            pid,
            path: Some(path),
            reader: self.reader(pid),
        });
    }

    /// `parent` forked `child`, which registers: running at once or waiting.
    fn forks(&mut self, parent: i32, child: i32, waits: bool) {
        self.system.alive.insert(child, parent);
        let group = self
            .system
            .members
            .iter()
            .find(|(_, m)| m.contains(&parent))
            .map(|(g, _)| *g)
            .unwrap();
        self.system.members.get_mut(&group).unwrap().push(child);
        self.message(
            child,
            StubMessage::Child {
                pid: child,
                checkpoint: parent,
                fd: 3,
                waits,
                eventfd: 6,
            },
        );
    }

    /// The target's stub reports that its fork failed with `errno`, and
    /// whether it gave the checkpoint up (runs on as the program).
    fn fork_failed(&mut self, errno: i32, gave_up: bool) {
        self.message(
            TARGET,
            StubMessage::Failed {
                pid: TARGET,
                fd: 3,
                errno,
                gave_up,
            },
        );
    }

    /// Checkpoint `checkpoint` reaped its child `pid`.
    fn exited(&mut self, checkpoint: i32, pid: i32, status: i32) {
        self.system.alive.remove(&pid);
        self.message(
            checkpoint,
            StubMessage::Exited {
                pid,
                checkpoint,
                status,
            },
        );
    }

    fn changed(&mut self, name: &str) {
        let files = vec![Path::new("/w").join(name)];
        self.on_watch_event(WatchEvent::Touched(files.clone()))
            .unwrap();
        self.on_watch_event(WatchEvent::Changed(files)).unwrap();
    }

    fn take_did(&mut self) -> Vec<Did> {
        std::mem::take(&mut self.system.did)
    }
}

fn checkpoint_command() -> u64 {
    stub::checkpoint_command(open_syscall::OPENAT, false)
}

#[test]
fn the_target_is_armed_and_let_go_when_it_registers() {
    let mut s = supervisor();
    assert_eq!(
        s.take_did(),
        [Did::Armed(TARGET), Did::Sent(TARGET, CMD_GO)]
    );
    assert_eq!(
        s.program,
        Program::Running {
            pid: TARGET,
            group: 0
        }
    );
}

#[test]
fn a_matching_open_becomes_a_checkpoint_whose_child_runs_in_its_own_group() {
    let mut s = supervisor();
    s.take_did();
    s.opens(TARGET, "a.txt");
    assert_eq!(
        s.take_did(),
        [
            Did::Sent(TARGET, checkpoint_command()),
            Did::Watched("/w/a.txt".into())
        ]
    );
    assert_eq!(s.program, Program::Starting { at: 0 });
    // The child forked (early) runs at once.
    s.forks(TARGET, 101, false);
    assert_eq!(
        s.take_did(),
        [
            Did::NewGroup {
                group: 1,
                parent: 0
            },
            Did::Moved(1, 101)
        ]
    );
    assert_eq!(s.program, Program::Running { pid: 101, group: 1 });
    assert_eq!(s.chain[0].below, Some((101, 1)));
}

#[test]
fn an_open_that_does_not_match_or_is_not_a_regular_file_is_let_go() {
    let mut s = supervisor();
    s.take_did();
    s.on_candidate(Candidate {
        pid: TARGET,
        tid: TARGET,
        fd: 3,
        syscall: open_syscall::OPENAT,
        path: Some("/elsewhere/a.txt".into()),
        reader: s.reader(TARGET),
    })
    .unwrap();
    s.system.regular = false;
    s.opens(TARGET, "fifo");
    let let_go = [Did::KeptNextChildUnarmed(TARGET), Did::Sent(TARGET, CMD_GO)];
    assert_eq!(s.take_did(), [let_go.clone(), let_go].concat());
    assert!(s.chain.is_empty());
}

#[test]
fn each_file_is_a_checkpoint_once_and_only_the_program_checkpoints() {
    let mut s = supervisor();
    s.opens(TARGET, "a.txt");
    s.forks(TARGET, 101, false);
    s.take_did();
    s.opens(101, "a.txt");
    // A subprocess of the program, registered: observed only.
    s.system.alive.insert(200, 101);
    s.message(
        200,
        StubMessage::Hello {
            pid: 200,
            eventfd: 5,
        },
    );
    s.opens(200, "b.txt");
    let did = s.take_did();
    assert!(!did.contains(&Did::Armed(200)), "{did:?}");
    assert!(
        did.iter()
            .all(|d| !matches!(d, Did::Sent(_, c) if *c == checkpoint_command())),
        "{did:?}"
    );
    assert_eq!(s.chain.len(), 1);
}

fn thread(tid: i32, name: &str, state: char) -> Thread {
    Thread {
        tid,
        name: name.into(),
        state,
    }
}

/// The target's main thread, polling in the stub's handler (state R),
/// and `others`.
fn with_threads(s: &mut Supervisor<FakeSystem>, others: &[Thread]) {
    with_threads_of(s, TARGET, others);
}

/// `pid` has `others` besides its own thread.
fn with_threads_of(s: &mut Supervisor<FakeSystem>, pid: i32, others: &[Thread]) {
    let mut all = vec![thread(pid, "python3", 'R')];
    all.extend_from_slice(others);
    s.system.threads.insert(pid, all);
}

#[test]
fn a_process_whose_other_threads_may_be_a_pool_is_forked_with_handlers() {
    // OpenBLAS's workers spin (R) for ~100 ms after a BLAS call, then
    // sleep (S): either way the stub tries fork()'s handlers.
    for state in ['R', 'S', 'D'] {
        let mut s = supervisor();
        with_threads(&mut s, &[thread(105, "python3", state)]);
        s.take_did();
        s.opens(TARGET, "a.txt");
        assert_eq!(
            s.take_did(),
            [
                Did::Sent(TARGET, checkpoint_command() | CHECKPOINT_ATFORK),
                Did::Watched("/w/a.txt".into())
            ],
            "{state}"
        );
        assert!(!s.warned_threads);
        assert!(s.chain[0].unannounced, "said once its fork kept it");
        assert_eq!(s.chain[0].threads, 2);
        s.forks(TARGET, 101, false);
        assert!(!s.chain[0].unannounced);
        assert_eq!(s.program, Program::Running { pid: 101, group: 1 });
    }
}

#[test]
fn the_main_thread_is_another_thread_when_a_worker_opened() {
    // The stub forks in the thread that opened: the main thread would be
    // left behind like any other, unless a handler stopped it (none does).
    let mut s = supervisor();
    with_threads(&mut s, &[thread(105, "worker", 'R')]);
    s.opens_in_thread(TARGET, 105, "a.txt");
    assert_eq!(
        s.sent_to_last(TARGET),
        checkpoint_command() | CHECKPOINT_ATFORK
    );
}

#[test]
fn a_java_vm_or_a_stopped_thread_is_refused_without_forking() {
    for others in [
        vec![
            thread(105, "GC Thread#0", 'S'),
            thread(106, "VM Thread", 'S'),
        ],
        vec![thread(105, "python3", 'T')],
        vec![thread(105, "gdb-traced", 't')],
    ] {
        let mut s = supervisor();
        with_threads(&mut s, &others);
        s.take_did();
        s.opens(TARGET, "a.txt");
        assert_eq!(
            s.take_did(),
            [
                Did::KeptNextChildUnarmed(TARGET),
                Did::Sent(TARGET, CMD_GO),
                Did::Watched("/w/a.txt".into())
            ],
            "{others:?}: let go, and its file watched for a restart"
        );
        assert!(s.chain.is_empty());
        assert!(s.warned_threads, "one line says why");
    }
}

/// node: its threads outlive fork's handlers, so the stub gives the
/// checkpoint up; the file it read is then watched, and a change to it
/// restarts the program (here, with no checkpoint above it).
#[test]
fn a_checkpoint_given_up_for_threads_leaves_its_file_to_a_restart() {
    let mut s = supervisor();
    with_threads(&mut s, &[thread(105, "node", 'S')]);
    s.system.files.insert("/w/a.js".into());
    s.opens(TARGET, "a.js");
    s.take_did();
    s.fork_failed(FAILED_THREADS_LEFT, true);
    assert_eq!(
        s.take_did(),
        [Did::Armed(TARGET), Did::Watched("/w/a.js".into())],
        "its watch stays, now for a file it read"
    );
    assert_eq!(s.on_target_exit(0), None, "it waits for changes");
    s.changed("a.js");
    let restart = s.take_restart().expect("a change to it asks for a restart");
    assert_eq!(restart.file.as_deref(), Some(Path::new("/w/a.js")));
    assert!(restart.why.contains("2 threads"), "{}", restart.why);
}

#[test]
fn threads_left_by_the_fork_give_the_checkpoint_up_until_they_are_gone() {
    let mut s = supervisor();
    with_threads(&mut s, &[thread(105, "python3", 'S')]);
    s.opens(TARGET, "a.txt");
    s.take_did();
    // The stub's fork() left thread 105 (no handler stopped it): it killed
    // the child before it ran, and the program goes on.
    s.fork_failed(FAILED_THREADS_LEFT, true);
    assert_eq!(
        s.take_did(),
        [Did::Armed(TARGET), Did::Unwatched("/w/a.txt".into())]
    );
    assert!(s.chain.is_empty());
    assert!(s.warned_threads);
    assert_eq!(
        s.program,
        Program::Running {
            pid: TARGET,
            group: 0
        }
    );
    // Not forked again while it has them…
    s.opens(TARGET, "b.txt");
    assert_eq!(
        s.take_did(),
        [
            Did::KeptNextChildUnarmed(TARGET),
            Did::Sent(TARGET, CMD_GO),
            Did::Watched("/w/b.txt".into())
        ]
    );
    // …and checkpointed as any process once it has one thread.
    s.system.threads.remove(&TARGET);
    s.opens(TARGET, "c.txt");
    assert_eq!(s.sent_to_last(TARGET), checkpoint_command());
    assert_eq!(s.chain.len(), 1);
}

#[test]
fn an_open_before_the_registration_is_answered_after_it() {
    let mut s = supervisor();
    s.opens(TARGET, "a.txt");
    s.take_did();
    // The child's own candidate open arrives before its registration.
    s.system.alive.insert(101, TARGET);
    s.opens(101, "b.txt");
    assert_eq!(s.take_did(), []);
    s.system.alive.remove(&101);
    s.forks(TARGET, 101, false);
    let did = s.take_did();
    assert!(
        did.contains(&Did::Sent(101, checkpoint_command())),
        "answered once registered: {did:?}"
    );
    assert_eq!(s.chain.len(), 2);
}

/// Target checkpointed at a.txt, its child 101 ran and exited; the
/// checkpoint's standby 102 waits.
fn idle_with_a_standby() -> Supervisor<FakeSystem> {
    let mut s = supervisor();
    s.opens(TARGET, "a.txt");
    s.forks(TARGET, 101, false);
    s.exited(TARGET, 101, 0);
    assert_eq!(s.last_status, Some(0));
    assert_eq!(
        s.sent_to_last(TARGET),
        CMD_FORK_STANDBY,
        "standby asked for"
    );
    s.forks(TARGET, 102, true);
    assert_eq!(s.chain[0].next, Next::Standby(102));
    s.take_did();
    s
}

impl Supervisor<FakeSystem> {
    fn sent_to_last(&self, pid: i32) -> u64 {
        *self.system.sent_to(pid).last().expect("a command")
    }
}

#[test]
fn a_change_resumes_from_the_standby() {
    let mut s = idle_with_a_standby();
    s.changed("a.txt");
    let did = s.take_did();
    assert_eq!(
        did,
        [
            Did::KilledNow(1),
            Did::KilledInBackground(1),
            Did::Armed(102),
            Did::Sent(102, CMD_GO),
            Did::NewGroup {
                group: 2,
                parent: 0
            },
            Did::Moved(2, 102),
        ]
    );
    assert_eq!(s.program, Program::Running { pid: 102, group: 2 });
    assert_eq!(s.chain[0].next, Next::Nothing);
}

#[test]
fn a_standby_is_told_to_poll_when_the_resume_is_imminent() {
    let mut s = idle_with_a_standby();
    // The killed program is still exiting.
    s.system.busy.insert(1);
    let file = vec![PathBuf::from("/w/a.txt")];
    s.on_watch_event(WatchEvent::Touched(file.clone())).unwrap();
    s.on_watch_event(WatchEvent::Imminent).unwrap();
    let spin = s.sent_to_last(102);
    assert!(stub::spin_budget_us(spin) > 0, "{spin:#x}");
    assert!(s.take_did().contains(&Did::Armed(102)), "armed when primed");
    assert!(matches!(
        s.program,
        Program::Stopped(Stop {
            prime: Prime::Spinning(102),
            ..
        })
    ));
    s.system.busy.clear();
    s.on_watch_event(WatchEvent::Changed(file)).unwrap();
    assert_eq!(s.sent_to_last(102), CMD_GO);
    let did = s.take_did();
    assert!(!did.contains(&Did::Armed(102)), "armed once: {did:?}");
}

#[test]
fn a_resume_without_a_standby_forks_one_that_runs() {
    let mut s = supervisor();
    s.opens(TARGET, "a.txt");
    s.forks(TARGET, 101, false);
    s.take_did();
    // Still running: no standby prepared.
    s.changed("a.txt");
    assert_eq!(s.program, Program::Starting { at: 0 });
    assert_eq!(s.sent_to_last(TARGET), CMD_FORK);
    assert!(s.take_did().contains(&Did::ArmedNextChild(TARGET)));
    s.forks(TARGET, 102, false);
    assert_eq!(s.program, Program::Running { pid: 102, group: 2 });
}

#[test]
fn a_resume_while_a_standby_is_forking_runs_it_when_it_registers() {
    let mut s = supervisor();
    s.opens(TARGET, "a.txt");
    s.forks(TARGET, 101, false);
    s.exited(TARGET, 101, 0);
    // The standby is asked for; the change comes before it registers.
    s.changed("a.txt");
    assert_eq!(s.program, Program::Starting { at: 0 });
    assert_eq!(s.system.sent_to(TARGET).last(), Some(&CMD_FORK_STANDBY));
    s.take_did();
    s.forks(TARGET, 102, true);
    assert_eq!(s.sent_to_last(102), CMD_GO, "a waiting child is told to go");
    assert_eq!(s.program, Program::Running { pid: 102, group: 2 });
}

#[test]
fn a_change_during_the_checkpoint_kills_its_child_that_ran_old_content() {
    let mut s = supervisor();
    s.opens(TARGET, "a.txt");
    // The file changes before the first child registered: it may have
    // read the old content.
    let file = vec![PathBuf::from("/w/a.txt")];
    s.on_watch_event(WatchEvent::Touched(file.clone())).unwrap();
    assert!(matches!(s.program, Program::Stopped(Stop { at: 0, .. })));
    assert_eq!(s.chain[0].next, Next::Forking { stale: true });
    s.take_did();
    s.forks(TARGET, 101, false);
    assert_eq!(
        s.take_did(),
        [Did::Killed(101), Did::Sent(TARGET, CMD_FORK_STANDBY)],
        "killed, and a standby for the resume"
    );
    s.forks(TARGET, 102, true);
    s.on_watch_event(WatchEvent::Changed(file)).unwrap();
    assert_eq!(s.sent_to_last(102), CMD_GO);
    assert_eq!(s.program, Program::Running { pid: 102, group: 1 });
}

#[test]
fn a_change_resumes_from_the_earliest_checkpoint_and_forgets_the_later_ones() {
    let mut s = supervisor();
    s.opens(TARGET, "a.txt");
    s.forks(TARGET, 101, false);
    s.opens(101, "b.txt");
    s.forks(101, 102, false);
    assert_eq!(s.chain.len(), 2);
    s.take_did();
    s.changed("a.txt");
    let did = s.take_did();
    assert!(did.contains(&Did::Unwatched("/w/b.txt".into())), "{did:?}");
    assert!(did.contains(&Did::KilledInBackground(1)), "{did:?}");
    assert_eq!(s.chain.len(), 1);
    assert!(!s.system.is_connected(101) && !s.system.is_connected(102));
}

#[test]
fn a_failed_first_fork_leaves_the_program_running_as_it_was() {
    let mut s = supervisor();
    s.opens(TARGET, "a.txt");
    s.take_did();
    s.fork_failed(libc::EAGAIN, true);
    assert_eq!(
        s.take_did(),
        [Did::Armed(TARGET), Did::Unwatched("/w/a.txt".into())]
    );
    assert!(s.chain.is_empty());
    assert_eq!(
        s.program,
        Program::Running {
            pid: TARGET,
            group: 0
        }
    );
}

#[test]
fn a_failed_standby_fork_is_forgotten_and_the_next_resume_forks() {
    let mut s = supervisor();
    s.opens(TARGET, "a.txt");
    s.forks(TARGET, 101, false);
    s.exited(TARGET, 101, 0);
    s.fork_failed(libc::ENOMEM, false);
    assert_eq!(s.chain[0].next, Next::Nothing);
    s.changed("a.txt");
    assert_eq!(s.sent_to_last(TARGET), CMD_FORK);
}

#[test]
fn a_standby_killed_from_outside_is_replaced() {
    let mut s = idle_with_a_standby();
    s.exited(TARGET, 102, libc::SIGKILL);
    assert_eq!(s.chain[0].next, Next::Forking { stale: false });
    assert_eq!(s.sent_to_last(TARGET), CMD_FORK_STANDBY);
}

#[test]
fn a_checkpoint_killed_from_outside_cuts_the_chain_and_says_so() {
    let mut s = supervisor();
    s.opens(TARGET, "a.txt");
    s.forks(TARGET, 101, false);
    s.opens(101, "b.txt");
    s.forks(101, 102, false);
    s.on_exit(101);
    assert_eq!(s.chain.len(), 1);
    assert!(s.checkpoints_died);
    s.on_exit(TARGET);
    assert!(s.chain.is_empty());
    assert_eq!(s.program, Program::Gone);
    // Reaped afterwards: not "exited before opening any file".
    assert_eq!(s.on_target_exit(137), Some(Ended::CheckpointsDied(137)));
}

#[test]
fn the_target_exiting_without_a_checkpoint_ends_the_run() {
    let mut s = supervisor();
    assert_eq!(s.on_target_exit(3), Some(Ended::Exited(3)));
}

#[test]
fn a_watch_that_fails_leaves_the_checkpoint_running() {
    let mut s = supervisor();
    s.system.watch_error = true;
    s.opens(TARGET, "a.txt");
    assert_eq!(s.sent_to_last(TARGET), checkpoint_command());
    s.forks(TARGET, 101, false);
    assert_eq!(s.program, Program::Running { pid: 101, group: 1 });
}

#[test]
fn without_standbys_nothing_is_forked_while_idle() {
    let mut s = supervisor();
    s.no_standby = true;
    s.opens(TARGET, "a.txt");
    s.forks(TARGET, 101, false);
    s.take_did();
    s.exited(TARGET, 101, 0);
    assert_eq!(s.take_did(), []);
}

#[test]
fn a_forged_message_changes_nothing() {
    let mut s = idle_with_a_standby();
    let before = (s.chain[0].next, s.program);
    // A process of the tree claims an outside pid as the checkpoint's child.
    s.system.alive.insert(1, 0);
    s.message(
        102,
        StubMessage::Child {
            pid: 1,
            checkpoint: TARGET,
            fd: 3,
            waits: false,
            eventfd: 6,
        },
    );
    assert_eq!((s.chain[0].next, s.program), before);
    assert_eq!(s.take_did(), []);
}

#[test]
fn ctrl_c_exits_with_the_programs_last_status() {
    let s = idle_with_a_standby();
    assert_eq!(s.exit_status(libc::SIGINT), 0);
    let fresh = supervisor();
    assert_eq!(fresh.exit_status(libc::SIGINT), 128 + libc::SIGINT as u8);
}

#[test]
fn a_process_that_closed_its_channels_is_observed_only() {
    let mut s = supervisor();
    s.take_did();
    s.system.closed_fds.insert(TARGET);
    s.opens(TARGET, "a.txt");
    assert_eq!(s.take_did(), [Did::Disarmed(TARGET)], "no verdict sent");
    assert!(s.chain.is_empty());
    assert!(!s.system.is_connected(TARGET));
    // Later candidates (already in the ring) change nothing.
    s.opens(TARGET, "b.txt");
    assert_eq!(s.take_did(), []);
}

#[test]
fn what_the_child_started_before_its_move_goes_with_it_but_the_start_up_stays() {
    let mut s = supervisor();
    // A server the program started before its checkpoint, and its worker.
    s.system.alive.insert(150, TARGET);
    s.system.alive.insert(151, 150);
    s.system.members.get_mut(&0).unwrap().extend([150, 151]);
    s.opens(TARGET, "a.txt");
    // Before the child was moved it started `sleep &` and that sleep's
    // parent exited: reparented to forkmon (pid 50), it is in the
    // checkpoint's group. And the checkpoint's next fork is on its way.
    s.system.alive.insert(160, 50);
    s.system.alive.insert(170, TARGET);
    s.system.members.get_mut(&0).unwrap().extend([160, 170]);
    s.take_did();
    s.forks(TARGET, 101, false);
    let did = s.take_did();
    assert!(did.contains(&Did::Moved(1, 160)), "{did:?}");
    for stays in [TARGET, 150, 151, 170] {
        assert!(
            !did.iter()
                .any(|d| matches!(d, Did::Moved(_, p) if *p == stays)),
            "{stays}: {did:?}"
        );
    }
    // It dies with the run's group at the next resume.
    s.changed("a.txt");
    assert!(s.take_did().contains(&Did::KilledNow(1)));
}

#[test]
fn no_more_checkpoints_than_the_most_kept_at_once() {
    let mut s = supervisor();
    let mut leaf = TARGET;
    for (i, name) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
        s.opens(leaf, name);
        if i < 3 {
            s.forks(leaf, 101 + i as i32, false);
            leaf = 101 + i as i32;
        }
    }
    assert_eq!(s.chain.len(), 3);
    assert!(s.warned_max);
    assert_eq!(s.sent_to_last(leaf), CMD_GO, "the rest run on");
}

#[test]
fn a_bytecode_cache_is_a_checkpoint_at_its_source() {
    let mut s = supervisor();
    s.take_did();
    s.system.files.insert("/w/mod.py".into());
    s.opens(TARGET, "__pycache__/mod.cpython-311.pyc");
    assert_eq!(
        s.take_did(),
        [
            Did::Sent(TARGET, stub::checkpoint_command(open_syscall::OPENAT, true)),
            Did::Watched("/w/mod.py".into())
        ]
    );
    assert_eq!(s.chain[0].file, Path::new("/w/mod.py"));
    // Without its source, a cache is a file like any other.
    s.forks(TARGET, 101, false);
    s.opens(101, "__pycache__/gone.cpython-311.pyc");
    assert_eq!(
        s.sent_to_last(101),
        stub::checkpoint_command(open_syscall::OPENAT, false)
    );
}

#[test]
fn a_bytecode_caches_standby_is_not_signalled_at_its_next_open_the_source() {
    let mut s = supervisor();
    s.system.files.insert("/w/mod.py".into());
    s.opens(TARGET, "__pycache__/mod.cpython-311.pyc");
    s.forks(TARGET, 101, false);
    s.exited(TARGET, 101, 0);
    s.forks(TARGET, 102, true);
    s.take_did();
    s.changed("mod.py");
    let did = s.take_did();
    assert!(did.contains(&Did::ArmedSkippingNextOpen(102)), "{did:?}");
    assert!(!did.contains(&Did::Armed(102)), "{did:?}");
    assert!(did.contains(&Did::Sent(102, CMD_GO)), "{did:?}");
}

#[test]
fn an_environment_the_filter_refuses_is_skipped_by_the_kernel_once() {
    let mut s = supervisor();
    // The default: files under /w, but not its virtual environment's.
    s.filter = Filter::new(&[], None, Path::new("/w")).unwrap();
    s.take_did();
    s.opens(TARGET, ".venv/lib/python3.11/site-packages/dep/a.py");
    s.opens(TARGET, ".venv/lib/python3.11/site-packages/dep/b.py");
    let did = s.take_did();
    let skipped: Vec<_> = did
        .iter()
        .filter(|d| matches!(d, Did::Skipped(_)))
        .collect();
    assert_eq!(skipped, [&Did::Skipped("/w/.venv".into())], "{did:?}");
    assert_eq!(did.last(), Some(&Did::Sent(TARGET, CMD_GO)), "let go");
    // A file of the user's is a checkpoint, and skips nothing.
    s.opens(TARGET, "a.txt");
    assert!(!s.take_did().iter().any(|d| matches!(d, Did::Skipped(_))));
    assert_eq!(s.chain.len(), 1);
}

#[test]
fn the_line_names_a_file_that_changed_not_one_only_touched() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let mut s = supervisor();
    let journal = crate::journal::Journal::open(&events).unwrap();
    s.report = Reporter::new(true, false).journaling(Some(journal));
    s.opens(TARGET, "a.txt");
    s.forks(TARGET, 101, false);
    s.opens(101, "b.txt");
    s.forks(101, 102, false);
    // b.txt touched (another event of a save resumed from already), then
    // the burst finds a.txt changed.
    s.on_watch_event(WatchEvent::Touched(vec!["/w/b.txt".into()]))
        .unwrap();
    s.on_watch_event(WatchEvent::Changed(vec!["/w/a.txt".into()]))
        .unwrap();
    let journal = std::fs::read_to_string(&events).unwrap();
    let change = journal
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|event| event["event"] == "change")
        .expect("a change line");
    assert_eq!(change["file"], "/w/a.txt", "{journal}");
    assert_eq!(change["checkpoint"], "/w/a.txt", "{journal}");
}

/// `parent` starts `child`, a subprocess: in its group, never armed.
fn spawns(s: &mut Supervisor<FakeSystem>, parent: i32, child: i32) {
    s.system.alive.insert(child, parent);
    let group = *s
        .system
        .members
        .iter()
        .find(|(_, m)| m.contains(&parent))
        .map(|(g, _)| g)
        .unwrap();
    s.system.members.get_mut(&group).unwrap().push(child);
}

#[test]
fn a_file_read_before_any_checkpoint_restarts_the_program_gently() {
    let mut s = supervisor();
    spawns(&mut s, TARGET, 200);
    s.take_did();
    s.reads(200, "m.c");
    assert_eq!(s.take_did(), [Did::Watched("/w/m.c".into())]);
    // The program ending does not end the run: it waits for changes.
    assert_eq!(s.on_target_exit(0), None);
    s.changed("m.c");
    let restart = s.take_restart().expect("a change to it asks for a restart");
    assert_eq!(restart.file.as_deref(), Some(Path::new("/w/m.c")));
    assert!(
        restart.why.contains("p200, pid 200, a subprocess"),
        "{}",
        restart.why
    );
    assert!(
        s.take_did().is_empty(),
        "nothing stopped before the restart"
    );

    s.stop_for_restart(&restart, 0, Signal::SIGINT, Duration::ZERO)
        .unwrap();
    let did = s.take_did();
    assert_eq!(
        &did[..2],
        [
            Did::Signalled(TARGET, Signal::SIGINT),
            Did::Signalled(200, Signal::SIGINT)
        ],
        "the whole tree gets the stop signal first"
    );
    assert!(did.contains(&Did::KilledNow(0)), "then SIGKILL: {did:?}");

    s.restarted(300, 0);
    assert_eq!(s.take_did(), [Did::Unwatched("/w/m.c".into())]);
    assert_eq!(s.target(), 300);
    assert_eq!(s.program, Program::Running { pid: 300, group: 0 });
}

#[test]
fn a_file_read_by_a_subprocess_below_a_checkpoint_resumes_from_it() {
    let mut s = supervisor();
    s.opens(TARGET, "a.txt");
    s.forks(TARGET, 101, false);
    spawns(&mut s, 101, 201);
    s.reads(201, "data");
    s.take_did();
    s.changed("data");
    assert_eq!(s.take_restart(), None);
    assert!(
        s.take_did().contains(&Did::KilledNow(1)),
        "the program below the checkpoint was stopped, to resume"
    );
    assert!(matches!(
        s.program,
        Program::Stopped(Stop { at: 0, .. }) | Program::Starting { at: 0 }
    ));
    // Still watched: the checkpoint it resumes from is still there.
    assert_eq!(s.read[Path::new("/w/data")].resume_at, Some(0));
}

/// The stub forks early, in parallel with the verdict: its child is in
/// the group when the start-up is read, and `make` runs `cat` in it before
/// forkmon has the child's registration.
#[test]
fn a_read_below_an_early_child_registered_late_resumes_from_its_checkpoint() {
    let mut s = supervisor();
    spawns(&mut s, TARGET, 101); // forked early, not registered yet
    s.opens(TARGET, "Makefile");
    spawns(&mut s, 101, 201);
    s.reads(201, "input.txt");
    assert_eq!(s.read[Path::new("/w/input.txt")].resume_at, None);
    s.forks(TARGET, 101, false);
    assert_eq!(s.read[Path::new("/w/input.txt")].resume_at, Some(0));
    s.changed("input.txt");
    assert_eq!(
        s.take_restart(),
        None,
        "resumed from the Makefile's checkpoint"
    );
}

#[test]
fn a_file_read_by_a_start_up_server_restarts_the_program() {
    let mut s = supervisor();
    spawns(&mut s, TARGET, 150); // a server, started before the checkpoint
    s.opens(TARGET, "a.txt");
    s.forks(TARGET, 101, false);
    s.reads(150, "server.conf");
    s.changed("server.conf");
    assert!(s.take_restart().is_some(), "no resume reads it again");
}

#[test]
fn a_program_with_threads_is_watched_for_a_restart_with_the_reason() {
    let mut s = supervisor();
    with_threads(&mut s, &[thread(105, "VM Thread", 'S')]);
    s.opens(TARGET, "Main.java");
    assert!(s.chain.is_empty());
    s.changed("Main.java");
    let restart = s.take_restart().unwrap();
    assert_eq!(restart.why, format!("p{TARGET} has 2 threads"));
}

#[test]
fn with_restart_only_no_open_becomes_a_checkpoint() {
    let mut s = supervisor();
    s.restart_only = true;
    s.opens(TARGET, "a.txt");
    assert!(s.chain.is_empty());
    s.changed("a.txt");
    assert_eq!(s.take_restart().unwrap().why, "--restart");
}

#[test]
fn a_program_that_read_nothing_it_could_watch_ends_the_run() {
    let mut s = supervisor();
    assert_eq!(s.on_target_exit(3), Some(Ended::Exited(3)));
}

#[test]
fn a_file_the_tree_writes_is_its_output_and_never_watched() {
    let mut s = supervisor();
    s.reads(TARGET, "hello");
    s.take_did();
    s.on_write(Path::new("/w/hello"));
    assert_eq!(s.take_did(), [Did::Unwatched("/w/hello".into())]);
    s.reads(TARGET, "hello");
    assert!(s.take_did().is_empty(), "not watched again");
    s.changed("hello");
    assert_eq!(s.take_restart(), None);
}

#[test]
fn a_look_at_a_file_just_before_its_checkpoint_is_part_of_it() {
    let mut s = supervisor();
    s.opens(TARGET, "a.txt");
    s.forks(TARGET, 101, false);
    // Python stats mod.py, then opens it: the change resumes from mod.py's
    // own checkpoint, not from a.txt's.
    s.reads(101, "mod.py");
    s.opens(101, "mod.py");
    s.forks(101, 102, false);
    s.take_did();
    s.changed("mod.py");
    let did = s.take_did();
    assert!(did.contains(&Did::KilledNow(2)), "{did:?}");
    assert!(
        !did.contains(&Did::KilledNow(1)) && s.chain.len() == 2,
        "only what ran below mod.py's checkpoint is stopped: {did:?}"
    );
}

#[test]
fn the_checkpoints_own_child_is_no_start_up_even_if_forked_before_the_verdict() {
    let mut s = supervisor();
    // The stub forked before the verdict: the child is in the group when
    // the start-up is read.
    spawns(&mut s, TARGET, 101);
    s.opens(TARGET, "a.txt");
    s.message(
        101,
        StubMessage::Child {
            pid: 101,
            checkpoint: TARGET,
            fd: 3,
            waits: false,
            eventfd: 6,
        },
    );
    s.reads(101, "data");
    s.changed("data");
    assert_eq!(s.take_restart(), None, "a resume from a.txt reads it again");
}

#[test]
fn a_restart_signals_what_runs_never_the_frozen_checkpoints() {
    let mut s = supervisor();
    s.opens(TARGET, "a.txt");
    s.forks(TARGET, 101, false);
    spawns(&mut s, 101, 201);
    s.take_did();
    let restart = Restart {
        file: None,
        why: "key R".into(),
    };
    s.stop_for_restart(&restart, 0, Signal::SIGTERM, Duration::ZERO)
        .unwrap();
    let did = s.take_did();
    assert!(
        did.contains(&Did::Signalled(101, Signal::SIGTERM)),
        "{did:?}"
    );
    assert!(
        did.contains(&Did::Signalled(201, Signal::SIGTERM)),
        "{did:?}"
    );
    assert!(
        !did.contains(&Did::Signalled(TARGET, Signal::SIGTERM)),
        "a signal would run the program's handler in the checkpoint: {did:?}"
    );
    assert_eq!(
        did.last(),
        Some(&Did::KilledNow(0)),
        "then all of it: {did:?}"
    );
}

#[test]
fn a_restarted_program_is_not_forked_again_where_its_threads_stayed() {
    let mut s = supervisor();
    with_threads(&mut s, &[thread(105, "node", 'S')]);
    s.system.files.insert("/w/a.js".into());
    s.opens(TARGET, "a.js");
    s.fork_failed(FAILED_THREADS_LEFT, true);
    s.restarted(300, 0);
    s.system.alive.insert(300, 1);
    s.message(
        300,
        StubMessage::Hello {
            pid: 300,
            eventfd: 5,
        },
    );
    with_threads_of(&mut s, 300, &[thread(305, "node", 'S')]);
    s.take_did();
    s.opens(300, "a.js");
    assert_eq!(
        s.take_did()[..2],
        [Did::KeptNextChildUnarmed(300), Did::Sent(300, CMD_GO)],
        "let go at once, no fork with handlers to wait for"
    );
    assert!(s.chain.is_empty());
}
