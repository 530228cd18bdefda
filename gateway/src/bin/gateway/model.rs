//! The demo model API (`gateway model`): a tiny deterministic sentiment model behind `POST /v1/predict`, and an
//! OpenAI-compatible chat model behind `POST /v1/chat/completions` ([`chat`]), so the demo and the tests need
//! nothing from outside. It stands in for any HTTP model server.
//!
//! - `POST /v1/predict` with `{"text": "..."}` -> `{"model", "label", "score", "tokens"}`
//! - `POST /v1/chat/completions`: OpenAI's chat completions, JSON or server-sent events, with
//!   a deterministic reply and `usage` (the rules are in [`chat`])
//! - `GET /v1/models` -> OpenAI's model list (`{"object": "list", "data": [...]}`);
//!   `GET /v1/models/{id}` -> one of them
//! - `ANY /v1/echo` and `ANY /v1/echo/...` -> what the model received (method, path as
//!   received, query, headers, body length), to check what the gateway forwards
//! - `GET /healthz`
//! - `GET /stats` -> `{"in_flight", "max_in_flight", "served"}` ([`stats`]): requests inside the
//!   model now (a streamed answer until its body ends), the most ever at once, and finished
//!
//! The model is a lexicon of weighted words with negation ("not good" counts as bad), turned
//! into a probability with the logistic function. `--latency-ms` adds a simulated inference
//! time to every prediction and before a chat answer's first token; `--token-latency-ms` is
//! the time per generated chat token.

mod chat;
mod stats;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use clap::Args;
use serde::Deserialize;
use serde_json::json;

/// The flags of `gateway model`.
#[derive(Args)]
pub struct ModelArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// Simulated inference time per prediction, in ms; for a chat completion, the time before its
    /// first token.
    #[arg(long, default_value_t = 20)]
    pub latency_ms: u64,
    /// Simulated time per generated chat token, in ms: between streamed chunks, and added up
    /// (times the completion tokens) before a non-streamed answer.
    #[arg(long, default_value_t = DEFAULT_TOKEN_LATENCY_MS)]
    pub token_latency_ms: u64,
}

impl ModelArgs {
    /// The simulated times the flags ask for.
    pub fn timing(&self) -> Timing {
        Timing {
            latency: Duration::from_millis(self.latency_ms),
            token_latency: Duration::from_millis(self.token_latency_ms),
        }
    }
}

pub const DEFAULT_TOKEN_LATENCY_MS: u64 = 5;

/// The simulated times of the model.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timing {
    /// Before every prediction, and before a chat answer's first token.
    pub latency: Duration,
    /// Per generated chat token.
    pub token_latency: Duration,
}

pub const MODEL_NAME: &str = "lexicon-sentiment-v1";

/// Word weights: positive words above zero, negative below.
const LEXICON: &[(&str, f64)] = &[
    ("amazing", 2.5),
    ("awesome", 2.5),
    ("excellent", 2.5),
    ("love", 2.0),
    ("great", 2.0),
    ("fantastic", 2.5),
    ("good", 1.5),
    ("nice", 1.0),
    ("happy", 1.5),
    ("fast", 1.0),
    ("like", 1.0),
    ("helpful", 1.5),
    ("recommend", 1.5),
    ("fine", 0.5),
    ("ok", 0.3),
    ("bad", -1.5),
    ("poor", -1.5),
    ("slow", -1.0),
    ("sad", -1.5),
    ("hate", -2.0),
    ("terrible", -2.5),
    ("awful", -2.5),
    ("horrible", -2.5),
    ("worst", -2.5),
    ("broken", -1.5),
    ("useless", -2.0),
    ("disappointing", -2.0),
    ("angry", -1.5),
    ("bug", -1.0),
];

const NEGATIONS: &[&str] = &["not", "no", "never", "don't", "isn't", "wasn't", "didn't", "can't", "won't"];

/// The model's answer for one text.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    pub label: &'static str,
    /// Probability that the text is positive, in `[0, 1]`, rounded to 4 digits.
    pub score: f64,
    pub tokens: usize,
}

/// Scores `text`: deterministic, no I/O.
pub fn predict(text: &str) -> Prediction {
    let words: Vec<String> = text
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let mut sum = 0.0;
    let mut negate_next = 0usize;
    for word in &words {
        if NEGATIONS.contains(&word.as_str()) {
            negate_next = 2;
            continue;
        }
        if let Some((_, weight)) = LEXICON.iter().find(|(w, _)| *w == word) {
            sum += if negate_next > 0 { -weight } else { *weight };
        }
        negate_next = negate_next.saturating_sub(1);
    }
    let score = 1.0 / (1.0 + (-sum).exp());
    let score = (score * 10_000.0).round() / 10_000.0;
    let label = if score > 0.6 {
        "positive"
    } else if score < 0.4 {
        "negative"
    } else {
        "neutral"
    };
    Prediction { label, score, tokens: words.len() }
}

#[derive(Deserialize)]
struct PredictRequest {
    text: String,
}

