//! What a hostile component can make the host spend on its behalf (issue 15): every
//! budget is the run tree's (nested `agents.call` included), each stop names its limit,
//! and `nrvnad` goes on serving other jobs meanwhile and afterwards.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nrvna_tests::{Daemon, TEST_ENV, TestWs, bin, code, guest, model, stderr, stdout, wait_for};

use crate::components::FX_HOSTILE;
use crate::sandbox::{assert_daemon_serves, exec, show, spawn_exec};

/// A directory for `--dir` grants beside the workspace, and its `HOST:/data` grant.
fn data_dir(ws: &TestWs) -> (PathBuf, String) {
    let data = ws.scratch().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let grant = format!("{}:/data", data.display());
    (data, grant)
}

fn hostile_job(ws: &TestWs, args: &[&str]) -> String {
    let hostile = guest(FX_HOSTILE);
    let mut all = vec!["--agent", hostile.to_str().unwrap_or_default(), "--"];
    all.extend_from_slice(args);
    ws.submit(&all)
}

/// A plain job submitted now, to be followed later.
fn plain_job(ws: &TestWs) -> String {
    ws.submit(&["Say ok.", "--max-tokens", "4"])
}

fn assert_plain_job_done(ws: &TestWs, id: &str) {
    let (rc, out, err) = ws.follow(id);
    assert_eq!(rc, 0, "the daemon stopped serving: {err}");
    assert!(!out.trim().is_empty());
}

// ----- 1. file descriptors ---------------------------------------------------------------------

#[test]
fn open_handles_are_counted_per_run_tree_not_per_sandbox() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let (_data, grant) = data_dir(&ws);
    // 8 sandboxes (7 nested) of 300 files each: each is far under the old per-sandbox
    // cap, together they pass the run's 1024.
    let out = exec(
        &ws,
        FX_HOSTILE,
        &["--dir", &grant],
        &["hold-files", "/data", "300", "7", "0"],
    );
    assert_eq!(code(&out), 7, "{}", show(&out));
    assert!(
        stderr(&out).contains(
            "open handles limit reached: the run's sandboxes (nested agents included) hold \
             1024 handles"
        ) && stderr(&out).contains("(--max-handles)"),
        "{}",
        show(&out)
    );
    // The same tree fits a larger budget.
    let out = exec(
        &ws,
        FX_HOSTILE,
        &["--dir", &grant, "--max-handles", "4096"],
        &["hold-files", "/data", "300", "7", "0"],
    );
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert_eq!(
        stdout(&out).matches(": held 300").count(),
        8,
        "{}",
        show(&out)
    );
    assert_daemon_serves(&ws);
}

#[test]
fn a_run_tree_of_open_files_fails_alone_inside_the_daemon() {
    let ws = TestWs::new();
    let (_data, grant) = data_dir(&ws);
    let d = Daemon::start(&ws.path, &model(), 1, &["--dir", &grant], &[]);
    let agent = hostile_job(&ws, &["hold-files", "/data", "300", "7", "300"]);
    let plain = plain_job(&ws);
    let (rc, _, err) = ws.follow(&agent);
    assert_eq!(rc, 1, "{err}\n{}", d.log_text());
    assert!(
        err.contains("open handles limit reached") && err.contains("--max-handles"),
        "{err}"
    );
    assert_plain_job_done(&ws, &plain);
    assert_daemon_serves(&ws);
}

