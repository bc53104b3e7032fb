//! Property tests of everything that takes outside input: the stdin line
//! handling, config and actor files, argv templating with schema validation,
//! and the control protocol. The same entry points are fuzzed by hand with
//! cargo-fuzz (`fuzz/`); these run in CI, a few hundred cases each.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use warden::config;
use warden::mcp::stdio::{decide, Verdict};

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Bytes that look a little like JSON, so that the parser gets past its first
/// character often: brackets, quotes, escapes, digits, invalid UTF-8, NUL.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"{".to_vec()),
        Just(b"}".to_vec()),
        Just(b"[".to_vec()),
        Just(b"]".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"\\".to_vec()),
        Just(b":".to_vec()),
        Just(b",".to_vec()),
        Just(b"\"id\"".to_vec()),
        Just(b"\"method\"".to_vec()),
        Just(b"\"tools/call\"".to_vec()),
        Just(b"\"jsonrpc\":\"2.0\"".to_vec()),
        Just(b"null".to_vec()),
        Just(vec![0xff, 0xfe]),
        Just(vec![0]),
        "[0-9]{1,3}".prop_map(String::into_bytes),
        "[a-z ]{1,5}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 1..4),
        (1usize..300).prop_map(|n| vec![b'['; n]),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

fn request_id() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        "[a-zA-Z0-9 \\-\"\\\\]{0,12}".prop_map(Value::from),
    ]
}

proptest! {
    #![proptest_config(cases(500))]

    /// Any line: an answer, a message for rmcp or nothing, never a panic;
    /// an answer is one line of valid JSON.
    #[test]
    fn any_stdin_line_is_decided(line in jsonish(), initialized in any::<bool>()) {
        let mut init = initialized;
        if let Verdict::Answer(a) = decide(&line, &mut init) {
            let text = serde_json::to_string(&a).unwrap();
            prop_assert!(!text.contains('\n'));
            let v: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(&v["jsonrpc"], "2.0");
            prop_assert!(v["error"]["code"].is_i64());
            // JSON-RPC 2.0: an error response always has an id, null when
            // the request's could not be read.
            prop_assert!(v.get("id").is_some(), "no id member: {}", text);
        }
    }

    /// A request that names its id first is never dropped silently, whatever
    /// follows: it goes to rmcp (which answers it) or is answered here, on
    /// its own id.
    #[test]
    fn a_request_with_an_id_is_never_lost(id in request_id(), params in jsonish()) {
        let line = [
            format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"tools/call\",\"params\":").into_bytes(),
            params,
            b"}".to_vec(),
        ]
        .concat();
        let mut init = true;
        match decide(&line, &mut init) {
            Verdict::Pass(_) => {}
            Verdict::Answer(a) => {
                let v = serde_json::to_value(&a).unwrap();
                prop_assert_eq!(&v["id"], &id, "{}", String::from_utf8_lossy(&line));
            }
            Verdict::Drop => prop_assert!(false, "dropped: {}", String::from_utf8_lossy(&line)),
        }
    }
}

/// TOML-ish text built from the config's own vocabulary.
fn tomlish() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("name"),
        Just("kind"),
        Just("command"),
        Just("args"),
        Just("cwd"),
        Just("env"),
        Just("paths"),
        Just("prefix"),
        Just("timeout"),
        Just("concurrency"),
        Just("queue"),
        Just("memory"),
        Just("limit"),
        Just("max_line"),
        Just("rate"),
        Just("restart"),
        Just("ping_every"),
        Just("priority"),
        Just("input"),
        Just("x"),
    ];
    let value = prop_oneof![
        Just("\"echo\"".to_string()),
        Just("\"builtin\"".to_string()),
        Just("\"command\"".to_string()),
        Just("\"mcp\"".to_string()),
        Just("\"1s\"".to_string()),
        Just("\"0s\"".to_string()),
        Just("\"16MiB\"".to_string()),
        Just("\"-1KiB\"".to_string()),
        Just("\"10/s\"".to_string()),
        Just("[\"{x}\", \"--\", \"{y\"]".to_string()),
        Just("{ a = 1 }".to_string()),
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("18446744073709551615".to_string()),
        Just("1e308".to_string()),
        Just("true".to_string()),
        Just("\"/\"".to_string()),
        Just("\"..\"".to_string()),
        "\"[ -~]{0,8}\"".prop_map(|s| s),
    ];
    let line = prop_oneof![
        (key.clone(), value).prop_map(|(k, v)| format!("{k} = {v}")),
        key.clone().prop_map(|k| format!("[{k}]")),
        Just("[server]".to_string()),
        Just("[memory]".to_string()),
        Just("[input]\ntype = \"object\"".to_string()),
        "[ -~]{0,12}".prop_map(|s| s),
    ];
    proptest::collection::vec(line, 0..12).prop_map(|l| l.join("\n"))
}

