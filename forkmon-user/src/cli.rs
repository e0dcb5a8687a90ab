//! Command line: subcommands, flags and their environment twins.
use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

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
                  cargo xtask run -- trace -- ls /tmp\n\n\
                  Installed by cargo, forkmon is in ~/.cargo/bin, which sudo's secure_path \
                  leaves out: run sudo \"$(command -v forkmon)\" … or sudo env \"PATH=$PATH\" \
                  forkmon …"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run PROGRAM; checkpoint it at each file it opens that matches the
    /// filter, and resume it from there when that file changes (the
    /// default: `forkmon -- PROGRAM` is `forkmon run -- PROGRAM`).
    #[command(after_help = "Examples:\n  \
                            sudo forkmon run -- lua5.4 main.lua\n  \
                            sudo forkmon --filter '*.py' -- python3 app.py\n  \
                            sudo FORKMON_FILTER='%.lua$' forkmon -- lua5.4 main.lua\n  \
                            sudo forkmon -- make            # re-run make when a source changes\n  \
                            sudo forkmon --restart --stop-signal INT -- node server.js\n  \
                            sudo forkmon --clear -- python3 app.py\n\n\
                            Without --filter or FORKMON_FILTER, the filter is: regular files \
                            under the current directory, but for the environment's and the \
                            system's directories and what .gitignore/.ignore leave out. Only \
                            files opened read-only are checkpointed. Every such file the \
                            program's tree reads is watched: a change resumes from the \
                            checkpoint it was read below, or restarts the program where none \
                            serves (threads, a static binary, a subprocess). The program keeps \
                            running after it finishes, waiting for changes; Ctrl-C ends it.")]
    Run(RunArgs),
    /// Run PROGRAM and print every file its process tree opens, as it happens.
    #[command(after_help = "Examples:\n  \
                            sudo forkmon trace -- python3 -c 'import json'\n  \
                            sudo forkmon trace --json --output opens.jsonl -- ./build.sh\n\n\
                            Each line: seconds since start, pid, command name, the fd or the \
                            error, the open flags, and the path (made absolute with the \
                            process's cwd or dirfd where it is still known), on standard \
                            error as strace's (PROGRAM keeps standard output; --output FILE \
                            for a file), escaped as ls and strace do (\\n, \\x1b, \\xff for \
                            a byte that is not UTF-8). In --json, a name that is not UTF-8 shows U+FFFD in path and \
                            abs_path, and its bytes, as an array of numbers, in path_bytes and \
                            abs_path_bytes (present only then). Exits with PROGRAM's exit \
                            status.")]
    Trace(TraceArgs),
    /// Run PROGRAM once, observed and not checkpointed, then show the files
    /// it opened, where a checkpoint could be made and what it would skip,
    /// and a filter to start `forkmon run` with.
    #[command(after_help = "Examples:\n  \
                            sudo forkmon profile -- python3 app.py\n  \
                            sudo forkmon profile --all -- lua5.4 main.lua\n  \
                            sudo forkmon profile --filter '*.py' --svg run.svg -- python3 app.py\n  \
                            sudo forkmon profile --json run.json --trace run.trace.json -- ./build.sh\n\n\
                            The table (on standard error, after the program has ended; --output \
                            FILE for a file) lists the files in the order they were first opened: \
                            ms since start, times opened, the process that opened it first, the \
                            outcome, whether the filter matches, whether a checkpoint is possible \
                            there (and why not), and the start-up it would skip on each resume. \
                            A Python bytecode cache is shown as its source. System and \
                            virtual-environment files are folded into one line per stretch; \
                            --all lists them. Open --trace's file in https://ui.perfetto.dev or \
                            chrome://tracing; --json's schema is in docs/profile.md. Exits with \
                            PROGRAM's exit status.")]
    Profile(ProfileArgs),
    /// Print a completion script for SHELL.
    #[command(after_help = "Examples:\n  \
                            source <(forkmon completions bash)  # in ~/.bashrc\n  \
                            forkmon completions zsh > ~/.zfunc/_forkmon  # fpath+=(~/.zfunc) in ~/.zshrc\n  \
                            forkmon completions fish > ~/.config/fish/completions/forkmon.fish")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) of forkmon, or of one of its
    /// subcommands.
    #[command(after_help = "Examples:\n  \
                            forkmon man | man -l -\n  \
                            forkmon man run | man -l -")]
    Man {
        #[arg(value_parser = ["run", "trace", "profile", "completions", "man"])]
        subcommand: Option<String>,
    },
}

