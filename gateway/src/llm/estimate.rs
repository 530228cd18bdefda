//! The token estimate of an OpenAI-style request body, before it is sent. It must never be
//! less than what the model may read and produce, whatever the endpoint, since a client picks
//! the body and the path:
//!
//! - Prompt: the characters (Unicode scalar values) of `messages[].content` (a string, or the
//!   `text` of each part of an array; images, audio and tool calls are not counted), of
//!   `prompt` and of `input` (a string or an array of strings), all three added up, divided by
//!   `chars_per_token` and rounded up; a prompt or input given as token ids counts one token
//!   per id.
//! - Completion: the larger of `max_completion_tokens` and `max_tokens` (servers differ on
//!   which wins, and some read a `0` as unset), else the policy's `default_max_tokens`, times
//!   `n` (default 1); 0 for embeddings (a body with `input` and neither `messages` nor
//!   `prompt`).
//! - At least 1 in all ([`Estimate::reserved`]): a reservation of 0 is only a look at the
//!   bucket, admitted even when the bucket is empty or in debt, which would let a request
//!   that claims to need nothing use as much as it likes and settle afterwards.
//!
//! The estimate is only a reservation: ~4 characters per token holds for English text with
//! OpenAI's tokenizers, other languages and code run from ~1 to ~3, and chat formatting adds a
//! few tokens per message. Settlement replaces it by the answer's real `usage`.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::config::Llm;

/// What a request may cost, in tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Estimate {
    pub fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    /// What is reserved on each limit counted in tokens: the total, at least 1 (see the
    /// module's comment).
    pub fn reserved(&self) -> u64 {
        self.total().max(1)
    }
}

/// Why an LLM request body is refused (`400 invalid_request_error`, nothing charged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BadLlmRequest {
    NotJson,
    NotAnObject,
    /// None of `messages`, `prompt`, `input`.
    NoPrompt,
    /// A field of the wrong shape: its name.
    BadField(&'static str),
}

impl BadLlmRequest {
    pub fn message(&self) -> String {
        match self {
            BadLlmRequest::NotJson => "The request body is not valid JSON.".into(),
            BadLlmRequest::NotAnObject => "The request body must be a JSON object.".into(),
            BadLlmRequest::NoPrompt => "The request body needs 'messages', 'prompt' or 'input'.".into(),
            BadLlmRequest::BadField(field) => format!("'{field}' does not have the expected type."),
        }
    }

    /// The field at fault (OpenAI's `param`), if one.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            BadLlmRequest::BadField(field) => Some(field),
            _ => None,
        }
    }
}

/// The estimate of a request body under `llm` (see [`super::request::read_request`], which
/// reads the stream flags in the same pass).
pub fn estimate(body: &[u8], llm: &Llm) -> Result<Estimate, BadLlmRequest> {
    super::request::read_request(body, llm).map(|request| request.estimate)
}

/// The estimate from the request's fields (each the raw JSON text of that field, if present).
pub(super) fn estimate_fields(fields: &EstimateFields<'_>, llm: &Llm) -> Result<Estimate, BadLlmRequest> {
    if fields.messages.is_none() && fields.prompt.is_none() && fields.input.is_none() {
        return Err(BadLlmRequest::NoPrompt);
    }
    let message_chars = fields.messages.map(|m| read_field(m, "messages", MessageChars)).transpose()?;
    let (prompt_chars, prompt_ids) =
        fields.prompt.map(|p| read_field(p, "prompt", PromptLike)).transpose()?.unwrap_or_default();
    let (input_chars, input_ids) =
        fields.input.map(|i| read_field(i, "input", PromptLike)).transpose()?.unwrap_or_default();
    let chars = message_chars.unwrap_or(0).saturating_add(prompt_chars).saturating_add(input_chars);
    let prompt_tokens = chars.div_ceil(llm.chars_per_token).saturating_add(prompt_ids).saturating_add(input_ids);
    let embeddings = fields.messages.is_none() && fields.prompt.is_none();
    let completion_tokens = if embeddings {
        0
    } else {
        let completion = count(fields.max_completion_tokens, "max_completion_tokens")?;
        let max = match (completion, count(fields.max_tokens, "max_tokens")?) {
            (None, None) => llm.default_max_tokens,
            (a, b) => a.unwrap_or(0).max(b.unwrap_or(0)),
        };
        let n = count(fields.n, "n")?.unwrap_or(1).max(1);
        max.saturating_mul(n)
    };
    Ok(Estimate { prompt_tokens, completion_tokens })
}

/// The fields of a request body the estimate reads, as raw JSON text.
#[derive(Default)]
pub(super) struct EstimateFields<'a> {
    pub messages: Option<&'a RawValue>,
    pub prompt: Option<&'a RawValue>,
    pub input: Option<&'a RawValue>,
    pub max_completion_tokens: Option<&'a RawValue>,
    pub max_tokens: Option<&'a RawValue>,
    pub n: Option<&'a RawValue>,
}