#[test]
fn a_claim_short_of_descriptors_leaves_the_job_queued() {
    // nrvnad under a hard limit of 256 descriptors, its agents allowed far more handles:
    // an agent holding every descriptor it can get makes the next claim fail for lack
    // of descriptors. That job must stay queued and run once they are free, not be
    // stranded in processing/.
    let ws = TestWs::new();
    let (_data, grant) = data_dir(&ws);
    let log = ws.scratch().join("nrvnad.log");
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg("ulimit -n 256 && exec \"$0\" \"$@\"")
        .arg(bin("nrvnad"))
        .arg(model())
        .arg(&ws.path)
        .arg("1")
        .args(["--dir", &grant, "--max-handles", "65536"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .env_remove("NRVNA_EMBED_MODEL");
    for (k, v) in TEST_ENV {
        cmd.env(k, v);
    }
    let mut d = Daemon {
        child: cmd.spawn().expect("spawn nrvnad"),
        log,
    };
    d.wait_ready(&ws.path);
    let agent = hostile_job(&ws, &["hold-files", "/data", "100000", "0", "6000"]);
    ws.wait_started(&agent, 1);
    std::thread::sleep(Duration::from_millis(1500));
    let plain = plain_job(&ws);
    let out = ws.flw(&[&plain, "--timeout", "120"]);
    assert_eq!(code(&out), 0, "{}\n{}", stderr(&out), d.log_text());
    assert!(
        d.log_text().contains("Too many open files"),
        "the claim never ran short of descriptors:\n{}",
        d.log_text()
    );
    let (rc, text, err) = ws.follow(&agent);
    assert_eq!(rc, 0, "{err}");
    assert!(text.contains("refused"), "{text}");
    assert!(ws.entries("processing").is_empty());
}

// ----- 2. disk -------------------------------------------------------------------------------

#[test]
fn kv_bytes_are_budgeted_per_agent() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let out = exec(
        &ws,
        FX_HOSTILE,
        &["--max-kv-bytes", "4M"],
        &["kv-fill", "100", "1048576"],
    );
    assert_eq!(code(&out), 0, "{}", show(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("stored 4\nrefused: JobError::Quota(\"kv bytes:"),
        "{text}"
    );
    assert!(
        text.contains("the limit of 4194304 bytes (--max-kv-bytes)"),
        "{text}"
    );
    // The budget is the agent's, across runs: the next run can add nothing.
    let out = exec(
        &ws,
        FX_HOSTILE,
        &["--max-kv-bytes", "4M"],
        &["kv-fill", "100", "1048576"],
    );
    // fill/0..3 are replaced in place; the fifth key is still refused.
    assert!(
        stdout(&out).starts_with("stored 4\nrefused: JobError::Quota(\"kv bytes:"),
        "{}",
        show(&out)
    );
    assert_daemon_serves(&ws);
}

#[test]
fn writes_through_grants_are_budgeted_per_run_tree() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let (data, grant) = data_dir(&ws);
    let out = exec(
        &ws,
        FX_HOSTILE,
        &["--dir", &grant, "--max-write-bytes", "10M"],
        &["write-flood", "/data/big", "100"],
    );
    assert_eq!(code(&out), 0, "{}", show(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("wrote 10 MiB\nrefused: "),
        "{}",
        show(&out)
    );
    assert!(
        stderr(&out).contains("write bytes limit reached")
            && stderr(&out).contains("the limit of 10485760 bytes (--max-write-bytes)"),
        "{}",
        show(&out)
    );
    let written = std::fs::metadata(data.join("big"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(written <= 10 << 20, "{written} bytes on disk");
    // A nested agent writes within the same run budget.
    let out = exec(
        &ws,
        FX_HOSTILE,
        &["--dir", &grant, "--max-write-bytes", "15M"],
        &["swallow", "write-flood", "/data/nested", "100"],
    );
    assert!(
        stdout(&out).starts_with("nested returned: wrote 15 MiB\nrefused: "),
        "{}",
        show(&out)
    );
    assert_daemon_serves(&ws);
}

#[test]
fn positioned_writes_are_budgeted_per_run_tree() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let (data, grant) = data_dir(&ws);
    // `pwrite` is WASI's `descriptor.write`, which goes through no stream.
    let out = exec(
        &ws,
        FX_HOSTILE,
        &["--dir", &grant, "--max-write-bytes", "10M"],
        &["pwrite-flood", "/data/big", "100"],
    );
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(
        stdout(&out).starts_with("wrote 10 MiB\nrefused: "),
        "{}",
        show(&out)
    );
    assert!(
        stderr(&out).contains("write bytes limit reached")
            && stderr(&out).contains("the limit of 10485760 bytes (--max-write-bytes)"),
        "{}",
        show(&out)
    );
    let written = std::fs::metadata(data.join("big"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(written <= 10 << 20, "{written} bytes on disk");
    // Streamed and positioned writes share the budget, nested agents included.
    let out = exec(
        &ws,
        FX_HOSTILE,
        &["--dir", &grant, "--max-write-bytes", "15M"],
        &["swallow", "pwrite-flood", "/data/nested", "100"],
    );
    assert!(
        stdout(&out).starts_with("nested returned: wrote 15 MiB\nrefused: "),
        "{}",
        show(&out)
    );
    assert_daemon_serves(&ws);
}

/// A PNG of `bytes` bytes (the header is all the queue checks).
fn png(path: &Path, bytes: usize) {
    let mut content = b"\x89PNG\r\n\x1a\n".to_vec();
    content.resize(bytes, 0);
    std::fs::write(path, content).expect("png");
}

#[test]
fn image_bytes_are_budgeted_per_run_and_errors_show_no_host_path() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let (data, grant) = data_dir(&ws);
    png(&data.join("img.png"), 1 << 20);
    // 16 images of 1 MiB a job: two jobs fit in 40 MiB, the third does not.
    let out = exec(
        &ws,
        FX_HOSTILE,
        &["--dir", &grant, "--max-image-bytes", "40M"],
        &["images", "100", "16", "/data/img.png"],
    );
    assert_eq!(code(&out), 0, "{}", show(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("submitted 2\nrefused: JobError::Quota(\"image bytes:"),
        "{text}"
    );
    assert!(text.contains("(--max-image-bytes)"), "{text}");
    // A refused non-image names the image as the component did, never a host path.
    std::fs::write(data.join("notes.png"), "not an image").expect("notes");
    let out = exec(
        &ws,
        FX_HOSTILE,
        &["--dir", &grant],
        &["images", "1", "1", "/data/notes.png"],
    );
    let text = stdout(&out);
    assert!(
        text.contains("Invalid(\"image \\\"/data/notes.png\\\": the content is not"),
        "{}",
        show(&out)
    );
    let host = ws.scratch().display().to_string();
    assert!(
        !text.contains(&host) && !text.contains(".staging"),
        "{text}"
    );
    assert_daemon_serves(&ws);
}

// ----- 4. FIFOs ------------------------------------------------------------------------------

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo")
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "mkfifo {}", path.display());
}

#[test]
fn a_fifo_hangs_neither_the_run_nor_the_process() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let (data, grant) = data_dir(&ws);
    mkfifo(&data.join("pipe"));
    mkfifo(&data.join("pipe.png"));
    let cases: [(&[&str], i32, &str); 2] = [
        // The guest's own open() blocks in the host: the wall clock stops the run and
        // the process exits although that thread never returns.
        (&["read", "/data/pipe"], 7, "wall-clock time limit reached"),
        // An image that is a FIFO is refused before it is opened.
        (
            &["images", "1", "1", "/data/pipe.png"],
            0,
            "is not a regular file",
        ),
    ];
    for (args, expected, message) in cases {
        let started = Instant::now();
        let mut child = spawn_exec(&ws, FX_HOSTILE, &["--dir", &grant, "--timeout", "2s"], args);
        let exited = wait_for(Duration::from_secs(30), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = child.kill();
        }
        let out = child.wait_with_output().expect("nrvna exec output");
        assert!(exited, "{args:?}: nrvna exec hung: {}", show(&out));
        assert_eq!(code(&out), expected, "{args:?}: {}", show(&out));
        assert!(
            stdout(&out).contains(message) || stderr(&out).contains(message),
            "{args:?}: {}",
            show(&out)
        );
        assert!(started.elapsed() < Duration::from_secs(30));
    }
    assert_daemon_serves(&ws);
}

#[test]
fn a_fifo_read_by_an_agent_job_ends_the_job_and_not_the_daemon() {
    let ws = TestWs::new();
    let (data, grant) = data_dir(&ws);
    mkfifo(&data.join("pipe"));
    let d = Daemon::start(
        &ws.path,
        &model(),
        1,
        &["--dir", &grant, "--timeout", "2s"],
        &[],
    );
    let agent = hostile_job(&ws, &["read", "/data/pipe"]);
    let plain = plain_job(&ws);
    let (rc, _, err) = ws.follow(&agent);
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("wall-clock time limit reached"), "{err}");
    assert_plain_job_done(&ws, &plain);
    assert_daemon_serves(&ws);
    // The thread still blocked in open() does not keep nrvnad from stopping.
    let started = Instant::now();
    let _ = d.stop();
    assert!(started.elapsed() < Duration::from_secs(30));
}

// ----- 8. logs -------------------------------------------------------------------------------

#[test]
fn the_log_budget_counts_what_is_written() {
    let ws = TestWs::new();
    let d = ws.daemon(1);
    // A million calls: more than a journal holds (a journaled run stops at its limit,
    // tests/e2e/journal.rs); this is about the log's own budget.
    let out = exec(
        &ws,
        FX_HOSTILE,
        &["--no-journal"],
        &["log-flood", "1000000"],
    );
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert_eq!(stdout(&out).trim(), "logged 1000000");
    let err = stderr(&out);
    assert!(
        err.contains("log limit of 1048576 bytes reached"),
        "{}",
        &err[err.len().saturating_sub(2000)..]
    );
    assert!(err.len() < 1 << 20, "{} bytes on stderr", err.len());

    // As an agent job (always journaled): a million calls pass the journal's limit, which
    // stops the job naming it, and the daemon's own log grows by less than the budget.
    let before = d.log_text().len();
    let plain = plain_job(&ws);
    let agent = hostile_job(&ws, &["log-flood", "1000000"]);
    let (rc, _, err) = ws.follow(&agent);
    assert_eq!(rc, 1, "{err}");
    assert!(
        err.contains("journal bytes limit reached") && err.contains("--max-journal-bytes"),
        "{err}"
    );
    assert_plain_job_done(&ws, &plain);
    let grown = d.log_text().len() - before;
    assert!(grown < 1 << 20, "the daemon log grew by {grown} bytes");
    assert_daemon_serves(&ws);

    // Line separators and bidi overrides are escaped, as control characters are.
    let out = exec(
        &ws,
        FX_HOSTILE,
        &[],
        &["log-flood", "1", "a\u{2028}b\u{202E}c"],
    );
    assert!(
        stderr(&out).contains(r"a\u{2028}b\u{202e}c"),
        "{}",
        show(&out)
    );
}

// ----- smaller things ------------------------------------------------------------------------

#[test]
fn returning_from_agents_call_costs_the_caller_no_cpu() {
    // 16 sandboxes, each sleeping 20 ms (one tick each, as any long host call costs) and
    // then waiting for the next: the returns are not guest CPU time. Charged a tick each,
    // they took the run past 25 ticks.
    let ws = TestWs::new();
    let (_data, grant) = data_dir(&ws);
    let out = exec(
        &ws,
        FX_HOSTILE,
        &["--dir", &grant, "--cpu", "250ms"],
        &["hold-files", "/data", "1", "15", "20"],
    );
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert_eq!(
        stdout(&out).matches(": held 1").count(),
        16,
        "{}",
        show(&out)
    );
}

#[test]
fn a_limit_in_a_nested_agent_stops_the_whole_run() {
    // The parent swallows whatever its child returns; a limit is not its to swallow.
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let out = exec(
        &ws,
        FX_HOSTILE,
        &["--memory", "64M"],
        &["swallow", "membomb"],
    );
    assert_eq!(code(&out), 7, "{}", show(&out));
    assert!(
        stderr(&out).contains("memory limit reached") && stderr(&out).contains("(--memory)"),
        "{}",
        show(&out)
    );
    assert!(!stdout(&out).contains("swallowed"), "{}", show(&out));
    assert_daemon_serves(&ws);
}

// ----- 5. results built for the guest --------------------------------------------------------

#[test]
fn host_work_for_a_run_is_charged_to_its_cpu_limit() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    // Each submit is one cheap call that makes the host convert an 800-property
    // schema (about 0.15 s of host CPU on the reference machine). Counted as one
    // epoch tick a call, 60 of them would pass under `--cpu 1s`.
    let out = exec(
        &ws,
        FX_HOSTILE,
        &["--cpu", "1s", "--timeout", "120s"],
        &["schema-hammer", "60", "200", "4"],
    );
    assert_eq!(code(&out), 7, "{}", show(&out));
    let err = stderr(&out);
    assert!(
        err.contains("cpu time limit reached: the run executed guest code, and host work for it, for more than 1s (--cpu)"),
        "{}",
        show(&out)
    );
    let made = err.matches("info: hammer ").count();
    assert!(
        (1..30).contains(&made),
        "{made} submits before the limit: {}",
        show(&out)
    );
    assert_daemon_serves(&ws);
}

