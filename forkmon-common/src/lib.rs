//! Types shared by forkmon's eBPF programs and its user space.
//!
//! Everything here crosses the kernel/user boundary through a ring buffer or a
//! map, so every type is `#[repr(C)]` with explicit padding and no pointers.
#![no_std]

/// Longest path the kernel accepts, NUL included (`PATH_MAX` in linux/limits.h).
pub const PATH_MAX: usize = 4096;
/// Length of a task's `comm`, NUL included (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Size of the ring buffer that carries records to user space. Open records
/// are ~4 KiB each (the path is sent whole), so this holds ~4000 of them
/// before the kernel side starts counting drops.
pub const RING_BYTES: u32 = 16 * 1024 * 1024;
/// Most processes a traced tree may hold at once.
pub const MAX_TRACKED: u32 = 32 * 1024;

/// First field of every ring-buffer record: which record follows.
pub mod record_kind {
    pub const OPEN: u32 = 1;
    pub const FORK: u32 = 2;
    pub const EXIT: u32 = 4;
    /// The process changed its working directory (`chdir`, `fchdir`).
    pub const CHDIR: u32 = 5;
}

/// Which syscall an [`OpenRecord`] comes from.
pub mod open_syscall {
    pub const OPEN: u32 = 0;
    pub const OPENAT: u32 = 1;
    pub const OPENAT2: u32 = 2;
    /// Not an open: `stat`, `lstat`, `newfstatat` or `statx` of a path, in
    /// `forkmon run` only (`PrefilterConfig::reads_only`). A build tool
    /// stats the sources it finds up to date without opening them, and
    /// they are its inputs all the same. Never signalled; `ret` is 0.
    pub const STAT: u32 = 3;
}

/// What an open's flags say it does with the file: the kernel signals only
/// opens that read a file, and `forkmon run` takes those that write one
/// for the tree's output, never watched.
pub mod open_flags {
    const O_ACCMODE: u64 = 0o3;
    const O_CREAT: u64 = 0o100;
    const O_TRUNC: u64 = 0o1000;
    const O_DIRECTORY: u64 = 0o200000;
    const O_PATH: u64 = 0o10000000;

    /// It may change the file: write access, or created or truncated.
    pub fn writes(flags: u64) -> bool {
        flags & O_ACCMODE != 0 || flags & (O_CREAT | O_TRUNC) != 0
    }

    /// It reads a file and nothing more (not a directory, not a mere
    /// handle).
    pub fn reads_a_file(flags: u64) -> bool {
        !writes(flags) && flags & (O_DIRECTORY | O_PATH) == 0
    }
}

/// Bits of [`OpenRecord::path_state`].
pub mod path_state {
    /// The path did not fit in `PATH_MAX` bytes; what arrived is a prefix.
    pub const TRUNCATED: u32 = 1;
    /// The path could not be read from the process's memory at all.
    pub const UNREADABLE: u32 = 2;
}

/// Values of the `ARMED` map.
pub mod armed {
    /// The process's stub has registered: it may be signalled.
    pub const ARMED: u8 = 1;
    /// Armed, and so is the next process it forks (a checkpoint's child that
    /// runs at once, armed before it can open anything); then `ARMED`. Set
    /// by the eBPF program when it signals an open (the stub may fork
    /// before forkmon's verdict), by forkmon before `CMD_FORK`; forkmon
    /// sets `ARMED` back when its verdict is no.
    pub const ARM_NEXT_CHILD: u8 = 2;
    /// Armed, but its next open that would be signalled is reported as a
    /// read only; then `ARMED`. Set by forkmon for a standby of a bytecode
    /// cache's checkpoint: the stub makes its open of the cache fail, so
    /// the program opens the source next, which has its checkpoint (the
    /// cache's) already. No verdict to wait for.
    pub const SKIP_NEXT_OPEN: u8 = 3;
}

/// Indexes into the per-CPU `STATS` array of counters.
pub mod stat {
    /// A record was lost because the ring buffer was full.
    pub const RING_FULL: u32 = 0;
    /// A new process could not be followed because the tracked map was full.
    pub const TRACKED_FULL: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// Names of the eBPF globals user space sets before load: byte offsets of
/// tracepoint fields, read from tracefs `format` files because they differ
/// between kernels (6.18's `sched_process_fork` switched to `__data_loc`
/// comms and moved every field after them).
pub mod global {
    /// `task/task_newtask`: `pid` of the new task.
    pub const NEWTASK_PID_OFFSET: &str = "NEWTASK_PID_OFFSET";
    /// `task/task_newtask`: `clone_flags` (to tell threads from processes).
    pub const NEWTASK_CLONE_FLAGS_OFFSET: &str = "NEWTASK_CLONE_FLAGS_OFFSET";
    /// `sched/sched_process_exit`: `group_dead` (the last thread exited).
    pub const EXIT_GROUP_DEAD_OFFSET: &str = "EXIT_GROUP_DEAD_OFFSET";
}

/// How forkmon and its `LD_PRELOAD` stub talk.
pub mod stub;

mod prefilter;
pub use prefilter::{
    PREFILTER_EXCLUDED_LEN, PREFILTER_MAX_EXCLUDED, PREFILTER_MAX_PREFIXES, PREFILTER_MAX_SUFFIXES,
    PREFILTER_PREFIX_LEN, PREFILTER_SUFFIX_LEN, PrefilterConfig, fnv1a,
};

/// One completed `open`, `openat` or `openat2` of a traced process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OpenRecord {
    /// Always [`record_kind::OPEN`].
    pub kind: u32,
    /// One of [`open_syscall`].
    pub syscall: u32,
    /// `CLOCK_MONOTONIC` nanoseconds at the syscall's exit.
    pub ts_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    /// The new fd, or `-errno`.
    pub ret: i64,
    pub flags: u64,
    pub mode: u64,
    /// The directory fd relative paths resolve against (`AT_FDCWD` for `open`).
    pub dirfd: i32,
    /// Bytes of `path` holding the path, NUL excluded.
    pub path_len: u32,
    /// Bits of [`path_state`].
    pub path_state: u32,
    /// Non-zero when the kernel signalled the process at this open: its
    /// stub now waits for forkmon's verdict.
    pub signalled: u32,
    pub comm: [u8; COMM_LEN],
    /// The path exactly as the process passed it.
    pub path: [u8; PATH_MAX],
}

