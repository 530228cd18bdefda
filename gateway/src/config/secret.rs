//! Settings that must never reach a log: Redis URLs (their password), the key-hashing secret
//! and the TLS client key. Their `Debug` (and, for URLs, `Display`) hide the secret, so the
//! settings holding them derive `Debug` safely.

use std::fmt;

/// A `redis://` or `rediss://` URL, maybe with `user:password@`. Shown (`Debug`, `Display`)
/// through [`redact_url`]; [`RedisUrl::expose`] gives the real URL, to connect with.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    pub fn new(url: impl Into<String>) -> Self {
        RedisUrl(url.into())
    }

    /// The URL with its password: only for the Redis client.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_tls(&self) -> bool {
        self.0.starts_with("rediss://")
    }

    /// `redis://` or `rediss://`.
    pub fn has_redis_scheme(&self) -> bool {
        self.0.starts_with("redis://") || self.is_tls()
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(&self.0), f)
    }
}

/// A secret: its `Debug` is `<redacted>`; `.0` is the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Redacted<T>(pub T);

impl<T> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The bytes of a PEM file; `Debug` shows only their length.
#[derive(Clone, PartialEq, Eq)]
pub struct Pem(pub Vec<u8>);

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes of PEM>", self.0.len())
    }
}

/// The URL with its credentials hidden, for logs and error messages. Everything between
/// `://` and the last `@` is the user info (a password may hold unencoded `/`, `?`, `#` or `@`,
/// so the authority is not looked for first): it becomes `user:***`, or `***` when the user
/// part before the first `:` is not plainly a user name. Without a `:` (a user name alone, or
/// no user info at all) nothing is secret and the URL is returned as is.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else { return url.to_string() };
    let after = scheme_end + 3;
    let rest = &url[after..];
    let Some(at) = rest.rfind('@') else { return url.to_string() };
    let userinfo = &rest[..at];
    let plain = |s: &str| !s.contains(['/', '?', '#', '@']);
    let hidden = match userinfo.split_once(':') {
        Some((user, _)) if plain(user) => format!("{user}:***"),
        Some(_) => "***".to_string(),
        None if plain(userinfo) => return url.to_string(),
        None => "***".to_string(),
    };
    format!("{}{}{}", &url[..after], hidden, &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(redact_url("redis://user:pw@host:6379/0"), "redis://user:***@host:6379/0");
        assert_eq!(redact_url("rediss://:pw@host"), "rediss://:***@host");
        assert_eq!(redact_url("redis://host:6379/"), "redis://host:6379/");
        assert_eq!(redact_url("redis://user@host/"), "redis://user@host/");
        assert_eq!(redact_url("redis://u:p@ss@host/"), "redis://u:***@host/");
    }

    #[test]
    fn redacts_passwords_with_unencoded_delimiters() {
        assert_eq!(redact_url("redis://default:se/cret@host:6379/0"), "redis://default:***@host:6379/0");
        assert_eq!(redact_url("rediss://u:p?x#y@h/"), "rediss://u:***@h/");
        assert_eq!(redact_url("redis://:a/b?c#d@h:1/"), "redis://:***@h:1/");
        // A ':' inside what looks like a path: hide it all rather than guess.
        assert_eq!(redact_url("redis://us/er:pw@h/"), "redis://***@h/");
        for url in ["redis://default:se/cret@host:6379/0", "rediss://u:p?x#y@h/", "redis://x:s3cr/et@a@h/"] {
            let shown = redact_url(url);
            assert!(!shown.contains("cret") && !shown.contains("p?x") && !shown.contains("s3cr"), "{shown}");
        }
    }

    #[test]
    fn wrapped_secrets_never_print() {
        let url = RedisUrl::new("redis://gw:hunter2@h:1/");
        assert_eq!(url.to_string(), "redis://gw:***@h:1/");
        assert_eq!(format!("{url:?}"), "\"redis://gw:***@h:1/\"");
        assert_eq!(url.expose(), "redis://gw:hunter2@h:1/");
        assert_eq!(format!("{:?}", Redacted(b"s3cret".to_vec())), "<redacted>");
        assert_eq!(format!("{:?}", Pem(b"-----BEGIN".to_vec())), "<10 bytes of PEM>");
    }
}
