//! MCP servers behind warden (`kind = "mcp"`), with `warden-mcp-fixture` as
//! the downstream server: re-export, pass-through, supervision, no leftovers.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;

pub const MCP_FIXTURE: &str = env!("CARGO_BIN_EXE_warden-mcp-fixture");

/// An `mcp` actor file running the fixture with `flags`, plus `extra` lines.
pub fn mcp_actor(name: &str, flags: &[&str], extra: &str) -> String {
    let args: Vec<String> = flags.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "name = \"{name}\"\nkind = \"mcp\"\ncommand = \"{MCP_FIXTURE}\"\nargs = [{}]\n{extra}\n",
        args.join(", ")
    )
}

const CONFIG: &str =
    "[log]\nstderr = \"warn\"\n[supervisor]\nbackoff = { min = \"50ms\", max = \"200ms\" }\n";

/// A warden with the `status` builtin and one fixture server `fx` (which
/// appends its pid to `fx.pids` in the setup dir), initialized and serving.
fn start(flags: &[&str], extra: &str) -> Server {
    start_with(CONFIG, flags, extra)
}

fn start_with(config: &str, flags: &[&str], extra: &str) -> Server {
    let mut s = setup_fx(config, flags, extra).start();
    s.initialize();
    wait_serving(&mut s, "fx_echo", Duration::from_secs(10));
    s
}

fn setup_fx(config: &str, flags: &[&str], extra: &str) -> Setup {
    let setup = Setup::new(config).actor("status", "name = \"status\"\nkind = \"builtin\"\n");
    let pids = setup.path().join("fx.pids");
    let mut all = vec!["--pidfile", pids.to_str().unwrap()];
    all.extend_from_slice(flags);
    let actor = mcp_actor("fx", &all, extra);
    setup.actor("fx", &actor)
}

