//! `nrvna exec COMPONENT.wasm`: runs an agent component in the sandbox, its jobs going
//! to a workspace's daemon — or, with `--model` and no daemon, to one started in this
//! process, so a single command runs an agent on a fresh machine.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nrvna_queue::lifecycle::{DaemonStatus, probe};
use nrvna_sandbox::journal::{self, JournalError, JournalSpec};
use nrvna_sandbox::{LogLevel, LogSink, RunContext, SandboxError};

use crate::daemon::{DaemonConfig, InProcessDaemon, agent_runtime};
use crate::exit;
use crate::grant_args::{GrantArgs, default_cache_dir};

const AFTER_HELP: &str = "\
The component's result goes to stdout; its log (the log interface, its stdout and
stderr) and nrvna's messages go to stderr. Arguments after `--` are the component's.

Examples:
  nrvna exec refine.wasm --ws ./ws -- --rounds 2 \"Write a haiku\"
      jobs go to the daemon serving ./ws (start one with: nrvnad MODEL ./ws)
  nrvna exec refine.wasm --model smollm2 -- \"Write a haiku\"
      no daemon needed: loads the model in this process, on a temporary workspace
  nrvna exec refine.wasm -- --help
      the component's own usage: needs no --ws or --model (it may submit no job)
  nrvna exec batch.wasm --ws ./ws --dir ./data:/data:ro -- --file /data/q.txt
  nrvna exec route.wasm --ws ./ws --route code=./ws-code --agent refine=./refine.wasm
  nrvna exec agent.wasm --ws ./ws --timeout 30s --memory 64M --max-jobs 20

Grants (nothing is granted unless given; repeatable):
  --dir HOST[:GUEST][:ro]  a host directory, seen at GUEST (default: HOST as written),
                           read-write unless :ro; `..` and symlinks cannot leave it
  --env K=V                an environment variable (the host's are never passed)
  --route NAME=WS          another workspace the component may submit to by NAME
  --agent NAME=PATH        a component it may call with agents.call(NAME); `self` is
                           always allowed, with the same grants

{LIMITS}SIZE is a number with K, M or G; DURATION is seconds or a number with ms, s, m, h.
Jobs, in-flight, prompt, depth, kv and image-byte limits are errors the component
sees (quota or invalid) and can handle, as is a write past --max-write-bytes (an I/O
error); memory, CPU, time, host-call bytes and handles stop the run, also when a
nested agent (agents.call) reaches them.
A run with --ws is journaled: every host call it makes is recorded in
WS/.runs/RUN/journal.jsonl (RUN is printed to stderr at the start). A run that was
killed resumes with --resume RUN: no job is submitted twice, no finished wait is waited
again; nrvna trace WS RUN shows what it did.
Jobs the run leaves queued or running are cancelled when it ends, also when SIGINT
(Ctrl-C) or SIGTERM stops it (--keep-jobs keeps them). Compiled components are cached
in --cache-dir (default ~/.cache/nrvna/wasm).

On exit 0 the component's result is on stdout; on exit 1 its error is on stderr.";

/// `nrvna exec --help`'s closing text, with the limits table made from the sandbox's own
/// defaults.
pub fn after_help() -> String {
    let help = AFTER_HELP.replace("{LIMITS}", &crate::grant_args::limits_help());
    let codes = [
        exit::OK,
        exit::FAILED,
        exit::USAGE,
        exit::LIMIT,
        exit::CRASH,
        exit::INTERRUPTED,
        exit::TERMINATED,
    ];
    format!("{help}\n\n{}", exit::help(&codes))
}

#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// The component (.wasm) to run
    #[arg(value_name = "COMPONENT.wasm")]
    component: PathBuf,
    /// Workspace the component's jobs go to (and its kv storage lives in)
    #[arg(long, value_name = "WS")]
    ws: Option<PathBuf>,
    /// Run a daemon for the workspace in this process with this model, if none is running
    /// (a GGUF path, or part of a file name in NRVNA_MODELS_DIR)
    #[arg(long, value_name = "MODEL")]
    model: Option<String>,
    /// Jobs decoded together by the in-process daemon (--model), 1-64 [default:
    /// NRVNA_WORKERS or 4]
    #[arg(short = 'w', long, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: Option<u16>,
    #[command(flatten)]
    grants: GrantArgs,
    /// Leave the jobs the run did not see end queued when it ends
    #[arg(long)]
    keep_jobs: bool,
    /// Resume run RUN (the id an earlier `nrvna exec --ws` printed): the component runs
    /// again from the start, answered from the run's journal until it catches up, then
    /// goes on live. Needs --ws and the same component; the recorded args are used when
    /// none are given
    #[arg(
        long,
        value_name = "RUN",
        requires = "ws",
        conflicts_with = "no_journal"
    )]
    resume: Option<String>,
    /// Do not journal the run (it cannot be resumed or traced): for runs that make more
    /// host calls than a journal should hold
    #[arg(long)]
    no_journal: bool,
    /// Storage namespace (<ws>/.agents/NAME/kv) [default: the component's file stem]
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Lowest level of the component's log shown on stderr: debug, info, warn, error
    #[arg(long, value_name = "LEVEL", default_value = "info", value_parser = parse_level)]
    log_level: LogLevel,
    /// Where compiled components are cached
    #[arg(long, value_name = "DIR", conflicts_with = "no_cache")]
    cache_dir: Option<PathBuf>,
    /// Compile the component every time
    #[arg(long)]
    no_cache: bool,
    /// The component's arguments
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

