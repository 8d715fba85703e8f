//! `flw WS [ID]`: workspace status, or a job's result (waiting for it by default).

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use nrvna_queue::lifecycle::{DaemonStatus, probe};
use nrvna_queue::stream::{Followed, TextFollower};
use nrvna_queue::watch::{wait_terminal_with, wait_until};
use nrvna_queue::{ArtifactKind, JobId, JobOutcome, Meta, PROMPT_FILE, State, Workspace};
use nrvna_sandbox::parse_duration;

use crate::cli::{VersionFlag, init_logging, parse_args};
use crate::exit;
use crate::status::WorkspaceStatus;
use crate::waiting::{TokenRate, Waiting, counts_line};

const AFTER_HELP: &str = "\
With an ID, flw waits for the job to end and prints its result to stdout exactly as
generated (an embedding job prints embedding.json; on a terminal a final newline is
added). A failed job prints its error on stderr. Without an ID it shows counts and
recent jobs. A wait warns at once when no daemon serves the workspace; on a terminal
it shows a live status line on stderr (never in a pipe, never with --json).

Examples:
  flw ./ws                                  counts and the 5 most recent jobs
  result=$(flw ./ws \"$id\")                  wait, then capture the text
  wrk ./ws \"hi\" | xargs flw ./ws            submit and wait in one line
  flw ./ws \"$id\" --stream                  print the text as it is generated
  flw ./ws \"$id\" --no-wait || echo \"not yet\"
  flw ./ws --tag batch1 -W                  barrier: wait for every job tagged batch1
  flw ./ws --children \"$parent\" --json      the children of a job, as NDJSON

For a set (--tag, --children), 1 means at least one job of the set failed.";

#[derive(Parser, Debug)]
#[command(
    name = "flw",
    version,
    disable_version_flag = true,
    about = "Follow nrvna jobs: print a job's result, or a workspace's status",
    after_help = format!(
        "{AFTER_HELP}\n\n{}",
        exit::help(&[exit::OK, exit::FAILED, exit::USAGE, exit::NOT_READY, exit::NOT_FOUND])
    )
)]
struct Args {
    #[command(flatten)]
    version: VersionFlag,
    /// Workspace directory
    workspace: PathBuf,
    /// Job id (with -w and no id, read from stdin)
    id: Option<String>,
    /// Wait for the job to end (the default; kept for older scripts)
    #[arg(short = 'w', long)]
    wait: bool,
    /// Answer at once: exit 3 if the job is still queued or running
    #[arg(long, conflicts_with = "wait")]
    no_wait: bool,
    /// Give up waiting after this long (exit 3): seconds, or a number with ms, s, m or h
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Wait until nothing is queued or running (in the selected set, with --tag/--children)
    #[arg(short = 'W', long, conflicts_with = "id")]
    wait_idle: bool,
    /// JSON output: one object for a job or for the status; NDJSON for sets
    #[arg(long)]
    json: bool,
    /// Print the job's text as it is generated, then end as a wait does (its exit code).
    /// Text printed is the raw output, think blocks included
    #[arg(long, conflicts_with_all = ["no_wait", "json", "wait_idle"])]
    stream: bool,
    /// Select the jobs carrying this tag
    #[arg(long, value_name = "TAG", conflicts_with_all = ["id", "children"])]
    tag: Option<String>,
    /// Select the jobs whose parent is ID
    #[arg(long, value_name = "ID", conflicts_with = "id")]
    children: Option<String>,
}

pub fn main() -> ExitCode {
    init_logging("warn");
    let args: Args = parse_args(exit::USAGE);
    match run(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => exit::report("flw", &e),
    }
}

fn run(args: Args) -> Result<u8> {
    let ws = Workspace::open(&args.workspace)?;
    let timeout = args.timeout;
    if args.tag.is_some() || args.children.is_some() {
        return set(&ws, &args, timeout);
    }
    if args.wait_idle {
        return wait_idle(&ws, timeout, live_status(&args));
    }
    let id = match (&args.id, args.wait) {
        (Some(id), _) => Some(id.clone()),
        (None, true) => Some(id_from_stdin()?),
        (None, false) => None,
    };
    match id {
        Some(id) => {
            let id = JobId::parse(id.trim())?;
            result(&ws, &id, &args, timeout)
        }
        None => overview(&ws, args.json),
    }
}

