//! Real third-party MCP clients against `warden serve` with this repository's
//! own config.toml and actors/: the official Python SDK (PyPI `mcp`, driven
//! by tests/clients/python_client.py) and the MCP Inspector's CLI mode, over
//! stdio and over Streamable HTTP (`serve --http`).
//! `scripts/install-clients DIR` installs both at pinned versions; the tests
//! find them through WARDEN_CLIENTS_DIR and skip, saying why, where they are
//! not installed, unless WARDEN_REQUIRE_CLIENTS=1 (as in CI).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

/// The tools of the default config.
const DEFAULT_TOOLS: [&str; 5] = ["disk_usage", "dns_lookup", "echo", "list_dir", "status"];
/// One client run: launch warden, a session, shut it down.
const CLIENT_DEADLINE: Duration = Duration::from_secs(60);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `rel` inside WARDEN_CLIENTS_DIR once scripts/install-clients finished
/// there; `None` (the test skips) if not, or a panic if the clients are required.
pub fn installed(rel: &str) -> Option<PathBuf> {
    let found = match std::env::var_os("WARDEN_CLIENTS_DIR") {
        None => Err("WARDEN_CLIENTS_DIR is not set".to_string()),
        Some(dir) => {
            let dir = PathBuf::from(dir);
            let path = dir.join(rel);
            // The stamp is written last: without it the install is unfinished.
            if dir.join("versions").is_file() && path.exists() {
                Ok(path)
            } else {
                Err(format!(
                    "{} is not installed: run scripts/install-clients {}",
                    path.display(),
                    dir.display()
                ))
            }
        }
    };
    match found {
        Ok(path) => Some(path),
        Err(why) if std::env::var("WARDEN_REQUIRE_CLIENTS").as_deref() == Ok("1") => {
            panic!("WARDEN_REQUIRE_CLIENTS=1 but {why}")
        }
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// Logs and control sockets in a temp dir, so that running the repo's
/// config touches nothing in the repo or in the user's socket directory.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The environment of a client, which passes it on to the warden it launches.
    fn apply(&self, cmd: &mut Command) {
        cmd.env("WARDEN_LOG_DIR", self.dir.path().join("logs"))
            .env("WARDEN_CONTROL_DIR", self.dir.path().join("control"))
            .env("WARDEN_ACTORS_DIR", repo().join("actors"))
            // Few lines: the inspector pipes warden's stderr and never reads it.
            .env("WARDEN_LOG_STDERR", "warn")
            .env_remove("WARDEN_CONFIG");
    }

    /// The tools of the calls in warden's JSON log: proof that the session
    /// reached warden with this environment and that warden logged it.
    fn logged_calls(&self) -> BTreeSet<String> {
        let mut tools = BTreeSet::new();
        for e in std::fs::read_dir(self.dir.path().join("logs"))
            .expect("warden wrote no log directory: did the client pass WARDEN_LOG_DIR on?")
            .flatten()
        {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            for line in text.lines() {
                let Ok(v) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                if v["message"] == "call" {
                    tools.insert(v["tool"].as_str().unwrap_or_default().to_string());
                }
            }
        }
        tools
    }
}

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs a client to its end within CLIENT_DEADLINE; past it, the client and
/// everything it started (node's child CLI, warden) are killed together.
fn run(cmd: &mut Command) -> Run {
    let (status, stdout, stderr) = run_to_end(cmd, CLIENT_DEADLINE);
    Run {
        status,
        stdout,
        stderr,
    }
}

#[test]
fn the_python_sdk_runs_a_session() {
    let Some(python) = installed("venv/bin/python") else {
        return;
    };
    let scratch = Scratch::new();
    let mut cmd = Command::new(python);
    cmd.arg(repo().join("tests/clients/python_client.py"))
        .arg(WARDEN)
        .args(["serve", "--config"])
        .arg(repo().join("config.toml"));
    scratch.apply(&mut cmd);
    let r = run(&mut cmd);
    assert!(
        r.status.success(),
        "python_client.py failed ({}):\n{}{}",
        r.status,
        r.stdout,
        r.stderr
    );
    eprint!("{}", r.stderr);
    assert!(r.stderr.contains("python_client: ok"), "{}", r.stderr);

    let logged = scratch.logged_calls();
    for t in DEFAULT_TOOLS {
        assert!(
            logged.contains(t),
            "no call of {t} in warden's log: {logged:?}"
        );
    }
}

/// One `mcp-inspector --cli` run against warden: `args` choose the method.
/// The launcher takes `--config` for its own (a JSON file of servers) and
/// hands everything but `--` on to its CLI, so warden's `--config` comes
/// after `--`, last, where neither parses it.
fn inspector(bin: &Path, scratch: &Scratch, args: &[&str]) -> Run {
    let mut cmd = Command::new(bin);
    cmd.arg("--cli")
        .arg(WARDEN)
        .arg("serve")
        .args(args)
        .arg("--")
        .arg("--config")
        .arg(repo().join("config.toml"));
    scratch.apply(&mut cmd);
    run(&mut cmd)
}

/// The JSON the inspector printed for a run that must succeed.
fn inspector_json(bin: &Path, scratch: &Scratch, args: &[&str]) -> Value {
    let r = inspector(bin, scratch, args);
    assert!(
        r.status.success(),
        "inspector {args:?} failed ({}):\n{}{}",
        r.status,
        r.stdout,
        r.stderr
    );
    serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("inspector {args:?} printed no JSON ({e}):\n{}", r.stdout))
}

