//! The `LD_PRELOAD` library that lives inside the target and forks it at a
//! checkpoint.
//!
//! Flow (docs/mechanism.md): the constructor installs the signal
//! handler, registers the process with forkmon (its own eventfd over the
//! inherited registration socket) and waits for "go", so forkmon has armed
//! the process before the program runs. When the program opens a file that
//! may match the filter, the eBPF program signals the thread on its way out
//! of the syscall; the handler (RAX holds the new fd) forks at once if the
//! open is likely to become a checkpoint, and polls its eventfd for
//! forkmon's verdict (it comes within a fraction of a millisecond). On
//! "checkpoint" the parent stays in the handler as the checkpoint and lets
//! its child return to the program (forked then if it was not before); on
//! "no" the child is killed. The eBPF program armed the child at the fork.
//! Later children of the checkpoint are standbys: they fault in their
//! pages, register and wait until forkmon tells one to run, then re-open
//! the file with the program's own open arguments.
//!
//! Everything after the constructor runs in a signal handler, so it only
//! makes raw, async-signal-safe calls: no allocation, no locks, no std I/O.
//! Two exceptions, each saying why it is safe where it is made: `fflush`
//! at a checkpoint, and glibc's `fork()` for a process with other threads
//! (`fork_with_handlers`).
// No std: it would bring its panic and unwinding machinery (and
// libgcc_s) into every process of the program's tree. forkmon's build.rs
// builds it with panic=abort; a plain workspace build (panic=unwind, for
// clippy and tests) keeps std, which unwinding needs.
#![cfg_attr(panic = "abort", no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

use core::{
    mem::{size_of, zeroed},
    ptr,
    sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering},
};

mod locks;
mod prefault;
mod signals;

/// A panic inside the target (in a signal handler, or a forked child) has
/// nowhere to go: end the process, as an abort would.
#[cfg(panic = "abort")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: abort takes no arguments and never returns.
    unsafe { libc::abort() }
}

use forkmon_common::open_syscall;
use forkmon_common::stub::{
    CHECKPOINT_ATFORK, CHECKPOINT_CACHE, CMD_CHECKPOINT, CMD_FORK, CMD_FORK_STANDBY, CMD_GO,
    CMD_MASK, ENV_FLUSH, ENV_FORGET_LOCKS, ENV_SOCKET, FAILED_LOCK_HELD, FAILED_THREADS_LEFT,
    Message, REOPEN_MARK, StubMessage, checkpoint_syscall, spin_budget_us,
};

/// The registration socket shared by the whole tree.
static SOCKET: AtomicI32 = AtomicI32::new(-1);
/// This process's own command channel.
static EVENTFD: AtomicI32 = AtomicI32::new(-1);
static FLUSH: AtomicBool = AtomicBool::new(false);
/// Set in a resumed child of a bytecode cache's checkpoint forked at the
/// resume (not a standby: see `armed::SKIP_NEXT_OPEN`), whose open of the
/// cache was made to fail: the program's next candidate open is the
/// cache's source, which forkmon never makes a second checkpoint. Forking
/// early there only to kill the child cost a Python resume 1–2 ms (the
/// fork of a large heap, then a write fault on every page it touched).
static SOURCE_NEXT: AtomicBool = AtomicBool::new(false);

const SI_KERNEL: i32 = 0x80;

unsafe extern "C" {
    /// glibc ≥ 2.34: fork without atfork handlers or stdio/malloc locks,
    /// async-signal-safe.
    fn _Fork() -> libc::pid_t;
}

#[used]
#[unsafe(link_section = ".init_array")]
static CONSTRUCTOR: extern "C" fn() = init;

extern "C" fn init() {
    // SAFETY: runs once at load, before the program's main, single-threaded.
    unsafe { init_unsafe() }
}

