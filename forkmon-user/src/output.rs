//! How opens are shown: a table for people, JSON lines for programs.
use std::{
    borrow::Cow,
    cell::RefCell,
    io::{self, Write},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use forkmon_common::{OpenRecord, comm_str, open_syscall, path_state};
use nix::errno::Errno;
use serde::Serialize;
use serde_json::json;

use crate::journal::{self, Journal};

/// One open, decoded and resolved, ready to print.
#[derive(Debug, Serialize)]
pub struct OpenLine {
    /// Seconds since the program was started.
    pub time_s: f64,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub syscall: &'static str,
    /// The new fd, when the open succeeded.
    pub fd: Option<i64>,
    /// The error name (`ENOENT`, …), when it failed.
    pub error: Option<String>,
    pub flags: String,
    pub flags_raw: u64,
    pub mode: u64,
    /// The path as the process passed it; bytes that are not UTF-8 show as
    /// U+FFFD (`path_bytes` then holds them all).
    pub path: String,
    /// The path's bytes, only when they are not UTF-8: the name can be
    /// recovered from them (`path` cannot give it back).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_bytes: Option<Vec<u8>>,
    /// The path made absolute with the process's cwd or dirfd, if they
    /// could still be read when the record arrived.
    pub abs_path: Option<String>,
    /// As `path_bytes`, for `abs_path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abs_path_bytes: Option<Vec<u8>>,
    /// The path was longer than PATH_MAX and arrived cut.
    pub truncated: bool,
}

/// A name as text, and its bytes when the text cannot hold them.
fn text_and_bytes(bytes: &[u8]) -> (String, Option<Vec<u8>>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_owned(), None),
        Err(_) => (
            String::from_utf8_lossy(bytes).into_owned(),
            Some(bytes.to_vec()),
        ),
    }
}

impl OpenLine {
    pub fn new(record: &OpenRecord, abs_path: Option<PathBuf>, start_ns: u64) -> OpenLine {
        let (fd, error) = if record.ret >= 0 {
            (Some(record.ret), None)
        } else {
            (None, Some(errno_name(record.ret)))
        };
        let (path, path_bytes) = if record.path_state & path_state::UNREADABLE != 0 {
            ("<unreadable>".into(), None)
        } else {
            text_and_bytes(record.path_bytes())
        };
        let (abs_path, abs_path_bytes) = match abs_path {
            Some(abs) => {
                let (text, bytes) = text_and_bytes(abs.as_os_str().as_bytes());
                (Some(text), bytes)
            }
            None => (None, None),
        };
        OpenLine {
            time_s: record.ts_ns.saturating_sub(start_ns) as f64 / 1e9,
            pid: record.tgid,
            tid: record.tid,
            comm: String::from_utf8_lossy(comm_str(&record.comm)).into_owned(),
            syscall: match record.syscall {
                open_syscall::OPEN => "open",
                open_syscall::OPENAT => "openat",
                open_syscall::OPENAT2 => "openat2",
                _ => "stat",
            },
            fd,
            error,
            flags: open_flags(record.flags),
            flags_raw: record.flags,
            mode: record.mode,
            path,
            path_bytes,
            abs_path,
            abs_path_bytes,
            truncated: record.path_state & path_state::TRUNCATED != 0,
        }
    }

    pub fn header() -> String {
        format!(
            "{:>10} {:>7} {:<16} {:>7} {:<24} PATH",
            "TIME(s)", "PID", "COMM", "FD/ERR", "FLAGS"
        )
    }

    pub fn to_table_row(&self) -> String {
        let result = match (&self.fd, &self.error) {
            (Some(fd), _) => fd.to_string(),
            (None, Some(e)) => e.clone(),
            (None, None) => "?".into(),
        };
        // Escaped: a name is the program's data, and the terminal must not
        // obey what it holds (a newline would forge a row, `\e[…` recolour
        // or hide the rest).
        let path = match (&self.abs_path, &self.abs_path_bytes) {
            (_, Some(bytes)) => escape(bytes),
            (Some(abs), None) => escape(abs.as_bytes()),
            (None, _) => escape(self.path_bytes.as_deref().unwrap_or(self.path.as_bytes())),
        };
        let cut = if self.truncated { " [truncated]" } else { "" };
        format!(
            "{:>10.6} {:>7} {:<16} {:>7} {:<24} {path}{cut}",
            self.time_s,
            self.pid,
            escape(self.comm.as_bytes()),
            result,
            self.flags
        )
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an OpenLine always serializes")
    }
}

