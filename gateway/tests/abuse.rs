//! Hostile clients and their effects, end to end with real processes: floods of connections,
//! early refusals on kept-alive connections, ambiguous requests, and what an outage does to
//! the log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use hyper::StatusCode;

/// Sends `GET /healthz` on `stream` (kept alive) and reads the whole answer.
fn health_on(stream: &mut TcpStream) -> String {
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    read_answer(stream)
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_at_once_and_the_others_served() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 100, 60, &["--max-connections", "20"]);
    // 20 clients, each served once and then idle on its kept-alive connection.
    let mut idle: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut stream = TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            assert!(health_on(&mut stream).starts_with("HTTP/1.1 200"));
            stream
        })
        .collect();
    let started = Instant::now();
    let mut one_more = TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
    one_more.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = one_more.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = [0u8; 64];
    let read = one_more.read(&mut buf);
    assert!(matches!(read, Ok(0) | Err(_)), "closed without an answer: {read:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "at once, not after a timeout: {:?}", started.elapsed());
    // As soon as some leave, new clients are served.
    idle.truncate(15);
    let served =
        wait_until(Instant::now() + Duration::from_secs(5), || http_status(gateway.port, "/healthz") == Some(200));
    assert!(served, "{}", gateway.logs());
    assert_eq!(predict(&gateway, &[("x-api-key", "k")]).await.status, StatusCode::OK);
    let m = scrape(&gateway).await;
    assert!(value(&m, "gateway_connections_refused_total", &[]).unwrap() >= 1.0);
    assert!(gateway.logs().contains("connection refused: max_connections are open"), "{}", gateway.logs());
    drop(idle);
}

/// The soft and hard limits on open files of process `pid`.
fn open_files_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let numbers: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    (numbers[0], numbers[1])
}

/// `gateway serve` started by a shell that first sets the limits on open files to `ulimit`
/// (e.g. `-Sn 256`).
fn start_with_ulimit(ulimit: &str, redis: &RedisServer, upstream: &str, extra: &[&str]) -> Proc {
    let port = free_port();
    let mut args =
        vec!["--redis-url".to_string(), redis.url(), "--limit".into(), "5".into(), "--window".into(), "60".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("ulimit {ulimit} && exec \"$0\" \"$@\""))
        .arg(BIN)
        .args(serve_args(port, upstream, &args))
        .env_remove("GATEWAY_KEY_SECRET")
        .envs(serve_env());
    let mut gateway = Proc::from_command("gateway", port, command);
    gateway.wait_healthy();
    gateway
}

#[test]
fn the_limit_on_open_files_is_raised_at_start_and_max_connections_kept_within_it() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let hard = open_files_limits(std::process::id()).1;
    let raised = start_with_ulimit("-Sn 256", &redis, &model.url(""), &["--max-connections", "100"]);
    assert_eq!(open_files_limits(raised.id()), (hard, hard), "soft limit raised to the hard one");
    assert!(!raised.logs().contains("serving_at_most"), "{}", raised.logs());
    // A hard limit of 1000 holds 468 connections (two descriptors each, 64 kept aside).
    let low = start_with_ulimit("-n 1000", &redis, &model.url(""), &["--max-connections", "5000"]);
    assert_eq!(open_files_limits(low.id()), (1000, 1000));
    assert!(low.logs().contains("serving_at_most=468"), "{}", low.logs());
    assert!(low.logs().contains("max_connections=468"), "the listener says what it serves: {}", low.logs());
}

#[tokio::test]
async fn the_first_request_after_redis_restarted_while_the_gateway_was_idle_is_served() {
    let mut redis = RedisServer::start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 100, 60, &[]);
    assert_eq!(predict(&gateway, &[("x-api-key", "k")]).await.status, StatusCode::OK);
    // Stopped and started again while no request came: the gateway's connection is dead.
    redis.restart();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let first = predict(&gateway, &[("x-api-key", "k")]).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}\n{}", gateway.logs());
    assert_eq!(testkit::command_calls(&mut redis.client(), "RL.CHECK"), 1, "sent once, on the new connection");
    // The same after a crash.
    redis.kill();
    redis.respawn();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(predict(&gateway, &[("x-api-key", "k")]).await.status, StatusCode::OK, "{}", gateway.logs());
    // What told it the connection was dead before it sent anything: RESP3, whose client
    // reports a connection's end (the test's own connection speaks RESP2).
    let clients: String = testkit::redis::cmd("CLIENT").arg("LIST").query(&mut redis.client()).unwrap();
    assert_eq!(clients.lines().filter(|c| c.contains(" resp=3")).count(), 1, "{clients}");
}