/// A non-negative integer from the environment.
unsafe fn env_int(name: &str) -> Option<i32> {
    let mut key = [0u8; 64];
    key[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: key is NUL-terminated; getenv is fine in a constructor.
    let value = unsafe { libc::getenv(key.as_ptr().cast()) };
    if value.is_null() {
        return None;
    }
    // SAFETY: getenv returns a NUL-terminated string.
    let n = unsafe { libc::atoi(value) };
    (n >= 0).then_some(n)
}

unsafe fn init_unsafe() {
    // The environment, the socket and the library's memfd stay as they are:
    // a program the target execs (a shim exec'ing the real interpreter, a
    // subprocess) loads the stub too and registers; forkmon decides which
    // registrations to arm.
    // SAFETY: constructor context.
    let Some(socket) = (unsafe { env_int(ENV_SOCKET) }) else {
        return; // not started by forkmon: stay inert
    };
    // SAFETY: constructor context.
    FLUSH.store(unsafe { env_int(ENV_FLUSH) } == Some(1), Ordering::Relaxed);
    SOCKET.store(socket, Ordering::Relaxed);

    // SAFETY: constructor context.
    if !unsafe { signals::install(handler as *const () as usize) } {
        return;
    }
    // SAFETY: constructor context (dl_iterate_phdr takes the loader's
    // lock).
    unsafe {
        locks::find();
        if env_int(ENV_FORGET_LOCKS) == Some(1) {
            locks::forget();
        }
    }
    // SAFETY: fstat into a buffer we own.
    unsafe {
        let mut stat: libc::stat = zeroed();
        if libc::fstat(socket, &mut stat) != 0 {
            return;
        }
        SOCKET_INO.store(stat.st_ino, Ordering::Relaxed);
    }
    let message = StubMessage::Hello {
        // SAFETY: getpid has no preconditions.
        pid: unsafe { libc::getpid() },
        eventfd: -1,
    }
    .encode();
    // SAFETY: plain syscalls.
    unsafe {
        if register(message).is_some() {
            wait_command();
        }
    }
}

/// The inode of the registration socket, and the identity of this
/// process's eventfd: a program that closes every fd it did not open
/// (`closefrom`, daemons) takes them away, and its fd numbers may then
/// name other files.
static SOCKET_INO: AtomicU64 = AtomicU64::new(0);
static EVENTFD_ID: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// Whether this process still holds its channels to forkmon. If not, it
/// cannot be checkpointed, and forkmon (which checks the same) does not
/// wait for it: the handler lets the open return at once.
unsafe fn channels_intact() -> bool {
    // SAFETY: fstat and fcntl into buffers we own, on fd numbers that may
    // or may not be open.
    unsafe {
        let mut socket: libc::stat = zeroed();
        if libc::fstat(SOCKET.load(Ordering::Relaxed), &mut socket) != 0
            || socket.st_mode & libc::S_IFMT != libc::S_IFSOCK
            || socket.st_ino != SOCKET_INO.load(Ordering::Relaxed)
        {
            return false;
        }
        let eventfd = EVENTFD.load(Ordering::Relaxed);
        let mut event: libc::stat = zeroed();
        libc::fstat(eventfd, &mut event) == 0
            && libc::fcntl(eventfd, libc::F_GETFD) & libc::FD_CLOEXEC != 0
            && event.st_dev == EVENTFD_ID[0].load(Ordering::Relaxed)
            && event.st_ino == EVENTFD_ID[1].load(Ordering::Relaxed)
    }
}

/// Creates this process's eventfd and sends it with `message`; returns it.
unsafe fn register(mut message: Message) -> Option<i32> {
    // SAFETY: plain syscalls on fds we own.
    unsafe {
        let eventfd = libc::eventfd(0, libc::EFD_CLOEXEC);
        if eventfd < 0 {
            return None;
        }
        let old = EVENTFD.swap(eventfd, Ordering::Relaxed);
        if old >= 0 {
            // The parent checkpoint's channel, inherited by the fork.
            libc::close(old);
        }
        note_eventfd(eventfd);
        message.eventfd = eventfd;
        send(&message, Some(eventfd)).then_some(eventfd)
    }
}

/// Records what `eventfd` is, for [`channels_intact`]. (Every eventfd
/// shares one anonymous inode: this tells an eventfd from a file the
/// program opened at the same number.)
unsafe fn note_eventfd(eventfd: i32) {
    // SAFETY: fstat into a buffer we own.
    unsafe {
        let mut stat: libc::stat = zeroed();
        if libc::fstat(eventfd, &mut stat) == 0 {
            EVENTFD_ID[0].store(stat.st_dev, Ordering::Relaxed);
            EVENTFD_ID[1].store(stat.st_ino, Ordering::Relaxed);
        }
    }
}

/// Sends one message on the registration socket, with an fd if given.
unsafe fn send(message: &Message, fd: Option<i32>) -> bool {
    // Room for one SCM_RIGHTS fd, aligned for cmsghdr.
    let mut control = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: (message as *const Message).cast_mut().cast(),
        iov_len: size_of::<Message>(),
    };
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    unsafe {
        let mut msg: libc::msghdr = zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if let Some(fd) = fd {
            let space = libc::CMSG_SPACE(size_of::<i32>() as u32) as usize;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<i32>() as u32) as usize;
            ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), fd);
        }
        loop {
            let sent = libc::sendmsg(SOCKET.load(Ordering::Relaxed), &msg, libc::MSG_NOSIGNAL);
            if sent >= 0 {
                return true;
            }
            if *libc::__errno_location() != libc::EINTR {
                return false;
            }
        }
    }
}

/// Blocks until forkmon writes a command on this process's eventfd. If
/// forkmon is gone, there is no one to wait for: exit.
unsafe fn wait_command() -> u64 {
    // SAFETY: reads our own eventfd; _exit is async-signal-safe.
    unsafe { read_command().unwrap_or_else(|| libc::_exit(127)) }
}

