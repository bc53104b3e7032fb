//! `[auth]` over HTTP: static bearer tokens, the protected resource
//! metadata, and per-tool scopes, against the real binary on 127.0.0.1.

use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::gateway::mcp_actor;
use crate::harness::*;
use crate::http::free_port;
use crate::mcp_http::{wait_listening, Answer, Conn};

/// Two principals: alice may use what needs `files`, bob only what needs nothing.
const ALICE: &str = "alice-Qm3xT9vK2pLw8ZrN4bYh6Jd1";
const BOB: &str = "bob-Hx7Lq2Wn9Rv4Tc6Yp1Km8Zs3";
const METADATA: &str = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp";

fn sha(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn config() -> String {
    format!(
        "[log]\nstderr = \"warn\"\n[auth]\nmode = \"token\"\npublic_url = \"https://mcp.example.com\"\nauthorization_servers = [\"https://auth.example.com\"]\n\
         [[auth.tokens]]\nname = \"alice\"\nsha256 = \"{}\"\nscopes = [\"files\"]\n\
         [[auth.tokens]]\nname = \"bob\"\nsha256 = \"{}\"\n",
        sha(ALICE),
        sha(BOB)
    )
}

fn start() -> (Server, u16) {
    let port = free_port();
    let mut s = Setup::new(&config())
        .actor("status", "name = \"status\"\nkind = \"builtin\"\n")
        .actor("echo", "name = \"echo\"\nkind = \"builtin\"\n")
        .actor(
            "secret",
            "name = \"secret\"\nkind = \"builtin\"\nbuiltin = \"echo\"\nscopes = [\"files\"]\n",
        )
        .actor(
            "fx",
            &mcp_actor(
                "fx",
                &[],
                "scopes = [\"files\"]\nexport_scopes = { add = [\"math\"] }",
            ),
        )
        .start_http(port);
    wait_listening(&mut s, port);
    (s, port)
}

/// A POST to /mcp with `token` (if any) and the session (if any).
fn post(port: u16, token: Option<&str>, session: Option<&str>, body: &Value) -> Answer {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b.as_str()));
    }
    if let Some(s) = session {
        headers.push(("Mcp-Session-Id", s));
        headers.push(("MCP-Protocol-Version", "2025-11-25"));
    }
    Conn::open(port).send("POST", &headers, &body.to_string())
}

/// The `initialize` the raw HTTP tests send.
fn init_request() -> Value {
    serde_json::from_str(crate::mcp_http::INITIALIZE).unwrap()
}

fn initialize(port: u16, token: &str) -> String {
    let a = post(port, Some(token), None, &init_request());
    assert_eq!(a.status, 200, "{a:?}");
    let session = a.header("mcp-session-id").unwrap().to_string();
    let done = post(
        port,
        Some(token),
        Some(&session),
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    );
    assert_eq!(done.status, 202, "{done:?}");
    session
}

fn call(port: u16, token: &str, session: &str, tool: &str) -> Answer {
    post(
        port,
        Some(token),
        Some(session),
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": tool, "arguments": {"message": "hi"}}}),
    )
}

fn tool_names(port: u16, token: &str, session: &str) -> Vec<String> {
    let a = post(
        port,
        Some(token),
        Some(session),
        &json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}),
    );
    a.message()["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{a:?}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn without_a_valid_token_nothing_runs_and_the_challenge_names_the_metadata() {
    let (mut s, port) = start();
    let init = init_request();
    let none = post(port, None, None, &init);
    assert_eq!(none.status, 401, "{none:?}");
    assert_eq!(
        none.header("www-authenticate"),
        Some(format!("Bearer resource_metadata=\"{METADATA}\"").as_str()),
        "{none:?}"
    );
    for (header, why) in [
        ("Bearer not-a-token-of-ours", "the token is not valid here"),
        ("Basic YWxpY2U6cGFzc3dvcmQ=", "is not `Bearer TOKEN`"),
        ("Bearer", "is not `Bearer TOKEN`"),
    ] {
        let a = Conn::open(port).send("POST", &[("Authorization", header)], &init.to_string());
        assert_eq!(a.status, 401, "{header}: {a:?}");
        let challenge = a.header("www-authenticate").unwrap();
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        assert!(
            challenge.contains(&format!("resource_metadata=\"{METADATA}\"")),
            "{challenge}"
        );
        assert!(
            a.message()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(why),
            "{a:?}"
        );
    }
    // A token with a byte changed is someone else's, or nobody's.
    let mut near = ALICE.to_string();
    near.pop();
    near.push('X');
    assert_eq!(post(port, Some(&near), None, &init).status, 401);
    // A megabyte of header is refused before it is read.
    let (head, _) = crate::mcp_http::raw(
        port,
        format!(
            "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nContent-Length: 2\r\n\r\n{{}}",
            "a".repeat(1 << 20)
        )
        .as_bytes(),
        Duration::from_secs(5),
    );
    assert!(head.starts_with("HTTP/1.1 431"), "{head:.200}");
    // Nothing ran, and the next request with a good token is served.
    let session = initialize(port, BOB);
    assert_eq!(
        text(&call(port, BOB, &session, "echo").message()["result"]),
        "hi"
    );
    assert!(s.child.try_wait().unwrap().is_none());
}

