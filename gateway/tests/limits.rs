//! Several limits per policy, end to end: one RL.CHECKALL charges them all or none, the
//! headers list each, a 429 says which refused, and keys are hash-tagged by caller.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use hyper::StatusCode;
use testkit::{info_field, redis, tokens};

/// 5 requests a minute and 2 an hour on every path.
const TWO_LIMITS: &str = "[[policy]]\nname = \"p\"\nlimit = 5\nwindow = 60\n\
    [[policy.limits]]\nname = \"hourly\"\nlimit = 2\nwindow = 3600\n";

fn keys(con: &mut redis::Connection, pattern: &str) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(con).unwrap();
    keys.sort();
    keys
}

#[tokio::test]
async fn a_request_refused_by_one_limit_costs_nothing_on_the_others() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let (_dir, config) = config_file(TWO_LIMITS);
    let gateway = start_gateway_args(&redis.url(), &model.url(""), &["--config".into(), config.display().to_string()]);
    let key = [("x-api-key", "two-limits")];

    let first = predict(&gateway, &key).await;
    assert_eq!(first.status, StatusCode::OK, "{}", gateway.logs());
    assert_eq!(first.header("ratelimit-policy"), "\"p-requests\";q=5;w=60, \"p-hourly\";q=2;w=3600");
    assert_eq!(first.header("ratelimit"), "\"p-requests\";r=4;t=12, \"p-hourly\";r=1;t=1800");
    assert_eq!((first.header("x-ratelimit-limit"), first.header("x-ratelimit-remaining")), ("5", "4"));
    assert_eq!(predict(&gateway, &key).await.status, StatusCode::OK);

    let refused = predict(&gateway, &key).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = refused.header("retry-after").parse().unwrap();
    assert!((1795..=1800).contains(&retry), "the hourly limit's wait: {refused:?}");
    let limits = refused.json()["error"]["limits"].clone();
    assert_eq!(limits.as_array().unwrap().len(), 1, "only the hourly limit refused: {limits}");
    assert_eq!(limits[0]["name"], "hourly");
    assert!(limits[0]["retry_after_ms"].as_u64().unwrap() > 1_795_000, "{limits}");
    assert_eq!(refused.header("x-ratelimit-remaining"), "3", "the request limit was not charged");

    let mut con = redis.client();
    let stored = keys(&mut con, "rl:*");
    assert_eq!(stored.len(), 2, "{stored:?}");
    let hash = stored[0].strip_prefix("rl:{").unwrap().split_once('}').unwrap().0.to_string();
    assert_eq!(stored, [format!("rl:{{{hash}}}:p:hourly"), format!("rl:{{{hash}}}:p:requests")]);
    assert_eq!(tokens(&mut con, &format!("rl:{{{hash}}}:p:requests"), 5, 60, 5), 3, "charged twice, not three times");
    assert_eq!(tokens(&mut con, &format!("rl:{{{hash}}}:p:hourly"), 2, 3600, 2), 0);
    assert_eq!(testkit::command_calls(&mut con, "RL.CHECKALL"), 3, "one RL.CHECKALL per request");
}

#[tokio::test]
async fn a_policy_with_one_limit_keeps_one_rl_check_and_its_header_names() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 3, 60, &[]);
    let answer = predict(&gateway, &[]).await;
    assert_eq!(answer.header("ratelimit-policy"), "\"default\";q=3;w=60");
    let mut con = redis.client();
    assert_eq!(keys(&mut con, "rl:*").len(), 1);
    assert!(keys(&mut con, "rl:*")[0].ends_with("}:default:requests"));
    assert_eq!(testkit::command_calls(&mut con, "RL.CHECK"), 1);
    if !testkit::functions::library_instead_of_module() {
        // (The server counts the library's functions together.)
        assert_eq!(info_field(&mut con, "commandstats", "cmdstat_RL.CHECKALL"), None);
    }
}
