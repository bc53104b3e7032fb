//! `warden-chaos`: keeps warden busy while breaking it, and counts what the
//! client saw.
//!
//! ```text
//! warden-chaos [--duration 30s] [--in-flight 32] [--seed N] [--http] [--json]
//!              [--keep] [--warden PATH]
//! ```
//!
//! It writes a config that mixes builtin, command and MCP-server tools into a
//! temporary directory, starts `warden serve` on it, and keeps `--in-flight`
//! calls going over its stdin while a chaos thread kills random actors
//! (`warden kill`), SIGKILLs random processes of warden's tree, forces
//! breakers open and pushes memory through the recovery levels with a leaking
//! tool. At the end it drains the calls, closes warden's stdin and checks what
//! a client and an operator would see: every request answered exactly once and
//! before its tool's timeout + grace (plus `LATE_SLACK`), no zombie left
//! unreaped by warden, and no process of warden's tree alive once warden has
//! exited. It exits 0 when all of those hold, 1 when one does not, 2 when the
//! run could not be set up.
//!
//! With `--http`, warden serves Streamable HTTP on a loopback port instead,
//! and the calls go over it from legacy sessions and stateless 2026-07-28
//! clients at once (see `http`); at the end warden gets SIGTERM, and must
//! drain and exit 0.
//!
//! The helper programs (`warden`, `warden-fixture`, `warden-mcp-fixture`) are
//! taken from the directory this binary is in.

mod http;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const USAGE: &str = "usage: warden-chaos [--duration 30s] [--in-flight 32] [--seed N] [--http] [--json] [--keep] [--warden PATH]";

/// Every tool's timeout and grace in the chaos config (the leak's are longer).
const TIMEOUT: Duration = Duration::from_millis(1000);
const GRACE: Duration = Duration::from_millis(500);
const LEAK_TIMEOUT: Duration = Duration::from_millis(4000);
/// An answer counts as late past its tool's timeout + grace + this: room for
/// a loaded 2-core machine to schedule the reader, never a second deadline.
const LATE_SLACK: Duration = Duration::from_millis(1000);
/// A zombie child of warden counts once it has been a zombie this long.
const ZOMBIE_AFTER: Duration = Duration::from_secs(2);
/// A process of warden's tree that lives on outside it counts as an orphan
/// after this long (warden kills a dead child's group at once).
const ORPHAN_AFTER: Duration = Duration::from_secs(3);
/// How often the process table is read.
const SCAN_EVERY: Duration = Duration::from_millis(200);
/// How long warden may take to exit once its stdin is closed.
const EXIT_DEADLINE: Duration = Duration::from_secs(15);
/// How long an operator command (`warden kill`, ...) may take.
const CLI_DEADLINE: Duration = Duration::from_secs(5);
/// How long warden may take to answer `initialize`.
const READY_DEADLINE: Duration = Duration::from_secs(15);

struct Opts {
    duration: Duration,
    in_flight: usize,
    seed: u64,
    json: bool,
    keep: bool,
    warden: PathBuf,
    /// Streamable HTTP instead of stdio.
    http: bool,
}

fn parse_args() -> Result<Opts, String> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let bin_dir = std::env::current_exe()
        .map_err(|e| format!("cannot find this program's path: {e}"))?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut opts = Opts {
        duration: Duration::from_secs(30),
        in_flight: 32,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        json: false,
        keep: false,
        warden: bin_dir.join("warden"),
        http: false,
    };
    let mut it = argv.into_iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--duration" => {
                let v = value("--duration")?;
                opts.duration =
                    humantime::parse_duration(&v).map_err(|e| format!("--duration {v}: {e}"))?;
            }
            "--in-flight" => {
                let v = value("--in-flight")?;
                opts.in_flight = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or(format!("--in-flight {v}: not a positive number"))?;
            }
            "--seed" => {
                let v = value("--seed")?;
                opts.seed = v.parse().map_err(|_| format!("--seed {v}: not a number"))?;
            }
            "--warden" => opts.warden = PathBuf::from(value("--warden")?),
            "--json" => opts.json = true,
            "--http" => opts.http = true,
            "--keep" => opts.keep = true,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(opts)
}

/// A small xorshift generator: the run is repeatable from its seed (up to
/// timing), and no dependency is needed for it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------
// The config under test.

