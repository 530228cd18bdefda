//! What one `ShouldRateLimit` request asks of the limiter, decided before any call: for each of
//! its descriptors, the limit that applies (after `unlimited` and `replaces`), the bucket, and
//! the amount (`hits_addend`: charged; `0`: looked at; `is_negative_hits`: given back). The
//! service then charges every enforced bucket in one all-or-nothing call, so a request refused
//! by one descriptor costs nothing on the others (envoyproxy/ratelimit increments each
//! descriptor's counter whatever the others decide).
//!
//! One extension: a descriptor whose last entry is [`FORCE_ENTRY`] (`ml_api_rate_limiter` =
//! `force`) is charged whatever is left (`RL.CHECK ... FORCE`, a debt bounded at one burst),
//! with the limit of the entries before it. It settles an LLM answer that used more tokens
//! than were reserved (`apply_on_stream_done`): refusing that charge would let the overage go
//! free. The reference service finds no limit for such a descriptor and answers `OK`.

use super::config::{DescriptorLimit, RlsConfig, Unit};

/// One descriptor of a request, as the transport hands it over.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Descriptor {
    pub entries: Vec<(String, String)>,
    /// The descriptor's own `hits_addend`, which overrides the request's (`0` included).
    pub hits_addend: Option<u64>,
    /// `is_negative_hits`: the amount is given back, not charged.
    pub negative: bool,
    /// A limit sent by Envoy itself (`RateLimitDescriptor.limit`): used instead of the file's.
    pub limit_override: Option<(u64, Unit)>,
}

/// The most descriptors one request may carry: all of them may be limited, and one
/// all-or-nothing call charges at most [`rl_protocol::bounds::MAX_CHECKALL_KEYS`] buckets
/// (a larger request is refused as a bad one, never split, which would lose all-or-nothing).
pub const MAX_DESCRIPTORS: usize = rl_protocol::bounds::MAX_CHECKALL_KEYS;

/// The most entries one descriptor may carry (Envoy's actions make a handful).
pub const MAX_ENTRIES: usize = 64;

/// A bucket name longer than this many bytes is stored by its digest ([`stored_name`]).
pub const MAX_BUCKET_NAME: usize = 200;

/// The last entry that makes a descriptor a forced charge ([`Step::Force`]).
pub const FORCE_ENTRY: (&str, &str) = ("ml_api_rate_limiter", "force");

/// How one descriptor is treated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// No limit in the configuration (or replaced by another descriptor's): `OK`, no call.
    NoLimit,
    /// `unlimited: true`: `OK` with the most remaining, no call.
    Unlimited,
    /// `requests_per_unit: 0`: refused without a call (a bucket that never holds a token).
    Banned(Bucket),
    /// Charged (or looked at, for `cost` 0) with the other enforced buckets, in one call.
    Charge(Bucket),
    /// `shadow_mode`: charged on its own, never refuses.
    Shadow(Bucket),
    /// `is_negative_hits`: `cost` given back (`RL.REFUND`), never refuses.
    Refund(Bucket),
    /// Ends in [`FORCE_ENTRY`]: `cost` charged whatever is left, never refuses.
    Force(Bucket),
}

/// A GCRA bucket: the Redis key's name within the domain, its rate, and the amount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// The descriptor's entries (see [`super::config::Matched::bucket`]).
    pub name: String,
    /// `requests_per_unit` and the unit, as Envoy's `current_limit` shows them.
    pub requests_per_unit: u64,
    pub unit: Unit,
    /// `rate_limit.name`, shown in `current_limit.name`.
    pub limit_name: Option<String>,
    pub burst: u64,
    pub cost: u64,
    /// `quota_mode`: refuses the request only when every quota bucket refuses.
    pub quota_mode: bool,
}

