//! `forkmon profile` against real programs, with the real eBPF programs
//! loaded: the table, the JSON (against docs/profile.schema.json), the
//! Chrome trace and the SVG.
mod support;

use std::{
    fs,
    path::Path,
    process::{Command, Output},
};

use serde_json::Value;
use support::{
    as_users_run_it, bpf_available, fixture, forkmon_bin, printed, scratch, workspace_dir,
};

/// One `forkmon profile` run with every output asked for.
struct Profiled {
    output: Output,
    json: Value,
    trace: Value,
    svg: String,
    _files: tempfile::TempDir,
}

impl Profiled {
    fn run(dir: &Path, flags: &[&str], argv: &[&str]) -> Profiled {
        let files = tempfile::tempdir().unwrap();
        let path = |name: &str| files.path().join(name);
        let mut cmd = Command::new(forkmon_bin());
        cmd.current_dir(dir)
            .arg("profile")
            .arg("--json")
            .arg(path("p.json"))
            .arg("--trace")
            .arg(path("p.trace.json"))
            .arg("--svg")
            .arg(path("p.svg"))
            .args(flags)
            .arg("--")
            .args(argv);
        as_users_run_it(&mut cmd);
        let output = cmd.output().expect("running forkmon");
        let read = |name: &str| {
            fs::read_to_string(path(name)).unwrap_or_else(|e| {
                panic!(
                    "{name}: {e}; stderr: {}",
                    String::from_utf8_lossy(&output.stderr)
                )
            })
        };
        let json = serde_json::from_str(&read("p.json")).expect("--json writes JSON");
        let trace = serde_json::from_str(&read("p.trace.json")).expect("--trace writes JSON");
        let svg = read("p.svg");
        Profiled {
            output,
            json,
            trace,
            svg,
            _files: files,
        }
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    fn files(&self) -> &Vec<Value> {
        self.json["files"].as_array().unwrap()
    }

    /// The file entry of `path`.
    fn file(&self, path: &Path) -> &Value {
        let path = path.to_str().unwrap();
        self.files()
            .iter()
            .find(|f| f["path"] == path)
            .unwrap_or_else(|| panic!("no {path} among {:#?}", self.json["files"]))
    }

    fn index_of(&self, path: &Path) -> usize {
        let path = path.to_str().unwrap();
        self.files().iter().position(|f| f["path"] == path).unwrap()
    }

    /// The times of every open of `path`.
    fn open_times(&self, path: &Path) -> Vec<f64> {
        let index = self.index_of(path);
        self.json["opens"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["file"] == index)
            .map(|o| o["ms"].as_f64().unwrap())
            .collect()
    }

    /// Every check that holds for any run: the JSON against its schema,
    /// the trace as Chrome trace events, the SVG as XML with one mark per
    /// matched open.
    fn check_outputs(&self) {
        if let Err(e) = validate(&self.json, &schema(), &schema(), "$") {
            panic!("the JSON does not follow docs/profile.schema.json: {e}");
        }
        check_chrome_trace(&self.trace, &self.json);
        let svg = roxmltree::Document::parse(&self.svg).expect("the SVG is XML");
        let root = svg.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(
            root.tag_name().namespace(),
            Some("http://www.w3.org/2000/svg")
        );
        let class = |name: &str| {
            svg.descendants()
                .filter(|n| n.attribute("class") == Some(name))
                .count()
        };
        let matched = self.json["summary"]["opens_matched"].as_u64().unwrap();
        assert_eq!(class("match") as u64, matched, "one mark per matched open");
        assert_eq!(
            class("process"),
            self.json["processes"].as_array().unwrap().len(),
            "a span per process"
        );
    }
}

fn schema() -> Value {
    let text = fs::read_to_string(workspace_dir().join("docs/profile.schema.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Validates `value` against `schema`, for the keywords the profile's
/// schema uses (type, const, enum, properties, required,
/// additionalProperties, items, minItems, maxItems, minimum, maximum, the
/// one pattern, anyOf, `$ref` to `#/$defs/…`). A validator crate would
/// pull dozens of crates into CI for this one test; this one refuses any
/// keyword it does not know, so the schema cannot outgrow it unnoticed.
fn validate(value: &Value, schema: &Value, root: &Value, at: &str) -> Result<(), String> {
    let check = |ok: bool, what: &dyn Fn() -> String| {
        if ok {
            Ok(())
        } else {
            Err(format!("{at}: {}", what()))
        }
    };
    let rules = schema.as_object().expect("a schema is an object");
    for (keyword, rule) in rules {
        match keyword.as_str() {
            "$schema" | "title" | "description" | "$defs" => {}
            "$ref" => {
                let name = rule.as_str().unwrap().strip_prefix("#/$defs/").unwrap();
                validate(value, &root["$defs"][name], root, at)?;
            }
            "type" => {
                let types: Vec<&str> = match rule {
                    Value::String(t) => vec![t.as_str()],
                    Value::Array(ts) => ts.iter().map(|t| t.as_str().unwrap()).collect(),
                    _ => panic!("type {rule}"),
                };
                let ok = types.iter().any(|t| match *t {
                    "object" => value.is_object(),
                    "array" => value.is_array(),
                    "string" => value.is_string(),
                    "boolean" => value.is_boolean(),
                    "null" => value.is_null(),
                    "number" => value.is_number(),
                    "integer" => value.is_i64() || value.is_u64(),
                    other => panic!("unknown type {other}"),
                });
                check(ok, &|| format!("{value} is not {rule}"))?;
            }
            "const" => check(value == rule, &|| format!("{value} is not {rule}"))?,
            "enum" => check(rule.as_array().unwrap().contains(value), &|| {
                format!("{value} not in {rule}")
            })?,
            "required" => {
                for key in rule.as_array().unwrap() {
                    check(value.get(key.as_str().unwrap()).is_some(), &|| {
                        format!("no {key}")
                    })?;
                }
            }
            "properties" => {
                for (key, sub) in rule.as_object().unwrap() {
                    if let Some(field) = value.get(key) {
                        validate(field, sub, root, &format!("{at}.{key}"))?;
                    }
                }
            }
            "additionalProperties" => {
                assert_eq!(rule, &Value::Bool(false), "only `false` is supported");
                let known = rules["properties"].as_object().unwrap();
                for key in value.as_object().unwrap().keys() {
                    check(known.contains_key(key), &|| {
                        format!("unexpected field {key}")
                    })?;
                }
            }
            "items" => {
                for (i, item) in value.as_array().unwrap().iter().enumerate() {
                    validate(item, rule, root, &format!("{at}[{i}]"))?;
                }
            }
            "minItems" | "maxItems" => {
                let (len, bound) = (
                    value.as_array().unwrap().len() as u64,
                    rule.as_u64().unwrap(),
                );
                let ok = if keyword == "minItems" {
                    len >= bound
                } else {
                    len <= bound
                };
                check(ok, &|| format!("{len} items, {keyword} {bound}"))?;
            }
            "minimum" | "maximum" => {
                let (n, bound) = (value.as_f64().unwrap(), rule.as_f64().unwrap());
                let ok = if keyword == "minimum" {
                    n >= bound
                } else {
                    n <= bound
                };
                check(ok, &|| format!("{n}, {keyword} {bound}"))?;
            }
            "pattern" => {
                assert_eq!(
                    rule, "^(ok|E[A-Z0-9]+)$",
                    "{at}: a pattern this validator does not know"
                );
                let s = value.as_str().unwrap();
                let errno = s.len() > 1
                    && s.starts_with('E')
                    && s[1..]
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
                check(s == "ok" || errno, &|| format!("{s:?} is no outcome"))?;
            }
            "anyOf" => {
                let ok = rule
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|alternative| validate(value, alternative, root, at).is_ok());
                check(ok, &|| format!("{value} matches none of {rule}"))?;
            }
            other => panic!("{at}: the schema uses {other}, which this validator does not check"),
        }
    }
    Ok(())
}

#[test]
fn the_validator_refuses_what_the_schema_does_not_allow() {
    let schema = schema();
    let valid = serde_json::json!({
        "schema": "forkmon-profile/1", "command": ["true"], "cwd": "/", "filter": "*.lua",
        "summary": {"duration_ms": 1.0, "exit_status": 0, "processes": 1, "opens": 0, "files": 0,
                    "files_failed": 0, "files_matched": 0, "opens_matched": 0,
                    "best_checkpoints": [], "suggested_filter": null,
                    "no_checkpoint": "none", "lost_records": 0},
        "processes": [{"pid": 1, "parent": null, "comm": "true", "start_ms": 0.0, "end_ms": 1.0,
                       "program": true, "opens": 0, "stub_ms": null, "execs": []}],
        "files": [], "opens": [],
    });
    validate(&valid, &schema, &schema, "$").unwrap();
    for (field, bad) in [
        ("schema", serde_json::json!("forkmon-profile/0")),
        ("command", serde_json::json!([])),
        ("files", serde_json::json!([{"path": "/x"}])),
        ("extra", serde_json::json!(1)),
    ] {
        let mut invalid = valid.clone();
        invalid[field] = bad;
        assert!(
            validate(&invalid, &schema, &schema, "$").is_err(),
            "{field}"
        );
    }
}

/// The trace is Chrome's trace-event JSON object: events with the fields
/// their phase needs, a span per process, an instant per open.
fn check_chrome_trace(trace: &Value, profile: &Value) {
    let events = trace["traceEvents"].as_array().expect("traceEvents");
    for event in events {
        let ph = event["ph"].as_str().expect("ph");
        assert!(event["pid"].is_i64(), "{event}");
        assert!(event["name"].is_string(), "{event}");
        match ph {
            "M" => assert!(event["args"].is_object(), "{event}"),
            "X" => {
                assert!(event["ts"].as_f64().unwrap() >= 0.0, "{event}");
                assert!(event["dur"].as_f64().unwrap() >= 0.0, "{event}");
                assert!(event["tid"].is_i64(), "{event}");
            }
            "i" => {
                assert!(event["ts"].as_f64().unwrap() >= 0.0, "{event}");
                assert!(
                    ["t", "p", "g"].contains(&event["s"].as_str().unwrap()),
                    "{event}"
                );
                assert!(event["tid"].is_i64(), "{event}");
            }
            other => panic!("unexpected phase {other}: {event}"),
        }
    }
    let count = |ph: &str, cat: &str| {
        events
            .iter()
            .filter(|e| {
                e["ph"] == ph
                    && e["cat"]
                        .as_str()
                        .is_some_and(|c| c.split(',').any(|c| c == cat))
            })
            .count()
    };
    assert_eq!(
        count("X", "process"),
        profile["processes"].as_array().unwrap().len()
    );
    assert_eq!(
        count("i", "open"),
        profile["opens"].as_array().unwrap().len()
    );
    assert_eq!(
        count("i", "matched") as u64,
        profile["summary"]["opens_matched"].as_u64().unwrap()
    );
}

fn scratch_with(files: &[&str]) -> tempfile::TempDir {
    let dir = scratch();
    for name in files {
        let path = dir.path().join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, name).unwrap();
    }
    dir
}

#[test]
fn times_counts_outcomes_and_why_a_checkpoint_is_refused() {
    if !bpf_available("times_counts_outcomes_and_why_a_checkpoint_is_refused") {
        return;
    }
    let dir = scratch_with(&["first.txt", "second.txt", "child.txt", "threaded.txt"]);
    let d = dir.path();
    let profiled = Profiled::run(
        d,
        &["--filter", "*.txt"],
        &[fixture("profiled").to_str().unwrap()],
    );
    assert_eq!(
        profiled.output.status.code(),
        Some(3),
        "the program's status: {}",
        profiled.stderr()
    );
    let stdout = String::from_utf8_lossy(&profiled.output.stdout);
    let pid = printed(&stdout, "pid");
    let child = printed(&stdout, "child");
    profiled.check_outputs();

    // The order of first opens, among the fixture's files.
    let order: Vec<&str> = profiled
        .files()
        .iter()
        .filter_map(|f| f["path"].as_str()?.strip_prefix(d.to_str().unwrap()))
        .collect();
    assert_eq!(
        order,
        [
            "/first.txt",
            "/second.txt",
            "/missing.txt",
            "/out.txt",
            "/child.txt",
            "/threaded.txt"
        ]
    );
    // Counts, and times no earlier than the fixture's sleeps allow.
    let second = profiled.file(&d.join("second.txt"));
    assert_eq!(second["opens"], 2);
    let times = profiled.open_times(&d.join("second.txt"));
    assert!(times[0] >= 300.0 && times[1] >= 400.0, "{times:?}");
    assert!(second["first_ms"].as_f64().unwrap() >= 300.0);
    assert!(second["checkpoint"]["skips_ms"].as_f64().unwrap() >= 300.0);
    assert!(profiled.json["summary"]["duration_ms"].as_f64().unwrap() >= 420.0);

    let verdict = |name: &str| {
        let file = profiled.file(&d.join(name));
        (
            file["checkpoint"]["possible"].as_str().unwrap().to_owned(),
            file["checkpoint"]["why"].as_str().unwrap_or("").to_owned(),
        )
    };
    let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(verdict("first.txt"), pair("yes", ""));
    assert_eq!(verdict("second.txt"), pair("yes", ""));
    assert_eq!(verdict("missing.txt"), pair("no", "failed"));
    assert_eq!(profiled.file(&d.join("missing.txt"))["outcome"], "ENOENT");
    assert_eq!(verdict("out.txt"), pair("no", "written"));
    assert_eq!(profiled.file(&d.join("out.txt"))["read_only"], false);
    assert_eq!(verdict("child.txt"), pair("no", "subprocess"));
    assert_eq!(profiled.file(&d.join("child.txt"))["pid"], child);
    // The idle thread may or may not be stopped by fork's handlers: run
    // would try; the profile says why it is in doubt.
    assert_eq!(verdict("threaded.txt"), pair("maybe", "threads"));
    assert_eq!(
        profiled.file(&d.join("threaded.txt"))["checkpoint"]["threads"],
        2
    );
    assert_eq!(profiled.file(&d.join("first.txt"))["pid"], pid);
    // The loader's opens come before the stub could be armed.
    let libc = profiled
        .files()
        .iter()
        .find(|f| f["path"].as_str().unwrap().contains("libc.so") && f["outcome"] == "ok")
        .expect("libc is opened");
    assert_eq!(libc["checkpoint"]["why"], "before_stub");

    // Filter marks.
    for name in [
        "first.txt",
        "second.txt",
        "missing.txt",
        "out.txt",
        "child.txt",
        "threaded.txt",
    ] {
        assert_eq!(profiled.file(&d.join(name))["filter"], true, "{name}");
    }
    assert_eq!(profiled.json["summary"]["files_matched"], 6);
    assert!(
        profiled
            .files()
            .iter()
            .filter(|f| f["path"].as_str().unwrap().starts_with("/usr"))
            .all(|f| f["filter"] == false)
    );

    // The table: the user's files in full, with their verdicts.
    let table = profiled.stderr();
    for expected in [
        "TIME(ms) OPENS  PROCESS",
        "no: subprocess",
        "no: opened to write",
        "maybe: 2 threads",
        "ENOENT",
        "Best checkpoints",
        "Suggested filter",
    ] {
        assert!(table.contains(expected), "{expected:?} in\n{table}");
    }
    let row = table
        .lines()
        .find(|l| l.ends_with("  second.txt"))
        .expect("a row for second.txt");
    assert!(row.contains(" match ") && row.contains(" yes "), "{row}");
    // The suggestion names the fixture's own files.
    let suggestion = &profiled.json["summary"]["suggested_filter"];
    assert_eq!(
        suggestion["globs"],
        serde_json::json!(["./*.txt"]),
        "{suggestion}"
    );
}

#[test]
fn python_modules_are_reported_as_their_sources_and_the_suggested_filter_is_the_users() {
    if !bpf_available(
        "python_modules_are_reported_as_their_sources_and_the_suggested_filter_is_the_users",
    ) {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    for (name, text) in [
        (
            "main.py",
            "import json\nimport app.core\nprint(app.core.VALUE)\n",
        ),
        ("app/__init__.py", ""),
        (
            "app/core.py",
            "from app.util import helpers\nVALUE = helpers.double(21)\n",
        ),
        ("app/util/__init__.py", ""),
        ("app/util/helpers.py", "def double(x):\n    return 2 * x\n"),
    ] {
        fs::create_dir_all(d.join(name).parent().unwrap()).unwrap();
        fs::write(d.join(name), text).unwrap();
    }
    // As after any earlier run: the bytecode caches exist.
    let warm = as_users_run_it(Command::new("python3").current_dir(d).arg("main.py"))
        .output()
        .unwrap();
    assert!(
        warm.status.success(),
        "{}",
        String::from_utf8_lossy(&warm.stderr)
    );

    let profiled = Profiled::run(d, &[], &["python3", "main.py"]);
    assert!(profiled.output.status.success(), "{}", profiled.stderr());
    assert_eq!(String::from_utf8_lossy(&profiled.output.stdout), "42\n");
    profiled.check_outputs();

    let modules = [
        "main.py",
        "app/__init__.py",
        "app/core.py",
        "app/util/__init__.py",
        "app/util/helpers.py",
    ];
    let indexes: Vec<usize> = modules
        .iter()
        .map(|m| profiled.index_of(&d.join(m)))
        .collect();
    assert!(indexes.is_sorted(), "imported in this order: {indexes:?}");
    for module in &modules[1..] {
        let file = profiled.file(&d.join(module));
        let cache = file["cache"]
            .as_str()
            .unwrap_or_else(|| panic!("{module}: {file}"));
        assert!(
            cache.contains("__pycache__/") && cache.ends_with(".pyc"),
            "{cache}"
        );
        assert_eq!(file["opens"], 1, "{module}: {file}");
        assert_eq!(
            file["filter"], true,
            "the default filter: files under the directory"
        );
        assert_eq!(file["origin"], "user");
        assert_eq!(file["checkpoint"]["possible"], "yes", "{module}: {file}");
    }
    assert!(
        profiled
            .files()
            .iter()
            .all(|f| !f["path"].as_str().unwrap().ends_with(".pyc")
                || !f["path"].as_str().unwrap().starts_with(d.to_str().unwrap())),
        "no cache of the user's is listed as itself"
    );
    let table = profiled.stderr();
    assert!(table.contains("app/util/helpers.py (.pyc)"), "{table}");
    assert!(
        table.contains("┄"),
        "the interpreter's files are folded: {table}"
    );

    // The suggested filter, given back to forkmon, matches the fixture's
    // modules and nothing outside its directory (nothing under /usr).
    let suggestion = &profiled.json["summary"]["suggested_filter"];
    let globs: Vec<&str> = suggestion["globs"]
        .as_array()
        .unwrap_or_else(|| panic!("a suggestion: {}", profiled.json["summary"]))
        .iter()
        .map(|g| g.as_str().unwrap())
        .collect();
    assert!(
        suggestion["command"]
            .as_str()
            .unwrap()
            .ends_with("-- python3 main.py"),
        "{suggestion}"
    );
    let mut flags = Vec::new();
    for glob in &globs {
        flags.extend(["--filter", glob]);
    }
    let again = Profiled::run(d, &flags, &["python3", "main.py"]);
    for module in modules {
        assert_eq!(
            again.file(&d.join(module))["filter"],
            true,
            "{module} by {globs:?}"
        );
    }
    for file in again.files() {
        let path = file["path"].as_str().unwrap();
        if !path.starts_with(d.to_str().unwrap()) || path.starts_with("/usr") {
            assert_eq!(file["filter"], false, "{path} matched by {globs:?}");
        }
    }
    assert_eq!(again.json["filter"], globs.join(", "));
}

#[test]
fn lua_requires_in_order_with_their_failed_tries() {
    if !bpf_available("lua_requires_in_order_with_their_failed_tries") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    fs::create_dir(d.join("lib")).unwrap();
    fs::write(
        d.join("main.lua"),
        "package.path = './?.lua;./lib/?.lua'\nlocal util = require 'util'\nprint(util.x)\n",
    )
    .unwrap();
    fs::write(d.join("lib/util.lua"), "return { x = 5 }\n").unwrap();
    let profiled = Profiled::run(d, &["--filter", "*.lua"], &["lua5.4", "main.lua"]);
    assert!(profiled.output.status.success(), "{}", profiled.stderr());
    profiled.check_outputs();
    let (main, tried, util) = (
        d.join("main.lua"),
        d.join("util.lua"),
        d.join("lib/util.lua"),
    );
    assert!(profiled.index_of(&main) < profiled.index_of(&tried));
    assert!(profiled.index_of(&tried) < profiled.index_of(&util));
    assert_eq!(profiled.file(&tried)["outcome"], "ENOENT");
    assert_eq!(profiled.file(&tried)["checkpoint"]["why"], "failed");
    // Found by the searcher, then loaded: two opens.
    assert_eq!(profiled.file(&util)["opens"], 2);
    assert_eq!(profiled.file(&main)["opens"], 1);
    for path in [&main, &util] {
        assert_eq!(profiled.file(path)["filter"], true);
        assert_eq!(profiled.file(path)["checkpoint"]["possible"], "yes");
    }
    assert_eq!(
        profiled.json["summary"]["opens_matched"], 4,
        "main, the failed try, util twice"
    );
    let best: Vec<&str> = profiled.json["summary"]["best_checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["path"].as_str().unwrap())
        .collect();
    assert_eq!(best, [util.to_str().unwrap(), main.to_str().unwrap()]);
    let globs = &profiled.json["summary"]["suggested_filter"]["globs"];
    assert_eq!(globs, &serde_json::json!(["lib/**/*.lua", "./*.lua"]));
}

#[test]
fn a_bad_output_path_fails_before_the_program_runs() {
    // Checked before BPF is loaded: no root needed.
    let dir = scratch();
    let marker = dir.path().join("ran");
    let output = Command::new(forkmon_bin())
        .args(["profile", "--svg", "/nonexistent/dir/p.svg", "--", "touch"])
        .arg(&marker)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("forkmon: cannot write /nonexistent/dir/p.svg"),
        "{stderr}"
    );
    assert!(!marker.exists(), "the program did not run");
}
