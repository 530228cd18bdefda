//! Reading an LLM request body before the check, in one pass over its top-level fields
//! (`llm::json`): the token estimate ([`super::estimate()`]) and, for a streamed request,
//! whether the client asked for the usage chunk. A streamed request that did not ask gets
//! `stream_options.include_usage: true` spliced into the bytes it sent (everything else stays
//! byte for byte as the client wrote it), so that the stream can be settled.
//!
//! A large body is read on a blocking thread ([`read_off_the_workers`]), few at a time: a
//! megabyte of JSON takes milliseconds, which on the async workers would hold up every other
//! request's Redis replies.

use std::sync::LazyLock;

use axum::body::Bytes;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;

use super::estimate::{estimate_fields, BadLlmRequest, Estimate, EstimateFields};
use super::json::{fields, is_true, span, NotAnObject};
use crate::config::Llm;

/// Bodies up to this size are read on the worker that received them; larger ones on a
/// blocking thread. (Reading 64 KiB takes well under a millisecond; handing work to another
/// thread costs a few microseconds.)
pub const READ_INLINE_BYTES: usize = 64 * 1024;

/// What the gateway learned from an LLM request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LlmRequest {
    pub estimate: Estimate,
    /// For a streamed request (`"stream": true`) that did not ask for its usage: the body to
    /// send instead, which asks for it. The usage chunk is then not forwarded to the client.
    pub asking_for_usage: Option<Bytes>,
}

/// Reads `body` under `llm`.
pub fn read_request(body: &[u8], llm: &Llm) -> Result<LlmRequest, BadLlmRequest> {
    let [messages, prompt, input, max_completion_tokens, max_tokens, n, stream, stream_options] = fields(
        body,
        ["messages", "prompt", "input", "max_completion_tokens", "max_tokens", "n", "stream", "stream_options"],
    )
    .map_err(|e| match e {
        NotAnObject::NotJson => BadLlmRequest::NotJson,
        NotAnObject::OtherJson => BadLlmRequest::NotAnObject,
    })?;
    let estimate =
        estimate_fields(&EstimateFields { messages, prompt, input, max_completion_tokens, max_tokens, n }, llm)?;
    let asking_for_usage = match is_true(stream) && !usage_asked(stream_options) {
        true => Some(ask_for_usage(body, stream_options)),
        false => None,
    };
    Ok(LlmRequest { estimate, asking_for_usage })
}

/// [`read_request`] of a body that is already `Bytes`, on a blocking thread when it is over
/// [`READ_INLINE_BYTES`], and no more of those at once than half the cores (at least one):
/// a flood of large bodies then waits its turn, while the async workers keep a core to
/// serve everything else.
pub async fn read_off_the_workers(body: Bytes, llm: Llm) -> Result<LlmRequest, BadLlmRequest> {
    if body.len() <= READ_INLINE_BYTES {
        return read_request(&body, &llm);
    }
    static LARGE_READS: LazyLock<Semaphore> = LazyLock::new(|| {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Semaphore::new((cores / 2).max(1))
    });
    // The semaphore is never closed, so a permit always comes.
    let _permit = LARGE_READS.acquire().await;
    match tokio::task::spawn_blocking(move || read_request(&body, &llm)).await {
        Ok(read) => read,
        // The blocking pool is shutting down (or the read panicked): refuse the body rather
        // than forward it unread.
        Err(_) => Err(BadLlmRequest::NotJson),
    }
}

/// Whether `stream_options` (the raw field) asks for `include_usage: true`.
fn usage_asked(stream_options: Option<&RawValue>) -> bool {
    let Some(options) = stream_options else { return false };
    match fields(options.get().as_bytes(), ["include_usage"]) {
        Ok([include_usage]) => is_true(include_usage),
        Err(_) => false,
    }
}

