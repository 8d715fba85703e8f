//! The sandbox grant and limit flags, shared by `nrvna exec` and `nrvnad` (where they
//! apply to every agent job the daemon runs).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use nrvna_sandbox::{
    AgentGrant, DirGrant, EnvVar, Grants, Limits, RouteGrant, parse_bytes, parse_duration,
};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct GrantArgs {
    /// Grant a host directory (HOST[:GUEST][:ro]); repeatable
    #[arg(long = "dir", value_name = "HOST[:GUEST][:ro]")]
    pub dirs: Vec<DirGrant>,
    /// Grant an environment variable (K=V); repeatable
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<EnvVar>,
    /// Grant a route to another workspace (NAME=WS); repeatable
    #[arg(long = "route", value_name = "NAME=WS")]
    pub routes: Vec<RouteGrant>,
    /// Grant a component for agents.call (NAME=PATH); repeatable
    #[arg(long = "agent", value_name = "NAME=PATH")]
    pub agents: Vec<AgentGrant>,
    /// Put what the component does before a person: `submits` holds every job it
    /// submits until `nrvna approve` (a denied one is a `denied` error to it)
    #[arg(long = "approve", value_name = "WHAT", value_parser = ["submits"])]
    pub approve: Vec<String>,
    #[arg(help = format!("Time the run may wait, in all, for its held jobs to be approved; not counted in --timeout [default: {}]", show_time(Limits::default().approval_wait)), long, value_name = "DURATION", value_parser = parse_duration)]
    pub approval_timeout: Option<Duration>,
    #[arg(help = format!("Linear memory of the run [default: {}]", show_size(Limits::default().memory_bytes)), long, value_name = "SIZE", value_parser = parse_bytes)]
    pub memory: Option<u64>,
    #[arg(help = format!("Time executing guest code [default: {}]", show_time(Limits::default().cpu)), long, value_name = "DURATION", value_parser = parse_duration)]
    pub cpu: Option<Duration>,
    #[arg(help = format!("Time compiling a component may take (killed past it) [default: {}]", show_time(Limits::default().compile_time)), long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_compile_time: Option<Duration>,
    #[arg(help = format!("Wall-clock time of the run [default: {}]", show_time(Limits::default().wall)), long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    #[arg(help = format!("Jobs the run may submit [default: {}]", Limits::default().max_jobs), long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_jobs: Option<u64>,
    #[arg(help = format!("Jobs queued or running at once [default: {}]", Limits::default().max_in_flight), long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_in_flight: Option<u64>,
    #[arg(help = format!("Bytes of one prompt with its system message [default: {}]", show_size(Limits::default().max_prompt_bytes)), long, value_name = "SIZE", value_parser = parse_bytes)]
    pub max_prompt_bytes: Option<u64>,
    #[arg(help = format!("agents.call nesting [default: {}]", Limits::default().max_depth), long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub max_depth: Option<u32>,
    #[arg(help = format!("Bytes the component may pass to one host call [default: {}]", show_size(Limits::default().hostcall_bytes)), long, value_name = "SIZE", value_parser = parse_bytes)]
    pub max_hostcall_bytes: Option<u64>,
    #[arg(help = format!("Log bytes before lines are dropped [default: {}]", show_size(Limits::default().log_bytes)), long, value_name = "SIZE", value_parser = parse_bytes)]
    pub max_log_bytes: Option<u64>,
    #[arg(help = format!("Handles (open files, streams) the run's sandboxes hold together [default: {}]", Limits::default().max_handles), long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub max_handles: Option<u64>,
    #[arg(help = format!("Bytes one agent keeps in kv, all keys together [default: {}]", show_size(Limits::default().kv_bytes)), long, value_name = "SIZE", value_parser = parse_bytes)]
    pub max_kv_bytes: Option<u64>,
    #[arg(help = format!("Bytes of images the run's jobs may name in all [default: {}]", show_size(Limits::default().image_bytes)), long, value_name = "SIZE", value_parser = parse_bytes)]
    pub max_image_bytes: Option<u64>,
    #[arg(help = format!("Bytes the run writes to files, stdout and stderr in all [default: {}]", show_size(Limits::default().write_bytes)), long, value_name = "SIZE", value_parser = parse_bytes)]
    pub max_write_bytes: Option<u64>,
    #[arg(help = format!("Bytes of the run's journal, every host call recorded [default: {}]", show_size(Limits::default().journal_bytes)), long, value_name = "SIZE", value_parser = parse_bytes)]
    pub max_journal_bytes: Option<u64>,
}

