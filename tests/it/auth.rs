//! `[auth]` over HTTP: static bearer tokens, the protected resource
//! metadata, and per-tool scopes, against the real binary on 127.0.0.1.

use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::gateway::mcp_actor;
use crate::harness::*;
use crate::http::free_port;
use crate::mcp_http::{wait_listening, Answer, Conn};

/// Two principals: alice may use what needs `files`, bob only what needs nothing.
const ALICE: &str = "alice-Qm3xT9vK2pLw8ZrN4bYh6Jd1";
const BOB: &str = "bob-Hx7Lq2Wn9Rv4Tc6Yp1Km8Zs3";
const METADATA: &str = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp";

fn sha(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn config() -> String {
    format!(
        "[log]\nstderr = \"warn\"\n[auth]\nmode = \"token\"\npublic_url = \"https://mcp.example.com\"\nauthorization_servers = [\"https://auth.example.com\"]\n\
         [[auth.tokens]]\nname = \"alice\"\nsha256 = \"{}\"\nscopes = [\"files\"]\n\
         [[auth.tokens]]\nname = \"bob\"\nsha256 = \"{}\"\n",
        sha(ALICE),
        sha(BOB)
    )
}

fn start() -> (Server, u16) {
    let port = free_port();
    let mut s = Setup::new(&config())
        .actor("echo", "name = \"echo\"\nkind = \"builtin\"\n")
        .actor(
            "secret",
            "name = \"secret\"\nkind = \"builtin\"\nbuiltin = \"echo\"\nscopes = [\"files\"]\n",
        )
        .actor("fx", &mcp_actor("fx", &[], "scopes = [\"files\"]"))
        .start_http(port);
    wait_listening(&mut s, port);
    (s, port)
}

/// A POST to /mcp with `token` (if any) and the session (if any).
fn post(port: u16, token: Option<&str>, session: Option<&str>, body: &Value) -> Answer {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b.as_str()));
    }
    if let Some(s) = session {
        headers.push(("Mcp-Session-Id", s));
        headers.push(("MCP-Protocol-Version", "2025-11-25"));
    }
    Conn::open(port).send("POST", &headers, &body.to_string())
}

fn initialize(port: u16, token: &str) -> String {
    let a = post(
        port,
        Some(token),
        None,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                           "clientInfo": {"name": "auth-test", "version": "1"}}}),
    );
    assert_eq!(a.status, 200, "{a:?}");
    let session = a.header("mcp-session-id").unwrap().to_string();
    let done = post(
        port,
        Some(token),
        Some(&session),
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    );
    assert_eq!(done.status, 202, "{done:?}");
    session
}

fn call(port: u16, token: &str, session: &str, tool: &str) -> Answer {
    post(
        port,
        Some(token),
        Some(session),
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": tool, "arguments": {"message": "hi"}}}),
    )
}

fn tool_names(port: u16, token: &str, session: &str) -> Vec<String> {
    let a = post(
        port,
        Some(token),
        Some(session),
        &json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}),
    );
    a.message()["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{a:?}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn without_a_valid_token_nothing_runs_and_the_challenge_names_the_metadata() {
    let (mut s, port) = start();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                      "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                                 "clientInfo": {"name": "t", "version": "1"}}});
    let none = post(port, None, None, &init);
    assert_eq!(none.status, 401, "{none:?}");
    assert_eq!(
        none.header("www-authenticate"),
        Some(format!("Bearer resource_metadata=\"{METADATA}\"").as_str()),
        "{none:?}"
    );
    for (header, why) in [
        ("Bearer not-a-token-of-ours", "the token is not valid here"),
        ("Basic YWxpY2U6cGFzc3dvcmQ=", "is not `Bearer TOKEN`"),
        ("Bearer", "is not `Bearer TOKEN`"),
    ] {
        let a = Conn::open(port).send("POST", &[("Authorization", header)], &init.to_string());
        assert_eq!(a.status, 401, "{header}: {a:?}");
        let challenge = a.header("www-authenticate").unwrap();
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        assert!(
            challenge.contains(&format!("resource_metadata=\"{METADATA}\"")),
            "{challenge}"
        );
        assert!(
            a.message()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(why),
            "{a:?}"
        );
    }
    // A token with a byte changed is someone else's, or nobody's.
    let mut near = ALICE.to_string();
    near.pop();
    near.push('X');
    assert_eq!(post(port, Some(&near), None, &init).status, 401);
    // A megabyte of header is refused before it is read.
    let (head, _) = crate::mcp_http::raw(
        port,
        format!(
            "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nContent-Length: 2\r\n\r\n{{}}",
            "a".repeat(1 << 20)
        )
        .as_bytes(),
        Duration::from_secs(5),
    );
    assert!(head.starts_with("HTTP/1.1 431"), "{head:.200}");
    // Nothing ran, and the next request with a good token is served.
    let session = initialize(port, BOB);
    assert_eq!(
        text(&call(port, BOB, &session, "echo").message()["result"]),
        "hi"
    );
    assert!(s.child.try_wait().unwrap().is_none());
}

