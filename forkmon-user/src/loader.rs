//! Load forkmon's eBPF programs into the kernel and attach them.
//!
//! Nothing is pinned: the programs and maps live exactly as long as the
//! file descriptors of this process, so they vanish with forkmon however it
//! ends (even SIGKILL).
use std::{fs, io, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, TracePoint},
};
use aya_log::EbpfLogger;
use forkmon_common::{PrefilterConfig, armed, global, stat};
use log::{debug, warn};

const TRACEFS: &str = "/sys/kernel/tracing";

/// The category of a BTF (raw) tracepoint in [`TRACEPOINTS`].
const BTF: &str = "btf";

/// (program name in the object, tracepoint category, tracepoint name)
const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("sys_exit", BTF, "sys_exit"),
    ("task_newtask", "task", "task_newtask"),
    ("sched_process_exec", "sched", "sched_process_exec"),
    ("sched_process_exit", "sched", "sched_process_exit"),
];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("needs root to load its eBPF program: run it with sudo")]
    NotRoot,
    #[error(
        "tracefs is not mounted at {TRACEFS} and mounting it failed ({0}); \
         mount it with `sudo mount -t tracefs tracefs {TRACEFS}`"
    )]
    Tracefs(nix::Error),
    #[error(
        "cannot read the kernel's BTF ({0}); a kernel built with CONFIG_DEBUG_INFO_BTF \
         is needed (/sys/kernel/btf/vmlinux)"
    )]
    Btf(Box<aya::BtfError>),
    #[error("cannot read the layout of tracepoint {event} ({source}); is this kernel ≥ 5.8?")]
    Format { event: String, source: io::Error },
    #[error("tracepoint {event} has no field `{field}` on this kernel")]
    MissingField { event: String, field: String },
    #[error("the kernel refused the eBPF program: {0}")]
    Load(Box<aya::EbpfError>),
    #[error("cannot attach to tracepoint {category}/{name}: {source}")]
    Attach {
        category: String,
        name: String,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("the embedded eBPF object lacks map {0}: a build mismatch, rebuild")]
    MissingMap(&'static str),
    #[error("map {0}: {1}")]
    Map(&'static str, Box<aya::maps::MapError>),
}

/// The loaded, attached programs and the maps user space talks through.
pub struct Probes {
    /// Keeps the programs attached; dropping it detaches them.
    _ebpf: Ebpf,
    pub tracked: HashMap<MapData, u32, u8>,
    armed: HashMap<MapData, u32, u8>,
    prefilter: Array<MapData, PrefilterConfig>,
    events: Option<RingBuf<MapData>>,
    pub stats: PerCpuArray<MapData, u64>,
    /// Messages from `aya_log_ebpf`; absent if the object logs nothing.
    pub logger: Option<EbpfLogger<&'static dyn log::Log>>,
}

impl Probes {
    pub fn load() -> Result<Self, LoadError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(LoadError::NotRoot);
        }
        ensure_tracefs()?;
        let newtask_pid = field_offset("task", "task_newtask", "pid")?;
        let newtask_flags = field_offset("task", "task_newtask", "clone_flags")?;
        let exit_group_dead = field_offset("sched", "sched_process_exit", "group_dead")?;

        let mut ebpf =
            EbpfLoader::new()
                .override_global(global::NEWTASK_PID_OFFSET, &newtask_pid, true)
                .override_global(global::NEWTASK_CLONE_FLAGS_OFFSET, &newtask_flags, true)
                .override_global(global::EXIT_GROUP_DEAD_OFFSET, &exit_group_dead, true)
                .load(aya::include_bytes_aligned!(concat!(
                    env!("OUT_DIR"),
                    "/forkmon"
                )))
                .map_err(|e| match &e {
                    aya::EbpfError::MapError(aya::maps::MapError::CreateError {
                        io_error, ..
                    }) if io_error.kind() == io::ErrorKind::PermissionDenied => LoadError::NotRoot,
                    _ => LoadError::Load(Box::new(e)),
                })?;

        let logger = match EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                warn!("eBPF log messages unavailable: {e}");
                None
            }
        };

        // The loader parsed it too, but keeps it to itself.
        let btf = aya::Btf::from_sys_fs().map_err(|e| LoadError::Btf(Box::new(e)))?;
        for &(program, category, name) in TRACEPOINTS {
            let mut attach = || -> Result<(), aya::programs::ProgramError> {
                let program = ebpf
                    .program_mut(program)
                    .ok_or(aya::programs::ProgramError::UnexpectedProgramType)?;
                if category == BTF {
                    let tp: &mut BtfTracePoint = program.try_into()?;
                    tp.load(name, &btf)?;
                    tp.attach()?;
                } else {
                    let tp: &mut TracePoint = program.try_into()?;
                    tp.load()?;
                    tp.attach(category, name)?;
                }
                Ok(())
            };
            attach().map_err(|source| LoadError::Attach {
                category: category.into(),
                name: name.into(),
                source: Box::new(source),
            })?;
            debug!("attached {category}/{name}");
        }

        let tracked = take_map(&mut ebpf, "TRACKED")?;
        let armed = take_map(&mut ebpf, "ARMED")?;
        let prefilter = take_map(&mut ebpf, "PREFILTER")?;
        let events = take_map(&mut ebpf, "EVENTS")?;
        let stats = take_map(&mut ebpf, "STATS")?;
        Ok(Probes {
            _ebpf: ebpf,
            tracked,
            armed,
            prefilter,
            events: Some(events),
            stats,
            logger,
        })
    }

    /// The ring buffer of records; it has one reader.
    pub fn take_events(&mut self) -> RingBuf<MapData> {
        self.events.take().expect("the ring buffer is taken once")
    }

    /// Start reporting `pid` and every process it starts.
    pub fn track(&mut self, pid: u32) -> Result<(), LoadError> {
        self.tracked
            .insert(pid, 1, 0)
            .map_err(|e| LoadError::Map("TRACKED", Box::new(e)))
    }

    /// Let the kernel signal `pid` at candidate opens: its stub's handler
    /// is installed and it has registered.
    pub fn arm(&mut self, pid: u32) -> Result<(), LoadError> {
        self.armed
            .insert(pid, armed::ARMED, 0)
            .map_err(|e| LoadError::Map("ARMED", Box::new(e)))
    }

    /// Arms `pid` but lets its next candidate open pass unsignalled (see
    /// [`armed::SKIP_NEXT_OPEN`]).
    pub fn arm_skipping_next_open(&mut self, pid: u32) -> Result<(), LoadError> {
        self.armed
            .insert(pid, armed::SKIP_NEXT_OPEN, 0)
            .map_err(|e| LoadError::Map("ARMED", Box::new(e)))
    }

    /// The kernel no longer signals `pid` (its stub cannot answer).
    pub fn disarm(&mut self, pid: u32) {
        let _ = self.armed.remove(&pid);
    }

    /// Arms `pid`'s next child when it forks it (see
    /// [`armed::ARM_NEXT_CHILD`]); `pid` stays armed.
    pub fn arm_next_child(&mut self, pid: u32) -> Result<(), LoadError> {
        self.armed
            .insert(pid, armed::ARM_NEXT_CHILD, 0)
            .map_err(|e| LoadError::Map("ARMED", Box::new(e)))
    }

    /// Takes back [`armed::ARM_NEXT_CHILD`] from `pid` if it is still
    /// armed, so the next process it forks is not; never arms a process
    /// that is not.
    pub fn keep_next_child_unarmed(&mut self, pid: u32) -> Result<(), LoadError> {
        const BPF_EXIST: u64 = 2;
        match self.armed.insert(pid, armed::ARMED, BPF_EXIST) {
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            result => result.map_err(|e| LoadError::Map("ARMED", Box::new(e))),
        }
    }

    /// Which opens of armed processes are signalled.
    pub fn set_prefilter(&mut self, config: &PrefilterConfig) -> Result<(), LoadError> {
        self.prefilter
            .set(0, config, 0)
            .map_err(|e| LoadError::Map("PREFILTER", Box::new(e)))
    }

    pub fn untrack(&mut self, pid: u32) {
        let _ = self.tracked.remove(&pid);
    }

    /// Whether `pid` is in the program's live tree.
    pub fn is_tracked(&self, pid: u32) -> bool {
        self.tracked.get(&pid, 0).is_ok()
    }

    /// Every process currently tracked (the target's live tree).
    pub fn tracked_pids(&self) -> Vec<u32> {
        self.tracked.keys().filter_map(Result::ok).collect()
    }

    /// Sum of one loss counter over all CPUs.
    pub fn stat(&self, index: u32) -> u64 {
        self.stats
            .get(&index, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    pub fn losses(&self) -> Losses {
        Losses {
            ring_full: self.stat(stat::RING_FULL),
            tracked_full: self.stat(stat::TRACKED_FULL),
        }
    }
}

/// What the kernel side could not deliver.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Losses {
    pub ring_full: u64,
    pub tracked_full: u64,
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, LoadError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(LoadError::MissingMap(name))?;
    T::try_from(map).map_err(|e| LoadError::Map(name, Box::new(e)))
}

