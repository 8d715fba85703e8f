//! A chat job's messages (`messages.json`): the conversation the model's chat template is
//! applied to. `prompt.txt` keeps the last user message, so readers that know only the
//! prompt still see what was asked.

use serde::{Deserialize, Serialize};

/// Most messages one chat job may hold.
pub const MAX_MESSAGES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

/// Why a list of messages cannot be a chat job.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MessagesError {
    #[error("messages is not a JSON list of {{\"role\", \"content\"}} objects: {0}")]
    Malformed(String),
    #[error("messages is empty; give at least one user message")]
    Empty,
    #[error("messages has {count} entries; the limit is {MAX_MESSAGES}")]
    TooMany { count: usize },
    #[error("messages has no user message; the last user message becomes prompt.txt")]
    NoUserMessage,
    #[error("message {index} contains a NUL byte")]
    NulByte { index: usize },
}

/// Parses and checks `messages.json`.
pub fn parse(bytes: &[u8]) -> Result<Vec<Message>, MessagesError> {
    let messages: Vec<Message> =
        serde_json::from_slice(bytes).map_err(|e| MessagesError::Malformed(e.to_string()))?;
    check(&messages)?;
    Ok(messages)
}

/// Checks a list of messages: not empty, not too long, with a user message, no NUL bytes
/// (a chat template cannot carry them).
pub fn check(messages: &[Message]) -> Result<(), MessagesError> {
    if messages.is_empty() {
        return Err(MessagesError::Empty);
    }
    if messages.len() > MAX_MESSAGES {
        return Err(MessagesError::TooMany {
            count: messages.len(),
        });
    }
    if let Some(index) = messages.iter().position(|m| m.content.contains('\0')) {
        return Err(MessagesError::NulByte { index });
    }
    last_user(messages).ok_or(MessagesError::NoUserMessage)?;
    Ok(())
}

/// The last user message: what `prompt.txt` holds for a chat job.
pub fn last_user(messages: &[Message]) -> Option<&str> {
    messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(|m| m.content.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_and_are_checked() {
        let ok = br#"[{"role":"system","content":"be brief"},{"role":"user","content":"hi"},
            {"role":"assistant","content":"hello"},{"role":"user","content":"again"}]"#;
        let m = parse(ok).unwrap();
        assert_eq!(last_user(&m), Some("again"));
        assert_eq!(parse(b"[]"), Err(MessagesError::Empty));
        assert!(matches!(
            parse(br#"[{"role":"robot","content":"x"}]"#),
            Err(MessagesError::Malformed(_))
        ));
        assert_eq!(
            parse(br#"[{"role":"system","content":"x"}]"#),
            Err(MessagesError::NoUserMessage)
        );
    }
}
