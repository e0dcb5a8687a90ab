//! The command line as a user meets it: errors, messages, and the examples
//! of `--help` and the README, run as written.
mod support;

use std::process::{Command, Output};

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

    let flag = forkmon(&["--lua-filter", "%.lua$;%", "--", "true"]);
    assert_eq!(flag.status.code(), Some(1));
    assert_eq!(
        stderr(&flag),
        "forkmon: invalid --lua-filter pattern '%': malformed pattern (ends with '%'); \
         see Lua patterns, e.g. '%.lua$'\n"
    );
    let env = forkmon_as_nobody(&["--", "true"], &[("FORKMON_FILTER", "%")]);
    assert_eq!(env.status.code(), Some(1));
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
        for var in [
            "NO_COLOR",
            "CLICOLOR",
            "CLICOLOR_FORCE",
            "FORKMON_NO_COLORS",
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
