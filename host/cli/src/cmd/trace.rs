//! `nrvna trace WS ID`: what an agent run did, from its journal — every host call with
//! its duration and result, the jobs it submitted, nested agent calls as sub-trees, and
//! totals.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use nrvna_queue::{JobId, Workspace};
use nrvna_sandbox::journal::{self, Entry, JOURNAL_FILE, JournalRead, check_run_id, read_journal};
use serde_json::{Value, json};

pub const AFTER_HELP: &str = "\
ID is an agent job's id (wrk --agent printed it) or a run id (nrvna exec --ws printed
it). Each line is a host call: its index, interface.function, duration and result;
under a jobs.submit, the job it queued (state, tokens, seconds, prompt); under an
agents.call, the nested agent's own calls. Totals close the trace: wall time, time
waiting on inference (follow and waits), tokens, jobs, kv writes.

Examples:
  nrvna trace ./ws 1733040000_12          an agent job (running, done or failed)
  nrvna trace ./ws r1733040000-3fa2c1     an nrvna exec run
  nrvna trace ./ws 1733040000_12 --json   one JSON object per entry (depth, journal added)
  nrvna trace ./ws 1733040000_12 --follow while it runs, until it ends";

#[derive(clap::Args, Debug)]
pub struct TraceArgs {
    workspace: PathBuf,
    /// An agent job's id or an nrvna exec run id
    id: String,
    /// One JSON object per line: every entry, with its depth and journal file
    #[arg(long)]
    json: bool,
    /// Keep printing entries as the run records them, until it ends
    #[arg(long)]
    follow: bool,
}

/// Where `id`'s journal is: in the agent job's directory, or under `.runs/`.
fn locate(ws_path: &Path, id: &str) -> Result<(PathBuf, Option<(Workspace, JobId)>)> {
    if let Ok(job) = JobId::parse(id) {
        let ws = Workspace::open(ws_path)?;
        if let Some(state) = ws.state_of(&job)? {
            let path = ws.job_dir(state, &job).join(JOURNAL_FILE);
            return Ok((path, Some((ws, job))));
        }
    }
    if check_run_id(id).is_ok() {
        let path = journal::run_journal_path(ws_path, id);
        if path.is_file() {
            return Ok((path, None));
        }
    }
    bail!(nrvna_queue::QueueError::NotFound(format!(
        "no agent job or run {id} in {} (nrvna trace takes an agent job id or the run id \
         nrvna exec printed)",
        ws_path.display()
    )))
}

