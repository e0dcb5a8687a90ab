//! Processes found in /proc: a run's tree (by an environment variable its
//! processes inherit), a process's children, zombies left unreaped.
use std::fs;

/// Pids of live processes whose environment holds `entry`.
pub fn processes_with_env(entry: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for proc_entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = proc_entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(environ) = fs::read(proc_entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|&b| b == 0)
            .any(|var| var == entry.as_bytes())
        {
            let zombie = fs::read_to_string(proc_entry.path().join("stat"))
                .map(|stat| {
                    stat.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(true);
            if !zombie {
                found.push(pid);
            }
        }
    }
    found
}

/// Zombies whose parent is `parent`.
pub fn zombies_of(parent: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for proc_entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = proc_entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(proc_entry.path().join("stat")) else {
            continue;
        };
        let mut fields = stat.rsplit(')').next().unwrap_or("").split_whitespace();
        let (state, ppid) = (fields.next(), fields.next());
        if state == Some("Z") && ppid.and_then(|p| p.parse().ok()) == Some(parent) {
            found.push(pid);
        }
    }
    found
}

/// The children of `pid`'s main thread (those of its other threads are not
/// listed): none once it has exited.
pub fn children_of(pid: i32) -> Vec<i32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}