/// A server that refuses `HELLO 3` (here renamed away, as on servers without RESP3) gets RESP2
/// connections, which cannot report their end: after a restart while idle, the first check
/// fails (it is never sent again: it may have left), and the next goes out on a new connection.
#[tokio::test]
async fn without_resp3_the_gateway_speaks_resp2_and_never_resends_after_a_restart() {
    let mut redis = RedisServer::builder().arg_words("rename-command", &["HELLO", ""]).start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 100, 60, &[]);
    assert_eq!(predict(&gateway, &[("x-api-key", "k")]).await.status, StatusCode::OK, "{}", gateway.logs());
    assert!(gateway.logs().contains("Redis refused HELLO 3 (RESP3): connections speak RESP2"), "{}", gateway.logs());
    redis.restart();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let first = predict(&gateway, &[("x-api-key", "k")]).await;
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE, "{first:?}");
    assert_eq!(testkit::command_calls(&mut redis.client(), "RL.CHECK"), 0, "not sent again");
    assert_eq!(predict(&gateway, &[("x-api-key", "k")]).await.status, StatusCode::OK, "{}", gateway.logs());
    assert_eq!(testkit::command_calls(&mut redis.client(), "RL.CHECK"), 1);
}

#[tokio::test]
async fn a_check_that_timed_out_and_ran_later_is_given_back() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 5, 3600, &["--redis-timeout-ms", "200"]);
    assert_eq!(predict(&gateway, &[("x-api-key", "k")]).await.status, StatusCode::OK);
    // Redis holds every write for a second: the checks time out, then run when it resumes.
    let _: () = testkit::redis::cmd("CLIENT").arg("PAUSE").arg(1500).arg("WRITE").query(&mut redis.client()).unwrap();
    for _ in 0..3 {
        let refused = predict(&gateway, &[("x-api-key", "k")]).await;
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{refused:?}");
    }
    let mut con = redis.client();
    let key = format!("rl:{{{}}}:default:requests", digest("k"));
    let given_back = wait_until(Instant::now() + Duration::from_secs(8), || {
        testkit::command_calls(&mut con, "RL.CHECK") == 4 && testkit::tokens(&mut con, &key, 5, 3600, 5) == 4
    });
    assert!(given_back, "the three 503s ran late and were given back\n{}", gateway.logs());
    assert_eq!(testkit::command_calls(&mut con, "RL.REFUND"), 3);
    let m = scrape(&gateway).await;
    let late = |outcome| value(&m, "gateway_redis_late_replies_total", &[("command", "check"), ("outcome", outcome)]);
    assert_eq!(late("given_back"), Some(3.0));
    let timeouts = value(&m, "gateway_redis_duration_seconds", &[("command", "check"), ("result", "timeout")]);
    assert_eq!(timeouts, Some(3.0));
    assert_eq!(predict(&gateway, &[("x-api-key", "k")]).await.status, StatusCode::OK, "served again");
}

/// Reads one whole answer (head and a `Content-Length` body) from `stream`.
fn read_answer(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&answer).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return text,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_refusal_sent_before_the_body_arrived_leaves_the_connection_usable_or_says_close() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 1, 3600, &[]);
    assert_eq!(predict(&gateway, &[("x-api-key", "k")]).await.status, StatusCode::OK);
    let mut stream = TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let body = r#"{"text":"a late body"}"#;
    let head =
        format!("POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-API-Key: k\r\nContent-Length: {}\r\n\r\n", body.len());
    for round in 0..3 {
        // As Python's http.client does: the headers, and the body in a second write.
        stream.write_all(head.as_bytes()).unwrap();
        let refused = read_answer(&mut stream);
        assert!(refused.starts_with("HTTP/1.1 429"), "round {round}: {refused}");
        assert!(!refused.to_ascii_lowercase().contains("connection: close"), "{refused}");
        std::thread::sleep(Duration::from_millis(50));
        stream.write_all(body.as_bytes()).unwrap();
    }
    // A body too large to read through is not read: the refusal says the connection closes.
    let mut large = TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
    large.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    large
        .write_all(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-API-Key: k\r\nContent-Length: 500000\r\n\r\n{")
        .unwrap();
    let refused = read_answer(&mut large);
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    assert!(refused.to_ascii_lowercase().contains("connection: close"), "{refused}");
}

#[tokio::test]
async fn a_path_escaping_bytes_that_are_not_utf8_is_refused_and_two_hosts_too() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 100, 60, &[]);
    // Two distinct paths must not reach the model as one (each byte replaced by U+FFFD).
    for path in ["/v1/echo/%ff%fe", "/v1/echo/%fe%ff", "/v1/echo/%C3"] {
        let answer = get(&gateway.url(path)).await.unwrap();
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{path}: {answer:?}");
        assert_eq!(answer.json()["error"]["type"], "bad_request");
        assert!(answer.headers.get("ratelimit").is_none(), "refused before any quota");
    }
    let valid = get(&gateway.url("/v1/echo/caf%C3%A9")).await.unwrap();
    assert_eq!(valid.status, StatusCode::OK);
    assert_eq!(valid.json()["path"], "/v1/echo/caf%C3%A9");
    let two_hosts =
        raw_status_line(gateway.port, b"GET /v1/echo HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n");
    assert_eq!(two_hosts, "HTTP/1.1 400 Bad Request");
}

