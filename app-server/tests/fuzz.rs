//! Property tests of the trace store's line reader, run by CI with a fixed
//! seed and a bounded number of cases. Longer, coverage-guided runs: the
//! `store_line` cargo-fuzz target in `fuzz/`.

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde_json::{Value, json};
use skein_app_server::trace_view::store::{complete_lines, parse_line, parse_lines};

fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x5ce1_2026),
        failure_persistence: None,
        ..Config::default()
    }
}

/// JSON shaped like a store line, with any value in any place.
fn store_line_like() -> impl Strategy<Value = Value> {
    let anything = prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        "[0-9a-fA-F]{0,34}".prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
        Just(json!([])),
        Just(json!({})),
    ];
    let attribute = (
        "[a-z.]{0,12}",
        prop_oneof![
            anything.clone().prop_map(|v| json!({"stringValue": v})),
            anything.clone().prop_map(|v| json!({"intValue": v})),
            anything.clone().prop_map(|v| json!({"doubleValue": v})),
            anything.clone().prop_map(|v| json!({"boolValue": v})),
            anything
                .clone()
                .prop_map(|v| json!({"arrayValue": {"values": [v]}})),
            anything.clone(),
        ],
    )
        .prop_map(|(key, value)| json!({"key": key, "value": value}));
    let span = (
        anything.clone(),
        anything.clone(),
        anything.clone(),
        anything.clone(),
        anything.clone(),
        anything.clone(),
        prop::collection::vec(attribute, 0..4),
        anything.clone(),
    )
        .prop_map(
            |(trace, span, parent, name, start, end, attributes, status)| {
                json!({
                    "traceId": trace, "spanId": span, "parentSpanId": parent, "name": name,
                    "startTimeUnixNano": start, "endTimeUnixNano": end,
                    "attributes": attributes, "status": status,
                    "events": [{"name": name, "timeUnixNano": start}],
                })
            },
        );
    prop::collection::vec(span, 0..4).prop_map(|spans| {
        json!({"resourceSpans": [{"resource": {"attributes": []},
            "scopeSpans": [{"scope": {"name": "skein"}, "spans": spans}]}]})
    })
}

proptest! {
    #![proptest_config(config(3_000))]

    #[test]
    fn any_text_is_read_or_refused_without_panicking(text in "\\PC{0,200}") {
        let _ = parse_line(&text);
    }

    #[test]
    fn store_shaped_lines_are_read_without_panicking(value in store_line_like()) {
        let text = value.to_string();
        prop_assert!(parse_line(&text).is_ok(), "{}", text);
    }

    #[test]
    fn any_bytes_split_into_lines_are_read_without_panicking(
        bytes in prop::collection::vec(any::<u8>(), 0..400)
    ) {
        let (lines, consumed) = complete_lines(&bytes);
        prop_assert!(consumed <= bytes.len());
        let mut spans = Vec::new();
        let mut warnings = Vec::new();
        parse_lines(Path::new("fuzz.jsonl"), &lines, 1, &mut spans, &mut warnings);
    }
}