fn parse_level(s: &str) -> Result<LogLevel, String> {
    match s {
        "debug" => Ok(LogLevel::Debug),
        "info" => Ok(LogLevel::Info),
        "warn" => Ok(LogLevel::Warn),
        "error" => Ok(LogLevel::Error),
        _ => Err("expected debug, info, warn or error".into()),
    }
}

pub fn run(args: ExecArgs) -> Result<ExitCode> {
    if args.model.is_some() {
        // Before anything is done: the in-process daemon runs the engine.
        crate::thread_wait::reexec_with_short_spin();
    }
    let mut grants = args.grants.to_grants()?;
    if only_asks_for_help(&args) {
        // It runs on a temporary workspace no daemon serves: a job would wait forever,
        // so a component that submits one gets a quota error instead.
        grants.limits.max_jobs = 0;
    }
    // Load first: a bad component fails before any model is loaded.
    let cache_dir = if args.no_cache {
        None
    } else {
        args.cache_dir.clone().or_else(default_cache_dir)
    };
    let runtime = agent_runtime(cache_dir)?;
    // Compiling counts against the run's wall clock.
    let agent = match runtime.load_within(&args.component, &grants.limits) {
        Ok((agent, took)) => {
            grants.limits.wall = grants.limits.wall.saturating_sub(took);
            agent
        }
        Err(e @ SandboxError::Limit(_)) => return Ok(report(Err(e))),
        Err(e) => return Err(e.into()),
    };
    let agent_name = args.name.clone().unwrap_or_else(|| agent.name().to_owned());

    let (workspace, _temp, daemon) = workspace_and_daemon(&args)?;
    // A run on a workspace a person keeps is journaled, and can be resumed.
    let (journal, run_args) = match (&args.ws, &args.resume) {
        (Some(ws), Some(run)) => resume_run(ws, run, &agent, &args.args)?,
        (Some(_), None) if args.no_journal => (None, args.args.clone()),
        (Some(ws), None) => {
            let run = journal::new_run_id();
            let path = journal::run_journal_path(ws, &run);
            eprintln!(
                "nrvna exec: run {run} (journal {}; after a crash: nrvna exec {} --ws {} \
                 --resume {run})",
                path.display(),
                args.component.display(),
                ws.display()
            );
            (Some(JournalSpec { path, run_id: run }), args.args.clone())
        }
        (None, _) => (None, args.args.clone()),
    };
    let ctx = RunContext {
        workspace,
        agent_name,
        parent_job: None,
        grants,
        log: LogSink::Stderr(args.log_level),
        keep_jobs: args.keep_jobs,
        journal,
    };
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let ended = tokio.block_on(async {
        // Listening before the run starts, so no signal finds the default handler (which
        // would end the process with the run's jobs still queued).
        let mut stop_signals = StopSignals::listen()?;
        let run = runtime.run(&agent, run_args, ctx);
        // A signal drops the run's future, which ends the run as a limit does: its
        // unfinished jobs are cancelled unless --keep-jobs.
        anyhow::Ok(tokio::select! {
            result = run => RunEnded::Finished(result),
            signal = stop_signals.next() => RunEnded::Signalled(signal),
        })
    })?;
    // A host thread still blocked for the run (a guest's open() of a FIFO in a granted
    // directory waits for a writer forever) must not keep the process alive: what the
    // run started and did not see end is given a moment, then left behind.
    tokio.shutdown_timeout(Duration::from_secs(1));
    if let Some(daemon) = daemon {
        daemon.stop();
    }
    Ok(match ended {
        RunEnded::Finished(result) => report(result),
        RunEnded::Signalled(signal) => {
            let kept = if args.keep_jobs {
                "its jobs are kept (--keep-jobs)"
            } else {
                "its unfinished jobs are cancelled"
            };
            eprintln!("nrvna exec: stopped by {}; {kept}", signal.name());
            ExitCode::from(signal.exit_code())
        }
    })
}

