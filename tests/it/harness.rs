//! Starts the real `warden serve` with a temporary config and speaks
//! newline-delimited JSON-RPC over its pipes.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const WARDEN: &str = env!("CARGO_BIN_EXE_warden");
pub const FIXTURE: &str = env!("CARGO_BIN_EXE_warden-fixture");
/// The longest any single answer may take in these tests.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(15);

/// A temporary config directory: config.toml plus actors/.
pub struct Setup {
    pub dir: tempfile::TempDir,
}

impl Setup {
    /// `config` is the text of config.toml (logs go to the temp dir unless it says otherwise).
    pub fn new(config: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("actors")).unwrap();
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        Setup { dir }
    }

    pub fn actor(self, name: &str, text: &str) -> Setup {
        std::fs::write(
            self.dir.path().join("actors").join(format!("{name}.toml")),
            text,
        )
        .unwrap();
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    pub fn start(self) -> Server {
        self.start_with_env(&[])
    }

    /// Starts warden with extra environment variables.
    pub fn start_with_env(self, env: &[(&str, &str)]) -> Server {
        let config = self.config_path();
        Server::spawn(self, &config, env, &[])
    }

    /// `warden check` of this config: its exit code and what it printed.
    pub fn check(&self) -> (Option<i32>, String) {
        let out = Command::new(WARDEN)
            .args(["check", "--config"])
            .arg(self.config_path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Starts `warden serve --http 127.0.0.1:PORT` (stdout stays silent).
    pub fn start_http(self, port: u16) -> Server {
        let config = self.config_path();
        let addr = format!("127.0.0.1:{port}");
        Server::spawn(self, &config, &[], &["--http", &addr])
    }
}

/// A command tool running the fixture with the given argv template.
pub fn fixture_tool(name: &str, args: &[&str], extra: &str, input: &str) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "name = \"{name}\"\nkind = \"command\"\ncommand = \"{FIXTURE}\"\nargs = [{}]\n{extra}\n[input]\ntype = \"object\"\nadditionalProperties = false\n{input}\n",
        args.join(", ")
    )
}

pub struct Server {
    pub setup: Setup,
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Value>,
    /// Messages read but not yet asked for.
    pending: VecDeque<Value>,
    next_id: i64,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// Lines of warden's stderr a `Server` keeps for its test to read.
const STDERR_KEPT: usize = 10_000;

impl Server {
    fn spawn(setup: Setup, config: &Path, env: &[(&str, &str)], args: &[&str]) -> Server {
        let mut cmd = Command::new(WARDEN);
        cmd.args(["serve", "--config"])
            .arg(config)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The control socket goes into the test's own directory unless the
        // config or the test says where: a killed instance leaves nothing
        // behind in the shared default directory.
        let names_control = std::fs::read_to_string(config)
            .unwrap_or_default()
            .contains("[control]")
            || env.iter().any(|(k, _)| *k == "WARDEN_CONTROL_DIR");
        if !names_control {
            cmd.env("WARDEN_CONTROL_DIR", setup.path().join("control"));
        }
        let mut child = cmd.spawn().expect("warden starts");
        // warden's stderr goes through the test's captured output: shown
        // when the test fails, not mixed into a passing run's.
        let stderr = child.stderr.take().unwrap();
        let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = kept.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[warden] {line}");
                let mut kept = keep.lock().unwrap();
                if kept.len() < STDERR_KEPT {
                    kept.push(line);
                }
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("stdout carried a non-JSON line ({e}): {line:?}"));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Server {
            setup,
            stdin: child.stdin.take(),
            child,
            lines: rx,
            pending: VecDeque::new(),
            next_id: 1,
            stderr: kept,
        }
    }

    /// The lines warden wrote to stderr so far (the first `STDERR_KEPT`).
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    pub fn send(&mut self, msg: &Value) {
        let mut line = serde_json::to_vec(msg).unwrap();
        line.push(b'\n');
        self.send_raw(&line);
    }

    /// Sends a request; returns its id.
    pub fn request(&mut self, method: &str, params: Value) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    pub fn notify(&mut self, method: &str, params: Value) {
        self.send(&json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    /// The next message matching `want`, within `deadline`; others stay pending.
    pub fn next_matching(
        &mut self,
        deadline: Duration,
        want: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        if let Some(i) = self.pending.iter().position(&want) {
            return self.pending.remove(i);
        }
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if want(&v) => return Some(v),
                Ok(v) => self.pending.push_back(v),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    return None
                }
            }
        }
    }

    /// The messages matching `want` that arrived before the ones asked for
    /// so far (read, not yet taken), in order; newer ones are left unread.
    pub fn arrived_before(&mut self, want: impl Fn(&Value) -> bool) -> Vec<Value> {
        let (taken, kept): (VecDeque<Value>, VecDeque<Value>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|v| want(v));
        self.pending = kept;
        taken.into()
    }

    /// The response to request `id` (a result or an error object).
    pub fn response(&mut self, id: i64) -> Value {
        self.next_matching(ANSWER_DEADLINE, |v| {
            v["id"] == json!(id) && v.get("method").is_none()
        })
        .unwrap_or_else(|| panic!("no response to request {id} within {ANSWER_DEADLINE:?}"))
    }

    pub fn initialize(&mut self) -> Value {
        let id = self.request(
            "initialize",
            json!({
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "warden-tests", "version": "0"}
            }),
        );
        let r = self.response(id);
        self.notify("notifications/initialized", json!({}));
        r
    }

    /// Starts a tools/call; returns its id.
    pub fn start_call(&mut self, tool: &str, args: Value) -> i64 {
        self.request("tools/call", json!({"name": tool, "arguments": args}))
    }

    /// Calls a tool and returns the JSON-RPC response.
    pub fn call(&mut self, tool: &str, args: Value) -> Value {
        let id = self.start_call(tool, args);
        self.response(id)
    }

    /// Calls a tool that must answer with a result; returns the result.
    pub fn call_result(&mut self, tool: &str, args: Value) -> Value {
        let r = self.call(tool, args);
        assert!(r.get("result").is_some(), "expected a result, got {r}");
        r["result"].clone()
    }

    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Waits for warden to exit.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < end,
                "warden did not exit within {deadline:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The JSON objects in warden's log files.
    pub fn log_lines(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.setup.path().join("logs")) else {
            return out;
        };
        for e in entries.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            out.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
        }
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The text of a tool result's first content block.
pub fn text(result: &Value) -> String {
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The error kind of an `isError` result.
pub fn kind(result: &Value) -> String {
    assert_eq!(
        result["isError"],
        json!(true),
        "expected an error result, got {result}"
    );
    result["structuredContent"]["kind"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Is a process with this pid alive (and not a zombie)?
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the command name in parentheses.
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .chars()
                .next();
            state != Some('Z') && state != Some('X')
        }
        Err(_) => false,
    }
}

