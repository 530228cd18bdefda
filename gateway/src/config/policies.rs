//! `[[policy]]` tables to [`Policy`]s: the simple form (`limit`, `window`, `burst`) is a limit
//! named "requests"; `[[policy.limits]]` add more (tokens per minute, requests per day...).
//! `--limit`, `--window`, `--burst` apply to every limit counted in requests.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rl_protocol::bounds::{check_quota, MAX_CHECKALL_KEYS};

use super::resolve::resolve_concurrency;
use super::*;

/// Letters, digits, '-', '_', '.': safe in a Redis key and in a structured-field string.
fn is_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

pub(super) fn resolve_policies(
    files: Vec<PolicyFile>,
    overrides: &Overrides,
    tier_names: &BTreeSet<String>,
    envoy_only: bool,
) -> Result<Vec<Policy>, ConfigError> {
    let files = if files.is_empty() {
        match (overrides.limit, overrides.window) {
            (Some(limit), Some(window)) => vec![PolicyFile {
                name: DEFAULT_POLICY_NAME.into(),
                limit: Some(limit),
                window: Some(window),
                burst: overrides.burst,
                ..PolicyFile::default()
            }],
            // A gateway serving only Envoy's rate limit service needs no HTTP policy.
            (None, None) if envoy_only => return Ok(Vec::new()),
            _ => return Err(ConfigError::NoPolicy),
        }
    } else {
        files
    };
    let mut policies: Vec<Policy> = Vec::with_capacity(files.len());
    for mut f in files {
        let name = f.name.clone();
        let invalid = |reason: &str| ConfigError::invalid(format!("policy {name:?}"), reason.to_string());
        if !is_name(&name) {
            return Err(invalid("a policy name may hold only letters, digits, '-', '_' and '.'"));
        }
        if policies.iter().any(|p| p.name == name) {
            return Err(invalid("defined twice"));
        }
        let paths = f.paths.clone().unwrap_or_else(|| vec![DEFAULT_POLICY_PATH.to_string()]);
        if paths.is_empty() || paths.iter().any(|p| !p.starts_with('/')) {
            return Err(invalid("paths must be a non-empty list of paths starting with '/'"));
        }
        // The first policy with a path wins it, so a second one there would never apply.
        for path in &paths {
            if let Some(first) = policies.iter().find(|p| p.paths.contains(path)) {
                return Err(invalid(&format!(
                    "path {path:?} is already covered by policy {:?}, which would always win it; \
                     give it to one policy only",
                    first.name
                )));
            }
        }
        let llm = resolve_llm(&f).map_err(|reason| invalid(&reason))?;
        let shadow = f.shadow.unwrap_or(false);
        let concurrency = resolve_concurrency(f.max_concurrent, f.lease_ms).map_err(|reason| invalid(&reason))?;
        let mut tiers = BTreeMap::new();
        for t in std::mem::take(&mut f.tiers) {
            let tier = t.tier.clone();
            if !tier_names.contains(&tier) {
                return Err(invalid(&format!(
                    "[[policy.tier]] names tier {tier:?}, which [tiers] and [[tier]] do not"
                )));
            }
            // A tier's limits are its own: the flags (--limit...) change only the policy's.
            let own = PolicyFile {
                limit: t.limit,
                window: t.window,
                burst: t.burst,
                limits: t.limits,
                ..PolicyFile::default()
            };
            let limits = resolve_limits(own, llm.is_some(), &Overrides::default())
                .map_err(|reason| invalid(&format!("tier {tier:?}: {reason}")))?;
            // The tier's own max_concurrent, else the policy's (lease_ms likewise).
            let concurrency = match (t.max_concurrent, t.lease_ms) {
                (None, None) => concurrency,
                (max, lease_ms) => resolve_concurrency(
                    max.or(concurrency.map(|c| c.max)),
                    lease_ms.or(concurrency.map(|c| c.lease_ms)),
                )
                .map_err(|reason| invalid(&format!("tier {tier:?}: {reason}")))?,
            };
            check_concurrent_name(&limits, concurrency)
                .map_err(|reason| invalid(&format!("tier {tier:?}: {reason}")))?;
            let variant = Policy {
                name: name.clone(),
                paths: paths.clone(),
                limits,
                llm,
                tiers: BTreeMap::new(),
                concurrency,
                shadow,
            };
            if tiers.insert(tier.clone(), Arc::new(variant)).is_some() {
                return Err(invalid(&format!("tier {tier:?} has two [[policy.tier]] tables")));
            }
        }
        let limits = resolve_limits(f, llm.is_some(), overrides).map_err(|reason| invalid(&reason))?;
        check_concurrent_name(&limits, concurrency).map_err(|reason| invalid(&reason))?;
        policies.push(Policy { name, paths, limits, llm, tiers, concurrency, shadow });
    }
    Ok(policies)
}

