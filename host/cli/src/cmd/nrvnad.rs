//! `nrvnad MODEL WORKSPACE [WORKERS]`, `nrvnad --backend URL WORKSPACE [WORKERS]`,
//! `nrvnad status WS`, `nrvnad stop WS`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use nrvna_http::{HttpServer, Metrics};
use nrvna_queue::Workspace;
use nrvna_queue::lifecycle::{DaemonStatus, probe};
use nrvna_sandbox::parse_duration;

use crate::cli::{VersionFlag, init_logging, parse_from};
use crate::daemon::{self, AgentSettings, Banner, DaemonConfig, Ended, SignalCounter};
use crate::exit;
use crate::grant_args::{GrantArgs, default_cache_dir, show_time};

const AFTER_HELP: &str = "\
Other commands:
  nrvnad status WORKSPACE [--json]
      Is a daemon running on WORKSPACE? Prints `ready (pid P, model M, workers N)`,
      `starting (pid P)` or `not running`; --json prints one object
      {\"running\",\"ready\",\"pid\",\"model\",\"workers\",\"started_at\",\"nodes\"}
      (nodes: one object per daemon of a --shared workspace, else null).
  nrvnad stop WORKSPACE [--timeout DURATION]
      Stops WORKSPACE's daemon: SIGTERM, then after --timeout (20s; seconds, or a
      number with ms, s, m or h) a second SIGTERM that requeues its running jobs,
      then SIGKILL. Prints `stopped` once the process has exited.
  nrvnad help
      This help (so does nrvnad with no arguments).

Examples:
  nrvnad ~/.cache/nrvna/models/SmolLM2-135M-Instruct.Q4_1.gguf ./ws 4 &
  nrvnad smollm2 ./ws --drain          work through the queue, then exit
  nrvnad smollm2 ./ws --embed-model minilm
                                       embed with all-MiniLM-L6-v2 (scripts/setup)
  nrvnad smollm2 ./ws --http           OpenAI-compatible API on 127.0.0.1:8480
  nrvnad --backend http://gpu-box:8080/v1 ./ws 8
                                       run the jobs on a remote llama-server / vLLM /
                                       ollama, 8 requests in flight (docs/cli.md)
  nrvnad status ./ws                   ready / starting / not running
  nrvnad stop ./ws                     graceful stop, forced after --timeout

nrvnad exits 0 when stopped (by a signal, or `nrvnad stop`) or drained with no failed
job, 1 on an error or when --drain saw failed jobs. `nrvnad status` exits 0 ready,
3 starting, 5 not running; `nrvnad stop` 0 once stopped or when none was running.

Signals: SIGINT/SIGTERM stop claiming jobs, let running ones finish for --grace
seconds, then requeue them; a second signal requeues at once.";

