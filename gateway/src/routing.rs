//! Which policy covers a request: the path is normalized first (percent-escapes decoded, empty
//! and `.` segments dropped, `..` applied), then matched against the policies' prefixes on
//! whole segments; the longest prefix wins. The model later receives that same normalized
//! path, so `/v1/%70redict` or `/x/../v1//predict` cannot slip past a policy for
//! `/v1/predict` and still reach it.

use std::sync::{Arc, RwLock};

use crate::config::{Policy, Settings, Tiers};

/// Where a request goes: its normalized path and the policy covering it, if any, with the
/// tiers of the same configuration (so a reload between steps cannot mix two of them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Decoded and normalized (see [`normalize_path`]); what the model receives.
    pub path: String,
    /// `None`: no policy covers the path, it is forwarded without a limit.
    pub policy: Option<Arc<Policy>>,
    pub tiers: Arc<Tiers>,
}

/// The policies, in the order of the config file, and the tiers.
#[derive(Clone, Debug)]
pub struct Routes {
    policies: Vec<Arc<Policy>>,
    tiers: Arc<Tiers>,
}

impl Routes {
    /// Policies with the default tiers (no key listed).
    pub fn new(policies: &[Policy]) -> Self {
        Routes::with_tiers(policies, Tiers::default())
    }

    pub fn with_tiers(policies: &[Policy], tiers: Tiers) -> Self {
        Routes { policies: policies.iter().cloned().map(Arc::new).collect(), tiers: Arc::new(tiers) }
    }

    pub fn from_settings(settings: &Settings) -> Self {
        Routes::with_tiers(&settings.policies, settings.tiers.clone())
    }

    /// The route of a request path as received; `None` when its escapes decode to bytes that
    /// are not UTF-8 (see [`normalize_path`]).
    pub fn route(&self, path: &str) -> Option<Route> {
        let path = normalize_path(path)?;
        let policy = self.policy_for_normal(&path).cloned();
        Some(Route { path, policy, tiers: self.tiers.clone() })
    }

    /// The policy for a request path as received: [`Routes::policy_for_normal`] of its
    /// normalized form.
    pub fn policy_for(&self, path: &str) -> Option<&Arc<Policy>> {
        self.policy_for_normal(&normalize_path(path)?)
    }

    /// The policy with the longest prefix covering `path` (the first in the file on a tie),
    /// or `None`. `path` must already be normalized: it is not decoded again (`%2570` stays
    /// `%70`).
    pub fn policy_for_normal(&self, path: &str) -> Option<&Arc<Policy>> {
        let mut best: Option<(&Arc<Policy>, usize)> = None;
        for policy in &self.policies {
            if let Some(len) = longest_match(policy, path) {
                if best.is_none_or(|(_, b)| len > b) {
                    best = Some((policy, len));
                }
            }
        }
        best.map(|(p, _)| p)
    }
}

/// The routes in force, replaced whole on a reload (SIGHUP): a request reads one snapshot.
#[derive(Debug)]
pub struct LiveRoutes(RwLock<Arc<Routes>>);

impl LiveRoutes {
    pub fn new(routes: Routes) -> Self {
        LiveRoutes(RwLock::new(Arc::new(routes)))
    }

