//! The Python package (`python/`) against real servers started here, one per backend its client
//! can use: redis-server with the module, Redis 7 with neither module nor library (the client
//! loads the library it ships), and Redis 6.2 (no Functions: the library as a script); and the
//! demo model, for the LLM budgets driven by the OpenAI SDK. The tests themselves are pytest's
//! (`python/tests`); this runs them in the virtualenv `make python` builds (`.cache/python`),
//! with the servers' URLs in `RL_TEST_REDIS_URLS` and the model's in `RL_TEST_MODEL_URL`.
//!
//! With `RL_TEST_ACL=1` the clients under test connect as a user restricted to the README's ACL
//! for each server's backend (`RL_TEST_REDIS_URLS` names that user), while the tests' own setup
//! and inspection (`FLUSHALL`, a key of the wrong type, `CLIENT PAUSE`...) go through the default
//! user, at `RL_TEST_ADMIN_URLS` (the same URLs as `RL_TEST_REDIS_URLS` outside that mode).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{acl_mode, restricted_url, start_model};
use testkit::{workspace_root, Cluster, RedisServer, SentinelGroup};

#[test]
fn the_python_package_passes_its_tests_on_the_module_the_library_and_a_script() {
    let root = workspace_root();
    let python = root.join(".cache/python/bin/python");
    assert!(python.exists(), "no virtualenv at {}: run `make python` first", python.display());
    let redis62 = root.join(".cache/redis62/redis-server");
    assert!(redis62.exists(), "no Redis 6.2 at {}: run `make servers` first", redis62.display());
    let module = RedisServer::start();
    let plain = RedisServer::builder().without_module().start();
    let old = RedisServer::builder().without_module().binary(redis62.to_str().unwrap()).start();
    let model = start_model(1);
    // A Cluster and a Sentinel group each with the module, and each without it (the client
    // loads the library), as `name=url` pairs separated by `;` (a Sentinel URL has commas).
    // These stay the default user's in ACL mode too: a restricted user on every node of a
    // Cluster, and on the servers a Sentinel group may promote, is out of this test's scope.
    let clusters = [Cluster::start(3, 0), Cluster::builder().primaries(3).replicas(0).without_module().start()];
    let cluster_urls = format!(
        "module={};functions={}",
        clusters[0].urls()[0].replace("redis://", "redis+cluster://"),
        clusters[1].urls()[0].replace("redis://", "redis+cluster://")
    );
    let groups = [SentinelGroup::start(), SentinelGroup::start_with(RedisServer::builder().without_module())];
    let sentinel_url = |group: &SentinelGroup| {
        let hosts: Vec<String> = group.sentinel_urls().iter().map(|u| u.replace("redis://", "")).collect();
        format!("redis+sentinel://{}/{}", hosts.join(","), group.master_name())
    };
    let sentinel_urls = format!("module={};functions={}", sentinel_url(&groups[0]), sentinel_url(&groups[1]));
    let admin_urls = format!("module={},functions={},scripts={}", module.url(), plain.url(), old.url());
    let urls = if acl_mode() {
        let [module, functions, scripts] = [&module, &plain, &old].map(|server| restricted_url(&server.url(), "rl:"));
        format!("module={module},functions={functions},scripts={scripts}")
    } else {
        admin_urls.clone()
    };
    let output = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(root.join("python"))
        .env("RL_TEST_REDIS_URLS", urls)
        .env("RL_TEST_ADMIN_URLS", admin_urls)
        .env("RL_TEST_MODEL_URL", format!("http://127.0.0.1:{}/v1", model.port))
        .env("RL_TEST_CLUSTERS", cluster_urls)
        .env("RL_TEST_SENTINELS", sentinel_urls)
        .output()
        .expect("run pytest");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    // pytest's summary (`N passed in T s`), seen with `--nocapture`.
    println!("pytest{}: {}", if acl_mode() { " (ACL)" } else { "" }, text.trim_end().lines().last().unwrap_or(""));
    assert!(output.status.success(), "pytest failed:\n{text}");
    assert!(text.contains(" passed"), "pytest ran nothing:\n{text}");
    assert!(!text.contains("skipped"), "no test may be skipped:\n{text}");
}
