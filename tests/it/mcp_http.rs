//! MCP over Streamable HTTP (`warden serve --http ADDR`): real clients and raw
//! requests against the real binary, on 127.0.0.1 only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::clients::installed;
use crate::gateway::mcp_actor;
use crate::harness::*;
use crate::http::free_port;

const QUIET: &str = "[log]\nstderr = \"warn\"\n";

fn setup(config: &str) -> Setup {
    Setup::new(config)
        .actor("echo", "name = \"echo\"\nkind = \"builtin\"\n")
        .actor("sleeper", &pidfile_sleep_tool("sleeper", ""))
}

/// Waits until warden answers on `port`.
pub fn wait_listening(s: &mut Server, port: u16) {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let ok = eventually(Duration::from_secs(10), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    });
    assert!(ok, "nothing listens on {addr}");
    assert!(s.child.try_wait().unwrap().is_none(), "warden exited");
}

/// One HTTP answer: status, headers (lowercase names), the JSON-RPC
/// messages of its body (JSON, or the `data:` lines of an SSE stream).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    headers: Vec<(String, String)>,
    pub messages: Vec<Value>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn message(&self) -> &Value {
        self.messages
            .last()
            .unwrap_or_else(|| panic!("no JSON-RPC message in {self:?}"))
    }
}

/// A kept-alive HTTP/1.1 connection to warden.
pub struct Conn {
    reader: BufReader<TcpStream>,
    port: u16,
}

impl Conn {
    pub fn open(port: u16) -> Conn {
        let s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn {
            reader: BufReader::new(s),
            port,
        }
    }

    pub fn send(&mut self, method: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        let mut req = format!(
            "{method} /mcp HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAccept: application/json, text/event-stream\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.reader.get_mut().write_all(req.as_bytes()).unwrap();
        self.read_answer()
    }

    fn read_answer(&mut self) -> Answer {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
        }
        let find = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                line.clear();
                self.reader.read_line(&mut line).unwrap();
                let n = usize::from_str_radix(line.trim(), 16).unwrap();
                let mut chunk = vec![0; n + 2];
                self.reader.read_exact(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            let n: usize = find("content-length").map_or(0, |v| v.parse().unwrap());
            body.resize(n, 0);
            self.reader.read_exact(&mut body).unwrap();
        }
        let body = String::from_utf8(body).unwrap();
        let messages = if find("content-type").is_some_and(|v| v.starts_with("text/event-stream")) {
            body.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter_map(|d| serde_json::from_str(d.trim()).ok())
                .collect()
        } else {
            serde_json::from_str(&body).into_iter().collect()
        };
        Answer {
            status,
            headers,
            messages,
        }
    }
}

pub const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;

/// Initializes a session on `conn`: its id.
pub fn initialize(conn: &mut Conn) -> String {
    let a = conn.send("POST", &[], INITIALIZE);
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.message()["result"]["protocolVersion"],
        "2025-11-25",
        "{a:?}"
    );
    let id = a
        .header("mcp-session-id")
        .expect("a session id")
        .to_string();
    let done = conn.send(
        "POST",
        &[
            ("Mcp-Session-Id", &id),
            ("MCP-Protocol-Version", "2025-11-25"),
        ],
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    assert_eq!(done.status, 202, "{done:?}");
    id
}

fn echo(conn: &mut Conn, session: &str, id: u64, message: &str) -> Answer {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                      "params": {"name": "echo", "arguments": {"message": message}}});
    conn.send(
        "POST",
        &[
            ("Mcp-Session-Id", session),
            ("MCP-Protocol-Version", "2025-11-25"),
        ],
        &body.to_string(),
    )
}

#[test]
fn two_python_sdk_sessions_over_http_cancel_and_hear_list_changes() {
    let Some(python) = installed("venv/bin/python") else {
        return;
    };
    let port = free_port();
    let setup = setup(QUIET);
    let pidfile = setup.path().join("sleeper.pid");
    let fixture = env!("CARGO_BIN_EXE_warden-conformance-fixture");
    let mut s = setup
        .actor("fx", &mcp_actor("fx", &[], ""))
        .actor(
            "cf",
            &format!("name = \"cf\"\nkind = \"mcp\"\ncommand = \"{fixture}\"\n"),
        )
        .start_http(port);
    wait_listening(&mut s, port);
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/python_http.py");
    let (status, _, stderr) = run_to_end(
        std::process::Command::new(python)
            .arg(script)
            .arg(format!("http://127.0.0.1:{port}/mcp"))
            .arg(&pidfile),
        Duration::from_secs(90),
    );
    assert!(
        status.success(),
        "python_http.py failed ({status}):\n{stderr}"
    );
    assert!(stderr.contains("python_http: ok"), "{stderr}");
    println!("{stderr}");
    // Each session's calls are logged under their own session.
    let sessions = |tool: &str| -> std::collections::BTreeSet<String> {
        s.log_lines()
            .iter()
            .filter(|l| l["message"] == "call" && l["tool"] == tool)
            .map(|l| l["session"].to_string())
            .collect()
    };
    let (echo, sleeper) = (sessions("echo"), sessions("sleeper"));
    assert!(
        !echo.is_empty() && !sleeper.is_empty(),
        "{echo:?} {sleeper:?}"
    );
    assert!(echo.is_disjoint(&sleeper), "{echo:?} {sleeper:?}");
}

