//! Property tests of the frame parser, the classifier and every method's
//! params, run by CI with a fixed seed and a bounded number of cases, plus
//! the corpus of inputs a fuzzer once found mishandled (`tests/corpus/`).
//! Longer, coverage-guided runs: the cargo-fuzz targets in `fuzz/`.

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde_json::{Map, Value, json};
use skein_app_server_protocol::jsonrpc::{INVALID_PARAMS, PARSE_ERROR};
use skein_app_server_protocol::v2::*;
use skein_app_server_protocol::{
    ErrorObject, Frame, Incoming, Outgoing, parse_frame, parse_params,
};

/// Fixed seed and case count: the same inputs on every run.
fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x5ce1_2026),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Member names that mean something in an envelope or in params, and
/// some that do not.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("id".to_owned()),
        Just("method".to_owned()),
        Just("params".to_owned()),
        Just("jsonrpc".to_owned()),
        Just("trace".to_owned()),
        Just("threadId".to_owned()),
        Just("turnId".to_owned()),
        Just("input".to_owned()),
        Just("clientInfo".to_owned()),
        Just("_meta".to_owned()),
        "[a-zA-Z_]{1,8}",
    ]
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        Just(Value::from("2.0")),
        Just(Value::from("model/list")),
        Just(Value::from("turn/start")),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A JSON-RPC id of any allowed kind.
fn request_id() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,16}".prop_map(Value::from),
    ]
}

/// The id an answer to `incoming` carries, as JSON.
fn answered_id(incoming: &Incoming) -> Option<Value> {
    let id = match incoming {
        Incoming::Request(request) => Some(request.id.clone()),
        Incoming::Invalid { id, .. } => id.clone(),
        _ => None,
    }?;
    let answer = Outgoing::Error {
        id: Some(id),
        error: ErrorObject::internal("x"),
    };
    let json: Value = serde_json::from_str(&answer.to_json()).ok()?;
    Some(json["id"].clone())
}

proptest! {
    #![proptest_config(config(4_000))]

    #[test]
    fn any_bytes_parse_or_fail_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_frame(&bytes);
    }

    #[test]
    fn any_json_is_classified(value in json_value()) {
        let text = value.to_string();
        prop_assert!(parse_frame(text.as_bytes()).is_ok(), "{text}");
    }

    #[test]
    fn every_request_is_answered_with_its_own_id(
        id in request_id(),
        method in ".{0,24}",
        params in prop::option::of(json_value()),
        noise in prop::collection::vec((key(), json_value()), 0..3),
    ) {
        let mut message = Map::new();
        for (k, v) in noise {
            message.insert(k, v);
        }
        message.insert("jsonrpc".into(), json!("2.0"));
        message.insert("id".into(), id.clone());
        message.insert("method".into(), Value::from(method));
        if let Some(params) = params {
            message.insert("params".into(), params);
        }
        let text = Value::Object(message).to_string();
        let frame = parse_frame(text.as_bytes());
        let Ok(Frame::Single(incoming)) = frame else {
            return Err(TestCaseError::fail(format!("{text}: {frame:?}")));
        };
        prop_assert_eq!(answered_id(&incoming), Some(id), "{}", text);
    }

    #[test]
    fn every_method_refuses_bad_params_with_invalid_params(params in prop::option::of(json_value())) {
        fn check<T: serde::de::DeserializeOwned>(params: &Option<Value>) -> Result<(), TestCaseError> {
            if let Err(error) = parse_params::<T>(params.clone()) {
                prop_assert_eq!(error.code, INVALID_PARAMS);
                prop_assert!(!error.message.is_empty());
            }
            Ok(())
        }
        check::<InitializeParams>(&params)?;
        check::<ModelListParams>(&params)?;
        check::<ThreadStartParams>(&params)?;
        check::<ThreadListParams>(&params)?;
        check::<ThreadReadParams>(&params)?;
        check::<ThreadIdParams>(&params)?;
        check::<ThreadForkParams>(&params)?;
        check::<ThreadResumeParams>(&params)?;
        check::<TurnStartParams>(&params)?;
        check::<TurnSteerParams>(&params)?;
        check::<TurnInterruptParams>(&params)?;
        check::<ReviewStartParams>(&params)?;
        check::<ThreadSetNameParams>(&params)?;
        check::<ThreadLoadedListParams>(&params)?;
        check::<ThreadTurnsListParams>(&params)?;
        check::<GetAccountParams>(&params)?;
        check::<ConfigReadParams>(&params)?;
        check::<SkillsListParams>(&params)?;
        check::<PageParams>(&params)?;
    }
}

/// Every input a fuzzer found answered without its id (or with another
/// id) is answered with its own id now.
#[test]
fn past_findings_keep_their_ids() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/parse_frame");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read corpus file");
        let frame = parse_frame(&bytes);
        let Ok(Frame::Single(incoming)) = &frame else {
            panic!("{}: {frame:?}", path.display());
        };
        let id = answered_id(incoming);
        assert!(
            id.as_ref().is_some_and(|id| !id.is_null()),
            "{}: answered with id {id:?}: {incoming:?}",
            path.display()
        );
        // Where the whole message is JSON serde_json can hold, the id
        // comes back exactly.
        if let Ok(sent) = serde_json::from_slice::<Value>(&bytes) {
            assert_eq!(id.as_ref(), sent.get("id"), "{}", path.display());
        }
        if let Incoming::Invalid { error, .. } = incoming {
            assert_ne!(error.code, PARSE_ERROR);
        }
        seen += 1;
    }
    assert!(seen >= 5, "the corpus holds {seen} files");
}