/// `forkmon completions SHELL`: from the clap definition, so the script
/// always knows this binary's subcommands and flags.
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "forkmon", &mut script);
    script
}

/// `forkmon man [SUBCOMMAND]`: forkmon(1), or forkmon-run(1) and the other
/// pages forkmon(1) refers to.
pub fn man(subcommand: Option<&str>) -> std::io::Result<Vec<u8>> {
    // `forkmon help` is for the terminal; a page of its own would be empty.
    let command = Cli::command().disable_help_subcommand(true);
    let source = format!("forkmon {}", env!("CARGO_PKG_VERSION"));
    let page = match subcommand {
        None => clap_mangen::Man::new(command),
        Some(name) => {
            // clap names are `&'static str` (without its "string" feature);
            // printing one page is all this process does.
            let page_name: &'static str = format!("forkmon-{name}").leak();
            let sub = command
                .find_subcommand(name)
                .expect("clap checked the name")
                .clone()
                .name(page_name)
                .bin_name(format!("forkmon {name}"));
            clap_mangen::Man::new(sub)
        }
    };
    let mut roff = Vec::new();
    page.source(source).render(&mut roff)?;
    Ok(roff)
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Print one JSON object per open instead of a table.
    #[arg(long, env = "FORKMON_JSON", value_parser = set_means_on, default_value = OFF)]
    pub json: bool,

    /// Write the trace to FILE instead of standard error (the program keeps
    /// stdout and stderr for itself).
    #[arg(short, long, value_name = "FILE", env = "FORKMON_OUTPUT")]
    pub output: Option<PathBuf>,

    #[command(flatten)]
    pub program: ProgramArgs,
}

/// The files `run` checkpoints at, and `profile` marks.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Files matching GLOB (repeatable; `!GLOB` excludes). A glob without
    /// `/` matches file names anywhere (`*.lua`); one starting with `/` the
    /// absolute path; others are relative to the current directory
    /// (`src/**/*.rs`). Without it or --lua-filter: files under the current
    /// directory.
    #[arg(long = "filter", value_name = "GLOB", allow_hyphen_values = true)]
    pub globs: Vec<String>,

    /// Lua patterns, `;`-separated, matched against the absolute path, as in
    /// the C forkmon (e.g. `%.lua$`).
    #[arg(long = "lua-filter", value_name = "PATTERNS", env = "FORKMON_FILTER")]
    pub lua_filter: Option<String>,

    /// Whether `lua_filter` came from FORKMON_FILTER rather than the flag
    /// (errors name the one the user wrote).
    #[arg(skip)]
    pub lua_filter_from_env: bool,
}

#[derive(Debug, Args)]
pub struct ProfileArgs {
    #[command(flatten)]
    pub filter: FilterArgs,

    /// List every file, system and virtual-environment files included,
    /// instead of folding them.
    #[arg(long)]
    pub all: bool,

    /// Write the table and summary to FILE instead of standard error.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Also write the profile as JSON to FILE (schema: docs/profile.md).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Also write a Chrome trace-event file (Perfetto, chrome://tracing).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,

    /// Also draw the run as an SVG picture: the process tree on a time
    /// line, its opens, and the start-up each checkpoint would skip.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,

    #[command(flatten)]
    pub program: ProgramArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub filter: FilterArgs,

    /// Print nothing of forkmon's own.
    #[arg(short, long, env = "FORKMON_QUIET", value_parser = set_means_on, default_value = OFF)]
    pub quiet: bool,