#[test]
fn the_protected_resource_metadata_says_where_tokens_come_from() {
    let (s, port) = start();
    let metadata = |path: &str| -> Value {
        let (answer, _) = crate::mcp_http::raw(
            port,
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .as_bytes(),
            Duration::from_secs(5),
        );
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap()
    };
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let body = metadata(path);
        assert_eq!(
            body,
            json!({
                "resource": "https://mcp.example.com/mcp",
                "authorization_servers": ["https://auth.example.com"],
                "scopes_supported": ["files", "math"],
                "bearer_methods_supported": ["header"],
                "resource_name": "warden",
            }),
            "{path}"
        );
    }
    // A reload that adds a tool with a scope of its own advertises it.
    std::fs::write(
        s.setup.path().join("actors/reports.toml"),
        "name = \"reports\"\nkind = \"builtin\"\nbuiltin = \"echo\"\nscopes = [\"reports\"]\n",
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || metadata(
            "/.well-known/oauth-protected-resource"
        )["scopes_supported"]
            == json!(["files", "math", "reports"])),
        "{}",
        metadata("/.well-known/oauth-protected-resource")
    );
}

#[test]
fn a_principal_sees_and_calls_only_what_its_scopes_allow() {
    let (s, port) = start();
    let alice = initialize(port, ALICE);
    // fx is up once alice sees its tools.
    assert!(eventually(Duration::from_secs(10), || tool_names(
        port, ALICE, &alice
    )
    .iter()
    .any(|n| n == "fx_echo")));
    let mut seen = tool_names(port, ALICE, &alice);
    seen.retain(|n| ["echo", "secret", "fx_echo"].contains(&n.as_str()));
    assert_eq!(seen, ["echo", "secret", "fx_echo"]);
    // One export needs `math` as well, which alice lacks.
    assert!(!tool_names(port, ALICE, &alice).contains(&"fx_add".to_string()));
    let a = call(port, ALICE, &alice, "fx_add");
    assert_eq!(a.status, 403, "{a:?}");
    assert!(
        a.header("www-authenticate")
            .unwrap()
            .contains("scope=\"math\""),
        "{a:?}"
    );
    assert_eq!(
        text(&call(port, ALICE, &alice, "secret").message()["result"]),
        "hi"
    );
    assert_eq!(
        text(&call(port, ALICE, &alice, "fx_echo").message()["result"]),
        "hi"
    );

    let bob = initialize(port, BOB);
    let names = tool_names(port, BOB, &bob);
    assert!(names.contains(&"echo".to_string()), "{names:?}");
    assert!(
        !names.iter().any(|n| n == "secret" || n.starts_with("fx_")),
        "{names:?}"
    );
    for tool in ["secret", "fx_echo"] {
        let a = call(port, BOB, &bob, tool);
        assert_eq!(a.status, 403, "{tool}: {a:?}");
        let challenge = a.header("www-authenticate").unwrap();
        assert!(
            challenge.contains("error=\"insufficient_scope\""),
            "{challenge}"
        );
        assert!(challenge.contains("scope=\"files\""), "{challenge}");
        assert!(
            a.message()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("tool `{tool}` needs the scope(s) files")),
            "{a:?}"
        );
    }
    // Refused before it ran: the log has alice's call of secret, none of bob's.
    let secret_calls = || -> Vec<Value> {
        s.log_lines()
            .into_iter()
            .filter(|l| l["message"] == "call" && l["tool"] == "secret")
            .collect()
    };
    assert!(eventually(Duration::from_secs(5), || !secret_calls().is_empty()));
    std::thread::sleep(Duration::from_millis(300));
    let calls = secret_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["principal"], "alice", "{calls:?}");
    // bob's session is still served.
    assert_eq!(
        text(&call(port, BOB, &bob, "echo").message()["result"]),
        "hi"
    );
    // status names each session's principal, never a token.
    let a = post(
        port,
        Some(ALICE),
        Some(&alice),
        &json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                "params": {"name": "status", "arguments": {}}}),
    );
    let status: Value = serde_json::from_str(&text(&a.message()["result"])).unwrap();
    assert_eq!(
        status["warden"]["sessions"]["by_principal"],
        json!({"alice": 1, "bob": 1}),
        "{status}"
    );

    // No token, and no hash of one, in the logs, on stderr, in metrics or status.
    let (metrics, _) = crate::mcp_http::raw(
        port,
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    let logs = std::fs::read_dir(s.setup.path().join("logs"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect::<String>();
    let everything = format!("{logs}{}{metrics}{status}", s.stderr_lines().join("\n"));
    for secret in [ALICE, BOB, &sha(ALICE), &sha(BOB)] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
}

#[test]
fn check_refuses_auth_that_cannot_work() {
    for (auth, says) in [
        ("mode = \"token\"\n", "auth.tokens: mode = \"token\" needs at least one"),
        ("mode = \"jwt\"\njwks = \"k.json\"\n", "auth.issuer: mode = \"jwt\" needs the issuer"),
        (
            "mode = \"jwt\"\nissuer = \"https://i\"\njwks = \"http://i/jwks.json\"\njwks_ca = \"ca.pem\"\n",
            "auth.jwks_ca: is only for a JWKS fetched over https://",
        ),
        (
            "mode = \"jwt\"\nissuer = \"https://i\"\njwks = \"https://i/jwks.json\"\njwks_ca = \"no-such-ca.pem\"\n",
            "no-such-ca.pem: No such file",
        ),
        (
            "mode = \"jwt\"\nissuer = \"https://i\"\njwks = \"https://i/jwks.json\"\njwks_ca = \"config.toml\"\n",
            "config.toml: holds no certificate",
        ),
        (
            "mode = \"token\"\n[[auth.tokens]]\nname = \"x\"\nsha256 = \"abc\"\n",
            "auth.tokens[0].sha256: must be 64 hex digits",
        ),
        (
            "mode = \"token\"\n[[auth.tokens]]\nname = \"x\"\nenv = \"WARDEN_TEST_NO_SUCH_TOKEN\"\n",
            "auth.tokens[0].env: $WARDEN_TEST_NO_SUCH_TOKEN is not set",
        ),
        (
            "mode = \"token\"\n[[auth.tokens]]\nname = \"x\"\nenv = \"HOME\"\n",
            "auth.tokens[0].env: the token in $HOME is too weak",
        ),
        (
            "mode = \"token\"\n[[auth.tokens]]\nname = \"x\"\nfile = \"no-such-token\"\n",
            "auth.tokens[0].file: ",
        ),
        (
            "mode = \"token\"\n[[auth.tokens]]\nname = \"x\"\nfile = \"config.toml\"\nenv = \"HOME\"\n",
            "a token needs exactly one of sha256, env and file",
        ),
        ("mode = \"token\"\nburst = 5\n", "auth.burst: needs `rate`"),
        ("mode = \"token\"\nrate = \"1/s\"\nburst = 0\n", "auth.burst: must be at least 1"),
        ("mode = \"token\"\nrate = \"often\"\n", "auth.rate"),
    ] {
        let setup = Setup::new(&format!("[auth]\n{auth}"));
        let (code, said) = setup.check();
        assert_eq!(code, Some(1), "{auth}: {said}");
        assert!(said.contains(says), "{auth}: {said}");
    }
    // With tokens, MCP beyond loopback is not unguarded.
    let setup = Setup::new(&format!(
        "[http]\nlisten = \"0.0.0.0:8080\"\nmcp = true\n[auth]\nmode = \"token\"\n[[auth.tokens]]\nname = \"x\"\nsha256 = \"{}\"\n",
        sha(ALICE)
    ));
    let (code, said) = setup.check();
    assert_eq!(code, Some(0), "{said}");
    assert!(!said.contains("warning"), "{said}");
}

// ---------------------------------------------------------------------------
// mode = "jwt", with the test issuer's keys in tests/data/jwt.

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "https://mcp.example.com/mcp";

fn key_file(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/jwt")
            .join(name),
    )
    .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims that pass, for `sub` with `scope`; tests change one thing each.
fn claims(sub: &str, scope: &str) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "scope": scope,
           "iat": now(), "exp": now() + 600})
}

