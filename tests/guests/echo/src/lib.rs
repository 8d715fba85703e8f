//! Round trip: submits its first argument as a prompt, follows the job, and returns
//! `id|prompt_tokens|generated_tokens|text`. An optional second argument is max-tokens.

wit_bindgen::generate!({ path: "../../../wit", world: "agent" });

use nrvna::agent::jobs;
use nrvna::agent::log::{Level, log};
use nrvna::agent::types::SubmitOptions;

struct Echo;

impl Guest for Echo {
    fn run(args: Vec<String>) -> Result<String, String> {
        let prompt = args.first().ok_or("usage: echo PROMPT [MAX_TOKENS]")?;
        let max_tokens = match args.get(1) {
            Some(n) => Some(n.parse::<u32>().map_err(|e| format!("max tokens: {e}"))?),
            None => None,
        };
        let options = SubmitOptions {
            route: None,
            images: Vec::new(),
            max_tokens,
            temperature: Some(0.0),
            seed: Some(7),
            system: None,
            json_schema: None,
            parent: None,
            tags: vec!["fx-echo".into()],
            key: None,
        };
        let id = jobs::submit(prompt, &options).map_err(|e| format!("submit: {e:?}"))?;
        log(Level::Info, &format!("submitted {id}"));
        let out = jobs::follow(&id, None).map_err(|e| format!("follow {id}: {e:?}"))?;
        Ok(format!(
            "{}|{}|{}|{}",
            out.id, out.prompt_tokens, out.generated_tokens, out.text
        ))
    }
}

export!(Echo);