/// Whether a wait shows its live status line: for a person at a terminal, not a program.
fn live_status(args: &Args) -> bool {
    !args.json && std::io::stderr().is_terminal()
}

fn id_from_stdin() -> Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(exit::UsageError(
            "-w without an ID reads the id from stdin, but stdin is a terminal".into(),
        )
        .into());
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("cannot read an id from stdin")?;
    Ok(line.trim().to_owned())
}

/// Waits until `id` ends (or `timeout` passes); returns its last state (`None`: no such
/// job).
fn wait_for_job(
    ws: &Workspace,
    id: &JobId,
    timeout: Option<Duration>,
    live: bool,
) -> Result<Option<State>> {
    let mut waiting = Waiting::new("flw", live);
    let last = wait_terminal_with(ws, id, timeout, |state| {
        waiting.not_yet(ws, format!("{id}  {}", state.name()))
    })?;
    waiting.end(None);
    Ok(last)
}

/// How often `--stream` looks for new text.
const STREAM_POLL: Duration = Duration::from_millis(10);

/// `--stream`: prints the job's text as its daemon publishes it (nrvna_queue::stream),
/// then ends as a wait does. A job that ended before any text was seen prints its result.
fn stream(ws: &Workspace, id: &JobId, args: &Args, timeout: Option<Duration>) -> Result<u8> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut follower = TextFollower::new(ws, id);
    let mut out = std::io::stdout().lock();
    let mut last = String::new();
    loop {
        match follower.poll()? {
            Followed::NotFound => {
                eprintln!("flw: no job {id} in {}", ws.root().display());
                return Ok(exit::NOT_FOUND);
            }
            Followed::Running { text } => {
                if !text.is_empty() {
                    out.write_all(text.as_bytes())?;
                    out.flush()?;
                    last = text;
                }
            }
            Followed::Restarted => {
                eprintln!("\nflw: job {id} went back to the queue; its output starts over");
            }
            Followed::Ended {
                state,
                text,
                streamed,
            } => {
                if !streamed {
                    drop(out);
                    return print_outcome(ws, id, state, args);
                }
                out.write_all(text.as_bytes())?;
                if !text.is_empty() {
                    last = text;
                }
                if out.is_terminal() && !last.ends_with('\n') {
                    out.write_all(b"\n")?;
                }
                out.flush()?;
                return Ok(match ws.outcome(state, id)? {
                    Some(outcome) => ended_exit(id, &outcome),
                    None => exit::NOT_READY,
                });
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            eprintln!("flw: job {id} has not ended (timed out streaming)");
            return Ok(exit::NOT_READY);
        }
        std::thread::sleep(STREAM_POLL);
    }
}

fn result(ws: &Workspace, id: &JobId, args: &Args, timeout: Option<Duration>) -> Result<u8> {
    if args.stream {
        return stream(ws, id, args, timeout);
    }
    let state = if args.no_wait {
        ws.state_of(id)?
    } else {
        wait_for_job(ws, id, timeout, live_status(args))?
    };
    let Some(state) = state else {
        eprintln!("flw: no job {id} in {}", ws.root().display());
        return Ok(exit::NOT_FOUND);
    };
    print_outcome(ws, id, state, args)
}

/// Prints what job `id` in `state` produced, and says with which exit code.
fn print_outcome(ws: &Workspace, id: &JobId, state: State, args: &Args) -> Result<u8> {
    if args.json {
        println!("{}", job_json(ws, id, state));
        return Ok(match state {
            State::Done => exit::OK,
            State::Failed => exit::FAILED,
            _ => exit::NOT_READY,
        });
    }
    match ws.outcome(state, id)? {
        Some(JobOutcome::Done(artifact)) => {
            let mut out = std::io::stdout().lock();
            out.write_all(&artifact.bytes)?;
            // The shell's prompt must not run into the result; a pipe gets it byte-exact.
            if out.is_terminal() && !artifact.bytes.ends_with(b"\n") {
                out.write_all(b"\n")?;
            }
            out.flush()?;
            Ok(exit::OK)
        }
        Some(outcome) => Ok(ended_exit(id, &outcome)),
        None => {
            let how = if args.no_wait {
                ""
            } else {
                " (timed out waiting)"
            };
            let approve = if state == State::Held {
                format!(
                    " (waiting for approval: nrvna approve {} {id})",
                    ws.root().display()
                )
            } else {
                String::new()
            };
            eprintln!("flw: job {id} is {}{approve}{how}", state.name());
            Ok(exit::NOT_READY)
        }
    }
}

