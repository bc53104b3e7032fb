//! The MCP surface: handshake, tools/list, the default tools, bad input.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::harness::*;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped actors, with logs kept in a temp dir.
fn default_setup() -> Setup {
    Setup::new(&format!(
        "[server]\nactors_dir = {:?}\n[log]\nstderr = \"warn\"\n",
        repo().join("actors")
    ))
}

#[test]
fn default_tools_work_end_to_end() {
    let mut s = default_setup().start();
    let init = s.initialize();
    assert_eq!(init["result"]["serverInfo"]["name"], "warden");
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18");
    assert!(init["result"]["capabilities"]["tools"].is_object());

    let id = s.request("tools/list", json!({}));
    let list = s.response(id);
    let tools = list["result"]["tools"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    for want in ["echo", "status", "disk_usage", "dns_lookup", "list_dir"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let disk = tools.iter().find(|t| t["name"] == "disk_usage").unwrap();
    assert_eq!(disk["inputSchema"]["required"], json!(["path"]));
    assert!(disk["description"].as_str().unwrap().contains("df"));

    assert_eq!(text(&s.call_result("echo", json!({"message": "hi"}))), "hi");

    let status: Value = serde_json::from_str(&text(&s.call_result("status", json!({})))).unwrap();
    assert_eq!(status["warden"]["pid"], json!(s.pid()));
    let tools_node = status["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "tools")
        .unwrap();
    assert_eq!(tools_node["state"], "running");
    let children = tools_node["children"].as_array().unwrap();
    assert_eq!(children.len(), 5);
    assert!(
        children.iter().all(|c| c["state"] == "running"),
        "{children:#?}"
    );
    assert!(children.iter().all(|c| c["queue_capacity"].is_u64()));

    let df = s.call_result("disk_usage", json!({"path": "/tmp"}));
    assert_ne!(df["isError"], json!(true), "{df}");
    assert!(text(&df).contains("Filesystem"), "{df}");

    let dns = s.call_result("dns_lookup", json!({"name": "localhost"}));
    assert_ne!(dns["isError"], json!(true), "{dns}");
    assert!(text(&dns).contains("localhost"), "{dns}");

    let ls = s.call_result("list_dir", json!({}));
    assert_ne!(ls["isError"], json!(true), "{ls}");
    assert!(!text(&ls).is_empty());
    assert_eq!(
        kind(&s.call_result("list_dir", json!({"path": "../etc"}))),
        "validation"
    );

    let id = s.request("ping", json!({}));
    assert_eq!(s.response(id)["result"], json!({}));
    let id = s.request("logging/setLevel", json!({"level": "debug"}));
    assert!(s.response(id).get("result").is_some());
}

#[test]
fn every_call_is_logged_as_one_json_line() {
    let mut s = default_setup().start();
    s.initialize();
    s.call_result("echo", json!({"message": "logged"}));
    s.close_stdin();
    assert!(s.wait_exit(std::time::Duration::from_secs(10)).success());
    let lines = s.log_lines();
    let call = lines
        .iter()
        .find(|l| l["message"] == "call" && l["tool"] == "echo")
        .unwrap_or_else(|| panic!("no call line in {lines:#?}"));
    assert_eq!(call["outcome"], "ok");
    assert_eq!(call["request_id"], "2");
    // In milliseconds, to the microsecond: at most three decimals.
    let ms = call["duration_ms"]
        .as_f64()
        .expect("duration_ms is a number");
    assert!(ms >= 0.0, "{call}");
    let decimals = call["duration_ms"]
        .to_string()
        .split('.')
        .nth(1)
        .map_or(0, str::len);
    assert!(decimals <= 3, "{call}");
    // Every event says which process wrote it.
    assert_eq!(call["pid"], json!(s.pid()), "{call}");
    // The log directory warden made is its own, and so are the files.
    use std::os::unix::fs::PermissionsExt;
    let logs = s.setup.path().join("logs");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&logs), 0o700);
    for file in std::fs::read_dir(&logs).unwrap().flatten() {
        assert_eq!(mode(&file.path()), 0o600, "{}", file.path().display());
    }
    assert!(call["timestamp"].is_string());
}

#[test]
fn warden_call_prints_the_answer() {
    let logs = tempfile::tempdir().unwrap();
    let out = Command::new(WARDEN)
        .args(["call", "--config"])
        .arg(repo().join("config.toml"))
        .args(["echo", "message=hi"])
        .env("WARDEN_LOG_DIR", logs.path())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = Command::new(WARDEN)
        .args(["call", "--config"])
        .arg(repo().join("config.toml"))
        .args(["disk_usage", "path=not-absolute"])
        .env("WARDEN_LOG_DIR", logs.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("validation"));
    assert!(out.stdout.is_empty());
}

#[test]
fn check_reports_every_problem_and_serve_refuses() {
    let setup = Setup::new("[server]\nmax_in_flight = 0\nbogus = 1\n")
        .actor(
            "a",
            "name = \"a\"\nkind = \"builtin\"\nbuiltin = \"nope\"\n",
        )
        .actor("b", "name = \"b\"\nkind = \"command\"\n");
    let out = Command::new(WARDEN)
        .args(["check", "--config"])
        .arg(setup.config_path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("config.toml: server.bogus: unknown field"),
        "{stdout}"
    );
    assert!(
        stdout.contains("a.toml: builtin: unknown builtin `nope`"),
        "{stdout}"
    );
    assert!(stdout.contains("b.toml: input:"), "{stdout}");
    assert!(stdout.contains("b.toml: command:"), "{stdout}");

    let out = Command::new(WARDEN)
        .args(["serve", "--config"])
        .arg(setup.config_path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "serve wrote to stdout");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown builtin `nope`"));

    let ok = Command::new(WARDEN)
        .args(["check", "--config"])
        .arg(repo().join("config.toml"))
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
}

#[test]
fn bad_input_keeps_the_server_serving() {
    let mut s = default_setup().start();
    // Before initialize: notifications, a response nobody asked for, garbage.
    s.notify("notifications/initialized", json!({}));
    s.notify("notifications/cancelled", json!({"requestId": 7}));
    s.send(&json!({"jsonrpc": "2.0", "id": 41, "result": {}}));
    s.send_raw(b"this is not json\n");
    s.send_raw(b"\xff\xfe invalid utf-8 \x00\n");
    let init = s.initialize();
    assert_eq!(init["result"]["serverInfo"]["name"], "warden");

    // After: JSON that is not JSON-RPC, a malformed call, an unknown tool.
    s.send_raw(b"{\"foo\": 1}\n");
    let e = s
        .next_matching(ANSWER_DEADLINE, |v| v["error"]["code"] == json!(-32600))
        .expect("an invalid-request error");
    assert!(e["error"]["message"].as_str().unwrap().contains("JSON-RPC"));

    s.send(
        &json!({"jsonrpc": "2.0", "id": 99, "method": "tools/call", "params": {"arguments": {}}}),
    );
    let e = s.response(99);
    assert_eq!(e["error"]["code"], -32602, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("name"),
        "{e}"
    );

    let e = s.call("no_such_tool", json!({}));
    assert_eq!(e["error"]["code"], -32602, "{e}");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no_such_tool"));
    assert_eq!(e["error"]["data"]["field"], "name");

    s.send(&json!({"jsonrpc": "2.0", "id": 55, "result": {}}));
    s.send_raw(b"\n\n   \n");
    assert_eq!(
        text(&s.call_result("echo", json!({"message": "still here"}))),
        "still here"
    );
}

fn schema_setup() -> Setup {
    Setup::new(QUIET_CONFIG).actor("echo", "name = \"echo\"\nkind = \"builtin\"\n").actor(
        "words",
        &fixture_tool(
            "words",
            &["args", "{text}"],
            "",
            "required = [\"text\"]\nproperties.text = { type = \"string\", pattern = \"^[a-z ]*$\" }\nproperties.count = { type = \"integer\", minimum = 1 }",
        ),
    )
}

#[test]
fn schema_violations_name_the_field_and_the_rule() {
    let mut s = schema_setup().start();
    s.initialize();
    let cases = [
        (json!({}), "required", ""),
        (json!({"text": 5}), "type", "text"),
        (
            json!({"text": "ok", "extra": 1}),
            "additionalProperties",
            "",
        ),
        (json!({"text": "NOT OK"}), "pattern", "text"),
        (json!({"text": "ok", "count": 0}), "minimum", "count"),
    ];
    for (args, rule, field) in cases {
        let r = s.call_result("words", args.clone());
        assert_eq!(kind(&r), "validation", "{args} → {r}");
        let sc = &r["structuredContent"];
        assert_eq!(sc["details"]["rule"], rule, "{args} → {r}");
        assert_eq!(sc["details"]["field"], field, "{args} → {r}");
        assert!(sc["suggestion"].as_str().unwrap().contains("inputSchema"));
        assert!(text(&r).starts_with("validation: "), "{r}");
    }
    let ok = s.call_result("words", json!({"text": "all good"}));
    assert_eq!(text(&ok).trim_end(), "[\"all good\"]");
}

#[test]
fn shell_metacharacters_reach_the_program_literally() {
    let setup = Setup::new(QUIET_CONFIG).actor(
        "args",
        &fixture_tool(
            "args",
            &["args", "{text}", "--flag={text}"],
            "",
            "properties.text = { type = \"string\" }",
        ),
    );
    let mut s = setup.start();
    s.initialize();
    for hostile in [
        "; rm -rf /",
        "$(touch /tmp/warden-pwned)",
        "`id`",
        "a && b | c > x",
        "'\"\\",
        "*",
        "\n",
    ] {
        let r = s.call_result("args", json!({"text": hostile}));
        let argv: Vec<String> =
            serde_json::from_str(text(&r).trim()).unwrap_or_else(|e| panic!("{e}: {r}"));
        assert_eq!(argv, [hostile.to_string(), format!("--flag={hostile}")]);
    }
    assert!(!Path::new("/tmp/warden-pwned").exists());
}

#[test]
fn two_mib_arguments() {
    let mut s = schema_setup()
        .actor(
            "args",
            &fixture_tool(
                "args",
                &["args", "{text}"],
                "",
                "properties.text = { type = \"string\" }",
            ),
        )
        .start();
    s.initialize();
    let big = "a".repeat(2 << 20);
    // A builtin takes it whole.
    let r = s.call_result("echo", json!({"message": big}));
    assert_eq!(text(&r).len(), 2 << 20);
    // A program cannot: Linux caps one argv string at 128 KiB. A clear validation error.
    let r = s.call_result("args", json!({"text": big}));
    assert_eq!(kind(&r), "validation", "{r}");
    assert_eq!(r["structuredContent"]["details"]["rule"], "max_arg_len");
    assert_eq!(text(&s.call_result("echo", json!({"message": "ok"}))), "ok");
}

#[test]
fn an_oversized_line_is_refused_without_ending_the_session() {
    let mut s = Setup::new("[server]\nmax_line = \"64KiB\"\n[log]\nstderr = \"error\"\n")
        .actor("echo", "name = \"echo\"\nkind = \"builtin\"\n")
        .start();
    s.initialize();
    let mut line = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":500,\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"message\":\"{}\"}}}}}}\n",
        "b".repeat(1 << 20)
    )
    .into_bytes();
    s.send_raw(&line);
    let e = s
        .next_matching(ANSWER_DEADLINE, |v| v["error"]["code"] == json!(-32600))
        .expect("an error for the oversized line");
    assert!(e["error"]["message"].as_str().unwrap().contains("max_line"));
    line.clear();
    assert_eq!(
        text(&s.call_result("echo", json!({"message": "after"}))),
        "after"
    );
}
