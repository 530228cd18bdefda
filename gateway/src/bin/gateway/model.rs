//! The demo model API (`gateway model`): a tiny deterministic sentiment model behind `POST /v1/predict`, so the
//! demo and the tests need nothing from outside. It stands in for any HTTP model server.
//!
//! - `POST /v1/predict` with `{"text": "..."}` -> `{"model", "label", "score", "tokens"}`
//! - `GET /v1/models` -> the model's name and description
//! - `ANY /v1/echo` and `ANY /v1/echo/...` -> what the model received (method, path as
//!   received, query, headers, body length), to check what the gateway forwards
//! - `GET /healthz`
//!
//! The model is a lexicon of weighted words with negation ("not good" counts as bad), turned
//! into a probability with the logistic function. `--latency-ms` adds a simulated inference
//! time to every prediction.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
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
    /// Simulated inference time per prediction, in ms.
    #[arg(long, default_value_t = 20)]
    pub latency_ms: u64,
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

#[derive(Clone)]
struct ModelState {
    latency: Duration,
}

#[derive(Deserialize)]
struct PredictRequest {
    text: String,
}

/// The model server's router; `latency` is slept before every prediction.
pub fn router(latency: Duration) -> Router {
    Router::new()
        .route("/v1/predict", post(predict_handler))
        .route("/v1/models", get(models))
        .route("/v1/echo", any(echo))
        .route("/v1/echo/{*rest}", any(echo))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .with_state(ModelState { latency })
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": {"type": "bad_request", "message": message}}))).into_response()
}

async fn predict_handler(State(state): State<ModelState>, body: Bytes) -> Response {
    let request: PredictRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("expected a JSON body like {{\"text\": \"...\"}}: {e}")),
    };
    if !state.latency.is_zero() {
        tokio::time::sleep(state.latency).await;
    }
    let p = predict(&request.text);
    Json(json!({"model": MODEL_NAME, "label": p.label, "score": p.score, "tokens": p.tokens})).into_response()
}

async fn models() -> Json<serde_json::Value> {
    Json(json!({"models": [{
        "id": MODEL_NAME,
        "task": "sentiment",
        "description": "a lexicon of weighted words with negation, scored with the logistic function",
    }]}))
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
