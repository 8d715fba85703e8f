//! `refine`: self-refinement. Writes a first draft of GOAL, then for each round asks for
//! a critique of the draft and an improved draft based on it; prints the final draft.
//!
//! ```text
//! nrvna exec refine.wasm --ws ./ws -- --rounds 2 "Write a cover letter for a senior engineer"
//! ```
//!
//! Arguments: the goal (words joined by spaces) and the options in [`USAGE`].
//! Defaults: 1 round, every job in the component's own workspace, the daemon's sampling.
//! Limits: 1-5 rounds (2 + 2·rounds jobs, run one after another); drafts and critiques
//! are quoted into the next prompt up to `--max-chars` (4000) characters each, so the
//! prompts stay inside a small context window.
//!
//! Prompts are the seed script's: the goal itself, `Critique this draft. What's weak?
//! DRAFT`, and `Improve this draft based on feedback:\nDraft: ...\nFeedback: ...`.
//! Small models sometimes answer with nothing: an empty improvement keeps the previous
//! draft, so the result is never worse than the first non-empty draft.
//!
//! Every job is tagged `refine` and `refine-draft`, `refine-critique` or
//! `refine-improve`. Run as a daemon job (`wrk WS --agent refine.wasm -- GOAL`) the jobs
//! are children of that job (`flw WS --children ID`).

use nrvna_guest::prelude::*;
use nrvna_guest::serde_json::json;
use nrvna_guest::text;

pub const USAGE: &str = "\
usage: refine [OPTIONS] [--] GOAL...

Draft GOAL, then critique and improve the draft --rounds times; prints the final draft.

Options:
  --rounds N       critique-and-improve rounds, 1-5 [1]
  --route NAME     run every job on this granted route [own workspace]
  --max-chars N    most characters of a draft or critique quoted into a prompt,
                   100-100000 [4000]
  --json           print {\"goal\",\"final\",\"rounds\":[{\"critique\",\"draft\"}],\"jobs\"}
  --max-tokens N   most tokens per job [daemon default]
  --temp T         sampling temperature 0-5 [daemon default]
  --seed N         sampling seed
  --system TEXT    system message for every job
  --tag TAG        add a tag to every job (repeatable)
  -h, --help       this text";

struct Config {
    goal: String,
    rounds: u32,
    max_chars: usize,
    json: bool,
    opts: Options,
}

impl Flags for Config {
    fn flag(&mut self, flag: &str, p: &mut Parser) -> Result<bool, String> {
        match flag {
            "--rounds" => self.rounds = p.number_in(1..=5)?,
            "--route" => self.opts.route = route_of(&p.value()?).map(Into::into),
            "--max-chars" => self.max_chars = p.number_in(100..=100_000)?,
            "--json" => self.json = true,
            _ => return self.opts.accept(flag, p),
        }
        Ok(true)
    }
}

fn parse(args: Vec<String>) -> Result<Option<Config>, String> {
    let mut p = Parser::new("refine", USAGE, args);
    let mut c = Config {
        goal: String::new(),
        rounds: 1,
        max_chars: 4000,
        json: false,
        opts: Options::default(),
    };
    let Some(words) = p.read(&mut c)? else {
        return Ok(None);
    };
    c.goal = p.joined(&words, "GOAL")?;
    Ok(Some(c))
}

export_command!(parse, USAGE, |c| refine(&c));

fn refine(c: &Config) -> Result<String, String> {
    let mut jobs = Vec::new();
    let mut step = |step: &str, prompt: String| -> Result<String, String> {
        let out = Job::new(prompt)
            .with(&c.opts)
            .tag("refine")
            .tag(format!("refine-{step}"))
            .run()
            .context(step)?;
        jobs.push(out.id);
        Ok(out.text)
    };

    let mut draft = step("draft", c.goal.clone())?;
    let mut rounds = Vec::new();
    for round in 1..=c.rounds {
        let quoted = text::head(&draft, c.max_chars);
        let critique = step(
            "critique",
            format!("Critique this draft. What's weak? {quoted}"),
        )?;
        let improved = step(
            "improve",
            format!(
                "Improve this draft based on feedback:\nDraft: {quoted}\nFeedback: {}",
                text::head(&critique, c.max_chars)
            ),
        )?;
        if improved.trim().is_empty() {
            log::warn(format!(
                "round {round}: the improvement was empty; keeping the previous draft"
            ));
        } else {
            draft = improved;
        }
        log::info(format!("round {round}/{} done", c.rounds));
        rounds.push(json!({ "critique": critique, "draft": draft }));
    }

    if c.json {
        return Ok(json!({
            "goal": c.goal,
            "final": draft,
            "rounds": rounds,
            "jobs": jobs,
        })
        .to_string());
    }
    Ok(draft)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_goal_and_options() {
        let c = parse(args(&[
            "--rounds",
            "3",
            "--route=fast",
            "write",
            "a",
            "poem",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((c.goal.as_str(), c.rounds), ("write a poem", 3));
        assert_eq!(c.opts.route.as_deref(), Some("fast"));
        let c = parse(args(&["--route", "self", "--tag", "t", "x"]))
            .unwrap()
            .unwrap();
        assert_eq!(c.opts.route, None);
        assert_eq!(c.opts.tags, ["t"]);
    }

    #[test]
    fn help_and_bad_args() {
        assert!(parse(args(&["--help"])).unwrap().is_none());
        for bad in [
            &["--rounds", "9", "x"][..],
            &[],
            &["--bogus", "x"],
            &["--rounds"],
        ] {
            let e = parse(args(bad)).err().unwrap();
            assert!(
                e.starts_with("refine: ") && e.contains("usage: refine"),
                "{e}"
            );
        }
    }
}