/// The next command on this process's eventfd, blocking; `None` if the
/// eventfd cannot be read (forkmon is gone, or the program closed it).
unsafe fn read_command() -> Option<u64> {
    let mut value = 0u64;
    loop {
        // SAFETY: reading 8 bytes into a u64 from our eventfd.
        let got = unsafe {
            libc::read(
                EVENTFD.load(Ordering::Relaxed),
                (&mut value as *mut u64).cast(),
                8,
            )
        };
        if got == 8 {
            return Some(value);
        }
        // SAFETY: errno location is thread-local and always valid.
        if got < 0 && unsafe { *libc::__errno_location() } == libc::EINTR {
            continue;
        }
        return None;
    }
}

extern "C" fn handler(sig: i32, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes valid siginfo and ucontext pointers.
    unsafe {
        // Only the eBPF program's signal counts, never a kill() from
        // anyone: that one is the program's, if it handles the signal.
        if (*info).si_code != SI_KERNEL {
            signals::forward(sig, info, context);
            return;
        }
        let Some(fd) = opened_fd(context.cast()) else {
            return;
        };
        if !channels_intact() {
            // The program closed them: it runs on, observed only.
            return;
        }
        let saved_errno = *libc::__errno_location();
        let me = libc::getpid();
        // A lock the library this open is part of holds must pass to the
        // children (or forbid the checkpoint).
        let return_address =
            (*context.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_RIP as usize];
        let held = locks::may_fork(libc::gettid(), return_address as usize);
        // The fork is the slow part of a checkpoint: start it while forkmon
        // decides.
        let early = if held == locks::Held::Safe && worth_forking_early(fd) {
            fork_early(me)
        } else {
            Early::NotForked
        };
        let early = match early {
            Early::Child => {
                // Released by its parent, the checkpoint: the program goes
                // on here.
                *libc::__errno_location() = saved_errno;
                return;
            }
            Early::Parent(child) => Some(child),
            Early::NotForked => None,
        };
        let answer = answer_within(ANSWER_POLL_US);
        if answer & CMD_MASK == CMD_CHECKPOINT && held == locks::Held::Unsafe {
            // Its child would hang in the library: the program runs on
            // here, and forkmon says why.
            fail(me, fd, FAILED_LOCK_HELD, true);
        } else if answer & CMD_MASK == CMD_CHECKPOINT {
            let call = OpenCall {
                cache: answer & CHECKPOINT_CACHE != 0,
                context: context.cast(),
                ..open_call(context.cast(), checkpoint_syscall(answer))
            };
            let atfork = answer & CHECKPOINT_ATFORK != 0;
            checkpoint(me, fd, &call, early, atfork);
        } else if let Some(child) = early {
            child.discard();
        }
        *libc::__errno_location() = saved_errno;
    }
}

/// The fd the interrupted open returned: the syscall's return register.
unsafe fn opened_fd(context: *const libc::ucontext_t) -> Option<i32> {
    // SAFETY: context is the handler's ucontext.
    let ret = unsafe { (*context).uc_mcontext.gregs[libc::REG_RAX as usize] };
    i32::try_from(ret).ok().filter(|fd| *fd >= 0)
}

/// The interrupted open's arguments: a checkpoint's child re-opens the
/// file with them, as the program did (same directory fd, same cwd, same
/// path string, all as they were at the checkpoint, which never returns).
struct OpenCall {
    dirfd: i32,
    path: *const libc::c_char,
    flags: i32,
    mode: libc::mode_t,
    /// The file is a cache standing for its source (see
    /// `CHECKPOINT_CACHE`): children after the first see the open fail.
    cache: bool,
    /// The handler's context, where the open's result is returned.
    context: *mut libc::ucontext_t,
}

/// Reads `syscall`'s arguments (an `open_syscall` value) back from the
/// registers: a syscall leaves all but rax, rcx and r11 as they were.
unsafe fn open_call(context: *const libc::ucontext_t, syscall: u32) -> OpenCall {
    // SAFETY: context is the handler's ucontext.
    let registers = unsafe { &(*context).uc_mcontext.gregs };
    let argument = |register: i32| registers[register as usize] as u64;
    let (first, second, third) = (
        argument(libc::REG_RDI),
        argument(libc::REG_RSI),
        argument(libc::REG_RDX),
    );
    match syscall {
        open_syscall::OPEN => OpenCall {
            dirfd: libc::AT_FDCWD,
            path: first as *const libc::c_char,
            flags: second as i32,
            mode: third as libc::mode_t,
            cache: false,
            context: ptr::null_mut(),
        },
        open_syscall::OPENAT2 => {
            // SAFETY: the kernel just read this `struct open_how` (flags,
            // mode, resolve) for the open that succeeded.
            let how = unsafe { ptr::read_unaligned(third as *const [u64; 2]) };
            OpenCall {
                dirfd: first as i32,
                path: second as *const libc::c_char,
                flags: how[0] as i32,
                mode: how[1] as libc::mode_t,
                cache: false,
                context: ptr::null_mut(),
            }
        }
        _ => OpenCall {
            dirfd: first as i32,
            path: second as *const libc::c_char,
            flags: third as i32,
            mode: argument(libc::REG_R10) as libc::mode_t,
            cache: false,
            context: ptr::null_mut(),
        },
    }
}

