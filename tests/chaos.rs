//! The CI-sized chaos runs: `warden-chaos` for 30 s against the real binary,
//! over stdio and over Streamable HTTP; and `warden-scale --short`, three
//! replicas behind haproxy restarted in turn and one SIGKILLed under load.
//!
//! A test target of its own: cargo runs test targets one after another, so
//! its 32 calls in flight and its kills do not share the machine with the
//! timing of the integration tests in `tests/it`; and its two runs take
//! turns, for the same reason. `scripts/chaos` runs the same driver for as
//! long as asked.

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

const CHAOS: &str = env!("CARGO_BIN_EXE_warden-chaos");
const SCALE: &str = env!("CARGO_BIN_EXE_warden-scale");
/// The run is 30 s; drain, exit and the final checks take seconds more.
const DEADLINE: Duration = Duration::from_secs(120);
/// One run at a time.
static MACHINE: Mutex<()> = Mutex::new(());

/// Runs a driver (`--json`) on the machine alone, within the deadline: its
/// exit status and the report it printed.
fn drive(program: &str, args: &[&str]) -> (std::process::ExitStatus, Value) {
    let _turn = MACHINE.lock().unwrap_or_else(|p| p.into_inner());
    let mut child = Command::new(program)
        .arg("--json")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"));
    let until = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{program} did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let r: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("{program} ({status}) printed no report: {e}: {out}"));
    eprintln!("{}", serde_json::to_string_pretty(&r).unwrap());
    (status, r)
}

/// Runs warden-chaos for 30 s with `args` and checks what it counted.
fn thirty_seconds(args: &[&str]) -> Value {
    let mut all = vec!["--duration", "30s"];
    all.extend_from_slice(args);
    let (status, r) = drive(CHAOS, &all);

    // The invariants: each one is a count the driver made from what it saw.
    for field in [
        "lost",
        "twice",
        "late",
        "wrong",
        "unsolicited",
        "garbage",
        "zombies",
        "orphans",
    ] {
        assert_eq!(r[field], 0, "{field}: {}", r["examples"]);
    }
    assert_eq!(r["exit"], "exit status: 0", "warden's own exit");
    assert!(status.success(), "warden-chaos exited {status}");

    // And the run was a real one: load was answered, and chaos happened.
    assert!(r["sent"].as_u64().unwrap() >= 1000, "{}", r["sent"]);
    assert!(r["ok"].as_u64().unwrap() >= 100, "{}", r["ok"]);
    let chaos: u64 = r["chaos"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert!(chaos >= 20, "only {chaos} chaos actions");
    assert!(r["processes_seen"].as_u64().unwrap() >= 10);
    assert!(
        r["recovery"]["trim"].as_u64().unwrap_or(0) >= 1,
        "memory never reached trim: {}",
        r["recovery"]
    );
    r
}

#[test]
fn thirty_seconds_of_chaos_lose_no_answer_and_leave_no_process() {
    let r = thirty_seconds(&[]);
    assert_eq!(r["transport"], "stdio");
}

#[test]
fn thirty_seconds_of_chaos_over_http_lose_no_answer_in_sessions_or_stateless() {
    let r = thirty_seconds(&["--http"]);
    assert_eq!(r["transport"], "http");
    // Both families carried the load.
    for via in ["session", "stateless"] {
        assert!(
            r["ok_by"][via].as_u64().unwrap_or(0) >= 100,
            "{via}: {}",
            r["ok_by"]
        );
    }
}

/// Where haproxy is, if it is installed (scripts/install-haproxy).
fn haproxy() -> Option<String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into()])
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

#[test]
fn replicas_behind_haproxy_restarted_in_turn_and_one_killed_lose_no_call() {
    let Some(haproxy) = haproxy() else {
        if std::env::var("WARDEN_REQUIRE_CLIENTS").as_deref() == Ok("1") {
            panic!("WARDEN_REQUIRE_CLIENTS=1 but no haproxy: run scripts/install-haproxy");
        }
        eprintln!("skipped: no haproxy (scripts/install-haproxy installs it)");
        return;
    };
    let (status, r) = drive(SCALE, &["--short", "--haproxy", &haproxy]);
    // Every check the driver made, by name, then the run's exit.
    let checks = r["chaos"]["checks"].as_array().expect("checks");
    assert!(checks.len() >= 5, "{checks:?}");
    for c in checks {
        assert_eq!(c["ok"], true, "failed: {}", c["check"]);
    }
    assert!(status.success(), "warden-scale exited {status}");
    let chaos = &r["chaos"];
    assert_eq!(chaos["lost"], 0);
    // Load was real in both families, through every replica, and the
    // restarts really ended sessions (answered 404, opened again).
    for family in ["stateless", "legacy"] {
        assert!(
            chaos[family]["ok"].as_u64().unwrap_or(0) >= 100,
            "{family}: {}",
            chaos[family]
        );
    }
    for replica in ["r1", "r2", "r3"] {
        assert!(
            chaos["served_by"][replica].as_u64().unwrap_or(0) >= 10,
            "{}",
            chaos["served_by"]
        );
    }
    assert!(chaos["session_ended"].as_u64().unwrap() >= 1, "{chaos}");
    let drains = chaos["rolling"]["drains"].as_array().unwrap();
    assert_eq!(drains.len(), 3, "{drains:?}");
    // Throughput rows: direct, then 1, 2 and 3 replicas behind haproxy.
    let rows = r["throughput"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    for row in rows {
        assert!(row["calls"].as_u64().unwrap() >= 100, "{row}");
    }
}
