//! The wire protocol of the Skein app-server.
//!
//! - [`jsonrpc`]: JSON-RPC 2.0 envelopes, classification of inbound frames
//!   (single messages and batches) and error codes.
//! - [`v2`]: the v2 method parameter and result types, and the typed
//!   notifications and thread items.
//! - [`Method`]: the closed set of request methods the server knows, which
//!   keeps span names bounded.
//! - [`parse_params`]: typed parameter parsing whose errors name the field.

pub mod jsonrpc;
pub mod v2;

pub use jsonrpc::{
    ErrorObject, Frame, Incoming, Notification, Outgoing, OutgoingNotification, RawNumber, Request,
    RequestId, parse_frame,
};

use serde::de::DeserializeOwned;
use serde_json::Value;

macro_rules! methods {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// Every request method the server knows.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Method {
            $(
                #[doc = concat!("`", $name, "`")]
                $variant,
            )*
        }

        impl Method {
            /// Every known method.
            pub const ALL: &'static [Method] = &[$(Method::$variant),*];

            /// The method for a wire name, if it is known.
            pub fn from_name(name: &str) -> Option<Method> {
                match name {
                    $($name => Some(Method::$variant),)*
                    _ => None,
                }
            }

            /// The wire name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Method::$variant => $name,)*
                }
            }
        }
    };
}

methods! {
    Initialize => "initialize",
    ModelList => "model/list",
    ThreadStart => "thread/start",
    ThreadList => "thread/list",
    ThreadRead => "thread/read",
    ThreadResume => "thread/resume",
    ThreadFork => "thread/fork",
    ThreadUnsubscribe => "thread/unsubscribe",
    ThreadCompactStart => "thread/compact/start",
    TurnStart => "turn/start",
    TurnSteer => "turn/steer",
    TurnInterrupt => "turn/interrupt",
    ReviewStart => "review/start",
    ThreadLoadedList => "thread/loaded/list",
    ThreadArchive => "thread/archive",
    ThreadUnarchive => "thread/unarchive",
    ThreadNameSet => "thread/name/set",
    ThreadTurnsList => "thread/turns/list",
    AccountRead => "account/read",
    AccountRateLimitsRead => "account/rateLimits/read",
    ConfigRead => "config/read",
    ConfigRequirementsRead => "configRequirements/read",
    SkillsList => "skills/list",
    AppList => "app/list",
    McpServerStatusList => "mcpServerStatus/list",
    HooksList => "hooks/list",
    CollaborationModeList => "collaborationMode/list",
    PluginInstalled => "plugin/installed",
    ThreadBackgroundTerminalsList => "thread/backgroundTerminals/list",
    ThreadGoalGet => "thread/goal/get",
    AccountBedrockCheckGovCloudRequirements => "account/bedrock/checkGovCloudRequirements",
}

/// Name of the notification a client sends after `initialize`.
pub const INITIALIZED_NOTIFICATION: &str = "initialized";

/// Parses request parameters into `T`.
///
/// Absent parameters parse as an empty object, so methods whose parameters
/// are all optional accept none. The `_meta` member (the MCP convention for
/// trace carriers) is ignored. The error message names the offending field
/// by its path, e.g. `clientInfo.version: missing field`.
pub fn parse_params<T: DeserializeOwned>(params: Option<Value>) -> Result<T, ErrorObject> {
    let mut params = params.unwrap_or_else(|| Value::Object(Default::default()));
    if let Value::Object(map) = &mut params {
        map.remove("_meta");
    }
    serde_path_to_error::deserialize::<_, T>(params).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path == "." || path.is_empty() {
            ErrorObject::invalid_params(inner)
        } else {
            ErrorObject::invalid_params(format!("`{path}`: {inner}"))
        }
    })
}

/// Shortens `text` to at most `max` bytes (on a char boundary) for use in
/// messages and logs, marking the cut with `…`.
pub fn truncate_for_display(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_method_round_trips_through_its_name() {
        for method in Method::ALL {
            assert_eq!(Method::from_name(method.as_str()), Some(*method));
        }
        assert_eq!(Method::from_name("no/such"), None);
    }

    #[test]
    fn params_error_names_the_nested_field() {
        let err = parse_params::<v2::InitializeParams>(Some(
            json!({"clientInfo": {"name": 5, "version": "1"}}),
        ))
        .expect_err("must fail");
        assert_eq!(err.code, jsonrpc::INVALID_PARAMS);
        assert!(err.message.contains("clientInfo.name"), "{}", err.message);
    }

    #[test]
    fn params_error_names_a_missing_field() {
        let err = parse_params::<v2::InitializeParams>(None).expect_err("must fail");
        assert!(err.message.contains("clientInfo"), "{}", err.message);
    }

    #[test]
    fn absent_params_parse_when_all_fields_are_optional() {
        let params: v2::ThreadListParams = parse_params(None).expect("ok");
        assert_eq!(params, v2::ThreadListParams::default());
    }

    #[test]
    fn meta_member_is_ignored() {
        let params: v2::ThreadReadParams = parse_params(Some(
            json!({"threadId": "t", "_meta": {"traceparent": "x"}}),
        ))
        .expect("ok");
        assert_eq!(params.thread_id, "t");
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_for_display("héllo", 2), "h…");
        assert_eq!(truncate_for_display("abc", 10), "abc");
    }
}