#[test]
fn a_call_on_a_kept_alive_connection_is_not_held_by_nagle() {
    let port = free_port();
    let mut s = setup(QUIET).start_http(port);
    wait_listening(&mut s, port);
    let mut conn = Conn::open(port);
    let session = initialize(&mut conn);
    let mut took = Vec::new();
    for i in 0..10 {
        let t0 = Instant::now();
        let a = echo(&mut conn, &session, 10 + i, "nodelay");
        took.push(t0.elapsed());
        assert_eq!(text(&a.message()["result"]), "nodelay", "{a:?}");
    }
    took.sort();
    // Nagle with delayed ACKs holds the small SSE priming write ~40 ms.
    assert!(
        took[5] < Duration::from_millis(30),
        "median call on a kept-alive connection: {:?} ({took:?})",
        took[5]
    );
}

#[test]
fn sessions_past_the_cap_wait_with_retry_after_and_delete_frees_one() {
    let port = free_port();
    let mut s = setup("[log]\nstderr = \"warn\"\n[http]\nmax_sessions = 2\n").start_http(port);
    wait_listening(&mut s, port);
    let (mut c1, mut c2, mut c3) = (Conn::open(port), Conn::open(port), Conn::open(port));
    let first = initialize(&mut c1);
    let _second = initialize(&mut c2);
    let refused = c3.send("POST", &[], INITIALIZE);
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.header("retry-after"), Some("1"), "{refused:?}");
    assert!(
        refused.message()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("http.max_sessions = 2"),
        "{refused:?}"
    );
    // An open session is still served at the cap.
    let a = echo(&mut c1, &first, 2, "still here");
    assert_eq!(text(&a.message()["result"]), "still here", "{a:?}");
    let gone = c1.send(
        "DELETE",
        &[
            ("Mcp-Session-Id", &first),
            ("MCP-Protocol-Version", "2025-11-25"),
        ],
        "",
    );
    assert_eq!(gone.status, 204, "{gone:?}");
    let mut c4 = Conn::open(port);
    assert!(
        eventually(Duration::from_secs(2), || c4
            .send("POST", &[], INITIALIZE)
            .status
            == 200),
        "no session could open after one was deleted"
    );
    // The deleted session is unknown now.
    let after = echo(&mut Conn::open(port), &first, 3, "late");
    assert_eq!(after.status, 404, "{after:?}");
}

#[test]
fn a_foreign_origin_or_host_is_refused_and_the_next_request_served() {
    let port = free_port();
    let mut s = setup(QUIET).start_http(port);
    wait_listening(&mut s, port);
    let mut conn = Conn::open(port);
    let evil = conn.send("POST", &[("Origin", "http://evil.example")], INITIALIZE);
    assert_eq!(evil.status, 403, "{evil:?}");
    let mut conn = Conn::open(port);
    let local = conn.send(
        "POST",
        &[("Origin", &format!("http://127.0.0.1:{port}"))],
        INITIALIZE,
    );
    assert_eq!(local.status, 200, "{local:?}");
    // A DNS-rebinding page names its own host.
    let mut raw = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        raw,
        "POST /mcp HTTP/1.1\r\nHost: rebound.example:{port}\r\nAccept: application/json, text/event-stream\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{INITIALIZE}",
        INITIALIZE.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = raw.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let mut conn = Conn::open(port);
    let session = initialize(&mut conn);
    assert_eq!(
        text(&echo(&mut conn, &session, 2, "ok").message()["result"]),
        "ok"
    );
}

