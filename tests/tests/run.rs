//! `forkmon run` end to end: real BPF, the real stub, real programs whose
//! files the tests edit while they run.
mod support;

use support::scratch;

use std::{fs, os::unix::fs::PermissionsExt as _, path::Path, thread, time::Duration};

use support::{
    bpf_available, fixture,
    live::{Forkmon, zombies_of},
    rust_fixture,
};

fn write(dir: &Path, name: &str, content: &str) {
    fs::write(dir.join(name), content).unwrap();
}

/// How editors save: each way must be noticed.
fn save_in_place(path: &Path, content: &str) {
    fs::write(path, content).unwrap();
}

fn save_by_rename(path: &Path, content: &str) {
    let tmp = path.with_extension("swp");
    fs::write(&tmp, content).unwrap();
    fs::rename(&tmp, path).unwrap();
}

fn save_backup_then_write(path: &Path, content: &str) {
    let backup = path.with_extension("bak");
    fs::rename(path, &backup).unwrap();
    fs::write(path, content).unwrap();
}

fn save_delete_recreate(path: &Path, content: &str) {
    fs::remove_file(path).unwrap();
    thread::sleep(Duration::from_millis(100));
    fs::write(path, content).unwrap();
}

#[test]
fn lua_readme_scenario_resumes_from_the_changed_file() {
    if !bpf_available("lua_readme_scenario_resumes_from_the_changed_file") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    for name in ["main.lua", "foo.lua"] {
        let example = support::workspace_dir().join("examples/lua").join(name);
        fs::copy(example, d.join(name)).unwrap();
    }
    write(d, "bar.lua", "print('bar!')\n");
    // The README's example, plus a dofile after the require.
    fs::write(
        d.join("main.lua"),
        fs::read_to_string(d.join("main.lua")).unwrap().replace(
            "print(\"finished\")",
            "dofile(dir .. \"bar.lua\")\nprint(\"finished\")",
        ),
    )
    .unwrap();

    let forkmon = Forkmon::start(d, &["--flush"], &["lua5.4", "main.lua"]);
    forkmon.wait_stdout("finished", 1);
    // forkmon says "watch" once the program goes on, so the program may
    // finish first.
    for name in ["main.lua", "foo.lua", "bar.lua"] {
        let line = format!("[forkmon] watch '{}'", d.join(name).display());
        forkmon.wait_stderr(&line, 1);
    }
    assert_eq!(forkmon.stdout(), "startup\nfoo!\nbar!\nfinished\n");

    save_in_place(&d.join("foo.lua"), "print('hello world!')\n");
    forkmon.wait_stdout("hello world!", 1);
    forkmon.wait_stdout("finished", 2);
    assert!(forkmon.stderr().contains(&format!(
        "[forkmon] file '{}' changed, resuming from it..",
        d.join("foo.lua").display()
    )));
    assert_eq!(
        forkmon.stdout(),
        "startup\nfoo!\nbar!\nfinished\nhello world!\nbar!\nfinished\n",
        "start-up is not run again"
    );

    save_in_place(&d.join("bar.lua"), "print('new bar')\n");
    forkmon.wait_stdout("new bar", 1);
    forkmon.wait_stdout("finished", 3);
    assert!(
        forkmon.stdout().ends_with("finished\nnew bar\nfinished\n"),
        "resumed from bar.lua, after foo.lua: {}",
        forkmon.stdout()
    );
}

/// The C fixture with each way of opening its file.
fn resumes_with_new_content(how: &str, options: &[&str]) {
    let dir = scratch();
    let d = dir.path();
    write(d, "data.txt", "one\n");
    let forkmon = Forkmon::start(d, options, &[fixture("watched").to_str().unwrap(), how]);
    forkmon.wait_stdout("content=one", 1);
    // Said once the child runs: it may print first.
    forkmon.wait_stderr(
        &format!("[forkmon] watch '{}'", d.join("data.txt").display()),
        1,
    );
    save_in_place(&d.join("data.txt"), "two\n");
    forkmon.wait_stdout("content=two", 1);
    forkmon.wait_stdout("done pid=", 2);
    let out = forkmon.stdout();
    assert_eq!(
        out.matches("startup").count(),
        1,
        "{how}: start-up ran again:\n{out}"
    );
    let pids: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("done pid="))
        .collect();
    assert_ne!(
        pids[0], pids[1],
        "{how}: the resumed run is a fresh process"
    );
}

