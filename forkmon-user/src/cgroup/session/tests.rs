use std::{
    fs,
    io::{self, BufRead as _, BufReader, Write as _},
    os::{fd::AsFd as _, unix::process::CommandExt as _},
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    thread,
};

use nix::{
    sys::wait::{WaitPidFlag, WaitStatus, waitpid},
    unistd::Pid,
};

use super::*;
use crate::cgroup::{
    files::{all_procs, subdirs},
    testing::{alive, comm, dead, killed, root, skip, spawn_in, state, wait_for},
};

/// Says which helper process this test binary is to be (see
/// [`helper_process`]).
const HELPER_ENV: &str = "FORKMON_TEST_HELPER";

/// This test binary, started as one of the [`helper_process`]es.
fn helper(role: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.env(HELPER_ENV, role);
    command
}

/// The tests' watchdog: the real one, [`crate::watchdog::run`], in this
/// test binary (forkmon's `main` is not in it).
fn test_watchdog(dir: &Path, ino: u64) -> Option<Command> {
    Some(helper(&format!("watchdog {ino} {}", dir.display())))
}

fn no_watchdog(_: &Path, _: u64) -> Option<Command> {
    None
}

/// The entry point of the processes the tests start from this binary, in
/// the role [`HELPER_ENV`] names — a session's watchdog, or a stand-in for
/// forkmon holding a session. It runs before the test harness's `main`
/// (a constructor), so it is no test: none is counted, none is ignored.
#[used]
#[unsafe(link_section = ".init_array")]
static HELPER_PROCESS: extern "C" fn() = helper_process;

extern "C" fn helper_process() {
    let Ok(role) = std::env::var(HELPER_ENV) else {
        return; // the test binary itself
    };
    if let Some(args) = role.strip_prefix("watchdog ") {
        let (ino, dir) = args.split_once(' ').unwrap();
        let stdin = io::stdin();
        std::process::exit(crate::watchdog::run(
            stdin.as_fd(),
            Path::new(dir),
            ino.parse().unwrap(),
        ));
    }
    assert_eq!(role, "holder", "unknown helper role");
    hold_session();
}

/// A forkmon stand-in for `watchdog_survives_sigkill`: holds a session
/// with processes in nested groups, says where on stdout, and waits to be
/// SIGKILLed.
fn hold_session() -> ! {
    let mut session = Session::create_with(test_watchdog).unwrap();
    let group = session.new_child(session.root()).unwrap();
    let nested = session.new_child(group).unwrap();
    let mut children = [
        spawn_in(&session, session.root(), "exec sleep 100"),
        spawn_in(&session, nested, "exec sleep 100"),
    ];
    let mut stdout = io::stdout();
    writeln!(
        stdout,
        "\nSESSION {} {} {}",
        session.path.display(),
        children[0].id(),
        children[1].id()
    )
    .unwrap();
    stdout.flush().unwrap();
    // Until the test SIGKILLs us.
    loop {
        for child in &mut children {
            let _ = child.try_wait();
        }
        thread::sleep(Duration::from_secs(1));
    }
}