// ----- 3. agent-runtime threads ---------------------------------------------------------------

#[test]
fn a_trivial_agent_job_stays_responsive_beside_slow_host_work() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    // Two agent jobs (as many as the daemon has agent-runtime threads) that keep the
    // host converting 800-property schemas, one submit after another.
    let slow: Vec<String> = (0..2)
        .map(|_| hostile_job(&ws, &["schema-hammer", "80", "200", "4"]))
        .collect();
    for id in &slow {
        ws.wait_started(id, 1);
    }
    let asked = Instant::now();
    let quick = hostile_job(&ws, &["env"]);
    let (rc, _, err) = ws.follow(&quick);
    let took = asked.elapsed();
    assert_eq!(rc, 0, "{err}");
    let still_running = slow
        .iter()
        .filter(|id| ws.path.join("processing").join(id).exists())
        .count();
    assert_eq!(
        still_running, 2,
        "the slow jobs ended before the quick one: the test showed nothing"
    );
    assert!(
        took < Duration::from_secs(5),
        "a trivial agent job took {took:?} beside two jobs doing slow host work"
    );
    for id in &slow {
        let (rc, text, err) = ws.follow(id);
        assert_eq!(rc, 0, "{err}");
        assert!(text.contains("submitted 80"), "{text}");
    }
    assert_daemon_serves(&ws);
}

