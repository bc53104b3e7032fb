//! Hostile input: what a broken or malicious client, or a malicious argument,
//! can send. Each case gets its answer (or is ignored, for what is not a
//! request) and warden keeps serving.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;

const QUIET: &str = "[log]\nstderr = \"off\"\n";

fn echo_setup(config: &str) -> Setup {
    Setup::new(config).actor(
        "echo",
        "name = \"echo\"\nkind = \"builtin\"\nconcurrency = 4\nqueue = 64\n",
    )
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn echo_line(id: i64, message: &str) -> Vec<u8> {
    let mut line = serde_json::to_vec(&json!({
        "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": message}}
    }))
    .unwrap();
    line.push(b'\n');
    line
}

#[test]
fn a_16_mib_line_is_refused_unbuffered_and_one_under_it_is_served() {
    // The default max_line is 16 MiB.
    let mut s = echo_setup(QUIET).start();
    s.initialize();
    let before = rss_kib(s.pid());
    let over = echo_line(1, &"x".repeat(16 << 20));
    s.send_raw(&over);
    let e = s
        .next_matching(ANSWER_DEADLINE, |v| v["error"]["code"] == json!(-32600))
        .expect("an error for the 16 MiB line");
    assert_eq!(e.get("id"), Some(&Value::Null), "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("max_line"),
        "{e}"
    );
    // Skipped as it streamed past, not held: far less than 16 MiB more.
    let grown = rss_kib(s.pid()).saturating_sub(before);
    assert!(
        grown < 8 * 1024,
        "RSS grew by {grown} KiB for a refused line"
    );

    let message = "y".repeat((16 << 20) - 1024);
    s.send_raw(&echo_line(2, &message));
    let r = s.response(2);
    assert_eq!(text(&r["result"]).len(), message.len());
    assert_eq!(
        text(&s.call_result("echo", json!({"message": "after"}))),
        "after"
    );
}

#[test]
fn lines_that_are_not_json_are_answered_on_the_id_they_name() {
    let mut s = echo_setup(QUIET).start();
    s.initialize();
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let cases: Vec<(i64, Vec<u8>)> = vec![
        // Nesting far past serde_json's limit of 128: no stack is spent on it.
        (
            10,
            format!(
                "{{\"jsonrpc\":\"2.0\",\"id\":10,\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"message\":{}}}}}}}\n",
                deep(1_000_000)
            )
            .into_bytes(),
        ),
        // Invalid UTF-8 inside a string.
        (
            11,
            b"{\"jsonrpc\":\"2.0\",\"id\":11,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"message\":\"\xff\xfe\"}}}\n".to_vec(),
        ),
        // A raw NUL byte (JSON allows it only escaped).
        (
            12,
            b"{\"jsonrpc\":\"2.0\",\"id\":12,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"message\":\"a\x00b\"}}}\n".to_vec(),
        ),
    ];
    for (id, line) in cases {
        s.send_raw(&line);
        let r = s.response(id);
        assert_eq!(r["error"]["code"], -32700, "{r}");
        assert!(
            r["error"]["message"].as_str().unwrap().contains("JSON"),
            "{r}"
        );
    }
    // Noise with no id: a parse error with a null id, as JSON-RPC says.
    s.send_raw(b"\x00\x01\x02 garbage\n");
    let r = s
        .next_matching(ANSWER_DEADLINE, |v| v["error"]["code"] == json!(-32700))
        .expect("a parse error for the noise");
    // Present and null: indexing a missing member would read null too.
    assert_eq!(r.get("id"), Some(&Value::Null), "{r}");

    // Deep but within the limit: valid JSON, refused by the schema.
    let r = s.call_result(
        "echo",
        serde_json::from_str(&format!("{{\"message\":{}}}", deep(100))).unwrap(),
    );
    assert_eq!(kind(&r), "validation", "{r}");
    // A NUL escaped the JSON way is just a character to a builtin...
    let r = s.call_result("echo", json!({"message": "a\u{0}b"}));
    assert_eq!(text(&r), "a\u{0}b");
    assert_eq!(
        text(&s.call_result("echo", json!({"message": "alive"}))),
        "alive"
    );
}

