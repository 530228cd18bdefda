//! Who is asking: an API key from a configured header, else the client's IP address (IPv6
//! callers grouped by network).
//!
//! `X-Forwarded-For` is read only when the TCP peer is a trusted proxy; then the client is the
//! right-most address in the chain that is not itself a trusted proxy. The identity is turned
//! into a keyed hash (HMAC-SHA256 with the configured secret) before it goes into a Redis key
//! name, so neither raw API keys nor addresses are stored.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use hyper::header::{HeaderMap, AUTHORIZATION, CONNECTION};
use ring::hmac;

/// Hex digits of the HMAC kept in the key name (128 bits).
const HASH_HEX_LEN: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The API key's bytes, as sent.
    ApiKey(Vec<u8>),
    Ip(IpAddr),
}

impl Identity {
    /// The kind, for logs (the value itself is never logged).
    pub fn kind(&self) -> &'static str {
        match self {
            Identity::ApiKey(_) => "api_key",
            Identity::Ip(_) => "ip",
        }
    }
}

/// An IP network (`10.0.0.0/8`, `::1/128`, or a single address).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), 32, self.prefix) == masked(u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), 128, self.prefix) == masked(u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

fn masked(bits: u128, width: u8, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        bits >> (width - prefix)
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) compare as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl FromStr for IpNet {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = canonical(addr.trim().parse::<IpAddr>().map_err(|_| ())?);
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| ())?,
            None => width,
        };
        if prefix > width {
            return Err(());
        }
        Ok(IpNet { addr, prefix })
    }
}

impl fmt::Debug for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// `X-Forwarded-For` from a trusted proxy is not a list of addresses.
#[derive(Debug, PartialEq, Eq)]
pub struct BadForwardedFor;

/// Why a request cannot be identified (answered with `400`, before any quota is spent).
#[derive(Debug, PartialEq, Eq)]
pub enum BadIdentity {
    /// Two different API keys (in two headers, or two values of one header): which one would
    /// be charged and which one would the model authenticate?
    ConflictingKeys,
    /// `Connection` names an API-key header: the gateway would charge that key and then strip
    /// the header before forwarding.
    KeyHeaderIsHopByHop,
    ForwardedFor,
}

impl BadIdentity {
    pub fn message(&self) -> &'static str {
        match self {
            BadIdentity::ConflictingKeys => "The request carries more than one API key; send exactly one.",
            BadIdentity::KeyHeaderIsHopByHop => "The Connection header must not name the API key header.",
            BadIdentity::ForwardedFor => "Malformed X-Forwarded-For header.",
        }
    }
}

/// The request's API key: the one key carried by the configured headers (`authorization`
/// must hold `Bearer <key>`; other schemes are skipped). The same key sent twice is fine; two
/// different keys, or a `Connection` header naming a key header, are refused.
pub fn api_key(headers: &HeaderMap, header_names: &[String]) -> Result<Option<Vec<u8>>, BadIdentity> {
    let hop_by_hop = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|token| header_names.iter().any(|name| name.as_bytes().eq_ignore_ascii_case(token)));
    if hop_by_hop {
        return Err(BadIdentity::KeyHeaderIsHopByHop);
    }
    let mut found: Option<&[u8]> = None;
    for name in header_names {
        for value in headers.get_all(name.as_str()) {
            let bytes = value.as_bytes();
            let key = if name.as_str() == AUTHORIZATION.as_str() { bearer_token(bytes) } else { Some(bytes) };
            if let Some(key) = key.map(<[u8]>::trim_ascii).filter(|k| !k.is_empty()) {
                match found {
                    Some(first) if first != key => return Err(BadIdentity::ConflictingKeys),
                    _ => found = Some(key),
                }
            }
        }
    }
    Ok(found.map(<[u8]>::to_vec))
}

fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at_checked(6)?;
    (scheme.eq_ignore_ascii_case(b"bearer") && rest.first().is_some_and(|b| *b == b' ')).then_some(rest)
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the right-most
/// untrusted hop of `X-Forwarded-For` (the left-most entry when every hop is trusted).
pub fn client_ip(headers: &HeaderMap, peer: SocketAddr, trusted: &[IpNet]) -> Result<IpAddr, BadForwardedFor> {
    let peer_ip = canonical(peer.ip());
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer_ip) {
        return Ok(peer_ip);
    }
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let text = value.to_str().map_err(|_| BadForwardedFor)?;
        for entry in text.split(',') {
            hops.push(entry.trim());
        }
    }
    let mut client = peer_ip;
    for hop in hops.iter().rev() {
        let ip = parse_hop(hop).ok_or(BadForwardedFor)?;
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    Ok(client)
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1` or `[2001:db8::1]:80`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    hop.parse::<SocketAddr>().ok().map(|s| canonical(s.ip()))
}

/// Who is asking, once the request's API key (if any) is known (see [`api_key`]): the key,
/// else the client IP ([`client_ip`]), IPv6 addresses cut to their `/ipv6_prefix` network
/// ([`bucket_ip`]).
pub fn identify(
    api_key: Option<Vec<u8>>,
    headers: &HeaderMap,
    peer: SocketAddr,
    trusted: &[IpNet],
    ipv6_prefix: u8,
) -> Result<Identity, BadIdentity> {
    match api_key {
        Some(key) => Ok(Identity::ApiKey(key)),
        None => match client_ip(headers, peer, trusted) {
            Ok(ip) => Ok(Identity::Ip(bucket_ip(ip, ipv6_prefix))),
            Err(BadForwardedFor) => Err(BadIdentity::ForwardedFor),
        },
    }
}

/// The address a caller without a key is limited by: IPv4 addresses as they are, IPv6 ones
/// cut to their first `v6_prefix` bits (one holder of a /64 has 2^64 addresses, not 2^64
/// budgets).
pub fn bucket_ip(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(v6_prefix.min(128))).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
        v4 => v4,
    }
}

/// Whether the TCP peer is one of the trusted proxies.
pub fn is_trusted(peer: SocketAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(peer.ip()))
}

/// The hashing key, built once from the configured secret.
#[derive(Clone)]
pub struct Hasher(hmac::Key);

impl Hasher {
    pub fn new(secret: &[u8]) -> Self {
        Hasher(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// 32 hex digits of `HMAC-SHA256(secret, kind || 0 || value)`: the same identity always
    /// maps to the same key on every gateway sharing the secret, and the key name reveals
    /// nothing about the API key or address.
    pub fn hash(&self, identity: &Identity) -> String {
        let mut ctx = hmac::Context::with_key(&self.0);
        match identity {
            Identity::ApiKey(key) => {
                ctx.update(b"key\0");
                ctx.update(key);
            }
            Identity::Ip(ip) => {
                ctx.update(b"ip\0");
                // The address as text, written on the stack (every keyless request hashes one).
                let mut text = [0u8; 64];
                let len = {
                    let mut cursor = std::io::Cursor::new(&mut text[..]);
                    // An IP address's text (at most 45 bytes) always fits in 64.
                    let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{ip}"));
                    usize::try_from(cursor.position()).unwrap_or(0)
                };
                ctx.update(text.get(..len).unwrap_or_default());
            }
        }
        let tag = ctx.sign();
        // Hex digits by table: formatting each byte with `format!` cost more than the HMAC.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut hex = String::with_capacity(HASH_HEX_LEN);
        for &byte in tag.as_ref().iter().take(HASH_HEX_LEN / 2) {
            hex.push(char::from(HEX[usize::from(byte >> 4)]));
            hex.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        hex
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn names() -> Vec<String> {
        vec!["authorization".into(), "x-api-key".into()]
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 4000)
    }

    #[test]
    fn bearer_then_x_api_key() {
        let key = |k: &[u8]| Ok(Some(k.to_vec()));
        assert_eq!(api_key(&headers(&[("authorization", "Bearer abc")]), &names()), key(b"abc"));
        assert_eq!(api_key(&headers(&[("authorization", "bearer  abc ")]), &names()), key(b"abc"));
        assert_eq!(api_key(&headers(&[("x-api-key", "k1")]), &names()), key(b"k1"));
        let both = headers(&[("authorization", "Basic dXNlcg=="), ("x-api-key", "k2")]);
        assert_eq!(api_key(&both, &names()), key(b"k2"));
        assert_eq!(api_key(&headers(&[("authorization", "Bearer ")]), &names()), Ok(None));
        assert_eq!(api_key(&headers(&[("authorization", "Bearerabc")]), &names()), Ok(None));
        assert_eq!(api_key(&headers(&[]), &names()), Ok(None));
        let same = headers(&[("authorization", "Bearer k"), ("x-api-key", "k"), ("x-api-key", " k")]);
        assert_eq!(api_key(&same, &names()), key(b"k"));
    }

    #[test]
    fn two_different_keys_are_refused() {
        let two = headers(&[("authorization", "Bearer victim"), ("x-api-key", "mine")]);
        assert_eq!(api_key(&two, &names()), Err(BadIdentity::ConflictingKeys));
        let repeated = headers(&[("x-api-key", "a"), ("x-api-key", "b")]);
        assert_eq!(api_key(&repeated, &names()), Err(BadIdentity::ConflictingKeys));
        let bearers = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert_eq!(api_key(&bearers, &names()), Err(BadIdentity::ConflictingKeys));
    }

    #[test]
    fn the_key_identifies_else_the_bucketed_client_ip() {
        let h = headers(&[("x-forwarded-for", "2001:db8:1:2:3:4:5:6")]);
        let key = identify(Some(b"k".to_vec()), &h, peer("10.0.0.1"), &nets(&["10.0.0.0/8"]), 64);
        assert_eq!(key, Ok(Identity::ApiKey(b"k".to_vec())));
        let ip = identify(None, &h, peer("10.0.0.1"), &nets(&["10.0.0.0/8"]), 64);
        assert_eq!(ip, Ok(Identity::Ip("2001:db8:1:2::".parse().unwrap())));
        let untrusted = identify(None, &h, peer("203.0.113.9"), &[], 64);
        assert_eq!(untrusted, Ok(Identity::Ip("203.0.113.9".parse().unwrap())));
        let junk = headers(&[("x-forwarded-for", "nonsense")]);
        assert_eq!(identify(None, &junk, peer("10.0.0.1"), &nets(&["10.0.0.0/8"]), 64), Err(BadIdentity::ForwardedFor));
    }

    #[test]
    fn a_connection_header_naming_a_key_header_is_refused() {
        for connection in ["authorization", "keep-alive, X-API-Key", " Authorization "] {
            let h = headers(&[("authorization", "Bearer k"), ("connection", connection)]);
            assert_eq!(api_key(&h, &names()), Err(BadIdentity::KeyHeaderIsHopByHop), "{connection}");
        }
        let fine = headers(&[("authorization", "Bearer k"), ("connection", "keep-alive, x-other")]);
        assert_eq!(api_key(&fine, &names()), Ok(Some(b"k".to_vec())));
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        let h = headers(&[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(client_ip(&h, peer("203.0.113.9"), &nets(&["10.0.0.0/8"])), Ok("203.0.113.9".parse().unwrap()));
        assert_eq!(client_ip(&h, peer("203.0.113.9"), &[]), Ok("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn forwarded_for_picks_the_rightmost_untrusted_hop() {
        let trusted = nets(&["10.0.0.0/8", "127.0.0.1"]);
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.2.3")]);
        assert_eq!(client_ip(&h, peer("127.0.0.1"), &trusted), Ok("198.51.100.7".parse().unwrap()));
        let split = headers(&[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "198.51.100.7:555")]);
        assert_eq!(client_ip(&split, peer("10.9.9.9"), &trusted), Ok("198.51.100.7".parse().unwrap()));
        let all_trusted = headers(&[("x-forwarded-for", "10.0.0.1, 10.0.0.2")]);
        assert_eq!(client_ip(&all_trusted, peer("10.0.0.3"), &trusted), Ok("10.0.0.1".parse().unwrap()));
        assert_eq!(client_ip(&headers(&[]), peer("10.0.0.3"), &trusted), Ok("10.0.0.3".parse().unwrap()));
        let junk = headers(&[("x-forwarded-for", "1.2.3.4, not-an-ip")]);
        assert_eq!(client_ip(&junk, peer("10.0.0.3"), &trusted), Err(BadForwardedFor));
        let v6 = headers(&[("x-forwarded-for", "[2001:db8::1]:443")]);
        assert_eq!(client_ip(&v6, peer("::ffff:10.0.0.3"), &trusted), Ok("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn ipv6_callers_are_grouped_by_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(bucket_ip(ip("2001:db8:1:2:3:4:5:6"), 64), ip("2001:db8:1:2::"));
        assert_eq!(bucket_ip(ip("2001:db8:1:2:3:4:5:6"), 48), ip("2001:db8:1::"));
        assert_eq!(bucket_ip(ip("2001:db8:1:2:3:4:5:6"), 128), ip("2001:db8:1:2:3:4:5:6"));
        assert_eq!(bucket_ip(ip("2001:db8::1"), 0), ip("::"));
        assert_eq!(bucket_ip(ip("198.51.100.7"), 64), ip("198.51.100.7"));
        assert_eq!(bucket_ip(ip("::ffff:198.51.100.7"), 64), ip("198.51.100.7"));
    }

    #[test]
    fn networks() {
        let n: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains("10.255.0.1".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.0.0.1".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nonsense".parse::<IpNet>().is_err());
    }

    #[test]
    fn hashes_are_keyed_stable_and_separate_kinds() {
        let a = Hasher::new(b"secret-a");
        let b = Hasher::new(b"secret-b");
        let key = Identity::ApiKey(b"sk-live-123".to_vec());
        assert_eq!(a.hash(&key), a.hash(&key));
        assert_eq!(a.hash(&key).len(), 32);
        assert!(a.hash(&key).bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.hash(&key), b.hash(&key));
        assert_ne!(a.hash(&Identity::ApiKey(b"1.2.3.4".to_vec())), a.hash(&Identity::Ip("1.2.3.4".parse().unwrap())));
    }
}

/// Known answers for the identity hash, computed outside this code (Python's `hmac`, checked
/// with `openssl dgst -sha256 -hmac`): the first 16 bytes, in lowercase hex, of
/// `HMAC-SHA256(secret, kind || 0 || value)`, where `kind` is `key` or `ip` and `value` the
/// key's bytes or the address as text, IPv6 cut to its network first. For example:
///
/// ```text
/// python3 -c 'import hmac, hashlib; print(hmac.new(b"secret-a", b"ip\0" + b"2001:db8:1:2::", hashlib.sha256).hexdigest()[:32])'
/// ```
///
/// Every Redis key and every `[[tier]] keys` digest is made of these, and the other tests
/// only compare the hash with itself: a change would give every caller a fresh bucket (and
/// every listed key the default tier) on deploy. Never update a vector to make this pass.
#[cfg(test)]
mod known_answers {
    use super::*;
    use hyper::header::HeaderValue;

    fn hash(secret: &[u8], identity: Identity) -> String {
        Hasher::new(secret).hash(&identity)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn api_keys_hash_to_known_digests() {
        let key = |bytes: &[u8]| Identity::ApiKey(bytes.to_vec());
        assert_eq!(hash(b"secret-a", key(b"sk-live-123")), "a5b58c4bb2c6d8b0d3eb4261a33f91e6");
        assert_eq!(hash(b"s3cret", key(b"k-1")), "5893efb0894b496ac775a2ceafd48fc0");
        assert_eq!(hash(b"known-answer-secret", key(b"known-answer-key")), "23a75a9f55bc2c3151ebeb5a22e31c51");
        // Bytes as sent, not text: UTF-8 and bytes that are not.
        assert_eq!(hash(b"secret-a", key(b"\xe2\x82\xac-sk\x80\xff")), "bee91659c57adf68db4cd75bbca318b7");
        // A key that reads like an address is still a key.
        assert_eq!(hash(b"secret-a", key(b"1.2.3.4")), "83957e93d2dcf370c38ef4db59a901fa");
    }

    #[test]
    fn addresses_hash_to_known_digests() {
        let addr = |text: &str| Identity::Ip(ip(text));
        assert_eq!(hash(b"secret-a", addr("198.51.100.7")), "ecc61a56a45d1f126d2a8f859fa6cac4");
        assert_eq!(hash(b"secret-a", addr("1.2.3.4")), "d173d3fc162b2f9c3d64911121744b12");
        assert_eq!(hash(b"secret-a", addr("::1")), "853e63bfea473b958240dbfb942650d5");
        assert_eq!(hash(b"known-answer-secret", addr("127.0.0.1")), "8887eba98fcfcbab1d99b23413b8b892");
    }

    /// IPv6 callers are hashed by network, written as RFC 5952 text (`2001:db8:1:2::`); an
    /// IPv4-mapped address as the IPv4 address.
    #[test]
    fn ipv6_callers_hash_by_their_network() {
        let bucketed = |text: &str, prefix: u8| hash(b"secret-a", Identity::Ip(bucket_ip(ip(text), prefix)));
        assert_eq!(bucketed("2001:db8:1:2:3:4:5:6", 64), "1b7aa97d396ba663e7bb24b32d9d6162");
        assert_eq!(bucketed("2001:db8:1:2:ffff:ffff:ffff:ffff", 64), "1b7aa97d396ba663e7bb24b32d9d6162");
        assert_eq!(bucketed("2001:db8:1:2:3:4:5:6", 48), "cb9f3e0eaab38d777477b947d3e20d92");
        assert_eq!(bucketed("2001:db8:1:2:3:4:5:6", 128), "5d5fc2a98519bf58d86f24cd5c339e55");
        assert_eq!(bucketed("::ffff:198.51.100.7", 64), "ecc61a56a45d1f126d2a8f859fa6cac4");
    }

    /// From a request to the hash: the key of `Authorization: Bearer`, else the client named
    /// by a trusted proxy, cut to its /64.
    #[test]
    fn a_request_hashes_to_known_digests() {
        let secret = b"known-answer-secret";
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer known-answer-key"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("2001:db8:1:2:3:4:5:6"));
        let names = vec!["authorization".to_string()];
        let trusted: Vec<IpNet> = vec!["127.0.0.1".parse().unwrap()];
        let peer = SocketAddr::new(ip("127.0.0.1"), 40000);
        let key = api_key(&headers, &names).unwrap();
        let caller = identify(key, &headers, peer, &trusted, 64).unwrap();
        assert_eq!(Hasher::new(secret).hash(&caller), "23a75a9f55bc2c3151ebeb5a22e31c51");
        let caller = identify(None, &headers, peer, &trusted, 64).unwrap();
        assert_eq!(Hasher::new(secret).hash(&caller), "7ded974e94c6297264bb21f1fe1d98e3");
        let caller = identify(None, &HeaderMap::new(), peer, &trusted, 64).unwrap();
        assert_eq!(Hasher::new(secret).hash(&caller), "8887eba98fcfcbab1d99b23413b8b892");
    }
}
