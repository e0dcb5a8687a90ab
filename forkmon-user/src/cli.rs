//! Command line: subcommands, flags and their environment twins.
use std::{ffi::OsString, path::PathBuf};

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "forkmon",
    version,
    about = "Observe the files a program opens, and checkpoint it there",
    long_about = "forkmon observes every file a program (and every process it starts) opens, \
                  with an eBPF program on the open/openat/openat2 syscalls.\n\n\
                  It needs root to load that eBPF program; the program itself runs as the \
                  invoking user (SUDO_UID/SUDO_GID when started through sudo).",
    after_help = "Examples:\n  \
                  sudo forkmon trace -- python3 -c 'import json'\n  \
                  sudo forkmon trace --json --output opens.jsonl -- make\n  \
                  cargo xtask run -- trace -- ls /tmp"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run PROGRAM and print every file its process tree opens, as it happens.
    #[command(after_help = "Examples:\n  \
                            sudo forkmon trace -- python3 -c 'import json'\n  \
                            sudo forkmon trace --json -- ./build.sh > opens.jsonl\n\n\
                            Each line: seconds since start, pid, command name, the fd or the \
                            error, the open flags, and the path (made absolute with the \
                            process's cwd or dirfd where it is still known). Exits with \
                            PROGRAM's exit status.")]
    Trace(TraceArgs),
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Print one JSON object per open instead of a table.
    #[arg(long, env = "FORKMON_JSON")]
    pub json: bool,

    /// Write the trace to FILE instead of standard error (the program keeps
    /// stdout and stderr for itself).
    #[arg(short, long, value_name = "FILE", env = "FORKMON_OUTPUT")]
    pub output: Option<PathBuf>,

    #[command(flatten)]
    pub program: ProgramArgs,
}

#[derive(Debug, Args)]
pub struct ProgramArgs {
    /// The program to run, and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        value_name = "PROGRAM [ARGS]..."
    )]
    pub argv: Vec<OsString>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn program_args_are_passed_through_untouched() {
        let cli = Cli::try_parse_from(["forkmon", "trace", "--json", "--", "ls", "-l", "--json"])
            .unwrap();
        let Command::Trace(args) = cli.command;
        assert!(args.json);
        assert_eq!(args.program.argv, ["ls", "-l", "--json"]);
    }

    #[test]
    fn program_is_required() {
        assert!(Cli::try_parse_from(["forkmon", "trace"]).is_err());
    }
}
