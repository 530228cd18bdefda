//! The Redis key names a deploy must never change, end to end: a real gateway with every kind
//! of key (a request limit, a token limit, a caller's `max_concurrent`, `[upstream]
//! max_concurrent` and `[upstream.capacity]`), callers by API key, by IPv4 address and by IPv6
//! network, and the exact names found in Redis compared with known answers.
//!
//! The digests below were computed outside the gateway, as
//! `HMAC-SHA256(secret, kind || 0 || identity)` cut to its first 16 bytes in hex:
//!
//! ```text
//! python3 -c 'import hmac, hashlib; print(hmac.new(b"known-answer-secret", b"key\0known-answer-key", hashlib.sha256).hexdigest()[:32])'
//! printf 'ip\0002001:db8:1:2::' | openssl dgst -sha256 -hmac known-answer-secret
//! ```
//!
//! Every other end-to-end test derives the keys it expects with the gateway's own code
//! (`gateway hash-key`), so it would follow a change; this one would fail. A changed key name
//! gives every caller a fresh bucket (and every pro key the default tier) on deploy: never
//! update these vectors to make the test pass, unless that is the change you mean to ship.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use hyper::{Method, StatusCode};
use testkit::redis;

const SECRET: &str = "known-answer-secret";
/// The caller with an API key sends `Bearer known-answer-key`, whose digest
/// `HMAC-SHA256("known-answer-secret", "key\0known-answer-key")` is this. The caller without a
/// key on loopback is `"ip\0127.0.0.1"`: `8887eba98fcfcbab1d99b23413b8b892`; the one named
/// `2001:db8:1:2:3:4:5:6` by a trusted proxy is its /64, `"ip\02001:db8:1:2::"`:
/// `7ded974e94c6297264bb21f1fe1d98e3`.
const API_KEY_HASH: &str = "23a75a9f55bc2c3151ebeb5a22e31c51";

/// Every kind of key, the secret inline, loopback a trusted proxy (so an IPv6 client can be
/// named in `X-Forwarded-For`), and a `pro` tier listing the API key's digest. The buckets
/// refill slowly (a request takes minutes to come back), so none expires during the test.
fn config() -> String {
    format!(
        "[upstream]\nmax_concurrent = 8\nlease_ms = 30000\n\
         [upstream.capacity]\nlimit = 1\nwindow = 3600\nburst = 100\n\
         [identity]\nsecret = \"{SECRET}\"\ntrusted_proxies = [\"127.0.0.1\"]\nipv6_prefix = 64\n\
         [tiers]\ndefault = \"free\"\n\
         [[tier]]\nname = \"pro\"\nkeys = [\"{API_KEY_HASH}\"]\n\
         [[policy]]\nname = \"chat\"\npaths = [\"/v1/chat/completions\"]\nkind = \"openai\"\n\
         limit = 100\nwindow = 86400\nmax_concurrent = 2\n\
         [[policy.limits]]\nname = \"tokens\"\nunit = \"tokens\"\nlimit = 1000\nwindow = 86400\nburst = 100000\n\
         [[policy.tier]]\ntier = \"pro\"\nlimit = 7\nwindow = 86400\nmax_concurrent = 2\n\
         [[policy.tier.limits]]\nname = \"tokens\"\nunit = \"tokens\"\nlimit = 1000\nwindow = 86400\nburst = 100000\n"
    )
}

fn all_keys(con: &mut redis::Connection) -> BTreeSet<String> {
    redis::cmd("KEYS").arg("*").query::<Vec<String>>(con).unwrap().into_iter().collect()
}

fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_key_names_match_known_answers() {
    let redis = RedisServer::start();
    // Slow enough that the leases are there to be seen while the answers are on their way.
    let model = start_model(2500);
    let (_dir, path) = config_file(&config());
    let gateway = start_gateway_args(&redis.url(), &model.url(""), &["--config".into(), path.display().to_string()]);

    let body = r#"{"model":"lexicon-chat-v1","max_tokens":20,"messages":[{"role":"user","content":"good"}]}"#;
    let url = gateway.url("/v1/chat/completions");
    let ask = |headers: Vec<(&'static str, &'static str)>| {
        let url = url.clone();
        tokio::spawn(async move {
            let mut all = vec![("content-type", "application/json")];
            all.extend(headers);
            send(Method::POST, &url, &all, body).await
        })
    };
    let callers = [
        ask(vec![("authorization", "Bearer known-answer-key")]),
        ask(vec![]),
        ask(vec![("x-forwarded-for", "2001:db8:1:2:3:4:5:6")]),
    ];

    // While the three answers are in flight: every kind of key, each exactly so named.
    let limits = [
        "rl:{23a75a9f55bc2c3151ebeb5a22e31c51}:chat:requests",
        "rl:{23a75a9f55bc2c3151ebeb5a22e31c51}:chat:tokens",
        "rl:{8887eba98fcfcbab1d99b23413b8b892}:chat:requests",
        "rl:{8887eba98fcfcbab1d99b23413b8b892}:chat:tokens",
        "rl:{7ded974e94c6297264bb21f1fe1d98e3}:chat:requests",
        "rl:{7ded974e94c6297264bb21f1fe1d98e3}:chat:tokens",
        "rl:upstream:capacity",
    ];
    let leases = [
        "rl:{23a75a9f55bc2c3151ebeb5a22e31c51}:chat:concurrent",
        "rl:{8887eba98fcfcbab1d99b23413b8b892}:chat:concurrent",
        "rl:{7ded974e94c6297264bb21f1fe1d98e3}:chat:concurrent",
        "rl:upstream:concurrent",
    ];
    let in_flight = set(&[&limits[..], &leases[..]].concat());
    let mut con = redis.client();
    let mut seen = BTreeSet::new();
    let all_there = wait_until(Instant::now() + Duration::from_secs(10), || {
        seen = all_keys(&mut con);
        seen == in_flight
    });
    assert!(all_there, "keys in flight:\n{seen:#?}\nwanted:\n{in_flight:#?}\n{}", gateway.logs());

    for (i, caller) in callers.into_iter().enumerate() {
        let answer = caller.await.unwrap().unwrap();
        assert_eq!(answer.status, StatusCode::OK, "caller {i}: {answer:?}\n{}", gateway.logs());
        if i == 0 {
            // The key's digest is the one `[[tier]] keys` lists: the pro tier's 7 requests.
            assert!(answer.header("ratelimit-policy").contains("\"chat-requests\";q=7;w=86400"), "{answer:?}");
        }
    }
    // The answers are done: the leases are released, the limits stay.
    let mut seen = BTreeSet::new();
    let released = wait_until(Instant::now() + Duration::from_secs(10), || {
        seen = all_keys(&mut con);
        seen == set(&limits)
    });
    assert!(released, "keys after the answers:\n{seen:#?}\n{}", gateway.logs());
}
