//! Python as its users run it: bytecode caches on (the development
//! machines' PYTHONDONTWRITEBYTECODE and PYTHONUNBUFFERED are removed from
//! the program's environment), caches made by an earlier run.
mod support;

use support::{as_users_run_it, save, scratch};

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Stdio},
};

use support::{bpf_available, live::Forkmon};

const MAIN: &str = "import json, email.parser, decimal\n\
                    print('start-up', flush=True)\n\
                    import mod\n\
                    print('value:', mod.VALUE, flush=True)\n";

/// A project whose module has a bytecode cache, as after any earlier run.
/// `compile`: extra arguments for the run that makes the caches.
fn project_with_caches(d: &Path, python_flags: &[&str], compile: Option<&str>) {
    fs::write(d.join("main.py"), MAIN).unwrap();
    fs::write(d.join("mod.py"), "VALUE = 'one'\n").unwrap();
    if let Some(mode) = compile {
        let compile = format!(
            "import py_compile as c; \
             c.compile('mod.py', invalidation_mode=c.PycInvalidationMode.{mode})"
        );
        let status = as_users_run_it(
            Command::new("python3")
                .current_dir(d)
                .args(["-c", &compile]),
        )
        .status()
        .unwrap();
        assert!(status.success());
    }
    let out = as_users_run_it(Command::new("python3").current_dir(d))
        .args(python_flags)
        .arg("main.py")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("value: one"));
    let caches: Vec<_> = fs::read_dir(d.join("__pycache__"))
        .expect("the earlier run made caches")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(caches.iter().any(|c| c.starts_with("mod.")), "{caches:?}");
}

#[test]
fn a_module_with_a_bytecode_cache_resumes_with_its_new_source() {
    if !bpf_available("a_module_with_a_bytecode_cache_resumes_with_its_new_source") {
        return;
    }
    // (filter, python flags, how the cache was made)
    for (options, flags, compile) in [
        (&[][..], &[][..], None),
        (&["--filter", "*.py"][..], &[][..], None),
        (&[][..], &["-O"][..], None),
        (&[][..], &[][..], Some("CHECKED_HASH")),
    ] {
        let what = format!("{options:?} {flags:?} {compile:?}");
        let dir = scratch();
        let d = dir.path();
        project_with_caches(d, flags, compile);
        let program: Vec<&str> = ["python3"]
            .into_iter()
            .chain(flags.iter().copied())
            .chain(["main.py"])
            .collect();
        let forkmon = Forkmon::start_with(d, options, &program, |cmd| {
            as_users_run_it(cmd);
        });
        forkmon.wait_stdout("value: one", 1);
        let watch = format!("[forkmon] watch '{}'", d.join("mod.py").display());
        forkmon.wait_stderr(&watch, 1);
        assert!(
            !forkmon.stderr().contains(".pyc'"),
            "{what}: caches are named by their source\n{}",
            forkmon.stderr()
        );
        save(&d.join("mod.py"), "VALUE = 'two'\n");
        forkmon.wait_stdout("value: two", 1);
        save(&d.join("mod.py"), "VALUE = 'three'\n");
        forkmon.wait_stdout("value: three", 1);
        assert_eq!(
            forkmon.stdout().matches("start-up").count(),
            1,
            "{what}: start-up is not run again\n{}",
            forkmon.stdout()
        );
        assert!(
            fs::read_dir(d.join("__pycache__")).unwrap().count() > 0,
            "forkmon removes no cache"
        );
        let err = forkmon.stderr();
        assert!(
            !err.contains("python3.11/json"),
            "{what}: the standard library is not the user's: {err}"
        );
    }
}

#[test]
fn output_before_a_checkpoint_is_printed_once() {
    if !bpf_available("output_before_a_checkpoint_is_printed_once") {
        return;
    }
    // stdout is a pipe: Python buffers it, and the buffer is in every
    // checkpoint's memory.
    let main = "print('start-up')\nimport mod\nprint('value:', mod.VALUE)\n";
    for (options, startups) in [(&[][..], 1), (&["--no-flush"][..], 2)] {
        let dir = scratch();
        let d = dir.path();
        fs::write(d.join("main.py"), main).unwrap();
        fs::write(d.join("mod.py"), "VALUE = 'one'\n").unwrap();
        let forkmon = Forkmon::start_with(d, options, &["python3", "main.py"], |cmd| {
            as_users_run_it(cmd);
        });
        forkmon.wait_stdout("value: one", 1);
        forkmon.wait_stderr("waiting for changes", 1);
        save(&d.join("mod.py"), "VALUE = 'two'\n");
        forkmon.wait_stdout("value: two", 1);
        forkmon.wait_stderr("waiting for changes", 2);
        assert_eq!(
            forkmon.stdout().matches("start-up").count(),
            startups,
            "{options:?}: {}",
            forkmon.stdout()
        );
    }
}

