//! Codex v2 wire conformance: a client written for the Codex app-server
//! works with Skein.
//!
//! One session drives every method Skein implements, over stdio and over
//! WebSocket, sending requests shaped as a Codex client sends them (checked
//! against Codex's `ClientRequest` schema) and validating every result and
//! every notification received against Codex's own JSON Schemas
//! (`tests/schemas/codex-<version>/`, see `tests/schemas/regenerate.sh`).

#[macro_use]
mod support;

use serde_json::{Value, json};
use skein_app_server_protocol::Method;
use support::codex_schema::{
    NOTIFICATION_SCHEMAS, RESULT_SCHEMAS, assert_codex_request, assert_valid_notification,
    assert_valid_result, errors, notification_schema, result_schema,
};
use support::{Client, NOT_INITIALIZED, Server, ServerOptions, Transport};

both_transports!(every_method_and_notification_conforms_to_the_codex_schemas);

/// Sends a Codex-shaped request, checks its result against Codex's schema
/// and returns the result.
async fn call(client: &mut Client, seen: &mut Vec<String>, method: &str, params: Value) -> Value {
    assert_codex_request(method, &params);
    let result = client.request(method, params, None).await.result().clone();
    assert_valid_result(method, &result);
    seen.push(method.to_owned());
    result
}

