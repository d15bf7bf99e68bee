//! Bytes a job is given or gives back: its code, stdin, files and expected output, and what it
//! prints. kiln keeps them as bytes ([`Content`]) so that nothing a program reads or writes is
//! changed on the way; JSON carries text, so each value says how it is written ([`Encoded`]).
//!
//! One form for every value, wherever it appears (a job, a suite, a case, a line of a suite's
//! stream, a file's contents): a JSON string is UTF-8 text, taken as it is; an object
//! `{"base64": "..."}` is any bytes, in standard base64 with padding. A value is written the
//! same way whether it is alone or inside a map of files, so one rule covers them all and text,
//! the common case, needs no wrapping. Decoding is left to [`super::validate`], which knows the
//! field a value came in and so names it when the value is refused.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::text::text_enum;

/// A value as it came on the wire, not yet decoded: text, or an object naming its encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encoded {
    Text(String),
    /// The object's fields as given; [`Encoded::decode`] says whether they are `{"base64"}`.
    Tagged(BTreeMap<String, serde_json::Value>),
}

impl Default for Encoded {
    fn default() -> Self {
        Encoded::Text(String::new())
    }
}

impl From<&str> for Encoded {
    fn from(text: &str) -> Self {
        Encoded::Text(text.to_owned())
    }
}

impl From<String> for Encoded {
    fn from(text: String) -> Self {
        Encoded::Text(text)
    }
}

impl From<Content> for Encoded {
    /// Bytes as they would be sent: as text when they are UTF-8.
    fn from(content: Content) -> Self {
        match String::from_utf8(content.0) {
            Ok(text) => Encoded::Text(text),
            Err(bytes) => Encoded::Tagged(BTreeMap::from([(
                "base64".to_owned(),
                serde_json::Value::String(STANDARD.encode(bytes.as_bytes())),
            )])),
        }
    }
}

impl Encoded {
    /// The bytes this value stands for; the error says why not, for a message that names the
    /// field.
    pub fn decode(self) -> Result<Content, String> {
        let fields = match self {
            Encoded::Text(text) => return Ok(Content(text.into_bytes())),
            Encoded::Tagged(fields) => fields,
        };
        let mut names = fields.keys().map(String::as_str);
        match (names.next(), names.next()) {
            (Some("base64"), None) => {}
            (Some("base64"), Some(other)) | (Some(other), _) => {
                return Err(format!(
                    "unknown encoding {other:?}: give text as a string, or bytes as \
                     {{\"base64\": \"...\"}}"
                ));
            }
            (None, _) => {
                return Err("an empty object: give text as a string, or bytes as \
                            {\"base64\": \"...\"}"
                    .into());
            }
        }
        let Some(serde_json::Value::String(text)) = fields.get("base64") else {
            return Err("base64 must be a string".into());
        };
        STANDARD
            .decode(text)
            .map(Content)
            .map_err(|error| format!("invalid base64: {error}"))
    }
}

/// The schema of every value in the API's document: text, or `{"base64": "..."}`.
impl utoipa::PartialSchema for Encoded {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("UTF-8 text")),
            )
            .item(
                ObjectBuilder::new()
                    .property(
                        "base64",
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .content_encoding("base64"),
                    )
                    .required("base64")
                    .additional_properties(Some(
                        utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
                    ))
                    .description(Some("any bytes, in standard base64 with padding")),
            )
            .into()
    }
}

impl utoipa::ToSchema for Encoded {}

impl<'de> Deserialize<'de> for Encoded {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Value;
        impl<'de> Visitor<'de> for Value {
            type Value = Encoded;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, or an object {\"base64\": \"...\"}")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Encoded, E> {
                Ok(Encoded::Text(text.to_owned()))
            }

            fn visit_string<E: de::Error>(self, text: String) -> Result<Encoded, E> {
                Ok(Encoded::Text(text))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Encoded, A::Error> {
                let mut fields = BTreeMap::new();
                while let Some((name, value)) = map.next_entry::<String, serde_json::Value>()? {
                    fields.insert(name, value);
                }
                Ok(Encoded::Tagged(fields))
            }
        }
        deserializer.deserialize_any(Value)
    }
}

text_enum! {
    /// How a stream of output is written in a job's JSON.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
    pub enum Encoding {
        /// The text is the bytes, which were valid UTF-8.
        #[default]
        #[serde(rename = "utf-8")]
        Utf8 => "utf-8",
        /// The bytes in standard base64: they were not UTF-8, or base64 was asked for.
        #[serde(rename = "base64")]
        Base64 => "base64",
    }
}

