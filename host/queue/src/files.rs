//! The names of the files in a job directory: the one list every reader and writer uses.
//!
//! ```text
//! <state>/<id>/prompt.txt      the prompt (or an agent job's arguments, empty)
//!             meta.json        everything else about the job (crate::meta)
//!             images/          image_000000.png ... (vision jobs)
//!             schema.json      a --json-schema job's schema ...
//!             grammar.gbnf     ... and the grammar it became (or a --grammar job's own)
//!             agent.wasm       an agent job's component
//!             result.txt       a done text or agent job's output
//!             embedding.json   a done embed job's output
//!             error.txt        why a failed job failed
//!             response.txt     what a failed generation had produced
//!             partial.txt      a running text job's output so far (crate::stream)
//!             messages.json    a chat job's messages (the last user message is prompt.txt)
//! ```

pub const PROMPT_FILE: &str = "prompt.txt";
pub const META_FILE: &str = "meta.json";
pub const IMAGES_DIR: &str = "images";
pub const SCHEMA_FILE: &str = "schema.json";
pub const GRAMMAR_FILE: &str = "grammar.gbnf";
pub const AGENT_FILE: &str = "agent.wasm";
pub const RESULT_FILE: &str = "result.txt";
pub const EMBEDDING_FILE: &str = "embedding.json";
pub const ERROR_FILE: &str = "error.txt";
/// Raw model output kept beside the error when a job fails after generating.
pub const RESPONSE_FILE: &str = "response.txt";
/// A running text job's raw output so far, appended as tokens are generated. It only
/// exists in `processing/`: the daemon removes it just before the job ends, so the text
/// is complete when the job has left `processing/` (crate::stream).
pub const PARTIAL_FILE: &str = "partial.txt";
/// A chat job's messages, `[{"role": "system"|"user"|"assistant", "content": "..."}]`,
/// applied through the model's chat template; `prompt.txt` holds the last user message.
pub const MESSAGES_FILE: &str = "messages.json";
/// On a shared workspace (`nrvnad --shared`), who runs the job: created exclusively by
/// the claimer right after its claiming rename (crate::nodes).
pub const CLAIM_FILE: &str = "claim.json";
/// Cancel requests for running jobs: `nrvna cancel` drops `<ws>/.cancel/<id>`, the owning
/// daemon stops the job and removes the file.
pub const CANCEL_DIR: &str = ".cancel";
/// Progress of running jobs: the daemon keeps `<ws>/.progress/<id>` holding the tokens a
/// job has generated so far (plain decimal), refreshed about once a second and removed
/// when the job ends. Outside the job directories, so it never travels with a job.
pub const PROGRESS_DIR: &str = ".progress";
/// The workspace's audit trail: one JSON object per line, one line per approval or denial
/// of a held job (`nrvna approve`, `nrvna deny`), appended and fsynced.
pub const AUDIT_FILE: &str = "audit.jsonl";
/// Held jobs being decided: `nrvna approve`/`deny` (and a cancel) first move the job from
/// `input/held/` here, one rename that exactly one of them wins, record the decision in
/// its `meta.json`, append it to the audit trail, and then move it on. A job found here
/// after a crash is finished (its decision recorded) or put back (no decision yet).
pub const DECIDING_DIR: &str = ".deciding";
/// Image file extensions a job accepts.
pub const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "gif", "webp"];
