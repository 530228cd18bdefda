//! `gateway hash-key`: the digest under which an API key appears in `[[tier]] keys` (and in
//! Redis key names) as the gateway computes it: the first 16 bytes of
//! `HMAC-SHA256(secret, "key" || 0x00 || key)`, as 32 hex digits.
//! The secret is the config file's (`identity.secret` / `identity.secret_env`), else the
//! environment variable `GATEWAY_KEY_SECRET`.

use std::io::Read;
use std::path::PathBuf;

use crate::config::{key_secret, ConfigError, FileConfig, IdentityFile};
use crate::identity::{Hasher, Identity};

#[derive(clap::Args, Debug)]
pub struct HashKeyArgs {
    /// Config file whose identity.secret or identity.secret_env gives the secret (default: env GATEWAY_KEY_SECRET).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The API key; without it, read from stdin (a trailing newline is dropped).
    pub key: Option<String>,
}

/// The digest of `key` with `secret`.
pub fn digest(secret: &[u8], key: &[u8]) -> String {
    Hasher::new(secret).hash(&Identity::ApiKey(key.to_vec()))
}

/// The digest of the key given in `args` (or on `stdin`), or why there is none.
pub fn run(args: &HashKeyArgs, stdin: impl Read, env: impl Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    let identity = match &args.config {
        Some(path) => FileConfig::load(path)?.identity,
        None => IdentityFile::default(),
    };
    let secret = key_secret(&identity, &env)?;
    let key = match &args.key {
        Some(key) => key.clone(),
        None => {
            let mut text = String::new();
            let mut stdin = stdin;
            stdin
                .read_to_string(&mut text)
                .map_err(|e| ConfigError::invalid("stdin", format!("cannot read the key: {e}")))?;
            let line = text.strip_suffix('\n').unwrap_or(&text);
            line.strip_suffix('\r').unwrap_or(line).to_string()
        }
    };
    if key.is_empty() {
        return Err(ConfigError::invalid("key", "the API key is empty"));
    }
    Ok(digest(secret.as_bytes(), key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_the_callers_identity_hash() {
        let env = |name: &str| (name == "GATEWAY_KEY_SECRET").then(|| "s3cret".to_string());
        let from_arg = run(&HashKeyArgs { config: None, key: Some("k-1".into()) }, std::io::empty(), env).unwrap();
        let from_stdin = run(&HashKeyArgs { config: None, key: None }, &b"k-1\n"[..], env).unwrap();
        assert_eq!(from_arg, from_stdin);
        assert_eq!(from_arg, Hasher::new(b"s3cret").hash(&Identity::ApiKey(b"k-1".to_vec())));
        assert_eq!(from_arg.len(), 32);
        assert!(run(&HashKeyArgs { config: None, key: None }, &b"\n"[..], env).is_err());
        assert!(run(&HashKeyArgs { config: None, key: Some("k".into()) }, std::io::empty(), |_| None).is_err());
    }
}

/// Known answers for `gateway hash-key`, computed outside this code (`HMAC-SHA256(secret,
/// "key\0" || key)`, its first 16 bytes in hex; see `identity::known_answers`): the digests
/// operators have pasted into `[[tier]] keys` must keep naming the same keys.
#[cfg(test)]
mod known_answers {
    use super::*;

    #[test]
    fn hash_key_prints_known_digests() {
        assert_eq!(digest(b"s3cret", b"k-1"), "5893efb0894b496ac775a2ceafd48fc0");
        assert_eq!(digest(b"known-answer-secret", b"known-answer-key"), "23a75a9f55bc2c3151ebeb5a22e31c51");
        let env = |name: &str| (name == "GATEWAY_KEY_SECRET").then(|| "s3cret".to_string());
        let piped = run(&HashKeyArgs { config: None, key: None }, &b"k-1\r\n"[..], env).unwrap();
        assert_eq!(piped, "5893efb0894b496ac775a2ceafd48fc0");
    }
}