#[derive(Parser, Debug)]
#[command(
    name = "nrvnad",
    version,
    disable_version_flag = true,
    about = "The nrvna daemon: owns a workspace and runs its jobs on a local GGUF model \
             (or a remote OpenAI-compatible server)",
    long_about = "The nrvna daemon: owns a workspace and runs its jobs on a local GGUF model.\n\n\
        Jobs submitted with `wrk` are picked up within milliseconds (file-system \
        notifications), decoded together with continuous batching (one slot per worker), \
        and moved to output/ or failed/. One daemon per workspace, or several with --shared \
        (docs/scale-out.md).\n\n\
        With --backend URL the jobs run on a remote OpenAI-compatible server instead \
        (llama-server, vLLM, ollama): no model is loaded here, and the workspace, `wrk`, \
        `flw` and agents work as with a local model.",
    after_help = format!(
        "{AFTER_HELP}\n\n{}\n{}",
        exit::help(&[exit::OK, exit::FAILED, exit::USAGE, exit::NOT_READY, exit::NO_DAEMON]),
        daemon::config::env_help()
    ),
    override_usage = "nrvnad [OPTIONS] MODEL WORKSPACE [WORKERS]\n       \
                      nrvnad [OPTIONS] --backend URL WORKSPACE [WORKERS]",
    // `-w -1` is an out-of-range number (named with the range), not a flag.
    allow_negative_numbers = true
)]
struct Args {
    #[command(flatten)]
    version: VersionFlag,
    /// GGUF model file, or part of a file name in NRVNA_MODELS_DIR (with --backend there
    /// is none: the arguments are WORKSPACE [WORKERS])
    model: String,
    /// Workspace directory (created if missing)
    #[arg(required_unless_present = "backend")]
    workspace: Option<PathBuf>,
    /// Jobs decoded together, 1-64 (same as -w)
    #[arg(value_name = "WORKERS", value_parser = clap::value_parser!(u16).range(1..=64))]
    workers_pos: Option<u16>,
    /// Jobs decoded together, 1-64 [default: NRVNA_WORKERS or 4]
    #[arg(short = 'w', long, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: Option<u16>,
    /// Dedicated embedding model (GGUF file, or part of a file name in NRVNA_MODELS_DIR)
    /// serving every `wrk --embed` job, pooled as its metadata says; e.g. the
    /// all-MiniLM-L6-v2.f16.gguf scripts/setup builds [default: NRVNA_EMBED_MODEL, else
    /// the chat model, mean-pooled]
    #[arg(long, value_name = "FILE")]
    embed_model: Option<String>,
    /// Multimodal projector for vision models. Refused for now: vision is not supported
    /// yet
    #[arg(long, value_name = "FILE")]
    mmproj: Option<PathBuf>,
    /// Work until no job is queued or running, then exit (1 if any job failed)
    #[arg(long)]
    drain: bool,
    /// Seconds running jobs may finish after SIGINT/SIGTERM before being requeued
    #[arg(long, default_value_t = 15, value_name = "SECS", value_parser = clap::value_parser!(u32).range(0..=86_400))]
    grace: u32,
    /// Agent jobs run at once (more wait their turn)
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    agent_jobs: u16,
    /// Serve the OpenAI-compatible HTTP API on ADDR: HOST:PORT, or a PORT on 127.0.0.1,
    /// or nothing for 127.0.0.1:8480. Every request becomes a job tagged `http`
    /// (docs/http.md) [default: NRVNA_HTTP, else off]
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "", help_heading = "HTTP API")]
    http: Option<String>,
    /// Key every HTTP request must send as `Authorization: Bearer KEY`; required when
    /// --http is not on loopback [default: NRVNA_API_KEY]
    #[arg(long, value_name = "KEY", help_heading = "HTTP API")]
    api_key: Option<String>,
    /// Largest HTTP request body, in bytes (larger: 413) [default: NRVNA_HTTP_MAX_BODY,
    /// else 8 MiB]
    #[arg(long, value_name = "BYTES", help_heading = "HTTP API")]
    http_max_body: Option<usize>,
    /// Answer HTTP requests with 429 and Retry-After while more than N jobs are queued
    /// [default: NRVNA_MAX_QUEUE, else no limit]
    #[arg(long, value_name = "N", help_heading = "HTTP API")]
    max_queue: Option<usize>,
    /// Close an HTTP connection that has not sent a request's whole header within SECS
    /// (slow clients must not hold connections open) [default: 30]
    #[arg(long, value_name = "SECS", help_heading = "HTTP API", value_parser = clap::value_parser!(u64).range(1..=3600))]
    http_header_timeout: Option<u64>,
    /// Run the jobs on a remote OpenAI-compatible server instead of a local model: URL is
    /// its base, such as http://host:8080/v1 (llama-server, vLLM, ollama). It must answer
    /// GET URL/models at start-up. WORKERS bounds the requests in flight; failures it may
    /// get over (no connection, 5xx, 429) are retried NRVNA_BACKEND_RETRIES times with
    /// backoff, then the job fails naming the URL, status and body. Plain http only
    #[arg(long, value_name = "URL", help_heading = "Remote backend")]
    backend: Option<String>,
    /// The remote model, one that GET URL/models lists [default: the only one it lists]
    #[arg(
        long,
        value_name = "NAME",
        help_heading = "Remote backend",
        requires = "backend"
    )]
    backend_model: Option<String>,
    /// Key sent to the --backend server as `Authorization: Bearer KEY`. Not --api-key,
    /// which is the key clients of this daemon's own --http API must send
    /// [default: NRVNA_BACKEND_API_KEY]
    #[arg(
        long,
        value_name = "KEY",
        help_heading = "Remote backend",
        requires = "backend"
    )]
    backend_api_key: Option<String>,
    /// What every agent job (`wrk WS --agent X.wasm`) may use; nothing is granted unless
    /// given here
    #[command(flatten, next_help_heading = "Agent job grants and limits")]
    grants: GrantArgs,
    /// Several daemons on one workspace, and network file systems (docs/scale-out.md)
    #[command(flatten, next_help_heading = "Scale-out")]
    scale: daemon::scale::ScaleArgs,
}