#[tokio::test]
async fn an_outage_is_logged_once_a_second_not_once_a_request() {
    let mut redis = RedisServer::start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 100, 60, &[]);
    redis.kill();
    let started = Instant::now();
    for _ in 0..40 {
        assert_eq!(predict(&gateway, &[("x-api-key", "k")]).await.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    let seconds = started.elapsed().as_secs() + 1;
    let logs = gateway.logs();
    let lines = logs.lines().filter(|l| l.contains("rate limiter unavailable, refusing")).count() as u64;
    assert!(lines >= 1 && lines <= seconds, "{lines} lines in {seconds} s:\n{logs}");
    let after_a_second = wait_until(Instant::now() + Duration::from_secs(3), || {
        // The next line, a second later, says how many were left out.
        let _ = http_status(gateway.port, "/v1/predict");
        gateway.logs().lines().any(|l| l.contains("rate limiter unavailable") && !l.contains("left_out=0"))
    });
    assert!(after_a_second, "{}", gateway.logs());
}

/// A client socket that reads nothing: a small receive buffer, `request` sent `times` times
/// (pipelined) without waiting.
fn never_reading(port: u16, request: &str, times: usize) -> TcpStream {
    let stream = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    stream.set_recv_buffer_size(4096).unwrap();
    stream.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into()).unwrap();
    let mut stream: TcpStream = stream.into();
    stream.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = stream.write_all(request.repeat(times).as_bytes());
    stream
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_at_the_write_timeout_and_frees_its_place() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let args = ["--max-connections", "2", "--client-write-timeout-ms", "500"];
    let gateway = start_gateway(&redis, &model.url(""), 100, 60, &args);
    let _stuck: Vec<TcpStream> =
        (0..2).map(|_| never_reading(gateway.port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 400)).collect();
    // Both places are held until their writes have waited 500 ms; then they are freed.
    let freed =
        wait_until(Instant::now() + Duration::from_secs(5), || http_status(gateway.port, "/healthz") == Some(200));
    assert!(freed, "{}", gateway.logs());
}

/// A model whose every answer is 50 MB.
async fn huge_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answer = || async { vec![b'x'; 50 << 20] };
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(answer)).await.unwrap() });
    url
}

// Multi-threaded: the test waits blocking while the in-test model answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_gives_back_its_upstream_lease_at_the_write_timeout() {
    let redis = RedisServer::start();
    let upstream = huge_upstream().await;
    let (_dir, config) = config_file(&format!(
        "client_write_timeout_ms = 500\n[upstream]\nurl = \"{upstream}\"\nmax_concurrent = 1\n\
         [[policy]]\nname = \"p\"\nlimit = 100\nwindow = 60\n"
    ));
    let gateway = start_gateway_args(&redis.url(), &upstream, &["--config".into(), config.display().to_string()]);
    let _stuck = never_reading(gateway.port, "GET /big HTTP/1.1\r\nHost: x\r\nX-API-Key: a\r\n\r\n", 1);
    let freed = wait_until(Instant::now() + Duration::from_secs(5), || {
        let mut stream = TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(b"HEAD /big HTTP/1.1\r\nHost: x\r\nX-API-Key: b\r\n\r\n").unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).is_ok() && &head == b"HTTP/1.1 200"
    });
    assert!(freed, "the stuck client's lease was never given back\n{}", gateway.logs());
}