/// What a load balancer and the clients behind it see of a rolling update:
/// from SIGTERM, /ready is 503 and /health still 200; anything new is turned
/// away without running (a new session or stateless request 503 with
/// Retry-After, a session's new request 404: that session has ended); the
/// call in flight finishes; the port stays open `http.drain_notice`; exit 0.
#[test]
fn sigterm_over_http_drains_for_a_load_balancer_and_exits_zero() {
    let port = free_port();
    let mut s = setup(
        "[log]\nstderr = \"warn\"\n[server]\nshutdown_grace = \"5s\"\n[http]\ndrain_notice = \"1500ms\"\n",
    )
    .start_http(port);
    wait_listening(&mut s, port);
    assert_eq!(crate::http::get(port, "/ready").status, 200);
    let mut conn = Conn::open(port);
    let session = initialize(&mut conn);
    let in_session = [
        ("Mcp-Session-Id", session.as_str()),
        ("MCP-Protocol-Version", "2025-11-25"),
    ];
    let call = {
        let mut conn = Conn::open(port);
        let session = session.clone();
        std::thread::spawn(move || {
            let body = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                              "params": {"name": "sleeper", "arguments": {"ms": 1000}}});
            let headers = [
                ("Mcp-Session-Id", session.as_str()),
                ("MCP-Protocol-Version", "2025-11-25"),
            ];
            conn.send("POST", &headers, &body.to_string())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let sigterm = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let ready = eventually(Duration::from_secs(2), || {
        crate::http::get(port, "/ready").status == 503
    });
    assert!(ready, "/ready did not turn 503");
    let health = crate::http::get(port, "/health");
    assert_eq!(
        health.status,
        200,
        "liveness while draining: {}",
        health.json()
    );
    assert_eq!(health.json()["components"]["warden"]["state"], "draining");

    let fresh = stateless(
        &mut Conn::open(port),
        3,
        "tools/call",
        json!({"name": "echo", "arguments": {"message": "hi"}}),
    );
    assert_eq!(fresh.status, 503, "{fresh:?}");
    assert_eq!(fresh.header("retry-after"), Some("1"), "{fresh:?}");
    assert_eq!(fresh.header("connection"), Some("close"), "{fresh:?}");
    let says = |a: &Answer| {
        a.message()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert!(says(&fresh).contains("draining"), "{fresh:?}");
    let init = Conn::open(port).send("POST", &[], INITIALIZE);
    assert_eq!(init.status, 503, "{init:?}");
    let next = echo(&mut Conn::open(port), &session, 4, "late");
    assert_eq!(next.status, 404, "{next:?}");
    assert!(says(&next).contains("session has ended"), "{next:?}");
    // What serves the call in flight still passes: a notification for it.
    let note = Conn::open(port).send(
        "POST",
        &in_session,
        r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"x","progress":1}}"#,
    );
    assert_eq!(note.status, 202, "{note:?}");

    let answer = call.join().unwrap();
    assert_eq!(text(&answer.message()["result"]), "slept\n", "{answer:?}");
    let status = s.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    let took = sigterm.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "the port closed before the drain notice: {took:?}"
    );
    drop(conn);
}

#[test]
fn check_warns_of_mcp_served_beyond_loopback_without_authorization() {
    let setup = Setup::new("[http]\nlisten = \"0.0.0.0:8080\"\nmcp = true\n");
    let (code, said) = setup.check();
    assert_eq!(code, Some(0));
    assert!(
        said.contains("http.listen: warning: 0.0.0.0:8080 serves MCP beyond this machine with no authorization"),
        "{said}"
    );
    let setup = Setup::new("[http]\nlisten = \"127.0.0.1:8080\"\nmcp = true\n");
    let (code, said) = setup.check();
    assert_eq!(code, Some(0));
    assert!(!said.contains("warning"), "{said}");
}

#[test]
fn serving_http_with_mcp_needs_an_address() {
    let setup = Setup::new("[http]\nmcp = true\n");
    let (code, said) = setup.check();
    assert_eq!(code, Some(1));
    assert!(said.contains("http.mcp: needs http.listen"), "{said}");
    let setup = Setup::new("[server]\nshutdown_grace = \"2s\"\n[http]\ndrain_notice = \"5s\"\n");
    let (code, said) = setup.check();
    assert_eq!(code, Some(1));
    assert!(
        said.contains("http.drain_notice: must not be longer than server.shutdown_grace"),
        "{said}"
    );
    let setup = Setup::new(QUIET);
    let out = std::process::Command::new(WARDEN)
        .args(["serve", "--http", "localhost", "--config"])
        .arg(setup.config_path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("--http \"localhost\" is not an address such as 127.0.0.1:8080"),
        "{said}"
    );
}

/// Sends raw bytes on a new connection; what comes back within `wait` (the
/// head, at least), and how long it took.
pub fn raw(port: u16, bytes: &[u8], wait: Duration) -> (String, Duration) {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let t0 = Instant::now();
    s.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), t0.elapsed())
}

