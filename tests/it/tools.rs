//! Command tools: failures, caps, environment, timeouts, queues, cancellation.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

const SLEEPER_INPUT: &str =
    "required = [\"ms\"]\nproperties.ms = { type = \"integer\" }\nproperties.pidfile = { type = \"string\" }";

fn sleeper(extra: &str) -> String {
    fixture_tool(
        "sleeper",
        &["sleep", "{ms}", "{pidfile}"],
        extra,
        SLEEPER_INPUT,
    )
}

#[test]
fn a_failing_program_is_an_error_answer_with_exit_code_and_stderr() {
    let mut s = Setup::new(QUIET_CONFIG)
        .actor(
            "fail",
            &fixture_tool(
                "fail",
                &["fail", "3", "{why}"],
                "",
                "properties.why = { type = \"string\" }",
            ),
        )
        .start();
    s.initialize();
    let r = s.call_result("fail", json!({"why": "disk on fire"}));
    assert_eq!(kind(&r), "execution_failed");
    let sc = &r["structuredContent"];
    assert_eq!(sc["details"]["exit_code"], 3);
    assert_eq!(sc["details"]["stderr_tail"], "disk on fire");
    assert!(sc["message"]
        .as_str()
        .unwrap()
        .contains("exited with status 3: disk on fire"));
    assert!(!sc["suggestion"].as_str().unwrap().is_empty());
    // A tool failure is an answer, not a crash: nothing restarted.
    let status = s.call_result("fail", json!({"why": "again"}));
    assert_eq!(kind(&status), "execution_failed");
}

/// A tool that writes as many bytes as asked, keeping 64 KiB of them.
fn flood_server() -> Server {
    let mut s = Setup::new(QUIET_CONFIG)
        .actor(
            "flood",
            &fixture_tool(
                "flood",
                &["flood", "{bytes}"],
                "max_output = \"64KiB\"",
                "properties.bytes = { type = \"integer\" }",
            ),
        )
        .start();
    s.initialize();
    s
}

#[test]
fn output_is_capped_while_it_streams() {
    let mut s = flood_server();
    let r = s.call_result("flood", json!({"bytes": 8 << 20}));
    assert_ne!(r["isError"], json!(true), "{r}");
    assert_eq!(text(&r).len(), 64 << 10);
    let note = r["content"][1]["text"].as_str().unwrap();
    assert!(
        note.contains("truncated") && note.contains(&(8u64 << 20).to_string()),
        "{note}"
    );
    let small = s.call_result("flood", json!({"bytes": 10}));
    assert_eq!(text(&small), "x".repeat(10));
    assert_eq!(small["content"].as_array().unwrap().len(), 1);
}

#[test]
fn the_environment_is_cleared_and_the_directory_fixed() {
    let setup = Setup::new(QUIET_CONFIG)
        .actor(
            "env",
            &fixture_tool("env", &["env"], "env = { GREETING = \"hello\" }", ""),
        )
        .actor("cwd", &fixture_tool("cwd", &["cwd"], "cwd = \"/tmp\"", ""));
    let mut s = setup.start_with_env(&[("API_TOKEN", "s3cret"), ("HOME", "/root")]);
    s.initialize();
    let env = text(&s.call_result("env", json!({})));
    let names: Vec<&str> = env.lines().map(|l| l.split('=').next().unwrap()).collect();
    assert!(
        names.contains(&"PATH") && names.contains(&"GREETING"),
        "{env}"
    );
    assert!(
        !env.contains("s3cret"),
        "the parent's environment leaked: {env}"
    );
    assert!(!names.contains(&"HOME"), "{env}");
    assert!(
        names
            .iter()
            .all(|n| ["PATH", "GREETING", "LANG", "LC_ALL", "TZ"].contains(n)),
        "{env}"
    );
    assert_eq!(text(&s.call_result("cwd", json!({}))).trim(), "/tmp");
}