/// A token signed with the PEM key `pem` under `kid`.
fn mint(pem: &str, kid: &str, claims: &Value) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let (alg, key) = if pem.starts_with("ed25519") {
        (
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(&key_file(pem)).unwrap(),
        )
    } else {
        (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&key_file(pem)).unwrap(),
        )
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// base64url without padding, for a token made by hand.
fn b64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, &b| n << 8 | b as u32) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn jwt_setup(jwks: &str) -> Setup {
    jwt_setup_with(jwks, "")
}

/// `jwt_setup` with more `[auth]` lines.
fn jwt_setup_with(jwks: &str, auth: &str) -> Setup {
    Setup::new(&format!(
        "[log]\nstderr = \"warn\"\n[auth]\nmode = \"jwt\"\npublic_url = \"https://mcp.example.com\"\nissuer = \"{ISSUER}\"\njwks = \"{jwks}\"\n{auth}"
    ))
    .actor("echo", "name = \"echo\"\nkind = \"builtin\"\n")
    .actor(
        "secret",
        "name = \"secret\"\nkind = \"builtin\"\nbuiltin = \"echo\"\nscopes = [\"files\"]\n",
    )
}

#[test]
fn jwts_are_checked_against_the_issuers_keys_and_a_rotation_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, key_file("jwks-before.json")).unwrap();
    let port = free_port();
    let mut s = jwt_setup(jwks.to_str().unwrap()).start_http(port);
    wait_listening(&mut s, port);

    let alice = mint("es256-a.pem", "es256-a", &claims("alice", "files other"));
    let session = initialize(port, &alice);
    assert_eq!(
        text(&call(port, &alice, &session, "secret").message()["result"]),
        "hi"
    );
    let eddsa = mint("ed25519.pem", "ed25519", &claims("erin", ""));
    let erin = initialize(port, &eddsa);
    assert_eq!(
        text(&call(port, &eddsa, &erin, "echo").message()["result"]),
        "hi"
    );
    // erin has no `files`: 403 naming it, nothing ran.
    assert_eq!(call(port, &eddsa, &erin, "secret").status, 403);

    let init = init_request();
    let with = |c: Value| {
        let mut c2 = claims("mallory", "files");
        for (k, v) in c.as_object().unwrap() {
            if v.is_null() {
                c2.as_object_mut().unwrap().remove(k);
            } else {
                c2[k] = v.clone();
            }
        }
        c2
    };
    let public_pem = String::from_utf8(key_file("es256-a.pub.pem")).unwrap();
    let hs256_with_public_key = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some("es256-a".into());
        jsonwebtoken::encode(
            &h,
            &claims("mallory", "files"),
            &jsonwebtoken::EncodingKey::from_secret(public_pem.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT","kid":"es256-a"}"#),
        b64(claims("mallory", "files").to_string().as_bytes())
    );
    let refused = [
        (
            "signed by another key",
            mint("es256-b.pem", "es256-a", &claims("mallory", "files")),
            "bad signature",
        ),
        (
            "expired",
            mint("es256-a.pem", "es256-a", &with(json!({"exp": now() - 120}))),
            "expired",
        ),
        (
            "not yet valid",
            mint("es256-a.pem", "es256-a", &with(json!({"nbf": now() + 120}))),
            "not valid yet",
        ),
        (
            "wrong issuer",
            mint(
                "es256-a.pem",
                "es256-a",
                &with(json!({"iss": "https://evil.test"})),
            ),
            "wrong issuer",
        ),
        (
            "wrong audience",
            mint(
                "es256-a.pem",
                "es256-a",
                &with(json!({"aud": "https://other.example.com/mcp"})),
            ),
            "wrong audience",
        ),
        (
            "no exp",
            mint("es256-a.pem", "es256-a", &with(json!({"exp": null}))),
            "refused",
        ),
        // jsonwebtoken has no `none` to read: refused as unreadable.
        ("alg none", alg_none, "not a JWT"),
        (
            "HS256 keyed with the public key",
            hs256_with_public_key,
            "algorithm",
        ),
        ("not a JWT", "abc.def".to_string(), "not a JWT"),
    ];
    for (what, token, says) in refused {
        let a = post(port, Some(&token), None, &init);
        assert_eq!(a.status, 401, "{what}: {a:?}");
        let challenge = a.header("www-authenticate").unwrap();
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{what}: {challenge}"
        );
        assert!(
            a.message()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(says),
            "{what}: {a:?}"
        );
        // And the next request is served.
        assert_eq!(
            text(&call(port, &alice, &session, "echo").message()["result"]),
            "hi"
        );
    }

    // Rotation: the issuer adds es256-b; its first token reads the keys again.
    std::fs::write(&jwks, key_file("jwks-after.json")).unwrap();
    let rotated = mint("es256-b.pem", "es256-b", &claims("bob", ""));
    let bob = initialize(port, &rotated);
    assert_eq!(
        text(&call(port, &rotated, &bob, "echo").message()["result"]),
        "hi"
    );
    // An unknown key now is refused without reading the keys again (once a minute).
    let unknown = mint("es256-b.pem", "no-such-key", &claims("bob", ""));
    let a = post(port, Some(&unknown), None, &init);
    assert_eq!(a.status, 401, "{a:?}");
    assert!(
        a.message()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no key of the issuer is named `no-such-key`"),
        "{a:?}"
    );
    let reads = || {
        s.log_lines()
            .iter()
            .filter(|l| l["message"] == "read the issuer's keys")
            .count()
    };
    assert!(
        eventually(Duration::from_secs(5), || reads() == 2),
        "{} reads",
        reads()
    );
    // The principal is `sub`; no token in the logs.
    let logs = s
        .log_lines()
        .iter()
        .map(|l| l.to_string())
        .collect::<String>();
    assert!(logs.contains("\"principal\":\"alice\""), "{logs:.500}");
    assert!(
        !logs.contains(&alice) && !logs.contains(&rotated),
        "a token leaked"
    );
}

