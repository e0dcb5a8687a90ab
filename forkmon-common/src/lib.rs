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

/// How forkmon and its `LD_PRELOAD` stub talk (see DESIGN.md, "The
/// mechanism"). Registration messages travel over one `SOCK_SEQPACKET`
/// socket the whole tree inherits (each `sendmsg` is atomic); commands go
/// the other way over each process's own eventfd, sent with its
/// registration, so no process can read another's command.
pub mod stub {
    /// Environment: the fd number of the registration socket.
    pub const ENV_SOCKET: &str = "FORKMON_STUB_SOCKET";
    /// Environment: set to "1" to flush C stdio buffers at each checkpoint.
    pub const ENV_FLUSH: &str = "FORKMON_STUB_FLUSH";

    /// The signal the eBPF program sends at a candidate open: a real-time
    /// signal (SIGRTMAX - 2) no common runtime uses.
    pub const SIGNAL: u32 = 62;

    /// Commands forkmon writes to a process's eventfd. At most one is ever
    /// outstanding per process (eventfd values add up).
    ///
    /// Carry on: no checkpoint here; to a registered process, you may run;
    /// to a checkpoint's waiting child, run now (re-open the file, return).
    pub const CMD_GO: u64 = 1;
    /// Fork here: the process becomes a checkpoint. Its first child runs at
    /// once; the standbys it forks later wait, registered, until forkmon
    /// tells one to run. Sent with the open's syscall (see
    /// [`checkpoint_command`]), whose arguments the children re-open with.
    pub const CMD_CHECKPOINT: u64 = 2;
    /// To a checkpoint: fork one more child, which runs at once (a resume
    /// without a standby).
    pub const CMD_FORK: u64 = 3;
    /// To a checkpoint: fork one more waiting child, the standby that the
    /// next resume will wake, so a resume needs no fork. It prepares while
    /// it waits.
    pub const CMD_FORK_STANDBY: u64 = 4;
    /// The command in a value read from the eventfd (the low byte).
    pub const CMD_MASK: u64 = 0xff;
    /// To a waiting child, alone or added to `CMD_GO`: "go" is due within
    /// the microseconds in bits 16 and up; poll for it rather than sleep.
    /// Waking from a sleep on an idle CPU costs 50–100 µs on a VM, most of
    /// a resume. Sent at most once per child, so it never adds to itself.
    pub const CMD_SPIN: u64 = 1 << 8;

    /// `CMD_SPIN` for at most `budget_us` microseconds.
    pub const fn spin_command(budget_us: u64) -> u64 {
        CMD_SPIN | budget_us << 16
    }

    /// `CMD_CHECKPOINT` for an open made with `syscall` (an
    /// [`open_syscall`](crate::open_syscall) value).
    pub const fn checkpoint_command(syscall: u32) -> u64 {
        CMD_CHECKPOINT | (syscall as u64) << 16
    }

    /// The syscall a `CMD_CHECKPOINT` value was sent for.
    pub const fn checkpoint_syscall(value: u64) -> u32 {
        (value >> 16) as u32
    }

    /// How long a `CMD_SPIN` value says to poll, in microseconds.
    pub const fn spin_budget_us(value: u64) -> u64 {
        if value & CMD_SPIN == 0 {
            0
        } else {
            value >> 16
        }
    }

    /// Or'ed into the stub's own re-open: not a valid open flag, so the
    /// kernel ignores it, but the eBPF program sees it and never signals.
    pub const REOPEN_MARK: u64 = 0x4000_0000;

    /// A process registered (its eventfd is attached): the target at start.
    pub const MSG_HELLO: u32 = 1;
    /// A checkpoint's new child registered (its eventfd is attached).
    /// `status` 1: a standby, it waits for `CMD_GO`; 0: it runs already
    /// (forked by `CMD_CHECKPOINT` or `CMD_FORK`, armed by the eBPF
    /// program at the fork).
    pub const MSG_CHILD: u32 = 2;
    /// A checkpoint reaped one of its children; `status` is the raw wait
    /// status.
    pub const MSG_EXITED: u32 = 3;
    /// A checkpoint could not fork; `status` is the errno, `checkpoint` is 1
    /// if the process gave up being a checkpoint and runs on.
    pub const MSG_FAILED: u32 = 4;

    /// One registration-socket message.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Message {
        /// One of the `MSG_*` kinds.
        pub kind: u32,
        /// The sender, or for `MSG_EXITED` the child that exited.
        pub pid: i32,
        /// The checkpoint the sender was forked from (`MSG_CHILD`) or that
        /// reaped the child (`MSG_EXITED`); 0 otherwise.
        pub checkpoint: i32,
        /// The fd the checkpoint was made at.
        pub fd: i32,
        /// Wait status (`MSG_EXITED`), errno (`MSG_FAILED`), or whether the
        /// child waits (`MSG_CHILD`).
        pub status: i32,
        pub _pad: i32,
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::open_syscall;

        #[test]
        fn a_checkpoint_command_says_which_open_to_repeat() {
            for syscall in [
                open_syscall::OPEN,
                open_syscall::OPENAT,
                open_syscall::OPENAT2,
            ] {
                let value = checkpoint_command(syscall);
                assert_eq!(value & CMD_MASK, CMD_CHECKPOINT);
                assert_eq!(checkpoint_syscall(value), syscall);
                assert_eq!(spin_budget_us(value), 0, "not a spin command");
            }
        }
    }
}

mod prefilter;
pub use prefilter::{
    PREFILTER_MAX_PREFIXES, PREFILTER_MAX_SUFFIXES, PREFILTER_PREFIX_LEN, PREFILTER_SUFFIX_LEN,
    PrefilterConfig,
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