#[test]
fn huge_ids_and_keys_are_cut_before_any_per_byte_work() {
    // 20 status calls and a kv.get with 15 MiB of control characters: each error is short
    // and cheap, well inside 5 s of wall clock.
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let bytes = (15 << 20).to_string();
    let out = exec(
        &ws,
        FX_HOSTILE,
        &["--timeout", "5s", "--cpu", "1s", "--memory", "200M"],
        &["huge-ids", "20", &bytes],
    );
    assert_eq!(code(&out), 0, "{}", show(&out));
    let longest: usize = stdout(&out)
        .trim()
        .strip_prefix("longest error ")
        .and_then(|n| n.strip_suffix(" bytes"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX);
    assert!(longest < 4000, "{}", show(&out));
    // The host's memory: the 15 MiB key and ids are copied in (the guest's to pass),
    // never escaped whole (that cost 255 MiB for one kv.get). Read while the guest
    // waits after its calls.
    let mut child = spawn_exec(
        &ws,
        FX_HOSTILE,
        &["--timeout", "20s", "--memory", "200M"],
        &["huge-ids", "20", &bytes, "1500"],
    );
    let mut peak_kib = 0u64;
    while matches!(child.try_wait(), Ok(None)) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()));
        if let Some(kib) = status.ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        }) {
            peak_kib = peak_kib.max(kib);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("nrvna exec output");
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(peak_kib > 0, "no peak memory read");
    assert!(
        peak_kib < PEAK_KIB_LIMIT,
        "nrvna exec peaked at {} MiB of RSS",
        peak_kib >> 10
    );
    assert_daemon_serves(&ws);
}