/// A session of this process, or None if the test cannot run here.
fn session(watchdog: fn(&Path, u64) -> Option<Command>) -> Option<Session> {
    if !root() {
        return None;
    }
    match Session::create_with(watchdog) {
        Ok(session) => Some(session),
        Err(CgroupError::NoCgroup2) => {
            skip("no cgroup v2");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// Lets `session` go as a forkmon that died would: none of the session's
/// own clean-up runs, and its end of the watchdog's pipe closes. Returns
/// the watchdog's pid (our child, for `waitpid`).
fn abandon(mut session: Session) -> Option<Pid> {
    let watchdog = session.watchdog.take();
    let pid = watchdog.as_ref().map(|w| Pid::from_raw(w.pid() as i32));
    // Dropping a closed session leaves its directories alone.
    session.closed = true;
    drop(session);
    drop(watchdog);
    pid
}

/// Waits up to `timeout` for our child `pid` to exit, and reaps it.
fn exit_status(pid: Pid, timeout: Duration) -> WaitStatus {
    let mut status = WaitStatus::StillAlive;
    wait_for("the watchdog to exit", timeout, || {
        status = waitpid(pid, Some(WaitPidFlag::WNOHANG)).unwrap();
        status != WaitStatus::StillAlive
    });
    status
}

fn group_path(session: &Session, groups: &[GroupId]) -> PathBuf {
    groups
        .iter()
        .fold(session.path.clone(), |p, g| p.join(format!("c{}", g.0)))
}

/// Whether `group` or a group nested in it holds a process, as forkmon
/// asks it.
fn populated(session: &Session, group: GroupId) -> bool {
    !session.wait_empty(group, Duration::ZERO).unwrap()
}

/// The groups directly in the session's own directory.
fn top_groups(session: &Session) -> Vec<String> {
    fs::read_dir(&session.path)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn raise_nofile(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes a struct rlimit through a valid pointer.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    if limit.rlim_cur < want {
        limit.rlim_cur = want.min(limit.rlim_max);
        // SAFETY: setrlimit reads a struct rlimit through a valid pointer.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    }
}

/// A test that cannot run here passes only where it may: run as nobody, a
/// session test skips, and fails under `FORKMON_REQUIRE_BPF=1`.
#[test]
fn a_test_that_cannot_run_fails_where_it_must() {
    if !root() {
        return;
    }
    let as_nobody = |require: &str| {
        let output = Command::new(std::env::current_exe().unwrap())
            .args([
                "cgroup::session::tests::kill_child_group",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("FORKMON_REQUIRE_BPF", require)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), text)
    };
    let (passed, text) = as_nobody("1");
    assert!(!passed, "passed without running:\n{text}");
    assert!(text.contains("must run here"), "{text}");
    let (passed, text) = as_nobody("");
    assert!(passed, "{text}");
    assert!(text.contains("skipping"), "{text}");
}

#[test]
fn kill_child_group() {
    let Some(mut s) = session(test_watchdog) else {
        return;
    };
    let mut top = spawn_in(&s, s.root(), "exec sleep 100");
    let group = s.new_child(s.root()).unwrap();
    let mut child = spawn_in(&s, group, "exec sleep 100");
    let dir = group_path(&s, &[group]);
    assert!(dir.is_dir());
    assert_eq!(s.procs(group).unwrap(), [child.id() as i32]);
    assert!(populated(&s, group));
    s.kill(group).unwrap();
    assert!(!dir.exists());
    assert!(killed(&mut child));
    assert!(alive(&mut top));
    assert_eq!(s.procs(s.root()).unwrap(), [top.id() as i32]);
    assert!(matches!(
        s.add_process(group, 1),
        Err(CgroupError::StaleGroup)
    ));
    assert!(matches!(s.new_child(group), Err(CgroupError::StaleGroup)));
    // Killing again is harmless.
    s.kill(group).unwrap();
    // The root still takes new groups.
    let again = s.new_child(s.root()).unwrap();
    assert!(group_path(&s, &[again]).is_dir());
    drop(s);
    assert!(killed(&mut top));
}

/// In the root: a process that stays (a checkpoint's start-up), and a
/// child that started a background process of its own; with their pids.
fn a_child_that_started_one(s: &Session) -> (Child, i32, Child, i32) {
    let root = s.root();
    let top = spawn_in(s, root, "exec sleep 100");
    let stays = top.id() as i32;
    let child = spawn_in(s, root, "sleep 100 & exec sleep 100");
    let pid = child.id() as i32;
    wait_for("the background sleep", Duration::from_secs(5), || {
        s.procs(root).unwrap().len() == 3
    });
    (top, stays, child, pid)
}

/// A move handed to the thread takes the child and what it started before
/// (here: what the sweep does not keep back), and until it is done the
/// group's processes count it.
#[test]
fn a_later_move_takes_the_child_and_what_it_started() {
    let Some(mut s) = session(test_watchdog) else {
        return;
    };
    let root = s.root();
    let (mut top, stays, mut child, pid) = a_child_that_started_one(&s);
    let group = s.new_child(root).unwrap();
    s.pause_moves(true);
    s.add_process_later(group, pid, root, Arc::new(move |other| other != stays))
        .unwrap();
    let pending = s.procs(group).unwrap();
    assert_eq!(pending.len(), 2, "{pending:?}");
    assert!(pending.contains(&pid));
    assert_eq!(all_procs(s.groups[&group].dir.as_fd()), [] as [i32; 0]);
    s.pause_moves(false);
    wait_for("the moves", Duration::from_secs(5), || {
        all_procs(s.groups[&group].dir.as_fd()).len() == 2
    });
    assert_eq!(s.procs(root).unwrap(), [stays]);
    s.kill(group).unwrap();
    assert!(killed(&mut child));
    assert_eq!(s.procs(root).unwrap(), [stays]);
    drop(s);
    assert!(killed(&mut top));
}

/// A kill of a group reaches the moves into it that are still pending:
/// their child dies at once (the kill waits for it), what it started when
/// the thread gets to it, and nothing is moved into the killed group.
#[test]
fn a_kill_reaches_pending_moves() {
    let Some(mut s) = session(test_watchdog) else {
        return;
    };
    let root = s.root();
    let (mut top, stays, mut child, pid) = a_child_that_started_one(&s);
    let started: Vec<i32> = s
        .procs(root)
        .unwrap()
        .into_iter()
        .filter(|&p| p != stays && p != pid)
        .collect();
    let outer = s.new_child(root).unwrap();
    let group = s.new_child(outer).unwrap();
    s.pause_moves(true);
    s.add_process_later(group, pid, root, Arc::new(move |other| other != stays))
        .unwrap();
    // The outer group: the kill covers what is nested in it.
    s.kill(outer).unwrap();
    assert!(killed(&mut child), "killed before the kill returned");
    s.pause_moves(false);
    wait_for("what it started", Duration::from_secs(5), || {
        started.iter().all(|&p| dead(p))
    });
    assert!(alive(&mut top));
    assert_eq!(s.procs(root).unwrap(), [stays]);
    drop(s);
    assert!(killed(&mut top));
}

/// A process that cannot be moved is named apart from the group's path:
/// `path` stays a path, and a process gone already (`ESRCH`) is told by
/// the error alone.
#[test]
fn moving_a_process_fails_with_the_groups_path() {
    let Some(mut s) = session(no_watchdog) else {
        return;
    };
    let group = s.new_child(s.root()).unwrap();
    // Above any pid_max: no such process.
    let pid = i32::MAX;
    let error = s.add_process(group, pid).unwrap_err();
    let expected = group_path(&s, &[group]);
    assert_eq!(
        error.to_string(),
        format!(
            "cannot move process {pid} into {}: {}",
            expected.display(),
            io::Error::from_raw_os_error(libc::ESRCH)
        )
    );
    let CgroupError::Io {
        path,
        pid: Some(moved),
        error,
        ..
    } = error
    else {
        panic!("{error:?}");
    };
    assert_eq!(Path::new(&path), expected);
    assert!(Path::new(&path).is_dir());
    assert_eq!(moved, pid);
    assert_eq!(error.raw_os_error(), Some(libc::ESRCH));
}

/// A prepared group is killed and waited for through the files opened
/// ahead, which are let go when the group is removed; preparing
/// another group replaces them.
#[test]
fn prepared_group_is_killed_through_its_open_files() {
    let Some(mut s) = session(no_watchdog) else {
        return;
    };
    let first = s.new_child(s.root()).unwrap();
    let group = s.new_child(s.root()).unwrap();
    s.prepare(first);
    if s.prepared(first).unwrap().kill.is_none() {
        eprintln!("skipped: no cgroup.kill (Linux < 5.14)");
        return;
    }
    let mut child = spawn_in(&s, group, "exec sleep 100");
    s.prepare(group);
    assert!(s.prepared(first).is_none() && s.prepared(group).is_some());
    assert!(!s.wait_empty(group, Duration::ZERO).unwrap());
    s.kill_now(group).unwrap();
    assert!(s.wait_empty(group, Duration::from_secs(2)).unwrap());
    assert!(killed(&mut child));
    s.reap_empty();
    assert!(!group_path(&s, &[group]).exists());
    assert!(s.prepared.is_none());
    // A dead group is not prepared.
    s.prepare(group);
    assert!(s.prepared.is_none());
}

/// A killed process that its parent has not reaped does not keep its
/// cgroup populated, and does not prevent removing it.
#[test]
fn zombies_do_not_keep_cgroup_populated() {
    let Some(mut s) = session(no_watchdog) else {
        return;
    };
    let group = s.new_child(s.root()).unwrap();
    let mut child = spawn_in(&s, group, "exec sleep 100");
    let pid = child.id() as i32;
    fs::write(group_path(&s, &[group]).join("cgroup.kill"), "1").unwrap();
    wait_for("the zombie", Duration::from_secs(2), || {
        state(pid) == Some('Z')
    });
    assert!(!populated(&s, group));
    assert!(s.procs(group).unwrap().is_empty());
    s.kill(group).unwrap();
    assert!(!group_path(&s, &[group]).exists());
    // Still not reaped.
    assert_eq!(state(pid), Some('Z'));
    assert!(killed(&mut child));
}

#[test]
fn kill_middle_of_three_levels() {
    let Some(mut s) = session(test_watchdog) else {
        return;
    };
    let top = s.new_child(s.root()).unwrap();
    let middle = s.new_child(top).unwrap();
    let deepest = s.new_child(middle).unwrap();
    let mut p_top = spawn_in(&s, top, "exec sleep 100");
    let mut p_middle = spawn_in(&s, middle, "exec sleep 100");
    let mut p_deepest = spawn_in(&s, deepest, "exec sleep 100");
    assert!(group_path(&s, &[top, middle, deepest]).is_dir());
    s.kill(middle).unwrap();
    assert!(killed(&mut p_middle));
    assert!(killed(&mut p_deepest));
    assert!(alive(&mut p_top));
    assert!(group_path(&s, &[top]).is_dir());
    assert!(!group_path(&s, &[top, middle]).exists());
    assert!(matches!(s.procs(deepest), Err(CgroupError::StaleGroup)));
    s.kill_all().unwrap();
    assert!(killed(&mut p_top));
    assert!(!s.path.exists());
    assert!(matches!(s.new_child(ROOT), Err(CgroupError::Closed(_))));
}

#[test]
fn kill_in_background_reaches_every_nested_group() {
    let Some(mut s) = session(test_watchdog) else {
        return;
    };
    let top = s.new_child(s.root()).unwrap();
    let middle = s.new_child(top).unwrap();
    let left = s.new_child(middle).unwrap();
    let right = s.new_child(middle).unwrap();
    let mut p_top = spawn_in(&s, top, "exec sleep 100");
    let mut below: Vec<Child> = [middle, left, right, right]
        .into_iter()
        .map(|g| spawn_in(&s, g, "exec sleep 100"))
        .collect();
    s.kill_in_background(middle).unwrap();
    // Marked at once: no new process can be put there.
    assert!(matches!(s.procs(left), Err(CgroupError::StaleGroup)));
    assert!(s.wait_empty(middle, KILL_TIMEOUT).unwrap());
    for p in &mut below {
        wait_for("a killed process to exit", KILL_TIMEOUT, || killed(p));
    }
    assert!(alive(&mut p_top));
    assert_eq!(s.reap_empty(), 0);
    assert!(!group_path(&s, &[top, middle]).exists());
    s.kill_all().unwrap();
    assert!(killed(&mut p_top));
}

#[test]
fn kill_reaches_escaped_subprocesses() {
    let Some(mut s) = session(test_watchdog) else {
        return;
    };
    let group = s.new_child(s.root()).unwrap();
    let mut child = spawn_in(&s, group, "setsid sh -c 'sleep 100' & sleep 100");
    let sid = nix::unistd::getsid(Some(Pid::from_raw(child.id() as i32))).unwrap();
    let mut pids = Vec::new();
    wait_for("the sleeps", Duration::from_secs(5), || {
        pids = s.procs(group).unwrap();
        let sleeps: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|p| comm(*p) == "sleep")
            .collect();
        sleeps.len() == 2
            && sleeps
                .iter()
                .any(|p| nix::unistd::getsid(Some(Pid::from_raw(*p))).is_ok_and(|s| s != sid))
    });
    s.kill(group).unwrap();
    assert!(killed(&mut child));
    for pid in pids {
        assert!(dead(pid), "{pid} survived");
    }
}

#[test]
fn kill_root_keeps_session_usable() {
    let Some(mut s) = session(test_watchdog) else {
        return;
    };
    let mut at_root = spawn_in(&s, s.root(), "exec sleep 100");
    let a = s.new_child(s.root()).unwrap();
    let b = s.new_child(a).unwrap();
    let mut in_b = spawn_in(&s, b, "exec sleep 100");
    s.kill(s.root()).unwrap();
    assert!(killed(&mut at_root));
    assert!(killed(&mut in_b));
    assert!(top_groups(&s).is_empty());
    let c = s.new_child(s.root()).unwrap();
    let mut in_c = spawn_in(&s, c, "exec sleep 100");
    assert!(alive(&mut in_c));
    drop(s);
    assert!(killed(&mut in_c));
}

#[test]
fn thousand_deep() {
    const DEPTH: usize = 1000;
    let Some(mut s) = session(test_watchdog) else {
        return;
    };
    raise_nofile(4 * DEPTH as u64);
    let started = Instant::now();
    let mut groups = vec![s.root()];
    for _ in 0..DEPTH {
        groups.push(s.new_child(*groups.last().unwrap()).unwrap());
    }
    let created = started.elapsed();
    // Processes at every 10th level and at the bottom.
    let mut children: Vec<Child> = groups
        .iter()
        .enumerate()
        .filter(|(depth, _)| depth % 10 == 0 || *depth == DEPTH)
        .map(|(_, g)| spawn_in(&s, *g, "exec sleep 100"))
        .collect();
    let mut at_root = children.remove(0);
    let started = Instant::now();
    s.kill(groups[1]).unwrap();
    let killed_in = started.elapsed();
    eprintln!(
        "{DEPTH} nested cgroups: created in {created:?}, \
         killed {} processes and removed them in {killed_in:?}",
        children.len()
    );
    assert!(top_groups(&s).is_empty());
    assert_eq!(s.groups.len(), 1);
    for child in &mut children {
        assert!(killed(child));
    }
    assert!(alive(&mut at_root));
    // Once more, for the watchdog's walk.
    let mut last = s.root();
    for _ in 0..DEPTH {
        last = s.new_child(last).unwrap();
    }
    let mut deepest = spawn_in(&s, last, "exec sleep 100");
    let path = s.path.clone();
    let started = Instant::now();
    let watchdog = abandon(s);
    clean_up_session(&path, None).unwrap();
    eprintln!(
        "clean_up_session of {DEPTH} nested cgroups: {:?}",
        started.elapsed()
    );
    assert!(!path.exists());
    assert!(killed(&mut deepest));
    assert!(killed(&mut at_root));
    if let Some(watchdog) = watchdog {
        assert_eq!(
            exit_status(watchdog, Duration::from_secs(10)),
            WaitStatus::Exited(watchdog, 0)
        );
    }
}

#[test]
fn clean_up_session_kills_and_removes_everything() {
    let Some(mut s) = session(no_watchdog) else {
        return;
    };
    let a = s.new_child(s.root()).unwrap();
    let b = s.new_child(a).unwrap();
    let c = s.new_child(a).unwrap();
    let d = s.new_child(c).unwrap();
    let mut children = vec![
        spawn_in(&s, s.root(), "exec sleep 100"),
        spawn_in(&s, b, "exec sleep 100"),
        spawn_in(&s, d, "setsid sh -c 'sleep 100' & exec sleep 100"),
    ];
    let path = s.path.clone();
    assert!(abandon(s).is_none());
    let pids = {
        let dir = open(&path, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        all_procs(dir.as_fd())
    };
    clean_up_session(&path, None).unwrap();
    assert!(!path.exists());
    for child in &mut children {
        assert!(killed(child));
    }
    for pid in pids {
        assert!(dead(pid), "{pid} survived");
    }
    // Nothing to do the second time.
    clean_up_session(&path, None).unwrap();
}

/// The watchdog leaves a session alone that has the name but not the
/// inode it was given: a newer one.
#[test]
fn clean_up_session_spares_a_newer_session_of_the_same_name() {
    let Some(mut s) = session(no_watchdog) else {
        return;
    };
    let group = s.new_child(s.root()).unwrap();
    let mut child = spawn_in(&s, group, "exec sleep 100");
    let ino = fstat(&s.groups[&ROOT].dir).unwrap().st_ino;
    clean_up_session(&s.path, Some(ino + 1)).unwrap();
    assert!(alive(&mut child));
    assert_eq!(subdirs(s.groups[&ROOT].dir.as_fd()).unwrap().len(), 1);
    drop(s);
    assert!(killed(&mut child));
}

#[test]
fn watchdog_cleans_up_when_forkmon_is_gone() {
    let Some(mut s) = session(test_watchdog) else {
        return;
    };
    let a = s.new_child(s.root()).unwrap();
    let b = s.new_child(a).unwrap();
    let mut children = vec![
        spawn_in(&s, s.root(), "exec sleep 100"),
        spawn_in(&s, b, "exec sleep 100"),
    ];
    let path = s.path.clone();
    let watchdog = abandon(s).unwrap();
    assert_eq!(
        exit_status(watchdog, Duration::from_secs(10)),
        WaitStatus::Exited(watchdog, 0)
    );
    assert!(!path.exists());
    for child in &mut children {
        assert!(killed(child));
    }
}

/// The real thing: a process holding a session is SIGKILLed.
#[test]
fn watchdog_survives_sigkill() {
    if !root() {
        return;
    }
    let mut holder = helper("holder").stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    let line = lines
        .find_map(|l| Some(l.ok()?.split_once("SESSION ")?.1.to_owned()))
        .expect("the holder's session");
    let mut fields = line.split(' ');
    let path = PathBuf::from(fields.next().unwrap());
    let pids: Vec<i32> = fields.map(|p| p.parse().unwrap()).collect();
    assert!(path.is_dir());
    assert!(pids.iter().all(|&pid| !dead(pid)));
    holder.kill().unwrap();
    holder.wait().unwrap();
    wait_for("the cleanup", Duration::from_secs(10), || !path.exists());
    for pid in pids {
        assert!(dead(pid), "{pid} survived");
    }
}

#[test]
fn end_stops_the_program_and_leaves_a_big_session_to_the_watchdog() {
    let Some(mut s) = session(test_watchdog) else {
        return;
    };
    // Nested like a chain of checkpoints: the program runs innermost.
    let outer = s.new_child(s.root()).unwrap();
    let mut program = outer;
    for _ in 0..END_HERE_GROUPS {
        program = s.new_child(program).unwrap();
    }
    let mut running = spawn_in(&s, program, "exec sleep 100");
    let mut frozen = spawn_in(&s, outer, "exec sleep 100");
    wait_for("both to start", Duration::from_secs(5), || {
        s.procs(program).unwrap().len() == 1 && s.procs(outer).unwrap().len() == 1
    });
    let path = s.path.clone();
    assert!(!s.end(Some(program)).unwrap(), "left to the watchdog");
    wait_for("the program to die", Duration::from_secs(1), || {
        killed(&mut running)
    });
    assert!(alive(&mut frozen), "killed by the watchdog, not by end");
    drop(s);
    wait_for("the watchdog's clean-up", Duration::from_secs(10), || {
        killed(&mut frozen) && !path.exists()
    });
}

#[test]
fn drop_leaves_nothing() {
    let Some(mut s) = session(test_watchdog) else {
        return;
    };
    let a = s.new_child(s.root()).unwrap();
    let b = s.new_child(a).unwrap();
    let mut children = vec![
        spawn_in(&s, s.root(), "exec sleep 100"),
        spawn_in(&s, a, "exec sleep 100"),
        spawn_in(&s, b, "setsid sh -c 'sleep 100' & exec sleep 100"),
    ];
    let path = s.path.clone();
    let watchdog = s.watchdog_pid().unwrap() as i32;
    wait_for("the escape", Duration::from_secs(5), || {
        s.procs(b).unwrap().len() >= 2
    });
    let pids = s.procs(b).unwrap();
    drop(s);
    assert!(!path.exists());
    for child in &mut children {
        assert!(killed(child));
    }
    for pid in pids {
        assert!(dead(pid), "{pid} survived");
    }
    // Exited and reaped.
    assert_eq!(state(watchdog), None);
}