/// The journal of run `run` under `ws` and the args to run it with: the recorded ones,
/// or `given` if they are the same (or none were recorded).
fn resume_run(
    ws: &Path,
    run: &str,
    agent: &nrvna_sandbox::Agent,
    given: &[String],
) -> Result<(Option<JournalSpec>, Vec<String>)> {
    journal::check_run_id(run).map_err(|e| exit::UsageError(format!("--resume: {e}")))?;
    let path = journal::run_journal_path(ws, run);
    if !path.is_file() {
        bail!(exit::UsageError(format!(
            "--resume {run}: no journal at {} (nrvna exec --ws printed the run ids it made)",
            path.display()
        )));
    }
    let recorded = journal::read_journal(&path, u64::MAX)?;
    if recorded.header.component_sha256 != agent.digest() {
        return Err(JournalError::Component {
            path,
            recorded: recorded.header.component_sha256,
            now: agent.digest().to_owned(),
        }
        .into());
    }
    let args = if given.is_empty() || given == recorded.header.args {
        recorded.header.args
    } else {
        bail!(exit::UsageError(format!(
            "--resume {run}: the run was recorded with args {:?}, not {given:?} (give none \
             to use the recorded ones)",
            recorded.header.args
        )));
    };
    eprintln!(
        "nrvna exec: resuming run {run}: {} recorded call(s) to replay",
        recorded.entries.len()
    );
    Ok((
        Some(JournalSpec {
            path,
            run_id: run.to_owned(),
        }),
        args,
    ))
}

/// How the run ended: by itself (returned, or stopped by a limit or a crash), or by a signal.
enum RunEnded {
    Finished(Result<nrvna_sandbox::RunOutcome, SandboxError>),
    Signalled(StopSignal),
}

#[derive(Debug, Clone, Copy)]
enum StopSignal {
    Interrupt,
    Terminate,
}

impl StopSignal {
    fn name(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
        }
    }

    fn exit_code(self) -> u8 {
        match self {
            StopSignal::Interrupt => exit::INTERRUPTED,
            StopSignal::Terminate => exit::TERMINATED,
        }
    }
}

