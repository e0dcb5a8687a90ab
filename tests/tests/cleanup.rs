//! Whatever ends forkmon — Ctrl-C, SIGTERM, SIGKILL — nothing of the run
//! remains: no process of the program's tree (subprocesses included), no
//! BPF program, no cgroup.
mod support;

use std::{fs, os::unix::fs::PermissionsExt as _, thread, time::Duration};

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
fn nothing_remains_after_ctrl_c_sigterm_or_sigkill() {
    if !bpf_available("nothing_remains_after_ctrl_c_sigterm_or_sigkill") {
        return;
    }
    // (signal, sent to the whole process group as a terminal's Ctrl-C is)
    for (signal, to_group) in [
        (libc::SIGINT, false),
        (libc::SIGINT, true),
        (libc::SIGTERM, false),
        (libc::SIGKILL, false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
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
