//! Files the program's tree reads that are no checkpoint, and restarts:
//! each such file is watched, and a change to it resumes from the
//! checkpoint its reader ran below, or restarts the program from scratch
//! where none serves (docs/mechanism.md, "Restarts").
use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use log::{debug, warn};

use super::{KILL_TIMEOUT, Next, Program, Supervisor, System};
use crate::{output::escape_path, watcher::Identity};

/// A successful read-only open that was not stopped (its process is not
/// armed: a subprocess, a program without the stub), of a file that may
/// match the filter.
#[derive(Debug, Clone)]
pub struct ReadOpen {
    pub pid: i32,
    pub path: Option<PathBuf>,
    pub reader: Reader,
}

/// Who opened a file: what a restart names, and where in the tree it ran.
#[derive(Debug, Clone, Default)]
pub struct Reader {
    /// Its command name.
    pub comm: String,
    /// Its parent, grandparent, … as forked in the tree (an orphan keeps
    /// the parent it was forked by): which checkpoint it ran below.
    pub ancestors: Vec<i32>,
}

/// A watched file that is no checkpoint: where a change to it resumes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ReadFile {
    /// The checkpoint its reader ran below (a resume from it reads the file
    /// again), or `None`: it was read before any checkpoint, or outside
    /// them (a start-up server), so only a restart reads it again.
    pub(super) resume_at: Option<usize>,
    /// Why no checkpoint serves it, for the restart's line.
    pub(super) why: String,
    /// Read below a process counted as the start-up of a checkpoint later
    /// than `resume_at`'s: (that checkpoint's pid, the process). A child
    /// the stub forked early is in the group when the start-up is read,
    /// and known as the checkpoint's own only once it registers, which may
    /// come after its subprocesses' reads (`make`'s `cat` of a source).
    pub(super) below_startup: Option<(i32, i32)>,
}

/// A restart from scratch that a change asked for: carried out by the
/// caller, which launches the program (see [`Supervisor::take_restart`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restart {
    /// The file that changed, if a change asked for it.
    pub file: Option<PathBuf>,
    pub why: String,
}

impl<S: System> Supervisor<S> {
    /// A file the tree read that is no checkpoint (see [`ReadFile`]), if it
    /// passes the filter: watched from now on.
    pub fn on_read(&mut self, open: ReadOpen) {
        let Some(path) = open.path else {
            return;
        };
        // A bytecode cache stands for its source, as for a checkpoint.
        let path =
            crate::python::source_of_cache(&path, self.pycache_prefix.as_deref()).unwrap_or(path);
        if !self.filter.matches(&path)
            || self.chain.iter().any(|c| c.file == path)
            || self.outputs.contains(&path)
        {
            return;
        }
        // What the path names now: the process did not wait, and its fd
        // may name another file by now (a compiler opens hundreds).
        let Some(identity) = self.system.file(&path) else {
            return;
        };
        self.note_read(&path, identity, open.pid, &open.reader, None);
    }

    /// The tree opened `path` to write it: it is the program's output (a
    /// build's binary, a log), not its input — never watched as a file it
    /// read, or the program would restart itself by running.
    pub fn on_write(&mut self, path: &Path) {
        if !self.outputs.insert(path.to_path_buf()) {
            return;
        }
        if self.read.remove(path).is_some() && !self.chain.iter().any(|c| c.file == path) {
            debug!("'{}' is written by the tree: not watched", path.display());
            self.system.unwatch(path);
        }
    }

    /// Watches `path`, read by `pid`, as a file that is no checkpoint:
    /// `why` a checkpoint could not be made at it, if that was tried.
    pub(super) fn note_read(
        &mut self,
        path: &Path,
        identity: Identity,
        pid: i32,
        reader: &Reader,
        why: Option<String>,
    ) {
        let resume_at = if self.restart_only {
            None
        } else {
            self.region_of(pid, &reader.ancestors)
        };
        let refused = why.is_some();
        if let Some(why) = &why {
            self.report.refused(path, why);
        }
        let why = match why {
            _ if self.restart_only => "--restart".to_string(),
            Some(why) => why,
            None if Some(pid) == self.running_pid() && !self.stubbed => format!(
                "{} runs without forkmon's stub: statically linked, or started without \
                 its environment",
                reader.comm
            ),
            None if Some(pid) == self.running_pid() => format!("read by {}", reader.comm),
            None => format!("read by {}, pid {pid}, a subprocess", reader.comm),
        };
        let below_startup = self
            .startup_between(pid, &reader.ancestors)
            .filter(|&(index, ..)| !self.restart_only && resume_at.is_none_or(|at| index > at))
            .map(|(_, checkpoint, through)| (checkpoint, through));
        let read = ReadFile {
            resume_at,
            why,
            below_startup,
        };
        match self.read.get_mut(path) {
            // The earliest reader decides: None (a restart) first; the
            // reason a checkpoint was refused tells more than a look.
            Some(known) if known.resume_at < read.resume_at => return,
            Some(known) if known.resume_at == read.resume_at => {
                if refused {
                    known.why = read.why;
                }
                return;
            }
            Some(_) => {}
            None => match self.system.watch(path, Some(identity)) {
                Ok(()) => self.report.watch_read(path),
                Err(e) => {
                    self.report.warn(&format!(
                        "{e}; changes to '{}' will go unnoticed",
                        escape_path(path)
                    ));
                    return;
                }
            },
        }
        self.read.insert(path.to_path_buf(), read);
    }