/// What `nrvna exec` may peak at running `huge-ids`, in KiB: measured at 45 MiB (the
/// guest's 15 MiB id, the host's copy of it, the process); escaping a key whole added
/// 255 MiB.
const PEAK_KIB_LIMIT: u64 = 128 << 10;

/// A job done with `result`, made in `ws` in-process before any daemon serves it.
fn finished_job(ws: &TestWs, result: Vec<u8>) -> nrvna_queue::JobId {
    use nrvna_queue::{Claim, Outcome, RESULT_FILE, Submission, Workspace};
    let queue = Workspace::create(&ws.path).unwrap();
    let id = queue
        .submit(Submission {
            prompt: "x".into(),
            ..Submission::default()
        })
        .unwrap();
    let Claim::Claimed(job) = queue.claim(&id).unwrap() else {
        panic!("cannot claim {id}");
    };
    let outcome = Outcome {
        artifacts: vec![(RESULT_FILE.into(), result)],
        ..Outcome::default()
    };
    queue.complete(&job, outcome).unwrap();
    id
}

#[test]
fn wait_all_returns_no_more_than_the_guest_can_hold() {
    // A finished job with a 256 KiB result, made before a daemon could claim it.
    let ws = TestWs::new();
    let id = finished_job(&ws, vec![b'x'; 256 << 10]);
    let _d = ws.daemon(1);
    // 2 000 copies are 512 MiB of results, for a guest allowed 64 MiB.
    let out = exec(
        &ws,
        FX_HOSTILE,
        &["--memory", "64M"],
        &["wait-all-copies", id.as_str(), "2000"],
    );
    assert_eq!(code(&out), 0, "{}", show(&out));
    let text = stdout(&out);
    let counts: Vec<usize> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split(' ')
        .filter_map(|w| w.parse().ok())
        .collect();
    let [ok, bytes, quota] = counts[..] else {
        panic!("{text}");
    };
    assert!(ok > 0 && ok + quota == 2000, "{text}");
    assert!(bytes <= 32 << 20, "{text}");
    assert!(
        text.contains("result bytes:") && text.contains("--memory"),
        "{text}"
    );
    assert_daemon_serves(&ws);
}

// ----- 6. JSON Schema conversion -------------------------------------------------------------

