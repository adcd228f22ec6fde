//! Every method's params parser on any JSON: never panics, and refuses
//! with -32602.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use skein_app_server_protocol::jsonrpc::INVALID_PARAMS;
use skein_app_server_protocol::parse_params;
use skein_app_server_protocol::v2::*;

fn check<T: serde::de::DeserializeOwned>(params: &Option<Value>) {
    if let Err(error) = parse_params::<T>(params.clone()) {
        assert_eq!(error.code, INVALID_PARAMS);
    }
}

fuzz_target!(|bytes: &[u8]| {
    let params = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Null) => None,
        Ok(value) => Some(value),
        Err(_) => return,
    };
    check::<InitializeParams>(&params);
    check::<ModelListParams>(&params);
    check::<ThreadStartParams>(&params);
    check::<ThreadListParams>(&params);
    check::<ThreadReadParams>(&params);
    check::<ThreadIdParams>(&params);
    check::<ThreadForkParams>(&params);
    check::<ThreadResumeParams>(&params);
    check::<TurnStartParams>(&params);
    check::<TurnSteerParams>(&params);
    check::<TurnInterruptParams>(&params);
    check::<ReviewStartParams>(&params);
    check::<ThreadSetNameParams>(&params);
    check::<ThreadLoadedListParams>(&params);
    check::<ThreadTurnsListParams>(&params);
    check::<GetAccountParams>(&params);
    check::<ConfigReadParams>(&params);
    check::<SkillsListParams>(&params);
    check::<PageParams>(&params);
});
