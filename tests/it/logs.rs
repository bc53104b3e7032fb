//! `warden logs`: the tail of a real server's log files, filters, `--json`,
//! and `-f` following new lines and rotated files.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;

/// No test here may take longer than this.
const TEST_DEADLINE: Duration = Duration::from_secs(5);

const CONFIG: &str = "[log]\nstderr = \"warn\"\n[control]\nsocket = \"off\"\n";
const ECHO: &str = "name = \"echo\"\nkind = \"builtin\"\n";

/// Runs `warden logs --config <config> <args>` to its end; (exit code, stdout, stderr).
fn logs(config: &Path, args: &[&str]) -> (i32, String, String) {
    let (status, out, err) = run_to_end(
        Command::new(WARDEN)
            .arg("logs")
            .arg("--config")
            .arg(config)
            .args(args)
            .env_remove("NO_COLOR"),
        TEST_DEADLINE,
    );
    (status.code().unwrap_or(-1), out, err)
}

/// A `warden logs -f` running in the background, its stdout read by a thread.
struct Follower {
    child: Child,
    lines: Receiver<String>,
    end: Instant,
}

impl Follower {
    fn start(config: &Path, args: &[&str], end: Instant) -> Follower {
        let mut child = Command::new(WARDEN)
            .args(["logs", "-f", "--config"])
            .arg(config)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("warden logs -f starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Follower {
            child,
            lines: rx,
            end,
        }
    }

