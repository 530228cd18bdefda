//! The HTTP front under attack, with bounded loops, against a real gateway, Redis and model:
//! slow and oversized headers, smuggling shapes, huge bodies, hostile JSON on the LLM route,
//! thousands of connections. Each gets a clear 4xx (or the connection closed), charges
//! nothing it should not, and leaves the gateway serving with its memory bounded (RSS before,
//! during, after, printed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use testkit::redis;

const CONFIG: &str = r#"
client_header_timeout_ms = 1000
max_body_bytes = 1048576
[[policy]]
name = "predict"
paths = ["/v1/predict"]
limit = 100000
window = 86400
[[policy]]
name = "chat"
paths = ["/v1/chat/completions"]
kind = "openai"
limit = 100000
window = 86400
[[policy.limits]]
name = "tokens"
unit = "tokens"
limit = 100000
window = 86400
"#;

/// The status line the gateway answers `request` with, or "closed" when it closed the
/// connection without one.
fn status_of(port: u16, request: &[u8]) -> String {
    let line = raw_status_line(port, request);
    if line.is_empty() {
        "closed".into()
    } else {
        line
    }
}

/// Every key of the limiter with its value (strings only), to see what an attack charged.
fn charged(con: &mut redis::Connection) -> Vec<(String, String)> {
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("rl:*").query(con).unwrap();
    keys.sort();
    keys.into_iter()
        .map(|k| {
            let v: Option<String> = redis::cmd("GET").arg(&k).query(con).unwrap_or(None);
            (k, v.unwrap_or_default())
        })
        .collect()
}

