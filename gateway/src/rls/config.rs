//! envoyproxy/ratelimit's YAML configuration, read as it is, and the lookup of a request's
//! descriptor in it, with the reference service's matching rules:
//!
//! - one file is one `domain` with a tree of `descriptors`; a node is a `key` and an optional
//!   `value`, with an optional `rate_limit` and child `descriptors`;
//! - an entry `(key, value)` of a request's descriptor matches, at each level, the node with
//!   that key and value, else a node whose value is a wildcard pattern (`*` matching any run of
//!   characters, anywhere in the value) in the order of the file, else the node with that key
//!   and no value (a default: one bucket per value);
//! - the limit is that of the node matched by the descriptor's *last* entry; a descriptor with
//!   more entries than the tree has levels, or ending on a node without a limit, has none;
//! - `rate_limit.replaces` names limits (by `rate_limit.name`) that are not applied when the
//!   replacing one applies to the same request.
//!
//! Our extensions live under a descriptor's `metadata.ml_api_rate_limiter` (the reference
//! service checks every other key and refuses unknown ones, but never looks inside
//! `metadata`): `burst` (the GCRA bucket, default `requests_per_unit`).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

/// The reference service's units, as windows in seconds (a month is 30 days, a year 365).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    fn parse(text: &str) -> Option<Unit> {
        Some(match text.to_ascii_uppercase().as_str() {
            "SECOND" => Unit::Second,
            "MINUTE" => Unit::Minute,
            "HOUR" => Unit::Hour,
            "DAY" => Unit::Day,
            "WEEK" => Unit::Week,
            "MONTH" => Unit::Month,
            "YEAR" => Unit::Year,
            _ => return None,
        })
    }

    /// The window of the unit, in seconds.
    pub fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3600,
            Unit::Day => 86_400,
            Unit::Week => 7 * 86_400,
            Unit::Month => 30 * 86_400,
            Unit::Year => 365 * 86_400,
        }
    }
}

/// What applies to a descriptor that matched a node with a `rate_limit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescriptorLimit {
    /// `domain.key_value.key...`: the node's place in the tree, as the reference's stats name it.
    pub path: String,
    pub requests_per_unit: u64,
    /// `None` for `unlimited: true`.
    pub unit: Option<Unit>,
    /// `rate_limit.name`, which other limits' `replaces` refer to.
    pub name: Option<String>,
    pub replaces: Vec<String>,
    /// `shadow_mode: true`: evaluated and counted, but never refuses.
    pub shadow_mode: bool,
    /// `detailed_metric: true`: counted per descriptor value, not per node.
    pub detailed_metric: bool,
    /// `quota_mode: true`: a request is refused by quota limits only when all of them refuse.
    pub quota_mode: bool,
    /// `metadata.ml_api_rate_limiter.burst`, else `requests_per_unit`.
    pub burst: u64,
}

impl DescriptorLimit {
    pub fn unlimited(&self) -> bool {
        self.unit.is_none()
    }
}

/// A configuration file that cannot be used: the file and what is wrong, in words a user acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

