//! The Python package (`python/`) against real servers started here, one per backend its client
//! can use: redis-server with the module, Redis 7 with neither module nor library (the client
//! loads the library it ships), and Redis 6.2 (no Functions: the library as a script). The
//! tests themselves are pytest's (`python/tests`); this runs them in the virtualenv `make
//! python` builds (`.cache/python`), with the servers' URLs in `RL_TEST_REDIS_URLS`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use testkit::{workspace_root, RedisServer};

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
    let urls = format!("module={},functions={},scripts={}", module.url(), plain.url(), old.url());
    let output = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(root.join("python"))
        .env("RL_TEST_REDIS_URLS", urls)
        .output()
        .expect("run pytest");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "pytest failed:\n{text}");
    assert!(text.contains(" passed"), "pytest ran nothing:\n{text}");
    assert!(!text.contains("skipped"), "no test may be skipped:\n{text}");
}
