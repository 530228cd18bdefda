//! Every way a command can fail. `Display` is the exact wire string, always with a standard
//! prefix (`ERR`, `WRONGTYPE`), so clients can match on it. Errors are decided before any
//! write: a command that answers with one of these has changed nothing.

use std::fmt;

use crate::gcra::MathError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// Wrong number of arguments; carries the command's usage line.
    Arity {
        usage: &'static str,
    },
    /// `name` must be an integer >= 1.
    NotPositive {
        name: &'static str,
    },
    /// `name` must be an integer >= 0.
    Negative {
        name: &'static str,
    },
    /// `name` is a number, but larger than a 64-bit signed integer.
    TooLarge {
        name: &'static str,
    },
    /// An option keyword the command does not know (at most [`MAX_ECHOED_BYTES`] of it, see
    /// [`Error::unknown_option`]).
    UnknownOption {
        option: String,
        usage: &'static str,
    },
    /// An option given twice.
    RepeatedOption {
        option: &'static str,
    },
    /// RL.CHECK with both KEEP and FORCE.
    KeepWithForce,
    /// An option at the end of the line without its value.
    MissingValue {
        option: &'static str,
    },
    /// `numkeys` does not match the number of arguments.
    KeyCount {
        usage: &'static str,
    },
    /// RL.CHECKALL named one key twice.
    DuplicateKey,
    /// `name` must be an integer in `1..=max`.
    OutOfRange {
        name: &'static str,
        max: u64,
    },
    /// A lease id that is empty, longer than [`crate::lease::MAX_ID_BYTES`], or the lease
    /// sets' reserved [`crate::lease::MARKER`].
    BadLeaseId,
    /// The key holds a Redis type other than the command's (a string for the limiter, a
    /// sorted set for leases).
    WrongType,
    /// The key holds a sorted set that is not lease state.
    NotLeaseState,
    /// The key holds a string that is not rate-limiter state.
    NotLimiterState,
    Math(MathError),
    /// A bug (a panic caught at the FFI edge) or a module API call that failed, answered
    /// instead of aborting Redis.
    Internal,
}

/// The most bytes of a client's argument an error reply repeats (as Redis, which echoes an
/// unknown command's name as `%.128s`): a 64 MB option must not become a 64 MB reply.
pub const MAX_ECHOED_BYTES: usize = 128;

impl Error {
    /// [`Error::UnknownOption`] for the keyword `word`, echoed as at most [`MAX_ECHOED_BYTES`]
    /// bytes (then `...`).
    pub fn unknown_option(word: &[u8], usage: &'static str) -> Error {
        let mut option = String::from_utf8_lossy(word.get(..MAX_ECHOED_BYTES).unwrap_or(word)).into_owned();
        if word.len() > MAX_ECHOED_BYTES {
            option.push_str("...");
        }
        Error::UnknownOption { option, usage }
    }
}

impl From<MathError> for Error {
    fn from(e: MathError) -> Self {
        Error::Math(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Arity { usage } => write!(f, "ERR wrong number of arguments, usage: {usage}"),
            Error::NotPositive { name } => write!(f, "ERR {name} must be a positive integer"),
            Error::Negative { name } => write!(f, "ERR {name} must be a non-negative integer"),
            Error::TooLarge { name } => write!(f, "ERR {name} is out of range: at most {}", i64::MAX),
            Error::UnknownOption { option, usage } => write!(f, "ERR unknown option '{option}', usage: {usage}"),
            Error::RepeatedOption { option } => write!(f, "ERR option {option} given more than once"),
            Error::KeepWithForce => f.write_str("ERR KEEP and FORCE cannot be combined"),
            Error::MissingValue { option } => write!(f, "ERR option {option} needs a value"),
            Error::KeyCount { usage } => {
                write!(
                    f,
                    "ERR numkeys must be between 1 and {} and match the keys and specs given, usage: {usage}",
                    crate::args::MAX_CHECKALL_KEYS
                )
            }
            Error::OutOfRange { name, max } => write!(f, "ERR {name} must be an integer between 1 and {max}"),
            Error::BadLeaseId => {
                write!(
                    f,
                    "ERR id must be a non-empty string of at most {} bytes, other than the reserved \\x00rl-leases",
                    crate::lease::MAX_ID_BYTES
                )
            }
            Error::NotLeaseState => f.write_str(
                "ERR key holds a sorted set that is not lease state; it was left unchanged (delete it or use another key)",
            ),
            Error::DuplicateKey => f.write_str("ERR RL.CHECKALL keys must be distinct"),
            Error::WrongType => f.write_str("WRONGTYPE Operation against a key holding the wrong kind of value"),
            Error::NotLimiterState => f.write_str(
                "ERR key holds a string that is not rate-limiter state; it was left unchanged (delete it or use another key)",
            ),
            Error::Math(MathError::ToleranceTooLarge) => {
                f.write_str("ERR burst * window / limit must not exceed 100 years")
            }
            Error::Math(MathError::StateOutOfRange) => f.write_str("ERR stored rate-limiter state is out of range"),
            Error::Internal => f.write_str("ERR internal error in the rate-limiter module; nothing was changed"),
        }
    }
}
