//! `decompose`: recursive decomposition. Asks the model to split GOAL into subgoals,
//! solves each subgoal by calling an agent — by default `decompose` itself, one level
//! deeper — and synthesises their results into an answer to GOAL; prints it.
//!
//! ```text
//! nrvna exec decompose.wasm --ws ./ws -- --max-depth 2 --max-subgoals 3 "Plan a product launch"
//! nrvna exec decompose.wasm --ws ./ws --agent refine=refine.wasm -- --solver refine "Plan a launch"
//! ```
//!
//! Arguments: the goal (words joined by spaces) and the options in [`USAGE`].
//! Depth: the goal is at depth 0; a goal at `--max-depth` (default 2) is solved
//! directly by one job instead of being split, so `--max-depth 0` is a single job.
//! Each level is one `agents.call` deeper, so the host's call-depth limit
//! (`nrvna exec --max-depth`, 16 by default) must be at least `--max-depth`; if it is
//! not, the run fails with `decompose: call depth limit reached ...`, naming the depth
//! and the host's message.
//! Solver: `--solver NAME` sends each subgoal, as its only argument, to another agent
//! granted with `nrvna exec --agent NAME=PATH` (which then does not split further).
//! Defaults: depth 2, 3 subgoals per goal, the subgoal calls made one after another.
//! Limits: `--max-depth` 0-32, `--max-subgoals` 1-5, and at most 256 leaves in all
//! (`max-subgoals ^ max-depth`), so a typo cannot queue thousands of jobs; sub-results
//! are quoted into the synthesis up to `--max-chars` (1500) characters each.
//!
//! A small model's split is parsed leniently (numbered or bulleted lines, or a JSON
//! array) and capped at `--max-subgoals`; a reply with no usable subgoal makes the goal
//! a leaf, solved directly. A failed subgoal fails the run (its error is passed up
//! unchanged, so the deepest cause is what is printed).
//!
//! Jobs are tagged `decompose` and `decompose-split`, `decompose-solve` or
//! `decompose-combine`.

use nrvna_guest::prelude::*;
use nrvna_guest::serde_json::json;
use nrvna_guest::text;

pub const USAGE: &str = "\
usage: decompose [OPTIONS] [--] GOAL...

Split GOAL into subgoals with the model, solve each by calling an agent (this one,
a level deeper, by default), and combine the results; prints the answer.