/// The steps of a request: one per descriptor, in order.
pub fn plan(config: &RlsConfig, domain: &str, descriptors: &[Descriptor], request_hits: u32) -> Vec<Step> {
    // The request's `hits_addend` (0 in the message means unset: 1).
    let default_hits = u64::from(request_hits.max(1));
    let forced: Vec<bool> = descriptors.iter().map(is_forced).collect();
    let mut found: Vec<Option<(DescriptorLimit, String)>> = descriptors
        .iter()
        .zip(&forced)
        .map(|(d, &forced)| (d, if forced { &d.entries[..d.entries.len() - 1] } else { &d.entries[..] }))
        .map(|(d, entries)| match d.limit_override {
            // As the reference: an unknown domain has no limits, Envoy's own included.
            Some(_) if !config.has_domain(domain) => None,
            Some((requests_per_unit, unit)) => Some((
                DescriptorLimit {
                    path: String::new(),
                    requests_per_unit,
                    unit: Some(unit),
                    name: None,
                    replaces: Vec::new(),
                    shadow_mode: false,
                    detailed_metric: false,
                    quota_mode: false,
                    burst: requests_per_unit,
                },
                // The override's own bucket: the same descriptor under the file's limit is
                // another rate, and must not share its state.
                stored_name(format!("override_{requests_per_unit}_{}:{}", unit.seconds(), bucket_name(entries))),
            )),
            None => config.lookup(domain, entries).map(|m| (m.limit.clone(), stored_name(m.bucket))),
        })
        .collect();
    let replaced: Vec<String> = found.iter().flatten().flat_map(|(limit, _)| limit.replaces.iter().cloned()).collect();
    for slot in &mut found {
        if slot.as_ref().is_some_and(|(limit, _)| limit.name.as_ref().is_some_and(|n| replaced.contains(n))) {
            *slot = None;
        }
    }
    descriptors
        .iter()
        .zip(found)
        .zip(forced)
        .map(|((d, found), forced)| {
            let Some((limit, name)) = found else { return Step::NoLimit };
            let Some(unit) = limit.unit else { return Step::Unlimited };
            let bucket = Bucket {
                name,
                requests_per_unit: limit.requests_per_unit,
                unit,
                limit_name: limit.name.clone(),
                burst: limit.burst,
                cost: d.hits_addend.unwrap_or(default_hits),
                quota_mode: limit.quota_mode,
            };
            if d.negative {
                Step::Refund(bucket)
            } else if limit.requests_per_unit == 0 {
                // Nothing is ever admitted there: a forced charge has nothing to settle.
                Step::Banned(bucket)
            } else if forced {
                Step::Force(bucket)
            } else if limit.shadow_mode {
                Step::Shadow(bucket)
            } else {
                Step::Charge(bucket)
            }
        })
        .collect()
}

/// Whether `d` ends in [`FORCE_ENTRY`] after at least one entry of its own.
fn is_forced(d: &Descriptor) -> bool {
    d.entries.len() > 1 && d.entries.last().is_some_and(|(k, v)| (k.as_str(), v.as_str()) == FORCE_ENTRY)
}

