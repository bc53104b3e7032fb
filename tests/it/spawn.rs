//! Every promise about how a command tool's program starts, checked from
//! inside the program: its own session and process group, warden its
//! parent, the actor file's rlimits (and no core dumps) in force, no signal
//! blocked and SIGPIPE at its default, and death with warden, also when
//! warden is SIGKILLed. (The cleared environment and the fixed directory:
//! tools.rs; no shell, arguments never options: hostile.rs.)

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

/// `proc`: cat (a C program: Rust's runtime would ignore SIGPIPE itself)
/// of one of its own /proc files, under rlimits.
fn proc_tool() -> String {
    "name = \"proc\"\nkind = \"command\"\ncommand = \"cat\"\nargs = [\"/proc/self/{file}\"]\n\
     concurrency = 8\nqueue = 64\n\
     [limits]\ncpu = \"3s\"\nmemory = \"512MiB\"\nopen_files = 64\n\
     [input]\ntype = \"object\"\nrequired = [\"file\"]\n\
     properties.file = { type = \"string\", enum = [\"stat\", \"status\", \"limits\", \"cgroup\"] }\n"
        .to_string()
}

/// The process's pid, ppid, pgid and sid, from its /proc/self/stat.
fn ids(stat: &str) -> [u64; 4] {
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let n = |i: usize| rest[i].parse::<u64>().unwrap();
    let pid = stat.split_whitespace().next().unwrap().parse().unwrap();
    [pid, n(1), n(2), n(3)]
}

/// `Name:` of /proc/self/status, as a number (hex masks).
fn mask(status: &str, name: &str) -> u64 {
    let v = status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in {status}"));
    u64::from_str_radix(v.trim(), 16).unwrap()
}

/// The soft and hard value of one line of /proc/self/limits.
fn limit(limits: &str, name: &str) -> String {
    let line = limits
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in {limits}"));
    line[name.len()..]
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn a_programs_session_group_limits_and_signals_are_as_promised() {
    let mut s = Setup::new(QUIET_CONFIG).actor("proc", &proc_tool()).start();
    s.initialize();
    let warden = s.pid();
    let mut read = |file: &str| text(&s.call_result("proc", json!({"file": file})));
    let [pid, ppid, pgid, sid] = ids(&read("stat"));
    assert_eq!(sid, pid, "not a session of its own");
    assert_eq!(pgid, pid, "not a group of its own");
    let limits = read("limits");
    assert_eq!(limit(&limits, "Max cpu time"), "3 4", "{limits}");
    assert_eq!(
        limit(&limits, "Max address space"),
        "536870912 536870912",
        "{limits}"
    );
    assert_eq!(limit(&limits, "Max open files"), "64 64", "{limits}");
    assert_eq!(limit(&limits, "Max core file size"), "0 0", "{limits}");
    let status = read("status");
    assert_eq!(mask(&status, "SigBlk:"), 0, "signals blocked: {status}");
    assert_eq!(
        mask(&status, "SigIgn:") & (1 << (13 - 1)),
        0,
        "SIGPIPE ignored: {status}"
    );
    assert_eq!(ppid, warden as u64, "warden is not its parent");
    // Born in a cgroup of its own, under warden's (cgroup v2: clone3 with
    // CLONE_INTO_CGROUP; elsewhere it moves in before exec).
    if crate::contain::can_run("cgroup2") {
        let cgroup = read("cgroup");
        let own = cgroup
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or_else(|| panic!("no cgroup v2 line: {cgroup}"));
        let cell = own
            .rsplit_once(&format!("/warden-{warden}/p"))
            .map(|(_, n)| n)
            .unwrap_or_else(|| panic!("not in a cell of this warden: {cgroup}"));
        assert!(cell.parse::<u64>().is_ok(), "{cgroup}");
    }

    // Many at once: each its own process, each isolated alike.
    let calls: Vec<i64> = (0..64)
        .map(|_| s.start_call("proc", json!({"file": "stat"})))
        .collect();
    let mut pids = std::collections::BTreeSet::new();
    for id in calls {
        let a = s.response(id);
        let [pid, _, pgid, sid] = ids(&text(&a["result"]));
        assert!(sid == pid && pgid == pid, "{a}");
        pids.insert(pid);
    }
    assert_eq!(pids.len(), 64, "64 calls, {} processes", pids.len());
}

#[test]
fn a_program_dies_with_warden_when_warden_is_sigkilled() {
    let mut s = Setup::new(QUIET_CONFIG)
        .actor("sleeper", &pidfile_sleep_tool("sleeper", ""))
        .start();
    s.initialize();
    let pidfile = s.setup.path().join("sleeper.pid");
    s.start_call(
        "sleeper",
        json!({"ms": 60000, "pidfile": pidfile.to_str().unwrap()}),
    );
    assert!(eventually(Duration::from_secs(5), || !read_pids(&pidfile).is_empty()));
    let pid = read_pids(&pidfile)[0];
    assert!(alive(pid));
    s.child.kill().unwrap();
    let _ = s.child.wait();
    assert!(
        eventually(Duration::from_secs(5), || !alive(pid)),
        "the program outlived a SIGKILLed warden"
    );
}
