//! `forkmon profile`: run a program once, observed and not checkpointed,
//! and show which files it opens, when, and where a checkpoint would save
//! the most start-up.
//!
//! - [`collect`]: the run, as `forkmon trace` observes it, with the stub
//!   loaded but never armed;
//! - [`analysis`]: each file once, checkpoint verdicts, the best ones, a
//!   suggested filter;
//! - [`table`], [`json`], [`chrome`], [`svg`]: the ways it is shown.
use std::{fs, path::Path};

use anyhow::Context as _;

use crate::{cli::ProfileArgs, filter::Filter};

mod analysis;
mod chrome;
mod collect;
mod json;
mod svg;
mod table;

pub async fn profile(args: ProfileArgs) -> anyhow::Result<u8> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let filter = Filter::new(&args.filter.globs, args.filter.lua_patterns(), &cwd)?;
    // Refused before the program runs, not after: a run may take long.
    for path in [&args.output, &args.json, &args.trace, &args.svg]
        .into_iter()
        .flatten()
    {
        check_writable(path)?;
    }
    let run = collect::collect(&args.program.argv).await?;
    let pycache_prefix = std::env::var_os("PYTHONPYCACHEPREFIX")
        .filter(|prefix| !prefix.is_empty())
        .map(std::path::PathBuf::from);
    let profile = analysis::analyze(
        &run,
        &analysis::Setup {
            filter: &filter,
            cwd: &cwd,
            pycache_prefix: pycache_prefix.as_deref(),
            sudo: std::env::var_os("SUDO_UID").is_some(),
            files: &analysis::Disk,
        },
    );
    if let Some(path) = &args.json {
        write(path, &json::render(&profile))?;
    }
    if let Some(path) = &args.trace {
        write(path, &chrome::render(&profile))?;
    }
    if let Some(path) = &args.svg {
        write(path, &svg::render(&profile))?;
    }
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let text = table::render(&profile, args.all, home.as_deref());
    match &args.output {
        Some(path) => write(path, &text)?,
        None => {
            let _ = std::io::Write::write_all(&mut std::io::stderr(), text.as_bytes());
        }
    }
    Ok(run.exit_status)
}

/// Creates (or truncates) `path` now, so that a typo in a directory fails
/// at once.
fn check_writable(path: &Path) -> anyhow::Result<()> {
    fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