/// The name a bucket is stored under: `name` itself, or for a long one (a header's value can
/// be tens of kilobytes, and becomes a Redis key and a deny cache entry) `#` and its SHA-256
/// in hex. A name that starts with `#` is hashed too, so a digest only ever comes from
/// hashing: two different names never share a bucket.
pub fn stored_name(name: String) -> String {
    if name.len() <= MAX_BUCKET_NAME && !name.starts_with('#') {
        return name;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let mut hashed = String::with_capacity(65);
    hashed.push('#');
    for byte in digest.as_ref() {
        hashed.push_str(&format!("{byte:02x}"));
    }
    hashed
}

/// A descriptor's entries as the reference names them: `key_value` joined by `.`.
fn bucket_name(entries: &[(String, String)]) -> String {
    entries.iter().map(|(k, v)| if v.is_empty() { k.clone() } else { format!("{k}_{v}") }).collect::<Vec<_>>().join(".")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const CONFIG: &str = "\
domain: api
descriptors:
  - key: tenant
    rate_limit: {unit: minute, requests_per_unit: 100, name: tenant}
  - key: user
    rate_limit: {unit: second, requests_per_unit: 5}
    metadata:
      ml_api_rate_limiter: {burst: 10}
  - key: user
    value: vip
    rate_limit: {unit: second, requests_per_unit: 50, replaces: [{name: tenant}]}
  - key: path
    rate_limit: {unit: minute, requests_per_unit: 3}
    shadow_mode: true
  - key: health
    rate_limit: {unlimited: true}
  - key: bot
    rate_limit: {unit: hour, requests_per_unit: 0}
";

    fn descriptor(entries: &[(&str, &str)]) -> Descriptor {
        Descriptor {
            entries: entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Descriptor::default()
        }
    }

    fn config() -> RlsConfig {
        RlsConfig::parse([("api.yaml", CONFIG)]).unwrap()
    }

    fn bucket(step: &Step) -> &Bucket {
        match step {
            Step::Banned(b) | Step::Charge(b) | Step::Shadow(b) | Step::Refund(b) | Step::Force(b) => b,
            other => panic!("no bucket: {other:?}"),
        }
    }

    #[test]
    fn each_descriptor_gets_its_step_and_the_request_hits_are_the_default_cost() {
        let steps = plan(
            &config(),
            "api",
            &[
                descriptor(&[("tenant", "t1")]),
                descriptor(&[("user", "u1")]),
                descriptor(&[("path", "/v1")]),
                descriptor(&[("health", "x")]),
                descriptor(&[("bot", "b")]),
                descriptor(&[("nothing", "here")]),
            ],
            0,
        );
        assert!(matches!(&steps[0], Step::Charge(b) if b.name == "tenant_t1" && b.cost == 1 && b.burst == 100));
        assert!(matches!(&steps[1], Step::Charge(b) if b.name == "user_u1" && b.burst == 10 && b.unit == Unit::Second));
        assert!(matches!(&steps[2], Step::Shadow(b) if b.name == "path_/v1"));
        assert_eq!(steps[3], Step::Unlimited);
        assert!(matches!(&steps[4], Step::Banned(_)));
        assert_eq!(steps[5], Step::NoLimit);
        let five = plan(&config(), "api", &[descriptor(&[("user", "u1")])], 5);
        assert_eq!(bucket(&five[0]).cost, 5);
        assert_eq!(plan(&config(), "unknown-domain", &[descriptor(&[("user", "u1")])], 1), [Step::NoLimit]);
    }

    #[test]
    fn a_descriptors_own_hits_override_the_requests_and_negative_hits_give_back() {
        let mut look = descriptor(&[("user", "u1")]);
        look.hits_addend = Some(0);
        let mut back = descriptor(&[("user", "u1")]);
        back.hits_addend = Some(7);
        back.negative = true;
        let steps = plan(&config(), "api", &[look, back], 3);
        assert!(matches!(&steps[0], Step::Charge(b) if b.cost == 0));
        assert!(matches!(&steps[1], Step::Refund(b) if b.cost == 7));
    }

    #[test]
    fn a_descriptor_ending_in_the_force_entry_is_charged_in_the_bucket_before_it() {
        let forced = descriptor(&[("user", "u1"), FORCE_ENTRY]);
        let mut refund = forced.clone();
        refund.negative = true;
        let steps = plan(&config(), "api", &[forced, refund, descriptor(&[FORCE_ENTRY])], 4);
        assert!(matches!(&steps[0], Step::Force(b) if b.name == "user_u1" && b.cost == 4 && b.burst == 10));
        assert!(matches!(&steps[1], Step::Refund(b) if b.name == "user_u1"), "a refund stays a refund");
        assert_eq!(steps[2], Step::NoLimit, "the entry alone names no bucket");
    }

    #[test]
    fn a_named_limit_is_not_applied_when_another_descriptor_replaces_it() {
        let steps = plan(&config(), "api", &[descriptor(&[("tenant", "t1")]), descriptor(&[("user", "vip")])], 1);
        assert_eq!(steps[0], Step::NoLimit, "replaced by the vip limit");
        assert!(matches!(&steps[1], Step::Charge(b) if b.requests_per_unit == 50));
        let alone = plan(&config(), "api", &[descriptor(&[("tenant", "t1")]), descriptor(&[("user", "u2")])], 1);
        assert!(matches!(&alone[0], Step::Charge(_)), "replaced only when the replacing limit applies");
    }

    #[test]
    fn a_limit_sent_by_envoy_overrides_the_file_in_a_bucket_of_its_own() {
        let mut d = descriptor(&[("user", "u1")]);
        d.limit_override = Some((7, Unit::Minute));
        let steps = plan(&config(), "api", &[d], 1);
        let b = bucket(&steps[0]);
        assert_eq!((b.requests_per_unit, b.unit, b.burst), (7, Unit::Minute, 7));
        assert_eq!(b.name, "override_7_60:user_u1");
        let mut elsewhere = descriptor(&[("user", "u1")]);
        elsewhere.limit_override = Some((7, Unit::Minute));
        assert_eq!(plan(&config(), "unknown-domain", &[elsewhere], 1), [Step::NoLimit], "not in an unknown domain");
    }

    #[test]
    fn a_long_bucket_name_is_stored_by_its_digest_and_never_collides_with_a_short_one() {
        let long = "x".repeat(MAX_BUCKET_NAME);
        let steps = plan(&config(), "api", &[descriptor(&[("user", &long)])], 1);
        let name = &bucket(&steps[0]).name;
        assert_eq!(name.len(), 65, "{name}");
        assert!(name.starts_with('#') && name[1..].chars().all(|c| c.is_ascii_hexdigit()));
        let other = plan(&config(), "api", &[descriptor(&[("user", &format!("{long}y"))])], 1);
        assert_ne!(&bucket(&other[0]).name, name);
        // A short name that looks like a digest is hashed as well.
        let forged = stored_name(name.clone());
        assert!(forged.starts_with('#') && &forged != name);
        assert_eq!(stored_name("user_u1".into()), "user_u1");
        assert_eq!(stored_name("x".repeat(MAX_BUCKET_NAME)), "x".repeat(MAX_BUCKET_NAME));
    }
}
