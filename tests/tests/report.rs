//! What `forkmon run` tells besides its lines: `--stats` at the end,
//! `--events` as it goes (docs/events.md).
mod support;

use std::{fs, thread, time::Duration};

use serde_json::Value;
use support::{bpf_available, fixture, live::Forkmon, save, scratch};

/// The JSON objects of an events file.
fn events(path: &std::path::Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object a line"))
        .collect()
}

#[test]
fn stats_count_the_resumes_of_each_checkpoint_and_what_they_saved() {
    if !bpf_available("stats_count_the_resumes_of_each_checkpoint_and_what_they_saved") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    fs::write(
        d.join("main.lua"),
        "local t = os.clock() while os.clock() - t < 0.3 do end\ndofile('part.lua')\n",
    )
    .unwrap();
    fs::write(d.join("part.lua"), "print('part 0')\n").unwrap();
    let mut forkmon = Forkmon::start(
        d,
        &["--stats", "--filter", "part.lua"],
        &["lua5.4", "main.lua"],
    );
    forkmon.wait_stdout("part 0", 1);
    for edit in 1..=3 {
        thread::sleep(Duration::from_millis(250));
        save(&d.join("part.lua"), &format!("print('part {edit}')\n"));
        forkmon.wait_stdout(&format!("part {edit}"), 1);
        forkmon.wait_stderr("waiting for changes..", edit + 1);
    }
    forkmon.signal(libc::SIGINT);
    forkmon.wait();
    let err = forkmon.stderr();
    let row = err
        .lines()
        .find(|l| l.starts_with(d.join("part.lua").to_str().unwrap()))
        .unwrap_or_else(|| panic!("no row for part.lua in:\n{err}"));
    let columns: Vec<&str> = row.split_whitespace().collect();
    // FILE, MADE AT (n unit), RESUMES, SKIPPED (n unit), SAVED (n unit).
    assert_eq!(columns[3], "3", "{row}");
    assert!(
        err.contains("1 checkpoints, 3 resumes, 0 restarts: "),
        "{err}"
    );
    let seconds = |value: &str, unit: &str| -> f64 {
        let value: f64 = value.parse().unwrap();
        match unit {
            "s" => value,
            "ms" => value / 1e3,
            _ => panic!("unit {unit} in {row}"),
        }
    };
    let skipped = seconds(columns[4], columns[5]);
    let saved = seconds(columns[6], columns[7]);
    assert!(
        skipped >= 0.3,
        "a 0.3 s start-up, {skipped} s skipped: {row}"
    );
    assert!((saved - 3.0 * skipped).abs() < 0.02, "{row}");
}

#[test]
fn events_record_watches_changes_resumes_refusals_restarts_and_exits() {
    if !bpf_available("events_record_watches_changes_resumes_refusals_restarts_and_exits") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    let log = d.join("events.jsonl");
    // A resume.
    fs::write(d.join("main.lua"), "dofile('part.lua')\n").unwrap();
    fs::write(d.join("part.lua"), "print('part 1')\n").unwrap();
    let events_arg = log.to_str().unwrap();
    let mut forkmon = Forkmon::start(
        d,
        &["--events", events_arg, "--filter", "part.lua"],
        &["lua5.4", "main.lua"],
    );
    forkmon.wait_stderr("waiting for changes..", 1);
    thread::sleep(Duration::from_millis(200));
    save(&d.join("part.lua"), "print('part 2')\n");
    forkmon.wait_stderr("waiting for changes..", 2);
    forkmon.signal(libc::SIGINT);
    forkmon.wait();
    let part = d.join("part.lua").to_str().unwrap().to_owned();
    let all = events(&log);
    let kinds: Vec<&str> = all.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["watch", "exit", "change", "resume", "exit"],
        "{all:?}"
    );
    assert_eq!(all[0]["file"], part.as_str());
    assert_eq!(all[0]["checkpoint"], true);
    assert_eq!(all[1]["status"], 0);
    assert_eq!(all[2]["file"], part.as_str());
    assert!(all[3]["took_ms"].as_f64().unwrap() >= 0.0);
    assert!(all[3]["skipped_ms"].as_f64().unwrap() >= 0.0);
    assert!(
        all.windows(2)
            .all(|w| w[0]["time"].as_f64() <= w[1]["time"].as_f64())
    );

    // A refusal (threads), then a restart, to standard output.
    fs::write(d.join("data.txt"), "one\n").unwrap();
    let mut forkmon = Forkmon::start(
        d,
        &["--events", "-", "--filter", "data.txt"],
        &[fixture("threads").to_str().unwrap()],
    );
    forkmon.wait_stderr("waiting for changes..", 1);
    thread::sleep(Duration::from_millis(200));
    save(&d.join("data.txt"), "two\n");
    forkmon.wait_stdout("content=two", 1);
    forkmon.signal(libc::SIGINT);
    forkmon.wait();
    let out = forkmon.stdout();
    let all: Vec<Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let refusal = all
        .iter()
        .find(|e| e["event"] == "refusal")
        .unwrap_or_else(|| panic!("no refusal in {out}"));
    assert!(
        refusal["reason"]
            .as_str()
            .unwrap()
            .contains("has 2 threads"),
        "{refusal}"
    );
    let restart = all
        .iter()
        .find(|e| e["event"] == "restart")
        .unwrap_or_else(|| panic!("no restart in {out}"));
    assert_eq!(restart["file"], d.join("data.txt").to_str().unwrap());
}
