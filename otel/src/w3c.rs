//! Strict parsing and rendering of W3C Trace Context Level 2 carriers.
//!
//! This module turns `traceparent` / `tracestate` header values into
//! OpenTelemetry types and back. It follows the grammar of
//! <https://www.w3.org/TR/trace-context-2/> strictly: anything the
//! specification does not allow is rejected with a [`W3cError`] rather than
//! being repaired. OpenTelemetry's own `TraceContextPropagator` is deliberately
//! not used because it accepts values the specification forbids.

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

/// The name of the `traceparent` field (an HTTP header, a `_meta` key, a
/// carrier member).
pub const TRACEPARENT: &str = "traceparent";
/// The name of the `tracestate` field.
pub const TRACESTATE: &str = "tracestate";

/// Longest `traceparent` value examined at all; longer values are rejected
/// before any parsing work is done.
const MAX_TRACEPARENT_LEN: usize = 512;

/// Longest `tracestate` value examined at all; longer values are rejected
/// before any parsing work is done.
const MAX_TRACESTATE_LEN: usize = 8192;

/// Most non-empty list-members a `tracestate` may carry.
const MAX_LIST_MEMBERS: usize = 32;

/// Longest simple key (`lcalpha 0*255(...)`).
const MAX_SIMPLE_KEY_LEN: usize = 256;

/// Longest tenant-id of a multi-tenant key (`(lcalpha / DIGIT) 0*240(...)`).
const MAX_TENANT_ID_LEN: usize = 241;

/// Longest system-id of a multi-tenant key (`lcalpha 0*13(...)`).
const MAX_SYSTEM_ID_LEN: usize = 14;

/// Longest list-member value (`0*255(chr) nblk-chr`).
const MAX_VALUE_LEN: usize = 256;

// Field names used in `W3cError` messages.
const FIELD_VERSION: &str = "version";
const FIELD_TRACE_ID: &str = "trace-id";
const FIELD_PARENT_ID: &str = "parent-id";
const FIELD_FLAGS: &str = "trace-flags";

/// A parsed, valid `traceparent` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// The version byte as received (`00`..=`fe`; `ff` is never accepted).
    pub version: u8,
    /// The trace-id; never all zeroes.
    pub trace_id: TraceId,
    /// The parent-id (the caller's span id); never all zeroes.
    pub parent_id: SpanId,
    /// The trace-flags byte exactly as received.
    pub flags: TraceFlags,
}

impl TraceParent {
    /// Is the sampled flag (bit 0) set?
    pub fn sampled(&self) -> bool {
        self.flags.is_sampled()
    }

    /// Renders as a version-00 traceparent:
    /// `00-{trace_id}-{parent_id}-{flags:02x}` (lowercase).
    ///
    /// The full flags byte is rendered as received, not only the sampled bit.
    /// The version is always `00`, whatever version was parsed, because that is
    /// the only version this implementation knows how to produce.
    pub fn to_header(&self) -> String {
        render_traceparent(self.trace_id, self.parent_id, self.flags)
    }
}

/// Why a carrier value was rejected.
///
/// Display messages are short and human readable; they never echo the input,
/// only field names, positions and lengths.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum W3cError {
    /// The `traceparent` value is the empty string.
    #[error("traceparent is empty")]
    Empty,
    /// The value exceeds the size this parser is willing to look at.
    #[error("{header} is too long: {len} bytes (limit {limit})")]
    TooLong {
        /// Which header (`traceparent` or `tracestate`).
        header: &'static str,
        /// Length of the rejected value in bytes.
        len: usize,
        /// The limit that was exceeded.
        limit: usize,
    },
    /// The `traceparent` value does not have four `-`-separated fields.
    #[error("traceparent is not of the form version-traceid-parentid-flags")]
    WrongShape,
    /// A `traceparent` field has the wrong number of characters.
    #[error("traceparent {field} must be {expected} characters, found {found}")]
    FieldLength {
        /// The field name (`version`, `trace-id`, `parent-id`, `trace-flags`).
        field: &'static str,
        /// The required length.
        expected: usize,
        /// The length found.
        found: usize,
    },
    /// A `traceparent` field contains something other than lowercase hex
    /// digits (uppercase hex, non-hex characters, whitespace, ...).
    #[error("traceparent {field} is not lowercase hex")]
    NotLowercaseHex {
        /// The field name (`version`, `trace-id`, `parent-id`, `trace-flags`).
        field: &'static str,
    },
    /// The `traceparent` version is `ff`, which the specification forbids.
    #[error("traceparent version ff is invalid")]
    VersionFf,
    /// A version-00 `traceparent` has data after the trace-flags.
    #[error("version-00 traceparent has data after trace-flags")]
    TrailingData,
    /// The trace-id is all zeroes.
    #[error("traceparent trace-id is all zeroes")]
    ZeroTraceId,
    /// The parent-id is all zeroes.
    #[error("traceparent parent-id is all zeroes")]
    ZeroParentId,
    /// The `tracestate` has more non-empty list-members than allowed.
    #[error("tracestate has {count} list-members (limit 32)")]
    TooManyMembers {
        /// Number of non-empty list-members found.
        count: usize,
    },
    /// A `tracestate` list-member has no `=`.
    ///
    /// `index` is the 0-based position among the comma-separated list-members
    /// of the header, counting empty ones.
    #[error("tracestate list-member {index} has no '='")]
    MissingEquals {
        /// 0-based position of the list-member (empty members counted).
        index: usize,
    },
    /// A `tracestate` list-member key does not match the key grammar.
    #[error("tracestate list-member {index} has an invalid key")]
    BadKey {
        /// 0-based position of the list-member (empty members counted).
        index: usize,
    },
    /// A `tracestate` list-member value does not match the value grammar.
    #[error("tracestate list-member {index} has an invalid value")]
    BadValue {
        /// 0-based position of the list-member (empty members counted).
        index: usize,
    },
    /// A `tracestate` key appears more than once.
    #[error("tracestate list-member {index} repeats an earlier key")]
    DuplicateKey {
        /// 0-based position of the repeated list-member (empty members counted).
        index: usize,
    },
    /// The `tracestate` is valid per the specification but OpenTelemetry's
    /// [`TraceState`] refused to hold it (its key check is narrower than the
    /// specification for some multi-tenant keys).
    #[error("tracestate is valid but not representable as an OpenTelemetry TraceState")]
    Unrepresentable,
}

