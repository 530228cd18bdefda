use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::resolve::parse_upstream;
use super::*;

const POLICY: &str = "[[policy]]\nname = \"p\"\nlimit = 1\nwindow = 1\n";

/// The environment holds the secret and nothing else.
fn secret_only(name: &str) -> Option<String> {
    (name == DEFAULT_SECRET_ENV).then(|| "s3cret".to_string())
}

fn settings(text: &str) -> Result<Settings, ConfigError> {
    Settings::resolve(FileConfig::parse(text)?, &Overrides::default(), secret_only)
}

fn with_env(text: &str, overrides: &Overrides, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let env = |name: &str| match vars.iter().find(|(k, _)| *k == name) {
        Some((_, v)) => Some(v.to_string()),
        None => secret_only(name),
    };
    Settings::resolve(FileConfig::parse(text)?, overrides, env)
}

fn server_url(s: &Settings) -> &str {
    match &s.redis.target {
        RedisTarget::Server(url) => url.expose(),
        other => panic!("not one server: {other}"),
    }
}

#[test]
fn rejects_bad_values_with_the_key_name() {
    let cases = [
        ("[[policy]]\nname = \"p\"\nlimit = 0\nwindow = 1\n", "limit"),
        ("[[policy]]\nname = \"p q\"\nlimit = 1\nwindow = 1\n", "policy name"),
        (&format!("{POLICY}[[policy]]\nname = \"p\"\nlimit = 1\nwindow = 1\n"), "defined twice"),
        (&format!("listen = \"nowhere\"\n{POLICY}"), "listen"),
        (&format!("max_body_bytes = 0\n{POLICY}"), "max_body_bytes"),
        (&format!("[upstream]\nurl = \"https://x\"\n{POLICY}"), "upstream.url"),
        (&format!("[redis]\nurl = \"http://x\"\n{POLICY}"), "redis.url"),
        (&format!("[redis]\nconnect_timeout_ms = 0\n{POLICY}"), "redis.connect_timeout_ms"),
        (&format!("[redis]\ncluster_nodes = [\"redis://a\", \"rediss://b\"]\n{POLICY}"), "redis.cluster_nodes"),
        (&format!("[redis]\ntls_ca_file = \"/ca.pem\"\n{POLICY}"), "rediss://"),
        (&format!("[identity]\ntrusted_proxies = [\"10.0.0.0/33\"]\n{POLICY}"), "trusted"),
        (&format!("[identity]\napi_key_headers = [\"a b\"]\n{POLICY}"), "identity.api_key_headers"),
        (&format!("[identity]\nsecret = \"\"\n{POLICY}"), "secret is empty"),
        ("", "no rate-limit policy"),
        ("bogus = 1\n", "unknown field"),
    ];
    for (text, needle) in cases {
        let e = settings(text).err().unwrap_or_else(|| panic!("{text:?} was accepted"));
        assert!(e.to_string().contains(needle), "{text:?}: {e}");
    }
}

#[test]
fn every_bound_the_module_enforces_is_checked_when_the_config_loads() {
    let century = "must not exceed 100 years";
    let cases = [
        ("[[policy]]\nname = \"p\"\nlimit = 1\nwindow = 99999999999\n", century),
        ("[[policy]]\nname = \"p\"\nlimit = 1\nwindow = 1\nburst = 3153600001\n", century),
        ("[[policy]]\nname = \"p\"\nlimit = 1\nwindow = 1\nburst = 9223372036854775808\n", "burst must be an integer between 1 and 9223372036854775807"),
        ("[[policy]]\nname = \"p\"\nlimit = 5\nwindow = 60\n[[policy.tier]]\ntier = \"default\"\nlimit = 1\nwindow = 99999999999\n", century),
        (&format!("[upstream.capacity]\nlimit = 1\nwindow = 99999999999\n{POLICY}"), century),
        (&format!("[upstream]\nmax_concurrent = 10001\n{POLICY}"), "max_concurrent must be between 1 and 10000"),
        (
            "[[policy]]\nname = \"a\"\npaths = [\"/v1\", \"/v2\"]\nlimit = 1\nwindow = 1\n[[policy]]\nname = \"b\"\npaths = [\"/v2\"]\nlimit = 1\nwindow = 1\n",
            "policy \"b\": path \"/v2\" is already covered by policy \"a\"",
        ),
        (&format!("[upstream]\nmax_concurrent = 1\nlease_ms = 86400001\n{POLICY}"), "lease_ms must be between 1 and 86400000"),
    ];
    for (text, needle) in cases {
        let e = settings(text).err().unwrap_or_else(|| panic!("{text:?} was accepted"));
        assert!(e.to_string().contains(needle), "{text:?}: {e}");
    }
}

