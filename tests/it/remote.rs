//! Remote MCP servers (`kind = "mcp"` with `url`): warden fronting another
//! `warden serve --http` on loopback, which asks for a bearer token the
//! front sends from its actor file's `headers`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;
use crate::http::free_port;
use crate::mcp_http::wait_listening;

/// The token the upstream asks for: sent as a header, never written down.
const UPSTREAM_TOKEN: &str = "up-7Kq2Wz9Lm4Xr8Tn3Vb6Yc1Hd5Jf0Ps";

/// The upstream: `warden serve --http` with `echo` and a `slow` command
/// tool, for holders of UPSTREAM_TOKEN only.
fn upstream(port: u16) -> Server {
    let digest: String = {
        use sha2::Digest;
        sha2::Sha256::digest(UPSTREAM_TOKEN.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let mut s = Setup::new(&format!(
        "[log]\nstderr = \"warn\"\n[auth]\nmode = \"token\"\n[[auth.tokens]]\nname = \"front\"\nsha256 = \"{digest}\"\n"
    ))
    .actor("echo", "name = \"echo\"\nkind = \"builtin\"\n")
    .actor("slow", &sleep_tool("slow", "concurrency = 4"))
    .actor("flood", &flood_tool())
    .start_http(port);
    wait_listening(&mut s, port);
    s
}

/// The front: stdio, the upstream as `up` (exports `up_echo`, `up_slow`).
fn front(port: u16, token: &str) -> Server {
    // An outage is reconnected through with backoff, past the restart
    // budget and without the cooloff (the default 5 minutes).
    let mut s = Setup::new(
        "[log]\nstderr = \"warn\"\n[supervisor]\nbackoff = { min = \"50ms\", max = \"200ms\" }\n",
    )
    .actor("status", "name = \"status\"\nkind = \"builtin\"\n")
    .actor(
        "up",
        &format!(
            "name = \"up\"\nkind = \"mcp\"\nurl = \"http://127.0.0.1:{port}/mcp\"\ntimeout = \"1s\"\nping_every = \"200ms\"\nping_timeout = \"500ms\"\n\
             [headers]\nAuthorization = \"Bearer {token}\"\n"
        ),
    )
    .start();
    s.initialize();
    s
}

fn tool_names(s: &mut Server) -> Vec<String> {
    let id = s.request("tools/list", json!({}));
    let r = s.response(id);
    r["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

/// `up`'s line in status once its last error says `what` (after 10 s, the
/// line as it is, for the test to fail on).
fn status_once_it_says(s: &mut Server, what: &str) -> Value {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let line = tool_status(s, "up");
        let said = line["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(what));
        if said || Instant::now() > until {
            return line;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Calls `up_echo`, which must be answered with an error within `limit`.
fn echo_fails_within(s: &mut Server, limit: Duration) {
    let sent = Instant::now();
    let r = s.call_result("up_echo", json!({"message": "hi"}));
    assert_eq!(r["isError"], json!(true), "{r}");
    assert!(
        sent.elapsed() < limit,
        "answered after {:?}",
        sent.elapsed()
    );
}

/// Calls `up_echo` until it answers `message` (the server may still be
/// connecting), each call answered within its deadline either way.
fn echo_until_ok(s: &mut Server, message: &str, deadline: Duration) -> bool {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        let sent = Instant::now();
        let r = s.call("up_echo", json!({"message": message}));
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "answered after {:?}: {r}",
            sent.elapsed()
        );
        if r["result"]["isError"] != json!(true) && text(&r["result"]) == message {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn a_remote_server_is_called_through_warden_and_its_restarts_and_outages_are_answered() {
    let port = free_port();
    let mut up = upstream(port);
    let mut s = front(port, UPSTREAM_TOKEN);

    // Its tools are exported and called, the header doing its work.
    assert!(echo_until_ok(&mut s, "hello", Duration::from_secs(10)));
    let names = tool_names(&mut s);
    assert!(
        names.contains(&"up_echo".to_string()) && names.contains(&"up_slow".to_string()),
        "{names:?}"
    );
    let line = tool_status(&mut s, "up");
    assert_eq!(
        line["server"]["server"]["url"],
        format!("http://127.0.0.1:{port}/mcp"),
        "{line}"
    );

    // The remote server's progress reaches the caller, on its own token,
    // before the answer.
    let id = s.request(
        "tools/call",
        json!({"name": "up_flood", "arguments": {"bytes": 4 << 20}, "_meta": {"progressToken": "tok-r"}}),
    );
    let r = s.response(id);
    assert_eq!(text(&r["result"]).len(), 64 << 10, "{r}");
    let progress = s.arrived_before(|v| v["method"] == "notifications/progress");
    assert!(!progress.is_empty(), "no progress before the answer");
    for p in &progress {
        assert_eq!(p["params"]["progressToken"], "tok-r", "{p}");
    }

    // A call past the front's timeout is answered `timeout` at it.
    let sent = Instant::now();
    let r = s.call_result("up_slow", json!({"ms": 5000}));
    assert_eq!(kind(&r), "timeout", "{r}");
    assert!(
        sent.elapsed() < Duration::from_secs(4),
        "{:?}",
        sent.elapsed()
    );

    // The upstream restarts and forgets every session: the front opens a
    // new one, and calls are answered again.
    drop(up);
    up = upstream(port);
    assert!(echo_until_ok(
        &mut s,
        "after the restart",
        Duration::from_secs(15)
    ));

    // The upstream goes away: every call is answered within its deadline,
    // and status says why.
    drop(up);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let sent = Instant::now();
        let r = s.call("up_echo", json!({"message": "anyone?"}));
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "{:?}: {r}",
            sent.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = s.call_result("up_echo", json!({"message": "anyone?"}));
    assert_eq!(r["isError"], json!(true), "{r}");
    let line = tool_status(&mut s, "up");
    assert!(
        line["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{line}"
    );
    // Past the restart budget (5 in 30 s) by now, and still reconnecting.
    assert_ne!(line["state"], "failed", "{line}");
    assert!(line["restarts"].as_u64().unwrap_or(0) > 5, "{line}");

    // And it comes back: the supervisor connects again.
    let _up = upstream(port);
    assert!(echo_until_ok(&mut s, "back", Duration::from_secs(20)));

    // The header's value is nowhere in what the front wrote.
    let said = format!("{}{:?}", s.stderr_lines().join("\n"), s.log_lines());
    assert!(
        !said.contains(UPSTREAM_TOKEN),
        "the upstream's token leaked"
    );
}

#[test]
fn a_remote_server_that_refuses_warden_is_unavailable_saying_why() {
    let port = free_port();
    let _up = upstream(port);
    let mut s = front(port, "not-the-token-at-all-0123456789");
    let line = status_once_it_says(&mut s, "Auth required");
    let error = line["last_error"].as_str().unwrap_or("");
    assert!(
        error.contains("Auth required") && !error.contains("rmcp::"),
        "{line}"
    );
    let r: Value = s.call_result("up_echo", json!({"message": "hi"}));
    assert_eq!(r["isError"], json!(true), "{r}");
}

#[test]
fn check_refuses_a_remote_server_it_cannot_reach_as_written() {
    for (actor, says) in [
        (
            "url = \"ftp://example.com/mcp\"\n",
            "url: `ftp://example.com/mcp` is not an http:// or https:// URL",
        ),
        (
            "url = \"http://127.0.0.1:1/mcp\"\ncommand = \"/bin/true\"\n",
            "url: an mcp server is launched (`command`) or reached (`url`), not both",
        ),
        (
            "url = \"http://127.0.0.1:1/mcp\"\nargs = [\"-v\"]\n",
            "args: is for a server warden launches, not a remote one (`url`)",
        ),
        (
            "command = \"/bin/true\"\nheaders = { Authorization = \"Bearer x\" }\n",
            "headers: are for a remote server (`url`)",
        ),
        (
            "url = \"http://127.0.0.1:1/mcp\"\nheaders = { \"Bad Name\" = \"x\" }\n",
            "is not a valid HTTP header",
        ),
        (
            "",
            "an mcp server needs `command`, the program to launch, or `url`",
        ),
    ] {
        let setup = Setup::new(QUIET_CONFIG)
            .actor("up", &format!("name = \"up\"\nkind = \"mcp\"\n{actor}"));
        let (code, said) = setup.check();
        assert_eq!(code, Some(1), "{actor}: {said}");
        assert!(said.contains(says), "{actor}: {said}");
    }
    let ok = Setup::new(QUIET_CONFIG).actor(
        "up",
        "name = \"up\"\nkind = \"mcp\"\nurl = \"https://mcp.example.com/mcp\"\nheaders = { Authorization = \"Bearer abc\" }\n",
    );
    let (code, said) = ok.check();
    assert_eq!(code, Some(0), "{said}");
    assert!(!said.contains("Bearer abc"), "{said}");
}

#[test]
fn a_remote_servers_timeouts_trip_its_breaker_and_it_heals() {
    let port = free_port();
    let _up = upstream(port);
    let mut s = Setup::new(QUIET_CONFIG)
        .actor("status", "name = \"status\"\nkind = \"builtin\"\n")
        .actor(
            "up",
            &format!(
                "name = \"up\"\nkind = \"mcp\"\nurl = \"http://127.0.0.1:{port}/mcp\"\ntimeout = \"300ms\"\nconcurrency = 4\n\
                 [headers]\nAuthorization = \"Bearer {UPSTREAM_TOKEN}\"\n\
                 [breaker]\nwindow = 4\nmin_calls = 3\nfailure_rate = 0.5\nopen_for = \"1s\"\nhalf_open_calls = 1\n"
            ),
        )
        .start();
    s.initialize();
    assert!(echo_until_ok(&mut s, "up", Duration::from_secs(10)));
    // Calls that outlive their deadline, until the breaker opens (the
    // window of 4 holds the echo that went through, so at the second).
    let mut timeouts = 0;
    loop {
        let r = s.call_result("up_slow", json!({"ms": 3000}));
        match kind(&r).as_str() {
            "timeout" => timeouts += 1,
            "circuit_open" => break,
            other => panic!("{other}: {r}"),
        }
        assert!(timeouts <= 3, "the breaker never opened");
    }
    assert!(timeouts >= 2, "opened after {timeouts} timeouts");
    let sent = Instant::now();
    let r = s.call_result("up_echo", json!({"message": "now?"}));
    assert_eq!(kind(&r), "circuit_open", "{r}");
    assert!(
        sent.elapsed() < Duration::from_millis(200),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(tool_status(&mut s, "up")["breaker"]["state"], "open");
    // After open_for, a trial call goes through and the breaker closes.
    std::thread::sleep(Duration::from_millis(1100));
    assert!(echo_until_ok(&mut s, "healed", Duration::from_secs(5)));
    assert_eq!(tool_status(&mut s, "up")["breaker"]["state"], "closed");
}

#[test]
fn a_remote_server_that_answers_500_is_unavailable_saying_so() {
    // Answers every request 500, and counts them.
    const SERVE: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def answer(self):
        n = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(n)
        body = b"upstream broke"
        self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_POST = do_GET = do_DELETE = answer
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;
    let server = PyServer::start(SERVE, &[]);
    let port = server.port;
    let mut s = front(port, UPSTREAM_TOKEN);
    let line = status_once_it_says(&mut s, "500");
    drop(server);
    assert!(
        line["last_error"].as_str().unwrap_or("").contains("500"),
        "{line}"
    );
    echo_fails_within(&mut s, Duration::from_secs(2));
}

#[test]
fn a_remote_server_that_accepts_and_never_answers_is_given_up_on_in_time() {
    // Reads every request and answers none.
    const SERVE: &str = r#"
import http.server, time
class H(http.server.BaseHTTPRequestHandler):
    def hang(self):
        time.sleep(3600)
    do_POST = do_GET = do_DELETE = hang
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
srv.daemon_threads = True
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;
    let server = PyServer::start(SERVE, &[]);
    let mut s = Setup::new(QUIET_CONFIG)
        .actor("status", "name = \"status\"\nkind = \"builtin\"\n")
        .actor(
            "up",
            &format!(
                "name = \"up\"\nkind = \"mcp\"\nurl = \"http://127.0.0.1:{}/mcp\"\nstart_timeout = \"1s\"\n",
                server.port
            ),
        )
        .start();
    s.initialize();
    // Calls meanwhile are answered at once; the handshake is given up on at
    // its deadline, and status says so.
    echo_fails_within(&mut s, Duration::from_secs(1));
    let line = status_once_it_says(&mut s, "did not finish starting");
    assert!(
        line["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("did not finish starting (initialize and listing) within 1s"),
        "{line}"
    );
}