fn post_head(port: u16, extra: &str) -> String {
    format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json, text/event-stream\r\n{extra}\r\n"
    )
}

#[test]
fn hostile_http_is_answered_and_the_next_request_served() {
    let port = free_port();
    let mut s = setup(
        "[log]\nstderr = \"warn\"\n[server]\nmax_line = \"64KiB\"\n[http]\nbody_deadline = \"1s\"\n",
    )
    .start_http(port);
    wait_listening(&mut s, port);
    let served = |what: &str| {
        let mut conn = Conn::open(port);
        let session = initialize(&mut conn);
        let a = echo(&mut conn, &session, 2, "still serving");
        assert_eq!(
            text(&a.message()["result"]),
            "still serving",
            "after {what}: {a:?}"
        );
    };
    // Malformed JSON: 400 with a JSON-RPC parse error.
    let body = r#"{"jsonrpc":"#;
    let (a, _) = raw(
        port,
        format!(
            "{}{body}",
            post_head(
                port,
                &format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n",
                    body.len()
                )
            )
        )
        .as_bytes(),
        Duration::from_secs(5),
    );
    assert!(a.starts_with("HTTP/1.1 400"), "{a}");
    served("malformed JSON");
    // Wrong Accept, wrong Content-Type.
    let (a, _) = raw(
        port,
        format!(
            "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/html\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{INITIALIZE}",
            INITIALIZE.len()
        )
        .as_bytes(),
        Duration::from_secs(5),
    );
    assert!(a.starts_with("HTTP/1.1 406"), "{a}");
    let (a, _) = raw(
        port,
        format!(
            "{}{INITIALIZE}",
            post_head(
                port,
                &format!(
                    "Content-Type: text/plain\r\nContent-Length: {}\r\n",
                    INITIALIZE.len()
                )
            )
        )
        .as_bytes(),
        Duration::from_secs(5),
    );
    assert!(a.starts_with("HTTP/1.1 415"), "{a}");
    served("a wrong Content-Type");
    // A body past server.max_line is refused before it is read.
    let (a, took) = raw(
        port,
        post_head(
            port,
            "Content-Type: application/json\r\nContent-Length: 999999999\r\n",
        )
        .as_bytes(),
        Duration::from_secs(5),
    );
    assert!(a.starts_with("HTTP/1.1 413"), "{a}");
    assert!(took < Duration::from_millis(500), "{took:?}");
    served("an oversized body");
    // And one without a length, cut off as it streams past the cap.
    let chunk = "x".repeat(70 * 1024);
    let (a, _) = raw(
        port,
        format!(
            "{}{:x}\r\n{chunk}\r\n",
            post_head(
                port,
                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            ),
            chunk.len()
        )
        .as_bytes(),
        Duration::from_secs(5),
    );
    assert!(a.starts_with("HTTP/1.1 413"), "{a}");
    served("an oversized chunked body");
    // A body that stops arriving: 408 at the body deadline.
    let (a, took) = raw(
        port,
        format!(
            "{}{{\"json",
            post_head(
                port,
                "Content-Type: application/json\r\nContent-Length: 1000\r\n"
            )
        )
        .as_bytes(),
        Duration::from_secs(5),
    );
    assert!(a.starts_with("HTTP/1.1 408"), "{a}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    served("a stalled body");
    // A head that never ends (slowloris): the connection is closed.
    let (a, took) = raw(
        port,
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ",
        Duration::from_secs(6),
    );
    assert!(
        took < Duration::from_secs(5),
        "a stalled head held its connection {took:?}: {a:?}"
    );
    served("a stalled head");
    // Hundreds of idle connections cost a normal request nothing.
    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    served("300 idle connections");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "{:?} with 300 idle connections",
        t0.elapsed()
    );
    drop(idle);
}

/// The `_meta` a 2026-07-28 request carries in place of a handshake.
pub fn stateless_meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
    })
}

/// A stateless 2026-07-28 request: body and headers.
fn stateless_request(id: u64, method: &str, mut params: Value) -> (String, Vec<(String, String)>) {
    params["_meta"] = stateless_meta();
    let mut headers = vec![
        ("MCP-Protocol-Version".to_string(), "2026-07-28".to_string()),
        ("Mcp-Method".to_string(), method.to_string()),
    ];
    if let Some(name) = params["name"].as_str() {
        headers.push(("Mcp-Name".to_string(), name.to_string()));
    }
    let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    (body.to_string(), headers)
}

fn stateless(conn: &mut Conn, id: u64, method: &str, params: Value) -> Answer {
    let (body, headers) = stateless_request(id, method, params);
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    conn.send("POST", &headers, &body)
}

