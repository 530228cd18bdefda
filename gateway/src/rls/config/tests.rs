#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

fn reference(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rls/reference").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn one(text: &str) -> Result<RlsConfig, ConfigError> {
    RlsConfig::parse([("test.yaml", text)])
}

/// The matched limit's path and bucket, or `None`.
fn find(config: &RlsConfig, domain: &str, entries: &[(&str, &str)]) -> Option<(String, String)> {
    config.lookup(domain, entries).map(|m| (m.limit.path.clone(), m.bucket))
}

fn some(path: &str, bucket: &str) -> Option<(String, String)> {
    Some((path.to_string(), bucket.to_string()))
}

#[test]
fn the_reference_services_example_loads_and_matches_as_it_does() {
    let config = one(&reference("example.yaml")).unwrap();
    assert!(config.has_domain("rl") && !config.has_domain("other"));
    // A key with a value: only that value.
    assert_eq!(find(&config, "rl", &[("category", "account")]), some("rl.category_account", "category_account"));
    assert_eq!(find(&config, "rl", &[("category", "other")]), None);
    // Nested: the limit of the node the last entry matched.
    assert_eq!(
        find(&config, "rl", &[("source_cluster", "proxy"), ("destination_cluster", "mock")]),
        some("rl.source_cluster_proxy.destination_cluster_mock", "source_cluster_proxy.destination_cluster_mock")
    );
    // A node without a limit, or a descriptor stopping above the limits: nothing.
    assert_eq!(find(&config, "rl", &[("source_cluster", "proxy")]), None);
    // A key without a value is a default: one bucket per value.
    assert_eq!(find(&config, "rl", &[("foo", "x")]), some("rl.foo", "foo_x"));
    assert_eq!(find(&config, "rl", &[("foo", "x"), ("bar", "y")]), some("rl.foo.bar", "foo_x.bar_y"));
    // An exact value wins over the default.
    let banned = config.lookup("rl", &[("foo", "x"), ("bar", "banned")]).unwrap();
    assert_eq!((banned.limit.requests_per_unit, banned.limit.name.as_deref()), (0, Some("banned_limit")));
    let shady = config.lookup("rl", &[("foo", "x"), ("baz", "shady")]).unwrap();
    assert!(shady.limit.shadow_mode && !shady.limit.unlimited());
    assert!(config.lookup("rl", &[("foo", "x"), ("bay", "1")]).unwrap().limit.unlimited());
    assert_eq!(
        config.lookup("rl", &[("category", "account")]).unwrap().limit.replaces,
        ["bkthomps".to_string(), "fake_name".to_string()]
    );
    let unspec = config.lookup("rl", &[("unspec", "v")]).unwrap();
    assert!(unspec.limit.detailed_metric);
    assert_eq!(unspec.limit.unit.map(Unit::seconds), Some(60));
    // More entries than the tree has levels: no limit.
    assert_eq!(find(&config, "rl", &[("category", "account"), ("extra", "1")]), None);
    assert!(config.lookup("rl", &[("service", "service_1")]).unwrap().limit.quota_mode);
}

#[test]
fn wildcards_match_anywhere_in_the_value_in_file_order() {
    let config = one(&reference("wildcard.yaml")).unwrap();
    let d = "test-domain";
    assert_eq!(find(&config, d, &[("wild", "foo")]), some("test-domain.wild_foo*", "wild_foo"));
    assert_eq!(find(&config, d, &[("wild", "foobar")]), some("test-domain.wild_foo*", "wild_foobar"));
    assert_eq!(find(&config, d, &[("wild", "bar")]), None);
    assert_eq!(find(&config, d, &[("noWild", "foo")]), some("test-domain.noWild_foo", "noWild_foo"));
    assert_eq!(find(&config, d, &[("noWild", "foobar")]), None);
    assert_eq!(find(&config, d, &[("midWild", "barb")]), some("test-domain.midWild_bar*b", "midWild_barb"));
    assert_eq!(find(&config, d, &[("midWild", "bar-xyz-b")]), some("test-domain.midWild_bar*b", "midWild_bar-xyz-b"));
    assert_eq!(find(&config, d, &[("midWild", "bar-xyz-c")]), None);
    assert!(find(&config, d, &[("multiWild", "foo1bar2baz")]).is_some());
    assert!(find(&config, d, &[("multiWild", "foobazbar")]).is_none());
    assert!(find(&config, d, &[("nestedWild", "val1"), ("wild", "goose")]).is_some());
    assert!(find(&config, d, &[("nestedWild", "val2"), ("wild", "goose")]).is_none());
}

#[test]
fn share_threshold_puts_every_value_a_wildcard_matches_in_one_bucket() {
    let text = "domain: d\ndescriptors:\n  - key: path\n    value: /files/*\n    share_threshold: true\n    \
                rate_limit: {unit: second, requests_per_unit: 5}\n";
    let config = one(text).unwrap();
    assert_eq!(find(&config, "d", &[("path", "/files/a")]), some("d.path_/files/*", "path_/files/*"));
    assert_eq!(find(&config, "d", &[("path", "/files/b")]), some("d.path_/files/*", "path_/files/*"));
}