    /// No colors. Without it, colors are used on a terminal unless NO_COLOR
    /// is set and not empty, CLICOLOR=0 or TERM=dumb; CLICOLOR_FORCE asks for
    /// them anywhere.
    #[arg(long, env = "FORKMON_NO_COLORS", value_parser = set_means_on, default_value = OFF)]
    pub no_color: bool,

    /// How long to wait after a change before resuming, so the editor has
    /// finished writing (the running program is stopped at once):
    /// milliseconds (`50`) or a duration with its unit (`50ms`, `1.5s`).
    #[arg(
        long,
        value_name = "DELAY",
        env = "FORKMON_RESTART_DELAY",
        default_value_t = Delay::from_millis(crate::watcher::DEFAULT_RESTART_MS),
        value_parser = parse_delay,
        allow_hyphen_values = true
    )]
    pub restart_delay: Delay,

    /// How long after a resume further changes wait; they are applied when
    /// the window ends, never dropped. Milliseconds or a duration with its
    /// unit, as for --restart-delay.
    #[arg(
        long,
        value_name = "DELAY",
        env = "FORKMON_IGNORE_DELAY",
        default_value_t = Delay::from_millis(crate::watcher::DEFAULT_IGNORE_MS),
        value_parser = parse_delay,
        allow_hyphen_values = true
    )]
    pub ignore_delay: Delay,

    /// Do not flush the program's C stdio buffers at each checkpoint, nor
    /// run Python unbuffered: output written before a checkpoint but not
    /// flushed yet is then printed again by every resumed run.
    #[arg(long, env = "FORKMON_NO_FLUSH", value_parser = set_means_on, default_value = OFF)]
    pub no_flush: bool,

    /// Flushing is the default now; the flag (and FORKMON_FLUSH) is still
    /// accepted for the scripts written for earlier versions.
    #[arg(
        long,
        env = "FORKMON_FLUSH",
        value_parser = set_means_on,
        default_value = OFF,
        hide = true
    )]
    pub flush: bool,

    /// Most checkpoints kept at once: files opened beyond that run on
    /// without one (each checkpoint is a frozen process, and a program
    /// that opens thousands of matching files would make thousands).
    #[arg(
        long,
        value_name = "N",
        env = "FORKMON_MAX_CHECKPOINTS",
        default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_checkpoints: u32,

    /// Do not keep a forked child waiting at each checkpoint while the
    /// program is idle: half the processes, but each resume forks (a few
    /// hundred microseconds more, growing with the program's memory).
    #[arg(long, env = "FORKMON_NO_STANDBY", value_parser = set_means_on, default_value = OFF)]
    pub no_standby: bool,

    /// Never checkpoint: restart the program from scratch whenever a file
    /// it read changes (for a program that must not be resumed).
    #[arg(long, env = "FORKMON_RESTART", value_parser = set_means_on, default_value = OFF)]
    pub restart: bool,

    /// The signal a restart stops the program with (its whole process
    /// tree), before SIGKILL: a name (`TERM`, `SIGINT`) or a number. A
    /// resume kills at once: the checkpoint holds all the program had.
    #[arg(
        long,
        value_name = "SIGNAL",
        env = "FORKMON_STOP_SIGNAL",
        default_value = "SIGTERM",
        value_parser = parse_signal
    )]
    pub stop_signal: nix::sys::signal::Signal,

    /// How long a restart waits for the program to exit after the stop
    /// signal before it sends SIGKILL: milliseconds or a duration with its
    /// unit.
    #[arg(
        long,
        value_name = "DELAY",
        env = "FORKMON_STOP_TIMEOUT",
        default_value_t = Delay::from_millis(2000),
        value_parser = parse_delay,
        allow_hyphen_values = true
    )]
    pub stop_timeout: Delay,

    /// Read keys at the terminal: r (or Enter) resumes from the latest
    /// checkpoint, R restarts from scratch, q quits. The program's standard
    /// input is then /dev/null.
    #[arg(long, env = "FORKMON_KEYS", value_parser = set_means_on, default_value = OFF)]
    pub keys: bool,

    /// At the end, print a table of the run's checkpoints: when each was
    /// made, its resumes, the start-up each skipped, the time saved.
    #[arg(long, env = "FORKMON_STATS", value_parser = set_means_on, default_value = OFF)]
    pub stats: bool,

    /// Write one JSON object per line to FILE (`-`: standard output) for
    /// each thing forkmon does: watch, change, resume, restart, refusal,
    /// exit (schema: docs/events.md).
    #[arg(long, value_name = "FILE", env = "FORKMON_EVENTS")]
    pub events: Option<PathBuf>,

    /// Clear the screen before each resume or restart.
    #[arg(short, long, env = "FORKMON_CLEAR", value_parser = set_means_on, default_value = OFF)]
    pub clear: bool,

    #[command(flatten)]
    pub program: ProgramArgs,
}

