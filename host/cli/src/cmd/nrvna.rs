//! `nrvna`: the umbrella command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use nrvna_queue::Workspace;
use nrvna_queue::lifecycle::{DaemonStatus, probe};

use crate::cli::{init_logging, parse_args, report};

const AFTER_HELP: &str = "\
The everyday programs are separate binaries with the predecessor's contract:
  nrvnad MODEL WS [WORKERS]   the daemon (nrvnad --help)
  wrk WS PROMPT...            submit a job, print its id (wrk --help)
  flw WS [ID]                 wait for and print a result (flw --help)";

#[derive(Parser, Debug)]
#[command(
    name = "nrvna",
    version,
    about = "nrvna: durable, filesystem-queued local LLM inference",
    after_help = AFTER_HELP
)]
struct Args {
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
    /// Print the version
    Version,
}

pub fn main() -> ExitCode {
    init_logging("warn");
    let args: Args = parse_args(2);
    match run(args) {
        Ok(code) => code,
        Err(e) => report("nrvna", &e, 1),
    }
}

fn run(args: Args) -> Result<ExitCode> {
    match args.command {
        Command::Version => {
            println!("nrvna {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { workspace, json } => {
            let ws = Workspace::open(&workspace)?;
            let counts = ws.counts()?;
            let daemon = probe(ws.root())?;
            let (name, pid, workers) = match &daemon {
                DaemonStatus::NotRunning => ("not running", None, None),
                DaemonStatus::Starting { pid } => ("starting", *pid, None),
                DaemonStatus::Ready { pid, info } => {
                    ("ready", *pid, info.as_ref().map(|i| i.workers))
                }
            };
            if json {
                let v = serde_json::json!({
                    "daemon": name, "pid": pid, "workers": workers,
                    "queued": counts.queued, "running": counts.running,
                    "done": counts.done, "failed": counts.failed,
                });
                println!("{v}");
            } else {
                let pid = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
                println!("daemon   {name}{pid}");
                println!(
                    "jobs     queued {}  running {}  done {}  failed {}",
                    counts.queued, counts.running, counts.done, counts.failed
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