pub fn run(args: &TraceArgs) -> Result<ExitCode> {
    let ws = Workspace::open(&args.workspace).ok();
    let mut printed = 0usize;
    let mut totals = Totals::default();
    loop {
        let (path, job) = locate(&args.workspace, &args.id)?;
        let read = match read_journal(&path, u64::MAX) {
            Ok(read) => Some(read),
            // An agent job still queued has no journal yet.
            Err(journal::JournalError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound && job.is_some() =>
            {
                None
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(read) = &read {
            if printed == 0 && !args.json {
                print_header(read, &args.id);
            }
            for entry in read.entries.iter().skip(printed) {
                show_entry(entry, &path, 0, ws.as_ref(), args.json, &mut totals)?;
            }
            printed = read.entries.len();
        }
        let ended = read
            .as_ref()
            .is_some_and(|r| r.entries.last().is_some_and(|e| e.call == "run.end"))
            || job.as_ref().is_some_and(|(ws, id)| {
                ws.state_of(id)
                    .ok()
                    .flatten()
                    .is_some_and(|s| s.is_terminal())
            });
        if !args.follow || ended {
            if read.is_none() {
                bail!(nrvna_queue::QueueError::NotFound(format!(
                    "{} has no journal (yet): it has not started",
                    args.id
                )));
            }
            if let Some((ws, id)) = &job
                && let Some(state) = ws.state_of(id)?
                && !args.json
            {
                println!("job {id}: {}", state.name());
            }
            totals.print(args.json, read.as_ref());
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn print_header(read: &JournalRead, id: &str) {
    let h = &read.header;
    println!(
        "run {id} (agent {}, component sha256 {}, args {:?})",
        h.agent,
        h.component_sha256.get(..16).unwrap_or(&h.component_sha256),
        h.args
    );
}

#[derive(Default)]
struct Totals {
    first_us: u64,
    last_us: u64,
    waiting_us: u64,
    prompt_tokens: u64,
    generated_tokens: u64,
    jobs: u64,
    kv_writes: u64,
    calls: u64,
}

impl Totals {
    fn add(&mut self, e: &Entry) {
        if self.first_us == 0 || e.t0 < self.first_us {
            self.first_us = e.t0;
        }
        self.last_us = self.last_us.max(e.t1);
        self.calls += 1;
        let took = e.t1.saturating_sub(e.t0);
        match e.call.as_str() {
            "jobs.follow" | "jobs.wait-any" | "jobs.wait-all" => self.waiting_us += took,
            "jobs.submit" if e.result.get("ok").is_some() => self.jobs += 1,
            "kv.set" | "kv.delete" => self.kv_writes += 1,
            _ => {}
        }
        let mut outputs = Vec::new();
        if e.call == "jobs.follow" {
            outputs.extend(e.result.get("ok").cloned());
        }
        if e.call == "jobs.wait-all"
            && let Some(list) = e.result.get("ok").and_then(Value::as_array)
        {
            outputs.extend(list.iter().filter_map(|r| r.get("ok").cloned()));
        }
        for out in outputs {
            self.prompt_tokens += out
                .get("prompt_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            self.generated_tokens += out
                .get("generated_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0);
        }
    }

    fn print(&self, json: bool, read: Option<&JournalRead>) {
        let wall_us = match read {
            Some(r) => self.last_us.saturating_sub(r.header.started_ns / 1000),
            None => 0,
        };
        if json {
            println!(
                "{}",
                json!({
                    "totals": {
                        "wall_s": wall_us as f64 / 1e6,
                        "waiting_s": self.waiting_us as f64 / 1e6,
                        "prompt_tokens": self.prompt_tokens,
                        "generated_tokens": self.generated_tokens,
                        "jobs": self.jobs,
                        "kv_writes": self.kv_writes,
                        "calls": self.calls,
                    }
                })
            );
            return;
        }
        println!(
            "totals: wall {:.2}s, waiting on inference {:.2}s, tokens {} (prompt {} + generated \
             {}), jobs {}, kv writes {}, host calls {}",
            wall_us as f64 / 1e6,
            self.waiting_us as f64 / 1e6,
            self.prompt_tokens + self.generated_tokens,
            self.prompt_tokens,
            self.generated_tokens,
            self.jobs,
            self.kv_writes,
            self.calls
        );
    }
}

/// One entry (and, for `agents.call`, the nested journal under it).
fn show_entry(
    e: &Entry,
    path: &Path,
    depth: usize,
    ws: Option<&Workspace>,
    json: bool,
    totals: &mut Totals,
) -> Result<()> {
    if e.call != "run.end" {
        totals.add(e);
    }
    let indent = "  ".repeat(depth + 1);
    if json {
        let mut raw = e.raw.clone();
        raw["depth"] = json!(depth);
        raw["journal"] = json!(path.display().to_string());
        println!("{raw}");
    } else {
        let took = e.t1.saturating_sub(e.t0);
        println!(
            "{indent}#{:<4} {:<18} {:>9}  {}  {}",
            e.index,
            e.call,
            show_us(took),
            summary(&e.args, 80),
            summary(&e.result, 100)
        );
    }
    if e.call == "jobs.submit"
        && let (Some(ws), Some(id)) = (ws, e.result.get("ok").and_then(Value::as_str))
        && let Ok(id) = JobId::parse(id)
        && let Ok(Some(state)) = ws.state_of(&id)
        && let Ok(meta) = ws.read_meta(state, &id)
    {
        let prompt =
            std::fs::read_to_string(ws.job_dir(state, &id).join("prompt.txt")).unwrap_or_default();
        if json {
            println!(
                "{}",
                json!({
                    "job": id.to_string(),
                    "state": state.name(),
                    "prompt_tokens": meta.prompt_tokens,
                    "generated_tokens": meta.generated_tokens,
                    "seconds": meta.duration_s,
                    "depth": depth,
                })
            );
        } else {
            println!(
                "{indent}      job {id} {}: {} prompt + {} generated tokens, {}; prompt {}",
                state.name(),
                meta.prompt_tokens.unwrap_or(0),
                meta.generated_tokens.unwrap_or(0),
                meta.duration_s
                    .map_or_else(|| "-".to_owned(), |s| format!("{s:.2}s")),
                summary(&Value::String(prompt), 60)
            );
        }
    }
    let child_path = match journal::nested_journal(path, e) {
        Ok(child) => child,
        Err(err) => {
            println!("{indent}      nested journal: {err}");
            None
        }
    };
    if let Some(child_path) = child_path {
        match read_journal(&child_path, u64::MAX) {
            Ok(read) => {
                if !json {
                    println!(
                        "{indent}      agent {} ({} calls):",
                        read.header.agent,
                        read.entries.len()
                    );
                }
                for entry in &read.entries {
                    show_entry(entry, &child_path, depth + 1, ws, json, totals)?;
                }
            }
            Err(err) => println!("{indent}      nested journal: {err}"),
        }
    }
    Ok(())
}

fn show_us(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2}s", us as f64 / 1e6)
    } else if us >= 1000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{us}µs")
    }
}

/// A value on one line, cut to `max` characters.
fn summary(v: &Value, max: usize) -> String {
    let text = match v {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    let one_line: String = text
        .chars()
        .map(|c| if c == '\n' { ' ' } else { c })
        .collect();
    if one_line.chars().count() > max {
        let cut: String = one_line.chars().take(max).collect();
        format!("{cut}...")
    } else {
        one_line
    }
}
