//! What the gateway counts, served at `GET /metrics` in the Prometheus text format (the
//! OpenMetrics flavour `prometheus-client` writes, which Prometheus scrapes as is).
//!
//! One registry per process, like the default registry of the Go and Python clients: every
//! step records where it happens (the limit step its decisions, the proxy the upstream's
//! latency, a lease its life) without handing a registry down the pipeline. Every series a
//! dashboard needs is listed in `Metrics::new`; `deploy/grafana-dashboard.json` queries only
//! these (a test checks it).
//!
//! Label values come from the configuration (policy and limit names) and from fixed sets
//! (outcomes, commands, status classes), never from a request, so the number of series is
//! bounded by the config.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::config::{Settings, Unit};
use crate::lease::CONCURRENT_NAME;

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What became of a request under a policy (one count per request), or of one of its limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every limit (and lease) admitted it.
    Allowed,
    /// Refused with `429` (or `503` by the upstream's lease or capacity).
    Limited,
    /// A shadow policy would have refused it; it was forwarded.
    ShadowLimited,
    /// The limiter failed and the request was forwarded unmetered (`failure_mode = "open"`, or
    /// a shadow policy).
    FailOpen,
    /// The limiter failed and the request was refused with `503` (`failure_mode = "closed"`).
    Error,
    /// The module refused the gateway's command (its arguments, or a key holding something
    /// else): `500`, whatever `failure_mode` says (a shadow policy forwards it).
    ModuleError,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Limited => "limited",
            Outcome::ShadowLimited => "shadow_limited",
            Outcome::FailOpen => "fail_open",
            Outcome::Error => "error",
            Outcome::ModuleError => "module_error",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    policy: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    policy: String,
    limit: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    policy: String,
    limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    command: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LateLabels {
    command: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotLabels {
    slot: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvoyLabels {
    domain: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvoyCodeLabels {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    policy: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    limit_outcomes: Family<LimitLabels, Counter>,
    redis_duration: HistogramFamily<CommandLabels>,
    upstream_duration: HistogramFamily<StatusLabels>,
    tokens_reserved: Family<TokenLabels, Counter>,
    tokens_charged: Family<TokenLabels, Counter>,
    tokens_refunded: Family<TokenLabels, Counter>,
    leases_in_flight: Family<SlotLabels, Gauge<i64, std::sync::atomic::AtomicI64>>,
    deny_cache_hits: Family<PolicyLabels, Counter>,
    deny_cache_entries: Gauge,
    connections_open: Gauge<i64, std::sync::atomic::AtomicI64>,
    connections_refused: Counter,
    late_replies: Family<LateLabels, Counter>,
    redis_backend: Family<BackendLabels, Gauge>,
    envoy_requests: Family<EnvoyLabels, Counter>,
    envoy_duration: HistogramFamily<EnvoyCodeLabels>,
}

/// The `code` of a `ShouldRateLimit` call in `gateway_envoy_requests_total`.
pub const ENVOY_CODES: [&str; 5] = ["ok", "over_limit", "unavailable", "invalid_argument", "internal"];

/// The `result` of a limiter call in `gateway_redis_duration_seconds`.
pub const REDIS_RESULTS: [&str; 4] = ["ok", "timeout", "rejected", "error"];

/// The calls whose late reply is listened to (they take tokens or leases).
const LATE_COMMANDS: [&str; 4] = ["check", "checkall", "check_shared", "acquire"];

/// Redis answers in well under a millisecond on a LAN: 50 µs to ~1.6 s.
fn redis_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// A model answers in milliseconds to minutes: 1 ms to ~65 s.
fn upstream_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "gateway_requests",
            "Requests under a policy, by outcome: allowed, limited, shadow_limited, fail_open, error, module_error",
            requests.clone(),
        );
        let limit_outcomes = Family::<LimitLabels, Counter>::default();
        registry.register(
            "gateway_limit_decisions",
            "Decisions of each limit of a policy (rate limits, \"concurrent\", \"upstream-concurrent\", \
             \"upstream-capacity\"): allowed, limited, shadow_limited",
            limit_outcomes.clone(),
        );
        let redis_duration: HistogramFamily<CommandLabels> = Family::new_with_constructor(redis_histogram);
        registry.register(
            "gateway_redis_duration_seconds",
            "Time of one call to the limiter (Redis round trip), by command and result: ok, timeout (no \
             answer within redis.timeout_ms), rejected (the module refused the command), error",
            redis_duration.clone(),
        );
        let upstream_duration: HistogramFamily<StatusLabels> = Family::new_with_constructor(upstream_histogram);
        registry.register(
            "gateway_upstream_duration_seconds",
            "Time from sending a request to the model until its response headers, by status class \
             (2xx..5xx, or error when there was no answer)",
            upstream_duration.clone(),
        );
        let tokens_reserved = Family::<TokenLabels, Counter>::default();
        registry.register(
            "gateway_tokens_reserved",
            "Tokens reserved (the request's estimate) on limits counted in tokens, at admission",
            tokens_reserved.clone(),
        );
        let tokens_charged = Family::<TokenLabels, Counter>::default();
        registry.register(
            "gateway_tokens_charged",
            "Tokens finally charged for admitted requests: the answer's usage, or the reservation \
             when no usage could be read",
            tokens_charged.clone(),
        );
        let tokens_refunded = Family::<TokenLabels, Counter>::default();
        registry.register(
            "gateway_tokens_refunded",
            "Tokens given back: the unused part of a reservation, or all of it when a lease refused the request",
            tokens_refunded.clone(),
        );
        let leases_in_flight = Family::default();
        registry.register(
            "gateway_leases_in_flight",
            "Concurrency leases this gateway holds now, by slot (caller, upstream)",
            leases_in_flight.clone(),
        );
        let deny_cache_hits = Family::<PolicyLabels, Counter>::default();
        registry.register(
            "gateway_deny_cache_hits",
            "Requests answered 429 by the local deny cache, without a Redis call",
            deny_cache_hits.clone(),
        );
        let deny_cache_entries = Gauge::default();
        registry.register(
            "gateway_deny_cache_entries",
            "Refusals the local deny caches hold now (the HTTP pipeline's and the Envoy service's, added up; \
             expired ones included until a full cache sweeps them)",
            deny_cache_entries.clone(),
        );
        let late_replies = Family::<LateLabels, Counter>::default();
        registry.register(
            "gateway_redis_late_replies",
            "Calls that timed out, by what their reply said when it came later: given_back (it took \
             tokens or a lease, given back), give_back_failed (it took some, and the give-back got no \
             reply), nothing_taken, unknown (no reply within 10 s)",
            late_replies.clone(),
        );
        let redis_backend = Family::<BackendLabels, Gauge>::default();
        registry.register(
            "gateway_redis_backend",
            "1 for the commands in use (module, functions: the Functions library, scripts: the library \
             run by EVALSHA), 0 for the others; all 0 until Redis was first reached",
            redis_backend.clone(),
        );
        let connections_open = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register("gateway_connections_open", "Client connections open now", connections_open.clone());
        let connections_refused = Counter::default();
        registry.register(
            "gateway_connections_refused",
            "Client connections closed as soon as accepted because max_connections were open",
            connections_refused.clone(),
        );
        let envoy_requests = Family::<EnvoyLabels, Counter>::default();
        registry.register(
            "gateway_envoy_requests",
            "ShouldRateLimit calls of the Envoy rate limit service, by domain (of the configuration, \
             else \"other\") and code: ok, over_limit, unavailable (the limiter could not be asked: \
             Envoy's failure_mode_deny decides), invalid_argument, internal",
            envoy_requests.clone(),
        );
        let envoy_duration: HistogramFamily<EnvoyCodeLabels> = Family::new_with_constructor(redis_histogram);
        registry.register(
            "gateway_envoy_duration_seconds",
            "Time of one ShouldRateLimit call, from its message to its answer, by code",
            envoy_duration.clone(),
        );
        for backend in crate::limiter::redis::dialect::DIALECT_NAMES {
            drop(redis_backend.get_or_create(&BackendLabels { backend }));
        }
        Metrics {
            registry,
            envoy_requests,
            envoy_duration,
            late_replies,
            redis_backend,
            connections_open,
            connections_refused,
            requests,
            limit_outcomes,
            redis_duration,
            upstream_duration,
            tokens_reserved,
            tokens_charged,
            tokens_refunded,
            leases_in_flight,
            deny_cache_hits,
            deny_cache_entries,
        }
    }

    /// Creates, at zero, every series `settings` can produce before its first request, so
    /// that a scrape lists them all from the start (a `rate()` then starts at the first
    /// request, and a dashboard shows 0 rather than "no data").
    pub fn declare(&self, settings: &Settings) {
        const OUTCOMES: [Outcome; 6] = [
            Outcome::Allowed,
            Outcome::Limited,
            Outcome::ShadowLimited,
            Outcome::FailOpen,
            Outcome::Error,
            Outcome::ModuleError,
        ];
        const DECISIONS: [Outcome; 3] = [Outcome::Allowed, Outcome::Limited, Outcome::ShadowLimited];
        let mut commands = vec!["ready"];
        let variants = settings.policies.iter().flat_map(|p| std::iter::once(p).chain(p.tiers.values().map(|t| &**t)));
        for policy in variants {
            let name = &policy.name;
            for outcome in OUTCOMES {
                drop(self.requests.get_or_create(&RequestLabels { policy: name.clone(), outcome: outcome.as_str() }));
            }
            let mut limits: Vec<&str> = policy.limits.iter().map(|q| q.name.as_str()).collect();
            if policy.concurrency.is_some() {
                limits.push(CONCURRENT_NAME);
                commands.extend(["acquire", "renew", "release"]);
            }
            if settings.upstream.concurrency.is_some() {
                limits.push("upstream-concurrent");
                commands.extend(["acquire", "renew", "release"]);
            }
            if settings.upstream.capacity.is_some() {
                limits.push("upstream-capacity");
                commands.push("check_shared");
            }
            for limit in limits {
                for outcome in DECISIONS {
                    let labels =
                        LimitLabels { policy: name.clone(), limit: limit.to_string(), outcome: outcome.as_str() };
                    drop(self.limit_outcomes.get_or_create(&labels));
                }
            }
            for quota in policy.limits.iter().filter(|q| q.unit == Unit::Tokens) {
                let labels = TokenLabels { policy: name.clone(), limit: quota.name.clone() };
                for family in [&self.tokens_reserved, &self.tokens_charged, &self.tokens_refunded] {
                    drop(family.get_or_create(&labels));
                }
                commands.extend(["refund", "force"]);
            }
            commands.push(if policy.limits.len() == 1 { "check" } else { "checkall" });
            drop(self.deny_cache_hits.get_or_create(&PolicyLabels { policy: name.clone() }));
        }
        if let Some(envoy) = &settings.envoy {
            commands.extend(["check", "checkall", "refund", "force"]);
            let policy = crate::rls::decide::KEY_POLICY.to_string();
            drop(self.deny_cache_hits.get_or_create(&PolicyLabels { policy }));
            let domains = envoy.config.domains().map(str::to_string).chain(std::iter::once("other".to_string()));
            for domain in domains {
                for code in ENVOY_CODES {
                    drop(self.envoy_requests.get_or_create(&EnvoyLabels { domain: domain.clone(), code }));
                }
            }
            for code in ENVOY_CODES {
                drop(self.envoy_duration.get_or_create(&EnvoyCodeLabels { code }));
            }
        }
        commands.sort_unstable();
        commands.dedup();
        for command in commands {
            for result in REDIS_RESULTS {
                drop(self.redis_duration.get_or_create(&CommandLabels { command, result }));
            }
            if LATE_COMMANDS.contains(&command) {
                for outcome in ["given_back", "give_back_failed", "nothing_taken", "unknown"] {
                    drop(self.late_replies.get_or_create(&LateLabels { command, outcome }));
                }
            }
        }
        for status in ["2xx", "4xx", "5xx", "error"] {
            drop(self.upstream_duration.get_or_create(&StatusLabels { status }));
        }
        for slot in ["caller", "upstream"] {
            drop(self.leases_in_flight.get_or_create(&SlotLabels { slot }));
        }
    }

    /// The text a scrape gets.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail; an error would only mean a metric refused to
        // encode, and a partial page is still more use than none.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        text
    }

    pub fn request(&self, policy: &str, outcome: Outcome) {
        self.requests.get_or_create(&RequestLabels { policy: policy.to_string(), outcome: outcome.as_str() }).inc();
    }

    pub fn limit_decision(&self, policy: &str, limit: &str, outcome: Outcome) {
        let labels = LimitLabels { policy: policy.to_string(), limit: limit.to_string(), outcome: outcome.as_str() };
        self.limit_outcomes.get_or_create(&labels).inc();
    }

    /// One limiter call and how it ended: `ok`, `timeout`, `rejected` or `error`.
    pub fn redis_call(&self, command: &'static str, result: &'static str, elapsed: Duration) {
        let labels = CommandLabels { command, result };
        self.redis_duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    /// What the late reply of a timed-out `command` said (`given_back`, `give_back_failed`,
    /// `nothing_taken`, `unknown`).
    /// The commands in use are `backend`'s (one of `dialect::DIALECT_NAMES`).
    pub fn redis_backend(&self, backend: &'static str) {
        for name in crate::limiter::redis::dialect::DIALECT_NAMES {
            self.redis_backend.get_or_create(&BackendLabels { backend: name }).set(i64::from(name == backend));
        }
    }

    pub fn late_reply(&self, command: &'static str, outcome: &'static str) {
        self.late_replies.get_or_create(&LateLabels { command, outcome }).inc();
    }

    /// `status`: the model's status code, or `None` when it gave no answer.
    pub fn upstream_call(&self, status: Option<u16>, elapsed: Duration) {
        let status = match status {
            Some(100..=199) => "1xx",
            Some(200..=299) => "2xx",
            Some(300..=399) => "3xx",
            Some(400..=499) => "4xx",
            Some(500..=599) => "5xx",
            Some(_) | None => "error",
        };
        self.upstream_duration.get_or_create(&StatusLabels { status }).observe(elapsed.as_secs_f64());
    }

    fn tokens(family: &Family<TokenLabels, Counter>, policy: &str, limit: &str, amount: u64) {
        if amount > 0 {
            family.get_or_create(&TokenLabels { policy: policy.to_string(), limit: limit.to_string() }).inc_by(amount);
        }
    }

    pub fn tokens_reserved(&self, policy: &str, limit: &str, amount: u64) {
        Self::tokens(&self.tokens_reserved, policy, limit, amount);
    }

    pub fn tokens_charged(&self, policy: &str, limit: &str, amount: u64) {
        Self::tokens(&self.tokens_charged, policy, limit, amount);
    }

    pub fn tokens_refunded(&self, policy: &str, limit: &str, amount: u64) {
        Self::tokens(&self.tokens_refunded, policy, limit, amount);
    }

    /// A lease of `slot` ("caller" or "upstream") was taken (`+1`) or given up (`-1`).
    pub fn lease_held(&self, slot: &'static str, delta: i64) {
        self.leases_in_flight.get_or_create(&SlotLabels { slot }).inc_by(delta);
    }

    /// A client connection was accepted (`+1`) or ended (`-1`).
    pub fn connection_opened(&self, delta: i64) {
        self.connections_open.inc_by(delta);
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// One `ShouldRateLimit` call of the Envoy rate limit service, answered with `code`.
    pub fn envoy_request(&self, domain: &str, code: &'static str, took: Duration) {
        self.envoy_requests.get_or_create(&EnvoyLabels { domain: domain.to_string(), code }).inc();
        self.envoy_duration.get_or_create(&EnvoyCodeLabels { code }).observe(took.as_secs_f64());
    }

    pub fn deny_cache_hit(&self, policy: &str) {
        self.deny_cache_hits.get_or_create(&PolicyLabels { policy: policy.to_string() }).inc();
    }

    /// A deny cache gained (`delta` > 0) or lost entries.
    pub fn deny_cache_entries_moved(&self, delta: i64) {
        self.deny_cache_entries.inc_by(delta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_written_with_its_labels() {
        let m = Metrics::new();
        m.request("p", Outcome::ShadowLimited);
        m.limit_decision("p", "requests", Outcome::Limited);
        m.redis_call("check", "ok", Duration::from_micros(120));
        m.late_reply("check", "given_back");
        m.upstream_call(Some(503), Duration::from_millis(3));
        m.tokens_reserved("chat", "tokens", 40);
        m.tokens_charged("chat", "tokens", 25);
        m.tokens_refunded("chat", "tokens", 15);
        m.tokens_refunded("chat", "tokens", 0);
        m.lease_held("caller", 1);
        m.deny_cache_hit("p");
        m.deny_cache_entries_moved(3);
        m.connection_opened(2);
        m.connection_opened(-1);
        m.connection_refused();
        let text = m.encode();
        for line in [
            r#"gateway_requests_total{policy="p",outcome="shadow_limited"} 1"#,
            r#"gateway_limit_decisions_total{policy="p",limit="requests",outcome="limited"} 1"#,
            r#"gateway_redis_duration_seconds_count{command="check",result="ok"} 1"#,
            r#"gateway_redis_late_replies_total{command="check",outcome="given_back"} 1"#,
            r#"gateway_upstream_duration_seconds_count{status="5xx"} 1"#,
            r#"gateway_tokens_reserved_total{policy="chat",limit="tokens"} 40"#,
            r#"gateway_tokens_charged_total{policy="chat",limit="tokens"} 25"#,
            r#"gateway_tokens_refunded_total{policy="chat",limit="tokens"} 15"#,
            r#"gateway_leases_in_flight{slot="caller"} 1"#,
            r#"gateway_deny_cache_hits_total{policy="p"} 1"#,
            "gateway_deny_cache_entries 3",
            "gateway_connections_open 1",
            "gateway_connections_refused_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn every_series_a_config_can_produce_is_listed_at_zero_from_the_start() {
        let m = Metrics::new();
        let settings = crate::test_support::settings(
            "[upstream.capacity]\nlimit = 9\nwindow = 1\n[[policy]]\nname = \"chat\"\nkind = \"openai\"\nlimit = 5\nwindow = 60\n\
             max_concurrent = 2\n[[policy.limits]]\nname = \"tokens\"\nunit = \"tokens\"\nlimit = 100\nwindow = 60\n",
        );
        m.declare(&settings);
        let text = m.encode();
        for line in [
            r#"gateway_requests_total{policy="chat",outcome="fail_open"} 0"#,
            r#"gateway_limit_decisions_total{policy="chat",limit="concurrent",outcome="limited"} 0"#,
            r#"gateway_limit_decisions_total{policy="chat",limit="upstream-capacity",outcome="allowed"} 0"#,
            r#"gateway_tokens_refunded_total{policy="chat",limit="tokens"} 0"#,
            r#"gateway_redis_duration_seconds_count{command="checkall",result="ok"} 0"#,
            r#"gateway_redis_duration_seconds_count{command="acquire",result="error"} 0"#,
            r#"gateway_redis_duration_seconds_count{command="checkall",result="timeout"} 0"#,
            r#"gateway_redis_late_replies_total{command="checkall",outcome="unknown"} 0"#,
            r#"gateway_redis_duration_seconds_count{command="check_shared",result="ok"} 0"#,
            r#"gateway_upstream_duration_seconds_count{status="2xx"} 0"#,
            r#"gateway_leases_in_flight{slot="upstream"} 0"#,
            r#"gateway_deny_cache_hits_total{policy="chat"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains(r#"command="check","#), "a policy of two limits uses RL.CHECKALL only");
    }
}