/// The model server's router with the given simulated times.
pub fn router_with(timing: Timing) -> Router {
    let counted = Router::new()
        .route("/v1/predict", post(predict_handler))
        .route("/v1/chat/completions", post(chat::handler))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/echo", any(echo))
        .route("/v1/echo/{*rest}", any(echo))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .with_state(timing);
    let stats = std::sync::Arc::new(stats::Stats::default());
    counted
        .layer(axum::middleware::from_fn_with_state(stats.clone(), stats::count))
        .merge(Router::new().route("/stats", get(stats::report)).with_state(stats))
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": {"type": "bad_request", "message": message}}))).into_response()
}

async fn predict_handler(State(timing): State<Timing>, body: Bytes) -> Response {
    let request: PredictRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("expected a JSON body like {{\"text\": \"...\"}}: {e}")),
    };
    if !timing.latency.is_zero() {
        tokio::time::sleep(timing.latency).await;
    }
    let p = predict(&request.text);
    Json(json!({"model": MODEL_NAME, "label": p.label, "score": p.score, "tokens": p.tokens})).into_response()
}

/// When the demo models were "created", for `GET /v1/models` (2026-01-01).
const MODELS_CREATED: u64 = 1_767_225_600;

/// The models in OpenAI's `model` shape, with the demo's `task` and `description`.
fn model_list() -> Vec<serde_json::Value> {
    [
        (MODEL_NAME, "sentiment", "a lexicon of weighted words with negation, scored with the logistic function"),
        (chat::CHAT_MODEL, "chat", "replies with the sentiment of the last user message and echoes it, one token per word"),
    ]
    .into_iter()
    .map(|(id, task, description)| {
        json!({"id": id, "object": "model", "created": MODELS_CREATED, "owned_by": "demo", "task": task, "description": description})
    })
    .collect()
}

async fn models() -> Json<serde_json::Value> {
    Json(json!({"object": "list", "data": model_list()}))
}

async fn model(Path(id): Path<String>) -> Response {
    match model_list().into_iter().find(|m| m["id"] == id.as_str()) {
        Some(m) => Json(m).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {
                "message": format!("The model '{id}' does not exist"),
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }})),
        )
            .into_response(),
    }
}

async fn echo(request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let length = axum::body::to_bytes(body, 16 * 1024 * 1024).await.map(|b| b.len()).unwrap_or(0);
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), json!(String::from_utf8_lossy(v.as_bytes()))))
        .collect();
    Json(json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_bytes": length,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_deterministic_and_sensible() {
        let good = predict("I love this model, it is great!");
        assert_eq!(good.label, "positive");
        assert_eq!(good, predict("I love this model, it is great!"));
        assert_eq!(good.tokens, 7);
        assert_eq!(predict("This is terrible and slow").label, "negative");
        assert_eq!(predict("not good").label, "negative");
        assert_eq!(predict("the sky is blue").label, "neutral");
        assert_eq!(predict("").score, 0.5);
    }
}