/// The lease set of `max_concurrent` is the key `<policy>:concurrent`: no limit may share it.
fn check_concurrent_name(limits: &[Quota], concurrency: Option<Concurrency>) -> Result<(), String> {
    match concurrency.is_some() && limits.iter().any(|q| q.name == crate::lease::CONCURRENT_NAME) {
        true => Err("a limit named \"concurrent\" would share its key with max_concurrent's leases".into()),
        false => Ok(()),
    }
}

/// The LLM settings of a `kind = "openai"` policy (`None` for a plain one, which may not set them).
fn resolve_llm(f: &PolicyFile) -> Result<Option<Llm>, String> {
    let set = [
        ("chars_per_token", f.chars_per_token),
        ("default_max_tokens", f.default_max_tokens),
        ("max_response_bytes", f.max_response_bytes),
        ("max_event_bytes", f.max_event_bytes),
    ];
    if f.kind.unwrap_or_default() == PolicyKind::Plain {
        return match set.into_iter().find(|(_, v)| v.is_some()) {
            Some((key, _)) => Err(format!("{key} needs kind = \"openai\"")),
            None => Ok(None),
        };
    }
    let llm = Llm {
        chars_per_token: f.chars_per_token.unwrap_or(DEFAULT_CHARS_PER_TOKEN),
        default_max_tokens: f.default_max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        max_response_bytes: f.max_response_bytes.unwrap_or(DEFAULT_MAX_RESPONSE_BYTES),
        max_event_bytes: f.max_event_bytes.unwrap_or(DEFAULT_MAX_EVENT_BYTES),
    };
    if llm.chars_per_token == 0 || llm.max_response_bytes == 0 || llm.max_event_bytes == 0 {
        return Err("chars_per_token, max_response_bytes and max_event_bytes must be at least 1".into());
    }
    Ok(Some(llm))
}

fn resolve_limits(f: PolicyFile, llm: bool, overrides: &Overrides) -> Result<Vec<Quota>, String> {
    let mut declared = Vec::with_capacity(f.limits.len() + 1);
    match (f.limit, f.window) {
        (Some(limit), Some(window)) => declared.push(LimitFile {
            name: REQUESTS_LIMIT_NAME.into(),
            unit: Unit::Requests,
            limit,
            window,
            burst: f.burst,
        }),
        (None, None) if f.burst.is_none() => {}
        _ => return Err("limit and window go together (burst needs them too)".into()),
    }
    declared.extend(f.limits);
    if declared.is_empty() {
        return Err("needs a limit: limit and window, or [[policy.limits]] tables".into());
    }
    let mut limits: Vec<Quota> = Vec::with_capacity(declared.len());
    for l in declared {
        if !is_name(&l.name) {
            return Err(format!("limit {:?}: a limit name may hold only letters, digits, '-', '_' and '.'", l.name));
        }
        if limits.iter().any(|q| q.name == l.name) {
            return Err(format!("limit {:?} defined twice (limit/window on the policy is named \"requests\")", l.name));
        }
        if l.unit == Unit::Tokens && !llm {
            return Err(format!("limit {:?}: unit \"tokens\" needs kind = \"openai\" on the policy", l.name));
        }
        // Flags describe a whole quota of requests: --limit without --burst also resets the burst.
        let by_flags = l.unit == Unit::Requests;
        let limit = overrides.limit.filter(|_| by_flags).unwrap_or(l.limit);
        let window = overrides.window.filter(|_| by_flags).unwrap_or(l.window);
        let file_burst = if by_flags && overrides.limit.is_some() { None } else { l.burst };
        let burst = overrides.burst.filter(|_| by_flags).or(file_burst).unwrap_or(limit);
        // Exactly what the module would refuse (rl_protocol::bounds is the module's own rule):
        // a limit that starts must be one Redis takes.
        if let Err(why) = check_quota(limit, window, burst) {
            return Err(format!("limit {:?}: {why}", l.name));
        }
        limits.push(Quota { name: l.name, unit: l.unit, limit, window, burst });
    }
    if limits.len() > MAX_CHECKALL_KEYS {
        return Err(format!(
            "at most {MAX_CHECKALL_KEYS} limits per policy (RL.CHECKALL takes {MAX_CHECKALL_KEYS} keys)"
        ));
    }
    Ok(limits)
}
