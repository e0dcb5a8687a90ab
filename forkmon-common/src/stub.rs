//! How forkmon and its `LD_PRELOAD` stub talk (see docs/mechanism.md).
//! Registration messages travel over one `SOCK_SEQPACKET`
//! socket the whole tree inherits (each `sendmsg` is atomic); commands go
//! the other way over each process's own eventfd, sent with its
//! registration, so no process can read another's command.

/// Environment: the fd number of the registration socket.
pub const ENV_SOCKET: &str = "FORKMON_STUB_SOCKET";
/// Environment: set to "1" to flush C stdio buffers at each checkpoint.
pub const ENV_FLUSH: &str = "FORKMON_STUB_FLUSH";
/// Environment, for tests: set to "1", the stub forgets where glibc's
/// locks are, as on a glibc whose locks it does not know: it must then
/// refuse a checkpoint inside the loader rather than hang.
pub const ENV_FORGET_LOCKS: &str = "FORKMON_STUB_FORGET_LOCKS";

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

/// Or'ed into `CMD_CHECKPOINT`: the file opened is a cache that stands
/// for its source (a Python bytecode cache): every child but the first
/// sees the open fail with `ENOENT`, so that the program reads the source
/// that changed, as it does when a cache is missing.
pub const CHECKPOINT_CACHE: u64 = 1 << 9;

/// Or'ed into `CMD_CHECKPOINT`: the process has other threads. The stub
/// forks with glibc's `fork()`, whose atfork handlers run (OpenBLAS's
/// stops its thread pool, which restarts on next use), and keeps the
/// checkpoint only if that left the process with one thread: otherwise the
/// child would lack a thread the program still counts on. It then kills
/// the child before it runs and reports [`FAILED_THREADS_LEFT`]. Once the
/// process has one thread, its forks are `_Fork()` again.
pub const CHECKPOINT_ATFORK: u64 = 1 << 10;

/// `MSG_FAILED`'s errno when threads were left after `fork()`'s handlers
/// (see [`CHECKPOINT_ATFORK`]): `EBUSY`, which neither `fork` nor
/// `eventfd` returns.
pub const FAILED_THREADS_LEFT: i32 = 16;

/// `MSG_FAILED`'s errno when the open is inside library code that holds
/// a lock a child could not take over (docs/mechanism.md, "glibc's
/// locks"): `EDEADLK`, "Resource deadlock avoided", which neither `fork`
/// nor `eventfd` returns. The process gives up the checkpoint and runs on.
pub const FAILED_LOCK_HELD: i32 = 35;

/// `CMD_CHECKPOINT` for an open made with `syscall` (an
/// [`open_syscall`](crate::open_syscall) value), of a cache or not.
pub const fn checkpoint_command(syscall: u32, cache: bool) -> u64 {
    let command = CMD_CHECKPOINT | (syscall as u64) << 16;
    if cache {
        command | CHECKPOINT_CACHE
    } else {
        command
    }
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
    /// The number of the eventfd sent along (`MSG_HELLO`, `MSG_CHILD`) in
    /// the registered process's own fd table: forkmon checks that the
    /// process still holds it before it waits for an answer on it (a
    /// program may close every fd it did not open itself).
    pub eventfd: i32,
}

/// A registration-socket message, decoded: what each kind carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StubMessage {
    /// A process started by forkmon (the target, or a program it execs)
    /// registered; it waits for "go".
    Hello { pid: i32, eventfd: i32 },
    /// Checkpoint `checkpoint`'s new child `pid` registered: a standby that
    /// waits for "go" (`waits`), or a child that runs already.
    Child {
        pid: i32,
        checkpoint: i32,
        fd: i32,
        waits: bool,
        eventfd: i32,
    },
    /// Checkpoint `checkpoint` reaped its child `pid`; `status` is the raw
    /// wait status.
    Exited {
        pid: i32,
        checkpoint: i32,
        status: i32,
    },
    /// Checkpoint `pid` could not fork (`errno`); if it `gave_up`, it runs
    /// on as the program.
    Failed {
        pid: i32,
        fd: i32,
        errno: i32,
        gave_up: bool,
    },
}

