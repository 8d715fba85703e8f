//! Token streaming for every job: `processing/<id>/partial.txt` grows while the model
//! generates, and `flw WS ID --stream` prints it as it comes.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nrvna_tests::{TestWs, bin, wait_for};

#[test]
fn flw_stream_prints_a_wrk_jobs_tokens_as_they_come_then_exits_as_a_wait_does() {
    let ws = TestWs::new();
    let _daemon = ws.daemon(1);
    let id = ws.submit(&["Write a long story about a dragon.", "--max-tokens", "200"]);
    let started = Instant::now();
    let mut child = Command::new(bin("flw"))
        .arg(&ws.path)
        .arg(&id)
        .arg("--stream")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // While the job runs, partial.txt holds its text so far.
    let partial = ws.path.join("processing").join(&id).join("partial.txt");
    let mut seen_partial = String::new();
    wait_for(Duration::from_secs(60), || {
        seen_partial = std::fs::read_to_string(&partial).unwrap_or_default();
        !seen_partial.is_empty()
    });
    assert!(!seen_partial.is_empty(), "partial.txt never appeared");
    // The first bytes arrive on flw's stdout before the job has ended.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).unwrap();
    let first_at = started.elapsed();
    let state_then = ["processing", "output"]
        .into_iter()
        .find(|s| ws.path.join(s).join(&id).exists())
        .unwrap_or("?");
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let mut streamed = first.to_vec();
    streamed.extend(rest);
    let result = ws.job_file("output", &id, "result.txt");
    assert_eq!(String::from_utf8(streamed).unwrap(), result);
    assert_eq!(
        state_then, "processing",
        "the first token came only after the job ended ({first_at:?})"
    );
    // The live file is gone once the job has ended; output/ holds what it always did.
    assert!(
        !ws.path
            .join("output")
            .join(&id)
            .join("partial.txt")
            .exists()
    );
    assert!(ws.entries("processing").is_empty());
}

#[test]
fn flw_stream_on_an_ended_job_prints_its_result_and_a_failed_one_exits_1() {
    let ws = TestWs::new();
    let daemon = ws.daemon(1);
    let id = ws.submit(&["Say hi.", "--max-tokens", "8"]);
    let (code, out, _) = ws.follow(&id);
    assert_eq!(code, 0);
    let streamed = ws.flw(&[&id, "--stream"]);
    assert_eq!(streamed.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&streamed.stdout), out);
    // A cancelled job: the stream ends with the usual failure code.
    // A grammar holds the job to 1 500 words, so it is still running when cancelled (a
    // sampled count once ended after "1").
    let grammar = ws.scratch().join("long.gbnf");
    std::fs::write(&grammar, format!("root ::= \"{}\"\n", "one ".repeat(1500))).unwrap();
    let long = ws.submit(&[
        "Count to one thousand.",
        "--max-tokens",
        "2000",
        "--grammar",
        grammar.to_str().unwrap(),
    ]);
    let child = Command::new(bin("flw"))
        .arg(&ws.path)
        .arg(&long)
        .arg("--stream")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(60), || {
        ws.path
            .join("processing")
            .join(&long)
            .join("partial.txt")
            .exists()
    });
    let cancel = Command::new(bin("nrvna"))
        .args(["cancel"])
        .arg(&ws.path)
        .arg(&long)
        .output()
        .unwrap();
    assert!(cancel.status.success(), "{cancel:?}");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cancelled"),
        "{out:?}"
    );
    let missing = ws.flw(&["1_2_3", "--stream"]);
    assert_eq!(missing.status.code(), Some(4));
    drop(daemon);
}
