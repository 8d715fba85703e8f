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
//! Memory lives in `kv`, under `loop/RUN/` where RUN is `--run-id` or a hash of the
//! goal: every finished round's reply and an epoch naming this attempt at the goal.
//! Each round's job is submitted with the key `loop/RUN/EPOCH/NNN` (`submit-options.key`),
//! which the host records before it queues the job. A run that is interrupted — killed,
//! timed out, the daemon restarted — and started again with the same goal resumes:
//! finished rounds are not redone, and the round in progress gets back its job from the
//! host, even one submitted an instant before the kill (a job that failed or was
//! cancelled meanwhile is replaced by a new one). The state is removed when the loop
//! ends, so running a finished goal again starts over with a new epoch; `--fresh`
//! starts over even when there is state. Without kv (the host refuses it) the loop
//! still runs, but cannot resume.
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
stop word or --rounds is reached. Progress is kept in kv: running the same GOAL again
after an interruption resumes where it stopped.

Options:
  --rounds N         most rounds, 1-50 [5]
  --stop WORD        the word that ends the loop, case-sensitive [DONE]
  --memory-chars N   most characters of earlier rounds quoted into a prompt (the most
                     recent are kept), 0-100000 [4000]
  --run-id ID        name of the saved state, 1-64 of [A-Za-z0-9_-] [hash of GOAL]
  --fresh            forget saved state of this run and start over
  --route NAME       run every job on this granted route [own workspace]
  --json             print {\"goal\",\"rounds\":[{\"round\",\"id\",\"text\"}],\"done\",\"resumed\"}
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
    run_id: String,
    fresh: bool,
    json: bool,
    opts: Options,
}

impl Flags for Config {
    fn flag(&mut self, flag: &str, p: &mut Parser) -> Result<bool, String> {
        match flag {
            "--rounds" => self.rounds = p.number_in(1..=50)?,
            "--stop" => self.stop = p.value()?,
            "--memory-chars" => self.memory_chars = p.number_in(0..=100_000)?,
            "--run-id" => self.run_id = p.value()?,
            "--fresh" => self.fresh = true,
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
        run_id: String::new(),
        fresh: false,
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
    if c.run_id.is_empty() {
        c.run_id = format!("{:016x}", text::fnv64(&c.goal));
    } else if c.run_id.len() > 64
        || !c
            .run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(p.error("--run-id must be 1-64 of [A-Za-z0-9_-]"));
    }
    Ok(Some(c))
}

export_command!(parse, USAGE, |c| run_loop(&c));

/// The loop's saved state; every method is a no-op once kv turned out to be unavailable.
struct State {
    prefix: String,
    persist: bool,
    /// Names this attempt at the goal in the rounds' submit keys; `None` without kv.
    epoch: Option<String>,
}

impl State {
    fn open(c: &Config) -> Result<State, String> {
        let mut s = State {
            prefix: format!("loop/{}/", c.run_id),
            persist: true,
            epoch: None,
        };
        if c.fresh {
            s.guard(kv::delete_prefix(&s.prefix))?;
        }
        let saved_goal = s.guard(kv::get_string(&s.key("goal")))?.flatten();
        match saved_goal {
            Some(g) if g != c.goal => {
                return Err(format!(
                    "loop: run {} holds the state of another goal ({:?}); pass --fresh to \
                     discard it, or another --run-id",
                    c.run_id,
                    text::head(&g, 80)
                ));
            }
            Some(_) => {}
            None => s.guard(kv::set(&s.key("goal"), &c.goal))?.unwrap_or(()),
        }
        let epoch = match s.get("epoch")? {
            Some(e) => Some(e),
            None => {
                let e = new_epoch();
                s.set("epoch", &e)?;
                s.persist.then_some(e)
            }
        };
        s.epoch = epoch;
        Ok(s)
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A kv failure: `denied` means no kv for this run (go on without resuming); any
    /// other error is the run's.
    fn guard<T>(&mut self, r: nrvna_guest::Result<T>) -> Result<Option<T>, String> {
        if !self.persist {
            return Ok(None);
        }
        match r {
            Ok(v) => Ok(Some(v)),
            Err(nrvna_guest::Error::Denied(why)) => {
                log::warn(format!(
                    "kv is not available ({why}): this run cannot be resumed"
                ));
                self.persist = false;
                Ok(None)
            }
            Err(e) => Err(format!("loop: kv: {e}")),
        }
    }

    fn get(&mut self, name: &str) -> Result<Option<String>, String> {
        if !self.persist {
            return Ok(None);
        }
        let key = self.key(name);
        Ok(self.guard(kv::get_string(&key))?.flatten())
    }

    fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        if !self.persist {
            return Ok(());
        }
        let key = self.key(name);
        self.guard(kv::set(&key, value)).map(|_| ())
    }

