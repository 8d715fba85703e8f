//! `nrvna`: the umbrella command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use nrvna_queue::lifecycle::{DaemonStatus, probe};
use nrvna_queue::{CancelOutcome, JobId, Workspace};

use crate::cli::{VersionFlag, init_logging, parse_args};
use crate::exit;
use crate::status::WorkspaceStatus;

const AFTER_HELP: &str = "\
The everyday programs are separate binaries with the predecessor's contract:
  nrvnad MODEL WS [WORKERS]   the daemon (nrvnad --help)
  wrk WS PROMPT...            submit a job, print its id (wrk --help)
  flw WS [ID]                 wait for and print a result (flw --help)
  nrvna ps WS                 the running and queued jobs (nrvna ps --help)

A human in the loop: wrk WS --hold queues a job that waits for nrvna approve (or nrvna
deny); nrvna verify checks a job is what was submitted and approved.

Agents are WebAssembly components run in a sandbox: nrvna exec --help.

`nrvna status` exits 0 when the daemon is ready, 3 while it starts, 5 when none runs.";

#[derive(Parser, Debug)]
#[command(
    name = "nrvna",
    version,
    disable_version_flag = true,
    about = "nrvna: durable, filesystem-queued local LLM inference",
    after_help = format!("{AFTER_HELP}\n\n{}", exit::help(&exit::ALL))
)]
struct Args {
    #[command(flatten)]
    version: VersionFlag,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The daemon's state and the job counts of a workspace
    Status {
        workspace: PathBuf,
        /// One JSON object
        #[arg(long)]
        json: bool,
    },
    /// The running and queued jobs: id, state, age, tokens, tokens/s, prompt
    #[command(after_help = super::ps::AFTER_HELP)]
    Ps(super::ps::PsArgs),
    /// Run an agent component (.wasm) in the sandbox; its jobs go to a workspace
    #[command(after_help = super::exec::after_help())]
    Exec(Box<super::exec::ExecArgs>),
    /// Cancel a job: a queued one at once, a running one at its daemon's next step
    #[command(after_help = format!(
        "{CANCEL_HELP}\n\n{}",
        exit::help(&[exit::OK, exit::FAILED, exit::USAGE, exit::NOT_FOUND, exit::ALREADY_ENDED])
    ))]
    Cancel {
        workspace: PathBuf,
        /// The job id (as wrk printed it)
        id: String,
    },
    /// Approve a held job (wrk --hold), or every held job with a tag: it is queued to run
    #[command(after_help = format!(
        "{}\n\n{}",
        super::approve::APPROVE_HELP,
        exit::help(&super::approve::DECIDE_CODES)
    ))]
    Approve {
        #[command(flatten)]
        target: super::approve::DecideArgs,
        /// A note recorded with the approval (meta.json and audit.jsonl)
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
    },
    /// Deny a held job: it ends in failed/ with status denied and the reason
    #[command(after_help = format!(
        "{}\n\n{}",
        super::approve::DENY_HELP,
        exit::help(&super::approve::DECIDE_CODES)
    ))]
    Deny {
        #[command(flatten)]
        target: super::approve::DecideArgs,
        /// Why (recorded in error.txt, meta.json and audit.jsonl; shown by flw)
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Check that a job's spec is the one submitted (and approved): exit 0, or 1 naming
    /// what differs
    #[command(after_help = format!(
        "{}\n\n{}",
        super::approve::VERIFY_HELP,
        exit::help(&[exit::OK, exit::FAILED, exit::USAGE, exit::NOT_FOUND])
    ))]
    Verify {
        workspace: PathBuf,
        /// The job id
        #[arg(required_unless_present = "tag", conflicts_with = "tag")]
        id: Option<String>,
        /// Every job carrying this tag
        #[arg(long, value_name = "TAG")]
        tag: Option<String>,
        /// With an exec run id: the component file to compare with the one that
        /// recorded the run's journal
        #[arg(long, value_name = "FILE")]
        component: Option<PathBuf>,
        /// One JSON object per job: id, state, ok, checks
        #[arg(long)]
        json: bool,
    },
    /// What an agent run did, from its journal: host calls, jobs, nested agents, totals
    #[command(after_help = super::trace::AFTER_HELP)]
    Trace(super::trace::TraceArgs),
    /// Measure throughput, latency and overhead on this machine (prints a markdown table)
    #[command(after_help = BENCH_HELP)]
    Bench(super::bench::BenchArgs),
    /// Print the version
    Version,
}