#[test]
fn the_issuers_keys_can_be_fetched_over_http_and_a_dead_issuer_is_503() {
    // A test issuer on loopback that serves its JWKS to whoever asks.
    let jwks = key_file("jwks-before.json");
    let issuer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let issuer_port = issuer.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in issuer.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut conn, &mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                jwks.len()
            );
            let _ = std::io::Write::write_all(&mut conn, head.as_bytes());
            let _ = std::io::Write::write_all(&mut conn, &jwks);
        }
    });
    let port = free_port();
    let mut s = jwt_setup(&format!("http://127.0.0.1:{issuer_port}/jwks.json")).start_http(port);
    wait_listening(&mut s, port);
    let token = mint("es256-a.pem", "es256-a", &claims("alice", "files"));
    let session = initialize(port, &token);
    assert_eq!(
        text(&call(port, &token, &session, "secret").message()["result"]),
        "hi"
    );

    // An issuer nobody answers for: 503 with Retry-After, not a 401 blaming the token.
    let dead = free_port();
    let port = free_port();
    let mut s = jwt_setup(&format!("http://127.0.0.1:{dead}/jwks.json")).start_http(port);
    wait_listening(&mut s, port);
    let init = init_request();
    for _ in 0..3 {
        let a = post(port, Some(&token), None, &init);
        assert_eq!(a.status, 503, "{a:?}");
        assert_eq!(a.header("retry-after"), Some("5"), "{a:?}");
    }
    // One read tried, not one per request: the failure is held for 5 s.
    let failed_reads = || {
        s.log_lines()
            .iter()
            .filter(|l| l["message"] == "cannot read the issuer's keys")
            .count()
    };
    assert!(eventually(Duration::from_secs(5), || failed_reads() >= 1));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(failed_reads(), 1);
}