/// The tools' files: builtin, command and MCP-server tools, each with a way
/// to fail. Paths are the helper programs next to this binary.
fn write_config(dir: &Path, bin_dir: &Path) -> std::io::Result<()> {
    let fixture = bin_dir.join("warden-fixture");
    let mcp_fixture = bin_dir.join("warden-mcp-fixture");
    let ms = |d: Duration| format!("\"{}ms\"", d.as_millis());
    std::fs::create_dir_all(dir.join("actors"))?;
    std::fs::write(
        dir.join("config.toml"),
        format!(
            r#"[server]
actors_dir = "actors"
shutdown_grace = "2s"
worker_threads = 2

[supervisor]
max_restarts = 10
window = "10s"
backoff = {{ min = "20ms", max = "500ms" }}
cooloff = "3s"

[defaults]
timeout = {timeout}
grace = {grace}

[breaker]
window = 8
min_calls = 4
open_for = "1s"
open_for_max = "4s"

[memory]
limit = "256MiB"
sample_every = "100ms"
cooldown = "1s"

[log]
dir = "logs"
stderr = "off"

[control]
socket = "{control}"
"#,
            timeout = ms(TIMEOUT),
            grace = ms(GRACE),
            control = dir.join("control").display(),
        ),
    )?;
    let command = |name: &str, args: &[&str], extra: &str, props: &str| {
        let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
        format!(
            "name = \"{name}\"\nkind = \"command\"\ncommand = {:?}\nargs = [{}]\n{extra}\n[input]\ntype = \"object\"\nadditionalProperties = false\n{props}\n",
            fixture.display(),
            args.join(", ")
        )
    };
    let actors = [
        (
            "echo",
            "name = \"echo\"\nkind = \"builtin\"\nconcurrency = 4\nqueue = 64\n".to_string(),
        ),
        (
            "status",
            "name = \"status\"\nkind = \"builtin\"\npriority = \"critical\"\n".to_string(),
        ),
        (
            "crash",
            "name = \"crash\"\nkind = \"builtin\"\nbuiltin = \"panic\"\n".to_string(),
        ),
        (
            "sleepy",
            command(
                "sleepy",
                &["sleep", "{ms}"],
                "priority = \"low\"\nconcurrency = 4\nqueue = 16",
                "required = [\"ms\"]\nproperties.ms = { type = \"integer\" }",
            ),
        ),
        (
            "flaky",
            command(
                "flaky",
                &["fail", "{code}", "flaky"],
                "concurrency = 2\nqueue = 8",
                "required = [\"code\"]\nproperties.code = { type = \"integer\" }",
            ),
        ),
        (
            "spawn",
            command("spawn", &["args", "{word}"], "concurrency = 4\nqueue = 32",
                "required = [\"word\"]\nproperties.word = { type = \"string\" }"),
        ),
        (
            "leak",
            command(
                "leak",
                &["leak", "{mib}", "0", "{hold_ms}"],
                &format!("priority = \"critical\"\ntimeout = {}\nconcurrency = 2\nqueue = 2", ms(LEAK_TIMEOUT)),
                "required = [\"mib\", \"hold_ms\"]\nproperties.mib = { type = \"integer\" }\nproperties.hold_ms = { type = \"integer\" }",
            ),
        ),
        (
            "fx",
            format!(
                "name = \"fx\"\nkind = \"mcp\"\ncommand = {:?}\nargs = [\"--grandchild\"]\nconcurrency = 8\nqueue = 32\nping_every = \"500ms\"\nping_timeout = \"300ms\"\nstart_timeout = \"5s\"\n",
                mcp_fixture.display()
            ),
        ),
    ];
    for (name, text) in actors {
        std::fs::write(dir.join("actors").join(format!("{name}.toml")), text)?;
    }
    Ok(())
}

/// The load's calls: (tool, arguments), chosen by weight. Echo answers are
/// checked for their text.
fn next_call(rng: &mut Rng, id: u64) -> (&'static str, Value) {
    let roll = rng.below(100);
    match roll {
        0..=29 => ("echo", json!({"message": format!("m{id}")})),
        30..=49 => ("fx_echo", json!({"message": format!("m{id}")})),
        50..=59 => ("sleepy", json!({"ms": rng.below(1400)})),
        60..=67 => ("flaky", json!({"code": rng.below(2)})),
        68..=77 => ("spawn", json!({"word": format!("w{id}")})),
        78..=84 => ("fx_sleep", json!({"ms": rng.below(1400)})),
        85..=89 => ("fx_fail", json!({"message": "no"})),
        90..=93 => ("status", json!({})),
        94..=97 => ("crash", json!({})),
        _ => ("fx_add", json!({"a": id, "b": 1})),
    }
}

fn deadline_of(tool: &str) -> Duration {
    let timeout = if tool == "leak" {
        LEAK_TIMEOUT
    } else {
        TIMEOUT
    };
    timeout + GRACE + LATE_SLACK
}

// ---------------------------------------------------------------------------
// The client side: requests sent and what came back.

struct Pending {
    tool: &'static str,
    sent: Instant,
    expect: Option<String>,
    /// How it was sent: "stdio", "session" or "stateless".
    via: &'static str,
}

