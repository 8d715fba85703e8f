//! Parallel jobs: submits every argument as a prompt, waits for the first with
//! `wait-any`, then for all with `wait-all`. Returns one line per job:
//! `<index> ok <generated_tokens> <id>` or `<index> err <error>`, then `first <index>`.

wit_bindgen::generate!({ path: "../../../wit", world: "agent" });

use nrvna::agent::jobs;
use nrvna::agent::types::SubmitOptions;

struct Fanout;

impl Guest for Fanout {
    fn run(args: Vec<String>) -> Result<String, String> {
        if args.is_empty() {
            return Err("usage: fanout PROMPT...".into());
        }
        let mut ids = Vec::new();
        for prompt in &args {
            let options = SubmitOptions {
                route: None,
                images: Vec::new(),
                max_tokens: Some(8),
                temperature: Some(0.0),
                seed: None,
                system: None,
                json_schema: None,
                parent: None,
                tags: vec!["fx-fanout".into()],
                key: None,
            };
            ids.push(jobs::submit(prompt, &options).map_err(|e| format!("submit: {e:?}"))?);
        }
        let first = jobs::wait_any(&ids, None).map_err(|e| format!("wait-any: {e:?}"))?;
        let mut lines = Vec::new();
        for (i, result) in jobs::wait_all(&ids, None).into_iter().enumerate() {
            lines.push(match result {
                Ok(out) if out.id == ids[i] => {
                    format!("{i} ok {} {}", out.generated_tokens, out.id)
                }
                Ok(out) => format!("{i} err result for {} in place of {}", out.id, ids[i]),
                Err(e) => format!("{i} err {e:?}"),
            });
        }
        lines.push(format!("first {first}"));
        Ok(lines.join("\n"))
    }
}

export!(Fanout);
