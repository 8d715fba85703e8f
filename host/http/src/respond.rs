//! The answer to a text request (chat or completion), once its job is built: submit it,
//! then wait for its result or stream its text as it is generated. Chat and completions
//! differ only in the objects they answer with ([`Kind`]).

use std::convert::Infallible;
use std::sync::Arc;

use axum::http::HeaderValue;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use nrvna_queue::stream::{Followed, TextFollower};
use nrvna_queue::{JobId, JobOutcome, Meta, State, Submission};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::jobs::{self, CancelOnDrop, POLL};
use crate::live::{LIVE_CHECK, LiveRead, LiveReader};
use crate::{AppState, JOB_ID_HEADER};

/// Which API answers: their objects differ.
#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Chat,
    Completion,
}

impl Kind {
    /// The id prefix and the object names (whole answer, stream chunk).
    fn names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Kind::Chat => ("chatcmpl", "chat.completion", "chat.completion.chunk"),
            Kind::Completion => ("cmpl", "text_completion", "text_completion"),
        }
    }

    /// One choice: the whole text, or a streamed piece of it (`delta`).
    fn choice(self, text: Option<&str>, finish: Option<&str>, delta: bool) -> Value {
        match (self, delta) {
            (Kind::Chat, false) => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text.unwrap_or("")},
                "finish_reason": finish,
                "logprobs": null,
            }),
            (Kind::Chat, true) => {
                let delta = text.map_or(json!({}), |t| json!({"content": t}));
                json!({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null})
            }
            (Kind::Completion, _) => json!({
                "index": 0,
                "text": text.unwrap_or(""),
                "finish_reason": finish,
                "logprobs": null,
            }),
        }
    }

    /// A done job as the whole answer (`chat.completion` or `text_completion`).
    pub fn object(self, id: &JobId, model: &str, text: &str, meta: &Meta) -> Value {
        let (prefix, object, _) = self.names();
        let finish = meta.finish_reason.as_deref().unwrap_or("stop");
        json!({
            "id": format!("{prefix}-{id}"),
            "object": object,
            "created": jobs::now_secs(),
            "model": model,
            "choices": [self.choice(Some(text), Some(finish), false)],
            "usage": jobs::usage(meta),
        })
    }
}

/// How to answer: as a whole, or streamed (with a last usage chunk or not).
pub struct Answer {
    pub kind: Kind,
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
}

/// Queues `sub` and answers with its job's result, whole or streamed.
pub async fn respond(
    state: Arc<AppState>,
    sub: Submission,
    answer: Answer,
) -> Result<Response, ApiError> {
    let stop = sub.sampling.stop.clone();
    jobs::check_backpressure(&state, 1)?;
    let id = jobs::submit(&state, sub, &[]).await?;
    let mut response = if answer.stream {
        Sse::new(chunks(state.clone(), id.clone(), answer, stop)).into_response()
    } else {
        let mut guard = CancelOnDrop::new(&state.ws, &id);
        let ended = jobs::wait(&state, &id).await?;
        guard.disarm();
        let JobOutcome::Done(artifact) = &ended.outcome else {
            return Err(jobs::job_error(&id, &ended.outcome));
        };
        let text = String::from_utf8_lossy(&artifact.bytes);
        let body = answer.kind.object(&id, &answer.model, &text, &ended.meta);
        axum::Json(body).into_response()
    };
    set_job_header(&mut response, &id);
    Ok(response)
}

pub fn set_job_header(response: &mut Response, id: &JobId) {
    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        response.headers_mut().insert(JOB_ID_HEADER, value);
    }
}

/// Where a stream reads its job's text: the daemon's live view (it pushes each piece as
/// it comes) or, where that says nothing, the job's `partial.txt`.
enum Source {
    Live(LiveReader),
    File {
        follower: TextFollower,
        /// How long to sleep before the next look: [`POLL`] after new text, doubling up
        /// to [`FILE_POLL_MAX`] while there is none (idle streams must not busy the CPU
        /// the model decodes on).
        idle: std::time::Duration,
    },
}

/// The longest a stream reading `partial.txt` waits between looks.
const FILE_POLL_MAX: std::time::Duration = std::time::Duration::from_millis(8);

/// Where a stream stands.
struct Streaming {
    state: Arc<AppState>,
    id: JobId,
    answer: Answer,
    source: Source,
    guard: CancelOnDrop,
    /// Text sent so far.
    sent: String,
    /// Text read but held back: it could be the start of a stop string.
    held: String,
    longest_stop: usize,
    stop: Vec<String>,
    /// A stop string was seen: nothing more goes out before the end.
    stopped: bool,
    started: bool,
    /// Events left to send once the job has ended; `None` while it runs.
    closing: Option<Vec<Event>>,
}

impl Streaming {
    fn chunk(&self, text: Option<&str>, finish: Option<&str>) -> Event {
        let mut body = self.envelope();
        body["choices"] = json!([self.answer.kind.choice(text, finish, true)]);
        Event::default().data(body.to_string())
    }

    /// A chunk's fields besides its choices.
    fn envelope(&self) -> Value {
        let (prefix, _, object) = self.answer.kind.names();
        json!({
            "id": format!("{prefix}-{}", self.id),
            "object": object,
            "created": jobs::now_secs(),
            "model": self.answer.model,
        })
    }

