//! Whatever ends forkmon — Ctrl-C, SIGTERM, SIGKILL — nothing of the run
//! remains: no process of the program's tree (subprocesses included), no
//! BPF program, no cgroup.
mod support;

use std::{
    ffi::CString,
    fs, io,
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use support::{bpf_available, fixture, live::Forkmon};

/// The ids of the distinct BPF programs process `pid` holds (from its
/// fdinfo; a program and its link each hold an fd).
fn programs_held_by(pid: i32) -> Vec<u32> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| fs::read_to_string(fd.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect::<std::collections::BTreeSet<u32>>()
        .into_iter()
        .collect()
}

/// Which of `ids` are still loaded in the kernel.
fn still_loaded(ids: &[u32]) -> Vec<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|info| info.id())
        .filter(|id| ids.contains(id))
        .collect()
}

fn forkmon_cgroups() -> Vec<String> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .filter_map(|dir| fs::read_dir(dir).ok())
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("forkmon-"))
        .collect()
}

/// Waits up to 5 s for `done`.
fn eventually(done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !done() && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn nothing_remains_after_ctrl_c_sigterm_sighup_or_sigkill() {
    if !bpf_available("nothing_remains_after_ctrl_c_sigterm_sighup_or_sigkill") {
        return;
    }
    // (signal, sent to the whole process group as a terminal's Ctrl-C is)
    for (signal, to_group) in [
        (libc::SIGINT, false),
        (libc::SIGINT, true),
        (libc::SIGTERM, false),
        (libc::SIGHUP, false),
        (libc::SIGKILL, false),
    ] {
        let dir = support::scratch();
        fs::write(dir.path().join("data.txt"), "one\n").unwrap();
        // A subprocess that would outlive the run, escaping to its own
        // session: it must be stopped too.
        let program = format!(
            "setsid sleep 1000 & exec {} syscall",
            fixture("watched").display()
        );
        let mut forkmon = Forkmon::start_with(dir.path(), &[], &["sh", "-c", &program], |cmd| {
            use std::os::unix::process::CommandExt as _;
            cmd.process_group(0);
        });
        forkmon.wait_stdout("done pid=", 1);
        // Its exit is known to forkmon (reported by the checkpoint).
        forkmon.wait_stderr("program exited with status 0", 1);
        assert!(
            forkmon.tree().len() >= 2,
            "checkpoint and subprocess: {:?}",
            forkmon.tree()
        );
        let programs = programs_held_by(forkmon.pid());
        // Opens (sys_exit), new tasks, exec and exit.
        assert!(programs.len() >= 4, "forkmon's BPF programs: {programs:?}");

        if to_group {
            // SAFETY: signalling the process group of our own child.
            unsafe { libc::killpg(forkmon.pid(), signal) };
        } else {
            forkmon.signal(signal);
        }
        let status = forkmon.wait();
        if signal != libc::SIGKILL {
            // Ctrl-C ends the run: forkmon exits with the program's last
            // status, which was a success.
            assert_eq!(status.code(), Some(0), "signal {signal}");
            assert!(
                !forkmon.stderr().contains("died"),
                "checkpoints outlive a Ctrl-C until forkmon stops them:\n{}",
                forkmon.stderr()
            );
        }
        // After SIGKILL the watchdog cleans up, and the kernel frees the
        // programs of a dead process asynchronously: give both a moment.
        eventually(|| forkmon.tree().is_empty());
        assert_eq!(
            forkmon.tree(),
            Vec::<i32>::new(),
            "processes left after signal {signal}"
        );
        eventually(|| still_loaded(&programs).is_empty());
        assert_eq!(
            still_loaded(&programs),
            Vec::<u32>::new(),
            "BPF programs left after signal {signal}"
        );
        let ours = format!("forkmon-{}", forkmon.pid());
        eventually(|| !forkmon_cgroups().contains(&ours));
        assert!(
            !forkmon_cgroups().contains(&ours),
            "cgroup {ours} left after signal {signal}"
        );
    }
}

/// A cgroup of its own for the forkmon runs of one test, beside this
/// test's cgroup: forkmon puts its sessions in its own cgroup, and looks
/// for stale ones there, so what happens in it is the test's runs' doing
/// alone, whatever other tests run meanwhile. Removed when dropped, with
/// whatever is left in it.
struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    fn create(name: &str) -> TestCgroup {
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let own = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("cgroup v2");
        let mount = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(Path::new)
            .find(|m| m.join("cgroup.controllers").exists())
            .expect("a cgroup2 mount");
        // Not named forkmon-…, the sessions' names.
        let path = mount
            .join(own.trim_start_matches('/'))
            .join(format!("fmtest-{name}-{}", std::process::id()));
        fs::create_dir(&path).unwrap();
        TestCgroup { path }
    }

    /// Makes `cmd`'s process start in this cgroup.
    fn enter(&self, cmd: &mut std::process::Command) {
        let procs = CString::new(self.path.join("cgroup.procs").as_os_str().as_bytes()).unwrap();
        // SAFETY: the child runs only open, write and close (async-signal
        // safe) between fork and exec, on memory allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // "0": the writer itself.
                let written = libc::write(fd, c"0".as_ptr().cast(), 1);
                let error = io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(error);
                }
                Ok(())
            })
        };
    }

    /// The session directory of forkmon `pid`.
    fn session(&self, pid: i32) -> PathBuf {
        self.path.join(format!("forkmon-{pid}"))
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // After a failure, runs and what they left may still be in it:
        // they are this test's alone.
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
        eventually(|| {
            fs::read_to_string(self.path.join("cgroup.events"))
                .is_ok_and(|events| events.contains("populated 0"))
        });
        remove_tree(&self.path);
    }
}

