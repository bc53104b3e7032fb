//! `warden-bench auth-check [--calls N] [--rounds R] [--keys DIR]`: what
//! `[auth]` costs a request, measured in process, without the network and
//! the rest of the call path around it (which the HTTP pairs of
//! scripts/bench measure end to end, with their noise).
//!
//! Per request, the `/mcp` middleware checks the bearer token
//! (`Auth::check`) and reads the body as JSON to find the tool it names,
//! for its scopes. Timed here, each N times per round, medians of R rounds:
//!
//! - `jwt_remembered`: a JWT already checked once (the usual request):
//!   SHA-256 of the token and the lookup of its remembered principal;
//! - `jwt_verified`: a JWT never seen (each one minted with its own `jti`):
//!   the ES256 signature and the claims, checked;
//! - `static_token`: `mode = "token"`, a 64-hex-digit token;
//! - `body_json`: reading a `tools/call` body as JSON.
//!
//! The keys and the token's signing key are those of tests/data/jwt.

use std::process::ExitCode;
use std::time::Instant;

use axum::http::{header, HeaderMap, HeaderValue};
use serde_json::{json, Value};
use warden::mcp::auth::Auth;

const ISSUER: &str = "https://issuer.bench.test";
const AUDIENCE: &str = "http://bench.test/mcp";
const STATIC_TOKEN: &str = "8f14e45fceea167a5a36dedd4bea2543f1b5a7c2d9e3f0a6b4c8d2e1f7a9b3c5";
const BODY: &str = r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hello"}}}"#;

pub fn run(argv: &[String]) -> ExitCode {
    match measure(argv) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("warden-bench auth-check: {e}");
            ExitCode::from(1)
        }
    }
}

fn measure(argv: &[String]) -> Result<Value, String> {
    let (mut calls, mut rounds, mut keys) = (20_000usize, 5usize, "tests/data/jwt".to_string());
    let mut args = argv.iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--calls" => calls = value.parse().map_err(|_| "--calls: a number")?,
            "--rounds" => rounds = value.parse().map_err(|_| "--rounds: a number")?,
            "--keys" => keys = value.clone(),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let keys = std::fs::canonicalize(&keys).map_err(|e| format!("{keys}: {e}"))?;
    let signing = std::fs::read(keys.join("es256-a.pem")).map_err(|e| e.to_string())?;
    let signing = jsonwebtoken::EncodingKey::from_ec_pem(&signing).map_err(|e| e.to_string())?;
    let mint = |jti: usize| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("es256-a".into());
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "bench", "scope": "files",
                            "exp": exp, "jti": jti.to_string()});
        jsonwebtoken::encode(&header, &claims, &signing).expect("mint")
    };

    let jwt = auth(&format!(
        "[auth]\nmode = \"jwt\"\npublic_url = \"http://bench.test\"\nissuer = \"{ISSUER}\"\njwks = \"{}\"\n",
        keys.join("jwks-before.json").display()
    ))?;
    let digest = {
        use sha2::Digest;
        sha2::Sha256::digest(STATIC_TOKEN.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let token = auth(&format!(
        "[auth]\nmode = \"token\"\n[[auth.tokens]]\nname = \"bench\"\nsha256 = \"{digest}\"\n"
    ))?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let remembered = bearer(&mint(0));
    let static_token = bearer(STATIC_TOKEN);
    let mut figures: Vec<(&str, Vec<f64>)> = vec![
        ("jwt_remembered", vec![]),
        ("jwt_verified", vec![]),
        ("static_token", vec![]),
        ("body_json", vec![]),
    ];
    rt.block_on(async {
        // The first check verifies and remembers.
        jwt.check(&remembered)
            .await
            .map_err(|_| "the token was refused")?;
        for round in 0..rounds {
            let t = Instant::now();
            for _ in 0..calls {
                jwt.check(&remembered).await.map_err(|_| "refused")?;
            }
            figures[0].1.push(per_call_ns(t, calls));
            // A tenth as many, minted for this round: each one is a
            // signature check.
            let batch: Vec<HeaderMap> = (0..calls / 10)
                .map(|i| bearer(&mint(1 + round * calls + i)))
                .collect();
            let t = Instant::now();
            for h in &batch {
                jwt.check(h).await.map_err(|_| "refused")?;
            }
            figures[1].1.push(per_call_ns(t, batch.len()));
            let t = Instant::now();
            for _ in 0..calls {
                token.check(&static_token).await.map_err(|_| "refused")?;
            }
            figures[2].1.push(per_call_ns(t, calls));
            let t = Instant::now();
            for _ in 0..calls {
                let v: Value = serde_json::from_slice(std::hint::black_box(BODY.as_bytes()))
                    .map_err(|e| e.to_string())?;
                std::hint::black_box(v);
            }
            figures[3].1.push(per_call_ns(t, calls));
        }
        Ok::<(), String>(())
    })?;
    let mut report = json!({"calls": calls, "rounds": rounds});
    for (name, ns) in figures {
        report[name] = json!({"median_ns": median(&ns), "rounds_ns": ns});
    }
    Ok(report)
}

/// An `Auth` for this `[auth]` text, checked as `warden check` would.
fn auth(config: &str) -> Result<std::sync::Arc<Auth>, String> {
    let loaded = warden::config::check_texts(config, &[])
        .map_err(|p| format!("{} problem(s), the first: {}", p.len(), p[0]))?;
    Auth::new(&loaded.config)?.ok_or_else(|| "[auth] is off".into())
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).expect("a header value"),
    );
    h
}

fn per_call_ns(t: Instant, n: usize) -> f64 {
    t.elapsed().as_nanos() as f64 / n.max(1) as f64
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