/// A test issuer serving its JWKS over https on loopback (Python's ssl, with
/// the certificate in tests/data/tls).
const TLS_ISSUER: &str = r#"
import http.server, ssl, sys
jwks = open(sys.argv[1], "rb").read()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(jwks)))
        self.end_headers()
        self.wfile.write(jwks)
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

#[test]
fn the_issuers_keys_are_fetched_over_https_from_a_server_the_ca_vouches_for() {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let issuer = PyServer::start(
        TLS_ISSUER,
        &[
            &data.join("jwt/jwks-before.json"),
            &data.join("tls/issuer.pem"),
            &data.join("tls/issuer.key"),
        ],
    );
    let url = format!("https://127.0.0.1:{}/jwks.json", issuer.port);
    let ca = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls/ca.pem");
    let token = mint("es256-a.pem", "es256-a", &claims("alice", "files"));

    // Told to trust the issuer's CA: the keys come over TLS, the call runs.
    let port = free_port();
    let mut s = jwt_setup_with(&url, &format!("jwks_ca = \"{}\"\n", ca.display())).start_http(port);
    wait_listening(&mut s, port);
    let session = initialize(port, &token);
    assert_eq!(
        text(&call(port, &token, &session, "secret").message()["result"]),
        "hi"
    );
    drop(s);

    // The same issuer against the web's roots: its certificate is refused,
    // the keys cannot be read (503), and nothing is blamed on the token.
    let port = free_port();
    let mut s = jwt_setup(&url).start_http(port);
    wait_listening(&mut s, port);
    let a = post(port, Some(&token), None, &init_request());
    assert_eq!(a.status, 503, "{a:?}");
    let why = a.message()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(why.contains("certificate"), "{why}");

    // And `warden check` refuses a CA file that holds no certificate.
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), "not a certificate\n").unwrap();
    let (code, printed) =
        jwt_setup_with(&url, &format!("jwks_ca = \"{}\"\n", bad.path().display())).check();
    assert_eq!(code, Some(1), "{printed}");
    assert!(
        printed.contains("auth.jwks_ca") && printed.contains("no certificate"),
        "{printed}"
    );
}