async fn every_method_and_notification_conforms_to_the_codex_schemas(transport: Transport) {
    // Slow enough that a long turn is still running when it is steered and
    // interrupted; short inputs still finish quickly.
    let mut server =
        Server::start_with(transport, ServerOptions::default().echo_delay_ms(20)).await;
    let mut client = server.connect().await;
    let mut seen = Vec::new();

    // Before initialize: Codex's code and message.
    let early = client.request("model/list", json!({}), None).await;
    assert_eq!(early.error_code(), NOT_INITIALIZED, "{}", early.message);
    assert!(
        early.message["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Not initialized")),
        "{}",
        early.message
    );

    let init = call(
        &mut client,
        &mut seen,
        "initialize",
        json!({"clientInfo": {"name": "codex-conformance", "title": null, "version": "1.0.0"}}),
    )
    .await;
    assert_eq!(init["platformOs"], json!(std::env::consts::OS), "{init}");
    client.send(json!({"method": "initialized"})).await;

    // What a Codex client asks at startup.
    let account = call(&mut client, &mut seen, "account/read", json!({})).await;
    assert_eq!(
        account,
        json!({"account": null, "userId": null, "requiresOpenaiAuth": false})
    );
    let config = call(&mut client, &mut seen, "config/read", json!({})).await;
    assert_eq!(config["config"]["model"], json!("echo"), "{config}");
    assert_eq!(
        config["config"]["approval_policy"],
        json!("never"),
        "{config}"
    );
    let layered = call(
        &mut client,
        &mut seen,
        "config/read",
        json!({"includeLayers": true, "cwd": null}),
    )
    .await;
    assert_eq!(layered["layers"], json!([]), "{layered}");
    call(
        &mut client,
        &mut seen,
        "configRequirements/read",
        Value::Null,
    )
    .await;
    call(
        &mut client,
        &mut seen,
        "account/rateLimits/read",
        Value::Null,
    )
    .await;
    let skills = call(&mut client, &mut seen, "skills/list", json!({"cwds": []})).await;
    assert_eq!(skills["data"], json!([]));
    let apps = call(&mut client, &mut seen, "app/list", json!({})).await;
    assert_eq!(apps["data"], json!([]));
    let mcp = call(&mut client, &mut seen, "mcpServerStatus/list", json!({})).await;
    assert_eq!(mcp["data"], json!([]));
    let models = call(&mut client, &mut seen, "model/list", json!({})).await;
    assert_eq!(models["data"][0]["id"], json!("echo"), "{models}");

    // A thread, started with Codex's override fields (accepted, and the
    // result says what Skein actually does).
    let started = call(
        &mut client,
        &mut seen,
        "thread/start",
        json!({"model": "echo", "cwd": "/somewhere/else", "approvalPolicy": "on-request",
               "sandbox": "read-only", "baseInstructions": "be brief", "ephemeral": false}),
    )
    .await;
    let thread_id = started["thread"]["id"]
        .as_str()
        .expect("thread id")
        .to_owned();
    assert_eq!(
        started["thread"]["status"],
        json!({"type": "idle"}),
        "{started}"
    );
    assert_eq!(started["approvalPolicy"], json!("never"), "{started}");
    assert_eq!(
        started["sandbox"],
        json!({"type": "dangerFullAccess"}),
        "{started}"
    );
    let cwd = std::env::current_dir().expect("cwd");
    assert_eq!(
        started["cwd"],
        json!(cwd.display().to_string()),
        "{started}"
    );
    assert_eq!(started["thread"]["source"], json!("appServer"), "{started}");

    let loaded = call(&mut client, &mut seen, "thread/loaded/list", json!({})).await;
    assert!(
        loaded["data"]
            .as_array()
            .expect("data")
            .contains(&json!(thread_id))
    );

    // A turn, with Codex's turn overrides; then its notifications.
    let turn = call(
        &mut client,
        &mut seen,
        "turn/start",
        json!({"threadId": thread_id, "input": [{"type": "text", "text": "hello world", "text_elements": []}],
               "effort": "high", "cwd": "/x", "summary": "auto"}),
    )
    .await;
    let turn_id = turn["turn"]["id"].as_str().expect("turn id").to_owned();
    client.wait_for_turn_completed(&turn_id).await;

    // A long turn, on a thread of its own (a review echoes the last
    // request): steered with Codex's `expectedTurnId`, then interrupted.
    let other = call(&mut client, &mut seen, "thread/start", json!({})).await;
    let other_id = other["thread"]["id"]
        .as_str()
        .expect("thread id")
        .to_owned();
    let long_input = vec!["word"; 2000].join(" ");
    let long = call(
        &mut client,
        &mut seen,
        "turn/start",
        json!({"threadId": other_id, "input": [{"type": "text", "text": long_input}]}),
    )
    .await;
    let long_id = long["turn"]["id"].as_str().expect("turn id").to_owned();
    let steered = call(
        &mut client,
        &mut seen,
        "turn/steer",
        json!({"threadId": other_id, "expectedTurnId": long_id,
               "input": [{"type": "text", "text": "more"}]}),
    )
    .await;
    assert_eq!(steered, json!({"turnId": long_id}));
    let read_active = call(
        &mut client,
        &mut seen,
        "thread/read",
        json!({"threadId": other_id}),
    )
    .await;
    assert_eq!(
        read_active["thread"]["status"],
        json!({"type": "active", "activeFlags": []}),
        "{read_active}"
    );
    call(
        &mut client,
        &mut seen,
        "turn/interrupt",
        json!({"threadId": other_id, "turnId": long_id}),
    )
    .await;
    client.wait_for_turn_completed(&long_id).await;

    let review = call(
        &mut client,
        &mut seen,
        "review/start",
        json!({"threadId": thread_id, "target": {"type": "uncommittedChanges"}, "delivery": "inline"}),
    )
    .await;
    assert_eq!(review["reviewThreadId"], json!(thread_id), "{review}");
    let review_id = review["turn"]["id"].as_str().expect("turn id").to_owned();
    client.wait_for_turn_completed(&review_id).await;

    let compact = call(
        &mut client,
        &mut seen,
        "thread/compact/start",
        json!({"threadId": thread_id}),
    )
    .await;
    let compact_id = compact["turn"]["id"].as_str().expect("turn id").to_owned();
    client.wait_for_turn_completed(&compact_id).await;
    let compaction_items: Vec<&Value> = client
        .received()
        .iter()
        .filter(|m| m["method"] == "item/started" && m["params"]["turnId"] == json!(compact_id))
        .map(|m| &m["params"]["item"])
        .collect();
    assert_eq!(compaction_items.len(), 1, "{compaction_items:?}");
    assert_eq!(compaction_items[0]["type"], json!("contextCompaction"));

    let read = call(
        &mut client,
        &mut seen,
        "thread/read",
        json!({"threadId": thread_id, "includeTurns": true}),
    )
    .await;
    for turn in read["thread"]["turns"].as_array().expect("turns") {
        for item in turn["items"].as_array().expect("items") {
            assert!(item["id"].is_string(), "item without an id: {item}");
        }
    }
    call(
        &mut client,
        &mut seen,
        "thread/turns/list",
        json!({"threadId": thread_id, "limit": 2, "sortDirection": "desc", "itemsView": "full"}),
    )
    .await;
    call(
        &mut client,
        &mut seen,
        "thread/name/set",
        json!({"threadId": thread_id, "name": "conformance"}),
    )
    .await;
    let forked = call(
        &mut client,
        &mut seen,
        "thread/fork",
        json!({"threadId": thread_id, "lastTurnId": turn_id, "excludeTurns": false}),
    )
    .await;
    assert_eq!(
        forked["thread"]["turns"].as_array().map(Vec::len),
        Some(1),
        "{forked}"
    );
    call(
        &mut client,
        &mut seen,
        "thread/resume",
        json!({"threadId": thread_id, "excludeTurns": true}),
    )
    .await;
    call(
        &mut client,
        &mut seen,
        "thread/archive",
        json!({"threadId": thread_id}),
    )
    .await;
    call(
        &mut client,
        &mut seen,
        "thread/list",
        json!({"archived": true}),
    )
    .await;
    let unarchived = call(
        &mut client,
        &mut seen,
        "thread/unarchive",
        json!({"threadId": thread_id}),
    )
    .await;
    assert_eq!(unarchived["thread"]["name"], json!("conformance"));
    call(&mut client, &mut seen, "thread/list", json!({"limit": 10})).await;
    let unsubscribed = call(
        &mut client,
        &mut seen,
        "thread/unsubscribe",
        json!({"threadId": thread_id}),
    )
    .await;
    assert_eq!(unsubscribed, json!({"status": "unsubscribed"}));

    // Every method the router knows was exercised (and so has a schema:
    // `call` looks it up).
    for method in Method::ALL {
        let method = method.as_str();
        assert!(
            seen.iter().any(|m| m == method),
            "{method} was not exercised"
        );
    }

    // Every notification received conforms, and every kind was seen.
    let notifications: Vec<Value> = client
        .received()
        .iter()
        .filter(|m| m.get("id").is_none() && m.get("method").is_some())
        .cloned()
        .collect();
    for notification in &notifications {
        assert_valid_notification(notification);
    }
    for (method, _) in NOTIFICATION_SCHEMAS {
        assert!(
            notifications.iter().any(|n| n["method"] == *method),
            "no {method} notification was received"
        );
    }
    client.close().await;
    server.shutdown().await;
}

