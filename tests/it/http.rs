//! The HTTP listener (`[http] listen`): /metrics, /health, /ready, over real
//! TCP to the real binary. Only ever connects to 127.0.0.1.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

/// An answer: status code, head (status line and headers), body.
pub struct Answer {
    pub status: u16,
    head: String,
    body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", self.head, self.body))
    }
}

/// A port nobody listens on right now: bind port 0, read it, let it go.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One request to 127.0.0.1:`port`; `None` when nothing listens (yet).
fn request(port: u16, method: &str, path: &str) -> Option<Answer> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw)
        .unwrap_or_else(|e| panic!("reading the answer to {method} {path}: {e}"));
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {raw:?}"));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {raw:?}"));
    Some(Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

pub fn get(port: u16, path: &str) -> Answer {
    request(port, "GET", path).unwrap_or_else(|| panic!("nothing listens on 127.0.0.1:{port}"))
}

/// The sum of `warden_calls_total` over the series with these labels.
fn calls_total(metrics: &str, tool: &str, outcome: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("warden_calls_total{"))
        .filter(|l| l.contains(&format!("tool=\"{tool}\"")))
        .filter(|l| l.contains(&format!("outcome=\"{outcome}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn metrics_health_and_ready_over_http() {
    let port = free_port();
    let mut s = Setup::new(&format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n[supervisor]\nmax_restarts = 0\nwindow = \"60s\"\n[log]\nstderr = \"off\"\n"
    ))
    .actor("echo", "name = \"echo\"\nkind = \"builtin\"\n")
    .actor(
        "crash",
        "name = \"crash\"\nkind = \"builtin\"\nbuiltin = \"panic\"\n[breaker]\nenabled = false\n",
    )
    .start();
    s.initialize();

    // The listener may come up a moment after the MCP session.
    assert!(
        eventually(Duration::from_secs(10), || {
            request(port, "GET", "/ready").is_some_and(|a| a.status == 200)
        }),
        "/ready never answered 200 on 127.0.0.1:{port}"
    );
    let ready = get(port, "/ready");
    assert_eq!(ready.json(), json!({"ready": true}), "{}", ready.body);
    assert!(
        ready.head.contains("Content-Type: application/json"),
        "{}",
        ready.head
    );

    // All tools running: healthy.
    let health = get(port, "/health");
    assert_eq!(health.status, 200, "{}", health.body);
    let h = health.json();
    assert_eq!(h["status"], "healthy", "{h}");
    for c in ["tools", "transport", "tool:echo", "tool:crash"] {
        assert_eq!(h["components"][c]["status"], "healthy", "{c}: {h}");
    }
    assert_eq!(h["components"]["tool:echo"]["state"], "running", "{h}");
    assert_eq!(h["components"]["tool:echo"]["breaker"], "closed", "{h}");

    // /metrics counts an echo call.
    let before = get(port, "/metrics");
    assert_eq!(before.status, 200);
    assert!(
        before
            .head
            .contains("Content-Type: text/plain; version=0.0.4"),
        "{}",
        before.head
    );
    let n = calls_total(&before.body, "echo", "ok");
    assert_eq!(text(&s.call_result("echo", json!({"message": "hi"}))), "hi");
    let after = get(port, "/metrics");
    assert_eq!(after.status, 200);
    assert!(after.body.contains("warden_calls_total"), "{}", after.body);
    assert_eq!(
        calls_total(&after.body, "echo", "ok"),
        n + 1,
        "{}",
        after.body
    );

    // One crash with no restart budget: the tool is failed, warden degraded.
    assert_eq!(kind(&s.call_result("crash", json!({}))), "internal");
    let mut last = None;
    let degraded = eventually(Duration::from_secs(10), || {
        let a = get(port, "/health");
        let done = a.status == 207;
        last = Some(a);
        done
    });
    let a = last.unwrap();
    assert!(
        degraded,
        "/health never answered 207: {} {}",
        a.status, a.body
    );
    let h = a.json();
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["components"]["tool:crash"]["status"], "degraded", "{h}");
    assert_eq!(h["components"]["tool:crash"]["state"], "failed", "{h}");
    assert_eq!(h["components"]["tool:echo"]["status"], "healthy", "{h}");
    // A failed tool does not make warden unready: its calls are answered.
    assert_eq!(get(port, "/ready").status, 200);

    let unknown = get(port, "/nope");
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let post = request(port, "POST", "/metrics").unwrap();
    assert_eq!(post.status, 405, "{}", post.body);
    assert!(post.head.contains("Allow: GET"), "{}", post.head);

    s.close_stdin();
    assert!(s.wait_exit(Duration::from_secs(15)).success());
    // The listener's start is logged once.
    let started: Vec<Value> = s
        .log_lines()
        .into_iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("HTTP listener ready"))
        })
        .collect();
    assert_eq!(started.len(), 1, "{started:#?}");
}
