//! Start the target program paused, so forkmon can start tracing its pid
//! before it runs a single instruction of the program, then let it exec as
//! the invoking user.
use std::{
    env,
    ffi::{CString, OsStr, OsString},
    fs,
    os::{
        fd::OwnedFd,
        unix::{ffi::OsStrExt as _, fs::PermissionsExt as _},
    },
    path::{Path, PathBuf},
};

use forkmon_common::prefault::{Populate, for_each_mapping, populate_resident};
use nix::{
    errno::Errno,
    unistd::{ForkResult, Gid, Pid, Uid},
};

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{0}: command not found")]
    NotFound(String),
    #[error("{0}: {desc}", desc = describe(.1))]
    CannotExecute(String, Errno),
    #[error("{0}: no such file or directory")]
    NoSuchFile(String),
    #[error("{0}: argument contains a NUL byte")]
    NulInArgument(String),
    #[error("cannot start {0}: {desc}", desc = describe(.1))]
    System(String, Errno),
    #[error("cannot run {0} as user {1}: {desc}", desc = describe(.2))]
    DropPrivileges(String, u32, Errno),
    #[error("invalid SUDO_UID/SUDO_GID in the environment: {0}")]
    BadSudoEnv(String),
}

/// `EACCES` → "permission denied", as a shell words it.
fn describe(errno: &Errno) -> String {
    let desc = errno.desc();
    let mut chars = desc.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => format!("{errno:?}"),
    }
}

impl LaunchError {
    /// Exit status a shell would give for the same failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            LaunchError::NotFound(_) | LaunchError::NoSuchFile(_) => 127,
            LaunchError::CannotExecute(..) => 126,
            _ => 1,
        }
    }
}

/// Who the target runs as: the user behind `sudo`, never root on their
/// behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUser {
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
}

impl TargetUser {
    /// The user to drop to when forkmon runs as root through sudo; `None`
    /// when there is nobody to drop to (not root, or root by login).
    pub fn from_sudo_env() -> Result<Option<TargetUser>, LaunchError> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(None);
        }
        let (Some(uid), Some(gid)) = (env::var_os("SUDO_UID"), env::var_os("SUDO_GID")) else {
            return Ok(None);
        };
        let parse = |v: &OsStr| -> Result<u32, LaunchError> {
            v.to_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| LaunchError::BadSudoEnv(v.to_string_lossy().into_owned()))
        };
        let uid = Uid::from_raw(parse(&uid)?);
        let gid = Gid::from_raw(parse(&gid)?);
        if uid.is_root() {
            return Ok(None);
        }
        let groups = match nix::unistd::User::from_uid(uid) {
            Ok(Some(user)) => {
                let name = CString::new(user.name.as_bytes())
                    .map_err(|_| LaunchError::BadSudoEnv(user.name.clone()))?;
                nix::unistd::getgrouplist(&name, gid).unwrap_or_else(|_| vec![gid])
            }
            _ => vec![gid],
        };
        Ok(Some(TargetUser { uid, gid, groups }))
    }
}

/// A forked child waiting for [`Paused::release`] before it execs.
pub struct Paused {
    pid: Pid,
    program: String,
    /// Set when the child drops to another user.
    uid: Option<u32>,
    go: Option<OwnedFd>,
    exec_errors: OwnedFd,
}

