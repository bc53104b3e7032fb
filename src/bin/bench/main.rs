//! `warden-bench`: a load driver for stdio MCP servers.
//!
//! ```text
//! warden-bench --name LABEL --calls N --concurrency C [--tool echo] [--expect TEXT]
//!              -- <server command and args...>
//! ```
//!
//! It starts the server with piped stdin/stdout, does the `initialize`
//! handshake, calls the tool until it first answers (a gateway starts its
//! downstream server in the background), then runs N `tools/call`s one at a
//! time and N with C in flight, and prints one line of JSON with the timings
//! and the memory of the server and of its whole process tree. Every answer
//! must be text `--expect` (default: the message sent). It speaks raw newline-delimited JSON-RPC rather than going through
//! the rmcp client, so that it adds the same small overhead to every server.
//!
//! With `--spawn`, the command is not a server: each call runs it once and
//! waits for its exit and output, one at a time and C at once. That is the
//! raw spawn loop a command tool is measured against.
//!
//! With `--http PORT`, the command is a server that listens on
//! 127.0.0.1:PORT/mcp: one session (`initialize`, 2025-11-25) over
//! Streamable HTTP, the sequential calls on one kept-alive connection, the
//! concurrent ones on C connections, each call a POST answered by SSE or JSON.
//! With `--stateless` as well, no session: every call is a stateless
//! 2026-07-28 request (version and capabilities in `_meta`, the `Mcp-Method`
//! and `Mcp-Name` headers).
//!
//! `warden-bench auth-check` times what `[auth]` does per request, in
//! process (`auth.rs`).

mod auth;

use std::collections::HashMap;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// How long any one response may take.
const RESPONSE_DEADLINE: Duration = Duration::from_secs(10);
/// How long a write to the server's stdin may block.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// How long the server may take to exit once its stdin is closed.
const EXIT_DEADLINE: Duration = Duration::from_secs(5);
/// How long the server sits idle before its resident memory is read.
const IDLE_SETTLE: Duration = Duration::from_millis(300);
/// The protocol version offered in `initialize`.
const PROTOCOL_VERSION: &str = "2025-11-25";
/// The version of stateless requests (`--http PORT --stateless`).
const STATELESS_VERSION: &str = "2026-07-28";
/// What every call sends, and what every answer must carry back.
const MESSAGE: &str = "hello";

/// How long the tool may take to answer its first call.
const READY_DEADLINE: Duration = Duration::from_secs(60);

const USAGE: &str = "usage: warden-bench --name LABEL --calls N --concurrency C [--tool echo] [--expect TEXT] [--spawn | --http PORT [--stateless] [--bearer TOKEN]] -- <server command and args...>";

struct Args {
    name: String,
    calls: usize,
    concurrency: usize,
    /// Run the command once per call instead of speaking MCP to it.
    spawn: bool,
    /// Speak MCP over HTTP to 127.0.0.1:PORT instead of the command's stdio.
    http: Option<u16>,
    /// Over HTTP: stateless 2026-07-28 requests, no session.
    stateless: bool,
    /// Over HTTP: sent as `Authorization: Bearer TOKEN` on every request.
    bearer: Option<String>,
    command: Vec<String>,
}

/// The tool called and the text its answer must be: set once in `main`.
static ECHO: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();

fn parse_args(argv: &[String]) -> Result<Args, String> {
    let mut name = None;
    let mut tool = "echo".to_string();
    let mut expect = MESSAGE.to_string();
    let mut calls = None;
    let mut concurrency = None;
    let mut spawn = false;
    let mut http = None;
    let mut stateless = false;
    let mut bearer = None;
    let mut i = 0;
    while i < argv.len() {
        let flag = argv[i].as_str();
        if flag == "--" {
            break;
        }
        if flag == "--spawn" || flag == "--stateless" {
            spawn |= flag == "--spawn";
            stateless |= flag == "--stateless";
            i += 1;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.to_string());
        }
        let (key, inline) = match flag.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (flag, None),
        };
        let value = match inline {
            Some(v) => v,
            None => {
                i += 1;
                argv.get(i)
                    .cloned()
                    .ok_or_else(|| format!("{key} needs a value\n{USAGE}"))?
            }
        };
        match key {
            "--name" => name = Some(value),
            "--calls" => calls = Some(parse_count(key, &value)?),
            "--concurrency" => concurrency = Some(parse_count(key, &value)?),
            "--tool" => tool = value,
            "--expect" => expect = value,
            "--bearer" => bearer = Some(value),
            "--http" => {
                http = Some(
                    value
                        .parse::<u16>()
                        .map_err(|_| format!("--http wants a port, not `{value}`"))?,
                )
            }
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
        i += 1;
    }
    let command: Vec<String> = argv.get(i + 1..).unwrap_or_default().to_vec();
    if command.is_empty() {
        return Err(format!("no server command after `--`\n{USAGE}"));
    }
    let _ = ECHO.set((tool, expect));
    Ok(Args {
        name: name.ok_or_else(|| format!("--name is required\n{USAGE}"))?,
        calls: calls.ok_or_else(|| format!("--calls is required\n{USAGE}"))?,
        concurrency: concurrency.ok_or_else(|| format!("--concurrency is required\n{USAGE}"))?,
        spawn,
        http,
        stateless,
        bearer,
        command,
    })
}