/// A traced process forked, exited, or changed its working directory.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessRecord {
    /// [`record_kind::FORK`], [`record_kind::EXIT`] or [`record_kind::CHDIR`].
    pub kind: u32,
    /// The process (tgid) the record is about: the child for a fork.
    pub pid: u32,
    /// For a fork, the parent's tgid; otherwise 0.
    pub ppid: u32,
    pub _pad: u32,
    pub ts_ns: u64,
    /// The process's `comm` after the event.
    pub comm: [u8; COMM_LEN],
}

#[cfg(feature = "prefault")]
pub mod prefault;

#[cfg(feature = "user")]
mod user {
    use super::{COMM_LEN, OpenRecord, ProcessRecord, record_kind};

    /// A decoded ring-buffer record. Open records (4 KiB) are borrowed in
    /// place from the ring, not copied.
    pub enum Record<'a> {
        Open(&'a OpenRecord),
        Process(ProcessRecord),
    }

    fn view<T>(bytes: &[u8]) -> Option<&T> {
        let fits = bytes.len() >= core::mem::size_of::<T>();
        let aligned = bytes.as_ptr().align_offset(core::mem::align_of::<T>()) == 0;
        (fits && aligned).then(|| {
            // SAFETY: size and alignment are checked above, and T is a plain
            // #[repr(C)] record of integers and byte arrays (every bit
            // pattern is valid); the borrow keeps the bytes alive.
            unsafe { &*bytes.as_ptr().cast::<T>() }
        })
    }

    fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
        (bytes.len() >= core::mem::size_of::<T>()).then(|| {
            // SAFETY: the length is checked above, T is a plain #[repr(C)]
            // record made only of integers and byte arrays (every bit
            // pattern is valid), and read_unaligned copes with any alignment.
            unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
        })
    }

    impl<'a> Record<'a> {
        /// Decodes one ring-buffer record; `None` if it is malformed.
        pub fn decode(bytes: &'a [u8]) -> Option<Record<'a>> {
            let kind = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
            match kind {
                record_kind::OPEN => view(bytes).map(Record::Open),
                record_kind::FORK | record_kind::EXIT | record_kind::CHDIR => {
                    read(bytes).map(Record::Process)
                }
                _ => None,
            }
        }
    }

    impl OpenRecord {
        /// The path bytes as passed by the process (no NUL).
        pub fn path_bytes(&self) -> &[u8] {
            let len = (self.path_len as usize).min(self.path.len());
            &self.path[..len]
        }
    }

    /// A `comm` up to its first NUL.
    pub fn comm_str(comm: &[u8; COMM_LEN]) -> &[u8] {
        let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
        &comm[..end]
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const SIZE: usize = core::mem::size_of::<ProcessRecord>();

        fn as_bytes(rec: &ProcessRecord) -> [u8; SIZE] {
            // SAFETY: ProcessRecord is #[repr(C)] plain data with explicit
            // padding, so all SIZE bytes are initialised.
            unsafe { core::mem::transmute_copy(rec) }
        }

        #[test]
        fn open_records_are_viewed_only_when_aligned() {
            const OPEN_SIZE: usize = core::mem::size_of::<OpenRecord>();
            #[repr(C, align(8))]
            struct Aligned([u8; OPEN_SIZE + 8]);
            let mut buf = Aligned([0; OPEN_SIZE + 8]);
            // Open records at offsets 0 and 4, both whole: only alignment
            // tells them apart.
            buf.0[..4].copy_from_slice(&record_kind::OPEN.to_ne_bytes());
            buf.0[4..8].copy_from_slice(&record_kind::OPEN.to_ne_bytes());
            assert!(matches!(Record::decode(&buf.0), Some(Record::Open(_))));
            let misaligned = &buf.0[4..];
            assert!(misaligned.len() >= OPEN_SIZE);
            assert!(Record::decode(misaligned).is_none(), "misaligned");
            assert!(Record::decode(&buf.0[..100]).is_none(), "short");
        }

        #[test]
        fn decodes_process_record_and_rejects_short_or_unknown() {
            let rec = ProcessRecord {
                kind: record_kind::FORK,
                pid: 42,
                ppid: 7,
                _pad: 0,
                ts_ns: 99,
                comm: *b"python3\0\0\0\0\0\0\0\0\0",
            };
            let mut bytes = as_bytes(&rec);
            match Record::decode(&bytes) {
                Some(Record::Process(p)) => assert_eq!(p, rec),
                _ => panic!("fork record not decoded"),
            }
            assert!(Record::decode(&bytes[..10]).is_none());
            bytes[0] = 77;
            assert!(Record::decode(&bytes).is_none());
            assert_eq!(comm_str(&rec.comm), b"python3");
        }
    }
}

#[cfg(feature = "user")]
pub use user::{Record, comm_str};
