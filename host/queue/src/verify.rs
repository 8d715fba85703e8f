//! `nrvna verify`: checks that a job is what was submitted and approved.
//!
//! A [`Verification`] is a list of [`Check`]s, each named, passed or not, with what it
//! found; a job verifies when every check passes. New checks (a journal's, say) are one
//! more function pushing one more `Check`.

use serde::Serialize;

use crate::error::{QueueError, Result};
use crate::id::JobId;
use crate::meta::{Meta, Verdict};
use crate::spec::Spec;
use crate::workspace::{State, Workspace};

/// One check of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked: `spec`, `approval`, `audit`.
    pub name: &'static str,
    pub ok: bool,
    /// What it found, in words (what differs, when it fails).
    pub detail: String,
}

/// Every check of one job.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub id: String,
    pub state: &'static str,
    pub checks: Vec<Check>,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

impl Workspace {
    /// Checks job `id`: its spec against the one recorded at submission and the one
    /// approved, and its decision against the audit trail.
    pub fn verify(&self, id: &JobId) -> Result<Verification> {
        let state = self
            .state_of(id)?
            .ok_or_else(|| QueueError::NotFound(id.to_string()))?;
        let dir = match state {
            // Mid-decision: read it where it is.
            State::Held if !self.job_dir(State::Held, id).exists() => {
                self.root().join(crate::files::DECIDING_DIR).join(id)
            }
            _ => self.job_dir(state, id),
        };
        let meta = crate::workspace::read_meta(&dir, id)?;
        let spec = Spec::of(&dir, &meta)?;
        let mut checks = vec![check_spec(&meta, &spec)];
        checks.extend(check_decision(self, id, &meta, &spec)?);
        Ok(Verification {
            id: id.to_string(),
            state: state.name(),
            checks,
        })
    }
}

fn check_spec(meta: &Meta, spec: &Spec) -> Check {
    let (ok, detail) = match &meta.spec_sha256 {
        None => (
            false,
            "no spec sha256 recorded (the job was not submitted by wrk or an agent of this \
             nrvna version)"
                .to_owned(),
        ),
        Some(recorded) if *recorded == spec.sha256 => {
            (true, format!("matches the submitted spec ({recorded})"))
        }
        Some(recorded) => (
            false,
            format!(
                "changed since submission: {} (submitted {recorded}, now {})",
                spec.describe_differences(&meta.spec_parts),
                spec.sha256
            ),
        ),
    };
    Check {
        name: "spec",
        ok,
        detail,
    }
}

/// The approval's checks, for a job someone decided: the spec is the one approved, and
/// the decision is in the audit trail.
fn check_decision(ws: &Workspace, id: &JobId, meta: &Meta, spec: &Spec) -> Result<Vec<Check>> {
    let Some(decision) = &meta.decision else {
        return Ok(Vec::new());
    };
    let mut checks = Vec::new();
    if decision.verdict == Verdict::Approved {
        let (ok, detail) = match &decision.spec_sha256 {
            Some(approved) if *approved == spec.sha256 => {
                (true, format!("matches the spec {} approved", decision.by))
            }
            Some(approved) => (
                false,
                format!(
                    "changed since {} approved it (approved {approved}, now {})",
                    decision.by, spec.sha256
                ),
            ),
            None => (false, "the approval records no spec sha256".to_owned()),
        };
        checks.push(Check {
            name: "approval",
            ok,
            detail,
        });
    }
    let audited = ws.audited(id, decision)?;
    checks.push(Check {
        name: "audit",
        ok: audited,
        detail: if audited {
            format!(
                "audit.jsonl records it {} by {} (uid {}) at {}",
                decision.verdict.as_str(),
                decision.by,
                decision.uid,
                decision.at
            )
        } else {
            format!(
                "meta.json says {} by {} at {}, but audit.jsonl has no such record",
                decision.verdict.as_str(),
                decision.by,
                decision.at
            )
        },
    });
    Ok(checks)
}