/// SIGINT and SIGTERM, caught for the duration of a run.
struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn listen() -> Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind| signal(kind).context("cannot install signal handlers");
        Ok(StopSignals {
            interrupt: listen(SignalKind::interrupt())?,
            terminate: listen(SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) -> StopSignal {
        tokio::select! {
            _ = self.interrupt.recv() => StopSignal::Interrupt,
            _ = self.terminate.recv() => StopSignal::Terminate,
        }
    }
}

/// Prints the result and picks the exit code.
fn report(result: Result<nrvna_sandbox::RunOutcome, SandboxError>) -> ExitCode {
    match result {
        Ok(outcome) => match outcome.output {
            Ok(text) => {
                if text.ends_with('\n') {
                    print!("{text}");
                } else {
                    println!("{text}");
                }
                ExitCode::SUCCESS
            }
            Err(text) => {
                eprintln!("nrvna exec: the component returned an error: {text}");
                ExitCode::from(exit::FAILED)
            }
        },
        Err(e @ SandboxError::Limit(_)) => {
            eprintln!("nrvna exec: {e}");
            ExitCode::from(exit::LIMIT)
        }
        Err(e @ SandboxError::Trap(_)) => {
            eprintln!("nrvna exec: {e}");
            ExitCode::from(exit::CRASH)
        }
        Err(e) => {
            eprintln!("nrvna exec: error: {e}");
            ExitCode::from(exit::FAILED)
        }
    }
}

/// The workspace to run against, a temporary directory to remove at exit (if the
/// workspace is one), and the in-process daemon (if this command started one).
fn workspace_and_daemon(
    args: &ExecArgs,
) -> Result<(PathBuf, Option<tempfile::TempDir>, Option<InProcessDaemon>)> {
    match (&args.ws, &args.model) {
        (None, None) if only_asks_for_help(args) => {
            let (ws, temp) = temporary_workspace()?;
            Ok((ws, Some(temp), None))
        }
        (None, None) => Err(exit::UsageError(
            "give --ws WS (a workspace a daemon serves) or --model MODEL (runs a daemon in \
             this process); see nrvna exec --help"
                .into(),
        )
        .into()),
        (Some(ws), model) => {
            let status = probe(ws).unwrap_or(DaemonStatus::NotRunning);
            match (status, model) {
                (DaemonStatus::NotRunning, Some(model)) => {
                    let daemon = in_process_daemon(ws, model, args.workers.map(usize::from))?;
                    Ok((ws.clone(), None, Some(daemon)))
                }
                (DaemonStatus::NotRunning, None) => {
                    eprintln!(
                        "nrvna exec: warning: no daemon is running on {}: the component's jobs \
                         wait in input/ready until one starts (nrvnad MODEL {}), or give --model",
                        ws.display(),
                        ws.display()
                    );
                    Ok((ws.clone(), None, None))
                }
                (_, Some(_)) => {
                    eprintln!(
                        "nrvna exec: a daemon already serves {}; using it (--model ignored)",
                        ws.display()
                    );
                    Ok((ws.clone(), None, None))
                }
                (_, None) => Ok((ws.clone(), None, None)),
            }
        }
        (None, Some(model)) => {
            let (ws, temp) = temporary_workspace()?;
            eprintln!(
                "nrvna exec: using a temporary workspace, removed at exit (--ws keeps jobs and kv)"
            );
            let daemon = in_process_daemon(&ws, model, args.workers.map(usize::from))?;
            Ok((ws, Some(temp), Some(daemon)))
        }
    }
}

/// A workspace path inside a new temporary directory, removed when the directory is.
fn temporary_workspace() -> Result<(PathBuf, tempfile::TempDir)> {
    let temp = tempfile::Builder::new()
        .prefix("nrvna-exec-")
        .tempdir()
        .context("cannot create a temporary workspace")?;
    Ok((temp.path().join("ws"), temp))
}

/// `nrvna exec X.wasm -- --help` with no `--ws` or `--model`: printing its usage needs
/// no workspace a daemon serves.
fn only_asks_for_help(args: &ExecArgs) -> bool {
    args.ws.is_none()
        && args.model.is_none()
        && args.args.iter().any(|arg| arg == "--help" || arg == "-h")
}

/// Starts a daemon for `ws` in this process, as `nrvnad MODEL WS WORKERS` would (the same
/// `NRVNA_*` settings), except that it runs no agent jobs: the component runs here.
pub fn in_process_daemon(
    ws: &Path,
    model: &str,
    workers: Option<usize>,
) -> Result<InProcessDaemon> {
    let mut config = DaemonConfig::new(ws.to_owned(), model, workers, None)?;
    config.grace = Duration::from_secs(5);
    InProcessDaemon::start(config, "nrvna exec")
}
