//! Command tools: failures, caps, environment, timeouts, queues, cancellation.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

fn sleeper(extra: &str) -> String {
    pidfile_sleep_tool("sleeper", extra)
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
        .actor("flood", &flood_tool())
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

#[test]
fn a_path_longer_than_path_max_cannot_lead_out_of_cwd() {
    use nix::fcntl::{open, openat, OFlag};
    use nix::sys::stat::{mkdirat, Mode};
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("root");
    let outside = base.path().join("outside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    // 22 directories of 200 characters inside cwd, then a link out of it.
    let name = "d".repeat(200);
    let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY;
    let mut fd = open(&root, flags, Mode::empty()).unwrap();
    for _ in 0..22 {
        mkdirat(&fd, name.as_str(), Mode::S_IRWXU).unwrap();
        fd = openat(&fd, name.as_str(), flags, Mode::empty()).unwrap();
    }
    nix::unistd::symlinkat(&outside, &fd, "out").unwrap();
    let mut s = Setup::new("[log]\nstderr = \"off\"\n")
        .actor(
            "mk",
            &format!(
                "name = \"mk\"\nkind = \"command\"\ncommand = \"mkdir\"\nargs = [\"-p\", \"--\", \"{{p}}\"]\ncwd = {:?}\npaths = [\"p\"]\n[input]\ntype = \"object\"\nrequired = [\"p\"]\nproperties.p = {{ type = \"string\" }}\n",
                root.to_str().unwrap()
            ),
        )
        .start();
    s.initialize();
    let deep = vec![name.as_str(); 22].join("/");
    let r = s.call_result("mk", json!({"p": format!("{deep}/out/escaped")}));
    assert_eq!(kind(&r), "validation", "{r}");
    assert_eq!(
        r["structuredContent"]["details"]["rule"], "outside_cwd",
        "{r}"
    );
    assert!(
        !outside.join("escaped").exists(),
        "mkdir ran through the link"
    );
    // A short path inside still works.
    let r = s.call_result("mk", json!({"p": "fine"}));
    assert_ne!(r["isError"], json!(true), "{r}");
    assert!(root.join("fine").is_dir());
}

#[test]
fn numbers_render_exactly_and_too_much_argv_is_a_validation_error() {
    // printf with one %s per field; 64 fields of almost 128 KiB each (8 MiB)
    // go past ARG_MAX together (2 MiB with the default 8 MiB stack limit,
    // at most 6 MiB with an unlimited one).
    let fields: Vec<String> = (0..64).map(|i| format!("f{i}")).collect();
    let mut args = vec![format!("{:?}", "%s,".repeat(fields.len()))];
    args.extend(fields.iter().map(|f| format!("\"{{{f}}}\"")));
    let props: String = fields
        .iter()
        .map(|f| format!("properties.{f} = {{ type = [\"string\", \"number\"] }}\n"))
        .collect();
    let actor = format!(
        "name = \"pf\"\nkind = \"command\"\ncommand = \"printf\"\nargs = [{}]\n[input]\ntype = \"object\"\n{props}[breaker]\nwindow = 4\nmin_calls = 4\n",
        args.join(", ")
    );
    let mut s = Setup::new("[log]\nstderr = \"off\"\n")
        .actor("pf", &actor)
        .start();
    s.initialize();
    let r = s.call_result(
        "pf",
        json!({"f0": 5.0, "f1": 0.5, "f2": 18446744073709551615u64}),
    );
    // (printf prints the %s without an argument as empty.)
    assert_eq!(
        text(&r).trim_end_matches(','),
        "5,0.5,18446744073709551615",
        "{r}"
    );
    let r = s.call_result(
        "pf",
        serde_json::from_str::<serde_json::Value>(r#"{"f0": 12345678901234567890123}"#).unwrap(),
    );
    assert_eq!(kind(&r), "validation", "{r}");
    assert_eq!(
        r["structuredContent"]["details"]["rule"], "exact_number",
        "{r}"
    );

    let big: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|f| (f.clone(), json!("x".repeat(128 * 1024 - 1))))
        .collect();
    for _ in 0..6 {
        let r = s.call_result("pf", serde_json::Value::Object(big.clone()));
        assert_eq!(kind(&r), "validation", "{r}");
        assert_eq!(r["structuredContent"]["details"]["rule"], "arg_max", "{r}");
    }
    // Refused before anything ran: the breaker did not count them.
    let r = s.call_result("pf", json!({"f0": "ok"}));
    assert_eq!(text(&r).trim_end_matches(','), "ok", "{r}");
}

#[test]
fn a_secret_env_value_in_stderr_is_blanked_everywhere_it_is_kept() {
    let secret = "s3cr3t-k3y-value";
    let actor = fixture_tool(
        "leaky",
        &["fail", "1", "{msg}"],
        &format!("env = {{ API_KEY = \"{secret}\" }}\n[breaker]\nenabled = false"),
        "properties.msg = { type = \"string\" }",
    );
    let mut s = Setup::new("[log]\nstderr = \"off\"\n")
        .actor("leaky", &actor)
        .actor("status", "name = \"status\"\nkind = \"builtin\"\n")
        .start();
    s.initialize();
    let r = s.call_result("leaky", json!({"msg": format!("the key is {secret}")}));
    assert_eq!(kind(&r), "execution_failed", "{r}");
    assert!(!r.to_string().contains(secret), "{r}");
    assert!(
        r["structuredContent"]["details"]["stderr_tail"]
            .as_str()
            .unwrap()
            .contains("the key is [redacted]"),
        "{r}"
    );
    let st = tool_status(&mut s, "leaky");
    assert!(!st.to_string().contains(secret), "{st}");
    s.close_stdin();
    assert!(s.wait_exit(Duration::from_secs(10)).success());
    let logged: String = s.log_lines().iter().map(|l| l.to_string()).collect();
    assert!(
        logged.contains("[redacted]") && !logged.contains(secret),
        "{logged}"
    );
}