/// A program that handles SIGCHLD (asyncio, a server reaping workers)
/// learns of no child forkmon made: not of the checkpoint's children (their
/// exits reach the checkpoint, which would note them for every child it
/// forks later), nor of one the stub forks early at an open forkmon then
/// refuses — the import of a cached module's source after a resume, or of
/// each module of a virtual environment or of the standard library, which
/// the default filter (the `.venv` is in the project) or a name glob let
/// through the kernel's prefilter. Those forks also made the start-up of a
/// project with a `.venv` three times slower.
#[test]
fn a_resumed_program_handles_no_sigchld_of_forkmons_children() {
    if !bpf_available("a_resumed_program_handles_no_sigchld_of_forkmons_children") {
        return;
    }
    for options in [&[][..], &["--filter", "*.py"][..]] {
        let dir = scratch();
        let d = dir.path();
        let venv = as_users_run_it(Command::new("python3").current_dir(d))
            .args(["-m", "venv", "--without-pip", ".venv"])
            .status()
            .unwrap();
        assert!(venv.success());
        let site = fs::read_dir(d.join(".venv/lib"))
            .unwrap()
            .flatten()
            .next()
            .unwrap()
            .path()
            .join("site-packages/dep");
        fs::create_dir_all(&site).unwrap();
        for module in ["__init__", "a", "b", "c"] {
            fs::write(site.join(format!("{module}.py")), "X = 1\n").unwrap();
        }
        let main = format!(
            "import signal\n\
             signal.signal(signal.SIGCHLD, lambda *_: print('SIGCHLD', flush=True))\n\
             import dep.a, dep.b, dep.c\n{MAIN}"
        );
        fs::write(d.join("main.py"), main).unwrap();
        fs::write(d.join("mod.py"), "VALUE = 'one'\n").unwrap();
        // The caches, as an earlier run leaves them.
        let out = as_users_run_it(Command::new(".venv/bin/python").current_dir(d))
            .arg("main.py")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("value: one"));
        let forkmon = Forkmon::start_with(d, options, &[".venv/bin/python", "main.py"], |cmd| {
            as_users_run_it(cmd);
        });
        forkmon.wait_stdout("value: one", 1);
        forkmon.wait_stderr("waiting for changes", 1);
        for (k, value) in ["two", "three"].into_iter().enumerate() {
            save(&d.join("mod.py"), &format!("VALUE = '{value}'\n"));
            forkmon.wait_stdout(&format!("value: {value}"), 1);
            forkmon.wait_stderr("waiting for changes", k + 2);
        }
        let out = forkmon.stdout();
        assert_eq!(out.matches("start-up").count(), 1, "{options:?}: {out}");
        assert!(!out.contains("SIGCHLD"), "{options:?}: {out}");
    }
}

/// The README's Python example, as a user runs it: caches from an earlier
/// run, the default filter, an editor's save.
#[test]
fn python_slow_start_example_resumes_without_its_start_up() {
    if !bpf_available("python_slow_start_example_resumes_without_its_start_up") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    let example = support::workspace_dir().join("examples/python-slow-start");
    for name in ["app.py", "handlers.py"] {
        fs::copy(example.join(name), d.join(name)).unwrap();
    }
    let first = as_users_run_it(Command::new("python3").current_dir(d))
        .arg("app.py")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&first.stdout).contains("hello, world!"));
    let forkmon = Forkmon::start_with(d, &[], &["python3", "app.py"], |cmd| {
        as_users_run_it(cmd);
    });
    forkmon.wait_stdout("hello, world!", 1);
    let handlers = d.join("handlers.py");
    forkmon.wait_stderr(&format!("[forkmon] watch '{}'", handlers.display()), 1);
    forkmon.wait_stderr("waiting for changes", 1);
    for (i, greeting) in ["hi", "hey", "hello again"].into_iter().enumerate() {
        save(
            &handlers,
            &format!("def greet(name):\n    return f\"{greeting}, {{name}}!\"\n"),
        );
        forkmon.wait_stdout(&format!("{greeting}, world!"), 1);
        forkmon.wait_stderr("waiting for changes", i + 2);
    }
    assert_eq!(
        forkmon.stdout().matches("start-up:").count(),
        1,
        "{}",
        forkmon.stdout()
    );
}

