//! Several daemons on one workspace (`nrvnad --shared`, docs/scale-out.md): every job done
//! exactly once, a killed daemon's jobs taken over once its lease lapses, and a daemon
//! whose clock is hours off stealing nothing.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nrvna_tests::{Daemon, TestWs, bin, code, guest, model, stderr, wait_for};

use crate::components::FX_ECHO;
use crate::http::{base_url, post_json};

/// Starts `nrvnad --shared --node-id NODE --lease LEASE` on `ws` (its wall clock moved
/// by OFFSET, e.g. `+2h`, when `clock` is given) and waits until its heartbeat says it is
/// ready.
fn shared_daemon(
    ws: &TestWs,
    node: &str,
    lease: &str,
    clock: Option<&str>,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Daemon {
    let mut args = vec!["--shared", "--node-id", node, "--lease", lease];
    args.extend_from_slice(extra);
    let mut env = env.to_vec();
    // Debian's libfaketime, preloaded into nrvnad itself (the `faketime` program forks:
    // killing it would leave nrvnad running); scripts/setup installs it. Setting a
    // machine's clock moves its wall clock (CLOCK_REALTIME), never its monotonic clock,
    // which counts from boot: so is it here. (A faked monotonic clock would also break
    // every timed wait in the process, whose deadlines the kernel reads unfaked.)
    let lib: PathBuf;
    if let Some(offset) = clock {
        lib = libfaketime();
        env.extend([
            ("LD_PRELOAD", lib.to_str().expect("a UTF-8 library path")),
            ("FAKETIME", offset),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ]);
    }
    let mut daemon = Daemon::spawn(&ws.path, &model(), 2, &args, &env);
    let beat = ws.path.join(".nodes").join(node);
    let ready = wait_for(Duration::from_secs(180), || {
        if !daemon.is_running() {
            return true;
        }
        fs::read(&beat)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["info"].is_object())
    });
    assert!(
        ready && daemon.is_running(),
        "node {node} not ready:\n{}",
        daemon.log_text()
    );
    daemon
}

/// Debian's libfaketime (package libfaketime, a dependency of faketime).
fn libfaketime() -> PathBuf {
    let found = fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|arch| arch.path().join("faketime/libfaketime.so.1"))
        .find(|lib| lib.is_file());
    found.unwrap_or_else(|| {
        panic!("libfaketime.so.1 is missing under /usr/lib: scripts/setup installs Debian's libfaketime")
    })
}

/// Every job's directory, by state directory: each id must be in exactly one.
fn places(ws: &TestWs) -> BTreeMap<String, Vec<String>> {
    let mut at: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for dir in ["input/ready", "processing", "output", "failed"] {
        for id in ws.entries(dir) {
            at.entry(id).or_default().push(dir.to_owned());
        }
    }
    at
}

/// How many times the logs say `id` did `what` (`running`, `done`, `requeued`).
fn said(logs: &[String], id: &str, what: &str) -> usize {
    logs.iter()
        .map(|l| l.matches(&format!("{id}  {what}")).count())
        .sum()
}

/// The daemons' logs once each of `ids` has its `done` line: a daemon prints it just
/// after the job reaches `output/`, where a waiter may already have seen it.
fn logs_when_done(daemons: &[&Daemon], ids: &[String]) -> Vec<String> {
    let mut logs = Vec::new();
    wait_for(Duration::from_secs(30), || {
        logs = daemons.iter().map(|d| d.log_text()).collect();
        ids.iter().all(|id| said(&logs, id, "done") >= 1)
    });
    logs
}

fn submit_batch(ws: &TestWs, n: usize, tokens: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            ws.submit(&[
                &format!("Name a number near {i}."),
                "--max-tokens",
                tokens,
                "--tag",
                "bulk",
            ])
        })
        .collect()
}

fn wait_batch(ws: &TestWs, daemons: &[&Daemon]) {
    let out = ws.flw(&["--tag", "bulk", "-W", "--timeout", "600"]);
    let logs: Vec<String> = daemons.iter().map(|d| d.log_text()).collect();
    assert_eq!(code(&out), 0, "{}\n{}", stderr(&out), logs.join("\n----\n"));
}

