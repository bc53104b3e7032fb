//! Who may use MCP over HTTP (`[auth]`): warden as an OAuth 2.1 resource
//! server. A request to `/mcp` without a token accepted here is answered
//! 401 with a `WWW-Authenticate` challenge naming the protected resource
//! metadata (RFC 9728, served at `/.well-known/oauth-protected-resource`),
//! so that a client can find where to get one; a request for a tool (or a
//! prompt, or a resource) whose scopes the token lacks is answered 403
//! `insufficient_scope`, naming them, before anything runs.
//!
//! `mode = "token"`: static bearer tokens, each with a name (the principal)
//! and scopes, kept only as SHA-256 hashes and compared in constant time.
//! `mode = "jwt"`: JWTs signed by the issuer's keys (a JWKS file, or fetched
//! over https:// (or http://) within a deadline, the server's certificate
//! checked against the web's roots or `jwks_ca`'s): signature, `iss`, `aud`, `exp` and `nbf`
//! are checked, with only the algorithm the key names; the principal is
//! `sub`, its scopes `scope` (or `scp`). A token naming a key not known
//! reads the keys again at once, and then at most once a minute. A checked
//! token is remembered (by its hash) until it expires, so the signature is
//! checked once, not per request.
//! A client's token stays here: nothing downstream ever sees it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AuthMode, Config};
use crate::core::call::Principal;
use crate::core::registry::Registry;

/// The path of the protected resource metadata, and its suffixed form for
/// the resource at `/mcp` (RFC 9728 §3.1).
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";
pub const METADATA_PATH_MCP: &str = "/.well-known/oauth-protected-resource/mcp";

/// The longest `Authorization` header read; a longer one is refused unread.
const MAX_AUTHORIZATION: usize = 8 * 1024;

/// The tokens accepted and what the metadata says.
pub struct Auth {
    tokens: Vec<Known>,
    jwt: Option<Jwt>,
    /// This resource's identifier: the URL of `/mcp`.
    resource: String,
    metadata_url: String,
    authorization_servers: Vec<String>,
}

struct Known {
    hash: [u8; 32],
    principal: Arc<Principal>,
}

impl Auth {
    /// The checker `[auth]` asks for; None when it is off.
    pub fn new(config: &Config) -> Result<Option<Arc<Auth>>, String> {
        let auth = &config.auth;
        if auth.mode == AuthMode::None {
            return Ok(None);
        }
        let mut tokens = Vec::with_capacity(auth.tokens.len());
        for t in &auth.tokens {
            let hash = match (&t.sha256, t.read_token()) {
                (Some(hex), _) => parse_hex(hex).ok_or_else(|| {
                    format!("auth.tokens `{}`: sha256 is not 64 hex digits", t.name)
                })?,
                (None, Ok(Some(token))) => Sha256::digest(token.as_bytes()).into(),
                (None, Err(why)) => return Err(format!("auth.tokens `{}`: {why}", t.name)),
                (None, Ok(None)) => {
                    return Err(format!("auth.tokens `{}`: no sha256, env or file", t.name))
                }
            };
            tokens.push(Known {
                hash,
                principal: Arc::new(Principal {
                    name: t.name.clone(),
                    scopes: t.scopes.clone(),
                    limit: auth.limit_of(Some(t)),
                }),
            });
        }
        let base = if auth.public_url.is_empty() {
            format!("http://{}", config.http.listen)
        } else {
            auth.public_url.trim_end_matches('/').to_string()
        };
        let resource = format!("{base}/mcp");
        let client = match auth.mode == AuthMode::Jwt && is_url(&auth.jwks) {
            true => Some(jwks_client(&auth.jwks_ca)?),
            false => None,
        };
        let jwt = (auth.mode == AuthMode::Jwt).then(|| Jwt {
            issuer: auth.issuer.clone(),
            audience: if auth.audience.is_empty() {
                resource.clone()
            } else {
                auth.audience.clone()
            },
            leeway: auth.leeway,
            limit: auth.limit_of(None),
            jwks: auth.jwks.clone(),
            client,
            keys: tokio::sync::RwLock::new(Keys::default()),
            reads: tokio::sync::Mutex::new(Reads::default()),
            checked: std::sync::Mutex::new(HashMap::new()),
        });
        Ok(Some(Arc::new(Auth {
            tokens,
            jwt,
            resource,
            metadata_url: format!("{base}{METADATA_PATH_MCP}"),
            authorization_servers: auth.authorization_servers.clone(),
        })))
    }

