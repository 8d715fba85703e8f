//! Prefix reuse (`NRVNA_PREFIX_CACHE`): a job whose prompt starts like an earlier one's
//! reuses that job's KV cells, says how many in `meta.json`'s `cached_tokens`, and gets
//! the text it gets on a daemon that reuses nothing — also after a job that was
//! cancelled, filled its context or was refused left the slot.

use std::process::Command;
use std::time::Duration;

use nrvna_tests::{Daemon, TestWs, bin, code, model, run, stderr, wait_for};

const OFF: (&str, &str) = ("NRVNA_PREFIX_CACHE", "0");

/// Greedy, short.
fn greedy(ws: &TestWs, prompt: &str, max_tokens: u32) -> String {
    ws.submit(&[
        prompt,
        "--max-tokens",
        &max_tokens.to_string(),
        "--temp",
        "0",
    ])
}

/// The job's text, which must have succeeded.
fn text(ws: &TestWs, id: &str) -> String {
    let (rc, out, err) = ws.follow(id);
    assert_eq!(rc, 0, "{id}: {err}");
    out
}

fn tokens(ws: &TestWs, id: &str, key: &str) -> u64 {
    ws.meta("output", id)[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{id}: no {key} in meta.json"))
}

/// What each prompt gives on a fresh one-worker daemon that reuses nothing, with `env`.
fn reference(prompts: &[(&str, u32)], env: &[(&str, &str)]) -> Vec<String> {
    let ws = TestWs::new();
    let env: Vec<_> = env.iter().copied().chain([OFF]).collect();
    let _d = Daemon::start(&ws.path, &model(), 1, &[], &env);
    prompts
        .iter()
        .map(|(prompt, max)| {
            let id = greedy(&ws, prompt, *max);
            let out = text(&ws, &id);
            assert_eq!(tokens(&ws, &id, "cached_tokens"), 0, "reuse is off");
            out
        })
        .collect()
}

const RIVERS: &str = "Tell me one fact about rivers.";
const LAKES: &str = "Tell me one fact about lakes.";

#[test]
fn a_repeated_prompt_prefix_is_served_from_cache_with_the_same_text() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let first = greedy(&ws, RIVERS, 16);
    let first_text = text(&ws, &first);
    assert_eq!(
        tokens(&ws, &first, "cached_tokens"),
        0,
        "nothing to reuse yet"
    );
    // The same prompt again: all of it but the last token, which gives the logits.
    let again = greedy(&ws, RIVERS, 16);
    let again_text = text(&ws, &again);
    let prompt_tokens = tokens(&ws, &again, "prompt_tokens");
    assert_eq!(tokens(&ws, &again, "cached_tokens"), prompt_tokens - 1);
    // A prompt that shares the chat template's head and "Tell me one fact about".
    let other = greedy(&ws, LAKES, 16);
    let other_text = text(&ws, &other);
    let cached = tokens(&ws, &other, "cached_tokens");
    assert!(
        cached > 0 && cached < tokens(&ws, &other, "prompt_tokens") - 1,
        "{cached}"
    );
    assert_eq!(first_text, again_text);
    assert_eq!(
        vec![first_text, other_text],
        reference(&[(RIVERS, 16), (LAKES, 16)], &[])
    );
}

fn nrvna(args: &[&str]) -> std::process::Output {
    run(Command::new(bin("nrvna")).args(args))
}

