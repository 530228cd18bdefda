//! `[tiers]` and `[[tier]]` to [`Tiers`]: tier names, and the HMAC digest of each listed API
//! key (what `gateway hash-key` prints; raw keys never appear in the file).

use std::collections::BTreeSet;

use super::*;

/// The tiers, and the names a `[[policy.tier]]` may refer to.
pub(super) fn resolve_tiers(file: TiersFile, list: Vec<TierFile>) -> Result<(Tiers, BTreeSet<String>), ConfigError> {
    let default = file.default.unwrap_or_else(|| DEFAULT_TIER.to_string());
    let ip = file.ip.unwrap_or_else(|| DEFAULT_IP_TIER.to_string());
    let mut names: BTreeSet<String> = [default.clone(), ip.clone()].into_iter().collect();
    let mut keys = HashMap::new();
    let mut declared = BTreeSet::new();
    let mut keep_percent = HashMap::new();
    for tier in list {
        let invalid = |reason: String| ConfigError::invalid(format!("tier {:?}", tier.name), reason);
        if tier.name.is_empty() || !declared.insert(tier.name.clone()) {
            return Err(invalid("a tier needs a name, once".into()));
        }
        for key in &tier.keys {
            if key.len() != 32 || !key.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                return Err(invalid(format!(
                    "{key:?} is not a key digest (32 lower-case hex digits, from `gateway hash-key`)"
                )));
            }
            if let Some(other) = keys.insert(key.clone(), tier.name.clone()) {
                return Err(invalid(format!("key {key} is also in tier {other:?}")));
            }
        }
        if let Some(percent) = tier.keep_percent {
            if percent > 100 {
                return Err(invalid("keep_percent must be between 0 and 100".into()));
            }
            keep_percent.insert(tier.name.clone(), percent);
        }
        names.insert(tier.name);
    }
    Ok((Tiers { default, ip, keys, keep_percent }, names))
}
