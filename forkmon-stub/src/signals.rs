//! forkmon's signal stays forkmon's, and the program keeps its say.
//!
//! The eBPF program signals the program at a candidate open with
//! [`SIGNAL`]; the stub's handler must be the one that runs. A program may
//! reset every handler (daemons, `for s in range(1, 65): signal(s,
//! SIG_DFL)`), install its own for that signal, or block it: the default
//! action of a real-time signal is to terminate, and a blocked one would
//! be delivered later, at no open at all. So the stub interposes the libc
//! calls that change a signal's disposition or the signal mask:
//! - `sigaction`, `signal`: for [`SIGNAL`], the program's action is kept
//!   aside (and reported back to it as its own); the kernel's signal still
//!   reaches the stub, and the same signal sent by anyone else
//!   (`kill`, `sigqueue`) is handed to the program's handler;
//! - `sigprocmask`, `pthread_sigmask`: [`SIGNAL`] is never blocked.
//!
//! Programs that make the raw syscalls (Go's runtime, static binaries) are
//! not covered; static binaries do not load the stub at all.
use core::{
    ffi::{CStr, c_int, c_void},
    mem::zeroed,
    ptr,
    sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering},
};

use forkmon_common::stub::SIGNAL;

const SIG: c_int = SIGNAL as c_int;

/// Set once forkmon's handler is installed: until then (and in a process
/// not started by forkmon) every call goes straight to libc.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// The program's own action for [`SIGNAL`]: its handler (`SIG_DFL` until
/// it sets one) and flags.
static PROGRAM_HANDLER: AtomicUsize = AtomicUsize::new(libc::SIG_DFL);
static PROGRAM_FLAGS: AtomicI32 = AtomicI32::new(0);

/// libc's own functions, found behind ours.
static REAL_SIGACTION: AtomicUsize = AtomicUsize::new(0);
static REAL_SIGNAL: AtomicUsize = AtomicUsize::new(0);
static REAL_SIGPROCMASK: AtomicUsize = AtomicUsize::new(0);
static REAL_PTHREAD_SIGMASK: AtomicUsize = AtomicUsize::new(0);

type SigactionFn =
    unsafe extern "C" fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int;
type SignalFn = unsafe extern "C" fn(c_int, libc::sighandler_t) -> libc::sighandler_t;
type MaskFn = unsafe extern "C" fn(c_int, *const libc::sigset_t, *mut libc::sigset_t) -> c_int;

/// The next definition of `name` after the stub's (libc's).
///
/// # Safety
/// Not async-signal-safe the first time (`dlsym`): [`resolve_all`] runs in
/// the constructor so that handlers never get there.
unsafe fn real(slot: &AtomicUsize, name: &CStr) -> usize {
    let known = slot.load(Ordering::Relaxed);
    if known != 0 {
        return known;
    }
    // SAFETY: dlsym with a NUL-terminated name.
    let found = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    slot.store(found, Ordering::Relaxed);
    found
}

/// Finds libc's functions before any handler could need one.
pub unsafe fn resolve_all() {
    // SAFETY: constructor context.
    unsafe {
        real(&REAL_SIGACTION, c"sigaction");
        real(&REAL_SIGNAL, c"signal");
        real(&REAL_SIGPROCMASK, c"sigprocmask");
        real(&REAL_PTHREAD_SIGMASK, c"pthread_sigmask");
    }
}

unsafe fn real_sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    // SAFETY: the pointer is libc's sigaction, whose signature this is.
    unsafe {
        let f: SigactionFn = core::mem::transmute(real(&REAL_SIGACTION, c"sigaction"));
        f(sig, act, old)
    }
}

/// Installs forkmon's handler for [`SIGNAL`] and makes sure the signal is
/// not blocked (a mask survives exec). From then on the program's changes
/// to either are kept aside.
pub unsafe fn install(handler: usize) -> bool {
    // SAFETY: a zeroed, then filled, sigaction; libc's own calls.
    unsafe {
        resolve_all();
        let mut action: libc::sigaction = zeroed();
        action.sa_sigaction = handler;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        let mut previous: libc::sigaction = zeroed();
        if real_sigaction(SIG, &action, &mut previous) != 0 {
            return false;
        }
        // Inherited across an exec from a program of the tree, which set
        // it through us: handed down as the program's.
        PROGRAM_HANDLER.store(libc::SIG_DFL, Ordering::Relaxed);
        let mut unblock: libc::sigset_t = zeroed();
        libc::sigemptyset(&mut unblock);
        libc::sigaddset(&mut unblock, SIG);
        let mask: MaskFn = core::mem::transmute(real(&REAL_SIGPROCMASK, c"sigprocmask"));
        mask(libc::SIG_UNBLOCK, &unblock, ptr::null_mut());
        ACTIVE.store(true, Ordering::Release);
        true
    }
}

