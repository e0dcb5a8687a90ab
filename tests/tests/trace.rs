//! `forkmon trace` against real programs, with the real eBPF programs loaded.
mod support;

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use support::{KillOnDrop, Trace, bpf_available, fixture, forkmon_bin, printed};

fn scratch_with(files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in files {
        fs::write(dir.path().join(name), name).unwrap();
    }
    // The program may run as another user (SUDO_UID); let it in.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn reports_every_kind_of_open_with_pid_and_result() {
    if !bpf_available("reports_every_kind_of_open_with_pid_and_result") {
        return;
    }
    let dir = scratch_with(&[
        "abs.txt",
        "rel_openat.txt",
        "rel_open.txt",
        "openat2.txt",
        "grandchild.txt",
    ]);
    let d = dir.path();
    let trace = Trace::run(d, &[fixture("opens").to_str().unwrap()]);

    assert_eq!(
        trace.output.status.code(),
        Some(7),
        "forkmon exits with the program's status"
    );
    let pid = printed(&trace.stdout(), "pid");
    let grandchild = printed(&trace.stdout(), "grandchild");
    assert_ne!(pid, grandchild);

    for (file, syscall) in [
        ("abs.txt", "openat"),
        ("rel_openat.txt", "openat"),
        ("rel_open.txt", "open"),
        ("openat2.txt", "openat2"),
    ] {
        let open = trace.open_of(&d.join(file));
        assert_eq!(open["pid"], pid, "{file}: {open}");
        assert_eq!(open["syscall"], syscall, "{file}: {open}");
        assert!(open["fd"].as_i64().unwrap() >= 3, "{file}: {open}");
        assert_eq!(open["error"], serde_json::Value::Null, "{file}: {open}");
    }
    // Relative paths are reported as passed, and resolved.
    assert_eq!(
        trace.open_of(&d.join("rel_open.txt"))["path"],
        "rel_open.txt"
    );
    assert_eq!(
        trace.open_of(&d.join("openat2.txt"))["flags"],
        "O_RDONLY|O_CLOEXEC",
        "openat2's flags come from struct open_how"
    );

    let missing = trace.open_of(&d.join("missing.txt"));
    assert_eq!(missing["error"], "ENOENT");
    assert_eq!(missing["fd"], serde_json::Value::Null);
    assert_eq!(missing["pid"], pid);

    let from_grandchild = trace.open_of(&d.join("grandchild.txt"));
    assert_eq!(from_grandchild["pid"], grandchild);
    assert!(from_grandchild["fd"].as_i64().unwrap() >= 3);
}

#[test]
fn long_paths_arrive_whole_or_marked_truncated() {
    if !bpf_available("long_paths_arrive_whole_or_marked_truncated") {
        return;
    }
    let dir = scratch_with(&["long.txt"]);
    let trace = Trace::run(dir.path(), &[fixture("opens").to_str().unwrap()]);
    let long: Vec<_> = trace
        .opens
        .iter()
        .filter(|o| o["path"].as_str().unwrap().len() > 4000)
        .collect();
    assert_eq!(long.len(), 2, "two long opens: {long:?}");
    assert_eq!(
        long[0]["abs_path"],
        dir.path().join("long.txt").to_str().unwrap()
    );
    // Exactly PATH_MAX - 1 bytes: the longest path the kernel accepts.
    assert_eq!(long[0]["path"].as_str().unwrap().len(), 4095);
    assert_eq!(long[0]["truncated"], false);
    assert!(long[0]["path"].as_str().unwrap().ends_with("./long.txt"));
    assert!(long[0]["fd"].as_i64().unwrap() >= 3, "{}", long[0]["error"]);
    // Longer: the kernel refuses it, and the record says it was cut.
    assert_eq!(long[1]["error"], "ENAMETOOLONG");
    assert_eq!(long[1]["truncated"], true);
    assert_eq!(long[1]["path"].as_str().unwrap().len(), 4095);
}

#[test]
fn python_open_is_reported() {
    if !bpf_available("python_open_is_reported") {
        return;
    }
    let dir = scratch_with(&["x"]);
    let trace = Trace::run(dir.path(), &["python3", "-c", "open('x').read()"]);
    assert!(trace.output.status.success(), "{}", trace.stderr());
    let open = trace.open_of(&dir.path().join("x"));
    assert_eq!(open["path"], "x");
    assert!(open["fd"].as_i64().unwrap() >= 3);
}

