//! Charged at most once when the connection to Redis breaks after a command ran and before its
//! reply arrived (testkit's proxy in front of one server): RL.CHECK at admission, and the
//! settlement's RL.REFUND and RL.CHECK ... FORCE. None of them is idempotent, so a client that
//! sent one again on a new connection would charge (or refund) twice. The gateway resends only
//! a command that never left; these did.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use testkit::{redis, tokens, Proxy};

const BURST: u64 = 3000;

/// The only bucket whose key ends with `suffix`.
fn bucket(redis: &RedisServer, suffix: &str) -> String {
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("*{suffix}")).query(&mut redis.client()).unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    keys.into_iter().next().unwrap()
}

/// A gateway on one Redis server reached through a proxy, with one LLM policy (the gateway
/// counts `chars_per_token` characters a token, the demo model 4).
async fn through_proxy(chars_per_token: u64) -> (RedisServer, Proxy, Proc, Proc, tempfile::TempDir) {
    let redis = RedisServer::start();
    let proxy = Proxy::start_anywhere(redis.port());
    let model = start_model(0);
    let (dir, path) = config_file(&format!(
        "[[policy]]\nname = \"chat\"\npaths = [\"/v1/chat\"]\nkind = \"openai\"\nchars_per_token = {chars_per_token}\n\
         limit = 100\nwindow = 60\n\
         [[policy.limits]]\nname = \"tokens\"\nunit = \"tokens\"\nlimit = 1\nwindow = 86400\nburst = {BURST}\n"
    ));
    let args = ["--config".to_string(), path.display().to_string()];
    let gateway = start_gateway_args(&proxy.url(), &model.url(""), &args);
    // The gateway's connection is made (through the proxy) before a command is armed.
    assert_eq!(get(&gateway.url("/readyz")).await.unwrap().status, StatusCode::OK, "{}", gateway.logs());
    (redis, proxy, gateway, model, dir)
}

