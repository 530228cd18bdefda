//! Streamed answers (`"stream": true`, server-sent events): passed through event by event,
//! never buffered whole; the usage is read from the final chunk and settled when the stream
//! ends.
//!
//! Without `stream_options.include_usage` an OpenAI stream carries no usage, so the gateway
//! asks for it ([`super::request`]) and then does not forward that usage-only chunk (empty
//! `choices`, with `usage`) to a client that did not ask. A stream that breaks off (the model
//! fails, or the client disconnects) never reaches its end: the reservation is kept. The
//! headers were sent with the reservation: the settled bucket shows in the next answer.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use hyper::body::Frame;

use super::settle::{settle_usage, Settlement};
use crate::limiter::RateLimiter;
use crate::log_limit::warn_every;

/// What one event is: its `usage.total_tokens` if it has one, and whether it is a usage-only
/// chunk (empty `choices`). The event's `data:` lines are joined with `\n`, as an SSE client
/// would (lines may end in `\r\n`, `\n` or `\r`).
fn usage_of(event: &[u8]) -> Option<(u64, bool)> {
    let mut data: Vec<u8> = Vec::new();
    for line in sse_lines(event) {
        if let Some(value) = line.strip_prefix(b"data:") {
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(value.strip_prefix(b" ").unwrap_or(value));
        }
    }
    // Read as the answers of non-streamed requests are: the two fields, without building the
    // event's document (a model's event may be up to max_event_bytes of anything).
    let [usage, choices] = super::json::fields(&data, ["usage", "choices"]).ok()?;
    let [total] = super::json::fields(usage?.get().as_bytes(), ["total_tokens"]).ok()?;
    let total = serde_json::from_str::<u64>(total?.get()).ok()?;
    // Like an SSE client reading `choices` as a list: absent, not a list or empty: no choices.
    let usage_only = choices.is_none_or(|c| !c.get().starts_with('[') || is_empty_array(c.get()));
    Some((total, usage_only))
}

/// `[ ]`, with any whitespace inside.
fn is_empty_array(json: &str) -> bool {
    json.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')).is_some_and(|inside| inside.trim().is_empty())
}

/// The lines of an event, each without its end (`\r\n`, `\n` or `\r`).
fn sse_lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = event;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest.iter().position(|&b| b == b'\n' || b == b'\r').unwrap_or(rest.len());
        let line = &rest[..end];
        let skip = match rest.get(end..end + 2) {
            Some(b"\r\n") => 2,
            _ => usize::from(end < rest.len()),
        };
        rest = &rest[end + skip..];
        Some(line)
    })
}

/// Cuts a stream of bytes into server-sent events as the standard reads them: a line ends in
/// `\r\n`, `\n` or `\r`, and an empty line ends an event. Bytes are looked at once, as they
/// arrive (a long event is not scanned again from its start with every frame), and an event
/// may not grow beyond `max` bytes.
struct EventSplitter {
    /// Bytes of the event not yet complete; `pending[..scanned]` have been looked at.
    pending: Vec<u8>,
    scanned: usize,
    /// The scan is at the start of a line (nothing yet on it).
    line_start: bool,
    /// What the last byte looked at was, when a `\n` right after it would belong to it.
    after: After,
    max: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum After {
    Other,
    /// A `\r` that ended a line: a `\n` next completes the same line end.
    Cr,
    /// A `\r` that ended an event: a `\n` next is the last byte of that event.
    CrEndingEvent,
}

/// An event grew beyond `max_event_bytes` without ending.
#[derive(Debug)]
struct EventTooLong {
    max: usize,
}

impl std::fmt::Display for EventTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the model sent a server-sent event longer than max_event_bytes ({} bytes)", self.max)
    }
}

impl std::error::Error for EventTooLong {}

impl EventSplitter {
    fn new(max: usize) -> Self {
        EventSplitter { pending: Vec::new(), scanned: 0, line_start: true, after: After::Other, max }
    }

