//! Protocol bridging: a 2026-07-28 client calls a tool whose MCP server
//! (on 2025-11-25) asks it something during the call. The client gets an
//! `input_required` result with the question, retries with its answer and
//! receives the tool's result.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;
use crate::http::free_port;
use crate::mcp_http::{sessions_open, stateless_meta, wait_listening, Answer, Conn};

const ALICE: &str = "alice-3Fq8Zr1Wm6Tk9Lp2Xv7Bn4Hc";
const BOB: &str = "bob-8Wd2Ks5Pq9Zm3Rt7Lx1Vn6Jf";

fn digest(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `warden serve --http` fronting the conformance fixture as `cf`, for
/// alice and bob; calls wait `input_wait` for their retries.
fn serve(port: u16, input_wait: &str) -> Server {
    let fixture = env!("CARGO_BIN_EXE_warden-conformance-fixture");
    let mut s = Setup::new(&format!(
        "[log]\nstderr = \"warn\"\n[server]\ninput_wait = \"{input_wait}\"\n\
         [auth]\nmode = \"token\"\n\
         [[auth.tokens]]\nname = \"alice\"\nsha256 = \"{}\"\n\
         [[auth.tokens]]\nname = \"bob\"\nsha256 = \"{}\"\n",
        digest(ALICE),
        digest(BOB)
    ))
    .actor(
        "cf",
        &format!("name = \"cf\"\nkind = \"mcp\"\ncommand = \"{fixture}\"\n"),
    )
    .start_http(port);
    wait_listening(&mut s, port);
    s
}

/// A 2026-07-28 request of the holder of `token`, whose client declares `caps`.
fn post(
    conn: &mut Conn,
    token: &str,
    id: u64,
    method: &str,
    mut params: Value,
    caps: Value,
) -> Answer {
    let mut meta = stateless_meta();
    meta["io.modelcontextprotocol/clientCapabilities"] = caps;
    params["_meta"] = meta;
    let bearer = format!("Bearer {token}");
    let mut headers = vec![
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", method),
        ("Authorization", bearer.as_str()),
    ];
    let name = params["name"].as_str().map(str::to_string);
    if let Some(name) = &name {
        headers.push(("Mcp-Name", name.as_str()));
    }
    let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    conn.send("POST", &headers, &body.to_string())
}

/// The one JSON-RPC answer of a request, checked to be HTTP 200.
fn answer(a: Answer) -> Value {
    assert_eq!(a.status, 200, "{a:?}");
    a.message().clone()
}

#[test]
fn a_2026_client_answers_what_a_legacy_server_asks_by_retrying_its_call() {
    let port = free_port();
    let _s = serve(port, "60s");
    let mut conn = Conn::open(port);
    let elicit = json!({"elicitation": {}});
    assert!(
        eventually(Duration::from_secs(10), || {
            let r = answer(post(
                &mut conn,
                ALICE,
                1,
                "tools/list",
                json!({}),
                elicit.clone(),
            ));
            r["result"]["tools"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["name"] == "cf_test_elicitation"))
        }),
        "the fixture's tools are listed"
    );
    let call = json!({"name": "cf_test_elicitation", "arguments": {"message": "Who are you?"}});

    // The call is answered with the server's question, and waits.
    let first = answer(post(
        &mut conn,
        ALICE,
        2,
        "tools/call",
        call.clone(),
        elicit.clone(),
    ));
    let result = &first["result"];
    assert_eq!(result["resultType"], "input_required", "{first}");
    let questions = result["inputRequests"].as_object().expect("inputRequests");
    assert_eq!(questions.len(), 1, "{first}");
    let (key, question) = questions.iter().next().unwrap();
    assert_eq!(question["method"], "elicitation/create", "{first}");
    assert_eq!(question["params"]["message"], "Who are you?", "{first}");
    assert!(
        question["params"]["requestedSchema"]["properties"]["email"].is_object(),
        "{first}"
    );
    let state = result["requestState"]
        .as_str()
        .expect("requestState")
        .to_string();
    assert!(state.len() >= 32, "a guessable requestState: {state:?}");
    assert_eq!(sessions_open(port), 1, "the waiting call holds its session");

    // Another principal cannot answer it, nor can a call of another tool.
    let mut retry = call.clone();
    retry["inputResponses"] = json!({key: {"action": "accept", "content": {"username": "mallory", "email": "m@example.com"}}});
    retry["requestState"] = json!(state);
    let bob = answer(post(
        &mut conn,
        BOB,
        3,
        "tools/call",
        retry.clone(),
        elicit.clone(),
    ));
    assert!(
        bob["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("another principal")),
        "{bob}"
    );
    let mut other = retry.clone();
    other["name"] = json!("cf_test_simple_text");
    let wrong = answer(post(
        &mut conn,
        ALICE,
        4,
        "tools/call",
        other,
        elicit.clone(),
    ));
    assert_eq!(wrong["error"]["code"], -32602, "{wrong}");

    // Alice's retry carries her answer down and brings the tool's result.
    retry["inputResponses"] = json!({key: {"action": "accept", "content": {"username": "ada", "email": "ada@example.com"}}});
    let done = answer(post(
        &mut conn,
        ALICE,
        5,
        "tools/call",
        retry.clone(),
        elicit.clone(),
    ));
    assert_eq!(done["result"]["resultType"], "complete", "{done}");
    assert_ne!(done["result"]["isError"], true, "{done}");
    let said = text(&done["result"]);
    assert!(
        said.starts_with("User response: <action: accept, content: ")
            && said.contains("\"username\":\"ada\"")
            && said.contains("\"email\":\"ada@example.com\""),
        "{done}"
    );
    assert!(
        eventually(Duration::from_secs(2), || sessions_open(port) == 0),
        "the call's session outlived it"
    );

    // Its requestState is spent.
    let again = answer(post(
        &mut conn,
        ALICE,
        6,
        "tools/call",
        retry,
        elicit.clone(),
    ));
    assert_eq!(again["error"]["code"], -32602, "{again}");
    assert!(
        again["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("requestState names no call")),
        "{again}"
    );

    // Sampling goes the same way.
    let sampling = json!({"sampling": {}});
    let call = json!({"name": "cf_test_sampling", "arguments": {"prompt": "two plus two"}});
    let first = answer(post(
        &mut conn,
        ALICE,
        7,
        "tools/call",
        call.clone(),
        sampling.clone(),
    ));
    let result = &first["result"];
    let (key, question) = result["inputRequests"]
        .as_object()
        .and_then(|q| q.iter().next())
        .unwrap_or_else(|| panic!("{first}"));
    assert_eq!(question["method"], "sampling/createMessage", "{first}");
    let mut retry = call;
    retry["requestState"] = result["requestState"].clone();
    retry["inputResponses"] = json!({key: {
        "role": "assistant", "content": {"type": "text", "text": "four"},
        "model": "test-model", "stopReason": "endTurn"
    }});
    let done = answer(post(&mut conn, ALICE, 8, "tools/call", retry, sampling));
    assert_eq!(text(&done["result"]), "LLM response: four", "{done}");

    // A client that cannot be asked: the server hears so, the tool says so.
    let call = json!({"name": "cf_test_elicitation", "arguments": {"message": "Who?"}});
    let refused = answer(post(&mut conn, ALICE, 9, "tools/call", call, json!({})));
    assert_eq!(refused["result"]["isError"], true, "{refused}");
    assert!(
        text(&refused["result"]).contains("does not support elicitation"),
        "{refused}"
    );
}

#[test]
fn a_call_whose_retry_never_comes_is_cancelled_after_input_wait() {
    let port = free_port();
    let s = serve(port, "1s");
    let mut conn = Conn::open(port);
    let elicit = json!({"elicitation": {}});
    let call = json!({"name": "cf_test_elicitation", "arguments": {"message": "Anyone?"}});
    let first = eventually_answered(&mut conn, &call, &elicit);
    let asked_at = Instant::now();
    let result = &first["result"];
    assert_eq!(result["resultType"], "input_required", "{first}");
    assert_eq!(sessions_open(port), 1);
    // The wait is over: the call and its session are gone.
    assert!(
        eventually(Duration::from_secs(5), || sessions_open(port) == 0),
        "the waiting call was not given up"
    );
    assert!(
        asked_at.elapsed() >= Duration::from_millis(900),
        "given up after {:?}, before input_wait",
        asked_at.elapsed()
    );
    let mut retry = call;
    retry["requestState"] = result["requestState"].clone();
    retry["inputResponses"] = json!({"1": {"action": "decline"}});
    let late = answer(post(&mut conn, ALICE, 3, "tools/call", retry, elicit));
    assert_eq!(late["error"]["code"], -32602, "{late}");
    assert!(
        late["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("input_wait")),
        "{late}"
    );
    assert!(
        eventually(Duration::from_secs(2), || s
            .log_lines()
            .iter()
            .any(|l| l["message"]
                .as_str()
                .is_some_and(|m| m.contains("no retry came")))),
        "the log does not say why the call ended"
    );
}

/// The first answer to `call` once the fixture serves it.
fn eventually_answered(conn: &mut Conn, call: &Value, caps: &Value) -> Value {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let r = answer(post(
            conn,
            ALICE,
            2,
            "tools/call",
            call.clone(),
            caps.clone(),
        ));
        let starting = r["result"]["isError"] == true && text(&r["result"]).contains("starting");
        if !starting || Instant::now() > until {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Over stdio too: a 2026-07-28 client on warden's own pipes.
#[test]
fn a_2026_client_on_stdio_answers_by_retrying_too() {
    let fixture = env!("CARGO_BIN_EXE_warden-conformance-fixture");
    let mut s = Setup::new("[log]\nstderr = \"warn\"\n")
        .actor(
            "cf",
            &format!("name = \"cf\"\nkind = \"mcp\"\ncommand = \"{fixture}\"\n"),
        )
        .start();
    let mut meta = stateless_meta();
    meta["io.modelcontextprotocol/clientCapabilities"] = json!({"elicitation": {}});
    let call =
        json!({"_meta": meta, "name": "cf_test_elicitation", "arguments": {"message": "Name?"}});
    let first = {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let id = s.request("tools/call", call.clone());
            let r = s.response(id);
            if r["result"]["resultType"] == "input_required" || Instant::now() > until {
                break r;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let result = &first["result"];
    assert_eq!(result["resultType"], "input_required", "{first}");
    let key = result["inputRequests"]
        .as_object()
        .and_then(|q| q.keys().next().cloned())
        .unwrap_or_else(|| panic!("{first}"));
    let mut retry = call;
    retry["requestState"] = result["requestState"].clone();
    retry["inputResponses"] = json!({key: {"action": "decline"}});
    let id = s.request("tools/call", retry);
    let done = s.response(id);
    assert_eq!(
        text(&done["result"]),
        "User response: <action: decline, content: null>",
        "{done}"
    );
}