    /// The next line printed, before the test's deadline.
    fn next_line(&self) -> String {
        let left = self.end.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => panic!("no line from warden logs -f in time"),
            Err(RecvTimeoutError::Disconnected) => panic!("warden logs -f ended"),
        }
    }

    /// The messages of the next lines are `want`, in this order.
    fn expect(&self, want: &[&str]) {
        for w in want {
            let line = self.next_line();
            assert_eq!(message(&line), *w, "in {line:?}");
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The message of a readable line: `<timestamp> <level> <pid> <actor> <message> ...`.
fn message(line: &str) -> &str {
    line.split_whitespace().nth(4).unwrap_or_default()
}

/// `2026-11-22T04:41:49.909Z ...`
fn has_millisecond_timestamp(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 25 && b[10] == b'T' && b[19] == b'.' && &line[23..25] == "Z "
}

/// A server that answered three echo calls and then exited (its logs flushed).
fn server_after_echo_calls() -> Server {
    let mut s = Setup::new(CONFIG).actor("echo", ECHO).start();
    s.initialize();
    for i in 0..3 {
        s.call_result("echo", json!({"message": format!("hi {i}")}));
    }
    s.close_stdin();
    assert!(s.wait_exit(TEST_DEADLINE).success());
    s
}

#[test]
fn the_tail_of_a_real_servers_logs_filtered_readable_and_json() {
    let server = server_after_echo_calls();
    let config = server.setup.config_path();

    let (code, out, err) = logs(&config, &["--tool", "echo"]);
    assert_eq!(code, 0, "stderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for line in &lines {
        assert!(has_millisecond_timestamp(line), "{line:?}");
        // The level, the writer's pid, the actor, the message.
        let pid = server.pid().to_string();
        assert!(
            line.contains(&format!(" INFO  {pid:>7} transport  call ")),
            "{line:?}"
        );
        assert!(line.contains(" tool=echo "), "{line:?}");
        assert!(line.contains(" outcome=ok "), "{line:?}");
        assert!(!line.contains('\x1b'), "no colour into a pipe: {line:?}");
    }

    let (code, out, _) = logs(&config, &["--tool", "echo", "--json", "-n", "2"]);
    assert_eq!(code, 0);
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert_eq!(events.len(), 2, "{out}");
    for e in &events {
        assert_eq!(e["tool"], "echo");
        assert_eq!(e["message"], "call");
        assert_eq!(e["actor"], "transport");
    }
    let ids: Vec<&str> = events
        .iter()
        .map(|e| e["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["3", "4"], "the last two calls, oldest first");

    // Everything the server said, then the filters that leave nothing.
    let (code, out, _) = logs(&config, &["--actor", "transport", "--since", "1h"]);
    assert_eq!(code, 0);
    assert!(
        out.lines().filter(|l| message(l) == "call").count() == 3,
        "{out}"
    );
    let (code, out, _) = logs(&config, &["--level", "error"]);
    assert_eq!(code, 0);
    assert!(!out.lines().any(|l| message(l) == "call"), "{out}");
    let (code, out, _) = logs(&config, &["--tool", "nope"]);
    assert_eq!((code, out.as_str()), (0, ""));
}

#[test]
fn no_log_files_or_a_bad_config_is_exit_1() {
    let setup = Setup::new(CONFIG);
    let (code, out, err) = logs(&setup.config_path(), &[]);
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert!(err.contains("no log files in"), "{err}");

    std::fs::write(setup.config_path(), "[log]\ncolour = \"blue\"\n").unwrap();
    let (code, out, err) = logs(&setup.config_path(), &[]);
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert!(
        err.contains("log.colour") || err.contains("colour"),
        "{err}"
    );
}

#[test]
fn follow_shows_calls_as_they_happen() {
    let end = Instant::now() + TEST_DEADLINE;
    let mut s = Setup::new(CONFIG).actor("echo", ECHO).start();
    s.initialize();
    s.call_result("echo", json!({"message": "before"}));
    // The server flushes its log every 100 ms: wait for the first call's line.
    let config = s.setup.config_path();
    assert!(eventually(TEST_DEADLINE, || logs(
        &config,
        &["--tool", "echo"]
    )
    .1
    .contains("call")));
    let f = Follower::start(&config, &["--tool", "echo", "-n", "1"], end);
    let first = f.next_line();
    assert!(first.contains("call request_id=2 tool=echo"), "{first}");
    for id in 3..5 {
        s.call_result("echo", json!({"message": "after"}));
        let line = f.next_line();
        assert!(
            line.contains(&format!("call request_id={id} tool=echo outcome=ok")),
            "{line}"
        );
    }
}

fn event(minute: u32, msg: &str) -> String {
    format!(
        "{{\"pid\":4242,\"timestamp\":\"2026-01-01T00:{minute:02}:00.123456Z\",\"level\":\"INFO\",\"message\":\"{msg}\",\"actor\":\"transport\",\"tool\":\"echo\",\"target\":\"warden::transport\"}}\n"
    )
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[test]
fn follow_keeps_going_across_a_rotation() {
    let end = Instant::now() + TEST_DEADLINE;
    // No server: the files are written here, as the rolling appender would.
    let setup = Setup::new("[log]\ndir = \"logs\"\n");
    let dir = setup.path().join("logs");
    std::fs::create_dir(&dir).unwrap();
    let old = dir.join("warden.2026-01-01-00-00.log");
    let new = dir.join("warden.2026-01-01-00-01.log");
    append(&old, &(event(0, "m1") + &event(0, "m2")));

    let f = Follower::start(&setup.config_path(), &[], end);
    let first = f.next_line();
    assert_eq!(
        first,
        "2026-01-01T00:00:00.123Z INFO     4242 transport  m1 tool=echo"
    );
    f.expect(&["m2"]);

    // Appended lines; a line is printed once it is complete.
    let m4 = event(0, "m4");
    append(&old, &(event(0, "m3") + &m4[..20]));
    f.expect(&["m3"]);
    append(&old, &m4[20..]);
    f.expect(&["m4"]);

    // Rotation: the old file's last lines, then the new file's, in order.
    append(&old, &event(0, "m5"));
    append(&new, &(event(1, "m6") + "not json\n" + &event(1, "m7")));
    f.expect(&["m5", "m6", "m7"]);
    append(&new, &event(1, "m8"));
    f.expect(&["m8"]);
}

/// `warden logs --json` with no --config, run where there is no config.toml.
fn logs_outside(cwd: &Path, control: &Path, args: &[&str]) -> (i32, String, String) {
    let (status, out, err) = run_to_end(
        Command::new(WARDEN)
            .args(["logs", "--json"])
            .args(args)
            .current_dir(cwd)
            .env("WARDEN_CONTROL_DIR", control)
            .env_remove("WARDEN_CONFIG"),
        TEST_DEADLINE,
    );
    (status.code().unwrap_or(-1), out, err)
}

fn pids_of(out: &str) -> BTreeSet<i64> {
    out.lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["pid"]
                .as_i64()
                .unwrap()
        })
        .collect()
}

#[test]
fn logs_finds_a_running_instance_by_its_socket_and_pid_picks_one() {
    let shared = tempfile::tempdir().unwrap();
    let control = shared.path().join("control");
    let logs = shared.path().join("logs");
    let env = [
        ("WARDEN_CONTROL_DIR", control.to_str().unwrap()),
        ("WARDEN_LOG_DIR", logs.to_str().unwrap()),
    ];
    let start = || {
        let mut s = Setup::new("[log]\nstderr = \"off\"\n")
            .actor("echo", ECHO)
            .start_with_env(&env);
        s.initialize();
        s.call_result("echo", json!({"message": "logged"}));
        s
    };
    let (mut a, mut b) = (start(), start());
    let nowhere = tempfile::tempdir().unwrap();

    // Two instances: which one is for --pid to say.
    let (code, _, err) = logs_outside(nowhere.path(), &control, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&a.pid().to_string()) && err.contains(&b.pid().to_string()),
        "{err}"
    );

    // --pid: its files, only its events (the two share one directory).
    let a_pid = a.pid().to_string();
    assert!(eventually(TEST_DEADLINE, || {
        let (code, out, _) = logs_outside(nowhere.path(), &control, &["--pid", &a_pid]);
        code == 0 && out.lines().any(|l| l.contains("\"message\":\"call\""))
    }));
    let (_, out, _) = logs_outside(nowhere.path(), &control, &["--pid", &a_pid, "-n", "1000"]);
    assert_eq!(pids_of(&out), BTreeSet::from([a.pid() as i64]), "{out}");

    // One left: found without --pid; its directory holds both's events.
    b.close_stdin();
    assert!(b.wait_exit(TEST_DEADLINE).success());
    let (code, out, err) = logs_outside(nowhere.path(), &control, &["-n", "1000"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        pids_of(&out),
        BTreeSet::from([a.pid() as i64, b.pid() as i64]),
        "{out}"
    );

    // None left, and no config.toml here: one line saying what to pass.
    a.close_stdin();
    assert!(a.wait_exit(TEST_DEADLINE).success());
    let (code, out, err) = logs_outside(nowhere.path(), &control, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("no running warden found") && err.contains("--config"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