#[derive(Default)]
struct Ledger {
    next_id: u64,
    pending: HashMap<u64, Pending>,
    answered: HashSet<u64>,
    sent: u64,
    ok: u64,
    /// Answered ok, by how the call was sent.
    ok_by: BTreeMap<&'static str, u64>,
    errors: BTreeMap<String, u64>,
    twice: u64,
    late: u64,
    /// The latest answer relative to its tool's timeout + grace, in ms
    /// (negative: that much early).
    worst_margin_ms: i64,
    wrong: u64,
    unsolicited: u64,
    garbage: u64,
    notifications: u64,
    /// The first few problems, for the report.
    examples: Vec<String>,
    /// warden's heap in use as its `status` answers say, by minute of the run.
    heap_by_minute: Vec<Vec<u64>>,
    started: Option<Instant>,
}

/// The median of each minute's samples.
fn medians(by_minute: &[Vec<u64>]) -> Vec<u64> {
    by_minute
        .iter()
        .filter(|m| !m.is_empty())
        .map(|m| {
            let mut m = m.clone();
            m.sort_unstable();
            m[m.len() / 2]
        })
        .collect()
}

impl Ledger {
    /// Keeps the heap figure of a `status` answer.
    fn heap_sample(&mut self, msg: &Value, at: Instant) {
        let text = msg["result"]["content"][0]["text"].as_str().unwrap_or("");
        let Ok(status) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let Some(heap) = status["health"]["memory"]["heap_in_use_bytes"].as_u64() else {
            return;
        };
        let minute = (at - *self.started.get_or_insert(at)).as_secs() as usize / 60;
        if self.heap_by_minute.len() <= minute {
            self.heap_by_minute.resize(minute + 1, Vec::new());
        }
        self.heap_by_minute[minute].push(heap / 1024);
    }

    fn example(&mut self, what: String) {
        if self.examples.len() < 10 {
            self.examples.push(what);
        }
    }

    /// Takes request `id` off the pending list for `answer`, counting an
    /// answer twice, to nothing, or late.
    fn settle(&mut self, id: u64, answer: &Value, at: Instant) -> Option<Pending> {
        let Some(p) = self.pending.remove(&id) else {
            if self.answered.contains(&id) {
                self.twice += 1;
                self.example(format!("second answer to {id}: {answer:.200}"));
            } else {
                self.unsolicited += 1;
                self.example(format!("answer to an unknown id: {answer:.200}"));
            }
            return None;
        };
        self.answered.insert(id);
        let took = at - p.sent;
        let margin =
            took.as_millis() as i64 - (deadline_of(p.tool) - LATE_SLACK).as_millis() as i64;
        if self.answered.len() == 1 || margin > self.worst_margin_ms {
            self.worst_margin_ms = margin;
        }
        if took > deadline_of(p.tool) {
            self.late += 1;
            self.example(format!("{} answered after {took:?}: {answer:.200}", p.tool));
        }
        Some(p)
    }

    /// Books an HTTP answer that carried no JSON-RPC response (a 503, say).
    fn refused(&mut self, id: u64, status: u16, at: Instant) {
        if let Some(p) = self.settle(id, &json!({"http": status}), at) {
            *self
                .errors
                .entry(format!("http {status} ({})", p.tool))
                .or_default() += 1;
        }
    }

    /// Books one line from warden's stdout.
    fn record(&mut self, line: &str, at: Instant) {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            self.garbage += 1;
            self.example(format!("not JSON on stdout: {:.200}", line));
            return;
        };
        if msg.get("method").is_some() {
            self.notifications += 1;
            return;
        }
        let Some(id) = msg["id"].as_u64() else {
            self.unsolicited += 1;
            self.example(format!("answer without a request id: {msg:.200}"));
            return;
        };
        let Some(p) = self.settle(id, &msg, at) else {
            return;
        };
        let outcome = if let Some(e) = msg.get("error") {
            format!("jsonrpc {}", e["code"])
        } else if msg["result"]["isError"] == json!(true) {
            match msg["result"]["structuredContent"]["kind"].as_str() {
                Some(kind) => kind.to_string(),
                // A downstream server's own error result, passed through.
                None => "tool's own error result".to_string(),
            }
        } else {
            if p.tool == "status" {
                self.heap_sample(&msg, at);
            }
            if let Some(want) = &p.expect {
                if msg["result"]["content"][0]["text"].as_str() != Some(want) {
                    self.wrong += 1;
                    self.example(format!("{} answered {msg:.200}, not {want}", p.tool));
                }
            }
            "ok".to_string()
        };
        if outcome == "ok" {
            self.ok += 1;
            *self.ok_by.entry(p.via).or_default() += 1;
        } else {
            *self
                .errors
                .entry(format!("{outcome} ({})", p.tool))
                .or_default() += 1;
        }
    }
}

/// warden's stdin (or its HTTP port) and the ledger of what was sent.
struct Client {
    stdin: Mutex<Option<ChildStdin>>,
    /// With `--http`: the port warden serves MCP on.
    port: Option<u16>,
    ledger: Mutex<Ledger>,
    /// Signalled when an answer arrives or warden's stdout closes.
    changed: Condvar,
    stdout_closed: AtomicBool,
}