/// A response that stays open (a `subscriptions/listen` stream): its
/// messages as they arrive.
struct Events {
    reader: BufReader<TcpStream>,
    /// Decoded SSE text not yet split into events.
    text: String,
}

impl Events {
    fn open(port: u16, body: &str, headers: &[(String, String)]) -> Events {
        let s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        let mut req = format!(
            "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json, text/event-stream\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        (&s).write_all(req.as_bytes()).unwrap();
        let mut reader = BufReader::new(s);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim_end().is_empty() {
                break;
            }
            head.push_str(&line);
        }
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/event-stream"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{head}"
        );
        Events {
            reader,
            text: String::new(),
        }
    }

    /// The next JSON-RPC message within `within`; None if none came, or
    /// the stream ended.
    fn next(&mut self, within: Duration) -> Option<Value> {
        let until = Instant::now() + within;
        loop {
            while let Some(end) = self.text.find("\n\n") {
                let event: String = self.text.drain(..end + 2).collect();
                let data: String = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim)
                    .collect();
                if let Ok(msg) = serde_json::from_str(&data) {
                    return Some(msg);
                }
            }
            let left = until.checked_duration_since(Instant::now())?;
            self.reader
                .get_ref()
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut size = String::new();
            match self.reader.read_line(&mut size) {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            let n = usize::from_str_radix(size.trim(), 16)
                .unwrap_or_else(|_| panic!("chunk size {size:?}"));
            let mut chunk = vec![0; n + 2];
            self.reader.read_exact(&mut chunk).unwrap();
            if n == 0 {
                return None;
            }
            self.text
                .push_str(&String::from_utf8_lossy(&chunk[..n]).replace("\r\n", "\n"));
        }
    }
}

/// `warden_sessions_open` from /metrics.
pub fn sessions_open(port: u16) -> u64 {
    let (answer, _) = raw(
        port,
        format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
        Duration::from_secs(5),
    );
    answer
        .lines()
        .find_map(|l| l.strip_prefix("warden_sessions_open{transport=\"http\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no warden_sessions_open in {answer}"))
}

