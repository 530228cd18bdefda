//! `POST /v1/chat/completions` of the demo model, in OpenAI's shape, so that an OpenAI SDK (and
//! the gateway's LLM routes) can talk to it. Everything is deterministic, so tests and the demo
//! can predict the usage:
//!
//! - `prompt_tokens` = ceil(c / 4), where c is the number of characters (Unicode scalar values)
//!   of all message contents together (a string, or the `text` of the `{"type": "text"}` parts
//!   of an array; roles and names are not counted);
//! - the reply is `Sentiment: <label>. You wrote: <the last user message>`, one token per
//!   whitespace-separated word, so its natural length is 4 + the words of the last user message;
//! - `completion_tokens` = min(that length, `max_completion_tokens` or else `max_tokens`), with
//!   `finish_reason` `"length"` when it was cut, else `"stop"`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hyper::body::Frame;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{predict, Timing};

/// The chat model's name in `GET /v1/models`; a request may name any model, it is echoed back.
pub const CHAT_MODEL: &str = "lexicon-chat-v1";

/// Roles a message may have.
const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool", "function"];

/// An answer in OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<String>,
}

impl ApiError {
    fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, message: message.into(), param: Some(param.into()) }
    }

    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": "invalid_request_error",
            "param": self.param,
            "code": null,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// A valid chat request, reduced to what the demo model uses.
#[derive(Debug, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    /// Characters of all message contents.
    pub prompt_chars: usize,
    /// Content of the last `user` message ("" if there is none).
    pub last_user: String,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u64>,
    pub stream: bool,
    pub include_usage: bool,
}

/// The text of a message's `content`: a string, `null`, or an array of parts whose `text`
/// parts count (images and other parts are ignored).
fn content_text(content: Option<&Value>, index: usize) -> Result<String, ApiError> {
    let param = || format!("messages.[{index}].content");
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    (Some("text"), _) => return Err(ApiError::invalid(param(), "a text part needs a string 'text'")),
                    (Some(_), _) => {}
                    (None, _) => return Err(ApiError::invalid(param(), "each content part needs a 'type'")),
                }
            }
            Ok(text)
        }
        Some(_) => Err(ApiError::invalid(param(), "'content' must be a string or an array of parts")),
    }
}

fn token_cap(request: &Value, name: &str) -> Result<Option<u64>, ApiError> {
    match request.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Ok(Some(n)),
            _ => Err(ApiError::invalid(name, format!("'{name}' must be an integer of at least 1 (got {v})"))),
        },
    }
}

fn flag(value: Option<&Value>, param: &str) -> Result<bool, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(ApiError::invalid(param, format!("'{param}' must be a boolean (got {v})"))),
    }
}

/// Checks a request body; fields the demo does not use (`temperature`, `n`, `tools`...) are
/// ignored.
pub fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let request: Value = serde_json::from_slice(body).map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        message: format!("We could not parse the JSON body of your request: {e}"),
        param: None,
    })?;
    if !request.is_object() {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            message: "The request body must be a JSON object".into(),
            param: None,
        });
    }
    let model = match request.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => return Err(ApiError::invalid("model", "you must provide a model parameter (a string)")),
    };
    let messages = match request.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => return Err(ApiError::invalid("messages", "'messages' must not be empty")),
        _ => return Err(ApiError::invalid("messages", "'messages' is required: an array of {role, content}")),
    };
    let mut prompt_chars = 0;
    let mut last_user = String::new();
    for (i, message) in messages.iter().enumerate() {
        let role = match message.get("role").and_then(Value::as_str) {
            Some(role) if ROLES.contains(&role) => role,
            _ => {
                return Err(ApiError::invalid(
                    format!("messages.[{i}].role"),
                    format!("each message needs a 'role', one of {}", ROLES.join(", ")),
                ))
            }
        };
        let text = content_text(message.get("content"), i)?;
        prompt_chars += text.chars().count();
        if role == "user" {
            last_user = text;
        }
    }
    let max_tokens = match token_cap(&request, "max_completion_tokens")? {
        Some(n) => Some(n),
        None => token_cap(&request, "max_tokens")?,
    };
    let stream = flag(request.get("stream"), "stream")?;
    let include_usage = match request.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(options @ Value::Object(_)) if stream => {
            flag(options.get("include_usage"), "stream_options.include_usage")?
        }
        Some(Value::Object(_)) => {
            return Err(ApiError::invalid(
                "stream_options",
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            ))
        }
        Some(_) => return Err(ApiError::invalid("stream_options", "'stream_options' must be an object")),
    };
    Ok(ChatRequest { model, prompt_chars, last_user, max_tokens, stream, include_usage })
}

