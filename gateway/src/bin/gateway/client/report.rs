//! What the client prints: one line per answer, read from the rate-limit headers, and the
//! summary with the exit code.

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

/// What happened to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok { remaining: Option<u64>, reset_secs: Option<u64> },
    Limited { retry_after_secs: Option<u64> },
    Failed { status: u16, message: String },
    Unreachable(String),
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
        Outcome::Limited { retry_after_secs: Some(s) } => {
            format!("Request {n}: rate limited. Please try again after {}.", plural(*s, "second"))
        }
        Outcome::Limited { retry_after_secs: None } => format!("Request {n}: rate limited."),
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

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Classifies an answer from its status, headers and body.
pub fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Outcome {
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Outcome::Limited { retry_after_secs: header_u64(headers, "retry-after") };
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
    fn lines_read_as_the_issue_asks() {
        let ok = Outcome::Ok { remaining: Some(7), reset_secs: Some(42) };
        assert_eq!(describe(3, &ok), "Request 3: OK. You can send 7 more requests in the next 42 seconds.");
        let limited = Outcome::Limited { retry_after_secs: Some(6) };
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
        s.failed = 1;
        assert_eq!(s.exit_code(), 1);
        s.unreachable = Some("refused".into());
        assert_eq!(s.exit_code(), 2);
    }
}