/// Parses a `traceparent` header value strictly.
///
/// # Errors
///
/// Returns a [`W3cError`] describing the first rule the value breaks.
pub fn parse_traceparent(value: &str) -> Result<TraceParent, W3cError> {
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return Err(W3cError::Empty);
    }
    if bytes.len() > MAX_TRACEPARENT_LEN {
        return Err(W3cError::TooLong {
            header: "traceparent",
            len: bytes.len(),
            limit: MAX_TRACEPARENT_LEN,
        });
    }

    // At most five pieces: the four defined fields and, when a `-` follows
    // the flags, whatever comes after it.
    let mut parts = bytes.splitn(5, |&b| b == b'-');

    let version_field = parts.next().ok_or(W3cError::WrongShape)?;
    let [version] = decode_hex::<1>(version_field, FIELD_VERSION)?;
    if version == 0xff {
        return Err(W3cError::VersionFf);
    }

    let trace_id_field = parts.next().ok_or(W3cError::WrongShape)?;
    let parent_id_field = parts.next().ok_or(W3cError::WrongShape)?;
    let flags_field = parts.next().ok_or(W3cError::WrongShape)?;
    let suffix = parts.next();

    let trace_id = decode_hex::<16>(trace_id_field, FIELD_TRACE_ID)?;
    let parent_id = decode_hex::<8>(parent_id_field, FIELD_PARENT_ID)?;
    let [flags] = decode_hex::<1>(flags_field, FIELD_FLAGS)?;

    // Version 00 is exactly 55 characters. Future versions may append fields,
    // but only after a `-`, which `splitn` has already guaranteed: any other
    // trailing character would have made the flags field longer than 2.
    if version == 0 && suffix.is_some() {
        return Err(W3cError::TrailingData);
    }
    if trace_id.iter().all(|&b| b == 0) {
        return Err(W3cError::ZeroTraceId);
    }
    if parent_id.iter().all(|&b| b == 0) {
        return Err(W3cError::ZeroParentId);
    }

    Ok(TraceParent {
        version,
        trace_id: TraceId::from_bytes(trace_id),
        parent_id: SpanId::from_bytes(parent_id),
        flags: TraceFlags::new(flags),
    })
}

/// Parses a `tracestate` header value strictly.
///
/// Empty (or whitespace-only) list-members are skipped; an empty value gives
/// an empty [`TraceState`]. Order of list-members is preserved.
///
/// # Errors
///
/// Returns a [`W3cError`] if the value is too long, has more than 32
/// non-empty list-members, or any list-member is malformed or repeats a key.
pub fn parse_tracestate(value: &str) -> Result<TraceState, W3cError> {
    if value.len() > MAX_TRACESTATE_LEN {
        return Err(W3cError::TooLong {
            header: "tracestate",
            len: value.len(),
            limit: MAX_TRACESTATE_LEN,
        });
    }

    let count = value
        .split(',')
        .filter(|member| !trim_ows(member).is_empty())
        .count();
    if count > MAX_LIST_MEMBERS {
        return Err(W3cError::TooManyMembers { count });
    }

    let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(count);
    for (index, member) in value.split(',').enumerate() {
        let member = trim_ows(member);
        if member.is_empty() {
            continue;
        }
        let (key, val) = member
            .split_once('=')
            .ok_or(W3cError::MissingEquals { index })?;
        if !is_valid_key(key) {
            return Err(W3cError::BadKey { index });
        }
        if !is_valid_value(val) {
            return Err(W3cError::BadValue { index });
        }
        if pairs.iter().any(|&(seen, _)| seen == key) {
            return Err(W3cError::DuplicateKey { index });
        }
        pairs.push((key, val));
    }

    TraceState::from_key_value(pairs).map_err(|_| W3cError::Unrepresentable)
}