#[derive(Parser, Debug)]
#[command(
    name = "nrvnad status",
    about = "Is a daemon running on this workspace?"
)]
struct StatusArgs {
    /// Workspace directory
    workspace: PathBuf,
    /// One JSON object: {"running","ready","pid","model","workers","started_at","nodes"}
    #[arg(long)]
    json: bool,
}

#[derive(Parser, Debug)]
#[command(
    name = "nrvnad stop",
    allow_negative_numbers = true,
    about = "Stop the workspace's daemon: SIGTERM, then a second SIGTERM after --timeout, then SIGKILL"
)]
struct StopArgs {
    /// Workspace directory
    workspace: PathBuf,
    /// How long to wait for a graceful stop: seconds, or a number with ms, s, m or h
    #[arg(long, default_value = "20s", value_name = "DURATION", value_parser = parse_duration)]
    timeout: Duration,
}

pub fn main() -> ExitCode {
    init_logging("info");
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let sub = argv.get(1).and_then(|a| a.to_str()).unwrap_or("");
    let is_file = argv
        .get(1)
        .is_some_and(|a| std::path::Path::new(a).exists());
    let result = match sub {
        // Like the predecessor: no arguments prints help and succeeds; so does `help`.
        "" | "help" if !is_file => {
            let _ = <Args as clap::CommandFactory>::command().print_long_help();
            return ExitCode::SUCCESS;
        }
        "status" if !is_file => status(parse_from(argv[1..].iter().cloned(), exit::USAGE)),
        "stop" if !is_file => stop(parse_from(argv[1..].iter().cloned(), exit::USAGE)),
        _ => serve(parse_from(argv, exit::USAGE)),
    };
    result.unwrap_or_else(|e| exit::report("nrvnad", &e))
}

