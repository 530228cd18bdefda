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
    /// `remaining` requests now; the bucket full again in `reset_secs`; one request comes back
    /// every `every_ms` (`w / q` of `RateLimit-Policy`, in ms).
    Ok {
        remaining: Option<u64>,
        reset_secs: Option<u64>,
        every_ms: Option<u64>,
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
        // A streamed answer's headers leave before its usage is known: its tokens left are
        // what the reservation (prompt + max_tokens) left, settled only when the stream ends.
        if streamed && left.tokens.is_some() {
            line.push_str(" (Tokens left after the reservation; the next answer shows them settled.)");
        }
    }
    line
}

/// The line printed for request `n`.
pub fn describe(n: u64, outcome: &Outcome) -> String {
    match outcome {
        Outcome::Ok { remaining: Some(0), reset_secs, every_ms } => {
            let mut line = format!("Request {n}: OK. No more requests left right now");
            if let Some(every) = every_ms {
                line.push_str(&format!(": the next one comes back within {}", seconds(*every)));
            }
            if let Some(t) = reset_secs {
                line.push_str(&format!(", all of them in {}", plural(*t, "second")));
            }
            line.push('.');
            line
        }
        Outcome::Ok { remaining: Some(r), reset_secs, every_ms } => {
            let mut line =
                format!("Request {n}: OK. {r} more {} can be sent now", if *r == 1 { "request" } else { "requests" });
            if let Some(every) = every_ms {
                line.push_str(&format!(", one more comes back every {}", seconds(*every)));
            }
            if let Some(t) = reset_secs {
                line.push_str(&format!(", the bucket is full again in {}", plural(*t, "second")));
            }
            line.push('.');
            line
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

/// `7.5 seconds`, `1 second`, `0.2 seconds`: `ms` in seconds, to a tenth (rounded up).
fn seconds(ms: u64) -> String {
    let tenths = ms.div_ceil(100);
    match (tenths / 10, tenths % 10) {
        (1, 0) => "1 second".into(),
        (whole, 0) => format!("{whole} seconds"),
        (whole, tenth) => format!("{whole}.{tenth} seconds"),
    }
}

/// `w / q` of the first item of a `RateLimit-Policy` header, in ms (`"default";q=10;w=60` ->
/// 6000): how often one request comes back.
pub fn parse_policy_interval(value: &str) -> Option<u64> {
    let first = value.split(',').next()?;
    let (mut q, mut w) = (None, None);
    for param in first.split(';').skip(1) {
        match param.trim().split_once('=') {
            Some(("q", v)) => q = v.trim().parse::<u64>().ok().filter(|&q| q > 0),
            Some(("w", v)) => w = v.trim().parse::<u64>().ok(),
            _ => {}
        }
    }
    w?.checked_mul(1000)?.checked_div(q?)
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
        let every_ms = headers.get("ratelimit-policy").and_then(|v| v.to_str().ok()).and_then(parse_policy_interval);
        return Outcome::Ok { remaining, reset_secs, every_ms };
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
        let ok = Outcome::Ok { remaining: Some(7), reset_secs: Some(42), every_ms: Some(6000) };
        assert_eq!(
            describe(3, &ok),
            "Request 3: OK. 7 more requests can be sent now, one more comes back every 6 seconds, the bucket is full again in 42 seconds."
        );
        // The case a user misread: none left, but one back within 7.5 s, not in 20.
        let empty = Outcome::Ok { remaining: Some(0), reset_secs: Some(20), every_ms: Some(7500) };
        assert_eq!(
            describe(2, &empty),
            "Request 2: OK. No more requests left right now: the next one comes back within 7.5 seconds, all of them in 20 seconds."
        );
        let bare = Outcome::Ok { remaining: Some(0), reset_secs: None, every_ms: None };
        assert_eq!(describe(4, &bare), "Request 4: OK. No more requests left right now.");
        assert_eq!(parse_policy_interval("\"default\";q=8;w=60, \"x\";q=1;w=1"), Some(7500));
        assert_eq!(parse_policy_interval("\"p\";q=0;w=60"), None);
        assert_eq!(seconds(1000), "1 second");
        assert_eq!(seconds(250), "0.3 seconds");
        let limited = Outcome::Limited { retry_after_secs: Some(6), why: None };
        assert_eq!(describe(11, &limited), "Request 11: rate limited. Please try again after 6 seconds.");
        let one = Outcome::Ok { remaining: Some(1), reset_secs: Some(1), every_ms: None };
        assert_eq!(
            describe(1, &one),
            "Request 1: OK. 1 more request can be sent now, the bucket is full again in 1 second."
        );
    }

    #[test]
    fn reads_the_draft_header_then_the_x_headers() {
        assert_eq!(parse_ratelimit("\"default\";r=7;t=42"), (Some(7), Some(42)));
        assert_eq!(parse_ratelimit("\"a\";r=1;t=2, \"b\";r=9;t=9"), (Some(1), Some(2)));
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("4"));
        h.insert("x-ratelimit-reset", HeaderValue::from_static("9"));
        assert_eq!(
            classify(StatusCode::OK, &h, b""),
            Outcome::Ok { remaining: Some(4), reset_secs: Some(9), every_ms: None }
        );
        h.insert("ratelimit", HeaderValue::from_static("\"default\";r=3;t=5"));
        h.insert("ratelimit-policy", HeaderValue::from_static("\"default\";q=10;w=60"));
        assert_eq!(
            classify(StatusCode::OK, &h, b""),
            Outcome::Ok { remaining: Some(3), reset_secs: Some(5), every_ms: Some(6000) }
        );
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