/// A delay as the user gave it: plain milliseconds (as the C forkmon took
/// them, and scripts still pass) or a duration with its unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delay(pub Duration);

impl Delay {
    pub const fn from_millis(ms: u64) -> Delay {
        Delay(Duration::from_millis(ms))
    }
}

/// `50ms`, `1s 500ms`: what --help shows as the default.
impl std::fmt::Display for Delay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// Beyond this a delay is a mistake (a unit forgotten, a timestamp pasted),
/// not a wish: forkmon would look hung.
const MAX_DELAY: Duration = Duration::from_secs(3600);

fn parse_delay(text: &str) -> Result<Delay, String> {
    const FIX: &str = "give milliseconds (200) or a duration with its unit (50ms, 1.5s)";
    let too_long = || format!("longer than an hour; {FIX}");
    let duration = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_millis(text.parse().map_err(|_| too_long())?)
    } else {
        humantime::parse_duration(text).map_err(|e| match e {
            humantime::DurationError::NumberOverflow => too_long(),
            humantime::DurationError::UnknownUnit { unit, .. } => {
                format!("unknown unit '{unit}'; {FIX}")
            }
            _ => format!("not a delay; {FIX}"),
        })?
    };
    if duration > MAX_DELAY {
        return Err(too_long());
    }
    Ok(Delay(duration))
}

/// A signal by name (`TERM`, `SIGTERM`, `sigint`) or number (`15`).
fn parse_signal(text: &str) -> Result<nix::sys::signal::Signal, String> {
    use nix::sys::signal::Signal;
    let signal = match text.parse::<i32>() {
        Ok(number) => Signal::try_from(number).ok(),
        Err(_) => {
            let name = text.to_ascii_uppercase();
            let name = if name.starts_with("SIG") {
                name
            } else {
                format!("SIG{name}")
            };
            name.parse::<Signal>().ok()
        }
    };
    match signal {
        None => Err("not a signal; give a name (TERM, INT, HUP) or a number (15)".to_string()),
        Some(Signal::SIGSTOP | Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU) => {
            Err("that signal only pauses the program; give TERM, INT, HUP or KILL".to_string())
        }
        Some(signal) => Ok(signal),
    }
}

/// How the C forkmon reads its switches (`FORKMON_QUIET`, …): set means
/// on, whatever the value, an empty one included. So `FORKMON_QUIET=1`,
/// `=yes` and `=0` all turn it on, as users' aliases and scripts expect.
///
/// The flag itself takes no value on the command line; this parser sees
/// the environment's value, and clap's default when neither is given:
/// [`OFF`], which no environment variable can hold.
fn set_means_on(value: &str) -> Result<bool, std::convert::Infallible> {
    Ok(value != OFF)
}

/// The default of an "if set" switch: a NUL, which cannot occur in an
/// environment variable's value.
const OFF: &str = "\0";

/// clap's rendered error, with the blank line between a one-line message
/// and its "For more information" pointer taken out: a bad value then reads
/// as GNU tools word it (`ls: invalid …` / `Try 'ls --help' …`), while
/// errors with tips and a usage line keep clap's layout.
pub fn one_line_errors_read_as_one(rendered: &str) -> std::borrow::Cow<'_, str> {
    const POINTER: &str = "\n\nFor more information";
    match rendered.split_once(POINTER) {
        Some((message, rest)) if !message.contains('\n') => {
            format!("{message}\n{}{rest}", &POINTER[2..]).into()
        }
        _ => rendered.into(),
    }
}

