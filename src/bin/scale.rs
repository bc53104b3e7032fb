//! warden-scale: replicas of `warden serve --http` behind haproxy on
//! loopback, as `scripts/scale` runs them.
//!
//! warden-scale [--short] [--rounds N] [--json] [--write FILE] [--keep]
//!              [--warden PATH] [--haproxy PATH]
//!
//! Three replicas, each on its own loopback port, behind one haproxy running
//! deploy/haproxy/haproxy.cfg (the documented configuration) that checks
//! `/ready`, keeps a legacy session on the replica that opened it (a
//! stick table learnt from the `Mcp-Session-Id` of each answer), and retries
//! elsewhere only what cannot have run: a connection that failed, or a 503
//! (warden draining). Two parts:
//!
//! 1. **Throughput**: stateless 2026-07-28 echo calls from a fixed number of
//!    client threads, directly to one replica and through haproxy to 1, 2
//!    and 3, in rounds of a rotating order: medians of calls/s, p50, and CPU
//!    per call of the replicas, haproxy and the client.
//! 2. **Chaos**: stateless clients and legacy sessions (2025-11-25) at once,
//!    echo and 150 ms calls, while every replica in turn gets SIGTERM (it
//!    must drain and exit 0) and is started again, then one is SIGKILLed and
//!    started again. Every call is booked by when it was sent and answered,
//!    and how: ok, an error (by kind), or lost (no answer at all). A legacy
//!    call answered 404 (its session ended with its replica) opens a new
//!    session and is sent again, as the spec tells a client to; the 404s are
//!    counted apart.
//!
//! It fails (exit 1) unless: no call is lost; no call fails while replicas
//! are restarted in turn; every drained replica exits 0; the calls that
//! fail around the SIGKILL were all in flight when it landed; haproxy marks
//! the killed replica down.

#[path = "chaos/http.rs"]
#[allow(dead_code)]
mod http;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const USAGE: &str = "usage: warden-scale [--short] [--rounds N] [--json] [--write FILE] [--keep] \
                     [--warden PATH] [--haproxy PATH]";
/// How long a replica may take to answer `/ready` 200 after its start.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// How long a drained replica may take to exit after SIGTERM.
const EXIT_DEADLINE: Duration = Duration::from_secs(20);
/// deploy/haproxy/haproxy.cfg, which this runs as users would.
const HAPROXY_CFG: &str = include_str!("../../deploy/haproxy/haproxy.cfg");
/// haproxy's health check here: every 200 ms; haproxy.cfg's `fall 2` marks a
/// replica down after two failures.
const CHECK_INTER_MS: u64 = 200;
const CHECK_FALL: u64 = 2;
/// How long haproxy may take to mark a dead replica down: its checks, and
/// as much again for a loaded machine.
const DOWN_DEADLINE: Duration = Duration::from_millis(2 * CHECK_INTER_MS * CHECK_FALL);
/// What warden keeps its port open after SIGTERM: well past one check.
const DRAIN_NOTICE: &str = "1s";
/// The slow calls of the chaos part.
const SLOW_MS: u64 = 150;
/// A call's deadline, past which it counts as lost.
const CALL_DEADLINE: Duration = Duration::from_secs(10);
/// Replicas at most.
const REPLICAS: usize = 3;

struct Opts {
    short: bool,
    /// Rounds of the throughput part; each setting once a round.
    rounds: usize,
    /// Where to write the JSON report too (beside the table on stdout).
    write: Option<PathBuf>,
    json: bool,
    keep: bool,
    warden: PathBuf,
    haproxy: PathBuf,
}