#[test]
fn a_stateless_client_listens_for_list_changes_until_it_goes_or_warden_drains() {
    let port = free_port();
    let mut s = setup("[log]\nstderr = \"warn\"\n[server]\nshutdown_grace = \"5s\"\n")
        .actor("fx", &mcp_actor("fx", &[], ""))
        .start_http(port);
    wait_listening(&mut s, port);
    let mut conn = Conn::open(port);
    // The server is up once its tools are listed.
    assert!(eventually(Duration::from_secs(10), || {
        let a = stateless(&mut conn, 1, "tools/list", json!({}));
        a.message()["result"]["tools"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "fx_change_tools"))
    }));
    let listen = |id: u64| {
        let (body, headers) = stateless_request(
            id,
            "subscriptions/listen",
            json!({"notifications": {"toolsListChanged": true, "resourceSubscriptions": ["fx://nothing"]}}),
        );
        Events::open(port, &body, &headers)
    };
    let mut events = listen(7);
    let ack = events
        .next(Duration::from_secs(5))
        .expect("an acknowledgement");
    assert_eq!(
        ack["method"], "notifications/subscriptions/acknowledged",
        "{ack}"
    );
    // What warden passes on: list changes, and updates of the resources a
    // server offers (no server offers `fx://nothing`).
    assert_eq!(
        ack["params"]["notifications"],
        json!({"toolsListChanged": true}),
        "{ack}"
    );
    assert_eq!(
        ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], 7,
        "{ack}"
    );

    let changed = stateless(
        &mut conn,
        2,
        "tools/call",
        json!({"name": "fx_change_tools", "arguments": {}}),
    );
    assert_eq!(
        changed.message()["result"]["isError"],
        json!(false),
        "{changed:?}"
    );
    let heard = events.next(Duration::from_secs(5)).expect("a list change");
    assert_eq!(
        heard["method"], "notifications/tools/list_changed",
        "{heard}"
    );
    assert_eq!(
        heard["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], 7,
        "{heard}"
    );
    // Nothing more: one change, one notification.
    assert_eq!(events.next(Duration::from_millis(300)), None);

    // A client that goes away ends its subscription (and its slot).
    assert_eq!(sessions_open(port), 1, "the listen stream is open");
    drop(events);
    assert!(
        eventually(Duration::from_secs(5), || sessions_open(port) == 0),
        "the subscription outlived its client: {} open",
        sessions_open(port)
    );

    // Draining ends a subscription with its final result.
    let mut events = listen(8);
    assert!(events.next(Duration::from_secs(5)).is_some());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let last = events.next(Duration::from_secs(5)).expect("a final result");
    assert_eq!(last["id"], 8, "{last}");
    assert_eq!(last["result"]["resultType"], "complete", "{last}");
    assert_eq!(
        last["result"]["_meta"]["io.modelcontextprotocol/subscriptionId"], 8,
        "{last}"
    );
    assert!(s.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn over_http_a_reload_reaches_listening_clients_and_names_what_needs_a_restart() {
    let port = free_port();
    let mut s = setup(QUIET).start_http(port);
    wait_listening(&mut s, port);
    let (body, headers) = stateless_request(
        1,
        "subscriptions/listen",
        json!({"notifications": {"toolsListChanged": true}}),
    );
    let mut events = Events::open(port, &body, &headers);
    assert!(events.next(Duration::from_secs(5)).is_some(), "an ack");

    let actors = s.setup.path().join("actors");
    std::fs::write(
        actors.join("added.toml"),
        "name = \"added\"\nkind = \"builtin\"\nbuiltin = \"echo\"\n",
    )
    .unwrap();
    // [http] cannot change while warden listens: said, not ignored.
    let config = s.setup.config_path();
    std::fs::write(&config, format!("{QUIET}[http]\nmax_sessions = 7\n")).unwrap();
    let out = crate::reload::ctl(&s.setup, &["reload"]);
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(printed.contains("1 added"), "{printed}");
    assert!(
        printed.contains("config.toml [http] changed: it takes effect when warden restarts"),
        "{printed}"
    );
    let heard = events.next(Duration::from_secs(5)).expect("a list change");
    assert_eq!(
        heard["method"], "notifications/tools/list_changed",
        "{heard}"
    );

    let mut conn = Conn::open(port);
    let listed = stateless(&mut conn, 2, "tools/list", json!({}));
    let names: Vec<&str> = listed.message()["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"added"), "{names:?}");
    let called = stateless(
        &mut conn,
        3,
        "tools/call",
        json!({"name": "added", "arguments": {"message": "over http"}}),
    );
    assert_eq!(
        called.message()["result"]["content"][0]["text"],
        "over http",
        "{called:?}"
    );
}

/// A session that ends still subscribed (here: DELETE) is unsubscribed
/// downstream, unless another session still is.
#[test]
fn a_session_that_ends_subscribed_is_unsubscribed_downstream() {
    let port = free_port();
    let mut s = setup(QUIET)
        .actor("fx", &mcp_actor("fx", &[], ""))
        .start_http(port);
    wait_listening(&mut s, port);
    let mut conn = Conn::open(port);
    let post = |conn: &mut Conn, session: &str, id: u64, method: &str, params: Value| {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        conn.send(
            "POST",
            &[
                ("Mcp-Session-Id", session),
                ("MCP-Protocol-Version", "2025-11-25"),
            ],
            &body.to_string(),
        )
    };
    let subscriptions = |conn: &mut Conn, session: &str| {
        let a = post(
            conn,
            session,
            9,
            "tools/call",
            json!({"name": "fx_subscriptions", "arguments": {}}),
        );
        text(&a.message()["result"])
    };
    let (a, b) = (initialize(&mut conn), initialize(&mut conn));
    assert!(eventually(Duration::from_secs(10), || {
        let r = post(
            &mut conn,
            &a,
            2,
            "resources/subscribe",
            json!({"uri": "fixture://hello"}),
        );
        r.message()["result"].is_object()
    }));
    let r = post(
        &mut conn,
        &b,
        3,
        "resources/subscribe",
        json!({"uri": "fixture://hello"}),
    );
    assert!(r.message()["result"].is_object(), "{r:?}");
    assert_eq!(subscriptions(&mut conn, &b), "subscribe fixture://hello");
    // b is still subscribed: the server hears nothing when a ends.
    end_session(&mut conn, &a);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(subscriptions(&mut conn, &b), "subscribe fixture://hello");
    // The last one ends: the server is told.
    end_session(&mut conn, &b);
    let c = initialize(&mut conn);
    assert!(
        eventually(Duration::from_secs(5), || subscriptions(&mut conn, &c)
            == "subscribe fixture://hello\nunsubscribe fixture://hello"),
        "{}",
        subscriptions(&mut conn, &c)
    );
}

#[test]
fn at_the_connection_cap_idle_connections_make_room_and_busy_ones_stay() {
    let port = free_port();
    // max_sessions = 8: the listener serves 64 connections at once.
    let mut s = setup("[log]\nstderr = \"warn\"\n[http]\nmax_sessions = 8\n").start_http(port);
    wait_listening(&mut s, port);
    // One connection mid-call (busy), one kept alive after its answers (idle).
    let mut busy = Conn::open(port);
    let session = initialize(&mut busy);
    let call = std::thread::spawn(move || {
        let body = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                          "params": {"name": "sleeper", "arguments": {"ms": 1500}}});
        busy.send(
            "POST",
            &[
                ("Mcp-Session-Id", &session),
                ("MCP-Protocol-Version", "2025-11-25"),
            ],
            &body.to_string(),
        )
    });
    let mut kept = Conn::open(port);
    let kept_session = initialize(&mut kept);
    std::thread::sleep(Duration::from_millis(200));
    // Three times the cap in idle connections.
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    let mut fresh = Conn::open(port);
    let id = initialize(&mut fresh);
    assert_eq!(
        text(&echo(&mut fresh, &id, 2, "room").message()["result"]),
        "room"
    );
    // The head deadline (2 s) would free slots too, but only later.
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "a new client waited {:?} behind 200 idle connections",
        t0.elapsed()
    );
    // The busy connection was left alone: its call is answered on it.
    let answer = call.join().unwrap();
    assert_eq!(text(&answer.message()["result"]), "slept\n", "{answer:?}");
    // The idle kept-alive connection made room, its session did not end.
    let mut again = Conn::open(port);
    let a = echo(&mut again, &kept_session, 3, "still a session");
    assert_eq!(text(&a.message()["result"]), "still a session", "{a:?}");
    drop(idle);
}

