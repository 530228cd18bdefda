//! What the client prints: one line per answer, read from the rate-limit headers (and in chat
//! mode from the usage), and the summary with the exit code.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};

/// `1 second`, `2 seconds`.
pub fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// The `usage` of a chat completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    pub prompt: Option<u64>,
    pub completion: Option<u64>,
    pub total: u64,
}

/// What is left of one budget: `x-ratelimit-remaining-*`, `-limit-*` and `-reset-*` (a
/// duration as sent, such as `6s` or `1m0s`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    pub remaining: u64,
    pub limit: Option<u64>,
    pub reset: Option<String>,
}

/// The request and token budgets an answer reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Left {
    pub requests: Option<Budget>,
    pub tokens: Option<Budget>,
}

/// What happened to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok {
        remaining: Option<u64>,
        reset_secs: Option<u64>,
    },
    /// An admitted chat completion.
    Chat {
        usage: Option<Usage>,
        left: Left,
        streamed: bool,
    },
    /// `why`: which limits refused (chat mode), e.g. `by the tokens limit`.
    Limited {
        retry_after_secs: Option<u64>,
        why: Option<String>,
    },
    Failed {
        status: u16,
        message: String,
    },
    Unreachable(String),
}

fn budget_text(budget: &Budget, unit: &str) -> String {
    let mut text = budget.remaining.to_string();
    if let Some(limit) = budget.limit {
        text.push_str(&format!(" of {limit}"));
    }
    text.push_str(&format!(" {unit}"));
    if let Some(reset) = &budget.reset {
        text.push_str(&format!(" (full in {reset})"));
    }
    text
}

/// `OK, 13 tokens used (5 prompt + 8 completion). Left: 9 of 10 requests (full in 6s), 287 of 300 tokens (full in 3.9s).`
fn describe_chat(usage: Option<&Usage>, left: &Left, streamed: bool) -> String {
    let mut line = String::from(if streamed { "OK (streamed), " } else { "OK, " });
    match usage {
        Some(Usage { prompt: Some(p), completion: Some(c), total }) => {
            line.push_str(&format!("{total} tokens used ({p} prompt + {c} completion)."))
        }
        Some(Usage { total, .. }) => line.push_str(&format!("{total} tokens used.")),
        None => line.push_str("tokens used unknown (the answer has no usage)."),
    }
    let budgets: Vec<String> = [(&left.requests, "requests"), (&left.tokens, "tokens")]
        .into_iter()
        .filter_map(|(budget, unit)| budget.as_ref().map(|b| budget_text(b, unit)))
        .collect();
    if !budgets.is_empty() {
        line.push_str(&format!(" Left: {}.", budgets.join(", ")));
    }
    line
}

/// The line printed for request `n`.
pub fn describe(n: u64, outcome: &Outcome) -> String {
    match outcome {
        Outcome::Ok { remaining: Some(r), reset_secs: Some(t) } => format!(
            "Request {n}: OK. You can send {} more {} in the next {}.",
            r,
            if *r == 1 { "request" } else { "requests" },
            plural(*t, "second")
        ),
        Outcome::Ok { remaining: Some(r), reset_secs: None } => {
            format!("Request {n}: OK. You can send {r} more {}.", if *r == 1 { "request" } else { "requests" })
        }
        Outcome::Ok { .. } => format!("Request {n}: OK."),
        Outcome::Chat { usage, left, streamed } => {
            format!("Request {n}: {}", describe_chat(usage.as_ref(), left, *streamed))
        }
        Outcome::Limited { retry_after_secs, why } => {
            let mut line = format!("Request {n}: rate limited");
            if let Some(why) = why {
                line.push(' ');
                line.push_str(why);
            }
            line.push('.');
            if let Some(s) = retry_after_secs {
                line.push_str(&format!(" Please try again after {}.", plural(*s, "second")));
            }
            line
        }
        Outcome::Failed { status, message } => format!("Request {n}: failed with HTTP {status}: {message}"),
        Outcome::Unreachable(why) => format!("Request {n}: cannot connect: {why}"),
    }
}

/// `r` and `t` of the first item of a `RateLimit` header (`"default";r=7;t=42`).
pub fn parse_ratelimit(value: &str) -> (Option<u64>, Option<u64>) {
    let first = value.split(',').next().unwrap_or("");
    let mut remaining = None;
    let mut reset = None;
    for param in first.split(';').skip(1) {
        match param.trim().split_once('=') {
            Some(("r", v)) => remaining = v.trim().parse().ok(),
            Some(("t", v)) => reset = v.trim().parse().ok(),
            _ => {}
        }
    }
    (remaining, reset)
}

