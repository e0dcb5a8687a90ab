//! The program has no say over root forkmon: what it sends on the stub
//! socket is checked against the kernel's word, and nothing forkmon does
//! reaches a process outside the program's tree.
mod support;

use support::scratch;

use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    process::Command,
    thread,
    time::Duration,
};

use support::{KillOnDrop, bpf_available, fixture, live::Forkmon};

#[test]
fn forged_registrations_cannot_reach_a_process_outside_the_tree() {
    if !bpf_available("forged_registrations_cannot_reach_a_process_outside_the_tree") {
        return;
    }
    // A root process of another session: what the forger names.
    let victim = KillOnDrop(Command::new("sleep").arg("1000").spawn().unwrap());
    let victim_pid = victim.0.id().to_string();
    let cgroup_before = fs::read_to_string(format!("/proc/{victim_pid}/cgroup")).unwrap();

    let dir = scratch();
    let d = dir.path();
    fs::write(d.join("data.txt"), "one\n").unwrap();
    let forkmon = Forkmon::start_with(
        d,
        &[],
        &[fixture("forger").to_str().unwrap(), &victim_pid],
        |cmd| {
            cmd.env("SUDO_UID", "65534").env("SUDO_GID", "65534");
        },
    );
    forkmon.wait_stdout("forged=3", 1);
    thread::sleep(Duration::from_millis(100));
    // The next edit kills what ran after the checkpoint: never the victim.
    fs::write(d.join("data.txt"), "two\n").unwrap();
    forkmon.wait_stdout("forged=3", 2);
    thread::sleep(Duration::from_millis(100));
    assert!(
        fs::metadata(format!("/proc/{victim_pid}")).is_ok(),
        "the victim was killed:\n{}",
        forkmon.stderr()
    );
    assert_eq!(
        fs::read_to_string(format!("/proc/{victim_pid}/cgroup")).unwrap(),
        cgroup_before,
        "the victim was moved into forkmon's cgroup"
    );
    forkmon.wait_stderr("ignoring a message on the stub socket", 6);
    let err = forkmon.stderr();
    assert!(
        err.contains(&format!("spoke for pid {victim_pid}")),
        "{err}"
    );
    assert!(
        !err.contains("cannot checkpoint"),
        "forged failure believed: {err}"
    );
}

/// Counts forkmon's resumes so far.
fn resumes(forkmon: &Forkmon) -> usize {
    forkmon.stderr().matches("changed, resuming").count()
}

#[test]
fn a_planted_symlink_reveals_nothing_of_a_file_the_user_cannot_reach() {
    if !bpf_available("a_planted_symlink_reveals_nothing_of_a_file_the_user_cannot_reach") {
        return;
    }
    // A file only root may reach.
    let vault = tempfile::tempdir().unwrap();
    fs::set_permissions(vault.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let secret = vault.path().join("secret");
    fs::write(&secret, "root's\n").unwrap();

    // The program's user owns the watched directory.
    let dir = scratch();
    let d = dir.path();
    std::os::unix::fs::chown(d, Some(65534), Some(65534)).unwrap();
    fs::write(d.join("data.txt"), "one\n").unwrap();
    let forkmon = Forkmon::start_with(
        d,
        &["--restart-delay", "0", "--ignore-delay", "0"],
        &[fixture("watched").to_str().unwrap()],
        |cmd| {
            cmd.env("SUDO_UID", "65534").env("SUDO_GID", "65534");
        },
    );
    forkmon.wait_stdout("content=one", 1);

    // The user swaps the watched file for a symlink to the secret.
    std::os::unix::fs::symlink(&secret, d.join("link.tmp")).unwrap();
    fs::rename(d.join("link.tmp"), d.join("data.txt")).unwrap();
    // Gone for the user: resumed once the missing file's grace is over.
    forkmon.wait_stderr("changed, resuming", 1);
    thread::sleep(Duration::from_millis(300));
    let before = resumes(&forkmon);

    // Root changes the secret; the user then pokes the link (its own
    // times), asking forkmon to look again. Were the secret compared, its
    // change would show as a resume.
    fs::write(&secret, "root's, changed\n").unwrap();
    let link = std::ffi::CString::new(d.join("data.txt").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path; null times mean now.
    let touched = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            link.as_ptr(),
            std::ptr::null(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(touched, 0);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        resumes(&forkmon),
        before,
        "a change of the secret showed:\n{}",
        forkmon.stderr()
    );
    // Nor is the secret's directory watched (it would be, following the
    // symlink as root).
    let vault_ino = fs::metadata(vault.path()).unwrap().ino();
    let watched = inotify_watched_inodes(forkmon.pid());
    assert!(
        !watched.contains(&vault_ino),
        "the root-only directory is watched: {watched:?}"
    );
    assert!(
        !forkmon.stdout().contains("root's"),
        "the program read the secret: {}",
        forkmon.stdout()
    );
}

/// The inodes `pid`'s inotify instances watch (from fdinfo).
fn inotify_watched_inodes(pid: i32) -> Vec<u64> {
    let mut inodes = Vec::new();
    for fd in fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let Ok(info) = fs::read_to_string(fd.path()) else {
            continue;
        };
        for line in info.lines().filter(|l| l.starts_with("inotify wd:")) {
            let ino = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("ino:"))
                .and_then(|hex| u64::from_str_radix(hex, 16).ok());
            inodes.extend(ino);
        }
    }
    inodes
}
