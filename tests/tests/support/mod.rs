//! Shared by the integration tests: find the real forkmon binary, build the
//! C fixtures, decide whether BPF tests can run here. Finding and driving
//! forkmon is the `tests` library's, which `cargo xtask bench` uses too.
#![allow(dead_code)] // each test crate uses its own subset

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Mutex,
};

use serde_json::Value;

pub mod live;

pub use tests::{forkmon::forkmon_bin, workspace_dir};

/// A child process killed and reaped when the test ends, even by panic.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether a test that loads BPF can run. In CI (`FORKMON_REQUIRE_BPF=1`) it
/// must: this panics instead of skipping. Elsewhere it prints why it skips.
pub fn bpf_available(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    let reason = match (root, btf) {
        (true, true) => return true,
        (false, _) => "not running as root (run `cargo xtask test`, which uses sudo)",
        (true, false) => "the kernel has no BTF (/sys/kernel/btf/vmlinux)",
    };
    if std::env::var("FORKMON_REQUIRE_BPF").as_deref() == Ok("1") {
        panic!("{test}: BPF is required here (FORKMON_REQUIRE_BPF=1) but {reason}");
    }
    eprintln!("skipping {test}: {reason}");
    false
}

static FIXTURE_BUILD: Mutex<()> = Mutex::new(());

/// Compiles `tests/fixtures/NAME.c` (once per change) and returns the binary.
pub fn fixture(name: &str) -> PathBuf {
    build_fixture(name, "c")
}

/// Compiles `tests/fixtures/NAME.rs` with rustc.
pub fn rust_fixture(name: &str) -> PathBuf {
    build_fixture(name, "rs")
}

fn build_fixture(name: &str, ext: &str) -> PathBuf {
    let _guard = FIXTURE_BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let source = workspace_dir()
        .join("tests/fixtures")
        .join(format!("{name}.{ext}"));
    let out_dir = workspace_dir().join("target/fixtures");
    fs::create_dir_all(&out_dir).unwrap();
    let binary = out_dir.join(name);
    let fresh = match (fs::metadata(&source), fs::metadata(&binary)) {
        (Ok(src), Ok(bin)) => bin.modified().unwrap() >= src.modified().unwrap(),
        _ => false,
    };
    if !fresh {
        // Built beside and renamed: another test binary may be running it.
        let tmp = out_dir.join(format!("{name}.{}.tmp", std::process::id()));
        let mut cc = match ext {
            "rs" => {
                let mut rustc = Command::new("rustc");
                rustc.args(["-O", "--edition", "2024", "-o"]);
                rustc
            }
            _ => {
                let mut cc = Command::new("cc");
                cc.args(["-O1", "-Wall", "-pthread", "-o"]);
                cc
            }
        };
        let status = cc
            .arg(&tmp)
            .arg(&source)
            .status()
            .expect("cc (gcc) and rustc are needed to build test fixtures");
        assert!(status.success(), "compiling {}", source.display());
        fs::rename(&tmp, &binary).unwrap();
    }
    binary
}

/// `forkmon trace --json --output FILE -- argv` run in `dir`.
pub struct Trace {
    pub output: Output,
    pub opens: Vec<Value>,
}

impl Trace {
    pub fn run(dir: &Path, argv: &[&str]) -> Trace {
        Self::run_with(dir, argv, |_| {})
    }

    pub fn run_with(dir: &Path, argv: &[&str], configure: impl FnOnce(&mut Command)) -> Trace {
        let trace_file = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = Command::new(forkmon_bin());
        cmd.current_dir(dir)
            .args(["trace", "--json", "--output"])
            .arg(trace_file.path())
            .arg("--")
            .args(argv);
        configure(&mut cmd);
        let output = cmd.output().expect("running forkmon");
        let opens = fs::read_to_string(trace_file.path())
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).expect("each line is one JSON object"))
            .collect();
        Trace { output, opens }
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// The opens whose resolved (or, failing that, given) path is `path`.
    pub fn opens_of(&self, path: &Path) -> Vec<&Value> {
        let path = path.to_str().unwrap();
        self.opens
            .iter()
            .filter(|o| o["abs_path"].as_str().or(o["path"].as_str()) == Some(path))
            .collect()
    }

    /// The single open of `path`; fails listing what was seen otherwise.
    pub fn open_of(&self, path: &Path) -> &Value {
        let found = self.opens_of(path);
        assert_eq!(
            found.len(),
            1,
            "expected one open of {}, got {found:?}\nstderr: {}",
            path.display(),
            self.stderr()
        );
        found[0]
    }
}

/// A value printed by a fixture as `KEY=N` on its stdout.
pub fn printed(stdout: &str, key: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("fixture printed no {key}=; stdout: {stdout}"))
}

/// A scratch directory the program can enter when it runs as another
/// user (SUDO_UID, nobody).
pub fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Saves `content` the way most editors do: a new file renamed over.
pub fn save(path: &Path, content: &str) {
    let tmp = path.with_extension("swp");
    fs::write(&tmp, content).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// Python's ordinary settings for `cmd`, whatever this machine exports
/// (the development machines set PYTHONDONTWRITEBYTECODE and
/// PYTHONUNBUFFERED, which hide bytecode caches and buffering).
pub fn as_users_run_it(cmd: &mut Command) -> &mut Command {
    cmd.env_remove("PYTHONDONTWRITEBYTECODE")
        .env_remove("PYTHONUNBUFFERED")
        .env_remove("PYTHONPYCACHEPREFIX")
}