#[test]
fn a_cancelled_job_leaves_no_cells_a_later_job_reuses_wrongly() {
    let ws = TestWs::new();
    let d = ws.daemon(1);
    // Greedy and long: cancelled while it generates, its slot holds the prompt and some
    // of its reply.
    let victim = greedy(&ws, RIVERS, 600);
    ws.wait_started(&victim, 1);
    std::thread::sleep(Duration::from_millis(1500));
    let out = nrvna(&["cancel", ws.path.to_str().unwrap(), &victim]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let (rc, _, err) = ws.follow(&victim);
    assert_eq!(rc, 1, "{err}\n{}", d.log_text());
    assert!(
        !ws.job_file("failed", &victim, "response.txt").is_empty(),
        "cancelled before it generated anything"
    );
    // The same prompt: its cells are reused, the reply's cells dropped.
    let next = greedy(&ws, RIVERS, 16);
    let next_text = text(&ws, &next);
    assert_eq!(
        tokens(&ws, &next, "cached_tokens"),
        tokens(&ws, &next, "prompt_tokens") - 1
    );
    assert_eq!(vec![next_text], reference(&[(RIVERS, 16)], &[]));
}

#[test]
fn a_job_that_filled_its_context_leaves_no_cells_a_later_job_reuses_wrongly() {
    let env = [("NRVNA_CTX", "128")];
    let essay = "Write a long essay about rivers.";
    let ws = TestWs::new();
    let _d = Daemon::start(&ws.path, &model(), 1, &[], &env);
    let doomed = greedy(&ws, essay, 500);
    let (rc, _, err) = ws.follow(&doomed);
    assert_eq!(rc, 1);
    assert!(err.contains("context of 128 tokens filled"), "{err}");
    // Its slot is full to the last cell; the next job keeps only the prompt's.
    let next = greedy(&ws, essay, 12);
    let next_text = text(&ws, &next);
    assert_eq!(
        tokens(&ws, &next, "cached_tokens"),
        tokens(&ws, &next, "prompt_tokens") - 1
    );
    assert_eq!(vec![next_text], reference(&[(essay, 12)], &env));
}

#[test]
fn a_refused_job_leaves_the_cache_as_it_was() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let first = greedy(&ws, RIVERS, 16);
    text(&ws, &first);
    // Refused at admission, with more tokens than the context holds: it never gets a
    // slot's cells.
    let too_long = greedy(&ws, &"word ".repeat(3000), 8);
    let (rc, _, err) = ws.follow(&too_long);
    assert_eq!(rc, 1);
    assert!(err.contains("per-job context"), "{err}");
    let next = greedy(&ws, LAKES, 16);
    let next_text = text(&ws, &next);
    assert!(tokens(&ws, &next, "cached_tokens") > 0);
    assert_eq!(vec![next_text], reference(&[(LAKES, 16)], &[]));
}

#[test]
fn a_job_copies_the_prefix_a_running_job_holds() {
    // Long enough that copying beats prefilling (64 tokens more than any free slot holds).
    let prompt = format!(
        "{} Now answer in one sentence: which of these is the oldest river?",
        "The Nile, the Amazon, the Yangtze, the Danube, the Rhine and the Mississippi are \
         rivers on different continents, each with its own history and towns on its banks."
            .repeat(4)
    );
    let ws = TestWs::new();
    let d = Daemon::start(&ws.path, &model(), 2, &[], &[("NRVNA_LOG", "debug")]);
    // Running, its prompt decoded (it has generated tokens), when the second job arrives.
    // A grammar of 300 fixed words keeps it running whatever the machine's speed: greedy
    // decoding alone may end this prompt's answer in a second.
    let grammar = ws.path.with_file_name("long.gbnf");
    std::fs::write(&grammar, format!("root ::= \"{}\"\n", "river ".repeat(300))).unwrap();
    let running = ws.submit(&[
        &prompt,
        "--max-tokens",
        "400",
        "--temp",
        "0",
        "--grammar",
        grammar.to_str().unwrap(),
    ]);
    let progress = ws.path.join(".progress").join(&running);
    assert!(wait_for(Duration::from_secs(120), || {
        std::fs::read_to_string(&progress)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .is_some_and(|n| n > 0)
    }));
    let copier = greedy(&ws, &prompt, 16);
    let copier_text = text(&ws, &copier);
    let prompt_tokens = tokens(&ws, &copier, "prompt_tokens");
    assert!(prompt_tokens > 100, "{prompt_tokens}");
    assert_eq!(
        tokens(&ws, &copier, "cached_tokens"),
        prompt_tokens - 1,
        "the prompt was not copied from the running job\n{}",
        d.log_text()
    );
    assert!(
        d.log_text().contains("prompt tokens from sequence"),
        "no copy logged:\n{}",
        d.log_text()
    );
    text(&ws, &running);
    assert_eq!(vec![copier_text], reference(&[(prompt.as_str(), 16)], &[]));
}
