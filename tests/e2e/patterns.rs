//! The pattern components (`guests/patterns/`) end to end: `nrvna exec` (and agent jobs
//! of `nrvnad`) against the real model. Output shapes, the lineage and tags of the jobs
//! they submit, what they do when a child job fails, `loop` resuming from the host's
//! journal after a kill, `decompose` at the host's depth limit; and the docs kept in step with the WIT
//! and the components' usage texts.
//!
//! A child job is made to fail with a prompt longer than the test daemon's context
//! (NRVNA_CTX=1024): the daemon fails it at once, with a message about tokens.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nrvna_tests::{Component, Daemon, TestWs, bin, code, guest, model, stderr, stdout, wait_for};

use crate::components::{BATCH, COMPARE, DECOMPOSE, LOOP, MAP_REDUCE, REFINE, RETRY, ROUTE};
use serde_json::Value;

const PATTERNS: [Component; 8] = [
    REFINE, LOOP, ROUTE, MAP_REDUCE, BATCH, COMPARE, RETRY, DECOMPOSE,
];

/// Longest a component run may take here before the test fails (instead of hanging).
const RUN_LIMIT: Duration = Duration::from_secs(300);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// A prompt the test daemon fails at once: more tokens than its context holds.
fn too_long() -> String {
    "word ".repeat(3000)
}

/// `nrvna exec COMPONENT --ws WS EXEC_ARGS... -- ARGS...`
pub(crate) fn exec_cmd(
    ws: &TestWs,
    component: Component,
    exec_args: &[&str],
    args: &[&str],
) -> Command {
    let mut cmd = Command::new(bin("nrvna"));
    cmd.arg("exec")
        .arg(guest(component))
        .arg("--ws")
        .arg(&ws.path)
        .args(exec_args)
        .arg("--")
        .args(args);
    cmd
}

fn exec(ws: &TestWs, component: Component, exec_args: &[&str], args: &[&str]) -> Output {
    run_limited(exec_cmd(ws, component, exec_args, args))
}