#[cfg(test)]
mod http_tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{header, Method, Request as HttpRequest};
    use http_body_util::BodyExt;
    use serde_json::Value;
    use tower::ServiceExt;

    async fn call(router: Router, method: Method, path: &str, body: &str) -> (StatusCode, String, String) {
        let request = HttpRequest::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let content_type =
            response.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, content_type, String::from_utf8(bytes.to_vec()).unwrap())
    }

    async fn chat(body: Value) -> (StatusCode, String, String) {
        call(router_with(Timing::default()), Method::POST, "/v1/chat/completions", &body.to_string()).await
    }

    #[tokio::test]
    async fn a_chat_completion_has_openais_shape_and_predictable_usage() {
        let (status, content_type, body) = chat(json!({
            "model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": "You are a demo."}, {"role": "user", "content": "I love this gateway"}],
            "max_tokens": 100,
            "temperature": 0.2,
        }))
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(content_type, "application/json");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert!(answer["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(answer["object"], "chat.completion");
        assert!(answer["created"].as_u64().unwrap() > MODELS_CREATED);
        assert_eq!(answer["model"], "gpt-4o-mini", "the requested name is echoed");
        let choice = &answer["choices"][0];
        assert_eq!(choice["index"], 0);
        assert_eq!(choice["message"]["role"], "assistant");
        assert_eq!(choice["message"]["content"], "Sentiment: positive. You wrote: I love this gateway");
        assert_eq!(choice["finish_reason"], "stop");
        // 15 + 19 characters -> ceil(34 / 4) = 9 prompt tokens; 4 + 4 words of reply.
        assert_eq!(answer["usage"], json!({"prompt_tokens": 9, "completion_tokens": 8, "total_tokens": 17}));

        let (_, _, cut) =
            chat(json!({"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_completion_tokens": 2}))
                .await;
        let cut: Value = serde_json::from_str(&cut).unwrap();
        assert_eq!(cut["choices"][0]["message"]["content"], "Sentiment: neutral.");
        assert_eq!(cut["choices"][0]["finish_reason"], "length");
        assert_eq!(cut["usage"]["total_tokens"], 2 + 2);
    }

    #[tokio::test]
    async fn a_streamed_completion_sends_a_chunk_per_token_the_usage_chunk_and_done() {
        let (status, content_type, body) = chat(json!({
            "model": "m", "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "not good"}],
        }))
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(content_type, "text/event-stream");
        assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
        let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert!(events.iter().all(|e| e.starts_with("data: ")), "{body}");
        let chunks: Vec<Value> =
            events[..events.len() - 1].iter().map(|e| serde_json::from_str(&e["data: ".len()..]).unwrap()).collect();
        // role, 6 tokens, finish, usage
        assert_eq!(chunks.len(), 1 + 6 + 1 + 1, "{body}");
        let ids: Vec<&Value> = chunks.iter().map(|c| &c["id"]).collect();
        assert!(ids.iter().all(|id| *id == ids[0]), "one id for the whole stream");
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"].get(0)?["delta"].get("content")?.as_str().map(str::to_string))
            .collect();
        assert_eq!(text, "Sentiment: negative. You wrote: not good");
        assert_eq!(chunks[7]["choices"][0]["finish_reason"], "stop");
        let usage = chunks.last().unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"], json!({"prompt_tokens": 2, "completion_tokens": 6, "total_tokens": 8}));
        assert!(chunks[..8].iter().all(|c| c["usage"].is_null()));
    }

    #[tokio::test]
    async fn the_time_per_token_spaces_the_chunks_and_adds_up_for_a_json_answer() {
        let timing = Timing { latency: Duration::ZERO, token_latency: Duration::from_millis(20) };
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "a b c d"}]}); // 8 tokens
        let started = std::time::Instant::now();
        let (status, _, _) = call(router_with(timing), Method::POST, "/v1/chat/completions", &body.to_string()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(started.elapsed() >= Duration::from_millis(160), "{:?}", started.elapsed());

        let mut streamed = body;
        streamed["stream"] = json!(true);
        let request = HttpRequest::post("/v1/chat/completions").body(Body::from(streamed.to_string())).unwrap();
        let started = std::time::Instant::now();
        let response = router_with(timing).oneshot(request).await.unwrap();
        let mut body = response.into_body();
        let mut arrivals = vec![];
        while let Some(frame) = body.frame().await {
            if frame.unwrap().is_data() {
                arrivals.push(started.elapsed());
            }
        }
        assert_eq!(arrivals.len(), 1 + 8 + 1 + 1);
        // The role chunk comes at once, the 8th token 8 token times later.
        assert!(arrivals[8] - arrivals[0] >= Duration::from_millis(140), "{arrivals:?}");
    }

    #[tokio::test]
    async fn bad_chat_bodies_get_400_in_openais_error_shape() {
        for body in [
            "{",
            "[]",
            r#"{"model":"m"}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
        ] {
            let (status, content_type, answer) =
                call(router_with(Timing::default()), Method::POST, "/v1/chat/completions", body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(content_type, "application/json");
            let error: Value = serde_json::from_str(&answer).unwrap();
            let keys: Vec<&String> = error["error"].as_object().unwrap().keys().collect();
            assert_eq!(keys, ["message", "type", "param", "code"], "{answer}");
            assert_eq!(error["error"]["type"], "invalid_request_error");
        }
    }

    #[tokio::test]
    async fn the_model_list_is_openais_and_names_both_models() {
        let (status, _, body) = call(router_with(Timing::default()), Method::GET, "/v1/models", "").await;
        assert_eq!(status, StatusCode::OK);
        let list: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(list["object"], "list");
        let ids: Vec<&str> = list["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [MODEL_NAME, chat::CHAT_MODEL]);
        assert!(list["data"].as_array().unwrap().iter().all(|m| m["object"] == "model" && m["owned_by"] == "demo"));
        let (status, _, one) =
            call(router_with(Timing::default()), Method::GET, "/v1/models/lexicon-chat-v1", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(serde_json::from_str::<Value>(&one).unwrap()["id"], chat::CHAT_MODEL);
        let (status, _, missing) = call(router_with(Timing::default()), Method::GET, "/v1/models/gpt-5", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(serde_json::from_str::<Value>(&missing).unwrap()["error"]["code"], "model_not_found");
    }

    #[test]
    fn the_latency_flags_and_their_defaults_make_the_timing() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            model: ModelArgs,
        }
        use clap::Parser;
        let cli = Cli::try_parse_from(["model", "--token-latency-ms", "42"]).unwrap();
        assert_eq!(cli.model.timing().token_latency, Duration::from_millis(42));
        let cli = Cli::try_parse_from(["model", "--latency-ms", "7"]).unwrap();
        let timing = cli.model.timing();
        assert_eq!(timing.latency, Duration::from_millis(7));
        assert_eq!(timing.token_latency, Duration::from_millis(DEFAULT_TOKEN_LATENCY_MS));
        assert!(Cli::try_parse_from(["model", "--token-latency-ms", "-1"]).is_err());
    }
}
