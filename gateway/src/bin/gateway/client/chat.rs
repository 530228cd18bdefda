//! The client's chat mode (`--chat`): the request body of an OpenAI chat completion, and what
//! to read from the answer: the `usage` (of the JSON answer, or of the stream's last chunk),
//! the `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers, and on a `429` which
//! limits refused (`error.limits`) and how long to wait.

use axum::http::{header, HeaderMap, StatusCode};
use serde_json::{json, Value};

use super::report::{classify, header_u64, Budget, Left, Outcome, Usage};

/// The body of one chat completion: `prompt` as the one user message.
pub fn body(model: &str, prompt: &str, max_tokens: Option<u64>, stream: bool) -> String {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": prompt}]});
    if let Some(n) = max_tokens {
        body["max_tokens"] = json!(n);
    }
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body.to_string()
}

fn usage_of(value: &Value) -> Option<Usage> {
    let usage = value.get("usage")?;
    let field = |name: &str| usage.get(name).and_then(Value::as_u64);
    let (prompt, completion) = (field("prompt_tokens"), field("completion_tokens"));
    let total = field("total_tokens").or_else(|| Some(prompt? + completion?))?;
    Some(Usage { prompt, completion, total })
}

/// The usage of a server-sent-events answer: the last `data:` chunk that carries one (sent
/// before `data: [DONE]` when the request asked `stream_options.include_usage`).
pub fn stream_usage(body: &str) -> Option<Usage> {
    body.lines()
        .rev()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(str::trim)
        .filter(|data| *data != "[DONE]")
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .find_map(|chunk| usage_of(&chunk))
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    Some(headers.get(name)?.to_str().ok()?.trim().to_string())
}

/// `x-ratelimit-remaining-{unit}` with its `-limit-` and `-reset-` companions.
fn budget(headers: &HeaderMap, unit: &str) -> Option<Budget> {
    Some(Budget {
        remaining: header_u64(headers, &format!("x-ratelimit-remaining-{unit}"))?,
        limit: header_u64(headers, &format!("x-ratelimit-limit-{unit}")),
        reset: header_str(headers, &format!("x-ratelimit-reset-{unit}")),
    })
}

/// The limits named in a `429` body's `error.limits` (`[{"policy", "name", ...}]`, or plain
/// strings), else `None`.
fn refused_by(error: &Value) -> Option<Vec<String>> {
    let limits = error.get("limits")?.as_array()?;
    let names: Vec<String> = limits
        .iter()
        .filter_map(|limit| match limit {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => ["name", "unit", "kind", "type", "policy"]
                .iter()
                .find_map(|k| o.get(*k).and_then(Value::as_str))
                .map(str::to_string),
            _ => None,
        })
        .collect();
    (!names.is_empty()).then_some(names)
}

