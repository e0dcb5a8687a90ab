//! A `forkmon run` in the background, with its output collected as it
//! comes, for tests that edit files while it runs. The driver is the
//! `tests` library's, which `cargo xtask bench` uses too.
#[allow(unused_imports)] // each test crate uses its own subset
pub use tests::{
    forkmon::{Forkmon, PATIENCE},
    procfs::{processes_with_env, zombies_of},
};