fn active() -> bool {
    ACTIVE.load(Ordering::Acquire)
}

/// In forkmon's handler, for a [`SIGNAL`] the kernel did not send: hands
/// it to the program's own handler, if it set one.
pub unsafe fn forward(sig: c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    let handler = PROGRAM_HANDLER.load(Ordering::Relaxed);
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // Not the program's business either: forkmon's signal is ignored
        // rather than terminating the program.
        return;
    }
    // SAFETY: the program registered this function for this signal, with
    // these flags saying which signature it has.
    unsafe {
        if PROGRAM_FLAGS.load(Ordering::Relaxed) & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) =
                core::mem::transmute(handler);
            f(sig, info, context);
        } else {
            let f: extern "C" fn(c_int) = core::mem::transmute(handler);
            f(sig);
        }
    }
}

/// `sigaction(2)` as the program sees it.
///
/// # Safety
/// As libc's: `act` and `old` are null or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    if sig != SIG || !active() {
        // SAFETY: forwarded as given.
        return unsafe { real_sigaction(sig, act, old) };
    }
    // SAFETY: the caller's pointers, null or valid.
    unsafe {
        if !old.is_null() {
            let mut previous: libc::sigaction = zeroed();
            previous.sa_sigaction = PROGRAM_HANDLER.load(Ordering::Relaxed);
            previous.sa_flags = PROGRAM_FLAGS.load(Ordering::Relaxed);
            libc::sigemptyset(&mut previous.sa_mask);
            *old = previous;
        }
        if !act.is_null() {
            PROGRAM_FLAGS.store((*act).sa_flags, Ordering::Relaxed);
            PROGRAM_HANDLER.store((*act).sa_sigaction, Ordering::Relaxed);
        }
    }
    0
}

/// `signal(3)` as the program sees it (glibc's calls its own sigaction
/// directly, so it needs interposing too).
///
/// # Safety
/// As libc's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    if sig != SIG || !active() {
        // SAFETY: the pointer is libc's signal, whose signature this is.
        return unsafe {
            let f: SignalFn = core::mem::transmute(real(&REAL_SIGNAL, c"signal"));
            f(sig, handler)
        };
    }
    // glibc's signal() gives BSD semantics: SA_RESTART, no SA_SIGINFO.
    PROGRAM_FLAGS.store(libc::SA_RESTART, Ordering::Relaxed);
    PROGRAM_HANDLER.swap(handler, Ordering::Relaxed)
}

/// `set` without [`SIGNAL`] when it would block it, in `copy`.
unsafe fn never_blocking(
    how: c_int,
    set: *const libc::sigset_t,
    copy: &mut libc::sigset_t,
) -> *const libc::sigset_t {
    // SAFETY: `set` is null or valid, as the caller's contract says.
    unsafe {
        if !active()
            || set.is_null()
            || how == libc::SIG_UNBLOCK
            || libc::sigismember(set, SIG) != 1
        {
            return set;
        }
        *copy = *set;
        libc::sigdelset(copy, SIG);
        copy
    }
}

/// Calls libc's `name` (`slot` caches it) with `set` never blocking
/// [`SIGNAL`].
unsafe fn masking(
    slot: &AtomicUsize,
    name: &CStr,
    how: c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> c_int {
    // SAFETY: the pointer is libc's function of that name, whose signature
    // this is; the caller's pointers are passed on.
    unsafe {
        let mut copy: libc::sigset_t = zeroed();
        let set = never_blocking(how, set, &mut copy);
        let f: MaskFn = core::mem::transmute(real(slot, name));
        f(how, set, old)
    }
}

/// `sigprocmask(2)` as the program sees it.
///
/// # Safety
/// As libc's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigprocmask(
    how: c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> c_int {
    // SAFETY: the caller's contract is libc's.
    unsafe { masking(&REAL_SIGPROCMASK, c"sigprocmask", how, set, old) }
}

/// `pthread_sigmask(3)` as the program sees it.
///
/// # Safety
/// As libc's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_sigmask(
    how: c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> c_int {
    // SAFETY: the caller's contract is libc's.
    unsafe { masking(&REAL_PTHREAD_SIGMASK, c"pthread_sigmask", how, set, old) }
}
