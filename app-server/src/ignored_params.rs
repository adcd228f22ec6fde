//! Codex parameters Skein accepts without acting on them.
//!
//! A Codex client sends override fields (working directory, approval
//! policy, sandbox, reasoning effort, ...) that have no meaning in Skein.
//! They are accepted, so the request still works, and named in a debug log,
//! so nobody wonders why they had no effect. A field leaves its list here
//! once Skein acts on it.

use serde_json::Value;
use skein_app_server_protocol::Method;

/// Codex `thread/start` parameters Skein accepts and does not act on.
pub const THREAD_START_IGNORED: &[&str] = &[
    "approvalPolicy",
    "approvalsReviewer",
    "baseInstructions",
    "config",
    "cwd",
    "developerInstructions",
    "personality",
    "sandbox",
    "serviceName",
    "serviceTier",
    "sessionStartSource",
    "threadSource",
];
/// Codex `thread/resume` parameters Skein accepts and does not act on.
pub const THREAD_RESUME_IGNORED: &[&str] = &[
    "approvalPolicy",
    "approvalsReviewer",
    "baseInstructions",
    "config",
    "cwd",
    "developerInstructions",
    "model",
    "modelProvider",
    "personality",
    "sandbox",
    "serviceTier",
];
/// Codex `thread/fork` parameters Skein accepts and does not act on.
pub const THREAD_FORK_IGNORED: &[&str] = &[
    "approvalPolicy",
    "approvalsReviewer",
    "baseInstructions",
    "config",
    "cwd",
    "developerInstructions",
    "ephemeral",
    "model",
    "modelProvider",
    "sandbox",
    "serviceTier",
    "threadSource",
];
/// Codex `turn/start` parameters Skein accepts and does not act on.
pub const TURN_START_IGNORED: &[&str] = &[
    "approvalPolicy",
    "approvalsReviewer",
    "clientUserMessageId",
    "cwd",
    "disabledPluginIds",
    "effort",
    "outputSchema",
    "parentTurnId",
    "personality",
    "rootTurnId",
    "sandboxPolicy",
    "serviceTier",
    "serviceTierForTurn",
    "summary",
    "toolOutput",
    "turnTrigger",
];

/// Codex `thread/list` filters and orderings Skein does not apply: it
/// lists every thread of its store (archived or not, as asked), newest
/// first.
pub const THREAD_LIST_IGNORED: &[&str] = &[
    "currentAccountOnly",
    "cwd",
    "excludedThreadIds",
    "modelProviders",
    "originators",
    "searchTerm",
    "sectionId",
    "sortDirection",
    "sortKey",
    "sourceKinds",
    "useStateDbOnly",
];
/// Codex `turn/steer` parameters Skein accepts and does not act on.
pub const TURN_STEER_IGNORED: &[&str] = &["clientUserMessageId"];

/// The fields of `ignored` that `params` carries (with a non-null value).
pub fn present<'a>(params: Option<&Value>, ignored: &[&'a str]) -> Vec<&'a str> {
    let Some(Value::Object(map)) = params else {
        return Vec::new();
    };
    ignored
        .iter()
        .copied()
        .filter(|key| map.get(*key).is_some_and(|v| !v.is_null()))
        .collect()
}

/// Logs (at debug) the Codex parameters of `method` that are present and
/// that Skein accepts without acting on them.
pub fn log_ignored(method: Method, params: Option<&Value>, ignored: &[&str]) {
    let present = present(params, ignored);
    if !present.is_empty() {
        tracing::debug!(
            method = method.as_str(),
            ignored = ?present,
            "accepting parameters this server does not act on"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_present_non_null_ignored_fields_are_named() {
        let params = json!({"threadId": "t", "cwd": "/x", "effort": null, "summary": "auto"});
        assert_eq!(
            present(Some(&params), TURN_START_IGNORED),
            ["cwd", "summary"]
        );
        assert!(present(None, TURN_START_IGNORED).is_empty());
        assert!(present(Some(&json!([1])), TURN_START_IGNORED).is_empty());
    }

    #[test]
    fn thread_list_filters_and_steer_message_ids_are_named() {
        let list = json!({"limit": 5, "archived": true, "searchTerm": "x", "sortKey": "updated_at",
                          "cwd": ["/a"], "sectionId": null});
        assert_eq!(
            present(Some(&list), THREAD_LIST_IGNORED),
            ["cwd", "searchTerm", "sortKey"]
        );
        let steer = json!({"threadId": "t", "expectedTurnId": "u", "input": [],
                           "clientUserMessageId": "m-1"});
        assert_eq!(
            present(Some(&steer), TURN_STEER_IGNORED),
            ["clientUserMessageId"]
        );
    }
}