#[test]
fn c_raw_syscall_openat_resumes() {
    if bpf_available("c_raw_syscall_openat_resumes") {
        resumes_with_new_content("syscall", &[]);
    }
}

/// A resumed child re-opens the file with the program's own arguments:
/// each open syscall, and a directory fd the program closes right after.
/// Saved by renaming over it, the new file is seen only through a re-open.
#[test]
fn every_open_syscall_resumes() {
    if !bpf_available("every_open_syscall_resumes") {
        return;
    }
    for how in ["sys_open", "openat2", "dirfd"] {
        let dir = scratch();
        let d = dir.path();
        write(d, "data.txt", "one\n");
        let forkmon = Forkmon::start(d, &[], &[fixture("watched").to_str().unwrap(), how]);
        forkmon.wait_stdout("content=one", 1);
        save_by_rename(&d.join("data.txt"), "two\n");
        forkmon.wait_stdout("content=two", 1);
        let out = forkmon.stdout();
        assert_eq!(out.matches("startup").count(), 1, "{how}:\n{out}");
    }
}

#[test]
fn without_standby_a_resume_forks() {
    if bpf_available("without_standby_a_resume_forks") {
        resumes_with_new_content("syscall", &["--no-standby"]);
    }
}

/// A change stops the program at once; it resumes only after the restart
/// delay.
#[test]
fn a_change_stops_the_program_before_the_delay_ends() {
    if !bpf_available("a_change_stops_the_program_before_the_delay_ends") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    write(d, "data.txt", "one\n");
    let ticker = fixture("ticker");
    let forkmon = Forkmon::start(d, &["--restart-delay", "1500"], &[ticker.to_str().unwrap()]);
    forkmon.wait_stdout("tick one 3", 1);
    save_in_place(&d.join("data.txt"), "two\n");
    thread::sleep(Duration::from_millis(300));
    let stopped = forkmon.stdout();
    thread::sleep(Duration::from_millis(500));
    let later = forkmon.stdout();
    assert_eq!(
        stopped.matches("tick one").count(),
        later.matches("tick one").count(),
        "the old run went on after the change:\n{later}"
    );
    assert!(
        !later.contains("content=two"),
        "resumed before the delay:\n{later}"
    );
    forkmon.wait_stdout("tick two 3", 1);
}

#[test]
fn c_open64_resumes() {
    if bpf_available("c_open64_resumes") {
        resumes_with_new_content("open64", &[]);
    }
}

#[test]
fn c_fopen_resumes() {
    if bpf_available("c_fopen_resumes") {
        resumes_with_new_content("fopen", &[]);
    }
}

/// An interpreter reading a module it watches: start-up is not rerun.
fn interpreter_resumes(program: &[&str], module: &str, old: &str, new: &str) {
    resumes_with(&[], program, module, old, new);
}

/// Runs `program` under forkmon with `options`, where it opens `module`
/// (relative to its directory, which is made if needed) and prints
/// `content=…`; saves the new content and checks that start-up ran once.
/// Returns forkmon's stdout and stderr.
fn resumes_with(
    options: &[&str],
    program: &[&str],
    module: &str,
    old: &str,
    new: &str,
) -> (String, String) {
    let dir = scratch();
    let d = dir.path();
    fs::create_dir_all(d.join(module).parent().unwrap()).unwrap();
    write(d, module, old);
    let forkmon = Forkmon::start(d, options, program);
    forkmon.wait_stdout("content=one", 1);
    save_by_rename(&d.join(module), new);
    forkmon.wait_stdout("content=two", 1);
    let out = forkmon.stdout();
    assert_eq!(
        out.matches("startup").count(),
        1,
        "start-up ran again:\n{out}"
    );
    (out, forkmon.stderr())
}