/// Calls `tool` (echo-like) until it answers, or panics after `deadline`.
pub fn wait_serving(s: &mut Server, tool: &str, deadline: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let r = s.call(tool, json!({"message": "ping"}));
        // A result without `isError` is a success too (servers may leave it out).
        if r["result"].is_object() && r["result"]["isError"] != json!(true) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < deadline,
            "`{tool}` did not serve within {deadline:?}: {r}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The tools a `tools/list` answers, as JSON.
pub fn listed_tools(s: &mut Server) -> Vec<Value> {
    let id = s.request("tools/list", json!({}));
    let r = s.response(id);
    r["result"]["tools"].as_array().unwrap().clone()
}

pub fn tool_names(s: &mut Server) -> Vec<String> {
    listed_tools(s)
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

fn pidfile(s: &Server) -> std::path::PathBuf {
    s.setup.path().join("fx.pids")
}

fn last_pid(path: &Path) -> i32 {
    *read_pids(path).last().unwrap()
}

/// Zombies whose parent is `pid`.
fn zombies_of(pid: i32) -> Vec<i32> {
    children_of(pid)
        .into_iter()
        .filter(|&c| {
            std::fs::read_to_string(format!("/proc/{c}/stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        })
        .collect()
}

#[test]
fn tools_prompts_and_resources_are_exported_and_results_pass_through() {
    let mut s = start(&[], "");
    let names = tool_names(&mut s);
    for t in [
        "status",
        "fx_echo",
        "fx_media",
        "fx_add",
        "fx_fail",
        "fx_progress",
    ] {
        assert!(names.contains(&t.to_string()), "{t} missing from {names:?}");
    }
    assert!(
        !names.contains(&"fx".to_string()),
        "the server itself is no tool"
    );
    assert!(!names.iter().any(|n| n == "echo"), "unprefixed names leak");

    // Every content type, unchanged.
    let media = s.call_result("fx_media", json!({}));
    let types: Vec<&str> = media["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["text", "image", "audio", "resource"], "{media}");
    assert_eq!(media["content"][1]["mimeType"], "image/png");
    assert_eq!(media["content"][3]["resource"]["text"], "embedded text");
    // structuredContent and isError pass through.
    let add = s.call_result("fx_add", json!({"a": 2, "b": 3}));
    assert_eq!(add["structuredContent"], json!({"sum": 5}), "{add}");
    let fail = s.call_result("fx_fail", json!({"message": "no such file"}));
    assert_eq!(fail["isError"], json!(true));
    assert_eq!(
        text(&fail),
        "no such file",
        "the server's own error, untouched"
    );
    assert!(fail.get("structuredContent").is_none(), "{fail}");
    // The server's refusal of bad arguments names what it objected to.
    let bad = s.call_result("fx_add", json!({"a": "two"}));
    assert_eq!(kind(&bad), "validation", "{bad}");

    // Prompts and resources, prefixed the same way.
    let id = s.request("prompts/list", json!({}));
    let prompts = s.response(id);
    assert_eq!(
        prompts["result"]["prompts"][0]["name"], "fx_greet",
        "{prompts}"
    );
    let id = s.request(
        "prompts/get",
        json!({"name": "fx_greet", "arguments": {"name": "Ada"}}),
    );
    let got = s.response(id);
    assert_eq!(
        got["result"]["messages"][0]["content"]["text"], "Hello, Ada!",
        "{got}"
    );
    let id = s.request("resources/list", json!({}));
    let res = s.response(id);
    assert_eq!(res["result"]["resources"][0]["name"], "fx_hello", "{res}");
    assert_eq!(res["result"]["resources"][0]["uri"], "fixture://hello");
    for (uri, want) in [
        ("fixture://hello", "hello from the fixture"),
        ("fixture://item/7", "item 7"),
    ] {
        let id = s.request("resources/read", json!({"uri": uri}));
        let r = s.response(id);
        assert_eq!(r["result"]["contents"][0]["text"], want, "{r}");
    }
    let id = s.request("resources/read", json!({"uri": "elsewhere://x"}));
    let r = s.response(id);
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("elsewhere://x"),
        "{r}"
    );
}

#[test]
fn progress_and_log_messages_are_forwarded_on_the_clients_terms() {
    let mut s = start(&[], "");
    let id = s.request(
        "tools/call",
        json!({"name": "fx_progress", "arguments": {"steps": 3, "ms": 5},
               "_meta": {"progressToken": "client-token-1"}}),
    );
    let r = s.response(id);
    assert_eq!(text(&r["result"]), "done 3", "{r}");
    let seen: Vec<f64> = s
        .arrived_before(|v| v["method"] == "notifications/progress")
        .iter()
        .map(|n| {
            assert_eq!(n["params"]["progressToken"], "client-token-1", "{n}");
            n["params"]["progress"].as_f64().unwrap()
        })
        .collect();
    assert_eq!(
        seen,
        [1.0, 2.0, 3.0],
        "every step, in order, on the client's token, before the answer"
    );
    let late = s.next_matching(Duration::from_millis(300), |v| {
        v["method"] == "notifications/progress"
    });
    assert!(late.is_none(), "progress after the answer: {late:?}");

    let r = s.call_result(
        "fx_log",
        json!({"message": "disk almost full", "level": "warning"}),
    );
    assert_eq!(text(&r), "logged");
    let n = s
        .next_matching(Duration::from_secs(5), |v| {
            v["method"] == "notifications/message"
        })
        .expect("the server's log message reaches the client");
    assert_eq!(n["params"]["level"], "warning", "{n}");
    assert_eq!(n["params"]["logger"], "fx/fixture", "{n}");
    assert_eq!(n["params"]["data"], "disk almost full", "{n}");
}

#[test]
fn a_cancelled_call_is_cancelled_downstream_too() {
    let mut s = start(&[], "");
    let marker = s.setup.path().join("cancelled");
    let id = s.start_call(
        "fx_sleep",
        json!({"ms": 20000, "marker": marker.to_str().unwrap()}),
    );
    std::thread::sleep(Duration::from_millis(300));
    s.notify("notifications/cancelled", json!({"requestId": id}));
    assert!(
        eventually(Duration::from_secs(5), || std::fs::read_to_string(&marker)
            .is_ok_and(|m| m.contains("cancelled"))),
        "the server never heard of the cancellation"
    );
    // The server is fine and serves on.
    assert_eq!(
        text(&s.call_result("fx_echo", json!({"message": "on"}))),
        "on"
    );
}

#[test]
fn sigkill_of_the_child_during_200_calls_answers_each_once_and_it_comes_back() {
    let mut s = start(&[], "concurrency = 64\nqueue = 256\n");
    let child = last_pid(&pidfile(&s));
    let ids: Vec<i64> = (0..200)
        .map(|_| s.start_call("fx_sleep", json!({"ms": 5000})))
        .collect();
    // Let the calls reach the server, then kill it under them.
    assert!(
        eventually(Duration::from_secs(5), || tool_status(&mut s, "fx")
            ["running"]
            .as_u64()
            .is_some_and(|n| n >= 32)),
        "the calls never reached the server"
    );
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for &id in &ids {
        let r = s.response(id);
        *kinds.entry(kind(&r["result"])).or_default() += 1;
    }
    let answered_in = killed.elapsed();
    assert!(
        answered_in < Duration::from_secs(3),
        "the 200 calls waited {answered_in:?} after the child died"
    );
    // The calls the server held say how it ended; the rest were refused, not lost.
    assert!(
        kinds.get("unavailable").copied().unwrap_or(0) >= 32,
        "{kinds:?}"
    );
    assert_eq!(kinds.values().sum::<usize>(), 200, "{kinds:?}");
    // Exactly one answer each: nothing more arrives for these ids.
    let again = s.next_matching(Duration::from_millis(500), |v| {
        v["id"].as_i64().is_some_and(|id| ids.contains(&id))
    });
    assert!(again.is_none(), "a second answer: {again:?}");
    // Back within its backoff (max 200ms) plus start-up.
    let back = wait_serving(&mut s, "fx_echo", Duration::from_secs(5));
    println!("answered 200 calls {answered_in:?} after SIGKILL ({kinds:?}); serving again {back:?} later");
    assert_ne!(last_pid(&pidfile(&s)), child, "a new process serves");
    assert!(!alive(child));
    assert!(
        zombies_of(s.pid()).is_empty(),
        "zombies: {:?}",
        zombies_of(s.pid())
    );
    let st = tool_status(&mut s, "fx");
    assert_eq!(st["restarts"], 1, "{st}");
    assert!(
        st["last_error"].as_str().unwrap().contains("signal 9"),
        "{st}"
    );
}

#[test]
fn sigkill_of_warden_leaves_no_process_of_any_child_behind() {
    let setup = Setup::new(CONFIG);
    let pids = setup.path().join("all.pids");
    let mut setup = setup;
    for name in ["a", "b", "c"] {
        let actor = mcp_actor(
            name,
            &["--pidfile", pids.to_str().unwrap(), "--grandchild"],
            "",
        );
        setup = setup.actor(name, &actor);
    }
    let mut s = setup.start();
    s.initialize();
    for t in ["a_echo", "b_echo", "c_echo"] {
        wait_serving(&mut s, t, Duration::from_secs(10));
    }
    let all = read_pids(&pids);
    assert_eq!(all.len(), 6, "three servers and what each started: {all:?}");
    assert!(all.iter().all(|&p| alive(p)));
    s.child.kill().unwrap();
    let _ = s.child.wait();
    let gone = eventually(Duration::from_secs(1), || all.iter().all(|&p| !alive(p)));
    let left: Vec<i32> = all.iter().copied().filter(|&p| alive(p)).collect();
    assert!(
        gone,
        "left running a second after warden's SIGKILL: {left:?}"
    );
}

#[test]
fn a_server_that_stops_reading_is_found_by_ping_and_restarted() {
    let mut s = start(&[], "ping_every = \"200ms\"\nping_timeout = \"200ms\"\n");
    let child = last_pid(&pidfile(&s));
    let t0 = Instant::now();
    let r = s.call_result("fx_wedge", json!({}));
    assert_eq!(kind(&r), "unavailable", "{r}");
    assert!(text(&r).contains("missed 2 pings"), "{}", text(&r));
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    wait_serving(&mut s, "fx_echo", Duration::from_secs(5));
    assert!(
        eventually(Duration::from_secs(2), || !alive(child)),
        "the wedged process is still there"
    );
    assert!(eventually(Duration::from_secs(2), || s
        .log_lines()
        .iter()
        .any(|l| l["message"] == "MCP server is wedged; restarting it")));
}

#[test]
fn a_changed_tool_list_is_relisted_and_the_client_told() {
    let mut s = start(&[], "");
    assert!(!tool_names(&mut s).contains(&"fx_extra".to_string()));
    assert_eq!(
        text(&s.call_result("fx_change_tools", json!({}))),
        "tools changed"
    );
    s.next_matching(Duration::from_secs(5), |v| {
        v["method"] == "notifications/tools/list_changed"
    })
    .expect("warden tells its client");
    assert!(
        eventually(Duration::from_secs(5), || tool_names(&mut s)
            .contains(&"fx_extra".to_string())),
        "fx_extra never appeared"
    );
    assert_eq!(text(&s.call_result("fx_extra", json!({}))), "extra");
}

#[test]
fn start_up_failures_are_reported_and_never_take_warden_down() {
    let mut s = Setup::new(CONFIG)
        .actor("status", "name = \"status\"\nkind = \"builtin\"\n")
        .actor("echo", "name = \"echo\"\nkind = \"builtin\"\n")
        .actor(
            "missing",
            "name = \"missing\"\nkind = \"mcp\"\ncommand = \"/nonexistent/server\"\n",
        )
        .actor(
            "dies",
            &mcp_actor("dies", &["--exit-on-initialize", "7"], ""),
        )
        .actor(
            "noisy",
            &mcp_actor("noisy", &["--garbage-first", "--stderr-at-start", "3"], ""),
        )
        .start();
    s.initialize();
    // Garbage before the handshake is skipped; the server works.
    wait_serving(&mut s, "noisy_echo", Duration::from_secs(10));
    assert_eq!(text(&s.call_result("echo", json!({"message": "up"}))), "up");
    let missing = tool_status(&mut s, "missing");
    assert_eq!(missing["state"], "unavailable", "{missing}");
    assert!(missing["reason"]
        .as_str()
        .unwrap()
        .contains("/nonexistent/server"));
    assert_eq!(missing["name"], "server:missing");
    // One that dies in `initialize` is retried under its budget, then failed.
    assert!(
        eventually(Duration::from_secs(10), || tool_status(&mut s, "dies")
            ["state"]
            == "failed"),
        "{}",
        tool_status(&mut s, "dies")
    );
    let dies = tool_status(&mut s, "dies");
    assert!(
        dies["reason"].as_str().unwrap().contains("status 7"),
        "{dies}"
    );
    assert!(
        dies["retry_in_ms"].as_u64().unwrap() > 60_000,
        "cool-off: {dies}"
    );
    // Garbage on stdout mid-session is skipped too.
    let r = s.call_result("noisy_garbage", json!({}));
    assert_eq!(text(&r), "garbage sent", "{r}");
    assert_eq!(
        text(&s.call_result("noisy_echo", json!({"message": "still"}))),
        "still"
    );
    assert!(
        eventually(Duration::from_secs(2), || s
            .log_lines()
            .iter()
            .any(
                |l| l["stderr"] == "fixture stderr line 3" && l["actor"] == "server:noisy"
            )),
        "the server's stderr is in the log, tagged"
    );
}

#[test]
fn restart_types_decide_whether_an_ended_server_comes_back() {
    let setup = Setup::new(CONFIG)
        .actor("status", "name = \"status\"\nkind = \"builtin\"\n")
        .actor("perm", &mcp_actor("perm", &[], ""))
        .actor(
            "trans",
            &mcp_actor("trans", &[], "restart = \"transient\"\n"),
        )
        .actor("temp", &mcp_actor("temp", &[], "restart = \"temporary\"\n"));
    let mut s = setup.start();
    s.initialize();
    for t in ["perm_echo", "trans_echo", "temp_echo"] {
        wait_serving(&mut s, t, Duration::from_secs(10));
    }
    // A clean exit: permanent comes back, transient stays down.
    for t in ["perm_crash", "trans_crash"] {
        let r = s.call_result(t, json!({"code": 0}));
        assert_eq!(kind(&r), "unavailable", "{r}");
        assert!(text(&r).contains("exited with status 0"), "{r}");
    }
    // A crash: temporary stays down.
    let r = s.call_result("temp_crash", json!({"code": 3}));
    assert!(text(&r).contains("status 3"), "{r}");
    wait_serving(&mut s, "perm_echo", Duration::from_secs(5));
    for server in ["trans", "temp"] {
        assert!(
            eventually(Duration::from_secs(5), || tool_status(&mut s, server)
                ["state"]
                == "stopped"),
            "{}",
            tool_status(&mut s, server)
        );
        let r = s.call_result(&format!("{server}_echo"), json!({"message": "x"}));
        assert_eq!(kind(&r), "unavailable", "{r}");
    }
}

#[test]
fn secret_environment_values_never_reach_the_log_or_status() {
    let secret = "s3cr3t-value-9f8e7d";
    let mut s = start(
        &["--env-to-stderr", "API_TOKEN"],
        &format!("env = {{ API_TOKEN = \"{secret}\" }}\n"),
    );
    let status = text(&s.call_result("status", json!({})));
    assert!(!status.contains(secret));
    assert!(
        eventually(Duration::from_secs(5), || s
            .log_lines()
            .iter()
            .any(|l| l["stderr"] == "API_TOKEN=[redacted]")),
        "the line is logged, redacted"
    );
    let dir = s.setup.path().join("logs");
    for f in std::fs::read_dir(dir).unwrap().flatten() {
        let text = std::fs::read_to_string(f.path()).unwrap();
        assert!(
            !text.contains(secret),
            "{} has the secret",
            f.path().display()
        );
    }
}

#[test]
fn a_server_over_its_own_memory_budget_is_restarted() {
    let config = format!("{CONFIG}[memory]\nsample_every = \"100ms\"\n");
    let mut s = start_with(&config, &[], "memory = \"64MiB\"\n");
    let child = last_pid(&pidfile(&s));
    let r = s.call_result("fx_leak", json!({"mib": 80}));
    // Killed after answering, or (a sample landing mid-allocation) during the
    // call, which then says why.
    assert!(
        text(&r) == "holding 80 MiB"
            || (kind(&r) == "unavailable" && text(&r).contains("64.0 MiB budget")),
        "{r}"
    );
    assert!(
        eventually(Duration::from_secs(5), || !alive(child)),
        "the server over its budget still runs"
    );
    wait_serving(&mut s, "fx_echo", Duration::from_secs(5));
    let st = tool_status(&mut s, "fx");
    assert!(
        st["last_error"].as_str().unwrap().contains("budget"),
        "the reason names the budget: {st}"
    );
    let status: Value = serde_json::from_str(&text(&s.call_result("status", json!({})))).unwrap();
    let actions = status["health"]["recovery"]["actions"].as_array().unwrap();
    assert!(
        actions
            .iter()
            .any(|a| a["action"] == "restart" && a["target"] == format!("server:fx pid {child}")),
        "{actions:?}"
    );
}

#[test]
fn warden_kill_of_a_server_actor_kills_its_process_and_it_is_restarted() {
    let tmp = tempfile::tempdir().unwrap();
    // warden makes the directory itself, private.
    let ctl_dir = tmp.path().join("ctl");
    let config = format!("{CONFIG}[control]\nsocket = {ctl_dir:?}\n");
    let mut s = start_with(&config, &[], "");
    let child = last_pid(&pidfile(&s));
    let id = s.start_call("fx_sleep", json!({"ms": 20000}));
    assert!(eventually(Duration::from_secs(5), || tool_status(
        &mut s, "fx"
    )["running"]
        == 1));
    let out = std::process::Command::new(WARDEN)
        .args(["kill", "server:fx"])
        .env("WARDEN_CONTROL_DIR", &ctl_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = s.response(id);
    assert_eq!(kind(&r["result"]), "unavailable", "{r}");
    assert!(
        eventually(Duration::from_secs(2), || !alive(child)),
        "the killed server's process lives on"
    );
    wait_serving(&mut s, "fx_echo", Duration::from_secs(5));
    let st = tool_status(&mut s, "fx");
    assert_eq!(st["restarts"], 1, "{st}");
    assert_ne!(st["server"]["pid"], json!(child), "{st}");
}

#[test]
fn a_hung_call_times_out_and_is_cancelled_downstream() {
    let mut s = start(&[], "timeout = \"500ms\"\n");
    let t0 = std::time::Instant::now();
    let r = s.call_result("fx_hang", json!({}));
    assert_eq!(kind(&r), "timeout", "{r}");
    assert!(text(&r).contains("cancelled downstream"), "{r}");
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    // The server itself is fine: only that call was given up.
    assert_eq!(
        text(&s.call_result("fx_echo", json!({"message": "fine"}))),
        "fine"
    );
    assert_eq!(tool_status(&mut s, "fx")["restarts"], 0);
}

#[test]
fn a_stderr_flood_is_rate_limited_and_the_server_keeps_serving() {
    let mut s = start(&[], "");
    let r = s.call_result("fx_flood_stderr", json!({"lines": 50000}));
    assert_eq!(text(&r), "flooded 50000", "{r}");
    assert_eq!(
        text(&s.call_result("fx_echo", json!({"message": "up"}))),
        "up"
    );
    // Counted in the log, once a second.
    let dropped = |s: &Server| -> u64 {
        s.log_lines()
            .iter()
            .filter(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("server stderr lines dropped"))
            })
            .map(|l| l["dropped"].as_u64().unwrap_or(0))
            .sum()
    };
    assert!(
        eventually(Duration::from_secs(5), || dropped(&s) > 40000),
        "{} dropped lines counted",
        dropped(&s)
    );
    let logged = s
        .log_lines()
        .iter()
        .filter(|l| l["message"] == "server stderr")
        .count();
    assert!(logged < 2000, "{logged} stderr lines logged");
}

#[test]
fn at_shutdown_a_server_gets_its_stdin_closed_and_exits_on_its_own() {
    let setup = Setup::new(CONFIG);
    let marker = setup.path().join("exited");
    let actor = mcp_actor("fx", &["--on-clean-exit", marker.to_str().unwrap()], "");
    let mut s = setup.actor("fx", &actor).start();
    s.initialize();
    wait_serving(&mut s, "fx_echo", Duration::from_secs(10));
    s.close_stdin();
    assert_eq!(s.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap_or_default(),
        "clean exit\n",
        "the server was killed instead of being let go"
    );
}

#[test]
fn a_server_failed_past_its_budget_is_tried_again_after_the_cooloff() {
    let config = "[log]\nstderr = \"warn\"\n[supervisor]\nmax_restarts = 1\nbackoff = { min = \"20ms\", max = \"50ms\" }\ncooloff = \"1s\"\n";
    let mut s = Setup::new(config)
        .actor("status", "name = \"status\"\nkind = \"builtin\"\n")
        .actor(
            "dies",
            &mcp_actor("dies", &["--exit-on-initialize", "4"], ""),
        )
        .start();
    s.initialize();
    assert!(
        eventually(Duration::from_secs(5), || tool_status(&mut s, "dies")
            ["state"]
            == "failed"),
        "{}",
        tool_status(&mut s, "dies")
    );
    let r = s.call_result("dies_anything", json!({}));
    assert_eq!(kind(&r), "unavailable", "{r}");
    assert!(
        r["structuredContent"]["retry_after_ms"].as_u64().unwrap() <= 1000,
        "{r}"
    );
    let before = tool_status(&mut s, "dies")["restarts"].as_u64().unwrap();
    // After the cool-off it is started again with a fresh budget (and fails again).
    assert!(
        eventually(Duration::from_secs(5), || tool_status(&mut s, "dies")
            ["restarts"]
            .as_u64()
            .unwrap()
            > before),
        "never tried again: {}",
        tool_status(&mut s, "dies")
    );
}

#[test]
fn endless_pagination_fails_the_server_not_warden() {
    let mut s = Setup::new(CONFIG)
        .actor("echo", "name = \"echo\"\nkind = \"builtin\"\n")
        .actor("status", "name = \"status\"\nkind = \"builtin\"\n")
        .actor("same", &mcp_actor("same", &["--endless-tools", "same"], ""))
        .actor("deep", &mcp_actor("deep", &["--endless-tools", "new"], ""))
        .start();
    s.initialize();
    let said = |s: &mut Server, tool: &str, want: &str| {
        let st = tool_status(s, tool);
        [&st["last_error"], &st["reason"]]
            .iter()
            .any(|v| v.as_str().is_some_and(|t| t.contains(want)))
    };
    for (tool, want) in [
        ("same", "gave the cursor \"again\" twice"),
        ("deep", "more than 1000 pages"),
    ] {
        assert!(
            eventually(Duration::from_secs(20), || said(&mut s, tool, want)),
            "{tool}: {}",
            tool_status(&mut s, tool)
        );
    }
    // warden itself serves on, in bounded memory.
    assert_eq!(text(&s.call_result("echo", json!({"message": "up"}))), "up");
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{}/status", s.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(rss_kib < 200 * 1024, "RSS {rss_kib} KiB");
}

#[test]
fn a_servers_log_messages_are_cut_and_blanked_like_its_stderr() {
    let secret = "hunter2-very-secret";
    let mut s = start(&[], &format!("env = {{ API_TOKEN = \"{secret}\" }}"));
    let huge = "x".repeat(4 << 20);
    for message in [format!("token is {secret}"), huge] {
        let r = s.call_result("fx_log", json!({"message": message, "level": "warning"}));
        assert_eq!(text(&r), "logged", "{r}");
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        let n = s
            .next_matching(Duration::from_secs(5), |v| {
                v["method"] == "notifications/message"
            })
            .expect("the server's log message reaches the client");
        got.push(n["params"]["data"].as_str().unwrap().to_string());
    }
    assert_eq!(got[0], "token is [redacted]");
    assert!(
        got[1].len() < 4096 && got[1].ends_with("bytes cut)"),
        "{}",
        &got[1][..100]
    );
    s.close_stdin();
    assert!(s.wait_exit(Duration::from_secs(15)).success());
    let logged: String = s.log_lines().iter().map(|l| l.to_string()).collect();
    assert!(!logged.contains(secret), "the secret reached the log");
    assert!(logged.len() < (1 << 20), "{} bytes of log", logged.len());
}

#[test]
fn a_2026_client_on_stdio_listens_for_list_changes_until_it_cancels() {
    let mut s = setup_fx(CONFIG, &[], "").start();
    let meta = crate::mcp_http::stateless_meta();
    let discover = s.request("server/discover", json!({"_meta": meta}));
    let r = s.response(discover);
    assert!(r["result"].is_object(), "{r}");
    // The server is up once its tools are listed.
    assert!(eventually(Duration::from_secs(10), || {
        let id = s.request("tools/list", json!({"_meta": meta}));
        s.response(id)["result"]["tools"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "fx_change_tools"))
    }));
    let listen = s.request(
        "subscriptions/listen",
        json!({"_meta": meta, "notifications": {"toolsListChanged": true, "promptsListChanged": true}}),
    );
    let ack = s
        .next_matching(Duration::from_secs(5), |m| {
            m["method"] == "notifications/subscriptions/acknowledged"
        })
        .expect("an acknowledgement");
    assert_eq!(
        ack["params"]["notifications"],
        json!({"toolsListChanged": true, "promptsListChanged": true}),
        "{ack}"
    );
    let is_change = |m: &Value| m["method"] == "notifications/tools/list_changed";
    let change = s.request(
        "tools/call",
        json!({"_meta": meta, "name": "fx_change_tools", "arguments": {}}),
    );
    assert_eq!(s.response(change)["result"]["isError"], json!(false));
    let heard = s
        .next_matching(Duration::from_secs(5), is_change)
        .expect("a list change on the subscription");
    assert_eq!(
        heard["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        json!(listen),
        "{heard}"
    );
    // Cancelled, the subscription hears nothing more, and says nothing.
    s.notify(
        "notifications/cancelled",
        json!({"requestId": listen, "_meta": meta}),
    );
    std::thread::sleep(Duration::from_millis(200));
    let change = s.request(
        "tools/call",
        json!({"_meta": meta, "name": "fx_change_tools", "arguments": {}}),
    );
    assert_eq!(s.response(change)["result"]["isError"], json!(false));
    assert_eq!(s.next_matching(Duration::from_millis(500), is_change), None);
    assert_eq!(
        s.next_matching(Duration::from_millis(10), |m| m["id"] == json!(listen)),
        None,
        "a cancelled request is not answered"
    );
}

/// `tools`, `exclude` and `rename` pick what a server exports; a name
/// taken at run time (here: `prefix = ""` against warden's own `echo`) is
/// skipped, logged and shown in status, and the call goes to the first owner.
#[test]
fn export_filters_pick_and_rename_tools_and_a_taken_name_is_skipped() {
    let setup = Setup::new(CONFIG)
        .actor("status", "name = \"status\"\nkind = \"builtin\"\n")
        .actor("echo", "name = \"echo\"\nkind = \"builtin\"\n")
        .actor(
            "fx",
            &mcp_actor(
                "fx",
                &[],
                "tools = [\"echo\", \"add\", \"pid\", \"nope\"]\nrename = { add = \"sum\" }\n",
            ),
        )
        .actor(
            "bare",
            &mcp_actor(
                "bare",
                &[],
                "prefix = \"\"\nexclude = [\"hang\", \"wedge\"]\n",
            ),
        );
    let mut s = setup.start();
    s.initialize();
    wait_serving(&mut s, "fx_echo", Duration::from_secs(10));
    wait_serving(&mut s, "pid", Duration::from_secs(10));
    let id = s.request("tools/list", json!({}));
    let listed = s.response(id);
    let names: Vec<&str> = listed["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    for want in ["fx_echo", "fx_sum", "fx_pid", "add", "pid", "echo"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for not in ["fx_add", "fx_sleep", "fx_hang", "hang", "wedge"] {
        assert!(!names.contains(&not), "{not} exported: {names:?}");
    }
    assert_eq!(names.iter().filter(|n| **n == "echo").count(), 1);

    let sum = s.call_result("fx_sum", json!({"a": 2, "b": 3}));
    assert_eq!(sum["structuredContent"]["sum"], 5, "{sum}");
    // What is not exported is not callable.
    let sleep = s.call("fx_sleep", json!({"ms": 1}));
    assert!(sleep["error"].is_object(), "{sleep}");
    // `echo` is warden's own; `bare`'s is skipped (below), not listed twice.
    let echo = s.call_result("echo", json!({"message": "own"}));
    assert_eq!(text(&echo), "own");

    let fx = tool_status(&mut s, "fx");
    let skipped = fx["server"]["exports"]["skipped"].to_string();
    assert!(
        skipped.contains("nope") && skipped.contains("does not list it"),
        "{skipped}"
    );
    let bare = tool_status(&mut s, "bare");
    let skipped = bare["server"]["exports"]["skipped"].to_string();
    assert!(
        skipped.contains("`echo` is taken by warden's own tool"),
        "{skipped}"
    );
}

#[test]
fn export_filters_that_cannot_work_are_config_problems() {
    let setup = Setup::new(CONFIG)
        .actor(
            "a",
            &mcp_actor("a", &[], "tools = [\"echo\"]\nexclude = [\"add\"]\n"),
        )
        .actor(
            "b",
            &mcp_actor(
                "b",
                &[],
                "rename = { echo = \"x\", add = \"x\", pid = \"bad name\" }\n",
            ),
        )
        .actor(
            "c",
            &mcp_actor("c", &[], "tools = [\"echo\"]\nrename = { add = \"sum\" }\n"),
        );
    let (code, out) = setup.check();
    assert_eq!(code, Some(1), "{out}");
    for want in [
        "a.toml: exclude: give `tools`",
        "b.toml: rename: `add` and `echo` are both renamed `x`",
        "b.toml: rename: `pid` = `bad name`",
        "c.toml: rename: `add` is renamed but not in `tools`",
    ] {
        assert!(out.contains(want), "{want:?} not in {out}");
    }
}

/// `resources/subscribe` reaches the server once, its updates reach the
/// subscribed session only for what it subscribed to, and unsubscribing
/// tells the server.
#[test]
fn resource_updates_pass_through_to_the_subscribed_session() {
    let mut s = setup_fx(CONFIG, &[], "").start();
    let init = s.initialize();
    assert_eq!(
        init["result"]["capabilities"]["resources"]["subscribe"], true,
        "{init}"
    );
    wait_serving(&mut s, "fx_echo", Duration::from_secs(10));
    let subscribe = |s: &mut Server, method: &str| {
        let id = s.request(method, json!({"uri": "fixture://hello"}));
        let r = s.response(id);
        assert!(r["result"].is_object(), "{method}: {r}");
    };
    subscribe(&mut s, "resources/subscribe");
    subscribe(&mut s, "resources/subscribe");
    let seen = text(&s.call_result("fx_subscriptions", json!({})));
    assert_eq!(seen, "subscribe fixture://hello", "once downstream");

    let updated = |s: &mut Server, wait: Duration| {
        s.next_matching(wait, |v| v["method"] == "notifications/resources/updated")
    };
    s.call_result("fx_touch", json!({"uri": "fixture://hello"}));
    let heard = updated(&mut s, Duration::from_secs(5)).expect("the update");
    assert_eq!(heard["params"]["uri"], "fixture://hello", "{heard}");
    s.call_result("fx_touch", json!({"uri": "fixture://item/1"}));
    assert!(
        updated(&mut s, Duration::from_millis(300)).is_none(),
        "an update for a URI the session did not subscribe to"
    );

    // The server crashes and is restarted: it is subscribed again.
    s.call("fx_crash", json!({}));
    wait_serving(&mut s, "fx_echo", Duration::from_secs(10));
    assert!(
        eventually(Duration::from_secs(5), || text(
            &s.call_result("fx_subscriptions", json!({}))
        ) == "subscribe fixture://hello"),
        "the restarted server was not subscribed again"
    );
    s.call_result("fx_touch", json!({"uri": "fixture://hello"}));
    assert!(updated(&mut s, Duration::from_secs(5)).is_some());

    subscribe(&mut s, "resources/unsubscribe");
    let seen = text(&s.call_result("fx_subscriptions", json!({})));
    assert_eq!(
        seen,
        "subscribe fixture://hello\nunsubscribe fixture://hello"
    );
    s.call_result("fx_touch", json!({"uri": "fixture://hello"}));
    assert!(updated(&mut s, Duration::from_millis(300)).is_none());
}

/// A server's `sampling/createMessage` during a call reaches the client of
/// that call over stdio and the answer goes back down; a client without the
/// capability, or two calls in flight (whose request would it be?), make the
/// server's request an error instead of a guess.
#[test]
fn a_servers_requests_reach_the_client_of_the_call_in_flight() {
    let fixture = env!("CARGO_BIN_EXE_warden-conformance-fixture");
    let mut s = Setup::new(CONFIG)
        .actor(
            "cf",
            &format!("name = \"cf\"\nkind = \"mcp\"\ncommand = \"{fixture}\"\n"),
        )
        .start();
    let id = s.request(
        "initialize",
        json!({
            "protocolVersion": "2025-11-25",
            "capabilities": {"sampling": {}},
            "clientInfo": {"name": "warden-tests", "version": "0"}
        }),
    );
    s.response(id);
    s.notify("notifications/initialized", json!({}));
    wait_serving(&mut s, "cf_test_simple_text", Duration::from_secs(10));

    let call = s.start_call("cf_test_sampling", json!({"prompt": "two plus two"}));
    let asked = s
        .next_matching(ANSWER_DEADLINE, |v| v["method"] == "sampling/createMessage")
        .expect("the server's request reaches the client");
    assert_eq!(
        asked["params"]["messages"][0]["content"]["text"], "two plus two",
        "{asked}"
    );
    s.send(&json!({"jsonrpc": "2.0", "id": asked["id"], "result": {
        "role": "assistant", "content": {"type": "text", "text": "four"},
        "model": "test-model", "stopReason": "endTurn"
    }}));
    let answer = s.response(call);
    assert_eq!(text(&answer["result"]), "LLM response: four", "{answer}");

    // This client did not declare elicitation: the server hears so.
    let refused = s.call_result("cf_test_elicitation", json!({"message": "who?"}));
    assert_eq!(refused["isError"], true, "{refused}");
    assert!(
        text(&refused).contains("does not support elicitation"),
        "{refused}"
    );

    // Two calls in flight (one takes 100 ms): the request cannot be tied to
    // one of them, so the server is answered an error, and its tool says so.
    let slow = s.start_call("cf_test_tool_with_progress", json!({}));
    let asks = s.start_call("cf_test_sampling", json!({"prompt": "whose?"}));
    let refused = s.response(asks);
    assert_eq!(refused["result"]["isError"], true, "{refused}");
    assert!(
        text(&refused["result"]).contains("2 calls of this server are in flight"),
        "{refused}"
    );
    assert!(s.response(slow)["result"].is_object());
    assert!(
        s.next_matching(Duration::from_millis(200), |v| v["method"]
            == "sampling/createMessage")
            .is_none(),
        "the ambiguous request reached the client"
    );
}