    /// The principal of a request's bearer token, or the 401 that says why not.
    pub async fn check(&self, headers: &HeaderMap) -> Result<Arc<Principal>, Box<Response>> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(self.unauthorized(None));
        };
        if value.len() > MAX_AUTHORIZATION {
            return Err(self.unauthorized(Some("the Authorization header is too long")));
        }
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            return Err(self.unauthorized(Some("the Authorization header is not `Bearer TOKEN`")));
        };
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(jwt) = &self.jwt {
            return jwt.check(token, hash).await.map_err(|why| match why {
                Refused::Token(why) => self.unauthorized(Some(&why)),
                Refused::Keys(why) => {
                    let mut r = (
                        StatusCode::SERVICE_UNAVAILABLE,
                        axum::Json(error_body(&format!(
                            "the issuer's keys cannot be read: {why}"
                        ))),
                    )
                        .into_response();
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                    Box::new(r)
                }
            });
        }
        // Every known token is compared, whichever matches.
        let mut found = None;
        for known in &self.tokens {
            if bool::from(known.hash.ct_eq(&hash)) {
                found = Some(known.principal.clone());
            }
        }
        found.ok_or_else(|| self.unauthorized(Some("the token is not valid here")))
    }

    /// 401, with the challenge that points a client at the metadata.
    fn unauthorized(&self, invalid: Option<&str>) -> Box<Response> {
        let mut challenge = format!("Bearer resource_metadata=\"{}\"", self.metadata_url);
        if let Some(why) = invalid {
            // A quoted-string: no quote or backslash of the reason breaks it.
            let why = why.replace(['"', '\\'], "'");
            challenge.push_str(&format!(
                ", error=\"invalid_token\", error_description=\"{why}\""
            ));
        }
        let message = invalid.unwrap_or("this MCP endpoint needs a bearer token");
        let mut r = (StatusCode::UNAUTHORIZED, axum::Json(error_body(message))).into_response();
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        Box::new(r)
    }

    /// 403 for a request that needs scopes the principal lacks.
    pub fn forbidden(&self, what: &str, missing: &[String]) -> Response {
        let scope = missing.join(" ");
        let challenge = format!(
            "Bearer resource_metadata=\"{}\", error=\"insufficient_scope\", scope=\"{scope}\"",
            self.metadata_url
        );
        let body = error_body(&format!(
            "{what} needs the scope(s) {scope}, which this token does not have"
        ));
        let mut r = (StatusCode::FORBIDDEN, axum::Json(body)).into_response();
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        r
    }

    /// The protected resource metadata (RFC 9728), with the scopes the
    /// tools of this configuration generation name (a reload may add some).
    pub fn metadata(&self, tools: &Registry) -> Value {
        let scopes: BTreeSet<&String> = tools
            .iter()
            .flat_map(|t| {
                let exports = t.spec.mcp().map(|m| m.export_scopes.values().flatten());
                t.spec.scopes.iter().chain(exports.into_iter().flatten())
            })
            .collect();
        json!({
            "resource": self.resource,
            "authorization_servers": self.authorization_servers,
            "scopes_supported": scopes,
            "bearer_methods_supported": ["header"],
            "resource_name": "warden",
        })
    }
}

/// How long fetching the issuer's keys may take.
const JWKS_DEADLINE: Duration = Duration::from_secs(5);
/// The largest JWKS read.
const JWKS_MAX: usize = 1 << 20;
/// After reading the keys again for an unknown key, the least wait before
/// the next time.
const REREAD_EVERY: Duration = Duration::from_secs(60);
/// Checked tokens remembered at most; past it the memory starts over.
const CHECKED_MAX: usize = 4096;

/// JWTs of one issuer.
struct Jwt {
    issuer: String,
    audience: String,
    leeway: Duration,
    /// Each principal's rate limit (`[auth] rate`).
    limit: Option<crate::config::RateLimit>,
    /// A file path, or an https:// or http:// URL.
    jwks: String,
    /// What fetches the keys, where `jwks` is a URL.
    client: Option<JwksClient>,
    keys: tokio::sync::RwLock<Keys>,
    /// One read of the keys at a time, and when the last ones were.
    reads: tokio::sync::Mutex<Reads>,
    /// Tokens already checked (by hash): their principal, until they expire.
    checked: std::sync::Mutex<Checked>,
}

/// A token's hash → its principal, and until when.
type Checked = HashMap<[u8; 32], (Arc<Principal>, std::time::SystemTime)>;

#[derive(Default)]
struct Reads {
    /// When the keys were last read for a key they lacked.
    for_unknown_kid: Option<Instant>,
    /// The last read that failed, and why: for a few seconds, requests are
    /// answered with it rather than each trying again.
    failed: Option<(Instant, String)>,
}

/// How long a failed read of the keys is answered from memory.
const FAILED_READ_HOLD: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Keys {
    loaded: bool,
    by_kid: HashMap<String, (jsonwebtoken::DecodingKey, jsonwebtoken::Algorithm)>,
    /// Keys without a `kid`: tried when a token names none.
    unnamed: Vec<(jsonwebtoken::DecodingKey, jsonwebtoken::Algorithm)>,
}