fn parse_count(flag: &str, value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{flag} wants a positive integer, not `{value}`")),
    }
}

/// The server's stdio, spoken as newline-delimited JSON-RPC.
struct Session {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    line: String,
}

impl Session {
    async fn send(&mut self, msg: &Value) -> Result<(), String> {
        let mut bytes = serde_json::to_vec(msg).map_err(|e| e.to_string())?;
        bytes.push(b'\n');
        let write = async {
            self.stdin.write_all(&bytes).await?;
            self.stdin.flush().await
        };
        match tokio::time::timeout(WRITE_DEADLINE, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("writing to the server: {e}")),
            Err(_) => Err(format!(
                "the server did not read its stdin for {WRITE_DEADLINE:?}"
            )),
        }
    }

    /// The next response (a message with an id and no method); notifications
    /// and requests from the server are skipped.
    async fn response(&mut self) -> Result<(u64, Value, Instant), String> {
        let deadline = tokio::time::Instant::now() + RESPONSE_DEADLINE;
        loop {
            self.line.clear();
            let n = match tokio::time::timeout_at(deadline, self.stdout.read_line(&mut self.line))
                .await
            {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(format!("reading from the server: {e}")),
                Err(_) => return Err(format!("no response within {RESPONSE_DEADLINE:?}")),
            };
            let at = Instant::now();
            if n == 0 {
                return Err("the server closed its stdout".to_string());
            }
            let text = self.line.trim();
            if text.is_empty() {
                continue;
            }
            let msg: Value = serde_json::from_str(text)
                .map_err(|e| format!("the server wrote a line that is not JSON ({e}): {text}"))?;
            if msg.get("method").is_some() {
                continue;
            }
            let Some(id) = msg.get("id").and_then(Value::as_u64) else {
                return Err(format!("a response without a numeric id: {text}"));
            };
            return Ok((id, msg, at));
        }
    }
}

fn echo() -> &'static (String, String) {
    ECHO.get().expect("set by parse_args")
}

fn echo_call(id: u64) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "tools/call",
        "params": {"name": echo().0, "arguments": {"message": MESSAGE}}
    })
}

/// Whether a `tools/call` response is a successful answer with the expected text.
fn is_echo(msg: &Value) -> bool {
    let Some(result) = msg.get("result") else {
        return false;
    };
    if result.get("isError").and_then(Value::as_bool) == Some(true) {
        return false;
    }
    let first = result
        .get("content")
        .and_then(Value::as_array)
        .and_then(|c| c.first());
    matches!(first, Some(block)
        if block.get("type").and_then(Value::as_str) == Some("text")
            && block.get("text").and_then(Value::as_str) == Some(echo().1.as_str()))
}

/// Latencies of one phase and how long it took.
struct Phase {
    latencies_us: Vec<u64>,
    elapsed: Duration,
    failures: usize,
    first_failure: Option<String>,
}

impl Phase {
    fn new(calls: usize) -> Self {
        Phase {
            latencies_us: Vec::with_capacity(calls),
            elapsed: Duration::ZERO,
            failures: 0,
            first_failure: None,
        }
    }

    fn record(&mut self, sent: Instant, at: Instant, msg: &Value) {
        let failure = (!is_echo(msg)).then(|| msg.to_string());
        self.record_outcome(sent, at, failure);
    }

    fn record_outcome(&mut self, sent: Instant, at: Instant, failure: Option<String>) {
        self.latencies_us
            .push(at.duration_since(sent).as_micros() as u64);
        if let Some(what) = failure {
            self.failures += 1;
            self.first_failure.get_or_insert(what);
        }
    }