#[test]
fn python_import_resumes() {
    if !bpf_available("python_import_resumes") {
        return;
    }
    interpreter_resumes(
        &[
            "python3",
            "-c",
            "print('startup', flush=True)\nimport mod\nprint('content=' + mod.VALUE, flush=True)",
        ],
        "mod.py",
        "VALUE = 'one'\n",
        "VALUE = 'two'\n",
    );
}

/// forkmon is not woken for the opens it does not answer (no record leaves
/// the kernel for them). Thousands of them, more than the ring buffer
/// holds, must not hide the open that matters.
#[test]
fn many_unmatched_opens_before_the_checkpoint() {
    if !bpf_available("many_unmatched_opens_before_the_checkpoint") {
        return;
    }
    // 20000 records of 4 KiB each would fill the 16 MiB ring 5 times over.
    let program = "import os\nprint('startup', flush=True)\n\
                   for _ in range(20000): os.close(os.open('/etc/hostname', os.O_RDONLY))\n\
                   import mod\nprint('content=' + mod.VALUE, flush=True)";
    resumes_with(
        &["--filter", "*.py"],
        &["python3", "-c", program],
        "mod.py",
        "VALUE = 'one'\n",
        "VALUE = 'two'\n",
    );
}

/// An open the kernel signals but forkmon turns down (an excluded file the
/// prefilter cannot tell apart) is forked at early by the stub, which then
/// kills and reaps that child: the program goes on with no child of its
/// own, and the real checkpoint after it still resumes.
#[test]
fn a_turned_down_candidate_leaves_the_program_no_child() {
    if !bpf_available("a_turned_down_candidate_leaves_the_program_no_child") {
        return;
    }
    // The decoy is written in start-up (an open for writing is never a
    // candidate), then opened to read: a candidate.
    let program = "import os\nprint('startup', flush=True)\n\
                   open('decoy.txt', 'w').write('decoy')\nopen('decoy.txt').read()\n\
                   try:\n    os.waitpid(-1, os.WNOHANG)\n    print('a child', flush=True)\n\
                   except ChildProcessError:\n    print('no child', flush=True)\n\
                   print('content=' + open('data.txt').read().strip(), flush=True)";
    let (out, err) = resumes_with(
        &["--filter", "*.txt", "--filter", "!decoy.txt"],
        &["python3", "-c", program],
        "data.txt",
        "one\n",
        "two\n",
    );
    assert_eq!(out.matches("no child").count(), 1, "{out}");
    assert!(
        !err.contains("decoy.txt'"),
        "the decoy became a checkpoint:\n{err}"
    );
}

/// forkmon knows the program's cwd without asking /proc at every open:
/// after a chdir it must ask again.
#[test]
fn relative_opens_after_a_chdir_resolve_against_the_new_cwd() {
    if !bpf_available("relative_opens_after_a_chdir_resolve_against_the_new_cwd") {
        return;
    }
    let program = "import os\nprint('startup', flush=True)\nos.chdir('sub')\n\
                   print('content=' + open('data.txt').read().strip(), flush=True)";
    resumes_with(
        &["--filter", "*.txt"],
        &["python3", "-c", program],
        "sub/data.txt",
        "one\n",
        "two\n",
    );
}

/// Only regular files become checkpoints: a FIFO that matches the filter is
/// let through (re-opening it in a resumed child would not give the same
/// data back).
#[test]
fn a_matching_fifo_is_not_a_checkpoint() {
    if !bpf_available("a_matching_fifo_is_not_a_checkpoint") {
        return;
    }
    let program = "import os\nos.mkfifo('pipe.txt')\n\
                   os.close(os.open('pipe.txt', os.O_RDONLY | os.O_NONBLOCK))\n\
                   print('startup', flush=True)\n\
                   print('content=' + open('data.txt').read().strip(), flush=True)";
    let dir = scratch();
    let d = dir.path();
    write(d, "data.txt", "one\n");
    let forkmon = Forkmon::start(d, &["--filter", "*.txt"], &["python3", "-c", program]);
    forkmon.wait_stdout("content=one", 1);
    save_by_rename(&d.join("data.txt"), "two\n");
    forkmon.wait_stdout("content=two", 1);
    let err = forkmon.stderr();
    assert!(err.contains("data.txt'"), "data.txt is watched:\n{err}");
    assert!(
        !err.contains("pipe.txt"),
        "the FIFO is no checkpoint:\n{err}"
    );
}

