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
//! A client's token stays here: nothing downstream ever sees it.

use std::collections::BTreeSet;
use std::sync::Arc;

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
    /// This resource's identifier: the URL of `/mcp`.
    resource: String,
    metadata_url: String,
    authorization_servers: Vec<String>,
    scopes_supported: Vec<String>,
}

struct Known {
    hash: [u8; 32],
    principal: Arc<Principal>,
}

impl Auth {
    /// The checker `[auth]` asks for; None when it is off.
    pub fn new(config: &Config, tools: &Registry) -> Result<Option<Arc<Auth>>, String> {
        let auth = &config.auth;
        if auth.mode == AuthMode::None {
            return Ok(None);
        }
        if auth.mode == AuthMode::Jwt {
            return Err("auth.mode = \"jwt\" is not built yet".into());
        }
        let mut tokens = Vec::with_capacity(auth.tokens.len());
        for t in &auth.tokens {
            let hash = match (&t.sha256, &t.env) {
                (Some(hex), _) => parse_hex(hex).ok_or_else(|| {
                    format!("auth.tokens `{}`: sha256 is not 64 hex digits", t.name)
                })?,
                (None, Some(var)) => {
                    let token = std::env::var(var)
                        .map_err(|_| format!("auth.tokens `{}`: ${var} is not set", t.name))?;
                    Sha256::digest(token.as_bytes()).into()
                }
                (None, None) => return Err(format!("auth.tokens `{}`: no sha256 or env", t.name)),
            };
            tokens.push(Known {
                hash,
                principal: Arc::new(Principal {
                    name: t.name.clone(),
                    scopes: t.scopes.clone(),
                }),
            });
        }
        let base = if auth.public_url.is_empty() {
            format!("http://{}", config.http.listen)
        } else {
            auth.public_url.trim_end_matches('/').to_string()
        };
        let scopes: BTreeSet<String> = tools
            .iter()
            .flat_map(|t| t.spec.scopes.iter().cloned())
            .collect();
        Ok(Some(Arc::new(Auth {
            tokens,
            resource: format!("{base}/mcp"),
            metadata_url: format!("{base}{METADATA_PATH_MCP}"),
            authorization_servers: auth.authorization_servers.clone(),
            scopes_supported: scopes.into_iter().collect(),
        })))
    }

    /// The principal of a request's bearer token, or the 401 that says why not.
    pub fn check(&self, headers: &HeaderMap) -> Result<Arc<Principal>, Box<Response>> {
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

    /// The protected resource metadata (RFC 9728).
    pub fn metadata(&self) -> Value {
        json!({
            "resource": self.resource,
            "authorization_servers": self.authorization_servers,
            "scopes_supported": self.scopes_supported,
            "bearer_methods_supported": ["header"],
            "resource_name": "warden",
        })
    }
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
