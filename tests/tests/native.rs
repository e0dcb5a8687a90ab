//! Checkpoints inside library code, and the examples of other languages
//! than Python: real BPF, the real stub, real programs (C built here, tcc,
//! perl, ruby, rustc, node, java) whose files the tests save while they
//! run.
//!
//! A checkpoint at an open made inside glibc (`dlopen`, `iconv_open`, NSS,
//! `setlocale`) must leave its children able to finish that call and to
//! take the same lock again: without the stub's hand-over of glibc's locks
//! each of these tests hangs in the fixture's second call and fails at
//! the wait.
mod support;

use std::{
    fs,
    io::{ErrorKind, Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use support::{as_users_run_it, bpf_available, fixture, live::Forkmon, save, scratch};

/// Runs `program` to completion in `dir`; panics with its output if it fails.
fn run_ok(dir: &Path, program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A shared library exporting `greet()`, which returns `text`, built at
/// `out` by the linker (which writes a new file over the old one).
fn build_plugin(dir: &Path, out: &str, text: &str) {
    let source = dir.join(format!("{out}.c"));
    fs::write(
        &source,
        format!("const char *greet(void) {{ return \"{text}\"; }}\n"),
    )
    .unwrap();
    run_ok(
        dir,
        "cc",
        &["-shared", "-fPIC", "-o", out, source.to_str().unwrap()],
    );
}

/// Saves a binary file again with the same bytes, as an editor or a build
/// does: a new file renamed over it. The program resumes and re-reads it.
fn resave(path: &Path) {
    let bytes = fs::read(path).unwrap();
    let tmp = path.with_extension("new");
    fs::write(&tmp, bytes).unwrap();
    fs::rename(&tmp, path).unwrap();
}

fn copy_example(name: &str, to: &Path) {
    let from = support::workspace_dir().join("examples").join(name);
    for entry in fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// Fails with forkmon's output if the start-up ran more than once.
fn assert_started_once(forkmon: &Forkmon, startup: &str) {
    let out = forkmon.stdout();
    assert_eq!(
        count(&out, startup),
        1,
        "the start-up ran again:\n{out}\nstderr:\n{}",
        forkmon.stderr()
    );
}

// ---------------------------------------------------------------- dlopen

/// The issue's host: checkpointed at the plugin's open inside `dlopen`,
/// its child finishes that `dlopen`, calls `dlsym`, `dlopen`s libm and
/// `dlclose`s; a second checkpoint at a later `dlopen` in that child
/// works too, and each rebuild resumes from its own checkpoint.
#[test]
fn checkpoints_inside_dlopen_finish_the_call_and_resume() {
    if !bpf_available("checkpoints_inside_dlopen_finish_the_call_and_resume") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    build_plugin(d, "libfirst.so", "first one");
    build_plugin(d, "libsecond.so", "second one");
    let host = fixture("library_opens");
    let forkmon = Forkmon::start(
        d,
        &["--filter", "libfirst.so", "--filter", "libsecond.so"],
        &[
            host.to_str().unwrap(),
            "dlopen",
            "./libfirst.so",
            "./libsecond.so",
        ],
    );
    forkmon.wait_stdout("done pid=", 1);
    let out = forkmon.stdout();
    assert!(
        out.contains("greet=first one\ncos=found\ngreet=second one\ncos=found\n"),
        "{out}"
    );
    for name in ["libfirst.so", "libsecond.so"] {
        forkmon.wait_stderr(&format!("watch '{}'", d.join(name).display()), 1);
    }

    // The later checkpoint: the first plugin is not loaded again.
    build_plugin(d, "libsecond.so", "second two");
    forkmon.wait_stdout("greet=second two", 1);
    forkmon.wait_stdout("done pid=", 2);
    assert_eq!(count(&forkmon.stdout(), "greet=first one"), 1);

    // The first: from there on, both plugins are loaded anew.
    build_plugin(d, "libfirst.so", "first two");
    forkmon.wait_stdout("greet=first two", 1);
    forkmon.wait_stdout("done pid=", 3);
    assert_eq!(count(&forkmon.stdout(), "greet=second two"), 2);
    assert_started_once(&forkmon, "startup");
}

/// A plugin's constructor runs inside `dlopen`, under the loader's lock:
/// a checkpoint at the file it reads (an open made by libc, not by the
/// loader) leaves the child owning that lock too.
#[test]
fn a_checkpoint_in_a_plugins_constructor_resumes() {
    if !bpf_available("a_checkpoint_in_a_plugins_constructor_resumes") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    fs::write(
        d.join("plugin.c"),
        "#include <stdio.h>\n\
         static char conf[64];\n\
         __attribute__((constructor)) static void load(void) {\n\
             FILE *f = fopen(\"plugin.conf\", \"r\");\n\
             if (f) { fscanf(f, \"%63s\", conf); fclose(f); }\n\
         }\n\
         const char *greet(void) { return conf; }\n",
    )
    .unwrap();
    run_ok(
        d,
        "cc",
        &["-shared", "-fPIC", "-o", "libplugin.so", "plugin.c"],
    );
    fs::write(d.join("plugin.conf"), "one\n").unwrap();
    let host = fixture("library_opens");
    let forkmon = Forkmon::start(
        d,
        &["--filter", "plugin.conf"],
        &[host.to_str().unwrap(), "dlopen", "./libplugin.so"],
    );
    forkmon.wait_stdout("done pid=", 1);
    save(&d.join("plugin.conf"), "two\n");
    forkmon.wait_stdout("greet=two\ncos=found\ndone pid=", 1);
    assert_started_once(&forkmon, "startup");
}

/// Where the stub cannot tell which lock the loader holds (here: told to
/// forget where glibc's locks are, as on a glibc it does not know), a
/// checkpoint inside `dlopen` is refused in one line, and the program
/// runs to its end instead of hanging.
#[test]
fn a_loader_lock_it_cannot_hand_over_is_refused_in_one_line() {
    if !bpf_available("a_loader_lock_it_cannot_hand_over_is_refused_in_one_line") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    build_plugin(d, "libplugin.so", "one");
    let host = fixture("library_opens");
    let mut forkmon = Forkmon::start_with(
        d,
        &["--filter", "libplugin.so"],
        &[host.to_str().unwrap(), "dlopen", "./libplugin.so"],
        |cmd| {
            cmd.env("FORKMON_STUB_FORGET_LOCKS", "1");
        },
    );
    forkmon.wait_stdout("done pid=", 1);
    assert!(forkmon.stdout().contains("greet=one\ncos=found\n"));
    let refusal = format!(
        "[forkmon] cannot checkpoint at '{}': Resource deadlock would occur",
        d.join("libplugin.so").display()
    );
    forkmon.wait_stderr(&refusal, 1);
    // Nothing to resume from: the plugin is watched for a restart.
    forkmon.wait_stderr("program exited with status 0, waiting for changes..", 1);
    forkmon.signal(libc::SIGINT);
    assert!(forkmon.wait().success(), "{}", forkmon.stderr());
}

// ---------------------------------------------------- other glibc locks

/// `library_opens CASE` run in `dir`, checkpointed at `watched` (a copy of
/// the file glibc opens, in `dir`, which `env` points glibc at):
/// the call and the calls after it finish, in the first run and after a
/// resume, and `again_line` (printed by the calls that take the lock
/// again) appears in both.
fn library_case(
    dir: &Path,
    case: &str,
    args: &[&str],
    watched: &Path,
    env: &[(&str, &Path)],
    again_line: &str,
) {
    let host = fixture("library_opens");
    let mut program = vec![host.to_str().unwrap(), case];
    program.extend_from_slice(args);
    let filter = watched.to_str().unwrap();
    let forkmon = Forkmon::start_with(dir, &["--filter", filter], &program, |cmd| {
        for (name, value) in env {
            cmd.env(name, value);
        }
    });
    forkmon.wait_stdout("done pid=", 1);
    forkmon.wait_stderr(&format!("watch '{}'", watched.display()), 1);
    resave(watched);
    forkmon.wait_stdout("done pid=", 2);
    let out = forkmon.stdout();
    assert_eq!(count(&out, again_line), 2, "{case}:\n{out}");
    assert_started_once(&forkmon, "startup");
}

/// A scratch directory with `sub`, for the copies of glibc's files.
fn scratch_with(sub: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = scratch();
    let path = dir.path().join(sub);
    fs::create_dir_all(&path).unwrap();
    (dir, path)
}

const LIBDIR: &str = "/usr/lib/x86_64-linux-gnu";

/// `iconv_open` loads a gconv module with `dlopen`, under gconv's lock and
/// the loader's.
#[test]
fn a_checkpoint_at_an_iconv_module_resumes() {
    if !bpf_available("a_checkpoint_at_an_iconv_module_resumes") {
        return;
    }
    let (dir, gconv) = scratch_with("gconv");
    fs::copy(
        Path::new(LIBDIR).join("gconv/EBCDIC-US.so"),
        gconv.join("EBCDIC-US.so"),
    )
    .unwrap();
    // GCONV_PATH: the modules it lists are looked for here.
    fs::write(
        gconv.join("gconv-modules"),
        "module\tEBCDIC-US//\tINTERNAL\tEBCDIC-US\t1\n\
         module\tINTERNAL\tEBCDIC-US//\tEBCDIC-US\t1\n",
    )
    .unwrap();
    library_case(
        dir.path(),
        "iconv",
        &[],
        &gconv.join("EBCDIC-US.so"),
        &[("GCONV_PATH", &gconv)],
        "again=opened",
    );
}

/// An NSS module (compat, which glibc ships and does not build in) is
/// loaded with `dlopen` under the loader's lock; then the same database is
/// looked up again, and libm loaded.
#[test]
fn a_checkpoint_at_an_nss_module_resumes() {
    if !bpf_available("a_checkpoint_at_an_nss_module_resumes") {
        return;
    }
    let (dir, lib) = scratch_with("lib");
    fs::copy(
        Path::new(LIBDIR).join("libnss_compat.so.2"),
        lib.join("libnss_compat.so.2"),
    )
    .unwrap();
    // NSS modules are loaded by name: LD_LIBRARY_PATH finds the copy.
    library_case(
        dir.path(),
        "nss",
        &[],
        &lib.join("libnss_compat.so.2"),
        &[("LD_LIBRARY_PATH", &lib)],
        "again=root",
    );
}

/// `setlocale` holds the locale lock (a `pthread_rwlock_t`) for writing
/// while it reads the locale's files; then it is taken twice more.
#[test]
fn a_checkpoint_inside_setlocale_resumes() {
    if bpf_available("a_checkpoint_inside_setlocale_resumes") {
        locale_case("setlocale");
    }
}

/// `newlocale` takes the same lock for writing.
#[test]
fn a_checkpoint_inside_newlocale_resumes() {
    if bpf_available("a_checkpoint_inside_newlocale_resumes") {
        locale_case("newlocale");
    }
}

fn locale_case(case: &str) {
    let (dir, locales) = scratch_with("locale");
    let status = Command::new("cp")
        .arg("-r")
        .arg("/usr/lib/locale/C.utf8")
        .arg(&locales)
        .status()
        .unwrap();
    assert!(status.success());
    library_case(
        dir.path(),
        case,
        &[],
        &locales.join("C.utf8/LC_CTYPE"),
        &[("LOCPATH", &locales)],
        "again=C,C.UTF-8",
    );
}

/// stdio's locks remember their owner by thread pointer, the same in the
/// child: `freopen` holds its FILE's lock across the open.
#[test]
fn a_checkpoint_inside_freopen_resumes() {
    if !bpf_available("a_checkpoint_inside_freopen_resumes") {
        return;
    }
    let (dir, data) = scratch_with("data");
    let file = data.join("data.txt");
    fs::write(&file, "one\n").unwrap();
    library_case(
        dir.path(),
        "freopen",
        &[file.to_str().unwrap()],
        &file,
        &[],
        "again=opened",
    );
}

// -------------------------------------------------------------- examples

/// examples/c-plugin: rebuilding the plugin, by the linker (a new file)
/// and by `cp` over it (rewritten in place), resumes from the `dlopen`
/// and runs the new code; the host's start-up runs once.
#[test]
fn c_plugin_example_runs_each_rebuild() {
    if !bpf_available("c_plugin_example_runs_each_rebuild") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    copy_example("c-plugin", d);
    run_ok(d, "make", &[]);
    let forkmon = Forkmon::start(d, &["--filter", "libplugin.so"], &["./host"]);
    forkmon.wait_stdout("plugin: hello from the plugin", 1);

    let source = fs::read_to_string(d.join("plugin.c")).unwrap();
    fs::write(
        d.join("plugin.c"),
        source.replace("hello from the plugin", "rebuilt by the linker"),
    )
    .unwrap();
    run_ok(d, "make", &["libplugin.so"]);
    forkmon.wait_stdout("plugin: rebuilt by the linker", 1);

    fs::write(
        d.join("plugin.c"),
        source.replace("hello from the plugin", "copied in place"),
    )
    .unwrap();
    run_ok(d, "cc", &["-shared", "-fPIC", "-o", "new.so", "plugin.c"]);
    let inode = |path: &Path| {
        use std::os::unix::fs::MetadataExt as _;
        fs::metadata(path).unwrap().ino()
    };
    let before = inode(&d.join("libplugin.so"));
    run_ok(d, "cp", &["new.so", "libplugin.so"]);
    assert_eq!(
        before,
        inode(&d.join("libplugin.so")),
        "cp rewrites in place"
    );
    forkmon.wait_stdout("plugin: copied in place", 1);
    assert_started_once(&forkmon, "start-up done");
}

/// examples/dev-server: the server binds, loads its framework, then
/// imports handler.py. During 20 saves of the handler a client keeps
/// requesting: no connection is ever refused (the listening socket is the
/// checkpoint's, so no `EADDRINUSE` either), and after each save the
/// client sees the new handler's answer. The start-up runs once.
#[test]
fn dev_server_example_is_never_refused_across_resumes() {
    if !bpf_available("dev_server_example_is_never_refused_across_resumes") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    copy_example("dev-server", d);
    // Its bytecode cache exists, as after any earlier run.
    let cached = as_users_run_it(Command::new("python3").args(["-c", "import handler"]))
        .current_dir(d)
        .status()
        .unwrap();
    assert!(cached.success());
    let port = free_port();
    let forkmon = Forkmon::start_with(
        d,
        &["--filter", "*.py"],
        &["python3", "server.py", &port.to_string()],
        |cmd| {
            as_users_run_it(cmd);
        },
    );
    forkmon.wait_stdout("handler: hello from the handler", 1);

    // The client: one request after another, each on a new connection.
    let answers = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (answers, refused, stop) = (answers.clone(), refused.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match request(port) {
                    Ok(answer) => answers.lock().unwrap().push(answer),
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                        refused.lock().unwrap().push(e.to_string())
                    }
                    // A request the killed run had accepted: it is cut,
                    // not refused.
                    Err(_) => {}
                }
            }
        })
    };
    let handler = fs::read_to_string(d.join("handler.py")).unwrap();
    for i in 1..=20 {
        save(
            &d.join("handler.py"),
            &handler.replace("hello from the handler", &format!("version {i}")),
        );
        let wanted = format!("version {i}, you asked for /");
        let deadline = std::time::Instant::now() + support::live::PATIENCE;
        while !answers.lock().unwrap().iter().any(|a| a.contains(&wanted)) {
            assert!(
                std::time::Instant::now() < deadline,
                "no answer from version {i}:\n{}",
                forkmon.stderr()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    assert_eq!(
        *refused.lock().unwrap(),
        Vec::<String>::new(),
        "connections refused"
    );
    let err = forkmon.stderr();
    assert!(!err.contains("Address already in use"), "{err}");
    assert_eq!(count(&err, "changed, resuming from it"), 20, "{err}");
    assert_started_once(&forkmon, "start-up:");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One GET on a new connection: the body.
fn request(port: u16) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// An example whose edited file is text: run, save `edited` with `from`
/// replaced by `to`, see `to` printed, and the start-up once.
fn text_example(
    example: &str,
    options: &[&str],
    program: &[&str],
    edited: &str,
    (from, to): (&str, &str),
    startup: &str,
) {
    let dir = scratch();
    let d = dir.path();
    copy_example(example, d);
    let forkmon = Forkmon::start(d, options, program);
    forkmon.wait_stdout(from, 1);
    forkmon.wait_stderr(&format!("watch '{}'", d.join(edited).display()), 1);
    let text = fs::read_to_string(d.join(edited)).unwrap();
    save(&d.join(edited), &text.replace(from, to));
    forkmon.wait_stdout(to, 1);
    assert_started_once(&forkmon, startup);
}

/// examples/tcc-run: tcc is checkpointed at the open of the header it
/// includes, and compiles and runs the new code at each save.
#[test]
fn tcc_run_example_recompiles_from_the_header() {
    if bpf_available("tcc_run_example_recompiles_from_the_header") {
        text_example(
            "tcc-run",
            &["--filter", "greeting.h"],
            &["tcc", "-run", "main.c"],
            "greeting.h",
            ("hello from greeting.h", "edited greeting.h"),
            // tcc prints nothing before: the resumed run is seen by the
            // edit alone; it must not print the old greeting again.
            "hello from greeting.h",
        );
    }
}

#[test]
fn perl_example_resumes_from_require() {
    if bpf_available("perl_example_resumes_from_require") {
        text_example(
            "perl",
            &[],
            &["perl", "main.pl"],
            "greeting.pl",
            ("hello from greeting.pl", "edited greeting.pl"),
            "start-up:",
        );
    }
}

#[test]
fn ruby_example_resumes_from_require_relative() {
    if bpf_available("ruby_example_resumes_from_require_relative") {
        text_example(
            "ruby",
            &[],
            &["ruby", "main.rb"],
            "greeting.rb",
            ("hello from greeting.rb", "edited greeting.rb"),
            "start-up:",
        );
    }
}

/// examples/rust-config: Rust's std opens with the `openat` syscall (no
/// `fopen` to hook); the program resumes from its read of the config.
#[test]
fn rust_config_example_resumes_from_its_read() {
    if !bpf_available("rust_config_example_resumes_from_its_read") {
        return;
    }
    let dir = scratch();
    let binary = dir.path().join("rust-config");
    let source = support::workspace_dir().join("examples/rust-config/main.rs");
    run_ok(
        dir.path(),
        "rustc",
        &[
            "-O",
            "--edition",
            "2024",
            "-o",
            binary.to_str().unwrap(),
            source.to_str().unwrap(),
        ],
    );
    text_example(
        "rust-config",
        &["--filter", "config.toml"],
        &[binary.to_str().unwrap(), "config.toml"],
        "config.toml",
        ("hello from config.toml", "edited config.toml"),
        "start-up:",
    );
}

// ---------------------------------------------- what does not checkpoint

/// The README's table: programs forkmon cannot checkpoint say why in one
/// line and run to their end, neither hanging nor dying; the file they
/// read is watched, and its change restarts them.
fn refused(program: &[&str], line: &str) {
    let dir = scratch();
    let d = dir.path();
    fs::write(d.join("data.txt"), "one\n").unwrap();
    let mut forkmon = Forkmon::start(d, &["--filter", "data.txt"], program);
    forkmon.wait_stdout("x=one", 1);
    forkmon.wait_stderr(line, 1);
    forkmon.wait_stderr("program exited with status 0, waiting for changes..", 1);
    std::thread::sleep(std::time::Duration::from_millis(200));
    support::save(&d.join("data.txt"), "two\n");
    forkmon.wait_stdout("x=two", 1);
    forkmon.wait_stderr("changed, restarting (", 1);
    forkmon.signal(libc::SIGINT);
    assert!(forkmon.wait().success(), "{}", forkmon.stderr());
}

/// node's threads are its own (libuv's pool, V8's workers): no fork
/// handler stops them.
#[test]
fn node_is_refused_for_its_threads() {
    if bpf_available("node_is_refused_for_its_threads") {
        refused(
            &[
                "node",
                "-e",
                "console.log('x=' + require('fs').readFileSync('data.txt', 'utf8').trim())",
            ],
            "threads: not checkpointing it (some are not stopped by fork's handlers",
        );
    }
}

/// A Java VM is told by its threads' names, before any fork.
#[test]
fn java_is_refused_as_a_java_vm() {
    if !bpf_available("java_is_refused_as_a_java_vm") {
        return;
    }
    let dir = scratch();
    let source = dir.path().join("Read.java");
    fs::write(
        &source,
        "public class Read { public static void main(String[] a) throws Exception {\n\
         System.out.println(\"x=\" + new String(java.nio.file.Files.readAllBytes(\n\
         java.nio.file.Path.of(\"data.txt\"))).trim()); } }\n",
    )
    .unwrap();
    // Single-file source launch: no javac step.
    refused(
        &["java", source.to_str().unwrap()],
        "not checkpointing it (a Java VM",
    );
}

/// A statically linked program cannot load the stub: said at start.
#[test]
fn a_static_binary_is_refused_at_start() {
    if !bpf_available("a_static_binary_is_refused_at_start") {
        return;
    }
    let dir = scratch();
    let source = dir.path().join("static.c");
    fs::write(
        &source,
        "#include <stdio.h>\nint main(void) { char b[16] = {0}; FILE *f = fopen(\"data.txt\", \"r\");\n\
         if (f) fgets(b, sizeof b, f); printf(\"x=%s\", b); return 0; }\n",
    )
    .unwrap();
    let binary = dir.path().join("static");
    run_ok(
        dir.path(),
        "cc",
        &[
            "-static",
            "-o",
            binary.to_str().unwrap(),
            source.to_str().unwrap(),
        ],
    );
    refused(
        &[binary.to_str().unwrap()],
        "is statically linked: forkmon's stub cannot load into it",
    );
}
