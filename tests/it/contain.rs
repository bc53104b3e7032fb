//! Containment: whatever a program starts, however it leaves its process
//! group (`setsid`, `setpgid`, a daemon's fork–setsid–fork), ends with its
//! call, with its MCP server and with warden, also when warden is SIGKILLed.
//! Each way is tried under each containment (`server.containment`).

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::gateway::{mcp_actor, wait_serving};
use crate::harness::*;

/// The containments, strongest first. The cgroup ones need a machine that
/// lets warden make cgroups (this one and CI do, as root).
const MODES: [&str; 3] = ["cgroup2", "freezer", "subreaper"];
const WAYS: [&str; 3] = ["setsid", "setpgid", "daemon"];

/// Whether this machine gives `mode`, as warden itself finds out: it refuses
/// to start with a containment asked for by name that it cannot have. (The
/// subreaper is always there.)
pub fn can_run(mode: &str) -> bool {
    if mode == "subreaper" {
        return true;
    }
    let setup = Setup::new(&config(mode));
    let out = std::process::Command::new(WARDEN)
        .args(["serve", "--config"])
        .arg(setup.config_path())
        .env("WARDEN_CONTROL_DIR", setup.path().join("control"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    let refused = said.contains("server.containment: the one asked for is not available here");
    if refused {
        eprintln!("skipping containment `{mode}`: {said}");
    }
    !refused
}

fn config(mode: &str) -> String {
    format!(
        "[server]\ncontainment = \"{mode}\"\nshutdown_grace = \"300ms\"\n[log]\nstderr = \"warn\"\n"
    )
}

fn escaper() -> String {
    fixture_tool(
        "escape",
        &["escape", "{how}", "{pidfile}", "{hold}"],
        "timeout = \"1s\"\nconcurrency = 4",
        "required = [\"how\", \"pidfile\", \"hold\"]\nproperties.how = { type = \"string\" }\nproperties.pidfile = { type = \"string\" }\nproperties.hold = { type = \"integer\" }",
    )
}

fn start(mode: &str) -> Server {
    let mut s = Setup::new(&config(mode))
        .actor("escape", &escaper())
        .actor("status", "name = \"status\"\nkind = \"builtin\"\n")
        .start();
    s.initialize();
    s
}

fn args(how: &str, pidfile: &Path, hold: u64) -> Value {
    json!({"how": how, "pidfile": pidfile.to_str().unwrap(), "hold": hold})
}

fn gone_soon(pid: i32) -> bool {
    eventually(Duration::from_secs(2), || !alive(pid))
}

#[test]
fn what_leaves_the_group_ends_with_its_call() {
    for mode in MODES.into_iter().filter(|m| can_run(m)) {
        let mut s = start(mode);
        for how in WAYS {
            // The program exits at once, leaving the escapee behind.
            let file = s.setup.path().join(format!("{how}.pid"));
            let r = s.call_result("escape", args(how, &file, 0));
            assert_eq!(text(&r).trim(), "escaped", "{mode}/{how}: {r}");
            let pid = read_pids(&file)[0];
            assert!(gone_soon(pid), "{mode}/{how}: pid {pid} outlived its call");
            // The program is still running at its deadline.
            let file = s.setup.path().join(format!("{how}-timeout.pid"));
            let r = s.call_result("escape", args(how, &file, 60_000));
            assert_eq!(kind(&r), "timeout", "{mode}/{how}: {r}");
            let pid = read_pids(&file)[0];
            assert!(
                gone_soon(pid),
                "{mode}/{how}: pid {pid} outlived its timeout"
            );
        }
        let status: Value =
            serde_json::from_str(&text(&s.call_result("status", json!({})))).unwrap();
        let c = &status["warden"]["containment"];
        assert_eq!(c["kind"], mode, "{c}");
        assert_eq!(c["complete"], mode != "subreaper", "{c}");
        if let Some(cells) = c["cells"].as_str() {
            assert!(Path::new(cells).is_dir(), "{c}");
            s.close_stdin();
            assert!(s.wait_exit(Duration::from_secs(5)).success());
            assert!(
                eventually(Duration::from_secs(2), || !Path::new(cells).exists()),
                "{mode}: {cells} left behind"
            );
        }
    }
}

/// Starts a call of each way that holds its program for a minute, and waits
/// until every escapee runs: their pids.
fn escapees_of_running_calls(s: &mut Server) -> Vec<i32> {
    let files: Vec<_> = WAYS
        .iter()
        .map(|how| {
            let file = s.setup.path().join(format!("{how}.pid"));
            s.start_call("escape", args(how, &file, 60_000));
            file
        })
        .collect();
    files.iter().map(|f| read_pids(f)[0]).collect()
}

#[test]
fn what_leaves_the_group_ends_with_warden_on_eof_and_on_sigkill() {
    for mode in MODES.into_iter().filter(|m| can_run(m)) {
        let mut s = start(mode);
        let pids = escapees_of_running_calls(&mut s);
        s.close_stdin();
        assert!(s.wait_exit(Duration::from_secs(5)).success());
        for &pid in &pids {
            assert!(gone_soon(pid), "{mode}: pid {pid} outlived warden's exit");
        }

        let mut s = start(mode);
        let pids = escapees_of_running_calls(&mut s);
        if mode == "subreaper" {
            // Without cgroups the guardian knows a stray from warden's sweep.
            std::thread::sleep(Duration::from_millis(600));
        }
        s.child.kill().unwrap();
        let _ = s.child.wait();
        for &pid in &pids {
            assert!(
                gone_soon(pid),
                "{mode}: pid {pid} outlived warden's SIGKILL"
            );
        }
    }
}

#[test]
fn what_a_server_starts_in_a_session_of_its_own_ends_with_it() {
    for mode in MODES.into_iter().filter(|m| can_run(m)) {
        let setup = Setup::new(&format!(
            "{}[supervisor]\nbackoff = {{ min = \"50ms\", max = \"200ms\" }}\n",
            config(mode)
        ));
        let pids = setup.path().join("fx.pids");
        let actor = mcp_actor(
            "fx",
            &["--pidfile", pids.to_str().unwrap(), "--escapee"],
            "",
        );
        let mut s = setup.actor("fx", &actor).start();
        s.initialize();
        wait_serving(&mut s, "fx_echo", Duration::from_secs(10));
        let first = read_pids(&pids);
        assert_eq!(first.len(), 2, "the server and its escapee: {first:?}");
        // A server that dies takes its escapee along; the restarted one has its own.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(first[0]),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert!(
            gone_soon(first[1]),
            "{mode}: the escapee outlived its server"
        );
        wait_serving(&mut s, "fx_echo", Duration::from_secs(10));
        let all = read_pids(&pids);
        assert_eq!(all.len(), 4, "{mode}: {all:?}");
        if mode == "subreaper" {
            std::thread::sleep(Duration::from_millis(600));
        }
        s.child.kill().unwrap();
        let _ = s.child.wait();
        for &pid in &all[2..] {
            assert!(
                gone_soon(pid),
                "{mode}: pid {pid} outlived warden's SIGKILL"
            );
        }
    }
}

#[test]
fn an_unknown_containment_is_a_config_problem() {
    let setup = Setup::new("[server]\ncontainment = \"cgroup3\"\n");
    let (code, said) = setup.check();
    assert_eq!(code, Some(1));
    assert!(
        said.contains("server.containment: unknown variant `cgroup3`, expected one of `auto`, `cgroup2`, `freezer`, `subreaper`"),
        "{said}"
    );
}