Options:
  --max-depth N      levels of splitting; a goal at this depth is solved directly,
                     0-32 [2]
  --max-subgoals N   most subgoals per goal, 1-5 [3]
  --solver NAME      agent that solves each subgoal, given it as its argument
                     (granted with nrvna exec --agent NAME=PATH) [self]
  --max-chars N      most characters of a sub-result quoted into the synthesis,
                     50-100000 [1500]
  --json             print {\"goal\",\"depth\",\"subgoals\":[{\"goal\",\"result\"}],\"result\"}
  --depth N          this goal's depth (set by decompose when it calls itself) [0]
  --max-tokens N     most tokens per job [daemon default]
  --temp T           sampling temperature 0-5 [daemon default]
  --seed N           sampling seed
  --system TEXT      system message for every job
  --tag TAG          add a tag to every job (repeatable)
  -h, --help         this text";

/// Most leaves (`max-subgoals ^ max-depth`) one run may fan out to.
const MAX_LEAVES: u64 = 256;

/// Most list items read from a split reply, before filtering and the cap.
const MAX_LIST: usize = 20;

/// Errors from any level start with this, and are passed up unchanged.
const PREFIX: &str = "decompose: ";

struct Config {
    goal: String,
    depth: u32,
    max_depth: u32,
    max_subgoals: usize,
    solver: String,
    max_chars: usize,
    json: bool,
    opts: Options,
}

impl Flags for Config {
    fn flag(&mut self, flag: &str, p: &mut Parser) -> Result<bool, String> {
        match flag {
            "--max-depth" => self.max_depth = p.number_in(0..=32)?,
            "--max-subgoals" => self.max_subgoals = p.number_in(1..=5)?,
            "--solver" => self.solver = p.value()?,
            "--max-chars" => self.max_chars = p.number_in(50..=100_000)?,
            "--json" => self.json = true,
            "--depth" => self.depth = p.number_in(0..=32)?,
            _ => return self.opts.accept(flag, p),
        }
        Ok(true)
    }
}

fn parse(args: Vec<String>) -> Result<Option<Config>, String> {
    let mut p = Parser::new("decompose", USAGE, args);
    let mut c = Config {
        goal: String::new(),
        depth: 0,
        max_depth: 2,
        max_subgoals: 3,
        solver: "self".into(),
        max_chars: 1500,
        json: false,
        opts: Options::default(),
    };
    let Some(words) = p.read(&mut c)? else {
        return Ok(None);
    };
    c.goal = p.joined(&words, "GOAL")?;
    let leaves = (c.max_subgoals as u64).saturating_pow(c.max_depth);
    if leaves > MAX_LEAVES {
        return Err(p.error(format!(
            "--max-subgoals {} and --max-depth {} allow {leaves} leaf goals; the limit is \
             {MAX_LEAVES}",
            c.max_subgoals, c.max_depth
        )));
    }
    Ok(Some(c))
}

export_command!(parse, USAGE, |c| decompose(&c));

fn job(c: &Config, prompt: String, step: &str) -> Job {
    Job::new(prompt)
        .with(&c.opts)
        .tag("decompose")
        .tag(format!("decompose-{step}"))
}

fn decompose(c: &Config) -> Result<String, String> {
    let at = format!("depth {}", c.depth);
    let subgoals = if c.depth >= c.max_depth {
        Vec::new()
    } else {
        split(c).map_err(|e| format!("{PREFIX}{at}: splitting {:?}: {e}", short(&c.goal)))?
    };
    if subgoals.is_empty() {
        log::info(format!("{at}: solving {:?} directly", short(&c.goal)));
        let out = job(c, c.goal.clone(), "solve")
            .ask()
            .map_err(|e| format!("{PREFIX}{at}: solving {:?}: {e}", short(&c.goal)))?;
        return Ok(finish(c, &[], out));
    }

    log::info(format!(
        "{at}: {} subgoal(s) for {:?}",
        subgoals.len(),
        short(&c.goal)
    ));
    let mut results = Vec::with_capacity(subgoals.len());
    for (i, sub) in subgoals.iter().enumerate() {
        let result = call(&c.solver, &sub_args(c, sub)).map_err(|e| match e {
            // A deeper decompose already said what went wrong, and where.
            Error::Failed(t) if t.starts_with(PREFIX) => t,
            Error::Quota(why) => format!(
                "{PREFIX}call depth limit reached: cannot call {} at depth {} for subgoal {:?} \
                 ({why}); lower decompose's --max-depth (now {}) or raise the host's limit \
                 (nrvna exec --max-depth)",
                c.solver,
                c.depth + 1,
                short(sub),
                c.max_depth
            ),
            e => format!(
                "{PREFIX}{at}: subgoal {} {:?} ({}): {e}",
                i + 1,
                short(sub),
                c.solver
            ),
        })?;
        results.push((sub.clone(), result));
    }

    let mut findings = String::new();
    for (i, (sub, result)) in results.iter().enumerate() {
        findings.push_str(&format!(
            "{}. {sub}\n{}\n",
            i + 1,
            text::head(result.trim(), c.max_chars)
        ));
    }
    let prompt = format!(
        "Goal: {}\nResults of its subgoals:\n{findings}\nCombine these results into one \
         answer to the goal.",
        c.goal
    );
    let out = job(c, prompt, "combine")
        .ask()
        .map_err(|e| format!("{PREFIX}{at}: combining {:?}: {e}", short(&c.goal)))?;
    Ok(finish(c, &results, out))
}

fn finish(c: &Config, results: &[(String, String)], answer: String) -> String {
    if !c.json {
        return answer;
    }
    let subgoals: Vec<_> = results
        .iter()
        .map(|(g, r)| json!({ "goal": g, "result": r }))
        .collect();
    json!({ "goal": c.goal, "depth": c.depth, "subgoals": subgoals, "result": answer }).to_string()
}

/// The subgoals the model proposes (none: solve the goal directly).
fn split(c: &Config) -> nrvna_guest::Result<Vec<String>> {
    let prompt = format!(
        "Break this goal into at most {} smaller subgoals. Write one subgoal per line, \
         numbered, nothing else.\nGoal: {}",
        c.max_subgoals, c.goal
    );
    let answer = job(c, prompt, "split").ask()?;
    // Small models often restate the goal as its first "subgoal"; that would only
    // recurse without progress, so it is dropped before the cap is applied.
    let subgoals: Vec<String> = text::parse_list(&answer, MAX_LIST)
        .into_iter()
        .filter(|s| !same_goal(s, &c.goal))
        .take(c.max_subgoals)
        .collect();
    if subgoals.is_empty() {
        log::warn(format!(
            "depth {}: no usable subgoals in {:?}",
            c.depth,
            text::head(&answer, 200)
        ));
    }
    Ok(subgoals)
}

/// Arguments for the solver of `sub`: a deeper decompose with the same settings, or
/// just the subgoal for another agent.
fn sub_args(c: &Config, sub: &str) -> Vec<String> {
    if c.solver != "self" {
        return vec![sub.to_owned()];
    }
    let mut a: Vec<String> = vec![
        "--depth".into(),
        (c.depth + 1).to_string(),
        "--max-depth".into(),
        c.max_depth.to_string(),
        "--max-subgoals".into(),
        c.max_subgoals.to_string(),
        "--max-chars".into(),
        c.max_chars.to_string(),
    ];
    let o = &c.opts;
    let mut flag = |name: &str, v: Option<String>| {
        if let Some(v) = v {
            a.push(name.into());
            a.push(v);
        }
    };
    flag("--max-tokens", o.max_tokens.map(|v| v.to_string()));
    flag("--temp", o.temperature.map(|v| v.to_string()));
    flag("--seed", o.seed.map(|v| v.to_string()));
    flag("--system", o.system.clone());
    for t in &o.tags {
        flag("--tag", Some(t.clone()));
    }
    a.push("--".into());
    a.push(sub.to_owned());
    a
}

/// Equal but for case, spacing and trailing punctuation.
fn same_goal(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.trim()
            .trim_end_matches(['.', '!', '?', ':', ';'])
            .split_whitespace()
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
    };
    norm(a) == norm(b)
}

