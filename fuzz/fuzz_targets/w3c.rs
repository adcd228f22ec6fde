//! The W3C Trace Context parsers on any text: never panic, and a parsed
//! `traceparent` renders to a header that parses to the same ids and flags.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_otel::w3c::{parse_traceparent, parse_tracestate};

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Ok(parsed) = parse_traceparent(text) {
        // Rendered as version 00 (a future version keeps the fields 00
        // defines): the ids and flags survive.
        let rendered = parse_traceparent(&parsed.to_header()).expect("a rendered header parses");
        assert_eq!(
            (rendered.trace_id, rendered.parent_id, rendered.flags),
            (parsed.trace_id, parsed.parent_id, parsed.flags)
        );
    }
    let _ = parse_tracestate(text);
});
