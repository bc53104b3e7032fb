//! Circuit breakers and rate limits, seen from a client.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

fn runs(file: &Path) -> usize {
    std::fs::read_to_string(file)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// A tool that records every run in a file and exits with the code it is given.
fn flaky_setup(breaker: &str) -> Setup {
    Setup::new(QUIET_CONFIG)
        .actor("status", "name = \"status\"\nkind = \"builtin\"\n")
        .actor("metrics", "name = \"metrics\"\nkind = \"builtin\"\n")
        .actor(
            "flaky",
            &fixture_tool(
                "flaky",
                &["record", "{file}", "{code}"],
                "",
                &format!(
                    "required = [\"file\", \"code\"]\nproperties.file = {{ type = \"string\" }}\nproperties.code = {{ type = \"integer\" }}\n\n[breaker]\n{breaker}"
                ),
            ),
        )
}

#[test]
fn a_failing_tool_trips_its_breaker_and_a_trial_closes_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runs");
    let f = file.to_str().unwrap();
    let mut s = flaky_setup(
        "window = 4\nmin_calls = 4\nfailure_rate = 0.5\nopen_for = \"2s\"\nhalf_open_calls = 1\n",
    )
    .start();
    s.initialize();

    for _ in 0..4 {
        let r = s.call_result("flaky", json!({"file": f, "code": 3}));
        assert_eq!(kind(&r), "execution_failed");
    }
    assert_eq!(runs(&file), 4);
    let opened = Instant::now();
    let b = tool_status(&mut s, "flaky")["breaker"].clone();
    assert_eq!(b["state"], "open", "{b}");

    // While open: answered at once, nothing run.
    for _ in 0..3 {
        let r = s.call_result("flaky", json!({"file": f, "code": 0}));
        assert_eq!(kind(&r), "circuit_open", "{r}");
        let wait = r["structuredContent"]["retry_after_ms"].as_u64().unwrap();
        assert!(wait <= 2000, "{r}");
        assert_eq!(
            r["structuredContent"]["details"]["breaker"]["state"],
            "open"
        );
    }
    assert_eq!(runs(&file), 4, "an open breaker ran the tool");

    // Its own timer makes it half-open, with no call arriving.
    assert!(
        eventually(Duration::from_secs(3), || tool_status(&mut s, "flaky")
            ["breaker"]["state"]
            == "half_open"),
        "never half-open"
    );
    assert!(opened.elapsed() >= Duration::from_millis(650));
    assert_eq!(runs(&file), 4);

    // A successful trial closes it.
    let r = s.call_result("flaky", json!({"file": f, "code": 0}));
    assert_ne!(r["isError"], json!(true), "{r}");
    assert_eq!(runs(&file), 5);
    assert_eq!(tool_status(&mut s, "flaky")["breaker"]["state"], "closed");

    // Every transition was counted.
    let m = text(&s.call_result("metrics", json!({})));
    for (from, to) in [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ] {
        let line = format!(
            "warden_breaker_transitions_total{{from=\"{from}\",to=\"{to}\",tool=\"flaky\"}} 1"
        );
        assert!(m.contains(&line), "missing {line} in\n{m}");
    }
    assert!(m.contains("warden_breaker_state{tool=\"flaky\"} 0"), "{m}");
    assert!(
        m.contains("warden_calls_total{outcome=\"circuit_open\",tool=\"flaky\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("warden_calls_total{outcome=\"execution_failed\",tool=\"flaky\"} 4"),
        "{m}"
    );
}

#[test]
fn a_failed_trial_reopens_for_longer() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("runs");
    let f = f.to_str().unwrap();
    let mut s = flaky_setup(
        "window = 2\nmin_calls = 2\nopen_for = \"1s\"\nbackoff_factor = 3.0\nhalf_open_calls = 1\n",
    )
    .start();
    s.initialize();
    for _ in 0..2 {
        s.call_result("flaky", json!({"file": f, "code": 1}));
    }
    assert_eq!(tool_status(&mut s, "flaky")["breaker"]["open_for_ms"], 1000);
    assert!(eventually(Duration::from_secs(3), || {
        tool_status(&mut s, "flaky")["breaker"]["state"] == "half_open"
    }));
    assert_eq!(
        kind(&s.call_result("flaky", json!({"file": f, "code": 1}))),
        "execution_failed"
    );
    let b = tool_status(&mut s, "flaky")["breaker"].clone();
    assert_eq!(b["state"], "open");
    assert_eq!(b["open_for_ms"], 3000, "{b}");
}

#[test]
fn validation_errors_and_cancellations_do_not_trip_the_breaker() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("runs");
    let f = f.to_str().unwrap();
    let mut s = flaky_setup("window = 2\nmin_calls = 2\n").start();
    s.initialize();
    for _ in 0..5 {
        assert_eq!(
            kind(&s.call_result("flaky", json!({"file": f, "code": "x"}))),
            "validation"
        );
    }
    assert_eq!(tool_status(&mut s, "flaky")["breaker"]["state"], "closed");
    assert_eq!(
        tool_status(&mut s, "flaky")["breaker"]["calls_in_window"],
        0
    );
}

#[test]
fn a_burst_past_the_rate_limit_is_refused_until_the_bucket_refills() {
    let mut s = Setup::new(QUIET_CONFIG)
        .actor(
            "echo",
            "name = \"echo\"\nkind = \"builtin\"\nrate = \"1/s\"\nburst = 2\n",
        )
        .start();
    s.initialize();
    assert_eq!(text(&s.call_result("echo", json!({"message": "1"}))), "1");
    assert_eq!(text(&s.call_result("echo", json!({"message": "2"}))), "2");
    let r = s.call_result("echo", json!({"message": "3"}));
    assert_eq!(kind(&r), "rate_limited", "{r}");
    let wait = r["structuredContent"]["retry_after_ms"].as_u64().unwrap();
    assert!(wait > 0 && wait <= 1000, "{r}");
    assert_eq!(r["structuredContent"]["details"]["burst"], 2);
    std::thread::sleep(Duration::from_millis(wait + 20));
    assert_eq!(text(&s.call_result("echo", json!({"message": "4"}))), "4");
}

#[test]
fn check_rejects_inconsistent_breaker_and_rate_settings() {
    let setup = Setup::new("[breaker]\nfailure_rate = 1.5\n")
        .actor("a", "name = \"a\"\nkind = \"builtin\"\nbuiltin = \"echo\"\nrate = \"ten/s\"\n")
        .actor("b", "name = \"b\"\nkind = \"builtin\"\nbuiltin = \"echo\"\nburst = 3\n[breaker]\nmin_calls = 50\n");
    let out = std::process::Command::new(WARDEN)
        .args(["check", "--config"])
        .arg(setup.config_path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout.contains("config.toml: breaker.failure_rate: 1.5 must be in (0, 1]"),
        "{stdout}"
    );
    assert!(stdout.contains("a.toml: rate:"), "{stdout}");
    assert!(stdout.contains("b.toml: burst: needs `rate`"), "{stdout}");
    assert!(
        stdout.contains("b.toml: breaker.min_calls: must be between 1 and window"),
        "{stdout}"
    );
}
