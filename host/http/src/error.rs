//! OpenAI's error object: `{"error": {"message", "type", "param", "code"}}`, with the
//! HTTP status that goes with it.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use nrvna_queue::JobId;

use crate::JOB_ID_HEADER;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `rate_limit_error`, `server_error`.
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
    /// Seconds a client should wait (429).
    pub retry_after: Option<u64>,
    /// The job the request became, if it got that far.
    pub job: Option<JobId>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
            job: None,
        }
    }

    /// 400: the request is malformed or names a bad value.
    pub fn invalid(param: Option<&'static str>, message: impl Into<String>) -> ApiError {
        ApiError {
            param,
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    pub fn server(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    pub fn for_job(mut self, job: &JobId) -> ApiError {
        self.job = Some(job.clone());
        self
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after {
            headers.insert("retry-after", HeaderValue::from(secs));
        }
        if let Some(job) = &self.job
            && let Ok(value) = HeaderValue::from_str(job.as_str())
        {
            headers.insert(JOB_ID_HEADER, value);
        }
        response
    }
}

impl From<nrvna_queue::QueueError> for ApiError {
    fn from(e: nrvna_queue::QueueError) -> ApiError {
        use nrvna_queue::QueueError as Q;
        match e {
            Q::EmptyPrompt
            | Q::PromptTooLarge { .. }
            | Q::InvalidOption { .. }
            | Q::InvalidTag(_)
            | Q::TooManyTags { .. } => ApiError::invalid(None, e.to_string()),
            other => ApiError::server(other.to_string()),
        }
    }
}