#[test]
fn thousands_of_requests_in_flight_get_one_answer_each() {
    let mut s = echo_setup("[server]\nmax_in_flight = 256\n[log]\nstderr = \"off\"\n").start();
    s.initialize();
    const N: i64 = 5000;
    // All written before any answer is read: warden reads on only as it
    // answers (its bound on pending requests), and the answers queue in the pipe.
    let mut burst = Vec::new();
    for id in 1000..1000 + N {
        burst.extend(echo_line(id, &format!("m{id}")));
    }
    s.send_raw(&burst);
    let mut answers: HashMap<i64, u32> = HashMap::new();
    let mut kinds: HashMap<String, u32> = HashMap::new();
    let until = Instant::now() + Duration::from_secs(60);
    while answers.len() < N as usize && Instant::now() < until {
        let Some(r) = s.next_matching(ANSWER_DEADLINE, |v| v.get("id").is_some()) else {
            break;
        };
        let id = r["id"].as_i64().unwrap();
        *answers.entry(id).or_default() += 1;
        let k = if r["result"]["isError"] == json!(true) {
            kind(&r["result"])
        } else {
            assert_eq!(text(&r["result"]), format!("m{id}"));
            "ok".into()
        };
        *kinds.entry(k).or_default() += 1;
    }
    assert_eq!(answers.len(), N as usize, "answered: {kinds:?}");
    assert!(answers.values().all(|&n| n == 1));
    // Every answer is the echo or a refusal for load; nothing else.
    assert!(kinds.keys().all(|k| k == "ok" || k == "busy"), "{kinds:?}");
    assert!(kinds["ok"] > 0);
    // And no second answer trails behind.
    let extra = s.next_matching(Duration::from_millis(500), |v| v.get("id").is_some());
    assert!(extra.is_none(), "{extra:?}");
}

/// `echo` and `sleeper` (the fixture's `sleep {ms}`).
fn sleeper_setup() -> Setup {
    echo_setup(QUIET).actor(
        "sleeper",
        &fixture_tool(
            "sleeper",
            &["sleep", "{ms}"],
            "",
            "properties.ms = { type = \"integer\" }",
        ),
    )
}

#[test]
fn a_reused_id_in_flight_is_refused_and_the_first_call_still_answers() {
    let mut s = sleeper_setup().start();
    s.initialize();
    let call = |id: i64, tool: &str, args: Value| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": tool, "arguments": args}})
    };
    s.send(&call(9, "sleeper", json!({"ms": 400})));
    s.send(&call(9, "echo", json!({"message": "second"})));
    let first = s.response(9);
    assert_eq!(first["error"]["code"], -32600, "{first}");
    assert!(first["error"]["message"]
        .as_str()
        .unwrap()
        .contains("already in use"));
    let second = s.response(9);
    assert_eq!(text(&second["result"]), "slept\n", "{second}");
    // Once answered, the id is free again.
    s.send(&call(9, "echo", json!({"message": "again"})));
    assert_eq!(text(&s.response(9)["result"]), "again");
}

#[test]
fn an_id_reused_right_after_its_cancel_never_gets_the_cancelled_answer() {
    let mut s = sleeper_setup().start();
    s.initialize();
    let line = |v: Value| {
        let mut l = serde_json::to_vec(&v).unwrap();
        l.push(b'\n');
        l
    };
    let call = |id: i64, ms: u64| {
        line(json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                    "params": {"name": "sleeper", "arguments": {"ms": ms}}}))
    };
    // One write: a call, its cancel, and a new call with the same id, which
    // rmcp would register before the first call's handler has ended.
    let mut burst = call(7, 5000);
    burst.extend(line(
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                             "params": {"requestId": 7, "reason": "changed my mind"}}),
    ));
    burst.extend(call(7, 300));
    s.send_raw(&burst);
    let first = s.response(7);
    assert_eq!(first["error"]["code"], -32600, "{first}");
    assert!(
        first["error"]["message"]
            .as_str()
            .unwrap()
            .contains("belongs to a cancelled request that is still ending"),
        "{first}"
    );
    // Nothing else arrives for id 7: the cancelled call's answer is dropped.
    let more = s.next_matching(Duration::from_millis(800), |v| v["id"] == 7);
    assert!(more.is_none(), "{more:?}");
    // Once the cancelled call has ended, the id serves a new call.
    s.send_raw(&call(7, 10));
    let again = s.response(7);
    assert_eq!(text(&again["result"]), "slept\n", "{again}");
}