/// The exit code of an ended job; why it did not end done goes to stderr.
fn ended_exit(id: &JobId, outcome: &JobOutcome) -> u8 {
    match outcome {
        JobOutcome::Done(_) => return exit::OK,
        JobOutcome::Cancelled => eprintln!("flw: job {id} was cancelled"),
        JobOutcome::Denied { reason } => eprintln!("flw: job {id} was {reason}"),
        JobOutcome::Failed { reason, .. } => eprintln!("flw: job {id} failed: {reason}"),
    }
    exit::FAILED
}

/// One job as JSON: its meta fields, its state, and its artifact.
fn job_json(ws: &Workspace, id: &JobId, state: State) -> serde_json::Value {
    let mut obj = match ws.read_meta(state, id) {
        Ok(meta) => match serde_json::to_value(&meta) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => Default::default(),
        },
        Err(_) => Default::default(),
    };
    obj.insert("id".into(), id.to_string().into());
    // A done job whose artifact is unreadable still shows as done, without it.
    let outcome = ws.outcome(state, id).ok().flatten();
    let status = match &outcome {
        Some(ended) => ended.status().as_str(),
        None => state.name(),
    };
    obj.insert("status".into(), status.into());
    match outcome {
        Some(JobOutcome::Done(artifact)) => {
            let text = String::from_utf8_lossy(&artifact.bytes).into_owned();
            match artifact.kind {
                ArtifactKind::Text => obj.insert("result".into(), text.into()),
                ArtifactKind::Embedding => obj.insert(
                    "embedding".into(),
                    serde_json::from_str(&text).unwrap_or_default(),
                ),
            };
            obj.insert("artifact_kind".into(), artifact.kind.as_str().into());
            obj.insert(
                "artifact_path".into(),
                artifact.path.display().to_string().into(),
            );
        }
        Some(JobOutcome::Failed { reason, partial }) => {
            obj.insert("error".into(), reason.into());
            if let Some(p) = partial {
                obj.insert("partial".into(), p.into());
            }
        }
        Some(JobOutcome::Cancelled) => {
            obj.insert("error".into(), "cancelled".into());
        }
        Some(JobOutcome::Denied { reason }) => {
            obj.insert("error".into(), reason.into());
        }
        None => {}
    }
    serde_json::Value::Object(obj)
}

fn overview(ws: &Workspace, json: bool) -> Result<u8> {
    if json {
        println!("{}", WorkspaceStatus::read(ws)?.to_json()?);
        return Ok(exit::OK);
    }
    let counts = ws.counts()?;
    let daemon = match probe(ws.root())? {
        DaemonStatus::NotRunning => "not running".to_owned(),
        DaemonStatus::Starting { .. } => "starting".to_owned(),
        DaemonStatus::Shared { nodes } => {
            let workers: usize = nodes
                .iter()
                .filter_map(|n| n.info.as_ref())
                .map(|i| i.workers)
                .sum();
            format!("shared by {} node(s), {workers} workers", nodes.len())
        }
        DaemonStatus::Ready { info, .. } => match info {
            Some(i) => format!("ready ({} workers)", i.workers),
            None => "ready".to_owned(),
        },
    };
    println!("workspace  {}  (daemon {daemon})", ws.root().display());
    println!(
        "held {}  queued {}  running {}  done {}  failed {}",
        counts.held, counts.queued, counts.running, counts.done, counts.failed
    );
    let recent: Vec<_> = ws.all_jobs()?.into_iter().take(5).collect();
    if !recent.is_empty() {
        println!("recent:");
    }
    for (id, state) in recent {
        let meta = ws.read_meta(state, &id).ok();
        let secs = meta
            .as_ref()
            .and_then(|m| m.duration_s)
            .map(|d| format!("{d:6.1}s"))
            .unwrap_or_else(|| "       ".into());
        let prompt = ws
            .read_file(state, &id, PROMPT_FILE)
            .map(|b| String::from_utf8_lossy(&b).replace('\n', " "))
            .unwrap_or_default();
        let prompt: String = prompt.chars().take(50).collect();
        println!("  {id}  {:<8} {secs}  {prompt}", state.name());
    }
    Ok(exit::OK)
}