/// The C forkmon's bold cyan.
const PREFIX_STYLE: anstyle::Style = anstyle::Style::new()
    .bold()
    .fg_color(Some(anstyle::Color::Ansi(anstyle::AnsiColor::Cyan)));

/// Whether forkmon's messages on stderr are coloured: never with
/// `--no-color` (`FORKMON_NO_COLORS`); otherwise as anstream reads the
/// conventions (NO_COLOR, CLICOLOR, CLICOLOR_FORCE, TERM=dumb, a
/// terminal), as clap's own help and errors do.
pub fn stderr_color(no_color: bool) -> bool {
    !no_color && anstream::AutoStream::choice(&io::stderr()) != anstream::ColorChoice::Never
}

/// forkmon's own messages during `run`, in the C forkmon's words, on
/// standard error.
pub struct Reporter {
    quiet: bool,
    color: bool,
    /// `--clear`.
    clear: bool,
    sink: RefCell<Box<dyn Write>>,
    /// `--events`: the same, and more, for programs.
    journal: Option<Journal>,
}

impl Reporter {
    pub fn new(quiet: bool, color: bool) -> Reporter {
        Reporter::to(Box::new(io::stderr()), quiet, color)
    }

    /// A reporter writing to `sink` (the tests' recorder).
    pub fn to(sink: Box<dyn Write>, quiet: bool, color: bool) -> Reporter {
        Reporter {
            quiet,
            color,
            clear: false,
            sink: RefCell::new(sink),
            journal: None,
        }
    }

    /// Clears the screen before each resume or restart (`--clear`).
    pub fn clearing(self, clear: bool) -> Reporter {
        Reporter { clear, ..self }
    }

    /// Also records each event in `journal` (`--events`).
    pub fn journaling(self, journal: Option<Journal>) -> Reporter {
        Reporter { journal, ..self }
    }

    fn record(&self, event: &str, fields: serde_json::Value) {
        if let Some(journal) = &self.journal {
            journal.record(event, fields);
        }
    }

    fn say(&self, text: &str) {
        if self.quiet {
            return;
        }
        let style = if self.color {
            PREFIX_STYLE
        } else {
            anstyle::Style::new()
        };
        let prefix = format!("{style}[forkmon]{style:#}");
        // The whole line in one write: the program writes to the same
        // stderr, and a line written in pieces (prefix, text, newline: what
        // eprintln! does on unbuffered stderr) interleaves with its output.
        let line = format!("{prefix} {text}\n");
        let _ = self.sink.borrow_mut().write_all(line.as_bytes());
    }

    /// A checkpoint is made at `file`, which is watched from now on.
    pub fn watch(&self, file: &std::path::Path) {
        self.say(&format!("watch '{}'", escape_path(file)));
        self.record(
            "watch",
            json!({ "file": journal::path(file), "checkpoint": true }),
        );
    }

    /// `file`, read where no checkpoint was made, is watched: a change
    /// resumes from an earlier checkpoint, or restarts. Only recorded: on
    /// the terminal it would drown the program (a compiler reads hundreds).
    pub fn watch_read(&self, file: &std::path::Path) {
        self.record(
            "watch",
            json!({ "file": journal::path(file), "checkpoint": false }),
        );
    }

    /// No checkpoint at `file`, and why (once said on the terminal for the
    /// whole run, when it is threads).
    pub fn refused(&self, file: &std::path::Path, why: &str) {
        self.record(
            "refusal",
            json!({ "file": journal::path(file), "reason": why }),
        );
    }

