//! Host-call arguments and results as the journal writes them, and back.
//!
//! Arguments are recorded to be compared, so a long text is recorded as its digest;
//! results are recorded to be handed back on replay, so they are recorded whole.

use serde_json::{Value, json};

use crate::bindings::nrvna::agent::types::{JobError, JobOutput, JobState, SubmitOptions};

/// Text longer than this is recorded in arguments as `{"sha256", "bytes"}`.
const INLINE_ARG_BYTES: usize = 256;
/// Bytes of an argument hashed at most: a longer one (larger than any prompt or kv value
/// the host accepts, so one the call refuses) is recorded by its length and the digest
/// of its head, so a guest cannot make recording cost per byte it passes.
const DIGESTED_ARG_BYTES: usize = 1 << 20;

/// A string argument: itself, or its digest when long.
pub(crate) fn text_arg(s: &str) -> Value {
    bytes_arg(s.as_bytes())
}

/// A list of string arguments, each as [`text_arg`] records it.
pub(crate) fn text_args(list: &[String]) -> Value {
    Value::Array(list.iter().map(|s| text_arg(s)).collect())
}

pub(crate) fn bytes_arg(b: &[u8]) -> Value {
    if b.len() > DIGESTED_ARG_BYTES {
        let head = crate::cache::sha256_hex(&b[..DIGESTED_ARG_BYTES]);
        return json!({ "head_sha256": head, "bytes": b.len() });
    }
    match std::str::from_utf8(b) {
        Ok(s) if b.len() <= INLINE_ARG_BYTES => Value::String(s.to_owned()),
        _ => json!({ "sha256": crate::cache::sha256_hex(b), "bytes": b.len() }),
    }
}

pub(crate) fn submit_options(o: &SubmitOptions) -> Value {
    json!({
        "route": o.route.as_deref().map(text_arg),
        "images": text_args(&o.images),
        "max_tokens": o.max_tokens,
        "temperature": o.temperature.map(f64::from),
        "seed": o.seed,
        "system": o.system.as_deref().map(text_arg),
        "json_schema": o.json_schema.as_deref().map(text_arg),
        "parent": o.parent.as_deref().map(text_arg),
        "tags": text_args(&o.tags),
        "key": o.key.as_deref().map(text_arg),
    })
}

/// A value a host call returns, as the journal records it.
pub(crate) trait Recorded: Sized {
    fn to_json(&self) -> Value;
    fn from_json(v: &Value) -> Option<Self>;
}

impl Recorded for () {
    fn to_json(&self) -> Value {
        Value::Null
    }
    fn from_json(_: &Value) -> Option<()> {
        Some(())
    }
}

impl Recorded for String {
    fn to_json(&self) -> Value {
        Value::String(self.clone())
    }
    fn from_json(v: &Value) -> Option<String> {
        v.as_str().map(str::to_owned)
    }
}

impl Recorded for u32 {
    fn to_json(&self) -> Value {
        json!(self)
    }
    fn from_json(v: &Value) -> Option<u32> {
        v.as_u64().and_then(|n| u32::try_from(n).ok())
    }
}

impl Recorded for u64 {
    fn to_json(&self) -> Value {
        json!(self)
    }
    fn from_json(v: &Value) -> Option<u64> {
        v.as_u64()
    }
}

impl<T: Recorded> Recorded for Vec<T> {
    fn to_json(&self) -> Value {
        Value::Array(self.iter().map(Recorded::to_json).collect())
    }
    fn from_json(v: &Value) -> Option<Vec<T>> {
        v.as_array()?.iter().map(T::from_json).collect()
    }
}

/// kv values: UTF-8 text as a string, other bytes as hex.
impl Recorded for Option<Vec<u8>> {
    fn to_json(&self) -> Value {
        match self {
            None => Value::Null,
            Some(b) => match std::str::from_utf8(b) {
                Ok(s) => json!({ "utf8": s }),
                Err(_) => json!({ "hex": crate::cache::hex(b) }),
            },
        }
    }
    fn from_json(v: &Value) -> Option<Option<Vec<u8>>> {
        if v.is_null() {
            return Some(None);
        }
        if let Some(s) = v.get("utf8").and_then(Value::as_str) {
            return Some(Some(s.as_bytes().to_vec()));
        }
        let hex = v.get("hex")?.as_str()?;
        if !hex.len().is_multiple_of(2) {
            return None;
        }
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()
            .map(Some)
    }
}

