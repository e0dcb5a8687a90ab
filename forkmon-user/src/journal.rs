//! `forkmon run --events FILE`: one JSON object per line for each thing
//! forkmon does — a watch, a change, a resume, a restart, a refusal, the
//! program's exit — for editors and scripts (as watchexec's
//! `--emit-events-to`). The schema is in `docs/events.md`; every object
//! has `event` and `time` (seconds since forkmon started).
use std::{
    cell::RefCell,
    fs::File,
    io::{self, Write},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::{Value, json};

/// Where the events go, and the clock they are dated by.
pub struct Journal {
    sink: RefCell<Box<dyn Write>>,
    start: Instant,
}

impl Journal {
    /// To `target`: `-` for standard output, else a file created (or
    /// truncated) for it — the user named it for this.
    pub fn open(target: &Path) -> anyhow::Result<Journal> {
        let sink: Box<dyn Write> = if target == Path::new("-") {
            Box::new(io::stdout())
        } else {
            Box::new(File::create(target).with_context(|| {
                format!(
                    "--events: cannot create {}",
                    crate::output::escape_path(target)
                )
            })?)
        };
        Ok(Journal::to(sink))
    }

    pub fn to(sink: Box<dyn Write>) -> Journal {
        Journal {
            sink: RefCell::new(sink),
            start: Instant::now(),
        }
    }

    /// Writes `event` with its fields, as one line, at once (a reader
    /// follows it live).
    pub fn record(&self, event: &str, fields: Value) {
        let mut object = json!({
            "event": event,
            "time": self.start.elapsed().as_micros() as f64 / 1e6,
        });
        if let (Some(object), Value::Object(fields)) = (object.as_object_mut(), fields) {
            object.extend(fields);
        }
        let mut line = object.to_string();
        line.push('\n');
        let mut sink = self.sink.borrow_mut();
        let _ = sink.write_all(line.as_bytes()).and_then(|()| sink.flush());
    }
}

/// Milliseconds, to the microsecond.
pub fn round_ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

/// A path as JSON: its text (U+FFFD for bytes that are not UTF-8).
pub fn path(path: &Path) -> Value {
    Value::String(path.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use std::{rc::Rc, sync::Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Rc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_event_is_one_json_object_a_line_with_its_name_and_time() {
        let out = Shared::default();
        let journal = Journal::to(Box::new(out.clone()));
        journal.record("watch", json!({ "file": "/w/a.lua" }));
        journal.record("exit", json!({ "status": 3 }));
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "watch");
        assert_eq!(lines[0]["file"], "/w/a.lua");
        assert!(lines[0]["time"].as_f64().unwrap() >= 0.0);
        assert_eq!(lines[1]["status"], 3);
    }
}
