//! Maps shared by all of forkmon's programs.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use forkmon_common::{MAX_PENDING, MAX_TRACKED, PrefilterConfig, RING_BYTES};

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

/// Arguments of opens in flight, by thread id, from syscall entry to exit.
#[map]
pub static PENDING: HashMap<u32, PendingOpen> = HashMap::with_max_entries(MAX_PENDING, 0);

/// Records for user space: `OpenRecord`s and `ProcessRecord`s.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Loss counters, indexed by `forkmon_common::stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(forkmon_common::stat::COUNT, 0);

/// What `sys_enter_*` saw, kept for `sys_exit_*`. The path is read at exit,
/// not entry: by then the kernel has copied it (`getname`), so its page is
/// resident and the read cannot fault.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingOpen {
    pub path: u64,
    pub flags: u64,
    pub mode: u64,
    /// `struct open_how *` for openat2, whose flags and mode live there.
    pub how: u64,
    pub dirfd: i32,
    pub syscall: u32,
}

pub fn is_tracked(tgid: u32) -> bool {
    // SAFETY: the value is a plain u8 and only tested for presence.
    unsafe { TRACKED.get(tgid) }.is_some()
}

pub fn is_armed(tgid: u32) -> bool {
    // SAFETY: the value is a plain u8 and only tested for presence.
    unsafe { ARMED.get(tgid) }.is_some()
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