#[test]
fn three_daemons_run_sixty_jobs_each_exactly_once() {
    let ws = TestWs::new();
    let a = shared_daemon(&ws, "node-a", "2s", None, &["--http", "127.0.0.1:0"], &[]);
    let b = shared_daemon(&ws, "node-b", "2s", None, &[], &[]);
    let c = shared_daemon(&ws, "node-c", "2s", None, &[], &[]);
    // The status commands see all three.
    let status = nrvna_tests::run(
        Command::new(bin("nrvnad"))
            .args(["status"])
            .arg(&ws.path)
            .arg("--json"),
    );
    assert_eq!(code(&status), 0, "{}", stderr(&status));
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["ready"], true);
    assert_eq!(v["nodes"].as_array().map(Vec::len), Some(3), "{v}");

    let mut ids = submit_batch(&ws, 60, "8");
    // An agent job and an HTTP request are served on a shared workspace too.
    let echo = guest(FX_ECHO);
    let agent = ws.submit(&["--agent", echo.to_str().unwrap(), "--", "Say hi.", "4"]);
    let (status_code, _, body) = post_json(
        &format!("{}/v1/chat/completions", base_url(&a)),
        r#"{"model":"SmolLM2-135M-Instruct.Q4_1","messages":[{"role":"user","content":"Say hi."}],"max_tokens":4}"#,
        &[],
    );
    assert_eq!(status_code, 200, "{body}");
    wait_batch(&ws, &[&a, &b, &c]);
    let (rc, out, err) = ws.follow(&agent);
    assert_eq!(rc, 0, "{err}");
    let child = out.split('|').next().unwrap().to_owned();
    ids.extend([agent, child]);

    let logs = logs_when_done(&[&a, &b, &c], &ids);
    let at = places(&ws);
    let mut by_node: BTreeMap<String, usize> = BTreeMap::new();
    for id in &ids {
        assert_eq!(at.get(id), Some(&vec!["output".to_owned()]), "{id}");
        let meta = ws.meta("output", id);
        assert_eq!(meta["attempts"], 1, "{id}: {meta}");
        assert_eq!(meta["status"], "done", "{id}");
        assert!(meta.get("claim").is_none(), "{id}: {meta}");
        let node = meta["node"].as_str().unwrap().to_owned();
        let claim: serde_json::Value =
            serde_json::from_str(&ws.job_file("output", id, "claim.json")).unwrap();
        assert_eq!(claim["node"], node.as_str(), "{id}");
        assert_eq!(said(&logs, id, "running"), 1, "{id} ran more than once");
        assert_eq!(said(&logs, id, "done"), 1, "{id}");
        *by_node.entry(node).or_default() += 1;
    }
    assert!(ws.entries("failed").is_empty() && ws.entries("processing").is_empty());
    assert_eq!(by_node.values().sum::<usize>(), 62);
    assert!(by_node.len() >= 2, "one node did everything: {by_node:?}");
    // Each daemon says goodbye and removes its heartbeat.
    for d in [a, b, c] {
        assert_eq!(d.stop(), 0);
    }
    assert!(ws.entries(".nodes").iter().all(|n| n.ends_with(".lock")));
}

