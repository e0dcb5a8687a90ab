//! One module per figure: what it runs, how often, and the rows and goals
//! it adds to its [`Section`].
use std::{fmt, time::Duration};

use super::{
    harness::{Bench, SETTLE},
    report::Section,
};

mod checkpoint;
mod memory;
mod openat;
mod peers;
mod real;
mod restart;
mod resume;
mod scale;

pub type Figure = fn(&Bench, &mut Section) -> anyhow::Result<()>;

pub const FIGURES: [(&str, Figure); 8] = [
    ("1. openat+close cost", openat::openat_cost),
    ("2. checkpoint cost", checkpoint::checkpoint_cost),
    ("3. resume latency", resume::resume_latency),
    ("4. full restart vs resume", restart::full_restart),
    ("5. memory of a checkpoint", memory::memory),
    ("6. scale: 1000 checkpoints", scale::scale),
    (
        "7. real programs and the physical limit",
        real::real_programs,
    ),
    ("8. restarts: forkmon and its peers", peers::restart_peers),
];

/// Figures 5 and 3 (its goal, `--no-standby`) use one representative size.
const MEMORY_MB: u64 = 100;

#[derive(Clone, Copy)]
struct Delays {
    restart_ms: u64,
    ignore_ms: u64,
}

impl Delays {
    const ZERO: Delays = Delays {
        restart_ms: 0,
        ignore_ms: 0,
    };
    const DEFAULT: Delays = Delays {
        restart_ms: 50,
        ignore_ms: 200,
    };

    fn options(self) -> Vec<String> {
        vec![
            "--restart-delay".into(),
            self.restart_ms.to_string(),
            "--ignore-delay".into(),
            self.ignore_ms.to_string(),
        ]
    }

    /// Changes this far apart are never postponed by the ignore delay.
    fn spacing(self) -> Duration {
        Duration::from_millis(self.restart_ms + self.ignore_ms) + SETTLE
    }
}

impl fmt::Display for Delays {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "delays {}/{}", self.restart_ms, self.ignore_ms)
    }
}
