//! Strict parsing of W3C Baggage (<https://www.w3.org/TR/baggage/>), and
//! carrying it in an OpenTelemetry [`Context`].
//!
//! A `baggage` value either follows the specification's grammar and limits
//! as a whole, or is ignored as a whole: no member is repaired or dropped
//! on its own. OpenTelemetry's `BaggagePropagator` is not used: it skips
//! malformed members one by one, keeps the first 64 of a longer list, and
//! accepts keys that are not tokens. A valid value is sent on exactly as
//! received (model API calls, MCP `_meta`, notifications); its members'
//! values are percent-decoded only to be read (`[otel] baggage_attributes`).

use opentelemetry::Context;
pub use skein_protocol::W3cBaggage;

use crate::w3c::{is_token_byte, trim_ows};

/// The name of the `baggage` field (an HTTP header, a `_meta` key, a
/// carrier member).
pub const BAGGAGE: &str = "baggage";

/// Longest `baggage` value accepted: the size every platform must be able
/// to propagate (the specification's limit).
pub const MAX_BAGGAGE_LEN: usize = 8192;

/// Most list-members a `baggage` value may carry (the specification's
/// limit).
pub const MAX_BAGGAGE_MEMBERS: usize = 64;

/// Why a `baggage` value was ignored. Messages never echo the value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BaggageError {
    /// Longer than [`MAX_BAGGAGE_LEN`].
    #[error("baggage is too long: {len} bytes (limit {MAX_BAGGAGE_LEN})")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// More list-members than [`MAX_BAGGAGE_MEMBERS`].
    #[error("baggage has {count} list-members (limit {MAX_BAGGAGE_MEMBERS})")]
    TooManyMembers {
        /// How many.
        count: usize,
    },
    /// An empty list-member (the value is empty, or has `,,`).
    #[error("baggage list-member {index} is empty")]
    EmptyMember {
        /// 0-based position.
        index: usize,
    },
    /// A list-member without `=`.
    #[error("baggage list-member {index} has no '='")]
    MissingEquals {
        /// 0-based position.
        index: usize,
    },
    /// A key that is not an RFC 7230 token.
    #[error("baggage list-member {index} has an invalid key")]
    BadKey {
        /// 0-based position.
        index: usize,
    },
    /// A value with a character outside `baggage-octet`.
    #[error("baggage list-member {index} has an invalid value")]
    BadValue {
        /// 0-based position.
        index: usize,
    },
    /// A malformed property after `;`.
    #[error("baggage list-member {index} has an invalid property")]
    BadProperty {
        /// 0-based position.
        index: usize,
    },
    /// The carrier's `baggage` member is not a string.
    #[error("baggage must be a string")]
    NotAString,
}

/// Parses a `baggage` value strictly.
///
/// # Errors
///
/// The first rule the value breaks: the whole value is then to be ignored.
pub fn parse_baggage(value: &str) -> Result<W3cBaggage, BaggageError> {
    if value.len() > MAX_BAGGAGE_LEN {
        return Err(BaggageError::TooLong { len: value.len() });
    }
    let count = value.split(',').count();
    if count > MAX_BAGGAGE_MEMBERS {
        return Err(BaggageError::TooManyMembers { count });
    }
    let mut members = Vec::with_capacity(count);
    for (index, member) in value.split(',').enumerate() {
        let member = trim_ows(member);
        if member.is_empty() {
            return Err(BaggageError::EmptyMember { index });
        }
        let mut parts = member.split(';');
        let pair = parts.next().unwrap_or_default();
        let (key, raw) = pair
            .split_once('=')
            .ok_or(BaggageError::MissingEquals { index })?;
        let (key, raw) = (trim_ows(key), trim_ows(raw));
        if !is_token(key) {
            return Err(BaggageError::BadKey { index });
        }
        if !raw.bytes().all(is_baggage_octet) {
            return Err(BaggageError::BadValue { index });
        }
        for property in parts {
            let property = trim_ows(property);
            let valid = match property.split_once('=') {
                Some((k, v)) => is_token(trim_ows(k)) && trim_ows(v).bytes().all(is_baggage_octet),
                None => is_token(property),
            };
            if !valid {
                return Err(BaggageError::BadProperty { index });
            }
        }
        members.push((key.to_owned(), percent_decode(raw)));
    }
    Ok(W3cBaggage {
        header: value.to_owned(),
        members,
    })
}

/// Whether `key` can be the key of a baggage list-member with a value: an
/// RFC 7230 token, short enough that `key=v` fits in [`MAX_BAGGAGE_LEN`].
pub fn is_baggage_key(key: &str) -> bool {
    is_token(key) && key.len() + "=v".len() <= MAX_BAGGAGE_LEN
}

/// Reads a carrier object's `baggage` member: `Ok(None)` when absent or
/// `null`, an error when it is not a string or not valid.
pub fn baggage_from_json(carrier: &serde_json::Value) -> Result<Option<W3cBaggage>, BaggageError> {
    match carrier.get(BAGGAGE) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => parse_baggage(s).map(Some),
        Some(_) => Err(BaggageError::NotAString),
    }
}

/// `cx` carrying `baggage` (what [`baggage_of`] reads back).
pub fn with_baggage(cx: Context, baggage: Option<W3cBaggage>) -> Context {
    match baggage {
        Some(baggage) => cx.with_value(baggage),
        None => cx,
    }
}

/// The baggage a context carries, if any.
pub fn baggage_of(cx: &Context) -> Option<&W3cBaggage> {
    cx.get::<W3cBaggage>()
}

