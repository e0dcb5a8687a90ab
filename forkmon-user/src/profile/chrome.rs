//! `--trace`: the run as Chrome trace-event JSON, for Perfetto and
//! chrome://tracing (the "JSON Object Format" of the Trace Event Format:
//! `ph` `X` complete events, `i` instants, `M` metadata; times in µs).
//!
//! Each process is a span on its own track; each open an instant on its
//! thread's track, named by its file, with categories `matched` and
//! `checkpoint` marking the filter's files and the opens where a
//! checkpoint is possible. The program's process has one more track,
//! "start-up skipped", with a span from the start to each of the best
//! checkpoints: the time a resume from there saves.
use serde_json::{Value, json};

use super::analysis::{Origin, Possible, Profile, command_line};

/// The synthetic thread id of the "start-up skipped" track: above any
/// real tid (`pid_max` is at most 2^22).
const SKIPPED_TRACK: i64 = 1 << 30;
/// Most spans on that track.
const MAX_SKIPPED: usize = 20;

fn us(ms: f64) -> f64 {
    (ms * 1000.0).round()
}

pub fn render(profile: &Profile) -> String {
    let mut events: Vec<Value> = Vec::new();
    let duration = profile.summary.duration_ms;
    for (order, process) in profile.processes.iter().enumerate() {
        let name = format!("{} {}", process.pid, process.comm);
        events.push(
            json!({"ph": "M", "name": "process_name", "pid": process.pid,
                           "args": {"name": name}}),
        );
        events.push(
            json!({"ph": "M", "name": "process_sort_index", "pid": process.pid,
                           "args": {"sort_index": order}}),
        );
        let end = process.end_ms.unwrap_or(duration).max(process.start_ms);
        events.push(json!({
            "ph": "X", "name": process.comm, "cat": "process",
            "pid": process.pid, "tid": process.pid,
            "ts": us(process.start_ms), "dur": us(end - process.start_ms),
            "args": {"pid": process.pid, "parent": process.parent, "opens": process.opens,
                     "program": process.program, "stub_registered_ms": process.stub_ms},
        }));
        for exec in &process.execs {
            events.push(json!({
                "ph": "i", "s": "p", "name": format!("exec {}", exec.comm), "cat": "exec",
                "pid": process.pid, "tid": process.pid, "ts": us(exec.ms),
            }));
        }
    }
    // The open where each file's checkpoint would be made: its first
    // possible one.
    let mut checkpoint_seen = vec![false; profile.files.len()];
    for open in &profile.opens {
        let file = &profile.files[open.file];
        let mut categories = vec!["open"];
        if file.filter {
            categories.push("matched");
        }
        let checkpoint = file.checkpoint.possible != Possible::No
            && file.checkpoint.skips_ms == Some(open.ms)
            && !std::mem::replace(&mut checkpoint_seen[open.file], true);
        if checkpoint {
            categories.push("checkpoint");
        }
        let mut event = json!({
            "ph": "i", "s": "t", "name": file.path.to_string_lossy(),
            "cat": categories.join(","),
            "pid": open.pid, "tid": open.tid, "ts": us(open.ms),
            "args": {"outcome": open.outcome, "opens_of_file": file.opens,
                     "filter": file.filter, "origin": file.origin,
                     "checkpoint": file.checkpoint.possible, "why": file.checkpoint.why},
        });
        // chrome://tracing's reserved colour names (Perfetto picks its own).
        if checkpoint {
            event["cname"] = "good".into();
            event["args"]["skips_ms"] = open.ms.into();
        } else if file.filter {
            event["cname"] = "yellow".into();
        } else if open.outcome != "ok" {
            event["cname"] = "grey".into();
        }
        events.push(event);
    }
    if let Some(program) = profile.processes.first() {
        let mut skipped: Vec<_> = profile
            .files
            .iter()
            .filter(|f| f.checkpoint.possible != Possible::No)
            .filter(|f| f.origin == Origin::User || f.filter)
            .collect();
        skipped.sort_by(|a, b| b.skips().total_cmp(&a.skips()));
        skipped.truncate(MAX_SKIPPED);
        if !skipped.is_empty() {
            events.push(json!({"ph": "M", "name": "thread_name", "pid": program.pid,
                               "tid": SKIPPED_TRACK,
                               "args": {"name": "start-up each checkpoint skips"}}));
        }
        // Longest first: spans that all start at 0 nest, as a track needs.
        for file in skipped {
            let skips = file.skips();
            events.push(json!({
                "ph": "X", "name": format!("{} ({skips:.1} ms)", file.path.to_string_lossy()),
                "cat": "startup_skipped", "pid": program.pid, "tid": SKIPPED_TRACK,
                "ts": 0, "dur": us(skips), "cname": "good",
                "args": {"skips_ms": skips, "filter": file.filter},
            }));
        }
    }
    let trace = json!({
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {"command": command_line(&profile.command),
                      "generator": concat!("forkmon ", env!("CARGO_PKG_VERSION"))},
    });
    serde_json::to_string(&trace).expect("a trace always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::analysis::tests::{analyze_in, open, run_of};

    #[test]
    fn spans_per_process_instants_per_open_and_checkpoints_marked() {
        let run = run_of(vec![
            open(0, 100, "/etc/ld.so.cache"),
            open(2, 100, "/w/a.lua"),
            open(3, 100, "/w/a.lua"),
            open(55, 200, "/w/b.txt"),
        ]);
        let profile = analyze_in("/w", &run, &["*.lua"]);
        let trace: Value = serde_json::from_str(&render(&profile)).unwrap();
        let events = trace["traceEvents"].as_array().unwrap();
        let of = |ph: &str| events.iter().filter(|e| e["ph"] == ph).collect::<Vec<_>>();
        let spans: Vec<_> = of("X")
            .into_iter()
            .filter(|e| e["cat"] == "process")
            .collect();
        assert_eq!(spans.len(), 2);
        assert_eq!(
            (spans[1]["ts"].as_f64(), spans[1]["dur"].as_f64()),
            (Some(50_000.0), Some(10_000.0))
        );
        let (execs, instants): (Vec<_>, Vec<_>) =
            of("i").into_iter().partition(|e| e["cat"] == "exec");
        assert_eq!(instants.len(), 4);
        assert_eq!(execs.len(), 1);
        assert_eq!(execs[0]["name"], "exec python3");
        let cats: Vec<&str> = instants
            .iter()
            .map(|e| e["cat"].as_str().unwrap())
            .collect();
        assert_eq!(
            cats,
            ["open", "open,matched,checkpoint", "open,matched", "open"]
        );
        assert_eq!(instants[1]["ts"], 2000.0);
        let skipped: Vec<_> = of("X")
            .into_iter()
            .filter(|e| e["cat"] == "startup_skipped")
            .collect();
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0]["dur"], 2000.0);
        assert_eq!(trace["displayTimeUnit"], "ms");
    }
}
