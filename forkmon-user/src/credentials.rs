//! forkmon's own look-ups of the program's files (stat, symlinks, inotify)
//! made with the program user's filesystem permissions, not root's.
//!
//! forkmon runs as root, but the files it watches are named by the program
//! and by whoever can write to their directories. A symlink planted there,
//! pointing at a file only root may reach, would otherwise be followed by
//! root: its identity compared, its directory watched, and each resume
//! would tell the user when that file changed. With the user's credentials
//! the look-up fails as it would for the user, and forkmon learns nothing
//! the user could not.
//!
//! Only the calling thread's filesystem credentials change (fsuid, fsgid
//! and its supplementary groups, through raw syscalls: glibc's wrappers of
//! `setgroups` would change every thread), and only for the span of a
//! [`Guard`]. Going from fsuid 0 to another drops the filesystem
//! capabilities (`CAP_DAC_OVERRIDE`, …); going back restores them.
use std::sync::OnceLock;

use crate::launcher::TargetUser;

/// The program's user, and root's credentials to come back to.
struct Credentials {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    own_uid: libc::uid_t,
    own_gid: libc::gid_t,
    own_groups: Vec<libc::gid_t>,
}

static PROGRAM_USER: OnceLock<Credentials> = OnceLock::new();

/// From now on, [`as_program_user`] takes `user`'s permissions. Set once,
/// before the first look-up; without it (the program runs as forkmon's own
/// user) look-ups keep forkmon's credentials.
pub fn set_program_user(user: &TargetUser) -> std::io::Result<()> {
    let own_groups = nix::unistd::getgroups()?
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    let credentials = Credentials {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups: user.groups.iter().map(|g| g.as_raw()).collect(),
        own_uid: nix::unistd::geteuid().as_raw(),
        own_gid: nix::unistd::getegid().as_raw(),
        own_groups,
    };
    // A second call (there is none) keeps the first user.
    let _ = PROGRAM_USER.set(credentials);
    Ok(())
}

/// Filesystem look-ups on this thread use the program user's permissions
/// until the guard is dropped.
#[must_use = "the credentials are restored when the guard is dropped"]
pub fn as_program_user() -> Guard {
    let Some(credentials) = PROGRAM_USER.get() else {
        return Guard(None);
    };
    switch(credentials.uid, credentials.gid, &credentials.groups);
    Guard(Some(credentials))
}

pub struct Guard(Option<&'static Credentials>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(credentials) = self.0 {
            restore(credentials);
        }
    }
}

fn switch(uid: libc::uid_t, gid: libc::gid_t, groups: &[libc::gid_t]) {
    // SAFETY: raw syscalls that change only this thread's credentials; the
    // groups slice outlives the call. Groups and gid first: changing them
    // needs CAP_SETGID, which a non-zero fsuid does not take away, but the
    // order keeps the thread never more privileged than either state.
    unsafe {
        libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr());
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
    }
}

fn restore(credentials: &Credentials) {
    // SAFETY: as in `switch`; fsuid first, which gives back the
    // capabilities the groups need.
    unsafe {
        libc::syscall(libc::SYS_setfsuid, credentials.own_uid);
        libc::syscall(libc::SYS_setfsgid, credentials.own_gid);
        libc::syscall(
            libc::SYS_setgroups,
            credentials.own_groups.len(),
            credentials.own_groups.as_ptr(),
        );
    }
}

/// This thread's filesystem uid (`setfsuid(-1)` changes nothing and
/// returns it).
#[cfg(test)]
fn fsuid() -> libc::uid_t {
    // SAFETY: a query that changes nothing.
    unsafe { libc::syscall(libc::SYS_setfsuid, -1i32) as libc::uid_t }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn look_ups_take_the_users_permissions_and_give_them_back() {
        if !nix::unistd::geteuid().is_root() {
            // Only root can take another user's permissions. Under
            // `cargo xtask test` (as root) this runs.
            assert_ne!(
                std::env::var("FORKMON_REQUIRE_BPF").as_deref(),
                Ok("1"),
                "needs root"
            );
            eprintln!("skipping: not root");
            return;
        }
        // Run on a thread of its own: credentials are per thread.
        std::thread::spawn(|| {
            let dir = tempfile::tempdir().unwrap();
            let secret = dir.path().join("secret");
            std::fs::write(&secret, "x").unwrap();
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
            let nobody = Credentials {
                uid: 65534,
                gid: 65534,
                groups: vec![65534],
                own_uid: 0,
                own_gid: 0,
                own_groups: nix::unistd::getgroups()
                    .unwrap()
                    .into_iter()
                    .map(|g| g.as_raw())
                    .collect(),
            };
            switch(nobody.uid, nobody.gid, &nobody.groups);
            assert_eq!(fsuid(), 65534);
            let denied = std::fs::metadata(&secret).unwrap_err();
            assert_eq!(denied.raw_os_error(), Some(libc::EACCES));
            restore(&nobody);
            assert_eq!(fsuid(), 0);
            assert!(std::fs::metadata(&secret).is_ok(), "root again");
        })
        .join()
        .unwrap();
    }
}