    /// Adds `bytes` and hands every event they complete to `event`, in order, each with its
    /// line ends, so that what is handed out, put together, is the bytes as received. (The
    /// `\n` of a `\r\n` that ended an event comes on its own, after that event, when the two
    /// arrive in different frames.)
    fn push(&mut self, bytes: &[u8], mut event: impl FnMut(&[u8])) -> Result<(), EventTooLong> {
        self.pending.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(&b) = self.pending.get(self.scanned) {
            self.scanned += 1;
            let after = std::mem::replace(&mut self.after, After::Other);
            match (b, after) {
                (b'\n', After::Cr) => {}
                (b'\n', After::CrEndingEvent) => {
                    event(&self.pending[start..self.scanned]);
                    start = self.scanned;
                }
                (b'\n' | b'\r', _) if self.line_start => {
                    if b == b'\r' {
                        match self.pending.get(self.scanned) {
                            Some(b'\n') => self.scanned += 1,
                            Some(_) => {}
                            None => self.after = After::CrEndingEvent,
                        }
                    }
                    event(&self.pending[start..self.scanned]);
                    start = self.scanned;
                }
                (b'\n' | b'\r', _) => {
                    self.line_start = true;
                    if b == b'\r' {
                        self.after = After::Cr;
                    }
                }
                _ => self.line_start = false,
            }
        }
        self.pending.drain(..start);
        self.scanned -= start;
        match self.pending.len() > self.max {
            true => Err(EventTooLong { max: self.max }),
            false => Ok(()),
        }
    }

    /// What is left when the stream ends: a last event without its empty line.
    fn rest(&mut self) -> Vec<u8> {
        self.scanned = 0;
        std::mem::take(&mut self.pending)
    }
}

/// Adds `event` to `out` unless it is the usage-only chunk the client did not ask for
/// (`strip`), noting its usage in `usage`. `dropped_last`: whether the event before was
/// dropped, so that a lone `\n` completing its line end is dropped too.
fn keep_event(event: &[u8], usage: &mut Option<u64>, strip: bool, dropped_last: &mut bool, out: &mut Vec<u8>) {
    if event == b"\n" && std::mem::take(dropped_last) {
        return;
    }
    *dropped_last = false;
    if let Some((total, usage_only)) = usage_of(event) {
        *usage = Some(total);
        if usage_only && strip {
            *dropped_last = true;
            return;
        }
    }
    out.extend_from_slice(event);
}

/// A streamed answer cut into `frames` as the network might, read as the settling body reads
/// it (events split at blank lines, each held whole up to `max_event_bytes`): the usage it
/// settles on, and the bytes forwarded. For the fuzz target; no limiter involved.
#[doc(hidden)]
pub fn read_stream(frames: &[&[u8]], max_event_bytes: usize, strip: bool) -> (Option<u64>, Vec<u8>) {
    let mut splitter = EventSplitter::new(max_event_bytes);
    let (mut usage, mut dropped_last, mut out) = (None, false, Vec::new());
    for frame in frames {
        let pushed = splitter.push(frame, |event| keep_event(event, &mut usage, strip, &mut dropped_last, &mut out));
        if pushed.is_err() {
            return (usage, out);
        }
    }
    let rest = splitter.rest();
    keep_event(&rest, &mut usage, strip, &mut dropped_last, &mut out);
    (usage, out)
}

struct Settling<L: RateLimiter> {
    inner: Body,
    events: EventSplitter,
    usage: Option<u64>,
    /// Taken when the stream ends (and only then).
    settlement: Option<Settlement<L>>,
    strip: bool,
    /// The stream was cut (an event too long): the error to end the body with, once the
    /// events completed before it are out.
    cut: Option<axum::Error>,
    /// The last event was the usage-only chunk, not forwarded: a `\n` completing its line end
    /// in the next frame is not forwarded either.
    dropped_last: bool,
    /// The model's trailers, passed on after the last event.
    trailers: Option<Frame<Bytes>>,
}

