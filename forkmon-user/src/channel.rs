//! forkmon's side of the stub protocol (`forkmon_common::stub`): the
//! registration socket the target tree inherits, and each process's own
//! eventfd for commands.
use std::{
    io::{self, IoSliceMut},
    mem::size_of,
    os::fd::{AsRawFd as _, OwnedFd, RawFd},
};

use forkmon_common::stub::{Message, StubMessage};
use nix::{
    errno::Errno,
    sys::socket::{
        AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, socketpair,
    },
};
use tokio::io::unix::AsyncFd;

/// One message from a stub, with the eventfd it sent along, if any, and
/// who sent it as the kernel says (the message itself only claims).
pub struct Registration {
    pub message: Message,
    pub eventfd: Option<OwnedFd>,
    /// `None` only if the kernel attached no credentials, which
    /// `SO_PASSCRED` rules out: such a message is not trusted.
    pub sender: Option<Sender>,
}

/// The sending process, from the kernel's `SCM_CREDENTIALS`: a process
/// without `CAP_SYS_ADMIN`/`CAP_SETUID` cannot claim another pid or uid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sender {
    pub pid: i32,
    pub uid: u32,
}

pub struct Registrations {
    socket: AsyncFd<OwnedFd>,
    /// Every process holding the other end has exited.
    closed: std::cell::Cell<bool>,
}

