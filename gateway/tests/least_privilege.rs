//! Least privilege: a Redis user given exactly the ACL the README gives (the module's nine
//! commands, or the library's calls and what they call, on `~rl:*`) runs the gateway's HTTP
//! limits, its Envoy rate limit service and the Python client; and that user can neither read
//! nor write any other key, nor run anything else.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use hyper::StatusCode;
use testkit::redis;

/// A server of each kind with the user `gw` (password `pw`) as the README says; the user's URL.
fn restricted(with_module: bool) -> (RedisServer, String) {
    let redis = if with_module { RedisServer::start() } else { RedisServer::builder().without_module().start() };
    let mut admin = redis.client();
    let rules = readme_acl(&mut admin);
    let mut acl: Vec<&str> = vec!["SETUSER", "gw", "on", ">pw", "~rl:*"];
    acl.extend(rules.split(' '));
    assert!(acl.contains(&if with_module { "+rl.check" } else { "+fcall" }), "{acl:?}");
    let _: () = redis::cmd("ACL").arg(&acl).query(&mut admin).unwrap();
    let _: () = redis::cmd("SET").arg("secret").arg("payroll").query(&mut admin).unwrap();
    let url = format!("redis://gw:pw@127.0.0.1:{}/", redis.port());
    (redis, url)
}

fn denied(result: redis::RedisResult<redis::Value>) -> bool {
    matches!(result, Err(e) if e.to_string().contains("NOPERM") || e.to_string().contains("no permissions"))
}

#[tokio::test]
async fn the_readme_acl_runs_every_front_end_and_reaches_nothing_else() {
    for with_module in [true, false] {
        let (redis, url) = restricted(with_module);
        let model = start_model(0);
        let grpc = free_port();
        let limits = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/envoy/ratelimit.yaml");
        let args: Vec<String> = ["--limit", "3", "--window", "60", "--envoy-listen", &format!("127.0.0.1:{grpc}")]
            .iter()
            .map(|s| s.to_string())
            .chain(["--envoy-config".to_string(), limits.display().to_string()])
            .collect();
        let gateway = start_gateway_args(&url, &model.url(""), &args);
        // HTTP: three admitted, the fourth refused.
        for i in 0..3 {
            let ok = predict(&gateway, &[("x-api-key", "k")]).await;
            assert_eq!(ok.status, StatusCode::OK, "module {with_module}, request {i}: {ok:?}\n{}", gateway.logs());
        }
        assert_eq!(predict(&gateway, &[("x-api-key", "k")]).await.status, StatusCode::TOO_MANY_REQUESTS);
        // gRPC: Envoy's call charged and answered.
        let mut client = RateLimitServiceClient::connect(format!("http://127.0.0.1:{grpc}")).await.unwrap();
        let request = RateLimitRequest {
            domain: "ml_api".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry { key: "api_key".into(), value: "k".into() }],
                ..RateLimitDescriptor::default()
            }],
            hits_addend: 0,
        };
        let answer = client.should_rate_limit(request).await.unwrap().into_inner();
        assert_eq!((answer.overall_code, answer.statuses[0].limit_remaining), (1, 19), "module {with_module}");
        // The Python client, with the same user.
        let python = testkit::workspace_root().join(".cache/python/bin/python");
        assert!(python.exists(), "no virtualenv at {}: run `make python` first", python.display());
        let script = "import sys; from ml_api_rate_limiter import RateLimiter; \
                      r = RateLimiter.from_url(sys.argv[1]); print(r.check('rl:{py}:a', '2/minute').remaining, r.backend)";
        let out = Command::new(&python).args(["-c", script, &url]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let backend = if with_module { "module" } else { "functions" };
        assert_eq!(text, format!("1 {backend}"), "{}", String::from_utf8_lossy(&out.stderr));
        // Nothing else: other keys, other commands.
        let mut user = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
        for line in [
            vec!["GET", "secret"],
            vec!["SET", "secret", "x"],
            vec!["DEL", "secret"],
            vec!["KEYS", "*"],
            vec!["FLUSHALL"],
            vec!["CONFIG", "GET", "*"],
            vec!["SET", "rl:x", "1"],
        ] {
            let result: redis::RedisResult<redis::Value> = redis::cmd(line[0]).arg(&line[1..]).query(&mut user);
            let refused = denied(result.clone());
            // The library's user may SET under rl:* (the library's calls run as it); the
            // module's may not, nor may either anywhere else.
            let allowed = !with_module && line == ["SET", "rl:x", "1"];
            assert!(refused != allowed, "module {with_module}: {line:?} gave {result:?}");
        }
        let secret: String = redis::cmd("GET").arg("secret").query(&mut redis.client()).unwrap();
        assert_eq!(secret, "payroll");
        // A limiter command on a key outside the prefix is refused too.
        let outside: redis::RedisResult<redis::Value> = if with_module {
            redis::cmd("RL.CHECK").arg("secret").arg(5).arg(60).query(&mut user)
        } else {
            redis::cmd("FCALL").arg("rl_check").arg(1).arg("secret").arg(5).arg(60).query(&mut user)
        };
        assert!(denied(outside.clone()), "module {with_module}: {outside:?}");
    }
}