/// The validation is not vacuous: removing any field Codex requires from a
/// real Skein result, or giving it the wrong shape, fails it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_missing_a_required_field_fails_validation() {
    let mut server = Server::start(Transport::Stdio).await;
    let mut client = server.connect().await;
    client.initialize("codex-conformance", "1").await;
    let result = client
        .request("thread/start", json!({}), None)
        .await
        .result()
        .clone();
    let file = result_schema("thread/start");
    assert_eq!(errors(file, &result), Vec::<String>::new());
    for field in [
        "sessionId",
        "status",
        "cwd",
        "cliVersion",
        "source",
        "projectId",
        "turns",
    ] {
        let mut broken = result.clone();
        broken["thread"]
            .as_object_mut()
            .expect("thread object")
            .remove(field);
        assert!(
            !errors(file, &broken).is_empty(),
            "removing thread.{field} must fail validation"
        );
    }
    for field in ["cwd", "approvalPolicy", "approvalsReviewer", "sandbox"] {
        let mut broken = result.clone();
        broken.as_object_mut().expect("object").remove(field);
        assert!(
            !errors(file, &broken).is_empty(),
            "removing {field} must fail validation"
        );
    }
    let mut broken = result.clone();
    broken["thread"]["status"] = json!({"type": "busy"});
    assert!(
        !errors(file, &broken).is_empty(),
        "an unknown status must fail"
    );
    client.close().await;
    server.shutdown().await;
}

