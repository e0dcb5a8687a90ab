//! What forkmon reads of other processes in `/proc`.
use std::{fs, io};

/// The fields of `/proc/PID/stat` after the command name (field 2, which
/// may hold spaces, ')' and bytes that are not UTF-8), from field 3 on.
fn stat_fields(pid: i32) -> Option<String> {
    Some(read_stat(&format!("/proc/{pid}/stat"))?.1)
}

/// A `stat` file's command name (lossy) and its fields from field 3 on.
fn read_stat(path: &str) -> Option<(String, String)> {
    let mut buf = [0u8; 1024];
    let len = io::Read::read(&mut fs::File::open(path).ok()?, &mut buf).ok()?;
    let start = buf[..len].iter().position(|b| *b == b'(')?;
    let end = buf[..len].iter().rposition(|b| *b == b')')?;
    let name = String::from_utf8_lossy(buf.get(start + 1..end)?).into_owned();
    Some((
        name,
        std::str::from_utf8(&buf[end + 1..len]).ok()?.to_owned(),
    ))
}

/// One thread of a process, as `/proc/PID/task/TID/stat` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thread {
    pub tid: i32,
    /// Its name (`comm`): the program's, unless the thread set its own.
    pub name: String,
    /// Its state letter: `R` running, `S` asleep, `D` in uninterruptible
    /// I/O, `T`/`t` stopped or traced, …
    pub state: char,
}

/// `pid`'s threads (none if it is gone). A listing and one read per
/// thread: only for a process [`thread_count`] found more than one in.
pub fn threads(pid: i32) -> Vec<Thread> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let tid = task.file_name().to_str()?.parse().ok()?;
            let (name, fields) = read_stat(&format!("/proc/{pid}/task/{tid}/stat"))?;
            let state = fields.split_whitespace().next()?.chars().next()?;
            Some(Thread { tid, name, state })
        })
        .collect()
}

/// `pid`'s parent if `pid` is alive: not gone, not a zombie, and not on
/// its way out (`PF_EXITING`: the eBPF program forgets a process at the
/// start of its exit).
pub fn alive_parent(pid: i32) -> Option<i32> {
    const PF_EXITING: u64 = 0x4;
    let fields = stat_fields(pid)?;
    let mut fields = fields.split_whitespace();
    let state = fields.next()?; // field 3
    let parent = fields.next()?.parse().ok()?; // 4
    let flags: u64 = fields.nth(4)?.parse().ok()?; // 9
    let dead = matches!(state, "Z" | "X" | "x");
    (!dead && flags & PF_EXITING == 0).then_some(parent)
}

/// The process's threads, from one `stat` of `/proc/PID/task` (on the
/// checkpoint's path): procfs gives that directory 2 links plus one per
/// thread, and a stat costs a quarter of reading `/proc/PID/stat`.
pub fn thread_count(pid: i32) -> usize {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata(format!("/proc/{pid}/task"))
        .map_or(1, |m| (m.nlink() as usize).saturating_sub(2).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields_are_read_after_the_command_name() {
        let me = std::process::id() as i32;
        assert_eq!(alive_parent(me), Some(nix::unistd::getppid().as_raw()));
        // Other tests run in threads of this process: only a bound here.
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let extra = std::thread::spawn(move || stopped.recv());
        assert!(thread_count(me) >= 2);
        let all = threads(me);
        assert!(all.len() >= 2, "{all:?}");
        let this = nix::unistd::gettid().as_raw();
        let reader = all.iter().find(|t| t.tid == this).expect("this thread");
        assert_eq!(reader.state, 'R', "reading /proc: {all:?}");
        assert!(!reader.name.is_empty());
        stop.send(()).unwrap();
        extra.join().unwrap().unwrap();
        let mut single = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = single.id() as i32;
        assert_eq!(thread_count(pid), 1);
        let sleep = threads(pid);
        assert_eq!(sleep.len(), 1, "{sleep:?}");
        assert_eq!((sleep[0].tid, sleep[0].name.as_str()), (pid, "sleep"));
        assert_eq!(alive_parent(pid), Some(me));
        single.kill().unwrap();
        // A zombie until reaped: not alive.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while alive_parent(pid).is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(alive_parent(pid), None, "a zombie is not alive");
        single.wait().unwrap();
        assert_eq!(alive_parent(pid), None);
    }
}