#[test]
fn a_schema_too_complex_to_convert_is_invalid_before_conversion() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let limit = "has 2000 properties; the limit is 200 per object";
    let out = exec(
        &ws,
        FX_HOSTILE,
        &["--timeout", "3s", "--cpu", "1s"],
        &["schema", "2000"],
    );
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(
        stdout(&out).contains("Invalid(\"json-schema: ") && stdout(&out).contains(limit),
        "{}",
        show(&out)
    );
    // A schema of a sane size still converts.
    let out = exec(&ws, FX_HOSTILE, &[], &["schema", "20"]);
    assert!(stdout(&out).contains("submit: Ok("), "{}", show(&out));
    // As an agent job, with a plain job alongside.
    let plain = plain_job(&ws);
    let agent = hostile_job(&ws, &["schema", "2000"]);
    let (rc, text, err) = ws.follow(&agent);
    assert_eq!(rc, 0, "{err}");
    assert!(text.contains(limit), "{text}");
    assert_plain_job_done(&ws, &plain);
    // wrk --json-schema gets the same check.
    let props: Vec<String> = (0..2000)
        .map(|i| format!(r#""p{i}":{{"type":"string"}}"#))
        .collect();
    let schema = ws.scratch().join("big.schema.json");
    std::fs::write(
        &schema,
        format!(
            r#"{{"type":"object","properties":{{{}}}}}"#,
            props.join(",")
        ),
    )
    .unwrap();
    let out = ws.wrk(&[
        "fill it",
        "--json-schema",
        schema.to_str().unwrap_or_default(),
    ]);
    assert_ne!(code(&out), 0, "{}", show(&out));
    assert!(stderr(&out).contains(limit), "{}", show(&out));
    assert_daemon_serves(&ws);
}

// ----- 7. compilation --------------------------------------------------------------------------

fn leb128(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A section: its id, then its content's length and the content.
fn section(id: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![id];
    out.extend(leb128(content.len()));
    out.extend_from_slice(content);
    out
}

/// A component holding one core module with one empty function that declares `locals`
/// i32 locals: cheap to write, costly to compile as `locals` grows.
fn component_with_locals(locals: usize) -> Vec<u8> {
    let mut body = vec![1];
    body.extend(leb128(locals));
    body.extend([0x7f, 0x0b]);
    let mut code = vec![1];
    code.extend(leb128(body.len()));
    code.extend(body);
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    module.extend(section(1, &[1, 0x60, 0, 0]));
    module.extend(section(3, &[1, 0]));
    module.extend(section(10, &code));
    let mut component = b"\0asm\x0d\0\x01\0".to_vec();
    component.extend(section(1, &module));
    component
}

/// A component holding one core module with one function whose body is `bytes` nops.
fn component_with_body(bytes: usize) -> Vec<u8> {
    let mut body = vec![0];
    body.extend(std::iter::repeat_n(0x01, bytes));
    body.push(0x0b);
    let mut code = vec![1];
    code.extend(leb128(body.len()));
    code.extend(body);
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    module.extend(section(1, &[1, 0x60, 0, 0]));
    module.extend(section(3, &[1, 0]));
    module.extend(section(10, &code));
    let mut component = b"\0asm\x0d\0\x01\0".to_vec();
    component.extend(section(1, &module));
    component
}

#[test]
fn a_function_body_past_the_compile_cap_is_refused_before_compiling() {
    let ws = TestWs::new();
    // A 1 MiB function body of blocks compiles for over 20 s; bodies are capped at 64 KiB.
    let path = ws.scratch().join("body.wasm");
    std::fs::write(&path, component_with_body(100_000)).unwrap();
    let out = nrvna_tests::run(
        Command::new(bin("nrvna"))
            .arg("exec")
            .arg(&path)
            .arg("--ws")
            .arg(&ws.path),
    );
    assert_eq!(code(&out), 1, "{}", show(&out));
    assert!(
        stderr(&out).contains(
            "compile cost: function #1 is 100002 bytes; the limit is 65536 bytes per function"
        ),
        "{}",
        show(&out)
    );
}

#[test]
fn compiling_is_bounded_before_and_while_it_runs() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let limit = "compile cost: function #1 declares 20000 locals; the limit is 10000 per function";
    let path = ws.scratch().join("locals.wasm");
    std::fs::write(&path, component_with_locals(20_000)).unwrap();
    let out = nrvna_tests::run(
        Command::new(bin("nrvna"))
            .arg("exec")
            .arg(&path)
            .arg("--ws")
            .arg(&ws.path),
    );
    assert_eq!(code(&out), 1, "{}", show(&out));
    assert!(stderr(&out).contains(limit), "{}", show(&out));
    // As an agent job, with a plain job alongside.
    let plain = plain_job(&ws);
    let agent = ws.submit(&["--agent", path.to_str().unwrap_or_default()]);
    let (rc, _, err) = ws.follow(&agent);
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains(limit), "{err}");
    assert_plain_job_done(&ws, &plain);
    // The run's wall clock counts compiling.
    let out = exec(
        &ws,
        FX_HOSTILE,
        &["--no-cache", "--timeout", "1ms"],
        &["panic"],
    );
    assert_eq!(code(&out), 7, "{}", show(&out));
    assert!(
        stderr(&out).contains(
            "wall-clock time limit reached: compiling the component took longer than 1ms, \
             the whole run's limit (--timeout)"
        ),
        "{}",
        show(&out)
    );
    assert_daemon_serves(&ws);
}

