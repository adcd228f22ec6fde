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

use std::sync::Arc;

use serde_json::{Value, json};
use skein_app_server_protocol::Method;
use support::codex_schema::{
    NOTIFICATION_SCHEMAS, RESULT_SCHEMAS, assert_codex_request, assert_valid_notification,
    assert_valid_result, errors, notification_schema, result_schema,
};
use support::mock_llm::{MockLlm, Reply, text_chunks, tool_call_chunks};
use support::{Client, INVALID_PARAMS, NOT_INITIALIZED, Server, ServerOptions, Transport};
use tokio::sync::Notify;

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
    let options = ServerOptions::default()
        .echo_delay_ms(20)
        .arg("-c")
        .arg("model_context_window=32000");
    let mut server = Server::start_with(transport, options).await;
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
    // What the Codex TUI asks at startup besides: Skein runs no hooks,
    // plugins or collaboration mode presets, and uses no Bedrock.
    let hooks = call(
        &mut client,
        &mut seen,
        "hooks/list",
        json!({"cwds": ["/somewhere"]}),
    )
    .await;
    assert_eq!(hooks, json!({"data": []}));
    let modes = call(&mut client, &mut seen, "collaborationMode/list", json!({})).await;
    assert_eq!(modes, json!({"data": []}));
    let plugins = call(
        &mut client,
        &mut seen,
        "plugin/installed",
        json!({"cwds": null}),
    )
    .await;
    assert_eq!(
        plugins,
        json!({"marketplaces": [], "marketplaceLoadErrors": []})
    );
    let gov_cloud = call(
        &mut client,
        &mut seen,
        "account/bedrock/checkGovCloudRequirements",
        json!({}),
    )
    .await;
    assert_eq!(gov_cloud, json!({"isGovCloud": false, "shouldWarn": false}));

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

    // What the Codex TUI asks of a thread it opens: no goal, no background
    // terminals; an unknown thread is refused.
    let goal = call(
        &mut client,
        &mut seen,
        "thread/goal/get",
        json!({"threadId": thread_id}),
    )
    .await;
    assert_eq!(goal, json!({"goal": null}));
    let terminals = call(
        &mut client,
        &mut seen,
        "thread/backgroundTerminals/list",
        json!({"threadId": thread_id, "limit": 10}),
    )
    .await;
    assert_eq!(terminals, json!({"data": [], "nextCursor": null}));
    for method in ["thread/goal/get", "thread/backgroundTerminals/list"] {
        let unknown = client
            .request(method, json!({"threadId": "no-such-thread"}), None)
            .await;
        assert_eq!(
            unknown.error_code(),
            INVALID_PARAMS,
            "{method}: {}",
            unknown.message
        );
    }

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
    let completed = client.wait_for_turn_completed(&turn_id).await;
    // As from Codex: the input is the turn's first item, started and
    // completed whole, and turn/completed carries the summary view.
    let user_item = json!({"type": "userMessage", "id": format!("{turn_id}-user"),
                           "content": [{"type": "text", "text": "hello world"}]});
    let turn_items: Vec<(&Value, &Value)> = client
        .received()
        .iter()
        .filter(|m| {
            (m["method"] == "item/started" || m["method"] == "item/completed")
                && m["params"]["turnId"] == json!(turn_id)
        })
        .map(|m| (&m["method"], &m["params"]["item"]))
        .collect();
    assert_eq!(
        turn_items.get(..2),
        Some(
            &[
                (&json!("item/started"), &user_item),
                (&json!("item/completed"), &user_item)
            ][..]
        ),
        "{turn_items:?}"
    );
    // The token usage names the configured model's window, and Codex's
    // cache-write count (Skein's models report none).
    let usage = client
        .received()
        .iter()
        .find(|m| {
            m["method"] == "thread/tokenUsage/updated" && m["params"]["turnId"] == json!(turn_id)
        })
        .cloned()
        .expect("thread/tokenUsage/updated");
    let token_usage = &usage["params"]["tokenUsage"];
    assert_eq!(token_usage["modelContextWindow"], json!(32000), "{usage}");
    assert_eq!(
        token_usage["last"]["cacheWriteInputTokens"],
        json!(0),
        "{usage}"
    );
    assert_eq!(
        token_usage["total"]["cacheWriteInputTokens"],
        json!(0),
        "{usage}"
    );
    let summary = &completed["params"]["turn"];
    assert_eq!(summary["itemsView"], json!("summary"), "{completed}");
    assert_eq!(
        summary["items"],
        json!([user_item, {"type": "agentMessage", "id": format!("{turn_id}-answer"),
                           "text": "hello world"}]),
        "{completed}"
    );

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
    // Steered once the model is answering: steered before its first round,
    // the word would be that round's input, and the echo model would answer
    // it alone and end the turn before the reads below.
    client.wait_for_first_delta(&long_id).await;
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
    // A fork says where it comes from and keeps its source's name.
    assert_eq!(
        forked["thread"]["forkedFromId"],
        json!(thread_id),
        "{forked}"
    );
    assert_eq!(forked["thread"]["name"], json!("conformance"), "{forked}");
    assert_eq!(started["thread"]["forkedFromId"], json!(null), "{started}");
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
    // The thread's changes reach this connection, which follows the thread,
    // through its forwarder: wait for them before unsubscribing.
    for method in [
        "thread/name/updated",
        "thread/archived",
        "thread/unarchived",
    ] {
        client
            .wait_for_notification(method, |n| {
                n["method"] == method && n["params"]["threadId"] == json!(thread_id)
            })
            .await;
    }
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

