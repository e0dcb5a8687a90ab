//! Scheduling policy of the processes forkmon keeps waiting.
//!
//! Checkpoints wait at `SCHED_IDLE`, and so do the standby children they
//! fork: forking a standby, and the exit of killed checkpoints (thousands of
//! them, after a resume from the first of a long chain), then take only CPU
//! time nothing else wants, and never delay the program that runs. A process
//! that runs the program gets the program's own policy back first.
use std::io;

/// A process's scheduling policy and its parameter. The nice value is not
/// part of it: changing the policy keeps it.
#[derive(Clone, Copy)]
pub struct Policy {
    policy: libc::c_int,
    priority: libc::c_int,
}

impl Policy {
    /// The policy `pid` runs with now.
    pub fn of(pid: i32) -> io::Result<Policy> {
        // SAFETY: sched_getscheduler takes a pid and returns an int.
        let policy = unsafe { libc::sched_getscheduler(pid) };
        if policy < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param the call writes into.
        if unsafe { libc::sched_getparam(pid, &mut param) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Policy {
            // The reset-on-fork flag is the program's business, not ours.
            policy: policy & !libc::SCHED_RESET_ON_FORK,
            priority: param.sched_priority,
        })
    }

    /// Linux's default.
    pub const NORMAL: Policy = Policy {
        policy: libc::SCHED_OTHER,
        priority: 0,
    };

    /// Waits at idle priority.
    pub const IDLE: Policy = Policy {
        policy: libc::SCHED_IDLE,
        priority: 0,
    };

    /// Gives `pid` this policy if it can: a process that has just exited
    /// needs none, and a failure only costs priority.
    pub fn give(&self, pid: i32) {
        if let Err(e) = self.apply(pid) {
            log::debug!("cannot set the scheduling policy of {pid}: {e}");
        }
    }

    /// Gives `pid` this policy.
    pub fn apply(&self, pid: i32) -> io::Result<()> {
        let param = libc::sched_param {
            sched_priority: self.priority,
        };
        // SAFETY: `param` is a valid sched_param the call only reads.
        if unsafe { libc::sched_setscheduler(pid, self.policy, &param) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn idle_and_back_keeps_the_nice_value() {
        let mut child = Command::new("nice")
            .args(["-n", "7", "sleep", "10"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // `nice` execs sleep: wait until it has.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap() != "sleep\n" {
            assert!(std::time::Instant::now() < deadline, "nice did not exec");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let original = Policy::of(pid).unwrap();
        assert_eq!(original.policy, libc::SCHED_OTHER);
        Policy::IDLE.apply(pid).unwrap();
        assert_eq!(Policy::of(pid).unwrap().policy, libc::SCHED_IDLE);
        original.apply(pid).unwrap();
        assert_eq!(Policy::of(pid).unwrap().policy, libc::SCHED_OTHER);
        // SAFETY: getpriority with integer arguments.
        let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, pid as libc::id_t) };
        assert_eq!(nice, 7);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