/// Parses forkmon's command line: `run` when no subcommand is named, a
/// usage error for a misspelt one.
pub fn parse(args: Vec<OsString>) -> Result<Cli, clap::Error> {
    let command = Cli::command();
    let args = with_default_subcommand(&command, args)?;
    let mut matches = command.try_get_matches_from(args)?;
    // Read before the values are taken out of the matches.
    let lua_filter_from_env = matches
        .subcommand()
        .and_then(|(_, sub)| sub.try_get_raw("lua_filter").ok().flatten().map(|_| sub))
        .and_then(|sub| sub.value_source("lua_filter"))
        == Some(clap::parser::ValueSource::EnvVariable);
    let mut cli =
        Cli::from_arg_matches_mut(&mut matches).map_err(|e| e.format(&mut Cli::command()))?;
    match &mut cli.command {
        Command::Run(run) => run.filter.lua_filter_from_env = lua_filter_from_env,
        Command::Profile(profile) => profile.filter.lua_filter_from_env = lua_filter_from_env,
        _ => {}
    }
    Ok(cli)
}

impl FilterArgs {
    /// The Lua patterns, labelled with where the user gave them.
    pub fn lua_patterns(&self) -> Option<crate::filter::LuaPatterns<'_>> {
        let patterns = self.lua_filter.as_deref()?;
        Some(if self.lua_filter_from_env {
            crate::filter::LuaPatterns::environment(patterns)
        } else {
            crate::filter::LuaPatterns::flag(patterns)
        })
    }
}

/// The subcommand used when none is named: `forkmon -- PROGRAM` and
/// `forkmon lua5.4 main.lua` are `forkmon run …`. A first word that is no
/// subcommand but is followed by `--` (`forkmon trce -- true`) was meant as
/// one: a usage error then, rather than running a program named `trce`.
fn with_default_subcommand(
    command: &clap::Command,
    mut args: Vec<OsString>,
) -> Result<Vec<OsString>, clap::Error> {
    const FLAGS: &[&str] = &["-h", "--help", "-V", "--version"];
    let Some(first) = args.get(1) else {
        return Ok(args);
    };
    let known = first.to_str().is_some_and(|first| {
        FLAGS.contains(&first) || first == "help" || command.find_subcommand(first).is_some()
    });
    if known {
        return Ok(args);
    }
    let word = first.as_encoded_bytes();
    if !word.starts_with(b"-") && args.get(2).is_some_and(|next| next == "--") {
        return Err(unknown_subcommand(command, first));
    }
    args.insert(1, "run".into());
    Ok(args)
}

/// clap's own "unrecognized subcommand" (with its "a similar subcommand
/// exists" tip), naming the subcommands and how to run a program of that
/// name.
fn unknown_subcommand(command: &clap::Command, word: &OsString) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let mut err = match command
        .clone()
        .try_get_matches_from([OsString::from("forkmon"), word.clone()])
    {
        Err(e) if e.kind() == ErrorKind::InvalidSubcommand => e,
        _ => {
            let mut e = clap::Error::new(ErrorKind::InvalidSubcommand).with_cmd(command);
            e.insert(
                ContextKind::InvalidSubcommand,
                ContextValue::String(word.to_string_lossy().into_owned()),
            );
            e
        }
    };
    let names: Vec<&str> = command.get_subcommands().map(|c| c.get_name()).collect();
    let word = word.to_string_lossy();
    err.insert(
        ContextKind::Suggested,
        ContextValue::StyledStrs(vec![
            format!("the subcommands are: {}", names.join(", ")).into(),
            format!("to run a program named '{word}', put it after '--': 'forkmon -- {word} …'")
                .into(),
        ]),
    );
    err
}

