//! The job queue: `submit` is `wrk`, `follow` is `flw`, and fan-out helpers on top.
//!
//! Every function blocks only this component; the host keeps serving other runs and the
//! daemon keeps generating while a component waits.

use std::time::Duration;

use crate::bindings::nrvna::agent::jobs as wit;
use crate::bindings::nrvna::agent::types::{JobOutput, SubmitOptions};
use crate::error::{Error, Result};

/// A job id as the workspace writes it (`flw WS ID` takes the same string).
pub type JobId = String;

/// Where a job is: `Queued`, `Running`, `Done`, `Failed`, `Cancelled`, `Missing`.
pub use crate::bindings::nrvna::agent::types::JobState;

/// A finished job.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub id: JobId,
    /// The generated text, exactly as in the job's `result.txt`.
    pub text: String,
    pub prompt_tokens: u32,
    pub generated_tokens: u32,
}

impl From<JobOutput> for Output {
    fn from(o: JobOutput) -> Self {
        Output {
            id: o.id,
            text: o.text,
            prompt_tokens: o.prompt_tokens,
            generated_tokens: o.generated_tokens,
        }
    }
}

/// Submit options shared by many jobs (a pattern's `--max-tokens`, `--tag`, ...).
/// Unset fields take the daemon's defaults. Apply to a [`Job`] with [`Job::with`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options {
    /// A granted route (`--route NAME=WS`); `None` is the component's own workspace.
    pub route: Option<String>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub seed: Option<u32>,
    pub system: Option<String>,
    pub tags: Vec<String>,
}

