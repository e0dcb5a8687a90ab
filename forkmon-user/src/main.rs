//! forkmon: observe the files a program opens with eBPF, and checkpoint it
//! there (see DESIGN.md).
use std::process::ExitCode;

use clap::Parser as _;

mod cli;
mod events;
mod launcher;
mod loader;
mod output;
mod paths;
mod trace;

use cli::{Cli, Command};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("FORKMON_LOG", "warn"))
        .format_timestamp(None)
        .format_target(false)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
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
        }
    });
    match result {
        Ok(status) => ExitCode::from(status),
        Err(err) => {
            eprintln!("forkmon: {err:#}");
            let code = err
                .downcast_ref::<launcher::LaunchError>()
                .map_or(1, launcher::LaunchError::exit_code);
            ExitCode::from(code)
        }
    }
}