fn parse_args() -> Result<Opts, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut opts = Opts {
        short: false,
        rounds: 0,
        write: None,
        json: false,
        keep: false,
        warden: exe.with_file_name("warden"),
        haproxy: PathBuf::from("haproxy"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--short" => opts.short = true,
            "--rounds" => {
                opts.rounds = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or(USAGE)?
            }
            "--write" => opts.write = Some(args.next().ok_or(USAGE)?.into()),
            "--json" => opts.json = true,
            "--keep" => opts.keep = true,
            "--warden" => opts.warden = args.next().ok_or(USAGE)?.into(),
            "--haproxy" => opts.haproxy = args.next().ok_or(USAGE)?.into(),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if opts.rounds == 0 {
        opts.rounds = if opts.short { 1 } else { 5 };
    }
    Ok(opts)
}

fn main() {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("warden-scale: {e}");
            std::process::exit(2);
        }
    };
    let dir = std::env::temp_dir().join(format!("warden-scale-{}", std::process::id()));
    let outcome = std::fs::create_dir_all(&dir)
        .map_err(|e| format!("making {}: {e}", dir.display()))
        .and_then(|()| run(&opts, &dir));
    if opts.keep {
        eprintln!("warden-scale: kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    match outcome {
        Ok(report) => {
            if let Some(file) = &opts.write {
                if let Err(e) = std::fs::write(file, format!("{}\n", report.json)) {
                    eprintln!("warden-scale: writing {}: {e}", file.display());
                }
            }
            if opts.json {
                println!("{}", report.json);
            } else {
                print!("{}", report.text);
            }
            std::process::exit(if report.passed { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("warden-scale: {e}");
            std::process::exit(1);
        }
    }
}

// ---------------------------------------------------------------------------
// Replicas and the load balancer

/// One `warden serve --http` on its own loopback port.
struct Replica {
    name: String,
    port: u16,
    config: PathBuf,
    warden: PathBuf,
    child: Option<Child>,
}

impl Replica {
    fn new(i: usize, dir: &Path, warden: &Path) -> Result<Replica, String> {
        let name = format!("r{}", i + 1);
        let config = dir.join(format!("{name}.toml"));
        let text = format!(
            "[server]\nactors_dir = \"actors\"\nshutdown_grace = \"10s\"\n\
             [http]\ndrain_notice = \"{DRAIN_NOTICE}\"\nmax_sessions = 1024\n\
             [log]\ndir = \"logs-{name}\"\nstderr = \"warn\"\n\
             [control]\nsocket = \"off\"\n"
        );
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
        Ok(Replica {
            name,
            port: http::free_port()?,
            config,
            warden: warden.to_path_buf(),
            child: None,
        })
    }

    fn start(&mut self) -> Result<(), String> {
        let child = Command::new(&self.warden)
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--http")
            .arg(format!("127.0.0.1:{}", self.port))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.warden.display()))?;
        self.child = Some(child);
        let until = Instant::now() + READY_DEADLINE;
        while get(self.port, "/ready") != Some(200) {
            if Instant::now() >= until {
                return Err(format!(
                    "{} was not ready within {READY_DEADLINE:?}",
                    self.name
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    /// Waits (with a deadline) for the replica to exit: how, and when.
    fn wait_exit(&mut self) -> Result<ExitStatus, String> {
        let mut child = self.child.take().ok_or("not running")?;
        let until = Instant::now() + EXIT_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status);
            }
            if Instant::now() >= until {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not exit within {EXIT_DEADLINE:?}",
                    self.name
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// CPU time used so far (user + system), from /proc.
    fn cpu(&self) -> Duration {
        self.pid().map_or(Duration::ZERO, proc_cpu)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// haproxy in front of the first `n` replicas.
struct Balancer {
    port: u16,
    socket: PathBuf,
    child: Child,
}

impl Balancer {
    fn start(haproxy: &Path, dir: &Path, replicas: &[Replica]) -> Result<Balancer, String> {
        let port = http::free_port()?;
        let socket = dir.join(format!("haproxy-{port}.sock"));
        let servers: String = replicas
            .iter()
            .map(|r| format!("    server {} 127.0.0.1:{} check\n", r.name, r.port))
            .collect();
        // The documented configuration itself, with this run's servers.
        let config = format!("{HAPROXY_CFG}{servers}");
        let file = dir.join(format!("haproxy-{port}.cfg"));
        std::fs::write(&file, config).map_err(|e| e.to_string())?;
        let env = [
            ("WARDEN_LB_BIND", format!("127.0.0.1:{port}")),
            ("WARDEN_LB_STATS", socket.display().to_string()),
            ("WARDEN_LB_CHECK", format!("{CHECK_INTER_MS}ms")),
        ];
        let check = Command::new(haproxy)
            .envs(env.clone())
            .arg("-c")
            .arg("-q")
            .arg("-f")
            .arg(&file)
            .output()
            .map_err(|e| format!("running {}: {e}", haproxy.display()))?;
        if !check.status.success() {
            return Err(format!(
                "haproxy refuses its configuration: {}",
                String::from_utf8_lossy(&check.stderr)
            ));
        }
        let child = Command::new(haproxy)
            .envs(env)
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", haproxy.display()))?;
        let b = Balancer {
            port,
            socket,
            child,
        };
        // Ready once it listens and sees every replica up.
        let until = Instant::now() + READY_DEADLINE;
        loop {
            let up = b
                .states()
                .map(|s| s.values().all(|v| v == "UP") && s.len() == replicas.len());
            if up == Ok(true) {
                return Ok(b);
            }
            if Instant::now() >= until {
                return Err(format!("haproxy did not see the replicas up: {up:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Each server's state as haproxy's stats socket says (UP, DOWN, ...).
    fn states(&self) -> Result<BTreeMap<String, String>, String> {
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket)
            .map_err(|e| format!("haproxy's stats socket: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"show stat\n").map_err(|e| e.to_string())?;
        let mut csv = String::new();
        s.read_to_string(&mut csv).map_err(|e| e.to_string())?;
        let mut lines = csv.lines();
        let head: Vec<&str> = lines
            .next()
            .unwrap_or("")
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| head.iter().position(|h| *h == name);
        let (px, sv, st) = (col("pxname"), col("svname"), col("status"));
        let (Some(px), Some(sv), Some(st)) = (px, sv, st) else {
            return Err(format!("unexpected stats: {csv:?}"));
        };
        Ok(lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.get(px) == Some(&"wardens") && f.get(sv) != Some(&"BACKEND"))
            .filter_map(|f| Some((f.get(sv)?.to_string(), f.get(st)?.to_string())))
            .collect())
    }

    fn cpu(&self) -> Duration {
        proc_cpu(self.child.id() as i32)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One GET on a new connection: the status, or None when nothing answers.
fn get(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// A process's user + system CPU time so far.
fn proc_cpu(pid: i32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name, which may hold spaces: utime, stime are 14, 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_micros(ticks * 1_000_000 / tick)
}

/// This process's own CPU time (the clients).
fn self_cpu() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF).map_or(Duration::ZERO, |u| {
        let us = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
        Duration::from_micros(us(u.user_time()) + us(u.system_time()))
    })
}

fn write_actors(dir: &Path, warden: &Path) -> Result<(), String> {
    let actors = dir.join("actors");
    std::fs::create_dir_all(&actors).map_err(|e| e.to_string())?;
    let fixture = warden.with_file_name("warden-fixture");
    if !fixture.exists() {
        return Err(format!("no {} (cargo build --bins)", fixture.display()));
    }
    let files = [
        ("echo.toml", "name = \"echo\"\nkind = \"builtin\"\n".to_string()),
        (
            "slow.toml",
            format!(
                "name = \"slow\"\nkind = \"command\"\ncommand = \"{}\"\nargs = [\"sleep\", \"{{ms}}\"]\n\
                 concurrency = 64\nqueue = 256\n\
                 [input]\ntype = \"object\"\nadditionalProperties = false\nrequired = [\"ms\"]\n\
                 properties.ms = {{ type = \"integer\" }}\n",
                fixture.display()
            ),
        ),
    ];
    for (name, text) in files {
        std::fs::write(actors.join(name), text).map_err(|e| e.to_string())?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Load

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stateless,
    Legacy,
}

/// One call as its client saw it.
struct Booked {
    kind: Kind,
    sent: Instant,
    done: Instant,
    /// "ok", an error kind, "connection closed" (no answer: the connection
    /// broke off), or "lost" (no answer by the deadline).
    outcome: String,
    /// For a lost call, what the client saw instead.
    why: Option<String>,
    served_by: Option<String>,
}

#[derive(Default)]
struct Ledger {
    calls: Vec<Booked>,
    /// Legacy calls answered 404 because their session had ended.
    session_ended: u64,
}

/// What an answer to a call with this `message` means.
fn judge(answer: &http::Answer, message: &str) -> String {
    if answer.status != 200 {
        return format!("http {}", answer.status);
    }
    let Some(last) = answer.messages.last() else {
        return "lost".into();
    };
    let Ok(msg) = serde_json::from_str::<Value>(&last.0) else {
        return "bad JSON".into();
    };
    if let Some(e) = msg.get("error") {
        return format!("JSON-RPC {}", e["code"]);
    }
    let result = &msg["result"];
    if result["isError"] == json!(true) {
        return format!(
            "tool error {}",
            result["structuredContent"]["kind"].as_str().unwrap_or("?")
        );
    }
    let text = result["content"][0]["text"].as_str().unwrap_or("");
    if text.trim_end() == message {
        "ok".into()
    } else {
        format!("wrong answer {text:?}")
    }
}

struct Load {
    port: u16,
    stop: AtomicBool,
    next_id: AtomicU64,
    ledger: Mutex<Ledger>,
    /// Every `slow_every`-th call is the slow tool (0: never).
    slow_every: u64,
}

impl Load {
    fn worker(&self, kind: Kind) {
        let mut conn = http::Conn::new(self.port);
        let mut session = None;
        let mut n = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            n += 1;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (tool, args, expect) = if self.slow_every > 0 && n.is_multiple_of(self.slow_every) {
                ("slow", json!({"ms": SLOW_MS}), "slept".to_string())
            } else {
                let m = format!("m{id}");
                ("echo", json!({"message": m}), m)
            };
            let sent = Instant::now();
            let mut why = None;
            let (outcome, served_by) = loop {
                let mode = match kind {
                    Kind::Stateless => http::Mode::Stateless,
                    Kind::Legacy => {
                        if session.is_none() {
                            match http::open_session(self.port) {
                                Ok(s) => session = Some(s),
                                Err(e) => break (format!("no session: {e}"), None),
                            }
                        }
                        http::Mode::Session(session.clone().expect("just opened"))
                    }
                };
                let msg = http::call_message(id, tool, args.clone(), &mode);
                match conn.post(&msg, &mode, CALL_DEADLINE) {
                    Ok(a) if a.status == 404 && kind == Kind::Legacy => {
                        // Its session ended with its replica: a new one.
                        self.ledger.lock().unwrap().session_ended += 1;
                        session = None;
                    }
                    Ok(a) => break (judge(&a, &expect), a.served_by),
                    // Broken off at once (the replica died under it) is a
                    // failure the client knows of; no answer by the deadline
                    // is a lost call.
                    Err(e) => {
                        why = Some(e);
                        let outcome = if sent.elapsed() >= CALL_DEADLINE {
                            "lost"
                        } else {
                            "connection closed"
                        };
                        break (outcome.to_string(), None);
                    }
                }
            };
            self.ledger.lock().unwrap().calls.push(Booked {
                kind,
                sent,
                done: Instant::now(),
                outcome,
                why,
                served_by,
            });
        }
    }

    fn start(self: &Arc<Self>, kinds: &[Kind]) -> Vec<std::thread::JoinHandle<()>> {
        kinds
            .iter()
            .map(|&k| {
                let load = self.clone();
                std::thread::spawn(move || load.worker(k))
            })
            .collect()
    }
}

fn new_load(port: u16, slow_every: u64) -> Arc<Load> {
    Arc::new(Load {
        port,
        stop: AtomicBool::new(false),
        next_id: AtomicU64::new(1),
        ledger: Mutex::new(Ledger::default()),
        slow_every,
    })
}

// ---------------------------------------------------------------------------
// The run

struct Report {
    text: String,
    json: Value,
    passed: bool,
}

fn run(opts: &Opts, dir: &Path) -> Result<Report, String> {
    write_actors(dir, &opts.warden)?;
    let mut replicas = (0..REPLICAS)
        .map(|i| Replica::new(i, dir, &opts.warden))
        .collect::<Result<Vec<_>, _>>()?;
    for r in &mut replicas {
        r.start()?;
    }
    let (step, clients) = if opts.short {
        (Duration::from_secs(3), 16)
    } else {
        (Duration::from_secs(10), 32)
    };
    // Every setting side by side: one haproxy each for 1, 2 and 3 replicas
    // (idle while another is measured), and rounds in a rotating order.
    let balancers = (1..=REPLICAS)
        .map(|n| Balancer::start(&opts.haproxy, dir, &replicas[..n]))
        .collect::<Result<Vec<_>, _>>()?;
    let mut measured: Vec<Vec<Value>> = vec![Vec::new(); REPLICAS + 1];
    for round in 0..opts.rounds {
        for i in 0..=REPLICAS {
            // n = 0: straight to the first replica, no haproxy.
            let n = (i + round) % (REPLICAS + 1);
            let balancer = n.checked_sub(1).map(|b| &balancers[b]);
            let port = balancer.map_or(replicas[0].port, |b| b.port);
            measured[n].push(throughput(port, &replicas, balancer, clients, step)?);
        }
    }
    drop(balancers);
    let mut text = format!(
        "throughput: {clients} clients, one stateless echo call at a time each, {step:?} per row, \
         medians of {} rounds\n{:<22} {:>9} {:>9} {:>14} {:>15} {:>14}\n",
        opts.rounds, "", "calls/s", "p50 µs", "warden µs/call", "haproxy µs/call", "client µs/call"
    );
    let fields = [
        "calls_per_s",
        "p50_us",
        "warden_cpu_us_per_call",
        "haproxy_cpu_us_per_call",
        "client_cpu_us_per_call",
    ];
    let mut rows = Vec::new();
    for (n, runs) in measured.iter().enumerate() {
        let mut row = json!({
            "replicas": n.max(1),
            "haproxy": n > 0,
            "rounds": runs,
            "calls": runs.iter().filter_map(|r| r["calls"].as_u64()).sum::<u64>(),
        });
        for f in fields {
            row[f] = json!(median(runs.iter().filter_map(|r| r[f].as_f64())));
        }
        let label = if n == 0 {
            "1 replica, direct".to_string()
        } else {
            format!("{n} behind haproxy")
        };
        let v = |f: &str| row[f].as_f64().unwrap_or(0.0);
        text.push_str(&format!(
            "{label:<22} {:>9.0} {:>9.0} {:>14.1} {:>15.1} {:>14.1}\n",
            v(fields[0]),
            v(fields[1]),
            v(fields[2]),
            v(fields[3]),
            v(fields[4]),
        ));
        rows.push(row);
    }
    let chaos = chaos(opts, dir, &mut replicas)?;
    text.push('\n');
    text.push_str(&chaos.text);
    Ok(Report {
        text,
        json: json!({"throughput": rows, "chaos": chaos.json, "passed": chaos.passed}),
        passed: chaos.passed,
    })
}

/// The median of some figures (0 for none).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn throughput(
    port: u16,
    replicas: &[Replica],
    balancer: Option<&Balancer>,
    clients: usize,
    step: Duration,
) -> Result<Value, String> {
    let load = new_load(port, 0);
    let workers = load.start(&vec![Kind::Stateless; clients]);
    std::thread::sleep(Duration::from_secs(1));
    let cpu = || {
        (
            replicas.iter().map(Replica::cpu).sum::<Duration>(),
            balancer.map_or(Duration::ZERO, Balancer::cpu),
            self_cpu(),
        )
    };
    let (w0, h0, c0) = cpu();
    let (t0, before) = (Instant::now(), load.ledger.lock().unwrap().calls.len());
    std::thread::sleep(step);
    let (w1, h1, c1) = cpu();
    let (elapsed, after) = (t0.elapsed(), load.ledger.lock().unwrap().calls.len());
    load.stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let ledger = load.ledger.lock().unwrap();
    let measured = &ledger.calls[before..after];
    let failed = measured.iter().filter(|c| c.outcome != "ok").count();
    if failed > 0 {
        return Err(format!(
            "{failed} of {} throughput calls failed",
            measured.len()
        ));
    }
    let calls = measured.len().max(1) as f64;
    let mut lat: Vec<u128> = measured
        .iter()
        .map(|c| (c.done - c.sent).as_micros())
        .collect();
    lat.sort_unstable();
    let per_call = |d: Duration| d.as_secs_f64() * 1e6 / calls;
    Ok(json!({
        "calls": measured.len(),
        "calls_per_s": calls / elapsed.as_secs_f64(),
        "p50_us": lat.get(lat.len() / 2).copied().unwrap_or(0),
        "warden_cpu_us_per_call": per_call(w1 - w0),
        "haproxy_cpu_us_per_call": per_call(h1 - h0),
        "client_cpu_us_per_call": per_call(c1 - c0),
    }))
}

struct Chaos {
    text: String,
    json: Value,
    passed: bool,
}

/// Calls answered in each quarter second since the load started, ok and
/// not, and the events at their times (ms).
fn timeline(calls: &[Booked], start: Instant, events: &[(Instant, String)]) -> Value {
    const BIN_MS: u128 = 250;
    let end = calls.iter().map(|c| c.done).max().unwrap_or(start);
    let bins = (end.duration_since(start).as_millis() / BIN_MS + 1) as usize;
    let (mut ok, mut failed) = (vec![0u64; bins], vec![0u64; bins]);
    for c in calls {
        let bin = (c.done.saturating_duration_since(start).as_millis() / BIN_MS) as usize;
        let v = if c.outcome == "ok" {
            &mut ok
        } else {
            &mut failed
        };
        v[bin.min(bins - 1)] += 1;
    }
    let events: Vec<Value> = events
        .iter()
        .map(|(t, what)| json!({"ms": t.saturating_duration_since(start).as_millis() as u64, "event": what}))
        .collect();
    json!({"bin_ms": BIN_MS as u64, "ok": ok, "failed": failed, "events": events})
}

/// Tallies of the calls `pick` selects: outcome → count.
fn tally<'a>(calls: impl Iterator<Item = &'a Booked>) -> BTreeMap<String, u64> {
    let mut t = BTreeMap::new();
    for c in calls {
        *t.entry(c.outcome.clone()).or_insert(0) += 1;
    }
    t
}

fn chaos(opts: &Opts, dir: &Path, replicas: &mut [Replica]) -> Result<Chaos, String> {
    let balancer = Balancer::start(&opts.haproxy, dir, replicas)?;
    let (stateless, legacy) = if opts.short { (6, 6) } else { (12, 12) };
    let load = new_load(balancer.port, 4);
    let mut kinds = vec![Kind::Stateless; stateless];
    kinds.extend(vec![Kind::Legacy; legacy]);
    let load_start = Instant::now();
    let workers = load.start(&kinds);
    // What happened when, for the timeline.
    let mut events: Vec<(Instant, String)> = Vec::new();
    let settle = Duration::from_secs(if opts.short { 1 } else { 3 });
    std::thread::sleep(settle);

    // Every replica in turn: SIGTERM, drained, exit 0, started again.
    let roll_start = Instant::now();
    let mut drains = Vec::new();
    for r in replicas.iter_mut() {
        let t = Instant::now();
        events.push((t, format!("SIGTERM {}", r.name)));
        r.signal(nix::sys::signal::Signal::SIGTERM);
        let status = r.wait_exit()?;
        let drained = t.elapsed();
        r.start()?;
        events.push((Instant::now(), format!("{} ready", r.name)));
        // Back in haproxy's rotation (rise 2) before the next one goes.
        let until = Instant::now() + READY_DEADLINE;
        while balancer.states()?.get(&r.name).map(String::as_str) != Some("UP") {
            if Instant::now() >= until {
                return Err(format!("haproxy did not see {} up again", r.name));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        drains.push(json!({
            "replica": r.name, "exit": status.code(), "drain_ms": drained.as_millis() as u64,
        }));
        std::thread::sleep(settle);
    }

    // One SIGKILL. A request that reaches the replica between the signal
    // and its end (accepted by the kernel, never read) dies with it: the
    // calls in flight are those sent before it was gone. Then: until haproxy
    // marks it down, and how long that took.
    let victim = 1;
    let kill_at = Instant::now();
    events.push((kill_at, format!("SIGKILL {}", replicas[victim].name)));
    replicas[victim].signal(nix::sys::signal::Signal::SIGKILL);
    let killed_exit = replicas[victim].wait_exit()?;
    let gone_at = Instant::now();
    let until = Instant::now() + Duration::from_secs(10);
    let down_after = loop {
        let state = balancer.states()?;
        if state
            .get(&replicas[victim].name)
            .is_some_and(|s| s.starts_with("DOWN"))
        {
            break Some(kill_at.elapsed());
        }
        if Instant::now() >= until {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if let Some(d) = down_after {
        events.push((kill_at + d, format!("{} down", replicas[victim].name)));
    }
    std::thread::sleep(settle);
    replicas[victim].start()?;
    events.push((Instant::now(), format!("{} ready", replicas[victim].name)));
    std::thread::sleep(settle);
    let kill_end = Instant::now();
    load.stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }

    let ledger = load.ledger.lock().unwrap();
    let calls = &ledger.calls;
    // A call still running at the kill belongs to the kill.
    let rolling: Vec<&Booked> = calls
        .iter()
        .filter(|c| c.done >= roll_start && c.done < kill_at)
        .collect();
    let around_kill: Vec<&Booked> = calls
        .iter()
        .filter(|c| c.done >= kill_at && c.sent < kill_end)
        .collect();
    let in_flight_at_kill = calls
        .iter()
        .filter(|c| c.sent <= gone_at && c.done >= kill_at)
        .count();
    let failed_at_kill: Vec<&&Booked> = around_kill.iter().filter(|c| c.outcome != "ok").collect();
    let failed_later = failed_at_kill.iter().filter(|c| c.sent > gone_at).count();
    let lost = calls.iter().filter(|c| c.outcome == "lost").count();
    let by_kind = |k: Kind| tally(calls.iter().filter(|c| c.kind == k));
    let roll_failed = rolling.iter().filter(|c| c.outcome != "ok").count();
    let drains_ok = drains.iter().all(|d| d["exit"] == json!(0));

    let mut checks = vec![
        ("no call lost", lost == 0),
        (
            "no call failed while replicas restarted in turn",
            roll_failed == 0,
        ),
        ("every drained replica exited 0", drains_ok),
        (
            "only calls in flight at the SIGKILL failed",
            failed_later == 0 && failed_at_kill.len() <= in_flight_at_kill,
        ),
        (
            "haproxy marked the killed replica down within its checks",
            down_after.is_some_and(|d| d <= DOWN_DEADLINE),
        ),
    ];
    if calls.is_empty() {
        checks.push(("calls were made", false));
    }
    let passed = checks.iter().all(|(_, ok)| *ok);

    let fmt = |t: &BTreeMap<String, u64>| {
        t.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let gone_ms = gone_at.duration_since(kill_at).as_secs_f64() * 1e3;
    let mut text = format!(
        "chaos: {stateless} stateless clients and {legacy} legacy sessions, 1 call in 4 sleeping {SLOW_MS} ms\n\
         calls sent: {}; stateless: {}; legacy: {}\n\
         legacy answers \"session ended\" (404, sent again in a new session): {}\n\
         rolling restart of {} replicas: {} calls, {}; drains: {}\n\
         SIGKILL of {} (gone {gone_ms:.1} ms after the signal): {} calls in flight, failed: {} ({}); killed exit {:?}; haproxy marked it down after {}\n",
        calls.len(),
        fmt(&by_kind(Kind::Stateless)),
        fmt(&by_kind(Kind::Legacy)),
        ledger.session_ended,
        drains.len(),
        rolling.len(),
        fmt(&tally(rolling.iter().copied())),
        drains
            .iter()
            .map(|d| format!("{} exit {} in {} ms", d["replica"].as_str().unwrap_or("?"), d["exit"], d["drain_ms"]))
            .collect::<Vec<_>>()
            .join(", "),
        replicas[victim].name,
        in_flight_at_kill,
        failed_at_kill.len(),
        fmt(&tally(failed_at_kill.iter().map(|c| **c))),
        killed_exit.code(),
        down_after.map_or("never".to_string(), |d| format!("{} ms", d.as_millis())),
    );
    let served: BTreeMap<String, u64> =
        calls
            .iter()
            .filter_map(|c| c.served_by.clone())
            .fold(BTreeMap::new(), |mut m, s| {
                *m.entry(s).or_insert(0) += 1;
                m
            });
    text.push_str(&format!("answered by: {}\n", fmt(&served)));
    // The failures themselves, by when they were sent (ms from the kill).
    let t0 = kill_at;
    for c in calls.iter().filter(|c| c.outcome != "ok").take(20) {
        let at = |t: Instant| match t.checked_duration_since(t0) {
            Some(d) => d.as_millis() as i64,
            None => -(t0.duration_since(t).as_millis() as i64),
        };
        text.push_str(&format!(
            "  failed: {} call sent at {} ms, answered at {} ms: {}{}\n",
            if c.kind == Kind::Stateless {
                "stateless"
            } else {
                "legacy"
            },
            at(c.sent),
            at(c.done),
            c.outcome,
            c.why.as_ref().map_or(String::new(), |w| format!(" ({w})")),
        ));
    }
    for (check, ok) in &checks {
        text.push_str(&format!("{} {check}\n", if *ok { "ok  " } else { "FAIL" }));
    }
    let json = json!({
        "calls": calls.len(),
        "lost": lost,
        "stateless": by_kind(Kind::Stateless),
        "legacy": by_kind(Kind::Legacy),
        "session_ended": ledger.session_ended,
        "rolling": {"calls": rolling.len(), "outcomes": tally(rolling.iter().copied()), "drains": drains},
        "kill": {
            "gone_after_ms": gone_ms,
            "in_flight": in_flight_at_kill,
            "failed": failed_at_kill.len(),
            "outcomes": tally(failed_at_kill.iter().map(|c| **c)),
            "down_after_ms": down_after.map(|d| d.as_millis() as u64),
        },
        "served_by": served,
        "timeline": timeline(calls, load_start, &events),
        "checks": checks.iter().map(|(c, ok)| json!({"check": c, "ok": ok})).collect::<Vec<_>>(),
    });
    Ok(Chaos { text, json, passed })
}
