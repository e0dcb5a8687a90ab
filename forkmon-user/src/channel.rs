//! forkmon's side of the stub protocol (`forkmon_common::stub`): the
//! registration socket the target tree inherits, and each process's own
//! eventfd for commands.
use std::{
    io::{self, IoSliceMut},
    mem::size_of,
    os::fd::{AsRawFd as _, OwnedFd, RawFd},
};

use forkmon_common::stub::Message;
use nix::{
    errno::Errno,
    sys::socket::{
        AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, socketpair,
    },
};
use tokio::io::unix::AsyncFd;

/// One message from a stub, with the eventfd it sent along, if any.
pub struct Registration {
    pub message: Message,
    pub eventfd: Option<OwnedFd>,
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
    let mut control = nix::cmsg_space!([RawFd; 1]);
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
    for cmsg in received.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: SCM_RIGHTS hands us new fds that nothing else owns.
                let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                eventfd.get_or_insert(owned);
            }
        }
    }
    if received.bytes == 0 && eventfd.is_none() {
        return Ok(Received::Closed);
    }
    if received.bytes != size_of::<Message>() {
        log::warn!("ignoring a stub message of {} bytes", received.bytes);
        return Ok(Received::Nothing);
    }
    Ok(Received::Message(Registration { message, eventfd }))
}

/// Writes one command to a process's eventfd.
pub fn send_command(eventfd: &OwnedFd, command: u64) -> io::Result<()> {
    nix::unistd::write(eventfd, &command.to_ne_bytes())?;
    Ok(())
}
