//! `open`, `openat` and `openat2`: one `OpenRecord` per call, emitted at
//! syscall exit.
//!
//! Only the raw `sys_exit` tracepoint is attached, as a BTF tracepoint. Any
//! syscall tracepoint sends every syscall of every process through the
//! kernel's slow path, and the per-syscall `syscalls:sys_*_openat` events
//! also build a perf record before calling the program; a raw tracepoint
//! calls it directly. One tracepoint instead of an enter/exit pair halves
//! the calls again: at exit the caller's saved registers still hold the
//! syscall's number and arguments, so nothing needs stashing at entry. And
//! BTF lets the program load those registers directly instead of through a
//! helper. Per openat+close of a process forkmon does not trace (`cargo
//! xtask bench --quick --only 1`, 2-core VM): 0.43 µs with the
//! `syscalls:` pairs, 0.30 µs with raw `sys_exit`, 0.22 µs as BTF.
use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use forkmon_common::{
    OpenRecord, PATH_MAX, armed, open_flags, open_syscall, path_state, record_kind, stat, stub,
};

use crate::{
    maps::{ARMED, EVENTS, PREFILTER, SCRATCH_PATH, WAKE_UP, armed, count, is_tracked, reads_only},
    process,
};

const AT_FDCWD: i32 = -100;

/// x86_64 syscall numbers.
const NR_OPEN: u64 = 2;
const NR_OPENAT: u64 = 257;
const NR_OPENAT2: u64 = 437;
const NR_CHDIR: u64 = 80;
const NR_FCHDIR: u64 = 81;
const NR_STAT: u64 = 4;
const NR_LSTAT: u64 = 6;
const NR_NEWFSTATAT: u64 = 262;
const NR_STATX: u64 = 332;
/// `fstat(fd)` is `newfstatat(fd, "", …, AT_EMPTY_PATH)`: no path to see.
const AT_EMPTY_PATH: u64 = 0x1000;
/// `__USER_CS`: the code segment of a 64-bit caller. 32-bit callers number
/// their syscalls differently and are not followed.
const USER64_CS: u64 = 0x33;

/// `sys_exit(struct pt_regs *regs, long ret)`
#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit(ctx: BtfTracePointContext) -> i32 {
    let _ = try_exit(&ctx);
    0
}

/// What the caller asked for, read back from its saved registers (the
/// x86_64 syscall ABI passes arguments in rdi, rsi, rdx, r10).
struct OpenCall {
    syscall: u32,
    dirfd: i32,
    path: u64,
    flags: u64,
    mode: u64,
}

