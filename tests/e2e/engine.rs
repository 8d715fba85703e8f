//! The inference engine through the daemon: continuous batching gives each job the same
//! text as running it alone, one job's failure does not disturb the others, structured
//! output and embeddings (by the chat model, and by a dedicated embedding model).

use nrvna_tests::{Daemon, TestWs, code, embed_model, model, stdout};

/// Sixteen jobs with different temperatures, seeds, top-k and token limits.
fn varied_jobs(ws: &TestWs) -> Vec<String> {
    (0..16)
        .map(|i| {
            let temp = ["0", "0.3", "0.7", "1.0"][i % 4];
            ws.submit(&[
                &format!("Tell me a fact about the number {i}."),
                "--max-tokens",
                &(8 + i).to_string(),
                "--temp",
                temp,
                "--seed",
                &(i * 7 + 1).to_string(),
                "--top-k",
                &(20 + i).to_string(),
                "--tag",
                "varied",
            ])
        })
        .collect()
}

fn results(ws: &TestWs, ids: &[String]) -> Vec<String> {
    ids.iter()
        .map(|id| {
            let (rc, out, err) = ws.follow(id);
            assert_eq!(rc, 0, "{id}: {err}");
            out
        })
        .collect()
}

#[test]
fn a_batch_of_sixteen_gives_each_job_the_text_it_gets_alone() {
    // Batched: all 16 queued before a 16-slot daemon starts, so they decode together.
    let batched_ws = TestWs::new();
    let batched_ids = varied_jobs(&batched_ws);
    let d = Daemon::start(&batched_ws.path, &model(), 16, &[], &[]);
    let batched = results(&batched_ws, &batched_ids);
    assert!(d.log_text().contains("16 workers decoded together"));
    // Alone: one slot, one job at a time.
    let solo_ws = TestWs::new();
    let solo_ids = varied_jobs(&solo_ws);
    let _d1 = Daemon::start(&solo_ws.path, &model(), 1, &[], &[]);
    let solo = results(&solo_ws, &solo_ids);
    for (i, (b, s)) in batched.iter().zip(&solo).enumerate() {
        assert_eq!(b, s, "job {i} differs between the batch and a solo run");
    }
    // One after another in one slot, each job reused its predecessor's cells for the
    // prompt head they share (prefix reuse is on by default), and still got its text.
    let reused = solo_ids
        .iter()
        .filter(|id| solo_ws.meta("output", id)["cached_tokens"].as_u64() > Some(0))
        .count();
    assert_eq!(
        reused, 15,
        "jobs 2-16 of the solo run reuse a cached prefix"
    );
    // And the token limits held per job.
    for (i, id) in batched_ids.iter().enumerate() {
        let generated = batched_ws.meta("output", id)["generated_tokens"]
            .as_u64()
            .unwrap();
        assert!(generated <= 8 + i as u64, "job {i}: {generated} tokens");
    }
}

#[test]
fn a_job_that_fails_mid_batch_leaves_the_others_alone() {
    // A 128-token context: the long job fills it and fails part-way; the short ones,
    // decoded in the same batches, finish exactly as they do alone.
    let env = [("NRVNA_CTX", "128")];
    let short = |ws: &TestWs| -> Vec<String> {
        (0..3)
            .map(|i| {
                ws.submit(&[
                    &format!("Name a fruit number {i}."),
                    "--max-tokens",
                    "12",
                    "--temp",
                    "0",
                ])
            })
            .collect()
    };
    let ws = TestWs::new();
    let doomed = ws.submit(&[
        "Write a long essay about rivers.",
        "--max-tokens",
        "500",
        "--temp",
        "0",
    ]);
    let ids = short(&ws);
    let _d = Daemon::start(&ws.path, &model(), 4, &[], &env);
    let (rc, _, err) = ws.follow(&doomed);
    assert_eq!(rc, 1);
    assert!(err.contains("context of 128 tokens filled"), "{err}");
    // Its partial output is kept beside the error.
    assert!(!ws.job_file("failed", &doomed, "response.txt").is_empty());
    let batched = results(&ws, &ids);

    let solo_ws = TestWs::new();
    let solo_ids = short(&solo_ws);
    let _d1 = Daemon::start(&solo_ws.path, &model(), 1, &[], &env);
    assert_eq!(batched, results(&solo_ws, &solo_ids));
}

