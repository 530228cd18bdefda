//! OpenAI-compatible LLM routes (`kind = "openai"` policies): reserve, then settle.
//!
//! Before forwarding, [`request`] reads the JSON body (only the fields it needs, without
//! building the document) and [`estimate()`] what the request can cost
//! in tokens: its prompt (text length / `chars_per_token`) plus the completion it may produce
//! (`max_completion_tokens` or `max_tokens`, else the policy's `default_max_tokens`, times `n`;
//! 0 for embeddings). That estimate is reserved on every limit counted in tokens, together with
//! 1 on the request limits, in the one atomic check. After the answer, [`settle`] reads
//! `usage.total_tokens` from the JSON response and gives back what was reserved but not used
//! (`RL.REFUND`), or charges what was used beyond it (`RL.CHECK ... FORCE`, a bounded debt).
//! A streamed answer ([`stream`]) passes through event by event and settles when it ends.

pub mod estimate;
mod json;
pub mod request;
pub mod settle;
pub mod stream;

pub use estimate::{estimate, BadLlmRequest, Estimate};
pub use request::{read_off_the_workers, read_request, LlmRequest};
pub use settle::{settle_usage, usage_total_tokens, Settlement};
