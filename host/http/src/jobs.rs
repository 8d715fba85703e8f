//! Requests as jobs: submit through the queue, wait for the job's end, and cancel it if
//! the client goes away first.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use nrvna_queue::{JobId, JobOutcome, Meta, State, Submission, Workspace};

use crate::AppState;
use crate::error::ApiError;
use crate::live::LIVE_CHECK;

/// How often a stream reading `partial.txt` looks at it after new text.
pub const POLL: Duration = Duration::from_millis(2);

/// The tag every job submitted over HTTP carries.
pub const HTTP_TAG: &str = "http";

/// Cancels its job when dropped armed: the handler's future (or the stream) is dropped
/// when the client disconnects, and the job should not run on for nobody.
pub struct CancelOnDrop {
    ws: Workspace,
    id: JobId,
    armed: bool,
}

impl CancelOnDrop {
    pub fn new(ws: &Workspace, id: &JobId) -> CancelOnDrop {
        CancelOnDrop {
            ws: ws.clone(),
            id: id.clone(),
            armed: true,
        }
    }
    /// The job's answer reached the client: nothing to cancel.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            match self.ws.cancel(&self.id) {
                Ok(outcome) => tracing::info!("job {}: client went away: {outcome:?}", self.id),
                Err(e) => tracing::warn!("job {}: client went away, cannot cancel: {e}", self.id),
            }
        }
    }
}

/// Refuses new work past `--max-queue` queued jobs (429 with Retry-After).
pub fn check_backpressure(state: &AppState, jobs: usize) -> Result<(), ApiError> {
    let Some(limit) = state.config.max_queue else {
        return Ok(());
    };
    let queued = state.ws.list(State::Queued)?.len();
    if queued + jobs > limit {
        return Err(ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!(
                    "{queued} jobs are queued and this request adds {jobs}; the limit is \
                     {limit} (nrvnad --max-queue); retry later"
                ),
            )
            .with_code("queue_full")
        });
    }
    Ok(())
}

/// Submits a job tagged `http` (plus `extra_tags`) off the async threads.
pub async fn submit(
    state: &Arc<AppState>,
    sub: Submission,
    extra_tags: &[String],
) -> Result<JobId, ApiError> {
    let state = state.clone();
    let tags = extra_tags.to_vec();
    tokio::task::spawn_blocking(move || submit_blocking(&state, sub, &tags))
        .await
        .map_err(|e| ApiError::server(format!("submission task failed: {e}")))?
}

/// Submits a job tagged `http` (plus `extra_tags`) on this thread.
pub fn submit_blocking(
    state: &AppState,
    mut sub: Submission,
    extra_tags: &[String],
) -> Result<JobId, ApiError> {
    sub.tags.push(HTTP_TAG.to_owned());
    sub.tags.extend(extra_tags.iter().cloned());
    let id = state.ws.submit(sub)?;
    state.metrics.job_submitted();
    Ok(id)
}

/// A job that has ended: where it is and what it produced.
pub struct Ended {
    pub meta: Meta,
    pub outcome: JobOutcome,
}

/// Waits until job `id` ends: woken by the daemon's live view when it settles the job,
/// and looking at the workspace every [`LIVE_CHECK`] besides (a job can end without the
/// daemon: cancelled while queued).
pub async fn wait(state: &AppState, id: &JobId) -> Result<Ended, ApiError> {
    let live = state.live.job(id);
    let mut changes = live.watch();
    loop {
        changes.borrow_and_update();
        let settled_before = live.settled();
        match state.ws.state_of(id)? {
            Some(job_state) if job_state.is_terminal() => return ended(&state.ws, id, job_state),
            Some(_) => {}
            None => {
                return Err(
                    ApiError::server(format!("job {id} vanished from the workspace")).for_job(id),
                );
            }
        }
        let deadline = tokio::time::Instant::now() + LIVE_CHECK;
        // Settled but not ended: put back in the queue; wait for its next run.
        if settled_before {
            let _ = tokio::time::timeout_at(deadline, changes.changed()).await;
            continue;
        }
        // Tokens wake this too: only the settling matters.
        while !live.settled() {
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
    }
}

pub fn ended(ws: &Workspace, id: &JobId, state: State) -> Result<Ended, ApiError> {
    let meta = ws.read_meta(state, id)?;
    let outcome = ws
        .outcome(state, id)?
        .ok_or_else(|| ApiError::server(format!("job {id} has no outcome")))?;
    Ok(Ended { meta, outcome })
}

/// The error a client gets for a job that did not end done.
pub fn job_error(id: &JobId, outcome: &JobOutcome) -> ApiError {
    let error = match outcome {
        JobOutcome::Done(_) => ApiError::server("the job is done"),
        JobOutcome::Cancelled => ApiError::server(format!("job {id} was cancelled")),
        JobOutcome::Failed { reason, .. } => {
            ApiError::server(format!("job {id} failed: {reason}")).with_code("job_failed")
        }
        JobOutcome::Denied { reason } => {
            ApiError::server(format!("job {id} was denied: {reason}")).with_code("job_denied")
        }
    };
    error.for_job(id)
}

pub fn usage(meta: &Meta) -> serde_json::Value {
    let prompt = meta.prompt_tokens.unwrap_or(0);
    let completion = meta.generated_tokens.unwrap_or(0);
    serde_json::json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

/// Seconds since the epoch, for `created`.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
