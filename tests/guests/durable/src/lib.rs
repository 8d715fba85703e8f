//! A run that makes every kind of host call the journal's crash tests stop in, with no
//! resume code of its own: `PROMPT1 PROMPT2` reads the wall clock and a random number,
//! bumps a kv counter (`get`, then `set`), submits PROMPT1 and follows it, then calls
//! itself (`child PROMPT2`: submit and follow) through `agents.call`. It returns
//! `t=NANOS r=RANDOM count=N`, then the two jobs' texts, one per line. Jobs are greedy
//! (temperature 0), 8 tokens, tagged `durable`. The kv key is `durable/count`, or the
//! value of the env var `DURABLE_KEY` when granted.

wit_bindgen::generate!({ path: "../../../wit", world: "agent" });

use nrvna::agent::types::SubmitOptions;
use nrvna::agent::{agents, jobs, kv};

struct Durable;

fn options() -> SubmitOptions {
    SubmitOptions {
        route: None,
        images: Vec::new(),
        max_tokens: Some(8),
        temperature: Some(0.0),
        seed: None,
        system: None,
        json_schema: None,
        parent: None,
        tags: vec!["durable".into()],
        key: None,
    }
}

fn ask(prompt: &str) -> Result<String, String> {
    let id = jobs::submit(prompt, &options()).map_err(|e| format!("submit: {e:?}"))?;
    let out = jobs::follow(&id, None).map_err(|e| format!("follow {id}: {e:?}"))?;
    Ok(out.text.replace('\n', " "))
}

impl Guest for Durable {
    fn run(args: Vec<String>) -> Result<String, String> {
        if args.first().map(String::as_str) == Some("child") {
            let prompt = args.get(1).ok_or("usage: child PROMPT")?;
            return ask(prompt);
        }
        let [p1, p2] = &args[..] else {
            return Err("usage: durable PROMPT1 PROMPT2 | child PROMPT".into());
        };
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let r = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u8(1);
            h.finish()
        };
        let key = std::env::var("DURABLE_KEY").unwrap_or_else(|_| "durable/count".into());
        let count = match kv::get(&key).map_err(|e| format!("get: {e:?}"))? {
            Some(b) => String::from_utf8_lossy(&b).parse::<u64>().unwrap_or(0),
            None => 0,
        } + 1;
        kv::set(&key, count.to_string().as_bytes()).map_err(|e| format!("set: {e:?}"))?;
        let first = ask(p1)?;
        let second = agents::call("self", &["child".to_string(), p2.clone()])
            .map_err(|e| format!("call: {e:?}"))?;
        Ok(format!("t={t} r={r} count={count}\n{first}\n{second}"))
    }
}

export!(Durable);
