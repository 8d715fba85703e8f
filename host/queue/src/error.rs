use std::path::PathBuf;

/// Everything that can go wrong in the queue; each variant names the input at fault.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The id as [`shown`]: cut and escaped once.
    #[error("invalid job id \"{0}\": ids are 1-128 digits separated by single underscores")]
    InvalidId(String),
    #[error("no job {0} in this workspace")]
    NotFound(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a workspace directory")]
    NotAWorkspace(PathBuf),
    #[error("empty prompt")]
    EmptyPrompt,
    #[error("prompt is {size} bytes; the limit is {limit} bytes")]
    PromptTooLarge { size: u64, limit: u64 },
    /// The tag as [`shown`]: cut and escaped once.
    #[error("invalid tag \"{0}\": tags are 1-64 characters from A-Z a-z 0-9 _ -")]
    InvalidTag(String),
    #[error("too many tags ({count}); the limit is {limit}")]
    TooManyTags { count: usize, limit: usize },
    #[error("image {path}: {reason}")]
    InvalidImage { path: PathBuf, reason: String },
    #[error("{what} must be {expected}, got {got}")]
    InvalidOption {
        what: &'static str,
        expected: String,
        got: String,
    },
    #[error("meta.json of job {id} is malformed: {reason}")]
    BadMeta { id: String, reason: String },
    #[error("workspace {path} is owned by another nrvnad (pid {pid})")]
    Locked { path: PathBuf, pid: String },
    #[error(
        "workspace {path} is served by shared daemons (nrvnad --shared): start this one \
         with --shared too, or stop them first"
    )]
    ServedShared { path: PathBuf },
    #[error(
        "workspace {path}: a daemon with node id {node} is running already; give this one \
         another --node-id"
    )]
    NodeInUse { path: PathBuf, node: String },
    #[error(
        "job {id} is no longer this daemon's: its lease lapsed and another daemon took it \
         over; its result here is dropped"
    )]
    ClaimLost { id: String },
    /// A [`crate::Workspace::submit_with`] hook refused the job; nothing was queued.
    #[error("{0}")]
    Refused(String),
    #[error("file watcher: {0}")]
    Watch(#[from] notify::Error),
    #[error("job {id} is {state}, not {expected}")]
    WrongState {
        id: String,
        state: &'static str,
        expected: &'static str,
    },
}

pub type Result<T, E = QueueError> = std::result::Result<T, E>;

/// Characters of untrusted text an error message shows.
const SHOWN_CHARS: usize = 160;

/// Untrusted text (an id, a tag, a name) for an error message: cut to a prefix first, so a
/// huge input costs no more than its prefix, then escaped once (`\n`, `\u{1b}`, ...).
pub fn shown(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(SHOWN_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(SHOWN_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

/// Attaches the path to an io error, the one piece of context every io failure needs.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| QueueError::Io {
            path: path.into(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_text_is_escaped_once_and_cut() {
        let err = crate::JobId::parse("1\n2").unwrap_err().to_string();
        assert!(err.contains(r#""1\n2""#), "{err}");
        assert!(!err.contains(r"\\n"), "escaped twice: {err}");
        let long = "x".repeat(10_000);
        let cut = shown(&long);
        assert_eq!(cut.len(), SHOWN_CHARS + 3);
    }
}
