//! Shutdown: stdin EOF and SIGTERM drain in-flight calls, then nothing is left.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

use crate::harness::*;

fn setup(grace: &str) -> (Setup, tempfile::TempDir) {
    let pids = tempfile::tempdir().unwrap();
    let s = Setup::new(&format!(
        "[server]\nshutdown_grace = \"{grace}\"\n[log]\nstderr = \"off\"\n"
    ))
    .actor("sleeper", &pidfile_sleep_tool("sleeper", "concurrency = 4"));
    (s, pids)
}

/// Starts a sleeper call and waits until its program runs; returns the
/// request id and the program's pid.
fn start_sleeper(s: &mut Server, dir: &std::path::Path, ms: u64) -> (i64, i32) {
    let pidfile = dir.join("p");
    let id = s.start_call(
        "sleeper",
        json!({"ms": ms, "pidfile": pidfile.to_str().unwrap()}),
    );
    (id, read_pids(&pidfile)[0])
}

fn drains_in_flight_calls(stop: impl FnOnce(&mut Server)) {
    let (setup, dir) = setup("10s");
    let mut s = setup.start();
    s.initialize();
    let (id, child) = start_sleeper(&mut s, dir.path(), 600);
    assert_eq!(
        children_of(s.pid()),
        [child],
        "the program runs as warden's child"
    );
    stop(&mut s);
    // The in-flight call still gets its real answer.
    let r = s.response(id);
    assert_eq!(text(&r["result"]), "slept\n", "{r}");
    let status = s.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(!alive(child));
    assert!(group_members(child).is_empty());
}

#[test]
fn stdin_eof_drains_in_flight_calls_and_exits_zero() {
    drains_in_flight_calls(|s| s.close_stdin());
}

#[test]
fn sigterm_drains_in_flight_calls_and_exits_zero() {
    drains_in_flight_calls(|s| kill(Pid::from_raw(s.pid()), Signal::SIGTERM).unwrap());
}

#[test]
fn past_the_grace_running_calls_are_cancelled_and_killed() {
    let (setup, dir) = setup("300ms");
    let mut s = setup.start();
    s.initialize();
    let (id, child) = start_sleeper(&mut s, dir.path(), 60000);
    let started = Instant::now();
    s.close_stdin();
    let r = s.response(id);
    assert_eq!(kind(&r["result"]), "cancelled", "{r}");
    assert_eq!(s.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert!(
        eventually(Duration::from_secs(2), || !alive(child)),
        "the program outlived warden"
    );
}

#[test]
fn eof_before_initialize_exits_cleanly() {
    let (setup, _dir) = setup("1s");
    let mut s = setup.start();
    s.close_stdin();
    assert_eq!(s.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn new_calls_during_the_drain_answer_unavailable() {
    let (setup, dir) = setup("10s");
    let mut s = setup.start();
    s.initialize();
    let (first, _) = start_sleeper(&mut s, dir.path(), 800);
    kill(Pid::from_raw(s.pid()), Signal::SIGTERM).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // stdin is still open: a late call is refused, not lost.
    let late = s.start_call("sleeper", json!({"ms": 1}));
    let r = s.response(late);
    assert!(
        r.get("error").is_some() || kind(&r["result"]) == "unavailable",
        "late call: {r}"
    );
    assert_eq!(text(&s.response(first)["result"]), "slept\n");
    assert_eq!(s.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn requests_written_just_before_eof_are_all_served() {
    let (setup, _dir) = setup("5s");
    let mut s = setup.start();
    // The whole session in one write, then EOF at once: `printf ... | warden serve`.
    let mut script = String::new();
    for line in [
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "sleeper", "arguments": {"ms": 300}}}),
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}),
    ] {
        script.push_str(&line.to_string());
        script.push('\n');
    }
    s.send_raw(script.as_bytes());
    s.close_stdin();
    assert!(s.response(1).get("result").is_some());
    assert_eq!(text(&s.response(2)["result"]), "slept\n");
    assert!(s.response(3)["result"]["tools"].is_array());
    assert_eq!(s.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn calls_still_queued_at_the_end_of_the_grace_are_answered_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("p");
    let mut s = Setup::new("[server]\nshutdown_grace = \"300ms\"\n[log]\nstderr = \"off\"\n")
        .actor(
            "one",
            &pidfile_sleep_tool("one", "concurrency = 1\nqueue = 4"),
        )
        .start();
    s.initialize();
    let running = s.start_call(
        "one",
        json!({"ms": 30000, "pidfile": pidfile.to_str().unwrap()}),
    );
    read_pids(&pidfile);
    let queued = s.start_call("one", json!({"ms": 30000}));
    std::thread::sleep(Duration::from_millis(50));
    s.close_stdin();
    assert_eq!(kind(&s.response(running)["result"]), "cancelled");
    assert_eq!(kind(&s.response(queued)["result"]), "cancelled");
    assert_eq!(s.wait_exit(Duration::from_secs(10)).code(), Some(0));
}