// The file as written. Unknown keys are refused, as the reference service refuses them: a
// misspelled `requests_per_unit` must not silently mean "no limit".
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlRoot {
    #[serde(default)]
    domain: String,
    #[serde(default)]
    descriptors: Vec<YamlDescriptor>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlDescriptor {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    rate_limit: Option<YamlRateLimit>,
    #[serde(default)]
    descriptors: Vec<YamlDescriptor>,
    #[serde(default)]
    shadow_mode: bool,
    #[serde(default)]
    quota_mode: bool,
    #[serde(default)]
    detailed_metric: bool,
    // Only names the reference's statistics; accepted so that its files load.
    #[serde(default)]
    #[allow(dead_code)]
    value_to_metric: bool,
    #[serde(default)]
    share_threshold: bool,
    metadata: Option<serde_norway::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlRateLimit {
    #[serde(default)]
    requests_per_unit: u32,
    #[serde(default)]
    unit: String,
    #[serde(default)]
    unlimited: bool,
    #[serde(default)]
    name: String,
    #[serde(default)]
    replaces: Vec<YamlReplaces>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlReplaces {
    #[serde(default)]
    name: String,
}

/// A node of a domain's tree.
#[derive(Debug, Default)]
struct Node {
    /// By `key` or `key_value` (the reference's composite key).
    children: HashMap<String, Node>,
    /// The children whose value holds a `*`, in the order of the file: the composite key
    /// and the pattern split at each `*`.
    wildcards: Vec<(String, Vec<String>)>,
    limit: Option<DescriptorLimit>,
    /// `share_threshold: true` on a wildcard node: every value it matches shares one bucket.
    share_threshold: bool,
}

/// Every domain's tree.
#[derive(Debug, Default)]
pub struct RlsConfig {
    domains: HashMap<String, Node>,
}

/// The limit a descriptor matched, and its bucket's name within the domain.
#[derive(Debug, PartialEq, Eq)]
pub struct Matched<'a> {
    pub limit: &'a DescriptorLimit,
    /// The descriptor's entries as `key_value` (or `key` for an empty value) joined by `.`;
    /// under a `share_threshold` wildcard, the pattern in place of the value.
    pub bucket: String,
}

impl RlsConfig {
    /// Reads every `*.yaml` / `*.yml` file of a directory (in name order), or one file.
    pub fn load(path: &Path) -> Result<RlsConfig, ConfigError> {
        let files = if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
            let mut files: Vec<_> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(ConfigError(format!("{}: no .yaml or .yml file in the directory", path.display())));
            }
            files
        } else {
            vec![path.to_path_buf()]
        };
        let mut texts = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|e| ConfigError(format!("{}: {e}", file.display())))?;
            texts.push((file.display().to_string(), text));
        }
        RlsConfig::parse(texts.iter().map(|(name, text)| (name.as_str(), text.as_str())))
    }

    /// Builds the configuration from `(file name, YAML text)` pairs, one domain each.
    pub fn parse<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<RlsConfig, ConfigError> {
        let mut config = RlsConfig::default();
        for (name, text) in files {
            let err = |what: String| ConfigError(format!("{name}: {what}"));
            let root: YamlRoot = serde_norway::from_str(text).map_err(|e| err(format!("config error, {e}")))?;
            if root.domain.is_empty() {
                return Err(err("config file cannot have empty domain".into()));
            }
            if config.domains.contains_key(&root.domain) {
                return Err(err(format!("duplicate domain '{}' in config file", root.domain)));
            }
            let mut node = Node::default();
            load_descriptors(&mut node, &root.domain, &root.descriptors, &err)?;
            config.domains.insert(root.domain, node);
        }
        Ok(config)
    }

    /// The domains the files define.
    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.domains.keys().map(String::as_str)
    }

    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    /// The limit for a descriptor `entries` (key, value pairs) of `domain`, if any.
    pub fn lookup<'a, K: AsRef<str>, V: AsRef<str>>(&'a self, domain: &str, entries: &[(K, V)]) -> Option<Matched<'a>> {
        let mut node = self.domains.get(domain)?;
        let mut found = None;
        let mut shared: Vec<Option<String>> = Vec::new();
        for (i, (key, value)) in entries.iter().enumerate() {
            let (key, value) = (key.as_ref(), value.as_ref());
            let composite = format!("{key}_{value}");
            let mut pattern = None;
            let mut next = node.children.get(&composite);
            if next.is_none() {
                if let Some((wild_key, _)) = node.wildcards.iter().find(|(_, parts)| wildcard_match(parts, &composite))
                {
                    next = node.children.get(wild_key);
                    pattern = next.filter(|n| n.share_threshold).map(|_| wild_key.clone());
                }
            }
            let next = match next.or_else(|| node.children.get(key)) {
                Some(next) => next,
                None => break,
            };
            shared.push(pattern);
            if i + 1 == entries.len() {
                found = next.limit.as_ref();
            }
            if next.children.is_empty() {
                break;
            }
            node = next;
        }
        let limit = found?;
        let bucket = entries
            .iter()
            .enumerate()
            .map(|(i, (key, value))| match shared.get(i) {
                Some(Some(pattern)) => pattern.clone(),
                _ if value.as_ref().is_empty() => key.as_ref().to_string(),
                _ => format!("{}_{}", key.as_ref(), value.as_ref()),
            })
            .collect::<Vec<_>>()
            .join(".");
        Some(Matched { limit, bucket })
    }
}

