//! The token estimate of an OpenAI-style request body, before it is sent.
//!
//! - Prompt: the characters (Unicode scalar values) of `messages[].content` (a string, or the
//!   `text` of each part of an array; images, audio and tool calls are not counted), of
//!   `prompt` or of `input` (a string or an array of strings), divided by `chars_per_token`
//!   and rounded up; a prompt or input given as token ids counts one token per id.
//! - Completion: `max_completion_tokens`, else `max_tokens`, else the policy's
//!   `default_max_tokens`, times `n` (default 1); 0 for embeddings (a body with `input` and
//!   neither `messages` nor `prompt`).
//!
//! The estimate is only a reservation: ~4 characters per token holds for English text with
//! OpenAI's tokenizers, other languages and code run from ~1 to ~3, and chat formatting adds a
//! few tokens per message. Settlement replaces it by the answer's real `usage`.

use serde_json::Value;

use crate::config::Llm;

/// What a request may cost, in tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Estimate {
    pub fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// Why an LLM request body is refused (`400 invalid_request_error`, nothing charged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BadLlmRequest {
    NotJson,
    NotAnObject,
    /// None of `messages`, `prompt`, `input`.
    NoPrompt,
    /// A field of the wrong shape: its name.
    BadField(&'static str),
}

impl BadLlmRequest {
    pub fn message(&self) -> String {
        match self {
            BadLlmRequest::NotJson => "The request body is not valid JSON.".into(),
            BadLlmRequest::NotAnObject => "The request body must be a JSON object.".into(),
            BadLlmRequest::NoPrompt => "The request body needs 'messages', 'prompt' or 'input'.".into(),
            BadLlmRequest::BadField(field) => format!("'{field}' does not have the expected type."),
        }
    }

    /// The field at fault (OpenAI's `param`), if one.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            BadLlmRequest::BadField(field) => Some(field),
            _ => None,
        }
    }
}

/// Characters and token ids of a `prompt` / `input` value.
fn prompt_like(value: &Value, field: &'static str) -> Result<(u64, u64), BadLlmRequest> {
    let bad = BadLlmRequest::BadField(field);
    let chars = |s: &str| s.chars().count() as u64;
    match value {
        Value::String(s) => Ok((chars(s), 0)),
        Value::Array(items) => {
            let (mut text, mut ids) = (0u64, 0u64);
            for item in items {
                match item {
                    Value::String(s) => text += chars(s),
                    Value::Number(n) if n.is_u64() => ids += 1,
                    Value::Array(inner) if inner.iter().all(|v| v.is_u64()) => ids += inner.len() as u64,
                    _ => return Err(bad),
                }
            }
            Ok((text, ids))
        }
        _ => Err(bad),
    }
}

/// Characters of text in `messages`.
fn message_chars(messages: &Value) -> Result<u64, BadLlmRequest> {
    let bad = BadLlmRequest::BadField("messages");
    let Value::Array(messages) = messages else { return Err(bad) };
    let mut total = 0u64;
    for message in messages {
        let Value::Object(message) = message else { return Err(bad) };
        match message.get("content") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => total += s.chars().count() as u64,
            Some(Value::Array(parts)) => {
                for part in parts {
                    match part {
                        Value::Object(part) => match part.get("text") {
                            Some(Value::String(s)) => total += s.chars().count() as u64,
                            None => {}
                            Some(_) => return Err(bad),
                        },
                        _ => return Err(bad),
                    }
                }
            }
            Some(_) => return Err(bad),
        }
    }
    Ok(total)
}

/// A non-negative integer field, if present.
fn count(body: &serde_json::Map<String, Value>, field: &'static str) -> Result<Option<u64>, BadLlmRequest> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or(BadLlmRequest::BadField(field)),
    }
}