/// Classifies a chat answer; other answers than `200` and `429` as in predict mode.
pub fn classify_chat(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Outcome {
    if status == StatusCode::TOO_MANY_REQUESTS {
        let error = serde_json::from_slice::<Value>(body).ok().and_then(|v| v.get("error").cloned());
        let error = error.unwrap_or(Value::Null);
        let retry_after_secs =
            header_u64(headers, "retry-after").or_else(|| error.get("retry_after_seconds").and_then(Value::as_u64));
        let why = match refused_by(&error) {
            Some(names) => {
                Some(format!("by the {} {}", names.join(" and "), if names.len() == 1 { "limit" } else { "limits" }))
            }
            None => {
                error.get("message").or_else(|| error.get("type")).and_then(Value::as_str).map(|m| format!("({m})"))
            }
        };
        return Outcome::Limited { retry_after_secs, why };
    }
    if !status.is_success() {
        return classify(status, headers, body);
    }
    let event_stream = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    let usage = if event_stream {
        stream_usage(&String::from_utf8_lossy(body))
    } else {
        serde_json::from_slice::<Value>(body).ok().and_then(|v| usage_of(&v))
    };
    let left = Left { requests: budget(headers, "requests"), tokens: budget(headers, "tokens") };
    // Without OpenAI's headers, the plain ones (RateLimit / X-RateLimit-*) still say what is left.
    let plain = match (&left, classify(status, headers, b"")) {
        (Left { requests: None, tokens: None }, Outcome::Ok { remaining: Some(remaining), .. }) => {
            Some(Budget { remaining, limit: header_u64(headers, "x-ratelimit-limit"), reset: None })
        }
        _ => None,
    };
    let left = Left { requests: left.requests.or(plain), ..left };
    Outcome::Chat { usage, left, streamed: event_stream }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::report::describe;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (header::HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn the_body_is_one_user_message_and_asks_for_the_usage_when_streamed() {
        let plain: Value = serde_json::from_str(&body("m", "hi", Some(64), false)).unwrap();
        assert_eq!(plain, json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 64}));
        let streamed: Value = serde_json::from_str(&body("m", "hi", None, true)).unwrap();
        assert_eq!(streamed["stream"], true);
        assert_eq!(streamed["stream_options"], json!({"include_usage": true}));
        assert!(streamed.get("max_tokens").is_none());
    }

    #[test]
    fn an_answer_says_the_tokens_used_and_what_is_left() {
        let h = headers(&[
            ("x-ratelimit-limit-requests", "10"),
            ("x-ratelimit-remaining-requests", "9"),
            ("x-ratelimit-reset-requests", "6s"),
            ("x-ratelimit-limit-tokens", "300"),
            ("x-ratelimit-remaining-tokens", "287"),
            ("x-ratelimit-reset-tokens", "3.9s"),
        ]);
        let body =
            br#"{"object":"chat.completion","usage":{"prompt_tokens":5,"completion_tokens":8,"total_tokens":13}}"#;
        let outcome = classify_chat(StatusCode::OK, &h, body);
        assert_eq!(
            describe(1, &outcome),
            "Request 1: OK, 13 tokens used (5 prompt + 8 completion). Left: 9 of 10 requests (full in 6s), \
             287 of 300 tokens (full in 3.9s)."
        );
        // No usage, no headers at all.
        let bare = classify_chat(StatusCode::OK, &HeaderMap::new(), b"{}");
        assert_eq!(describe(2, &bare), "Request 2: OK, tokens used unknown (the answer has no usage).");
        // Only the plain headers of a policy without tokens.
        let plain = headers(&[("x-ratelimit-limit", "5"), ("x-ratelimit-remaining", "4"), ("x-ratelimit-reset", "2")]);
        let outcome = classify_chat(StatusCode::OK, &plain, br#"{"usage":{"total_tokens":7}}"#);
        assert_eq!(describe(3, &outcome), "Request 3: OK, 7 tokens used. Left: 4 of 5 requests.");
    }

    #[test]
    fn a_stream_s_usage_is_its_last_chunk_before_done() {
        let sse = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n\
                   data: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":6,\"total_tokens\":8}}\n\n\
                   data: [DONE]\n\n";
        assert_eq!(stream_usage(sse), Some(Usage { prompt: Some(2), completion: Some(6), total: 8 }));
        assert_eq!(stream_usage("data: {\"choices\":[]}\n\ndata: [DONE]\n\n"), None);
        let h = headers(&[("content-type", "text/event-stream"), ("x-ratelimit-remaining-tokens", "195")]);
        let outcome = classify_chat(StatusCode::OK, &h, sse.as_bytes());
        assert_eq!(
            describe(4, &outcome),
            "Request 4: OK (streamed), 8 tokens used (2 prompt + 6 completion). Left: 195 tokens. \
             (Tokens left after the reservation; the next answer shows them settled.)",
            "a stream's headers leave before its usage is settled: said so"
        );
        let outcome = classify_chat(StatusCode::OK, &h, b"data: [DONE]\n\n");
        assert_eq!(
            describe(5, &outcome),
            "Request 5: OK (streamed), tokens used unknown (the answer has no usage). Left: 195 tokens. \
             (Tokens left after the reservation; the next answer shows them settled.)"
        );
    }

    #[test]
    fn a_429_names_the_limits_that_refused_and_the_wait() {
        let body =
            br#"{"error":{"type":"rate_limited","message":"Client exceeded sending requests.","retry_after_seconds":6,
            "limits":[{"policy":"chat","name":"tokens","retry_after_ms":5400}]}}"#;
        let h = headers(&[("retry-after", "6")]);
        let outcome = classify_chat(StatusCode::TOO_MANY_REQUESTS, &h, body);
        assert_eq!(outcome, Outcome::Limited { retry_after_secs: Some(6), why: Some("by the tokens limit".into()) });
        assert_eq!(
            describe(6, &outcome),
            "Request 6: rate limited by the tokens limit. Please try again after 6 seconds."
        );
        // Two limits, plain strings; the wait from the body when there is no Retry-After.
        let both = br#"{"error":{"retry_after_seconds":3,"limits":["requests","tokens"]}}"#;
        assert_eq!(
            describe(7, &classify_chat(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), both)),
            "Request 7: rate limited by the requests and tokens limits. Please try again after 3 seconds."
        );
        // No limits: the message, else the type.
        let plain = br#"{"error":{"type":"rate_limited","message":"Slow down."}}"#;
        assert_eq!(
            describe(8, &classify_chat(StatusCode::TOO_MANY_REQUESTS, &h, plain)),
            "Request 8: rate limited (Slow down.). Please try again after 6 seconds."
        );
        assert_eq!(
            describe(9, &classify_chat(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), b"")),
            "Request 9: rate limited."
        );
    }

    #[test]
    fn other_errors_read_as_in_predict_mode() {
        let body = br#"{"error":{"message":"'messages' must not be empty","type":"invalid_request_error","param":"messages","code":null}}"#;
        assert_eq!(
            classify_chat(StatusCode::BAD_REQUEST, &HeaderMap::new(), body),
            Outcome::Failed { status: 400, message: "'messages' must not be empty".into() }
        );
    }
}