    fn clear(&mut self) -> Result<(), String> {
        if !self.persist {
            return Ok(());
        }
        let prefix = self.prefix.clone();
        self.guard(kv::delete_prefix(&prefix)).map(|_| ())
    }
}

fn round_key(i: u32) -> String {
    format!("round/{i:03}")
}

/// A name for a new attempt at a goal, so its submit keys differ from every earlier
/// attempt's (16 hex digits from the clock and the process's hash seed).
fn new_epoch() -> String {
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(nanos);
    format!("{:016x}", h.finish())
}

fn run_loop(c: &Config) -> Result<String, String> {
    let mut state = State::open(c)?;

    // Rounds finished by an earlier, interrupted run.
    let mut rounds: Vec<(u32, String, String)> = Vec::new();
    for i in 1..=c.rounds {
        match state.get(&round_key(i))? {
            Some(saved) => {
                let (id, text) = saved.split_once('\n').unwrap_or(("", saved.as_str()));
                rounds.push((i, id.to_owned(), text.to_owned()));
            }
            None => break,
        }
    }
    let resumed = rounds.len();
    if resumed > 0 {
        log::info(format!(
            "resuming run {}: {resumed} round(s) already done",
            c.run_id
        ));
    }

    let mut done = rounds.iter().any(|(_, _, t)| t.contains(&c.stop));
    let mut next = rounds.len() as u32 + 1;
    while !done && next <= c.rounds {
        let memory: Vec<&str> = rounds.iter().map(|(_, _, t)| t.as_str()).collect();
        let memory = memory.join("\n---\n");
        let prompt = format!(
            "Goal: {}\nPrevious work: {}\nContinue. Write the next section. Say {} if complete.",
            c.goal,
            text::tail(&memory, c.memory_chars),
            c.stop
        );
        let out = round(c, &state, next, &prompt)?;
        // The reply is saved before the pending job is forgotten: a crash in between
        // leaves a finished round, never a lost one.
        state.set(&round_key(next), &format!("{}\n{}", out.id, out.text))?;
        log::info(format!("round {next}/{} done ({})", c.rounds, out.id));
        done = out.text.contains(&c.stop);
        rounds.push((next, out.id, out.text));
        next += 1;
    }
    state.clear()?;

    if c.json {
        let list: Vec<_> = rounds
            .iter()
            .map(|(i, id, t)| json!({ "round": i, "id": id, "text": t }))
            .collect();
        return Ok(json!({
            "goal": c.goal,
            "rounds": list,
            "done": done,
            "resumed": resumed,
        })
        .to_string());
    }
    let mut out = String::new();
    for (i, _, t) in &rounds {
        out.push_str(&format!("=== Iteration {i} ===\n{t}\n"));
    }
    Ok(out)
}

/// One round's job. With kv it is submitted under the round's key, so a rerun after an
/// interruption gets back the job the interrupted run queued for this round.
fn round(c: &Config, state: &State, i: u32, prompt: &str) -> Result<Output, String> {
    let mut job = Job::new(prompt).with(&c.opts).tag("loop").tag("loop-round");
    if let Some(epoch) = &state.epoch {
        job = job.key(format!("loop/{}/{epoch}/{i:03}", c.run_id));
    }
    let id = job.submit().map_err(|e| format!("loop: round {i}: {e}"))?;
    follow_output(&id)
        .map_err(|e| format!("loop: round {i} ({id}): {e}; run again with the same goal to resume"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn run_id_defaults_to_a_stable_hash_of_the_goal() {
        let a = parse(args(&["write", "it"])).unwrap().unwrap();
        let b = parse(args(&["--rounds", "3", "write it"]))
            .unwrap()
            .unwrap();
        assert_eq!(a.run_id, b.run_id);
        assert_eq!(a.run_id.len(), 16);
        let c = parse(args(&["--run-id", "my_run-1", "x"]))
            .unwrap()
            .unwrap();
        assert_eq!(c.run_id, "my_run-1");
    }

    #[test]
    fn rejects_bad_args_with_usage() {
        for bad in [
            &["--run-id", "../x", "g"][..],
            &["--rounds", "0", "g"],
            &["--stop", "", "g"],
            &[],
        ] {
            let e = parse(args(bad)).err().unwrap();
            assert!(e.starts_with("loop: ") && e.contains("usage: loop"), "{e}");
        }
        assert!(parse(args(&["-h"])).unwrap().is_none());
    }
}
