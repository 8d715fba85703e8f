//! Durable agents: every host call journaled, a killed run resumed by replay
//! (`nrvna exec --resume RUN`, an agent job requeued after its daemon was killed),
//! divergence stopped with its message, `nrvna trace` and the journal check of
//! `nrvna verify`.
//!
//! The crash windows are failpoints of the sandbox (its `failpoints` feature, in the
//! test build's `approve-failpoint` example only): the run stops there, is killed with
//! SIGKILL, and is resumed by the release `nrvna`. Each window checks that every
//! inference job ran exactly once, that the result equals an uninterrupted run's
//! (greedy decoding), and that nothing is left in `processing/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nrvna_tests::{TestWs, bin, code, guest, stderr, stdout, wait_for};
use serde_json::Value;

use crate::components::{
    DECOMPOSE, FX_DURABLE, FX_ECHO, FX_HOSTCALLS, FX_HOSTILE, LOOP, MAP_REDUCE, REFINE,
};
use crate::patterns::{count_in, exec_cmd, jobs, run_limited, tagged};

const P1: &str = "Name a colour.";
const P2: &str = "Name a fruit.";

/// The `nrvna` of the test build with failpoints (tests/approve_failpoint.rs).
fn failpoint_nrvna() -> PathBuf {
    let path = bin("nrvna")
        .parent()
        .unwrap()
        .join("examples/approve-failpoint");
    assert!(
        path.is_file(),
        "{} is missing: cargo test builds it",
        path.display()
    );
    path
}

/// The run id `nrvna exec --ws` printed.
fn run_id(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("nrvna exec: run "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no run id in: {stderr}"))
        .to_owned()
}

fn journal_of(ws: &TestWs, run: &str) -> PathBuf {
    ws.path.join(".runs").join(run).join("journal.jsonl")
}

/// Runs the durable fixture under `failpoint` (passed `skip` times first) and kills it
/// with SIGKILL there; returns the run id.
fn kill_exec_at(ws: &TestWs, failpoint: &str, skip: u32, exec_args: &[&str]) -> String {
    let marker = ws.scratch().join(format!("{failpoint}.reached"));
    let err_path = ws.scratch().join(format!("{failpoint}.stderr"));
    // A second kill at the same point in this workspace waits for its own marker.
    let _ = std::fs::remove_file(&marker);
    let mut child = Command::new(failpoint_nrvna())
        .arg("exec")
        .arg(guest(FX_DURABLE))
        .arg("--ws")
        .arg(&ws.path)
        .args(exec_args)
        .arg("--")
        .args([P1, P2])
        .env("NRVNA_FAILPOINT", failpoint)
        .env("NRVNA_FAILPOINT_SKIP", skip.to_string())
        .env("NRVNA_FAILPOINT_MARKER", &marker)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let reached = wait_for(Duration::from_secs(240), || marker.exists());
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(reached, "never reached {failpoint}: {err}");
    run_id(&err)
}

fn resume(
    ws: &TestWs,
    component: nrvna_tests::Component,
    run: &str,
    exec_args: &[&str],
) -> std::process::Output {
    let mut args = vec!["--resume", run];
    args.extend_from_slice(exec_args);
    run_limited(exec_cmd(ws, component, &args, &[]))
}

/// The result without its first line's clock and random reading: what an uninterrupted
/// run on a fresh workspace returns too.
fn body(out: &str) -> String {
    let (first, rest) = out.split_once('\n').unwrap_or((out, ""));
    let count = first.split_whitespace().find(|w| w.starts_with("count="));
    format!("{}\n{rest}", count.unwrap_or("?"))
}

/// The first value the journal recorded for a call.
fn recorded(path: &Path, call: &str) -> Option<Value> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["call"] == call)
        .map(|v| v["result"].clone())
}