impl Client {
    fn write(&self, msg: &Value) -> Result<(), String> {
        let mut stdin = self.stdin.lock().unwrap();
        let pipe = stdin.as_mut().ok_or("warden's stdin is closed")?;
        let mut line = serde_json::to_vec(msg).map_err(|e| e.to_string())?;
        line.push(b'\n');
        pipe.write_all(&line)
            .and_then(|()| pipe.flush())
            .map_err(|e| format!("writing to warden: {e}"))
    }

    /// A fresh request id.
    fn next_id(&self) -> u64 {
        let mut l = self.ledger.lock().unwrap();
        l.next_id += 1;
        l.next_id
    }

    /// Books a call before it is sent, so that a quick answer always finds it.
    fn book(&self, id: u64, tool: &'static str, expect: Option<String>, via: &'static str) {
        let mut l = self.ledger.lock().unwrap();
        l.pending.insert(
            id,
            Pending {
                tool,
                sent: Instant::now(),
                expect,
                via,
            },
        );
        l.sent += 1;
    }

    /// What came back for call `id` over HTTP. A call whose connection
    /// broke before its answer stays pending: lost.
    fn deliver(&self, id: u64, outcome: Result<http::Answer, String>) {
        let mut l = self.ledger.lock().unwrap();
        match outcome {
            Ok(a) if a.status == 200 => {
                let answered = a.messages.iter().any(|(m, _)| {
                    serde_json::from_str::<Value>(m).is_ok_and(|v| v.get("method").is_none())
                });
                for (m, at) in &a.messages {
                    l.record(m, *at);
                }
                if !answered {
                    l.example(format!("call {id}: its stream ended without an answer"));
                }
            }
            Ok(a) => l.refused(id, a.status, Instant::now()),
            Err(e) => l.example(format!("call {id}: {e}")),
        }
        drop(l);
        self.changed.notify_all();
    }

    /// Sends a `tools/call`: on stdin, or over HTTP from a thread of its
    /// own (statelessly), so that the caller does not wait for the answer.
    fn call(
        self: &Arc<Self>,
        tool: &'static str,
        args: Value,
        expect: Option<String>,
    ) -> Result<(), String> {
        let id = self.next_id();
        let via = if self.port.is_some() {
            "stateless"
        } else {
            "stdio"
        };
        self.book(id, tool, expect, via);
        if let Some(port) = self.port {
            let client = self.clone();
            std::thread::spawn(move || {
                let mode = http::Mode::Stateless;
                let msg = http::call_message(id, tool, args, &mode);
                let outcome = http::Conn::new(port).post(&msg, &mode, deadline_of(tool));
                client.deliver(id, outcome);
            });
            return Ok(());
        }
        self.write(&json!({
            "jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": tool, "arguments": args}
        }))
    }

    /// Waits until fewer than `n` calls are unanswered; false if warden's
    /// stdout closed.
    fn wait_below(&self, n: usize, until: Instant) -> bool {
        let mut l = self.ledger.lock().unwrap();
        while l.pending.len() >= n {
            if self.stdout_closed.load(Ordering::Relaxed) || Instant::now() >= until {
                return false;
            }
            l = self
                .changed
                .wait_timeout(l, Duration::from_millis(100))
                .unwrap()
                .0;
        }
        true
    }
}

fn read_stdout(client: Arc<Client>, stdout: std::process::ChildStdout) {
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let at = Instant::now();
                client.ledger.lock().unwrap().record(line.trim_end(), at);
                client.changed.notify_all();
            }
        }
    }
    client.stdout_closed.store(true, Ordering::Relaxed);
    client.changed.notify_all();
}

/// Does the handshake; every later answer goes through the ledger.
fn initialize(client: &Client) -> Result<(), String> {
    client.write(&json!({
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "warden-chaos", "version": "0"}}
    }))?;
    let until = Instant::now() + READY_DEADLINE;
    let mut l = client.ledger.lock().unwrap();
    // The reader books id 0 as unsolicited: it was never pending.
    while l.unsolicited == 0 {
        if client.stdout_closed.load(Ordering::Relaxed) || Instant::now() >= until {
            return Err("warden did not answer initialize".into());
        }
        l = client
            .changed
            .wait_timeout(l, Duration::from_millis(100))
            .unwrap()
            .0;
    }
    l.unsolicited = 0;
    l.examples.clear();
    drop(l);
    client.write(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
}

// ---------------------------------------------------------------------------
// The process table.

#[derive(Clone, Copy)]
struct Proc {
    state: char,
    ppid: i32,
    start: u64,
}

fn processes() -> HashMap<i32, Proc> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The fields after the command name: state ppid pgrp ... starttime (20th).
        let f: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let (Some(state), Some(ppid), Some(start)) = (
            f.first().and_then(|s| s.chars().next()),
            f.get(1).and_then(|s| s.parse().ok()),
            f.get(19).and_then(|s| s.parse().ok()),
        ) else {
            continue;
        };
        out.insert(pid, Proc { state, ppid, start });
    }
    out
}