fn load_descriptors(
    parent: &mut Node,
    parent_path: &str,
    descriptors: &[YamlDescriptor],
    err: &impl Fn(String) -> ConfigError,
) -> Result<(), ConfigError> {
    for d in descriptors {
        if d.key.is_empty() {
            return Err(err("descriptor has empty key".into()));
        }
        let composite = if d.value.is_empty() { d.key.clone() } else { format!("{}_{}", d.key, d.value) };
        let path = format!("{parent_path}.{composite}");
        if parent.children.contains_key(&composite) {
            return Err(err(format!("duplicate descriptor composite key '{path}'")));
        }
        if d.share_threshold && !composite.contains('*') {
            return Err(err(format!(
                "share_threshold can only be used with wildcard values (containing '*'), but found key '{composite}'"
            )));
        }
        let burst = extension_burst(d.metadata.as_ref()).map_err(|why| err(format!("{path}: {why}")))?;
        let limit = match &d.rate_limit {
            None => None,
            Some(r) => {
                let unit = Unit::parse(&r.unit);
                if r.unlimited && unit.is_some() {
                    return Err(err("should not specify rate limit unit when unlimited".into()));
                }
                if !r.unlimited && unit.is_none() {
                    return Err(err(format!("invalid rate limit unit '{}'", r.unit)));
                }
                if r.replaces.iter().any(|x| x.name.is_empty()) {
                    return Err(err("should not have an empty replaces entry".into()));
                }
                if !r.name.is_empty() && r.replaces.iter().any(|x| x.name == r.name) {
                    return Err(err("replaces should not contain name of same descriptor".into()));
                }
                let requests_per_unit = u64::from(r.requests_per_unit);
                // A bucket the module would refuse on every call (a burst above its largest
                // integer, or one that takes over 100 years to refill) is refused here, at start.
                if let (false, Some(unit), Some(burst)) = (r.unlimited || requests_per_unit == 0, unit, burst) {
                    if let Err(why) = rl_protocol::bounds::check_quota(requests_per_unit, unit.seconds(), burst) {
                        return Err(err(format!("{path}: metadata.ml_api_rate_limiter.burst {burst}: {why}")));
                    }
                }
                Some(DescriptorLimit {
                    path: path.clone(),
                    requests_per_unit,
                    unit: if r.unlimited { None } else { unit },
                    name: (!r.name.is_empty()).then(|| r.name.clone()),
                    replaces: r.replaces.iter().map(|x| x.name.clone()).collect(),
                    shadow_mode: d.shadow_mode,
                    detailed_metric: d.detailed_metric,
                    quota_mode: d.quota_mode,
                    burst: burst.unwrap_or(requests_per_unit),
                })
            }
        };
        let mut node = Node { limit, share_threshold: d.share_threshold, ..Node::default() };
        load_descriptors(&mut node, &path, &d.descriptors, err)?;
        if composite.contains('*') {
            parent.wildcards.push((composite.clone(), composite.split('*').map(str::to_string).collect()));
        }
        parent.children.insert(composite, node);
    }
    Ok(())
}

/// `metadata.ml_api_rate_limiter.burst`, if given: a positive integer.
fn extension_burst(metadata: Option<&serde_norway::Value>) -> Result<Option<u64>, String> {
    let Some(ours) = metadata.and_then(|m| m.get("ml_api_rate_limiter")) else { return Ok(None) };
    let serde_norway::Value::Mapping(fields) = ours else {
        return Err("metadata.ml_api_rate_limiter must be a mapping".into());
    };
    let mut burst = None;
    for (name, value) in fields {
        match name.as_str() {
            Some("burst") => match value.as_u64().filter(|&b| b > 0) {
                Some(b) => burst = Some(b),
                None => return Err("metadata.ml_api_rate_limiter.burst must be a positive integer".into()),
            },
            _ => {
                let name = name.as_str().unwrap_or("(not a string)");
                return Err(format!("metadata.ml_api_rate_limiter: unknown field \"{name}\" (known: burst)"));
            }
        }
    }
    Ok(burst)
}

/// Whether `value` matches the pattern split at its `*`s: each `*` any run of characters.
fn wildcard_match(parts: &[String], value: &str) -> bool {
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else { return false };
    if parts.len() == 1 {
        return first == value;
    }
    if value.len() < parts.iter().map(String::len).sum::<usize>() {
        return false;
    }
    let Some(rest) = value.strip_prefix(first.as_str()) else { return false };
    let Some(mut middle) = rest.strip_suffix(last.as_str()) else { return false };
    for part in &parts[1..parts.len() - 1] {
        match middle.find(part.as_str()) {
            Some(at) => middle = &middle[at + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests;
