//! The C forkmon's environment variables, set exactly as its users write
//! them: "if set" switches, whatever the value (`FORKMON_QUIET=1`, an empty
//! one too), and `NO_COLOR` as no-color.org says (set and not empty).
mod support;

use support::scratch;

use std::{
    fs,
    io::Read as _,
    os::fd::FromRawFd as _,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use support::{KillOnDrop, bpf_available, fixture, forkmon_bin, live::Forkmon};

/// `forkmon run -- watched` with `env` set, through one save of data.txt.
fn run_through_one_resume(program: &str, env: (&str, &str)) -> Forkmon {
    let dir = scratch();
    let d = dir.path();
    fs::write(d.join("data.txt"), "one\n").unwrap();
    let forkmon = Forkmon::start_with(d, &[], &[fixture(program).to_str().unwrap()], |cmd| {
        cmd.env(env.0, env.1);
    });
    forkmon.wait_stdout("content=one", 1);
    fs::write(d.join("data.txt"), "two\n").unwrap();
    forkmon.wait_stdout("content=two", 1);
    forkmon
}

#[test]
fn forkmon_quiet_is_on_whatever_its_value() {
    if !bpf_available("forkmon_quiet_is_on_whatever_its_value") {
        return;
    }
    for value in ["1", "", "0", "yes"] {
        let forkmon = run_through_one_resume("watched", ("FORKMON_QUIET", value));
        let err = forkmon.stderr();
        assert!(
            !err.contains("[forkmon]") && !err.contains("invalid value"),
            "FORKMON_QUIET={value:?}: {err}"
        );
    }
}

#[test]
fn forkmon_flush_is_on_whatever_its_value() {
    if !bpf_available("forkmon_flush_is_on_whatever_its_value") {
        return;
    }
    for value in ["1", ""] {
        let forkmon = run_through_one_resume("unflushed", ("FORKMON_FLUSH", value));
        assert_eq!(
            forkmon.stdout().matches("startup").count(),
            1,
            "FORKMON_FLUSH={value:?}: start-up output printed once\n{}\n{}",
            forkmon.stdout(),
            forkmon.stderr()
        );
    }
}

#[test]
fn forkmon_no_standby_is_on_whatever_its_value() {
    if !bpf_available("forkmon_no_standby_is_on_whatever_its_value") {
        return;
    }
    let forkmon = run_through_one_resume("watched", ("FORKMON_NO_STANDBY", "1"));
    assert!(
        !forkmon.stderr().contains("invalid value"),
        "{}",
        forkmon.stderr()
    );
}

/// What forkmon writes to standard error when that is a terminal, until
/// it says `until` (forkmon is killed then).
fn stderr_on_a_terminal(env: &[(&str, &str)], until: &str) -> String {
    let dir = scratch();
    let d = dir.path();
    fs::write(d.join("data.txt"), "one\n").unwrap();
    let (mut controller, mut terminal) = (-1, -1);
    // SAFETY: openpty fills two fds we then own; the other pointers may be
    // null.
    let opened = unsafe {
        libc::openpty(
            &mut controller,
            &mut terminal,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(opened, 0, "openpty");
    // SAFETY: both fds are ours alone from here on.
    let (controller, terminal) = unsafe {
        (
            fs::File::from_raw_fd(controller),
            std::os::fd::OwnedFd::from_raw_fd(terminal),
        )
    };
    let mut cmd = Command::new(forkmon_bin());
    cmd.current_dir(d)
        .args(["run", "--", "cat", "data.txt"])
        .env_remove("NO_COLOR")
        .env_remove("FORKMON_NO_COLORS")
        .env_remove("FORKMON_QUIET")
        .env_remove("FORKMON_FILTER")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(terminal));
    for (key, value) in env {
        cmd.env(key, value);
    }
    let forkmon = KillOnDrop(cmd.spawn().expect("starting forkmon"));
    drop(cmd); // our copy of the terminal end
    let text = Arc::new(Mutex::new(Vec::new()));
    let sink = text.clone();
    thread::spawn(move || {
        let mut controller = controller;
        let mut buf = [0u8; 4096];
        while let Ok(n) = controller.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let deadline = Instant::now() + support::live::PATIENCE;
    loop {
        let seen = String::from_utf8_lossy(&text.lock().unwrap()).into_owned();
        if seen.contains(until) {
            drop(forkmon);
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{env:?}: no {until:?} on the terminal: {seen:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn no_colors_from_forkmon_no_colors_or_a_non_empty_no_color() {
    if !bpf_available("no_colors_from_forkmon_no_colors_or_a_non_empty_no_color") {
        return;
    }
    const ESCAPE: char = '\x1b';
    // The baseline: on a terminal, forkmon's messages are colored.
    for env in [&[][..], &[("NO_COLOR", "")][..]] {
        let seen = stderr_on_a_terminal(env, "data.txt'");
        assert!(seen.contains(ESCAPE), "{env:?}: colored: {seen:?}");
    }
    for env in [
        &[("FORKMON_NO_COLORS", "1")][..],
        &[("FORKMON_NO_COLORS", "")][..],
        &[("NO_COLOR", "1")][..],
    ] {
        let seen = stderr_on_a_terminal(env, "data.txt'");
        assert!(seen.contains("[forkmon] watch '"), "{env:?}: {seen:?}");
        assert!(!seen.contains(ESCAPE), "{env:?}: no colors: {seen:?}");
    }
}

#[test]
fn forkmon_json_is_on_whatever_its_value() {
    if !bpf_available("forkmon_json_is_on_whatever_its_value") {
        return;
    }
    let dir = scratch();
    let out = dir.path().join("opens.jsonl");
    let status = Command::new(forkmon_bin())
        .args(["trace", "--output"])
        .arg(&out)
        .args(["--", "cat", "/etc/hostname"])
        .env("FORKMON_JSON", "1")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let text = fs::read_to_string(&out).unwrap();
    let first = text.lines().next().expect("at least one open");
    assert!(first.starts_with('{'), "JSON lines: {text}");
}