#[test]
fn http_runs_a_thread_per_core_unless_told_and_stdio_runs_one() {
    const STATUS: &str = "name = \"status\"\nkind = \"builtin\"\n";
    let threads = |status: &Value| -> Value {
        let status: Value = serde_json::from_str(&text(status)).unwrap();
        status["warden"]["threads"].clone()
    };
    let cores = std::thread::available_parallelism().unwrap().get().min(8);
    for (config, want) in [("", cores), ("[server]\nworker_threads = 3\n", 3)] {
        let port = free_port();
        let mut s = setup(&format!("{QUIET}{config}"))
            .actor("status", STATUS)
            .start_http(port);
        wait_listening(&mut s, port);
        let a = stateless(
            &mut Conn::open(port),
            1,
            "tools/call",
            json!({"name": "status", "arguments": {}}),
        );
        assert_eq!(threads(&a.message()["result"]), json!(want), "{config:?}");
    }
    let mut s = setup(QUIET).actor("status", STATUS).start();
    s.initialize();
    assert_eq!(threads(&s.call_result("status", json!({}))), json!(1));
}

#[test]
fn over_http_on_several_threads_every_progress_report_comes_before_the_answer() {
    // A server that reports at once, on a runtime of two threads: the
    // caller used to route the token only after rmcp had queued the request.
    let port = free_port();
    let mut s = setup(&format!("{QUIET}[server]\nworker_threads = 2\n"))
        .actor("fx", &mcp_actor("fx", &[], ""))
        .start_http(port);
    wait_listening(&mut s, port);
    let mut conn = Conn::open(port);
    let session = initialize(&mut conn);
    let mut call = |id: u64, token: String| {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                          "params": {"name": "fx_progress", "arguments": {"steps": 3, "ms": 0},
                                     "_meta": {"progressToken": token}}});
        conn.send(
            "POST",
            &[
                ("Mcp-Session-Id", &session),
                ("MCP-Protocol-Version", "2025-11-25"),
            ],
            &body.to_string(),
        )
    };
    // The fixture server starts while warden already listens; a loaded
    // machine may take seconds over it.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let a = call(1, "warm-up".into());
        if text(&a.message()["result"]) == "done 3" {
            break;
        }
        assert!(Instant::now() < until, "`fx` never served: {a:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut short = Vec::new();
    for round in 0..200u64 {
        let a = call(100 + round, format!("t{round}"));
        assert_eq!(text(&a.message()["result"]), "done 3", "{a:?}");
        let reports = a
            .messages
            .iter()
            .filter(|m| m["method"] == "notifications/progress")
            .count();
        if reports != 3 {
            short.push((round, reports));
        }
    }
    assert!(
        short.is_empty(),
        "rounds with fewer than 3 reports before the answer: {short:?}"
    );
}

/// A call of `tool` in `session`: its JSON-RPC answer.
fn call_in(conn: &mut Conn, session: &str, id: u64, tool: &str) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                      "params": {"name": tool, "arguments": {}}});
    let a = conn.send(
        "POST",
        &[
            ("Mcp-Session-Id", session),
            ("MCP-Protocol-Version", "2025-11-25"),
        ],
        &body.to_string(),
    );
    assert_eq!(a.status, 200, "{a:?}");
    a.message().clone()
}