impl Options {
    /// Handles the submit flags every pattern shares, if `flag` is one of them:
    /// `--max-tokens N`, `--temp T`, `--seed N`, `--system TEXT`, `--tag TAG`
    /// (repeatable). Returns whether it was; the caller reports unknown flags.
    pub fn accept(
        &mut self,
        flag: &str,
        p: &mut crate::args::Parser,
    ) -> std::result::Result<bool, String> {
        match flag {
            "--max-tokens" => self.max_tokens = Some(p.number_in(1..=65_536)?),
            "--temp" => {
                let t: f32 = p.parse()?;
                if !(0.0..=5.0).contains(&t) {
                    return Err(p.error(format!("--temp must be between 0 and 5, got {t}")));
                }
                self.temperature = Some(t);
            }
            "--seed" => self.seed = Some(p.parse()?),
            "--system" => self.system = Some(p.value()?),
            "--tag" => self.tags.push(p.value()?),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// The route name that means the component's own workspace (the host never grants a
/// route of that name).
pub const OWN_WORKSPACE: &str = "self";

/// A route name as `submit` wants it: [`OWN_WORKSPACE`] is no route (`None`).
pub fn route_of(name: &str) -> Option<&str> {
    (name != OWN_WORKSPACE).then_some(name)
}

/// One prompt and its options, built step by step:
/// `Job::new("Summarise: ...").max_tokens(200).tag("batch1").submit()?`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Job {
    prompt: String,
    route: Option<String>,
    images: Vec<String>,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    seed: Option<u32>,
    system: Option<String>,
    json_schema: Option<String>,
    parent: Option<JobId>,
    tags: Vec<String>,
    key: Option<String>,
}

impl Job {
    pub fn new(prompt: impl Into<String>) -> Job {
        Job {
            prompt: prompt.into(),
            ..Job::default()
        }
    }

    pub fn prompt(&self) -> &str {
        &self.prompt
    }

    /// Sends the job to a granted route; `None` (the default) is the own workspace.
    pub fn route(mut self, route: Option<impl Into<String>>) -> Job {
        self.route = route.map(Into::into);
        self
    }

    /// Attaches an image (a path inside a directory granted with `--dir`).
    pub fn image(mut self, path: impl Into<String>) -> Job {
        self.images.push(path.into());
        self
    }

    pub fn max_tokens(mut self, n: u32) -> Job {
        self.max_tokens = Some(n);
        self
    }

    pub fn temperature(mut self, t: f32) -> Job {
        self.temperature = Some(t);
        self
    }

    pub fn seed(mut self, seed: u32) -> Job {
        self.seed = Some(seed);
        self
    }

    pub fn system(mut self, text: impl Into<String>) -> Job {
        self.system = Some(text.into());
        self
    }

    /// Constrains the output to this JSON Schema (the job fails if it does not parse).
    pub fn json_schema(mut self, schema: impl Into<String>) -> Job {
        self.json_schema = Some(schema.into());
        self
    }

    /// Lineage only. Unset, the host makes the run's own job (if any) the parent.
    pub fn parent(mut self, id: impl Into<String>) -> Job {
        self.parent = Some(id.into());
        self
    }

    /// Adds a tag (1-64 characters from `A-Z a-z 0-9 _ -`).
    pub fn tag(mut self, tag: impl Into<String>) -> Job {
        self.tags.push(tag.into());
        self
    }

    /// Makes the submission idempotent: submitting again with the same key (and route)
    /// returns the job the first submission queued while it is queued, running or done,
    /// even from a later run after a crash; a failed or cancelled one is replaced. Keys
    /// are 1-128 characters from `A-Z a-z 0-9 _ - . /`.
    pub fn key(mut self, key: impl Into<String>) -> Job {
        self.key = Some(key.into());
        self
    }

    /// Applies shared options; fields already set on this job win, tags add up.
    pub fn with(mut self, o: &Options) -> Job {
        self.route = self.route.or_else(|| o.route.clone());
        self.max_tokens = self.max_tokens.or(o.max_tokens);
        self.temperature = self.temperature.or(o.temperature);
        self.seed = self.seed.or(o.seed);
        self.system = self.system.or_else(|| o.system.clone());
        for t in &o.tags {
            if !self.tags.contains(t) {
                self.tags.push(t.clone());
            }
        }
        self
    }

    fn options(&self) -> SubmitOptions {
        SubmitOptions {
            route: self.route.clone(),
            images: self.images.clone(),
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            seed: self.seed,
            system: self.system.clone(),
            json_schema: self.json_schema.clone(),
            parent: self.parent.clone(),
            tags: self.tags.clone(),
            key: self.key.clone(),
        }
    }

    /// Queues the job (`wrk`); returns its id at once.
    pub fn submit(&self) -> Result<JobId> {
        Ok(wit::submit(&self.prompt, &self.options())?)
    }

    /// Submits and waits (`wrk ... | xargs flw`).
    pub fn run(&self) -> Result<Output> {
        let id = self.submit()?;
        follow_output(&id)
    }

    /// Submits, waits and returns the text.
    pub fn ask(&self) -> Result<String> {
        Ok(self.run()?.text)
    }
}

/// Queues a prompt with the daemon's defaults; returns its id.
pub fn submit(prompt: &str) -> Result<JobId> {
    Job::new(prompt).submit()
}

/// Waits for a job and returns its text; a failed job is [`Error::Failed`].
pub fn follow(id: &str) -> Result<String> {
    Ok(follow_output(id)?.text)
}

/// Waits for a job and returns its text and token counts.
pub fn follow_output(id: &str) -> Result<Output> {
    Ok(wit::follow(id, None)?.into())
}

/// Waits at most `timeout`; [`Error::Timeout`] then, and the job keeps running.
pub fn follow_timeout(id: &str, timeout: Duration) -> Result<Output> {
    Ok(wit::follow(id, Some(millis(timeout)))?.into())
}

/// Submits and waits, with the daemon's defaults.
pub fn ask(prompt: &str) -> Result<String> {
    Job::new(prompt).ask()
}

/// Where a job is now.
pub fn status(id: &str) -> Result<JobState> {
    Ok(wit::status(id)?)
}

/// Cancels a queued or running job.
pub fn cancel(id: &str) -> Result<()> {
    Ok(wit::cancel(id)?)
}

/// Waits until one of `ids` has ended; returns its index in `ids`.
pub fn wait_any(ids: &[JobId], timeout: Option<Duration>) -> Result<usize> {
    let i = wit::wait_any(ids, timeout.map(millis))?;
    Ok(i as usize)
}

/// The route names this component may submit to (its own workspace is not listed).
pub fn routes() -> Vec<String> {
    wit::routes()
}

/// Submits every job, or none: if one is refused, those already queued are cancelled
/// (best effort) and its error is returned.
pub fn submit_all(jobs: &[Job]) -> Result<Vec<JobId>> {
    let mut ids = Vec::with_capacity(jobs.len());
    for job in jobs {
        match job.submit() {
            Ok(id) => ids.push(id),
            Err(e) => {
                for id in &ids {
                    let _ = cancel(id);
                }
                return Err(e);
            }
        }
    }
    Ok(ids)
}

/// Waits for every job; results are in the order of `ids`, one failure does not hide
/// the others.
pub fn follow_all(ids: &[JobId]) -> Vec<Result<Output>> {
    if ids.is_empty() {
        return Vec::new();
    }
    wit::wait_all(ids, None)
        .into_iter()
        .map(|r| r.map(Output::from).map_err(Error::from))
        .collect()
}

/// Runs every job with at most `max_in_flight` queued or running at once, and returns
/// their results in input order. Failures (a refused submit included) are reported in
/// place, never abort the rest. A `quota` refusal while jobs are in flight waits for one
/// of them to end and tries again, so the run's in-flight limit only slows it down.
pub fn run_all(jobs: &[Job], max_in_flight: usize) -> Vec<Result<Output>> {
    windowed(
        jobs.len(),
        max_in_flight,
        |i| jobs[i].submit(),
        |ids| wait_any(ids, None),
        follow_output,
    )
}

/// [`run_all`]'s scheduling, apart from the host calls so it can be tested: `submit(i)`
/// queues job `i`, `wait_any(ids)` names the index of one that ended, `follow(id)`
/// collects it.
fn windowed<T: Clone>(
    n: usize,
    max_in_flight: usize,
    mut submit: impl FnMut(usize) -> Result<JobId>,
    mut wait_any: impl FnMut(&[JobId]) -> Result<usize>,
    mut follow: impl FnMut(&str) -> Result<T>,
) -> Vec<Result<T>> {
    let window = max_in_flight.max(1);
    let mut results: Vec<Option<Result<T>>> = vec![None; n];
    // (index of the job, its id) for the jobs in flight.
    let mut flight: Vec<(usize, JobId)> = Vec::new();
    let mut next = 0;
    while next < n || !flight.is_empty() {
        while next < n && flight.len() < window {
            match submit(next) {
                Ok(id) => flight.push((next, id)),
                // Tried again once a job in flight has ended.
                Err(Error::Quota(_)) if !flight.is_empty() => break,
                Err(e) => results[next] = Some(Err(e)),
            }
            next += 1;
        }
        if flight.is_empty() {
            continue;
        }
        let ids: Vec<JobId> = flight.iter().map(|(_, id)| id.clone()).collect();
        let ended = match wait_any(&ids) {
            Ok(i) if i < flight.len() => i,
            // An index out of range is a host bug; following any job is still correct.
            Ok(_) => 0,
            Err(e) => {
                // The wait itself is broken: report it for every job still in flight.
                for (i, _) in flight.drain(..) {
                    results[i] = Some(Err(e.clone()));
                }
                continue;
            }
        };
        let (i, id) = flight.remove(ended);
        results[i] = Some(follow(&id));
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::Failed("job was never submitted".into()))))
        .collect()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn with_fills_only_unset_fields_and_adds_tags() {
        let shared = Options {
            route: Some("fast".into()),
            max_tokens: Some(100),
            temperature: Some(0.5),
            tags: vec!["batch".into(), "mine".into()],
            ..Options::default()
        };
        let job = Job::new("p").max_tokens(5).tag("mine").with(&shared);
        assert_eq!(job.max_tokens, Some(5));
        assert_eq!(job.route.as_deref(), Some("fast"));
        assert_eq!(job.temperature, Some(0.5));
        assert_eq!(job.tags, ["mine", "batch"]);
        let o = job.options();
        assert_eq!((o.max_tokens, o.tags.len()), (Some(5), 2));
    }

