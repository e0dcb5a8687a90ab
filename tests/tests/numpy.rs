//! Programs with other threads. `import numpy` starts OpenBLAS's thread
//! pool, whose atfork handler stops it: such a program is checkpointed,
//! forked with glibc's `fork()`, and its children's BLAS calls restart the
//! pool. A thread no handler stops (busy, or idle in Python) is refused,
//! and the program runs to its end.
//!
//! numpy comes from PyPI, into the virtual environment `cargo xtask setup`
//! makes (`target/pyenv`). Python's ordinary settings are used, whatever
//! this machine exports (PYTHONDONTWRITEBYTECODE, PYTHONUNBUFFERED).
mod support;

use support::{as_users_run_it, save, scratch};

use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
};

use support::{bpf_available, live::Forkmon, workspace_dir};

/// The interpreter of `cargo xtask setup`'s virtual environment, if it has
/// numpy. In CI (`FORKMON_REQUIRE_BPF=1`) it must: this panics instead of
/// skipping.
fn numpy_python(test: &str) -> Option<PathBuf> {
    let python = workspace_dir().join("target/pyenv/bin/python");
    let imports = Command::new(&python)
        .args(["-c", "import numpy"])
        .status()
        .is_ok_and(|status| status.success());
    if imports {
        return Some(python);
    }
    let reason = format!(
        "{} cannot import numpy (`cargo xtask setup` installs it)",
        python.display()
    );
    if std::env::var("FORKMON_REQUIRE_BPF").as_deref() == Ok("1") {
        panic!("{test}: numpy is required here (FORKMON_REQUIRE_BPF=1) but {reason}");
    }
    eprintln!("skipping {test}: {reason}");
    None
}

/// The start-up imports numpy (OpenBLAS's pool starts), then the user's
/// module, which calls BLAS.
const NUMPY_MAIN: &str = "import os\n\
                          import numpy\n\
                          print('start-up', flush=True)\n\
                          print('threads:', len(os.listdir('/proc/self/task')), flush=True)\n\
                          import mod\n\
                          print('value:', mod.VALUE, 'product:', mod.PRODUCT, flush=True)\n";

/// A matrix product whose sum says which edit ran: 200 × 200 × 200 × value.
fn numpy_module(value: u64) -> String {
    format!(
        "import numpy\n\
         VALUE = {value}\n\
         PRODUCT = int((numpy.full((200, 200), VALUE) @ numpy.ones((200, 200))).sum())\n"
    )
}

fn product(value: u64) -> u64 {
    200 * 200 * 200 * value
}

#[test]
fn numpy_with_its_thread_pool_resumes_fifty_times_with_the_right_product() {
    let test = "numpy_with_its_thread_pool_resumes_fifty_times_with_the_right_product";
    if !bpf_available(test) {
        return;
    }
    let Some(python) = numpy_python(test) else {
        return;
    };
    let python = python.to_str().unwrap();
    let dir = scratch();
    let d = dir.path();
    fs::write(d.join("main.py"), NUMPY_MAIN).unwrap();
    fs::write(d.join("mod.py"), numpy_module(1)).unwrap();
    // Caches made, as after any earlier run.
    let out = as_users_run_it(Command::new(python).current_dir(d))
        .arg("main.py")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let expected = format!("value: 1 product: {}", product(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&expected),
        "{out:?}"
    );

    let forkmon = Forkmon::start_with(d, &[], &[python, "main.py"], |cmd| {
        as_users_run_it(cmd);
    });
    forkmon.wait_stdout(&expected, 1);
    let watch = format!("[forkmon] watch '{}'", d.join("mod.py").display());
    forkmon.wait_stderr(&watch, 1);
    forkmon.wait_stderr("waiting for changes", 1);
    let threads: usize = forkmon
        .stdout()
        .lines()
        .find_map(|line| line.strip_prefix("threads: "))
        .and_then(|n| n.parse().ok())
        .expect("the program counts its threads");
    assert!(
        threads >= 2,
        "OpenBLAS's pool runs at the checkpoint: {threads} thread(s)"
    );

    for value in 2..=51 {
        save(&d.join("mod.py"), &numpy_module(value));
        forkmon.wait_stdout(&format!("value: {value} product: {}", product(value)), 1);
        // It ran to its end (a child missing a thread hangs at exit).
        forkmon.wait_stderr("waiting for changes", value as usize);
    }
    let out = forkmon.stdout();
    let err = forkmon.stderr();
    let results: Vec<&str> = out.lines().filter(|l| l.starts_with("value: ")).collect();
    assert_eq!(results.len(), 51, "one result per run\n{out}\n{err}");
    for (run, line) in results.iter().enumerate() {
        let value = run as u64 + 1;
        assert_eq!(
            *line,
            format!("value: {value} product: {}", product(value)),
            "{out}"
        );
    }
    assert_eq!(
        out.matches("start-up").count(),
        1,
        "numpy's import is not run again\n{out}"
    );
    assert_eq!(err.matches(&watch).count(), 1, "{err}");
    assert!(!err.contains("not checkpointing"), "{err}");
}