fn end_session(conn: &mut Conn, session: &str) {
    let gone = conn.send(
        "DELETE",
        &[
            ("Mcp-Session-Id", session),
            ("MCP-Protocol-Version", "2025-11-25"),
        ],
        "",
    );
    assert_eq!(gone.status, 204, "{gone:?}");
}

/// `scope = "session"`: each session gets a server of its own, started at
/// its first call and gone, group and all, when the session ends; the
/// cap turns a third session away; a stateless request has no session to
/// start one for.
#[test]
fn a_server_per_session_starts_with_its_session_and_ends_with_it() {
    let port = free_port();
    let setup = setup(QUIET);
    let pids = setup.path().join("fx.pids");
    let actor = mcp_actor(
        "fx",
        &["--pidfile", pids.to_str().unwrap()],
        "scope = \"session\"\nmax_sessions = 2\n",
    );
    let mut s = setup
        .actor("fx", &actor)
        .actor("status", "name = \"status\"\nkind = \"builtin\"\n")
        .start_http(port);
    wait_listening(&mut s, port);
    // The shared instance lists the tools.
    assert!(eventually(Duration::from_secs(10), || read_pids(&pids)
        .len()
        == 1));
    let shared = read_pids(&pids)[0];
    let (mut a, mut b, mut c) = (Conn::open(port), Conn::open(port), Conn::open(port));
    let (sa, sb) = (initialize(&mut a), initialize(&mut b));
    let pid_of = |r: Value| -> i32 {
        text(&r["result"])
            .parse()
            .unwrap_or_else(|_| panic!("no pid in {r}"))
    };
    let pa = pid_of(call_in(&mut a, &sa, 2, "fx_pid"));
    let pb = pid_of(call_in(&mut b, &sb, 2, "fx_pid"));
    assert!(
        pa != pb && pa != shared && pb != shared,
        "sessions share a server: {pa} {pb} (shared {shared})"
    );
    assert_eq!(
        pid_of(call_in(&mut a, &sa, 3, "fx_pid")),
        pa,
        "a session kept its server"
    );
    assert_eq!(read_pids(&pids).len(), 3);
    // Status shows each session's server as an actor of its own.
    let status: Value =
        serde_json::from_str(&text(&call_in(&mut a, &sa, 4, "status")["result"])).unwrap();
    let fx: Vec<(String, i64)> = tool_lines(&status)
        .iter()
        .filter(|l| l["tool"] == "fx")
        .map(|l| {
            (
                l["name"].as_str().unwrap().to_string(),
                l["server"]["pid"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(fx.len(), 3, "{fx:?}");
    assert_eq!(fx[0], ("server:fx".to_string(), shared as i64), "{fx:?}");
    for (line, pid) in [(&fx[1], pa), (&fx[2], pb)] {
        assert!(
            line.0.starts_with("server:fx#s") && line.1 == pid as i64,
            "{fx:?}"
        );
    }

    // Past max_sessions: busy, and no process started.
    let sc = initialize(&mut c);
    let refused = call_in(&mut c, &sc, 2, "fx_pid");
    assert_eq!(refused["result"]["isError"], true, "{refused}");
    assert_eq!(kind(&refused["result"]), "busy", "{refused}");
    assert_eq!(read_pids(&pids).len(), 3);

    // A stateless request has no session to run a server for.
    let stateless = {
        let (body, headers) =
            stateless_request(9, "tools/call", json!({"name": "fx_pid", "arguments": {}}));
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        c.send("POST", &headers, &body)
    };
    let r = stateless.message();
    assert_eq!(r["result"]["isError"], true, "{r}");
    assert!(
        text(&r["result"]).contains("a server per client session"),
        "{r}"
    );

    // Session a ends: its server goes, group and all; b's stays.
    end_session(&mut a, &sa);
    assert!(
        eventually(Duration::from_secs(5), || !alive(pa)),
        "session a's server outlived its session"
    );
    assert!(
        group_members(pa).is_empty(),
        "its group is left: {:?}",
        group_members(pa)
    );
    assert!(alive(pb) && alive(shared));
    assert_eq!(pid_of(call_in(&mut b, &sb, 3, "fx_pid")), pb);
    // Its place is free for the third session.
    let pc = pid_of(call_in(&mut c, &sc, 3, "fx_pid"));
    assert!(pc != pb && pc != pa, "{pc}");
    end_session(&mut b, &sb);
    end_session(&mut c, &sc);
    assert!(
        eventually(Duration::from_secs(5), || !alive(pb) && !alive(pc)),
        "servers outlived their sessions"
    );
    assert!(alive(shared), "the shared instance went too");
}
