//! The command line as a user meets it: errors, messages, and the examples
//! of `--help` and the README, run as written.
mod support;

use std::{
    io::Read,
    path::Path,
    process::{Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use support::forkmon_bin;

/// `forkmon ARGS` run to its end, in a directory of its own.
fn forkmon(args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    Command::new(forkmon_bin())
        .current_dir(dir.path())
        .args(args)
        .env_remove("FORKMON_FILTER")
        .output()
        .expect("running forkmon")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn usage_errors_are_clap_s_whole_message() {
    let missing = forkmon(&["run"]);
    assert_eq!(missing.status.code(), Some(2));
    let text = stderr(&missing);
    assert!(
        text.contains("the following required arguments were not provided:")
            && text.contains("<PROGRAM>...")
            && text.contains("Usage: forkmon run"),
        "{text}"
    );

    let typo = forkmon(&["run", "--filer", "*.lua", "--", "true"]);
    assert_eq!(typo.status.code(), Some(2));
    let text = stderr(&typo);
    assert!(
        text.contains("unexpected argument '--filer' found")
            && text.contains("tip: a similar argument exists: '--filter'")
            && text.contains("Usage: forkmon run"),
        "{text}"
    );
}

#[test]
fn a_misspelt_subcommand_is_a_usage_error_before_anything_loads() {
    let out = forkmon(&["trce", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let text = stderr(&out);
    for expected in [
        "unrecognized subcommand 'trce'",
        "tip: a similar subcommand exists: 'trace'",
        "the subcommands are: run, trace",
    ] {
        assert!(text.contains(expected), "{expected:?} in {text}");
    }
    assert!(!text.contains("command not found"), "{text}");
}

/// `forkmon ARGS` run as nobody (setpriv, util-linux), where it cannot load
/// its eBPF program.
fn forkmon_as_nobody(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(forkmon_bin())
        .args(args)
        .env_remove("FORKMON_FILTER")
        .envs(env.iter().copied())
        .current_dir("/")
        .output()
        .expect("setpriv (util-linux)")
}

#[test]
fn messages_say_forkmon_once_and_name_what_the_user_wrote() {
    // Root is needed to drop to nobody.
    if !support::bpf_available("messages_say_forkmon_once_and_name_what_the_user_wrote") {
        return;
    }
    let out = forkmon_as_nobody(&["trace", "--", "true"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "forkmon: needs root to load its eBPF program: run it with sudo\n"
    );

    // A bad filter is a usage error, as clap's own are.
    let flag = forkmon(&["--lua-filter", "%.lua$;%", "--", "true"]);
    assert_eq!(flag.status.code(), Some(2));
    assert_eq!(
        stderr(&flag),
        "forkmon: invalid --lua-filter pattern '%': malformed pattern (ends with '%'); \
         see Lua patterns, e.g. '%.lua$'\n"
    );
    let env = forkmon_as_nobody(&["--", "true"], &[("FORKMON_FILTER", "%")]);
    assert_eq!(env.status.code(), Some(2));
    assert!(
        stderr(&env).starts_with("forkmon: invalid FORKMON_FILTER pattern '%'"),
        "{}",
        stderr(&env)
    );
}

#[test]
fn delays_take_units_and_refuse_absurd_values_in_one_line() {
    for (args, env, named) in [
        (
            &["--restart-delay", "99999999999999", "--", "true"][..],
            None,
            "--restart-delay",
        ),
        (
            &["--", "true"][..],
            Some(("FORKMON_IGNORE_DELAY", "2h")),
            "--ignore-delay",
        ),
    ] {
        let mut cmd = Command::new(forkmon_bin());
        cmd.args(args).current_dir("/");
        if let Some((key, value)) = env {
            cmd.env(key, value);
        }
        let out = cmd.output().unwrap();
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {text}");
        let first = text.lines().next().unwrap();
        assert!(
            first.contains(named) && first.contains("longer than an hour"),
            "{text}"
        );
        assert_eq!(
            text.lines().count(),
            2,
            "one line and the help pointer: {text}"
        );
    }
    if !support::bpf_available("delays_take_units_and_refuse_absurd_values_in_one_line") {
        return;
    }
    let out = forkmon(&[
        "--restart-delay",
        "1.5s",
        "--ignore-delay",
        "50ms",
        "--",
        "true",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A file name a terminal would obey, with a byte that is not UTF-8.
const HOSTILE: &[u8] = b"x\x1b[31mred\nline\xff";
/// How forkmon prints it.
const HOSTILE_ESCAPED: &str = r"x\x1b[31mred\nline\xff";

fn hostile_dir() -> tempfile::TempDir {
    use std::os::unix::ffi::OsStrExt as _;
    let dir = tempfile::tempdir().unwrap();
    let name = std::ffi::OsStr::from_bytes(HOSTILE);
    std::fs::write(dir.path().join(name), "hi\n").unwrap();
    dir
}

#[test]
fn hostile_file_names_are_escaped_on_screen_and_kept_in_json() {
    use std::os::unix::ffi::OsStrExt as _;
    if !support::bpf_available("hostile_file_names_are_escaped_on_screen_and_kept_in_json") {
        return;
    }
    let dir = hostile_dir();
    let d = dir.path();
    // The shell hands cat the name, cat opens it (exec: forkmon run
    // checkpoints the program itself, not its subprocesses).
    let trace = |args: &[&str]| {
        let out = Command::new(forkmon_bin())
            .current_dir(d)
            .arg("trace")
            .args(args)
            .args(["--", "sh", "-c", "exec cat ./x*"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        out
    };

    // The table, on stderr as strace's: one row, escaped.
    let table = trace(&[]).stderr;
    assert!(
        !table.contains(&0x1b) && !table.contains(&0xff),
        "raw bytes on screen"
    );
    let table = String::from_utf8(table).unwrap();
    let row = table
        .lines()
        .find(|l| l.contains("red"))
        .unwrap_or_else(|| panic!("no row for the file: {table}"));
    let expected = format!("{}/{HOSTILE_ESCAPED}", d.display());
    assert!(row.ends_with(&expected), "{row}");

    // JSON: the bytes are there to recover the name.
    let json_file = d.join("opens.jsonl");
    trace(&["--json", "--output", json_file.to_str().unwrap()]);
    let opens: Vec<serde_json::Value> = std::fs::read_to_string(&json_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let bytes =
        |v: &serde_json::Value| -> Option<Vec<u8>> { serde_json::from_value(v.clone()).ok() };
    let mut abs = d.as_os_str().as_bytes().to_vec();
    abs.push(b'/');
    abs.extend_from_slice(HOSTILE);
    let open = opens
        .iter()
        .find(|o| bytes(&o["abs_path_bytes"]).as_deref() == Some(&abs[..]))
        .unwrap_or_else(|| panic!("no open with the name's bytes: {opens:?}"));
    assert_eq!(
        bytes(&open["path_bytes"]).unwrap(),
        [b"./", HOSTILE].concat()
    );
    // UTF-8 names carry no bytes.
    assert!(opens.iter().any(|o| o.get("abs_path_bytes").is_none()));

    // forkmon run's own messages.
    let forkmon = support::live::Forkmon::start(d, &[], &["sh", "-c", "exec cat ./x*"]);
    forkmon.wait_stderr("waiting for changes", 1);
    let text = forkmon.stderr();
    assert!(
        text.contains(&format!("[forkmon] watch '{expected}'\n")),
        "{text}"
    );
    assert!(!text.contains('\x1b'), "{text}");
}

/// The nested builds of the eBPF object and the stub print nothing when
/// they succeed (they printed ~40 "warning:" lines of progress). Cargo
/// replays a build script's warnings on every build, so building the
/// current tree shows what a user sees.
#[test]
fn building_forkmon_prints_no_progress_as_warnings() {
    let out = Command::new(env!("CARGO"))
        .current_dir(support::workspace_dir())
        .args(["build", "--package", "forkmon-user"])
        .output()
        .unwrap();
    let text = stderr(&out);
    assert!(out.status.success(), "{text}");
    let warnings: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with("warning: forkmon-user@"))
        .collect();
    assert!(warnings.is_empty(), "{}", warnings.join("\n"));
}

/// forkmon's messages follow the colour conventions (NO_COLOR, CLICOLOR,
/// CLICOLOR_FORCE, TERM=dumb), on a terminal (script(1)'s) or not.
#[test]
fn colours_follow_the_conventions() {
    if !support::bpf_available("colours_follow_the_conventions") {
        return;
    }
    let bin = forkmon_bin();
    let run = |terminal: bool, env: &[(&str, &str)], flags: &[&str]| -> String {
        let mut cmd = if terminal {
            let mut line = format!("{} run", bin.display());
            for flag in flags {
                line.push(' ');
                line.push_str(flag);
            }
            line.push_str(" -- true");
            let mut script = Command::new("script");
            script.args(["-qec", &line, "/dev/null"]);
            script
        } else {
            let mut cmd = Command::new(&bin);
            cmd.arg("run").args(flags).args(["--", "true"]);
            cmd
        };
        // (CI: anstream colours a CI's logs whatever TERM says, and CI
        // runs these tests with CI=true.)
        for var in [
            "NO_COLOR",
            "CLICOLOR",
            "CLICOLOR_FORCE",
            "FORKMON_NO_COLORS",
            "CI",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("TERM", "xterm")
            .envs(env.iter().copied())
            .current_dir("/");
        let out = cmd.output().expect("script (util-linux)");
        // script(1) gives the terminal's output on its stdout.
        let text = if terminal { out.stdout } else { out.stderr };
        let text = String::from_utf8_lossy(&text).into_owned();
        assert!(text.contains("[forkmon]"), "{text}");
        text
    };
    let coloured = |text: &str| text.contains("\x1b[");
    assert!(coloured(&run(true, &[], &[])), "a terminal");
    assert!(!coloured(&run(true, &[("TERM", "dumb")], &[])), "TERM=dumb");
    assert!(!coloured(&run(true, &[("NO_COLOR", "1")], &[])), "NO_COLOR");
    assert!(
        !coloured(&run(true, &[("CLICOLOR", "0")], &[])),
        "CLICOLOR=0"
    );
    assert!(!coloured(&run(true, &[], &["--no-color"])), "--no-color");
    assert!(!coloured(&run(false, &[], &[])), "not a terminal");
    let forced = [("CLICOLOR_FORCE", "1")];
    assert!(coloured(&run(false, &forced, &[])), "CLICOLOR_FORCE");
    assert!(
        !coloured(&run(false, &forced, &["--no-color"])),
        "--no-color wins"
    );
}

// Every example of `--help` (all subcommands) and of the README's code
// blocks, run as written where it can run here, each checked against what
// its text says.

/// The examples of `forkmon [SUBCOMMAND] --help`: the indented lines under
/// "Examples:".
fn examples_in_help() -> Vec<String> {
    let mut found = Vec::new();
    for sub in [
        None,
        Some("run"),
        Some("trace"),
        Some("profile"),
        Some("completions"),
        Some("man"),
    ] {
        let out = Command::new(forkmon_bin())
            .args(sub)
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8(out.stdout).unwrap();
        let examples: Vec<String> = help
            .lines()
            .skip_while(|line| *line != "Examples:")
            .skip(1)
            .take_while(|line| line.starts_with("  "))
            .map(example_command)
            .collect();
        assert!(
            !examples.is_empty(),
            "no examples in {sub:?} --help:\n{help}"
        );
        found.extend(examples);
    }
    found
}

/// The commands of the README's code blocks: every line of a `sh` block,
/// the `$ ` lines of a transcript.
fn examples_in_readme() -> Vec<String> {
    let readme = std::fs::read_to_string(support::workspace_dir().join("README.md")).unwrap();
    let mut found = Vec::new();
    let mut block: Option<&str> = None;
    for line in readme.lines() {
        if let Some(info) = line.strip_prefix("```") {
            block = if block.is_none() {
                Some(info.trim())
            } else {
                None
            };
            continue;
        }
        match block {
            Some("sh") if !line.trim().is_empty() => found.push(example_command(line)),
            Some("") => found.extend(line.strip_prefix("$ ").map(example_command)),
            _ => {}
        }
    }
    found
}

/// An example line as a command: without its comment.
fn example_command(line: &str) -> String {
    let line = line.trim();
    line.find("  #")
        .map_or(line, |comment| &line[..comment])
        .trim()
        .to_owned()
}

/// The example as it runs here: as root already (what `sudo` is for; sudo
/// itself is not installed here), and `cargo xtask run -- ARGS` as the
/// `forkmon ARGS` it builds and runs (no nested build of the whole tree in
/// a test). `forkmon` is found on PATH, as an installed one would be.
fn as_run_here(example: &str) -> String {
    let command = example.strip_prefix("sudo ").unwrap_or(example);
    match command.strip_prefix("cargo xtask run -- ") {
        Some(args) => format!("forkmon {args}"),
        None => command.to_owned(),
    }
}

/// `bash -c COMMAND` in `dir`, with forkmon on PATH and HOME in `dir`.
fn shell(command: &str, dir: &Path) -> Command {
    let bin_dir = forkmon_bin().parent().unwrap().to_path_buf();
    let path = std::env::join_paths(
        std::iter::once(bin_dir).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let mut cmd = Command::new("bash");
    cmd.args(["-c", command])
        .current_dir(dir)
        .env("PATH", path)
        .env("HOME", dir)
        .env("NO_COLOR", "1")
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env_remove("FORKMON_FILTER")
        .stdin(Stdio::null());
    cmd
}

fn finished(command: &str, dir: &Path) -> (Output, String, String) {
    let out = shell(command, dir).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{command}: {}\n{stderr}", out.status);
    (out, stdout, stderr)
}

/// An example that runs until interrupted (`forkmon run`), its output
/// collected as it comes.
struct Running {
    child: std::process::Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    fn start(command: &str, dir: &Path) -> Running {
        use std::os::unix::process::CommandExt as _;
        let mut child = shell(command, dir)
            // Its own process group, to be interrupted as a terminal would.
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let collect = |mut from: Box<dyn Read + Send>| {
            let text = Arc::new(Mutex::new(String::new()));
            let sink = text.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = from.read(&mut buf) {
                    sink.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
            text
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Running {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits until stdout and stderr hold these lines, in this order each.
    fn wait_for(&self, out: &[&str], err: &[&str]) {
        let holds = |text: &str, lines: &[&str]| {
            let mut rest = text;
            lines
                .iter()
                .all(|line| match rest.find(&format!("{line}\n")) {
                    Some(at) => {
                        rest = &rest[at + line.len()..];
                        true
                    }
                    None => false,
                })
        };
        let deadline = Instant::now() + support::live::PATIENCE;
        loop {
            let (stdout, stderr) = (
                self.stdout.lock().unwrap().clone(),
                self.stderr.lock().unwrap().clone(),
            );
            if holds(&stdout, out) && holds(&stderr, err) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waiting for {out:?} / {err:?}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Ctrl-C, and forkmon's end.
    fn interrupt(mut self) {
        // SAFETY: signalling the process group we made.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGINT) };
        let deadline = Instant::now() + support::live::PATIENCE;
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "forkmon did not end at Ctrl-C");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: killing the process group we made, if it is still there.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Saved as editors do: written beside, renamed over.
fn save(path: &Path, content: &str) {
    let tmp = path.with_extension("swp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `forkmon … -- lua5.4 [DIR/]main.lua` on the repository's example: the
/// README's transcript, edit of foo.lua included.
fn check_lua_example(command: &str, rel: &str) {
    let dir = tempfile::tempdir().unwrap();
    let lua = dir.path().join(rel);
    std::fs::create_dir_all(&lua).unwrap();
    for file in ["main.lua", "foo.lua"] {
        std::fs::copy(
            support::workspace_dir().join("examples/lua").join(file),
            lua.join(file),
        )
        .unwrap();
    }
    let (main, edited) = (lua.join("main.lua"), lua.join("foo.lua"));
    let running = Running::start(command, dir.path());
    running.wait_for(
        &["startup", "foo!", "finished"],
        &[
            &format!("[forkmon] watch '{}'", main.display()),
            &format!("[forkmon] watch '{}'", edited.display()),
            "[forkmon] program exited with status 0, waiting for changes..",
        ],
    );
    save(&edited, "print(\"hello world!\")\n");
    running.wait_for(
        &["foo!", "finished", "hello world!", "finished"],
        &[&format!(
            "[forkmon] file '{}' changed, resuming from it..",
            edited.display()
        )],
    );
    running.interrupt();
}

/// `forkmon --filter '*.py' -- python3 MAIN`: the README's Python
/// transcript.
fn check_python_example(command: &str, main: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join(main), "print('start-up')\nimport mod\n").unwrap();
    std::fs::write(d.join("mod.py"), "print('value: one')\n").unwrap();
    let running = Running::start(command, d);
    running.wait_for(
        &["start-up", "value: one"],
        &[
            &format!("[forkmon] watch '{}'", d.join(main).display()),
            &format!("[forkmon] watch '{}'", d.join("mod.py").display()),
            "[forkmon] program exited with status 0, waiting for changes..",
        ],
    );
    save(&d.join("mod.py"), "print('value: two')\n");
    running.wait_for(
        &["value: one", "value: two"],
        &[&format!(
            "[forkmon] file '{}' changed, resuming from it..",
            d.join("mod.py").display()
        )],
    );
    running.interrupt();
}

/// `command` on `files` and `edited` (name, before, after), which prints
/// `value: one`, then `value: two` once `edited` is saved, and says
/// `line` about it. Returns it running, in its directory.
fn check_restart_example(
    command: &str,
    files: &[(&str, &str)],
    (edited, before, after): (&str, &str, &str),
    line: &str,
) -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    for (name, content) in files {
        std::fs::write(d.join(name), content).unwrap();
    }
    std::fs::write(d.join(edited), before).unwrap();
    let running = Running::start(command, &d);
    running.wait_for(&["value: one"], &[]);
    // Watched once the run has read it: let the records arrive.
    std::thread::sleep(Duration::from_millis(300));
    save(&d.join(edited), after);
    running.wait_for(&["value: one", "value: two"], &[]);
    let stderr = running.stderr.lock().unwrap().clone();
    assert!(stderr.contains(line), "{line:?} not in:\n{stderr}");
    (running, dir)
}

/// `forkmon profile …` examples: the program runs to its end, keeps its
/// stdout, and the table on stderr lists its files; each file asked for
/// is written.
fn check_profile_example(command: &str, dir: &Path) {
    std::fs::create_dir_all(dir.join("pkg")).unwrap();
    for (name, text) in [
        ("app.py", "print('hello')\n"),
        ("main.py", "import pkg.a\nprint('hello')\n"),
        ("pkg/__init__.py", ""),
        ("pkg/a.py", "X = 1\n"),
        ("main.lua", "print('hello')\n"),
        ("input.txt", "built\n"),
        ("build.sh", "#!/bin/sh\ncat input.txt\n"),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    Command::new("chmod")
        .args(["+x", "build.sh"])
        .current_dir(dir)
        .status()
        .unwrap();
    let (_, stdout, stderr) = finished(command, dir);
    let program = command.rsplit(" -- ").next().unwrap();
    let main = program.split(' ').next_back().unwrap();
    assert_eq!(
        stdout,
        if main == "./build.sh" {
            "built\n"
        } else {
            "hello\n"
        },
        "the program keeps its stdout"
    );
    let row = |file: &str| {
        stderr
            .lines()
            .find(|row| {
                row.ends_with(&format!("  {file}")) || row.ends_with(&format!("  {file} (.pyc)"))
            })
            .unwrap_or_else(|| panic!("no row for {file}: {stderr}"))
            .to_owned()
    };
    assert!(stderr.trim_start().starts_with("TIME(ms)"), "{stderr}");
    if main.ends_with(".sh") {
        // A build script's input is read by a subprocess (cat).
        assert!(row("input.txt").contains("no: subprocess"), "{stderr}");
    } else {
        assert!(row(main).contains(" yes "), "{stderr}");
        assert!(stderr.contains("Suggested filter"), "{stderr}");
    }
    if command.contains("--all") {
        assert!(!stderr.contains('┄'), "nothing folded: {stderr}");
        assert!(stderr.contains("libc.so"), "{stderr}");
    }
    if command.contains("--filter '*.py'") {
        assert!(row(main).contains(" match "), "{stderr}");
    }
    if main == "main.py" {
        row("pkg/a.py");
    }
    for (flag, holds) in [
        ("--svg", "<svg "),
        ("--json", "\"schema\": \"forkmon-profile/1\""),
        ("--trace", "\"traceEvents\":["),
    ] {
        if let Some(rest) = command.split(&format!("{flag} ")).nth(1) {
            let file = rest.split(' ').next().unwrap();
            let written = std::fs::read_to_string(dir.join(file)).unwrap();
            assert!(written.contains(holds), "{file} has no {holds}");
        }
    }
}

/// Runs `example` (as it runs here) and checks it does what it says.
fn check_example(example: &str) {
    let command = as_run_here(example);
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    match example {
        "sudo forkmon trace -- python3 -c 'import json'" => {
            let (_, stdout, stderr) = finished(&command, dir);
            // The table, on stderr: the program keeps stdout.
            assert!(stdout.is_empty(), "{stdout}");
            let mut lines = stderr.lines();
            assert!(lines.next().unwrap().trim_start().starts_with("TIME(s)"));
            assert!(lines.any(|row| row.contains("/json/")), "{stderr}");
        }
        "sudo forkmon trace --json --output opens.jsonl -- make"
        | "sudo forkmon trace --json --output opens.jsonl -- ./build.sh" => {
            // A small build: make, or a build script, reading input.txt.
            std::fs::write(dir.join("input.txt"), "built\n").unwrap();
            std::fs::write(dir.join("Makefile"), "all:\n\t@cat input.txt\n").unwrap();
            std::fs::write(dir.join("build.sh"), "#!/bin/sh\ncat input.txt\n").unwrap();
            Command::new("chmod")
                .args(["+x", "build.sh"])
                .current_dir(dir)
                .status()
                .unwrap();
            let (_, stdout, stderr) = finished(&command, dir);
            assert_eq!(stdout, "built\n", "the program keeps its stdout");
            assert!(!stderr.contains('{'), "no trace on stderr: {stderr}");
            let trace = std::fs::read_to_string(dir.join("opens.jsonl")).unwrap();
            let opens: Vec<serde_json::Value> = trace
                .lines()
                .map(|line| serde_json::from_str(line).expect("one JSON object a line"))
                .collect();
            let input = dir.join("input.txt");
            assert!(
                opens
                    .iter()
                    .any(|o| o["abs_path"] == input.to_str().unwrap() && o["fd"].is_number()),
                "{trace}"
            );
        }
        "cargo xtask run -- trace -- ls /tmp" => {
            let (_, _, stderr) = finished(&command, dir);
            assert!(
                stderr
                    .lines()
                    .any(|row| row.ends_with(" /tmp") && row.contains("O_DIRECTORY")),
                "{stderr}"
            );
        }
        "sudo forkmon run -- lua5.4 main.lua"
        | "sudo FORKMON_FILTER='%.lua$' forkmon -- lua5.4 main.lua" => {
            check_lua_example(&command, "")
        }
        "cargo xtask run -- lua5.4 examples/lua/main.lua"
        | "sudo \"$(command -v forkmon)\" -- lua5.4 examples/lua/main.lua"
        | "sudo env \"PATH=$PATH\" forkmon -- lua5.4 examples/lua/main.lua" => {
            check_lua_example(&command, "examples/lua")
        }
        "sudo forkmon --filter '*.py' -- python3 app.py" => {
            check_python_example(&command, "app.py")
        }
        "sudo forkmon --filter '*.lua' -- lua5.4 main.lua" => check_lua_example(&command, ""),
        "sudo forkmon --clear -- python3 app.py" => {
            let (running, _dir) = check_restart_example(
                &command,
                &[("app.py", "print('start-up')\nimport mod\n")],
                ("mod.py", "print('value: one')\n", "print('value: two')\n"),
                "changed, resuming from it..",
            );
            let stderr = running.stderr.lock().unwrap().clone();
            assert!(stderr.contains("\x1b[H\x1b[2J"), "cleared: {stderr:?}");
            running.interrupt();
        }
        "sudo forkmon -- make" => check_restart_example(
            &command,
            &[("Makefile", "all:\n\t@cat input.txt\n")],
            ("input.txt", "value: one\n", "value: two\n"),
            "changed, resuming from '",
        )
        .0
        .interrupt(),
        "sudo forkmon -- node app.js" => check_restart_example(
            &command,
            &[(
                "app.js",
                "console.log(require('./m.js').value);\nsetInterval(() => {}, 1000);\n",
            )],
            (
                "m.js",
                "module.exports = { value: 'value: one' };\n",
                "module.exports = { value: 'value: two' };\n",
            ),
            "changed, restarting (node has ",
        )
        .0
        .interrupt(),
        "sudo forkmon --restart --stop-signal INT -- node server.js" => {
            let (running, _dir) = check_restart_example(
                &command,
                &[(
                    "server.js",
                    "process.on('SIGINT', () => { console.log('stopped gently'); process.exit(0); });\n\
                     console.log(require('./m.js').value);\nsetInterval(() => {}, 1000);\n",
                )],
                (
                    "m.js",
                    "module.exports = { value: 'value: one' };\n",
                    "module.exports = { value: 'value: two' };\n",
                ),
                "changed, restarting (--restart)",
            );
            running.wait_for(&["value: one", "stopped gently", "value: two"], &[]);
            running.interrupt();
        }
        "sudo forkmon --filter '*.py' -- python3 main.py" => {
            check_python_example(&command, "main.py")
        }
        "sudo forkmon profile -- python3 app.py"
        | "sudo forkmon profile --all -- lua5.4 main.lua"
        | "sudo forkmon profile --filter '*.py' --svg run.svg -- python3 app.py"
        | "sudo forkmon profile --json run.json --trace run.trace.json -- ./build.sh"
        | "sudo forkmon profile --svg run.svg -- python3 main.py" => {
            check_profile_example(&command, dir)
        }
        "source <(forkmon completions bash)" => {
            let (_, stdout, _) = finished(&format!("{command}; complete -p forkmon"), dir);
            assert!(stdout.contains("-F _forkmon forkmon"), "{stdout}");
        }
        "forkmon completions zsh > ~/.zfunc/_forkmon" => {
            std::fs::create_dir(dir.join(".zfunc")).unwrap();
            finished(&command, dir);
            let script = std::fs::read_to_string(dir.join(".zfunc/_forkmon")).unwrap();
            assert!(script.starts_with("#compdef forkmon"), "{script}");
        }
        "forkmon completions fish > ~/.config/fish/completions/forkmon.fish" => {
            std::fs::create_dir_all(dir.join(".config/fish/completions")).unwrap();
            finished(&command, dir);
            let script =
                std::fs::read_to_string(dir.join(".config/fish/completions/forkmon.fish")).unwrap();
            assert!(script.contains("complete -c forkmon"), "{script}");
        }
        "forkmon man | man -l -" => {
            let (_, page, _) = finished(&command, dir);
            assert!(
                page.contains("SYNOPSIS") && page.contains("forkmon-run(1)"),
                "{page}"
            );
        }
        "forkmon man run | man -l -" => {
            let (_, page, _) = finished(&command, dir);
            assert!(
                page.contains("--restart-delay") && page.contains("FORKMON_RESTART_DELAY"),
                "{page}"
            );
        }
        // Not run here: this test is part of `cargo xtask test`; `cargo xtask
        // setup` installs system packages; `cargo install` is a release build
        // of the whole tree from scratch, minutes on this machine (run by
        // hand for the commit that documented it).
        "cargo xtask test" | "cargo xtask setup" | "cargo install --locked --path forkmon-user" => {
        }
        _ => panic!(
            "no check for the example {example:?}: add one to check_example in \
             tests/tests/cli.rs, saying what its text promises"
        ),
    }
}

#[test]
fn every_example_in_help_and_the_readme_does_what_it_says() {
    if !support::bpf_available("every_example_in_help_and_the_readme_does_what_it_says") {
        return;
    }
    let mut examples = examples_in_help();
    examples.extend(examples_in_readme());
    // The README's first two commands, kept as they are.
    assert_eq!(
        examples_in_readme()[..2],
        [
            "cargo xtask run -- lua5.4 examples/lua/main.lua",
            "cargo xtask test"
        ]
    );
    let mut seen = std::collections::HashSet::new();
    for example in examples {
        if seen.insert(example.clone()) {
            eprintln!("example: {example}");
            check_example(&example);
        }
    }
}