/// Naming, archiving and unarchiving a thread reach every connection that
/// follows it, whoever asked, in Codex's shapes; a caller that does not
/// follow the thread gets them too, with its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_changes_reach_every_connection_following_the_thread() {
    let mut server = Server::start(Transport::WebSocket).await;
    let mut owner = server.connect().await;
    owner.initialize("owner", "1.0.0").await;
    let thread_id = owner.start_thread().await;
    let mut follower = server.connect().await;
    follower.initialize("follower", "1.0.0").await;
    follower
        .request(
            "thread/resume",
            json!({"threadId": thread_id, "excludeTurns": true}),
            None,
        )
        .await
        .result();
    let mut bystander = server.connect().await;
    bystander.initialize("bystander", "1.0.0").await;

    let of_thread = |method: &'static str| {
        let thread_id = thread_id.clone();
        move |n: &Value| n["method"] == method && n["params"]["threadId"] == json!(thread_id)
    };
    async fn expect(
        client: &mut Client,
        method: &'static str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let n = client.wait_for_notification(method, pred).await;
        assert_valid_notification(&n);
        n
    }

    // Named by a connection that does not follow the thread.
    let named = bystander
        .request(
            "thread/name/set",
            json!({"threadId": thread_id, "name": "shared"}),
            None,
        )
        .await;
    assert_eq!(named.result(), &json!({}));
    for client in [&mut owner, &mut follower, &mut bystander] {
        let n = expect(
            client,
            "thread/name/updated",
            of_thread("thread/name/updated"),
        )
        .await;
        assert_eq!(n["params"]["threadName"], json!("shared"), "{n}");
    }

    // Archived by its owner: status first, then the archiving.
    owner
        .request("thread/archive", json!({"threadId": thread_id}), None)
        .await
        .result();
    for client in [&mut owner, &mut follower] {
        let status = expect(
            client,
            "thread/status/changed",
            of_thread("thread/status/changed"),
        )
        .await;
        assert_eq!(
            status["params"]["status"],
            json!({"type": "idle"}),
            "{status}"
        );
        expect(client, "thread/archived", of_thread("thread/archived")).await;
    }

    // Unarchived by the follower.
    follower
        .request("thread/unarchive", json!({"threadId": thread_id}), None)
        .await
        .result();
    for client in [&mut owner, &mut follower] {
        expect(client, "thread/unarchived", of_thread("thread/unarchived")).await;
    }
    // The bystander followed none of it but its own request.
    assert!(
        !bystander
            .received()
            .iter()
            .any(|m| m["method"] == "thread/archived" || m["method"] == "thread/unarchived"),
        "{:?}",
        bystander.received()
    );

    for client in [owner, follower, bystander] {
        client.close().await;
    }
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

/// The items of every turn of a `thread/read` or `thread/turns/list`
/// result: `(turn id, status, items)`.
fn turns_of(turns: &Value) -> Vec<(String, String, Vec<Value>)> {
    turns
        .as_array()
        .unwrap_or_else(|| panic!("turns must be an array: {turns}"))
        .iter()
        .map(|turn| {
            (
                turn["id"].as_str().unwrap_or_default().to_owned(),
                turn["status"].as_str().unwrap_or_default().to_owned(),
                turn["items"].as_array().cloned().unwrap_or_default(),
            )
        })
        .collect()
}