enum Refused {
    /// The token: 401.
    Token(String),
    /// The keys could not be read: 503.
    Keys(String),
}

#[derive(serde::Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    exp: u64,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<Vec<String>>,
}

impl Jwt {
    async fn check(&self, token: &str, hash: [u8; 32]) -> Result<Arc<Principal>, Refused> {
        let now = std::time::SystemTime::now();
        if let Some((p, until)) = self.lock_checked().get(&hash) {
            if *until > now {
                return Ok(p.clone());
            }
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| Refused::Token(format!("not a JWT warden can read ({e})")))?;
        let kid = header.kid.clone();
        let (key, alg) = match self.key(kid.as_deref()).await? {
            Some(k) => k,
            None => {
                return Err(Refused::Token(format!(
                    "no key of the issuer is named {}",
                    kid.as_deref()
                        .map_or("(none)".to_string(), |k| format!("`{k}`"))
                )))
            }
        };
        // Only the algorithm the key is for: never `none`, never HS256
        // with a public key for a secret.
        let mut v = jsonwebtoken::Validation::new(alg);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.validate_nbf = true;
        v.leeway = self.leeway.as_secs();
        let data = jsonwebtoken::decode::<Claims>(token, &key, &v)
            .map_err(|e| Refused::Token(format!("the token was refused: {}", describe(&e))))?;
        let c = data.claims;
        let scopes = match (c.scope, c.scp) {
            (Some(s), _) => s.split_whitespace().map(str::to_string).collect(),
            (None, Some(s)) => s,
            (None, None) => Vec::new(),
        };
        let principal = Arc::new(Principal {
            name: c.sub.unwrap_or_else(|| "(no sub)".to_string()),
            scopes,
            limit: self.limit,
        });
        let until = std::time::UNIX_EPOCH + Duration::from_secs(c.exp) + self.leeway;
        let mut checked = self.lock_checked();
        if checked.len() >= CHECKED_MAX {
            checked.clear();
        }
        checked.insert(hash, (principal.clone(), until));
        Ok(principal)
    }

    fn lock_checked(&self) -> std::sync::MutexGuard<'_, Checked> {
        self.checked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key `kid` names (or a key without a name), reading the keys
    /// first when none are loaded, and again when it is not among them
    /// (at once the first time, then at most once a minute).
    async fn key(
        &self,
        kid: Option<&str>,
    ) -> Result<Option<(jsonwebtoken::DecodingKey, jsonwebtoken::Algorithm)>, Refused> {
        let find = |keys: &Keys| match kid {
            Some(k) => keys.by_kid.get(k).cloned(),
            None => keys.unnamed.first().cloned(),
        };
        // The key, and whether any read of the keys has succeeded yet.
        let lookup = || async {
            let keys = self.keys.read().await;
            (find(&keys), keys.loaded)
        };
        if let (Some(k), _) = lookup().await {
            return Ok(Some(k));
        }
        // One read at a time; whoever waited may find it done.
        let mut reads = self.reads.lock().await;
        let loaded = match lookup().await {
            (Some(k), _) => return Ok(Some(k)),
            (None, loaded) => loaded,
        };
        if let Some((at, why)) = &reads.failed {
            if at.elapsed() < FAILED_READ_HOLD {
                return Err(Refused::Keys(why.clone()));
            }
        }
        if loaded {
            if reads
                .for_unknown_kid
                .is_some_and(|t| t.elapsed() < REREAD_EVERY)
            {
                return Ok(None);
            }
            reads.for_unknown_kid = Some(Instant::now());
        }
        match self.read_keys().await {
            Ok(fresh) => {
                reads.failed = None;
                let mut keys = self.keys.write().await;
                *keys = fresh;
                Ok(find(&keys))
            }
            Err(why) => {
                tracing::warn!(actor = crate::core::names::TRANSPORT, jwks = %self.jwks, error = %why, "cannot read the issuer's keys");
                reads.failed = Some((Instant::now(), why.clone()));
                Err(Refused::Keys(why))
            }
        }
    }

