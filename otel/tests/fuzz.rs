//! Property tests of the W3C Trace Context parser, run by CI with a fixed
//! seed and a bounded number of cases. Longer, coverage-guided runs: the
//! `w3c` cargo-fuzz target in `fuzz/`.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use skein_otel::w3c::{parse_traceparent, parse_tracestate};

fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x5ce1_2026),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Strings close to a valid `traceparent`, so the parser's deeper rules
/// are reached, not only its length check.
fn traceparent_like() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just("00".to_owned()),
            Just("bb".to_owned()),
            "[0-9a-fA-Fz-]{0,3}"
        ],
        "[0-9a-f]{30,34}",
        "[0-9a-fA-F]{14,18}",
        "[0-9a-f]{1,3}",
        "(-[ -~]{0,8})?",
    )
        .prop_map(|(v, t, s, f, rest)| format!("{v}-{t}-{s}-{f}{rest}"))
}

proptest! {
    #![proptest_config(config(4_000))]

    #[test]
    fn any_traceparent_parses_or_fails_without_panicking(text in "\\PC{0,80}") {
        let _ = parse_traceparent(&text);
    }

    #[test]
    fn a_parsed_traceparent_renders_back_to_itself(text in traceparent_like()) {
        if let Ok(parsed) = parse_traceparent(&text) {
            let rendered = parsed.to_header();
            // Version 00 renders exactly; a future version keeps the parts
            // version 00 understands.
            let again = parse_traceparent(&rendered);
            prop_assert!(again.is_ok(), "{} rendered as {}", text, rendered);
            if let Ok(again) = again {
                prop_assert_eq!(
                    (again.trace_id, again.parent_id, again.flags),
                    (parsed.trace_id, parsed.parent_id, parsed.flags)
                );
            }
            if text.starts_with("00-") {
                prop_assert_eq!(rendered, text);
            }
        }
    }

    #[test]
    fn any_tracestate_parses_or_fails_without_panicking(text in "[ -~]{0,600}") {
        let _ = parse_tracestate(&text);
    }
}