impl Registrations {
    /// The socket pair: ours, and the end the target inherits (close it
    /// once the target runs, so the tree holds the only copies).
    pub fn new() -> io::Result<(Registrations, OwnedFd)> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )?;
        // Every message then carries its sender's pid and uid, vouched for
        // by the kernel.
        nix::sys::socket::setsockopt(&ours, nix::sys::socket::sockopt::PassCred, &true)?;
        // The target's end must block: the stub waits in sendmsg, not spins.
        nix::fcntl::fcntl(
            &theirs,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        )?;
        let socket = crate::events::poll_fd(ours)?;
        Ok((
            Registrations {
                socket,
                closed: std::cell::Cell::new(false),
            },
            theirs,
        ))
    }

    /// Waits until messages may be waiting; follow with [`Self::drain`].
    pub async fn readable(&self) -> io::Result<()> {
        if self.closed.get() {
            return std::future::pending().await;
        }
        let mut guard = self.socket.readable().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Every message now waiting, oldest first.
    pub fn drain(&self) -> io::Result<Vec<Registration>> {
        let mut out = Vec::new();
        loop {
            match receive(self.socket.as_raw_fd()) {
                Ok(Received::Message(registration)) => out.push(registration),
                Ok(Received::Nothing) => return Ok(out),
                Ok(Received::Closed) => {
                    self.closed.set(true);
                    return Ok(out);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

enum Received {
    Message(Registration),
    Nothing,
    /// End of file: no process of the tree holds the socket any more.
    Closed,
}

fn receive(fd: RawFd) -> io::Result<Received> {
    let mut message = Message::default();
    // SAFETY: Message is #[repr(C)] plain data; viewing it as bytes to
    // receive into is sound, and every bit pattern is a valid Message.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(
            (&mut message as *mut Message).cast::<u8>(),
            size_of::<Message>(),
        )
    };
    let mut iov = [IoSliceMut::new(bytes)];
    let mut control = nix::cmsg_space!([RawFd; 1], libc::ucred);
    let received = match recvmsg::<()>(
        fd,
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    ) {
        Ok(received) => received,
        Err(Errno::EAGAIN) => return Ok(Received::Nothing),
        Err(e) => return Err(e.into()),
    };
    let mut eventfd = None;
    let mut sender = None;
    for cmsg in received.cmsgs()? {
        match cmsg {
            ControlMessageOwned::ScmRights(fds) => {
                for fd in fds {
                    // SAFETY: SCM_RIGHTS hands us new fds that nothing else
                    // owns.
                    let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                    eventfd.get_or_insert(owned);
                }
            }
            ControlMessageOwned::ScmCredentials(credentials) => {
                sender = Some(Sender {
                    pid: credentials.pid(),
                    uid: credentials.uid(),
                });
            }
            _ => {}
        }
    }
    if received.bytes == 0 && eventfd.is_none() {
        return Ok(Received::Closed);
    }
    if received.bytes != size_of::<Message>() {
        log::warn!("ignoring a stub message of {} bytes", received.bytes);
        return Ok(Received::Nothing);
    }
    Ok(Received::Message(Registration {
        message,
        eventfd,
        sender,
    }))
}

/// Writes one command to a process's eventfd.
pub fn send_command(eventfd: &OwnedFd, command: u64) -> io::Result<()> {
    nix::unistd::write(eventfd, &command.to_ne_bytes())?;
    Ok(())
}

/// Why a stub message was not believed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Distrust {
    #[error("a stub message came without its sender's credentials")]
    NoCredentials,
    #[error("pid {sender} (uid {uid}) is not the program's user")]
    OtherUser { sender: i32, uid: u32 },
    #[error("pid {0} is not in the program's process tree")]
    NotInTree(i32),
    #[error("pid {sender} spoke for pid {claimed}")]
    SpeaksForAnother { sender: i32, claimed: i32 },
    #[error("pid {child} is not a child of checkpoint {checkpoint}")]
    NotItsChild { child: i32, checkpoint: i32 },
    #[error("unknown stub message kind {0}")]
    UnknownKind(u32),
}

/// What the kernel knows of the processes a message may name.
pub trait Kernel {
    /// Whether `pid` is in the program's tree (the eBPF program's map,
    /// which drops a process as it exits).
    fn in_tree(&self, pid: i32) -> bool;
    /// `pid`'s parent, if `pid` is alive: not exited, exiting or a zombie.
    fn alive_parent(&self, pid: i32) -> Option<i32>;
}

/// Checks a stub message against the kernel's word before forkmon, as root,
/// acts on the pids it names: it comes from a process of the program's
/// tree, running as the program's user (`program_uid`), that speaks for
/// itself — or, registering a child it forked, for that child.
///
/// Any process of the tree holds the socket, so without this one running
/// as `nobody` could name any pid and have root forkmon move it into its
/// cgroup and kill it.
///
/// A process that has exited since it sent the message (a quick program
/// does, before forkmon reads it) is out of the tree but harmless: what
/// forkmon does to a pid that is gone reaches no one. Only the living are
/// checked for membership.
pub fn check(
    message: &Message,
    sender: Option<Sender>,
    program_uid: u32,
    kernel: &impl Kernel,
) -> Result<StubMessage, Distrust> {
    let decoded = StubMessage::decode(message).ok_or(Distrust::UnknownKind(message.kind))?;
    let sender = sender.ok_or(Distrust::NoCredentials)?;
    if sender.uid != program_uid {
        return Err(Distrust::OtherUser {
            sender: sender.pid,
            uid: sender.uid,
        });
    }
    // The tree first, then whether alive: the eBPF program forgets a process
    // only once it is exiting, so one still alive after it was found
    // outside the tree is truly outside. The other way round, a quick
    // process that exits between the two looks alive and outside.
    if !kernel.in_tree(sender.pid) && kernel.alive_parent(sender.pid).is_some() {
        return Err(Distrust::NotInTree(sender.pid));
    }
    let speaks_for = |claimed: i32| {
        if claimed == sender.pid {
            Ok(())
        } else {
            Err(Distrust::SpeaksForAnother {
                sender: sender.pid,
                claimed,
            })
        }
    };
    match decoded {
        StubMessage::Hello { pid, .. } | StubMessage::Failed { pid, .. } => speaks_for(pid)?,
        // The checkpoint reports the end of its own child, which is gone.
        StubMessage::Exited { checkpoint, .. } => speaks_for(checkpoint)?,
        StubMessage::Child {
            pid, checkpoint, ..
        } => {
            // The child registers itself, or the checkpoint registers the
            // child it forked early; either way it is the checkpoint's.
            if pid != sender.pid {
                speaks_for(checkpoint)?;
            }
            // The tree first, as above.
            let in_tree = kernel.in_tree(pid);
            if let Some(parent) = kernel.alive_parent(pid)
                && (parent != checkpoint || !in_tree)
            {
                return Err(Distrust::NotItsChild {
                    child: pid,
                    checkpoint,
                });
            }
        }
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use forkmon_common::stub::{MSG_CHILD, MSG_EXITED, MSG_FAILED, MSG_HELLO};

    /// The program's tree: pid 100 (the checkpoint), its child 101, and
    /// 102, 101's child. Pid 1 is alive outside; 103 has exited.
    struct Tree;

    impl Kernel for Tree {
        fn in_tree(&self, pid: i32) -> bool {
            (100..=102).contains(&pid)
        }
        fn alive_parent(&self, pid: i32) -> Option<i32> {
            match pid {
                100 => Some(50),
                101 => Some(100),
                102 => Some(101),
                1 => Some(0),
                _ => None,
            }
        }
    }

    const USER: u32 = 1000;

    fn from(pid: i32) -> Option<Sender> {
        Some(Sender { pid, uid: USER })
    }

    fn message(kind: u32, pid: i32, checkpoint: i32) -> Message {
        Message {
            kind,
            pid,
            checkpoint,
            ..Message::default()
        }
    }

    #[test]
    fn honest_messages_pass() {
        let honest = [
            (message(MSG_HELLO, 100, 0), 100),
            (message(MSG_CHILD, 101, 100), 101),
            (message(MSG_CHILD, 101, 100), 100), // an early child, released
            (message(MSG_EXITED, 101, 100), 100),
            (message(MSG_FAILED, 100, 1), 100),
            // Sent before it exited: nothing to harm.
            (message(MSG_CHILD, 103, 100), 103),
            (message(MSG_CHILD, 103, 100), 100),
        ];
        for (m, sender) in honest {
            assert_eq!(
                check(&m, from(sender), USER, &Tree),
                StubMessage::decode(&m).ok_or(Distrust::UnknownKind(m.kind)),
                "{m:?}"
            );
        }
    }

    /// Pid 104, a child of checkpoint 100 that exits after `alive_for` more
    /// questions about it; other pids as in [`Tree`].
    struct Exiting {
        alive_for: std::cell::Cell<u32>,
    }

    impl Exiting {
        fn still_alive(&self) -> bool {
            let left = self.alive_for.get();
            self.alive_for.set(left.saturating_sub(1));
            left > 0
        }
    }

    impl Kernel for Exiting {
        fn in_tree(&self, pid: i32) -> bool {
            if pid == 104 {
                self.still_alive()
            } else {
                Tree.in_tree(pid)
            }
        }
        fn alive_parent(&self, pid: i32) -> Option<i32> {
            if pid == 104 {
                self.still_alive().then_some(100)
            } else {
                Tree.alive_parent(pid)
            }
        }
    }

    /// A program can finish before forkmon reads its registration: however
    /// the exit falls between the questions, the message is its own.
    #[test]
    fn a_process_exiting_while_checked_is_still_heard() {
        for alive_for in 0..6 {
            for sender in [104, 100] {
                let kernel = Exiting {
                    alive_for: alive_for.into(),
                };
                let m = message(MSG_CHILD, 104, 100);
                assert_eq!(
                    check(&m, from(sender), USER, &kernel).map(drop),
                    Ok(()),
                    "from {sender}, exiting after {alive_for} questions"
                );
            }
        }
    }

    #[test]
    fn a_process_cannot_speak_for_another() {
        // Registering pid 1 (outside the tree) to have it killed later.
        assert_eq!(
            check(&message(MSG_HELLO, 1, 0), from(102), USER, &Tree).map(drop),
            Err(Distrust::SpeaksForAnother {
                sender: 102,
                claimed: 1
            })
        );
        // A made-up child of a made-up checkpoint.
        assert!(check(&message(MSG_CHILD, 1, 0), from(102), USER, &Tree).is_err());
        // Its own grandchild as the checkpoint's child.
        assert_eq!(
            check(&message(MSG_CHILD, 102, 100), from(100), USER, &Tree).map(drop),
            Err(Distrust::NotItsChild {
                child: 102,
                checkpoint: 100
            })
        );
        // Itself as another checkpoint's child.
        assert!(check(&message(MSG_CHILD, 102, 100), from(102), USER, &Tree).is_err());
        assert!(check(&message(MSG_FAILED, 100, 1), from(101), USER, &Tree).is_err());
        assert!(check(&message(MSG_EXITED, 101, 100), from(102), USER, &Tree).is_err());
    }

    #[test]
    fn only_the_programs_user_inside_the_tree_is_heard() {
        let hello = message(MSG_HELLO, 100, 0);
        assert_eq!(
            check(&hello, Some(Sender { pid: 100, uid: 0 }), USER, &Tree).map(drop),
            Err(Distrust::OtherUser {
                sender: 100,
                uid: 0
            })
        );
        assert_eq!(
            check(&message(MSG_HELLO, 1, 0), from(1), USER, &Tree).map(drop),
            Err(Distrust::NotInTree(1))
        );
        assert_eq!(
            check(&hello, None, USER, &Tree).map(drop),
            Err(Distrust::NoCredentials)
        );
        assert_eq!(
            check(&message(99, 100, 0), from(100), USER, &Tree).map(drop),
            Err(Distrust::UnknownKind(99))
        );
    }
}
