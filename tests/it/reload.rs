//! Live reload: `warden reload`, SIGHUP and `[server] watch` change the tools
//! of a running instance while calls are in flight, and lose none.

use std::collections::{HashMap, HashSet};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::gateway::{listed_tools, mcp_actor, tool_names};
use crate::harness::*;

const CONFIG: &str =
    "[log]\nstderr = \"warn\"\n[supervisor]\nbackoff = { min = \"50ms\", max = \"200ms\" }\n";

pub fn ctl(setup: &Setup, args: &[&str]) -> Output {
    Command::new(WARDEN)
        .args(args)
        .env("WARDEN_CONTROL_DIR", setup.path().join("control"))
        .env_remove("WARDEN_CONFIG")
        .output()
        .unwrap()
}

fn status(setup: &Setup) -> Value {
    let out = ctl(setup, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn write_actor(setup: &Setup, name: &str, text: &str) {
    let dir = setup.path().join("actors");
    // As editors and deploy tools do: a new file renamed into place.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{name}.toml"))).unwrap();
}

fn remove_actor(setup: &Setup, name: &str) {
    std::fs::remove_file(setup.path().join("actors").join(format!("{name}.toml"))).unwrap();
}

fn sleeper(description: &str) -> String {
    fixture_tool(
        "slow",
        &["sleep", "{ms}"],
        &format!("description = \"{description}\"\nconcurrency = 8\nqueue = 64\n"),
        "required = [\"ms\"]\nproperties.ms = { type = \"string\" }",
    )
}

fn builtin(name: &str, which: &str) -> String {
    format!("name = \"{name}\"\nkind = \"builtin\"\nbuiltin = \"{which}\"\n")
}

/// Every response to `ids`, by id, read until each has one and then for
/// `linger` longer, so that a second answer would be seen.
fn answers(s: &mut Server, ids: &[i64], linger: Duration) -> HashMap<i64, Vec<Value>> {
    let want: HashSet<i64> = ids.iter().copied().collect();
    let mut got: HashMap<i64, Vec<Value>> = HashMap::new();
    let end = Instant::now() + ANSWER_DEADLINE;
    let is_ours = |v: &Value| {
        v.get("method").is_none() && v["id"].as_i64().is_some_and(|id| want.contains(&id))
    };
    while got.len() < want.len() {
        let left = end.saturating_duration_since(Instant::now());
        let Some(v) = s.next_matching(left, is_ours) else {
            break;
        };
        got.entry(v["id"].as_i64().unwrap()).or_default().push(v);
    }
    while let Some(v) = s.next_matching(linger, is_ours) {
        got.entry(v["id"].as_i64().unwrap()).or_default().push(v);
    }
    got
}

fn assert_each_answered_once(got: &HashMap<i64, Vec<Value>>, ids: &[i64], what: &str) {
    for id in ids {
        let n = got.get(id).map_or(0, Vec::len);
        assert_eq!(
            n,
            1,
            "{what}: request {id} got {n} answers: {:?}",
            got.get(id)
        );
    }
}

fn description(s: &mut Server, tool: &str) -> String {
    listed_tools(s)
        .iter()
        .find(|t| t["name"] == tool)
        .map(|t| t["description"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

fn list_changed(s: &mut Server, deadline: Duration) -> bool {
    s.next_matching(deadline, |v| {
        v["method"] == "notifications/tools/list_changed"
    })
    .is_some()
}

fn fx_pid(s: &mut Server) -> String {
    text(&s.call_result("fx_pid", json!({})))
}

fn setup() -> Setup {
    let setup = Setup::new(CONFIG)
        .actor("status", &builtin("status", "status"))
        .actor("slow", &sleeper("sleeps, first edition"))
        .actor("gone", &builtin("gone", "echo"));
    let fx = mcp_actor("fx", &[], "");
    setup.actor("fx", &fx)
}

#[test]
fn a_reload_under_load_adds_changes_and_removes_tools_and_refuses_a_broken_set() {
    let mut s = setup().start();
    s.initialize();
    crate::gateway::wait_serving(&mut s, "fx_echo", Duration::from_secs(10));
    let pid_before = fx_pid(&mut s);
    let actors_before = tool_lines(&status(&s.setup)).len();
    // An unchanged tool keeps its breaker (forced open here) across reloads.
    let forced = ctl(&s.setup, &["breaker", "status", "open"]);
    assert_eq!(forced.status.code(), Some(0), "{forced:?}");

    // 32 calls in flight on the first `slow`.
    let first: Vec<i64> = (0..32)
        .map(|_| s.start_call("slow", json!({"ms": "600"})))
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    write_actor(&s.setup, "slow", &sleeper("sleeps, second edition"));
    write_actor(&s.setup, "added", &builtin("added", "echo"));
    remove_actor(&s.setup, "gone");
    let out = ctl(&s.setup, &["reload"]);
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        printed.contains("generation 1 applied: 1 added, 1 changed, 1 removed, 2 unchanged"),
        "{printed}"
    );
    // 32 more, on the replacement, while the first 32 finish on the old one.
    let second: Vec<i64> = (0..32)
        .map(|_| s.start_call("slow", json!({"ms": "300"})))
        .collect();
    let gone = s.call_result("gone", json!({"message": "x"}));
    assert_eq!(kind(&gone), "unavailable", "{gone}");
    assert!(text(&gone).contains("removed by the reload"), "{gone}");

    let all: Vec<i64> = first.iter().chain(&second).copied().collect();
    let got = answers(&mut s, &all, Duration::from_millis(300));
    assert_each_answered_once(&got, &all, "calls across the reload");
    for id in &all {
        let r = &got[id][0];
        assert_eq!(text(&r["result"]), "slept\n", "request {id}: {r}");
    }
    assert!(list_changed(&mut s, Duration::from_secs(5)));
    let names = tool_names(&mut s);
    assert!(names.contains(&"added".to_string()), "{names:?}");
    assert!(!names.contains(&"gone".to_string()), "{names:?}");
    assert_eq!(description(&mut s, "slow"), "sleeps, second edition");
    assert_eq!(
        text(&s.call_result("added", json!({"message": "new"}))),
        "new"
    );
    // The MCP server did not change: the same child serves it.
    assert_eq!(fx_pid(&mut s), pid_before);

    // The replaced and removed actors stop once drained: one line per tool.
    assert!(
        eventually(Duration::from_secs(5), || {
            let lines = tool_lines(&status(&s.setup));
            lines.len() == actors_before && lines.iter().all(|l| l["state"] != "draining")
        }),
        "retired actors still listed: {:#?}",
        tool_lines(&status(&s.setup))
    );
    let st = status(&s.setup);
    assert_eq!(st["warden"]["reload"]["generation"], 1);
    let breaker = |st: &Value| {
        tool_lines(st)
            .into_iter()
            .find(|l| l["tool"] == "status")
            .unwrap()["breaker"]["state"]
            .clone()
    };
    assert_eq!(breaker(&st), "forced_open", "{st:#}");

    // A broken file: refused whole, named, and nothing changes.
    write_actor(
        &s.setup,
        "added",
        &builtin("added", "echo").replace("builtin", "bulitin"),
    );
    write_actor(&s.setup, "also", &builtin("also", "echo"));
    let out = ctl(&s.setup, &["reload"]);
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(printed.contains("added.toml"), "{printed}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("reload refused"),
        "{out:?}"
    );
    assert_eq!(
        text(&s.call_result("added", json!({"message": "still"}))),
        "still"
    );
    assert!(!tool_names(&mut s).contains(&"also".to_string()));
    let st = status(&s.setup);
    assert_eq!(st["warden"]["reload"]["generation"], 1);
    let refused = &st["warden"]["reload"]["refused"];
    assert_eq!(refused["trigger"], "control");
    assert!(refused["problems"][0]
        .as_str()
        .unwrap()
        .contains("added.toml"));
    let human = String::from_utf8_lossy(&ctl(&s.setup, &["status"]).stdout).to_string();
    assert!(human.contains("last reload refused"), "{human}");
    let metrics = String::from_utf8_lossy(&ctl(&s.setup, &["metrics"]).stdout).to_string();
    assert!(
        metrics.contains("warden_reloads_total{outcome=\"applied\"} 1")
            && metrics.contains("warden_reloads_total{outcome=\"refused\"} 1"),
        "{metrics}"
    );
    let logged = || {
        s.log_lines().into_iter().any(|l| {
            l["message"] == "reload refused"
                && l["problem"]
                    .as_str()
                    .is_some_and(|p| p.contains("added.toml"))
        })
    };
    assert!(
        eventually(Duration::from_secs(5), logged),
        "the refusal is logged with its problem"
    );

    // Fixed: the next reload applies, and the refusal leaves status.
    write_actor(&s.setup, "added", &builtin("added", "echo"));
    let out = ctl(&s.setup, &["reload"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let st = status(&s.setup);
    assert!(st["warden"]["reload"]["refused"].is_null(), "{st:#}");
    assert!(tool_names(&mut s).contains(&"also".to_string()));
}

#[test]
fn sighup_reloads_the_same_way() {
    let mut s = setup().start();
    s.initialize();
    crate::gateway::wait_serving(&mut s, "fx_echo", Duration::from_secs(10));
    // The server's own list change at start is not the one this test waits for.
    s.next_matching(Duration::from_millis(300), |_| false);
    s.arrived_before(|v| v["method"] == "notifications/tools/list_changed");
    write_actor(&s.setup, "added", &builtin("added", "echo"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    assert!(list_changed(&mut s, Duration::from_secs(10)));
    assert!(tool_names(&mut s).contains(&"added".to_string()));
    assert_eq!(
        text(&s.call_result("added", json!({"message": "hup"}))),
        "hup"
    );
    // SIGHUP used to end warden; it is still serving.
    assert!(s.child.try_wait().unwrap().is_none());
    let st = status(&s.setup);
    assert_eq!(st["warden"]["reload"]["generation"], 1);
}

#[test]
fn with_watch_a_changed_file_is_reloaded_alone() {
    let config = format!("{CONFIG}[server]\nwatch = true\n");
    let mut s = Setup::new(&config)
        .actor("status", &builtin("status", "status"))
        .start();
    s.initialize();
    // The watcher starts with the tree, before the first answer.
    s.call_result("status", json!({}));
    write_actor(&s.setup, "added", &builtin("added", "echo"));
    assert!(list_changed(&mut s, Duration::from_secs(10)));
    assert_eq!(text(&s.call_result("added", json!({"message": "w"}))), "w");
    // A broken edit is refused like any reload.
    write_actor(&s.setup, "added", "name = \"added\"\nkind = \"nope\"\n");
    assert!(
        eventually(Duration::from_secs(10), || {
            status(&s.setup)["warden"]["reload"]["refused"]["trigger"] == "watch"
        }),
        "the broken edit was not refused"
    );
    assert_eq!(
        text(&s.call_result("added", json!({"message": "w2"}))),
        "w2"
    );
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn descendants(pid: i32) -> Vec<i32> {
    let mut all = Vec::new();
    let mut next = vec![pid];
    while let Some(p) = next.pop() {
        for c in children_of(p) {
            all.push(c);
            next.push(c);
        }
    }
    all
}

/// 100 reloads in about 10 s, each changing a command tool and every tenth
/// adding or removing an MCP server, under a steady load of calls.
#[test]
fn a_storm_of_reloads_under_load_loses_nothing_and_leaks_nothing() {
    let setup = setup();
    let control = setup.path().join("control");
    let actors = setup.path().join("actors");
    let mut s = setup.start();
    s.initialize();
    crate::gateway::wait_serving(&mut s, "fx_echo", Duration::from_secs(10));
    let pid = s.pid();
    let baseline_children = descendants(pid).len();

    let storm = std::thread::spawn(move || {
        let mut rss_at_20 = 0;
        let t0 = Instant::now();
        for i in 0..100u32 {
            let edition = format!("edition {i}");
            let text = sleeper(&edition);
            std::fs::write(actors.join("slow.toml"), text).unwrap();
            if i % 10 == 5 {
                std::fs::write(actors.join("extra.toml"), mcp_actor("extra", &[], "")).unwrap();
            } else if i % 10 == 9 {
                let _ = std::fs::remove_file(actors.join("extra.toml"));
            }
            let out = Command::new(WARDEN)
                .arg("reload")
                .env("WARDEN_CONTROL_DIR", &control)
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(0), "reload {i}: {out:?}");
            if i == 19 {
                rss_at_20 = rss_kib(pid);
            }
            // About 10 s in all.
            let due = Duration::from_millis(100) * (i + 1);
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        (rss_at_20, t0.elapsed())
    });

    let mut sent = Vec::new();
    let mut answered = 0;
    while !storm.is_finished() {
        let ids: Vec<i64> = (0..16)
            .map(|i| match i % 4 {
                0 => s.start_call("slow", json!({"ms": "50"})),
                1 => s.start_call("fx_echo", json!({"message": "m"})),
                _ => s.start_call("gone", json!({"message": "m"})),
            })
            .collect();
        sent.extend_from_slice(&ids);
        let got = answers(&mut s, &ids, Duration::from_millis(5));
        assert_each_answered_once(&got, &ids, "calls during the storm");
        for (id, r) in &got {
            let r = &r[0];
            assert!(
                r["result"].is_object() && r["result"]["isError"] != json!(true),
                "request {id} failed during the storm: {r}"
            );
        }
        answered += got.len();
    }
    let (rss_at_20, took) = storm.join().unwrap();
    assert_eq!(sent.len(), answered);
    // No second answer to any of them came later either.
    let late = s.next_matching(Duration::from_millis(500), |v| {
        v.get("method").is_none() && v["id"].as_i64().is_some_and(|id| sent.contains(&id))
    });
    assert!(late.is_none(), "a second answer: {late:?}");
    // Retired actors and removed servers are gone.
    assert!(
        eventually(Duration::from_secs(10), || {
            let st = status(&s.setup);
            tool_lines(&st).len() == 4 && descendants(pid).len() == baseline_children
        }),
        "left behind: {:#?} / processes {:?} (at start {baseline_children})",
        tool_lines(&status(&s.setup)),
        descendants(pid)
    );
    assert_eq!(status(&s.setup)["warden"]["reload"]["generation"], 100);
    let rss_end = rss_kib(pid);
    eprintln!(
        "storm: 100 reloads in {took:?}, {answered} calls answered; RSS after 20 reloads {rss_at_20} KiB, after 100 {rss_end} KiB"
    );
    assert!(
        rss_end <= rss_at_20 + 4096,
        "RSS grew from {rss_at_20} KiB (20 reloads) to {rss_end} KiB (100)"
    );
}