/// `value` read by `visitor`; any other shape is [`BadLlmRequest::BadField`] `field`.
fn read_field<'a, V: Visitor<'a>>(
    value: &'a RawValue,
    field: &'static str,
    visitor: V,
) -> Result<V::Value, BadLlmRequest> {
    let mut de = serde_json::Deserializer::from_str(value.get());
    de.deserialize_any(visitor).map_err(|_| BadLlmRequest::BadField(field))
}

/// A non-negative integer field, if present and not `null`.
fn count(value: Option<&RawValue>, field: &'static str) -> Result<Option<u64>, BadLlmRequest> {
    match value {
        None => Ok(None),
        Some(value) => serde_json::from_str::<Option<u64>>(value.get()).map_err(|_| BadLlmRequest::BadField(field)),
    }
}

/// Unicode scalar values of a string, the unit of `chars_per_token`.
fn chars(s: &str) -> u64 {
    u64::try_from(s.chars().count()).unwrap_or(u64::MAX)
}

/// The characters of text in `messages`: an array of objects whose `content` is a string,
/// `null` or an array of parts (objects; the `text` of each, when it has one, counts).
struct MessageChars;

impl<'de> Visitor<'de> for MessageChars {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of messages")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut total = 0u64;
        while let Some(chars) = seq.next_element_seed(Fields { field: "content", value: Content })? {
            total = total.saturating_add(chars.unwrap_or(0));
        }
        Ok(total)
    }
}

/// A message's `content`: a string, `null`, or an array of parts.
#[derive(Clone, Copy)]
struct Content;

impl<'de> Visitor<'de> for Content {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, null or an array of parts")
    }

    fn visit_unit<E: de::Error>(self) -> Result<u64, E> {
        Ok(0)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<u64, E> {
        Ok(chars(text))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut total = 0u64;
        while let Some(chars) = seq.next_element_seed(Fields { field: "text", value: Text })? {
            total = total.saturating_add(chars.unwrap_or(0));
        }
        Ok(total)
    }
}

/// The `text` of a content part: a string.
#[derive(Clone, Copy)]
struct Text;

impl Visitor<'_> for Text {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<u64, E> {
        Ok(chars(text))
    }
}

/// An object, of which only the member `field` is read (by `value`; the last one counts) and
/// the rest skipped: `None` when it has no such member.
struct Fields<V> {
    field: &'static str,
    value: V,
}

