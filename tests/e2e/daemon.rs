//! The daemon end to end on the real model.

use std::time::Duration;

use nrvna_tests::{Daemon, TestWs, code, model, stderr, stdout, wait_for};

#[test]
fn one_job_end_to_end() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let id = ws.submit(&["Name a colour.", "--max-tokens", "16"]);
    let (rc, out, err) = ws.follow(&id);
    assert_eq!(rc, 0, "{err}");
    assert!(!out.trim().is_empty(), "empty result");
    // Printed exactly as stored: no extra newline.
    assert_eq!(out, ws.job_file("output", &id, "result.txt"));
    let meta = ws.meta("output", &id);
    assert_eq!(meta["status"], "done");
    assert_eq!(meta["attempts"], 1);
    assert_eq!(meta["artifacts"], serde_json::json!(["result.txt"]));
    assert!(meta["completed_at"].is_string() && meta["started_at"].is_string());
    let generated = meta["generated_tokens"].as_u64().unwrap();
    assert!((1..=16).contains(&generated), "{generated}");
    assert!(meta["prompt_tokens"].as_u64().unwrap() > 3);
    // JSON view of the same job.
    let out = ws.flw(&[&id, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["status"], "done");
    assert_eq!(v["artifact_kind"], "text");
    assert_eq!(v["result"].as_str().unwrap(), out_text(&ws, &id));
}

fn out_text(ws: &TestWs, id: &str) -> String {
    ws.job_file("output", id, "result.txt")
}

#[test]
fn submit_and_follow_in_one_pipe() {
    // The seed scripts do `wrk ... | xargs flw ws` with no pause: flw must wait.
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let script = format!(
        "{} {} 'Say hi.' --max-tokens 8 | xargs {} {}",
        nrvna_tests::bin("wrk").display(),
        ws.path.display(),
        nrvna_tests::bin("flw").display(),
        ws.path.display()
    );
    let out = nrvna_tests::run(std::process::Command::new("sh").arg("-c").arg(&script));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!stdout(&out).is_empty());
}