#[test]
fn hostile_requests_get_clear_answers_charge_nothing_and_memory_stays_bounded() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let (_dir, path) = config_file(CONFIG);
    let gateway = start_gateway_args(&redis.url(), &model.url(""), &["--config".into(), path.display().to_string()]);
    let port = gateway.port;
    let before = rss_kib(gateway.id());
    let mut con = redis.client();
    let big = "a".repeat(64 * 1024);
    let huge = "a".repeat(1024 * 1024);
    let many: String = (0..5000).map(|i| format!("x-h{i}: v\r\n")).collect();
    let nested = format!(r#"{{"model":"m","messages":{}]}}"#, "[".repeat(100_000));
    // Each case with a key of its own: a case the gateway refuses must charge nothing; one it
    // lets through (a large but lawful header, a key of any bytes) is charged once, like any.
    let body = "{\"text\":\"x\"}";
    let head = |key: &str| format!("POST /v1/predict HTTP/1.1\r\nHost: x\r\nx-api-key: {key}\r\nConnection: close\r\n");
    let with_body = |key: &str, extra: &str| {
        format!("{}{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", head(key), body.len())
            .into_bytes()
    };
    let cases: Vec<(&str, bool, Vec<u8>)> = vec![
        ("64 KB header", true, with_body("c1", &format!("x-big: {big}\r\n"))),
        ("1 MB header", false, with_body("c2", &format!("x-big: {huge}\r\n"))),
        ("5000 headers", false, with_body("c3", &many)),
        ("a key of bytes", true, [b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nx-api-key: \xff\xfe\r\nConnection: close\r\nContent-Length: 12\r\n\r\n".as_slice(), body.as_bytes()].concat()),
        ("CR in a header", false, with_body("c5", "x-h: a\rb\r\n")),
        ("bytes in the path", false, b"POST /v1/pre\xffdict HTTP/1.1\r\nHost: x\r\nx-api-key: c6\r\nContent-Length: 12\r\n\r\n{\"text\":\"x\"}".to_vec()),
        // hyper reads the chunked body and drops the length (RFC 9112 6.3): the model gets
        // exactly the body the gateway read, framed anew, so nothing can be smuggled past.
        ("Content-Length and Transfer-Encoding", true, format!("{}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\nc\r\n{body}\r\n0\r\n\r\n", head("c7")).into_bytes()),
        ("two lengths", false, format!("{}Content-Length: 12\r\nContent-Length: 13\r\n\r\n{body}x", head("c8")).into_bytes()),
        ("100 MB declared", false, format!("{}Content-Length: 104857600\r\n\r\n{{", head("c9")).into_bytes()),
        (
            "nested JSON on the LLM route",
            false,
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-api-key: c10\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{nested}",
                nested.len()
            )
            .into(),
        ),
    ];
    let mut seen = Vec::new();
    for (name, lawful, request) in &cases {
        let keys_before = charged(&mut con).len();
        let status = status_of(port, request);
        // Keys live about a second per request (100000 a day): none expires during the test.
        let newly = charged(&mut con).len().saturating_sub(keys_before);
        seen.push(format!("{name}: {status}, {newly} key charged"));
        if *lawful {
            assert!(status.contains(" 200 ") && newly == 1, "{name}: {status}, {newly}\n{}", gateway.logs());
        } else {
            let clear = status == "closed" || status.starts_with("HTTP/1.1 4");
            assert!(clear && newly == 0, "{name}: {status}, {newly} charged\n{}", gateway.logs());
        }
    }
    eprintln!("{}", seen.join("\n"));
    // A body found bad only while it streams (a chunk size that is no number) goes to the
    // model after its check, as the README says: charged once, answered 4xx or 5xx, no crash.
    let bad_chunk = format!("{}Transfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n", head("c11"));
    let status = status_of(port, bad_chunk.as_bytes());
    assert!(status == "closed" || status.starts_with("HTTP/1.1 4") || status.starts_with("HTTP/1.1 5"), "{status}");

    // Absurd max_tokens and n: refused as never fitting (or a 400), nothing charged.
    for body in [
        r#"{"model":"m","messages":[],"max_tokens":99999999999999999999}"#,
        r#"{"model":"m","messages":[],"max_tokens":100,"n":9223372036854775807}"#,
    ] {
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-api-key: k\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let status = status_of(port, request.as_bytes());
        assert!(status.contains(" 400 ") || status.contains(" 429 "), "{body}: {status}");
    }
    assert!(charged(&mut con).iter().all(|(k, _)| !k.ends_with(":tokens")), "no token charged");

    // Slowloris: 300 connections sending their headers a byte at a time are cut at the
    // header timeout (1 s), and a real request is served all the while.
    let started = Instant::now();
    let mut slow: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    let during = rss_kib(gateway.id());
    let mut sent = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        for stream in &mut slow {
            let _ = stream.write_all(&[b"GET /v1/predict HTTP/1.1\r\nHost: x\r\nx-slow: "[sent % 40]]);
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let ok = status_of(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(ok.contains(" 200 "), "served during the attack: {ok}");
    // Cut: the gateway answered (a 408) and closed, or just closed. Still open: a read waits.
    let mut closed = 0;
    for stream in &mut slow {
        stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut buf = [0u8; 512];
        match stream.read(&mut buf) {
            Ok(_) => closed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
            Err(_) => {}
        }
    }
    assert!(closed >= 290, "the slow connections were cut at the header timeout: {closed} of 300");
    drop(slow);

    // Two thousand connections, four open at a time, each asking once (floods of connections
    // held open at once are abuse.rs's: beyond max_connections, closed at once).
    let answered = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                scope.spawn(move || {
                    (0..500)
                        .filter(|i| {
                            let request = format!(
                                "POST /v1/predict HTTP/1.1\r\nHost: x\r\nx-api-key: c{t}-{i}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let status = status_of(port, request.as_bytes());
                            status.contains(" 200 ") || status.contains(" 503 ")
                        })
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum::<usize>()
    });
    assert!(answered >= 1900, "{answered} of 2000 answered");
    let after = rss_kib(gateway.id());
    eprintln!("HTTP attack: RSS {before} KiB before, {during} KiB during, {after} KiB after");
    assert!(after < before + 128 * 1024, "memory bounded: {before} -> {after} KiB");
    let after_all = status_of(port, with_body("after", "").as_slice());
    assert!(after_all.contains(" 200 "), "still serving: {after_all}");
}

/// The first bytes of the answer on `stream` (an answer of the gateway fits one read), or
/// "closed" when the connection ends without one.
fn first_answer(stream: &mut TcpStream) -> String {
    let mut buf = [0u8; 4096];
    match stream.read(&mut buf) {
        Ok(0) | Err(_) => "closed".into(),
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
    }
}

const HELD: usize = 3000;

/// One round of [`three_thousand_connections_held_open_at_once_are_served_and_memory_stays_bounded`]:
/// `HELD` clients connect, each sends one request on a kept-alive connection and all stay
/// connected; then 50 more; then the held ones ask again and all leave. Returns the gateway's
/// RSS with all of them held, in KiB.
fn hold_connections(gateway: &Proc, redis: &RedisServer, round: usize) -> u64 {
    let port = gateway.port;
    let body = "{\"text\":\"x\"}";
    let mut held: Vec<TcpStream> = (0..HELD)
        .map(|i| {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let request = format!(
                "POST /v1/predict HTTP/1.1\r\nHost: x\r\nx-api-key: held-{round}-{i}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(request.as_bytes()).unwrap();
            stream
        })
        .collect();
    // Every one answered, each charged once, on its own key.
    let answered = held.iter_mut().map(first_answer).filter(|answer| answer.starts_with("HTTP/1.1 200")).count();
    let during = rss_kib(gateway.id());
    assert_eq!(answered, HELD, "round {round}: every held connection answered");
    let charged = || redis::cmd("KEYS").arg("rl:*").query::<Vec<String>>(&mut redis.client()).unwrap().len();
    assert_eq!(charged(), HELD * (round + 1), "round {round}: each client charged on its own bucket");

    // With all of them open, one more is closed at once, unanswered and uncharged.
    let mut extra: Vec<TcpStream> = (0..50)
        .map(|i| {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let request = format!("GET /v1/predict HTTP/1.1\r\nHost: x\r\nx-api-key: extra-{round}-{i}\r\n\r\n");
            let _ = stream.write_all(request.as_bytes());
            stream
        })
        .collect();
    let refused = extra.iter_mut().map(first_answer).filter(|answer| answer == "closed").count();
    assert_eq!(refused, 50, "round {round}: beyond max_connections, closed without an answer");
    assert_eq!(charged(), HELD * (round + 1), "round {round}: and charged nothing");

    // The held clients are still served on their connections; then they all leave, and new
    // clients are served at once.
    let again = held
        .iter_mut()
        .take(100)
        .map(|stream| {
            stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            first_answer(stream)
        })
        .filter(|answer| answer.starts_with("HTTP/1.1 200"))
        .count();
    assert_eq!(again, 100, "round {round}: kept-alive connections serve on");
    drop(held);
    drop(extra);
    let served = wait_until(Instant::now() + Duration::from_secs(5), || http_status(port, "/healthz") == Some(200));
    assert!(served, "{}", gateway.logs());
    during
}

#[test]
fn three_thousand_connections_held_open_at_once_are_served_and_memory_stays_bounded() {
    let redis = RedisServer::start();
    let model = start_model(0);
    // One request a day per caller: each charge keeps its key for a day, so keys count charges.
    let config = CONFIG.replace("client_header_timeout_ms = 1000", "client_header_timeout_ms = 30000").replacen(
        "limit = 100000",
        "limit = 1",
        1,
    );
    let (_dir, path) = config_file(&config);
    let args = ["--config".into(), path.display().to_string(), "--max-connections".into(), HELD.to_string()];
    let gateway = start_gateway_args(&redis.url(), &model.url(""), &args);
    let before = rss_kib(gateway.id());
    // Twice the same: memory freed by the first round is what the second uses (the allocator
    // keeps pages, so RSS after a round stays near its peak; a leak would grow it again).
    let first = hold_connections(&gateway, &redis, 0);
    let second = hold_connections(&gateway, &redis, 1);
    let after = rss_kib(gateway.id());
    eprintln!(
        "{HELD} connections held: RSS {before} KiB before, {first} KiB during the first round, {second} KiB during the second, {after} KiB after"
    );
    assert!(first < before + 256 * 1024, "memory bounded with {HELD} connections: {before} -> {first} KiB");
    assert!(second < first + first / 10, "the second round reuses the first's memory: {first} -> {second} KiB");
    let metrics = raw_answer(
        gateway.port,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    let line = metrics.lines().find(|l| l.starts_with("gateway_connections_refused_total")).unwrap_or_default();
    assert_eq!(line.split_whitespace().last(), Some("100"), "the refused connections counted: {line}");
}