impl StubMessage {
    /// `None` for a kind this forkmon does not know.
    pub fn decode(message: &Message) -> Option<StubMessage> {
        let Message {
            kind,
            pid,
            checkpoint,
            fd,
            status,
            eventfd,
        } = *message;
        Some(match kind {
            MSG_HELLO => StubMessage::Hello { pid, eventfd },
            MSG_CHILD => StubMessage::Child {
                pid,
                checkpoint,
                fd,
                waits: status != 0,
                eventfd,
            },
            MSG_EXITED => StubMessage::Exited {
                pid,
                checkpoint,
                status,
            },
            MSG_FAILED => StubMessage::Failed {
                pid,
                fd,
                errno: status,
                gave_up: checkpoint != 0,
            },
            _ => return None,
        })
    }

    /// The wire form, as the stub sends it.
    pub fn encode(&self) -> Message {
        let (kind, pid, checkpoint, fd, status, eventfd) = match *self {
            StubMessage::Hello { pid, eventfd } => (MSG_HELLO, pid, 0, 0, 0, eventfd),
            StubMessage::Child {
                pid,
                checkpoint,
                fd,
                waits,
                eventfd,
            } => (MSG_CHILD, pid, checkpoint, fd, waits as i32, eventfd),
            StubMessage::Exited {
                pid,
                checkpoint,
                status,
            } => (MSG_EXITED, pid, checkpoint, 0, status, -1),
            StubMessage::Failed {
                pid,
                fd,
                errno,
                gave_up,
            } => (MSG_FAILED, pid, gave_up as i32, fd, errno, -1),
        };
        Message {
            kind,
            pid,
            checkpoint,
            fd,
            status,
            eventfd,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_the_wire() {
        let all = [
            StubMessage::Hello { pid: 7, eventfd: 5 },
            StubMessage::Child {
                pid: 8,
                checkpoint: 7,
                fd: 3,
                waits: true,
                eventfd: 6,
            },
            StubMessage::Child {
                pid: 9,
                checkpoint: 7,
                fd: 3,
                waits: false,
                eventfd: 6,
            },
            StubMessage::Exited {
                pid: 8,
                checkpoint: 7,
                status: 0x0900,
            },
            StubMessage::Failed {
                pid: 7,
                fd: 3,
                errno: 11,
                gave_up: true,
            },
        ];
        for message in all {
            assert_eq!(StubMessage::decode(&message.encode()), Some(message));
        }
        let unknown = Message {
            kind: 99,
            ..Message::default()
        };
        assert_eq!(StubMessage::decode(&unknown), None);
    }
    use crate::open_syscall;

    #[test]
    fn a_checkpoint_command_says_which_open_to_repeat() {
        for syscall in [
            open_syscall::OPEN,
            open_syscall::OPENAT,
            open_syscall::OPENAT2,
        ] {
            for cache in [false, true] {
                let value = checkpoint_command(syscall, cache);
                assert_eq!(value & CMD_MASK, CMD_CHECKPOINT);
                assert_eq!(checkpoint_syscall(value), syscall);
                assert_eq!(value & CHECKPOINT_CACHE != 0, cache);
                assert_eq!(spin_budget_us(value), 0, "not a spin command");
            }
        }
    }

    #[test]
    fn the_atfork_bit_stands_apart_from_the_rest_of_a_checkpoint_command() {
        let fields = CMD_MASK | CMD_SPIN | CHECKPOINT_CACHE | u64::from(u32::MAX) << 16;
        assert_eq!(CHECKPOINT_ATFORK & fields, 0, "a bit of its own");
        for cache in [false, true] {
            let plain = checkpoint_command(open_syscall::OPENAT2, cache);
            let value = plain | CHECKPOINT_ATFORK;
            assert_ne!(value, plain);
            assert_eq!(value & CMD_MASK, CMD_CHECKPOINT);
            assert_eq!(checkpoint_syscall(value), open_syscall::OPENAT2);
            assert_eq!(value & CHECKPOINT_CACHE != 0, cache);
            assert_eq!(plain & CHECKPOINT_ATFORK, 0, "off unless asked for");
        }
    }
}