fn short(s: &str) -> &str {
    text::head(s.trim(), 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Config {
        parse(args.iter().map(|s| s.to_string()).collect())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn self_calls_carry_the_settings_one_level_deeper() {
        let c = config(&[
            "--max-depth",
            "3",
            "--max-subgoals",
            "2",
            "--temp",
            "0",
            "--tag",
            "t",
            "goal",
        ]);
        let a = sub_args(&c, "-sub goal");
        let back = config(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!((back.depth, back.max_depth, back.max_subgoals), (1, 3, 2));
        assert_eq!(back.goal, "-sub goal");
        assert_eq!(back.opts, c.opts);
        let c = config(&["--solver", "refine", "goal"]);
        assert_eq!(sub_args(&c, "x"), ["x"]);
    }

    #[test]
    fn a_restated_goal_is_not_a_subgoal() {
        assert!(same_goal("Write a book.", "write a  book"));
        assert!(!same_goal("Write a chapter", "Write a book"));
    }

    #[test]
    fn fan_out_is_bounded() {
        let e = parse(vec![
            "--max-depth".into(),
            "4".into(),
            "--max-subgoals".into(),
            "5".into(),
            "g".into(),
        ])
        .err()
        .unwrap();
        assert!(e.contains("625 leaf goals"), "{e}");
        assert_eq!(
            config(&["--max-depth", "32", "--max-subgoals", "1", "g"]).max_depth,
            32
        );
    }
}
