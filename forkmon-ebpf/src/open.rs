//! `open`, `openat` and `openat2`: stash the arguments at entry, emit one
//! `OpenRecord` at exit.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated},
    macros::tracepoint,
    programs::TracePointContext,
};
use forkmon_common::{OpenRecord, PATH_MAX, open_syscall, path_state, record_kind, stat, stub};

use crate::{
    maps::{EVENTS, PENDING, PendingOpen, count, is_armed, is_tracked},
    prefilter,
};

const AT_FDCWD: i32 = -100;
/// Syscall tracepoints lay out their arguments as `u64`s from this offset
/// (`struct syscall_trace_enter`), for every syscall on every kernel.
const SYSCALL_ARGS_OFFSET: usize = 16;
/// `struct syscall_trace_exit`: the return value.
const SYSCALL_RET_OFFSET: usize = 16;

#[tracepoint(category = "syscalls", name = "sys_enter_open")]
pub fn sys_enter_open(ctx: TracePointContext) -> u32 {
    let _ = try_enter(&ctx, open_syscall::OPEN);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat")]
pub fn sys_enter_openat(ctx: TracePointContext) -> u32 {
    let _ = try_enter(&ctx, open_syscall::OPENAT);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat2")]
pub fn sys_enter_openat2(ctx: TracePointContext) -> u32 {
    let _ = try_enter(&ctx, open_syscall::OPENAT2);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_open")]
pub fn sys_exit_open(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn sys_exit_openat(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat2")]
pub fn sys_exit_openat2(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

fn arg(ctx: &TracePointContext, index: usize) -> Result<u64, i64> {
    // SAFETY: syscall tracepoints carry six u64 arguments at this offset.
    unsafe { ctx.read_at::<u64>(SYSCALL_ARGS_OFFSET + 8 * index) }.map_err(i64::from)
}

fn try_enter(ctx: &TracePointContext, syscall: u32) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_tracked((pid_tgid >> 32) as u32) {
        return Ok(());
    }
    let pending = match syscall {
        open_syscall::OPEN => PendingOpen {
            path: arg(ctx, 0)?,
            flags: arg(ctx, 1)?,
            mode: arg(ctx, 2)?,
            how: 0,
            dirfd: AT_FDCWD,
            syscall,
        },
        open_syscall::OPENAT => PendingOpen {
            dirfd: arg(ctx, 0)? as i32,
            path: arg(ctx, 1)?,
            flags: arg(ctx, 2)?,
            mode: arg(ctx, 3)?,
            how: 0,
            syscall,
        },
        _ => PendingOpen {
            dirfd: arg(ctx, 0)? as i32,
            path: arg(ctx, 1)?,
            how: arg(ctx, 2)?,
            flags: 0,
            mode: 0,
            syscall,
        },
    };
    let tid = pid_tgid as u32;
    PENDING
        .insert(tid, pending, 0)
        .inspect_err(|_| count(stat::PENDING_FULL))?;
    Ok(())
}

/// The first two fields of `struct open_how`.
#[repr(C)]
#[derive(Clone, Copy)]
struct OpenHow {
    flags: u64,
    mode: u64,
}

fn try_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: PendingOpen is plain data; it is copied out before removal.
    let Some(pending) = (unsafe { PENDING.get(tid) }).copied() else {
        return Ok(());
    };
    let _ = PENDING.remove(tid);
    // SAFETY: syscall exit tracepoints carry the return value here.
    let ret: i64 = unsafe { ctx.read_at(SYSCALL_RET_OFFSET) }.map_err(i64::from)?;

    let (flags, mode) = if pending.syscall == open_syscall::OPENAT2 {
        // SAFETY: a user pointer read with the fault-tolerant helper.
        match unsafe { aya_ebpf::helpers::bpf_probe_read_user(pending.how as *const OpenHow) } {
            Ok(how) => (how.flags, how.mode),
            Err(_) => (0, 0),
        }
    } else {
        (pending.flags, pending.mode)
    };

    let Some(mut entry) = EVENTS.reserve::<OpenRecord>(0) else {
        count(stat::RING_FULL);
        return Ok(());
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at a reserved, writable OpenRecord; every field
    // but the tail of `path` is written before submit, and user space reads
    // only `path_len` bytes of `path`.
    unsafe {
        (*record).kind = record_kind::OPEN;
        (*record).syscall = pending.syscall;
        (*record).ts_ns = bpf_ktime_get_ns();
        (*record).tgid = (pid_tgid >> 32) as u32;
        (*record).tid = tid;
        (*record).ret = ret;
        (*record).flags = flags;
        (*record).mode = mode;
        (*record).dirfd = pending.dirfd;
        (*record).signalled = 0;
        (*record).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        let (len, state) = read_path(pending.path, (*record).path.as_mut_ptr());
        (*record).path_len = len;
        (*record).path_state = state;
        // Only a submitted record tells forkmon a stub is waiting, so the
        // signal is sent only once the record is certain to arrive.
        if ret >= 0
            && state == 0
            && is_checkpointable(flags)
            && is_armed((pid_tgid >> 32) as u32)
            && prefilter::may_match(&(*record).path, len)
            && generated::bpf_send_signal_thread(stub::SIGNAL) == 0
        {
            (*record).signalled = 1;
        }
    }
    entry.submit(0);
    Ok(())
}

/// Only read-only opens of files may become checkpoints: re-opening a file
/// the program writes would corrupt it.
fn is_checkpointable(flags: u64) -> bool {
    if flags & stub::REOPEN_MARK != 0 {
        return false; // the stub's own re-open in a resumed child
    }
    const O_ACCMODE: u64 = 0o3;
    const O_CREAT: u64 = 0o100;
    const O_TRUNC: u64 = 0o1000;
    const O_DIRECTORY: u64 = 0o200000;
    const O_PATH: u64 = 0o10000000;
    flags & O_ACCMODE == 0 && flags & (O_CREAT | O_TRUNC | O_DIRECTORY | O_PATH) == 0
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
