//! `--keys`: keys typed at the terminal ask for a resume or a restart
//! without an edit (entr's space, watchexec's keyboard), or end the run.
//! Opt-in: forkmon then reads the terminal, and the program gets
//! `/dev/null` as its standard input; without it, the program keeps its
//! standard input, as it would without forkmon.
use std::{
    fs::{File, OpenOptions},
    io::{self, Read as _},
    os::unix::fs::OpenOptionsExt as _,
};

use anyhow::Context as _;
use nix::sys::termios::{self, LocalFlags, SetArg, SpecialCharacterIndices, Termios};
use tokio::io::{Interest, unix::AsyncFd};

/// What a key asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// `r` or Enter: resume from the latest checkpoint (restart if there is
    /// none).
    Resume,
    /// `R`: restart the program from scratch.
    Restart,
    /// `q`: end the run, as Ctrl-C does.
    Quit,
    /// `h` or `?`: say which keys do what.
    Help,
}

/// One line for `Key::Help` and for the start of the run.
pub const HELP: &str = "keys: r or Enter resumes, R restarts from scratch, q quits";

impl Key {
    fn of(byte: u8) -> Option<Key> {
        match byte {
            b'r' | b'\n' | b'\r' => Some(Key::Resume),
            b'R' => Some(Key::Restart),
            b'q' => Some(Key::Quit),
            b'h' | b'?' => Some(Key::Help),
            _ => None,
        }
    }
}

/// The terminal, read a key at a time; its settings are restored on drop.
pub struct Keys {
    tty: AsyncFd<File>,
    saved: Termios,
}

impl Keys {
    /// Reads keys from the controlling terminal. Fails with one line when
    /// there is none (a pipe, a service).
    pub fn new() -> anyhow::Result<Keys> {
        // A file description of its own: non-blocking here changes nothing
        // for the shell that shares the terminal.
        let tty = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
            .open("/dev/tty")
            .context("--keys needs a terminal (there is no /dev/tty); leave it out")?;
        let saved =
            termios::tcgetattr(&tty).context("--keys: cannot read the terminal's settings")?;
        let mut keys = saved.clone();
        // A key at a time, not echoed; Ctrl-C still interrupts.
        keys.local_flags
            .remove(LocalFlags::ICANON | LocalFlags::ECHO);
        keys.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
        keys.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
        termios::tcsetattr(&tty, SetArg::TCSANOW, &keys)
            .context("--keys: cannot set the terminal up")?;
        // SAFETY: the File owns its fd, which stays open and the same for
        // as long as it (and so the AsyncFd) lives.
        let tty = unsafe { AsyncFd::register_with_interest(tty, Interest::READABLE) }
            .map_err(io::Error::from)
            .context("--keys: cannot poll the terminal")?;
        Ok(Keys { tty, saved })
    }

    /// The next key that means something; others are ignored.
    pub async fn next(&mut self) -> io::Result<Key> {
        loop {
            let mut guard = self.tty.readable_mut().await?;
            let mut byte = [0u8; 1];
            match guard.try_io(|tty| tty.get_mut().read(&mut byte)) {
                Ok(Ok(1)) => {
                    if let Some(key) = Key::of(byte[0]) {
                        return Ok(key);
                    }
                }
                // The terminal hung up: no more keys, ever.
                Ok(Ok(_)) => std::future::pending::<()>().await,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.tty.get_ref(), SetArg::TCSANOW, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_mean_what_the_help_says() {
        assert_eq!(Key::of(b'r'), Some(Key::Resume));
        assert_eq!(Key::of(b'\n'), Some(Key::Resume));
        assert_eq!(Key::of(b'R'), Some(Key::Restart));
        assert_eq!(Key::of(b'q'), Some(Key::Quit));
        assert_eq!(Key::of(b'?'), Some(Key::Help));
        assert_eq!(Key::of(b'x'), None);
        for key in ["r or Enter", "R restarts", "q quits"] {
            assert!(HELP.contains(key));
        }
    }
}