/// Every process as (pid, the fields of /proc/PID/stat after the command
/// name: state, ppid, pgrp, ...).
fn processes() -> Vec<(i32, Vec<String>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let after = stat.rsplit(')').next().unwrap_or("");
        out.push((pid, after.split_whitespace().map(str::to_string).collect()));
    }
    out
}

/// The pids whose stat field `index` (after the name) is `value`.
fn processes_where(index: usize, value: i32) -> Vec<i32> {
    processes()
        .into_iter()
        .filter(|(_, f)| f.get(index).and_then(|v| v.parse::<i32>().ok()) == Some(value))
        .map(|(pid, _)| pid)
        .collect()
}

/// Direct children of `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    processes_where(1, pid)
}

/// Live processes whose process group is `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    processes_where(2, pgid)
        .into_iter()
        .filter(|&p| alive(p))
        .collect()
}

/// Polls `cond` until it holds or `deadline` passes.
pub fn eventually(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads a pid file the fixture writes, waiting for it to appear.
pub fn read_pids(path: &Path) -> Vec<i32> {
    assert!(
        eventually(Duration::from_secs(10), || std::fs::read_to_string(path)
            .is_ok_and(|s| !s.trim().is_empty())),
        "the fixture never wrote {}",
        path.display()
    );
    std::fs::read_to_string(path)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

pub const QUIET_CONFIG: &str = "[log]\nstderr = \"warn\"\n";

/// The tools supervisor's children in a `status --json` answer.
pub fn tool_lines(status: &Value) -> Vec<Value> {
    status["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "tools")
        .unwrap()["children"]
        .as_array()
        .unwrap()
        .clone()
}

/// One tool's line in the `status` builtin's answer (the server must have a `status` tool).
pub fn tool_status(s: &mut Server, tool: &str) -> Value {
    let status: Value = serde_json::from_str(&text(&s.call_result("status", json!({})))).unwrap();
    let tools = status["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "tools")
        .expect("a tools node");
    tools["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["tool"] == tool)
        .cloned()
        .unwrap_or_else(|| panic!("no {tool} in {status:#}"))
}

/// Runs a command to its end within `deadline`: (status, stdout, stderr).
/// It gets a process group of its own, so that past the deadline it and
/// everything it started are killed together, and the test fails.
pub fn run_to_end(cmd: &mut Command, deadline: Duration) -> (ExitStatus, String, String) {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let read_all = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = read_all(Box::new(child.stdout.take().unwrap()));
    let err = read_all(Box::new(child.stderr.take().unwrap()));
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= end {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
            // The readers are left behind: a grandchild may still hold the pipes.
            panic!("{what} did not finish within {deadline:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

/// A small HTTP server in Python on a loopback port it picks itself (the
/// script prints the port on its first line), ended when dropped.
pub struct PyServer {
    child: Child,
    pub port: u16,
}

impl PyServer {
    pub fn start(script: &str, args: &[&std::path::Path]) -> PyServer {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 for a test server");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let port = line.trim().parse().expect("the test server's port");
        PyServer { child, port }
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command tool `name` sleeping `ms` milliseconds, writing its pid to
/// the file `pidfile` names first (when it names one).
pub fn pidfile_sleep_tool(name: &str, extra: &str) -> String {
    fixture_tool(
        name,
        &["sleep", "{ms}", "{pidfile}"],
        extra,
        "required = [\"ms\"]\nproperties.ms = { type = \"integer\" }\nproperties.pidfile = { type = \"string\" }",
    )
}

/// A command tool `name` sleeping `ms` milliseconds (then printing "slept").
pub fn sleep_tool(name: &str, extra: &str) -> String {
    fixture_tool(
        name,
        &["sleep", "{ms}"],
        extra,
        "required = [\"ms\"]\nproperties.ms = { type = \"integer\" }",
    )
}

/// A command tool `flood` writing `bytes` of output, capped at 64 KiB: it
/// reports progress as the output streams.
pub fn flood_tool() -> String {
    fixture_tool(
        "flood",
        &["flood", "{bytes}"],
        "max_output = \"64KiB\"",
        "properties.bytes = { type = \"integer\" }",
    )
}