#[test]
fn json_schema_and_grammar_constrain_the_output() {
    let ws = TestWs::new();
    let _d = ws.daemon(2);
    let schema = ws.scratch().join("person.json");
    std::fs::write(
        &schema,
        r#"{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"}},"required":["name","age"]}"#,
    )
    .unwrap();
    let grammar = ws.scratch().join("yesno.gbnf");
    std::fs::write(&grammar, "root ::= \"yes\" | \"no\"\n").unwrap();
    let person = ws.submit(&[
        "Invent a person.",
        "--json-schema",
        schema.to_str().unwrap(),
        "--max-tokens",
        "64",
    ]);
    let yesno = ws.submit(&["Is water wet?", "--grammar", grammar.to_str().unwrap()]);
    let truncated = ws.submit(&[
        "Invent a person.",
        "--json-schema",
        schema.to_str().unwrap(),
        "--max-tokens",
        "3",
    ]);

    let (rc, out, err) = ws.follow(&person);
    assert_eq!(rc, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("schema output is JSON");
    assert!(v["name"].is_string() && v["age"].is_i64(), "{v}");
    assert_eq!(ws.meta("output", &person)["output_format"], "json_schema");

    let (rc, out, _) = ws.follow(&yesno);
    assert_eq!(rc, 0);
    assert!(out == "yes" || out == "no", "{out:?}");

    // Cut off before the JSON closes: failed, with the raw text kept.
    let (rc, _, err) = ws.follow(&truncated);
    assert_eq!(rc, 1);
    assert!(
        err.contains("not valid JSON") && err.contains("response.txt"),
        "{err}"
    );
    assert!(
        ws.path
            .join("failed")
            .join(&truncated)
            .join("response.txt")
            .is_file()
    );
    let v: serde_json::Value =
        serde_json::from_str(&stdout(&ws.flw(&[&truncated, "--json"]))).unwrap();
    assert!(v["partial"].is_string());

    // A schema that is not JSON is refused at submission.
    let bad = ws.scratch().join("bad.json");
    std::fs::write(&bad, "{not json").unwrap();
    assert_eq!(
        code(&ws.wrk(&["x", "--json-schema", bad.to_str().unwrap()])),
        1
    );
}

fn embedding(ws: &TestWs, text: &str) -> Vec<f64> {
    let id = ws.submit(&["--embed", text]);
    let (rc, out, err) = ws.follow(&id);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(out, ws.job_file("output", &id, "embedding.json"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let vector: Vec<f64> = serde_json::from_value(v["vector"].clone()).unwrap();
    assert_eq!(v["dim"].as_u64().unwrap() as usize, vector.len());
    vector
}

#[test]
fn embeddings_are_normalised_and_meaningful() {
    let ws = TestWs::new();
    let _d = ws.daemon(1);
    let cat = embedding(&ws, "a cat sat on the mat");
    let kitten = embedding(&ws, "a kitten sat on the rug");
    let stocks = embedding(&ws, "the stock market fell sharply");
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    assert!(cat.len() >= 64);
    assert!((dot(&cat, &cat) - 1.0).abs() < 1e-4, "not L2-normalised");
    assert!(
        dot(&cat, &kitten) > dot(&cat, &stocks),
        "similar sentences should be closer: {} vs {}",
        dot(&cat, &kitten),
        dot(&cat, &stocks)
    );
    // The same text embeds the same way.
    assert_eq!(embedding(&ws, "a cat sat on the mat"), cat);
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    dot(a, b) / (dot(a, a) * dot(b, b)).sqrt()
}

#[test]
fn a_dedicated_embedding_model_serves_embed_jobs() {
    let ws = TestWs::new();
    let embedder = embed_model();
    let d = Daemon::start(
        &ws.path,
        &model(),
        1,
        &["--embed-model", &embedder.display().to_string()],
        &[],
    );
    let log = d.log_text();
    assert!(
        log.contains("embeddings by all-MiniLM-L6-v2 (")
            && log.contains("384 dimensions, at most 512 tokens, mean pooling)"),
        "{log}"
    );
    let cat = embedding(&ws, "A cat sits on the mat");
    let kitten = embedding(&ws, "A kitten is sitting on a rug");
    let stocks = embedding(&ws, "Stock markets fell sharply today");
    assert_eq!(cat.len(), 384);
    for v in [&cat, &kitten, &stocks] {
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "not L2-normalised: {norm}");
    }
    let near = cosine(&cat, &kitten);
    let far = cosine(&cat, &stocks);
    assert!(
        near > 0.6 && far < 0.2 && near - far > 0.4,
        "paraphrases should be clearly closer: {near} vs {far}"
    );
    // The same figures as a plain numpy forward pass of the original F32 weights
    // (scripts/embedding-model --reference): 0.6945 and 0.0626.
    assert!((near - 0.6945).abs() < 0.01, "{near}");
    assert!((far - 0.0626).abs() < 0.01, "{far}");

    // meta.json names the model; text jobs still run on the chat model.
    let ids = ws.entries("output");
    assert_eq!(ws.meta("output", &ids[0])["model"], "all-MiniLM-L6-v2");
    let text = ws.submit(&["Say hello.", "--max-tokens", "4"]);
    assert_eq!(ws.follow(&text).0, 0);
    let chat_model = ws.meta("output", &text)["model"].clone();
    assert!(
        chat_model.is_string() && chat_model != "all-MiniLM-L6-v2",
        "{chat_model}"
    );

    // A text longer than the model's 512 tokens fails alone, naming the limit.
    let long = vec!["word"; 600].join(" ");
    let id = ws.submit(&["--embed", &long]);
    let (rc, _, err) = ws.follow(&id);
    assert_eq!(rc, 1, "{err}");
    assert!(
        err.contains("602 tokens") && err.contains("all-MiniLM-L6-v2 takes at most 512 tokens"),
        "{err}"
    );
    assert_eq!(embedding(&ws, "A cat sits on the mat"), cat);
}

/// Processes that keep every core busy until dropped.
struct BusyLoops(Vec<std::process::Child>);

impl BusyLoops {
    fn start(count: usize) -> BusyLoops {
        BusyLoops(
            (0..count)
                .map(|_| {
                    std::process::Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("spawn a busy loop")
                })
                .collect(),
        )
    }
}

impl Drop for BusyLoops {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn the_decode_thread_count_follows_foreign_load_without_changing_any_text() {
    // Greedy jobs long enough that the context is rebuilt while they decode.
    let jobs = |ws: &TestWs| -> Vec<String> {
        ["rivers", "mountains", "the sea", "forests"]
            .iter()
            .map(|topic| {
                ws.submit(&[
                    &format!("Write a long essay about {topic}."),
                    "--max-tokens",
                    "160",
                    "--temp",
                    "0",
                ])
            })
            .collect()
    };
    // Reference: one fixed thread (the tests' default), no rebuilds.
    let fixed_ws = TestWs::new();
    let fixed_ids = jobs(&fixed_ws);
    let fixed_daemon = Daemon::start(&fixed_ws.path, &model(), 4, &[], &[]);
    let fixed = results(&fixed_ws, &fixed_ids);
    assert!(!fixed_daemon.log_text().contains("decode threads"));
    drop(fixed_daemon);

    // Adaptive (NRVNA_THREADS unset), with every core kept busy from elsewhere.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let ws = TestWs::new();
    let d = Daemon::start(&ws.path, &model(), 4, &[], &[("NRVNA_THREADS", "")]);
    let loops = BusyLoops::start(cores + 1);
    let ids = jobs(&ws);
    let adaptive = results(&ws, &ids);
    drop(loops);
    let log = d.log_text();
    if cores > 1 {
        assert!(
            log.contains(&format!("decode threads {cores} → 1")),
            "no change to one thread under load:\n{log}"
        );
    }
    for (i, (a, f)) in adaptive.iter().zip(&fixed).enumerate() {
        assert_eq!(a, f, "job {i}: the rebuilt context changed the text");
    }
}
