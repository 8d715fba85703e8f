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
    /// Linear memory of the run [default: 256M]
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub memory: Option<u64>,
    /// Time executing guest code [default: 60s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub cpu: Option<Duration>,
    /// Wall-clock time of the run [default: 600s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Jobs the run may submit [default: 1000]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_jobs: Option<u64>,
    /// Jobs queued or running at once [default: 64]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_in_flight: Option<u64>,
    /// Bytes of one prompt with its system message [default: 1M]
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub max_prompt_bytes: Option<u64>,
    /// agents.call nesting [default: 16]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub max_depth: Option<u32>,
    /// Bytes the component may pass to one host call [default: 16M]
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub max_hostcall_bytes: Option<u64>,
    /// Log bytes before lines are dropped [default: 1M]
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub max_log_bytes: Option<u64>,
}

impl GrantArgs {
    /// The grants these flags describe; unset limits take the sandbox defaults.
    pub fn to_grants(&self) -> Result<Grants> {
        let defaults = Limits::default();
        let mut grants = Grants {
            dirs: self.dirs.clone(),
            env: self.env.clone(),
            limits: Limits {
                memory_bytes: self.memory.unwrap_or(defaults.memory_bytes),
                wall: self.timeout.unwrap_or(defaults.wall),
                cpu: self.cpu.unwrap_or(defaults.cpu),
                max_jobs: self.max_jobs.unwrap_or(defaults.max_jobs),
                max_in_flight: self.max_in_flight.unwrap_or(defaults.max_in_flight),
                max_prompt_bytes: self.max_prompt_bytes.unwrap_or(defaults.max_prompt_bytes),
                max_depth: self.max_depth.unwrap_or(defaults.max_depth),
                hostcall_bytes: self.max_hostcall_bytes.unwrap_or(defaults.hostcall_bytes),
                log_bytes: self.max_log_bytes.unwrap_or(defaults.log_bytes),
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

/// Where compiled components are cached: `$XDG_CACHE_HOME/nrvna/wasm` or
/// `~/.cache/nrvna/wasm`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("nrvna").join("wasm"))
}
