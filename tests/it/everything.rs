//! The real `@modelcontextprotocol/server-everything` (a pinned version,
//! installed from npm into the target directory on first use) behind warden.
//! Skipped, saying why, only where npm is absent.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::json;

use crate::gateway::wait_serving;
use crate::harness::*;

pub const EVERYTHING_VERSION: &str = "2026.8.31";

/// The server's entry point, installed if need be; `None` without npm.
pub fn server_everything() -> Option<PathBuf> {
    static INSTALLED: OnceLock<Option<PathBuf>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let has = |tool: &str| {
                Command::new(tool)
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success())
            };
            if !has("npm") || !has("node") {
                println!("skipped: npm or node is not installed, so server-everything cannot be");
                return None;
            }
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("server-everything-{EVERYTHING_VERSION}"));
            let entry =
                dir.join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
            if !entry.exists() {
                let out = Command::new("npm")
                    .args(["install", "--no-audit", "--no-fund", "--prefix"])
                    .arg(&dir)
                    .arg(format!(
                        "@modelcontextprotocol/server-everything@{EVERYTHING_VERSION}"
                    ))
                    .output()
                    .expect("npm runs");
                assert!(
                    out.status.success() && entry.exists(),
                    "npm install of server-everything failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Some(entry)
        })
        .clone()
}

#[test]
fn server_everything_is_served_with_its_prefix() {
    let Some(entry) = server_everything() else {
        return;
    };
    let actor = format!(
        "name = \"everything\"\nkind = \"mcp\"\ncommand = \"node\"\nargs = [{:?}, \"stdio\"]\nprefix = \"ev\"\n",
        entry.to_str().unwrap()
    );
    let mut s = Setup::new(QUIET_CONFIG)
        .actor("status", "name = \"status\"\nkind = \"builtin\"\n")
        .actor("everything", &actor)
        .start();
    s.initialize();
    wait_serving(&mut s, "ev_echo", Duration::from_secs(30));

    let id = s.request("tools/list", json!({}));
    let list = s.response(id);
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for t in ["ev_echo", "ev_get-sum", "ev_trigger-long-running-operation"] {
        assert!(names.contains(&t), "{t} missing from {names:?}");
    }
    assert!(
        names.iter().all(|n| *n == "status" || n.starts_with("ev_")),
        "{names:?}"
    );

    let r = s.call_result("ev_echo", json!({"message": "hi"}));
    assert_eq!(text(&r), "Echo: hi", "{r}");
    // The server's own error result, passed through.
    let e = s.call_result("ev_echo", json!({}));
    assert_eq!(e["isError"], json!(true), "{e}");
    assert!(text(&e).contains("message"), "{e}");

    let id = s.request(
        "tools/call",
        json!({"name": "ev_trigger-long-running-operation", "arguments": {"duration": 1, "steps": 4},
               "_meta": {"progressToken": 42}}),
    );
    let r = s.response(id);
    assert!(text(&r["result"]).contains("Steps: 4"), "{r}");
    let progress = s.arrived_before(|v| v["method"] == "notifications/progress");
    let steps: Vec<f64> = progress
        .iter()
        .map(|n| {
            assert_eq!(n["params"]["progressToken"], 42, "{n}");
            n["params"]["progress"].as_f64().unwrap()
        })
        .collect();
    assert_eq!(
        steps,
        [1.0, 2.0, 3.0, 4.0],
        "before the answer, on the client's token"
    );

    let st = tool_status(&mut s, "everything");
    assert_eq!(st["state"], "running", "{st}");
    assert!(
        st["server"]["exports"]["tools"].as_u64().unwrap() >= 10,
        "{st}"
    );
}