fn serve(args: Args) -> Result<ExitCode> {
    crate::thread_wait::reexec_with_short_spin();
    // With --backend there is no MODEL: the positionals are WORKSPACE [WORKERS].
    let (workspace, workers_pos) = match (&args.backend, args.workspace) {
        (Some(_), workspace) => {
            if args.workers_pos.is_some() {
                let reason = "with --backend the arguments are WORKSPACE [WORKERS] (there is \
                              no MODEL): one too many given";
                return Err(exit::UsageError(reason.into()).into());
            }
            let workers = workspace
                .map(|w| parse_workers(&w.to_string_lossy()))
                .transpose()?;
            (PathBuf::from(&args.model), workers)
        }
        (None, Some(workspace)) => (workspace, args.workers_pos),
        (None, None) => {
            let reason = "missing WORKSPACE: nrvnad MODEL WORKSPACE [WORKERS]";
            return Err(exit::UsageError(reason.into()).into());
        }
    };
    let workers = match (args.workers, workers_pos) {
        (Some(flag), Some(pos)) => {
            let reason =
                format!("WORKERS {pos} and -w {flag} both given: give the worker count once");
            return Err(exit::UsageError(reason).into());
        }
        (Some(w), None) | (None, Some(w)) => Some(usize::from(w)),
        (None, None) => None,
    };
    if args.mmproj.is_some() {
        bail!(
            "--mmproj: vision is not supported yet, so a projector would never be used; \
             start nrvnad without --mmproj"
        );
    }
    // Checks that need nothing loaded come first, so bad input fails fast.
    let mut config = match &args.backend {
        Some(url) => {
            if args.embed_model.is_some() {
                let reason = "--embed-model loads a local model; with --backend the remote \
                              model embeds (start a server with an embedding model and point \
                              a daemon of its own at it)";
                return Err(exit::UsageError(reason.into()).into());
            }
            DaemonConfig::remote(
                workspace,
                url,
                args.backend_model.as_deref(),
                args.backend_api_key,
                workers,
            )?
        }
        None => DaemonConfig::new(workspace, &args.model, workers, args.embed_model.as_deref())?,
    };
    config.drain = args.drain;
    config.scale = args.scale.to_config()?;
    config.grace = Duration::from_secs(args.grace.into());
    config.agents = Some(AgentSettings {
        grants: args.grants.to_grants()?,
        max_running: args.agent_jobs as usize,
        cache_dir: default_cache_dir(),
    });
    config.http = daemon::config::http_config(
        args.http.as_deref(),
        args.api_key,
        args.http_max_body,
        args.max_queue,
        args.http_header_timeout.map(Duration::from_secs),
    )?;
    let signals = SignalCounter::install()?;
    // The server listens before the model loads, so /health can say `loading`.
    let http = match config.http.clone() {
        Some(http) => {
            let ws = Workspace::create(&config.workspace)?;
            let metrics = Metrics::new();
            let server = HttpServer::start(http, ws, metrics.clone(), schema_to_grammar())?;
            eprintln!(
                "nrvnad: HTTP API on http://{} (OpenAI-compatible, docs/http.md)",
                server.local_addr()
            );
            Some((server, metrics))
        }
        None => None,
    };
    let mut daemon = daemon::start(config, Banner::Nrvnad)?;
    if let Some((server, metrics)) = http {
        daemon = daemon.with_http(server, metrics);
    }
    match daemon.serve(&signals)? {
        Ended::Clean => {
            eprintln!("nrvnad: stopped");
            Ok(ExitCode::SUCCESS)
        }
        Ended::DrainedWithFailures(n) => {
            eprintln!("nrvnad: drained; {n} job(s) failed");
            Ok(ExitCode::from(exit::FAILED))
        }
    }
}

/// WORKERS given after WORKSPACE with --backend (clap checks it in the other form).
fn parse_workers(text: &str) -> Result<u16> {
    match text.parse::<u16>() {
        Ok(n) if (1..=64).contains(&n) => Ok(n),
        _ => Err(exit::UsageError(format!(
            "invalid value '{text}' for '[WORKERS]': {text} is not in 1..=64"
        ))
        .into()),
    }
}

/// The engine's JSON Schema → grammar converter, for `response_format`.
fn schema_to_grammar() -> nrvna_http::SchemaToGrammar {
    std::sync::Arc::new(|schema: &str| {
        nrvna_engine::schema_to_grammar(schema).map_err(|e| e.to_string())
    })
}

fn status(args: StatusArgs) -> Result<ExitCode> {
    let st = probe(&args.workspace)?;
    let (running, ready, pid, info) = match &st {
        DaemonStatus::NotRunning => (false, false, None, None),
        DaemonStatus::Starting { pid } => (true, false, *pid, None),
        DaemonStatus::Ready { pid, info } => (true, true, *pid, info.clone()),
        DaemonStatus::Shared { .. } => (true, st.is_ready(), None, None),
    };
    if args.json {
        let v = serde_json::json!({
            "running": running,
            "ready": ready,
            "pid": pid,
            "model": info.as_ref().map(|i| i.model.clone()),
            "workers": info.as_ref().map(|i| i.workers),
            "started_at": info.as_ref().map(|i| i.started_at.clone()),
            "nodes": shared_nodes_json(&st),
        });
        println!("{v}");
    } else {
        match &st {
            DaemonStatus::NotRunning => println!("not running"),
            DaemonStatus::Starting { .. } => println!("starting (pid {})", show(pid)),
            DaemonStatus::Ready { .. } => match &info {
                Some(i) => println!(
                    "ready (pid {}, model {}, workers {})",
                    show(pid),
                    i.model,
                    i.workers
                ),
                None => println!("ready (pid {})", show(pid)),
            },
            DaemonStatus::Shared { nodes } => {
                let ready = nodes.iter().filter(|n| n.info.is_some()).count();
                println!(
                    "{} (shared: {} node(s), {ready} ready)",
                    if ready > 0 { "ready" } else { "starting" },
                    nodes.len()
                );
                for n in nodes {
                    match &n.info {
                        Some(i) => println!(
                            "  node {}  ready (pid {} on {}, model {}, workers {})",
                            n.node, n.pid, n.host, i.model, i.workers
                        ),
                        None => {
                            println!("  node {}  starting (pid {} on {})", n.node, n.pid, n.host)
                        }
                    }
                }
            }
        }
    }
    Ok(ExitCode::from(exit::of_daemon(&st)))
}