    #[test]
    fn accept_parses_the_shared_flags() {
        let args = ["--max-tokens", "7", "--temp", "9", "--tag", "x", "--other"];
        let mut p = crate::args::Parser::new("t", "usage", args.map(String::from).to_vec());
        let mut o = Options::default();
        let flag = |p: &mut crate::args::Parser| match p.next() {
            Ok(Some(crate::args::Arg::Flag(f))) => f,
            other => panic!("{other:?}"),
        };
        let f = flag(&mut p);
        assert_eq!(o.accept(&f, &mut p), Ok(true));
        let f = flag(&mut p);
        assert!(
            o.accept(&f, &mut p)
                .unwrap_err()
                .contains("between 0 and 5")
        );
        let f = flag(&mut p);
        assert_eq!(o.accept(&f, &mut p), Ok(true));
        let f = flag(&mut p);
        assert_eq!(o.accept(&f, &mut p), Ok(false));
        assert_eq!((o.max_tokens, o.tags), (Some(7), vec!["x".to_owned()]));
    }

    /// A fake queue: job i gets id "i"; `quota_at` in-flight count refuses submits.
    struct Fake {
        in_flight: RefCell<Vec<JobId>>,
        peak: RefCell<usize>,
        quota_at: usize,
    }

    impl Fake {
        fn run(&self, n: usize, window: usize, fail: &[usize]) -> Vec<Result<String>> {
            windowed(
                n,
                window,
                |i| {
                    let mut f = self.in_flight.borrow_mut();
                    if f.len() >= self.quota_at {
                        return Err(Error::Quota("in flight".into()));
                    }
                    if fail.contains(&i) {
                        return Err(Error::Invalid(format!("job {i}")));
                    }
                    f.push(i.to_string());
                    let mut peak = self.peak.borrow_mut();
                    *peak = (*peak).max(f.len());
                    Ok(i.to_string())
                },
                // The most recently submitted job ends first: out of order on purpose.
                |ids| Ok(ids.len() - 1),
                |id| {
                    self.in_flight.borrow_mut().retain(|x| x != id);
                    Ok(format!("out {id}"))
                },
            )
        }
    }