#[test]
fn twenty_jobs_two_workers_each_done_exactly_once() {
    let ws = TestWs::new();
    let d = ws.daemon(2);
    let ids: Vec<String> = (0..20)
        .map(|i| {
            ws.submit(&[
                &format!("Count to {i}."),
                "--max-tokens",
                "8",
                "--tag",
                "bulk",
            ])
        })
        .collect();
    let out = ws.flw(&["--tag", "bulk", "-W", "--timeout", "300"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(ws.entries("output"), {
        let mut s = ids.clone();
        s.sort();
        s
    });
    assert!(ws.entries("failed").is_empty());
    let log = d.log_text();
    for id in &ids {
        assert_eq!(ws.meta("output", id)["attempts"], 1, "{id}");
        let runs = log.matches(&format!("{id}  running")).count();
        assert_eq!(runs, 1, "{id} ran {runs} times:\n{log}");
    }
    // The set listing is sorted ids, one per line.
    let listed = stdout(&ws.flw(&["--tag", "bulk"]));
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(listed.lines().collect::<Vec<_>>(), sorted);
}

#[test]
fn tags_children_and_json_sets() {
    let ws = TestWs::new();
    let _d = ws.daemon(2);
    let parent = ws.submit(&["Pick a topic.", "--max-tokens", "8"]);
    let kids: Vec<String> = (0..3)
        .map(|i| {
            ws.submit(&[
                &format!("Fact {i}."),
                "--parent",
                &parent,
                "--tag",
                "kids",
                "--max-tokens",
                "8",
            ])
        })
        .collect();
    let other = ws.submit(&["Unrelated.", "--tag", "other", "--max-tokens", "8"]);
    assert_eq!(
        code(&ws.flw(&["--children", &parent, "-W", "--timeout", "300"])),
        0
    );
    let listed = stdout(&ws.flw(&["--children", &parent]));
    assert_eq!(listed.lines().collect::<Vec<_>>(), kids);
    let ndjson = stdout(&ws.flw(&["--tag", "kids", "--json"]));
    let rows: Vec<serde_json::Value> = ndjson
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    for row in &rows {
        assert_eq!(row["status"], "done");
        assert_eq!(row["parent"], parent.as_str());
        assert!(row["result"].is_string());
    }
    assert_eq!(code(&ws.flw(&[&other, "--timeout", "300"])), 0);
    // Bad selectors are input errors.
    assert_eq!(code(&ws.flw(&["--tag", "no spaces"])), 2);
    assert_eq!(code(&ws.flw(&["--children", "../x"])), 2);
}

#[test]
fn stdin_prompt_runs() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let out = ws.wrk_stdin(&["--max-tokens", "8"], b"Say one word.\n");
    assert_eq!(code(&out), 0);
    let id = stdout(&out).trim().to_owned();
    let (rc, _, err) = ws.follow(&id);
    assert_eq!(rc, 0, "{err}");
}

#[test]
fn second_daemon_on_the_same_workspace_is_refused() {
    let ws = TestWs::new();
    let first = ws.daemon(1);
    let mut second = Daemon::spawn(&ws.path, &model(), 1, &[], &[]);
    let rc = second.wait_exit(Duration::from_secs(60));
    assert_eq!(rc, 1);
    let log = second.log_text();
    assert!(
        log.contains(&format!("owned by another nrvnad (pid {})", first.pid())),
        "{log}"
    );
    // status sees the first one.
    let out = nrvna_tests::run(
        std::process::Command::new(nrvna_tests::bin("nrvnad"))
            .args(["status".as_ref(), ws.path.as_os_str()]),
    );
    assert_eq!(code(&out), 0);
    assert!(stdout(&out).starts_with(&format!("ready (pid {}", first.pid())));
}

#[test]
fn graceful_stop_and_status_and_drain() {
    let ws = TestWs::new();
    let d = ws.daemon(1);
    let status = |ws: &TestWs| {
        code(&nrvna_tests::run(
            std::process::Command::new(nrvna_tests::bin("nrvnad"))
                .args(["status".as_ref(), ws.path.as_os_str()]),
        ))
    };
    assert_eq!(status(&ws), 0);
    let out = nrvna_tests::run(
        std::process::Command::new(nrvna_tests::bin("nrvnad"))
            .args(["stop".as_ref(), ws.path.as_os_str()]),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    drop(d);
    assert_eq!(status(&ws), 5);
    assert!(!ws.path.join(".nrvnad.pid").exists());
    // --drain: work through what is queued, then exit 0.
    let ids: Vec<String> = (0..3)
        .map(|i| ws.submit(&[&format!("Word {i}."), "--max-tokens", "4"]))
        .collect();
    let mut drain = Daemon::spawn(&ws.path, &model(), 2, &["--drain"], &[]);
    assert_eq!(
        drain.wait_exit(Duration::from_secs(300)),
        0,
        "{}",
        drain.log_text()
    );
    for id in &ids {
        assert!(ws.entries("output").contains(id));
    }
}

#[test]
fn sigterm_requeues_or_finishes_running_jobs() {
    let ws = TestWs::new();
    let mut d = Daemon::start(&ws.path, &model(), 1, &["--grace", "0"], &[]);
    let id = ws.submit(&[
        "Write a very long story about the sea.",
        "--max-tokens",
        "2000",
        "--temp",
        "0.9",
    ]);
    assert!(wait_for(Duration::from_secs(60), || ws
        .entries("processing")
        .contains(&id)));
    d.signal(rustix::process::Signal::TERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)), 0, "{}", d.log_text());
    // Grace 0: the job was interrupted and put back, its attempt not counted.
    assert_eq!(
        ws.entries("input/ready"),
        vec![id.clone()],
        "{}",
        d.log_text()
    );
    assert_eq!(ws.meta("input/ready", &id)["attempts"], 0);
    assert!(ws.entries("processing").is_empty());
}