#[test]
fn a_client_that_knows_only_the_url_follows_401_to_the_metadata_and_a_token() {
    // Everything on loopback: warden's public URL is where the test reaches it.
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, key_file("jwks-before.json")).unwrap();
    let mut s = Setup::new(&format!(
        "[log]\nstderr = \"warn\"\n[auth]\nmode = \"jwt\"\npublic_url = \"http://127.0.0.1:{port}\"\nauthorization_servers = [\"{ISSUER}\"]\nissuer = \"{ISSUER}\"\njwks = \"{}\"\n",
        jwks.display()
    ))
    .actor("echo", "name = \"echo\"\nkind = \"builtin\"\n")
    .start_http(port);
    wait_listening(&mut s, port);

    // 1. The client tries, and is told where to look.
    let init = init_request();
    let first = post(port, None, None, &init);
    assert_eq!(first.status, 401);
    let challenge = first.header("www-authenticate").unwrap();
    let url = challenge
        .split("resource_metadata=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("{challenge}"));
    let path = url
        .strip_prefix(&format!("http://127.0.0.1:{port}"))
        .unwrap_or_else(|| panic!("{url} is not on warden's public URL"));
    // 2. The metadata names the resource and who issues tokens for it.
    let (answer, _) = crate::mcp_http::raw(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    );
    let metadata: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let resource = metadata["resource"].as_str().unwrap();
    assert_eq!(resource, format!("http://127.0.0.1:{port}/mcp"));
    assert_eq!(metadata["authorization_servers"][0], ISSUER);
    // 3. The issuer (the test's) mints a token for that resource (RFC 8707).
    let mut c = claims("carol", "");
    c["aud"] = json!(resource);
    let token = mint("ed25519.pem", "ed25519", &c);
    // 4. And the call goes through.
    let session = initialize(port, &token);
    assert_eq!(
        text(&call(port, &token, &session, "echo").message()["result"]),
        "hi"
    );
}