impl<'de, V: Visitor<'de> + Copy> DeserializeSeed<'de> for Fields<V> {
    type Value = Option<V::Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, V: Visitor<'de> + Copy> Visitor<'de> for Fields<V> {
    type Value = Option<V::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key_seed(IsKey(self.field))? {
            if key {
                found = Some(map.next_value_seed(Any(self.value))?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// A value read by its visitor, whatever its type.
struct Any<V>(V);

impl<'de, V: Visitor<'de>> DeserializeSeed<'de> for Any<V> {
    type Value = V::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        deserializer.deserialize_any(self.0)
    }
}

/// Whether a key is `self.0` (compared without allocating).
struct IsKey(&'static str);

impl<'de> DeserializeSeed<'de> for IsKey {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for IsKey {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

/// Characters and token ids of a `prompt` or `input`: a string, or an array of strings,
/// token ids (non-negative integers) and arrays of token ids.
struct PromptLike;

impl<'de> Visitor<'de> for PromptLike {
    type Value = (u64, u64);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or an array of strings or token ids")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<(u64, u64), E> {
        Ok((chars(text), 0))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(u64, u64), A::Error> {
        let (mut text, mut ids) = (0u64, 0u64);
        while let Some((c, i)) = seq.next_element_seed(Any(PromptItem))? {
            text = text.saturating_add(c);
            ids = ids.saturating_add(i);
        }
        Ok((text, ids))
    }
}

/// One item of a `prompt` array: a string, a token id, or an array of token ids.
struct PromptItem;

impl<'de> Visitor<'de> for PromptItem {
    type Value = (u64, u64);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, a token id or an array of token ids")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<(u64, u64), E> {
        Ok((chars(text), 0))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(u64, u64), E> {
        Ok((0, 1))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(u64, u64), A::Error> {
        let mut ids = 0u64;
        while seq.next_element::<u64>()?.is_some() {
            ids = ids.saturating_add(1);
        }
        Ok((0, ids))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLM: Llm =
        Llm { chars_per_token: 4, default_max_tokens: 100, max_response_bytes: 1000, max_event_bytes: 1000 };

    fn est(body: &str) -> Result<(u64, u64), BadLlmRequest> {
        estimate(body.as_bytes(), &LLM).map(|e| (e.prompt_tokens, e.completion_tokens))
    }

    #[test]
    fn chat_messages_count_their_text_and_max_tokens() {
        let chat = r#"{"messages":[{"role":"system","content":"12345678"},{"role":"user","content":[{"type":"text","text":"abcd"},{"type":"image_url","image_url":{"url":"x"}}]},{"role":"assistant","content":null}],"max_tokens":50}"#;
        assert_eq!(est(chat), Ok((3, 50)));
        assert_eq!(
            est(r#"{"messages":[{"role":"user","content":"héllo"}]}"#),
            Ok((2, 100)),
            "default, chars not bytes"
        );
        assert_eq!(est(r#"{"messages":[],"max_completion_tokens":9,"max_tokens":7,"n":3}"#), Ok((0, 27)));
    }

    #[test]
    fn prompts_and_embedding_inputs() {
        assert_eq!(est(r#"{"prompt":"abcdefghi","max_tokens":5}"#), Ok((3, 5)));
        assert_eq!(est(r#"{"prompt":["abcd","efgh"]}"#), Ok((2, 100)));
        assert_eq!(est(r#"{"prompt":[1,2,3],"max_tokens":1}"#), Ok((3, 1)), "token ids count one each");
        assert_eq!(est(r#"{"input":"abcdefgh"}"#), Ok((2, 0)), "embeddings produce no completion");
        assert_eq!(est(r#"{"input":[[1,2],[3]]}"#), Ok((3, 0)));
    }

    #[test]
    fn what_any_endpoint_may_read_is_counted() {
        // /v1/completions reads prompt, /v1/embeddings input: a messages list beside them
        // must not hide them.
        assert_eq!(est(r#"{"messages":[],"prompt":"abcdefgh","max_tokens":1}"#), Ok((2, 1)));
        assert_eq!(est(r#"{"messages":[{"content":"abcd"}],"input":"abcd","max_tokens":1}"#), Ok((2, 1)));
        assert_eq!(est(r#"{"prompt":[1,2],"input":[3],"max_tokens":0}"#), Ok((3, 0)));
        // The larger maximum, as a server reading either (or taking 0 as unset) may.
        assert_eq!(est(r#"{"prompt":"","max_completion_tokens":0,"max_tokens":4000}"#), Ok((0, 4000)));
        assert_eq!(est(r#"{"prompt":"","max_completion_tokens":50,"max_tokens":null}"#), Ok((0, 50)));
    }

    #[test]
    fn nothing_is_ever_reserved_as_zero() {
        let zero = estimate(br#"{"messages":[{"role":"user","content":""}],"max_tokens":0}"#, &LLM).unwrap();
        assert_eq!((zero.total(), zero.reserved()), (0, 1));
        let some = estimate(br#"{"prompt":"abcdefgh","max_tokens":3}"#, &LLM).unwrap();
        assert_eq!(some.reserved(), 5);
    }

    #[test]
    fn the_last_of_a_repeated_key_counts() {
        assert_eq!(est(r#"{"prompt":"x","max_tokens":1,"max_tokens":50}"#), Ok((1, 50)));
        assert_eq!(est(r#"{"messages":[{"content":"abcdefgh","content":"a"}]}"#), Ok((1, 100)));
        assert_eq!(est(r#"{"messages":[],"prompt":5}"#), Err(BadLlmRequest::BadField("prompt")), "every field is read");
        assert_eq!(est(r#"{"messages":[{"content":[{"type":"image_url"},{"text":"abcde"}]}]}"#), Ok((2, 100)));
        assert_eq!(est(r#"{"messages":[{"content":"ab\u00e9"}]}"#), Ok((1, 100)), "escapes decoded: 3 chars");
    }

    #[test]
    fn malformed_bodies_are_refused_with_the_field() {
        assert_eq!(est("not json"), Err(BadLlmRequest::NotJson));
        assert_eq!(est("[1]"), Err(BadLlmRequest::NotAnObject));
        assert_eq!(est(r#"{"model":"x"}"#), Err(BadLlmRequest::NoPrompt));
        assert_eq!(est(r#"{"messages":"hi"}"#), Err(BadLlmRequest::BadField("messages")));
        assert_eq!(est(r#"{"messages":[{"content":5}]}"#), Err(BadLlmRequest::BadField("messages")));
        assert_eq!(est(r#"{"prompt":{}}"#), Err(BadLlmRequest::BadField("prompt")));
        assert_eq!(est(r#"{"prompt":"x","max_tokens":-1}"#), Err(BadLlmRequest::BadField("max_tokens")));
        assert_eq!(est(r#"{"prompt":"x","n":"2"}"#), Err(BadLlmRequest::BadField("n")));
        assert_eq!(est(r#"{"messages":[{"content":[{"text":null}]}]}"#), Err(BadLlmRequest::BadField("messages")));
        assert_eq!(est(r#"{"messages":[{"content":["text"]}]}"#), Err(BadLlmRequest::BadField("messages")));
        assert_eq!(est(r#"{"messages":[5]}"#), Err(BadLlmRequest::BadField("messages")));
        assert_eq!(est(r#"{"prompt":[[1,-2]]}"#), Err(BadLlmRequest::BadField("prompt")));
        assert_eq!(est(r#"{"prompt":[1.5]}"#), Err(BadLlmRequest::BadField("prompt")));
        assert_eq!(est(r#"{"prompt":"x","max_tokens":2.0}"#), Err(BadLlmRequest::BadField("max_tokens")));
        assert_eq!(est(r#"{"prompt":"x","max_tokens":null}"#), Ok((1, 100)), "null is as absent");
        assert_eq!(est(r#"{"prompt":"x"} trailing"#), Err(BadLlmRequest::NotJson));
        assert_eq!(BadLlmRequest::BadField("n").param(), Some("n"));
    }
}
