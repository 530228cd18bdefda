//! Streamed answers (`"stream": true`, server-sent events): passed through event by event,
//! never buffered whole; the usage is read from the final chunk and settled when the stream
//! ends.
//!
//! Without `stream_options.include_usage` an OpenAI stream carries no usage, so the gateway
//! asks for it ([`ask_for_usage`]) and then does not forward that usage-only chunk (empty
//! `choices`, with `usage`) to a client that did not ask. A stream that breaks off (the model
//! fails, or the client disconnects) never reaches its end: the reservation is kept. The
//! headers were sent with the reservation: the settled bucket shows in the next answer.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use hyper::body::Frame;
use serde_json::Value;

use super::settle::{settle_usage, Settlement};
use crate::limiter::RateLimiter;

/// For a body with `"stream": true`: the body to send upstream (with
/// `stream_options.include_usage: true` added when absent) and whether the gateway added it.
/// `None` for a request that does not stream.
pub fn ask_for_usage(body: &[u8]) -> Option<(Bytes, bool)> {
    let mut value: Value = serde_json::from_slice(body).ok()?;
    if value.get("stream") != Some(&Value::Bool(true)) {
        return None;
    }
    let asked = value.pointer("/stream_options/include_usage") == Some(&Value::Bool(true));
    if asked {
        return Some((Bytes::copy_from_slice(body), false));
    }
    let object = value.as_object_mut()?;
    let options = object.entry("stream_options").or_insert_with(|| Value::Object(Default::default()));
    match options.as_object_mut() {
        Some(options) => {
            options.insert("include_usage".into(), Value::Bool(true));
        }
        None => *options = serde_json::json!({"include_usage": true}),
    }
    Some((Bytes::from(serde_json::to_vec(&value).ok()?), true))
}

/// What one event is: its `usage.total_tokens` if it has one, and whether it is a usage-only
/// chunk (empty `choices`).
fn usage_of(event: &[u8]) -> Option<(u64, bool)> {
    let text = std::str::from_utf8(event).ok()?;
    let data: String = text
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect::<Vec<_>>()
        .join("\n");
    let value: Value = serde_json::from_str(&data).ok()?;
    let total = value.get("usage")?.get("total_tokens")?.as_u64()?;
    let usage_only = value.get("choices").and_then(Value::as_array).is_none_or(|c| c.is_empty());
    Some((total, usage_only))
}

/// The end of the first complete event in `buf` (after its blank line), if any.
fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

struct Settling<L: RateLimiter> {
    inner: Body,
    /// Bytes of an event not yet complete.
    pending: Vec<u8>,
    usage: Option<u64>,
    /// Taken when the stream ends (and only then).
    settlement: Option<Settlement<L>>,
    strip: bool,
}

impl<L: RateLimiter> Settling<L> {
    /// The complete events of `pending` to forward (the usage-only one dropped if asked).
    fn complete_events(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(end) = event_end(&self.pending) {
            let event: Vec<u8> = self.pending.drain(..end).collect();
            match usage_of(&event) {
                Some((total, usage_only)) => {
                    self.usage = Some(total);
                    if !(usage_only && self.strip) {
                        out.extend_from_slice(&event);
                    }
                }
                None => out.extend_from_slice(&event),
            }
        }
        out
    }

    fn finish(&mut self) {
        let Some(settlement) = self.settlement.take() else { return };
        let Some(used) = self.usage else {
            tracing::debug!(reserved = settlement.reserved, "stream ended without usage: reservation kept");
            settlement.kept();
            return;
        };
        tokio::spawn(async move {
            let mut rows = rl_protocol::CheckAllReply { allowed: true, retry_after_ms: Some(0), limits: Vec::new() };
            let Settlement { limiter, policy, identity_hash, reserved, .. } = settlement;
            settle_usage(&limiter, &policy, &identity_hash, reserved, used, &mut rows).await;
            tracing::debug!(reserved, used, "stream settled");
        });
    }
}

impl<L: RateLimiter> HttpBody for Settling<L> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        loop {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!(error = %e, "stream broke off: reservation kept");
                    if let Some(settlement) = self.settlement.take() {
                        settlement.kept();
                    }
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let frame = match frame.into_data() {
                        Ok(data) => data,
                        Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    };
                    self.pending.extend_from_slice(&frame);
                    let out = self.complete_events();
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                }
                Poll::Ready(None) => {
                    // A last event without its blank line is forwarded as it is.
                    let rest = std::mem::take(&mut self.pending);
                    if let Some((total, _)) = usage_of(&rest) {
                        self.usage = Some(total);
                    }
                    self.finish();
                    return match rest.is_empty() {
                        true => Poll::Ready(None),
                        false => Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest))))),
                    };
                }
            }
        }
    }
}

/// `body` passed through event by event, settling `settlement` when it ends.
pub fn settled_on_end<L: RateLimiter>(body: Body, settlement: Settlement<L>) -> Body {
    let strip = settlement.strip_usage_chunk;
    Body::new(Settling { inner: body, pending: Vec::new(), usage: None, settlement: Some(settlement), strip })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_asked_for_only_when_streaming_and_not_asked() {
        assert_eq!(ask_for_usage(br#"{"messages":[]}"#), None);
        let (body, added) = ask_for_usage(br#"{"stream":true,"messages":[]}"#).unwrap();
        assert!(added);
        let sent: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(sent["stream_options"]["include_usage"], true);
        let (_, added) = ask_for_usage(br#"{"stream":true,"stream_options":{"include_usage":true}}"#).unwrap();
        assert!(!added);
    }

    #[test]
    fn events_are_split_and_the_usage_chunk_recognised() {
        assert_eq!(event_end(b"data: 1\n\ndata: 2"), Some(9));
        assert_eq!(event_end(b"data: 1\r\n\r\n"), Some(11));
        assert_eq!(event_end(b"data: 1\n"), None);
        assert_eq!(usage_of(b"data: {\"choices\":[],\"usage\":{\"total_tokens\":7}}\n\n"), Some((7, true)));
        assert_eq!(usage_of(b"data: {\"choices\":[{}],\"usage\":{\"total_tokens\":7}}\n\n"), Some((7, false)));
        assert_eq!(usage_of(b"data: [DONE]\n\n"), None);
    }
}