/// Builds a remote SpanContext (is_remote = true) from a traceparent and an
/// optional tracestate string.
///
/// An invalid tracestate is dropped (`TraceState::default()`) without
/// invalidating the traceparent; the second element of the tuple reports the
/// tracestate error, if any, so the caller can log it.
///
/// # Errors
///
/// Returns the [`W3cError`] from [`parse_traceparent`] if the traceparent is
/// invalid.
pub fn span_context(
    traceparent: &str,
    tracestate: Option<&str>,
) -> Result<(SpanContext, Option<W3cError>), W3cError> {
    let parent = parse_traceparent(traceparent)?;
    let (state, state_error) = match tracestate.map(parse_tracestate) {
        None => (TraceState::default(), None),
        Some(Ok(state)) => (state, None),
        Some(Err(error)) => (TraceState::default(), Some(error)),
    };
    let cx = SpanContext::new(parent.trace_id, parent.parent_id, parent.flags, true, state);
    Ok((cx, state_error))
}

/// Renders a SpanContext as `(traceparent, Option<tracestate>)` — tracestate
/// `None` when empty. Returns `None` for an invalid SpanContext.
///
/// The traceparent is always version `00` and carries the full flags byte.
pub fn to_headers(cx: &SpanContext) -> Option<(String, Option<String>)> {
    if !cx.is_valid() {
        return None;
    }
    let traceparent = render_traceparent(cx.trace_id(), cx.span_id(), cx.trace_flags());
    let tracestate = cx.trace_state().header();
    let tracestate = if tracestate.is_empty() {
        None
    } else {
        Some(tracestate)
    };
    Some((traceparent, tracestate))
}

/// Formats a version-00 traceparent.
fn render_traceparent(trace_id: TraceId, span_id: SpanId, flags: TraceFlags) -> String {
    format!("00-{trace_id:032x}-{span_id:016x}-{:02x}", flags.to_u8())
}

/// Decodes exactly `2 * N` lowercase hex digits into `N` bytes.
fn decode_hex<const N: usize>(field: &[u8], name: &'static str) -> Result<[u8; N], W3cError> {
    if field.len() != 2 * N {
        return Err(W3cError::FieldLength {
            field: name,
            expected: 2 * N,
            found: field.len(),
        });
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(field.chunks_exact(2)) {
        let (Some(hi), Some(lo)) = (
            pair.first().copied().and_then(lower_hex_digit),
            pair.get(1).copied().and_then(lower_hex_digit),
        ) else {
            return Err(W3cError::NotLowercaseHex { field: name });
        };
        *byte = (hi << 4) | lo;
    }
    Ok(out)
}

/// Value of a lowercase hex digit, or `None` for anything else.
fn lower_hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Strips the optional whitespace (`OWS = *(SP / HTAB)`) around a list-member.
pub(crate) fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// A `tchar`, a byte of an HTTP token (RFC 9110 §5.6.2), as header names
/// and baggage keys are.
pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Characters allowed after the first character of keys, tenant-ids and
/// system-ids: `lcalpha / DIGIT / "_" / "-" / "*" / "/"`.
fn is_key_rest_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*' | b'/')
}

/// Checks `first` against `first_ok`, the rest against [`is_key_rest_char`],
/// and the total length against `max_len`.
fn is_valid_key_part(part: &[u8], max_len: usize, first_ok: fn(u8) -> bool) -> bool {
    match part.split_first() {
        Some((&first, rest)) => {
            part.len() <= max_len && first_ok(first) && rest.iter().all(|&b| is_key_rest_char(b))
        }
        None => false,
    }
}

/// Validates a list-member key: a simple key or `tenant-id "@" system-id`.
fn is_valid_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    match bytes.iter().position(|&b| b == b'@') {
        None => is_valid_key_part(bytes, MAX_SIMPLE_KEY_LEN, |b| b.is_ascii_lowercase()),
        Some(at) => {
            let (tenant, system) = bytes.split_at(at);
            let system = system.get(1..).unwrap_or_default();
            is_valid_key_part(tenant, MAX_TENANT_ID_LEN, |b| {
                b.is_ascii_lowercase() || b.is_ascii_digit()
            }) && is_valid_key_part(system, MAX_SYSTEM_ID_LEN, |b| b.is_ascii_lowercase())
        }
    }
}

/// `nblk-chr = %x21-2B / %x2D-3C / %x3E-7E`: printable ASCII except space,
/// `,` and `=`.
fn is_nblk_chr(b: u8) -> bool {
    matches!(b, 0x21..=0x2b | 0x2d..=0x3c | 0x3e..=0x7e)
}

