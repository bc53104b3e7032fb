//! Supervision under fire: crashing workers, restart budgets, one answer per call.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;

use crate::harness::*;

fn chaos_setup(max_restarts: u32) -> Setup {
    Setup::new(&format!(
        "[supervisor]\nmax_restarts = {max_restarts}\nwindow = \"60s\"\nbackoff = {{ min = \"50ms\", max = \"200ms\" }}\n[log]\nstderr = \"off\"\n"
    ))
    .actor("echo", "name = \"echo\"\nkind = \"builtin\"\nconcurrency = 4\nqueue = 64\n")
    .actor("status", "name = \"status\"\nkind = \"builtin\"\n")
    // Supervision is under test here, not the breaker: keep it out of the way.
    .actor("crash", "name = \"crash\"\nkind = \"builtin\"\nbuiltin = \"panic\"\n[breaker]\nenabled = false\n")
    .actor(
        "sleeper",
        &fixture_tool(
            "sleeper",
            &["sleep", "{ms}"],
            "",
            "required = [\"ms\"]\nproperties.ms = { type = \"integer\" }",
        ),
    )
}

#[test]
fn a_crashing_worker_answers_once_restarts_and_exhausts_its_budget() {
    let mut s = chaos_setup(2).start();
    s.initialize();
    // Calls in flight on other tools while the worker dies.
    let slow = s.start_call("sleeper", json!({"ms": 400}));
    let crash = s.start_call("crash", json!({}));
    let r = s.response(crash);
    assert_eq!(kind(&r["result"]), "internal", "{r}");
    assert!(r["result"]["structuredContent"]["message"]
        .as_str()
        .unwrap()
        .contains("crashed"));
    assert_eq!(text(&s.response(slow)["result"]), "slept\n");

    assert!(eventually(Duration::from_secs(3), || tool_status(
        &mut s, "crash"
    )["restarts"]
        == 1));
    assert_eq!(tool_status(&mut s, "crash")["state"], "running");
    assert_eq!(text(&s.call_result("echo", json!({"message": "up"}))), "up");

    // Second crash: still within the budget of 2.
    assert_eq!(kind(&s.call_result("crash", json!({}))), "internal");
    assert!(eventually(Duration::from_secs(3), || tool_status(
        &mut s, "crash"
    )["restarts"]
        == 2));
    // Third: past the budget. The tool is failed and answers unavailable.
    assert_eq!(kind(&s.call_result("crash", json!({}))), "internal");
    assert!(
        eventually(Duration::from_secs(3), || tool_status(&mut s, "crash")
            ["state"]
            == "failed"),
        "the tool never became failed"
    );
    let r = s.call_result("crash", json!({}));
    assert_eq!(kind(&r), "unavailable", "{r}");
    assert!(r["structuredContent"]["message"]
        .as_str()
        .unwrap()
        .contains("restart budget"));
    // The rest of the runtime goes on.
    assert_eq!(
        text(&s.call_result("echo", json!({"message": "still up"}))),
        "still up"
    );
    assert_eq!(tool_status(&mut s, "sleeper")["state"], "running");
}

#[test]
fn every_request_gets_exactly_one_answer_while_workers_crash() {
    let mut s = chaos_setup(1000).start();
    s.initialize();
    let mut ids = Vec::new();
    for i in 0..60 {
        let id = match i % 3 {
            0 => s.start_call("crash", json!({})),
            1 => s.start_call("echo", json!({"message": format!("m{i}")})),
            _ => s.start_call("sleeper", json!({"ms": 20})),
        };
        ids.push((id, i % 3));
    }
    let mut answers: HashMap<i64, usize> = HashMap::new();
    let mut crashes = 0;
    for &(id, which) in &ids {
        let r = s.response(id);
        *answers.entry(id).or_default() += 1;
        let result = &r["result"];
        match which {
            // A crash is answered `internal`; a burst can also find the queue full.
            0 => match kind(result).as_str() {
                "internal" => crashes += 1,
                other => assert_eq!(other, "busy", "{r}"),
            },
            1 => assert_eq!(
                text(result),
                format!("m{}", ids.iter().position(|x| x.0 == id).unwrap())
            ),
            _ => {
                // The sleeper may be busy; either way the answer is typed.
                if result["isError"] == json!(true) {
                    assert_eq!(kind(result), "busy", "{r}");
                } else {
                    assert_eq!(text(result), "slept\n");
                }
            }
        }
    }
    // No second answer to any request arrives later.
    let dup = s.next_matching(Duration::from_millis(500), |v| v.get("id").is_some());
    assert!(dup.is_none(), "an extra answer arrived: {dup:?}");
    assert!(answers.values().all(|&n| n == 1));
    assert!(crashes > 0);
    assert!(
        eventually(Duration::from_secs(3), || tool_status(&mut s, "crash")
            ["restarts"]
            == crashes),
        "restarts {} != crashes {crashes}",
        tool_status(&mut s, "crash")["restarts"]
    );
    assert_eq!(tool_status(&mut s, "crash")["state"], "running");
}