    /// The next text the job generated (non-empty), or `None` once it has ended (or
    /// restarted, or cannot be followed): then [`Streaming::close`] says how.
    async fn next_text(&mut self) -> Option<String> {
        loop {
            match &mut self.source {
                Source::Live(reader) => match reader.read() {
                    LiveRead::Text(text) | LiveRead::Settled(text) if !text.is_empty() => {
                        return Some(text);
                    }
                    LiveRead::Settled(_) | LiveRead::Restarted => return None,
                    LiveRead::Text(_) => {
                        if reader.changed(LIVE_CHECK).await {
                            continue;
                        }
                        // Nothing heard for a while: the job may have ended without the
                        // daemon (cancelled while queued), or be run by no live view.
                        match self.state.ws.state_of(&self.id) {
                            Ok(Some(s)) if s.is_terminal() => return None,
                            Ok(Some(State::Running)) if !reader.begun() => {
                                self.source = Source::File {
                                    follower: TextFollower::new(&self.state.ws, &self.id),
                                    idle: POLL,
                                };
                            }
                            Ok(Some(_)) => {}
                            Ok(None) | Err(_) => return None,
                        }
                    }
                },
                Source::File { follower, idle } => match follower.poll() {
                    Ok(Followed::Running { text }) | Ok(Followed::Ended { text, .. })
                        if !text.is_empty() =>
                    {
                        *idle = POLL;
                        return Some(text);
                    }
                    Ok(Followed::Running { .. }) => {
                        tokio::time::sleep(*idle).await;
                        *idle = (*idle * 2).min(FILE_POLL_MAX);
                    }
                    // Ended, restarted (its text starts over), gone or unreadable.
                    Ok(_) | Err(_) => return None,
                },
            }
        }
    }

    /// Text that can go out now: all but what could still turn into a stop string, and
    /// nothing from a stop string on.
    fn releasable(&mut self, text: String) -> String {
        if self.stopped {
            return String::new();
        }
        self.held.push_str(&text);
        if self.longest_stop == 0 {
            return std::mem::take(&mut self.held);
        }
        let first_stop = self
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first_stop {
            self.held.truncate(at);
            self.stopped = true;
            return std::mem::take(&mut self.held);
        }
        let keep = self.longest_stop.saturating_sub(1);
        let mut cut = self.held.len().saturating_sub(keep);
        while !self.held.is_char_boundary(cut) {
            cut -= 1;
        }
        let rest = self.held.split_off(cut);
        std::mem::replace(&mut self.held, rest)
    }

    /// The last events: the rest of the result, the finish reason, usage, `[DONE]`.
    fn close(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        let ended = match self.state.ws.state_of(&self.id) {
            Ok(Some(s)) if s.is_terminal() => jobs::ended(&self.state.ws, &self.id, s),
            Ok(Some(State::Queued)) => Err(ApiError::server(format!(
                "job {} was put back in the queue (its daemon stopped); it will run again: \
                 fetch its result by id",
                self.id
            ))
            .for_job(&self.id)),
            _ => Err(ApiError::server(format!("job {} vanished", self.id))),
        };
        self.guard.disarm();
        match ended {
            Ok(ended) => match &ended.outcome {
                JobOutcome::Done(artifact) => {
                    let result = String::from_utf8_lossy(&artifact.bytes).into_owned();
                    // The result is the truth: what the stream has not shown of it yet.
                    let rest = result
                        .strip_prefix(self.sent.as_str())
                        .unwrap_or_default()
                        .to_owned();
                    if !rest.is_empty() {
                        events.push(self.chunk(Some(&rest), None));
                    }
                    let finish = ended.meta.finish_reason.as_deref().unwrap_or("stop");
                    events.push(self.chunk(None, Some(finish)));
                    if self.answer.include_usage {
                        let mut body = self.envelope();
                        body["choices"] = json!([]);
                        body["usage"] = jobs::usage(&ended.meta);
                        events.push(Event::default().data(body.to_string()));
                    }
                }
                other => {
                    let error = jobs::job_error(&self.id, other);
                    events.push(Event::default().data(error.body().to_string()));
                }
            },
            Err(e) => events.push(Event::default().data(e.body().to_string())),
        }
        events.push(Event::default().data("[DONE]"));
        events.reverse(); // popped from the end
        events
    }
}

fn chunks(
    state: Arc<AppState>,
    id: JobId,
    answer: Answer,
    stop: Vec<String>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let streaming = Streaming {
        source: Source::Live(state.live.job(&id).reader()),
        guard: CancelOnDrop::new(&state.ws, &id),
        state,
        id,
        answer,
        sent: String::new(),
        held: String::new(),
        longest_stop: stop.iter().map(String::len).max().unwrap_or(0),
        stop,
        stopped: false,
        started: false,
        closing: None,
    };
    stream::unfold(streaming, |mut s| async move {
        if !s.started && s.answer.kind == Kind::Chat {
            s.started = true;
            let mut first = s.envelope();
            first["choices"] = json!([{"index": 0, "delta": {"role": "assistant", "content": ""},
                "finish_reason": null, "logprobs": null}]);
            return Some((Ok(Event::default().data(first.to_string())), s));
        }
        loop {
            if let Some(closing) = &mut s.closing {
                let event = closing.pop()?;
                return Some((Ok(event), s));
            }
            match s.next_text().await {
                Some(text) => {
                    let out = s.releasable(text);
                    if !out.is_empty() {
                        s.sent.push_str(&out);
                        let event = s.chunk(Some(&out), None);
                        return Some((Ok(event), s));
                    }
                }
                None => s.closing = Some(s.close()),
            }
        }
    })
}
