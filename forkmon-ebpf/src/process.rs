//! Follow the traced process tree: new processes of a traced parent become
//! traced, exited ones are forgotten, and user space hears of each.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use aya_log_ebpf::debug;
use forkmon_common::{ProcessRecord, armed, record_kind, stat};

use crate::maps::{
    ARMED, EVENTS, NO_WAKE_UP, TRACKED, WAKE_UP, count, global, is_tracked, reads_only,
};

// Field offsets, set by user space from tracefs format files before load.
#[unsafe(no_mangle)]
static NEWTASK_PID_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static NEWTASK_CLONE_FLAGS_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static EXIT_GROUP_DEAD_OFFSET: u32 = 0;

const CLONE_THREAD: u64 = 0x0001_0000;

/// `task_newtask` rather than `sched_process_fork`: it carries `clone_flags`,
/// so new threads (which share their process's tgid, already tracked) are
/// told apart from new processes. It runs in the parent before the child can
/// run, so the child's first open is never missed.
#[tracepoint(category = "task", name = "task_newtask")]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    let _ = try_newtask(&ctx);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if is_tracked(tgid) {
        // exec resets signal handlers: the stub is gone. No record: neither
        // reader acts on an exec (pid and cwd stay), and a new image that
        // loads the stub registers again.
        let _ = ARMED.remove(tgid);
    }
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

fn try_newtask(ctx: &TracePointContext) -> Result<(), i64> {
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !is_tracked(parent) {
        return Ok(());
    }
    // SAFETY: offsets come from this kernel's format file for the event.
    let clone_flags: u64 =
        unsafe { ctx.read_at(global(&NEWTASK_CLONE_FLAGS_OFFSET) as usize) }.map_err(i64::from)?;
    if clone_flags & CLONE_THREAD != 0 {
        return Ok(());
    }
    // SAFETY: as above.
    let child: u32 =
        unsafe { ctx.read_at(global(&NEWTASK_PID_OFFSET) as usize) }.map_err(i64::from)?;
    TRACKED
        .insert(child, 1, 0)
        .inspect_err(|_| count(stat::TRACKED_FULL))?;
    // SAFETY: a plain u8, copied out.
    if unsafe { ARMED.get(parent) }.copied() == Some(armed::ARM_NEXT_CHILD) {
        // A checkpoint's child that goes on without waiting for forkmon:
        // armed before it runs, so none of its opens is missed.
        let _ = ARMED.insert(child, armed::ARMED, 0);
        let _ = ARMED.insert(parent, armed::ARMED, 0);
    }
    debug!(ctx, "following new process {} of {}", child, parent);
    emit(record_kind::FORK, child, parent);
    Ok(())
}

fn try_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_tracked(tgid) {
        return Ok(());
    }
    // SAFETY: offset from this kernel's format file for the event.
    let group_dead: u8 =
        unsafe { ctx.read_at(global(&EXIT_GROUP_DEAD_OFFSET) as usize) }.map_err(i64::from)?;
    if group_dead != 0 {
        let _ = TRACKED.remove(tgid);
        let _ = ARMED.remove(tgid);
        emit(record_kind::EXIT, tgid, 0);
    }
    Ok(())
}

pub fn emit(kind: u32, pid: u32, ppid: u32) {
    // `forkmon run` needs forks and cwd changes only to resolve the opens
    // that follow them in the ring, which wake it: waking it now would put
    // it on the CPU a checkpoint's fresh child is about to run on.
    let lazy = (kind == record_kind::FORK || kind == record_kind::CHDIR) && reads_only();
    let flags = if lazy { NO_WAKE_UP } else { WAKE_UP };
    let record = ProcessRecord {
        kind,
        pid,
        ppid,
        _pad: 0,
        ts_ns: now_ns(),
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    if EVENTS.output::<ProcessRecord>(&record, flags).is_err() {
        count(stat::RING_FULL);
    }
}

fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}