/// `root` and everything below it.
fn tree(root: i32, table: &HashMap<i32, Proc>) -> HashSet<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (&pid, p) in table {
        children.entry(p.ppid).or_default().push(pid);
    }
    let mut out = HashSet::from([root]);
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            if out.insert(c) {
                stack.push(c);
            }
        }
    }
    out
}

fn is_guardian(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|&b| b == 0).any(|a| a == b"__guard"))
        .unwrap_or(false)
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Every process ever seen below warden, and the zombies and orphans found.
#[derive(Default)]
struct Watch {
    /// (pid, start time) → the guardian? and since when it is outside the tree.
    seen: HashMap<(i32, u64), (bool, Option<Instant>)>,
    zombie_since: HashMap<(i32, u64), Instant>,
    zombies: HashSet<(i32, u64)>,
    orphans: HashSet<(i32, u64)>,
    examples: Vec<String>,
    /// warden's own resident memory, one sample per scan, by minute of the run.
    rss_by_minute: Vec<Vec<u64>>,
    started: Option<Instant>,
}

impl Watch {
    fn scan(&mut self, warden: i32) {
        let now = Instant::now();
        let minute = (now - *self.started.get_or_insert(now)).as_secs() as usize / 60;
        if self.rss_by_minute.len() <= minute {
            self.rss_by_minute.resize(minute + 1, Vec::new());
        }
        self.rss_by_minute[minute].push(rss_kib(warden));
        let table = processes();
        let below = tree(warden, &table);
        for &pid in &below {
            if pid == warden {
                continue;
            }
            if let Some(p) = table.get(&pid) {
                let key = (pid, p.start);
                self.seen
                    .entry(key)
                    .or_insert_with(|| (is_guardian(pid), None));
            }
        }
        // Zombies warden has not reaped: its own children only (a fixture's
        // grandchild is its parent's to reap, and dies with its group).
        for (&pid, p) in &table {
            let key = (pid, p.start);
            if p.ppid == warden && p.state == 'Z' {
                let since = *self.zombie_since.entry(key).or_insert(now);
                if now - since >= ZOMBIE_AFTER && self.zombies.insert(key) {
                    self.examples.push(format!(
                        "pid {pid} a zombie child of warden for {ZOMBIE_AFTER:?}"
                    ));
                }
            }
        }
        // Orphans: a process of warden's tree alive outside it. The guardian
        // lives outside by design; it is checked after warden exits.
        for (key, (guardian, outside)) in self.seen.iter_mut() {
            let live = table
                .get(&key.0)
                .is_some_and(|p| p.start == key.1 && p.state != 'Z' && p.state != 'X');
            if !live || below.contains(&key.0) || *guardian {
                *outside = None;
                continue;
            }
            let since = *outside.get_or_insert(now);
            if now - since >= ORPHAN_AFTER && self.orphans.insert(*key) {
                self.examples.push(format!(
                    "pid {} left warden's tree and lived {ORPHAN_AFTER:?} more",
                    key.0
                ));
            }
        }
    }

    /// The median of warden's RSS in each minute of the run, in KiB: a leak
    /// shows as a rise from minute to minute, noise as a flat line.
    fn rss_trend(&self) -> Vec<u64> {
        medians(&self.rss_by_minute)
    }

