//! `nrvna ps WS`: the running and queued jobs of a workspace, one per line, like
//! `ollama ps`; `--json` gives NDJSON, `--watch` redraws it on a terminal.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use chrono::{DateTime, Utc};
use nrvna_queue::{JobId, Meta, PROMPT_FILE, State, Workspace};
use serde::Serialize;

pub const AFTER_HELP: &str = "\
Running jobs first, then queued ones, each oldest first. AGE is the time since
submission; TOKENS is what a running job has generated so far (its daemon refreshes
it about once a second) and TOK/S its rate since it started (`-` until the first
token). PROMPT is the prompt's first 60 characters.

Examples:
  nrvna ps ./ws                      the table, once
  nrvna ps ./ws --watch              redrawn every second until Ctrl-C (a terminal only)
  nrvna ps ./ws --json | jq -r .id   one JSON object per job";

/// Characters of the prompt shown.
const PROMPT_EXCERPT_CHARS: usize = 60;

#[derive(clap::Args, Debug)]
pub struct PsArgs {
    workspace: PathBuf,
    /// One JSON object per job (NDJSON)
    #[arg(long, conflicts_with = "watch")]
    json: bool,
    /// Redraw the table until interrupted (stdout must be a terminal)
    #[arg(long)]
    watch: bool,
    /// Seconds between redraws with --watch, 0.1 to 60
    #[arg(long, value_name = "SECS", default_value_t = 1.0, requires = "watch",
          value_parser = parse_interval)]
    interval: f64,
}

fn parse_interval(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if (0.1..=60.0).contains(&secs) => Ok(secs),
        _ => Err("expected a number of seconds from 0.1 to 60".into()),
    }
}

/// One job as `nrvna ps` shows it.
#[derive(Debug, Serialize)]
struct JobRow {
    id: String,
    state: &'static str,
    submitted_at: Option<String>,
    started_at: Option<String>,
    /// Seconds since submission.
    age_s: Option<f64>,
    generated_tokens: Option<u32>,
    tokens_per_s: Option<f64>,
    prompt: String,
}

pub fn run(args: &PsArgs) -> Result<ExitCode> {
    let ws = Workspace::open(&args.workspace)?;
    if !args.watch {
        let rows = rows(&ws)?;
        let mut out = std::io::stdout().lock();
        if args.json {
            for row in &rows {
                writeln!(out, "{}", serde_json::to_string(row)?)?;
            }
        } else {
            out.write_all(table(&rows).as_bytes())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !std::io::stdout().is_terminal() {
        bail!("--watch redraws a terminal, and stdout is not one: drop --watch (or use --json)");
    }
    loop {
        let screen = table(&rows(&ws)?);
        let mut out = std::io::stdout().lock();
        // Home the cursor and clear the screen, then the table.
        write!(out, "\x1b[H\x1b[2J{screen}")?;
        out.flush()?;
        drop(out);
        std::thread::sleep(Duration::from_secs_f64(args.interval));
    }
}

fn rows(ws: &Workspace) -> Result<Vec<JobRow>> {
    let now = Utc::now();
    let mut rows = Vec::new();
    for state in [State::Running, State::Queued] {
        for id in ws.list(state)? {
            // A job that moved on since the listing is simply left out of this look.
            let Ok(meta) = ws.read_meta(state, &id) else {
                continue;
            };
            rows.push(row(ws, state, &id, &meta, now));
        }
    }
    Ok(rows)
}

fn row(ws: &Workspace, state: State, id: &JobId, meta: &Meta, now: DateTime<Utc>) -> JobRow {
    let seconds_since = |stamp: &str| {
        DateTime::parse_from_rfc3339(stamp)
            .ok()
            .map(|t| (now - t.with_timezone(&Utc)).num_milliseconds().max(0) as f64 / 1000.0)
    };
    let running_for = meta.started_at.as_deref().and_then(seconds_since);
    // A running job's count so far comes from its daemon's `.progress/` entry.
    let generated_tokens = meta
        .generated_tokens
        .or_else(|| (state == State::Running).then(|| ws.progress(id)).flatten());
    let tokens_per_s = meta.tokens_per_s.or_else(|| {
        let tokens = f64::from(generated_tokens?);
        running_for
            .filter(|secs| *secs > 0.0)
            .map(|secs| tokens / secs)
    });
    let prompt = ws
        .read_file(state, id, PROMPT_FILE)
        .map(|bytes| String::from_utf8_lossy(&bytes).replace(['\n', '\r', '\t'], " "))
        .unwrap_or_default();
    JobRow {
        id: id.to_string(),
        state: state.name(),
        submitted_at: Some(meta.submitted_at.clone()).filter(|s| !s.is_empty()),
        started_at: meta.started_at.clone(),
        age_s: seconds_since(&meta.submitted_at),
        generated_tokens,
        tokens_per_s,
        prompt: prompt.chars().take(PROMPT_EXCERPT_CHARS).collect(),
    }
}

fn table(rows: &[JobRow]) -> String {
    let id_width = rows.iter().map(|r| r.id.len()).max().unwrap_or(2).max(2);
    let mut text = format!(
        "{:<id_width$}  {:<7}  {:>7}  {:>6}  {:>7}  PROMPT\n",
        "ID", "STATE", "AGE", "TOKENS", "TOK/S"
    );
    for row in rows {
        let age = row.age_s.map(short_duration).unwrap_or_else(|| "-".into());
        let tokens = row
            .generated_tokens
            .map(|t| t.to_string())
            .unwrap_or_else(|| "-".into());
        let rate = row
            .tokens_per_s
            .map(|r| format!("{r:.1}"))
            .unwrap_or_else(|| "-".into());
        text.push_str(&format!(
            "{:<id_width$}  {:<7}  {age:>7}  {tokens:>6}  {rate:>7}  {}\n",
            row.id, row.state, row.prompt
        ));
    }
    text
}

/// `42s`, `3m05s`, `2h07m`.
fn short_duration(secs: f64) -> String {
    let secs = secs as u64;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::short_duration;

    #[test]
    fn durations_are_short() {
        assert_eq!(short_duration(0.4), "0s");
        assert_eq!(short_duration(59.9), "59s");
        assert_eq!(short_duration(185.0), "3m05s");
        assert_eq!(short_duration(7620.0), "2h07m");
    }
}