/// The ids `processing/` shows claimed by `node` now.
fn claimed_by(ws: &TestWs, node: &str) -> HashSet<String> {
    ws.entries("processing")
        .into_iter()
        .filter(|id| {
            fs::read_to_string(ws.path.join("processing").join(id).join("claim.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|c| c["node"] == node)
        })
        .collect()
}

#[test]
fn a_killed_daemons_jobs_are_requeued_after_its_lease_and_done_once() {
    let ws = TestWs::new();
    let a = shared_daemon(&ws, "node-a", "2s", None, &[], &[]);
    let mut b = shared_daemon(&ws, "node-b", "2s", None, &[], &[]);
    let c = shared_daemon(&ws, "node-c", "2s", None, &[], &[]);
    let ids = submit_batch(&ws, 30, "48");
    assert!(
        wait_for(Duration::from_secs(120), || !claimed_by(&ws, "node-b")
            .is_empty()),
        "node-b never claimed a job:\n{}",
        b.log_text()
    );
    b.signal(rustix::process::Signal::KILL);
    b.wait_exit(Duration::from_secs(10));
    // What node-b had started and not finished, from its own log.
    let b_log = b.log_text();
    let orphans: Vec<&String> = ids
        .iter()
        .filter(|id| said(std::slice::from_ref(&b_log), id, "running") == 1)
        .filter(|id| said(std::slice::from_ref(&b_log), id, "done") == 0)
        .collect();
    assert!(!orphans.is_empty(), "node-b had nothing running:\n{b_log}");
    wait_batch(&ws, &[&a, &c]);

    let logs = logs_when_done(&[&a, &b, &c], &ids);
    let at = places(&ws);
    for id in &ids {
        assert_eq!(at.get(id), Some(&vec!["output".to_owned()]), "{id}");
        assert_eq!(said(&logs, id, "done"), 1, "{id} done more than once");
        let meta = ws.meta("output", id);
        if orphans.contains(&id) {
            assert_eq!(meta["attempts"], 2, "{id}: {meta}");
            assert_ne!(meta["node"], "node-b", "{id}");
            assert_eq!(said(&logs, id, "requeued"), 1, "{id}");
        } else {
            assert_eq!(meta["attempts"], 1, "{id}: {meta}");
        }
    }
    assert!(ws.entries("failed").is_empty());
    // The takeover waited for the lease: nobody requeued before it lapsed.
    for line in logs.iter().flat_map(|l| l.lines()) {
        assert!(
            !line.contains("  requeued") || line.contains("lease lapsed"),
            "{line}"
        );
    }
}

/// A job held running for a long time whatever the machine's speed: a grammar of `words`
/// fixed words.
fn long_job(ws: &TestWs, grammar: &Path, n: usize) -> String {
    ws.submit(&[
        &format!("Say river {n}."),
        "--max-tokens",
        "1800",
        "--temp",
        "0",
        "--grammar",
        grammar.to_str().unwrap(),
    ])
}

#[test]
fn daemons_with_clocks_hours_off_steal_no_live_job_and_still_take_over_a_dead_ones() {
    // The preloaded library moves the wall clock of the process it is loaded into.
    let probe = Command::new("date")
        .arg("+%s")
        .env("LD_PRELOAD", libfaketime())
        .env("FAKETIME", "+2h")
        .output()
        .unwrap();
    let faked: u64 = String::from_utf8_lossy(&probe.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        faked >= now + 7000,
        "libfaketime did not move the clock: {faked} vs {now}"
    );
    let ws = TestWs::new();
    let long_ctx = [("NRVNA_CTX", "2048")];
    let mut a = shared_daemon(&ws, "node-a", "1s", None, &[], &long_ctx);
    let grammar: PathBuf = ws.scratch().join("long.gbnf");
    fs::write(
        &grammar,
        format!("root ::= \"{}\"\n", "river ".repeat(1500)),
    )
    .unwrap();
    let jobs = [long_job(&ws, &grammar, 1), long_job(&ws, &grammar, 2)];
    assert!(
        wait_for(Duration::from_secs(120), || claimed_by(&ws, "node-a").len()
            == 2),
        "node-a did not start both jobs:\n{}",
        a.log_text()
    );
    // Two daemons whose wall clocks are two hours ahead and behind.
    let ahead = shared_daemon(&ws, "ahead", "1s", Some("+2h"), &[], &long_ctx);
    let behind = shared_daemon(&ws, "behind", "1s", Some("-2h"), &[], &long_ctx);
    // Several leases pass while node-a is alive: its jobs stay its own.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        claimed_by(&ws, "node-a"),
        jobs.iter().cloned().collect::<HashSet<_>>(),
        "node-a's live jobs were taken (or ended too soon for the test to judge)\n{}\n{}",
        ahead.log_text(),
        behind.log_text()
    );
    for id in &jobs {
        assert_eq!(ws.meta("processing", id)["attempts"], 1);
    }
    // node-a dies: the skewed daemons take its jobs over once its lease lapses.
    a.signal(rustix::process::Signal::KILL);
    a.wait_exit(Duration::from_secs(10));
    for id in &jobs {
        let (rc, _, err) = ws.follow(id);
        assert_eq!(rc, 0, "{err}\n{}\n{}", ahead.log_text(), behind.log_text());
        let meta = ws.meta("output", id);
        assert_eq!(meta["attempts"], 2, "{meta}");
        let node = meta["node"].as_str().unwrap();
        assert!(node == "ahead" || node == "behind", "{meta}");
        // The clock offset was real: the start the skewed daemon recorded is hours off.
        let started = chrono::DateTime::parse_from_rfc3339(meta["started_at"].as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc);
        let off = (started - chrono::Utc::now()).num_minutes().abs();
        assert!(
            (100..=140).contains(&off),
            "started_at {started} is {off} min off"
        );
    }
    let logs = logs_when_done(&[&a, &ahead, &behind], &jobs);
    for id in &jobs {
        assert_eq!(said(&logs, id, "requeued"), 1, "{id}");
        assert_eq!(said(&logs, id, "done"), 1, "{id}");
    }
}

#[test]
fn a_daemon_that_lists_instead_of_watching_picks_jobs_up() {
    // What a daemon on NFS or CephFS does (`--watch auto` chooses it there by statfs);
    // forced here on a local disk.
    let ws = TestWs::new();
    let d = shared_daemon(
        &ws,
        "lister",
        "2s",
        None,
        &["--watch", "poll", "--poll-interval", "300ms"],
        &[],
    );
    assert!(
        d.log_text()
            .contains("--watch poll: listing input/ready every 0.30s"),
        "{}",
        d.log_text()
    );
    let ids = submit_batch(&ws, 4, "4");
    wait_batch(&ws, &[&d]);
    for id in &ids {
        assert_eq!(ws.meta("output", id)["node"], "lister");
    }
}