#[test]
fn errors_are_typed() {
    assert!(matches!(settings(""), Err(ConfigError::NoPolicy)));
    assert!(matches!(settings("bogus = 1\n"), Err(ConfigError::Parse { .. })));
    let e = settings(&format!("[redis]\ntimeout_ms = 0\n{POLICY}")).err().unwrap();
    assert!(matches!(&e, ConfigError::Invalid { key, .. } if key == "redis.timeout_ms"), "{e:?}");
    let missing = std::path::Path::new("/nonexistent/gateway.toml");
    let e = FileConfig::load(missing).err().unwrap();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(e.to_string().contains("/nonexistent/gateway.toml"), "{e}");
}

#[test]
fn flags_override_the_file() {
    let file =
        "listen = \"127.0.0.1:1\"\n[redis]\nkey_prefix = \"a:\"\n[[policy]]\nname = \"p\"\nlimit = 9\nwindow = 9\n";
    let o = Overrides {
        listen: Some("127.0.0.1:2".into()),
        key_prefix: Some("b:".into()),
        limit: Some(3),
        window: Some(4),
        fail_open: true,
        redis_timeout_ms: Some(7),
        redis_connect_timeout_ms: Some(8),
        ..Overrides::default()
    };
    let s = with_env(file, &o, &[]).unwrap();
    assert_eq!(s.listen.port(), 2);
    assert_eq!(s.redis.key_prefix, "b:");
    let q = &s.policies[0].limits[0];
    assert_eq!((q.limit, q.window, q.burst), (3, 4, 3));
    assert_eq!(s.redis.failure_mode, FailureMode::Open);
    assert_eq!((s.redis.timeout, s.redis.connect_timeout), (Duration::from_millis(7), Duration::from_millis(8)));
    let with_burst = "[[policy]]\nname = \"p\"\nlimit = 9\nwindow = 9\nburst = 20\n";
    let o = Overrides { limit: Some(3), ..Overrides::default() };
    let burst = |s: Settings| s.policies[0].limits[0].burst;
    assert_eq!(burst(with_env(with_burst, &o, &[]).unwrap()), 3, "--limit without --burst resets the burst");
    assert_eq!(burst(settings(with_burst).unwrap()), 20);
}

#[test]
fn limit_and_window_flags_make_a_default_policy_without_a_file() {
    let o = Overrides { limit: Some(5), window: Some(10), ..Overrides::default() };
    let s = with_env("", &o, &[]).unwrap();
    assert_eq!(s.policies, vec![Policy::simple("default", &["/"], 5, 10, 5)]);
}

