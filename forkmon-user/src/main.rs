//! forkmon: observe the files a program opens with eBPF, and checkpoint it
//! there (see docs/mechanism.md).
use std::process::ExitCode;

use clap::Parser as _;

mod cgroup;
mod channel;
mod cli;
mod credentials;
mod events;
mod filter;
mod launcher;
mod loader;
mod output;
mod paths;
mod priority;
mod procfs;
mod python;
mod run;
mod supervisor;
mod target;
mod trace;
mod watchdog;
mod watcher;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // The cgroup watchdog is forkmon re-executed: dispatch before anything
    // opens files or starts threads.
    if args.get(1).is_some_and(|a| a == watchdog::ARG) {
        watchdog::main(args.into_iter().skip(2));
    }
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("FORKMON_LOG", "warn"))
        .format_timestamp(None)
        .format_target(false)
        .init();
    let cli = match Cli::try_parse_from(cli::with_default_subcommand(args)) {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // One line naming the problem; clap's full text adds a usage
            // block users of a bad flag value do not need.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("forkmon: {}", first.trim_start_matches("error: "));
            eprintln!("Try 'forkmon --help' for more information.");
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_unpark(watcher::note_wake_up)
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("forkmon: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Trace(args) => trace::trace(args).await,
            Command::Run(args) => run::run(args).await,
        }
    });
    match result {
        Ok(status) => ExitCode::from(status),
        Err(err) => {
            eprintln!("forkmon: {err:#}");
            // A bad filter is bad command-line input: clap's status for it.
            let usage = err.downcast_ref::<filter::FilterError>().map(|_| 2);
            let code = err
                .downcast_ref::<launcher::LaunchError>()
                .map(launcher::LaunchError::exit_code)
                .or(usage)
                .unwrap_or(1);
            ExitCode::from(code)
        }
    }
}