#[derive(Debug, Args)]
pub struct ProgramArgs {
    /// The program to run, and its arguments (after `--` when the first
    /// of them starts with `-`).
    #[arg(required = true, trailing_var_arg = true, value_name = "PROGRAM")]
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
        let Command::Trace(args) = cli.command else {
            panic!("trace parsed as {:?}", cli.command);
        };
        assert!(args.json);
        assert_eq!(args.program.argv, ["ls", "-l", "--json"]);
    }

    fn argv(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn run_is_the_default_subcommand() {
        for given in [
            &["forkmon", "--", "lua5.4", "main.lua"][..],
            &["forkmon", "--filter", "*.lua", "--", "lua5.4", "main.lua"],
            &["forkmon", "lua5.4", "main.lua"],
        ] {
            let cli = parse(argv(given)).unwrap();
            let Command::Run(args) = cli.command else {
                panic!("{given:?} parsed as {:?}", cli.command);
            };
            assert_eq!(args.program.argv, ["lua5.4", "main.lua"]);
        }
        let Command::Trace(args) = parse(argv(&["forkmon", "trace", "--", "ls"]))
            .unwrap()
            .command
        else {
            panic!("trace is a subcommand");
        };
        assert_eq!(args.program.argv, ["ls"]);
    }

    #[test]
    fn a_misspelt_subcommand_is_a_usage_error_naming_them() {
        use clap::error::ErrorKind;
        let err = parse(argv(&["forkmon", "trce", "--", "true"])).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidSubcommand);
        let text = err.render().to_string();
        for expected in [
            "unrecognized subcommand 'trce'",
            "tip: a similar subcommand exists: 'trace'",
            "tip: the subcommands are: run, trace",
            "'forkmon -- trce …'",
            "Usage: forkmon",
        ] {
            assert!(text.contains(expected), "{expected:?} in {text}");
        }
        // Nothing close: the list and the way to run such a program remain.
        let text = parse(argv(&["forkmon", "zzz", "--", "true"]))
            .unwrap_err()
            .render()
            .to_string();
        assert!(!text.contains("similar"), "{text}");
        assert!(text.contains("the subcommands are: run, trace"), "{text}");
        // A program's own `--` after its first argument is still its own.
        let Command::Run(args) = parse(argv(&["forkmon", "--", "trce", "--", "x"]))
            .unwrap()
            .command
        else {
            panic!("run");
        };
        assert_eq!(args.program.argv, ["trce", "--", "x"]);
    }

    #[test]
    fn bad_delays_are_refused_naming_the_flag() {
        let err = Cli::try_parse_from(["forkmon", "run", "--restart-delay", "-5", "--", "x"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--restart-delay"), "{err}");
        let err = Cli::try_parse_from(["forkmon", "run", "--ignore-delay", "soon", "--", "x"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--ignore-delay"), "{err}");
    }

    #[test]
    fn delays_take_milliseconds_or_units_up_to_an_hour() {
        let ms = |n| Ok(Delay(Duration::from_millis(n)));
        assert_eq!(parse_delay("50"), ms(50));
        assert_eq!(parse_delay("0"), ms(0));
        assert_eq!(parse_delay("50ms"), ms(50));
        assert_eq!(parse_delay("1s"), ms(1000));
        assert_eq!(parse_delay("1.5s"), ms(1500));
        assert_eq!(parse_delay("1min"), ms(60_000));
        assert_eq!(parse_delay("1h"), ms(3_600_000));
        for absurd in [
            "99999999999999",
            "99999999999999999999999",
            "1h 1s",
            "3days",
        ] {
            assert_eq!(
                parse_delay(absurd),
                Err(
                    "longer than an hour; give milliseconds (200) or a duration with its unit \
                     (50ms, 1.5s)"
                        .into()
                ),
                "{absurd}"
            );
        }
        for bad in ["", "-5", "soon", "5 parsecs", "1.5"] {
            assert!(parse_delay(bad).is_err(), "{bad:?}");
        }
        assert!(
            parse_delay("5 parsecs")
                .unwrap_err()
                .starts_with("unknown unit 'parsecs'")
        );
    }

    #[test]
    fn help_shows_the_default_delays() {
        let help = Cli::command()
            .find_subcommand_mut("run")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(help.contains("[default: 50ms]"), "{help}");
        assert!(help.contains("[default: 200ms]"), "{help}");
        let run = |argv: &[&str]| match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(args) => args,
            other => panic!("{other:?}"),
        };
        let defaults = run(&["forkmon", "run", "--", "x"]);
        assert_eq!(
            (defaults.restart_delay, defaults.ignore_delay),
            (
                Delay::from_millis(crate::watcher::DEFAULT_RESTART_MS),
                Delay::from_millis(crate::watcher::DEFAULT_IGNORE_MS)
            )
        );
    }

    #[test]
    fn if_set_switches_are_off_unless_given() {
        let run = |argv: &[&str]| match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(args) => args,
            other => panic!("{other:?}"),
        };
        // (The test environment sets none of their variables.)
        let off = run(&["forkmon", "run", "--", "x"]);
        assert!(!off.quiet && !off.no_color && !off.no_flush && !off.no_standby);
        let on = run(&[
            "forkmon",
            "run",
            "-q",
            "--no-color",
            "--no-flush",
            "--no-standby",
            "--",
            "x",
        ]);
        assert!(on.quiet && on.no_color && on.no_flush && on.no_standby);
        // What an environment variable can hold, an empty value included.
        for value in ["1", "", "0", "yes", "false"] {
            assert_eq!(set_means_on(value), Ok(true), "{value:?}");
        }
    }

    #[test]
    fn one_line_errors_keep_their_pointer_on_the_next_line() {
        let value = "error: invalid value 'x' for '--n <N>': bad\n\n\
                     For more information, try '--help'.\n";
        assert_eq!(
            one_line_errors_read_as_one(value),
            "error: invalid value 'x' for '--n <N>': bad\nFor more information, try '--help'.\n"
        );
        let err = Cli::try_parse_from(["forkmon", "run", "--filer", "x", "--", "y"]).unwrap_err();
        let whole = err.render().to_string();
        assert_eq!(one_line_errors_read_as_one(&whole), whole);
        assert!(whole.contains("tip: a similar argument exists: '--filter'"));
    }

    #[test]
    fn lua_patterns_know_whether_they_came_from_the_flag() {
        let run = |args: &[&str]| match parse(argv(args)).unwrap().command {
            Command::Run(run) => run,
            other => panic!("{other:?}"),
        };
        // (The test environment does not set FORKMON_FILTER.)
        let flag = run(&["forkmon", "--lua-filter", "%", "--", "x"]);
        assert_eq!(flag.filter.lua_patterns().unwrap().origin, "--lua-filter");
        assert!(run(&["forkmon", "--", "x"]).filter.lua_patterns().is_none());
    }

    #[test]
    fn completions_and_man_pages_come_from_the_definition() {
        use clap::ValueEnum as _;
        for shell in clap_complete::Shell::value_variants() {
            let script = String::from_utf8(completions(*shell)).unwrap();
            for word in ["trace", "restart-delay", "lua-filter"] {
                assert!(script.contains(word), "{shell}: no {word}");
            }
        }
        let top = String::from_utf8(man(None).unwrap()).unwrap();
        assert!(top.contains(".TH forkmon 1"), "{top}");
        assert!(
            top.contains("forkmon\\-run(1)") && !top.contains("forkmon\\-help"),
            "{top}"
        );
        for name in ["run", "trace", "profile", "completions", "man"] {
            let page = String::from_utf8(man(Some(name)).unwrap()).unwrap();
            assert!(page.contains(&format!(".TH forkmon-{name} 1")), "{page}");
        }
        let run = String::from_utf8(man(Some("run")).unwrap()).unwrap();
        assert!(run.contains("FORKMON_RESTART_DELAY"), "env twins are named");
        assert!(run.contains("[default: 50ms]"), "{run}");
    }

    #[test]
    fn program_is_required() {
        assert!(Cli::try_parse_from(["forkmon", "trace"]).is_err());
    }
}