    /// After a resume: what it cost, and what it saved.
    pub fn resumed(&self, file: &std::path::Path, took: Duration, skipped: Duration) {
        self.say(&format!(
            "resumed from '{}' in {} (start-up skipped: {})",
            escape_path(file),
            human_duration(took),
            human_duration(skipped)
        ));
        self.record(
            "resume",
            json!({
                "checkpoint": journal::path(file),
                "took_ms": journal::round_ms(took),
                "skipped_ms": journal::round_ms(skipped),
            }),
        );
    }

    /// Before a restart from scratch: which file, and why no checkpoint
    /// could serve it.
    pub fn restarting(&self, file: Option<&std::path::Path>, why: &str) {
        self.clear_screen();
        match file {
            Some(file) => self.say(&format!(
                "file '{}' changed, restarting ({why})",
                escape_path(file)
            )),
            None => self.say(&format!("restarting ({why})")),
        }
        self.record(
            "restart",
            json!({ "file": file.map(journal::path), "reason": why }),
        );
    }

    /// `--clear`: the screen cleared before each resume or restart, on the
    /// terminal forkmon writes to.
    pub fn clear_screen(&self) {
        if self.clear {
            // Clear, scrollback too, and home the cursor: as `clear` does.
            let _ = self.sink.borrow_mut().write_all(b"\x1b[H\x1b[2J\x1b[3J");
        }
    }

    /// `file` changed: the program resumes from the checkpoint made at
    /// `checkpoint` (the C forkmon's words when they are the same).
    pub fn changed(&self, file: &std::path::Path, checkpoint: &std::path::Path) {
        self.record(
            "change",
            json!({ "file": journal::path(file), "checkpoint": journal::path(checkpoint) }),
        );
        if file == checkpoint {
            self.say(&format!(
                "file '{}' changed, resuming from it..",
                escape_path(file)
            ));
        } else {
            self.say(&format!(
                "file '{}' changed, resuming from '{}'..",
                escape_path(file),
                escape_path(checkpoint)
            ));
        }
    }

    /// The program (the running child) ended; forkmon waits for changes.
    pub fn exited(&self, wait_status: i32) {
        self.say(&format!(
            "{}, waiting for changes..",
            describe_wait_status(wait_status)
        ));
        let (status, signal) = if libc::WIFSIGNALED(wait_status) {
            (None, Some(libc::WTERMSIG(wait_status)))
        } else {
            (Some(libc::WEXITSTATUS(wait_status)), None)
        };
        self.record(
            "exit",
            json!({ "status": status, "signal": signal, "waiting": true }),
        );
    }

    /// The program ended before any checkpoint: nothing to wait for.
    pub fn exited_for_good(&self, code: i32, filter: &str) {
        self.say(&format!(
            "program exited with status {code} before opening any file to watch ({filter})"
        ));
        self.record(
            "exit",
            json!({ "status": code, "signal": null, "waiting": false }),
        );
    }

    pub fn warn(&self, text: &str) {
        self.say(text);
        self.record("warning", json!({ "message": text }));
    }
}

/// A duration as a person reads it in a status line: `0.3 ms`, `12 ms`,
/// `1.21 s`.
pub fn human_duration(duration: Duration) -> String {
    let ms = duration.as_secs_f64() * 1e3;
    if ms < 1.0 {
        format!("{ms:.2} ms")
    } else if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", ms / 1e3)
    }
}

/// A file name made safe for a terminal, as `ls -b` and strace print
/// them: text as is; a backslash doubled; `\n`, `\t` and the other C
/// escapes; other control characters as `\x1b` (C1 ones as `\u{85}`); the
/// bidirectional overrides, which reorder what follows them on screen, as
/// `\u{202e}`; bytes that are not UTF-8 as `\xff`. Unambiguous: distinct
/// names print differently.
pub fn escape(bytes: &[u8]) -> Cow<'_, str> {
    let plain = |b: &u8| (b' '..=b'~').contains(b) && *b != b'\\';
    if bytes.iter().all(plain) {
        // Most names: printable ASCII, borrowed as is.
        return String::from_utf8_lossy(bytes);
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                '\x07' => out.push_str("\\a"),
                '\x08' => out.push_str("\\b"),
                '\x0b' => out.push_str("\\v"),
                '\x0c' => out.push_str("\\f"),
                c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                c if c.is_control() || is_bidi_control(c) => {
                    out.push_str(&format!("\\u{{{:x}}}", c as u32))
                }
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    Cow::Owned(out)
}