/// Validates a list-member value: `0*255(chr) nblk-chr` with
/// `chr = %x20 / nblk-chr`.
fn is_valid_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    match bytes.split_last() {
        Some((&last, init)) => {
            bytes.len() <= MAX_VALUE_LEN
                && is_nblk_chr(last)
                && init.iter().all(|&b| b == b' ' || is_nblk_chr(b))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT_ID: &str = "00f067aa0ba902b7";
    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn tp(version: &str, trace_id: &str, parent_id: &str, flags: &str) -> String {
        format!("{version}-{trace_id}-{parent_id}-{flags}")
    }

    // ---- traceparent: valid version 00 ----

    #[test]
    fn valid_version_00_round_trips_ids_and_flags() {
        let parsed = parse_traceparent(VALID).unwrap();
        assert_eq!(parsed.version, 0);
        assert_eq!(parsed.trace_id, TraceId::from_hex(TRACE_ID).unwrap());
        assert_eq!(parsed.parent_id, SpanId::from_hex(PARENT_ID).unwrap());
        assert_eq!(parsed.flags, TraceFlags::SAMPLED);
        assert_eq!(parsed.to_header(), VALID);
    }

    #[test]
    fn sampled_reflects_bit_zero() {
        assert!(parse_traceparent(VALID).unwrap().sampled());
        let unsampled = parse_traceparent(&tp("00", TRACE_ID, PARENT_ID, "00")).unwrap();
        assert!(!unsampled.sampled());
        let other_bits_only = parse_traceparent(&tp("00", TRACE_ID, PARENT_ID, "fe")).unwrap();
        assert!(!other_bits_only.sampled());
    }

    #[test]
    fn version_00_keeps_unknown_flag_bits_as_received() {
        let value = tp("00", TRACE_ID, PARENT_ID, "ff");
        let parsed = parse_traceparent(&value).unwrap();
        assert_eq!(parsed.flags.to_u8(), 0xff);
        assert!(parsed.sampled());
        assert_eq!(parsed.to_header(), value);
        let random_bit = parse_traceparent(&tp("00", TRACE_ID, PARENT_ID, "02")).unwrap();
        assert_eq!(random_bit.flags.to_u8(), 0x02);
    }

    #[test]
    fn leading_zero_ids_render_padded() {
        let value = tp(
            "00",
            "00000000000000000000000000000001",
            "0000000000000001",
            "00",
        );
        assert_eq!(parse_traceparent(&value).unwrap().to_header(), value);
    }

    // ---- traceparent: case ----

    #[test]
    fn uppercase_hex_rejected_in_every_field() {
        let cases = [
            (tp("0A", TRACE_ID, PARENT_ID, "01"), FIELD_VERSION),
            (
                tp("00", "4BF92F3577B34DA6A3CE929D0E0E4736", PARENT_ID, "01"),
                FIELD_TRACE_ID,
            ),
            (
                tp("00", "4bf92f3577b34da6a3ce929d0e0e473A", PARENT_ID, "01"),
                FIELD_TRACE_ID,
            ),
            (
                tp("00", TRACE_ID, "00F067AA0BA902B7", "01"),
                FIELD_PARENT_ID,
            ),
            (tp("00", TRACE_ID, PARENT_ID, "0A"), FIELD_FLAGS),
        ];
        for (value, field) in cases {
            assert_eq!(
                parse_traceparent(&value),
                Err(W3cError::NotLowercaseHex { field }),
                "{value}"
            );
        }
    }

    #[test]
    fn uppercase_version_ff_rejected_as_not_lowercase() {
        assert_eq!(
            parse_traceparent(&tp("FF", TRACE_ID, PARENT_ID, "01")),
            Err(W3cError::NotLowercaseHex {
                field: FIELD_VERSION
            })
        );
    }

    #[test]
    fn lowercase_hex_letters_accepted_in_every_field() {
        let value = tp(
            "00",
            "abcdefabcdefabcdefabcdefabcdefab",
            "abcdefabcdefabcd",
            "0f",
        );
        assert!(parse_traceparent(&value).is_ok());
        let value = tp(
            "0a",
            "abcdefabcdefabcdefabcdefabcdefab",
            "abcdefabcdefabcd",
            "0f",
        );
        assert_eq!(parse_traceparent(&value).unwrap().version, 0x0a);
    }

    // ---- traceparent: field lengths ----

    #[test]
    fn short_trace_id_rejected() {
        let value = tp("00", &TRACE_ID[1..], PARENT_ID, "01");
        assert_eq!(
            parse_traceparent(&value),
            Err(W3cError::FieldLength {
                field: FIELD_TRACE_ID,
                expected: 32,
                found: 31
            })
        );
    }

    #[test]
    fn long_trace_id_rejected() {
        let value = tp("00", &format!("{TRACE_ID}a"), PARENT_ID, "01");
        assert_eq!(
            parse_traceparent(&value),
            Err(W3cError::FieldLength {
                field: FIELD_TRACE_ID,
                expected: 32,
                found: 33
            })
        );
    }

    #[test]
    fn short_parent_id_rejected() {
        let value = tp("00", TRACE_ID, &PARENT_ID[1..], "01");
        assert_eq!(
            parse_traceparent(&value),
            Err(W3cError::FieldLength {
                field: FIELD_PARENT_ID,
                expected: 16,
                found: 15
            })
        );
    }

    #[test]
    fn long_parent_id_rejected() {
        let value = tp("00", TRACE_ID, &format!("{PARENT_ID}a"), "01");
        assert_eq!(
            parse_traceparent(&value),
            Err(W3cError::FieldLength {
                field: FIELD_PARENT_ID,
                expected: 16,
                found: 17
            })
        );
    }

    #[test]
    fn three_digit_flags_rejected() {
        for version in ["00", "01"] {
            let value = tp(version, TRACE_ID, PARENT_ID, "001");
            assert_eq!(
                parse_traceparent(&value),
                Err(W3cError::FieldLength {
                    field: FIELD_FLAGS,
                    expected: 2,
                    found: 3
                }),
                "{value}"
            );
        }
    }

    #[test]
    fn one_digit_flags_and_version_rejected() {
        assert!(matches!(
            parse_traceparent(&tp("00", TRACE_ID, PARENT_ID, "1")),
            Err(W3cError::FieldLength {
                field: FIELD_FLAGS,
                ..
            })
        ));
        assert!(matches!(
            parse_traceparent(&tp("0", TRACE_ID, PARENT_ID, "01")),
            Err(W3cError::FieldLength {
                field: FIELD_VERSION,
                ..
            })
        ));
    }

    #[test]
    fn missing_fields_rejected_as_wrong_shape() {
        for value in [
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert_eq!(
                parse_traceparent(value),
                Err(W3cError::WrongShape),
                "{value}"
            );
        }
    }

    #[test]
    fn wrong_separator_rejected() {
        let value = VALID.replace('-', "_");
        assert!(parse_traceparent(&value).is_err());
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01";
        assert!(parse_traceparent(value).is_err());
    }

    // ---- traceparent: versions ----

    #[test]
    fn version_ff_rejected() {
        assert_eq!(
            parse_traceparent(&tp("ff", TRACE_ID, PARENT_ID, "01")),
            Err(W3cError::VersionFf)
        );
        assert_eq!(
            parse_traceparent(&format!("{}-extra", tp("ff", TRACE_ID, PARENT_ID, "01"))),
            Err(W3cError::VersionFf)
        );
    }

    #[test]
    fn version_fe_accepted() {
        let parsed = parse_traceparent(&tp("fe", TRACE_ID, PARENT_ID, "01")).unwrap();
        assert_eq!(parsed.version, 0xfe);
    }

    #[test]
    fn future_version_with_dash_suffix_parsed_by_first_four_fields() {
        let value = format!(
            "{}-what-ever=Goes HERE",
            tp("cc", TRACE_ID, PARENT_ID, "09")
        );
        let parsed = parse_traceparent(&value).unwrap();
        assert_eq!(parsed.version, 0xcc);
        assert_eq!(parsed.trace_id, TraceId::from_hex(TRACE_ID).unwrap());
        assert_eq!(parsed.parent_id, SpanId::from_hex(PARENT_ID).unwrap());
        assert_eq!(parsed.flags.to_u8(), 0x09);
        assert!(parsed.sampled());
        // Re-rendered as version 00, without the suffix.
        assert_eq!(parsed.to_header(), tp("00", TRACE_ID, PARENT_ID, "09"));
    }

    #[test]
    fn future_version_with_bare_dash_suffix_accepted() {
        let value = format!("{}-", tp("01", TRACE_ID, PARENT_ID, "01"));
        assert!(parse_traceparent(&value).is_ok());
    }

    #[test]
    fn future_version_exactly_55_chars_accepted() {
        let value = tp("01", TRACE_ID, PARENT_ID, "00");
        assert_eq!(value.len(), 55);
        assert_eq!(parse_traceparent(&value).unwrap().version, 1);
    }

    #[test]
    fn future_version_with_junk_not_separated_by_dash_rejected() {
        for junk in ["x", "0", " ", ".foo"] {
            let value = format!("{}{junk}", tp("01", TRACE_ID, PARENT_ID, "01"));
            assert!(
                matches!(
                    parse_traceparent(&value),
                    Err(W3cError::FieldLength {
                        field: FIELD_FLAGS,
                        ..
                    })
                ),
                "{value:?}"
            );
        }
    }

    #[test]
    fn future_version_still_validates_the_four_fields() {
        assert_eq!(
            parse_traceparent(&format!(
                "{}-x",
                tp("01", "00000000000000000000000000000000", PARENT_ID, "01")
            )),
            Err(W3cError::ZeroTraceId)
        );
        assert_eq!(
            parse_traceparent(&format!("{}-x", tp("01", TRACE_ID, PARENT_ID, "0G"))),
            Err(W3cError::NotLowercaseHex { field: FIELD_FLAGS })
        );
    }

    #[test]
    fn version_00_with_trailing_suffix_rejected() {
        for suffix in ["-", "-01", "-anything"] {
            let value = format!("{VALID}{suffix}");
            assert_eq!(
                parse_traceparent(&value),
                Err(W3cError::TrailingData),
                "{value}"
            );
        }
        assert!(parse_traceparent(&format!("{VALID}x")).is_err());
    }

    // ---- traceparent: zero ids ----

    #[test]
    fn all_zero_trace_id_rejected() {
        let value = tp("00", "00000000000000000000000000000000", PARENT_ID, "01");
        assert_eq!(parse_traceparent(&value), Err(W3cError::ZeroTraceId));
    }

    #[test]
    fn all_zero_parent_id_rejected() {
        let value = tp("00", TRACE_ID, "0000000000000000", "01");
        assert_eq!(parse_traceparent(&value), Err(W3cError::ZeroParentId));
    }

    // ---- traceparent: characters and whitespace ----

    #[test]
    fn non_hex_chars_rejected() {
        let cases = [
            (tp("0g", TRACE_ID, PARENT_ID, "01"), FIELD_VERSION),
            (
                tp("00", "4bf92f3577b34da6a3ce929d0e0e473z", PARENT_ID, "01"),
                FIELD_TRACE_ID,
            ),
            (
                tp("00", TRACE_ID, "00f067aa0ba902b+", "01"),
                FIELD_PARENT_ID,
            ),
            (tp("00", TRACE_ID, PARENT_ID, "0x"), FIELD_FLAGS),
        ];
        for (value, field) in cases {
            assert_eq!(
                parse_traceparent(&value),
                Err(W3cError::NotLowercaseHex { field }),
                "{value}"
            );
        }
    }

    #[test]
    fn non_ascii_rejected_without_panicking() {
        // "é" is two bytes, so this keeps the byte length of the id at 32.
        let value = tp("00", "4bf92f3577b34da6a3ce929d0e0e47é", PARENT_ID, "01");
        assert!(parse_traceparent(&value).is_err());
        assert!(parse_traceparent("ü").is_err());
        assert!(parse_traceparent(&format!("{VALID}é")).is_err());
    }

    #[test]
    fn whitespace_rejected() {
        for value in [
            format!(" {VALID}"),
            format!("{VALID} "),
            format!("\t{VALID}"),
            format!("{VALID}\n"),
            VALID.replacen('-', " -", 1),
            VALID.replacen('-', "- ", 1),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7- 1".to_string(),
        ] {
            assert!(parse_traceparent(&value).is_err(), "{value:?}");
        }
    }

    #[test]
    fn empty_string_rejected() {
        assert_eq!(parse_traceparent(""), Err(W3cError::Empty));
    }

    #[test]
    fn overlong_traceparent_rejected_before_parsing() {
        let value = format!("01-{TRACE_ID}-{PARENT_ID}-01-{}", "a".repeat(600));
        assert_eq!(
            parse_traceparent(&value),
            Err(W3cError::TooLong {
                header: "traceparent",
                len: value.len(),
                limit: MAX_TRACEPARENT_LEN
            })
        );
        // A future-version value up to the limit is still fine.
        let value = format!("01-{TRACE_ID}-{PARENT_ID}-01-{}", "a".repeat(512 - 56));
        assert_eq!(value.len(), 512);
        assert!(parse_traceparent(&value).is_ok());
    }

    #[test]
    fn error_messages_are_short_and_do_not_echo_input() {
        let secret = "SECRETSECRETSECRET";
        let inputs = [
            format!("{secret}{}", "x".repeat(600)),
            format!("{secret}-{secret}"),
            format!("00-{secret}-{PARENT_ID}-01"),
        ];
        for input in inputs {
            let message = parse_traceparent(&input).unwrap_err().to_string();
            assert!(message.len() <= 80, "{message}");
            assert!(!message.contains(secret), "{message}");
        }
        let message = parse_tracestate(&format!("a=1,{secret}=x"))
            .unwrap_err()
            .to_string();
        assert!(!message.contains(secret), "{message}");
        assert!(message.len() <= 80, "{message}");
    }

    // ---- tracestate: members ----

    #[test]
    fn tracestate_preserves_member_order() {
        let state = parse_tracestate("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7").unwrap();
        assert_eq!(state.header(), "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
        assert_eq!(state.get("rojo"), Some("00f067aa0ba902b7"));
    }

    #[test]
    fn tracestate_empty_value_gives_empty_state() {
        assert_eq!(parse_tracestate(""), Ok(TraceState::default()));
        assert_eq!(parse_tracestate(" , \t,"), Ok(TraceState::default()));
    }

    #[test]
    fn tracestate_32_members_accepted() {
        let value = (0..32)
            .map(|i| format!("k{i}=v{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let state = parse_tracestate(&value).unwrap();
        assert_eq!(state.header(), value);
        assert_eq!(state.get("k31"), Some("v31"));
    }

    #[test]
    fn tracestate_33_members_rejected() {
        let value = (0..33)
            .map(|i| format!("k{i}=v{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            parse_tracestate(&value),
            Err(W3cError::TooManyMembers { count: 33 })
        );
    }

    #[test]
    fn tracestate_empty_members_skipped_and_not_counted() {
        let state = parse_tracestate("a=1,,b=2, ,\t,c=3,").unwrap();
        assert_eq!(state.header(), "a=1,b=2,c=3");
        let value = (0..32)
            .map(|i| format!("k{i}=v{i}"))
            .collect::<Vec<_>>()
            .join(",,");
        assert!(parse_tracestate(&format!(",{value},")).is_ok());
    }

    #[test]
    fn tracestate_ows_around_members_trimmed() {
        let state = parse_tracestate(" \ta=1 ,\tb=2\t, c=x y ").unwrap();
        assert_eq!(state.header(), "a=1,b=2,c=x y");
        assert_eq!(state.get("a"), Some("1"));
    }

    #[test]
    fn tracestate_member_without_equals_rejected() {
        assert_eq!(
            parse_tracestate("a=1,,nokey"),
            Err(W3cError::MissingEquals { index: 2 })
        );
    }

    #[test]
    fn tracestate_overlong_value_rejected_before_parsing() {
        let value = "a=1,".repeat(2100);
        assert_eq!(
            parse_tracestate(&value),
            Err(W3cError::TooLong {
                header: "tracestate",
                len: value.len(),
                limit: MAX_TRACESTATE_LEN
            })
        );
    }

    // ---- tracestate: keys ----

    #[test]
    fn simple_keys_accepted() {
        for key in [
            "a",
            "rojo",
            "a0_-*/",
            "z9",
            &format!("a{}", "b".repeat(255)),
        ] {
            assert!(is_valid_key(key), "{key}");
            assert!(parse_tracestate(&format!("{key}=v")).is_ok(), "{key}");
        }
    }

    #[test]
    fn multi_tenant_keys_accepted() {
        for key in [
            "t@sys",
            "0tenant@vendor",
            "fw529a3039@dt",
            "a_-*/9@b_-*/9",
            &format!("{}@{}", "t".repeat(241), "s"),
        ] {
            assert!(is_valid_key(key), "{key}");
            assert!(parse_tracestate(&format!("{key}=v")).is_ok(), "{key}");
        }
    }

    #[test]
    fn fourteen_char_system_id_is_grammatical_but_unrepresentable() {
        // The W3C grammar allows a 14-character system-id, but
        // opentelemetry 0.33's TraceState only accepts up to 13.
        let key = format!("t@{}", "s".repeat(14));
        assert!(is_valid_key(&key));
        assert_eq!(
            parse_tracestate(&format!("{key}=v")),
            Err(W3cError::Unrepresentable)
        );
        assert!(parse_tracestate(&format!("t@{}=v", "s".repeat(13))).is_ok());
    }

    #[test]
    fn uppercase_key_rejected() {
        for key in ["Rojo", "rOjo", "T@sys", "t@Sys"] {
            assert!(!is_valid_key(key), "{key}");
        }
        assert_eq!(
            parse_tracestate("a=1,Rojo=2"),
            Err(W3cError::BadKey { index: 1 })
        );
    }

    #[test]
    fn simple_key_starting_with_digit_rejected() {
        assert!(!is_valid_key("0abc"));
        assert_eq!(
            parse_tracestate("0abc=1"),
            Err(W3cError::BadKey { index: 0 })
        );
        // ... but a tenant-id may start with a digit.
        assert!(is_valid_key("0abc@sys"));
    }

    #[test]
    fn key_starting_with_special_char_rejected() {
        for key in ["_a", "-a", "*a", "/a", "_t@sys", "t@_sys", "t@0sys"] {
            assert!(!is_valid_key(key), "{key}");
        }
    }

    #[test]
    fn too_long_keys_rejected() {
        assert!(!is_valid_key(&format!("a{}", "b".repeat(256))));
        assert_eq!(
            parse_tracestate(&format!("a{}=v", "b".repeat(256))),
            Err(W3cError::BadKey { index: 0 })
        );
        assert!(!is_valid_key(&format!("{}@s", "t".repeat(242))));
        assert!(!is_valid_key(&format!("t@{}", "s".repeat(15))));
    }

    #[test]
    fn malformed_keys_rejected() {
        for key in ["", "a b", "a.b", "a@", "@sys", "a@b@c", "é", "a\tb"] {
            assert!(!is_valid_key(key), "{key:?}");
        }
        assert_eq!(parse_tracestate("=v"), Err(W3cError::BadKey { index: 0 }));
        assert_eq!(parse_tracestate("a =v"), Err(W3cError::BadKey { index: 0 }));
    }

    // ---- tracestate: values ----

    #[test]
    fn values_with_printable_ascii_and_inner_spaces_accepted() {
        for value in ["x", " x", "a b c", "!\"#$%&'()*+-./:;<>?@[\\]^_`{|}~", "0"] {
            assert!(is_valid_value(value), "{value:?}");
        }
        let state = parse_tracestate("k=a b c").unwrap();
        assert_eq!(state.get("k"), Some("a b c"));
    }

    #[test]
    fn equals_or_comma_in_value_rejected() {
        assert!(!is_valid_value("a=b"));
        assert!(!is_valid_value("a,b"));
        assert_eq!(
            parse_tracestate("k=a=b"),
            Err(W3cError::BadValue { index: 0 })
        );
        // A comma always splits members, so `k=a,b` has a member `b` with no `=`.
        assert_eq!(
            parse_tracestate("k=a,b"),
            Err(W3cError::MissingEquals { index: 1 })
        );
    }

    #[test]
    fn value_with_trailing_space_rejected_by_grammar() {
        assert!(!is_valid_value("a "));
        assert!(!is_valid_value(" "));
        // In a header the trailing space is OWS and is trimmed, not kept.
        let state = parse_tracestate("k=a ,j=b ").unwrap();
        assert_eq!(state.get("k"), Some("a"));
        assert_eq!(state.get("j"), Some("b"));
    }

    #[test]
    fn empty_or_control_char_value_rejected() {
        assert!(!is_valid_value(""));
        assert_eq!(parse_tracestate("k="), Err(W3cError::BadValue { index: 0 }));
        assert_eq!(
            parse_tracestate("k= "),
            Err(W3cError::BadValue { index: 0 })
        );
        for value in ["a\tb", "a\nb", "\u{7f}", "é"] {
            assert!(!is_valid_value(value), "{value:?}");
        }
    }

    #[test]
    fn value_of_256_chars_accepted() {
        let value = "v".repeat(256);
        assert!(is_valid_value(&value));
        let state = parse_tracestate(&format!("k={value}")).unwrap();
        assert_eq!(state.get("k"), Some(value.as_str()));
    }

    #[test]
    fn value_of_257_chars_rejected() {
        let value = "v".repeat(257);
        assert!(!is_valid_value(&value));
        assert_eq!(
            parse_tracestate(&format!("k={value}")),
            Err(W3cError::BadValue { index: 0 })
        );
    }

    // ---- tracestate: duplicates ----

    #[test]
    fn duplicate_keys_rejected() {
        assert_eq!(
            parse_tracestate("a=1,b=2,,a=3"),
            Err(W3cError::DuplicateKey { index: 3 })
        );
        assert_eq!(
            parse_tracestate("t@sys=1,t@sys=1"),
            Err(W3cError::DuplicateKey { index: 1 })
        );
    }

    #[test]
    fn distinct_keys_sharing_a_tenant_or_system_accepted() {
        assert!(parse_tracestate("t@a=1,t@b=2,u@a=3,t=4").is_ok());
    }

    // ---- span_context / to_headers ----

    #[test]
    fn span_context_is_remote_with_parsed_fields() {
        let (cx, state_error) = span_context(VALID, Some("rojo=1,congo=2")).unwrap();
        assert!(cx.is_remote());
        assert!(cx.is_valid());
        assert!(cx.is_sampled());
        assert_eq!(cx.trace_id(), TraceId::from_hex(TRACE_ID).unwrap());
        assert_eq!(cx.span_id(), SpanId::from_hex(PARENT_ID).unwrap());
        assert_eq!(cx.trace_state().header(), "rojo=1,congo=2");
        assert_eq!(state_error, None);
    }

    #[test]
    fn span_context_without_tracestate_has_empty_state() {
        let (cx, state_error) = span_context(VALID, None).unwrap();
        assert_eq!(cx.trace_state(), &TraceState::default());
        assert_eq!(state_error, None);
    }

    #[test]
    fn span_context_with_invalid_tracestate_keeps_traceparent() {
        let (cx, state_error) = span_context(VALID, Some("a=1,a=2")).unwrap();
        assert!(cx.is_valid());
        assert!(cx.is_remote());
        assert_eq!(cx.trace_state(), &TraceState::default());
        assert_eq!(state_error, Some(W3cError::DuplicateKey { index: 1 }));
    }

    #[test]
    fn span_context_with_invalid_traceparent_fails() {
        assert_eq!(
            span_context(&VALID.to_uppercase(), Some("a=1")),
            Err(W3cError::NotLowercaseHex {
                field: FIELD_TRACE_ID
            })
        );
        assert_eq!(span_context("", None), Err(W3cError::Empty));
    }

    #[test]
    fn to_headers_round_trips() {
        let state = "rojo=00f067aa0ba902b7,t@sys=a b,congo=t61rcWkgMzE";
        let (cx, _) = span_context(VALID, Some(state)).unwrap();
        let (traceparent, tracestate) = to_headers(&cx).unwrap();
        assert_eq!(traceparent, VALID);
        assert_eq!(tracestate.as_deref(), Some(state));
        let (again, state_error) = span_context(&traceparent, tracestate.as_deref()).unwrap();
        assert_eq!(again, cx);
        assert_eq!(state_error, None);
    }

    #[test]
    fn to_headers_keeps_full_flags_byte_and_omits_empty_tracestate() {
        let value = tp("00", TRACE_ID, PARENT_ID, "a2");
        let (cx, _) = span_context(&value, None).unwrap();
        assert_eq!(to_headers(&cx), Some((value, None)));
    }

    #[test]
    fn to_headers_rejects_invalid_span_context() {
        assert_eq!(to_headers(&SpanContext::empty_context()), None);
        let no_span = SpanContext::new(
            TraceId::from_hex(TRACE_ID).unwrap(),
            SpanId::INVALID,
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        assert_eq!(to_headers(&no_span), None);
    }
}