fn wait_idle(ws: &Workspace, timeout: Option<Duration>, live: bool) -> Result<u8> {
    let failed_before = ws.counts()?.failed;
    let mut waiting = Waiting::new("flw", live);
    let mut rate = TokenRate::default();
    let mut line = String::new();
    let idle = wait_until(ws, timeout, |ws| {
        let jobs = ws.all_jobs()?;
        rate.observe(ws, jobs.iter().map(|(id, state)| (id, *state)));
        line = format!(
            "{}{}",
            counts_line(jobs.iter().map(|(_, s)| s)),
            rate.shown()
        );
        let busy = jobs
            .iter()
            .any(|(_, s)| matches!(s, State::Queued | State::Running));
        if busy {
            waiting.not_yet(ws, line.clone());
        }
        Ok(!busy)
    })?;
    waiting.end(Some(line));
    if !idle {
        eprintln!("flw: still busy after the timeout");
        return Ok(exit::NOT_READY);
    }
    let failed_now = ws.counts()?.failed;
    if failed_now > failed_before {
        eprintln!(
            "flw: {} job(s) failed while waiting",
            failed_now - failed_before
        );
        return Ok(exit::FAILED);
    }
    Ok(exit::OK)
}

/// Jobs selected by tag or parent, with their states.
fn select(ws: &Workspace, args: &Args) -> nrvna_queue::Result<Vec<(JobId, State, Option<Meta>)>> {
    if let Some(tag) = &args.tag {
        nrvna_queue::workspace::validate_tag(tag)?;
    }
    let parent = args.children.as_deref().map(JobId::parse).transpose()?;
    let mut out = Vec::new();
    for (id, state) in ws.all_jobs()? {
        let meta = ws.read_meta(state, &id).ok();
        let keep = match (&args.tag, &parent, &meta) {
            (Some(tag), _, Some(m)) => m.tags.iter().any(|t| t == tag),
            (None, Some(p), Some(m)) => m.parent.as_deref() == Some(p.as_str()),
            _ => false,
        };
        if keep {
            out.push((id, state, meta));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn set(ws: &Workspace, args: &Args, timeout: Option<Duration>) -> Result<u8> {
    if select(ws, args)?.is_empty() {
        // Nothing to list or wait for: most likely a mistyped tag, id or workspace.
        let what = match (&args.tag, &args.children) {
            (Some(tag), _) => format!("tagged {tag}"),
            (None, Some(parent)) => format!("has parent {parent}"),
            (None, None) => "is selected".to_owned(),
        };
        eprintln!("flw: no job {what} in {}", ws.root().display());
        return Ok(exit::NOT_FOUND);
    }
    if args.wait_idle {
        let mut waiting = Waiting::new("flw", live_status(args));
        let mut rate = TokenRate::default();
        let mut line = String::new();
        let idle = wait_until(ws, timeout, |ws| {
            let jobs = select(ws, args)?;
            rate.observe(ws, jobs.iter().map(|(id, state, _)| (id, *state)));
            line = format!(
                "{} jobs: {}{}",
                jobs.len(),
                counts_line(jobs.iter().map(|(_, s, _)| s)),
                rate.shown()
            );
            let ended = jobs.iter().all(|(_, s, _)| s.is_terminal());
            if !ended {
                waiting.not_yet(ws, line.clone());
            }
            Ok(ended)
        })?;
        waiting.end(Some(line));
        if !idle {
            eprintln!("flw: the set is still busy after the timeout");
            return Ok(exit::NOT_READY);
        }
    }
    let jobs = select(ws, args)?;
    let mut any_failed = false;
    let mut out = std::io::stdout().lock();
    for (id, state, _) in &jobs {
        any_failed |= *state == State::Failed;
        if args.wait_idle {
            continue; // a barrier is silent
        }
        if args.json {
            writeln!(out, "{}", job_json(ws, id, *state))?;
        } else {
            writeln!(out, "{id}")?;
        }
    }
    Ok(if any_failed { exit::FAILED } else { exit::OK })
}
