//! The bodies of the gateway's fuzz targets (`fuzz/`, `make fuzz`), here so that the stable
//! suite runs them too (`gateway/tests/fuzz_smoke.rs`). Each takes arbitrary bytes; a panic is
//! a crash of the gateway (one request's task, or the start-up) found.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;

use hyper::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{FileConfig, Llm, Overrides, Settings};
use crate::identity::{api_key, client_ip, IpNet};
use crate::llm::request::read_request;
use crate::llm::settle::usage_total_tokens;
use crate::llm::stream::read_stream;
use crate::rls::config::RlsConfig;
use crate::rls::plan::{plan, Descriptor, Step, MAX_BUCKET_NAME};

/// `gateway.toml` as text: parsed, then resolved with no flags and no environment. Errors
/// are fine (they stop the start-up with a message); a panic is not.
pub fn config_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(file) = FileConfig::parse(&text) {
        let _ = Settings::resolve(file, &Overrides::default(), |_| None);
    }
}

/// Request headers (`name: value` lines) through the API-key and client-address extraction,
/// behind a proxy that is trusted and one that is not.
pub fn identity(data: &[u8]) {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(name, value);
        }
    }
    let names = ["x-api-key".to_string(), "authorization".to_string()];
    if let Ok(Some(key)) = api_key(&headers, &names) {
        assert!(!key.is_empty(), "an empty API key is no key");
    }
    let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 40000);
    let trusted: Vec<IpNet> = ["10.0.0.0/8", "::/0"].iter().filter_map(|n| n.parse().ok()).collect();
    let _ = client_ip(&headers, peer, &trusted);
    assert_eq!(client_ip(&headers, peer, &[]), Ok(peer.ip()), "an untrusted peer is itself");
}

/// An LLM request body and an LLM answer: the request reader (estimate, streamed or not), the
/// usage of a plain answer, and the same bytes as a stream cut at three places: the usage and
/// the bytes forwarded do not depend on where the network cut it, and everything but the
/// usage chunk the gateway itself asked for is forwarded as it came.
pub fn llm_answer(data: &[u8]) {
    let llm = Llm { chars_per_token: 4, default_max_tokens: 256, max_response_bytes: 1 << 20, max_event_bytes: 4096 };
    let _ = read_request(data, &llm);
    let _ = usage_total_tokens(data);
    let cuts: Vec<usize> = data.iter().take(3).map(|&b| usize::from(b) % (data.len() + 1)).collect();
    let mut points: Vec<usize> = cuts.clone();
    points.sort_unstable();
    let mut frames: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    for point in points {
        frames.push(&data[start..point]);
        start = point;
    }
    frames.push(&data[start..]);
    let whole = read_stream(&[data], 1 << 20, false);
    let cut = read_stream(&frames, 1 << 20, false);
    assert_eq!(whole, cut, "the same stream, cut elsewhere, reads the same");
    assert_eq!(whole.1, data, "without stripping, every byte is forwarded as it came");
    let _ = read_stream(&frames, 64, true);
}

/// Envoy's descriptors (lines of `key=value` entries separated by `,`, an optional
/// `#hits` and `-` for a refund) planned against a configuration with every kind of
/// descriptor: never a panic, one step per descriptor, every bucket name bounded.
pub fn rls_descriptors(data: &[u8]) {
    const CONFIG: &str = "\
domain: d
descriptors:
  - key: k
    rate_limit: {unit: second, requests_per_unit: 10}
    descriptors:
      - key: sub
        value: \"a*\"
        rate_limit: {unit: minute, requests_per_unit: 5, name: sub, replaces: [{name: top}]}
  - key: top
    rate_limit: {unit: hour, requests_per_unit: 100, name: top}
  - key: s
    shadow_mode: true
    rate_limit: {unit: day, requests_per_unit: 1}
  - key: u
    rate_limit: {unlimited: true}
  - key: b
    rate_limit: {unit: second, requests_per_unit: 0}
";
    static FIXED: OnceLock<Option<RlsConfig>> = OnceLock::new();
    let Some(config) = FIXED.get_or_init(|| RlsConfig::parse([("d.yaml", CONFIG)]).ok()) else {
        panic!("the fixed configuration loads")
    };
    let text = String::from_utf8_lossy(data);
    let descriptors: Vec<Descriptor> = text
        .lines()
        .take(64)
        .map(|line| {
            let (line, negative) = match line.strip_prefix('-') {
                Some(rest) => (rest, true),
                None => (line, false),
            };
            let (entries, hits) = match line.split_once('#') {
                Some((entries, hits)) => (entries, hits.parse().ok()),
                None => (line, None),
            };
            Descriptor {
                entries: entries
                    .split(',')
                    .take(64)
                    .map(|e| e.split_once('=').map_or((e.to_string(), String::new()), |(k, v)| (k.into(), v.into())))
                    .collect(),
                hits_addend: hits,
                negative,
                limit_override: None,
            }
        })
        .collect();
    let steps = plan(config, "d", &descriptors, u32::from(data.first().copied().unwrap_or(0)));
    assert_eq!(steps.len(), descriptors.len());
    for step in &steps {
        if let Step::Banned(b) | Step::Charge(b) | Step::Shadow(b) | Step::Refund(b) | Step::Force(b) = step {
            assert!(b.name.len() <= MAX_BUCKET_NAME, "a bucket name of {} bytes", b.name.len());
        }
    }
    // The same text as a configuration file of its own: refused or loaded, never a panic.
    let _ = RlsConfig::parse([("fuzz.yaml", text.as_ref())]);
}