#[test]
fn messages_out_of_place_are_ignored_or_refused() {
    let mut s = echo_setup(QUIET).start();
    // Before initialize: a call, a cancellation, responses to nothing.
    s.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                   "params": {"name": "echo", "arguments": {"message": "early"}}}));
    let early = s.response(1);
    assert!(early.get("error").is_some(), "{early}");
    s.notify("notifications/cancelled", json!({"requestId": 1}));
    s.notify(
        "notifications/progress",
        json!({"progressToken": 1, "progress": 1}),
    );
    s.initialize();
    // Responses and errors for requests warden never made, of every id shape.
    for id in [json!(77), json!("abc"), json!(-1), json!(1.5)] {
        s.send(&json!({"jsonrpc": "2.0", "id": id, "result": {}}));
        s.send(&json!({"jsonrpc": "2.0", "id": id, "error": {"code": -1, "message": "x"}}));
    }
    // A batch (MCP has none since 2025-06-18) and a null-id response.
    s.send(&json!([{"jsonrpc": "2.0", "id": 5, "method": "ping"}]));
    s.send(&json!({"jsonrpc": "2.0", "id": null, "result": {}}));
    // A progress notification and a cancellation for calls that do not exist.
    s.notify("notifications/cancelled", json!({"requestId": 424242}));
    s.notify(
        "notifications/progress",
        json!({"progressToken": "nope", "progress": 1}),
    );
    assert_eq!(
        text(&s.call_result("echo", json!({"message": "fine"}))),
        "fine"
    );
    // Nothing answered a response or a notification; nothing answered id 5.
    let stray = s.arrived_before(|_| true);
    for m in &stray {
        assert!(
            m["id"].is_null() || m.get("method").is_some(),
            "unexpected: {m}"
        );
    }
}

#[test]
fn path_arguments_cannot_leave_the_tools_directory() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("docs")).unwrap();
    std::fs::write(root.path().join("docs/readme"), "hi").unwrap();
    std::os::unix::fs::symlink("/etc", root.path().join("etc-link")).unwrap();
    std::os::unix::fs::symlink("docs", root.path().join("docs-link")).unwrap();
    let tool = format!(
        "name = \"ls\"\nkind = \"command\"\ncommand = \"ls\"\nargs = [\"-1\", \"--\", \"{{path}}\"]\ncwd = {:?}\npaths = [\"path\"]\n[input]\ntype = \"object\"\nproperties.path = {{ type = \"string\" }}\n",
        root.path().display().to_string()
    );
    let mut s = Setup::new(QUIET).actor("ls", &tool).start();
    s.initialize();
    for escape in [
        "..",
        "../..",
        "docs/../..",
        "/etc",
        "etc-link",
        "etc-link/passwd",
        "docs-link/../../etc",
        "nothing/../../etc",
    ] {
        let r = s.call_result("ls", json!({"path": escape}));
        assert_eq!(kind(&r), "validation", "{escape}: {r}");
        assert_eq!(
            r["structuredContent"]["details"]["rule"], "outside_cwd",
            "{escape}"
        );
        assert!(!text(&r).contains("passwd"), "{r}");
    }
    for inside in ["docs", "docs-link", "docs/../docs", "."] {
        let r = s.call_result("ls", json!({"path": inside}));
        assert_ne!(r["isError"], json!(true), "{inside}: {r}");
    }
    assert_eq!(
        text(&s.call_result("ls", json!({"path": "docs-link"}))),
        "readme\n"
    );

    // The default list_dir confines itself to /usr/share the same way.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let list_dir = std::fs::read_to_string(repo.join("actors/list_dir.toml")).unwrap();
    assert!(list_dir.contains("paths = [\"path\"]"));
}

#[test]
fn a_value_cannot_become_an_option() {
    let tool = fixture_tool(
        "args",
        &["args", "{first}", "--name={first}", "--", "{rest}"],
        "",
        "properties.first = { type = \"string\" }\nproperties.rest = { type = \"string\" }",
    );
    let mut s = Setup::new(QUIET).actor("args", &tool).start();
    s.initialize();
    for flag in ["-rf", "--output=/tmp/x", "-", "--"] {
        let r = s.call_result("args", json!({"first": flag, "rest": "x"}));
        assert_eq!(kind(&r), "validation", "{flag}: {r}");
        assert_eq!(r["structuredContent"]["details"]["rule"], "leading_dash");
        assert_eq!(r["structuredContent"]["details"]["field"], "first");
    }
    // After `--` (and behind literal text) a dash is data.
    let r = s.call_result("args", json!({"first": "a-b", "rest": "-rf"}));
    let argv: Vec<String> = serde_json::from_str(text(&r).trim()).unwrap();
    assert_eq!(argv, ["a-b", "--name=a-b", "--", "-rf"]);
}