#[test]
fn perl_require_resumes() {
    if !bpf_available("perl_require_resumes") {
        return;
    }
    interpreter_resumes(
        &[
            "perl",
            "-e",
            "$| = 1; print \"startup\\n\"; require './mod.pl'; print \"content=$main::value\\n\";",
        ],
        "mod.pl",
        "$main::value = 'one';\n1;\n",
        "$main::value = 'two';\n1;\n",
    );
}

#[test]
fn rust_read_to_string_resumes() {
    if !bpf_available("rust_read_to_string_resumes") {
        return;
    }
    let program = rust_fixture("readfile");
    interpreter_resumes(&[program.to_str().unwrap()], "data.txt", "one\n", "two\n");
}

#[test]
fn chain_resumes_from_the_edited_link() {
    if !bpf_available("chain_resumes_from_the_edited_link") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    write(d, "a.lua", "print('a1')\ndofile('b.lua')\n");
    write(d, "b.lua", "print('b1')\ndofile('c.lua')\n");
    write(d, "c.lua", "print('c1')\n");
    let forkmon = Forkmon::start(d, &["--flush", "--filter", "*.lua"], &["lua5.4", "a.lua"]);
    forkmon.wait_stdout("c1", 1);

    save_in_place(&d.join("b.lua"), "print('b2')\ndofile('c.lua')\n");
    forkmon.wait_stdout("c1", 2);
    assert_eq!(
        forkmon.stdout(),
        "a1\nb1\nc1\nb2\nc1\n",
        "resumed from b, not a"
    );

    save_in_place(&d.join("a.lua"), "print('a2')\ndofile('b.lua')\n");
    forkmon.wait_stdout("c1", 3);
    assert_eq!(
        forkmon.stdout(),
        "a1\nb1\nc1\nb2\nc1\na2\nb2\nc1\n",
        "resumed from a"
    );
}

#[test]
fn every_save_style_is_noticed() {
    if !bpf_available("every_save_style_is_noticed") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    write(d, "data.txt", "v0\n");
    let forkmon = Forkmon::start(d, &[], &[fixture("watched").to_str().unwrap()]);
    forkmon.wait_stdout("content=v0", 1);
    type Save = fn(&Path, &str);
    let styles: [(&str, Save); 4] = [
        ("in place", save_in_place),
        ("rename over", save_by_rename),
        ("backup then write", save_backup_then_write),
        ("delete and recreate", save_delete_recreate),
    ];
    for (i, (style, save)) in styles.iter().enumerate() {
        let content = format!("v{}", i + 1);
        save(&d.join("data.txt"), &format!("{content}\n"));
        forkmon.wait_stdout(&format!("content={content}\n"), 1);
        eprintln!("{style}: resumed");
    }
    assert_eq!(forkmon.stdout().matches("startup").count(), 1);
}

#[test]
fn second_save_is_never_lost() {
    if !bpf_available("second_save_is_never_lost") {
        return;
    }
    for gap_ms in [0, 60, 150, 400] {
        let dir = scratch();
        let d = dir.path();
        write(d, "data.txt", "first\n");
        let forkmon = Forkmon::start(d, &[], &[fixture("watched").to_str().unwrap()]);
        forkmon.wait_stdout("content=first", 1);
        save_in_place(&d.join("data.txt"), "second\n");
        thread::sleep(Duration::from_millis(gap_ms));
        save_in_place(&d.join("data.txt"), "third\n");
        forkmon.wait_stdout("content=third", 1);
        // Whatever ran in between, the last run saw the last content.
        thread::sleep(Duration::from_millis(600));
        let out = forkmon.stdout();
        let last = out.lines().rfind(|l| l.starts_with("content="));
        assert_eq!(last, Some("content=third"), "gap {gap_ms} ms:\n{out}");
    }
}