/// Redacts a baggage value before it becomes an attribute; `None` drops it.
pub type Redactor = std::sync::Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// A span processor that copies the listed baggage keys of a span's parent
/// context onto the span as attributes, each value through a redactor:
/// every span of a request that carried baggage, and of the work it
/// started, gets them. Keys not listed are never copied.
#[derive(Clone)]
pub struct BaggageAttributes {
    keys: Vec<opentelemetry::Key>,
    redact: Redactor,
}

impl BaggageAttributes {
    /// Copies `keys`, each value through `redact`.
    pub fn new(keys: impl IntoIterator<Item = String>, redact: Redactor) -> Self {
        Self {
            keys: keys.into_iter().map(opentelemetry::Key::from).collect(),
            redact,
        }
    }
}

impl std::fmt::Debug for BaggageAttributes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BaggageAttributes")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl opentelemetry_sdk::trace::SpanProcessor for BaggageAttributes {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        use opentelemetry::trace::Span as _;
        let Some(baggage) = baggage_of(cx) else {
            return;
        };
        for key in &self.keys {
            if let Some(value) = baggage.get(key.as_str())
                && let Some(value) = (self.redact)(value)
            {
                span.set_attribute(opentelemetry::KeyValue::new(key.clone(), value));
            }
        }
    }

    fn on_end(&self, _span: opentelemetry_sdk::trace::SpanData) {}

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(
        &self,
        _timeout: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

/// RFC 7230 `token`: one or more `tchar`.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_byte)
}

/// `baggage-octet`: printable US-ASCII except space, `"`, `,`, `;` and `\`.
fn is_baggage_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

/// Percent-decodes a value; sequences that are not UTF-8 become U+FFFD (as
/// the specification asks), and a `%` not followed by two hex digits stays
/// as it is.
fn percent_decode(raw: &str) -> String {
    if !raw.contains('%') {
        return raw.to_owned();
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|b| (*b as char).to_digit(16)),
                bytes.get(i + 2).and_then(|b| (*b as char).to_digit(16)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_baggage_key_is_a_token_that_fits_a_member() {
        assert!(is_baggage_key("user.id"));
        for key in ["", "user id", " user.id", "user=x", "a=b,c", "a=b;p"] {
            assert!(!is_baggage_key(key), "{key:?}");
        }
        assert!(is_baggage_key(&"k".repeat(MAX_BAGGAGE_LEN - 2)));
        assert!(!is_baggage_key(&"k".repeat(MAX_BAGGAGE_LEN - 1)));
    }

    #[test]
    fn members_are_read_with_ows_properties_and_percent_decoding() {
        let b = parse_baggage("user.id=u-42 , exp = b;p1;p2=x,name=J%C3%B6rg%20M").expect("valid");
        assert_eq!(b.get("user.id"), Some("u-42"));
        assert_eq!(b.get("exp"), Some("b"));
        assert_eq!(b.get("name"), Some("Jörg M"));
        assert_eq!(b.get("p1"), None);
        assert_eq!(
            b.header,
            "user.id=u-42 , exp = b;p1;p2=x,name=J%C3%B6rg%20M"
        );
        assert_eq!(parse_baggage("k=").expect("empty value").get("k"), Some(""));
    }

    #[test]
    fn a_bad_value_is_refused_as_a_whole() {
        for (bad, expected) in [
            ("", BaggageError::EmptyMember { index: 0 }),
            ("a=1,,b=2", BaggageError::EmptyMember { index: 1 }),
            ("a=1,b", BaggageError::MissingEquals { index: 1 }),
            ("a b=1", BaggageError::BadKey { index: 0 }),
            ("(a)=1", BaggageError::BadKey { index: 0 }),
            ("a=x y", BaggageError::BadValue { index: 0 }),
            ("a=\"q\"", BaggageError::BadValue { index: 0 }),
            ("a=b\\c", BaggageError::BadValue { index: 0 }),
            ("a=é", BaggageError::BadValue { index: 0 }),
            ("a=1;=x", BaggageError::BadProperty { index: 0 }),
            ("a=1;p q", BaggageError::BadProperty { index: 0 }),
        ] {
            assert_eq!(parse_baggage(bad), Err(expected), "{bad:?}");
        }
    }

    #[test]
    fn the_limits_are_the_specifications() {
        let members: Vec<String> = (0..MAX_BAGGAGE_MEMBERS)
            .map(|i| format!("k{i}=v"))
            .collect();
        assert!(parse_baggage(&members.join(",")).is_ok());
        let one_more: Vec<String> = (0..=MAX_BAGGAGE_MEMBERS)
            .map(|i| format!("k{i}=v"))
            .collect();
        assert_eq!(
            parse_baggage(&one_more.join(",")),
            Err(BaggageError::TooManyMembers {
                count: MAX_BAGGAGE_MEMBERS + 1
            })
        );
        let longest = format!("k={}", "v".repeat(MAX_BAGGAGE_LEN - 2));
        assert!(parse_baggage(&longest).is_ok());
        assert_eq!(
            parse_baggage(&format!("{longest}v")),
            Err(BaggageError::TooLong {
                len: MAX_BAGGAGE_LEN + 1
            })
        );
    }

    #[test]
    fn a_carrier_member_is_read_only_when_a_string() {
        use serde_json::json;
        assert_eq!(baggage_from_json(&json!({"traceparent": "x"})), Ok(None));
        assert_eq!(
            baggage_from_json(&json!({"baggage": 7})),
            Err(BaggageError::NotAString)
        );
        let b = baggage_from_json(&json!({"baggage": "a=1"}))
            .expect("valid")
            .expect("present");
        assert_eq!(b.get("a"), Some("1"));
    }

    #[test]
    fn a_context_carries_it() {
        let b = parse_baggage("a=1").expect("valid");
        let cx = with_baggage(Context::new(), Some(b.clone()));
        assert_eq!(baggage_of(&cx), Some(&b));
        assert_eq!(baggage_of(&Context::new()), None);
    }
}