async fn chat(gateway: &Proc, text: &str, max_tokens: u64) -> Answer {
    let body =
        serde_json::json!({"model": "m", "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}]});
    let headers = [("x-api-key", "once"), ("content-type", "application/json")];
    send(Method::POST, &gateway.url("/v1/chat/completions"), &headers, body.to_string()).await.unwrap()
}

#[tokio::test]
async fn an_admission_whose_reply_is_lost_is_charged_once_and_answered_as_an_outage() {
    let (redis, proxy, gateway, _model, _dir) = through_proxy(4).await;
    proxy.cut_after_reply_to("RL.CHECKALL");
    let answer = chat(&gateway, "abcd", 100).await;
    assert_eq!(proxy.cuts(), 1, "{}", gateway.logs());
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{answer:?}");
    let key = bucket(&redis, ":tokens");
    assert_eq!(tokens(&mut redis.client(), &key, 1, 86400, BURST), BURST - 101, "the reservation, once");
    assert_eq!(testkit::command_calls(&mut redis.client(), "RL.CHECKALL"), 1, "never sent again");
}

#[tokio::test]
async fn a_refund_whose_reply_is_lost_is_applied_once() {
    let (redis, proxy, gateway, _model, _dir) = through_proxy(4).await;
    proxy.cut_after_reply_to("RL.REFUND");
    let answer = chat(&gateway, "abcd", 100).await;
    assert_eq!(answer.status, StatusCode::OK, "the answer is the client's whatever the settlement did");
    let used = answer.json()["usage"]["total_tokens"].as_u64().unwrap();
    assert!(used < 101, "less than reserved: a refund");
    assert_eq!(proxy.cuts(), 1, "{}", gateway.logs());
    let key = bucket(&redis, ":tokens");
    assert_eq!(tokens(&mut redis.client(), &key, 1, 86400, BURST), BURST - used, "refunded once, to the usage");
    assert_eq!(testkit::command_calls(&mut redis.client(), "RL.REFUND"), 1, "never sent again");
}

#[tokio::test]
async fn a_forced_charge_whose_reply_is_lost_is_charged_once() {
    // 8 characters a token at the gateway: a long prompt is reserved at half what it uses.
    let (redis, proxy, gateway, _model, _dir) = through_proxy(8).await;
    proxy.cut_after_reply_to("RL.CHECK");
    let answer = chat(&gateway, &"many words in this prompt ".repeat(10), 1).await;
    assert_eq!(answer.status, StatusCode::OK);
    let used = answer.json()["usage"]["total_tokens"].as_u64().unwrap();
    assert!(used > 34, "more than reserved (33 + 1): a forced charge of the rest");
    assert_eq!(proxy.cuts(), 1, "{}", gateway.logs());
    let key = bucket(&redis, ":tokens");
    assert_eq!(tokens(&mut redis.client(), &key, 1, 86400, BURST), BURST - used, "the overage charged once");
    assert_eq!(testkit::command_calls(&mut redis.client(), "RL.CHECK"), 1, "never sent again");
}

/// The same through Sentinel: the gateway asks the sentinels for the primary, which they know
/// by the proxy's address. A check whose reply is lost is charged once.
#[tokio::test]
async fn through_sentinel_a_check_whose_reply_is_lost_is_charged_once() {
    let (group, proxy) = testkit::SentinelGroup::start_behind_proxy();
    let model = start_model(0);
    let args: Vec<String> = ["--limit", "5", "--window", "60"].iter().map(|s| s.to_string()).collect();
    let gateway = start_gateway_via_sentinels(&group, &model.url(""), &args);
    assert_eq!(get(&gateway.url("/readyz")).await.unwrap().status, StatusCode::OK, "{}", gateway.logs());
    proxy.cut_after_reply_to("RL.CHECK");
    let answer = predict(&gateway, &[("x-api-key", "sentinel-once")]).await;
    assert_eq!(proxy.cuts(), 1, "{}", gateway.logs());
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{answer:?}");
    let primary = group.server(0); // the primary (the sentinels know it by the proxy's port)
    let key = bucket(primary, ":default:requests");
    assert_eq!(tokens(&mut primary.client(), &key, 5, 60, 5), 4, "charged once\n{}", gateway.logs());
    assert_eq!(testkit::command_calls(&mut primary.client(), "RL.CHECK"), 1, "never sent again");
    // The next request goes through on a new connection.
    assert_eq!(predict(&gateway, &[("x-api-key", "sentinel-once")]).await.status, StatusCode::OK);
    assert_eq!(tokens(&mut primary.client(), &key, 5, 60, 5), 3);
}

/// Threads that keep every core busy until dropped: the gateway's workers and its Redis I/O
/// thread then get the CPU late and in any order.
struct BusyCores {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl BusyCores {
    fn start(per_core: usize) -> BusyCores {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..cores * per_core)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        BusyCores { stop, threads }
    }
}

impl Drop for BusyCores {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The case an earlier gateway got wrong: its connection had been idle (no reply for 100 ms),
/// and the connection broke just as the admission went out (the proxy closes the gateway's
/// side as soon as it passed the command on; Redis runs it). That gateway took a command
/// failing on its first poll for one that never left and sent it again; with every core busy,
/// the I/O thread could send it, lose the reply and fail it before that first poll returned,
/// and the reservation was charged twice (5 to 9 times in 90 rounds here). Now a command is
/// never sent twice: each round is one `503` and one charge. Three gateways (each with its
/// own Redis and proxy) run their rounds at once, with two spinning threads per core.
#[tokio::test]
async fn an_admission_on_an_idle_connection_cut_after_it_ran_is_charged_once_on_a_busy_host() {
    const ROUNDS: u64 = 30;
    let setups = [through_proxy(4).await, through_proxy(4).await, through_proxy(4).await];
    let busy = BusyCores::start(4);
    let rounds = setups.iter().map(|(redis, proxy, gateway, _model, _dir)| async move {
        for round in 1..=ROUNDS {
            // Idle long enough for the old rule to resend.
            tokio::time::sleep(Duration::from_millis(120)).await;
            proxy.cut_after_sending("RL.CHECKALL");
            let answer = chat(gateway, "abcd", 50).await;
            assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "round {round}: {answer:?}");
            assert_eq!(proxy.cuts() as u64, round, "round {round}\n{}", gateway.logs());
            // The server runs it even though the client's side was closed first.
            let mut con = redis.client();
            let ran = wait_until(Instant::now() + Duration::from_secs(5), || {
                testkit::command_calls(&mut con, "RL.CHECKALL") >= round
            });
            assert!(ran, "round {round}: ran\n{}", gateway.logs());
            let calls = testkit::command_calls(&mut con, "RL.CHECKALL");
            assert_eq!(calls, round, "round {round}: sent once\n{}", gateway.logs());
        }
    });
    futures_util::future::join_all(rounds).await;
    drop(busy);
    for (redis, _proxy, _gateway, _model, _dir) in &setups {
        let key = bucket(redis, ":tokens");
        assert_eq!(tokens(&mut redis.client(), &key, 1, 86400, BURST), BURST - 51 * ROUNDS, "each reservation once");
    }
}