    /// The current snapshot (a poisoned lock still holds a whole snapshot: it is used).
    pub fn current(&self) -> Arc<Routes> {
        self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Puts `routes` in force for every request that starts from now on.
    pub fn replace(&self, routes: Routes) {
        *self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(routes);
    }
}

/// The length of the longest of the policy's prefixes that covers `path`, if any.
fn longest_match(policy: &Policy, path: &str) -> Option<usize> {
    policy.paths.iter().filter(|p| path_under(path, p)).map(|p| p.len()).max()
}

/// `path` is under `prefix` when it equals it, or continues it at a segment boundary:
/// `/v1` covers `/v1` and `/v1/predict` but not `/v10`; `/` covers everything.
fn path_under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The path with percent-escapes decoded, empty and `.` segments dropped and `..` applied.
/// A trailing `/` is kept; the result always starts with `/`. `None` when the decoded bytes
/// are not UTF-8 (`/%ff`): replacing them would make distinct paths one, so such a request
/// is refused.
pub fn normalize_path(path: &str) -> Option<String> {
    if already_normal(path) {
        return Some(path.to_string());
    }
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |at: usize| bytes.get(at).and_then(|c| (*c as char).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                decoded.push((hi * 16 + lo) as u8);
                i += 3;
            }
            _ => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8(decoded).ok()?;
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut normal = String::with_capacity(path.len());
    for segment in &segments {
        normal.push('/');
        normal.push_str(segment);
    }
    if normal.is_empty() || (path.ends_with('/') && !segments.is_empty()) {
        normal.push('/');
    }
    Some(normal)
}

/// Whether [`normalize_path`] would give `path` back unchanged: it starts with `/`, has no
/// escape, and no empty, `.` or `..` segment (but for the one after a trailing `/`). Almost
/// every request's path is; it then skips the decoding and the segment list.
fn already_normal(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else { return false };
    if rest.is_empty() {
        return true;
    }
    if path.contains('%') {
        return false;
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    rest.split('/').all(|segment| !matches!(segment, "" | "." | ".."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, paths: &[&str], burst: u64) -> Policy {
        Policy::simple(name, paths, 9, 1, burst)
    }

    fn name(routes: &Routes, path: &str) -> Option<String> {
        routes.policy_for(path).map(|p| p.name.clone())
    }

    #[test]
    fn longest_prefix_wins_and_segments_matter() {
        let routes = Routes::new(&[policy("all", &["/"], 100), policy("predict", &["/v1/predict"], 5)]);
        assert_eq!(name(&routes, "/v1/predict").as_deref(), Some("predict"));
        assert_eq!(name(&routes, "/v1/predict/batch").as_deref(), Some("predict"));
        assert_eq!(name(&routes, "/v1/predictions").as_deref(), Some("all"));
        assert_eq!(name(&routes, "/").as_deref(), Some("all"));
        assert_eq!(routes.policy_for("/v1/predict").unwrap().limits[0].burst, 5);
        assert_eq!(routes.policy_for("/other").unwrap().limits[0].burst, 100);
    }

    #[test]
    fn the_first_policy_wins_a_tie() {
        let routes = Routes::new(&[policy("a", &["/v1"], 1), policy("b", &["/v1"], 1)]);
        assert_eq!(name(&routes, "/v1/x").as_deref(), Some("a"));
    }

    #[test]
    fn paths_are_matched_normalized() {
        let normal = |path| normalize_path(path).unwrap();
        assert_eq!(normal("/v1/%70redict"), "/v1/predict");
        assert_eq!(normal("/x/../v1//predict/"), "/v1/predict/");
        assert_eq!(normal("/v1%2Fpredict"), "/v1/predict");
        assert_eq!(normal("/../.."), "/");
        assert_eq!(normal("/a/%zz"), "/a/%zz");
        assert_eq!(normal("/caf%C3%A9"), "/caf\u{e9}");
        for not_utf8 in ["/v1/echo/%ff%fe", "/%C3", "/%80/x", "/a%C3%28"] {
            assert_eq!(normalize_path(not_utf8), None, "{not_utf8}: not made into U+FFFD");
        }
        for same in ["/", "/v1", "/v1/", "/v1/predict", "/a.b/..c/.d/"] {
            assert!(already_normal(same), "{same}");
            assert_eq!(normal(same), same);
        }
        for changed in ["", "v1", "//", "/v1//", "/./", "/v1/.", "/v1/../x", "/%70", "/a//b"] {
            assert!(!already_normal(changed), "{changed}");
        }
        let routes = Routes::new(&[policy("all", &["/"], 9), policy("p", &["/v1/predict"], 1)]);
        for sneaky in ["/v1/%70redict", "/x/../v1/predict", "//v1//predict", "/v1/./predict", "/V1/../v1/predict"] {
            assert_eq!(name(&routes, sneaky).as_deref(), Some("p"), "{sneaky}");
        }
    }

    #[test]
    fn a_route_carries_the_normalized_path_it_was_chosen_on() {
        let routes = Routes::new(&[policy("p", &["/v1/predict"], 1)]);
        let route = routes.route("/v1/%2570/../predict").unwrap();
        assert_eq!(route.path, "/v1/predict");
        assert_eq!(route.policy.as_ref().map(|p| p.name.as_str()), Some("p"));
        // Decoded once only: `%2570` is the segment `%70`, not `p`.
        let decoded_once = routes.route("/v1/%2570redict").unwrap();
        assert_eq!((decoded_once.path.as_str(), decoded_once.policy), ("/v1/%70redict", None));
    }

    #[test]
    fn uncovered_paths_have_no_policy() {
        let routes = Routes::new(&[policy("p", &["/v1"], 1)]);
        assert!(routes.policy_for("/v10").is_none());
        assert!(routes.policy_for("/v1").is_some());
    }
}
