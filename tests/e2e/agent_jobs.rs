//! Agent jobs in the daemon (`wrk WS --agent X.wasm`) and cancellation of queued and
//! running jobs (`nrvna cancel`).

use std::process::Command;

use nrvna_tests::{TestWs, bin, code, guest, run, stderr, stdout};

use crate::components::FX_ECHO;

fn nrvna(args: &[&str]) -> std::process::Output {
    run(Command::new(bin("nrvna")).args(args))
}

#[test]
fn an_agent_job_runs_in_the_daemon_and_its_jobs_are_its_children() {
    let ws = TestWs::new();
    let d = ws.daemon(2);
    let echo = guest(FX_ECHO);
    let id = ws.submit(&["--agent", echo.to_str().unwrap(), "--", "Say hello.", "6"]);
    let (rc, out, err) = ws.follow(&id);
    assert_eq!(rc, 0, "{err}\n{}", d.log_text());
    let meta = ws.meta("output", &id);
    assert_eq!(meta["mode"], "agent");
    assert_eq!(meta["agent_args"], serde_json::json!(["Say hello.", "6"]));
    // echo returns `child-id|prompt_tokens|generated_tokens|text`.
    let child = out.split('|').next().unwrap().to_owned();
    let kids = stdout(&ws.flw(&["--children", &id]));
    assert_eq!(kids.trim(), child, "the agent's job is its child");
    assert_eq!(ws.meta("output", &child)["parent"], id.as_str());
    assert_eq!(ws.meta("output", &id)["status"], "done");
    // The daemon still serves plain jobs.
    let plain = ws.submit(&["Say hi.", "--max-tokens", "4"]);
    assert_eq!(ws.follow(&plain).0, 0);
}

#[test]
fn an_agent_job_that_returns_an_error_fails_with_it() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let echo = guest(FX_ECHO);
    // No arguments: the component returns its usage as an error.
    let id = ws.submit(&["--agent", echo.to_str().unwrap()]);
    let (rc, _, err) = ws.follow(&id);
    assert_eq!(rc, 1);
    assert!(err.contains("usage: echo"), "{err}");
}

#[test]
fn wrk_refuses_a_file_that_is_not_a_component() {
    let ws = TestWs::new();
    let fake = ws.scratch().join("fake.wasm");
    std::fs::write(&fake, b"\0asm\x01\0\0\0").unwrap(); // a core module header
    let out = ws.wrk(&["--agent", fake.to_str().unwrap()]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("not a WebAssembly component"),
        "{}",
        stderr(&out)
    );
    assert!(ws.entries("input/ready").is_empty());
}

#[test]
fn cancel_a_queued_job_and_a_running_one_mid_batch() {
    let ws = TestWs::new();
    let queued = ws.submit(&["Never runs."]);
    let out = nrvna(&["cancel", ws.path.to_str().unwrap(), &queued]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = ws.flw(&[&queued]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("cancelled"));

    let d = ws.daemon(2);
    let long = [
        "Write a very long story about the sea.",
        "--max-tokens",
        "600",
        "--temp",
        "0.9",
    ];
    let victim = ws.submit(&long);
    let keeper = ws.submit(&["Count from one to five.", "--max-tokens", "24"]);
    ws.wait_started(&victim, 1);
    let out = nrvna(&["cancel", ws.path.to_str().unwrap(), &victim]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let (rc, _, err) = ws.follow(&victim);
    assert_eq!(rc, 1, "{}", d.log_text());
    assert!(err.contains("cancelled"), "{err}");
    let meta = ws.meta("failed", &victim);
    assert_eq!(meta["status"], "cancelled");
    // The other job in the batch is undisturbed.
    let (rc, out, err) = ws.follow(&keeper);
    assert_eq!(rc, 0, "{err}");
    assert!(!out.is_empty());
    assert!(
        ws.path
            .join(".cancel")
            .read_dir()
            .map(|mut d| d.next().is_none())
            .unwrap_or(true)
    );
    // Cancelling a finished job is refused with its own exit code.
    assert_eq!(
        code(&nrvna(&["cancel", ws.path.to_str().unwrap(), &keeper])),
        6
    );
}