impl Paused {
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Lets the child exec the program. Returns once the exec has happened
    /// (or failed, in which case the child has been reaped).
    pub fn release(mut self) -> Result<Pid, LaunchError> {
        if let Some(go) = self.go.take() {
            let _ = nix::unistd::write(&go, &[1]);
        }
        // The error pipe is close-on-exec: EOF means the exec succeeded.
        let mut code = [0u8; 4];
        let mut got = 0;
        while got < code.len() {
            match nix::unistd::read(&self.exec_errors, &mut code[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(LaunchError::System(self.program.clone(), e)),
            }
        }
        if got < code.len() {
            return Ok(self.pid);
        }
        let _ = nix::sys::wait::waitpid(self.pid, None);
        let code = i32::from_ne_bytes(code);
        let errno = Errno::from_raw(code.abs());
        Err(match self.uid {
            Some(uid) if code < 0 => LaunchError::DropPrivileges(self.program.clone(), uid, errno),
            _ => exec_error(&self.program, errno),
        })
    }
}

impl Drop for Paused {
    /// Never released: the child sees EOF on its go pipe and exits.
    fn drop(&mut self) {
        if let Some(go) = self.go.take() {
            drop(go);
            let _ = nix::sys::wait::waitpid(self.pid, None);
        }
    }
}

fn exec_error(program: &str, errno: Errno) -> LaunchError {
    match errno {
        Errno::ENOENT => LaunchError::NoSuchFile(program.into()),
        _ => LaunchError::CannotExecute(program.into(), errno),
    }
}

/// Finds `program` like a shell does: as given if it has a slash, else the
/// first executable regular file of that name in `PATH` (falling back to a
/// non-executable one, so exec reports "permission denied" as a shell does).
pub fn resolve_program(program: &OsStr) -> Result<PathBuf, LaunchError> {
    let display = program.to_string_lossy().into_owned();
    if program.is_empty() {
        return Err(LaunchError::NotFound(display));
    }
    if program.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(program));
    }
    let path = env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut not_executable = None;
    for dir in env::split_paths(&path) {
        let candidate = if dir.as_os_str().is_empty() {
            Path::new(".").join(program)
        } else {
            dir.join(program)
        };
        match fs::metadata(&candidate) {
            Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => {
                return Ok(candidate);
            }
            Ok(meta) if meta.is_file() => {
                not_executable.get_or_insert(candidate);
            }
            _ => {}
        }
    }
    not_executable.ok_or(LaunchError::NotFound(display))
}

/// What the program is started with besides its arguments.
#[derive(Default)]
pub struct Setup<'a> {
    pub user: Option<&'a TargetUser>,
    /// Added to (or replacing in) forkmon's environment.
    pub env: Vec<(OsString, OsString)>,
    /// Fds (close-on-exec in forkmon) the program inherits, same numbers.
    pub inherit: Vec<std::os::fd::RawFd>,
    /// An fd the program gets as its standard input instead of forkmon's.
    pub stdin: Option<std::os::fd::RawFd>,
}