#[test]
fn a_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pids");
    let mut s = Setup::new(QUIET_CONFIG)
        .actor(
            "group",
            &fixture_tool(
                "group",
                &["group", "{pidfile}", "60000"],
                "timeout = \"700ms\"",
                "properties.pidfile = { type = \"string\" }",
            ),
        )
        .start();
    s.initialize();
    let started = Instant::now();
    let r = s.call_result("group", json!({"pidfile": pidfile.to_str().unwrap()}));
    assert_eq!(kind(&r), "timeout", "{r}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(r["structuredContent"]["details"]["timeout_ms"], 700);
    let pids = read_pids(&pidfile);
    assert_eq!(pids.len(), 2, "leader and grandchild");
    assert!(
        eventually(Duration::from_secs(3), || pids.iter().all(|&p| !alive(p))),
        "processes of the timed-out group are still alive: {pids:?}"
    );
    assert!(group_members(pids[0]).is_empty());
}

#[test]
fn a_missing_program_answers_unavailable_and_the_rest_works() {
    let mut s = Setup::new(QUIET_CONFIG)
        .actor("echo", "name = \"echo\"\nkind = \"builtin\"\n")
        .actor("status", "name = \"status\"\nkind = \"builtin\"\n")
        .actor("ghost", "name = \"ghost\"\nkind = \"command\"\ncommand = \"/nonexistent/ghost\"\n[input]\ntype = \"object\"\n")
        .start();
    s.initialize();
    let r = s.call_result("ghost", json!({}));
    assert_eq!(kind(&r), "unavailable");
    assert!(r["structuredContent"]["message"]
        .as_str()
        .unwrap()
        .contains("/nonexistent/ghost"));
    assert_eq!(
        text(&s.call_result("echo", json!({"message": "fine"}))),
        "fine"
    );
    assert_eq!(tool_status(&mut s, "ghost")["state"], "unavailable");
}

#[test]
fn a_full_queue_answers_busy_at_once_and_cancel_kills_the_program() {
    let dir = tempfile::tempdir().unwrap();
    let pid_a = dir.path().join("a");
    let mut s = Setup::new(QUIET_CONFIG)
        .actor("sleeper", &sleeper("concurrency = 1\nqueue = 1"))
        .actor("status", "name = \"status\"\nkind = \"builtin\"\n")
        .start();
    s.initialize();
    let a = s.start_call(
        "sleeper",
        json!({"ms": 30000, "pidfile": pid_a.to_str().unwrap()}),
    );
    let pid = read_pids(&pid_a)[0];
    let b = s.start_call("sleeper", json!({"ms": 200}));
    assert!(
        eventually(Duration::from_secs(5), || tool_status(&mut s, "sleeper")
            ["queue_depth"]
            == 1),
        "the second call never queued"
    );
    let started = Instant::now();
    let c = s.call_result("sleeper", json!({"ms": 1}));
    assert_eq!(kind(&c), "busy", "{c}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "busy took {:?}",
        started.elapsed()
    );
    assert!(c["structuredContent"]["retry_after_ms"].is_u64());

    s.notify(
        "notifications/cancelled",
        json!({"requestId": a, "reason": "test"}),
    );
    assert!(
        eventually(Duration::from_secs(3), || !alive(pid)),
        "cancel did not kill pid {pid}"
    );
    // The queued call runs once the worker is free.
    let rb = s.response(b);
    assert_eq!(text(&rb["result"]), "slept\n", "{rb}");
}

#[test]
fn progress_is_reported_on_the_clients_token() {
    let mut s = flood_server();
    let id = s.request(
        "tools/call",
        json!({"name": "flood", "arguments": {"bytes": 4 << 20}, "_meta": {"progressToken": "tok-1"}}),
    );
    let r = s.response(id);
    assert_eq!(text(&r["result"]).len(), 64 << 10);
    let p = s
        .next_matching(Duration::from_secs(5), |v| {
            v["method"] == "notifications/progress"
        })
        .expect("a progress notification");
    assert_eq!(p["params"]["progressToken"], "tok-1");
    assert!(p["params"]["progress"].as_f64().unwrap() > 0.0, "{p}");
    assert!(p["params"]["message"]
        .as_str()
        .unwrap()
        .contains("bytes of output"));
}