/// `[auth] rate` limits each principal over every tool; a token may carry
/// its own. One principal over its limit leaves the others alone.
#[test]
fn each_principal_has_its_own_rate_limit_over_every_tool() {
    let port = free_port();
    let config = format!(
        "[log]\nstderr = \"warn\"\n[auth]\nmode = \"token\"\nrate = \"1/h\"\nburst = 3\n\
         [[auth.tokens]]\nname = \"alice\"\nsha256 = \"{}\"\nrate = \"100/s\"\n\
         [[auth.tokens]]\nname = \"bob\"\nsha256 = \"{}\"\n",
        sha(ALICE),
        sha(BOB)
    );
    let mut s = Setup::new(&config)
        .actor("echo", "name = \"echo\"\nkind = \"builtin\"\n")
        .actor(
            "again",
            "name = \"again\"\nkind = \"builtin\"\nbuiltin = \"echo\"\n",
        )
        .start_http(port);
    wait_listening(&mut s, port);
    let bob = initialize(port, BOB);
    for tool in ["echo", "again", "echo"] {
        let a = call(port, BOB, &bob, tool);
        assert_eq!(text(&a.message()["result"]), "hi", "{a:?}");
    }
    let over = call(port, BOB, &bob, "again");
    let result = &over.message()["result"];
    assert_eq!(result["isError"], true, "{over:?}");
    assert_eq!(
        result["structuredContent"]["kind"], "rate_limited",
        "{over:?}"
    );
    assert!(
        text(result).contains("`bob` is over its rate limit"),
        "{over:?}"
    );
    assert!(
        result["structuredContent"]["retry_after_ms"]
            .as_u64()
            .unwrap()
            > 1000
    );
    // A new session is the same principal, with the same bucket.
    let bob2 = initialize(port, BOB);
    let again = call(port, BOB, &bob2, "echo");
    assert_eq!(
        again.message()["result"]["structuredContent"]["kind"],
        "rate_limited"
    );
    let alice = initialize(port, ALICE);
    for _ in 0..10 {
        let a = call(port, ALICE, &alice, "echo");
        assert_eq!(text(&a.message()["result"]), "hi", "{a:?}");
    }
    // A session belongs to the principal that opened it: alice's valid
    // token does not make bob's session hers.
    let stolen = call(port, ALICE, &bob, "echo");
    let error = &stolen.message()["error"];
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("belongs to another principal")),
        "{stolen:?}"
    );
}

#[test]
fn another_principals_token_cannot_cancel_stream_or_end_a_session() {
    let port = free_port();
    let mut s = Setup::new(&config())
        .actor("echo", "name = \"echo\"\nkind = \"builtin\"\n")
        .actor("slow", &sleep_tool("slow", ""))
        .start_http(port);
    wait_listening(&mut s, port);
    let session = initialize(port, ALICE);
    let slow = |id: u64| {
        let session = session.clone();
        std::thread::spawn(move || {
            post(
                port,
                Some(ALICE),
                Some(&session),
                &json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                        "params": {"name": "slow", "arguments": {"ms": 1500}}}),
            )
        })
    };
    let cancel = |token: &str, id: u64| {
        post(
            port,
            Some(token),
            Some(&session),
            &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                    "params": {"requestId": id, "reason": "test"}}),
        )
    };

    // Bob holds a valid token and knows alice's session and request ids:
    // his cancellation, his GET stream and his DELETE are refused before
    // anything acts on them, and alice's call runs to its end.
    let call = slow(10);
    std::thread::sleep(Duration::from_millis(300));
    let refused = cancel(BOB, 10);
    assert_eq!(refused.status, 403, "{refused:?}");
    for method in ["GET", "DELETE"] {
        let refused = Conn::open(port).send(
            method,
            &[
                ("Authorization", &format!("Bearer {BOB}")),
                ("Mcp-Session-Id", &session),
            ],
            "",
        );
        assert_eq!(refused.status, 403, "{method}: {refused:?}");
    }
    let answer = call.join().unwrap();
    assert_eq!(
        text(&answer.message()["result"]).trim(),
        "slept",
        "{answer:?}"
    );

    // The same cancellation from alice does cancel her call: its stream
    // ends without an answer (a cancelled request gets none), and its log
    // line says so.
    let call = slow(11);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(cancel(ALICE, 11).status, 202);
    let answer = call.join().unwrap();
    assert!(!answer.messages.iter().any(|m| m["id"] == 11), "{answer:?}");
    assert!(eventually(Duration::from_secs(5), || {
        s.log_lines()
            .iter()
            .any(|l| l["request_id"] == "11" && l["outcome"] == "cancelled")
    }));

    // And alice's session goes on.
    let a = post(
        port,
        Some(ALICE),
        Some(&session),
        &json!({"jsonrpc": "2.0", "id": 12, "method": "tools/call",
                "params": {"name": "echo", "arguments": {"message": "still mine"}}}),
    );
    assert_eq!(text(&a.message()["result"]), "still mine", "{a:?}");
    let logs = format!("{:?}", s.log_lines());
    assert!(
        logs.contains("naming another principal's session"),
        "{logs:.300}"
    );
}

