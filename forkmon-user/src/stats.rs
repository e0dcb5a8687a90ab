//! `forkmon run --stats`: at the end of the run, what each checkpoint did
//! for it — when it was made, how often the program resumed from it, the
//! start-up each resume skipped, and the time saved in all.
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::output::{escape_path, human_duration};

/// One checkpoint's record, by file: it outlives the checkpoint process
/// (a resume from an earlier one makes it again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointStats {
    pub file: PathBuf,
    /// When it was first made: the program's time from its launch to that
    /// open (time spent waiting for changes left out).
    pub made_at: Duration,
    pub resumes: u32,
    /// The start-up a resume from it skips (the latest figure).
    pub skipped: Duration,
    /// What all its resumes skipped.
    pub saved: Duration,
}

/// The run's checkpoints, in the order they were first made, and its
/// restarts.
#[derive(Debug, Default)]
pub struct Stats {
    checkpoints: Vec<CheckpointStats>,
    restarts: u32,
}

impl Stats {
    /// A checkpoint was made at `file`, skipping `skipped` of start-up.
    pub fn made(&mut self, file: &Path, skipped: Duration) {
        match self.checkpoints.iter_mut().find(|c| c.file == file) {
            Some(known) => known.skipped = skipped,
            None => self.checkpoints.push(CheckpointStats {
                file: file.to_path_buf(),
                made_at: skipped,
                resumes: 0,
                skipped,
                saved: Duration::ZERO,
            }),
        }
    }

    /// The program resumed from the checkpoint at `file`.
    pub fn resumed(&mut self, file: &Path) {
        if let Some(known) = self.checkpoints.iter_mut().find(|c| c.file == file) {
            known.resumes += 1;
            known.saved += known.skipped;
        }
    }

    pub fn restarted(&mut self) {
        self.restarts += 1;
    }

    /// The table, for people.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let width = self
            .checkpoints
            .iter()
            .map(|c| escape_path(&c.file).chars().count())
            .max()
            .unwrap_or(4)
            .max(4);
        let _ = writeln!(
            out,
            "{:<width$}  {:>10}  {:>7}  {:>16}  {:>10}",
            "FILE", "MADE AT", "RESUMES", "SKIPPED/RESUME", "SAVED"
        );
        for c in &self.checkpoints {
            let _ = writeln!(
                out,
                "{:<width$}  {:>10}  {:>7}  {:>16}  {:>10}",
                escape_path(&c.file),
                human_duration(c.made_at),
                c.resumes,
                human_duration(c.skipped),
                human_duration(c.saved)
            );
        }
        let total: Duration = self.checkpoints.iter().map(|c| c.saved).sum();
        let resumes: u32 = self.checkpoints.iter().map(|c| c.resumes).sum();
        let _ = writeln!(
            out,
            "{} checkpoints, {resumes} resumes, {} restarts: {} of start-up saved",
            self.checkpoints.len(),
            self.restarts,
            human_duration(total)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumes_add_up_what_they_skipped_by_file() {
        let mut stats = Stats::default();
        let (a, b) = (Path::new("/w/a.lua"), Path::new("/w/b.lua"));
        stats.made(a, Duration::from_millis(10));
        stats.made(b, Duration::from_millis(1200));
        stats.resumed(b);
        stats.resumed(b);
        // Made again by a resumed run: the first time stays.
        stats.made(b, Duration::from_millis(1100));
        stats.resumed(b);
        stats.restarted();
        let b_stats = &stats.checkpoints[1];
        assert_eq!(b_stats.resumes, 3);
        assert_eq!(b_stats.made_at, Duration::from_millis(1200));
        assert_eq!(b_stats.saved, Duration::from_millis(3500));
        let table = stats.table();
        assert!(table.starts_with("FILE"), "{table}");
        assert!(table.contains("/w/b.lua"), "{table}");
        assert!(
            table.ends_with("2 checkpoints, 3 resumes, 1 restarts: 3.50 s of start-up saved\n"),
            "{table}"
        );
    }
}