/// `nrvnad status --json`'s `nodes`: each shared daemon, or null for a lone one.
fn shared_nodes_json(st: &DaemonStatus) -> serde_json::Value {
    let DaemonStatus::Shared { nodes } = st else {
        return serde_json::Value::Null;
    };
    nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "node": n.node,
                "pid": n.pid,
                "host": n.host,
                "ready": n.info.is_some(),
                "model": n.info.as_ref().map(|i| i.model.clone()),
                "workers": n.info.as_ref().map(|i| i.workers),
            })
        })
        .collect()
}

fn show(pid: Option<u32>) -> String {
    pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
}

fn stop(args: StopArgs) -> Result<ExitCode> {
    use rustix::process::{Pid, Signal, kill_process};
    let pid = match probe(&args.workspace)? {
        DaemonStatus::NotRunning => {
            println!("not running");
            return Ok(ExitCode::SUCCESS);
        }
        DaemonStatus::Starting { pid } | DaemonStatus::Ready { pid, .. } => pid,
        DaemonStatus::Shared { nodes } => bail!(
            "{} is served by {} shared daemon(s) (nodes {}): stop each one where it runs \
             (SIGTERM to its pid; `nrvnad status` lists them)",
            args.workspace.display(),
            nodes.len(),
            nodes
                .iter()
                .map(|n| format!("{} pid {} on {}", n.node, n.pid, n.host))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let Some(pid) = pid.and_then(|p| Pid::from_raw(p as i32)) else {
        bail!("the daemon's lock is held but its pid is unreadable");
    };
    // Never signal a process that is not an nrvnad (pids are reused).
    let comm =
        std::fs::read_to_string(format!("/proc/{}/comm", pid.as_raw_nonzero())).unwrap_or_default();
    if !comm.trim().starts_with("nrvnad") {
        bail!(
            "pid {} holds the lock but is {:?}, not nrvnad; not signalling it",
            pid.as_raw_nonzero(),
            comm.trim()
        );
    }
    let stopped = |within: Duration| -> Result<bool> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            // The lock goes before the process does: wait for both.
            if probe(&args.workspace)? == DaemonStatus::NotRunning && process_gone(pid) {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(false)
    };
    let _ = kill_process(pid, Signal::TERM);
    if stopped(args.timeout)? {
        println!("stopped");
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "nrvnad stop: still running after {}; requeueing its jobs",
        show_time(args.timeout)
    );
    let _ = kill_process(pid, Signal::TERM);
    if stopped(Duration::from_secs(3))? {
        println!("stopped");
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("nrvnad stop: sending SIGKILL");
    let _ = kill_process(pid, Signal::KILL);
    if stopped(Duration::from_secs(3))? {
        println!("killed");
        return Ok(ExitCode::SUCCESS);
    }
    bail!("pid {} did not stop", pid.as_raw_nonzero())
}

/// Whether `pid` has exited: no `/proc` entry, or only a zombie left for its parent.
fn process_gone(pid: rustix::process::Pid) -> bool {
    let stat = match std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())) {
        Ok(stat) => stat,
        Err(_) => return true,
    };
    // The state follows the parenthesised command name, which may itself hold ") ".
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    matches!(state, Some('Z' | 'X'))
}