    fn check(&self, label: &str) -> Result<(), String> {
        if self.failures == 0 {
            return Ok(());
        }
        Err(format!(
            "{label}: {} of {} calls failed (answers must be {:?}); the first: {}",
            self.failures,
            self.latencies_us.len(),
            echo().1,
            self.first_failure.as_deref().unwrap_or("?")
        ))
    }

    fn summary(&mut self) -> Value {
        self.latencies_us.sort_unstable();
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.latencies_us.len() as f64 / secs
        } else {
            0.0
        };
        json!({
            "p50_us": percentile(&self.latencies_us, 50.0),
            "p99_us": percentile(&self.latencies_us, 99.0),
            "calls_per_s": (rate * 10.0).round() / 10.0,
        })
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// N calls, each sent once the previous one is answered.
async fn sequential(s: &mut Session, next_id: &mut u64, calls: usize) -> Result<Phase, String> {
    let mut phase = Phase::new(calls);
    let start = Instant::now();
    for _ in 0..calls {
        let id = *next_id;
        *next_id += 1;
        let sent = Instant::now();
        s.send(&echo_call(id)).await?;
        let (got, msg, at) = s.response().await?;
        if got != id {
            return Err(format!("expected the response to {id}, got one to {got}"));
        }
        phase.record(sent, at, &msg);
    }
    phase.elapsed = start.elapsed();
    Ok(phase)
}

/// N calls with exactly `concurrency` outstanding until the last are sent;
/// responses may come back in any order.
async fn concurrent(
    s: &mut Session,
    next_id: &mut u64,
    calls: usize,
    concurrency: usize,
) -> Result<Phase, String> {
    let mut phase = Phase::new(calls);
    let mut in_flight: HashMap<u64, Instant> = HashMap::with_capacity(concurrency);
    let mut sent_count = 0usize;
    let start = Instant::now();
    while sent_count < calls.min(concurrency) {
        let id = *next_id;
        *next_id += 1;
        in_flight.insert(id, Instant::now());
        s.send(&echo_call(id)).await?;
        sent_count += 1;
    }
    while !in_flight.is_empty() {
        let (id, msg, at) = s.response().await?;
        let Some(sent) = in_flight.remove(&id) else {
            return Err(format!("a response to {id}, which is not in flight"));
        };
        phase.record(sent, at, &msg);
        if sent_count < calls {
            let id = *next_id;
            *next_id += 1;
            in_flight.insert(id, Instant::now());
            s.send(&echo_call(id)).await?;
            sent_count += 1;
        }
    }
    phase.elapsed = start.elapsed();
    Ok(phase)
}

/// VmRSS of a process and all its descendants, in KiB.
fn tree_rss_kib(root: u32) -> u64 {
    let mut parent = HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parent.insert(pid, ppid);
        }
    }
    let descends = |mut pid: u32| loop {
        if pid == root {
            return true;
        }
        match parent.get(&pid) {
            Some(&p) if p != pid && p != 0 => pid = p,
            _ => return false,
        }
    };
    parent
        .keys()
        .filter(|&&pid| descends(pid))
        .filter_map(|&pid| rss_kib(pid).ok())
        .sum()
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in {path}"))
}

