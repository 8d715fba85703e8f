//! `meta.json`: everything about a job except its payload files.
//!
//! Written with tmp + fsync + rename and always complete before the job becomes visible
//! in a new state. Unknown keys are kept, so newer writers and older readers coexist.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What kind of work a job asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Text,
    Embed,
    Vision,
    /// A WebAssembly agent component run by the daemon.
    Agent,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Text => "text",
            Mode::Embed => "embed",
            Mode::Vision => "vision",
            Mode::Agent => "agent",
        }
    }
}

/// Per-job sampling overrides; `None` means the daemon's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Generation stops before the first of these strings (left out of the result).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
}

/// How a job ended, as `meta.json`'s `status` records it. Its state directory says the
/// same for done and failed; `cancelled` and `denied` (a held job someone refused) are
/// the endings `failed/` holds besides failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Done,
    Failed,
    Cancelled,
    Denied,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Denied => "denied",
        }
    }
}

/// What makes a job an agent job besides its component file: the arguments and storage
/// name it runs with. Stored as the top-level `agent_args` and `agent_name` keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentJob {
    /// The component's arguments (what follows `--` in `wrk --agent X.wasm -- ARGS`);
    /// an agent job always has the key, an empty list when it has no arguments.
    #[serde(
        rename = "agent_args",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub args: Option<Vec<String>>,
    /// Storage namespace (`<ws>/.agents/NAME/`); the component's file stem when absent.
    #[serde(
        rename = "agent_name",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub name: Option<String>,
}

/// How the output is constrained, if at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// `schema.json` (and its grammar `grammar.gbnf`); the result must parse as JSON.
    JsonSchema,
    /// `grammar.gbnf` only.
    Grammar,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub submitted_at: String,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(flatten)]
    pub sampling: Sampling,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_format: Option<OutputFormat>,
    /// The prompt goes to the model as it is, without the chat template (`/v1/completions`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub raw_prompt: bool,
    /// Number of times a daemon has started this job.
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// The node that started it last (`nrvnad --shared --node-id`), kept once it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// While it runs on a shared workspace: the claim (its `claim.json`) that counted
    /// this start in `attempts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// Seconds from claim to completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<String>,
    /// Set once the job has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<JobStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u32>,
    /// Of `prompt_tokens`, those whose KV cells the engine reused from an earlier job
    /// (prefix reuse) instead of computing them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated_tokens: Option<u32>,
    /// Why a done text job's generation stopped: `stop` (the model ended it, or a stop
    /// string) or `length` (the token limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// Generated tokens per second from claim to completion, set when a text job is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    /// Name of the model the job ran on (set by the daemon for text and embedding jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// What ran it: `llama.cpp` (the daemon's own engine) or the base URL of the remote
    /// OpenAI-compatible server (`nrvnad --backend`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// sha256 over the job's spec (crate::spec), recorded at submission: what
    /// `nrvna verify` and the daemon's claim check the job against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_sha256: Option<String>,
    /// The sha256 of each part of the spec (`prompt.txt`, `options`, ...), so a check
    /// can name the part that changed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub spec_parts: BTreeMap<String, String>,
    /// The approval or denial of a held job (`wrk --hold`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// An agent job's arguments and name (empty for other jobs).
    // Declared before `extra`: a flattened struct takes its keys first, the map the rest.
    #[serde(flatten)]
    pub agent: AgentJob,
    /// Fields this version does not know (written by newer tools); preserved on rewrite.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// What a person decided about a held job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Approved,
    Denied,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approved => "approved",
            Verdict::Denied => "denied",
        }
    }
}

/// One approval or denial, as `meta.json`'s `decision` and each line of `audit.jsonl`
/// record it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// The deciding user's name, as the system's user database has it for `uid`.
    pub by: String,
    pub uid: u32,
    /// When (UTC, the timestamp format of `submitted_at`).
    pub at: String,
    /// `nrvna approve --note`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// `nrvna deny --reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The spec's sha256 as it was when the decision was made: an approved job whose
    /// spec differs from it is never run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_sha256: Option<String>,
}

/// UTC ISO-8601 with microseconds, the predecessor's timestamp format.
pub fn now_timestamp() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_unknown_keys() {
        let text = r#"{"submitted_at":"2026-01-01T00:00:00.000000Z","mode":"text","tags":["a"],
            "max_tokens":5,"future_key":{"x":1}}"#;
        let meta: Meta = serde_json::from_str(text).unwrap();
        assert_eq!(meta.sampling.max_tokens, Some(5));
        assert_eq!(meta.tags, vec!["a"]);
        let back = serde_json::to_value(&meta).unwrap();
        assert_eq!(back["future_key"]["x"], 1);
        assert_eq!(back["max_tokens"], 5);
        assert!(back.get("parent").is_none());
    }

    #[test]
    fn agent_fields_are_typed_not_extra() {
        let text = r#"{"submitted_at":"x","mode":"agent","agent_args":["--rounds","2"],
            "agent_name":"refine","status":"cancelled"}"#;
        let meta: Meta = serde_json::from_str(text).unwrap();
        assert_eq!(meta.agent.args, Some(vec!["--rounds".into(), "2".into()]));
        assert_eq!(meta.agent.name.as_deref(), Some("refine"));
        assert_eq!(meta.status, Some(JobStatus::Cancelled));
        assert!(meta.extra.is_empty(), "{:?}", meta.extra);
        let back = serde_json::to_value(&meta).unwrap();
        assert_eq!(back["agent_args"][1], "2");
        assert_eq!(back["agent_name"], "refine");
        assert_eq!(back["status"], "cancelled");
        // A text job writes no agent keys.
        let plain = serde_json::to_value(Meta::default()).unwrap();
        assert!(plain.get("agent_args").is_none() && plain.get("agent_name").is_none());
    }

    #[test]
    fn predecessor_meta_parses() {
        let text = r#"{
  "submitted_at": "2026-04-16T19:59:23.123456Z",
  "mode": "text",
  "completed_at": "2026-04-16T19:59:25.000000Z",
  "duration_s": 1.25,
  "artifacts": ["result.txt"],
  "status": "done"
}"#;
        let meta: Meta = serde_json::from_str(text).unwrap();
        assert_eq!(meta.status, Some(JobStatus::Done));
        assert_eq!(meta.attempts, 0);
    }
}