/// Files this process forked early at, and those of the checkpoints it
/// descends from (a fork copies the list): forkmon checkpoints each file
/// once, so a second early fork for one would be thrown away.
struct Seen {
    len: AtomicUsize,
    files: [[AtomicU64; 2]; SEEN_MAX],
}

/// One page: a checkpoint's child that adds a file copies it once.
const SEEN_MAX: usize = 255;

static SEEN: Seen = Seen {
    len: AtomicUsize::new(0),
    files: [const { [AtomicU64::new(0), AtomicU64::new(0)] }; SEEN_MAX],
};

impl Seen {
    fn contains(&self, dev: u64, ino: u64) -> bool {
        let len = self.len.load(Ordering::Acquire).min(SEEN_MAX);
        self.files[..len]
            .iter()
            .any(|f| f[0].load(Ordering::Relaxed) == dev && f[1].load(Ordering::Relaxed) == ino)
    }

    /// Only single-threaded processes add (see `worth_forking_early`).
    /// When full, new files still fork early; repeated opens of them may
    /// fork for nothing.
    fn add(&self, dev: u64, ino: u64) {
        let len = self.len.load(Ordering::Relaxed);
        if len < SEEN_MAX {
            self.files[len][0].store(dev, Ordering::Relaxed);
            self.files[len][1].store(ino, Ordering::Relaxed);
            self.len.store(len + 1, Ordering::Release);
        }
    }
}

/// Whether forkmon is likely to make a checkpoint of this open, so a fork
/// before its verdict is likely kept: it checkpoints regular files, each
/// once, of single-threaded processes (forking one with more threads
/// keeps only this one).
unsafe fn worth_forking_early(fd: i32) -> bool {
    // SAFETY: fstat and stat into buffers we own.
    unsafe {
        let source = SOURCE_NEXT.swap(false, Ordering::Relaxed);
        let mut opened: libc::stat = zeroed();
        if libc::fstat(fd, &mut opened) != 0 || opened.st_mode & libc::S_IFMT != libc::S_IFREG {
            return false;
        }
        let (dev, ino) = (opened.st_dev, opened.st_ino);
        if SEEN.contains(dev, ino) {
            return false;
        }
        if !single_threaded() {
            return false;
        }
        SEEN.add(dev, ino);
        !source
    }
}

/// Whether this process has one thread: procfs gives a process's task
/// directory 2 links plus one per thread.
unsafe fn single_threaded() -> bool {
    // SAFETY: stat into a buffer we own.
    unsafe {
        let mut tasks: libc::stat = zeroed();
        libc::stat(c"/proc/self/task".as_ptr(), &mut tasks) == 0 && tasks.st_nlink == 3
    }
}

enum Early {
    NotForked,
    /// In the child, once its parent released it.
    Child,
    Parent(EarlyChild),
}

/// A child forked before forkmon's verdict, waiting to be released (the
/// verdict is a checkpoint) or killed (it is not).
struct EarlyChild {
    pid: i32,
    /// Its own command channel, created before the fork. It waits on it to
    /// be released; then its parent registers it, so the child runs without
    /// a round trip to forkmon.
    eventfd: i32,
}

/// What a parent writes to its early child's eventfd to release it. The
/// child reads it before forkmon can send it anything: forkmon learns of
/// the child only after the release.
const RELEASED: u64 = 1;

/// Forks a child that waits until its parent releases it: then it runs the
/// program, as a checkpoint's first child. Returns `Early::Child` only in
/// a released child; a child not released exits.
unsafe fn fork_early(me: i32) -> Early {
    // SAFETY: raw syscalls on fds we create; the child only makes raw
    // calls until it is released.
    unsafe {
        let eventfd = libc::eventfd(0, libc::EFD_CLOEXEC);
        if eventfd < 0 {
            return Early::NotForked;
        }
        if FLUSH.load(Ordering::Relaxed) {
            // See `checkpoint`: what is buffered now is written once.
            libc::fflush(ptr::null_mut());
        }
        match _Fork() {
            0 => {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != me {
                    libc::_exit(127);
                }
                locks::hand_to_child();
                let parents = EVENTFD.swap(eventfd, Ordering::Relaxed);
                libc::close(parents);
                note_eventfd(eventfd);
                if !wait_released() {
                    libc::_exit(0);
                }
                Early::Child
            }
            child if child > 0 => Early::Parent(EarlyChild {
                pid: child,
                eventfd,
            }),
            _ => {
                libc::close(eventfd);
                Early::NotForked
            }
        }
    }
}

