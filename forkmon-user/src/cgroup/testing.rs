//! What the cgroup tests share: deciding whether a test may skip, and
//! starting and observing the processes they put into groups.
use std::{
    fs,
    io::Write as _,
    os::unix::process::ExitStatusExt as _,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use super::{GroupId, Session};

/// Whether this process may manage cgroups; if not, the test says so
/// through [`skip`] and should return.
pub(super) fn root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip("not running as root (`cargo xtask test` runs the tests as root)");
    false
}

/// A test that cannot run here calls this before returning: it prints
/// why. Under `FORKMON_REQUIRE_BPF=1` (CI, and `cargo xtask test` as
/// root), where root and cgroup v2 are a given, it fails the test instead,
/// so that a test passing without having run cannot go unnoticed.
pub(super) fn skip(reason: &str) {
    let current = thread::current();
    let test = current.name().unwrap_or("this test");
    assert_ne!(
        std::env::var("FORKMON_REQUIRE_BPF").as_deref(),
        Ok("1"),
        "{test} must run here (FORKMON_REQUIRE_BPF=1), but {reason}"
    );
    eprintln!("skipping {test}: {reason}");
}

/// Start `sh -c script` in `group`, before it runs any of `script`.
pub(super) fn spawn_in(session: &Session, group: GroupId, script: &str) -> Child {
    spawn_moved(script, |pid| session.add_process(group, pid).unwrap())
}

/// Start `sh -c script`, letting `move_into` put it into a cgroup before it
/// runs any of `script`.
pub(super) fn spawn_moved(script: &str, move_into: impl FnOnce(i32)) -> Child {
    let mut child = Command::new("sh")
        .args(["-c", "read x || exit 1; exec sh -c \"$1\"", "sh", script])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    move_into(child.id() as i32);
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    child
}

/// State letter of a process in /proc/<pid>/stat.
pub(super) fn state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

pub(super) fn dead(pid: i32) -> bool {
    matches!(state(pid), None | Some('Z' | 'X'))
}

pub(super) fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

pub(super) fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

pub(super) fn killed(child: &mut Child) -> bool {
    child.try_wait().unwrap().and_then(|s| s.signal()) == Some(libc::SIGKILL)
}

pub(super) fn alive(child: &mut Child) -> bool {
    child.try_wait().unwrap().is_none()
}
