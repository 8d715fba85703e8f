//! The agent sandbox end to end: `nrvna exec` running the fixture components of
//! `tests/guests/` against the real daemon and model. Friendly components first, then
//! hostile ones; each hostile test checks the stop, its message, and that the daemon
//! still serves other jobs afterwards.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nrvna_tests::{
    Component, Daemon, TestWs, bin, code, guest, model, run, stderr, stdout, wait_for,
};

use crate::components::{FX_ECHO, FX_FANOUT, FX_HOSTCALLS, FX_HOSTILE, FX_KV, FX_NEST, REFINE};

/// The command `nrvna exec COMPONENT --ws WS FLAGS -- ARGS`.
fn exec_command(ws: &TestWs, component: Component, flags: &[&str], args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("nrvna"));
    cmd.arg("exec")
        .arg(guest(component))
        .arg("--ws")
        .arg(&ws.path)
        .args(flags)
        .arg("--")
        .args(args);
    cmd
}

/// Runs `nrvna exec COMPONENT --ws WS FLAGS -- ARGS` to its end.
pub(crate) fn exec(ws: &TestWs, component: Component, flags: &[&str], args: &[&str]) -> Output {
    run(&mut exec_command(ws, component, flags, args))
}

/// Where the host keeps a component's own storage (its kv) in the workspace.
fn agent_dir(ws: &TestWs, component: Component) -> PathBuf {
    ws.path.join(".agents").join(component.name)
}

pub(crate) fn show(out: &Output) -> String {
    format!(
        "exit {}\n--- stdout\n{}\n--- stderr\n{}",
        code(out),
        stdout(out),
        stderr(out)
    )
}

/// A short job through wrk and flw must still succeed.
pub(crate) fn assert_daemon_serves(ws: &TestWs) {
    let id = ws.submit(&["Say ok.", "--max-tokens", "4"]);
    let (rc, out, err) = ws.follow(&id);
    assert_eq!(rc, 0, "the daemon stopped serving: {err}");
    assert!(!out.trim().is_empty());
}

// ----- friendly components ------------------------------------------------------------------

