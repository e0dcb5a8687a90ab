//! Where no checkpoint can serve — threads (node), a static binary, a file
//! a subprocess reads, `--restart` — forkmon restarts the program when a
//! file the tree read changes, and waits for changes when it exits.
mod support;

use std::{fs, path::Path, process::Command, thread, time::Duration};

use support::{as_users_run_it, bpf_available, live::Forkmon, save, scratch};

/// Compiles `source` (C) into `dir/name` with `flags`.
fn compile(dir: &Path, name: &str, source: &str, flags: &[&str]) {
    let c = dir.join(format!("{name}.c"));
    fs::write(&c, source).unwrap();
    let status = Command::new("cc")
        .args(flags)
        .arg("-o")
        .arg(dir.join(name))
        .arg(&c)
        .status()
        .unwrap();
    assert!(status.success(), "cc {name}.c failed");
}

/// Saves `content` to `path` once the run has had time to watch what it
/// read (the records may arrive after the output), and waits for `expect`
/// on stdout.
fn save_and_see(forkmon: &Forkmon, path: &Path, content: &str, expect: &str) {
    thread::sleep(Duration::from_millis(300));
    save(path, content);
    forkmon.wait_stdout(expect, 1);
}

/// Waits until nothing of the run's tree is left but forkmon.
fn assert_tree_gone(forkmon: &Forkmon) {
    for _ in 0..100 {
        if forkmon.tree().is_empty() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("left behind: {:?}", forkmon.tree());
}

#[test]
fn node_restarts_when_a_required_module_changes() {
    if !bpf_available("node_restarts_when_a_required_module_changes") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    fs::write(
        d.join("app.js"),
        "const m = require('./m.js');\nconsole.log('value ' + m.value);\n\
         setInterval(() => {}, 1000);\n",
    )
    .unwrap();
    fs::write(d.join("m.js"), "module.exports = { value: 1 };\n").unwrap();
    let forkmon = Forkmon::start(d, &[], &["node", "app.js"]);
    forkmon.wait_stdout("value 1", 1);
    save_and_see(
        &forkmon,
        &d.join("m.js"),
        "module.exports = { value: 2 };\n",
        "value 2",
    );
    let err = forkmon.stderr();
    let line = format!(
        "[forkmon] file '{}' changed, restarting (node has ",
        d.join("m.js").display()
    );
    assert!(err.contains(&line), "no {line:?} in:\n{err}");
    // The first node was stopped: one node runs.
    let nodes = forkmon
        .tree()
        .into_iter()
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "node")
        })
        .count();
    assert_eq!(nodes, 1, "{:?}\n{err}", forkmon.tree());
}

#[test]
fn a_static_binary_waits_after_its_exit_and_restarts_on_a_change() {
    if !bpf_available("a_static_binary_waits_after_its_exit_and_restarts_on_a_change") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    compile(
        d,
        "reader",
        r#"#include <stdio.h>
int main(void) {
    char text[64] = {0};
    FILE *f = fopen("data.txt", "r");
    if (!f || !fgets(text, sizeof text, f)) return 1;
    printf("data: %s", text);
    return 0;
}
"#,
        &["-static", "-O1"],
    );
    fs::write(d.join("data.txt"), "one\n").unwrap();
    let mut forkmon = Forkmon::start(d, &[], &["./reader"]);
    forkmon.wait_stdout("data: one", 1);
    forkmon.wait_stderr("program exited with status 0, waiting for changes..", 1);
    thread::sleep(Duration::from_millis(300));
    forkmon.check_running().expect("forkmon waits for changes");
    save(&d.join("data.txt"), "two\n");
    forkmon.wait_stdout("data: two", 1);
    forkmon.wait_stderr("waiting for changes..", 2);
    let err = forkmon.stderr();
    assert!(
        err.contains("restarting (reader runs without forkmon's stub"),
        "{err}"
    );
    // Rewritten in place, as `cp` does: seen too.
    fs::write(d.join("data.txt"), "three\n").unwrap();
    forkmon.wait_stdout("data: three", 1);
    forkmon.signal(libc::SIGINT);
    assert_eq!(forkmon.wait().code(), Some(0), "the program's last status");
    assert_tree_gone(&forkmon);
}

