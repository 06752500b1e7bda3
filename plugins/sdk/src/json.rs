//! A JSON payload read strictly and cheaply, for a handler that rejects
//! what it cannot use with a reason a producer can act on.
//!
//! A [`Shape`] names the fields a handler reads; only those are kept, and
//! every other value (however large or deeply nested) is skipped unbuilt by
//! serde_json's iterative `ignore_value`, which allocates one byte per
//! nesting level and never recurses. Kept values are read as deep as the
//! shape goes (an object field it names in `nested`), well inside
//! serde_json's recursion limit, so a payload costs memory for what the
//! handler keeps, not for what it carries.
//!
//! What the handler gets is a [`Json`] per kept field, with the type that
//! a reason names ([`Json::kind`]), and [`Object::duplicate`]: a kept field
//! that appears twice is for the handler to reject rather than to resolve
//! by position. Payload-level problems are reasons already: not UTF-8 (with
//! the byte offset), a byte-order mark, empty, not JSON (serde_json's
//! message, with line and column), or, for [`object`], not an object.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// The fields of an object a handler reads.
#[derive(Debug, PartialEq)]
pub struct Shape {
    /// The fields kept; any other is skipped.
    pub fields: &'static [&'static str],
    /// Kept fields whose number is kept exactly as the payload spells it
    /// (`1E2`, `18446744073709551617`), e.g. because it names something.
    pub spelled: &'static [&'static str],
    /// Kept fields whose object is read in turn, with its own shape.
    pub nested: &'static [(&'static str, &'static Shape)],
}

/// One kept value.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    /// A number, as serde_json parsed it.
    Number(serde_json::Number),
    /// A number in a [`Shape::spelled`] field, exactly as the payload
    /// spells it.
    Spelled(String),
    Text(String),
    /// Its elements skipped.
    Array,
    /// The fields of a [`Shape::nested`] object; `None` for any other
    /// object, its fields skipped.
    Object(Option<Object>),
}

impl Json {
    /// The type, as a reason names it: `null`, `a boolean`, `a number`,
    /// `a string`, `an array`, `an object`.
    pub fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number(_) | Json::Spelled(_) => "a number",
            Json::Text(_) => "a string",
            Json::Array => "an array",
            Json::Object(_) => "an object",
        }
    }
}

/// The kept fields of one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    shape: &'static Shape,
    values: Vec<Option<Json>>,
    duplicate: Option<&'static str>,
}

impl Object {
    /// The value of a kept field, if the object has it (the first, if it
    /// has it twice).
    pub fn get(&self, name: &str) -> Option<&Json> {
        let index = self.shape.fields.iter().position(|n| *n == name)?;
        self.values[index].as_ref()
    }

    /// The first kept field that appears more than once, if any.
    pub fn duplicate(&self) -> Option<&'static str> {
        self.duplicate
    }
}

/// Reads `payload` as one JSON value, `shape` applied to it if it is an
/// object. The error is the reason.
pub fn read(payload: &[u8], shape: &'static Shape) -> Result<Json, String> {
    let text = std::str::from_utf8(payload).map_err(|e| {
        let at = e.valid_up_to();
        format!("payload is not valid UTF-8: invalid byte sequence at byte offset {at}")
    })?;
    if text.starts_with('\u{feff}') {
        return Err(
            "payload starts with a UTF-8 byte-order mark, which JSON does not allow".into(),
        );
    }
    if text.trim_matches([' ', '\t', '\n', '\r']).is_empty() {
        return Err("payload is empty".into());
    }
    let mut json = serde_json::Deserializer::from_str(text);
    Seed(Some(shape))
        .deserialize(&mut json)
        .and_then(|value| json.end().map(|()| value))
        .map_err(|e| format!("payload is not valid JSON: {e}"))
}

/// [`read`], for a payload that must be an object.
pub fn object(payload: &[u8], shape: &'static Shape) -> Result<Object, String> {
    match read(payload, shape)? {
        Json::Object(Some(object)) => Ok(object),
        other => Err(format!(
            "payload must be a JSON object, found {}",
            other.kind()
        )),
    }
}