impl Recorded for JobState {
    fn to_json(&self) -> Value {
        Value::String(
            match self {
                JobState::Queued => "queued",
                JobState::Running => "running",
                JobState::Done => "done",
                JobState::Failed => "failed",
                JobState::Cancelled => "cancelled",
                JobState::Missing => "missing",
            }
            .into(),
        )
    }
    fn from_json(v: &Value) -> Option<JobState> {
        Some(match v.as_str()? {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "done" => JobState::Done,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            "missing" => JobState::Missing,
            _ => return None,
        })
    }
}

impl Recorded for JobOutput {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "text": self.text,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
        })
    }
    fn from_json(v: &Value) -> Option<JobOutput> {
        Some(JobOutput {
            id: v.get("id")?.as_str()?.to_owned(),
            text: v.get("text")?.as_str()?.to_owned(),
            prompt_tokens: u32::from_json(v.get("prompt_tokens")?)?,
            generated_tokens: u32::from_json(v.get("generated_tokens")?)?,
        })
    }
}

impl Recorded for JobError {
    fn to_json(&self) -> Value {
        let (kind, text) = match self {
            JobError::Invalid(t) => ("invalid", Some(t)),
            JobError::Denied(t) => ("denied", Some(t)),
            JobError::Quota(t) => ("quota", Some(t)),
            JobError::NotFound(t) => ("not-found", Some(t)),
            JobError::Failed(t) => ("failed", Some(t)),
            JobError::Cancelled => ("cancelled", None),
            JobError::Timeout => ("timeout", None),
        };
        json!({ "kind": kind, "text": text })
    }
    fn from_json(v: &Value) -> Option<JobError> {
        let text = || v.get("text").and_then(Value::as_str).map(str::to_owned);
        Some(match v.get("kind")?.as_str()? {
            "invalid" => JobError::Invalid(text()?),
            "denied" => JobError::Denied(text()?),
            "quota" => JobError::Quota(text()?),
            "not-found" => JobError::NotFound(text()?),
            "failed" => JobError::Failed(text()?),
            "cancelled" => JobError::Cancelled,
            "timeout" => JobError::Timeout,
            _ => return None,
        })
    }
}

/// A result the component sees: `{"ok": T}` or `{"err": job-error}`.
impl<T: Recorded> Recorded for Result<T, JobError> {
    fn to_json(&self) -> Value {
        match self {
            Ok(v) => json!({ "ok": v.to_json() }),
            Err(e) => json!({ "err": e.to_json() }),
        }
    }
    fn from_json(v: &Value) -> Option<Result<T, JobError>> {
        if let Some(ok) = v.get("ok") {
            return T::from_json(ok).map(Ok);
        }
        JobError::from_json(v.get("err")?).map(Err)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn round_trip<T: Recorded + std::fmt::Debug>(v: T) -> String {
        let back = T::from_json(&v.to_json()).unwrap();
        format!("{back:?}")
    }

    #[test]
    fn results_come_back_as_they_were_recorded() {
        assert_eq!(
            round_trip(Some(vec![0u8, 255, 7])),
            format!("{:?}", Some(vec![0u8, 255, 7]))
        );
        assert_eq!(
            round_trip(Some(b"hi".to_vec())),
            format!("{:?}", Some(b"hi".to_vec()))
        );
        let r: Result<u32, JobError> = Err(JobError::Quota("jobs: 3".into()));
        assert_eq!(round_trip(r.clone()), format!("{r:?}"));
        let out: Vec<Result<JobOutput, JobError>> = vec![
            Ok(JobOutput {
                id: "1_2".into(),
                text: "x".into(),
                prompt_tokens: 3,
                generated_tokens: 4,
            }),
            Err(JobError::Timeout),
        ];
        assert_eq!(round_trip(out.clone()), format!("{out:?}"));
        assert_eq!(text_arg(&"a".repeat(300))["bytes"], 300);
    }
}
