//! A Redis Cluster behind two gateways: every caller's key lives on one node, the client
//! routes each RL.CHECK there, and the limit holds across the gateways.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use hyper::StatusCode;
use testkit::{redis, Cluster};

async fn gateway_on(cluster: &Cluster, upstream: &str) -> Proc {
    let mut args: Vec<String> = ["--limit", "2", "--window", "60"].iter().map(|s| s.to_string()).collect();
    for url in cluster.urls() {
        args.push("--redis-cluster-node".into());
        args.push(url);
    }
    let port = free_port();
    let mut all: Vec<String> =
        vec!["serve".into(), "--listen".into(), format!("127.0.0.1:{port}"), "--upstream".into(), upstream.into()];
    all.extend(args);
    let mut gateway = Proc::spawn("gateway", port, &all, &[("GATEWAY_KEY_SECRET", SECRET)]);
    gateway.wait_healthy().await;
    gateway
}

#[tokio::test]
async fn a_cluster_shares_every_limit_across_gateways() {
    let cluster = Cluster::start(3, 0);
    let model = start_model(0).await;
    let a = gateway_on(&cluster, &model.url("")).await;
    let b = gateway_on(&cluster, &model.url("")).await;
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
        let keys: Vec<String> = redis::cmd("KEYS").arg("rl:default:*").query(&mut node.client()).unwrap();
        for key in &keys {
            assert_eq!(cluster.owner_index(key), index, "{key} is not on its slot's owner");
        }
        nodes_with_keys += usize::from(!keys.is_empty());
        total += keys.len();
    }
    assert_eq!(total, 8);
    assert!(nodes_with_keys >= 2, "all keys landed on one node");
}