/// `body` with `stream_options.include_usage: true`: added to the client's `stream_options`
/// object (at its end, so it wins over an `include_usage` of the client's, as the last of a
/// repeated key does), put in place of a `stream_options` that is not an object, or added as
/// the object's first member when there is none.
fn ask_for_usage(body: &[u8], stream_options: Option<&RawValue>) -> Bytes {
    const ASKED: &str = r#"{"include_usage":true}"#;
    let splice = |at: std::ops::Range<usize>, with: &str| {
        let mut sent = Vec::with_capacity(body.len() + with.len());
        sent.extend_from_slice(body.get(..at.start).unwrap_or_default());
        sent.extend_from_slice(with.as_bytes());
        sent.extend_from_slice(body.get(at.end..).unwrap_or_default());
        Bytes::from(sent)
    };
    match stream_options.and_then(|options| Some((options.get(), span(body, options)?))) {
        Some((text, at)) if text.starts_with('{') => {
            let inner = text.get(1..text.len() - 1).unwrap_or_default();
            match inner.trim().is_empty() {
                true => splice(at, ASKED),
                // Just before the closing brace.
                false => splice(at.end - 1..at.end - 1, r#","include_usage":true"#),
            }
        }
        Some((_, at)) => splice(at, ASKED),
        None => {
            // After the object's opening brace (the body is an object: it was read as one).
            let open = body.iter().position(|&b| b == b'{').map_or(0, |i| i + 1);
            splice(open..open, &format!(r#""stream_options":{ASKED},"#))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    const LLM: Llm =
        Llm { chars_per_token: 4, default_max_tokens: 100, max_response_bytes: 1000, max_event_bytes: 1000 };

    fn sent(body: &str) -> Option<Value> {
        let read = read_request(body.as_bytes(), &LLM).unwrap();
        read.asking_for_usage.map(|b| serde_json::from_slice(&b).unwrap())
    }

    #[test]
    fn usage_is_asked_for_only_when_streaming_and_not_asked() {
        assert_eq!(sent(r#"{"messages":[]}"#), None);
        assert_eq!(sent(r#"{"messages":[],"stream":false}"#), None);
        assert_eq!(sent(r#"{"messages":[],"stream":"true"}"#), None);
        assert_eq!(sent(r#"{"stream":true,"stream_options":{"include_usage":true},"messages":[]}"#), None);
        let cases = [
            r#"{"stream":true,"messages":[]}"#,
            r#" { "stream" : true , "messages" : [ ] } "#,
            r#"{"stream":true,"messages":[],"stream_options":{}}"#,
            r#"{"stream":true,"messages":[],"stream_options":{ }}"#,
            r#"{"stream":true,"messages":[],"stream_options":null}"#,
            r#"{"stream":true,"messages":[],"stream_options":{"include_usage":false,"x":[1]}}"#,
            r#"{"stream":true,"messages":[],"stream_options":{"include_usage":true},"stream_options":{}}"#,
        ];
        for body in cases {
            let sent = sent(body).unwrap_or_else(|| panic!("{body}"));
            assert_eq!(sent["stream_options"]["include_usage"], true, "{body}");
            assert_eq!(sent["stream"], true, "{body}");
        }
        let kept = sent(r#"{"stream":true,"messages":[],"stream_options":{"include_usage":false,"x":[1]}}"#).unwrap();
        assert_eq!(kept["stream_options"]["x"], json!([1]), "the client's other options stay");
    }

    #[test]
    fn the_body_sent_is_the_client_s_bytes_with_only_the_usage_option_added() {
        let body = r#"{"model":"m", "stream":true,  "messages":[{"role":"user","content":"a\u00e9"}]}"#;
        let read = read_request(body.as_bytes(), &LLM).unwrap();
        let sent = String::from_utf8(read.asking_for_usage.unwrap().to_vec()).unwrap();
        assert_eq!(sent, format!(r#"{{"stream_options":{{"include_usage":true}},{}"#, &body[1..]));
        let with_options = r#"{"stream":true,"messages":[],"stream_options": {"a": 1} }"#;
        let sent = read_request(with_options.as_bytes(), &LLM).unwrap().asking_for_usage.unwrap();
        assert_eq!(sent, r#"{"stream":true,"messages":[],"stream_options": {"a": 1,"include_usage":true} }"#);
    }

    #[test]
    fn a_megabyte_of_zeros_is_read_without_keeping_it() {
        let zeros = vec!["0"; 500_000].join(",");
        let body = format!(r#"{{"messages":[{{"role":"user","content":"abcd"}}],"max_tokens":5,"pad":[{zeros}]}}"#);
        assert_eq!(read_request(body.as_bytes(), &LLM).unwrap().estimate.total(), 6);
        let ids = format!(r#"{{"prompt":[{zeros}],"max_tokens":1}}"#);
        assert_eq!(read_request(ids.as_bytes(), &LLM).unwrap().estimate.total(), 500_001);
    }

    #[tokio::test]
    async fn a_large_body_is_read_off_the_workers_with_the_same_result() {
        let zeros = vec!["0"; 100_000].join(",");
        let body = Bytes::from(format!(r#"{{"prompt":[{zeros}],"stream":true}}"#));
        assert!(body.len() > READ_INLINE_BYTES);
        let off = read_off_the_workers(body.clone(), LLM).await.unwrap();
        assert_eq!(off, read_request(&body, &LLM).unwrap());
        assert_eq!(off.estimate.prompt_tokens, 100_000);
    }
}
