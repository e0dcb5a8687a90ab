//! Maps shared by all of forkmon's programs.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use forkmon_common::{MAX_TRACKED, PATH_MAX, PrefilterConfig, RING_BYTES};

/// Processes (tgids) whose opens are reported. User space inserts the
/// target; `task_newtask` adds its children, `sched_process_exit` removes
/// them.
#[map]
pub static TRACKED: HashMap<u32, u8> = HashMap::with_max_entries(MAX_TRACKED, 0);

/// Processes whose stub has registered with forkmon: only these may be
/// signalled (a process without the handler would die of the signal).
/// Cleared on exec, which resets signal handlers.
#[map]
pub static ARMED: HashMap<u32, u8> = HashMap::with_max_entries(MAX_TRACKED, 0);

/// Which opens of armed processes are signalled; one entry, set by user
/// space before any process is armed.
#[map]
pub static PREFILTER: Array<PrefilterConfig> = Array::with_max_entries(1, 0);

/// Where an open's path is read for the prefilter, before any record is
/// reserved (most opens need none under `reads_only`): one per CPU.
#[map]
pub static SCRATCH_PATH: PerCpuArray<[u8; PATH_MAX]> = PerCpuArray::with_max_entries(1, 0);

/// Records for user space: `OpenRecord`s and `ProcessRecord`s.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Loss counters, indexed by `forkmon_common::stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(forkmon_common::stat::COUNT, 0);

/// Submit flag for the records user space must see at once (a stub waits
/// for its verdict, a process exited; forks and cwd changes only under
/// `forkmon trace`, see `process::emit`): a wake-up whatever the reader's
/// position, rather than the default guess that a reader behind is awake
/// already.
pub const WAKE_UP: u64 = aya_ebpf::bindings::BPF_RB_FORCE_WAKEUP as u64;

/// Submit flag for records user space can read at its next wake-up.
pub const NO_WAKE_UP: u64 = aya_ebpf::bindings::BPF_RB_NO_WAKEUP as u64;

pub fn is_tracked(tgid: u32) -> bool {
    // SAFETY: the value is a plain u8 and only tested for presence.
    unsafe { TRACKED.get(tgid) }.is_some()
}

/// The process's `ARMED` value (see `forkmon_common::armed`), if any.
pub fn armed(tgid: u32) -> Option<u8> {
    // SAFETY: the value is a plain u8, copied out.
    unsafe { ARMED.get(tgid) }.copied()
}

/// Whether user space reads only the read-only opens that may match
/// (`forkmon run`), or every open (`forkmon trace`).
pub fn reads_only() -> bool {
    PREFILTER
        .get(0)
        .is_some_and(|config| config.reads_only != 0)
}

pub fn count(stat: u32) {
    if let Some(counter) = STATS.get_ptr_mut(stat) {
        // SAFETY: per-CPU slot; programs do not migrate while running.
        unsafe { *counter += 1 };
    }
}

/// Reads a global that user space sets before load. `read_volatile` keeps
/// the compiler from folding in the placeholder value.
#[inline(always)]
pub fn global(value: &'static u32) -> u32 {
    // SAFETY: a valid, aligned static.
    unsafe { core::ptr::read_volatile(value) }
}