#[test]
fn the_python_sdks_oauth_client_finds_the_issuer_gets_a_token_and_steps_up_a_scope() {
    let Some(python) = crate::clients::installed("venv/bin/python") else {
        return;
    };
    // The script runs the authorization server on this port, then the client.
    let (as_port, port) = (free_port(), free_port());
    let issuer = format!("http://127.0.0.1:{as_port}");
    let mut s = Setup::new(&format!(
        "[log]\nstderr = \"warn\"\n[auth]\nmode = \"jwt\"\nauthorization_servers = [\"{issuer}\"]\n\
         issuer = \"{issuer}\"\njwks = \"{issuer}/jwks.json\"\n"
    ))
    .actor("echo", "name = \"echo\"\nkind = \"builtin\"\n")
    .actor(
        "secret",
        "name = \"secret\"\nkind = \"builtin\"\nbuiltin = \"echo\"\nscopes = [\"files\"]\n",
    )
    .actor(
        "admin",
        "name = \"admin\"\nkind = \"builtin\"\nbuiltin = \"echo\"\nscopes = [\"admin\"]\n",
    )
    .start_http(port);
    wait_listening(&mut s, port);
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let (status, _, stderr) = run_to_end(
        std::process::Command::new(python)
            .arg(data.join("clients/python_oauth.py"))
            .arg(as_port.to_string())
            .arg(format!("http://127.0.0.1:{port}/mcp"))
            .arg(data.join("data/jwt/es256-a.pem"))
            .arg(data.join("data/jwt/jwks-before.json")),
        Duration::from_secs(90),
    );
    assert!(
        status.success(),
        "python_oauth.py failed ({status}):\n{stderr}"
    );
    assert!(stderr.contains("python_oauth: ok"), "{stderr}");
    println!("{stderr}");
    // warden refused the first request (no token) and the `admin` call
    // (a scope short), and ran the calls of the tokens it was given.
    let logs = s.log_lines();
    assert!(
        logs.iter()
            .any(|l| l["message"] == "refused for want of a scope" && l["missing"] == "admin"),
        "no insufficient_scope refusal logged"
    );
    let ran = |tool: &str| {
        logs.iter().any(|l| {
            l["message"] == "call"
                && l["tool"] == tool
                && l["outcome"] == "ok"
                && l["principal"] == "oauth-user"
        })
    };
    assert!(
        ran("secret") && ran("admin"),
        "the calls did not run as oauth-user"
    );
}

#[test]
fn a_token_can_come_from_a_file_as_a_mounted_secret_does() {
    // A Kubernetes secret mounted as a file ends in a newline, which is
    // not part of the token. The path is relative to the config file.
    let port = free_port();
    let setup = Setup::new(
        "[log]\nstderr = \"warn\"\n[auth]\nmode = \"token\"\n[[auth.tokens]]\nname = \"ci\"\nfile = \"secrets/ci\"\n",
    )
    .actor("echo", "name = \"echo\"\nkind = \"builtin\"\n");
    std::fs::create_dir(setup.path().join("secrets")).unwrap();
    std::fs::write(setup.path().join("secrets/ci"), "weak\n").unwrap();
    let (code, said) = setup.check();
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("auth.tokens[0].file: the token in") && said.contains("too weak"),
        "{said}"
    );
    std::fs::write(setup.path().join("secrets/ci"), format!("{ALICE}\n")).unwrap();
    let (code, said) = setup.check();
    assert_eq!(code, Some(0), "{said}");
    let mut s = setup.start_http(port);
    wait_listening(&mut s, port);
    let session = initialize(port, ALICE);
    assert_eq!(
        text(&call(port, ALICE, &session, "echo").message()["result"]),
        "hi"
    );
    let said = format!("{}{:?}", s.stderr_lines().join("\n"), s.log_lines());
    assert!(!said.contains(ALICE), "the token leaked");
}