#[test]
fn the_protected_resource_metadata_says_where_tokens_come_from() {
    let (_s, port) = start();
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let (answer, _) = crate::mcp_http::raw(
            port,
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .as_bytes(),
            Duration::from_secs(5),
        );
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
        let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({
                "resource": "https://mcp.example.com/mcp",
                "authorization_servers": ["https://auth.example.com"],
                "scopes_supported": ["files"],
                "bearer_methods_supported": ["header"],
                "resource_name": "warden",
            }),
            "{path}"
        );
    }
}

#[test]
fn a_principal_sees_and_calls_only_what_its_scopes_allow() {
    let (s, port) = start();
    let alice = initialize(port, ALICE);
    // fx is up once alice sees its tools.
    assert!(eventually(Duration::from_secs(10), || tool_names(
        port, ALICE, &alice
    )
    .iter()
    .any(|n| n == "fx_echo")));
    let mut seen = tool_names(port, ALICE, &alice);
    seen.retain(|n| ["echo", "secret", "fx_echo"].contains(&n.as_str()));
    assert_eq!(seen, ["echo", "secret", "fx_echo"]);
    assert_eq!(
        text(&call(port, ALICE, &alice, "secret").message()["result"]),
        "hi"
    );
    assert_eq!(
        text(&call(port, ALICE, &alice, "fx_echo").message()["result"]),
        "hi"
    );

    let bob = initialize(port, BOB);
    let names = tool_names(port, BOB, &bob);
    assert!(names.contains(&"echo".to_string()), "{names:?}");
    assert!(
        !names.iter().any(|n| n == "secret" || n.starts_with("fx_")),
        "{names:?}"
    );
    for tool in ["secret", "fx_echo"] {
        let a = call(port, BOB, &bob, tool);
        assert_eq!(a.status, 403, "{tool}: {a:?}");
        let challenge = a.header("www-authenticate").unwrap();
        assert!(
            challenge.contains("error=\"insufficient_scope\""),
            "{challenge}"
        );
        assert!(challenge.contains("scope=\"files\""), "{challenge}");
        assert!(
            a.message()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("tool `{tool}` needs the scope(s) files")),
            "{a:?}"
        );
    }
    // Refused before it ran: the log has alice's call of secret, none of bob's.
    let secret_calls = || -> Vec<Value> {
        s.log_lines()
            .into_iter()
            .filter(|l| l["message"] == "call" && l["tool"] == "secret")
            .collect()
    };
    assert!(eventually(Duration::from_secs(5), || !secret_calls().is_empty()));
    std::thread::sleep(Duration::from_millis(300));
    let calls = secret_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["principal"], "alice", "{calls:?}");
    // bob's session is still served.
    assert_eq!(
        text(&call(port, BOB, &bob, "echo").message()["result"]),
        "hi"
    );

    // No token, and no hash of one, in the logs, on stderr or in metrics.
    let (metrics, _) = crate::mcp_http::raw(
        port,
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    let logs = std::fs::read_dir(s.setup.path().join("logs"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect::<String>();
    let everything = format!("{logs}{}{metrics}", s.stderr_lines().join("\n"));
    for secret in [ALICE, BOB, &sha(ALICE), &sha(BOB)] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
}

#[test]
fn check_refuses_auth_that_cannot_work() {
    for (auth, says) in [
        ("mode = \"token\"\n", "auth.tokens: mode = \"token\" needs at least one"),
        ("mode = \"jwt\"\n", "auth.mode: \"jwt\" is not built yet"),
        (
            "mode = \"token\"\n[[auth.tokens]]\nname = \"x\"\nsha256 = \"abc\"\n",
            "auth.tokens[0].sha256: must be 64 hex digits",
        ),
        (
            "mode = \"token\"\n[[auth.tokens]]\nname = \"x\"\nenv = \"WARDEN_TEST_NO_SUCH_TOKEN\"\n",
            "auth.tokens[0].env: $WARDEN_TEST_NO_SUCH_TOKEN is not set",
        ),
        (
            "mode = \"token\"\n[[auth.tokens]]\nname = \"x\"\nenv = \"HOME\"\n",
            "auth.tokens[0].env: the token in $HOME is too weak",
        ),
    ] {
        let setup = Setup::new(&format!("[auth]\n{auth}"));
        let (code, said) = setup.check();
        assert_eq!(code, Some(1), "{auth}: {said}");
        assert!(said.contains(says), "{auth}: {said}");
    }
    // With tokens, MCP beyond loopback is not unguarded.
    let setup = Setup::new(&format!(
        "[http]\nlisten = \"0.0.0.0:8080\"\nmcp = true\n[auth]\nmode = \"token\"\n[[auth.tokens]]\nname = \"x\"\nsha256 = \"{}\"\n",
        sha(ALICE)
    ));
    let (code, said) = setup.check();
    assert_eq!(code, Some(0), "{said}");
    assert!(!said.contains("warning"), "{said}");
}