    /// After warden exited: every process it ever had must be gone.
    fn final_check(&mut self) {
        let table = processes();
        for (key, (guardian, _)) in &self.seen {
            let live = table
                .get(&key.0)
                .is_some_and(|p| p.start == key.1 && p.state != 'Z' && p.state != 'X');
            if live && self.orphans.insert(*key) {
                self.examples.push(format!(
                    "pid {} {}still alive after warden exited",
                    key.0,
                    if *guardian { "(the guardian) " } else { "" }
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Chaos.

#[derive(Default)]
struct Actions {
    counts: BTreeMap<&'static str, u64>,
    refused: BTreeMap<&'static str, u64>,
}

/// Runs an operator command against the instance under test, within
/// `CLI_DEADLINE`; true when it succeeded.
fn operator(warden: &Path, control: &Path, pid: i32, args: &[&str]) -> bool {
    let Ok(mut child) = Command::new(warden)
        .args(args)
        .arg("--dir")
        .arg(control)
        .arg("--pid")
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let until = Instant::now() + CLI_DEADLINE;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

const ACTORS: &[&str] = &[
    "tool:echo",
    "tool:echo/worker:0",
    "tool:sleepy",
    "tool:flaky/worker:1",
    "tool:spawn",
    "tool:crash",
    "tool:status",
    "tool:leak",
    "server:fx",
    "tools",
    "breaker",
    "health",
    "recovery",
    "control",
];

/// One random act of chaos.
fn strike(
    rng: &mut Rng,
    client: &Arc<Client>,
    warden: &Path,
    control: &Path,
    pid: i32,
    acts: &mut Actions,
) {
    let (what, ok) = match rng.below(12) {
        0..=2 => {
            let actor = *rng.pick(ACTORS);
            (
                "warden kill ACTOR",
                operator(warden, control, pid, &["kill", actor]),
            )
        }
        3 => (
            "warden kill tool:sleepy --signal KILL",
            operator(
                warden,
                control,
                pid,
                &["kill", "tool:sleepy", "--signal", "KILL"],
            ),
        ),
        4..=5 => {
            // A random process below warden, but never warden itself or the
            // guardian; its start time is checked again just before the kill.
            let table = processes();
            let mut below: Vec<i32> = tree(pid, &table)
                .into_iter()
                .filter(|&p| p != pid)
                .collect();
            below.sort_unstable();
            let victim = (!below.is_empty()).then(|| *rng.pick(&below));
            let ok = victim.is_some_and(|v| {
                let start = table[&v].start;
                !is_guardian(v)
                    && processes().get(&v).is_some_and(|p| p.start == start)
                    && nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(v),
                        nix::sys::signal::Signal::SIGKILL,
                    )
                    .is_ok()
            });
            ("SIGKILL a process of warden's tree", ok)
        }
        6 => {
            let tool = *rng.pick(&["echo", "flaky", "spawn", "sleepy"]);
            let action = *rng.pick(&["open", "reset"]);
            (
                "warden breaker TOOL open|reset",
                operator(warden, control, pid, &["breaker", tool, action]),
            )
        }
        8 => {
            // A reload that changes one tool (the MCP server included): the
            // new actor serves new calls, the old one finishes its own.
            let tool = *rng.pick(&["sleepy", "spawn", "fx", "echo"]);
            let ok = control.parent().is_some_and(|dir| {
                toggle_description(&dir.join("actors").join(format!("{tool}.toml")))
            }) && operator(warden, control, pid, &["reload"]);
            ("warden reload (one actor file changed)", ok)
        }
        7 => (
            // The MCP server exits mid-session, its calls in flight with it.
            "fx_crash (the MCP server exits)",
            client.call("fx_crash", json!({}), None).is_ok(),
        ),
        _ => {
            // Memory: 120 MiB is past trim (70 % of 256), 240 past restart (95 %).
            let mib = *rng.pick(&[120u64, 200, 240]);
            let ok = client
                .call("leak", json!({"mib": mib, "hold_ms": 1500}), None)
                .is_ok();
            ("leak 120-240 MiB of 256", ok)
        }
    };
    *acts.counts.entry(what).or_default() += 1;
    if !ok {
        *acts.refused.entry(what).or_default() += 1;
    }
}

/// Adds a description to an actor file, or takes it away again: a change
/// of the tool's spec, so a reload replaces it.
fn toggle_description(file: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(file) else {
        return false;
    };
    let text = match text.strip_prefix("description = \"reloaded\"\n") {
        Some(rest) => rest.to_string(),
        None => format!("description = \"reloaded\"\n{text}"),
    };
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text).is_ok() && std::fs::rename(&tmp, file).is_ok()
}

// ---------------------------------------------------------------------------

struct Report {
    text: String,
    json: Value,
    passed: bool,
}

fn run(opts: &Opts, dir: &Path) -> Result<Report, String> {
    let bin_dir = opts
        .warden
        .parent()
        .ok_or("--warden has no directory")?
        .to_path_buf();
    write_config(dir, &bin_dir).map_err(|e| format!("writing the config: {e}"))?;
    let control = dir.join("control");
    let port = opts.http.then(http::free_port).transpose()?;
    let mut serve = Command::new(&opts.warden);
    serve
        .arg("serve")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(port) = port {
        // stdout stays piped: in HTTP mode nothing may appear on it.
        serve.arg("--http").arg(format!("127.0.0.1:{port}"));
    }
    let mut child: Child = serve
        .spawn()
        .map_err(|e| format!("starting {}: {e}", opts.warden.display()))?;
    let pid = child.id() as i32;
    let client = Arc::new(Client {
        stdin: Mutex::new(child.stdin.take()),
        port,
        ledger: Mutex::new(Ledger::default()),
        changed: Condvar::new(),
        stdout_closed: AtomicBool::new(false),
    });
    let reader = {
        let client = client.clone();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        std::thread::spawn(move || read_stdout(client, stdout))
    };
    let outcome = drive(opts, &client, &control, pid);
    // Whatever happened, warden is asked to exit and then made to: over
    // HTTP by SIGTERM (it drains), over stdio by the end of its input.
    if port.is_some() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    client.stdin.lock().unwrap().take();
    let until = Instant::now() + EXIT_DEADLINE;
    let exit = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let _ = reader.join();
    let (mut watch, rss_before, rss_after, acts, recovery, elapsed) = outcome?;
    // The guardian kills what is left at once; give it a moment to be seen.
    std::thread::sleep(Duration::from_millis(500));
    watch.final_check();

    let l = client.ledger.lock().unwrap();
    let lost = l.pending.len() as u64;
    let mut examples = l.examples.clone();
    examples.extend(watch.examples.iter().cloned());
    for (id, p) in l.pending.iter().take(5) {
        examples.push(format!("call {id} to {} never answered", p.tool));
    }
    let exited_ok = exit.is_some_and(|s| s.success());
    let passed = lost == 0
        && l.twice == 0
        && l.late == 0
        && l.wrong == 0
        && l.unsolicited == 0
        && l.garbage == 0
        && watch.zombies.is_empty()
        && watch.orphans.is_empty()
        && exited_ok;
    let errors: u64 = l.errors.values().sum();
    let mut text = String::new();
    let mut line = |k: &str, v: String| text.push_str(&format!("{k:<44}{v}\n"));
    line(
        "duration",
        format!(
            "{:.1} s, {} in flight, seed {}",
            elapsed.as_secs_f64(),
            opts.in_flight,
            opts.seed
        ),
    );
    let transport = if opts.http {
        format!(
            "Streamable HTTP: {} legacy sessions and stateless 2026-07-28 calls",
            http::SESSIONS
        )
    } else {
        "stdio".to_string()
    };
    line("transport", transport.clone());
    line("requests sent", l.sent.to_string());
    line("answered ok", l.ok.to_string());
    for (via, n) in &l.ok_by {
        line(&format!("  sent {via}"), n.to_string());
    }
    line("answered with an error", errors.to_string());
    for (k, v) in &l.errors {
        line(&format!("  {k}"), v.to_string());
    }
    line("lost (no answer)", lost.to_string());
    line("answered twice", l.twice.to_string());
    line(
        "answered late",
        format!(
            "{} (past timeout + grace + {}ms)",
            l.late,
            LATE_SLACK.as_millis()
        ),
    );
    line(
        "latest answer vs timeout + grace",
        format!("{:+} ms", l.worst_margin_ms),
    );
    line("wrong answers", l.wrong.to_string());
    line("answers to no request", l.unsolicited.to_string());
    line("non-JSON lines on stdout", l.garbage.to_string());
    line("zombie processes", watch.zombies.len().to_string());
    line("orphan processes", watch.orphans.len().to_string());
    line("processes seen below warden", watch.seen.len().to_string());
    line(
        "warden resident memory",
        format!(
            "{:.1} MiB before, {:.1} MiB after",
            rss_before as f64 / 1024.0,
            rss_after as f64 / 1024.0
        ),
    );
    let trend = watch.rss_trend();
    line(
        "warden RSS, median of each minute (MiB)",
        trend
            .iter()
            .map(|k| format!("{:.1}", *k as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(" "),
    );
    let heap = medians(&l.heap_by_minute);
    line(
        "warden heap in use, each minute (MiB)",
        heap.iter()
            .map(|k| format!("{:.1}", *k as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(" "),
    );
    line("recovery actions", recovery.to_string());
    line(
        "warden's exit",
        match exit {
            Some(s) => s.to_string(),
            None => format!("none within {EXIT_DEADLINE:?}: killed"),
        },
    );
    for (k, v) in &acts.counts {
        let refused = acts.refused.get(k).copied().unwrap_or(0);
        line(
            &format!("chaos: {k}"),
            format!("{v} ({refused} refused or failed)"),
        );
    }
    for e in &examples {
        text.push_str(&format!("  ! {e}\n"));
    }
    text.push_str(if passed { "PASS\n" } else { "FAIL\n" });
    let json = json!({
        "duration_s": elapsed.as_secs_f64(),
        "transport": if opts.http { "http" } else { "stdio" },
        "notifications": l.notifications,
        "in_flight": opts.in_flight,
        "seed": opts.seed,
        "sent": l.sent,
        "ok": l.ok,
        "ok_by": l.ok_by,
        "errors": l.errors,
        "lost": lost,
        "twice": l.twice,
        "late": l.late,
        "worst_margin_ms": l.worst_margin_ms,
        "wrong": l.wrong,
        "unsolicited": l.unsolicited,
        "garbage": l.garbage,
        "zombies": watch.zombies.len(),
        "orphans": watch.orphans.len(),
        "processes_seen": watch.seen.len(),
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_by_minute_kib": trend,
        "heap_by_minute_kib": heap,
        "recovery": recovery,
        "exit": exit.map(|s| s.to_string()),
        "chaos": acts.counts,
        "chaos_refused": acts.refused,
        "examples": examples,
        "passed": passed,
    });
    Ok(Report { text, json, passed })
}

type Outcome = (Watch, u64, u64, Actions, Value, Duration);

/// The run proper: load, chaos and the process watch until `duration`, then
/// the drain.
fn drive(opts: &Opts, client: &Arc<Client>, control: &Path, pid: i32) -> Result<Outcome, String> {
    let sessions = match client.port {
        Some(port) => {
            http::Conn::wait_listening(port)?;
            (0..http::SESSIONS)
                .map(|_| http::open_session(port))
                .collect::<Result<Vec<_>, _>>()?
        }
        None => {
            initialize(client)?;
            Vec::new()
        }
    };
    let started = Instant::now();
    let end = started + opts.duration;
    let stop = Arc::new(AtomicBool::new(false));
    let watch = Arc::new(Mutex::new(Watch::default()));
    let watcher = {
        let (stop, watch) = (stop.clone(), watch.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                watch.lock().unwrap().scan(pid);
                std::thread::sleep(SCAN_EVERY);
            }
        })
    };
    let chaos = {
        let (stop, client, control) = (stop.clone(), client.clone(), control.to_path_buf());
        let warden = opts.warden.clone();
        let mut rng = Rng(opts.seed ^ 0x9e37_79b9_7f4a_7c15);
        std::thread::spawn(move || {
            let mut acts = Actions::default();
            // A second of plain load first: the "before" memory is warden at work.
            std::thread::sleep(Duration::from_secs(1));
            let rss_before = rss_kib(pid);
            while !stop.load(Ordering::Relaxed) {
                strike(&mut rng, &client, &warden, &control, pid, &mut acts);
                std::thread::sleep(Duration::from_millis(100 + rng.below(400)));
            }
            (acts, rss_before)
        })
    };
    let mut rng = Rng(opts.seed);
    let mut load_error = None;
    if let Some(port) = client.port {
        // Half the workers in the legacy sessions, half stateless.
        let workers: Vec<_> = (0..opts.in_flight)
            .map(|k| {
                let mode = if k % 2 == 0 {
                    http::Mode::Session(sessions[(k / 2) % sessions.len()].clone())
                } else {
                    http::Mode::Stateless
                };
                let client = client.clone();
                let seed = opts.seed ^ (k as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
                std::thread::spawn(move || http_worker(&client, port, mode, seed, end))
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
    }
    while client.port.is_none() && Instant::now() < end {
        if !client.wait_below(opts.in_flight, end) {
            if client.stdout_closed.load(Ordering::Relaxed) {
                load_error = Some("warden closed its stdout during the run".to_string());
                break;
            }
            continue;
        }
        let id = client.ledger.lock().unwrap().next_id + 1;
        let (tool, args) = next_call(&mut rng, id);
        let expect = match tool {
            "echo" | "fx_echo" => Some(format!("m{id}")),
            _ => None,
        };
        if let Err(e) = client.call(tool, args, expect) {
            load_error = Some(e);
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (acts, rss_before) = chaos.join().map_err(|_| "the chaos thread panicked")?;
    let elapsed = started.elapsed();
    // Drain: every call's deadline has passed by the leak's deadline from now.
    client.wait_below(1, Instant::now() + deadline_of("leak"));
    let _ = watcher.join();
    watch.lock().unwrap().scan(pid);
    let rss_after = rss_kib(pid);
    let recovery = recovery_counts(&opts.warden, control, pid);
    if let Some(e) = load_error {
        eprintln!("warden-chaos: {e}");
    }
    let watch = std::mem::take(&mut *watch.lock().unwrap());
    Ok((watch, rss_before, rss_after, acts, recovery, elapsed))
}

/// One connection's worth of the load over HTTP: a call at a time until `end`.
fn http_worker(client: &Client, port: u16, mode: http::Mode, seed: u64, end: Instant) {
    let mut rng = Rng(seed);
    let mut conn = http::Conn::new(port);
    while Instant::now() < end {
        let id = client.next_id();
        let (tool, args) = next_call(&mut rng, id);
        let expect = match tool {
            "echo" | "fx_echo" => Some(format!("m{id}")),
            _ => None,
        };
        let via = match mode {
            http::Mode::Session(_) => "session",
            http::Mode::Stateless => "stateless",
        };
        client.book(id, tool, expect, via);
        let msg = http::call_message(id, tool, args, &mode);
        let outcome = conn.post(&msg, &mode, deadline_of(tool));
        client.deliver(id, outcome);
    }
}

/// The recovery policy's action counts from `warden status --json`.
fn recovery_counts(warden: &Path, control: &Path, pid: i32) -> Value {
    let out = Command::new(warden)
        .args(["status", "--json", "--dir"])
        .arg(control)
        .arg("--pid")
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    out.ok()
        .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
        .map(|s| s["health"]["recovery"]["counts"].clone())
        .unwrap_or(Value::Null)
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let dir = std::env::temp_dir().join(format!("warden-chaos-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("warden-chaos: {}: {e}", dir.display());
        return ExitCode::from(2);
    }
    let result = run(&opts, &dir);
    if opts.keep {
        eprintln!("warden-chaos: kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    match result {
        Ok(report) => {
            if opts.json {
                println!("{}", report.json);
            } else {
                print!("{}", report.text);
            }
            if report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("warden-chaos: {e}");
            ExitCode::from(2)
        }
    }
}