    /// The checkpoints `pid` (with these ancestors, nearest first) descends
    /// from, the latest first, each with its child on the way down to
    /// `pid`.
    fn descents<'a>(
        &'a self,
        pid: i32,
        ancestors: &'a [i32],
    ) -> impl Iterator<Item = (usize, i32)> + 'a {
        let lineage = move || std::iter::once(pid).chain(ancestors.iter().copied());
        self.chain
            .iter()
            .enumerate()
            .rev()
            .filter_map(move |(index, checkpoint)| {
                let at = lineage().position(|p| p == checkpoint.pid)?;
                Some((index, lineage().nth(at.checked_sub(1)?)?))
            })
    }

    /// The latest checkpoint that `pid` runs below: one whose fork leads to
    /// it, other than the start-up the checkpoint was made with. A resume
    /// from there runs it again.
    pub(super) fn region_of(&self, pid: i32, ancestors: &[i32]) -> Option<usize> {
        self.descents(pid, ancestors)
            .find(|&(index, through)| !self.chain[index].startup.contains(&through))
            .map(|(index, _)| index)
    }

    /// The latest checkpoint that `pid` descends from through a process of
    /// its start-up: (its index, its pid, that process).
    fn startup_between(&self, pid: i32, ancestors: &[i32]) -> Option<(usize, i32, i32)> {
        self.descents(pid, ancestors)
            .find(|&(index, through)| self.chain[index].startup.contains(&through))
            .map(|(index, through)| (index, self.chain[index].pid, through))
    }

    /// `child`, counted in checkpoint `index`'s start-up, registered as its
    /// own child: what was read below it resumes from that checkpoint.
    pub(super) fn reads_below_child(&mut self, index: usize, child: i32) {
        let checkpoint = self.chain[index].pid;
        for read in self.read.values_mut() {
            if read.below_startup == Some((checkpoint, child)) {
                read.below_startup = None;
                if read.resume_at.is_none_or(|at| at < index) {
                    read.resume_at = Some(index);
                }
            }
        }
    }

    /// The restart `files` ask for, if one of them is read where no
    /// checkpoint serves.
    pub(super) fn restart_for(&self, files: &[PathBuf]) -> Option<Restart> {
        files.iter().find_map(|file| {
            let read = self
                .read
                .get(file)
                .filter(|read| read.resume_at.is_none())?;
            Some(Restart {
                file: Some(file.clone()),
                why: read.why.clone(),
            })
        })
    }

    /// `--keys`' r: resume from the latest checkpoint without an edit, or
    /// restart when there is none.
    pub fn resume_latest(&mut self) -> anyhow::Result<()> {
        let latest = match self.program {
            Program::Stopped(stop) => Some(stop.at),
            _ => self.chain.len().checked_sub(1),
        };
        match latest {
            Some(index) => {
                self.trigger = None;
                self.by_key = true;
                self.resume_from(index)
            }
            None => {
                self.restart_now("no checkpoint to resume from");
                Ok(())
            }
        }
    }

    /// Asks for a restart from scratch, `why` (`--keys`' R).
    pub fn restart_now(&mut self, why: &str) {
        self.restart = Some(Restart {
            file: None,
            why: why.to_string(),
        });
    }

    /// The restart a change asked for, to be carried out now: stop the
    /// program with [`stop_for_restart`](Self::stop_for_restart), launch it
    /// again, and tell [`restarted`](Self::restarted).
    pub fn take_restart(&mut self) -> Option<Restart> {
        self.restart.take()
    }

    /// Stops everything the program runs, for a restart: the checkpoints
    /// and standbys at once (they run no code of the program's, which a
    /// signal would wake), what runs the program with `signal`, then
    /// SIGKILL for what is left after `grace`. Returns once all of it is
    /// gone, or still exiting after SIGKILL.
    pub fn stop_for_restart(
        &mut self,
        restart: &Restart,
        root: S::Group,
        signal: nix::sys::signal::Signal,
        grace: Duration,
    ) -> anyhow::Result<()> {
        self.restart = None;
        self.stats.restarted();
        self.report
            .restarting(restart.file.as_deref(), &restart.why);
        // The checkpoints and standbys wait frozen in their stubs: a signal
        // would run the program's handler there. Their children die with
        // them (PR_SET_PDEATHSIG), so they go last.
        let frozen: HashSet<i32> = self
            .chain
            .iter()
            .flat_map(|c| match c.next {
                Next::Standby(standby) => vec![c.pid, standby],
                _ => vec![c.pid],
            })
            .collect();
        let others = |system: &S| -> Vec<i32> {
            let mut all = system.all_members(root);
            all.retain(|pid| !frozen.contains(pid));
            all
        };
        for pid in others(&self.system) {
            self.system.signal(pid, signal);
        }
        let deadline = Instant::now() + grace;
        while !others(&self.system).is_empty() {
            if Instant::now() >= deadline {
                debug!("the program outlived {signal} for {grace:?}: SIGKILL");
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.system.kill_now(root)?;
        if !self.system.wait_empty(root, KILL_TIMEOUT)? {
            warn!("the program is still exiting after SIGKILL");
        }
        self.system.reap_empty();
        Ok(())
    }

    /// The program was launched again, as `target` in `root`: everything
    /// known of the last run is forgotten, and its files will be watched
    /// again as the new run reads them.
    pub fn restarted(&mut self, target: i32, root: S::Group) {
        self.cut_chain(0);
        for (file, _) in self.read.drain() {
            self.system.unwatch(&file);
        }
        for pid in self.registered.drain() {
            self.system.disconnect(pid);
        }
        self.unregistered.clear();
        self.threads_left.clear();
        self.checkpoints_died = false;
        self.stubbed = false;
        self.target = target;
        self.program = Program::Running {
            pid: target,
            group: root,
        };
        self.run_clock = (Instant::now(), Duration::ZERO);
        self.resuming = None;
        self.last_resumed = None;
        self.trigger = None;
        self.system.prepare(root);
    }
}