#[test]
fn make_rebuilds_and_reruns_when_a_source_its_compiler_read_changes() {
    if !bpf_available("make_rebuilds_and_reruns_when_a_source_its_compiler_read_changes") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    fs::write(
        d.join("Makefile"),
        "run: hello\n\t./hello\nhello: main.c util.c util.h\n\tcc -o hello main.c util.c\n",
    )
    .unwrap();
    fs::write(
        d.join("main.c"),
        "#include <stdio.h>\n#include \"util.h\"\nint main(void) { printf(\"answer %d\\n\", answer()); return 0; }\n",
    )
    .unwrap();
    fs::write(d.join("util.h"), "int answer(void);\n").unwrap();
    fs::write(
        d.join("util.c"),
        "#include \"util.h\"\nint answer(void) { return 41; }\n",
    )
    .unwrap();
    let forkmon = Forkmon::start(d, &[], &["make", "--no-print-directory"]);
    forkmon.wait_stdout("answer 41", 1);
    forkmon.wait_stderr("waiting for changes..", 1);
    thread::sleep(Duration::from_millis(200));
    // Each source, read only by the compiler: make runs again.
    save(
        &d.join("util.c"),
        "#include \"util.h\"\nint answer(void) { return 42; }\n",
    );
    forkmon.wait_stdout("answer 42", 1);
    forkmon.wait_stderr("waiting for changes..", 2);
    thread::sleep(Duration::from_millis(300));
    let main = fs::read_to_string(d.join("main.c")).unwrap();
    save(
        &d.join("main.c"),
        &main.replace("answer %d", "answer is %d"),
    );
    forkmon.wait_stdout("answer is 42", 1);
    let err = forkmon.stderr();
    assert!(
        err.contains(&format!("file '{}' changed", d.join("util.c").display())),
        "the line names the file that changed:\n{err}"
    );
}

#[test]
fn a_file_read_by_a_subprocess_of_a_shell_wrapper_restarts_it() {
    if !bpf_available("a_file_read_by_a_subprocess_of_a_shell_wrapper_restarts_it") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    fs::write(d.join("conf.py"), "VALUE = 1\n").unwrap();
    fs::write(
        d.join("app.py"),
        "import conf\nprint('value', conf.VALUE)\n",
    )
    .unwrap();
    // Not the last command: the shell forks python instead of exec'ing it.
    let forkmon = Forkmon::start_with(d, &[], &["sh", "-c", "python3 app.py; echo done"], |cmd| {
        as_users_run_it(cmd);
    });
    forkmon.wait_stdout("done", 1);
    thread::sleep(Duration::from_millis(300));
    // Another length, for the bytecode cache (see below).
    save(&d.join("conf.py"), "VALUE = 22\n");
    forkmon.wait_stdout("value 22", 1);
    let err = forkmon.stderr();
    assert!(err.contains("restarting (read by python3, pid "), "{err}");
    assert!(err.contains("a subprocess)"), "{err}");
}

#[test]
fn restart_mode_never_checkpoints_and_stops_with_the_signal_asked_for() {
    if !bpf_available("restart_mode_never_checkpoints_and_stops_with_the_signal_asked_for") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    fs::write(d.join("conf.py"), "VALUE = 1\n").unwrap();
    fs::write(
        d.join("app.py"),
        "import signal, sys, time\n\
         def stop(*_):\n    print('stopped gently', flush=True)\n    sys.exit(0)\n\
         signal.signal(signal.SIGINT, stop)\n\
         import conf\nprint('value', conf.VALUE, flush=True)\ntime.sleep(60)\n",
    )
    .unwrap();
    let forkmon = Forkmon::start_with(
        d,
        &["--restart", "--stop-signal", "INT"],
        &["python3", "app.py"],
        |cmd| {
            as_users_run_it(cmd);
        },
    );
    forkmon.wait_stdout("value 1", 1);
    thread::sleep(Duration::from_millis(300));
    // Another length: a bytecode cache is checked against the source's
    // size and its mtime in whole seconds, and a save within the second
    // the file was made would otherwise leave the cache valid (the
    // restarted program printed "value 1": seen once in `cargo xtask
    // test`). So above too.
    save(&d.join("conf.py"), "VALUE = 22\n");
    forkmon.wait_stdout("value 22", 1);
    assert!(
        forkmon.stdout().contains("stopped gently"),
        "{}",
        forkmon.stdout()
    );
    let err = forkmon.stderr();
    assert!(err.contains("restarting (--restart)"), "{err}");
    assert!(
        !err.contains("watch '"),
        "no checkpoint in restart mode:\n{err}"
    );
}

