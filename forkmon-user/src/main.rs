//! forkmon: observe the files a program opens with eBPF, and checkpoint it
//! there (see docs/mechanism.md).
use std::process::ExitCode;

mod cgroup;
mod channel;
mod cli;
mod credentials;
mod events;
mod filter;
mod journal;
mod keys;
mod launcher;
mod loader;
mod output;
mod paths;
mod priority;
mod procfs;
mod profile;
mod python;
mod run;
mod static_elf;
mod stats;
mod supervisor;
mod target;
mod trace;
mod watchdog;
mod watcher;

use cli::Command;

/// clap's whole message: the usage line and its "a similar argument exists"
/// tips are what tell a user how to fix the command line. `--help` and
/// `--version` go to stdout with status 0, errors to stderr with 2.
fn usage_error(e: clap::Error) -> ! {
    if !e.use_stderr() {
        e.exit();
    }
    let text = e.render().ansi().to_string();
    // Stripped of its styles unless stderr is a terminal that wants them.
    anstream::eprint!("{}", cli::one_line_errors_read_as_one(&text));
    std::process::exit(2);
}

/// Standard output for a script or page; a reader that stops early (`|
/// head`) is no error.
fn print(text: &[u8]) -> anyhow::Result<u8> {
    match std::io::Write::write_all(&mut std::io::stdout(), text) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(0),
    }
}

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
    let cli = match cli::parse(args) {
        Ok(cli) => cli,
        Err(e) => usage_error(e),
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
            Command::Profile(args) => profile::profile(args).await,
            Command::Completions { shell } => print(&cli::completions(shell)),
            Command::Man { subcommand } => print(&cli::man(subcommand.as_deref())?),
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
