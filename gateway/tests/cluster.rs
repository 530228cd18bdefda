//! A Redis Cluster behind gateways: every caller's key lives on one node, the client routes
//! each RL.CHECK there, the limit holds across the gateways, and a request is never charged
//! twice when the connection breaks mid-command.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use hyper::StatusCode;
use testkit::{redis, tokens, Cluster, Proxy};

/// `gateway serve --limit 2 --window 60` seeded with every node of `cluster`.
fn gateway_on(cluster: &Cluster, upstream: &str) -> Proc {
    let mut args: Vec<String> = ["--limit", "2", "--window", "60"].iter().map(|s| s.to_string()).collect();
    for url in cluster.urls() {
        args.push("--redis-cluster-node".into());
        args.push(url);
    }
    start_serve("gateway", upstream, &args)
}

#[tokio::test]
async fn a_cluster_shares_every_limit_across_gateways() {
    let cluster = Cluster::start(3, 0);
    let model = start_model(0);
    let a = gateway_on(&cluster, &model.url(""));
    let b = gateway_on(&cluster, &model.url(""));
    assert_eq!(get(&a.url("/readyz")).await.unwrap().status, StatusCode::OK, "{}", a.logs());

    for i in 0..8 {
        let key = format!("Bearer cluster-key-{i}");
        let auth = [("authorization", key.as_str())];
        let first = predict(&a, &auth).await;
        assert_eq!(first.status, StatusCode::OK, "{}", a.logs());
        assert_eq!(first.header("x-ratelimit-remaining"), "1");
        assert_eq!(predict(&b, &auth).await.status, StatusCode::OK);
        assert_eq!(predict(&a, &auth).await.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(predict(&b, &auth).await.status, StatusCode::TOO_MANY_REQUESTS);
    }

    // The eight buckets are spread over the nodes, each on the node that owns its slot.
    let mut nodes_with_keys = 0;
    let mut total = 0;
    for (index, node) in cluster.nodes().iter().enumerate() {
        let keys: Vec<String> = redis::cmd("KEYS").arg("rl:*:default:requests").query(&mut node.client()).unwrap();
        for key in &keys {
            assert_eq!(cluster.owner_index(key), index, "{key} is not on its slot's owner");
        }
        nodes_with_keys += usize::from(!keys.is_empty());
        total += keys.len();
    }
    assert_eq!(total, 8);
    assert!(nodes_with_keys >= 2, "all keys landed on one node");
}

/// Without the module on any node, the gateway loads the Functions library on every primary
/// (`FUNCTION LOAD` to all of them), and the limits hold across gateways on every node.
#[tokio::test]
async fn without_the_module_the_library_is_loaded_on_every_primary_and_limits_hold() {
    let cluster = Cluster::builder().without_module().start();
    let model = start_model(0);
    let a = gateway_on(&cluster, &model.url(""));
    let b = gateway_on(&cluster, &model.url(""));
    let ready = get(&a.url("/readyz")).await.unwrap();
    assert_eq!(ready.status, StatusCode::OK, "{}", a.logs());
    assert_eq!(ready.json()["backend"], "functions");
    for (index, node) in cluster.nodes().iter().enumerate() {
        let version: String = redis::cmd("FCALL_RO").arg("rl_version").arg(0).query(&mut node.client()).unwrap();
        assert_eq!(version, "1", "node {index} has the library");
    }
    assert_eq!(get(&b.url("/readyz")).await.unwrap().json()["backend"], "functions");
    for i in 0..8 {
        let key = format!("Bearer cluster-fn-key-{i}");
        let auth = [("authorization", key.as_str())];
        assert_eq!(predict(&a, &auth).await.status, StatusCode::OK, "{}", a.logs());
        assert_eq!(predict(&b, &auth).await.status, StatusCode::OK);
        assert_eq!(predict(&a, &auth).await.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(predict(&b, &auth).await.status, StatusCode::TOO_MANY_REQUESTS);
    }
    let mut nodes_with_keys = 0;
    for (index, node) in cluster.nodes().iter().enumerate() {
        let keys: Vec<String> = redis::cmd("KEYS").arg("rl:*:default:requests").query(&mut node.client()).unwrap();
        for key in &keys {
            assert_eq!(cluster.owner_index(key), index, "{key} is not on its slot's owner");
        }
        nodes_with_keys += usize::from(!keys.is_empty());
    }
    assert!(nodes_with_keys >= 2, "all keys landed on one node");
}

/// RL.CHECK is not idempotent: when the connection drops after Redis ran it and before the
/// reply arrived, a client that retried would run it again and charge the request twice. The
/// gateway's cluster client does not retry: that request gets the failure-mode answer (503,
/// failing closed) and the bucket holds exactly one charge.
#[tokio::test]
async fn a_connection_lost_after_rl_check_ran_fails_the_request_and_charges_it_once() {
    // A one-node cluster that announces the proxy's port, so that the client, once it has
    // read the slot map, connects to the node through the proxy.
    let proxy_port = free_port();
    let cluster = Cluster::builder()
        .primaries(1)
        .arg("cluster-announce-ip", "127.0.0.1")
        .arg("cluster-announce-port", &proxy_port.to_string())
        .start();
    let node = cluster.node(0);
    let proxy = Proxy::start(proxy_port, node.port());
    let model = start_model(0);
    let args: Vec<String> = ["--limit", "5", "--window", "60", "--redis-cluster-node", &proxy.url()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let gateway = start_serve("gateway", &model.url(""), &args);
    // /readyz (an RL.PEEK) connects the cluster client through the proxy and reads the slot
    // map, so the checked request below is the only command in flight.
    assert_eq!(get(&gateway.url("/readyz")).await.unwrap().status, StatusCode::OK, "{}", gateway.logs());

    proxy.cut_after_reply_to("RL.CHECK");
    let answer = predict(&gateway, &[("x-api-key", "charged-once")]).await;
    assert_eq!(proxy.cuts(), 1, "the proxy never cut the connection\n{}", gateway.logs());
    let keys: Vec<String> = redis::cmd("KEYS").arg("rl:*:default:requests").query(&mut node.client()).unwrap();
    assert_eq!(keys.len(), 1, "one bucket charged: {keys:?}");
    assert_eq!(
        tokens(&mut node.client(), &keys[0], 5, 60, 5),
        4,
        "the request was charged exactly once (a retry charges it again)\n{}",
        gateway.logs()
    );
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{answer:?}\n{}", gateway.logs());
    assert_eq!(answer.json()["error"]["type"], "rate_limiter_unavailable");
}

/// A policy with two limits on a cluster: one caller's keys share a hash tag, so one
/// RL.CHECKALL (routed by its first key) checks both on the node owning that slot, and a
/// refusal by one charges nothing on the other.
#[tokio::test]
async fn several_limits_of_a_caller_share_a_slot_and_are_checked_atomically() {
    let cluster = Cluster::start(3, 0);
    let model = start_model(0);
    let (_dir, config) = config_file(
        "[[policy]]\nname = \"p\"\nlimit = 5\nwindow = 60\n[[policy.limits]]\nname = \"hourly\"\nlimit = 2\nwindow = 3600\n",
    );
    let mut args = vec!["--config".to_string(), config.display().to_string()];
    for url in cluster.urls() {
        args.push("--redis-cluster-node".into());
        args.push(url);
    }
    let gateway = start_serve("gateway", &model.url(""), &args);
    for i in 0..6 {
        let key = format!("slot-key-{i}");
        let auth = [("x-api-key", key.as_str())];
        assert_eq!(predict(&gateway, &auth).await.status, StatusCode::OK, "{}", gateway.logs());
        assert_eq!(predict(&gateway, &auth).await.status, StatusCode::OK);
        let refused = predict(&gateway, &auth).await;
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{}", gateway.logs());
        assert_eq!(refused.json()["error"]["limits"][0]["name"], "hourly");
    }
    let mut total = 0;
    for node in cluster.nodes() {
        let keys: Vec<String> = redis::cmd("KEYS").arg("rl:*").query(&mut node.client()).unwrap();
        for key in keys.iter().filter(|k| k.ends_with(":p:requests")) {
            let hourly = key.replace(":p:requests", ":p:hourly");
            assert!(keys.contains(&hourly), "{hourly} is not beside {key}: {keys:?}");
            assert_eq!(cluster.keyslot(key), cluster.keyslot(&hourly));
            assert_eq!(tokens(&mut node.client(), key, 5, 60, 5), 3, "{key}: the refusal charged it");
            total += 1;
        }
    }
    assert_eq!(total, 6);
}