const BENCH_HELP: &str = "\
Sections: engine (the raw llama.cpp ceiling and the daemon end to end for each N, with
their ratio), pickup (an idle daemon), queue (no model), and, asked for by name, http
(the HTTP API's overhead, first token and streaming throughput). The agent runtime's bench runs
its test fixtures, so it lives with the tests: cargo run --release -p nrvna-tests
--example bench-sandbox. Takes about 20 minutes on the default model on 2 cores (each N runs the raw loop and the
daemon twice, in turn; --repeat 1 halves it); docs/benchmarks.md keeps the results.

Examples:
  nrvna bench                          everything, N = 1,2,4,8,16
  nrvna bench --only engine --slots 1,8 --repeat 3
  nrvna bench --only queue --queue-jobs 20000
  nrvna bench --only http";

const CANCEL_HELP: &str = "\
A queued job is cancelled at once; for a running one the cancel is requested, and its
daemon stops it. Either way it ends in failed/ with status cancelled.";

pub fn main() -> ExitCode {
    init_logging("warn");
    let args: Args = parse_args(exit::USAGE);
    match run(args) {
        Ok(code) => code,
        Err(e) => exit::report("nrvna", &e),
    }
}

fn run(args: Args) -> Result<ExitCode> {
    match args.command {
        Command::Exec(args) => super::exec::run(*args),
        Command::Cancel { workspace, id } => cancel(&workspace, &id),
        Command::Approve { target, note } => super::approve::decide(
            &target.workspace,
            target.id.as_deref(),
            target.tag.as_deref(),
            note.as_deref(),
            None,
        ),
        Command::Deny { target, reason } => super::approve::decide(
            &target.workspace,
            target.id.as_deref(),
            target.tag.as_deref(),
            None,
            Some(&reason),
        ),
        Command::Verify {
            workspace,
            id,
            tag,
            component,
            json,
        } => super::approve::verify(
            &workspace,
            id.as_deref(),
            tag.as_deref(),
            component.as_deref(),
            json,
        ),
        Command::Ps(args) => super::ps::run(&args),
        Command::Trace(args) => super::trace::run(&args),
        Command::Bench(args) => {
            // The raw loop runs the engine here: it waits as the daemon does.
            crate::thread_wait::reexec_with_short_spin();
            print!("{}", super::bench::run(args)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Version => {
            println!("nrvna {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { workspace, json } => {
            let ws = Workspace::open(&workspace)?;
            ws.recover_decisions()?;
            let status = WorkspaceStatus::read(&ws)?;
            if json {
                println!("{}", status.to_json()?);
            } else {
                let pid = status
                    .pid
                    .map(|p| format!(" (pid {p})"))
                    .unwrap_or_default();
                println!("daemon   {}{pid}", status.daemon);
                let counts = status.counts;
                println!(
                    "jobs     held {}  queued {}  running {}  done {}  failed {}",
                    counts.held, counts.queued, counts.running, counts.done, counts.failed
                );
            }
            Ok(ExitCode::from(exit::of_daemon(&status.probed)))
        }
    }
}

fn cancel(workspace: &std::path::Path, id: &str) -> Result<ExitCode> {
    let ws = Workspace::open(workspace)?;
    let id = JobId::parse(id)?;
    match ws.cancel(&id)? {
        CancelOutcome::Cancelled => {
            println!("cancelled {id} (it was queued)");
            Ok(ExitCode::SUCCESS)
        }
        CancelOutcome::Requested => {
            println!("cancel requested: {id} is running; its daemon stops it at the next step");
            if probe(ws.root())? == DaemonStatus::NotRunning {
                eprintln!(
                    "nrvna cancel: no daemon is running on {}; the next one to start acts on it",
                    ws.root().display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        CancelOutcome::AlreadyEnded(state) => {
            eprintln!("nrvna cancel: {id} has already ended ({})", state.name());
            Ok(ExitCode::from(exit::ALREADY_ENDED))
        }
        CancelOutcome::NotFound => {
            eprintln!("nrvna cancel: no job {id} in {}", ws.root().display());
            Ok(ExitCode::from(exit::NOT_FOUND))
        }
    }
}
