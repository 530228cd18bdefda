//! Tiers and hot reload, end to end: keys listed (as digests from `gateway hash-key`) in a
//! tier get its limits, unknown keys the default tier's, callers without a key the IP tier's;
//! SIGHUP puts a rewritten file in force without dropping connections, and a broken file
//! keeps the running config.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use hyper::StatusCode;

fn tiered_config(pro_digest: &str, free_limit: u64) -> String {
    format!(
        "[tiers]\ndefault = \"free\"\nip = \"anonymous\"\n[[tier]]\nname = \"pro\"\nkeys = [\"{pro_digest}\"]\n\
         [[policy]]\nname = \"p\"\nlimit = {free_limit}\nwindow = 60\n\
         [[policy.tier]]\ntier = \"pro\"\nlimit = 3\nwindow = 60\n\
         [[policy.tier]]\ntier = \"anonymous\"\nlimit = 2\nwindow = 60\n"
    )
}

/// How many of `n` requests with `headers` are admitted.
async fn admitted(gateway: &Proc, headers: &[(&str, &str)], n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        ok += usize::from(predict(gateway, headers).await.status == StatusCode::OK);
    }
    ok
}

#[tokio::test]
async fn each_tier_gets_its_limits() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let (_dir, config) = config_file(&tiered_config(&digest("pro-key"), 1));
    let gateway = start_gateway_args(&redis.url(), &model.url(""), &["--config".into(), config.display().to_string()]);
    assert_eq!(admitted(&gateway, &[("x-api-key", "pro-key")], 5).await, 3, "{}", gateway.logs());
    assert_eq!(admitted(&gateway, &[("x-api-key", "someone-else")], 5).await, 1, "unknown keys: the default tier");
    assert_eq!(admitted(&gateway, &[], 5).await, 2, "no key: the IP tier");
    let pro = predict(&gateway, &[("authorization", "Bearer pro-key")]).await;
    assert_eq!(pro.header("ratelimit-policy"), "\"p\";q=3;w=60", "the headers show the tier's limit");
}

/// A connection kept open across requests (HTTP/1.1 keep-alive), read by hand.
struct KeptAlive(BufReader<TcpStream>);

impl KeptAlive {
    fn open(port: u16) -> KeptAlive {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        KeptAlive(BufReader::new(stream))
    }

    /// `GET /v1/models` with an API key; the status and the `ratelimit-policy` header.
    fn get(&mut self, key: &str) -> (u16, String) {
        let request = format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n");
        self.0.get_mut().write_all(request.as_bytes()).unwrap();
        let mut status_line = String::new();
        self.0.read_line(&mut status_line).unwrap();
        let status = status_line.split(' ').nth(1).unwrap_or_else(|| panic!("no answer: {status_line:?}"));
        let (mut length, mut policy) = (0usize, String::new());
        loop {
            let mut line = String::new();
            self.0.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap(),
                "ratelimit-policy" => policy = value.trim().to_string(),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        self.0.read_exact(&mut body).unwrap();
        (status.parse().unwrap(), policy)
    }
}

fn hang_up(gateway: &Proc) {
    let status = Command::new("kill").args(["-HUP", &gateway.id().to_string()]).status().unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sighup_reloads_policies_and_tiers_keeping_connections_and_a_broken_file_changes_nothing() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let pro = digest("pro-key");
    let (_dir, config) = config_file(&tiered_config("00000000000000000000000000000000", 1));
    let gateway = start_gateway_args(&redis.url(), &model.url(""), &["--config".into(), config.display().to_string()]);
    let mut connection = KeptAlive::open(gateway.port);
    assert_eq!(connection.get("pro-key"), (200, "\"p\";q=1;w=60".into()), "not yet listed: the free tier");
    assert_eq!(connection.get("pro-key").0, 429);

    // The key joins the pro tier, the free limit becomes 4, and a policy with a lease comes.
    let added = "[[policy]]\nname = \"added\"\npaths = [\"/v2\"]\nlimit = 5\nwindow = 60\nmax_concurrent = 2\n";
    assert!(value(&scrape(&gateway).await, "gateway_requests_total", &[("policy", "added")]).is_none());
    std::fs::write(&config, tiered_config(&pro, 4) + added).unwrap();
    hang_up(&gateway);
    let reloaded = wait_until(Instant::now() + Duration::from_secs(10), || gateway.logs().contains("config reloaded"));
    assert!(reloaded, "{}", gateway.logs());
    let metrics = scrape(&gateway).await;
    for (name, labels) in [
        ("gateway_requests_total", &[("policy", "added"), ("outcome", "allowed")][..]),
        ("gateway_limit_decisions_total", &[("policy", "added"), ("limit", "concurrent"), ("outcome", "allowed")]),
    ] {
        assert_eq!(value(&metrics, name, labels), Some(0.0), "declared at zero by the reload: {name} {labels:?}");
    }
    assert_eq!(connection.get("pro-key").1, "\"p\";q=3;w=60", "same connection, new tier");
    assert_eq!(connection.get("fresh-key"), (200, "\"p\";q=4;w=60".into()), "new default-tier limit");

    // A broken file: logged, and the running config stays.
    std::fs::write(&config, "[[policy]]\nname = \"p\"\nlimit = 0\nwindow = 60\n").unwrap();
    hang_up(&gateway);
    let refused =
        wait_until(Instant::now() + Duration::from_secs(10), || gateway.logs().contains("config reload failed"));
    assert!(refused, "{}", gateway.logs());
    assert!(
        gateway
            .logs()
            .contains("policy \"p\": limit \"requests\": limit must be an integer between 1 and 9223372036854775807"),
        "{}",
        gateway.logs()
    );
    assert_eq!(connection.get("another-key"), (200, "\"p\";q=4;w=60".into()));
    assert_eq!(admitted(&gateway, &[("x-api-key", "counted")], 5).await, 4);
}

#[test]
fn hash_key_reads_the_key_from_stdin_and_needs_a_secret() {
    let mut child = Command::new(BIN)
        .arg("hash-key")
        .env("GATEWAY_KEY_SECRET", SECRET)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"pro-key\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), digest("pro-key"));
    let out = Command::new(BIN).args(["hash-key", "k"]).env_remove("GATEWAY_KEY_SECRET").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("GATEWAY_KEY_SECRET"));
}
