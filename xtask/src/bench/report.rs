//! Statistics over a figure's runs, and the report: the table printed on
//! stdout and `target/bench/report.json`.
use std::{fmt, fs, thread, time::Duration};

use serde_json::json;

use crate::is_root;

#[derive(Clone, Copy)]
pub struct Stats {
    pub median: f64,
    p90: f64,
    p99: f64,
    min: f64,
    max: f64,
    runs: usize,
}

impl Stats {
    pub fn of(samples: &[f64]) -> Option<Stats> {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        // Nearest rank.
        let rank = |p: f64| sorted[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Stats {
            median,
            p90: rank(0.90),
            p99: rank(0.99),
            min: sorted[0],
            max: sorted[n - 1],
            runs: n,
        })
    }
}

/// `f(a[i], b[i])` for the runs both measured.
pub fn paired(a: &[f64], b: &[f64], f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
}

struct Row {
    name: String,
    unit: &'static str,
    stats: Stats,
}

struct Goal {
    text: String,
    /// None: not measured (an error, see the section's errors).
    measured: Option<f64>,
    limit: f64,
    unit: &'static str,
}

impl Goal {
    fn met(&self) -> Option<bool> {
        self.measured.map(|m| m <= self.limit)
    }
}

/// One figure: its rows, its goals, what went wrong.
pub struct Section {
    title: &'static str,
    notes: Vec<String>,
    rows: Vec<Row>,
    goals: Vec<Goal>,
    pub errors: Vec<String>,
}

impl Section {
    pub fn new(title: &'static str) -> Section {
        Section {
            title,
            notes: Vec::new(),
            rows: Vec::new(),
            goals: Vec::new(),
            errors: Vec::new(),
        }
    }

    pub fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// Adds a row when there are samples; returns its statistics.
    pub fn row(
        &mut self,
        name: impl Into<String>,
        unit: &'static str,
        samples: &[f64],
    ) -> Option<Stats> {
        let stats = Stats::of(samples)?;
        self.rows.push(Row {
            name: name.into(),
            unit,
            stats,
        });
        Some(stats)
    }

    pub fn goal(
        &mut self,
        text: impl Into<String>,
        measured: Option<f64>,
        limit: f64,
        unit: &'static str,
    ) {
        self.goals.push(Goal {
            text: text.into(),
            measured,
            limit,
            unit,
        });
    }

    /// Records `result`'s error, if any, and goes on.
    pub fn attempt(&mut self, what: impl fmt::Display, result: anyhow::Result<()>) {
        if let Err(e) = result {
            self.errors.push(format!("{what}: {e:#}"));
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let rows: Vec<_> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "name": r.name, "unit": r.unit, "median": r.stats.median,
                    "p90": r.stats.p90, "p99": r.stats.p99, "min": r.stats.min,
                    "max": r.stats.max, "runs": r.stats.runs,
                })
            })
            .collect();
        let goals: Vec<_> = self
            .goals
            .iter()
            .map(|g| {
                json!({
                    "goal": g.text, "measured": g.measured, "limit": g.limit,
                    "unit": g.unit, "met": g.met(),
                })
            })
            .collect();
        json!({
            "figure": self.title, "notes": self.notes, "rows": rows,
            "goals": goals, "errors": self.errors,
        })
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "\n== {} ==", self.title)?;
        for note in &self.notes {
            writeln!(f, "   {note}")?;
        }
        writeln!(
            f,
            "   {:<56} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>5}",
            "", "unit", "median", "p90", "p99", "min", "max", "runs"
        )?;
        for r in &self.rows {
            let s = r.stats;
            writeln!(
                f,
                "   {:<56} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>5}",
                r.name,
                r.unit,
                num(s.median),
                num(s.p90),
                num(s.p99),
                num(s.min),
                num(s.max),
                s.runs
            )?;
        }
        for g in &self.goals {
            let (verdict, measured) = match (g.met(), g.measured) {
                (Some(true), Some(m)) => ("met", format!("{} {}", num(m), g.unit)),
                (Some(false), Some(m)) => ("NOT MET", format!("{} {}", num(m), g.unit)),
                _ => ("n/a", "not measured (see the errors)".into()),
            };
            writeln!(
                f,
                "   goal [{verdict}] {}: {measured} (limit {} {})",
                g.text,
                num(g.limit),
                g.unit
            )?;
        }
        for e in &self.errors {
            writeln!(f, "   ERROR {e}")?;
        }
        Ok(())
    }
}

/// Four significant digits or so.
fn num(x: f64) -> String {
    match x.abs() {
        a if a >= 1000.0 => format!("{x:.0}"),
        a if a >= 100.0 => format!("{x:.1}"),
        a if a >= 10.0 => format!("{x:.2}"),
        _ => format!("{x:.3}"),
    }
}

pub struct Report {
    pub quick: bool,
    pub sections: Vec<Section>,
    /// The figures alone, and with set-up and builds.
    pub measured: Duration,
    pub total: Duration,
    /// /proc/loadavg before and after.
    pub load: (String, String),
}

impl Report {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "quick": self.quick,
            "measured_s": self.measured.as_secs_f64(),
            "total_s": self.total.as_secs_f64(),
            "nproc": thread::available_parallelism().map_or(0, |n| n.get()),
            "kernel": fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default().trim(),
            "loadavg_before": self.load.0,
            "loadavg_after": self.load.1,
            "root": is_root(),
            "figures": self.sections.iter().map(Section::to_json).collect::<Vec<_>>(),
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "\nforkmon bench ({}): {:.0} s measuring, {:.0} s in all; load average {} before, {} after",
            if self.quick { "--quick" } else { "full" },
            self.measured.as_secs_f64(),
            self.total.as_secs_f64(),
            self.load.0,
            self.load.1
        )?;
        for section in &self.sections {
            write!(f, "{section}")?;
        }
        let goals = self.sections.iter().flat_map(|s| &s.goals);
        let met = goals.clone().filter(|g| g.met() == Some(true)).count();
        let failed = self.sections.iter().map(|s| s.errors.len()).sum::<usize>();
        writeln!(
            f,
            "\ngoals met: {met} of {}; errors: {failed}",
            goals.count()
        )
    }
}

pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
