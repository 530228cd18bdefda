//! The steps every proxied request goes through, in this order (see [`crate::app::app`]):
//!
//! 1. [`access_log`]: one log line per request, with its status and time (every route).
//!    Then [`keep_alive`]: an answer made before the body was read leaves the connection
//!    usable (a small body is read through) or says `Connection: close`.
//! 2. [`checks`]: the target is a path, the API-key headers are consistent (and present, if
//!    required), a declared body size fits. Hands on the [`ApiKey`].
//! 3. [`route`]: the normalized path and the policy covering it ([`crate::routing::Route`]).
//! 4. [`identify`]: for a covered path, who is asking (key, else client IP), hashed. Hands on
//!    the [`Caller`].
//! 5. [`limit`]: one check of the caller's bucket; `429` when refused, else on to the proxy,
//!    and the rate-limit headers go on whatever comes back.
//! 6. [`proxy`]: the body (with a size limit and a timeout), sent to the model on the
//!    normalized path; the model's answer streamed back.
//!
//! Steps 1 to 5 are middleware (`axum::middleware::from_fn`, `from_fn_with_state`), each
//! with its own small state, handing what it learned to the next ones as a request
//! extension; step 6 is the handler. A step that refuses a request answers with an
//! [`ApiError`](crate::error::ApiError). The checks' refusals come before the limit and cost
//! no quota; a body found too large (or too slow) only while it is read costs its token.

pub mod access_log;
pub mod checks;
pub mod identify;
pub mod keep_alive;
pub mod limit;
pub mod proxy;
pub mod route;

pub use checks::{ApiKey, Checks};
pub use identify::{Caller, Identify};
pub use keep_alive::KeepAlive;
pub use limit::Limit;
pub use proxy::Proxy;