/// Removes cgroup `dir` and the cgroups nested in it, deepest first.
fn remove_tree(dir: &Path) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path());
        }
    }
    if let Err(e) = fs::remove_dir(dir) {
        eprintln!("cannot remove {}: {e}", dir.display());
    }
}

/// Pids of the children of `parent`.
fn children_of(parent: i32) -> Vec<i32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let mut fields = stat.rsplit(')').next().unwrap_or("").split_whitespace();
                fields.nth(1).and_then(|p| p.parse().ok()) == Some(parent)
            })
        })
        .collect()
}

/// Whether process `pid` is dead (a zombie, or reaped).
fn gone(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// forkmon `pid`'s watchdog: its child running `forkmon __watchdog …`.
fn watchdog_of(pid: i32) -> i32 {
    let found: Vec<i32> = children_of(pid)
        .into_iter()
        .filter(|child| {
            fs::read(format!("/proc/{child}/cmdline"))
                .is_ok_and(|cmdline| cmdline.split(|&b| b == 0).nth(1) == Some(b"__watchdog"))
        })
        .collect();
    assert_eq!(found.len(), 1, "watchdogs of forkmon {pid}: {found:?}");
    found[0]
}

/// Killing forkmon and its watchdog together leaves the session's cgroup,
/// and whatever escaped into it, behind: the next forkmon removes it, and
/// touches no live run's.
#[test]
fn the_next_run_removes_the_cgroup_of_a_run_killed_with_its_watchdog() {
    if !bpf_available("the_next_run_removes_the_cgroup_of_a_run_killed_with_its_watchdog") {
        return;
    }
    let cgroup = TestCgroup::create("stale");
    let dir = support::scratch();
    fs::write(dir.path().join("data.txt"), "one\n").unwrap();
    // A subprocess in its own session: forkmon's death does not reach it
    // (no parent-death signal), only killing the cgroup does.
    let program = format!(
        "setsid sleep 1000 & exec {} syscall",
        fixture("watched").display()
    );
    let start = || {
        let forkmon = Forkmon::start_with(dir.path(), &[], &["sh", "-c", &program], |cmd| {
            cgroup.enter(cmd)
        });
        forkmon.wait_stderr("program exited with status 0", 1);
        assert!(cgroup.session(forkmon.pid()).is_dir());
        // Settled: the checkpoint forks its standby once the program has
        // exited.
        let mut tree = forkmon.tree();
        loop {
            thread::sleep(Duration::from_millis(150));
            let now = forkmon.tree();
            if now == tree {
                break;
            }
            tree = now;
        }
        forkmon
    };
    let mut live = start();
    let mut live_tree = live.tree();
    live_tree.sort_unstable();
    let mut doomed = start();
    let doomed_session = cgroup.session(doomed.pid());

    let watchdog = watchdog_of(doomed.pid());
    // SAFETY: kill with a pid we just found and a signal number.
    assert_eq!(unsafe { libc::kill(watchdog, libc::SIGKILL) }, 0);
    doomed.signal(libc::SIGKILL);
    doomed.wait();
    eventually(|| gone(watchdog));
    assert!(gone(watchdog), "the watchdog is dead");
    // Nothing else cleans up (no other forkmon runs in this cgroup).
    thread::sleep(Duration::from_millis(300));
    assert!(doomed_session.is_dir(), "left behind");
    let escaped = doomed.tree();
    assert!(!escaped.is_empty(), "the escaped sleep lives on in it");

    let mut next = start();
    eventually(|| !doomed_session.exists());
    assert!(!doomed_session.exists(), "the next run removes it");
    eventually(|| doomed.tree().is_empty());
    assert_eq!(doomed.tree(), Vec::<i32>::new(), "what was left is killed");
    // The live run's cgroup and processes are untouched.
    assert!(cgroup.session(live.pid()).is_dir());
    let mut tree = live.tree();
    tree.sort_unstable();
    assert_eq!(tree, live_tree);
    assert!(cgroup.session(next.pid()).is_dir());

    for forkmon in [&mut live, &mut next] {
        forkmon.signal(libc::SIGTERM);
        assert_eq!(forkmon.wait().code(), Some(0));
        assert!(!cgroup.session(forkmon.pid()).exists());
    }
}