fn try_exit(ctx: &BtfTracePointContext) -> Result<(), i64> {
    // SAFETY: the tracepoint's first argument points at the caller's saved
    // registers, typed by the kernel's BTF: the verifier checks each load.
    let regs: &pt_regs = unsafe { &*ctx.arg::<*const pt_regs>(0) };
    // Every syscall of every process passes here: test the number first.
    let nr = regs.orig_rax;
    let is_stat = nr == NR_STAT || nr == NR_LSTAT || nr == NR_NEWFSTATAT || nr == NR_STATX;
    if nr != NR_OPEN && nr != NR_OPENAT && nr != NR_OPENAT2 && !is_stat {
        if nr == NR_CHDIR || nr == NR_FCHDIR {
            // User space resolves relative paths against the cwd it knows,
            // and reads it again only after this.
            let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
            if ctx.arg::<i64>(1) == 0 && is_tracked(tgid) && regs.cs == USER64_CS {
                process::emit(record_kind::CHDIR, tgid, 0);
            }
        }
        return Ok(());
    }
    // Stats are far more frequent than opens, machine-wide: the array
    // lookup first, which `forkmon trace` (opens only) stops at, then the
    // hash lookup of the tree.
    if is_stat && !reads_only() {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_tracked(tgid) || regs.cs != USER64_CS {
        return Ok(());
    }
    let call = match nr {
        NR_STAT | NR_LSTAT => OpenCall {
            syscall: open_syscall::STAT,
            dirfd: AT_FDCWD,
            path: regs.rdi,
            flags: 0,
            mode: 0,
        },
        NR_NEWFSTATAT | NR_STATX => {
            // The flags: r10 for newfstatat, rdx for statx.
            let flags = if nr == NR_STATX { regs.rdx } else { regs.r10 };
            if flags & AT_EMPTY_PATH != 0 {
                return Ok(());
            }
            OpenCall {
                syscall: open_syscall::STAT,
                dirfd: regs.rdi as i32,
                path: regs.rsi,
                flags: 0,
                mode: 0,
            }
        }
        NR_OPEN => OpenCall {
            syscall: open_syscall::OPEN,
            dirfd: AT_FDCWD,
            path: regs.rdi,
            flags: regs.rsi,
            mode: regs.rdx,
        },
        NR_OPENAT => OpenCall {
            syscall: open_syscall::OPENAT,
            dirfd: regs.rdi as i32,
            path: regs.rsi,
            flags: regs.rdx,
            mode: regs.r10,
        },
        _ => {
            // SAFETY: a user pointer (`struct open_how *`) read with the
            // fault-tolerant helper.
            let how = unsafe { aya_ebpf::helpers::bpf_probe_read_user(regs.rdx as *const OpenHow) };
            let how = how.unwrap_or(OpenHow { flags: 0, mode: 0 });
            OpenCall {
                syscall: open_syscall::OPENAT2,
                dirfd: regs.rdi as i32,
                path: regs.rsi,
                flags: how.flags,
                mode: how.mode,
            }
        }
    };
    let ret: i64 = ctx.arg(1);
    emit(pid_tgid, &call, ret);
    Ok(())
}

/// The first two fields of `struct open_how`.
#[repr(C)]
#[derive(Clone, Copy)]
struct OpenHow {
    flags: u64,
    mode: u64,
}

fn emit(pid_tgid: u64, call: &OpenCall, ret: i64) {
    let tgid = (pid_tgid >> 32) as u32;
    // Only a read-only open may be watched, and become a checkpoint if its
    // process is armed; a writing one tells `forkmon run` a file is the
    // tree's output, never to be watched. The cheap tests come first.
    let opened = ret >= 0 && call.flags & stub::REOPEN_MARK == 0;
    let report_all = !reads_only();
    if !opened && !report_all {
        return; // `forkmon run` reads only the files opened
    }
    // The path goes to a per-CPU scratch buffer first: the others then cost
    // no ring buffer record.
    let Some(scratch) = SCRATCH_PATH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU map value of PATH_MAX bytes; programs do not
    // migrate while running.
    let (path, (len, state)) =
        unsafe { (&mut *scratch, read_path(call.path, (*scratch).as_mut_ptr())) };
    // The prefilter, shared with user space's tests (forkmon-common): opens
    // that cannot match cost no signal and no round trip.
    let may_match = opened
        && state == 0
        && PREFILTER
            .get(0)
            .is_some_and(|config| config.may_match(path, len));
    if !may_match && !report_all {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<OpenRecord>(0) else {
        count(stat::RING_FULL);
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at a reserved, writable OpenRecord; every field
    // but the tail of `path` is written before submit, and user space reads
    // only `path_len` bytes of `path`.
    let signalled = unsafe {
        (*record).kind = record_kind::OPEN;
        (*record).syscall = call.syscall;
        (*record).ts_ns = bpf_ktime_get_ns();
        (*record).tgid = tgid;
        (*record).tid = pid_tgid as u32;
        (*record).ret = ret;
        (*record).flags = call.flags;
        (*record).mode = call.mode;
        (*record).dirfd = call.dirfd;
        (*record).signalled = 0;
        (*record).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*record).path = *path;
        (*record).path_len = len;
        (*record).path_state = state;
        // Only a submitted record tells forkmon a stub is waiting, so the
        // signal is sent only once the record is certain to arrive.
        let candidate = may_match
            && call.syscall != open_syscall::STAT
            && is_checkpointable(call.flags)
            && !PREFILTER.get(0).is_some_and(|config| config.excludes(path));
        match armed(tgid) {
            Some(armed::SKIP_NEXT_OPEN) if candidate => {
                let _ = ARMED.insert(tgid, armed::ARMED, 0);
                false
            }
            Some(_) if candidate => generated::bpf_send_signal_thread(stub::SIGNAL) == 0,
            _ => false,
        }
    };
    if signalled {
        // SAFETY: as above.
        unsafe { (*record).signalled = 1 };
        // The stub may fork at once, before forkmon's verdict: that child
        // is armed at the fork. forkmon takes this back if the verdict is
        // no.
        let _ = ARMED.insert(tgid, armed::ARM_NEXT_CHILD, 0);
        entry.submit(WAKE_UP);
    } else {
        entry.submit(0);
    }
}

/// Only read-only opens of files may become checkpoints: re-opening a file
/// the program writes would corrupt it.
fn is_checkpointable(flags: u64) -> bool {
    // Not the stub's own re-open in a resumed child.
    flags & stub::REOPEN_MARK == 0 && open_flags::reads_a_file(flags)
}

/// Copies the NUL-terminated user string at `src` into the PATH_MAX bytes at
/// `dst`; returns its length without the NUL and its `path_state`.
///
/// # Safety
/// `dst` must be valid for PATH_MAX bytes of writes.
unsafe fn read_path(src: u64, dst: *mut u8) -> (u32, u32) {
    // SAFETY: the helper writes at most PATH_MAX bytes and tolerates faults.
    let copied =
        unsafe { generated::bpf_probe_read_user_str(dst.cast(), PATH_MAX as u32, src as *const _) };
    if copied <= 0 {
        return (0, path_state::UNREADABLE);
    }
    let len = (copied as u32 - 1) & (PATH_MAX as u32 - 1);
    if copied as usize == PATH_MAX {
        // The buffer filled up: the path is exactly PATH_MAX - 1 bytes only
        // if the byte after them is its NUL.
        // SAFETY: a user pointer read with the fault-tolerant helper.
        let next = unsafe {
            aya_ebpf::helpers::bpf_probe_read_user((src + PATH_MAX as u64 - 1) as *const u8)
        };
        if next != Ok(0) {
            return (len, path_state::TRUNCATED);
        }
    }
    (len, 0)
}