#[test]
fn opens_outside_the_tree_are_not_reported() {
    if !bpf_available("opens_outside_the_tree_are_not_reported") {
        return;
    }
    let dir = scratch_with(&["inside.txt", "outside.txt"]);
    // An unrelated process, started by the test, opening a file in a loop
    // for the whole time the traced program runs.
    let outsider = KillOnDrop(
        Command::new("sh")
            .current_dir(dir.path())
            .args(["-c", "while :; do cat outside.txt; done"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    thread::sleep(Duration::from_millis(50));
    let trace = Trace::run(dir.path(), &[fixture("sleeper").to_str().unwrap()]);
    drop(outsider);

    assert!(trace.output.status.success(), "{}", trace.stderr());
    let inside = trace.opens_of(&dir.path().join("inside.txt"));
    assert!(
        inside.len() >= 50,
        "the traced program's opens are reported: {}",
        inside.len()
    );
    assert!(
        trace.opens_of(&dir.path().join("outside.txt")).is_empty(),
        "an open by a process outside the tree was reported"
    );
    assert!(trace.opens.iter().all(|o| o["comm"] != "cat"));
}

#[test]
fn exit_status_is_the_programs() {
    if !bpf_available("exit_status_is_the_programs") {
        return;
    }
    let dir = scratch_with(&[]);
    let exited = Trace::run(dir.path(), &["sh", "-c", "exit 42"]);
    assert_eq!(exited.output.status.code(), Some(42));
    let killed = Trace::run(dir.path(), &["sh", "-c", "kill -TERM $$"]);
    assert_eq!(killed.output.status.code(), Some(128 + libc::SIGTERM));
}

#[test]
fn runs_the_program_as_the_sudo_user() {
    if !bpf_available("runs_the_program_as_the_sudo_user") {
        return;
    }
    let dir = scratch_with(&[]);
    let trace = Trace::run_with(dir.path(), &["sh", "-c", "id -u; id -g; id -G"], |cmd| {
        cmd.env("SUDO_UID", "65534").env("SUDO_GID", "65534");
    });
    assert!(trace.output.status.success(), "{}", trace.stderr());
    let ids: Vec<&str> = trace.stdout().lines().map(str::trim).map(|_| "").collect();
    assert_eq!(ids.len(), 3);
    let out = trace.stdout();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("65534"), "uid");
    assert_eq!(lines.next(), Some("65534"), "gid");
    assert!(
        !lines.next().unwrap().split(' ').any(|g| g == "0"),
        "no root group left"
    );
}

#[test]
fn missing_or_unexecutable_program_exits_like_a_shell() {
    if !bpf_available("missing_or_unexecutable_program_exits_like_a_shell") {
        return;
    }
    let dir = scratch_with(&["not-executable"]);
    let missing = Trace::run(dir.path(), &["forkmon-no-such-program"]);
    assert_eq!(missing.output.status.code(), Some(127));
    assert_eq!(
        missing.stderr(),
        "forkmon: forkmon-no-such-program: command not found\n"
    );

    let no_exec = Trace::run(dir.path(), &["./not-executable"]);
    assert_eq!(no_exec.output.status.code(), Some(126));
    assert_eq!(no_exec.stderr().lines().count(), 1, "{}", no_exec.stderr());
    assert!(
        no_exec.stderr().contains("permission denied"),
        "{}",
        no_exec.stderr()
    );
    assert!(no_exec.opens.is_empty());
}

#[test]
fn without_root_says_so_in_one_line() {
    // Needs root to drop to an unprivileged user with setpriv.
    if !bpf_available("without_root_says_so_in_one_line") {
        return;
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(forkmon_bin())
        .args(["trace", "--", "true"])
        .current_dir("/")
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr,
        "forkmon: needs root to load its eBPF program: run it with sudo\n"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn interrupt_stops_the_whole_tree() {
    if !bpf_available("interrupt_stops_the_whole_tree") {
        return;
    }
    let dir = scratch_with(&[]);
    let trace_file = dir.path().join("trace.jsonl");
    // A program whose child ignores SIGINT and SIGTERM: only forkmon's
    // clean-up can end it.
    let mut forkmon = Command::new(forkmon_bin())
        .args(["trace", "--json", "--output"])
        .arg(&trace_file)
        .args([
            "--",
            "sh",
            "-c",
            "sh -c 'trap \"\" INT TERM; while :; do sleep 0.05; done' & wait",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Until the tree runs (loading the eBPF program takes a while on a
    // loaded machine), then a little longer.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while fs::read_to_string(&trace_file).map_or(0, |t| t.lines().count()) < 4
        && std::time::Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(300));
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(forkmon.id() as i32, libc::SIGINT) };
    let status = forkmon.wait().unwrap();
    assert!(!status.success());

    let pids: Vec<i64> = fs::read_to_string(&trace_file)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["pid"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert!(pids.len() > 3, "the tree's opens were traced");
    thread::sleep(Duration::from_millis(100));
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z")),
            "process {pid} of the traced tree survived forkmon"
        );
    }
}