/// Forks a child that waits for [`Paused::release`], then drops to the
/// setup's user, arranges to die with forkmon, and execs `argv`.
pub fn spawn_paused(argv: &[OsString], setup: &Setup) -> Result<Paused, LaunchError> {
    let user = setup.user;
    let program_name = argv[0].to_string_lossy().into_owned();
    let path = resolve_program(&argv[0])?;
    let nul = |s: &OsStr| {
        CString::new(s.as_bytes()).map_err(|_| LaunchError::NulInArgument(program_name.clone()))
    };
    // Everything the child needs is allocated here, before the fork: the
    // child of a threaded process may only make async-signal-safe calls.
    let c_path = nul(path.as_os_str())?;
    let c_argv = argv.iter().map(|a| nul(a)).collect::<Result<Vec<_>, _>>()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = c_argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let c_env = environment(&setup.env)
        .iter()
        .map(|kv| nul(kv))
        .collect::<Result<Vec<_>, _>>()?;
    let mut env_ptrs: Vec<*const libc::c_char> = c_env.iter().map(|kv| kv.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    let system = |e| LaunchError::System(program_name.clone(), e);
    let (go_read, go_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(system)?;
    let (err_read, err_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(system)?;
    let parent = nix::unistd::getpid();

    // SAFETY: the child only makes async-signal-safe calls (raw syscalls
    // through libc and nix wrappers that do not allocate) until exec or _exit.
    match unsafe { nix::unistd::fork() }.map_err(system)? {
        ForkResult::Child => {
            drop(go_write);
            drop(err_read);
            let code = child_exec(&go_read, parent, setup, &c_path, &argv_ptrs, &env_ptrs);
            let _ = nix::unistd::write(&err_write, &code.to_ne_bytes());
            // SAFETY: _exit is async-signal-safe and skips atexit handlers
            // that belong to the parent.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => Ok(Paused {
            pid: child,
            program: program_name,
            uid: user.map(|u| u.uid.as_raw()),
            go: Some(go_write),
            exec_errors: err_read,
        }),
    }
}

/// Takes now the faults a spawn left in forkmon: until the child exec'd,
/// it shared every page with forkmon, write-protected, so forkmon's first
/// write to each page since then faults (2–3 µs each here). Those came at
/// the first checkpoint, ~90 µs of its answer; a `madvise` per run of
/// resident pages does them all at start-up for far less. Call once the
/// child has exec'd ([`Paused::release`]), when nothing shares the pages.
pub fn reown_pages() {
    // SAFETY: raw syscalls on this process's own private, writable memory.
    unsafe {
        for_each_mapping(|m| {
            if m.writable && m.private {
                populate_resident(m.start, m.end, Populate::Write);
            }
        })
    };
}

/// Runs in the forked child. Returns only on failure: the errno of the exec,
/// or its negation when dropping privileges failed.
fn child_exec(
    go: &OwnedFd,
    parent: Pid,
    setup: &Setup,
    path: &CString,
    argv: &[*const libc::c_char],
    env: &[*const libc::c_char],
) -> i32 {
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(go, &mut byte) {
            Ok(1) => break,
            Err(Errno::EINTR) => continue,
            // forkmon gave up on us (or died): never run untraced.
            // SAFETY: async-signal-safe exit without running parent's atexit.
            _ => unsafe { libc::_exit(127) },
        }
    }
    if let Some(user) = setup.user {
        let dropped = nix::unistd::setgroups(&user.groups)
            .and_then(|()| nix::unistd::setgid(user.gid))
            .and_then(|()| nix::unistd::setuid(user.uid));
        if let Err(e) = dropped {
            return -(e as i32);
        }
    }
    // After setuid, which clears it: die with forkmon, and make sure it is
    // still alive now (it may have died before the prctl).
    // SAFETY: prctl and getppid are async-signal-safe syscalls.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent.as_raw() {
            libc::_exit(127);
        }
        // Rust ignores SIGPIPE; the program expects the default.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        for &fd in &setup.inherit {
            libc::fcntl(fd, libc::F_SETFD, 0);
        }
        if let Some(fd) = setup.stdin {
            libc::dup2(fd, 0);
        }
        libc::execve(path.as_ptr(), argv.as_ptr(), env.as_ptr());
    }
    Errno::last_raw()
}

/// forkmon's environment with `extra` applied, as `KEY=VALUE` strings.
fn environment(extra: &[(OsString, OsString)]) -> Vec<OsString> {
    let mut vars: Vec<(OsString, OsString)> = env::vars_os()
        .filter(|(key, _)| !extra.iter().any(|(k, _)| k == key))
        .collect();
    vars.extend(extra.iter().cloned());
    vars.into_iter()
        .map(|(mut key, value)| {
            key.push("=");
            key.push(value);
            key
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_like_a_shell() {
        assert_eq!(
            resolve_program(OsStr::new("sh"))
                .unwrap()
                .file_name()
                .unwrap(),
            "sh"
        );
        assert_eq!(
            resolve_program(OsStr::new("./x")).unwrap(),
            PathBuf::from("./x")
        );
        let err = resolve_program(OsStr::new("forkmon-no-such-program")).unwrap_err();
        assert_eq!(err.exit_code(), 127);
        assert_eq!(
            err.to_string(),
            "forkmon-no-such-program: command not found"
        );
    }

    #[test]
    fn exec_errors_map_to_shell_codes() {
        assert_eq!(exec_error("x", Errno::ENOENT).exit_code(), 127);
        assert_eq!(exec_error("x", Errno::EACCES).exit_code(), 126);
        assert_eq!(exec_error("x", Errno::ENOEXEC).exit_code(), 126);
    }
}