/// In an early child: waits until its parent releases it, polling first,
/// as the parent does for the verdict. A parent that gives it up kills it
/// instead. False if the eventfd failed.
unsafe fn wait_released() -> bool {
    // SAFETY: reads our own eventfd (blocking if it is not readable yet).
    unsafe {
        poll_readable(EVENTFD.load(Ordering::Relaxed), ANSWER_POLL_US);
        wait_command() == RELEASED
    }
}

impl EarlyChild {
    /// Lets it run the program, and registers it with forkmon.
    unsafe fn release(self, checkpoint: i32, fd: i32) {
        let message = StubMessage::Child {
            pid: self.pid,
            checkpoint,
            fd,
            waits: false,
            eventfd: self.eventfd,
        }
        .encode();
        // SAFETY: raw syscalls on our own fds.
        unsafe {
            libc::write(self.eventfd, (&RELEASED as *const u64).cast(), 8);
            // The child is often queued on this CPU: let it return to the
            // program first. forkmon answers its opens once it has this.
            libc::sched_yield();
            send(&message, Some(self.eventfd));
            libc::close(self.eventfd);
        }
    }

    /// Not a checkpoint after all: kill it and reap it before the program
    /// goes on, so the program never sees it in a `wait()`, nor its
    /// SIGCHLD: blocked meanwhile, and taken back unless one was pending
    /// already. A child of the program's that ended meanwhile shares that
    /// one signal, so it is sent again then.
    unsafe fn discard(self) {
        // SAFETY: raw syscalls on our own child, fds and signal sets.
        unsafe {
            let mut sigchld: libc::sigset_t = zeroed();
            libc::sigemptyset(&mut sigchld);
            libc::sigaddset(&mut sigchld, libc::SIGCHLD);
            let mut mask: libc::sigset_t = zeroed();
            libc::sigprocmask(libc::SIG_BLOCK, &sigchld, &mut mask);
            let mut pending: libc::sigset_t = zeroed();
            libc::sigpending(&mut pending);
            let was_pending = libc::sigismember(&pending, libc::SIGCHLD) == 1;
            libc::kill(self.pid, libc::SIGKILL);
            let mut status = 0;
            while libc::waitpid(self.pid, &mut status, 0) < 0
                && *libc::__errno_location() == libc::EINTR
            {}
            libc::close(self.eventfd);
            if !was_pending {
                let now = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                libc::sigtimedwait(&sigchld, ptr::null_mut(), &now);
                let mut ended: libc::siginfo_t = zeroed();
                let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
                if libc::waitid(libc::P_ALL, 0, &mut ended, flags) == 0 && ended.si_pid() != 0 {
                    libc::kill(libc::getpid(), libc::SIGCHLD);
                }
            }
            libc::sigprocmask(libc::SIG_SETMASK, &mask, ptr::null_mut());
        }
    }
}