pub fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Classifies an answer from its status, headers and body.
pub fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Outcome {
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Outcome::Limited { retry_after_secs: header_u64(headers, "retry-after"), why: None };
    }
    if status.is_success() {
        let (mut remaining, mut reset_secs) =
            headers.get("ratelimit").and_then(|v| v.to_str().ok()).map(parse_ratelimit).unwrap_or((None, None));
        remaining = remaining.or_else(|| header_u64(headers, "x-ratelimit-remaining"));
        reset_secs = reset_secs.or_else(|| header_u64(headers, "x-ratelimit-reset"));
        return Outcome::Ok { remaining, reset_secs };
    }
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.pointer("/error/message").and_then(|m| m.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect());
    Outcome::Failed { status: status.as_u16(), message }
}

/// Totals for the summary line and the exit code.
#[derive(Debug, Default)]
pub struct Summary {
    pub ok: u64,
    pub limited: u64,
    pub failed: u64,
    pub unreachable: Option<String>,
    pub elapsed: Duration,
    /// Chat mode: the `usage.total_tokens` of the admitted requests, summed.
    pub tokens: Option<u64>,
}

impl Summary {
    pub fn line(&self) -> String {
        let sent = self.ok + self.limited + self.failed;
        let mut line = format!(
            "Summary: {} in {:.1} s: {} OK, {} rate limited",
            plural(sent, "request"),
            self.elapsed.as_secs_f64(),
            self.ok,
            self.limited
        );
        if self.failed > 0 {
            line.push_str(&format!(", {} failed", self.failed));
        }
        if let Some(tokens) = self.tokens {
            line.push_str(&format!(", {} used", plural(tokens, "token")));
        }
        line.push('.');
        line
    }

    /// 0 when every request got an answer (admitted or limited), 1 when some failed, 2 when
    /// the endpoint could not be reached.
    pub fn exit_code(&self) -> i32 {
        if self.unreachable.is_some() {
            2
        } else if self.failed > 0 {
            1
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn each_outcome_reads_as_one_plain_sentence() {
        let ok = Outcome::Ok { remaining: Some(7), reset_secs: Some(42) };
        assert_eq!(describe(3, &ok), "Request 3: OK. You can send 7 more requests in the next 42 seconds.");
        let limited = Outcome::Limited { retry_after_secs: Some(6), why: None };
        assert_eq!(describe(11, &limited), "Request 11: rate limited. Please try again after 6 seconds.");
        let one = Outcome::Ok { remaining: Some(1), reset_secs: Some(1) };
        assert_eq!(describe(1, &one), "Request 1: OK. You can send 1 more request in the next 1 second.");
    }

    #[test]
    fn reads_the_draft_header_then_the_x_headers() {
        assert_eq!(parse_ratelimit("\"default\";r=7;t=42"), (Some(7), Some(42)));
        assert_eq!(parse_ratelimit("\"a\";r=1;t=2, \"b\";r=9;t=9"), (Some(1), Some(2)));
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("4"));
        h.insert("x-ratelimit-reset", HeaderValue::from_static("9"));
        assert_eq!(classify(StatusCode::OK, &h, b""), Outcome::Ok { remaining: Some(4), reset_secs: Some(9) });
        h.insert("ratelimit", HeaderValue::from_static("\"default\";r=3;t=5"));
        assert_eq!(classify(StatusCode::OK, &h, b""), Outcome::Ok { remaining: Some(3), reset_secs: Some(5) });
        let body = br#"{"error":{"type":"upstream_unavailable","message":"down"}}"#;
        assert_eq!(
            classify(StatusCode::BAD_GATEWAY, &HeaderMap::new(), body),
            Outcome::Failed { status: 502, message: "down".into() }
        );
    }

    #[test]
    fn summary_and_exit_codes() {
        let mut s = Summary { ok: 5, limited: 3, elapsed: Duration::from_millis(1234), ..Summary::default() };
        assert_eq!(s.line(), "Summary: 8 requests in 1.2 s: 5 OK, 3 rate limited.");
        assert_eq!(s.exit_code(), 0);
        s.tokens = Some(140);
        assert_eq!(s.line(), "Summary: 8 requests in 1.2 s: 5 OK, 3 rate limited, 140 tokens used.");
        s.failed = 1;
        assert_eq!(s.exit_code(), 1);
        s.unreachable = Some("refused".into());
        assert_eq!(s.exit_code(), 2);
    }
}