/// Marks that make a terminal show the text after them in another order.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// [`escape`] of a path's bytes.
pub fn escape_path(path: &Path) -> Cow<'_, str> {
    escape(path.as_os_str().as_bytes())
}

/// "program exited with status 0" / "program was killed by SIGSEGV".
pub fn describe_wait_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("program exited with status {}", libc::WEXITSTATUS(status))
    } else {
        let signal = libc::WTERMSIG(status);
        match nix::sys::signal::Signal::try_from(signal) {
            Ok(signal) => format!("program was killed by {signal}"),
            Err(_) => format!("program was killed by signal {signal}"),
        }
    }
}

/// `-2` → `ENOENT`.
pub fn errno_name(ret: i64) -> String {
    let code = i32::try_from(-ret).unwrap_or(0);
    match Errno::from_raw(code) {
        Errno::UnknownErrno => format!("E{code}"),
        errno => format!("{errno:?}"),
    }
}

/// Symbolic open flags, as in strace: `O_RDONLY|O_CLOEXEC`.
pub fn open_flags(flags: u64) -> String {
    const NAMED: &[(i32, &str)] = &[
        (libc::O_CREAT, "O_CREAT"),
        (libc::O_EXCL, "O_EXCL"),
        (libc::O_NOCTTY, "O_NOCTTY"),
        (libc::O_TRUNC, "O_TRUNC"),
        (libc::O_APPEND, "O_APPEND"),
        (libc::O_NONBLOCK, "O_NONBLOCK"),
        (libc::O_SYNC, "O_SYNC"),
        (libc::O_DSYNC, "O_DSYNC"),
        (libc::O_ASYNC, "O_ASYNC"),
        (libc::O_DIRECT, "O_DIRECT"),
        (libc::O_LARGEFILE, "O_LARGEFILE"),
        (libc::O_TMPFILE, "O_TMPFILE"),
        (libc::O_DIRECTORY, "O_DIRECTORY"),
        (libc::O_NOFOLLOW, "O_NOFOLLOW"),
        (libc::O_NOATIME, "O_NOATIME"),
        (libc::O_CLOEXEC, "O_CLOEXEC"),
        (libc::O_PATH, "O_PATH"),
    ];
    let mut rest = flags as i32;
    let mut names = vec![match rest & libc::O_ACCMODE {
        libc::O_RDONLY => "O_RDONLY".to_string(),
        libc::O_WRONLY => "O_WRONLY".to_string(),
        libc::O_RDWR => "O_RDWR".to_string(),
        other => format!("{other:#o}"),
    }];
    rest &= !libc::O_ACCMODE;
    for &(bits, name) in NAMED {
        // Multi-bit flags (O_SYNC includes O_DSYNC, O_TMPFILE includes
        // O_DIRECTORY) are named once, by their widest name.
        if bits != 0 && rest & bits == bits {
            names.push(name.to_string());
            rest &= !bits;
        }
    }
    if rest != 0 {
        names.push(format!("{rest:#o}"));
    }
    names.join("|")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps each `write` call apart, as the kernel would see them.
    #[derive(Clone, Default)]
    struct Writes(std::rc::Rc<RefCell<Vec<Vec<u8>>>>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.borrow_mut().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_message_is_one_write() {
        for color in [false, true] {
            let writes = Writes::default();
            let report = Reporter::to(Box::new(writes.clone()), false, color);
            report.watch(std::path::Path::new("/w/main.lua"));
            report.exited(0);
            let writes = writes.0.borrow();
            assert_eq!(writes.len(), 2, "{writes:?}");
            for write in writes.iter() {
                let line = String::from_utf8_lossy(write);
                assert!(
                    line.contains("[forkmon]") && line.ends_with('\n'),
                    "{line:?}"
                );
                assert_eq!(line.matches('\n').count(), 1, "{line:?}");
            }
        }
        let writes = Writes::default();
        Reporter::to(Box::new(writes.clone()), true, false).exited(0);
        assert!(writes.0.borrow().is_empty(), "quiet says nothing");
    }

    #[test]
    fn escapes_names_for_the_terminal() {
        assert_eq!(escape(b"/home/me/main.lua"), "/home/me/main.lua");
        assert!(matches!(escape(b"/plain"), Cow::Borrowed(_)));
        assert_eq!(
            escape(b"x\x1b[31mred\nline\xff"),
            "x\\x1b[31mred\\nline\\xff"
        );
        assert_eq!(escape(b"a\\nb"), "a\\\\nb", "a backslash is not a newline");
        assert_eq!(escape(b"tab\there\r\x07\x7f"), "tab\\there\\r\\a\\x7f");
        assert_eq!(escape("été".as_bytes()), "été");
        assert_eq!(escape("\u{85}|\u{202e}".as_bytes()), "\\u{85}|\\u{202e}");
        // A truncated multi-byte character: its bytes, each.
        assert_eq!(escape(b"\xc3"), "\\xc3");
    }

    fn record_of(path: &[u8]) -> OpenRecord {
        // SAFETY: OpenRecord is plain data, valid all zeroes.
        let mut record: OpenRecord = unsafe { std::mem::zeroed() };
        record.path[..path.len()].copy_from_slice(path);
        record.path_len = path.len() as _;
        record.ret = 3;
        record.comm[..3].copy_from_slice(b"cat");
        record
    }

    #[test]
    fn names_that_are_not_utf8_keep_their_bytes_in_json() {
        let name = b"x\x1b[31mred\nline\xff";
        let abs = std::ffi::OsStr::from_bytes(b"/d/x\x1b[31mred\nline\xff");
        let line = OpenLine::new(&record_of(name), Some(abs.into()), 0);
        let json: serde_json::Value = serde_json::from_str(&line.to_json()).unwrap();
        assert_eq!(json["path"], "x\u{1b}[31mred\nline\u{fffd}");
        let bytes: Vec<u8> = serde_json::from_value(json["path_bytes"].clone()).unwrap();
        assert_eq!(bytes, name);
        let abs_bytes: Vec<u8> = serde_json::from_value(json["abs_path_bytes"].clone()).unwrap();
        assert_eq!(abs_bytes, abs.as_bytes());
        let row = line.to_table_row();
        assert!(row.ends_with(" /d/x\\x1b[31mred\\nline\\xff"), "{row}");
        assert!(!row.contains(['\x1b', '\n']), "{row}");

        // UTF-8 names: no extra fields.
        let plain = OpenLine::new(&record_of(b"a.lua"), Some("/d/a.lua".into()), 0);
        let json: serde_json::Value = serde_json::from_str(&plain.to_json()).unwrap();
        assert!(json.get("path_bytes").is_none() && json.get("abs_path_bytes").is_none());
    }

    #[test]
    fn names_flags_like_strace() {
        assert_eq!(open_flags(0), "O_RDONLY");
        assert_eq!(
            open_flags((libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC) as u64),
            "O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC"
        );
        assert_eq!(open_flags(libc::O_SYNC as u64), "O_RDONLY|O_SYNC");
        assert_eq!(
            open_flags((libc::O_RDWR | libc::O_TMPFILE) as u64),
            "O_RDWR|O_TMPFILE"
        );
    }

    #[test]
    fn describes_wait_statuses() {
        assert_eq!(describe_wait_status(3 << 8), "program exited with status 3");
        assert_eq!(
            describe_wait_status(libc::SIGSEGV),
            "program was killed by SIGSEGV"
        );
    }

    #[test]
    fn names_errors() {
        assert_eq!(errno_name(-2), "ENOENT");
        assert_eq!(errno_name(-13), "EACCES");
        assert_eq!(errno_name(-4000), "E4000");
    }
}
