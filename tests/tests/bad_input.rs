//! Input no one should give forkmon still gets a one-line answer, never a
//! panic: the program is not started.
mod support;

use std::{fs, os::unix::fs::PermissionsExt as _};

use support::{bpf_available, live::Forkmon};

/// What clap exits with for bad command-line input, and forkmon for a bad
/// filter; a panic would exit 101.
const USAGE: i32 = 2;

#[test]
fn absurd_filters_get_one_line_errors_before_the_program_starts() {
    if !bpf_available("absurd_filters_get_one_line_errors_before_the_program_starts") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let marker = dir.path().join("ran");
    let touch = format!("touch {}", marker.display());
    // globset itself panics on this one (its regex nests too deep).
    let braces = format!("{}a{}", "{".repeat(250), "}".repeat(250));
    let parens = format!("{}a{}", "(".repeat(250), ")".repeat(250));
    for (options, env, names) in [
        (vec!["--filter", &braces], None, "--filter"),
        (
            vec!["--filter", "*.lua", "--filter", "[\n"],
            None,
            "--filter",
        ),
        (vec!["--lua-filter", &parens], None, "--lua-filter"),
        (vec![], Some(("FORKMON_FILTER", &parens)), "FORKMON_FILTER"),
    ] {
        let mut forkmon = Forkmon::start_with(dir.path(), &options, &["sh", "-c", &touch], |cmd| {
            if let Some((key, value)) = env {
                cmd.env(key, value);
            }
        });
        let status = forkmon.wait();
        // The reader thread may lag behind the exit on a busy machine.
        forkmon.wait_stderr("\n", 1);
        let err = forkmon.stderr();
        let what = options.first().map_or(names, |o| o.trim_start_matches('-'));
        assert_eq!(status.code(), Some(USAGE), "{what}: {err}");
        assert_eq!(err.lines().count(), 1, "{what}: one line: {err}");
        assert!(err.len() < 200, "{what}: a short line: {err}");
        assert!(err.starts_with("forkmon: invalid "), "{what}: {err}");
        assert!(err.contains(names), "{what}: names the flag: {err}");
        assert!(!marker.exists(), "{what}: the program must not start");
    }
}