#[test]
fn a_program_that_ignores_the_stop_signal_is_killed_after_the_timeout() {
    if !bpf_available("a_program_that_ignores_the_stop_signal_is_killed_after_the_timeout") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    fs::write(d.join("data.txt"), "1\n").unwrap();
    fs::write(
        d.join("stubborn.sh"),
        "trap '' TERM\nread v < data.txt\necho \"value $v\"\nwhile :; do sleep 0.1; done\n",
    )
    .unwrap();
    let forkmon = Forkmon::start(
        d,
        &["--restart", "--stop-timeout", "300ms"],
        &["bash", "stubborn.sh"],
    );
    forkmon.wait_stdout("value 1", 1);
    save_and_see(&forkmon, &d.join("data.txt"), "2\n", "value 2");
    // One bash left (and its sleep): the stubborn one was killed.
    thread::sleep(Duration::from_millis(200));
    let bashes = forkmon
        .tree()
        .into_iter()
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "bash")
        })
        .count();
    assert_eq!(bashes, 1);
}

#[test]
fn the_status_line_says_what_a_resume_skipped() {
    if !bpf_available("the_status_line_says_what_a_resume_skipped") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    fs::write(d.join("part.lua"), "print('part 1')\n").unwrap();
    fs::write(
        d.join("main.lua"),
        "local t = os.clock() while os.clock() - t < 1.0 do end\ndofile('part.lua')\n",
    )
    .unwrap();
    let forkmon = Forkmon::start(d, &["--filter", "part.lua"], &["lua5.4", "main.lua"]);
    forkmon.wait_stdout("part 1", 1);
    save_and_see(&forkmon, &d.join("part.lua"), "print('part 2')\n", "part 2");
    forkmon.wait_stderr("start-up skipped: ", 1);
    let err = forkmon.stderr();
    let line = err
        .lines()
        .find(|l| l.contains("resumed from"))
        .unwrap_or_else(|| panic!("no status line in:\n{err}"));
    assert!(
        line.starts_with(&format!(
            "[forkmon] resumed from '{}' in ",
            d.join("part.lua").display()
        )),
        "{line}"
    );
    let skipped = line
        .rsplit_once("start-up skipped: ")
        .and_then(|(_, s)| s.strip_suffix(" s)"))
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no seconds skipped in {line:?}"));
    assert!(skipped >= 1.0, "a 1 s start-up skipped only {skipped} s");
}

/// `forkmon run OPTIONS -- PROGRAM` on a terminal (`script`'s pty), keys
/// typed on it with [`Process::send`]; all output on stdout.
fn on_a_terminal(dir: &Path, options: &str, program: &str) -> tests::process::Process {
    let mut cmd = Command::new("script");
    cmd.current_dir(dir)
        .arg("-qec")
        .arg(format!(
            "{} run --no-color {options} -- {program}",
            support::forkmon_bin().display()
        ))
        .arg("/dev/null");
    let setup = tests::process::Setup {
        stdin: true,
        kill_on_drop: true,
        ..Default::default()
    };
    tests::process::Process::start("forkmon on a terminal", cmd, setup).unwrap()
}

