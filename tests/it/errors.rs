//! The exact shape of every error kind a client can receive.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

/// isError, one text block "<kind>: <message>\nSuggestion: <suggestion>...", and
/// structuredContent with exactly the expected keys.
fn assert_shape(r: &Value, kind: &str, retry: bool, details: &[&str]) {
    assert_eq!(r["isError"], json!(true), "{r}");
    let content = r["content"].as_array().unwrap();
    assert_eq!(content.len(), 1, "{r}");
    assert_eq!(content[0]["type"], "text");
    let sc = &r["structuredContent"];
    let text = content[0]["text"].as_str().unwrap();
    let message = sc["message"].as_str().unwrap();
    let suggestion = sc["suggestion"].as_str().unwrap();
    assert!(!message.is_empty() && !suggestion.is_empty(), "{r}");
    assert!(
        text.starts_with(&format!("{kind}: {message}\nSuggestion: {suggestion}")),
        "{text:?}"
    );
    assert_eq!(sc["kind"], kind);
    let mut want: BTreeSet<&str> = ["kind", "message", "suggestion"].into();
    if retry {
        want.insert("retry_after_ms");
        assert!(sc["retry_after_ms"].is_u64(), "{r}");
        assert!(text.contains("(retry after "), "{text}");
    }
    if !details.is_empty() {
        want.insert("details");
    }
    let got: BTreeSet<&str> = sc.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(got, want, "{r}");
    for d in details {
        assert!(sc["details"].get(*d).is_some(), "no details.{d} in {r}");
    }
}

fn setup() -> Setup {
    Setup::new("[server]\nshutdown_grace = \"200ms\"\n[log]\nstderr = \"off\"\n")
        .actor("echo", "name = \"echo\"\nkind = \"builtin\"\n")
        .actor("limited", "name = \"limited\"\nkind = \"builtin\"\nbuiltin = \"echo\"\nrate = \"1/m\"\nburst = 1\n")
        .actor("crash", "name = \"crash\"\nkind = \"builtin\"\nbuiltin = \"panic\"\n[breaker]\nenabled = false\n")
        .actor("ghost", "name = \"ghost\"\nkind = \"command\"\ncommand = \"/nonexistent/ghost\"\n[input]\ntype = \"object\"\n")
        .actor("one", &pidfile_sleep_tool("one", "concurrency = 1\nqueue = 0"))
        .actor("slow", &pidfile_sleep_tool("slow", "timeout = \"200ms\""))
        .actor("long", &pidfile_sleep_tool("long", ""))
        .actor(
            "fail",
            &fixture_tool(
                "fail",
                &["fail", "{code}", "bad input"],
                "[breaker]\nwindow = 2\nmin_calls = 2\nopen_for = \"1m\"",
                "properties.code = { type = \"integer\" }",
            ),
        )
}

#[test]
fn every_error_kind_has_its_documented_shape() {
    let mut s = setup().start();
    s.initialize();

    let r = s.call_result("echo", json!({"message": 5}));
    assert_shape(&r, "validation", false, &["field", "rule", "schema_path"]);
    assert_eq!(r["structuredContent"]["details"]["field"], "message");
    // The messages read as sentences, naming the field or the arguments.
    assert_eq!(
        r["structuredContent"]["message"],
        "Argument `message` does not match the tool's schema: value is not of type \"string\" (rule: type).",
        "{r}"
    );
    let r = s.call_result("echo", json!({}));
    assert_eq!(
        r["structuredContent"]["message"],
        "The arguments do not match the tool's schema: \"message\" is a required property (rule: required).",
        "{r}"
    );

    let r = s.call_result("ghost", json!({}));
    assert_shape(&r, "unavailable", false, &[]);

    let pids = tempfile::tempdir().unwrap();
    let first_pid = pids.path().join("first");
    let first = s.start_call(
        "one",
        json!({"ms": 1000, "pidfile": first_pid.to_str().unwrap()}),
    );
    read_pids(&first_pid);
    let r = s.call_result("one", json!({"ms": 1}));
    assert_shape(&r, "busy", true, &[]);
    assert_eq!(text(&s.response(first)["result"]), "slept\n");

    s.call_result("limited", json!({"message": "a"}));
    let r = s.call_result("limited", json!({"message": "b"}));
    assert_shape(&r, "rate_limited", true, &["rate_per_second", "burst"]);

    let r = s.call_result("fail", json!({"code": 2}));
    assert_shape(
        &r,
        "execution_failed",
        false,
        &["exit_code", "stderr_tail", "stdout", "duration_ms"],
    );
    assert_eq!(r["structuredContent"]["details"]["exit_code"], 2);
    s.call_result("fail", json!({"code": 2}));
    let r = s.call_result("fail", json!({"code": 0}));
    assert_shape(&r, "circuit_open", true, &["breaker"]);

    let r = s.call_result("slow", json!({"ms": 5000}));
    assert_shape(&r, "timeout", false, &["timeout_ms"]);

    let r = s.call_result("crash", json!({}));
    assert_shape(&r, "internal", true, &[]);

    // `cancelled` reaches a client when the shutdown grace ends under a running call.
    let long_pid = pids.path().join("long");
    let id = s.start_call(
        "long",
        json!({"ms": 60000, "pidfile": long_pid.to_str().unwrap()}),
    );
    read_pids(&long_pid);
    s.close_stdin();
    let r = s.response(id);
    assert_shape(&r["result"], "cancelled", false, &[]);
    assert_eq!(s.wait_exit(Duration::from_secs(10)).code(), Some(0));

    // Every error was logged with its request id.
    let lines = s.log_lines();
    for kind in [
        "validation",
        "unavailable",
        "busy",
        "rate_limited",
        "execution_failed",
        "circuit_open",
        "timeout",
        "internal",
        "cancelled",
    ] {
        assert!(
            lines.iter().any(|l| l["message"] == "call"
                && l["outcome"] == kind
                && l["request_id"].is_string()),
            "no call line with outcome {kind}"
        );
    }
}