/// A client that goes away before the end drops the body unfinished: the reservation is kept,
/// and counted as charged (the metrics would otherwise never see this request's tokens spent).
impl<L: RateLimiter> Drop for Settling<L> {
    fn drop(&mut self) {
        self.broken(&"the client went away before the stream ended");
    }
}

impl<L: RateLimiter> Settling<L> {
    /// Reads `frame` into events: the bytes to forward (the usage-only event dropped if asked).
    fn complete_events(&mut self, frame: &[u8]) -> (Vec<u8>, Result<(), EventTooLong>) {
        let mut out = Vec::with_capacity(frame.len());
        let (usage, strip, dropped_last) = (&mut self.usage, self.strip, &mut self.dropped_last);
        let result = self.events.push(frame, |event| keep_event(event, usage, strip, dropped_last, &mut out));
        (out, result)
    }

    /// The end of the stream (its body, or its trailers): a last event without its blank line,
    /// to forward (unless it is the usage-only chunk to drop), and the settlement.
    fn end(&mut self) -> Vec<u8> {
        let rest = self.events.rest();
        let mut out = Vec::with_capacity(rest.len());
        keep_event(&rest, &mut self.usage, self.strip, &mut self.dropped_last, &mut out);
        self.finish();
        out
    }

    /// The stream cannot end well (the model broke it off, or sent an event too long): the
    /// reservation is kept.
    fn broken(&mut self, why: &dyn std::fmt::Display) {
        if let Some(settlement) = self.settlement.take() {
            tracing::debug!(reason = %why, reserved = settlement.reserved, "stream broke off: reservation kept");
            settlement.kept();
        }
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
        if let Some(cut) = self.cut.take() {
            return Poll::Ready(Some(Err(cut)));
        }
        if let Some(trailers) = self.trailers.take() {
            return Poll::Ready(Some(Ok(trailers)));
        }
        loop {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    self.broken(&e);
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let frame = match frame.into_data() {
                        Ok(data) => data,
                        // Trailers end the stream (nothing is polled after them): settle now.
                        Err(trailers) => {
                            let rest = self.end();
                            if rest.is_empty() {
                                return Poll::Ready(Some(Ok(trailers)));
                            }
                            self.trailers = Some(trailers);
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest)))));
                        }
                    };
                    let (out, result) = self.complete_events(&frame);
                    if let Err(too_long) = result {
                        warn_every!(error = %too_long, "stream cut");
                        self.broken(&too_long);
                        let error = axum::Error::new(too_long);
                        if out.is_empty() {
                            return Poll::Ready(Some(Err(error)));
                        }
                        self.cut = Some(error);
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                }
                Poll::Ready(None) => {
                    // A last event without its blank line is forwarded as it is.
                    let rest = self.end();
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
    let events = EventSplitter::new(usize::try_from(settlement.llm.max_event_bytes).unwrap_or(usize::MAX));
    Body::new(Settling {
        inner: body,
        events,
        usage: None,
        settlement: Some(settlement),
        strip,
        cut: None,
        dropped_last: false,
        trailers: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pieces `splitter` hands out for `frames`, and an error if it cut the stream.
    fn split(splitter: &mut EventSplitter, frames: &[&[u8]]) -> (Vec<Vec<u8>>, Option<String>) {
        let mut pieces = Vec::new();
        for frame in frames {
            if let Err(e) = splitter.push(frame, |event| pieces.push(event.to_vec())) {
                return (pieces, Some(e.to_string()));
            }
        }
        (pieces, None)
    }

    #[test]
    fn every_line_end_the_standard_allows_ends_events() {
        let stream: &[u8] = b"data: 1\n\ndata: 2\r\rdata: 3\r\n\r\ndata: 4\n\r\nid: 5\rdata: 5\r\n\ndata: 6";
        let mut splitter = EventSplitter::new(1 << 20);
        let (pieces, cut) = split(&mut splitter, &[stream]);
        assert_eq!(cut, None);
        let pieces: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        let want: [&[u8]; 5] =
            [b"data: 1\n\n", b"data: 2\r\r", b"data: 3\r\n\r\n", b"data: 4\n\r\n", b"id: 5\rdata: 5\r\n\n"];
        assert_eq!(pieces, want);
        assert_eq!(splitter.rest(), b"data: 6");
    }

    #[test]
    fn frames_cut_anywhere_give_the_same_events() {
        let stream: &[u8] = b"data: a\r\n\r\ndata: b\r\rdata: c\n\n: comment\r\n\r\ndata: d\r\r\n";
        let (whole, _) = split(&mut EventSplitter::new(1 << 20), &[stream]);
        for size in 1..stream.len() {
            let frames: Vec<&[u8]> = stream.chunks(size).collect();
            let (pieces, cut) = split(&mut EventSplitter::new(1 << 20), &frames);
            assert_eq!(cut, None);
            assert_eq!(pieces.concat(), stream, "frames of {size}: every byte handed out once, in order");
            let events: Vec<&Vec<u8>> = pieces.iter().filter(|p| p.as_slice() != b"\n").collect();
            let whole_events: Vec<&Vec<u8>> = whole.iter().filter(|p| p.as_slice() != b"\n").collect();
            assert_eq!(events.len(), whole_events.len(), "frames of {size}");
        }
    }

    #[test]
    fn each_byte_is_looked_at_once_however_long_the_event() {
        let mut splitter = EventSplitter::new(usize::MAX);
        let frame = vec![b'x'; 64 * 1024];
        for _ in 0..64 {
            splitter.push(&frame, |_| panic!("no event ends")).unwrap();
        }
        // 4 MiB pending, scanned once: the next byte continues where the scan stopped.
        assert_eq!(splitter.scanned, 64 * frame.len());
        let mut events = 0;
        splitter.push(b"\n\n", |_| events += 1).unwrap();
        assert_eq!((events, splitter.pending.len(), splitter.scanned), (1, 0, 0));
    }

    #[test]
    fn an_event_longer_than_the_cap_cuts_the_stream_after_the_events_before_it() {
        let mut splitter = EventSplitter::new(16);
        let (pieces, cut) = split(&mut splitter, &[b"data: ok\n\ndata: 0123456789", b"abcdef"]);
        assert_eq!(pieces, vec![b"data: ok\n\n".to_vec()]);
        assert_eq!(cut.as_deref(), Some("the model sent a server-sent event longer than max_event_bytes (16 bytes)"));
        let mut at_cap = EventSplitter::new(16);
        assert!(at_cap.push(b"data: 0123456789", |_| {}).is_ok(), "16 bytes fit");
    }

    /// `frames` through a settling body (the usage chunk stripped when `strip`): what the
    /// client gets (data, and trailers if any) and the tokens left afterwards (reserved: 50 of
    /// 1000).
    async fn through(frames: Vec<Frame<Bytes>>, strip: bool) -> (Vec<u8>, bool, u64) {
        use crate::config::{Llm, Policy, Quota, Unit};
        use crate::limiter::memory::MemoryLimiter;
        use http_body_util::BodyExt;
        let limiter = MemoryLimiter::new();
        let mut policy = Policy::simple("chat", &["/"], 10, 60, 10);
        policy.limits.push(Quota { name: "tokens".into(), unit: Unit::Tokens, limit: 1000, window: 60, burst: 1000 });
        let policy = std::sync::Arc::new(policy);
        limiter.check(&policy, "id", &[1, 50]).await.unwrap();
        let settlement = Settlement {
            limiter: limiter.clone(),
            policy: policy.clone(),
            identity_hash: "id".into(),
            reserved: 50,
            llm: Llm {
                chars_per_token: 4,
                default_max_tokens: 10,
                max_response_bytes: 1 << 20,
                max_event_bytes: 1 << 20,
            },
            strip_usage_chunk: strip,
        };
        let frames = futures_util::stream::iter(frames.into_iter().map(Ok::<_, std::convert::Infallible>));
        let mut body = settled_on_end(Body::new(http_body_util::StreamBody::new(frames)), settlement);
        let (mut data, mut trailers) = (Vec::new(), false);
        while let Some(frame) = body.frame().await {
            match frame.unwrap().into_data() {
                Ok(bytes) => data.extend_from_slice(&bytes),
                Err(_) => trailers = true,
            }
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        (data, trailers, limiter.tokens(&policy, "id", 1))
    }

    fn data(bytes: &'static [u8]) -> Frame<Bytes> {
        Frame::data(Bytes::from_static(bytes))
    }

    const USAGE_ONLY: &[u8] = b"data: {\"choices\":[],\"usage\":{\"total_tokens\":7}}";

    #[tokio::test]
    async fn the_usage_chunk_is_dropped_however_it_arrives_and_the_stream_settled() {
        let chunk = || data(b"data: {\"choices\":[{}]}\n\n");
        // Its final \r and \n in two frames.
        let split = vec![chunk(), data(USAGE_ONLY), data(b"\r\n\r"), data(b"\ndata: [DONE]\n\n")];
        let (sent, _, left) = through(split, true).await;
        assert_eq!(
            sent,
            b"data: {\"choices\":[{}]}\n\ndata: [DONE]\n\n".to_vec(),
            "{}",
            String::from_utf8_lossy(&sent)
        );
        assert_eq!(left, 993, "settled on 7");
        // The last thing in the stream, without its blank line.
        let (sent, _, left) = through(vec![chunk(), data(USAGE_ONLY)], true).await;
        assert_eq!(sent, b"data: {\"choices\":[{}]}\n\n".to_vec(), "{}", String::from_utf8_lossy(&sent));
        assert_eq!(left, 993);
        // Kept for a client that asked for it.
        let (sent, _, _) = through(vec![chunk(), data(USAGE_ONLY)], false).await;
        assert!(sent.ends_with(USAGE_ONLY));
    }

    #[tokio::test]
    async fn a_stream_ending_with_trailers_is_settled_and_its_last_event_forwarded() {
        let mut trailers = axum::http::HeaderMap::new();
        trailers.insert("x-done", axum::http::HeaderValue::from_static("1"));
        let frames = vec![
            data(b"data: {\"choices\":[{}]}\n\ndata: {\"choices\":[{}],\"usage\":{\"total_tokens\":9}}"),
            Frame::trailers(trailers),
        ];
        let (sent, trailers, left) = through(frames, true).await;
        assert!(
            sent.ends_with(b"\"total_tokens\":9}}"),
            "the last event, with choices, forwarded: {}",
            String::from_utf8_lossy(&sent)
        );
        assert!(trailers, "and the trailers after it");
        assert_eq!(left, 991, "settled on 9");
    }

    #[test]
    fn the_usage_chunk_is_recognised_whatever_its_line_ends() {
        let usage = b"{\"choices\":[],\"usage\":{\"total_tokens\":7}}";
        for end in [&b"\n\n"[..], b"\r\r", b"\r\n\r\n"] {
            let event = [b"data: ".as_slice(), usage, end].concat();
            assert_eq!(usage_of(&event), Some((7, true)), "{end:?}");
        }
        assert_eq!(usage_of(b"data: {\"choices\":[{}],\"usage\":{\"total_tokens\":7}}\n\n"), Some((7, false)));
        assert_eq!(
            usage_of(b"data:{\"usage\":\r\ndata: {\"total_tokens\":3}}\r\n\r\n"),
            Some((3, true)),
            "data lines joined"
        );
        assert_eq!(usage_of(b"data: [DONE]\n\n"), None);
        assert_eq!(usage_of(b"data: {\"choices\":[ ],\"usage\":{\"total_tokens\":2}}\n\n"), Some((2, true)));
        assert_eq!(usage_of(b"data: {\"choices\":null,\"usage\":{\"total_tokens\":2}}\n\n"), Some((2, true)));
        assert_eq!(usage_of(b"data: {\"usage\":{\"total_tokens\":-2}}\n\n"), None);
    }
}
