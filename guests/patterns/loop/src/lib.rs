//! `loop`: an agent loop with memory. Each round asks the model to continue the work
//! towards GOAL given what it wrote so far, until a reply contains the stop word (`DONE`)
//! or the round limit is reached; prints every round's reply.
//!
//! ```text
//! nrvna exec loop.wasm --ws ./ws -- --rounds 5 "Write a Python tutorial covering variables, loops, and functions"
//! ```
//!
//! Arguments: the goal (words joined by spaces) and the options in [`USAGE`].
//! Defaults: at most 5 rounds, stop word `DONE` (case-sensitive, anywhere in a reply,
//! like the seed's `grep -q DONE`), the last 4000 characters of earlier rounds quoted
//! into each prompt.
//! Limits: 1-50 rounds, one job at a time.
//!
//! The loop keeps its memory in the component: it has no resume code of its own. A run
//! that is interrupted — killed, the daemon restarted — resumes from the host's journal
//! (`nrvna exec --resume RUN`, or an agent job requeued after a crash): the finished
//! rounds are answered from the record, and the round in flight gets back its job.
//!
//! Prompts are the seed's: `Goal: G\nPrevious work: MEMORY\nContinue. Write the next
//! section. Say DONE if complete.` A small model may never say DONE or say it at once;
//! the round limit bounds the former, and the latter simply ends the loop early.
//!
//! Every job is tagged `loop` and `loop-round`.

use nrvna_guest::prelude::*;
use nrvna_guest::serde_json::json;
use nrvna_guest::text;

pub const USAGE: &str = "\
usage: loop [OPTIONS] [--] GOAL...

Ask the model to continue towards GOAL, round after round, until a reply contains the
stop word or --rounds is reached. An interrupted run resumes from the host's journal
(nrvna exec --resume RUN).

Options:
  --rounds N         most rounds, 1-50 [5]
  --stop WORD        the word that ends the loop, case-sensitive [DONE]
  --memory-chars N   most characters of earlier rounds quoted into a prompt (the most
                     recent are kept), 0-100000 [4000]
  --route NAME       run every job on this granted route [own workspace]
  --json             print {\"goal\",\"rounds\":[{\"round\",\"id\",\"text\"}],\"done\"}
  --max-tokens N     most tokens per job [daemon default]
  --temp T           sampling temperature 0-5 [daemon default]
  --seed N           sampling seed
  --system TEXT      system message for every job
  --tag TAG          add a tag to every job (repeatable)
  -h, --help         this text";

struct Config {
    goal: String,
    rounds: u32,
    stop: String,
    memory_chars: usize,
    json: bool,
    opts: Options,
}

impl Flags for Config {
    fn flag(&mut self, flag: &str, p: &mut Parser) -> Result<bool, String> {
        match flag {
            "--rounds" => self.rounds = p.number_in(1..=50)?,
            "--stop" => self.stop = p.value()?,
            "--memory-chars" => self.memory_chars = p.number_in(0..=100_000)?,
            "--route" => self.opts.route = route_of(&p.value()?).map(Into::into),
            "--json" => self.json = true,
            _ => return self.opts.accept(flag, p),
        }
        Ok(true)
    }
}

fn parse(args: Vec<String>) -> Result<Option<Config>, String> {
    let mut p = Parser::new("loop", USAGE, args);
    let mut c = Config {
        goal: String::new(),
        rounds: 5,
        stop: "DONE".into(),
        memory_chars: 4000,
        json: false,
        opts: Options::default(),
    };
    let Some(words) = p.read(&mut c)? else {
        return Ok(None);
    };
    c.goal = p.joined(&words, "GOAL")?;
    if c.stop.is_empty() {
        return Err(p.error("--stop needs a non-empty word"));
    }
    Ok(Some(c))
}

export_command!(parse, USAGE, |c| run_loop(&c));

fn run_loop(c: &Config) -> Result<String, String> {
    let mut rounds: Vec<(u32, String, String)> = Vec::new();
    let mut done = false;
    let mut next = 1;
    while !done && next <= c.rounds {
        let memory: Vec<&str> = rounds.iter().map(|(_, _, t)| t.as_str()).collect();
        let memory = memory.join("\n---\n");
        let prompt = format!(
            "Goal: {}\nPrevious work: {}\nContinue. Write the next section. Say {} if complete.",
            c.goal,
            text::tail(&memory, c.memory_chars),
            c.stop
        );
        let out = round(c, next, &prompt)?;
        log::info(format!("round {next}/{} done ({})", c.rounds, out.id));
        done = out.text.contains(&c.stop);
        rounds.push((next, out.id, out.text));
        next += 1;
    }

    if c.json {
        let list: Vec<_> = rounds
            .iter()
            .map(|(i, id, t)| json!({ "round": i, "id": id, "text": t }))
            .collect();
        return Ok(json!({
            "goal": c.goal,
            "rounds": list,
            "done": done,
        })
        .to_string());
    }
    let mut out = String::new();
    for (i, _, t) in &rounds {
        out.push_str(&format!("=== Iteration {i} ===\n{t}\n"));
    }
    Ok(out)
}

/// One round's job.
fn round(c: &Config, i: u32, prompt: &str) -> Result<Output, String> {
    let job = Job::new(prompt).with(&c.opts).tag("loop").tag("loop-round");
    let id = job.submit().map_err(|e| format!("loop: round {i}: {e}"))?;
    follow_output(&id).map_err(|e| format!("loop: round {i} ({id}): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn rejects_bad_args_with_usage() {
        for bad in [&["--rounds", "0", "g"][..], &["--stop", "", "g"], &[]] {
            let e = parse(args(bad)).err().unwrap();
            assert!(e.starts_with("loop: ") && e.contains("usage: loop"), "{e}");
        }
        assert!(parse(args(&["-h"])).unwrap().is_none());
    }
}