    fn fake(quota_at: usize) -> Fake {
        Fake {
            in_flight: RefCell::new(Vec::new()),
            peak: RefCell::new(0),
            quota_at,
        }
    }

    #[test]
    fn windowed_keeps_order_window_and_failures_in_place() {
        let f = fake(usize::MAX);
        let out = f.run(5, 2, &[3]);
        assert_eq!(*f.peak.borrow(), 2);
        let want: Vec<Result<String>> = vec![
            Ok("out 0".into()),
            Ok("out 1".into()),
            Ok("out 2".into()),
            Err(Error::Invalid("job 3".into())),
            Ok("out 4".into()),
        ];
        assert_eq!(out, want);
    }

    #[test]
    fn windowed_waits_out_an_in_flight_quota() {
        // The host allows 2 in flight although the window is 4: nothing is lost.
        let f = fake(2);
        let out = f.run(6, 4, &[]);
        assert_eq!(*f.peak.borrow(), 2);
        assert!(out.iter().all(Result::is_ok), "{out:?}");
        assert_eq!(out.len(), 6);
    }

    #[test]
    fn windowed_with_nothing_in_flight_reports_the_quota() {
        let f = fake(0);
        let out = f.run(2, 4, &[]);
        assert_eq!(out, vec![Err(Error::Quota("in flight".into())); 2]);
    }
}