    async fn read_keys(&self) -> Result<Keys, String> {
        let text = if let Some(client) = &self.client {
            fetch(client, &self.jwks).await?
        } else {
            // Off the runtime's threads: a file on a stalled mount blocks.
            let path = self.jwks.clone();
            let read = tokio::task::spawn_blocking(move || std::fs::read(path));
            match tokio::time::timeout(JWKS_DEADLINE, read).await {
                Ok(Ok(Ok(b))) if b.len() <= JWKS_MAX => b,
                Ok(Ok(Ok(_))) => {
                    return Err(format!("{} is larger than {JWKS_MAX} bytes", self.jwks))
                }
                Ok(Ok(Err(e))) => return Err(format!("{}: {e}", self.jwks)),
                Ok(Err(e)) => return Err(format!("{}: {e}", self.jwks)),
                Err(_) => return Err(format!("{}: not read within {JWKS_DEADLINE:?}", self.jwks)),
            }
        };
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&text)
            .map_err(|e| format!("{} is not a JWKS: {e}", self.jwks))?;
        let mut keys = Keys {
            loaded: true,
            ..Keys::default()
        };
        for jwk in &set.keys {
            let Some(alg) = algorithm_of(jwk) else {
                tracing::warn!(actor = crate::core::names::TRANSPORT, kid = ?jwk.common.key_id, "a key of the issuer is of no algorithm warden takes (RS256, ES256, EdDSA): skipped");
                continue;
            };
            let Ok(key) = jsonwebtoken::DecodingKey::from_jwk(jwk) else {
                tracing::warn!(actor = crate::core::names::TRANSPORT, kid = ?jwk.common.key_id, "a key of the issuer cannot be read: skipped");
                continue;
            };
            match &jwk.common.key_id {
                Some(kid) => {
                    keys.by_kid.insert(kid.clone(), (key, alg));
                }
                None => keys.unnamed.push((key, alg)),
            }
        }
        tracing::info!(actor = crate::core::names::TRANSPORT, jwks = %self.jwks, keys = keys.by_kid.len() + keys.unnamed.len(), "read the issuer's keys");
        Ok(keys)
    }
}

/// The one algorithm a key is for: what it names, if warden takes it, else
/// its type's (RS256 for RSA, ES256 for P-256, EdDSA for Ed25519).
fn algorithm_of(jwk: &jsonwebtoken::jwk::Jwk) -> Option<jsonwebtoken::Algorithm> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, KeyAlgorithm};
    use jsonwebtoken::Algorithm;
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(by_type),
        Some(KeyAlgorithm::RS256) if by_type == Algorithm::RS256 => Some(by_type),
        Some(KeyAlgorithm::ES256) if by_type == Algorithm::ES256 => Some(by_type),
        Some(KeyAlgorithm::EdDSA) if by_type == Algorithm::EdDSA => Some(by_type),
        Some(_) => None,
    }
}

fn describe(e: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => "bad signature",
        K::ExpiredSignature => "expired",
        K::ImmatureSignature => "not valid yet (nbf)",
        K::InvalidIssuer => "wrong issuer",
        K::InvalidAudience => "wrong audience",
        K::InvalidAlgorithm => "an algorithm the key is not for",
        K::MissingRequiredClaim(_) => "a required claim (exp, iss, aud) is missing",
        _ => "malformed",
    }
}

/// An HTTP client for the issuer's keys, https:// or http://.
type JwksClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Empty<axum::body::Bytes>,
>;

fn is_url(jwks: &str) -> bool {
    jwks.starts_with("https://") || jwks.starts_with("http://")
}

/// The client that fetches the keys: TLS on rustls (ring), the server's
/// certificate checked against the CAs of `ca` (a PEM file) if given, else
/// against the web's roots built into warden.
fn jwks_client(ca: &str) -> Result<JwksClient, String> {
    let tls = crate::config::tls::client_config((!ca.is_empty()).then_some(ca))
        .map_err(|e| format!("auth.jwks_ca {e}"))?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}

/// GETs `url` within the deadline and the size cap.
async fn fetch(client: &JwksClient, url: &str) -> Result<Vec<u8>, String> {
    use http_body_util::BodyExt;
    let uri: axum::http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let fetched = async {
        let res = client
            .get(uri)
            .await
            .map_err(|e| format!("{url}: {}", chain(&e)))?;
        if !res.status().is_success() {
            return Err(format!("{url}: HTTP {}", res.status()));
        }
        let body = http_body_util::Limited::new(res.into_body(), JWKS_MAX)
            .collect()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        Ok(body.to_bytes().to_vec())
    };
    tokio::time::timeout(JWKS_DEADLINE, fetched)
        .await
        .map_err(|_| format!("{url}: no answer within {JWKS_DEADLINE:?}"))?
}

/// An error and its causes, one after another: hyper's own says only
/// "client error (Connect)", the TLS reason is underneath.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn error_body(message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32001, "message": message}})
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digests_read_and_bad_ones_do_not() {
        let h = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert_eq!(parse_hex(h).unwrap()[..2], [0x9f, 0x86]);
        assert_eq!(parse_hex(&h[..62]), None);
        assert_eq!(parse_hex(&h.replace('9', "g")), None);
    }
}