#[test]
fn the_burst_extension_lives_in_metadata_and_defaults_to_the_rate() {
    let text = "domain: d\ndescriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 60}\n    \
                metadata:\n      ml_api_rate_limiter: {burst: 120}\n  - key: ip\n    \
                rate_limit: {unit: hour, requests_per_unit: 10}\n";
    let config = one(text).unwrap();
    assert_eq!(config.lookup("d", &[("user", "u")]).unwrap().limit.burst, 120);
    assert_eq!(config.lookup("d", &[("ip", "1")]).unwrap().limit.burst, 10);
    let bad = "domain: d\ndescriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 60}\n    \
               metadata:\n      ml_api_rate_limiter: {burts: 120}\n";
    assert!(one(bad).unwrap_err().0.contains("unknown field \"burts\""), "{:?}", one(bad).unwrap_err());
    let zero = bad.replace("burts", "burst").replace("120", "0");
    assert!(one(&zero).unwrap_err().0.contains("positive integer"));
    // Buckets the module would refuse on every call are refused at load.
    let huge = zero.replace("burst: 0", "burst: 9223372036854775808");
    assert!(one(&huge).unwrap_err().0.contains("burst must be"), "{:?}", one(&huge).unwrap_err());
    let century = zero
        .replace("unit: minute, requests_per_unit: 60", "unit: year, requests_per_unit: 1")
        .replace("burst: 0", "burst: 101");
    let refused = one(&century).unwrap_err().0;
    assert!(
        refused.contains("d.user: metadata.ml_api_rate_limiter.burst 101") && refused.contains("100 years"),
        "{refused}"
    );
    assert!(one(&century.replace("burst: 101", "burst: 100")).is_ok(), "a century is the most");
}

#[test]
fn what_the_reference_service_refuses_is_refused_with_its_reason() {
    let cases: &[(&str, &str)] = &[
        ("descriptors: []\n", "config file cannot have empty domain"),
        ("domain: d\ndescriptors:\n  - value: v\n", "descriptor has empty key"),
        ("domain: d\ndescriptors:\n  - key: k\n  - key: k\n", "duplicate descriptor composite key 'd.k'"),
        ("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n", "invalid rate limit unit 'fortnight'"),
        ("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true, unit: second}\n", "should not specify rate limit unit when unlimited"),
        ("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1, replaces: [{}]}\n", "should not have an empty replaces entry"),
        ("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {name: a, unit: second, requests_per_unit: 1, replaces: [{name: a}]}\n", "replaces should not contain name of same descriptor"),
        ("domain: d\ndescriptors:\n  - key: k\n    value: v\n    share_threshold: true\n", "share_threshold can only be used with wildcard values"),
        ("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, request_per_unit: 1}\n", "unknown field `request_per_unit`"),
        ("domain: d\ndescriptor: []\n", "unknown field `descriptor`"),
        ("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: -1}\n", "config error"),
    ];
    for (text, want) in cases {
        let got = one(text).unwrap_err();
        assert!(got.0.starts_with("test.yaml: ") && got.0.contains(want), "{text:?}: {got}");
    }
    let twice = RlsConfig::parse([("a.yaml", "domain: d\n"), ("b.yaml", "domain: d\n")]).unwrap_err();
    assert_eq!(twice.0, "b.yaml: duplicate domain 'd' in config file");
}

#[test]
fn a_directory_is_read_file_by_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), reference("example.yaml")).unwrap();
    std::fs::write(dir.path().join("b.yml"), reference("wildcard.yaml")).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not yaml").unwrap();
    let config = RlsConfig::load(dir.path()).unwrap();
    assert!(config.has_domain("rl") && config.has_domain("test-domain"));
    let empty = tempfile::tempdir().unwrap();
    assert!(RlsConfig::load(empty.path()).unwrap_err().0.contains("no .yaml or .yml file"));
}

#[test]
fn wildcard_patterns_match_as_the_reference_does() {
    let parts = |p: &str| p.split('*').map(str::to_string).collect::<Vec<_>>();
    let cases = [
        ("k_foo*", "k_foo", true),
        ("k_foo*", "k_fo", false),
        ("k_*bar", "k_bar", true),
        ("k_a*a", "k_a", false),
        ("k_a*a", "k_aa", true),
        ("k_a*b*c", "k_abc", true),
        ("k_a*b*c", "k_acb", false),
        ("k_a*b*b", "k_ab", false),
        ("k_é*", "k_éa", true),
    ];
    for (pattern, value, want) in cases {
        assert_eq!(wildcard_match(&parts(pattern), value), want, "{pattern} ~ {value}");
    }
}
