//! Driving the real `forkmon` binary, shared by the integration tests (in
//! `tests/`, through their `support` module) and `cargo xtask bench`, so
//! that both start, read, signal and stop it the same way.
//!
//! - [`process`]: any child process, its output collected as it comes,
//!   waited for with deadlines, stopped when dropped;
//! - [`forkmon`]: `forkmon run` on top of it, with a marker to find the
//!   processes of its tree;
//! - [`procfs`]: finding processes in /proc.
use std::path::{Path, PathBuf};

pub mod forkmon;
pub mod process;
pub mod procfs;

pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}