/// Becomes a checkpoint: releases the child forked early, or forks one,
/// which runs the program; then on each FORK command one more. The later
/// children register and wait until forkmon tells them to run (when the
/// file changes), so a resume costs no fork. Reaps its children and
/// reports how they ended. Returns only in a child told to run (or on
/// failure). `atfork`: forkmon saw other threads (see `fork_child`).
unsafe fn checkpoint(me: i32, fd: i32, call: &OpenCall, early: Option<EarlyChild>, atfork: bool) {
    // SAFETY: all calls below are raw syscalls on our own fds and buffers.
    unsafe {
        let mut children = Children::new();
        // What the next fork is for: None, the first child forked early.
        // The first child continues the program: the early one, or the
        // first forked here.
        let mut first = early.is_none();
        let mut next_standby = match early {
            Some(child) => {
                let pid = child.pid;
                child.release(me, fd);
                children.add(pid);
                None
            }
            None => Some(false),
        };
        // A checkpoint lives until forkmon kills it. Ctrl-C in the terminal
        // reaches the whole process group: let it stop the running program
        // and forkmon, not the checkpoints (forkmon then stops them). Nor
        // does the program's SIGCHLD handler run here at each child's exit
        // (pidfds tell the checkpoint): Python's would note a signal that
        // every later child inherits and handles at its resume, and write
        // to a wake-up fd the running child shares. A child gets the
        // program's own mask back when the handler returns, and no
        // pending signal of its checkpoint's.
        let mut blocked: libc::sigset_t = zeroed();
        libc::sigemptyset(&mut blocked);
        for signal in [
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGTSTP,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGCHLD,
        ] {
            libc::sigaddset(&mut blocked, signal);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &blocked, ptr::null_mut());
        if next_standby.is_some() && FLUSH.load(Ordering::Relaxed) {
            // Not async-signal-safe in general, but safe here: this thread
            // is stopped at the end of an open. glibc holds no stdio lock
            // across the open inside fopen (the new FILE is linked in
            // first, with no buffer yet), and freopen's lock on its FILE is
            // recursive for this thread (tested: the `unflushed` fixture's
            // fopen). Other threads, if any, are not stopped: a stdio lock
            // one of them holds is released, and waited for.
            libc::fflush(ptr::null_mut());
        }
        loop {
            if next_standby.is_some() && !children.has_room() {
                // Every slot holds a child not reaped yet: say so rather
                // than fork one nobody would reap or report.
                fail(me, fd, libc::EAGAIN, false);
            } else if let Some(standby) = next_standby {
                // Every child but the first runs after a change.
                let resumed = !core::mem::replace(&mut first, false);
                match fork_child(me, fd, call, standby, resumed, atfork) {
                    Forked::Child => return,
                    Forked::Parent(child) => children.add(child),
                    Forked::Failed(errno) => {
                        // Without any child, give up being a checkpoint:
                        // the program goes on here.
                        let give_up = children.is_empty();
                        fail(me, fd, errno, give_up);
                        if give_up {
                            return;
                        }
                    }
                }
            }
            match children.wait_for_fork_command(me) {
                Some(command) => next_standby = Some(command == CMD_FORK_STANDBY),
                None => libc::_exit(0),
            }
        }
    }
}

enum Forked {
    Child,
    Parent(i32),
    Failed(i32),
}

/// Forks the checkpoint's next child. A process with other threads
/// (`atfork`, forkmon saw them; and it still has them) is forked the way
/// Python's `os.fork()` forks, with glibc's `fork()`: see
/// [`fork_with_handlers`]. Otherwise — a single-threaded process, or a
/// checkpoint whose pools that first `fork()` stopped — with `_Fork()`,
/// which runs no handlers.
unsafe fn fork_child(
    checkpoint: i32,
    fd: i32,
    call: &OpenCall,
    standby: bool,
    resumed: bool,
    atfork: bool,
) -> Forked {
    // SAFETY: _Fork is async-signal-safe, and fork_with_handlers says why
    // fork is safe enough here; the child only makes raw calls.
    unsafe {
        let forked = if atfork && !single_threaded() {
            fork_with_handlers(checkpoint)
        } else {
            match _Fork() {
                0 => Forked::Child,
                child if child > 0 => Forked::Parent(child),
                _ => Forked::Failed(*libc::__errno_location()),
            }
        };
        if let Forked::Child = forked {
            locks::hand_to_child();
            become_child(checkpoint, fd, call, standby, resumed);
        }
        forked
    }
}

/// How long a parent forked with handlers waits for the threads they
/// stopped to leave: a thread `pthread_join` returned for is still in the
/// task list until it has finished exiting (microseconds, unless it is
/// preempted).
const THREADS_LEAVE_US: u64 = 10_000;

/// Forks with glibc's `fork()`, whose atfork handlers stop the thread
/// pools that registered one (OpenBLAS's `blas_thread_shutdown` joins its
/// workers; they restart on the next BLAS call), and lets the child run
/// only if this process is then down to this thread. The child has only
/// this thread: any other thread would be missing from it mid-work, and
/// even an idle one is waited for (a Python child hangs at its exit,
/// joining a thread it does not have). Else the child is killed before it
/// runs, and [`FAILED_THREADS_LEFT`] returned.
///
/// `fork()` is not async-signal-safe: besides the handlers it takes
/// malloc's arena locks and stdio's list lock. It is safe enough here:
/// this thread is stopped at the end of an open syscall, where glibc holds
/// none of those (fopen opens after linking its FILE in), and the other
/// threads are not stopped, so a lock one of them holds is released.
/// Only a handler of the program's own that takes a lock this thread holds
/// across the open would deadlock.
unsafe fn fork_with_handlers(me: i32) -> Forked {
    // SAFETY: raw syscalls on an fd we create; see above for fork().
    unsafe {
        // The child waits on it until this parent has counted its threads.
        let gate = libc::eventfd(0, libc::EFD_CLOEXEC);
        if gate < 0 {
            return Forked::Failed(*libc::__errno_location());
        }
        match libc::fork() {
            0 => {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != me {
                    libc::_exit(127);
                }
                poll_readable(gate, ANSWER_POLL_US);
                let mut value = 0u64;
                while libc::read(gate, (&mut value as *mut u64).cast(), 8) != 8 {
                    if *libc::__errno_location() != libc::EINTR {
                        libc::_exit(127);
                    }
                }
                libc::close(gate);
                Forked::Child
            }
            child if child > 0 => {
                let alone = alone_within(THREADS_LEAVE_US);
                if alone {
                    libc::write(gate, (&RELEASED as *const u64).cast(), 8);
                } else {
                    libc::kill(child, libc::SIGKILL);
                    let mut status = 0;
                    while libc::waitpid(child, &mut status, 0) < 0
                        && *libc::__errno_location() == libc::EINTR
                    {}
                }
                libc::close(gate);
                if alone {
                    Forked::Parent(child)
                } else {
                    Forked::Failed(FAILED_THREADS_LEFT)
                }
            }
            _ => {
                let errno = *libc::__errno_location();
                libc::close(gate);
                Forked::Failed(errno)
            }
        }
    }
}

