//! Reading a few fields of a large JSON object without building the document: the request
//! bodies of LLM routes (up to `max_body_bytes`) and the answers whose usage is settled (up to
//! `max_response_bytes`). A `serde_json::Value` of a 1 MiB array of zeros takes over 100 MB
//! and long enough to starve the gateway's workers; here every other field is skipped as it is
//! read (`IgnoredAny`), and the fields asked for are kept as borrowed slices of the input
//! ([`RawValue`]), which their readers then walk once, allocating nothing per element.
//!
//! Duplicate keys: the last one counts, as in Python's `json`, JavaScript and Go, so the
//! gateway reads what the model behind it will read.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Why an object could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotAnObject {
    /// The input is not JSON at all.
    NotJson,
    /// It is JSON, but not an object.
    OtherJson,
}

/// The values of the top-level keys `wanted` of the JSON object `input` (the last of each, if
/// a key repeats), `None` for a key that is absent. Fails unless `input` is one whole JSON
/// object.
pub fn fields<'a, const N: usize>(
    input: &'a [u8],
    wanted: [&'static str; N],
) -> Result<[Option<&'a RawValue>; N], NotAnObject> {
    let mut de = serde_json::Deserializer::from_slice(input);
    let found = de.deserialize_map(FieldsVisitor { wanted }).and_then(|found| de.end().map(|()| found));
    found.map_err(|_| {
        // Tell a non-object from non-JSON only on this (rare) path: an object that failed has
        // a syntax error somewhere (skipping does not check strings' UTF-8, so a second pass
        // might pass it); anything else is JSON if it parses.
        if input.trim_ascii_start().starts_with(b"{") {
            return NotAnObject::NotJson;
        }
        match serde_json::from_slice::<IgnoredAny>(input) {
            Ok(_) => NotAnObject::OtherJson,
            Err(_) => NotAnObject::NotJson,
        }
    })
}

/// Where `value` (a slice of `input`, as [`fields`] returns) lies in `input`.
pub fn span(input: &[u8], value: &RawValue) -> Option<std::ops::Range<usize>> {
    let text = value.get().as_bytes();
    let start = (text.as_ptr() as usize).checked_sub(input.as_ptr() as usize)?;
    let range = start..start.checked_add(text.len())?;
    (input.get(range.clone()) == Some(text)).then_some(range)
}

struct FieldsVisitor<const N: usize> {
    wanted: [&'static str; N],
}

impl<'de, const N: usize> Visitor<'de> for FieldsVisitor<N> {
    type Value = [Option<&'de RawValue>; N];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = [None; N];
        while let Some(index) = map.next_key_seed(KeyIndex(&self.wanted))? {
            match index.and_then(|i| found.get_mut(i)) {
                Some(slot) => *slot = Some(map.next_value::<&'de RawValue>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }
}

/// A key, as its index in the wanted list (without allocating a `String` for it).
struct KeyIndex<'w>(&'w [&'static str]);

impl<'de> DeserializeSeed<'de> for KeyIndex<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIndex<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|wanted| *wanted == key))
    }
}

/// Whether `value` is the JSON `true`.
pub fn is_true(value: Option<&RawValue>) -> bool {
    value.is_some_and(|v| v.get() == "true")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wanted_fields_are_found_and_the_last_of_a_repeated_key_counts() {
        let input = br#" {"a": 1, "skip": {"deep": [1, {"b": 2}]}, "b": "x\"y", "a": [2, 3] } "#;
        let [a, b, c] = fields(input, ["a", "b", "c"]).unwrap();
        assert_eq!(a.map(RawValue::get), Some("[2, 3]"));
        assert_eq!(b.map(RawValue::get), Some(r#""x\"y""#));
        assert!(c.is_none());
        let a = a.unwrap();
        assert_eq!(&input[span(input, a).unwrap()], b"[2, 3]");
        assert_eq!(span(b"[2, 3]", a), None, "not a slice of that input");
    }

    #[test]
    fn anything_but_one_whole_object_is_refused() {
        assert_eq!(fields(b"[1]", ["a"]).err(), Some(NotAnObject::OtherJson));
        assert_eq!(fields(b"\"a\"", ["a"]).err(), Some(NotAnObject::OtherJson));
        for bad in [&b"{"[..], b"{} {}", b"{\"a\":}", b"", b"nope", b"{\"a\":1,}"] {
            assert_eq!(fields(bad, ["a"]).err(), Some(NotAnObject::NotJson), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(fields(b"{\"a\": \"\xff\"}", ["a"]).err(), Some(NotAnObject::NotJson), "invalid UTF-8 in a string");
        let escaped_key = fields(br#"{"\u0061": 5}"#, ["a"]).unwrap();
        assert_eq!(escaped_key[0].map(RawValue::get), Some("5"), "keys compare decoded");
    }

    #[test]
    fn true_is_only_true() {
        let [t, f, s] = fields(br#"{"t": true, "f": false, "s": "true"}"#, ["t", "f", "s"]).unwrap();
        assert!(is_true(t));
        assert!(!is_true(f) && !is_true(s) && !is_true(None));
    }
}