/// The estimate of a request body under `llm`.
pub fn estimate(body: &[u8], llm: &Llm) -> Result<Estimate, BadLlmRequest> {
    let value: Value = serde_json::from_slice(body).map_err(|_| BadLlmRequest::NotJson)?;
    let Value::Object(body) = value else { return Err(BadLlmRequest::NotAnObject) };
    let (chars, ids, embeddings) = match (body.get("messages"), body.get("prompt"), body.get("input")) {
        (Some(messages), _, _) => (message_chars(messages)?, 0, false),
        (None, Some(prompt), _) => {
            let (chars, ids) = prompt_like(prompt, "prompt")?;
            (chars, ids, false)
        }
        (None, None, Some(input)) => {
            let (chars, ids) = prompt_like(input, "input")?;
            (chars, ids, true)
        }
        (None, None, None) => return Err(BadLlmRequest::NoPrompt),
    };
    let prompt_tokens = chars.div_ceil(llm.chars_per_token).saturating_add(ids);
    let completion_tokens = if embeddings {
        0
    } else {
        let max = match count(&body, "max_completion_tokens")? {
            Some(max) => max,
            None => count(&body, "max_tokens")?.unwrap_or(llm.default_max_tokens),
        };
        let n = count(&body, "n")?.unwrap_or(1).max(1);
        max.saturating_mul(n)
    };
    Ok(Estimate { prompt_tokens, completion_tokens })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLM: Llm =
        Llm { chars_per_token: 4, default_max_tokens: 100, max_response_bytes: 1000, max_event_bytes: 1000 };

    fn est(body: &str) -> Result<(u64, u64), BadLlmRequest> {
        estimate(body.as_bytes(), &LLM).map(|e| (e.prompt_tokens, e.completion_tokens))
    }

    #[test]
    fn chat_messages_count_their_text_and_max_tokens() {
        let chat = r#"{"messages":[{"role":"system","content":"12345678"},{"role":"user","content":[{"type":"text","text":"abcd"},{"type":"image_url","image_url":{"url":"x"}}]},{"role":"assistant","content":null}],"max_tokens":50}"#;
        assert_eq!(est(chat), Ok((3, 50)));
        assert_eq!(
            est(r#"{"messages":[{"role":"user","content":"héllo"}]}"#),
            Ok((2, 100)),
            "default, chars not bytes"
        );
        assert_eq!(est(r#"{"messages":[],"max_completion_tokens":7,"max_tokens":9,"n":3}"#), Ok((0, 21)));
    }

    #[test]
    fn prompts_and_embedding_inputs() {
        assert_eq!(est(r#"{"prompt":"abcdefghi","max_tokens":5}"#), Ok((3, 5)));
        assert_eq!(est(r#"{"prompt":["abcd","efgh"]}"#), Ok((2, 100)));
        assert_eq!(est(r#"{"prompt":[1,2,3],"max_tokens":1}"#), Ok((3, 1)), "token ids count one each");
        assert_eq!(est(r#"{"input":"abcdefgh"}"#), Ok((2, 0)), "embeddings produce no completion");
        assert_eq!(est(r#"{"input":[[1,2],[3]]}"#), Ok((3, 0)));
    }

    #[test]
    fn malformed_bodies_are_refused_with_the_field() {
        assert_eq!(est("not json"), Err(BadLlmRequest::NotJson));
        assert_eq!(est("[1]"), Err(BadLlmRequest::NotAnObject));
        assert_eq!(est(r#"{"model":"x"}"#), Err(BadLlmRequest::NoPrompt));
        assert_eq!(est(r#"{"messages":"hi"}"#), Err(BadLlmRequest::BadField("messages")));
        assert_eq!(est(r#"{"messages":[{"content":5}]}"#), Err(BadLlmRequest::BadField("messages")));
        assert_eq!(est(r#"{"prompt":{}}"#), Err(BadLlmRequest::BadField("prompt")));
        assert_eq!(est(r#"{"prompt":"x","max_tokens":-1}"#), Err(BadLlmRequest::BadField("max_tokens")));
        assert_eq!(est(r#"{"prompt":"x","n":"2"}"#), Err(BadLlmRequest::BadField("n")));
        assert_eq!(BadLlmRequest::BadField("n").param(), Some("n"));
    }
}
