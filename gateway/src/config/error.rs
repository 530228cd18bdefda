//! What can be wrong with a configuration, each failure naming the key (or file, or
//! environment variable) at fault. The gateway prints it and exits before serving anything.

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum ConfigError {
    /// The config file could not be read.
    Read { path: PathBuf, source: std::io::Error },
    /// The config file is not TOML of the documented shape (an unknown key, a wrong type);
    /// `path` is `None` for text parsed directly.
    Parse { path: Option<PathBuf>, source: toml::de::Error },
    /// A value is unusable: `key` is its name in the file (`redis.timeout_ms`,
    /// `policy "predict"`), `reason` says why and what would do.
    Invalid { key: Cow<'static, str>, reason: String },
    /// Two flags that exclude each other were both given.
    Conflict { flag: &'static str, other: &'static str },
    /// A file a key points to (a TLS certificate or key) could not be read.
    ReadFile { key: &'static str, path: PathBuf, source: std::io::Error },
    /// No `[[policy]]` in the file and no `--limit`/`--window`.
    NoPolicy,
    /// Neither `identity.secret` nor the environment variable `env_var` holds the secret.
    NoSecret { env_var: String },
}

impl ConfigError {
    pub fn invalid(key: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid { key: key.into(), reason: reason.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => write!(f, "cannot read config file {}: {source}", path.display()),
            ConfigError::Parse { path: Some(path), source } => write!(f, "{}: {source}", path.display()),
            ConfigError::Parse { path: None, source } => write!(f, "{source}"),
            ConfigError::Invalid { key, reason } => write!(f, "{key}: {reason}"),
            ConfigError::Conflict { flag, other } => write!(f, "give either {flag} or {other}, not both"),
            ConfigError::ReadFile { key, path, source } => write!(f, "{key}: cannot read {}: {source}", path.display()),
            ConfigError::NoPolicy => f.write_str(
                "no rate-limit policy: add a [[policy]] table to the config file or pass --limit and --window",
            ),
            ConfigError::NoSecret { env_var } => write!(
                f,
                "no key-hashing secret: set the environment variable {env_var} (or identity.secret in the config \
                 file) to a long random string, the same on every gateway instance"
            ),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } | ConfigError::ReadFile { source, .. } => Some(source),
            ConfigError::Parse { source, .. } => Some(source),
            _ => None,
        }
    }
}