/// Whether this process is down to one thread within `budget_us` µs.
unsafe fn alone_within(budget_us: u64) -> bool {
    let deadline = monotonic_ns().saturating_add(budget_us.saturating_mul(1000));
    loop {
        // SAFETY: a stat into a buffer of its own.
        if unsafe { single_threaded() } {
            return true;
        }
        if monotonic_ns() >= deadline {
            return false;
        }
        // SAFETY: no arguments.
        unsafe { libc::sched_yield() };
    }
}

/// Tells forkmon a fork failed, and whether this process gave up being a
/// checkpoint (it then runs on as the program).
unsafe fn fail(me: i32, fd: i32, errno: i32, gave_up: bool) {
    let message = StubMessage::Failed {
        pid: me,
        fd,
        errno,
        gave_up,
    }
    .encode();
    // SAFETY: a plain sendmsg.
    unsafe { send(&message, None) };
}

/// In a fresh child: die with the checkpoint, register, wait to be told to
/// run, then re-open the file so this run has its own offset and sees the
/// file as it is *now*.
unsafe fn become_child(checkpoint: i32, fd: i32, call: &OpenCall, standby: bool, resumed: bool) {
    // SAFETY: raw syscalls on our fds and buffers.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != checkpoint {
            libc::_exit(127);
        }
        let message = StubMessage::Child {
            pid: libc::getpid(),
            checkpoint,
            fd,
            waits: standby,
            eventfd: -1,
        }
        .encode();
        if standby {
            // Before registering: forkmon may wake a registered standby at
            // once (a resume that came while it was being forked).
            prefault::prefault_mappings();
            prefault::copy_stack_pages();
        }
        if register(message).is_none() {
            libc::_exit(127);
        }
        // Any other child goes on at once: the eBPF program armed it at the
        // fork, and forkmon answers its opens once it has its registration.
        if standby {
            wait_for_go();
        }
        if resumed && call.cache && !call.context.is_null() {
            // The cache is as it was at the checkpoint, and importlib has
            // validated it against the source as it was then: make the
            // program find no cache, so it reads the source that changed.
            libc::close(fd);
            (*call.context).uc_mcontext.gregs[libc::REG_RAX as usize] = -libc::ENOENT as i64;
            // A standby's next open is not even signalled (forkmon armed
            // it so); a child forked at the resume's command is.
            SOURCE_NEXT.store(!standby, Ordering::Relaxed);
            return;
        }
        // Marked, so the eBPF program does not signal this open. (An
        // `openat2` is re-opened as an `openat`: its resolve flags were
        // checked at the first open.)
        let flags = call.flags & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL);
        let fresh = libc::openat(
            call.dirfd,
            call.path,
            flags | libc::O_CLOEXEC | REOPEN_MARK as i32,
            call.mode,
        );
        if fresh >= 0 {
            let dup_flags = call.flags & libc::O_CLOEXEC;
            libc::dup3(fresh, fd, dup_flags);
            libc::close(fresh);
        } else {
            // The file is gone: read the old content from the start rather
            // than from where a previous child left the shared offset.
            libc::lseek(fd, 0, libc::SEEK_SET);
        }
    }
}

/// Waits until forkmon says "go". After a `CMD_SPIN` it polls rather than
/// sleeps, for the time the command gives.
unsafe fn wait_for_go() {
    // SAFETY (every read below): our own eventfd.
    let mut value = unsafe { wait_command() };
    loop {
        let budget = spin_budget_us(value);
        if budget > 0 && value & CMD_MASK != CMD_GO {
            value = unsafe { poll_command(budget) };
        }
        if value & CMD_MASK == CMD_GO {
            return;
        }
        value = unsafe { wait_command() };
    }
}

/// How long a process stopped at a candidate open polls for forkmon's
/// verdict before it sleeps: forkmon answers within ~0.2 ms, and waking
/// from a sleep on an idle CPU would add 50–100 µs to a checkpoint.
const ANSWER_POLL_US: u64 = 2000;

