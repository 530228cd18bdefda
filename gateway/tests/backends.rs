//! `redis.backend`: the gateway on a server without the module (the Functions library, loaded
//! by the gateway, or run as a script), how `auto` chooses, what it says about its choice, and
//! what it does when the library goes missing or may not be loaded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use hyper::StatusCode;
use testkit::redis;

/// The library's functions on the server (`FUNCTION LIST`): the library names.
fn libraries(server: &RedisServer) -> Vec<String> {
    let list: redis::Value = redis::cmd("FUNCTION").arg("LIST").query(&mut server.client()).unwrap();
    let mut names = Vec::new();
    if let redis::Value::Array(libraries) = list {
        for library in libraries {
            let fields: Vec<redis::Value> = match library {
                redis::Value::Array(fields) => fields,
                redis::Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
                _ => continue,
            };
            for pair in fields.chunks(2) {
                if let [redis::Value::BulkString(key), redis::Value::BulkString(value)] = pair {
                    if key == b"library_name" {
                        names.push(String::from_utf8_lossy(value).into_owned());
                    }
                }
            }
        }
    }
    names
}

async fn limited_after(gateway: &Proc, key: &str, admitted: usize) {
    for i in 0..admitted {
        let answer = predict(gateway, &[("x-api-key", key)]).await;
        assert_eq!(answer.status, StatusCode::OK, "request {i}: {answer:?}\n{}", gateway.logs());
    }
    let refused = predict(gateway, &[("x-api-key", key)]).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{refused:?}");
}

#[tokio::test]
async fn auto_without_the_module_loads_the_library_and_limits_with_it() {
    let redis = RedisServer::builder().without_module().start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 3, 60, &[]);
    let ready = get(&gateway.url("/readyz")).await.unwrap();
    assert_eq!(ready.status, StatusCode::OK, "{ready:?}\n{}", gateway.logs());
    assert_eq!(ready.json()["backend"], "functions");
    assert_eq!(libraries(&redis), ["ratelimit"]);
    limited_after(&gateway, "k", 3).await;
    let m = scrape(&gateway).await;
    assert_eq!(value(&m, "gateway_redis_backend", &[("backend", "functions")]), Some(1.0));
    assert_eq!(value(&m, "gateway_redis_backend", &[("backend", "module")]), Some(0.0));
    assert!(
        gateway.logs().contains("rate limiting with the ratelimit Functions library (FCALL)"),
        "{}",
        gateway.logs()
    );
    // The same state as the module keeps: the key holds a TAT in nanoseconds.
    let keys: Vec<String> = redis::cmd("KEYS").arg("rl:*").query(&mut redis.client()).unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let state: String = redis::cmd("GET").arg(&keys[0]).query(&mut redis.client()).unwrap();
    assert!(state.len() >= 19 && state.bytes().all(|b| b.is_ascii_digit()), "{state}");
}

#[tokio::test]
async fn auto_with_the_module_uses_the_module_and_loads_nothing() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 3, 60, &[]);
    let ready = get(&gateway.url("/readyz")).await.unwrap();
    assert_eq!(ready.json()["backend"], "module", "{ready:?}");
    limited_after(&gateway, "k", 3).await;
    assert!(libraries(&redis).is_empty(), "no library loaded where the module is");
    assert_eq!(testkit::command_calls(&mut redis.client(), "RL.CHECK"), 4);
}

/// Where `FUNCTION` is unknown (renamed away here; Redis 6.2 has none), `auto` runs the
/// library as a script, and loads it again after `SCRIPT FLUSH` (the command that found it
/// missing ran nothing, and is sent once more).
#[tokio::test]
async fn without_functions_auto_runs_the_library_as_a_script_and_survives_a_script_flush() {
    let redis = RedisServer::builder().without_module().arg_words("rename-command", &["FUNCTION", ""]).start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 3, 60, &[]);
    let ready = get(&gateway.url("/readyz")).await.unwrap();
    assert_eq!(ready.json()["backend"], "scripts", "{ready:?}\n{}", gateway.logs());
    assert_eq!(predict(&gateway, &[("x-api-key", "k")]).await.status, StatusCode::OK);
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut redis.client()).unwrap();
    // Exactly the limit admitted in all: the call refused for NOSCRIPT ran nothing.
    limited_after(&gateway, "k", 2).await;
    assert!(gateway.logs().contains("the ratelimit library is missing on Redis; loading it again"));
}

/// Redis crashed and came back empty (no persistence): the library is gone, and the next
/// request loads it again and is served.
#[tokio::test]
async fn a_library_lost_with_a_restart_is_loaded_again_by_the_next_request() {
    let mut redis = RedisServer::builder().without_module().start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 3, 60, &[]);
    assert_eq!(predict(&gateway, &[("x-api-key", "k")]).await.status, StatusCode::OK);
    redis.kill();
    redis.respawn();
    assert!(libraries(&redis).is_empty());
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let answer = predict(&gateway, &[("x-api-key", "k")]).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}\n{}", gateway.logs());
    assert_eq!(libraries(&redis), ["ratelimit"]);
}