/// Threads that no atfork handler stops: a busy one, and an idle Python
/// thread (a child without it would hang at its exit, joining it).
const OTHER_THREADS: [(&str, &str); 2] = [
    (
        "busy",
        "import threading\n\
         def spin():\n    \
             while True:\n        \
                 pass\n\
         threading.Thread(target=spin, daemon=True).start()\n",
    ),
    (
        "idle",
        "import threading\n\
         done = threading.Event()\n\
         threading.Thread(target=done.wait).start()\n",
    ),
];

#[test]
fn a_program_whose_thread_no_handler_stops_is_refused_and_runs_to_its_end() {
    if !bpf_available("a_program_whose_thread_no_handler_stops_is_refused_and_runs_to_its_end") {
        return;
    }
    for (what, threads) in OTHER_THREADS {
        let dir = scratch();
        let d = dir.path();
        let main = format!(
            "{threads}\
             import mod\n\
             print('value:', mod.VALUE, flush=True)\n\
             globals().get('done') and done.set()\n"
        );
        fs::write(d.join("main.py"), main).unwrap();
        fs::write(d.join("mod.py"), "VALUE = 'one'\n").unwrap();
        let status = as_users_run_it(Command::new("python3").current_dir(d))
            .arg("main.py")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{what}: caches made");

        let mut forkmon =
            Forkmon::start_with(d, &["--filter", "mod.py"], &["python3", "main.py"], |cmd| {
                as_users_run_it(cmd);
            });
        // mod.py is watched for a restart: forkmon waits for changes.
        forkmon.wait_stderr("program exited with status 0, waiting for changes..", 1);
        std::thread::sleep(std::time::Duration::from_millis(200));
        support::save(&d.join("mod.py"), "VALUE = 'two'\n");
        forkmon.wait_stdout("value: two", 1);
        forkmon.wait_stderr("waiting for changes..", 2);
        forkmon.signal(libc::SIGINT);
        let status = forkmon.wait();
        let (out, err) = (forkmon.stdout(), forkmon.stderr());
        assert!(status.success(), "{what}: {status:?}\n{err}");
        assert_eq!(out, "value: one\nvalue: two\n", "{what}: {err}");
        assert_eq!(
            err.matches("threads: not checkpointing").count(),
            1,
            "{what}: one line says why\n{err}"
        );
        assert!(
            err.contains("changed, restarting (python3 has "),
            "{what}: {err}"
        );
        assert!(!err.contains("watch '"), "{what}: {err}");
        // forkmon waits for changes: its watchdog is there too.
        let left: Vec<i32> = forkmon
            .tree()
            .into_iter()
            .filter(|pid| {
                fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim() != "forkmon-wd")
            })
            .collect();
        assert!(
            left.is_empty(),
            "{what}: the child forked and given up is gone: {left:?}"
        );
    }
}