impl GrantArgs {
    /// The grants these flags describe; unset limits take the sandbox defaults.
    pub fn to_grants(&self) -> Result<Grants> {
        let defaults = Limits::default();
        let mut grants = Grants {
            dirs: self.dirs.clone(),
            env: self.env.clone(),
            approve_submits: self.approve.iter().any(|w| w == "submits"),
            limits: Limits {
                memory_bytes: self.memory.unwrap_or(defaults.memory_bytes),
                wall: self.timeout.unwrap_or(defaults.wall),
                approval_wait: self.approval_timeout.unwrap_or(defaults.approval_wait),
                cpu: self.cpu.unwrap_or(defaults.cpu),
                compile_time: self.max_compile_time.unwrap_or(defaults.compile_time),
                max_jobs: self.max_jobs.unwrap_or(defaults.max_jobs),
                max_in_flight: self.max_in_flight.unwrap_or(defaults.max_in_flight),
                max_prompt_bytes: self.max_prompt_bytes.unwrap_or(defaults.max_prompt_bytes),
                max_depth: self.max_depth.unwrap_or(defaults.max_depth),
                hostcall_bytes: self.max_hostcall_bytes.unwrap_or(defaults.hostcall_bytes),
                log_bytes: self.max_log_bytes.unwrap_or(defaults.log_bytes),
                max_handles: self.max_handles.unwrap_or(defaults.max_handles),
                kv_bytes: self.max_kv_bytes.unwrap_or(defaults.kv_bytes),
                image_bytes: self.max_image_bytes.unwrap_or(defaults.image_bytes),
                write_bytes: self.max_write_bytes.unwrap_or(defaults.write_bytes),
                journal_bytes: self.max_journal_bytes.unwrap_or(defaults.journal_bytes),
            },
            ..Grants::default()
        };
        for route in &self.routes {
            grants.add_route(route.clone())?;
        }
        for agent in &self.agents {
            grants.add_agent(agent.clone())?;
        }
        Ok(grants)
    }
}

/// A byte count as the flags take it: `256M`, `1M`, `512K`, `1000`.
pub fn show_size(bytes: u64) -> String {
    for (unit, shift) in [("G", 30), ("M", 20), ("K", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// A duration as the flags take it: `60s`, `250ms`.
pub fn show_time(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The limits table of `nrvna exec --help`, with the sandbox's defaults.
pub fn limits_help() -> String {
    let d = Limits::default();
    let rows = [
        ("--memory SIZE", "linear memory", show_size(d.memory_bytes)),
        (
            "--cpu DURATION",
            "time executing guest code",
            show_time(d.cpu),
        ),
        (
            "--timeout DURATION",
            "wall-clock time, waits included",
            show_time(d.wall),
        ),
        (
            "--max-compile-time DURATION",
            "compiling one component",
            show_time(d.compile_time),
        ),
        (
            "--approval-timeout DURATION",
            "waiting for approvals (not in --timeout)",
            show_time(d.approval_wait),
        ),
        ("--max-jobs N", "jobs submitted", d.max_jobs.to_string()),
        (
            "--max-in-flight N",
            "jobs queued or running at once",
            d.max_in_flight.to_string(),
        ),
        (
            "--max-prompt-bytes SIZE",
            "one prompt with its system message",
            show_size(d.max_prompt_bytes),
        ),
        (
            "--max-depth N",
            "agents.call nesting",
            d.max_depth.to_string(),
        ),
        (
            "--max-hostcall-bytes SIZE",
            "bytes passed to one host call",
            show_size(d.hostcall_bytes),
        ),
        (
            "--max-log-bytes SIZE",
            "log before lines are dropped",
            show_size(d.log_bytes),
        ),
        (
            "--max-handles N",
            "open files and streams held at once",
            d.max_handles.to_string(),
        ),
        (
            "--max-kv-bytes SIZE",
            "kv storage of one agent, all its keys",
            show_size(d.kv_bytes),
        ),
        (
            "--max-image-bytes SIZE",
            "images the run's jobs name, in all",
            show_size(d.image_bytes),
        ),
        (
            "--max-write-bytes SIZE",
            "written to files, stdout, stderr",
            show_size(d.write_bytes),
        ),
        (
            "--max-journal-bytes SIZE",
            "the journal of every host call",
            show_size(d.journal_bytes),
        ),
    ];
    let mut out = String::from("Limits (for the whole run, nested agents.call included):\n");
    for (flag, what, default) in rows {
        out.push_str(&format!("  {flag:<29}{what:<42}{default}\n"));
    }
    out
}

/// Where compiled components are cached: `$XDG_CACHE_HOME/nrvna/wasm` or
/// `~/.cache/nrvna/wasm`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("nrvna").join("wasm"))
}