/// Prompt tokens for `chars` characters of message content: ceil(chars / 4).
pub fn prompt_tokens(chars: usize) -> u64 {
    chars.div_ceil(4) as u64
}

/// The generated reply: its tokens (words) and why it ended.
#[derive(Debug, PartialEq)]
pub struct Completion {
    pub words: Vec<String>,
    pub finish_reason: &'static str,
}

impl Completion {
    /// The reply for the last user message, cut at `max_tokens`.
    pub fn for_message(last_user: &str, max_tokens: Option<u64>) -> Self {
        let label = predict(last_user).label;
        let mut words: Vec<String> = ["Sentiment:".to_string(), format!("{label}."), "You".into(), "wrote:".into()]
            .into_iter()
            .chain(last_user.split_whitespace().map(str::to_string))
            .collect();
        let cap = max_tokens.map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
        let finish_reason = if words.len() > cap {
            words.truncate(cap);
            "length"
        } else {
            "stop"
        };
        Completion { words, finish_reason }
    }

    pub fn tokens(&self) -> u64 {
        self.words.len() as u64
    }

    pub fn content(&self) -> String {
        self.words.join(" ")
    }

    /// The content of each streamed chunk: one word, with the space before it.
    pub fn pieces(&self) -> impl Iterator<Item = String> + '_ {
        self.words.iter().enumerate().map(|(i, w)| if i == 0 { w.clone() } else { format!(" {w}") })
    }
}

/// `{prompt_tokens, completion_tokens, total_tokens}`.
pub fn usage(prompt: u64, completion: u64) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// What one answer is made of: the same for the JSON answer and the stream.
pub struct Answer {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion: Completion,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Answer {
    pub fn new(request: &ChatRequest) -> Self {
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Answer {
            id: format!("chatcmpl-demo{:06}", NEXT_ID.fetch_add(1, Ordering::Relaxed)),
            created,
            model: request.model.clone(),
            prompt_tokens: prompt_tokens(request.prompt_chars),
            completion: Completion::for_message(&request.last_user, request.max_tokens),
        }
    }

    fn usage(&self) -> Value {
        usage(self.prompt_tokens, self.completion.tokens())
    }

    /// The `chat.completion` object of a non-streamed answer.
    pub fn json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": self.completion.content(), "refusal": null},
                "logprobs": null,
                "finish_reason": self.completion.finish_reason,
            }],
            "usage": self.usage(),
        })
    }

    fn chunk(&self, choices: Value, usage: Option<Value>, include_usage: bool) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if include_usage {
            chunk["usage"] = usage.unwrap_or(Value::Null);
        }
        chunk
    }

    fn delta(&self, delta: Value, finish_reason: Option<&str>, include_usage: bool) -> Value {
        self.chunk(
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]),
            None,
            include_usage,
        )
    }

    /// The `data:` payloads of the stream, in order: a chunk with the role, one per token, one
    /// with the `finish_reason`, with `include_usage` a chunk with `choices: []` and the
    /// usage (every other chunk then has `"usage": null`, as OpenAI sends), and `[DONE]`.
    pub fn events(&self, include_usage: bool) -> Vec<Event> {
        let mut events =
            vec![Event::Head(self.delta(json!({"role": "assistant", "content": ""}), None, include_usage))];
        events.extend(
            self.completion.pieces().map(|p| Event::Token(self.delta(json!({"content": p}), None, include_usage))),
        );
        events.push(Event::Head(self.delta(json!({}), Some(self.completion.finish_reason), include_usage)));
        if include_usage {
            events.push(Event::Head(self.chunk(json!([]), Some(self.usage()), true)));
        }
        events.push(Event::Done);
        events
    }
}