#[test]
fn arguments_cannot_reach_the_environment() {
    let tool = fixture_tool(
        "env",
        &["env", "{x}"],
        "env = { KEEP = \"1\" }",
        "properties.x = { type = \"string\" }",
    );
    let mut s = Setup::new(QUIET).actor("env", &tool).start_with_env(&[
        ("LD_PRELOAD", ""),
        ("BASH_ENV", "/tmp/evil"),
        ("WARDEN_SECRET", "s3cret"),
    ]);
    s.initialize();
    for x in ["LD_PRELOAD=/tmp/evil.so", "PATH=/tmp/evil\nKEEP=0", "$(id)"] {
        let r = s.call_result("env", json!({"x": x}));
        assert_ne!(r["isError"], json!(true), "{r}");
        let out = text(&r);
        let env: HashMap<&str, &str> = out.lines().filter_map(|l| l.split_once('=')).collect();
        let names: Vec<&str> = env.keys().copied().collect();
        assert!(!env.contains_key("LD_PRELOAD"), "{names:?}");
        assert!(!env.contains_key("BASH_ENV"), "{names:?}");
        assert!(!env.contains_key("WARDEN_SECRET"), "{names:?}");
        assert_eq!(env.get("KEEP"), Some(&"1"));
        assert!(!env["PATH"].contains("evil"));
    }
}

#[test]
fn a_tool_name_cannot_forge_log_lines_or_reach_a_terminal_raw() {
    let mut s = echo_setup("[log]\nstderr = \"warn\"\n").start();
    s.initialize();
    let forged = "x\nERROR forged line \u{1b}]0;pwned\u{7}\u{9b}2J";
    let id = s.request("tools/call", json!({"name": forged, "arguments": {}}));
    assert!(s.response(id).get("error").is_some());
    assert!(eventually(ANSWER_DEADLINE, || s
        .stderr_lines()
        .iter()
        .any(|l| l.contains("unknown_tool"))));
    let lines = s.stderr_lines();
    for line in &lines {
        assert!(
            !line.starts_with("ERROR forged"),
            "a forged line: {lines:#?}"
        );
        assert!(
            !line.contains(['\u{1b}', '\u{7}', '\u{9b}']),
            "a raw control character: {line:?}"
        );
    }
    let line = lines.iter().find(|l| l.contains("unknown_tool")).unwrap();
    assert!(
        line.contains("x\\nERROR forged line \\u001b]0;pwned"),
        "{line}"
    );
}

#[test]
fn a_client_that_stops_reading_cannot_grow_warden_without_bound() {
    use std::io::{BufRead, Read, Write};
    use std::process::{Command, Stdio};
    let setup = echo_setup(QUIET);
    let mut child = Command::new(WARDEN)
        .args(["serve", "--config"])
        .arg(setup.config_path())
        .env("WARDEN_CONTROL_DIR", setup.path().join("control"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let mut stdin = child.stdin.take().unwrap();
    let calls = 30;
    // The writer blocks once warden stops reading: it runs on its own.
    let writer = std::thread::spawn(move || {
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "t", "version": "0"}}});
        let mut out = serde_json::to_vec(&init).unwrap();
        out.extend_from_slice(
            b"\n{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n",
        );
        stdin.write_all(&out).unwrap();
        let message = "x".repeat(8 << 20);
        for id in 2..2 + calls {
            let _ = stdin.write_all(&echo_line(id, &message));
        }
        stdin
    });
    // Nobody reads stdout: until every request is written, or warden has
    // stopped reading and its memory has stopped growing (2 s flat).
    let mut peak = 0;
    let mut flat_since = (Instant::now(), 0);
    let give_up = Instant::now() + Duration::from_secs(60);
    while !writer.is_finished() && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(100));
        let rss = rss_kib(pid);
        peak = peak.max(rss);
        if rss > flat_since.1 + 1024 {
            flat_since = (Instant::now(), rss);
        } else if flat_since.0.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    eprintln!("peak RSS with stdout unread: {} MiB", peak / 1024);
    // Measured (debug build, 30 calls of 8 MiB): 119 MiB; 288 MiB before the byte budget.
    assert!(peak < 200 * 1024, "RSS reached {} MiB", peak / 1024);
    // Then every call is answered, once the client reads.
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut ids = Vec::new();
        for line in std::io::BufReader::with_capacity(1 << 20, stdout).split(b'\n') {
            let line = line.unwrap();
            let v: Value = serde_json::from_slice(&line).unwrap();
            if let Some(id) = v["id"].as_i64() {
                ids.push(id);
            }
        }
        ids
    });
    let stdin = writer.join().unwrap();
    drop(stdin);
    let ids = reader.join().unwrap();
    let mut want: Vec<i64> = (1..2 + calls).collect();
    let mut got = ids.clone();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "every request answered once");
    let mut rest = Vec::new();
    let _ = child.stdout.as_mut().map(|o| o.read_to_end(&mut rest));
    assert!(child.wait().unwrap().success());
}
