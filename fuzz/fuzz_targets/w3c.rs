//! The W3C Trace Context parsers on any text: never panic, and a parsed
//! `traceparent` renders to a header that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_otel::w3c::{parse_traceparent, parse_tracestate};

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Ok(parsed) = parse_traceparent(text) {
        let rendered = parsed.to_header();
        assert_eq!(parse_traceparent(&rendered).ok(), Some(parsed));
    }
    let _ = parse_tracestate(text);
});