/// One server-sent event of a streamed answer.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// A chunk sent without delay (role, finish, usage).
    Head(Value),
    /// A chunk carrying a generated token: sent after the time per token.
    Token(Value),
    Done,
}

impl Event {
    /// `data: ...\n\n`.
    pub fn to_sse(&self) -> String {
        match self {
            Event::Head(v) | Event::Token(v) => format!("data: {v}\n\n"),
            Event::Done => "data: [DONE]\n\n".to_string(),
        }
    }
}

/// A response body fed by a channel: the stream's events as they are produced.
struct EventBody(mpsc::Receiver<Bytes>);

impl HttpBody for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|bytes| bytes.map(|b| Ok(Frame::data(b))))
    }
}

/// `POST /v1/chat/completions`.
pub async fn handler(State(timing): State<Timing>, body: Bytes) -> Response {
    let request = match parse(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let answer = Answer::new(&request);
    if !request.stream {
        let time = timing.latency
            + timing.token_latency.saturating_mul(u32::try_from(answer.completion.words.len()).unwrap_or(u32::MAX));
        if !time.is_zero() {
            tokio::time::sleep(time).await;
        }
        return Json(answer.json()).into_response();
    }
    let events = answer.events(request.include_usage);
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    tokio::spawn(async move {
        if !timing.latency.is_zero() {
            tokio::time::sleep(timing.latency).await;
        }
        for event in events {
            if matches!(event, Event::Token(_)) && !timing.token_latency.is_zero() {
                tokio::time::sleep(timing.token_latency).await;
            }
            if tx.send(Bytes::from(event.to_sse())).await.is_err() {
                return; // the client went away
            }
        }
    });
    ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], Body::new(EventBody(rx)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> Result<ChatRequest, ApiError> {
        parse(body.to_string().as_bytes())
    }

    #[test]
    fn prompt_tokens_are_a_quarter_of_the_characters_rounded_up() {
        assert_eq!(prompt_tokens(0), 0);
        assert_eq!(prompt_tokens(1), 1);
        assert_eq!(prompt_tokens(4), 1);
        assert_eq!(prompt_tokens(5), 2);
        // Every content counts, roles do not; characters, not bytes ("é" is one).
        let r = request(json!({"model": "m", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "café"}, {"type": "image_url", "image_url": {}}]},
            {"role": "assistant", "content": null},
        ]}))
        .unwrap();
        assert_eq!((r.prompt_chars, prompt_tokens(r.prompt_chars)), (13, 4));
        assert_eq!(r.last_user, "café");
    }

    #[test]
    fn the_reply_is_the_sentiment_then_the_last_user_message_cut_at_max_tokens() {
        let full = Completion::for_message("I love this gateway", None);
        assert_eq!(full.content(), "Sentiment: positive. You wrote: I love this gateway");
        assert_eq!((full.tokens(), full.finish_reason), (8, "stop"));
        assert_eq!(full.pieces().collect::<String>(), full.content());
        let cut = Completion::for_message("I love this gateway", Some(3));
        assert_eq!((cut.content().as_str(), cut.finish_reason), ("Sentiment: positive. You", "length"));
        assert_eq!(Completion::for_message("", Some(4)), Completion::for_message("", None));
        assert_eq!(Completion::for_message("", None).content(), "Sentiment: neutral. You wrote:");
    }

    #[test]
    fn max_completion_tokens_wins_over_max_tokens_and_both_are_optional() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(request(base.clone()).unwrap().max_tokens, None);
        let mut both = base.clone();
        both["max_tokens"] = json!(50);
        assert_eq!(request(both.clone()).unwrap().max_tokens, Some(50));
        both["max_completion_tokens"] = json!(7);
        assert_eq!(request(both).unwrap().max_tokens, Some(7));
        let mut streamed = base;
        streamed["stream"] = json!(true);
        let r = request(streamed.clone()).unwrap();
        assert!(r.stream && !r.include_usage);
        streamed["stream_options"] = json!({"include_usage": true});
        assert!(request(streamed).unwrap().include_usage);
    }

    #[test]
    fn bad_bodies_name_the_parameter_in_openais_error_shape() {
        let user = json!([{"role": "user", "content": "hi"}]);
        let cases = [
            (json!([1]), None),
            (json!({"messages": user}), Some("model")),
            (json!({"model": 3, "messages": user}), Some("model")),
            (json!({"model": "m"}), Some("messages")),
            (json!({"model": "m", "messages": []}), Some("messages")),
            (json!({"model": "m", "messages": [{"content": "hi"}]}), Some("messages.[0].role")),
            (json!({"model": "m", "messages": [{"role": "robot", "content": "hi"}]}), Some("messages.[0].role")),
            (json!({"model": "m", "messages": [{"role": "user", "content": 5}]}), Some("messages.[0].content")),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"text": "x"}]}]}),
                Some("messages.[0].content"),
            ),
            (json!({"model": "m", "messages": user, "max_tokens": 0}), Some("max_tokens")),
            (json!({"model": "m", "messages": user, "max_tokens": -1}), Some("max_tokens")),
            (json!({"model": "m", "messages": user, "max_completion_tokens": "9"}), Some("max_completion_tokens")),
            (json!({"model": "m", "messages": user, "stream": "yes"}), Some("stream")),
            (
                json!({"model": "m", "messages": user, "stream_options": {"include_usage": true}}),
                Some("stream_options"),
            ),
            (json!({"model": "m", "messages": user, "stream": true, "stream_options": 1}), Some("stream_options")),
        ];
        for (body, param) in cases {
            let e = request(body.clone()).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.param.as_deref(), param, "{body}: {e:?}");
            let shape = e.body();
            assert_eq!(shape["error"]["type"], "invalid_request_error");
            assert!(shape["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
            assert!(shape["error"].get("code").is_some_and(Value::is_null));
        }
        assert_eq!(parse(b"{").unwrap_err().param, None);
        assert!(parse(b"{").unwrap_err().message.starts_with("We could not parse the JSON body"));
    }

    #[test]
    fn the_stream_is_role_then_one_chunk_per_token_then_finish_usage_and_done() {
        let r = request(json!({"model": "m", "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "not good"}], "max_tokens": 5}))
        .unwrap();
        let answer = Answer::new(&r);
        let events = answer.events(true);
        assert_eq!(events.len(), 1 + 5 + 1 + 1 + 1);
        let Event::Head(first) = &events[0] else { panic!("{events:?}") };
        assert_eq!(first["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
        assert_eq!(first["usage"], Value::Null);
        let tokens: Vec<&Value> =
            events.iter().filter_map(|e| if let Event::Token(v) = e { Some(v) } else { None }).collect();
        assert_eq!(tokens.len(), 5);
        let text: String = tokens.iter().map(|t| t["choices"][0]["delta"]["content"].as_str().unwrap()).collect();
        assert_eq!(text, "Sentiment: negative. You wrote: not");
        let Event::Head(finish) = &events[6] else { panic!("{events:?}") };
        assert_eq!(finish["choices"][0]["finish_reason"], "length");
        let Event::Head(last) = &events[7] else { panic!("{events:?}") };
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"], json!({"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}));
        assert_eq!(events[8], Event::Done);
        assert_eq!(events[8].to_sse(), "data: [DONE]\n\n");
        // Without include_usage: no usage anywhere, not even null.
        let plain = answer.events(false);
        assert_eq!(plain.len(), 1 + 5 + 1 + 1);
        assert!(plain.iter().all(|e| match e {
            Event::Head(v) | Event::Token(v) => v.get("usage").is_none() && v["object"] == "chat.completion.chunk",
            Event::Done => true,
        }));
    }
}