/// The conformance test cannot skip a method: every method of the router's
/// `Method` list has a Codex result schema, and every schema listed names
/// a method the router knows.
#[test]
fn every_router_method_has_a_codex_result_schema() {
    let listed: Vec<&str> = RESULT_SCHEMAS.iter().map(|(method, _)| *method).collect();
    let missing: Vec<&str> = Method::ALL
        .iter()
        .map(|m| m.as_str())
        .filter(|m| !listed.contains(m))
        .collect();
    assert!(
        missing.is_empty(),
        "router methods without a Codex result schema in RESULT_SCHEMAS, so not checked: {missing:?}"
    );
    let stale: Vec<&str> = listed
        .iter()
        .copied()
        .filter(|m| Method::from_name(m).is_none())
        .collect();
    assert!(
        stale.is_empty(),
        "RESULT_SCHEMAS lists methods the router does not know: {stale:?}"
    );
    let mut unique = listed.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), listed.len(), "duplicates in RESULT_SCHEMAS");
}

/// Notification validation is not vacuous either: removing a field Codex
/// requires from a real `turn/completed` or `item/completed` fails both
/// the `ServerNotification` envelope and the notification's own schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_missing_a_required_field_fails_validation() {
    let mut server = Server::start(Transport::Stdio).await;
    let mut client = server.connect().await;
    client.initialize("codex-conformance", "1").await;
    let thread_id = client.start_thread().await;
    let turn_id = client
        .start_turn(&thread_id, "hello there", None)
        .await
        .turn_id();
    let turn_completed = client.wait_for_turn_completed(&turn_id).await;
    let item_completed = client
        .received()
        .iter()
        .find(|m| {
            m["method"] == "item/completed"
                && m["params"]["turnId"] == json!(turn_id)
                && m["params"]["item"]["type"] == "agentMessage"
        })
        .cloned()
        .expect("item/completed of the answer");

    // Each path is a field Codex requires, removed from the params.
    let cases: [(&Value, &[&[&str]]); 2] = [
        (
            &turn_completed,
            &[
                &["threadId"],
                &["turn"],
                &["turn", "id"],
                &["turn", "status"],
                &["turn", "items"],
            ],
        ),
        (
            &item_completed,
            &[
                &["threadId"],
                &["turnId"],
                &["item"],
                &["completedAtMs"],
                &["item", "id"],
                &["item", "type"],
                &["item", "text"],
            ],
        ),
    ];
    for (notification, paths) in cases {
        let method = notification["method"].as_str().expect("method");
        let file = notification_schema(method);
        let envelope = |params: &Value| json!({"method": method, "params": params});
        let params = &notification["params"];
        assert_eq!(errors(file, params), Vec::<String>::new(), "{notification}");
        assert_eq!(
            errors("ServerNotification.json", &envelope(params)),
            Vec::<String>::new(),
            "{notification}"
        );
        for path in paths {
            let (last, parents) = path.split_last().expect("non-empty path");
            let mut broken = params.clone();
            let mut object = &mut broken;
            for key in parents {
                object = &mut object[*key];
            }
            assert!(
                object
                    .as_object_mut()
                    .and_then(|o| o.remove(*last))
                    .is_some(),
                "{method} has no {path:?} to remove: {notification}"
            );
            let what = format!("{method} without {}", path.join("."));
            assert!(!errors(file, &broken).is_empty(), "{what} must fail {file}");
            assert!(
                !errors("ServerNotification.json", &envelope(&broken)).is_empty(),
                "{what} must fail ServerNotification.json"
            );
        }
    }
    client.close().await;
    server.shutdown().await;
}