/// The verdict: polled for up to `budget_us` µs, then waited for. An
/// eventfd that cannot be read (the program closed it meanwhile) counts as
/// "no checkpoint": the program goes on.
unsafe fn answer_within(budget_us: u64) -> u64 {
    // SAFETY: reads our own eventfd (polled first: see ANSWER_POLL_US).
    unsafe {
        poll_readable(EVENTFD.load(Ordering::Relaxed), budget_us);
        read_command().unwrap_or(CMD_GO)
    }
}

/// Polls this process's eventfd for up to `budget_us` µs; returns the
/// command read, or 0 if none came.
unsafe fn poll_command(budget_us: u64) -> u64 {
    // SAFETY: our own eventfd; once readable, the read does not block.
    unsafe {
        if poll_readable(EVENTFD.load(Ordering::Relaxed), budget_us) {
            wait_command()
        } else {
            0
        }
    }
}

/// Polls `fd` without sleeping until it is readable (or hung up) or
/// `budget_us` µs have passed; returns whether it is. Yields between
/// polls: forkmon may share this CPU, and must run as soon as it wants to.
///
/// # Safety
/// `fd` is one of the stub's own.
unsafe fn poll_readable(fd: i32, budget_us: u64) -> bool {
    let deadline = monotonic_ns().saturating_add(budget_us.saturating_mul(1000));
    let mut ready = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: poll on one pollfd we own, without blocking.
        if unsafe { libc::poll(&mut ready, 1, 0) } == 1 {
            return true;
        }
        if monotonic_ns() >= deadline {
            return false;
        }
        // SAFETY: no arguments.
        unsafe { libc::sched_yield() };
    }
}

fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime into a timespec we own.
    unsafe {
        let mut now: libc::timespec = zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
        now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
    }
}

/// A checkpoint's live children, each with a pidfd to notice its end.
struct Children {
    pid: [i32; MAX_CHILDREN],
    pidfd: [i32; MAX_CHILDREN],
}

/// A running child, a waiting one, and ones being killed: a resume kills
/// one and wakes another, and the checkpoint reaps the killed ones as they
/// end. When every slot is taken a fork is refused, and reported.
const MAX_CHILDREN: usize = 16;

impl Children {
    fn new() -> Children {
        Children {
            pid: [0; MAX_CHILDREN],
            pidfd: [-1; MAX_CHILDREN],
        }
    }

    fn is_empty(&self) -> bool {
        self.pid.iter().all(|&p| p == 0)
    }

    fn has_room(&self) -> bool {
        self.pid.contains(&0)
    }

    /// Tracks `child`; the caller checked [`Self::has_room`].
    unsafe fn add(&mut self, child: i32) {
        if let Some(slot) = self.pid.iter().position(|&p| p == 0) {
            self.pid[slot] = child;
            // SAFETY: pidfd_open on our own child.
            self.pidfd[slot] = unsafe { libc::syscall(libc::SYS_pidfd_open, child, 0) } as i32;
        }
    }

    /// Reaps children as they end (telling forkmon how) until forkmon asks
    /// for a new child (the command) or is gone (None).
    unsafe fn wait_for_fork_command(&mut self, me: i32) -> Option<u64> {
        // SAFETY: raw syscalls on our fds.
        unsafe {
            let eventfd = EVENTFD.load(Ordering::Relaxed);
            loop {
                let mut fds = [libc::pollfd {
                    fd: -1,
                    events: libc::POLLIN,
                    revents: 0,
                }; MAX_CHILDREN + 1];
                fds[0].fd = eventfd;
                for (slot, pidfd) in self.pidfd.iter().enumerate() {
                    fds[slot + 1].fd = *pidfd;
                }
                if libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) < 0 {
                    if *libc::__errno_location() == libc::EINTR {
                        continue;
                    }
                    return None;
                }
                for slot in 0..MAX_CHILDREN {
                    if fds[slot + 1].revents != 0 {
                        self.reap(me, slot);
                    }
                }
                if fds[0].revents != 0 {
                    let command = wait_command();
                    if command == CMD_FORK || command == CMD_FORK_STANDBY {
                        return Some(command);
                    }
                }
            }
        }
    }

    unsafe fn reap(&mut self, me: i32, slot: usize) {
        let mut status = 0;
        // SAFETY: waiting for our own child; closing our own pidfd.
        unsafe {
            libc::waitpid(self.pid[slot], &mut status, 0);
            libc::close(self.pidfd[slot]);
        }
        let message = StubMessage::Exited {
            pid: self.pid[slot],
            checkpoint: me,
            status,
        }
        .encode();
        self.pid[slot] = 0;
        self.pidfd[slot] = -1;
        // SAFETY: a plain sendmsg.
        unsafe { send(&message, None) };
    }
}