/// `(type, id, text)` of each item, the text of a user message being its
/// content's text.
fn item_summary(items: &[Value]) -> Vec<(&str, &str, &str)> {
    items
        .iter()
        .map(|item| {
            let text = match item["type"].as_str() {
                Some("userMessage") => item["content"][0]["text"].as_str(),
                _ => item["text"].as_str(),
            };
            (
                item["type"].as_str().unwrap_or_default(),
                item["id"].as_str().unwrap_or("<no id>"),
                text.unwrap_or_default(),
            )
        })
        .collect()
}

/// `(type, text)` of each item.
fn kinds_and_texts(items: &[Value]) -> Vec<(&str, &str)> {
    item_summary(items)
        .into_iter()
        .map(|(kind, _, text)| (kind, text))
        .collect()
}

/// What the test steers in, and the steer sent after it as a barrier.
const STEERED: &str = "In UTC, please.";
const BARRIER: &str = "Thanks.";

/// History of turns on a real model conforms too: a thread on the
/// OpenAI-compatible provider gets a turn steered mid-stream that then
/// calls a tool of a real MCP server and is interrupted, and a compaction;
/// `thread/read` and `thread/turns/list` of it (live, and again from the
/// store after a restart) validate against Codex's schemas, every item has
/// an id, and the ids are the same on every read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_of_model_turns_with_steering_tools_an_interrupt_and_a_compaction_conforms() {
    let Some((time_bin, _)) = support::mcp_venv() else {
        return;
    };
    let release = Arc::new(Notify::new());
    let first_round = text_chunks(&["Let me ", "check."], 12, 3);
    let (streamed, rest) = first_round.split_at(2);
    let stalled = text_chunks(&["Thinking "], 5, 1);
    let mock = MockLlm::start(vec![
        // Round 1: streams "Let me ", then waits while the test steers.
        Reply::Gated(streamed.to_vec(), Arc::clone(&release), rest.to_vec()),
        // Round 2, with the steered input: a tool call.
        Reply::Stream(tool_call_chunks(
            "call_time_1",
            "get_current_time",
            &json!({"timezone": "UTC"}),
        )),
        // Round 3, with the tool's result: streams a word, then stalls
        // until the turn is interrupted.
        Reply::Hold(stalled[..2].to_vec()),
        // The compaction: its summary.
        Reply::Stream(text_chunks(&["Asked the time; ", "it is noon."], 40, 6)),
    ])
    .await;
    let options = mock
        .server_options()
        .env("MOCK_API_KEY", "sk-test")
        .mcp_server("time", &time_bin, &[]);
    let mut server = Server::start_with(Transport::Stdio, options.clone()).await;
    let mut client = server.connect().await;
    let mut seen = Vec::new();
    call(
        &mut client,
        &mut seen,
        "initialize",
        json!({"clientInfo": {"name": "codex-conformance", "version": "1.0.0"}}),
    )
    .await;
    let started = call(&mut client, &mut seen, "thread/start", json!({})).await;
    let thread_id = started["thread"]["id"]
        .as_str()
        .expect("thread id")
        .to_owned();
    assert_eq!(started["modelProvider"], "mock", "{started}");

    // Turn 1: steered while the model streams, a tool call, interrupted.
    let turn = call(
        &mut client,
        &mut seen,
        "turn/start",
        json!({"threadId": thread_id, "input": [{"type": "text", "text": "What time is it?"}]}),
    )
    .await;
    let turn_id = turn["turn"]["id"].as_str().expect("turn id").to_owned();
    let is_delta = |n: &Value, text: &str| {
        n["method"] == "item/agentMessage/delta"
            && n["params"]["turnId"] == json!(turn_id)
            && n["params"]["delta"] == text
    };
    client
        .wait_for_notification("the first delta of round 1", |n| is_delta(n, "Let me "))
        .await;
    // The answer to turn/steer means the input is queued for the thread,
    // not yet handed to the turn. The thread takes its queue in order and
    // logs each steer as it hands it over: once it logs a second steer,
    // the first is with the turn, which takes it when round 1 ends.
    for text in [STEERED, BARRIER] {
        call(
            &mut client,
            &mut seen,
            "turn/steer",
            json!({"threadId": thread_id, "expectedTurnId": turn_id,
                   "input": [{"type": "text", "text": text}]}),
        )
        .await;
    }
    let logged = format!("turn.steer.input_chars={}", BARRIER.len());
    server.wait_for_stderr(|line| line.contains(&logged)).await;
    release.notify_one();
    client
        .wait_for_notification("the first delta of round 3", |n| is_delta(n, "Thinking "))
        .await;
    call(
        &mut client,
        &mut seen,
        "turn/interrupt",
        json!({"threadId": thread_id, "turnId": turn_id}),
    )
    .await;
    let completed = client.wait_for_turn_completed(&turn_id).await;
    assert_eq!(
        completed["params"]["turn"]["status"], "interrupted",
        "{completed}"
    );
    let requests = mock.wait_for_requests(3).await;
    let messages = requests[1].body["messages"].as_array().expect("messages");
    assert_eq!(
        (&messages[1]["content"], &messages[2]["content"]),
        (&json!("Let me check."), &json!(STEERED)),
        "the steered input goes to the model after the first answer: {messages:?}"
    );

    // Turn 2: a compaction.
    let compact = call(
        &mut client,
        &mut seen,
        "thread/compact/start",
        json!({"threadId": thread_id}),
    )
    .await;
    let compact_id = compact["turn"]["id"].as_str().expect("turn id").to_owned();
    let completed = client.wait_for_turn_completed(&compact_id).await;
    assert_eq!(
        completed["params"]["turn"]["status"], "completed",
        "{completed}"
    );

    // Every notification of the two turns conforms.
    let notifications: Vec<Value> = client
        .received()
        .iter()
        .filter(|m| m.get("id").is_none() && m.get("method").is_some())
        .cloned()
        .collect();
    for notification in &notifications {
        assert_valid_notification(notification);
    }

    let read = call(
        &mut client,
        &mut seen,
        "thread/read",
        json!({"threadId": thread_id, "includeTurns": true}),
    )
    .await;
    let turns = turns_of(&read["thread"]["turns"]);
    let ids: Vec<(&str, &str)> = turns
        .iter()
        .map(|(id, status, _)| (id.as_str(), status.as_str()))
        .collect();
    assert_eq!(
        ids,
        [
            (turn_id.as_str(), "interrupted"),
            (compact_id.as_str(), "completed")
        ],
        "{read}"
    );
    // The barrier steer lands wherever the turn took it (before round 2
    // or round 3), or nowhere if the interrupt came first.
    let mut steered = kinds_and_texts(&turns[0].2);
    let barriers = steered.len();
    steered.retain(|(kind, text)| !(*kind == "userMessage" && *text == BARRIER));
    assert!(barriers - steered.len() <= 1, "{read}");
    assert_eq!(
        steered,
        [
            ("userMessage", "What time is it?"),
            ("agentMessage", "Let me check."),
            ("userMessage", STEERED),
            ("mcpToolCall", ""),
            ("agentMessage", "Thinking "),
        ],
        "{read}"
    );
    let tool = turns[0]
        .2
        .iter()
        .find(|item| item["type"] == "mcpToolCall")
        .expect("the tool call");
    assert_eq!(tool["id"], "call_time_1", "{tool}");
    assert_eq!(tool["status"], "completed", "{tool}");
    assert!(
        tool["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("UTC")),
        "{tool}"
    );
    assert!(!turns[1].2.is_empty(), "the compaction's item: {read}");
    let mut all_ids: Vec<&str> = turns
        .iter()
        .flat_map(|(_, _, items)| item_summary(items))
        .map(|(_, id, _)| id)
        .collect();
    let count = all_ids.len();
    all_ids.sort_unstable();
    all_ids.dedup();
    assert_eq!(all_ids.len(), count, "item ids must be unique: {read}");

    let listed = call(
        &mut client,
        &mut seen,
        "thread/turns/list",
        json!({"threadId": thread_id, "sortDirection": "asc"}),
    )
    .await;
    let items_of = |turns: &Value| -> Vec<Value> {
        turns
            .as_array()
            .map(|turns| turns.iter().map(|t| t["items"].clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        items_of(&listed["data"]),
        items_of(&read["thread"]["turns"]),
        "thread/turns/list carries the items thread/read does: {listed}"
    );
    call(
        &mut client,
        &mut seen,
        "thread/turns/list",
        json!({"threadId": thread_id, "limit": 1, "itemsView": "summary"}),
    )
    .await;

    // From the store, after a restart: the same turns, the same item ids.
    let home = server.home();
    client.close().await;
    server.shutdown().await;
    let mut server = Server::start_with(Transport::Stdio, options.home(&home)).await;
    let mut client = server.connect().await;
    client.initialize("codex-conformance", "1.0.0").await;
    let reread = call(
        &mut client,
        &mut seen,
        "thread/read",
        json!({"threadId": thread_id, "includeTurns": true}),
    )
    .await;
    assert_eq!(
        reread["thread"]["turns"], read["thread"]["turns"],
        "history read back from the store must be what was read live"
    );
    call(
        &mut client,
        &mut seen,
        "thread/turns/list",
        json!({"threadId": thread_id}),
    )
    .await;
    client.close().await;
    server.shutdown().await;
}