/// Bytes, decoded. Serialized as [`Encoded`] writes them: a string when they are UTF-8, else
/// `{"base64": "..."}`; only kiln's own JSON (stored files) is read back with it, so reading it
/// refuses what [`Encoded::decode`] would.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Content(pub Vec<u8>);

impl Content {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The bytes as text, if they are UTF-8.
    pub fn as_text(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The bytes as text, any that are not UTF-8 replaced by U+FFFD. Borrowed when they all are:
    /// `String::from_utf8_lossy` walks the bytes a character at a time even then, which was a
    /// quarter of checking a streamed suite of 4 KB programs.
    pub fn lossy_text(&self) -> Cow<'_, str> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(&self.0),
        }
    }

    /// The bytes as a JSON string and the encoding that string is in: the text itself when the
    /// bytes are UTF-8 and `base64` is not asked for, else base64. Text is not copied.
    pub fn shown(self, base64: bool) -> (String, Encoding) {
        match String::from_utf8(self.0) {
            Ok(text) if !base64 => (text, Encoding::Utf8),
            Ok(text) => (STANDARD.encode(text), Encoding::Base64),
            Err(bytes) => (STANDARD.encode(bytes.as_bytes()), Encoding::Base64),
        }
    }
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_text() {
            Some(text) => fmt::Debug::fmt(text, f),
            None => write!(f, "{} bytes", self.0.len()),
        }
    }
}

impl From<&str> for Content {
    fn from(text: &str) -> Self {
        Content(text.as_bytes().to_vec())
    }
}

impl From<String> for Content {
    fn from(text: String) -> Self {
        Content(text.into_bytes())
    }
}

impl From<Vec<u8>> for Content {
    fn from(bytes: Vec<u8>) -> Self {
        Content(bytes)
    }
}

impl Serialize for Content {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.as_text() {
            Some(text) => serializer.serialize_str(text),
            None => {
                let mut map = BTreeMap::new();
                map.insert("base64", STANDARD.encode(&self.0));
                map.serialize(serializer)
            }
        }
    }
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Encoded::deserialize(deserializer)?
            .decode()
            .map_err(de::Error::custom)
    }
}

/// Decodes every value of a map of files, naming the file whose contents are refused.
pub fn decode_files(
    files: BTreeMap<String, Encoded>,
) -> Result<BTreeMap<String, Content>, (String, String)> {
    files
        .into_iter()
        .map(|(name, value)| match value.decode() {
            Ok(content) => Ok((name, content)),
            Err(why) => Err((name, why)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(json: &str) -> Encoded {
        serde_json::from_str(json).expect("a string or an object")
    }

    #[test]
    fn a_string_is_its_utf8_bytes_and_base64_any_bytes() {
        assert_eq!(encoded(r#""héllo""#).decode(), Ok(Content::from("héllo")));
        assert_eq!(
            encoded(r#"{"base64": "AP8K"}"#).decode(),
            Ok(Content(vec![0, 0xff, b'\n']))
        );
    }

    #[test]
    fn an_unknown_encoding_an_extra_field_and_bad_base64_are_refused_with_the_reason() {
        let refused = |json| encoded(json).decode().expect_err("refused");
        assert!(refused(r#"{"hex": "00"}"#).starts_with("unknown encoding \"hex\""));
        assert!(refused(r#"{"base64": "AA==", "x": 1}"#).starts_with("unknown encoding \"x\""));
        assert!(refused(r#"{}"#).starts_with("an empty object"));
        assert_eq!(refused(r#"{"base64": 7}"#), "base64 must be a string");
        assert!(refused(r#"{"base64": "not base64!"}"#).starts_with("invalid base64"));
        assert!(serde_json::from_str::<Encoded>("7").is_err(), "a number");
    }

    #[test]
    fn content_is_written_as_text_when_it_is_utf8_and_read_back_exactly() {
        let bytes = Content(vec![b'a', 0xc3, 0x28, 0]);
        let json = serde_json::to_string(&bytes).expect("json");
        assert_eq!(json, r#"{"base64":"YcMoAA=="}"#);
        let back: Content = serde_json::from_str(&json).expect("read back");
        assert_eq!(back, bytes);
        assert_eq!(
            serde_json::to_string(&Content::from("é")).expect("json"),
            r#""é""#
        );
    }

    #[test]
    fn output_is_shown_as_text_only_when_it_is_utf8_and_base64_was_not_asked_for() {
        let text = Content::from("ok\n");
        assert_eq!(
            text.clone().shown(false),
            ("ok\n".to_owned(), Encoding::Utf8)
        );
        assert_eq!(text.shown(true), ("b2sK".to_owned(), Encoding::Base64));
        assert_eq!(
            Content(vec![0xff]).shown(false),
            ("/w==".to_owned(), Encoding::Base64)
        );
    }
}