/// A gateway user allowed to call the library but not to load it: `functions` is not ready and
/// says what an administrator runs; `gateway load-functions` with an administrator's URL
/// loads it, and the gateway then serves. `auto` with the same user falls back to the script.
#[tokio::test]
async fn a_user_who_may_not_load_the_library_is_told_what_an_administrator_runs() {
    let redis = RedisServer::builder().without_module().start();
    let acl = ["SETUSER", "gw", "on", ">gw-pw", "~rl:*", "+@all", "-function|load", "-function|delete"];
    let _: () = redis::cmd("ACL").arg(&acl).query(&mut redis.client()).unwrap();
    let model = start_model(0);
    let gw_url = format!("redis://gw:gw-pw@127.0.0.1:{}/", redis.port());
    let args = |backend: &str| {
        ["--limit", "3", "--window", "60", "--redis-backend", backend].iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let gateway = start_gateway_args(&gw_url, &model.url(""), &args("functions"));
    let not_ready = get(&gateway.url("/readyz")).await.unwrap();
    assert_eq!(not_ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(not_ready.json()["reason"], "ratelimit functions library unusable in redis (see the gateway's log)");
    assert!(
        gateway.logs().contains("an administrator runs once: gateway load-functions --redis-url"),
        "{}",
        gateway.logs()
    );
    assert_eq!(predict(&gateway, &[("x-api-key", "k")]).await.status, StatusCode::SERVICE_UNAVAILABLE);

    // With the default user (the administrator here).
    let loaded =
        std::process::Command::new(BIN).args(["load-functions", "--redis-url", &redis.url()]).output().unwrap();
    let said = String::from_utf8_lossy(&loaded.stdout);
    assert!(loaded.status.success() && said.contains("loaded library ratelimit version"), "{said} {loaded:?}");
    assert_eq!(get(&gateway.url("/readyz")).await.unwrap().json()["backend"], "functions");
    limited_after(&gateway, "k", 3).await;

    let _: () = redis::cmd("FUNCTION").arg("FLUSH").query(&mut redis.client()).unwrap();
    let auto = start_gateway_args(&gw_url, &model.url(""), &args("auto"));
    assert_eq!(get(&auto.url("/readyz")).await.unwrap().json()["backend"], "scripts", "{}", auto.logs());
    limited_after(&auto, "other", 3).await;
}

#[test]
fn load_functions_prints_the_library_it_loads() {
    let printed = std::process::Command::new(BIN).args(["load-functions", "--print"]).output().unwrap();
    assert!(printed.status.success());
    assert_eq!(String::from_utf8_lossy(&printed.stdout).trim_end(), testkit::functions::source().trim_end());
    let refused = std::process::Command::new(BIN).args(["load-functions"]).output().unwrap();
    assert!(!refused.status.success(), "a URL or --print is needed");
}

/// Redis 6.2 (no Functions; the module needs 7.0): `auto` finds neither the module nor
/// `FCALL`, and runs the library as a script. The binary is `RL_REDIS62_BIN`, by default
/// `.cache/redis62/redis-server` (`scripts/fetch-server.sh redis62`, which `make test` runs).
#[tokio::test]
async fn on_redis_6_2_auto_runs_the_library_as_a_script() {
    let redis62 = std::env::var("RL_REDIS62_BIN").unwrap_or_else(|_| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/redis62/redis-server").display().to_string()
    });
    assert!(
        std::path::Path::new(&redis62).exists(),
        "no Redis 6.2 at {redis62}: run scripts/fetch-server.sh redis62 (make test does), or set RL_REDIS62_BIN"
    );
    let redis = RedisServer::builder().binary(&redis62).without_module().start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 3, 60, &[]);
    let ready = get(&gateway.url("/readyz")).await.unwrap();
    assert_eq!(ready.json()["backend"], "scripts", "{ready:?}\n{}", gateway.logs());
    limited_after(&gateway, "k", 3).await;
    let m = scrape(&gateway).await;
    assert_eq!(value(&m, "gateway_redis_backend", &[("backend", "scripts")]), Some(1.0));
}

/// The ACL the README gives for the library is enough (the gateway loads the library with it
/// and limits), and a user missing one command the library calls (Redis checks those too) is
/// told what it needs instead of being answered as if the module refused the command.
#[tokio::test]
async fn the_library_acl_is_enough_and_a_missing_command_is_named() {
    let redis = RedisServer::builder().without_module().start();
    let mut admin = redis.client();
    let mut acl = |user: &str, extra: &[&str]| {
        let mut rules = vec!["SETUSER", user, "on", ">pw", "~rl:*"];
        rules.extend(gateway::limiter::LIBRARY_ACL.split(' '));
        rules.extend(extra);
        let _: () = redis::cmd("ACL").arg(&rules).query(&mut admin).unwrap();
    };
    acl("gw", &[]);
    acl("short", &["-time"]);
    let model = start_model(0);
    let url = |user: &str| format!("redis://{user}:pw@127.0.0.1:{}/", redis.port());
    let args: Vec<String> =
        ["--limit", "3", "--window", "60", "--redis-backend", "functions"].iter().map(|s| s.to_string()).collect();
    let gateway = start_gateway_args(&url("gw"), &model.url(""), &args);
    assert_eq!(get(&gateway.url("/readyz")).await.unwrap().json()["backend"], "functions", "{}", gateway.logs());
    limited_after(&gateway, "k", 3).await;

    let short = start_gateway_args(&url("short"), &model.url(""), &args);
    let not_ready = get(&short.url("/readyz")).await.unwrap();
    assert_eq!(not_ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(not_ready.json()["reason"], "ratelimit functions library unusable in redis (see the gateway's log)");
    assert!(short.logs().contains("may not run a command the library calls"), "{}", short.logs());
    let refused = predict(&short, &[("x-api-key", "k2")]).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "an outage, not a 500: {refused:?}");
}