/// Runs to completion, or kills the command after [`RUN_LIMIT`] and fails the test.
pub fn run_limited(mut cmd: Command) -> Output {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + RUN_LIMIT;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("collect output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "{shown} ran past {RUN_LIMIT:?}\nstdout: {}\nstderr: {}",
                stdout(&out),
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ok_json(out: &Output) -> Value {
    assert_eq!(
        code(out),
        0,
        "stderr: {}\nstdout: {}",
        stderr(out),
        stdout(out)
    );
    serde_json::from_str(stdout(out).trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

/// Every job in the workspace: (state directory, id, meta.json).
pub(crate) fn jobs(ws: &TestWs) -> Vec<(String, String, Value)> {
    let mut all = Vec::new();
    for state in ["input/ready", "processing", "output", "failed"] {
        for id in ws.entries(state) {
            if let Ok(text) =
                std::fs::read_to_string(ws.path.join(state).join(&id).join("meta.json"))
                && let Ok(meta) = serde_json::from_str(&text)
            {
                all.push((state.to_owned(), id, meta));
            }
        }
    }
    all
}

pub(crate) fn has_tag(meta: &Value, tag: &str) -> bool {
    meta["tags"]
        .as_array()
        .is_some_and(|t| t.iter().any(|v| v == tag))
}

/// Jobs carrying `tag`, as (state, id).
pub(crate) fn tagged(ws: &TestWs, tag: &str) -> Vec<(String, String)> {
    jobs(ws)
        .into_iter()
        .filter(|(_, _, m)| has_tag(m, tag))
        .map(|(s, id, _)| (s, id))
        .collect()
}

/// The routes the `compare` pattern's JSON answer asked, in order.
pub(crate) fn answer_routes(v: &Value) -> Vec<&str> {
    v["answers"]
        .as_array()
        .expect("answers")
        .iter()
        .filter_map(|a| a["route"].as_str())
        .collect()
}

pub(crate) fn count_in(jobs: &[(String, String)], state: &str) -> usize {
    jobs.iter().filter(|(s, _)| s == state).count()
}

// ----- usage and docs ------------------------------------------------------------------

#[test]
fn every_pattern_answers_help_and_refuses_bad_args_with_its_usage() {
    let ws = TestWs::new();
    let docs = std::fs::read_to_string(repo().join("docs/patterns.md")).expect("docs/patterns.md");
    for pattern in PATTERNS {
        let name = pattern.package;
        let out = exec(&ws, pattern, &[], &["--help"]);
        assert_eq!(code(&out), 0, "{name} --help: {}", stderr(&out));
        let usage = stdout(&out);
        assert!(
            usage.starts_with(&format!("usage: {name} ")),
            "{name} --help printed: {usage}"
        );
        // docs/patterns.md carries each usage text verbatim.
        assert!(
            docs.contains(usage.trim_end()),
            "docs/patterns.md does not carry the current usage of {name}:\n{usage}"
        );

        let out = exec(&ws, pattern, &[], &["--no-such-flag", "x"]);
        assert_eq!(
            code(&out),
            1,
            "{name} accepted a bad flag: {}",
            stdout(&out)
        );
        let err = stderr(&out);
        assert!(
            err.contains(&format!("{name}: unknown option --no-such-flag"))
                && err.contains(&format!("usage: {name} ")),
            "{name} bad-flag error: {err}"
        );
    }
    // Nothing was submitted by any of that.
    assert!(jobs(&ws).is_empty());
}

/// Names declared in the WIT: (kind, name), kind one of interface, world, func, type,
/// field, case.
fn wit_items(wit: &str) -> Vec<(&'static str, String)> {
    let mut items = Vec::new();
    // The kind of each open `{ ... }` block.
    let mut blocks: Vec<&'static str> = Vec::new();
    for raw in wit.lines() {
        let line = raw.split("//").next().unwrap_or("").trim();
        if line.is_empty() || line.starts_with("package ") {
            continue;
        }
        let words: Vec<&str> = line
            .split(|c: char| {
                c.is_whitespace()
                    || c == '{'
                    || c == ':'
                    || c == '='
                    || c == ','
                    || c == '('
                    || c == ';'
            })
            .filter(|w| !w.is_empty())
            .collect();
        let opens = line.ends_with('{');
        match words.as_slice() {
            [
                kw @ ("interface" | "world" | "record" | "variant" | "enum"),
                name,
                ..,
            ] => {
                let kind = match *kw {
                    "interface" => "interface",
                    "world" => "world",
                    _ => "type",
                };
                items.push((kind, name.to_string()));
                if opens {
                    blocks.push(match *kw {
                        "record" => "field",
                        "variant" | "enum" => "case",
                        _ => "items",
                    });
                }
            }
            ["type", name, ..] => items.push(("type", name.to_string())),
            ["}"] | ["}", ..] => {
                blocks.pop();
            }
            ["use", ..] | ["import", ..] => {}
            ["export", name, "func", ..] | [name, "func", ..] => {
                items.push(("func", name.to_string()))
            }
            [name, ..] => match blocks.last() {
                Some(&"field") => items.push(("field", name.to_string())),
                Some(&"case") => items.push(("case", name.to_string())),
                _ => panic!("unexpected WIT line: {raw}"),
            },
            [] => {}
        }
    }
    items
}

#[test]
fn docs_wit_md_covers_every_wit_item() {
    let wit = std::fs::read_to_string(repo().join("wit/agent.wit")).expect("wit/agent.wit");
    let docs = std::fs::read_to_string(repo().join("docs/wit.md")).expect("docs/wit.md");
    let items = wit_items(&wit);
    // The parser found the contract (a parser that found nothing would pass anything).
    for want in [
        ("interface", "jobs"),
        ("func", "submit"),
        ("func", "wait-all"),
        ("func", "run"),
        ("func", "call"),
        ("type", "job-error"),
        ("field", "json-schema"),
        ("case", "timeout"),
        ("case", "debug"),
    ] {
        assert!(
            items.iter().any(|(k, n)| *k == want.0 && n == want.1),
            "WIT parser missed {want:?}: {items:?}"
        );
    }
    let mut missing = BTreeSet::new();
    for (kind, name) in &items {
        let documented = match *kind {
            "interface" => docs.contains(&format!("## interface `{name}`")),
            "world" => docs.contains(&format!("## world `{name}`")),
            "func" | "type" => docs.contains(&format!("### `{name}`")),
            _ => docs.contains(&format!("`{name}`")),
        };
        if !documented {
            missing.insert(format!("{kind} {name}"));
        }
    }
    assert!(
        missing.is_empty(),
        "docs/wit.md does not document: {missing:?}"
    );
}

// ----- prefix reuse --------------------------------------------------------------------

/// `loop` and `refine` re-send earlier replies in every prompt: with prefix reuse on,
/// their later jobs reuse cached cells, and greedy decoding gives every step the text it
/// gets with reuse off.
#[test]
fn loop_and_refine_give_the_same_texts_with_prefix_reuse_on_and_off() {
    let run = |reuse: &str| -> (Value, Value, u64) {
        let ws = TestWs::new();
        let _d = Daemon::start(&ws.path, &model(), 1, &[], &[("NRVNA_PREFIX_CACHE", reuse)]);
        let looped = ok_json(&exec(
            &ws,
            LOOP,
            &[],
            &[
                "--rounds",
                "3",
                "--stop",
                "QZXV-STOP",
                "--temp",
                "0",
                "--max-tokens",
                "24",
                "--json",
                "Write a short story about a lighthouse",
            ],
        ));
        let refined = ok_json(&exec(
            &ws,
            REFINE,
            &[],
            &[
                "--rounds",
                "1",
                "--max-tokens",
                "16",
                "--temp",
                "0",
                "--json",
                "Write a haiku about rain",
            ],
        ));
        let cached = jobs(&ws)
            .iter()
            .map(|(_, _, meta)| meta["cached_tokens"].as_u64().unwrap_or(0))
            .sum();
        (looped, refined, cached)
    };
    let (loop_on, refine_on, cached_on) = run("1");
    let (loop_off, refine_off, cached_off) = run("0");
    assert_eq!(cached_off, 0);
    assert!(cached_on > 0, "nothing was reused");
    let texts = |v: &Value| -> Vec<Value> {
        v["rounds"]
            .as_array()
            .expect("rounds")
            .iter()
            .map(|r| r["text"].clone())
            .collect()
    };
    assert_eq!(texts(&loop_on).len(), 3, "{loop_on}");
    assert_eq!(texts(&loop_on), texts(&loop_off));
    assert_eq!(refine_on["final"], refine_off["final"]);
    assert_eq!(refine_on["rounds"], refine_off["rounds"]);
}

// ----- refine --------------------------------------------------------------------------

#[test]
fn refine_chains_draft_critique_and_improve() {
    let ws = TestWs::new();
    let _d = ws.daemon(2);
    let out = exec(
        &ws,
        REFINE,
        &[],
        &[
            "--rounds",
            "1",
            "--max-tokens",
            "16",
            "--json",
            "--tag",
            "mine",
            "Write a haiku about rain",
        ],
    );
    let v = ok_json(&out);
    assert_eq!(v["goal"], "Write a haiku about rain");
    assert!(v["final"].is_string());
    assert_eq!(v["rounds"].as_array().map(Vec::len), Some(1));
    let ids: Vec<&str> = v["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(ids.len(), 3, "{v}");
    // One job per step, in order, each tagged with the step and the user's tag.
    for (id, step) in ids
        .iter()
        .zip(["refine-draft", "refine-critique", "refine-improve"])
    {
        let meta = ws.meta("output", id);
        assert!(
            has_tag(&meta, step) && has_tag(&meta, "refine") && has_tag(&meta, "mine"),
            "{meta}"
        );
        assert_eq!(meta["max_tokens"], 16);
    }
    // The critique quotes the draft: the chain is real.
    let draft = ws.job_file("output", ids[0], "result.txt");
    let critique_prompt = ws.job_file("output", ids[1], "prompt.txt");
    assert!(critique_prompt.starts_with("Critique this draft. What's weak?"));
    assert!(critique_prompt.contains(draft.trim()), "{critique_prompt}");
    assert_eq!(jobs(&ws).len(), 3);
}

#[test]
fn refine_as_an_agent_job_makes_its_jobs_children() {
    let ws = TestWs::new();
    let _d = ws.daemon(2);
    let refine = guest(REFINE);
    let refine = refine.to_str().expect("utf-8 path");
    let id = ws.submit(&[
        "--agent",
        refine,
        "--",
        "--rounds",
        "1",
        "--max-tokens",
        "12",
        "Name a colour",
    ]);
    let (rc, out, err) = ws.follow(&id);
    assert_eq!(rc, 0, "{err}");
    // flw --children lists the three jobs it submitted; each names it as parent.
    let children = ws.flw(&["--children", &id]);
    assert_eq!(code(&children), 0, "{}", stderr(&children));
    let kids: Vec<String> = stdout(&children).lines().map(str::to_owned).collect();
    assert_eq!(kids.len(), 3, "children of {id}: {kids:?}");
    let mut improved = None;
    let mut draft = None;
    for kid in &kids {
        let meta = ws.meta("output", kid);
        assert_eq!(meta["parent"], id.as_str(), "{meta}");
        assert!(has_tag(&meta, "refine"));
        let text = ws.job_file("output", kid, "result.txt");
        if has_tag(&meta, "refine-improve") {
            improved = Some(text);
        } else if has_tag(&meta, "refine-draft") {
            draft = Some(text);
        }
    }
    // The agent job's result is the improved draft (the first draft if that was empty).
    let (improved, draft) = (
        improved.expect("an improve child"),
        draft.expect("a draft child"),
    );
    let want = if improved.trim().is_empty() {
        draft
    } else {
        improved
    };
    assert_eq!(out, want);
}

#[test]
fn refine_fails_naming_the_step_whose_job_failed() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let out = exec(&ws, REFINE, &[], &[&too_long()]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("draft: failed:") && err.contains("tokens"),
        "{err}"
    );
    // It stopped there: no critique of a draft that does not exist.
    let all = tagged(&ws, "refine");
    assert_eq!((all.len(), count_in(&all, "failed")), (1, 1), "{all:?}");
}

// ----- loop ----------------------------------------------------------------------------

#[test]
fn loop_killed_mid_run_resumes_from_the_journal_without_redoing_rounds() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    // Every round must run, but each prompt names the stop word and a sampled reply
    // may echo it: greedy decoding makes the replies fixed, and with this word and
    // goal they never contain it.
    let args = [
        "--rounds",
        "5",
        "--stop",
        "QZXV-STOP",
        "--temp",
        "0",
        "--max-tokens",
        "24",
        "Write a short story about a lighthouse",
    ];
    let err_path = ws.scratch().join("first.stderr");
    let mut first = exec_cmd(&ws, LOOP, &[], &args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn nrvna exec");
    // Kill it as soon as round 3's job is queued: the loop has no resume code of its
    // own; the host's journal holds the finished rounds, and round 3's submit carries a
    // key from the run id and its call index, so the resumed run gets that job back.
    let third_queued = wait_for(Duration::from_secs(240), || {
        tagged(&ws, "loop-round").len() >= 3
    });
    let _ = first.kill();
    let _ = first.wait();
    assert!(
        third_queued,
        "round 3 was never submitted: {:?}",
        tagged(&ws, "loop")
    );
    let first_err = std::fs::read_to_string(&err_path).unwrap_or_default();
    let run = first_err
        .lines()
        .find_map(|l| l.strip_prefix("nrvna exec: run "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no run id: {first_err}"))
        .to_owned();

    let out = exec(&ws, LOOP, &["--resume", &run], &args);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let headers: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("=== Iteration "))
        .collect();
    assert_eq!(
        headers,
        (1..=5)
            .map(|i| format!("=== Iteration {i} ==="))
            .collect::<Vec<_>>(),
        "{text}"
    );
    assert!(
        stderr(&out).contains(&format!("resuming run {run}")),
        "{}",
        stderr(&out)
    );
    // Five rounds, each done exactly once: no finished round was submitted again, and
    // the round in flight at the kill was picked up, not duplicated.
    let rounds = tagged(&ws, "loop-round");
    assert_eq!(count_in(&rounds, "output"), 5, "{rounds:?}");
    assert_eq!(rounds.len(), 5, "{rounds:?}");
    // Each round's prompt carries the earlier rounds' replies.
    let mut ids: Vec<&String> = rounds.iter().map(|(_, id)| id).collect();
    ids.sort();
    let first_reply = ws.job_file("output", ids[0], "result.txt");
    let last_prompt = ws.job_file("output", ids[4], "prompt.txt");
    assert!(last_prompt.contains(first_reply.trim()), "{last_prompt}");
    // The loop keeps no state of its own.
    assert!(!ws.path.join(".agents/loop/kv").exists());
}

// ----- route ---------------------------------------------------------------------------

#[test]
fn route_sends_by_rule_default_and_model_within_its_grants() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let code_ws = TestWs::new();
    let _dc = code_ws.daemon(1);
    let grant = format!("code={}", code_ws.path.display());
    let exec_args = ["--route", grant.as_str()];

    // A rule: main.py goes to the code workspace.
    let v = ok_json(&exec(
        &ws,
        ROUTE,
        &exec_args,
        &[
            "--rule",
            "*.py=code",
            "--rule",
            "*.js=code",
            "--max-tokens",
            "12",
            "--json",
            "main.py",
        ],
    ));
    assert_eq!(
        (v["route"].as_str(), v["by"].as_str()),
        (Some("code"), Some("rule")),
        "{v}"
    );
    let id = v["id"].as_str().expect("id");
    assert_eq!(code_ws.job_file("output", id, "prompt.txt"), "main.py");

    // No rule matches: the default, the own workspace, with the template.
    let v = ok_json(&exec(
        &ws,
        ROUTE,
        &exec_args,
        &[
            "--rule",
            "*.py=code",
            "--template",
            "Process this: {input}",
            "--max-tokens",
            "12",
            "--json",
            "notes.txt",
        ],
    ));
    assert_eq!(
        (v["route"].as_str(), v["by"].as_str()),
        (Some("self"), Some("default")),
        "{v}"
    );
    let id = v["id"].as_str().expect("id");
    assert_eq!(
        ws.job_file("output", id, "prompt.txt"),
        "Process this: notes.txt"
    );

    // The model classifies (constrained to the granted names), or the default wins.
    let v = ok_json(&exec(
        &ws,
        ROUTE,
        &exec_args,
        &[
            "--classify",
            "--describe",
            "code=programming questions",
            "--dry-run",
            "--json",
            "How do I reverse a list in Python?",
        ],
    ));
    assert!(
        (v["route"] == "code" && v["by"] == "model")
            || (v["route"] == "self" && v["by"] == "default"),
        "{v}"
    );
    let classify = tagged(&ws, "route-classify");
    assert_eq!(classify.len(), 1, "{classify:?}");

    // A rule naming a route that is not granted is refused before anything is submitted.
    let before = jobs(&ws).len() + jobs(&code_ws).len();
    let out = exec(&ws, ROUTE, &exec_args, &["--rule", "*=vision", "cat.jpg"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("\"vision\"") && stderr(&out).contains("granted: code"),
        "{}",
        stderr(&out)
    );
    assert_eq!(jobs(&ws).len() + jobs(&code_ws).len(), before);

    // The routed job failing fails the run, naming the route.
    let out = exec(
        &ws,
        ROUTE,
        &exec_args,
        &["--rule", "word*=code", &too_long()],
    );
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    assert!(
        err.contains("route code: failed:") && err.contains("tokens"),
        "{err}"
    );
}

// ----- map-reduce ----------------------------------------------------------------------

#[test]
fn map_reduce_synthesises_the_subtasks_that_succeed_and_reports_the_rest() {
    let ws = TestWs::new();
    let _d = ws.daemon(2);
    let long = too_long();
    let out = exec(
        &ws,
        MAP_REDUCE,
        &[],
        &[
            "--max-tokens",
            "16",
            "--json",
            "Name a fruit.",
            &long,
            "Name a colour.",
        ],
    );
    let v = ok_json(&out);
    let subs = v["subtasks"].as_array().expect("subtasks");
    assert_eq!(subs.len(), 3);
    assert!(
        subs[0]["text"].is_string() && subs[2]["text"].is_string(),
        "{v}"
    );
    assert!(
        subs[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("tokens")),
        "{v}"
    );
    assert!(v["text"].is_string() && v["id"].is_string());
    assert!(stderr(&out).contains("subtask 2"), "{}", stderr(&out));

    let maps = tagged(&ws, "map-reduce-map");
    assert_eq!((maps.len(), count_in(&maps, "failed")), (3, 1), "{maps:?}");
    let reduce = tagged(&ws, "map-reduce-reduce");
    assert_eq!(reduce.len(), 1);
    // The synthesis quotes both successful results, numbered 1 and 2, and nothing of
    // the failed one. (The results may hold numbered lists of their own, so look for
    // the quoted texts, not for list markers.)
    let prompt = ws.job_file("output", &reduce[0].1, "prompt.txt");
    let first = subs[0]["text"].as_str().unwrap_or_default().trim();
    let third = subs[2]["text"].as_str().unwrap_or_default().trim();
    assert!(
        prompt.starts_with(&format!(
            "Synthesize these findings into a recommendation:\n1. {first}"
        )),
        "{prompt}"
    );
    assert!(prompt.contains(&format!("\n2. {third}")), "{prompt}");
    assert!(!prompt.contains(&long[..40]), "{prompt}");

    // Every subtask failing fails the run, with each error.
    let out = exec(&ws, MAP_REDUCE, &[], &[&long]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("all 1 subtasks failed"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn map_reduce_splits_a_goal_with_the_model() {
    let ws = TestWs::new();
    let _d = ws.daemon(2);
    let v = ok_json(&exec(
        &ws,
        MAP_REDUCE,
        &[],
        &[
            "--goal",
            "Plan a picnic",
            "--parts",
            "2",
            "--max-tokens",
            "24",
            "--temp",
            "0",
            "--json",
        ],
    ));
    let n = v["subtasks"].as_array().map_or(0, Vec::len);
    assert!((1..=2).contains(&n), "{v}");
    assert_eq!(tagged(&ws, "map-reduce-split").len(), 1);
    assert_eq!(tagged(&ws, "map-reduce-map").len(), n);
    assert_eq!(tagged(&ws, "map-reduce-reduce").len(), 1);
}

// ----- batch ---------------------------------------------------------------------------

#[test]
fn batch_keeps_input_order_and_reports_partial_failures() {
    let ws = TestWs::new();
    let _d = ws.daemon(2);
    let data = ws.scratch().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    let long = too_long();
    std::fs::write(
        data.join("inputs.txt"),
        format!("Name a fruit.\n\n  Name a colour.  \n{long}\nName a tree.\n"),
    )
    .expect("write inputs");
    let grant = format!("{}:/data:ro", data.display());
    let out = exec(
        &ws,
        BATCH,
        &["--dir", &grant],
        &[
            "--file",
            "/data/inputs.txt",
            "--parallel",
            "2",
            "--max-tokens",
            "12",
            "--json",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 4, "{}", stdout(&out));
    let inputs = [
        "Name a fruit.",
        "Name a colour.",
        long.trim(),
        "Name a tree.",
    ];
    for (i, (line, input)) in lines.iter().zip(inputs).enumerate() {
        assert_eq!(line["index"], i + 1);
        assert_eq!(line["input"], input);
        assert_eq!(line["ok"], i != 2, "{line}");
    }
    assert!(
        lines[2]["error"]
            .as_str()
            .is_some_and(|e| e.contains("tokens"))
    );
    let all = tagged(&ws, "batch");
    assert_eq!((all.len(), count_in(&all, "failed")), (4, 1));

    // Text output: one header per input, in order; the failure marked in place.
    let out = exec(
        &ws,
        BATCH,
        &[],
        &["--max-tokens", "8", "Say one.", &long, "Say three."],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let headers: Vec<&str> = text.lines().filter(|l| l.starts_with("=== ")).collect();
    assert_eq!(headers.len(), 3, "{text}");
    assert_eq!(headers[0], "=== 1: Say one. ===");
    assert!(headers[1].starts_with("=== 2: word word") && headers[1].ends_with("=== FAILED"));
    assert_eq!(headers[2], "=== 3: Say three. ===");

    // Reading outside the grants is refused with a hint.
    let out = exec(&ws, BATCH, &[], &["--file", "/data/inputs.txt"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("--dir"), "{}", stderr(&out));
}

// ----- compare -------------------------------------------------------------------------

#[test]
fn compare_samples_its_workspace_and_lets_a_judge_pick() {
    let ws = TestWs::new();
    let _d = ws.daemon(2);
    let v = ok_json(&exec(
        &ws,
        COMPARE,
        &[],
        &["--max-tokens", "16", "--json", "Name a large animal."],
    ));
    let answers = v["answers"].as_array().expect("answers");
    assert_eq!(answers.len(), 3, "{v}");
    assert!(
        answers
            .iter()
            .all(|a| a["route"] == "self" && a["text"].is_string())
    );
    let best = v["best"].as_u64().expect("best");
    assert!((1..=3).contains(&best));
    assert!(v["method"] == "judge" || v["method"] == "agreement", "{v}");
    assert_eq!(v["text"], answers[best as usize - 1]["text"]);
    // Three answers with distinct seeds, one judge constrained by a schema.
    let seeds: BTreeSet<String> = tagged(&ws, "compare-answer")
        .iter()
        .map(|(s, id)| ws.meta(s, id)["seed"].to_string())
        .collect();
    assert_eq!(seeds.len(), 3, "{seeds:?}");
    let judge = tagged(&ws, "compare-judge");
    assert_eq!(judge.len(), 1);
    let (state, id) = &judge[0];
    assert!(ws.path.join(state).join(id).join("schema.json").is_file());

    // A target that is not granted is refused up front.
    let out = exec(
        &ws,
        COMPARE,
        &[],
        &["--to", "self", "--to", "elsewhere", "hi"],
    );
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("\"elsewhere\" is not granted"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn compare_leaves_out_a_failed_target() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    // The other workspace's daemon has too small a context for the prompt.
    let small = TestWs::new();
    let _ds = Daemon::start(&small.path, &model(), 1, &[], &[("NRVNA_CTX", "128")]);
    let grant = format!("small={}", small.path.display());
    let prompt = format!("{} Name a bird.", "Please answer briefly. ".repeat(40));
    let v = ok_json(&exec(
        &ws,
        COMPARE,
        &["--route", &grant],
        &[
            "--to",
            "self",
            "--to",
            "small",
            "--max-tokens",
            "12",
            "--json",
            &prompt,
        ],
    ));
    assert_eq!(
        (v["method"].as_str(), v["best"].as_u64()),
        (Some("only"), Some(1)),
        "{v}"
    );
    let answers = v["answers"].as_array().expect("answers");
    assert!(answers[0]["text"].is_string());
    assert!(
        answers[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("holds 128")),
        "{v}"
    );
    assert_eq!(v["text"], answers[0]["text"]);
    assert_eq!(count_in(&tagged(&small, "compare-answer"), "failed"), 1);
    // Nothing to judge with one answer.
    assert!(tagged(&ws, "compare-judge").is_empty());
}

#[test]
fn compare_asks_each_granted_route() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let other = TestWs::new();
    let _do = other.daemon(1);
    let grant = format!("other={}", other.path.display());
    let v = ok_json(&exec(
        &ws,
        COMPARE,
        &["--route", &grant],
        &[
            "--to",
            "self",
            "--to",
            "other",
            "--no-judge",
            "--max-tokens",
            "12",
            "--json",
            "Name a bird.",
        ],
    ));
    assert_eq!(v["method"], "agreement");
    assert_eq!(answer_routes(&v), ["self", "other"]);
    assert_eq!(tagged(&other, "compare-answer").len(), 1);
    assert_eq!(tagged(&ws, "compare-answer").len(), 1);
    assert!(tagged(&ws, "compare-judge").is_empty());
}

// ----- retry ---------------------------------------------------------------------------

#[test]
fn retry_accepts_schema_valid_json() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let schema = r#"{"type":"object","properties":{"ok":{"type":"boolean"}},"required":["ok"]}"#;
    let out = exec(
        &ws,
        RETRY,
        &[],
        &[
            "--schema",
            schema,
            "--attempts",
            "3",
            "--backoff-ms",
            "10",
            "Is water wet? Answer in JSON.",
        ],
    );
    let v = ok_json(&out);
    assert!(v["ok"].is_boolean(), "{v}");
    let attempts = tagged(&ws, "retry-attempt");
    assert!((1..=3).contains(&attempts.len()));
    // The job itself was constrained with the schema.
    let (state, id) = &attempts[0];
    assert!(ws.path.join(state).join(id).join("schema.json").is_file());
}

#[test]
fn retry_gives_up_after_its_attempts_and_says_why() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let started = Instant::now();
    let out = exec(
        &ws,
        RETRY,
        &[],
        &[
            "--contains",
            "QZXV-NEVER",
            "--attempts",
            "3",
            "--backoff-ms",
            "200",
            "--no-jitter",
            "--max-tokens",
            "8",
            "--json",
            "Say hello.",
        ],
    );
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("retry: gave up after 3 attempt(s)"), "{err}");
    assert!(
        err.contains("attempt 1: rejected: output does not contain \"QZXV-NEVER\""),
        "{err}"
    );
    assert_eq!(tagged(&ws, "retry-attempt").len(), 3);
    // Backoff 200 ms then 400 ms, exactly (no jitter).
    assert!(started.elapsed() >= Duration::from_millis(600));
    // A failed job is retried too; bad input is not.
    let out = exec(
        &ws,
        RETRY,
        &[],
        &["--attempts", "2", "--backoff-ms", "0", &too_long()],
    );
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("gave up after 2 attempt(s); last error: failed:"));
    let out = exec(
        &ws,
        RETRY,
        &[],
        &["--attempts", "3", "--tag", "bad tag!", "hi"],
    );
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("invalid"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("gave up"), "{}", stderr(&out));
}

// ----- decompose -----------------------------------------------------------------------

#[test]
fn decompose_solves_subgoals_by_calling_itself() {
    let ws = TestWs::new();
    let _d = ws.daemon(2);
    let v = ok_json(&exec(
        &ws,
        DECOMPOSE,
        &[],
        &[
            "--max-depth",
            "1",
            "--max-subgoals",
            "2",
            "--max-tokens",
            "24",
            "--temp",
            "0",
            "--json",
            "Plan a birthday party",
        ],
    ));
    assert_eq!(v["depth"], 0);
    assert!(v["result"].is_string());
    let subs = v["subgoals"].as_array().expect("subgoals");
    let splits = tagged(&ws, "decompose-split");
    let solves = tagged(&ws, "decompose-solve");
    let combines = tagged(&ws, "decompose-combine");
    assert_eq!(splits.len(), 1);
    if subs.is_empty() {
        // The model gave no usable subgoal: the goal was solved directly.
        assert_eq!((solves.len(), combines.len()), (1, 0));
    } else {
        // Each subgoal was solved at depth 1 (a leaf there) by a called decompose.
        assert!(subs.len() <= 2);
        assert_eq!((solves.len(), combines.len()), (subs.len(), 1), "{v}");
        for s in subs {
            assert!(s["goal"].is_string() && s["result"].is_string());
        }
    }
}

#[test]
fn decompose_as_an_agent_job_parents_the_jobs_of_nested_calls() {
    let ws = TestWs::new();
    let _d = ws.daemon(2);
    let decompose = guest(DECOMPOSE);
    let decompose = decompose.to_str().expect("utf-8 path");
    let id = ws.submit(&[
        "--agent",
        decompose,
        "--",
        "--max-depth",
        "1",
        "--max-subgoals",
        "2",
        "--max-tokens",
        "16",
        "--temp",
        "0",
        "Plan a birthday party",
    ]);
    let (rc, _, err) = ws.follow(&id);
    assert_eq!(rc, 0, "{err}");
    // Every job, also those of the decompose calls one level down, is a child of the
    // agent job.
    let children = ws.flw(&["--children", &id]);
    let kids: BTreeSet<String> = stdout(&children).lines().map(str::to_owned).collect();
    let mine: BTreeSet<String> = tagged(&ws, "decompose")
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    assert!(kids.len() >= 2, "{kids:?}");
    assert_eq!(kids, mine);
    let solved_below = tagged(&ws, "decompose-solve").len();
    let split = tagged(&ws, "decompose-split").len();
    assert_eq!(split, 1);
    assert!(solved_below >= 1);
}

#[test]
fn decompose_at_the_host_depth_limit_fails_clearly() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    // The host allows one level of agents.call; decompose wants three.
    let out = exec(
        &ws,
        DECOMPOSE,
        &["--max-depth", "1"],
        &[
            "--max-depth",
            "3",
            "--max-subgoals",
            "1",
            "--max-tokens",
            "24",
            "--temp",
            "0",
            "Plan a wedding",
        ],
    );
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("decompose: call depth limit reached: cannot call self at depth 2")
            && err.contains("nrvna exec --max-depth"),
        "{err}"
    );
    // It split at depths 0 and 1, then stopped: nothing was solved.
    assert_eq!(tagged(&ws, "decompose-split").len(), 2);
    assert!(tagged(&ws, "decompose-solve").is_empty());
}

#[test]
fn decompose_refuses_a_fan_out_that_would_explode() {
    let ws = TestWs::new();
    let out = exec(
        &ws,
        DECOMPOSE,
        &[],
        &["--max-depth", "6", "--max-subgoals", "3", "goal"],
    );
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("729 leaf goals; the limit is 256"),
        "{}",
        stderr(&out)
    );
    assert!(jobs(&ws).is_empty());
}