/// A tool call through the inspector that must succeed; the result's text.
fn inspector_call_ok(bin: &Path, scratch: &Scratch, tool: &str, args: &[&str]) -> String {
    let mut argv = vec!["--method", "tools/call", "--tool-name", tool];
    for a in args {
        argv.extend(["--tool-arg", a]);
    }
    let result = inspector_json(bin, scratch, &argv);
    assert_ne!(
        result["isError"],
        Value::Bool(true),
        "{tool} {args:?}: {result}"
    );
    text(&result)
}

#[test]
fn the_inspector_cli_lists_and_calls_every_tool() {
    let Some(bin) = installed("inspector/node_modules/.bin/mcp-inspector") else {
        return;
    };
    let scratch = Scratch::new();

    let list = inspector_json(&bin, &scratch, &["--method", "tools/list"]);
    let names: BTreeSet<&str> = list["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {list}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for t in DEFAULT_TOOLS {
        assert!(names.contains(t), "{t} missing from {names:?}");
    }

    let echoed = inspector_call_ok(&bin, &scratch, "echo", &["message=hi from the inspector"]);
    assert_eq!(echoed, "hi from the inspector");
    let status: Value =
        serde_json::from_str(&inspector_call_ok(&bin, &scratch, "status", &[])).unwrap();
    assert!(status["actors"].is_array(), "{status}");
    let df = inspector_call_ok(&bin, &scratch, "disk_usage", &["path=/tmp"]);
    assert!(df.lines().count() >= 2, "{df}");
    let hosts = inspector_call_ok(&bin, &scratch, "dns_lookup", &["name=localhost"]);
    assert!(hosts.contains("localhost"), "{hosts}");
    // No path: /usr/share itself.
    let listing = inspector_call_ok(&bin, &scratch, "list_dir", &[]);
    assert!(!listing.trim().is_empty());

    // Arguments the schema refuses: an error result the inspector prints as such.
    let bad = inspector_json(
        &bin,
        &scratch,
        &[
            "--method",
            "tools/call",
            "--tool-name",
            "disk_usage",
            "--tool-arg",
            "path=tmp",
        ],
    );
    assert_eq!(kind(&bad), "validation", "{bad}");

    // An unknown tool: a JSON-RPC error, which the inspector reports by its exit code.
    let r = inspector(
        &bin,
        &scratch,
        &["--method", "tools/call", "--tool-name", "no_such_tool"],
    );
    assert!(!r.status.success(), "{}", r.stdout);
    assert!(
        r.stderr.contains("-32602") && r.stderr.contains("no_such_tool"),
        "{}",
        r.stderr
    );

    let logged = scratch.logged_calls();
    for t in DEFAULT_TOOLS {
        assert!(
            logged.contains(t),
            "no call of {t} in warden's log: {logged:?}"
        );
    }
}

#[test]
fn the_inspector_cli_speaks_streamable_http_to_warden() {
    let Some(bin) = installed("inspector/node_modules/.bin/mcp-inspector") else {
        return;
    };
    let scratch = Scratch::new();
    let port = crate::http::free_port();
    let mut serve = Command::new(WARDEN);
    serve
        .args(["serve", "--http", &format!("127.0.0.1:{port}"), "--config"])
        .arg(repo().join("config.toml"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    scratch.apply(&mut serve);
    let mut warden = serve.spawn().unwrap();
    let listening = eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let url = format!("http://127.0.0.1:{port}/mcp");
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(&bin);
        cmd.args(["--cli", &url, "--transport", "http"]).args(args);
        run(&mut cmd)
    };
    let list = listening.then(|| cli(&["--method", "tools/list"]));
    let echo = listening.then(|| {
        cli(&[
            "--method",
            "tools/call",
            "--tool-name",
            "echo",
            "--tool-arg",
            "message=over http",
        ])
    });
    // SIGTERM, not SIGKILL: warden flushes its log as it exits, and the
    // last call's line is read below (a kill loses up to 100 ms of lines).
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(warden.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let exited = eventually(Duration::from_secs(10), || {
        warden.try_wait().is_ok_and(|s| s.is_some())
    });
    if !exited {
        let _ = warden.kill();
    }
    let _ = warden.wait();
    assert!(listening, "warden did not listen on {url}");
    let (list, echo) = (list.unwrap(), echo.unwrap());
    assert!(list.status.success(), "{}{}", list.stdout, list.stderr);
    let tools: Value = serde_json::from_str(&list.stdout).unwrap();
    let names: BTreeSet<&str> = tools["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {tools}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for t in DEFAULT_TOOLS {
        assert!(names.contains(t), "{t} missing from {names:?}");
    }
    assert!(echo.status.success(), "{}{}", echo.stdout, echo.stderr);
    let result: Value = serde_json::from_str(&echo.stdout).unwrap();
    assert_eq!(text(&result), "over http", "{result}");
    assert!(scratch.logged_calls().contains("echo"));
}