/// Reads one value; an object by the shape, if there is one.
#[derive(Clone, Copy)]
struct Seed(Option<&'static Shape>);

impl<'de> DeserializeSeed<'de> for Seed {
    type Value = Json;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed {
    type Value = Json;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E>(self, value: bool) -> Result<Json, E> {
        Ok(Json::Bool(value))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
        Ok(Json::Number(n.into()))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
        Ok(Json::Number(n.into()))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Json, E> {
        // serde_json yields only finite numbers.
        Ok(serde_json::Number::from_f64(n).map_or(Json::Null, Json::Number))
    }
    fn visit_str<E>(self, text: &str) -> Result<Json, E> {
        Ok(Json::Text(text.to_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Json::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let Some(shape) = self.0 else {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(Json::Object(None));
        };
        let mut object = Object {
            shape,
            values: vec![None; shape.fields.len()],
            duplicate: None,
        };
        while let Some(Name(index)) = map.next_key_seed(Name(shape.fields))? {
            let Some(index) = index else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let name = shape.fields[index];
            let value = if shape.spelled.contains(&name) {
                spelled(map.next_value()?)?
            } else {
                let nested = shape.nested.iter().find(|(n, _)| *n == name);
                map.next_value_seed(Seed(nested.map(|(_, shape)| *shape)))?
            };
            if object.values[index].is_some() {
                object.duplicate.get_or_insert(name);
            } else {
                object.values[index] = Some(value);
            }
        }
        Ok(Json::Object(Some(object)))
    }
}

/// A value with a number kept as spelled: two spellings are two values.
fn spelled<E: de::Error>(raw: &RawValue) -> Result<Json, E> {
    let text = raw.get();
    if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        Ok(Json::Spelled(text.to_owned()))
    } else {
        let mut json = serde_json::Deserializer::from_str(text);
        Seed(None).deserialize(&mut json).map_err(E::custom)
    }
}

/// A field name, as its index among the kept ones (if it is one); matched
/// without allocating. As a seed it holds the kept names, and yields
/// itself with the index.
struct Name<T>(T);

impl<'de> DeserializeSeed<'de> for Name<&'static [&'static str]> {
    type Value = Name<Option<usize>>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl Visitor<'_> for Name<&'static [&'static str]> {
    type Value = Name<Option<usize>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E>(self, name: &str) -> Result<Self::Value, E> {
        Ok(Name(self.0.iter().position(|n| *n == name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INNER: Shape = Shape {
        fields: &["id", "at"],
        spelled: &["at"],
        nested: &[],
    };
    const OUTER: Shape = Shape {
        fields: &["id", "at", "inner"],
        spelled: &["at"],
        nested: &[("inner", &INNER)],
    };

    fn read_object(payload: &str) -> Object {
        object(payload.as_bytes(), &OUTER).unwrap()
    }

    fn reason(payload: impl AsRef<[u8]>) -> String {
        object(payload.as_ref(), &OUTER).unwrap_err()
    }

    #[test]
    fn keeps_named_fields_and_reads_nested_objects_by_their_shape() {
        let outer = read_object(r#"{"id":"a","skip":{"id":1},"inner":{"id":[1],"inner":{}}}"#);
        assert_eq!(outer.get("id"), Some(&Json::Text("a".into())));
        assert_eq!(outer.get("skip"), None);
        let Some(Json::Object(Some(inner))) = outer.get("inner") else {
            panic!("inner read: {outer:?}")
        };
        assert_eq!(inner.get("id"), Some(&Json::Array));
        assert_eq!(inner.get("inner"), None, "not a field of the inner shape");
    }

    #[test]
    fn keeps_spelled_numbers_as_spelled_and_others_as_parsed() {
        let outer = read_object(r#"{"id": 1E2, "at": 1E2 }"#);
        let hundred = serde_json::Number::from_f64(100.0).unwrap();
        assert_eq!(outer.get("id"), Some(&Json::Number(hundred)));
        assert_eq!(outer.get("at"), Some(&Json::Spelled("1E2".into())));
        let at = read_object(r#"{"at":18446744073709551617}"#);
        let spelled = Json::Spelled("18446744073709551617".into());
        assert_eq!(at.get("at"), Some(&spelled));
        assert_eq!(
            read_object(r#"{"at":"t"}"#).get("at"),
            Some(&Json::Text("t".into()))
        );
    }

    #[test]
    fn notes_the_first_kept_field_seen_twice_and_keeps_its_first_value() {
        let outer = read_object(r#"{"x":1,"x":2,"id":"a","at":1,"id":"b","at":2}"#);
        assert_eq!(outer.duplicate(), Some("id"));
        assert_eq!(outer.get("id"), Some(&Json::Text("a".into())));
        assert_eq!(read_object(r#"{"x":1,"x":2}"#).duplicate(), None);
    }

    #[test]
    fn names_every_type_and_payload_problem() {
        for (payload, kind) in [
            ("null", "null"),
            ("true", "a boolean"),
            ("-1.5", "a number"),
            (r#""s""#, "a string"),
            ("[{}]", "an array"),
        ] {
            assert_eq!(
                reason(payload),
                format!("payload must be a JSON object, found {kind}")
            );
        }
        assert_eq!(reason(" \n"), "payload is empty");
        assert_eq!(
            reason([b'{', 0xff]),
            "payload is not valid UTF-8: invalid byte sequence at byte offset 1"
        );
        assert!(reason("\u{feff}{}").contains("byte-order mark"));
        assert_eq!(
            reason("{} {}"),
            "payload is not valid JSON: trailing characters at line 1 column 4"
        );
    }

    #[test]
    fn skips_deep_and_large_values_it_does_not_keep() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(
            reason(&deep),
            "payload must be a JSON object, found an array"
        );
        let payload = format!(r#"{{"skip":{deep},"id":{deep},"inner":{{"x":{deep}}}}}"#);
        assert_eq!(read_object(&payload).get("id"), Some(&Json::Array));
    }
}