/// Runs the program once and waits for its exit and all its output: one
/// call of the raw spawn loop. `Err` describes a failed run.
async fn spawn_once(command: &[String]) -> Result<(), String> {
    let out = Command::new(&command[0])
        .args(&command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(RESPONSE_DEADLINE, out).await {
        Ok(Ok(o)) if o.status.success() => Ok(()),
        Ok(Ok(o)) => Err(format!("{} exited {}", command[0], o.status)),
        Ok(Err(e)) => Err(format!("cannot start `{}`: {e}", command[0])),
        Err(_) => Err(format!("{} ran past {RESPONSE_DEADLINE:?}", command[0])),
    }
}

/// The raw spawn loop: N runs one after another, then N with `concurrency`
/// at once. No server, so no memory or handshake to report.
async fn spawn_loop(args: &Args) -> Result<Value, String> {
    use futures::stream::{FuturesUnordered, StreamExt};
    let first = Instant::now();
    spawn_once(&args.command).await?;
    let first_ms = first.elapsed().as_secs_f64() * 1000.0;

    let mut seq = Phase::new(args.calls);
    let start = Instant::now();
    for _ in 0..args.calls {
        let sent = Instant::now();
        let outcome = spawn_once(&args.command).await;
        seq.record_outcome(sent, Instant::now(), outcome.err());
    }
    seq.elapsed = start.elapsed();
    seq.check("sequential")?;

    let mut conc = Phase::new(args.calls);
    let start = Instant::now();
    let mut running = FuturesUnordered::new();
    let mut started = 0;
    while started < args.calls || !running.is_empty() {
        while started < args.calls && running.len() < args.concurrency {
            let sent = Instant::now();
            running.push(async move { (sent, spawn_once(&args.command).await) });
            started += 1;
        }
        if let Some((sent, outcome)) = running.next().await {
            conc.record_outcome(sent, Instant::now(), outcome.err());
        }
    }
    conc.elapsed = start.elapsed();
    conc.check("concurrent")?;
    Ok(json!({
        "name": args.name,
        "ready_ms": null,
        "first_call_ms": (first_ms * 100.0).round() / 100.0,
        "rss_idle_kib": null,
        "tree_rss_idle_kib": null,
        "rss_after_kib": null,
        "seq": seq.summary(),
        "conc": conc.summary(),
    }))
}

async fn run(args: &Args, child: &mut Option<Child>) -> Result<Value, String> {
    if args.spawn {
        return spawn_loop(args).await;
    }
    if let Some(port) = args.http {
        return http::run(args, port, child).await;
    }
    let spawned_at = Instant::now();
    let mut proc = Command::new(&args.command[0])
        .args(&args.command[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start `{}`: {e}", args.command[0]))?;
    let pid = proc.id().ok_or("the server exited at once")?;
    let stdin = proc.stdin.take().ok_or("no stdin pipe")?;
    let stdout = proc.stdout.take().ok_or("no stdout pipe")?;
    *child = Some(proc);
    let mut s = Session {
        stdin,
        stdout: BufReader::with_capacity(64 * 1024, stdout),
        line: String::with_capacity(1024),
    };

    s.send(&json!({
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "warden-bench", "version": env!("CARGO_PKG_VERSION")}
        }
    }))
    .await?;
    let (id, msg, at) = s.response().await?;
    let ready = at.duration_since(spawned_at);
    if id != 0 || msg.get("result").is_none() {
        return Err(format!("initialize failed: {msg}"));
    }
    s.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await?;

    // Until the tool first answers: a gateway starts its servers meanwhile.
    let mut next_id = 1u64;
    let first_call = loop {
        let id = next_id;
        next_id += 1;
        s.send(&echo_call(id)).await?;
        let (got, msg, at) = s.response().await?;
        if got == id && is_echo(&msg) {
            break at.duration_since(spawned_at);
        }
        if spawned_at.elapsed() > READY_DEADLINE {
            return Err(format!("no good answer within {READY_DEADLINE:?}: {msg}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    tokio::time::sleep(IDLE_SETTLE).await;
    let rss_idle = rss_kib(pid)?;
    let tree_idle = tree_rss_kib(pid);

    let seq = sequential(&mut s, &mut next_id, args.calls).await?;
    seq.check("sequential")?;
    let conc = concurrent(&mut s, &mut next_id, args.calls, args.concurrency).await?;
    conc.check("concurrent")?;
    let rss_after = rss_kib(pid)?;

    // Closing stdin is the end of the session for a stdio MCP server; its
    // stdout stays open until it has exited.
    let Session { stdin, stdout, .. } = s;
    drop(stdin);
    if let Some(proc) = child.as_mut() {
        match tokio::time::timeout(EXIT_DEADLINE, proc.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!(
                    "warden-bench: {} did not exit within {EXIT_DEADLINE:?} of stdin closing; killing it",
                    args.name
                );
                let _ = proc.start_kill();
                let _ = tokio::time::timeout(EXIT_DEADLINE, proc.wait()).await;
            }
        }
    }
    *child = None;
    drop(stdout);

    Ok(Measured {
        ready,
        first_call,
        rss_idle,
        tree_idle,
        rss_after,
        seq,
        conc,
    }
    .report(&args.name))
}

/// What one run against a server measured; its JSON line.
struct Measured {
    ready: Duration,
    first_call: Duration,
    rss_idle: u64,
    tree_idle: u64,
    rss_after: u64,
    seq: Phase,
    conc: Phase,
}

impl Measured {
    fn report(mut self, name: &str) -> Value {
        let ms = |d: Duration| (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0;
        json!({
            "name": name,
            "ready_ms": ms(self.ready),
            "first_call_ms": ms(self.first_call),
            "rss_idle_kib": self.rss_idle,
            "tree_rss_idle_kib": self.tree_idle,
            "rss_after_kib": self.rss_after,
            "seq": self.seq.summary(),
            "conc": self.conc.summary(),
        })
    }
}

/// MCP over Streamable HTTP, spoken with a small HTTP/1.1 client of its own
/// (keep-alive, Content-Length or chunked bodies, SSE `data:` lines), so
/// that warden and the bare rmcp server pay the same client overhead.
mod http {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    pub struct Conn {
        io: BufReader<TcpStream>,
        port: u16,
        session: Option<String>,
        /// Each request a stateless 2026-07-28 one.
        stateless: bool,
        bearer: Option<String>,
    }

    impl Conn {
        pub async fn open(
            port: u16,
            session: Option<String>,
            stateless: bool,
            bearer: Option<String>,
        ) -> Result<Conn, String> {
            let tcp = TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| format!("connecting to 127.0.0.1:{port}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            Ok(Conn {
                io: BufReader::new(tcp),
                port,
                session,
                stateless,
                bearer,
            })
        }

        /// POSTs one message; the JSON-RPC response in the answer (None
        /// for a notification's 202), and the session id the answer set.
        pub async fn post(&mut self, msg: &Value) -> Result<(Option<Value>, Instant), String> {
            let mut msg = msg.clone();
            if self.stateless {
                msg["params"]["_meta"] = json!({
                    "io.modelcontextprotocol/protocolVersion": STATELESS_VERSION,
                    "io.modelcontextprotocol/clientCapabilities": {},
                    "io.modelcontextprotocol/clientInfo": {"name": "warden-bench", "version": env!("CARGO_PKG_VERSION")},
                });
            }
            let body = serde_json::to_vec(&msg).map_err(|e| e.to_string())?;
            let mut req = format!(
                "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n",
                self.port,
                body.len()
            );
            if let Some(s) = &self.session {
                req.push_str(&format!(
                    "Mcp-Session-Id: {s}\r\nMCP-Protocol-Version: {PROTOCOL_VERSION}\r\n"
                ));
            }
            if let Some(token) = &self.bearer {
                req.push_str(&format!("Authorization: Bearer {token}\r\n"));
            }
            if self.stateless {
                req.push_str(&format!(
                    "MCP-Protocol-Version: {STATELESS_VERSION}\r\nMcp-Method: {}\r\n",
                    msg["method"].as_str().unwrap_or("")
                ));
                if let Some(name) = msg["params"]["name"].as_str() {
                    req.push_str(&format!("Mcp-Name: {name}\r\n"));
                }
            }
            req.push_str("\r\n");
            let mut bytes = req.into_bytes();
            bytes.extend_from_slice(&body);
            let exchange = async {
                self.io.get_mut().write_all(&bytes).await?;
                self.read_answer().await
            };
            match tokio::time::timeout(RESPONSE_DEADLINE, exchange).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(e)) => Err(format!("HTTP: {e}")),
                Err(_) => Err(format!("no HTTP answer within {RESPONSE_DEADLINE:?}")),
            }
        }

        async fn read_answer(&mut self) -> std::io::Result<(Option<Value>, Instant)> {
            let bad = |what: String| std::io::Error::other(what);
            let mut line = String::new();
            self.io.read_line(&mut line).await?;
            let status: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
            let (mut length, mut chunked, mut sse) = (0usize, false, false);
            loop {
                line.clear();
                self.io.read_line(&mut line).await?;
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
                    "mcp-session-id" => self.session = Some(v.to_string()),
                    _ => {}
                }
            }
            let mut body = Vec::new();
            if chunked {
                loop {
                    line.clear();
                    self.io.read_line(&mut line).await?;
                    let n = usize::from_str_radix(line.trim(), 16)
                        .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
                    let mut chunk = vec![0; n + 2];
                    self.io.read_exact(&mut chunk).await?;
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
            } else {
                body.resize(length, 0);
                self.io.read_exact(&mut body).await?;
            }
            let at = Instant::now();
            if status == 202 {
                return Ok((None, at));
            }
            if status != 200 {
                return Err(bad(format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&body)
                )));
            }
            let text = String::from_utf8_lossy(&body);
            let msg = if sse {
                text.lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
                    .find(|m| m.get("id").is_some() && m.get("method").is_none())
            } else {
                serde_json::from_str(&text).ok()
            };
            msg.map(|m| (Some(m), at))
                .ok_or_else(|| bad(format!("no JSON-RPC response in {text:?}")))
        }
    }

    /// `initialize` and `notifications/initialized`: when the answer came.
    async fn handshake(conn: &mut Conn, spawned_at: Instant) -> Result<Duration, String> {
        let (init, at) = conn
            .post(&json!({
                "jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                           "clientInfo": {"name": "warden-bench", "version": env!("CARGO_PKG_VERSION")}}
            }))
            .await?;
        if init.as_ref().and_then(|m| m.get("result")).is_none() {
            return Err(format!("initialize failed: {init:?}"));
        }
        conn.post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await?;
        Ok(at.duration_since(spawned_at))
    }

    async fn call(conn: &mut Conn, id: u64) -> Result<(Value, Instant), String> {
        match conn.post(&echo_call(id)).await? {
            (Some(msg), at) => Ok((msg, at)),
            (None, _) => Err("a call answered 202".into()),
        }
    }

    pub async fn run(args: &Args, port: u16, child: &mut Option<Child>) -> Result<Value, String> {
        let spawned_at = Instant::now();
        let proc = Command::new(&args.command[0])
            .args(&args.command[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start `{}`: {e}", args.command[0]))?;
        let pid = proc.id().ok_or("the server exited at once")?;
        *child = Some(proc);
        let mut conn = loop {
            match Conn::open(port, None, args.stateless, args.bearer.clone()).await {
                Ok(c) => break c,
                Err(e) if spawned_at.elapsed() > READY_DEADLINE => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        // Stateless: ready is the first answer, as there is no handshake.
        let ready = if args.stateless {
            None
        } else {
            Some(handshake(&mut conn, spawned_at).await?)
        };
        let mut next_id = 1u64;
        let first_call = loop {
            let (msg, at) = call(&mut conn, next_id).await?;
            next_id += 1;
            if is_echo(&msg) {
                break at.duration_since(spawned_at);
            }
            if spawned_at.elapsed() > READY_DEADLINE {
                return Err(format!("no good answer within {READY_DEADLINE:?}: {msg}"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let ready = ready.unwrap_or(first_call);
        tokio::time::sleep(IDLE_SETTLE).await;
        let rss_idle = rss_kib(pid)?;
        let tree_idle = tree_rss_kib(pid);

        let mut seq = Phase::new(args.calls);
        let start = Instant::now();
        for _ in 0..args.calls {
            let sent = Instant::now();
            let (msg, at) = call(&mut conn, next_id).await?;
            next_id += 1;
            seq.record(sent, at, &msg);
        }
        seq.elapsed = start.elapsed();
        seq.check("sequential")?;

        // C connections of the same session, each sending its share in turn.
        let session = conn.session.clone();
        let mut conns = Vec::with_capacity(args.concurrency);
        for _ in 0..args.concurrency {
            conns.push(
                Conn::open(port, session.clone(), args.stateless, args.bearer.clone()).await?,
            );
        }
        let per = args.calls.div_ceil(args.concurrency);
        let start = Instant::now();
        let runs = conns.into_iter().enumerate().map(|(k, mut c)| async move {
            let mut out = Vec::with_capacity(per);
            for i in 0..per {
                let id = 1_000_000 + (k * per + i) as u64;
                let sent = Instant::now();
                let (msg, at) = call(&mut c, id).await?;
                out.push((sent, at, msg));
            }
            Ok::<_, String>(out)
        });
        let results = futures::future::join_all(runs).await;
        let mut conc = Phase::new(per * args.concurrency);
        conc.elapsed = start.elapsed();
        for r in results {
            for (sent, at, msg) in r? {
                conc.record(sent, at, &msg);
            }
        }
        conc.check("concurrent")?;
        let rss_after = rss_kib(pid)?;
        if let Some(proc) = child.as_mut() {
            let _ = proc.start_kill();
            let _ = tokio::time::timeout(EXIT_DEADLINE, proc.wait()).await;
        }
        *child = None;
        Ok(Measured {
            ready,
            first_call,
            rss_idle,
            tree_idle,
            rss_after,
            seq,
            conc,
        }
        .report(&args.name))
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().is_some_and(|a| a == "auth-check") {
        return auth::run(&argv[1..]);
    }
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warden-bench: cannot start the tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(async {
        let mut child = None;
        let outcome = run(&args, &mut child).await;
        if let Some(mut proc) = child.take() {
            let _ = proc.start_kill();
            let _ = tokio::time::timeout(EXIT_DEADLINE, proc.wait()).await;
        }
        match outcome {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("warden-bench: {}: {e}", args.name);
                ExitCode::from(1)
            }
        }
    })
}