fn reference() -> String {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let out = run_limited(exec_cmd(&ws, FX_DURABLE, &[], &[P1, P2]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    body(&stdout(&out))
}

#[test]
fn a_run_killed_at_each_window_resumes_with_each_job_run_once_and_the_same_result() {
    let want = reference();
    for (failpoint, skip) in [
        ("journal-submit-before", 0),
        ("journal-submit-queued", 0),
        ("journal-follow", 0),
        ("journal-follow-ended", 0),
        ("journal-kv-set", 0),
        ("journal-nested-follow", 0),
        ("journal-agents-call-returned", 0),
        ("journal-append", 3),
    ] {
        let ws = TestWs::new();
        let _d = ws.daemon(1);
        let run = kill_exec_at(&ws, failpoint, skip, &[]);
        let out = resume(&ws, FX_DURABLE, &run, &[]);
        assert_eq!(code(&out), 0, "{failpoint}: {}", stderr(&out));
        let text = stdout(&out);
        assert_eq!(body(&text), want, "{failpoint}");
        // Every inference job ran once: two prompts, two jobs, both done.
        let all = tagged(&ws, "durable");
        assert_eq!(all.len(), 2, "{failpoint}: {all:?}");
        assert_eq!(count_in(&all, "output"), 2, "{failpoint}: {all:?}");
        assert!(ws.entries("processing").is_empty(), "{failpoint}");
        // The clock the resumed run saw is the one the journal recorded.
        let t = recorded(&journal_of(&ws, &run), "wasi.wall-clock")
            .and_then(|v| v.as_u64())
            .unwrap_or_else(|| panic!("{failpoint}: no clock entry"));
        assert!(text.starts_with(&format!("t={t} ")), "{failpoint}: {text}");
        // The journal verifies, and trace shows the whole run.
        let trace = Command::new(bin("nrvna"))
            .args(["trace", ws.path.to_str().unwrap(), &run])
            .output()
            .unwrap();
        assert_eq!(code(&trace), 0, "{failpoint}: {}", stderr(&trace));
        let shown = stdout(&trace);
        for want in [
            "jobs.submit",
            "jobs.follow",
            "agents.call",
            "kv.set",
            "jobs 2,",
        ] {
            assert!(shown.contains(want), "{failpoint}: no {want} in {shown}");
        }
    }
}

#[test]
fn divergence_stops_the_resume_naming_the_call_and_keeps_the_journal() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);

    // A changed component.
    let run = kill_exec_at(&ws, "journal-follow", 0, &[]);
    let out = resume(&ws, FX_ECHO, &run, &[]);
    assert_ne!(code(&out), 0);
    let err = stderr(&out);
    assert!(err.contains("a changed component cannot resume"), "{err}");
    assert!(journal_of(&ws, &run).is_file());

    // `nrvna verify` takes the run id: the chain holds, and the component that recorded
    // it is told apart from another.
    let verify = |extra: &[&str]| {
        let mut cmd = Command::new(bin("nrvna"));
        cmd.args(["verify", ws.path.to_str().unwrap(), &run])
            .args(extra);
        run_limited(cmd)
    };
    let out = verify(&[]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    assert!(
        stdout(&out).contains("component not compared"),
        "{}",
        stdout(&out)
    );
    let durable = guest(FX_DURABLE);
    let out = verify(&["--component", durable.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    let echo = guest(FX_ECHO);
    let out = verify(&["--component", echo.to_str().unwrap()]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    assert!(
        stdout(&out).contains("recorded by component sha256"),
        "{}",
        stdout(&out)
    );

    // A hand-edited journal.
    let path = journal_of(&ws, &run);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("durable/count", "durable/other")).unwrap();
    let out = resume(&ws, FX_DURABLE, &run, &[]);
    assert_ne!(code(&out), 0);
    let err = stderr(&out);
    assert!(err.contains("is bad") && err.contains("edited"), "{err}");
    let out = verify(&[]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    assert!(stdout(&out).contains("FAILED"), "{}", stdout(&out));

    // The same component doing something else: a granted env value the header does not
    // record (values may be secrets) changes the kv key it reads.
    let run = kill_exec_at(&ws, "journal-follow", 0, &["--env", "DURABLE_KEY=a"]);
    let out = resume(&ws, FX_DURABLE, &run, &["--env", "DURABLE_KEY=b"]);
    assert_ne!(code(&out), 0);
    let err = stderr(&out);
    assert!(
        err.contains("replay diverged at call #")
            && err.contains("recorded kv.get({\"key\":\"a\"})")
            && err.contains("came kv.get({\"key\":\"b\"})"),
        "{err}"
    );
    assert!(journal_of(&ws, &run).is_file());
    // Nothing was submitted by the refused resumes: the killed runs' first jobs only.
    assert_eq!(tagged(&ws, "durable").len(), 2);
}

#[test]
fn a_journal_has_a_size_limit_that_names_itself() {
    let ws = TestWs::new();
    let out = run_limited(exec_cmd(
        &ws,
        FX_HOSTCALLS,
        &["--max-journal-bytes", "1M"],
        &["log", "1000000"],
    ));
    assert_ne!(code(&out), 0);
    let err = stderr(&out);
    assert!(
        err.contains("journal bytes limit reached") && err.contains("--max-journal-bytes"),
        "{err}"
    );
    let run = run_id(&err);
    let size = std::fs::metadata(journal_of(&ws, &run)).unwrap().len();
    assert!(size <= 1 << 20, "{size}");
}

/// Submits `component` as an agent job, kills its daemon with SIGKILL once `children`
/// of its jobs exist, restarts the daemon, and returns the agent job's id and output.
fn agent_job_across_a_daemon_kill(
    ws: &TestWs,
    agent_args: &[&str],
    tag: &str,
    children: usize,
) -> (String, String) {
    let mut d = ws.daemon(2);
    let mut args = vec!["--agent"];
    args.extend_from_slice(agent_args);
    let id = ws.submit(&args);
    let started = wait_for(Duration::from_secs(240), || {
        tagged(ws, tag).len() >= children
    });
    let _ = d.child.kill(); // SIGKILL
    let _ = d.child.wait();
    assert!(started, "{tag}: {:?}", tagged(ws, tag));
    let _d = ws.daemon(2);
    let (rc, out, err) = ws.follow(&id);
    assert_eq!(rc, 0, "{tag}: {err}");
    assert!(ws.entries("processing").is_empty(), "{tag}");
    (id, out)
}

/// Each child job of agent job `id` ran once: the jobs carrying `tag` are all its
/// descendants and all done, none submitted twice (by prompt).
fn children_ran_once(ws: &TestWs, id: &str, tag: &str) {
    let mine: Vec<(String, String, Value)> = jobs(ws)
        .into_iter()
        .filter(|(_, _, m)| crate::patterns::has_tag(m, tag))
        .collect();
    assert!(!mine.is_empty(), "{tag}");
    let mut prompts = Vec::new();
    for (state, job, _) in &mine {
        assert_eq!(state, "output", "{tag}: {job} is in {state}");
        prompts.push(ws.job_file("output", job, "prompt.txt"));
    }
    let before = prompts.len();
    prompts.sort();
    prompts.dedup();
    assert_eq!(
        prompts.len(),
        before,
        "{tag}: a child job of {id} ran twice"
    );
}

#[test]
fn an_agent_job_killed_with_its_daemon_resumes_and_trace_and_verify_read_its_journal() {
    let want = reference();
    let ws = TestWs::new();
    let durable = guest(FX_DURABLE);
    let (id, out) = agent_job_across_a_daemon_kill(
        &ws,
        &[durable.to_str().unwrap(), "--", P1, P2],
        "durable",
        1,
    );
    assert_eq!(body(&out).trim_end(), want.trim_end());
    let all = tagged(&ws, "durable");
    assert_eq!(all.len(), 2, "{all:?}");
    for (state, job) in &all {
        assert_eq!(ws.meta(state, job)["parent"], id.as_str());
    }
    let journal = ws.path.join("output").join(&id).join("journal.jsonl");
    assert!(journal.is_file());

    let w = ws.path.to_str().unwrap();
    let trace = Command::new(bin("nrvna"))
        .args(["trace", w, &id])
        .output()
        .unwrap();
    assert_eq!(code(&trace), 0, "{}", stderr(&trace));
    let shown = stdout(&trace);
    assert!(
        shown.contains("agents.call") && shown.contains("jobs 2,"),
        "{shown}"
    );
    let json = Command::new(bin("nrvna"))
        .args(["trace", w, &id, "--json"])
        .output()
        .unwrap();
    for line in stdout(&json).lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    let followed = Command::new(bin("nrvna"))
        .args(["trace", w, &id, "--follow"])
        .output()
        .unwrap();
    assert_eq!(code(&followed), 0);

    let verify = Command::new(bin("nrvna"))
        .args(["verify", w, &id])
        .output()
        .unwrap();
    assert_eq!(code(&verify), 0, "{}", stdout(&verify));
    assert!(stdout(&verify).contains("journal"), "{}", stdout(&verify));
    let text = std::fs::read_to_string(&journal).unwrap();
    std::fs::write(&journal, text.replacen("jobs.follow", "jobs.status", 1)).unwrap();
    let verify = Command::new(bin("nrvna"))
        .args(["verify", w, &id])
        .output()
        .unwrap();
    assert_eq!(code(&verify), 1, "{}", stdout(&verify));
    let report = stdout(&verify);
    assert!(
        report.contains("journal") && report.contains("line"),
        "{report}"
    );
}

#[test]
fn patterns_as_agent_jobs_finish_after_a_daemon_kill_without_duplicate_children() {
    let cases: [(nrvna_tests::Component, &str, &[&str], usize); 3] = [
        (
            MAP_REDUCE,
            "map-reduce",
            &["--max-tokens", "12", "--temp", "0", P1, P2, "Name a tree."],
            1,
        ),
        (
            LOOP,
            "loop-round",
            &[
                "--rounds",
                "3",
                "--stop",
                "QZXV-STOP",
                "--temp",
                "0",
                "--max-tokens",
                "16",
                "Write a short story",
            ],
            2,
        ),
        (
            DECOMPOSE,
            "decompose",
            &[
                "--max-depth",
                "1",
                "--max-subgoals",
                "2",
                "--max-tokens",
                "16",
                "--temp",
                "0",
                "Plan a birthday party",
            ],
            1,
        ),
    ];
    for (component, tag, args, children) in cases {
        let ws = TestWs::new();
        let path = guest(component);
        let mut agent_args = vec![path.to_str().unwrap(), "--"];
        agent_args.extend_from_slice(args);
        let (id, _) = agent_job_across_a_daemon_kill(&ws, &agent_args, tag, children);
        children_ran_once(&ws, &id, tag);
    }
}

#[test]
fn a_component_can_neither_read_nor_write_a_journal() {
    let ws = TestWs::new();
    // A first run makes a journal; a hostile run on the same workspace goes for it (and
    // for the one it is writing itself, in the same directory tree).
    let first = run_limited(exec_cmd(&ws, FX_HOSTILE, &[], &["read", "/etc/hostname"]));
    let run = run_id(&stderr(&first));
    let path = journal_of(&ws, &run);
    let before = std::fs::read(&path).unwrap();
    let shown = path.to_str().unwrap();
    let read = run_limited(exec_cmd(&ws, FX_HOSTILE, &[], &["read", shown]));
    assert!(stdout(&read).contains("refused"), "{}", stdout(&read));
    let write = run_limited(exec_cmd(&ws, FX_HOSTILE, &[], &["write", shown, "{}"]));
    assert_ne!(code(&write), 0);
    assert!(stderr(&write).contains("refused"), "{}", stderr(&write));
    let runs = ws.path.join(".runs");
    let read = run_limited(exec_cmd(
        &ws,
        FX_HOSTILE,
        &[],
        &["read", runs.to_str().unwrap()],
    ));
    assert!(stdout(&read).contains("refused"), "{}", stdout(&read));
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn trace_follow_shows_a_running_agents_calls_as_they_happen_and_ends_with_it() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let refine = guest(REFINE);
    let id = ws.submit(&[
        "--agent",
        refine.to_str().unwrap(),
        "--",
        "--rounds",
        "2",
        "--max-tokens",
        "48",
        "Name a colour",
    ]);
    let started = std::time::Instant::now();
    let mut trace = Command::new(bin("nrvna"))
        .args(["trace", ws.path.to_str().unwrap(), &id, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Lines as they come, with when they came.
    let out = trace.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .map(|l| (started.elapsed(), l))
            .collect::<Vec<_>>()
    });
    // When the agent job ended, as the workspace says.
    let ended = wait_for(Duration::from_secs(240), || {
        ws.entries("output").contains(&id) || ws.entries("failed").contains(&id)
    });
    let ended_at = started.elapsed();
    assert!(ended, "the agent job did not end");
    let exited = wait_for(Duration::from_secs(30), || {
        trace.try_wait().ok().flatten().is_some()
    });
    if !exited {
        let _ = trace.kill();
    }
    assert!(exited, "trace --follow did not end with the run");
    assert_eq!(trace.wait().unwrap().code(), Some(0));
    let lines = lines.join().unwrap();
    let first_submit = lines
        .iter()
        .find(|(_, l)| l.contains("jobs.submit"))
        .unwrap_or_else(|| panic!("no jobs.submit in {lines:?}"));
    assert!(
        first_submit.0 < ended_at,
        "the first call was shown at {:?}, after the run ended at {ended_at:?}",
        first_submit.0
    );
    assert!(
        lines.iter().any(|(_, l)| l.contains("run.end")),
        "{lines:?}"
    );
}
