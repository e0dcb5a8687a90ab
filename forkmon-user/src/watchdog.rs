//! The cgroup watchdog: a process that cleans a session cgroup up when
//! forkmon dies, even by SIGKILL.
//!
//! [`Session::create`](crate::cgroup::Session::create) starts it. It is
//! forkmon's own binary re-executed as `forkmon __watchdog <session dir>
//! <inode>` (a fresh single-threaded process, whatever threads forkmon
//! runs), with the read end of a pipe as its stdin. forkmon keeps the write
//! end (close-on-exec, so no program it runs inherits it). When forkmon is
//! gone, for whatever reason, the watchdog reads end-of-file, kills the
//! session's cgroup, waits for it to empty and removes every directory of
//! it, deepest first. When forkmon cleans up itself (dropping the
//! [`Session`](crate::cgroup::Session)), the directory is gone by the time
//! the watchdog wakes up, and it exits quietly. It runs in its own process
//! group and ignores SIGINT, SIGTERM, SIGHUP and friends, so a Ctrl-C for
//! forkmon does not stop it. While it lives it holds the session (a shared
//! lock, as forkmon does), so that no other forkmon run takes the session
//! for a stale one and races it.
//!
//! `main` must hand the process over before doing anything else:
//!
//! ```ignore
//! let mut args = std::env::args_os().skip(1);
//! if args.next().as_deref() == Some(std::ffi::OsStr::new(watchdog::ARG)) {
//!     watchdog::main(args);
//! }
//! ```
use std::{
    ffi::OsString,
    io,
    os::{
        fd::{AsFd as _, BorrowedFd, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    fcntl::OFlag,
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::{
        signal::{self, SigHandler, Signal},
        stat::{SFlag, fstat},
    },
    unistd::pipe2,
};

use rustix::process::{PidfdFlags, pidfd_open};

use crate::cgroup;

/// `argv[1]` that makes forkmon run as the watchdog: see [`main`].
pub const ARG: &str = "__watchdog";

/// How long the watchdog waits for forkmon to finish exiting before it
/// cleans up.
const FORKMON_EXIT_WAIT: Duration = Duration::from_secs(2);

/// forkmon's end of a running watchdog. Dropping it closes the pipe: the
/// watchdog wakes up and cleans up whatever is left of the session, on its
/// own.
pub struct Watchdog {
    /// Write end of the pipe the watchdog reads: closing it (or dying) tells
    /// the watchdog forkmon is gone.
    pipe: OwnedFd,
    child: Child,
}

impl Watchdog {
    /// How forkmon runs its watchdog: itself, with [`ARG`].
    pub fn command(session_dir: &Path, ino: u64) -> Command {
        let mut command = Command::new("/proc/self/exe");
        command
            .arg0("forkmon-wd")
            .arg(ARG)
            .arg(session_dir)
            .arg(ino.to_string());
        command
    }

    pub fn spawn(mut command: Command) -> io::Result<Watchdog> {
        // Both ends close-on-exec: no program forkmon starts gets either; the
        // read end becomes the watchdog's stdin.
        let (read, write) = pipe2(OFlag::O_CLOEXEC)?;
        let child = command
            .stdin(Stdio::from(read))
            .stdout(Stdio::null())
            .current_dir("/")
            // Out of forkmon's process group: no Ctrl-C from the terminal.
            .process_group(0)
            .spawn()?;
        Ok(Watchdog { pipe: write, child })
    }

    /// Pid of the watchdog process (a child of forkmon).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Closes the pipe, which wakes the watchdog up, and waits up to
    /// `timeout` for it to exit (it exits at once when forkmon left nothing
    /// to clean up).
    pub fn close_and_wait(self, timeout: Duration) {
        let Watchdog { pipe, mut child } = self;
        drop(pipe);
        let deadline = Instant::now() + timeout;
        // An error means someone else reaped it (forkmon as a subreaper).
        while let Ok(None) = child.try_wait() {
            if Instant::now() >= deadline {
                log::debug!("cgroup watchdog {} still running", child.id());
                break;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Body of `forkmon __watchdog <session dir> <inode>`, with `args` the
/// arguments after `__watchdog`. `main` must call it before anything else
/// (before opening files or starting threads): it closes every inherited
/// file descriptor above stderr.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ! {
    let _ = nix::sys::prctl::set_name(c"forkmon-wd");
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGTSTP,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
        Signal::SIGPIPE,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        // SAFETY: ignoring a signal installs no handler, so no code of ours
        // runs in signal context.
        let _ = unsafe { signal::signal(sig, SigHandler::SigIgn) };
    }
    // Inherited non-close-on-exec descriptors (the pipes of whoever started
    // forkmon, say) must not be kept open by the watchdog.
    // SAFETY: close_range only closes descriptors; nothing in this process
    // owns one above 2 yet (main runs first thing in forkmon's main), and no
    // other thread exists.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    let mut args = args.into_iter();
    let session_dir = args.next().map(PathBuf::from);
    let ino = args
        .next()
        .and_then(|s| s.to_str().and_then(|s| s.parse::<u64>().ok()));
    let (Some(session_dir), Some(ino)) = (session_dir, ino) else {
        eprintln!("usage: forkmon {ARG} SESSION-CGROUP-DIR INODE (forkmon runs this itself)");
        std::process::exit(2);
    };
    let stdin = io::stdin();
    std::process::exit(run(stdin.as_fd(), &session_dir, ino))
}

/// Wait until the write end of `pipe` is closed (forkmon is gone), then
/// clean up the session cgroup `session_dir` if it is still the one whose
/// inode is `ino`. Returns the exit status.
pub(crate) fn run(pipe: BorrowedFd<'_>, session_dir: &Path, ino: u64) -> i32 {
    let is_pipe = fstat(pipe).is_ok_and(|st| {
        SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFIFO
    });
    if !is_pipe {
        eprintln!("forkmon watchdog: stdin is not forkmon's pipe");
        return 2;
    }
    // Spares the session from other forkmon runs removing stale ones until
    // we are done with it (forkmon holds it too, while it lives).
    let _held = cgroup::hold_session(session_dir, ino);
    // forkmon, to see it gone for good below.
    let forkmon =
        rustix::process::getppid().and_then(|parent| pidfd_open(parent, PidfdFlags::empty()).ok());
    let mut buf = [0u8; 64];
    loop {
        match nix::unistd::read(pipe, &mut buf) {
            Ok(0) => break,
            Ok(_) | Err(Errno::EINTR) => {}
            // Cannot tell whether forkmon lives: cleaning up is the lesser
            // evil.
            Err(_) => break,
        }
    }
    if let Some(forkmon) = forkmon
        && session_dir.exists()
    {
        // Left to us (forkmon cleaned up otherwise). The pipe closes while
        // forkmon is still exiting. Thousands of
        // killed checkpoints, exiting, would take the CPUs from it for
        // seconds: kill once it is gone (and its shell has the prompt).
        let mut gone = [PollFd::new(forkmon.as_fd(), PollFlags::POLLIN)];
        let wait = PollTimeout::try_from(FORKMON_EXIT_WAIT).unwrap_or(PollTimeout::MAX);
        let _ = poll(&mut gone, wait);
    }
    match cgroup::clean_up_session(session_dir, Some(ino)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("forkmon watchdog: {e}");
            1
        }
    }
}