#[test]
fn submit_and_follow_round_trip_through_the_daemon() {
    let ws = TestWs::new();
    let _d = ws.daemon(2);
    let out = exec(&ws, FX_ECHO, &[], &["Name a colour.", "8"]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    let text = stdout(&out);
    let mut parts = text.trim_end_matches('\n').splitn(4, '|');
    let id = parts.next().unwrap_or_default().to_owned();
    let prompt_tokens: u32 = parts.next().unwrap_or("x").parse().expect("prompt tokens");
    let generated: u32 = parts
        .next()
        .unwrap_or("x")
        .parse()
        .expect("generated tokens");
    let answer = parts.next().unwrap_or_default();
    assert!(prompt_tokens > 0 && (1..=8).contains(&generated), "{text}");
    // The text is exactly the job's result.txt, and the job carries the guest's options.
    assert_eq!(ws.job_file("output", &id, "result.txt"), answer);
    let meta = ws.meta("output", &id);
    assert_eq!(meta["max_tokens"], 8);
    assert_eq!(meta["tags"][0], "fx-echo");
    assert_eq!(meta["generated_tokens"], generated);
    assert!(meta.get("parent").is_none(), "{meta}");
    // The component's log reaches stderr, labelled with its name.
    assert!(
        stderr(&out).contains(&format!("[{}] info: submitted {id}", FX_ECHO.name)),
        "{}",
        show(&out)
    );
}

#[test]
fn exec_with_a_model_runs_its_own_daemon() {
    let ws = TestWs::new();
    let out = nrvna_tests::exec_with_model(&ws, FX_ECHO, &["Name a fruit.", "6"], &[]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    let id = stdout(&out)
        .split('|')
        .next()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(ws.entries("output"), vec![id]);
    // The in-process daemon is gone with the command.
    assert!(!ws.path.join(".nrvnad.ready").exists());
    assert!(!ws.path.join(".nrvnad.pid").exists());
}

#[test]
fn parallel_submit_then_wait_any_and_wait_all() {
    let ws = TestWs::new();
    let _d = ws.daemon(4);
    let prompts = [
        "Name a colour.",
        "Name a fruit.",
        "Name a city.",
        "Name a tool.",
    ];
    let out = exec(&ws, FX_FANOUT, &[], &prompts);
    assert_eq!(code(&out), 0, "{}", show(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    for (i, line) in lines[..4].iter().enumerate() {
        assert!(line.starts_with(&format!("{i} ok ")), "{text}");
    }
    let first: usize = lines[4]
        .strip_prefix("first ")
        .and_then(|n| n.parse().ok())
        .expect("first <index>");
    assert!(first < 4);
    assert_eq!(ws.entries("output").len(), 4);
}

#[test]
fn kv_persists_across_runs_per_agent() {
    let ws = TestWs::new();
    for expected in ["1", "2", "3"] {
        let out = exec(&ws, FX_KV, &[], &["count"]);
        assert_eq!(code(&out), 0, "{}", show(&out));
        assert_eq!(stdout(&out).trim(), expected);
    }
    let stored = agent_dir(&ws, FX_KV).join("kv/k_runs~count");
    assert_eq!(std::fs::read_to_string(&stored).expect("stored value"), "3");
    // Another name is another namespace.
    let out = exec(&ws, FX_KV, &["--name", "other"], &["count"]);
    assert_eq!(stdout(&out).trim(), "1", "{}", show(&out));
    let out = exec(&ws, FX_KV, &[], &["list", "runs/"]);
    assert_eq!(stdout(&out).trim(), "runs/count");
    let out = exec(&ws, FX_KV, &[], &["delete", "runs/count"]);
    assert_eq!(stdout(&out).trim(), "Ok(None)", "{}", show(&out));
    assert!(!stored.exists());
}

#[test]
fn kv_refuses_hostile_keys_and_oversize_values() {
    let ws = TestWs::new();
    let out = exec(&ws, FX_KV, &[], &["bad-keys"]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    let text = stdout(&out);
    for line in text.lines() {
        if line.starts_with("set \"/abs\"") {
            // A key is never a path: `/abs` is a valid key, stored inside the namespace.
            assert!(line.ends_with("Ok(())"), "{line}");
        } else {
            assert!(line.contains("Invalid"), "{line}");
        }
    }
    assert!(text.contains("the limit is 1048576 bytes"), "{text}");
    assert!(agent_dir(&ws, FX_KV).join("kv/k_~abs").is_file());
    assert!(!ws.path.join(".agents/escape").exists());
    assert!(!agent_dir(&ws, FX_KV).join("escape").exists());
}

#[test]
fn the_host_calls_the_bench_times_all_succeed() {
    // bench-sandbox divides the time of N calls by N: a failing call would skew it.
    let ws = TestWs::new();
    for kind in ["log", "routes", "status", "kv-get"] {
        let out = exec(&ws, FX_HOSTCALLS, &[], &[kind, "3"]);
        assert_eq!(code(&out), 0, "{kind}: {}", show(&out));
        assert_eq!(stdout(&out).trim(), "3", "{kind}: {}", show(&out));
    }
}

#[test]
fn agents_call_nests_and_granted_agents_get_their_own_storage() {
    let ws = TestWs::new();
    let out = exec(&ws, FX_NEST, &[], &["3"]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert_eq!(stdout(&out).trim(), "nest(3)>nest(2)>nest(1)>nest(0)");

    let helper = format!("helper={}", guest(FX_KV).display());
    let out = exec(
        &ws,
        FX_NEST,
        &["--agent", &helper],
        &["call", "helper", "count"],
    );
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert_eq!(stdout(&out).trim(), "1");
    assert!(ws.path.join(".agents/helper/kv/k_runs~count").is_file());

    // Not granted: denied, and the component can say so.
    let out = exec(&ws, FX_NEST, &[], &["call", "helper", "count"]);
    assert_eq!(code(&out), 1, "{}", show(&out));
    assert!(stderr(&out).contains("Denied") && stderr(&out).contains("not granted"));
}

#[test]
fn grants_env_and_directories_explicitly() {
    let ws = TestWs::new();
    let out = exec(&ws, FX_HOSTILE, &["--env", "GREETING=hi"], &["env"]);
    // Only what was granted: none of the host's variables (PATH, HOME, ...).
    assert_eq!(stdout(&out).trim(), "GREETING=hi", "{}", show(&out));

    let data = ws.scratch().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(data.join("in.txt"), "granted text").expect("data file");
    let rw = format!("{}:/data", data.display());
    let out = exec(&ws, FX_HOSTILE, &["--dir", &rw], &["read", "/data/in.txt"]);
    assert!(
        stdout(&out).contains("OK 12 bytes: granted text"),
        "{}",
        show(&out)
    );
    let out = exec(
        &ws,
        FX_HOSTILE,
        &["--dir", &rw],
        &["write", "/data/out.txt", "x"],
    );
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert_eq!(
        std::fs::read_to_string(data.join("out.txt"))
            .ok()
            .as_deref(),
        Some("x")
    );

    let ro = format!("{}:/data:ro", data.display());
    let out = exec(
        &ws,
        FX_HOSTILE,
        &["--dir", &ro],
        &["write", "/data/new.txt", "x"],
    );
    assert_eq!(code(&out), 1, "{}", show(&out));
    assert!(stderr(&out).contains("refused"));
    assert!(!data.join("new.txt").exists());
}

#[test]
fn the_compile_cache_is_used_on_the_second_start() {
    let ws = TestWs::new();
    let cache = ws.scratch().join("cache");
    let flag = cache.display().to_string();
    for _ in 0..2 {
        let out = exec(&ws, FX_KV, &["--cache-dir", &flag], &["count"]);
        assert_eq!(code(&out), 0, "{}", show(&out));
    }
    let artifacts: Vec<_> = std::fs::read_dir(&cache)
        .expect("cache dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    assert!(artifacts[0].ends_with(".cwasm"));
    // A corrupt artifact is recompiled, not trusted.
    let path = cache.join(&artifacts[0]);
    std::fs::write(&path, b"garbage").expect("corrupt");
    let out = exec(&ws, FX_KV, &["--cache-dir", &flag], &["count"]);
    assert_eq!(stdout(&out).trim(), "3", "{}", show(&out));
    assert!(std::fs::metadata(&path).expect("rewritten").len() > 1000);
}

#[test]
fn a_component_blocked_in_follow_blocks_only_itself() {
    // Two agent jobs in one daemon: one waits forever on a route no daemon serves, the
    // other (and plain jobs) must still run; cancelling the first stops its component.
    let ws = TestWs::new();
    let idle = TestWs::new();
    let route = format!("idle={}", idle.path.display());
    let _d = Daemon::start(&ws.path, &model(), 2, &["--route", &route], &[]);
    let hostile = guest(FX_HOSTILE);
    let stuck = ws.submit(&[
        "--agent",
        hostile.to_str().unwrap_or_default(),
        "--",
        "stuck-route",
        "idle",
    ]);
    assert!(
        wait_for(Duration::from_secs(60), || idle
            .entries("input/ready")
            .len()
            == 1),
        "the stuck agent never submitted its job"
    );
    let kv = guest(FX_KV);
    let counter = ws.submit(&["--agent", kv.to_str().unwrap_or_default(), "--", "count"]);
    let (rc, out, err) = ws.follow(&counter);
    assert_eq!((rc, out.trim()), (0, "1"), "{err}");
    assert_daemon_serves(&ws);
    assert_eq!(ws.entries("processing"), vec![stuck.clone()]);

    let out = run(Command::new(bin("nrvna"))
        .arg("cancel")
        .arg(&ws.path)
        .arg(&stuck));
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(
        wait_for(Duration::from_secs(30), || ws
            .entries("failed")
            .contains(&stuck)),
        "the stuck agent job was not cancelled"
    );
    assert_eq!(ws.meta("failed", &stuck)["status"], "cancelled");
    // Its run was dropped, and the job it left in the route cancelled with it.
    assert!(wait_for(Duration::from_secs(10), || idle
        .entries("failed")
        .len()
        == 1));
    assert!(idle.entries("input/ready").is_empty());
}

// ----- hostile components ---------------------------------------------------------------

#[test]
fn an_infinite_loop_is_stopped_by_the_cpu_limit() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let started = Instant::now();
    let out = exec(&ws, FX_HOSTILE, &["--cpu", "1s"], &["spin"]);
    assert_eq!(code(&out), 7, "{}", show(&out));
    assert!(
        stderr(&out).contains("cpu time limit reached") && stderr(&out).contains("--cpu"),
        "{}",
        show(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_daemon_serves(&ws);
}

#[test]
fn a_memory_bomb_is_stopped_by_the_memory_limit() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let out = exec(&ws, FX_HOSTILE, &["--memory", "64M"], &["membomb"]);
    assert_eq!(code(&out), 7, "{}", show(&out));
    let err = stderr(&out);
    assert!(
        err.contains("memory limit reached")
            && err.contains("the limit is 64 MiB")
            && err.contains("--memory"),
        "{}",
        show(&out)
    );
    assert_daemon_serves(&ws);
}

#[test]
fn files_outside_the_grants_cannot_be_read() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let out = exec(&ws, FX_HOSTILE, &[], &["read-passwd"]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(stdout(&out).contains("refused") && !stdout(&out).contains("root:"));

    // data/ is granted; secret.txt beside it is not, nor where data/'s symlinks point.
    let root = ws.scratch();
    let data = root.join("data");
    std::fs::create_dir_all(data.join("inside")).expect("dirs");
    std::fs::write(root.join("secret.txt"), "TOP SECRET").expect("secret");
    std::os::unix::fs::symlink(root.join("secret.txt"), data.join("link")).expect("symlink");
    std::os::unix::fs::symlink(&root, data.join("linkdir")).expect("symlink");
    let grant = format!("{}:/data", data.display());
    for mode in ["escape-dotdot", "escape-symlink"] {
        let out = exec(&ws, FX_HOSTILE, &["--dir", &grant], &[mode, "/data"]);
        assert_eq!(code(&out), 0, "{}", show(&out));
        let text = stdout(&out);
        assert!(
            !text.contains("TOP SECRET") && !text.contains("root:"),
            "{text}"
        );
        assert_eq!(
            text.lines().filter(|l| l.contains("refused")).count(),
            text.lines().count(),
            "{text}"
        );
    }
    assert_daemon_serves(&ws);
}

#[test]
fn hostile_job_ids_are_invalid_never_paths() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let out = exec(&ws, FX_HOSTILE, &[], &["bad-ids"]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 9 * 3 + 1 + 9, "{text}");
    for line in text.lines() {
        assert!(line.contains("Err(JobError::Invalid("), "{line}");
    }
    // No cancel request was written anywhere for them.
    assert!(ws.entries(".cancel").is_empty());
    assert_daemon_serves(&ws);
}

#[test]
fn a_flood_of_100000_jobs_hits_the_quota() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let out = exec(&ws, FX_HOSTILE, &[], &["flood", "100000"]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    let text = stdout(&out);
    let counts: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split(' ')
        .filter_map(|w| w.parse().ok())
        .collect();
    let [submitted, quota, other] = counts[..] else {
        panic!("{text}");
    };
    assert!((64..1000).contains(&submitted), "{text}");
    assert_eq!((submitted + quota, other), (100_000, 0), "{text}");
    assert!(
        text.contains("jobs in flight") && text.contains("--max-in-flight"),
        "{text}"
    );
    // What it left queued was cancelled when it ended.
    assert!(
        stderr(&out).contains("unfinished job(s) the run submitted"),
        "{}",
        show(&out)
    );
    assert!(
        ws.entries("input/ready").is_empty(),
        "{:?}",
        ws.entries("input/ready")
    );
    assert_daemon_serves(&ws);

    let out = exec(&ws, FX_HOSTILE, &["--max-jobs", "10"], &["flood", "1000"]);
    assert!(
        stdout(&out).starts_with("submitted 10 quota 990 other 0"),
        "{}",
        show(&out)
    );
    assert!(stdout(&out).contains("--max-jobs"));
}

#[test]
fn a_route_not_granted_is_denied() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let out = exec(&ws, FX_HOSTILE, &[], &["route", "other"]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(stdout(&out).contains("routes []"));
    assert!(
        stdout(&out).contains("Denied(\"route \\\"other\\\" is not granted"),
        "{}",
        show(&out)
    );
    let other = TestWs::new();
    let grant = format!("other={}", other.path.display());
    let out = exec(
        &ws,
        FX_HOSTILE,
        &["--route", &grant, "--keep-jobs"],
        &["route", "other"],
    );
    assert!(
        stdout(&out).contains("routes [\"other\"]"),
        "{}",
        show(&out)
    );
    assert!(
        stdout(&out).contains("submit via other: Ok("),
        "{}",
        show(&out)
    );
    assert_eq!(other.entries("input/ready").len(), 1);
    assert_daemon_serves(&ws);
}

#[test]
fn a_1_gib_prompt_is_refused_before_the_host_copies_it() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    // The component needs the memory to build it; the host never takes it.
    let gib = (1u64 << 30).to_string();
    let out = exec(
        &ws,
        FX_HOSTILE,
        &["--memory", "1200M"],
        &["huge-prompt", &gib],
    );
    assert_eq!(code(&out), 7, "{}", show(&out));
    assert!(
        stderr(&out).contains("host-call bytes limit reached")
            && stderr(&out).contains("--max-hostcall-bytes"),
        "{}",
        show(&out)
    );
    // Under the host-call limit but over the prompt limit: an error it can handle.
    let out = exec(&ws, FX_HOSTILE, &[], &["huge-prompt", "5000000"]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(
        stdout(&out).contains("Invalid") && stdout(&out).contains("--max-prompt-bytes"),
        "{}",
        show(&out)
    );
    assert!(ws.entries("input/ready").is_empty());
    assert_daemon_serves(&ws);
}

#[test]
fn recursion_past_the_depth_limit_is_a_quota_error() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let out = exec(&ws, FX_NEST, &[], &["forever"]);
    assert_eq!(code(&out), 1, "{}", show(&out));
    let err = stderr(&out);
    assert!(
        err.contains("Quota") && err.contains("would nest 17 deep; the limit is 16 (--max-depth)"),
        "{}",
        show(&out)
    );
    let out = exec(&ws, FX_NEST, &["--max-depth", "2"], &["forever"]);
    assert!(
        stderr(&out).contains("would nest 3 deep; the limit is 2"),
        "{}",
        show(&out)
    );
    assert_daemon_serves(&ws);
}

#[test]
fn a_run_stuck_in_follow_is_stopped_by_the_wall_clock() {
    // No daemon: the job it follows never ends.
    let ws = TestWs::new();
    let started = Instant::now();
    let out = exec(&ws, FX_HOSTILE, &["--timeout", "2s"], &["stuck-follow"]);
    assert_eq!(code(&out), 7, "{}", show(&out));
    assert!(
        stderr(&out)
            .contains("wall-clock time limit reached: the run took longer than 2s (--timeout)"),
        "{}",
        show(&out)
    );
    assert!(stderr(&out).contains("no daemon is running"));
    assert!(started.elapsed() < Duration::from_secs(20));
    // Its job was cancelled when the run was stopped.
    let failed = ws.entries("failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(ws.meta("failed", &failed[0])["status"], "cancelled");
}

#[test]
fn a_panic_is_reported_as_a_crash() {
    let ws = TestWs::new();
    let out = exec(&ws, FX_HOSTILE, &[], &["panic"]);
    assert_eq!(code(&out), 8, "{}", show(&out));
    let err = stderr(&out);
    assert!(err.contains("the component crashed: wasm trap"), "{err}");
    assert!(
        err.contains(&format!("[{} stderr] warn: ", FX_HOSTILE.name))
            && err.contains("panicked on purpose"),
        "{err}"
    );
}

#[test]
fn hostile_agent_jobs_fail_alone_inside_the_daemon() {
    // The same attacks as agent jobs, so the sandbox runs inside nrvnad itself: each job
    // fails with the limit that stopped it and the daemon goes on serving.
    let ws = TestWs::new();
    let flags = ["--cpu", "2s", "--memory", "1200M", "--timeout", "120s"];
    let d = Daemon::start(&ws.path, &model(), 2, &flags, &[]);
    let hostile = guest(FX_HOSTILE);
    let hostile = hostile.to_str().unwrap_or_default();
    let nest = guest(FX_NEST);
    let gib = (1u64 << 30).to_string();
    let cases: [(&[&str], &str); 5] = [
        (
            &["--agent", hostile, "--", "spin"],
            "cpu time limit reached",
        ),
        (
            &["--agent", hostile, "--", "membomb"],
            "memory limit reached",
        ),
        (
            &["--agent", hostile, "--", "huge-prompt", &gib],
            "host-call bytes limit reached",
        ),
        (
            &[
                "--agent",
                nest.to_str().unwrap_or_default(),
                "--",
                "forever",
            ],
            "would nest 17 deep; the limit is 16",
        ),
        (&["--agent", hostile, "--", "panic"], "crashed"),
    ];
    let ids: Vec<String> = cases.iter().map(|(args, _)| ws.submit(args)).collect();
    for (id, (_, expected)) in ids.iter().zip(cases) {
        let (rc, _, err) = ws.follow(id);
        assert_eq!(rc, 1, "{id}: {err}\n{}", d.log_text());
        assert!(
            err.contains(expected),
            "{id}: expected {expected:?} in {err}"
        );
    }
    assert_daemon_serves(&ws);
    let kv = guest(FX_KV);
    let counter = ws.submit(&["--agent", kv.to_str().unwrap_or_default(), "--", "count"]);
    assert_eq!(ws.follow(&counter).1.trim(), "1");
}

// ----- the command line ------------------------------------------------------------------------

#[test]
fn exec_help_teaches_and_bad_input_fails_clearly() {
    let out = run(Command::new(bin("nrvna")).args(["exec", "--help"]));
    assert_eq!(code(&out), 0);
    let help = stdout(&out);
    for needle in [
        "Examples:",
        "--dir HOST[:GUEST][:ro]",
        "--route NAME=WS",
        "Exit codes",
        "7    a limit stopped the run",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
    let ws = TestWs::new();
    let out = run(Command::new(bin("nrvna")).arg("exec").arg(guest(FX_KV)));
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("give --ws WS"), "{}", show(&out));
    let out = exec(&ws, FX_KV, &["--dir", "/definitely/missing"], &[]);
    assert_eq!(code(&out), 2, "{}", show(&out));
    assert!(
        stderr(&out).contains("cannot open the host directory"),
        "{}",
        show(&out)
    );
    let junk = ws.scratch().join("junk.wasm");
    std::fs::write(&junk, b"not a component").expect("junk");
    let out = run(Command::new(bin("nrvna"))
        .arg("exec")
        .arg(&junk)
        .arg("--ws")
        .arg(&ws.path));
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("not a usable nrvna:agent component"),
        "{}",
        show(&out)
    );
}

#[test]
fn nrvna_cancel_reports_each_case_with_its_exit_code() {
    let ws = TestWs::new();
    let id = ws.submit(&["never run"]);
    let cancel = |id: &str| {
        run(Command::new(bin("nrvna"))
            .arg("cancel")
            .arg(&ws.path)
            .arg(id))
    };
    let out = cancel(&id);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(stdout(&out).contains("cancelled"));
    assert_eq!(ws.meta("failed", &id)["status"], "cancelled");
    let out = cancel(&id);
    assert_eq!(code(&out), 6, "{}", show(&out));
    assert!(stderr(&out).contains("already ended (failed)"));
    let out = cancel("1_2");
    assert_eq!(code(&out), 4, "{}", show(&out));
    let out = cancel("../etc");
    assert_eq!(code(&out), 2, "{}", show(&out));
    assert!(stderr(&out).contains("invalid job id"));
}

#[test]
fn exec_says_what_a_file_is_when_it_is_not_a_component() {
    let ws = TestWs::new();
    let exec_file = |name: &str, bytes: &[u8]| {
        let path = ws.scratch().join(name);
        std::fs::write(&path, bytes).expect("write the file");
        run(Command::new(bin("nrvna"))
            .arg("exec")
            .arg(&path)
            .arg("--ws")
            .arg(&ws.path))
    };
    // The smallest core module: what a guest built for wasm32-wasip1 or wasm32-unknown-unknown
    // starts with.
    let out = exec_file("core.wasm", b"\0asm\x01\0\0\0");
    assert_eq!(code(&out), 1, "{}", show(&out));
    assert!(
        stderr(&out).contains(
            "this is a core WebAssembly module, not a component: build with --target wasm32-wasip2"
        ),
        "{}",
        show(&out)
    );
    for (name, bytes) in [
        ("notes.wasm", b"just some text".as_slice()),
        ("short.wasm", b"\0as".as_slice()),
    ] {
        let out = exec_file(name, bytes);
        assert_eq!(code(&out), 1, "{}", show(&out));
        let err = stderr(&out);
        assert!(err.contains("not WebAssembly"), "{name}: {}", show(&out));
        // Said in words, not as wasmtime's dump of the expected bytes.
        assert!(!err.contains("0x"), "{name}: {}", show(&out));
    }
}

/// Starts `nrvna exec COMPONENT --ws WS FLAGS -- ARGS` in the background.
pub(crate) fn spawn_exec(
    ws: &TestWs,
    component: Component,
    flags: &[&str],
    args: &[&str],
) -> Child {
    exec_command(ws, component, flags, args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nrvna exec")
}

#[test]
fn a_signal_stops_exec_and_cancels_its_jobs_unless_kept() {
    use rustix::process::{Pid, Signal, kill_process};
    let cases = [
        (Signal::INT, None, 130),
        (Signal::TERM, None, 143),
        (Signal::INT, Some("--keep-jobs"), 130),
    ];
    for (signal, keep, expected_code) in cases {
        // No daemon: the job the component submits stays queued while it follows it.
        let ws = TestWs::new();
        let flags: Vec<&str> = keep.into_iter().collect();
        let mut child = spawn_exec(&ws, FX_ECHO, &flags, &["Never answered."]);
        let queued = wait_for(Duration::from_secs(60), || {
            ws.entries("input/ready").len() == 1
        });
        assert!(queued, "the component never submitted its job");
        let id = ws.entries("input/ready").remove(0);
        let pid = Pid::from_raw(child.id() as i32).expect("a child pid");
        kill_process(pid, signal).expect("signal nrvna exec");
        let exited = wait_for(Duration::from_secs(30), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = child.kill();
        }
        let out = child.wait_with_output().expect("nrvna exec output");
        assert!(exited, "nrvna exec did not stop: {}", show(&out));
        let case = format!("{signal:?} {keep:?}");
        assert_eq!(code(&out), expected_code, "{case}: {}", show(&out));
        if keep.is_some() {
            assert_eq!(ws.entries("input/ready"), vec![id.clone()], "{case}");
            assert!(ws.entries("failed").is_empty(), "{case}");
        } else {
            assert!(ws.entries("input/ready").is_empty(), "{case}");
            assert_eq!(ws.meta("failed", &id)["status"], "cancelled", "{case}");
        }
    }
}

#[test]
fn a_components_help_needs_no_workspace_or_model() {
    let out = run(Command::new(bin("nrvna"))
        .arg("exec")
        .arg(guest(REFINE))
        .args(["--", "--help"]));
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(
        stdout(&out).starts_with(&format!("usage: {} ", REFINE.package)),
        "{}",
        show(&out)
    );
    // Real work still needs a workspace, and says how to give one.
    let out = run(Command::new(bin("nrvna"))
        .arg("exec")
        .arg(guest(REFINE))
        .args(["--", "Write a haiku"]));
    assert_eq!(code(&out), 2, "{}", show(&out));
    assert!(stderr(&out).contains("give --ws WS"), "{}", show(&out));
}