/// A component of `functions` functions, each a body of `depth` nested blocks: under
/// every per-function cap, and tens of milliseconds of compiling each (about 10 s of CPU
/// for 200 on the 2-core reference machine).
fn component_of_costly_functions(functions: usize, depth: usize) -> Vec<u8> {
    let mut body = vec![0];
    for _ in 0..depth {
        body.extend([0x02, 0x40]);
    }
    body.extend(std::iter::repeat_n(0x0b, depth + 1));
    let mut code = leb128(functions);
    for _ in 0..functions {
        code.extend(leb128(body.len()));
        code.extend(&body);
    }
    let mut declared = leb128(functions);
    declared.extend(std::iter::repeat_n(0, functions));
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    module.extend(section(1, &[1, 0x60, 0, 0]));
    module.extend(section(3, &declared));
    module.extend(section(10, &code));
    let mut component = b"\0asm\x0d\0\x01\0".to_vec();
    component.extend(section(1, &module));
    component
}

/// Processes compiling a component for nrvna (`nrvna __nrvna-compile-component ...`)
/// whose command line contains `mark`, or whose parent is `parent`.
fn compile_children(mark: Option<&str>, parent: Option<i32>) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let dir = entry.path();
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.contains(nrvna_sandbox::COMPILE_CHILD_ARG) {
            continue;
        }
        let ppid = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|s| {
                let after = s.rsplit_once(')')?.1.to_owned();
                after.split_whitespace().nth(1)?.parse::<i32>().ok()
            });
        if mark.is_some_and(|m| cmdline.contains(m)) || (parent.is_some() && ppid == parent) {
            found.push(format!("{}: {cmdline}", dir.display()));
        }
    }
    found
}