/// Waits until stdout holds `needle` `times` times.
fn wait_for(process: &tests::process::Process, needle: &str, times: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    process
        .wait_output(needle, deadline, |out, _| {
            out.matches(needle).count() >= times
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn keys_resume_restart_and_quit_without_an_edit() {
    if !bpf_available("keys_resume_restart_and_quit_without_an_edit") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    fs::write(d.join("main.lua"), "print('startup')\ndofile('part.lua')\n").unwrap();
    fs::write(d.join("part.lua"), "print('part')\n").unwrap();
    let mut forkmon = on_a_terminal(d, "--keys --filter part.lua", "lua5.4 main.lua");
    wait_for(&forkmon, "waiting for changes..", 1);
    forkmon.send(b"r").unwrap();
    wait_for(&forkmon, "(key r)", 1);
    wait_for(&forkmon, "part", 2);
    assert_eq!(
        forkmon.stdout().matches("startup").count(),
        1,
        "resumed, not restarted"
    );
    wait_for(&forkmon, "waiting for changes..", 2);
    forkmon.send(b"R").unwrap();
    wait_for(&forkmon, "restarting (key R)", 1);
    wait_for(&forkmon, "startup", 2);
    wait_for(&forkmon, "waiting for changes..", 3);
    forkmon.send(b"q").unwrap();
    let status = forkmon.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{}", forkmon.stdout());
}

#[test]
fn clear_clears_the_screen_before_a_resume() {
    if !bpf_available("clear_clears_the_screen_before_a_resume") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    fs::write(d.join("main.lua"), "dofile('part.lua')\n").unwrap();
    fs::write(d.join("part.lua"), "print('part 1')\n").unwrap();
    let forkmon = Forkmon::start(
        d,
        &["--clear", "--filter", "part.lua"],
        &["lua5.4", "main.lua"],
    );
    forkmon.wait_stdout("part 1", 1);
    forkmon.wait_stderr("waiting for changes..", 1);
    assert!(
        !forkmon.stderr().contains('\x1b'),
        "not before the first run"
    );
    save(&d.join("part.lua"), "print('part 2')\n");
    forkmon.wait_stdout("part 2", 1);
    let err = forkmon.stderr();
    let clear = err.find("\x1b[H\x1b[2J").expect("the screen cleared");
    assert!(clear < err.find("changed, resuming").unwrap(), "{err:?}");
}

#[test]
fn files_the_projects_ignore_files_leave_out_are_no_checkpoints() {
    if !bpf_available("files_the_projects_ignore_files_leave_out_are_no_checkpoints") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    fs::create_dir_all(d.join(".git")).unwrap();
    fs::create_dir_all(d.join("generated")).unwrap();
    fs::write(d.join(".gitignore"), "generated/\n").unwrap();
    fs::write(d.join("generated/table.lua"), "return 1\n").unwrap();
    fs::write(d.join("part.lua"), "print('part')\n").unwrap();
    fs::write(
        d.join("main.lua"),
        "dofile('generated/table.lua')\ndofile('part.lua')\n",
    )
    .unwrap();
    let forkmon = Forkmon::start(d, &[], &["lua5.4", "main.lua"]);
    forkmon.wait_stderr("waiting for changes..", 1);
    let err = forkmon.stderr();
    assert!(
        err.contains(&format!("watch '{}'", d.join("part.lua").display())),
        "{err}"
    );
    assert!(
        !err.contains("generated"),
        "an ignored file was checkpointed:\n{err}"
    );
    // Nor watched: its change does nothing.
    save(&d.join("generated/table.lua"), "return 2\n");
    thread::sleep(Duration::from_millis(600));
    assert!(
        !forkmon.stderr().contains("changed"),
        "{}",
        forkmon.stderr()
    );
}

#[test]
fn make_up_to_date_watches_the_sources_it_only_stats_and_not_what_it_builds() {
    if !bpf_available("make_up_to_date_watches_the_sources_it_only_stats_and_not_what_it_builds") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    fs::write(
        d.join("Makefile"),
        "run: hello\n\t@./hello\nhello: hello.c\n\tcc -o hello hello.c\n",
    )
    .unwrap();
    let source = |n: u32| {
        format!("#include <stdio.h>\nint main(void) {{ puts(\"build {n}\"); return 0; }}\n")
    };
    fs::write(d.join("hello.c"), source(1)).unwrap();
    // Built before: make only stats hello.c and hello.
    let built = Command::new("make")
        .arg("-s")
        .current_dir(d)
        .status()
        .unwrap();
    assert!(built.success());
    let forkmon = Forkmon::start(d, &[], &["make", "--no-print-directory"]);
    forkmon.wait_stdout("build 1", 1);
    forkmon.wait_stderr("waiting for changes..", 1);
    save_and_see(&forkmon, &d.join("hello.c"), &source(2), "build 2");
    forkmon.wait_stderr("waiting for changes..", 2);
    // Writing `hello` (which make stats) must not start it again.
    thread::sleep(Duration::from_millis(800));
    let err = forkmon.stderr();
    assert_eq!(err.matches("changed").count(), 1, "{err}");
    assert!(
        err.contains(&format!("file '{}' changed", d.join("hello.c").display())),
        "{err}"
    );
}