proptest! {
    #![proptest_config(cases(300))]

    /// Any config and actor text: a loaded config or problems, never a panic.
    #[test]
    fn any_config_text_is_checked(config in tomlish(), actor in tomlish()) {
        let _ = config::check_texts(&config, &[("a.toml", actor.as_str())]);
    }

    /// Arguments rendered into argv: each value lands whole in one element,
    /// never carries NUL, and never starts an option before `--`.
    #[test]
    fn argv_templating_keeps_values_in_their_place(
        first in "[ -~]{0,10}",
        rest in "[ -~]{0,10}",
        n in any::<i64>(),
        nul in any::<bool>(),
    ) {
        let cmd = config::CommandSpec {
            program: "true".into(),
            args: ["{first}", "--n={n}", "pre{first}", "--", "{rest}"]
                .iter()
                .map(|s| config::ArgTemplate::parse(s).unwrap())
                .collect(),
            cwd: "/".into(),
            env: vec![],
            limits: Default::default(),
            paths: vec![],
        };
        let first = if nul { format!("{first}\u{0}") } else { first };
        let mut args = Map::new();
        args.insert("first".into(), json!(first));
        args.insert("rest".into(), json!(rest));
        args.insert("n".into(), json!(n));
        match warden::backends::command::prepare(&cmd, &args) {
            Ok(argv) => {
                prop_assert_eq!(&argv, &vec![
                    first.clone(), format!("--n={n}"), format!("pre{first}"), "--".into(), rest.clone(),
                ]);
                prop_assert!(!first.starts_with('-'));
                prop_assert!(argv.iter().all(|a| !a.contains('\0')));
            }
            Err(e) => {
                prop_assert!(nul || first.starts_with('-'), "{}", e.message);
                prop_assert_eq!(e.kind, warden::core::error::ErrorKind::Validation);
            }
        }
    }

    /// Any control line: a request or a "bad request" error, never a panic.
    #[test]
    fn any_control_line_is_parsed(line in "[ -~]{0,64}", signal in "[ -~]{0,12}") {
        if let Err(e) = warden::ops::control::parse_request(&line) {
            prop_assert!(e.to_string().starts_with("bad request"));
        }
        let _ = warden::ops::control::parse_signal(&signal);
    }

    /// Control requests built from the protocol's own words.
    #[test]
    fn control_requests_parse_only_when_complete(
        cmd in prop_oneof![Just("status"), Just("metrics"), Just("kill"), Just("breaker"), Just("reboot")],
        actor in proptest::option::of("[a-z:/0-9]{0,10}"),
        extra in proptest::option::of("[a-z]{1,5}"),
    ) {
        let mut req = json!({"cmd": cmd});
        if let Some(a) = &actor { req["actor"] = json!(a); }
        if let Some(x) = &extra { req[x.as_str()] = json!(1); }
        let ok = warden::ops::control::parse_request(&req.to_string()).is_ok();
        // An extra field is unknown, or (`actor`, `signal`) not a string.
        let expected = extra.is_none()
            && match cmd {
                "status" | "metrics" => actor.is_none(),
                "kill" => actor.is_some(),
                _ => false,
            };
        prop_assert_eq!(ok, expected, "{}", req);
    }
}

/// The repository's own config and actors load; the property above is not
/// vacuous for valid input.
#[test]
fn the_shipped_config_checks() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = std::fs::read_to_string(repo.join("config.toml")).unwrap();
    let mut actors = Vec::new();
    for e in std::fs::read_dir(repo.join("actors")).unwrap() {
        let p = e.unwrap().path();
        actors.push((
            p.file_name().unwrap().to_string_lossy().to_string(),
            std::fs::read_to_string(&p).unwrap(),
        ));
    }
    let actors: Vec<(&str, &str)> = actors
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let loaded = config::check_texts(&config, &actors).unwrap_or_else(|p| panic!("{p:?}"));
    assert_eq!(loaded.tools.len(), actors.len());
}