#[test]
fn rapid_saves_without_delays_end_on_the_last_content() {
    if !bpf_available("rapid_saves_without_delays_end_on_the_last_content") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    write(d, "data.txt", "v0\n");
    let forkmon = Forkmon::start(
        d,
        &["--restart-delay", "0", "--ignore-delay", "0"],
        &[fixture("watched").to_str().unwrap()],
    );
    forkmon.wait_stdout("content=v0", 1);
    // Saves land while resumed children are still starting.
    for i in 1..=8 {
        save_in_place(&d.join("data.txt"), &format!("v{i}\n"));
        thread::sleep(Duration::from_millis(3));
    }
    forkmon.wait_stdout("content=v8", 1);
    thread::sleep(Duration::from_millis(500));
    let out = forkmon.stdout();
    let last = out.lines().rfind(|l| l.starts_with("content="));
    assert_eq!(last, Some("content=v8"), "{out}");
    assert_eq!(out.matches("startup").count(), 1, "{out}");
}

#[test]
fn program_exit_then_change_resumes_without_zombies() {
    if !bpf_available("program_exit_then_change_resumes_without_zombies") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    write(d, "data.txt", "one\n");
    let forkmon = Forkmon::start(d, &[], &[fixture("watched").to_str().unwrap()]);
    forkmon.wait_stdout("done pid=", 1);
    forkmon.wait_stderr("program exited with status 0", 1);
    save_by_rename(&d.join("data.txt"), "two\n");
    forkmon.wait_stdout("content=two", 1);
    forkmon.wait_stderr("program exited with status 0", 2);
    thread::sleep(Duration::from_millis(200));
    let mut zombies = zombies_of(forkmon.pid());
    for pid in forkmon.tree() {
        zombies.extend(zombies_of(pid));
    }
    assert!(zombies.is_empty(), "zombies left: {zombies:?}");
}

#[test]
fn startup_output_is_printed_once_unless_no_flush() {
    if !bpf_available("startup_output_is_printed_once_unless_no_flush") {
        return;
    }
    // (options, how the program opens its file, times "startup" is printed)
    for (options, open, startups) in [
        (&[][..], "openat", 1),
        (&[][..], "fopen", 1),
        (&["--flush"][..], "openat", 1),
        (&["--no-flush"][..], "openat", 2),
    ] {
        let dir = scratch();
        let d = dir.path();
        write(d, "data.txt", "one\n");
        let forkmon = Forkmon::start(d, options, &[fixture("unflushed").to_str().unwrap(), open]);
        forkmon.wait_stdout("content=one", 1);
        save_in_place(&d.join("data.txt"), "two\n");
        forkmon.wait_stdout("content=two", 1);
        assert_eq!(
            forkmon.stdout().matches("startup").count(),
            startups,
            "{options:?} {open}: {}",
            forkmon.stdout()
        );
    }
}

#[test]
fn threaded_process_is_not_checkpointed() {
    if !bpf_available("threaded_process_is_not_checkpointed") {
        return;
    }
    let dir = scratch();
    write(dir.path(), "data.txt", "one\n");
    let mut forkmon = Forkmon::start(dir.path(), &[], &[fixture("threads").to_str().unwrap()]);
    // It runs to its end; the file it read restarts it (no checkpoint can
    // serve it).
    forkmon.wait_stderr("program exited with status 0, waiting for changes..", 1);
    assert_eq!(forkmon.stdout(), "content=one\n");
    thread::sleep(Duration::from_millis(200));
    save_by_rename(&dir.path().join("data.txt"), "two\n");
    forkmon.wait_stdout("content=two", 1);
    forkmon.signal(libc::SIGINT);
    let status = forkmon.wait();
    assert!(status.success(), "{}", forkmon.stderr());
    let err = forkmon.stderr();
    assert_eq!(
        err.matches("threads: not checkpointing").count(),
        1,
        "one line says why, once:\n{err}"
    );
    assert!(
        err.contains("changed, restarting (threads has 2 threads)"),
        "{err}"
    );
    assert!(!err.contains("watch '"), "{err}");
}

