//! `nrvna approve`, `nrvna deny` and `nrvna verify`: the human gate on held jobs
//! (`wrk --hold`) and the check that a job is what was submitted and approved.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use nrvna_queue::workspace::validate_tag;
use nrvna_queue::{Actor, DecideOutcome, JobId, State, Verification, Workspace};

use crate::exit;

pub const APPROVE_HELP: &str = "\
A held job (wrk --hold) waits in input/held/ until someone approves it: approve moves it
to input/ready/, where a daemon runs it. With --tag, every held job carrying the tag is
approved and the count printed. Each decision is written to the job's meta.json
(decision: verdict, by, uid, at, note, and the spec's sha256) and appended to the
workspace's audit.jsonl, one JSON object per line:
  jq 'select(.verdict == \"approved\")' WS/audit.jsonl

Two people deciding one job at once (approve against approve, or against deny) leave
exactly one decision; the other is told the job is no longer held and exits 6. A job
whose spec changed since it was submitted is not approved (exit 1; nrvna verify names
what changed).

Examples:
  id=$(wrk ./ws --hold \"Email the customer a refund\")
  nrvna approve ./ws \"$id\" --note \"checked the amount\"
  nrvna approve ./ws --tag plan-42";

pub const DENY_HELP: &str = "\
The held job ends in failed/ with status denied; its error.txt says who denied it and
why, and the decision is recorded as approve records it. flw prints the reason and
exits 1; an agent following the job gets a `denied` error.

Examples:
  nrvna deny ./ws \"$id\" --reason \"wrong customer\"";

pub const VERIFY_HELP: &str = "\
Recomputes the sha256 of the job's spec (prompt, messages, images, schema and grammar,
sampling options, an agent job's component and arguments) and compares it with the one
recorded when the job was submitted, and, for an approved job, with the one approved;
a decided job's decision must also be in audit.jsonl. Each check prints one line:
  spec      ok  matches the submitted spec (...)
  approval  FAILED  changed since alice approved it (...)
An agent job's journal (journal.jsonl, nested journals included) is checked too: its hash
chain, and that it was recorded by the job's component.
An `nrvna exec --ws` run is verified by the run id exec printed: its journal's chain, and,
with --component FILE, that FILE is the component that recorded it (exec keeps no copy).
Exit 0 when every check passes, 1 naming what differs.

Examples:
  nrvna verify ./ws \"$id\"
  nrvna verify ./ws r1764566100-3f2a9c --component agent.wasm
  nrvna verify ./ws --tag plan-42 --json";

/// The codes approve and deny return.
pub const DECIDE_CODES: [u8; 5] = [
    exit::OK,
    exit::FAILED,
    exit::USAGE,
    exit::NOT_FOUND,
    exit::ALREADY_ENDED,
];

/// Who is running this command: the real uid and its name in the user database.
fn actor() -> Actor {
    let uid = rustix::process::getuid().as_raw();
    Actor {
        name: user_name(uid).unwrap_or_else(|| format!("uid{uid}")),
        uid,
    }
}

fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 16 << 10];
    // SAFETY: an all-zero passwd is a valid value to be filled in.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to a live buffer of the length given; getpwuid_r writes
    // only inside them and sets `found` to `&pwd` or null.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: pw_name points into `buf`, NUL-terminated by getpwuid_r.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// Opens the workspace and finishes any decision a crash interrupted.
fn open(workspace: &Path) -> Result<Workspace> {
    let ws = Workspace::open(workspace)?;
    ws.recover_decisions()?;
    Ok(ws)
}

/// The held jobs carrying `tag`.
fn held_tagged(ws: &Workspace, tag: &str) -> Result<Vec<JobId>> {
    validate_tag(tag)?;
    Ok(ws
        .list(State::Held)?
        .into_iter()
        .filter(|id| {
            ws.read_meta(State::Held, id)
                .is_ok_and(|m| m.tags.iter().any(|t| t == tag))
        })
        .collect())
}

/// What to decide about: one id or a tag (exactly one of them).
fn targets(ws: &Workspace, id: Option<&str>, tag: Option<&str>) -> Result<Result<Vec<JobId>, u8>> {
    match (id, tag) {
        (Some(id), None) => Ok(Ok(vec![JobId::parse(id)?])),
        (None, Some(tag)) => {
            let ids = held_tagged(ws, tag)?;
            if ids.is_empty() {
                eprintln!("nrvna: no held job tagged {tag} in {}", ws.root().display());
                return Ok(Err(exit::NOT_FOUND));
            }
            Ok(Ok(ids))
        }
        _ => Err(exit::UsageError("give a job ID or --tag TAG (one of them)".into()).into()),
    }
}

/// `nrvna approve` (`reason` None) or `nrvna deny`.
pub fn decide(
    workspace: &Path,
    id: Option<&str>,
    tag: Option<&str>,
    note: Option<&str>,
    reason: Option<&str>,
) -> Result<ExitCode> {
    let ws = open(workspace)?;
    let ids = match targets(&ws, id, tag)? {
        Ok(ids) => ids,
        Err(code) => return Ok(ExitCode::from(code)),
    };
    let verb = if reason.is_some() { "deny" } else { "approve" };
    let actor = actor();
    let mut decided = 0;
    let mut worst = exit::OK;
    for id in &ids {
        let outcome = match reason {
            Some(reason) => ws.deny(id, &actor, reason)?,
            None => ws.approve(id, &actor, note)?,
        };
        let code = match outcome {
            DecideOutcome::Decided(d) => {
                decided += 1;
                if tag.is_none() {
                    println!("{} {id}", d.verdict.as_str());
                }
                exit::OK
            }
            DecideOutcome::NotHeld(state) => {
                eprintln!(
                    "nrvna {verb}: {id} is not held: it is {} (someone decided it first, or \
                     it was never held)",
                    state.name()
                );
                exit::ALREADY_ENDED
            }
            DecideOutcome::NotFound => {
                eprintln!("nrvna {verb}: no job {id} in {}", ws.root().display());
                exit::NOT_FOUND
            }
            DecideOutcome::SpecChanged(what) => {
                eprintln!(
                    "nrvna {verb}: {id} was not approved: its spec changed since it was \
                     submitted ({what}); it stays held (nrvna verify {} {id})",
                    ws.root().display()
                );
                exit::FAILED
            }
        };
        if worst == exit::OK {
            worst = code;
        }
    }
    if tag.is_some() {
        let done = if reason.is_some() {
            "denied"
        } else {
            "approved"
        };
        println!("{done} {decided} of {} held job(s)", ids.len());
    }
    Ok(ExitCode::from(worst))
}

/// `nrvna verify`.
pub fn verify(
    workspace: &Path,
    id: Option<&str>,
    tag: Option<&str>,
    component: Option<&Path>,
    json: bool,
) -> Result<ExitCode> {
    let ws = open(workspace)?;
    if let Some(id) = id
        && let Some(code) = verify_run(&ws, id, component, json)?
    {
        return Ok(code);
    }
    if component.is_some() {
        bail!(exit::UsageError(
            "--component is for an exec run id; an agent job's journal is checked against \
             the job's own component"
                .into()
        ));
    }
    let ids = match (id, tag) {
        (Some(id), None) => vec![JobId::parse(id)?],
        (None, Some(tag)) => {
            validate_tag(tag)?;
            let ids: Vec<JobId> = ws
                .all_jobs()?
                .into_iter()
                .filter(|(id, state)| {
                    ws.read_meta(*state, id)
                        .is_ok_and(|m| m.tags.iter().any(|t| t == tag))
                })
                .map(|(id, _)| id)
                .collect();
            if ids.is_empty() {
                eprintln!(
                    "nrvna verify: no job tagged {tag} in {}",
                    ws.root().display()
                );
                return Ok(ExitCode::from(exit::NOT_FOUND));
            }
            ids
        }
        _ => bail!(exit::UsageError(
            "give a job ID or --tag TAG (one of them)".into()
        )),
    };
    let mut all_ok = true;
    for id in &ids {
        let mut report = match ws.verify(id) {
            Ok(report) => report,
            Err(nrvna_queue::QueueError::NotFound(_)) if tag.is_none() => {
                eprintln!("nrvna verify: no job {id} in {}", ws.root().display());
                return Ok(ExitCode::from(exit::NOT_FOUND));
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(check) = journal_check(&ws, id) {
            report.checks.push(check);
        }
        all_ok &= report.ok();
        print_report(&report, json)?;
    }
    Ok(ExitCode::from(if all_ok { exit::OK } else { exit::FAILED }))
}

/// `nrvna verify WS RUN` for an `nrvna exec --ws` run: its journal under `.runs/`. `None`
/// when `id` is not such a run (it may be a job).
fn verify_run(
    ws: &Workspace,
    id: &str,
    component: Option<&Path>,
    json: bool,
) -> Result<Option<ExitCode>> {
    if JobId::parse(id).is_ok_and(|job| ws.state_of(&job).ok().flatten().is_some())
        || nrvna_sandbox::journal::check_run_id(id).is_err()
    {
        return Ok(None);
    }
    let path = nrvna_sandbox::journal::run_journal_path(ws.root(), id);
    if !path.is_file() {
        return Ok(None);
    }
    let bytes =
        match component {
            Some(file) => Some(std::fs::read(file).map_err(|e| {
                anyhow::anyhow!("cannot read the component {}: {e}", file.display())
            })?),
            None => None,
        };
    let (ok, detail) =
        match nrvna_sandbox::journal::check_journal(&path, bytes.as_deref(), u64::MAX) {
            Ok(detail) if component.is_none() => (
                true,
                format!("{detail} (component not compared: give --component FILE)"),
            ),
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
    let report = Verification {
        id: id.to_owned(),
        state: "run",
        checks: vec![nrvna_queue::verify::Check {
            name: "journal",
            ok,
            detail,
        }],
    };
    print_report(&report, json)?;
    Ok(Some(ExitCode::from(if ok {
        exit::OK
    } else {
        exit::FAILED
    })))
}

/// An agent job's journal (if it has one yet): its hash chains, nested journals
/// included, and the component it was recorded by against the job's.
fn journal_check(ws: &nrvna_queue::Workspace, id: &JobId) -> Option<nrvna_queue::verify::Check> {
    let state = ws.state_of(id).ok().flatten()?;
    let dir = ws.job_dir(state, id);
    let path = dir.join(nrvna_sandbox::JOURNAL_FILE);
    if !path.is_file() {
        return None;
    }
    let component = std::fs::read(dir.join(nrvna_queue::AGENT_FILE)).ok();
    let (ok, detail) =
        match nrvna_sandbox::journal::check_journal(&path, component.as_deref(), u64::MAX) {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
    Some(nrvna_queue::verify::Check {
        name: "journal",
        ok,
        detail,
    })
}

fn print_report(report: &Verification, json: bool) -> Result<()> {
    if json {
        let mut value = serde_json::to_value(report)?;
        value["ok"] = report.ok().into();
        println!("{value}");
        return Ok(());
    }
    let verdict = if report.ok() { "ok" } else { "FAILED" };
    println!("{} ({})  {verdict}", report.id, report.state);
    for check in &report.checks {
        let mark = if check.ok { "ok" } else { "FAILED" };
        println!("  {:<9} {mark:<7} {}", check.name, check.detail);
    }
    Ok(())
}

/// The arguments of `nrvna approve` (and, with `--reason`, of `nrvna deny`).
#[derive(clap::Args, Debug)]
pub struct DecideArgs {
    pub workspace: PathBuf,
    /// The held job's id (as wrk printed it)
    #[arg(required_unless_present = "tag", conflicts_with = "tag")]
    pub id: Option<String>,
    /// Every held job carrying this tag
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
}
