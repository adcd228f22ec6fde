//! The trace store's line reader on any file contents: never panics.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use skein_app_server::trace_view::store::{complete_lines, parse_lines};

fuzz_target!(|bytes: &[u8]| {
    let (lines, consumed) = complete_lines(bytes);
    assert!(consumed <= bytes.len());
    let mut spans = Vec::new();
    let mut warnings = Vec::new();
    parse_lines(Path::new("fuzz.jsonl"), &lines, 1, &mut spans, &mut warnings);
});