#[test]
fn a_cluster_or_one_server() {
    let both = format!("[redis]\nurl = \"redis://a/\"\ncluster_nodes = [\"redis://b/\"]\n{POLICY}");
    let e = settings(&both).err().unwrap().to_string();
    assert_eq!(e, "redis: set one of url (one server), cluster_nodes (a Redis Cluster) or sentinels (Redis Sentinel), not several");
    let cluster = format!("[redis]\ncluster_nodes = [\"redis://:pw@b:1/\", \"redis://c:2/\"]\n{POLICY}");
    let s = settings(&cluster).unwrap();
    assert!(matches!(&s.redis.target, RedisTarget::Cluster(nodes) if nodes.len() == 2));
    assert!(!format!("{s:?}").contains("pw"));
    assert_eq!(s.redis.target.to_string(), r#"cluster ["redis://:***@b:1/", "redis://c:2/"]"#);
    let o = Overrides { redis_url: Some("redis://one/".into()), ..Overrides::default() };
    let s = with_env(&cluster, &o, &[]).unwrap();
    assert_eq!(server_url(&s), "redis://one/", "--redis-url picks a single server");
    let o = Overrides {
        redis_url: Some("redis://one/".into()),
        redis_cluster_nodes: vec!["redis://two/".into()],
        ..Overrides::default()
    };
    let e = with_env(POLICY, &o, &[]).err().unwrap();
    assert!(matches!(e, ConfigError::Conflict { .. }), "{e:?}");
}

#[test]
fn the_redis_url_env_var_stands_in_for_the_flag_only_without_redis_flags() {
    let env = [(REDIS_URL_ENV, "redis://from-env/")];
    let file = format!("[redis]\nurl = \"redis://from-file/\"\n{POLICY}");
    assert_eq!(server_url(&with_env(&file, &Overrides::default(), &env).unwrap()), "redis://from-env/");
    assert_eq!(server_url(&with_env(&file, &Overrides::default(), &[]).unwrap()), "redis://from-file/");
    // Like --redis-url, it picks one server over the file's cluster.
    let cluster = format!("[redis]\ncluster_nodes = [\"redis://n1/\"]\n{POLICY}");
    assert_eq!(server_url(&with_env(&cluster, &Overrides::default(), &env).unwrap()), "redis://from-env/");
    let flag = Overrides { redis_url: Some("redis://from-flag/".into()), ..Overrides::default() };
    assert_eq!(server_url(&with_env(&file, &flag, &env).unwrap()), "redis://from-flag/");
    // With --redis-cluster-node it is ignored, not a conflict.
    let nodes = Overrides { redis_cluster_nodes: vec!["redis://n2/".into()], ..Overrides::default() };
    let s = with_env(&file, &nodes, &env).unwrap();
    assert_eq!(s.redis.target, RedisTarget::Cluster(vec![RedisUrl::new("redis://n2/")]));
}

#[test]
fn the_identity_and_timeout_keys() {
    let s = settings(POLICY).unwrap();
    assert!(!s.identity.require_api_key);
    assert_eq!(s.identity.ipv6_prefix, 64);
    assert_eq!(s.identity.api_key_headers, ["authorization", "x-api-key"]);
    assert_eq!(s.client_body_timeout, Duration::from_secs(30));
    assert_eq!(s.client_header_timeout, Duration::from_secs(30));
    assert_eq!(s.redis.connect_timeout, Duration::from_secs(1));
    let text = format!(
        "client_body_timeout_ms = 500\nclient_header_timeout_ms = 700\n{POLICY}[identity]\nrequire_api_key = true\nipv6_prefix = 48\n"
    );
    let s = settings(&text).unwrap();
    assert!(s.identity.require_api_key);
    assert_eq!(s.identity.ipv6_prefix, 48);
    assert_eq!(s.client_body_timeout, Duration::from_millis(500));
    assert_eq!(s.client_header_timeout, Duration::from_millis(700));
    for bad in ["0", "129"] {
        let e = settings(&format!("{POLICY}[identity]\nipv6_prefix = {bad}\n")).err().unwrap();
        assert!(e.to_string().contains("identity.ipv6_prefix"), "{e}");
    }
    let e = settings(&format!("client_body_timeout_ms = 0\n{POLICY}")).err().unwrap();
    assert!(e.to_string().contains("client_body_timeout_ms"), "{e}");
}

#[test]
fn the_secret_is_required() {
    let file = FileConfig::parse(POLICY).unwrap();
    let e = Settings::resolve(file, &Overrides::default(), |_| None).err().unwrap();
    assert!(e.to_string().contains(DEFAULT_SECRET_ENV), "{e}");
    let file = FileConfig::parse(&format!("{POLICY}[identity]\nsecret_env = \"MY_SECRET\"\n")).unwrap();
    let e = Settings::resolve(file, &Overrides::default(), |_| None).err().unwrap();
    assert!(matches!(&e, ConfigError::NoSecret { env_var } if env_var == "MY_SECRET"), "{e:?}");
}

#[test]
fn debug_output_hides_every_secret() {
    let text = format!("[redis]\nurl = \"redis://gw:hunter2@h:1/\"\n[identity]\nsecret = \"sekrit-value\"\n{POLICY}");
    let shown = format!("{:?}", settings(&text).unwrap());
    assert!(shown.contains("redis://gw:***@h:1/"), "{shown}");
    assert!(!shown.contains("hunter2") && !shown.contains("sekrit"), "{shown}");
}

#[test]
fn upstream_base_path_is_kept() {
    let u = parse_upstream("http://127.0.0.1:9000/model/", Duration::from_secs(1)).unwrap();
    assert_eq!((u.origin.as_str(), u.base_path.as_str()), ("http://127.0.0.1:9000", "/model"));
}

const EXAMPLE: &str = include_str!("../../gateway.toml");

#[test]
fn the_example_config_parses_and_shows_the_defaults() {
    let example = settings(EXAMPLE).unwrap();
    assert!(!example.policies.is_empty());
    // Every value the example sets outside its policies is the default.
    let defaults = settings(POLICY).unwrap();
    let without_policies = |s: Settings| format!("{:?}", Settings { policies: Vec::new(), ..s });
    assert_eq!(without_policies(example), without_policies(defaults));
}

/// The flags the example config's header lists (between "Command-line flags override the
/// file:" and "`gateway serve --help`").
fn flags_listed_in_the_example() -> BTreeSet<String> {
    let start = EXAMPLE.find("Command-line flags override the file:").unwrap();
    let end = start + EXAMPLE[start..].find("`gateway serve --help`").unwrap();
    EXAMPLE[start..end]
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|word| word.starts_with("--"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_example_config_lists_exactly_the_override_flags() {
    let command = Overrides::augment_args(clap::Command::new("serve"));
    let flags: BTreeSet<String> =
        command.get_arguments().filter_map(|a| a.get_long()).map(|long| format!("--{long}")).collect();
    let listed = flags_listed_in_the_example();
    assert_eq!(listed.difference(&flags).collect::<Vec<_>>(), Vec::<&String>::new(), "listed but no such flag");
    assert_eq!(flags.difference(&listed).collect::<Vec<_>>(), Vec::<&String>::new(), "a flag gateway.toml omits");
    // `serve` has those, plus the config file itself.
    let serve = ServeArgs::augment_args(clap::Command::new("serve"));
    let serve_flags: BTreeSet<String> = serve.get_arguments().filter_map(|a| a.get_long()).map(String::from).collect();
    assert_eq!(serve_flags.len(), flags.len() + 1);
    assert!(serve_flags.contains("config"));
}

#[test]
fn a_policy_declares_several_limits() {
    let text = "[[policy]]\nname = \"p\"\nlimit = 10\nwindow = 60\n\
        [[policy.limits]]\nname = \"daily\"\nlimit = 1000\nwindow = 86400\nburst = 100\n";
    let s = settings(text).unwrap();
    let limits: Vec<(&str, u64, u64, u64)> =
        s.policies[0].limits.iter().map(|q| (q.name.as_str(), q.limit, q.window, q.burst)).collect();
    assert_eq!(limits, [("requests", 10, 60, 10), ("daily", 1000, 86400, 100)]);
    // Flags apply to every limit counted in requests.
    let o = Overrides { limit: Some(3), window: Some(4), ..Overrides::default() };
    let s = with_env(text, &o, &[]).unwrap();
    assert!(s.policies[0].limits.iter().all(|q| (q.limit, q.window, q.burst) == (3, 4, 3)));
    let only_tables = "[[policy]]\nname = \"p\"\n[[policy.limits]]\nname = \"rpm\"\nlimit = 5\nwindow = 60\n";
    assert_eq!(settings(only_tables).unwrap().policies[0].limits[0].name, "rpm");
    let bad = [
        ("[[policy]]\nname = \"p\"\n", "needs a limit"),
        ("[[policy]]\nname = \"p\"\nlimit = 1\n", "limit and window go together"),
        (&format!("{POLICY}[[policy.limits]]\nname = \"requests\"\nlimit = 1\nwindow = 1\n"), "defined twice"),
        (&format!("{POLICY}[[policy.limits]]\nname = \"a b\"\nlimit = 1\nwindow = 1\n"), "limit name"),
        (&format!("{POLICY}[[policy.limits]]\nname = \"x\"\nlimit = 1\nwindow = 0\n"), "window must be"),
    ];
    for (text, needle) in bad {
        let e = settings(text).err().unwrap_or_else(|| panic!("{text:?} was accepted"));
        assert!(e.to_string().contains(needle), "{text:?}: {e}");
    }
}

#[test]
fn an_llm_policy_counts_tokens() {
    let text = "[[policy]]\nname = \"chat\"\nkind = \"openai\"\nlimit = 60\nwindow = 60\nchars_per_token = 3\n\
        [[policy.limits]]\nname = \"tokens\"\nunit = \"tokens\"\nlimit = 100000\nwindow = 60\n";
    let p = &settings(text).unwrap().policies[0];
    assert_eq!(
        p.llm,
        Some(Llm {
            chars_per_token: 3,
            default_max_tokens: 1024,
            max_response_bytes: 8 << 20,
            max_event_bytes: 1 << 20
        })
    );
    assert_eq!(p.limits[1].unit, Unit::Tokens);
    // Flags leave token limits alone.
    let o = Overrides { limit: Some(5), window: Some(10), ..Overrides::default() };
    let p = &with_env(text, &o, &[]).unwrap().policies[0];
    assert_eq!((p.limits[0].limit, p.limits[1].limit, p.limits[1].window), (5, 100000, 60));
    let tokens_on_plain =
        "[[policy]]\nname = \"p\"\n[[policy.limits]]\nname = \"t\"\nunit = \"tokens\"\nlimit = 1\nwindow = 1\n";
    assert!(settings(tokens_on_plain).err().unwrap().to_string().contains("kind = \"openai\""));
    let llm_key_on_plain = format!("{POLICY}chars_per_token = 2\n");
    assert!(settings(&llm_key_on_plain).err().unwrap().to_string().contains("chars_per_token needs kind"));
    let zero = "[[policy]]\nname = \"p\"\nkind = \"openai\"\nlimit = 1\nwindow = 1\nchars_per_token = 0\n";
    assert_eq!(
        settings(zero).err().unwrap().to_string(),
        "policy \"p\": chars_per_token, max_response_bytes and max_event_bytes must be at least 1"
    );
    let grpc = "[[policy]]\nname = \"p\"\nkind = \"grpc\"\nlimit = 1\nwindow = 1\n";
    let e = settings(grpc).err().unwrap().to_string();
    assert!(e.starts_with("TOML parse error at line 3, column 8"), "{e}");
    assert!(e.contains("unknown variant `grpc`, expected `plain` or `openai`"), "{e}");
}

#[test]
fn tiers_give_listed_keys_their_own_limits() {
    let digest = "0123456789abcdef0123456789abcdef";
    let text = format!(
        "[tiers]\ndefault = \"free\"\nip = \"anonymous\"\n[[tier]]\nname = \"pro\"\nkeys = [\"{digest}\"]\n\
         {POLICY}[[policy.tier]]\ntier = \"pro\"\nlimit = 100\nwindow = 60\n\
         [[policy.tier]]\ntier = \"anonymous\"\n[[policy.tier.limits]]\nname = \"rpm\"\nlimit = 2\nwindow = 60\n"
    );
    let s = settings(&text).unwrap();
    assert_eq!((s.tiers.of(Some(digest)), s.tiers.of(Some("other")), s.tiers.of(None)), ("pro", "free", "anonymous"));
    let p = Arc::new(s.policies[0].clone());
    assert_eq!(Tiers::policy_for(&p, "pro").limits[0].limit, 100);
    assert_eq!(Tiers::policy_for(&p, "anonymous").limits[0].name, "rpm");
    assert_eq!(Tiers::policy_for(&p, "free").limits[0].limit, 1, "no table of its own: the policy's limits");
    // --limit changes the policy's own limits, not a tier's.
    let o = Overrides { limit: Some(7), window: Some(9), ..Overrides::default() };
    let s = with_env(&text, &o, &[]).unwrap();
    assert_eq!((s.policies[0].limits[0].limit, s.policies[0].tiers["pro"].limits[0].limit), (7, 100));
    let bad = [
        (format!("{POLICY}[[policy.tier]]\ntier = \"gold\"\nlimit = 1\nwindow = 1\n"), "gold"),
        ("[[tier]]\nname = \"pro\"\nkeys = [\"not-a-digest\"]\n".to_string() + POLICY, "not a key digest"),
        (format!("[[tier]]\nname = \"a\"\nkeys = [\"{digest}\"]\n[[tier]]\nname = \"b\"\nkeys = [\"{digest}\"]\n{POLICY}"), "also in tier"),
        (format!("[[tier]]\nname = \"pro\"\n{POLICY}[[policy.tier]]\ntier = \"pro\"\n"), "needs a limit"),
    ];
    for (text, needle) in bad {
        let e = settings(&text).err().unwrap_or_else(|| panic!("{text:?} was accepted"));
        assert!(e.to_string().contains(needle), "{text:?}: {e}");
    }
}

#[test]
fn the_commented_tier_example_in_the_example_config_is_valid() {
    let start = EXAMPLE.find("#   [tiers]").unwrap();
    let end = start + EXAMPLE[start..].find("\n\n").unwrap();
    let example: String = EXAMPLE[start..end]
        .lines()
        .map(|line| line.strip_prefix("#   ").or(line.strip_prefix("#")).unwrap_or(line).to_string() + "\n")
        .collect();
    let s = settings(&example).unwrap_or_else(|e| panic!("{e}\n{example}"));
    assert_eq!(s.tiers.keys.len(), 3);
    assert_eq!(s.policies[0].tiers["pro"].limits[1].limit, 1_000_000);
    assert_eq!(s.policies[0].tiers["anonymous"].limits[0].limit, 5);
}

#[test]
fn max_concurrent_on_a_policy_its_tiers_and_the_upstream() {
    let s = settings(
        "[upstream]\nmax_concurrent = 4\n[tiers]\ndefault = \"free\"\n[[tier]]\nname = \"pro\"\nkeys = []\n\
         [[policy]]\nname = \"p\"\nlimit = 1\nwindow = 1\nmax_concurrent = 2\nlease_ms = 9000\n\
         [[policy.tier]]\ntier = \"pro\"\nlimit = 5\nwindow = 1\nmax_concurrent = 8\n",
    )
    .unwrap();
    assert_eq!(s.upstream.concurrency, Some(Concurrency { max: 4, lease_ms: DEFAULT_LEASE_MS }));
    let p = &s.policies[0];
    assert_eq!(p.concurrency, Some(Concurrency { max: 2, lease_ms: 9000 }));
    assert_eq!(p.tiers["pro"].concurrency, Some(Concurrency { max: 8, lease_ms: 9000 }), "lease_ms inherited");
    assert_eq!(settings("[[policy]]\nname = \"p\"\nlimit = 1\nwindow = 1\n").unwrap().policies[0].concurrency, None);
    for (bad, why) in [
        ("[[policy]]\nname = \"p\"\nlimit = 1\nwindow = 1\nmax_concurrent = 0\n", "max_concurrent must be between"),
        ("[[policy]]\nname = \"p\"\nlimit = 1\nwindow = 1\nlease_ms = 5\n", "lease_ms needs max_concurrent"),
        (
            "[[policy]]\nname = \"p\"\nlimit = 1\nwindow = 1\nmax_concurrent = 1\n\
             [[policy.limits]]\nname = \"concurrent\"\nlimit = 1\nwindow = 1\n",
            "share its key",
        ),
        (
            "[upstream]\nmax_concurrent = 10001\n[[policy]]\nname = \"p\"\nlimit = 1\nwindow = 1\n",
            "upstream.max_concurrent",
        ),
    ] {
        let e = settings(bad).unwrap_err().to_string();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn upstream_capacity_and_each_tiers_keep_percent() {
    let s = settings(
        "[upstream.capacity]\nlimit = 100\nwindow = 1\n[tiers]\ndefault = \"free\"\n\
         [[tier]]\nname = \"free\"\nkeep_percent = 30\n[[policy]]\nname = \"p\"\nlimit = 1\nwindow = 1\n",
    )
    .unwrap();
    let capacity = s.upstream.capacity.unwrap();
    assert_eq!((capacity.name.as_str(), capacity.limit, capacity.window, capacity.burst), ("capacity", 100, 1, 100));
    assert_eq!((s.tiers.keep_percent("free"), s.tiers.keep_percent("anonymous")), (30, 0));
    let over = "[[tier]]\nname = \"free\"\nkeep_percent = 101\n[[policy]]\nname = \"p\"\nlimit = 1\nwindow = 1\n";
    assert!(settings(over).unwrap_err().to_string().contains("keep_percent"));
    let zero = "[upstream.capacity]\nlimit = 0\nwindow = 1\n[[policy]]\nname = \"p\"\nlimit = 1\nwindow = 1\n";
    assert!(settings(zero).unwrap_err().to_string().contains("upstream.capacity"));
}

#[test]
fn shadow_policies_and_the_deny_cache() {
    let s = settings(&format!(
        "{POLICY}[[policy]]\nname = \"beta\"\npaths = [\"/b\"]\nlimit = 1\nwindow = 1\nshadow = true\n"
    ))
    .unwrap();
    assert_eq!(s.policies.iter().map(|p| p.shadow).collect::<Vec<_>>(), [false, true]);
    assert_eq!(s.deny_cache, DenyCacheSettings { enabled: true, max_entries: DEFAULT_DENY_CACHE_MAX_ENTRIES as usize });
    let off = settings(&format!("{POLICY}[deny_cache]\nenabled = false\nmax_entries = 5\n")).unwrap();
    assert_eq!(off.deny_cache, DenyCacheSettings { enabled: false, max_entries: 5 });
    let e = settings(&format!("{POLICY}[deny_cache]\nmax_entries = 0\n")).unwrap_err();
    assert!(e.to_string().contains("deny_cache.max_entries"), "{e}");
    let tiered = "[[tier]]\nname = \"pro\"\n[[policy]]\nname = \"p\"\nlimit = 1\nwindow = 1\nshadow = true\n[[policy.tier]]\ntier = \"pro\"\nlimit = 5\nwindow = 1\n";
    let s = settings(tiered).unwrap();
    assert!(s.policies[0].tiers["pro"].shadow, "a tier's variant of a shadow policy is shadow too");
}

fn sentinel_target(s: &Settings) -> &SentinelTarget {
    match &s.redis.target {
        RedisTarget::Sentinel(target) => target,
        other => panic!("not Sentinel: {other}"),
    }
}

#[test]
fn sentinels_with_a_master_name_from_the_file_or_the_flags() {
    let file = format!(
        "[redis]\nsentinels = [\"redis://s1:26379\", \"redis://:spw@s2:26379\"]\nsentinel_master = \"rl\"\n\
         sentinel_master_password = \"hunter2\"\n{POLICY}"
    );
    let s = settings(&file).unwrap();
    let target = sentinel_target(&s);
    let urls: Vec<&str> = target.sentinels.iter().map(RedisUrl::expose).collect();
    assert_eq!(urls, ["redis://s1:26379", "redis://:spw@s2:26379"]);
    assert_eq!(target.master, "rl");
    assert_eq!(target.master_password, Some(Redacted("hunter2".to_string())));
    let shown = format!("{s:?} {}", s.redis.target);
    assert!(!shown.contains("hunter2") && !shown.contains("spw"), "{shown}");
    assert_eq!(s.redis.target.to_string(), r#"sentinel master "rl" via ["redis://s1:26379", "redis://:***@s2:26379"]"#);
    assert!(s.redis.tls.is_none() && !s.redis.target.is_tls());

    // The flags replace the file's sentinels and name; the password stays the file's.
    let flags = Overrides {
        redis_sentinels: vec!["redis://f1:1".into(), "redis://f2:2".into()],
        redis_sentinel_master: Some("other".into()),
        ..Overrides::default()
    };
    let s = with_env(&file, &flags, &[]).unwrap();
    let target = sentinel_target(&s);
    assert_eq!(target.sentinels, vec![RedisUrl::new("redis://f1:1"), RedisUrl::new("redis://f2:2")]);
    assert_eq!(target.master, "other");
    assert_eq!(target.master_password, Some(Redacted("hunter2".to_string())));
    // Sentinels from the flags, the master name from the file, and the other way round.
    let name_only = format!("[redis]\nsentinel_master = \"rl\"\n{POLICY}");
    let sentinels_only = Overrides { redis_sentinels: vec!["redis://f1:1".into()], ..Overrides::default() };
    assert_eq!(sentinel_target(&with_env(&name_only, &sentinels_only, &[]).unwrap()).master, "rl");
    let list_only = format!("[redis]\nsentinels = [\"redis://s1:1\"]\n{POLICY}");
    let name_flag = Overrides { redis_sentinel_master: Some("byflag".into()), ..Overrides::default() };
    assert_eq!(sentinel_target(&with_env(&list_only, &name_flag, &[]).unwrap()).master, "byflag");
    // --redis-url (or the environment variable) picks one server over the file's sentinels.
    let url = Overrides { redis_url: Some("redis://one/".into()), ..Overrides::default() };
    assert_eq!(server_url(&with_env(&file, &url, &[]).unwrap()), "redis://one/");
    let env = [(REDIS_URL_ENV, "redis://from-env/")];
    assert_eq!(server_url(&with_env(&file, &Overrides::default(), &env).unwrap()), "redis://from-env/");
    // ...but not over --redis-sentinel.
    assert_eq!(sentinel_target(&with_env(&name_only, &sentinels_only, &env).unwrap()).master, "rl");
}

#[test]
fn wrong_sentinel_settings_name_the_key() {
    let cases = [
        (
            format!("[redis]\nurl = \"redis://a/\"\nsentinels = [\"redis://s:1\"]\nsentinel_master = \"m\"\n{POLICY}"),
            "redis: set one of url",
        ),
        (
            format!("[redis]\ncluster_nodes = [\"redis://a/\"]\nsentinels = [\"redis://s:1\"]\nsentinel_master = \"m\"\n{POLICY}"),
            "redis: set one of url",
        ),
        (format!("[redis]\nsentinels = [\"redis://s:1\"]\n{POLICY}"), "redis.sentinel_master: required with redis.sentinels"),
        (
            format!("[redis]\nsentinels = [\"redis://s:1\"]\nsentinel_master = \"\"\n{POLICY}"),
            "redis.sentinel_master: required",
        ),
        (format!("[redis]\nsentinel_master = \"m\"\n{POLICY}"), "redis.sentinel_master: goes with redis.sentinels"),
        (
            format!("[redis]\nurl = \"redis://a/\"\nsentinel_master_password = \"pw\"\n{POLICY}"),
            "redis.sentinel_master_password: goes with redis.sentinels",
        ),
        (
            format!("[redis]\nsentinels = [\"http://s:1\"]\nsentinel_master = \"m\"\n{POLICY}"),
            "redis.sentinels: must start with redis://",
        ),
        (
            format!("[redis]\nsentinels = [\"rediss://s:1\"]\nsentinel_master = \"m\"\n{POLICY}"),
            "redis.sentinels: TLS (rediss://) is not supported with Sentinel",
        ),
        (
            format!("[redis]\nsentinels = [\"redis://s:1\"]\nsentinel_master = \"m\"\ntls_ca_file = \"/ca.pem\"\n{POLICY}"),
            "redis.tls_*",
        ),
        (format!("[redis]\nsentinels = \"redis://s:1\"\nsentinel_master = \"m\"\n{POLICY}"), "sentinels"),
    ];
    for (text, needle) in cases {
        let e = settings(&text).err().unwrap_or_else(|| panic!("{text:?} was accepted"));
        assert!(e.to_string().contains(needle), "{text:?}: {e}");
    }
    let conflicts = [
        Overrides {
            redis_url: Some("redis://a/".into()),
            redis_sentinels: vec!["redis://s:1".into()],
            ..Overrides::default()
        },
        Overrides {
            redis_cluster_nodes: vec!["redis://a/".into()],
            redis_sentinels: vec!["redis://s:1".into()],
            ..Overrides::default()
        },
    ];
    for o in conflicts {
        let e = with_env(POLICY, &o, &[]).err().unwrap();
        assert!(matches!(e, ConfigError::Conflict { other: "--redis-sentinel", .. }), "{e:?}");
    }
    let name_flag_alone = Overrides { redis_sentinel_master: Some("m".into()), ..Overrides::default() };
    let e = with_env(POLICY, &name_flag_alone, &[]).err().unwrap();
    assert!(e.to_string().starts_with("redis.sentinel_master: goes with"), "{e}");
    let sentinels_without_name = Overrides { redis_sentinels: vec!["redis://s:1".into()], ..Overrides::default() };
    let e = with_env(POLICY, &sentinels_without_name, &[]).err().unwrap();
    assert!(e.to_string().starts_with("redis.sentinel_master: required"), "{e}");
}