/// aya attaches tracepoints through tracefs, which a fresh machine may not
/// have mounted.
fn ensure_tracefs() -> Result<(), LoadError> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(());
    }
    nix::mount::mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(LoadError::Tracefs)?;
    log::info!("mounted tracefs at {TRACEFS}");
    Ok(())
}

fn field_offset(category: &str, event: &str, field: &str) -> Result<u32, LoadError> {
    let path = Path::new(TRACEFS)
        .join("events")
        .join(category)
        .join(event)
        .join("format");
    let event_name = format!("{category}/{event}");
    let format = fs::read_to_string(&path).map_err(|source| LoadError::Format {
        event: event_name.clone(),
        source,
    })?;
    parse_field_offset(&format, field).ok_or(LoadError::MissingField {
        event: event_name,
        field: field.into(),
    })
}

/// Finds `offset:N` on the `field:TYPE NAME;` line of a tracefs format file.
fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';').map(str::trim);
        let decl = parts.next()?.strip_prefix("field:")?;
        let name = decl
            .rsplit(|c: char| c.is_whitespace() || c == '*')
            .next()?;
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        parts.find_map(|p| p.strip_prefix("offset:")?.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::parse_field_offset;

    const FORK_6_18: &str = "name: sched_process_fork
ID: 312
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;
\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;
\tfield:char comm[16];\toffset:24;\tsize:16;\tsigned:0;
";

    #[test]
    fn finds_offsets_of_plain_data_loc_and_array_fields() {
        assert_eq!(parse_field_offset(FORK_6_18, "child_pid"), Some(20));
        assert_eq!(parse_field_offset(FORK_6_18, "parent_pid"), Some(12));
        assert_eq!(parse_field_offset(FORK_6_18, "child_comm"), Some(16));
        assert_eq!(parse_field_offset(FORK_6_18, "comm"), Some(24));
        assert_eq!(parse_field_offset(FORK_6_18, "pid"), None);
        assert_eq!(parse_field_offset(FORK_6_18, "common_pid"), Some(4));
    }
}

#[cfg(test)]
mod messages {
    use super::LoadError;

    /// main prints every error as "forkmon: …": the message itself must not
    /// say forkmon again.
    #[test]
    fn errors_leave_the_name_to_main() {
        for err in [
            LoadError::NotRoot,
            LoadError::Tracefs(nix::Error::EPERM),
            LoadError::MissingMap("EVENTS"),
        ] {
            let text = err.to_string();
            assert!(!text.to_lowercase().contains("forkmon"), "{text}");
        }
        assert_eq!(
            LoadError::NotRoot.to_string(),
            "needs root to load its eBPF program: run it with sudo"
        );
    }
}