/// The virtual environment `cargo xtask setup` makes (numpy, pytest), if
/// it can import `module`; in CI it must.
fn venv_python(module: &str) -> Option<std::path::PathBuf> {
    let python = support::workspace_dir().join("target/pyenv/bin/python");
    let imports = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|status| status.success());
    if imports {
        return Some(python);
    }
    let reason = format!(
        "{} cannot import {module} (`cargo xtask setup` installs it)",
        python.display()
    );
    assert_ne!(
        std::env::var("FORKMON_REQUIRE_BPF").as_deref(),
        Ok("1"),
        "{reason}"
    );
    eprintln!("skipping: {reason}");
    None
}

/// examples/pytest-loop: editing the test file re-runs the tests without
/// the session's set-up; editing conftest.py re-runs from there.
#[test]
fn pytest_loop_example_skips_the_set_up_until_conftest_changes() {
    if !bpf_available("pytest_loop_example_skips_the_set_up_until_conftest_changes") {
        return;
    }
    let Some(python) = venv_python("pytest") else {
        return;
    };
    let dir = scratch();
    let d = dir.path();
    let example = support::workspace_dir().join("examples/pytest-loop/tests");
    fs::create_dir(d.join("tests")).unwrap();
    fs::set_permissions(d.join("tests"), fs::Permissions::from_mode(0o755)).unwrap();
    for name in ["conftest.py", "test_catalog.py"] {
        fs::copy(example.join(name), d.join("tests").join(name)).unwrap();
    }
    let python = python.to_str().unwrap();
    let args = [python, "-m", "pytest", "-q", "tests/test_catalog.py"];
    let first = as_users_run_it(Command::new(args[0]).current_dir(d))
        .args(&args[1..])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&first.stdout).contains("2 passed"),
        "{}",
        String::from_utf8_lossy(&first.stdout)
    );
    let forkmon = Forkmon::start_with(d, &[], &args, |cmd| {
        as_users_run_it(cmd);
    });
    forkmon.wait_stdout("2 passed", 1);
    forkmon.wait_stderr("waiting for changes", 1);
    let tests = d.join("tests/test_catalog.py");
    let more = fs::read_to_string(&tests).unwrap()
        + "\n\ndef test_prefix(catalog):\n    assert all(k.startswith(\"item-\") for k in catalog)\n";
    save(&tests, &more);
    forkmon.wait_stdout("3 passed", 1);
    assert_eq!(
        forkmon.stdout().matches("set-up:").count(),
        1,
        "the set-up is not run again: {}",
        forkmon.stdout()
    );
    forkmon.wait_stderr("waiting for changes", 2);
    let conftest = d.join("tests/conftest.py");
    let same = fs::read_to_string(&conftest).unwrap();
    save(&conftest, &same);
    forkmon.wait_stdout("set-up:", 2);
    forkmon.wait_stdout("3 passed", 2);
}

/// examples/python-numpy: numpy's threads do not cost the checkpoint, and
/// the resumed run's numpy works.
#[test]
fn python_numpy_example_resumes_with_numpy_working() {
    if !bpf_available("python_numpy_example_resumes_with_numpy_working") {
        return;
    }
    let Some(python) = venv_python("numpy") else {
        return;
    };
    let dir = scratch();
    let d = dir.path();
    let example = support::workspace_dir().join("examples/python-numpy");
    for name in ["app.py", "features.py", "model.py"] {
        fs::copy(example.join(name), d.join(name)).unwrap();
    }
    let python = python.to_str().unwrap();
    let first = as_users_run_it(Command::new(python).current_dir(d))
        .arg("app.py")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&first.stdout).contains("prediction: 2000000.0"));
    let forkmon = Forkmon::start_with(d, &[], &[python, "app.py"], |cmd| {
        as_users_run_it(cmd);
    });
    forkmon.wait_stdout("prediction: 2000000.0", 1);
    let model = d.join("model.py");
    forkmon.wait_stderr(&format!("[forkmon] watch '{}'", model.display()), 1);
    forkmon.wait_stderr("waiting for changes", 1);
    let source = fs::read_to_string(&model).unwrap();
    for (weight, expected) in [("0.25", "500000.0"), ("1.0", "8000000.0")] {
        save(&model, &source.replace("0.5", weight));
        forkmon.wait_stdout(&format!("prediction: {expected}"), 1);
    }
    assert_eq!(
        forkmon.stdout().matches("start-up:").count(),
        1,
        "{}",
        forkmon.stdout()
    );
    assert!(
        !forkmon.stderr().contains("not checkpointing"),
        "{}",
        forkmon.stderr()
    );
}
