//! Chaos over Streamable HTTP (`--http`): the same load and the same kills
//! against `warden serve --http`, spread over legacy sessions (2025-11-25,
//! `Mcp-Session-Id`) and stateless 2026-07-28 clients at once. Every worker
//! has a kept-alive connection of its own and one call on it at a time; a
//! call whose connection breaks, or whose stream ends without an answer,
//! stays unanswered and counts as lost.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Legacy sessions the workers share (the other half of them is stateless).
pub const SESSIONS: usize = 4;
/// How long warden may take to start listening.
const LISTEN_DEADLINE: Duration = Duration::from_secs(15);
/// Past its tool's deadline, how long a call's answer is still read for.
const READ_SLACK: Duration = Duration::from_secs(5);
/// The protocol of the legacy sessions.
const LEGACY: &str = "2025-11-25";

/// How a worker speaks: in a session, or statelessly.
#[derive(Clone, Debug)]
pub enum Mode {
    Session(String),
    Stateless,
}

/// What one POST brought back: the HTTP status and the JSON-RPC messages
/// of its body, each with when it was read.
pub struct Answer {
    pub status: u16,
    pub messages: Vec<(String, Instant)>,
    session: Option<String>,
    /// Which server answered, where a load balancer in front says so
    /// (`X-Served-By`; warden-scale reads it, warden-chaos has no balancer).
    #[allow(dead_code)]
    pub served_by: Option<String>,
}

/// One kept-alive connection to warden, opened again when warden closed it
/// between requests.
pub struct Conn {
    port: u16,
    io: Option<BufReader<TcpStream>>,
}

impl Conn {
    pub fn new(port: u16) -> Conn {
        Conn { port, io: None }
    }

    /// Waits until warden listens on `port`.
    pub fn wait_listening(port: u16) -> Result<(), String> {
        let until = Instant::now() + LISTEN_DEADLINE;
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if Instant::now() >= until {
                return Err(format!("warden did not listen on 127.0.0.1:{port}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// POSTs `msg` to /mcp and reads the whole answer within `deadline`.
    pub fn post(&mut self, msg: &Value, mode: &Mode, deadline: Duration) -> Result<Answer, String> {
        let body = serde_json::to_vec(msg).map_err(|e| e.to_string())?;
        let mut head = format!(
            "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        );
        match mode {
            Mode::Session(id) => head.push_str(&format!(
                "Mcp-Session-Id: {id}\r\nMCP-Protocol-Version: {LEGACY}\r\n"
            )),
            Mode::Stateless if msg["method"] != "initialize" => {
                head.push_str("MCP-Protocol-Version: 2026-07-28\r\n");
                if let Some(method) = msg["method"].as_str() {
                    head.push_str(&format!("Mcp-Method: {method}\r\n"));
                }
                if let Some(name) = msg["params"]["name"].as_str() {
                    head.push_str(&format!("Mcp-Name: {name}\r\n"));
                }
            }
            Mode::Stateless => {}
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&body);
        // A kept-alive connection warden closed since is opened again; a
        // request once written is never sent twice.
        if self.io.is_none() {
            let tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))
                .map_err(|e| format!("connecting: {e}"))?;
            let _ = tcp.set_nodelay(true);
            self.io = Some(BufReader::new(tcp));
        }
        let io = self.io.as_mut().expect("just opened");
        io.get_ref()
            .set_read_timeout(Some(deadline + READ_SLACK))
            .map_err(|e| e.to_string())?;
        let outcome = io
            .get_mut()
            .write_all(&bytes)
            .map_err(|e| format!("writing: {e}"))
            .and_then(|()| read_answer(io));
        if outcome.is_err() {
            self.io = None;
        }
        outcome
    }
}

fn read_answer(io: &mut BufReader<TcpStream>) -> Result<Answer, String> {
    let err = |e: std::io::Error| format!("reading: {e}");
    let mut line = String::new();
    if io.read_line(&mut line).map_err(err)? == 0 {
        return Err("warden closed the connection".into());
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let (mut length, mut chunked, mut sse) = (0usize, false, false);
    let (mut session, mut served_by) = (None, None);
    loop {
        line.clear();
        io.read_line(&mut line).map_err(err)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.to_ascii_lowercase().as_str() {
            "content-length" => length = v.parse().unwrap_or(0),
            "transfer-encoding" => chunked = v.contains("chunked"),
            "content-type" => sse = v.starts_with("text/event-stream"),
            "mcp-session-id" => session = Some(v.to_string()),
            "x-served-by" => served_by = Some(v.to_string()),
            _ => {}
        }
    }
    let mut messages = Vec::new();
    let mut text = String::new();
    // Each SSE event is booked when it arrives, not when the stream ends.
    let take_events = |text: &mut String, messages: &mut Vec<(String, Instant)>| {
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            let data: String = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim)
                .collect();
            if !data.is_empty() {
                messages.push((data, Instant::now()));
            }
        }
    };
    if chunked {
        loop {
            line.clear();
            io.read_line(&mut line).map_err(err)?;
            let n = usize::from_str_radix(line.trim(), 16)
                .map_err(|_| format!("bad chunk size {line:?}"))?;
            let mut chunk = vec![0; n + 2];
            io.read_exact(&mut chunk).map_err(err)?;
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&chunk[..n]).replace("\r\n", "\n"));
            if sse {
                take_events(&mut text, &mut messages);
            }
        }
    } else {
        let mut body = vec![0; length];
        io.read_exact(&mut body).map_err(err)?;
        text = String::from_utf8_lossy(&body).into_owned();
    }
    if sse {
        text.push_str("\n\n");
        take_events(&mut text, &mut messages);
    } else if !text.trim().is_empty() {
        messages.push((text.trim().to_string(), Instant::now()));
    }
    Ok(Answer {
        status,
        messages,
        session,
        served_by,
    })
}

/// Opens a legacy session: its id.
pub fn open_session(port: u16) -> Result<String, String> {
    let mut conn = Conn::new(port);
    let init = json!({
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": LEGACY, "capabilities": {},
                   "clientInfo": {"name": "warden-chaos", "version": "0"}}
    });
    let deadline = Duration::from_secs(10);
    let a = conn.post(&init, &Mode::Stateless, deadline)?;
    let id = match (a.status, a.session) {
        (200, Some(id)) => id,
        (status, _) => return Err(format!("initialize answered HTTP {status}")),
    };
    let mode = Mode::Session(id.clone());
    let done = conn.post(
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        &mode,
        deadline,
    )?;
    if done.status != 202 {
        return Err(format!(
            "notifications/initialized answered HTTP {}",
            done.status
        ));
    }
    Ok(id)
}

/// A `tools/call` as `mode` sends it: stateless ones carry their version
/// and capabilities in `_meta`.
pub fn call_message(id: u64, tool: &str, args: Value, mode: &Mode) -> Value {
    let mut params = json!({"name": tool, "arguments": args});
    if let Mode::Stateless = mode {
        params["_meta"] = json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "warden-chaos", "version": "0"},
        });
    }
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params})
}

/// A free port on loopback (the listener is dropped again at once).
pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}
