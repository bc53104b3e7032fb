//! The operator's view of a live instance: control socket, status, kill, metrics.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

fn ctl(dir: &Path, args: &[&str]) -> Output {
    Command::new(WARDEN)
        .args(args)
        .env("WARDEN_CONTROL_DIR", dir)
        .env_remove("WARDEN_CONFIG")
        .output()
        .unwrap()
}

fn status_json(dir: &Path) -> Value {
    let out = ctl(dir, &["status", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn tool_line(status: &Value, tool: &str) -> Value {
    tool_lines(status)
        .into_iter()
        .find(|c| c["tool"] == tool)
        .unwrap()
}

fn actor_line(status: &Value, name: &str) -> Value {
    status["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .cloned()
        .unwrap()
}

fn setup(ctl_dir: &Path) -> Setup {
    Setup::new(&format!(
        "[control]\nsocket = {:?}\n[supervisor]\nbackoff = {{ min = \"20ms\", max = \"50ms\" }}\n[log]\nstderr = \"off\"\n",
        ctl_dir
    ))
    // Killed workers answer `internal`, which a breaker counts; these tests are
    // about supervision, so echo's breaker stays out of the way.
    .actor(
        "echo",
        "name = \"echo\"\nkind = \"builtin\"\nconcurrency = 2\nqueue = 64\n[breaker]\nenabled = false\n",
    )
    .actor("status", "name = \"status\"\nkind = \"builtin\"\n")
    .actor(
        "sleeper",
        &fixture_tool(
            "sleeper",
            &["sleep", "{ms}"],
            "concurrency = 1\nqueue = 4",
            "required = [\"ms\"]\nproperties.ms = { type = \"integer\" }",
        ),
    )
    .actor(
        "flaky",
        &fixture_tool(
            "flaky",
            &["fail", "1", "no"],
            "[breaker]\nwindow = 2\nmin_calls = 2\nopen_for = \"1m\"",
            "",
        ),
    )
}

/// Waits until the instance's control socket answers `status`.
fn wait_for_control(dir: &Path) {
    assert!(
        eventually(Duration::from_secs(5), || ctl(dir, &["status"])
            .status
            .success()),
        "the control socket never answered"
    );
}

/// A started, initialized instance with its control directory under `base`.
fn live() -> (tempfile::TempDir, std::path::PathBuf, Server) {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("ctl");
    let mut s = setup(&dir).start();
    s.initialize();
    (base, dir, s)
}

#[test]
fn status_tells_the_truth_about_a_live_instance() {
    let (_base, dir, mut s) = live();

    // The socket: 0600 in a 0700 directory, named after the pid.
    let sock = dir.join(format!("{}.sock", s.pid()));
    assert!(eventually(Duration::from_secs(5), || sock.exists()));
    assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(&sock).unwrap().mode() & 0o777, 0o600);

    // A tool killed twice shows 2 restarts.
    for n in 1..=2 {
        let out = ctl(&dir, &["kill", "tool:echo"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(eventually(Duration::from_secs(5), || {
            let t = tool_line(&status_json(&dir), "echo");
            t["restarts"] == n && t["state"] == "running"
        }));
    }
    assert_eq!(
        text(&s.call_result("echo", json!({"message": "back"}))),
        "back"
    );

    // A tripped breaker shows open.
    for _ in 0..2 {
        s.call_result("flaky", json!({}));
    }
    let b = tool_line(&status_json(&dir), "flaky")["breaker"].clone();
    assert_eq!(b["state"], "open", "{b}");
    assert!(b["half_open_in_ms"].as_u64().unwrap() > 50_000);

    // A busy tool shows its queue depth and its running process.
    let ids: Vec<i64> = (0..3)
        .map(|_| s.start_call("sleeper", json!({"ms": 1500})))
        .collect();
    assert!(eventually(Duration::from_secs(5), || {
        let t = tool_line(&status_json(&dir), "sleeper");
        t["queue_depth"] == 2
            && t["in_flight"] == 3
            && t["processes"].as_array().unwrap().len() == 1
    }));
    let st = status_json(&dir);
    assert_eq!(st["warden"]["pid"], json!(s.pid()));
    assert!(st["warden"]["rss_bytes"].as_u64().unwrap() > 1 << 20);
    for id in ids {
        assert_eq!(text(&s.response(id)["result"]), "slept\n");
    }

    // The readable view: a header, one line per actor, no colour off a terminal.
    let out = ctl(&dir, &["status"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("warden "), "{table}");
    assert!(!table.contains('\x1b'));
    for actor in [
        "transport",
        "control",
        "breaker",
        "tools",
        "tool:echo",
        "tool:sleeper",
        "tool:flaky",
    ] {
        assert!(
            table.lines().any(|l| l.trim_start().starts_with(actor)),
            "{actor} missing:\n{table}"
        );
    }
    let flaky = table.lines().find(|l| l.contains("tool:flaky")).unwrap();
    assert!(
        flaky.contains("open (") && flaky.contains("exited with status"),
        "{flaky}"
    );

    // Metrics parse as Prometheus text and move with calls.
    let count = |text: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with("warden_calls_total{outcome=\"ok\",tool=\"echo\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let before = String::from_utf8(ctl(&dir, &["metrics"]).stdout).unwrap();
    for line in before
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "not a sample line: {line}");
        assert!(line.starts_with("warden_"), "{line}");
    }
    s.call_result("echo", json!({"message": "x"}));
    s.call_result("echo", json!({"message": "y"}));
    let after = String::from_utf8(ctl(&dir, &["metrics"]).stdout).unwrap();
    assert_eq!(count(&after), count(&before) + 2, "{after}");
    for family in [
        "warden_call_duration_seconds_bucket",
        "warden_in_flight",
        "warden_queue_depth{tool=\"sleeper\"}",
        "warden_breaker_state{tool=\"flaky\"} 1",
        "warden_breaker_transitions_total",
        "warden_actor_restarts_total{tool=\"echo\"} 2",
        "warden_memory_bytes{what=\"process\"}",
    ] {
        assert!(after.contains(family), "{family} missing from\n{after}");
    }

    // Breaker reset through the socket.
    let out = ctl(&dir, &["breaker", "flaky", "reset"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "flaky: breaker closed"
    );

    // The socket is removed on exit.
    s.close_stdin();
    assert_eq!(s.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(!sock.exists());
    let out = ctl(&dir, &["status"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no running warden"));
}

#[test]
fn kill_every_actor_kind_while_calls_are_in_flight() {
    let (_base, dir, mut s) = live();
    wait_for_control(&dir);

    let out = ctl(&dir, &["kill", "transport"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to kill the transport"));
    // Nor through the worker form: the root's children include the
    // transport (this once ended warden at `warden/worker:4`).
    for i in 0..8 {
        let out = ctl(&dir, &["kill", &format!("warden/worker:{i}")]);
        assert_ne!(out.status.code(), Some(0));
        assert!(String::from_utf8_lossy(&out.stderr).contains("has no workers"));
    }
    let out = ctl(&dir, &["kill", "tools/worker:0"]);
    assert_ne!(out.status.code(), Some(0));

    let mut ids = Vec::new();
    let mut answered = HashSet::new();
    for (target, restarts_of) in [
        ("tool:echo", "echo"),
        ("tool:echo/worker:0", "echo"),
        ("breaker", "breaker"),
        ("health", "health"),
        ("recovery", "recovery"),
        ("control", "control"),
        ("tools", "tools"),
    ] {
        let before = status_json(&dir);
        let before_restarts = match restarts_of {
            "echo" => tool_line(&before, "echo")["restarts"].as_u64().unwrap(),
            name => actor_line(&before, name)["restarts"].as_u64().unwrap(),
        };
        // Calls in flight while the actor dies.
        for i in 0..20 {
            ids.push(s.start_call("echo", json!({"message": format!("{target}-{i}")})));
        }
        ids.push(s.start_call("sleeper", json!({"ms": 200})));
        let out = ctl(&dir, &["kill", target]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for _ in 0..20 {
            ids.push(s.start_call("echo", json!({"message": "after"})));
        }
        assert!(
            eventually(Duration::from_secs(5), || {
                let Ok(st) = std::panic::catch_unwind(|| status_json(&dir)) else {
                    return false;
                };
                let (restarts, state) = match restarts_of {
                    "echo" => {
                        let t = tool_line(&st, "echo");
                        (t["restarts"].as_u64().unwrap(), t["state"].clone())
                    }
                    name => {
                        let a = actor_line(&st, name);
                        (a["restarts"].as_u64().unwrap(), a["state"].clone())
                    }
                };
                restarts == before_restarts + 1 && state == "running"
            }),
            "{target} did not come back with restarts + 1: {:#}",
            status_json(&dir)
        );
    }
    // Every request got exactly one answer.
    for &id in &ids {
        let r = s.response(id);
        assert!(answered.insert(id));
        assert!(r.get("result").is_some(), "{r}");
    }
    assert!(s
        .next_matching(Duration::from_millis(300), |v| v.get("id").is_some())
        .is_none());
    assert_eq!(
        text(&s.call_result("echo", json!({"message": "alive"}))),
        "alive"
    );
}

#[test]
fn kill_help_lists_every_actor_status_shows() {
    let (_base, dir, _s) = live();
    wait_for_control(&dir);
    let out = ctl(&dir, &["kill", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{help}");
    let status = status_json(&dir);
    for actor in status["actors"].as_array().unwrap() {
        let name = actor["name"].as_str().unwrap();
        if name == "transport" || name == "warden" {
            // The two that are refused, said so.
            assert!(help.contains(&format!("`{name}`")), "{help}");
        } else {
            assert!(help.contains(&format!("  {name} ")), "no {name} in {help}");
        }
    }
    for form in ["tool:NAME ", "tool:NAME/worker:N ", "server:NAME "] {
        assert!(help.contains(form), "no {form} in {help}");
    }
}

#[test]
fn killing_an_idle_worker_says_no_call_was_lost() {
    let (_base, dir, _s) = live();
    wait_for_control(&dir);
    let out = ctl(&dir, &["kill", "tool:sleeper/worker:0"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        eventually(Duration::from_secs(5), || {
            tool_line(&status_json(&dir), "sleeper")["last_error"]
                == "a worker was killed and was replaced"
        }),
        "{:#}",
        tool_line(&status_json(&dir), "sleeper")
    );
}

#[test]
fn kill_with_a_signal_reaches_the_running_program() {
    let (_base, dir, mut s) = live();
    let id = s.start_call("sleeper", json!({"ms": 30000}));
    assert!(eventually(Duration::from_secs(5), || {
        ctl(&dir, &["status"]).status.success()
            && tool_line(&status_json(&dir), "sleeper")["processes"]
                .as_array()
                .unwrap()
                .len()
                == 1
    }));
    let out = ctl(&dir, &["kill", "tool:sleeper", "--signal", "KILL"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = s.response(id);
    assert_eq!(kind(&r["result"]), "execution_failed", "{r}");
    assert_eq!(r["result"]["structuredContent"]["details"]["signal"], 9);
}

#[test]
fn killing_a_tool_actor_mid_call_kills_its_programs_whole_group() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("ctl");
    let pidfile = base.path().join("pids");
    let mut s = setup(&dir)
        .actor(
            "grouper",
            &fixture_tool(
                "grouper",
                &["group", "{pidfile}", "60000"],
                "",
                "properties.pidfile = { type = \"string\" }",
            ),
        )
        .start();
    s.initialize();
    let id = s.start_call("grouper", json!({"pidfile": pidfile.to_str().unwrap()}));
    let pids = read_pids(&pidfile);
    assert_eq!(pids.len(), 2);
    wait_for_control(&dir);
    let out = ctl(&dir, &["kill", "tool:grouper"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = s.response(id);
    assert_eq!(kind(&r["result"]), "internal", "{r}");
    // warden is still running; the call's leader and grandchild must be gone already.
    assert!(
        eventually(Duration::from_secs(3), || pids.iter().all(|&p| !alive(p))),
        "processes of the killed call outlived it: {pids:?}"
    );
    assert!(eventually(Duration::from_secs(3), || {
        tool_line(&status_json(&dir), "grouper")["processes"] == json!([])
    }));
}

#[test]
fn status_watch_into_a_pipe_writes_plain_frames() {
    use std::io::Read;
    let (_base, dir, _s) = live();
    wait_for_control(&dir);
    let mut watch = Command::new(WARDEN)
        .args(["status", "--watch"])
        .env("WARDEN_CONTROL_DIR", &dir)
        .env_remove("WARDEN_CONFIG")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = watch.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    // It redraws every second: three frames in 2.5 s.
    std::thread::sleep(Duration::from_millis(2500));
    watch.kill().unwrap();
    watch.wait().unwrap();
    let text = reader.join().unwrap();
    assert!(!text.contains('\x1b'), "terminal codes in a pipe: {text:?}");
    // Each frame opens with the `warden <version>  pid ...` line.
    let frames = text
        .lines()
        .filter(|l| l.starts_with("warden ") && l.contains("  pid "))
        .count();
    assert!(frames >= 2, "{frames} frames in 2.5 s: {text}");
    assert_eq!(text.matches("\n\nwarden ").count(), frames - 1, "{text}");
}

#[test]
fn several_instances_need_a_pid_and_stale_sockets_are_cleaned() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("ctl");
    let mut a = setup(&dir).start();
    let mut b = setup(&dir).start();
    a.initialize();
    b.initialize();
    assert!(eventually(Duration::from_secs(5), || std::fs::read_dir(
        &dir
    )
    .unwrap()
    .count()
        == 2));
    let out = ctl(&dir, &["status"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--pid")
            && err.contains(&a.pid().to_string())
            && err.contains(&b.pid().to_string()),
        "{err}"
    );
    let pid = b.pid().to_string();
    let out = ctl(&dir, &["status", "--json", "--pid", &pid]);
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["warden"]["pid"], json!(b.pid()));

    // A socket file nobody listens on (an instance that was SIGKILLed) is cleaned up.
    let stale = dir.join("999999.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let out = ctl(&dir, &["status", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stale.exists());
    assert!(!dir.join(format!("{pid}.sock")).exists());
}

#[test]
fn another_user_is_refused_by_the_peer_uid_check() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("skipped: switching uid needs root");
        return;
    }
    let (base, dir, s) = live();
    let sock = dir.join(format!("{}.sock", s.pid()));
    assert!(eventually(Duration::from_secs(5), || sock.exists()));
    // Open the file modes so that only the SO_PEERCRED check stands in the way.
    for p in [base.path(), dir.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = Command::new(FIXTURE)
        .args(["connect-as", "65534"])
        .arg(&sock)
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(answer.trim()).unwrap_or_else(|_| panic!("{answer}"));
    assert_eq!(v["ok"], false);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("permission denied: uid 65534"),
        "{v}"
    );
    // The owner still gets in.
    let out = Command::new(FIXTURE)
        .args(["connect-as", "0"])
        .arg(&sock)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
}

#[test]
fn a_control_directory_someone_else_made_is_left_for_a_private_fallback() {
    use std::os::unix::fs::PermissionsExt;
    let base = tempfile::tempdir().unwrap();
    let runtime_dir = base.path().join("run");
    let home = base.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    // Made before warden, open to all (and, where this test may, another user's).
    let planted = runtime_dir.join("warden");
    std::fs::create_dir_all(&planted).unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o777)).unwrap();
    let _ = nix::unistd::chown(&planted, Some(nix::unistd::Uid::from_raw(65534)), None);
    let env = [
        ("WARDEN_CONTROL_DIR", "auto"),
        ("XDG_RUNTIME_DIR", runtime_dir.to_str().unwrap()),
        ("HOME", home.to_str().unwrap()),
    ];
    let mut s = Setup::new("[log]\nstderr = \"warn\"\n")
        .actor("echo", "name = \"echo\"\nkind = \"builtin\"\n")
        .start_with_env(&env);
    s.initialize();
    let status = || {
        Command::new(WARDEN)
            .args(["status", "--json"])
            .env_remove("WARDEN_CONTROL_DIR")
            .env_remove("WARDEN_CONFIG")
            .env("XDG_RUNTIME_DIR", &runtime_dir)
            .env("HOME", &home)
            .output()
            .unwrap()
    };
    assert!(
        eventually(Duration::from_secs(5), || status().status.success()),
        "{:?}",
        status()
    );
    let st: Value = serde_json::from_slice(&status().stdout).unwrap();
    assert_eq!(st["warden"]["pid"], json!(s.pid()));
    let fallback = home.join(".local/state/warden");
    assert!(fallback.join(format!("{}.sock", s.pid())).exists());
    // The log says where the socket went, and why.
    assert!(
        eventually(Duration::from_secs(5), || s
            .stderr_lines()
            .iter()
            .any(|l| l.contains("socket is in the fallback")
                && l.contains(planted.to_str().unwrap()))),
        "{:#?}",
        s.stderr_lines()
    );
    // With none running, the refusal is part of the answer.
    s.close_stdin();
    assert!(s.wait_exit(Duration::from_secs(10)).success());
    let out = status();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused") && err.contains(".local/state/warden"),
        "{err}"
    );
}