/// CPU time (user + system) a process has used, from /proc.
fn cpu_of(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of stat (11 and 12 after the name).
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

#[test]
fn a_compile_past_its_time_limit_is_killed_and_releases_the_cpu() {
    let ws = TestWs::new();
    // 300 functions: about 15 s of compiling on the reference machine, minutes on a
    // slower one; every one under the per-function caps, the whole under 16 MiB.
    let name = format!("slowcompile_{}", std::process::id());
    let path = ws.scratch().join(format!("{name}.wasm"));
    std::fs::write(&path, component_of_costly_functions(300, 16_000)).unwrap();
    let exec_slow = |flags: &[&str]| {
        let started = Instant::now();
        let out = nrvna_tests::run(
            Command::new(bin("nrvna"))
                .arg("exec")
                .arg(&path)
                .arg("--ws")
                .arg(&ws.path)
                .arg("--no-cache")
                .args(flags),
        );
        (out, started.elapsed())
    };
    let (out, took) = exec_slow(&["--max-compile-time", "2s"]);
    assert_eq!(code(&out), 7, "{}", show(&out));
    assert!(
        stderr(&out).contains(
            "compile time limit reached: compiling the component took longer than 2s \
             (--max-compile-time)"
        ),
        "{}",
        show(&out)
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // The compile was a child process, killed and reaped before exec exited.
    assert_eq!(compile_children(Some(&name), None), Vec::<String>::new());
    // The run's wall clock, when tighter, stops it as well.
    let (out, _) = exec_slow(&["--timeout", "1s"]);
    assert_eq!(code(&out), 7, "{}", show(&out));
    assert!(
        stderr(&out).contains(
            "wall-clock time limit reached: compiling the component took longer than 1s, \
             the whole run's limit (--timeout)"
        ),
        "{}",
        show(&out)
    );
    assert_eq!(compile_children(Some(&name), None), Vec::<String>::new());

    // agents.call compiles the callee under the same limit, and stops the run.
    let slow_grant = format!("slow={}", path.display());
    let _d = ws.daemon(1);
    let out = exec(
        &ws,
        FX_HOSTILE,
        &[
            "--no-cache",
            "--agent",
            &slow_grant,
            "--max-compile-time",
            "2s",
        ],
        &["call-agent", "slow"],
    );
    assert_eq!(code(&out), 7, "{}", show(&out));
    assert!(
        stderr(&out).contains("compile time limit reached") && !stdout(&out).contains("call"),
        "{}",
        show(&out)
    );
    assert_eq!(compile_children(Some(&name), None), Vec::<String>::new());
    drop(_d);

    // As an agent job: the job fails naming the limit, a plain job is served, and the
    // daemon spends no more CPU on the compile once the job has failed.
    let d = Daemon::start(&ws.path, &model(), 1, &["--max-compile-time", "2s"], &[]);
    let plain = plain_job(&ws);
    let agent = ws.submit(&["--agent", path.to_str().unwrap_or_default()]);
    let (rc, _, err) = ws.follow(&agent);
    assert_eq!(rc, 1, "{err}\n{}", d.log_text());
    assert!(
        err.contains("compile time limit reached") && err.contains("--max-compile-time"),
        "{err}"
    );
    assert_plain_job_done(&ws, &plain);
    assert_eq!(compile_children(None, Some(d.pid())), Vec::<String>::new());
    let before = cpu_of(d.pid());
    std::thread::sleep(Duration::from_secs(3));
    let spent = cpu_of(d.pid()).saturating_sub(before);
    assert!(
        spent < Duration::from_millis(500),
        "the idle daemon used {spent:?} of CPU in 3 s after the compile was stopped"
    );
    assert_daemon_serves(&ws);
}

// ----- host CPU of cheap calls ----------------------------------------------------------------

#[test]
fn host_work_in_status_and_wait_all_is_charged_to_the_cpu_limit() {
    let ws = TestWs::new();
    let id = finished_job(&ws, b"ok".to_vec());
    let _d = ws.daemon(1);
    // Each wait-all of 10 000 copies makes the host look up and read 10 000 results:
    // one call, far more than one 10 ms tick of host CPU. Charged a tick a call, 40 of
    // them (and 40 status calls) fit in --cpu 1s.
    let out = exec(
        &ws,
        FX_HOSTILE,
        &["--cpu", "1s", "--timeout", "120s"],
        &["host-calls", id.as_str(), "40", "10000"],
    );
    assert_eq!(code(&out), 7, "{}", show(&out));
    assert!(
        stderr(&out).contains(
            "cpu time limit reached: the run executed guest code, and host work for it, for \
             more than 1s (--cpu)"
        ),
        "{}",
        show(&out)
    );
    // A friendly amount of the same fits.
    let out = exec(
        &ws,
        FX_HOSTILE,
        &["--cpu", "1s"],
        &["host-calls", id.as_str(), "3", "10"],
    );
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert_eq!(stdout(&out).trim(), "made 3 of each");
    assert_daemon_serves(&ws);
}

// ----- descriptors of --dir grants ------------------------------------------------------------

#[test]
fn dir_grants_count_as_handles_in_every_sandbox_of_the_tree() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    // 8 granted directories, opened for each of 16 nested sandboxes that never touch a
    // file: 128 descriptors held by the run tree, past --max-handles 64.
    let mut flags: Vec<String> = Vec::new();
    for i in 0..8 {
        let dir = ws.scratch().join(format!("d{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        flags.push("--dir".into());
        flags.push(format!("{}:/d{i}", dir.display()));
    }
    let mut args = vec!["swallow"; 15];
    args.push("env");
    let with = |handles: &str| {
        let mut all: Vec<&str> = flags.iter().map(String::as_str).collect();
        all.extend(["--max-handles", handles]);
        exec(&ws, FX_HOSTILE, &all, &args)
    };
    let out = with("64");
    assert_eq!(code(&out), 7, "{}", show(&out));
    assert!(
        stderr(&out).contains("open handles limit reached")
            && stderr(&out).contains("(--max-handles)"),
        "{}",
        show(&out)
    );
    let out = with("4096");
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert_daemon_serves(&ws);
}