#[test]
fn subprocesses_are_not_checkpointed_but_what_they_read_restarts_the_program() {
    if !bpf_available("subprocesses_are_not_checkpointed_but_what_they_read_restarts_the_program") {
        return;
    }
    let dir = scratch();
    write(dir.path(), "data.txt", "one\n");
    let mut forkmon = Forkmon::start(dir.path(), &[], &["sh", "-c", "cat data.txt; exit 3"]);
    forkmon.wait_stderr("program exited with status 3, waiting for changes..", 1);
    // Both streams are read apart: its output may come in after the line.
    forkmon.wait_stdout("one", 1);
    assert_eq!(forkmon.stdout(), "one\n");
    thread::sleep(Duration::from_millis(200));
    save_by_rename(&dir.path().join("data.txt"), "two\n");
    forkmon.wait_stdout("two", 1);
    forkmon.wait_stderr("waiting for changes..", 2);
    forkmon.signal(libc::SIGINT);
    let status = forkmon.wait();
    assert_eq!(status.code(), Some(3), "the program's last status");
    let err = forkmon.stderr();
    assert!(!err.contains("watch '"), "no checkpoint:\n{err}");
    assert!(err.contains("restarting (read by cat, pid "), "{err}");
}

#[test]
fn bad_options_get_one_line_errors_before_the_program_starts() {
    if !bpf_available("bad_options_get_one_line_errors_before_the_program_starts") {
        return;
    }
    let dir = scratch();
    let marker = dir.path().join("ran");
    let touch = format!("touch {}", marker.display());
    for (options, env, names) in [
        (&["--restart-delay", "-1"][..], None, "--restart-delay"),
        (&["--ignore-delay", "soon"][..], None, "--ignore-delay"),
        (&[][..], Some(("FORKMON_FILTER", "%")), "FORKMON_FILTER"),
        (&["--filter", "[a"][..], None, "--filter"),
    ] {
        let mut forkmon = Forkmon::start_with(dir.path(), options, &["sh", "-c", &touch], |cmd| {
            if let Some((key, value)) = env {
                cmd.env(key, value);
            }
        });
        let status = forkmon.wait();
        assert!(!status.success());
        let err = forkmon.stderr();
        assert!(err.contains(names), "{options:?} {env:?}: {err}");
        assert!(err.trim_end().lines().count() <= 2, "short error: {err}");
        assert!(!marker.exists(), "the program must not start");
    }
}

/// The watched file's directory is removed and made again: the resume sees
/// the new file, and later edits of it are seen (the watch follows the
/// directory's name, not the inode that was deleted).
#[test]
fn a_replaced_directory_is_watched_again() {
    if !bpf_available("a_replaced_directory_is_watched_again") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    let sub = d.join("sub");
    fs::create_dir(&sub).unwrap();
    write(&sub, "data.txt", "one\n");
    let forkmon = Forkmon::start(
        d,
        &[],
        &[
            fixture("watched").to_str().unwrap(),
            "syscall",
            "sub/data.txt",
        ],
    );
    forkmon.wait_stdout("content=one", 1);
    fs::remove_dir_all(&sub).unwrap();
    fs::create_dir(&sub).unwrap();
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
    write(&sub, "data.txt", "two\n");
    forkmon.wait_stdout("content=two", 1);
    save_in_place(&sub.join("data.txt"), "three\n");
    forkmon.wait_stdout("content=three", 1);
    let out = forkmon.stdout();
    assert_eq!(out.matches("content=one").count(), 1, "{out}");
    assert_eq!(out.matches("startup").count(), 1, "{out}");
}
