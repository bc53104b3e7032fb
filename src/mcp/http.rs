//! MCP over Streamable HTTP at `/mcp` (`warden serve --http ADDR`), on the
//! listener that serves `/metrics`, `/health` and `/ready`.
//!
//! rmcp's `StreamableHttpService` speaks the protocol: `initialize` and
//! `Mcp-Session-Id` sessions with SSE and the GET stream for 2025-11-25 and
//! older clients, stateless requests for 2026-07-28 ones. Each session (and
//! each stateless request) gets a `WardenServer` with a `Session` of its
//! own, which ends when rmcp lets go of the handler: on DELETE, after
//! `http.session_idle` unused, at shutdown, or when a stateless request has
//! been answered. Its end cancels its calls, which kills their programs.
//!
//! Around it: at most `http.max_sessions` at once (a new one beyond it is
//! answered 503 with Retry-After), `Host` checked against loopback names and
//! `http.allowed_hosts`, `Origin` against `http.allowed_origins` (loopback
//! origins when empty), request bodies read whole by warden within
//! `http.body_deadline` and `server.max_line` (408, 413), before rmcp sees
//! them. With `[auth]`, a session belongs to the principal that opened it:
//! every request naming it (GET streams, notifications such as
//! `notifications/cancelled`, answers to warden's requests, DELETE) from
//! another principal is refused 403 before rmcp sees it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::core::call::Principal;
use crate::core::runtime::Runtime;
use crate::mcp::auth::{Auth, METADATA_PATH, METADATA_PATH_MCP};
use crate::mcp::server::{Offer, WardenServer};

/// How long a client refused for the session cap should wait, in seconds.
const RETRY_AFTER_S: &str = "1";

/// Origins a browser on this machine sends; allowed when none are configured.
const LOOPBACK_ORIGINS: [&str; 3] = ["http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*"];

/// The sessions (and stateless requests) being served.
#[derive(Default)]
pub struct Open(AtomicUsize);

impl Open {
    pub fn now(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn opened(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn closed(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The `/mcp` route. `shutdown` ends every session.
pub fn router(runtime: Arc<Runtime>, shutdown: CancellationToken) -> Router {
    let http = &runtime.config.http;
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(http.session_idle);
    let mut hosts = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    hosts.extend(http.allowed_hosts.iter().cloned());
    let origins: Vec<String> = if http.allowed_origins.is_empty() {
        LOOPBACK_ORIGINS.iter().map(|o| o.to_string()).collect()
    } else {
        http.allowed_origins.clone()
    };
    let config = StreamableHttpServerConfig::default()
        .with_cancellation_token(shutdown)
        .with_allowed_hosts(hosts)
        .with_allowed_origins(origins)
        .with_max_request_body_bytes(runtime.config.server.max_line.0 as usize);
    let sessions = Arc::new(sessions);
    let owners = Arc::new(Owners::new(sessions.clone(), http.max_sessions));
    let open = Arc::new(Open::default());
    let max = http.max_sessions;
    let max_body = runtime.config.server.max_line.0 as usize;
    let service = {
        let open = open.clone();
        let runtime = runtime.clone();
        let offer = Offer::new(&runtime);
        StreamableHttpService::new(
            move || {
                Ok(WardenServer::for_http(
                    runtime.clone(),
                    open.clone(),
                    &offer,
                ))
            },
            sessions,
            config,
        )
    };
    // A broken [auth] fails closed: /mcp answers 503 saying why.
    let auth = Auth::new(&runtime.config).map_err(|e| {
        tracing::error!(actor = crate::core::names::TRANSPORT, error = %e, "[auth] cannot be used: MCP over HTTP refuses every request");
        e
    });
    let mut router = Router::new().route_service("/mcp", service);
    if let Ok(Some(auth)) = &auth {
        let (auth, runtime) = (auth.clone(), runtime.clone());
        let serve = move || {
            let metadata = auth.metadata(&runtime.tools());
            async move { axum::Json(metadata) }
        };
        router = router
            .route(METADATA_PATH, axum::routing::get(serve.clone()))
            .route(METADATA_PATH_MCP, axum::routing::get(serve));
    }
    let auth = Arc::new(auth);
    router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let open = open.clone();
            let runtime = runtime.clone();
            let auth = auth.clone();
            let owners = owners.clone();
            async move {
                if req.uri().path() != "/mcp" {
                    return next.run(req).await;
                }
                let method: &'static str = match req.method().as_str() {
                    "GET" => "GET",
                    "POST" => "POST",
                    "DELETE" => "DELETE",
                    _ => "other",
                };
                // A request in a session already counted passes; a new one
                // (an `initialize`, or a stateless request) waits its turn.
                let new = !req.headers().contains_key("mcp-session-id");
                let json = req
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("application/json"));
                let announced = req
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                let deadline = runtime.config.http.body_deadline;
                let mut r = if announced.is_some_and(|n| n > max_body as u64) {
                    // Refused before a byte of it is read.
                    too_large(max_body)
                } else if new && runtime.draining.is_cancelled() {
                    drain::elsewhere()
                } else if new && open.now() >= max {
                    full(max)
                } else {
                    match read_body(req, max_body, deadline).await {
                        Ok((parts, bytes))
                            if runtime.draining.is_cancelled()
                                && drain::ends_session(&parts.method, &bytes) =>
                        {
                            drain::session_ended()
                        }
                        Ok((parts, bytes)) => match authorize(&auth, &runtime, parts, &bytes).await
                        {
                            Ok(parts) => {
                                let req = Request::from_parts(parts, axum::body::Body::from(bytes));
                                owners.serve(req, next).await
                            }
                            Err(refused) => *refused,
                        },
                        Err(refused) => refused,
                    }
                };
                // rmcp answers a JSON body it cannot parse 415, as if the
                // type were wrong; JSON-RPC says -32700, and HTTP 400.
                if method == "POST" && json && r.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE {
                    r = parse_error();
                }
                // rmcp answers a DELETE 202; clients (the Python SDK)
                // take only 200 and 204 for a session ended.
                if method == "DELETE" && r.status() == StatusCode::ACCEPTED {
                    *r.status_mut() = StatusCode::NO_CONTENT;
                }
                // A load balancer lets go of its connections to a draining
                // warden one answer at a time, instead of all at its exit.
                if runtime.draining.is_cancelled() {
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                runtime.metrics.http_request(method, r.status().as_u16());
                r
            }
        },
    ))
}

/// Which principal each session belongs to (with `[auth]`): the one whose
/// `initialize` opened it. A request naming the session with another
/// principal's token is refused here, since rmcp acts on some messages
/// (`notifications/cancelled`, answers, GET, DELETE) without asking warden.
struct Owners {
    /// Session id → principal name.
    by_session: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// rmcp's sessions, to forget those it has ended (idle, shut down).
    sessions: Arc<LocalSessionManager>,
    /// Past this many, the ended ones are forgotten.
    prune_at: usize,
}

impl Owners {
    fn new(sessions: Arc<LocalSessionManager>, max_sessions: usize) -> Owners {
        Owners {
            by_session: Default::default(),
            sessions,
            prune_at: max_sessions.saturating_mul(2).max(64),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, String>> {
        self.by_session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs an authorized request, unless it names another principal's
    /// session; notes who opened a session, and forgets one deleted.
    async fn serve(&self, req: Request, next: Next) -> Response {
        let Some(principal) = req.extensions().get::<Arc<Principal>>().cloned() else {
            return next.run(req).await;
        };
        let session = req
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Some(id) = &session {
            let owner = self.lock().get(id).cloned();
            if owner.is_some_and(|o| o != principal.name) {
                tracing::warn!(actor = crate::core::names::TRANSPORT, principal = %principal.name, "refused a request naming another principal's session");
                return forbidden_session();
            }
        }
        let delete = req.method() == axum::http::Method::DELETE;
        let r = next.run(req).await;
        match session {
            Some(id) if delete && r.status().is_success() => {
                self.lock().remove(&id);
            }
            Some(_) => {}
            None => {
                let opened = r
                    .headers()
                    .get("mcp-session-id")
                    .and_then(|v| v.to_str().ok());
                if let Some(id) = opened {
                    self.opened(id.to_string(), principal.name.clone()).await;
                }
            }
        }
        r
    }

    async fn opened(&self, id: String, principal: String) {
        if self.lock().len() >= self.prune_at {
            let live: std::collections::HashSet<String> = self
                .sessions
                .sessions
                .read()
                .await
                .keys()
                .map(|k| k.to_string())
                .collect();
            self.lock().retain(|id, _| live.contains(id));
        }
        self.lock().insert(id, principal);
    }
}

fn forbidden_session() -> Response {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": -32600, "message": "this session belongs to another principal; open a session of your own"}
    });
    (StatusCode::FORBIDDEN, axum::Json(body)).into_response()
}

/// While warden drains (SIGTERM), `/ready` says 503 and `/mcp` takes
/// nothing new, so that a load balancer sends it elsewhere without losing a
/// call: the calls in flight finish, and the answers, notifications and
/// cancellations their sessions send for them still go through.
mod drain {
    use super::*;

    /// A new session or a stateless request: 503 with Retry-After. Nothing
    /// ran, so a load balancer may retry it on another replica at once.
    pub fn elsewhere() -> Response {
        let body = serde_json::json!({
            "jsonrpc": "2.0",
            "id": null,
            "error": {"code": -32000, "message": "warden is draining for a restart; retry, elsewhere if you can"}
        });
        let mut r = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S));
        r
    }

    /// Whether a request in a session asks for something new: a GET stream,
    /// or a POST carrying a JSON-RPC request. Those end the session.
    pub fn ends_session(method: &axum::http::Method, body: &[u8]) -> bool {
        if *method == axum::http::Method::GET {
            return true;
        }
        if *method != axum::http::Method::POST {
            return false;
        }
        let is_request = |m: &serde_json::Value| m.get("method").is_some() && m.get("id").is_some();
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Array(all)) => all.iter().any(is_request),
            Ok(one) => is_request(&one),
            Err(_) => false,
        }
    }

    /// 404, which the MCP spec gives a session the server has ended: the
    /// client starts a new one, which the load balancer sends to a replica
    /// that is not draining.
    pub fn session_ended() -> Response {
        let body = serde_json::json!({
            "jsonrpc": "2.0",
            "id": null,
            "error": {"code": -32000, "message": "this session has ended: warden is draining for a restart; start a new session"}
        });
        (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
    }
}

fn too_large(max: usize) -> Response {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": -32600, "message": format!("the request body is larger than server.max_line ({max} bytes)")}
    });
    (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(body)).into_response()
}

/// Reads the whole body (rmcp would buffer it anyway, to parse it) within
/// `deadline` and `max` bytes, so that a body that stops arriving is 408
/// (rmcp waits for ever, then says 500) and one without a length that runs
/// past the cap is 413 while it streams.
async fn read_body(
    req: Request,
    max: usize,
    deadline: std::time::Duration,
) -> Result<(axum::http::request::Parts, axum::body::Bytes), Response> {
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, max)).await {
        Ok(Ok(bytes)) => Ok((parts, bytes)),
        // Past the cap (or the client went away, when no answer reaches it).
        Ok(Err(_)) => Err(too_large(max)),
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time\n",
        )
            .into_response()),
    }
}

/// With `[auth]`: the request's principal, put where the handler finds it,
/// or the 401 or 403 that refuses it before anything runs.
async fn authorize(
    auth: &Result<Option<Arc<Auth>>, String>,
    runtime: &Runtime,
    mut parts: axum::http::request::Parts,
    body: &[u8],
) -> Result<axum::http::request::Parts, Box<Response>> {
    let auth = match auth {
        Ok(None) => return Ok(parts),
        Ok(Some(auth)) => auth,
        Err(why) => {
            return Err(Box::new(
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("[auth] cannot be used: {why}\n"),
                )
                    .into_response(),
            ))
        }
    };
    let principal = auth.check(&parts.headers).await?;
    // What the request is for, and the scopes that needs (a batch: each).
    if let Ok(msg) = serde_json::from_slice::<serde_json::Value>(body) {
        let msgs = match &msg {
            serde_json::Value::Array(all) => all.iter().collect(),
            one => vec![one],
        };
        for m in msgs {
            if let Some((what, needed)) = needs(runtime, m) {
                let missing = principal.lacks(&needed);
                if !missing.is_empty() {
                    tracing::warn!(actor = crate::core::names::TRANSPORT, principal = %principal.name, %what, missing = %missing.join(" "), "refused for want of a scope");
                    return Err(Box::new(auth.forbidden(&what, &missing)));
                }
            }
        }
    }
    parts.extensions.insert(principal);
    Ok(parts)
}

/// What a request names (a tool, a prompt, a resource), and the scopes it needs.
fn needs(runtime: &Runtime, msg: &serde_json::Value) -> Option<(String, Vec<String>)> {
    let params = &msg["params"];
    let tools = runtime.tools();
    let (what, entry) = match msg["method"].as_str()? {
        "tools/call" => {
            let name = params["name"].as_str()?;
            let target = tools.route(name)?;
            let needed = target.entry.spec.scopes_for(Some(&target.name));
            return Some((format!("tool `{name}`"), needed));
        }
        "prompts/get" => {
            let name = params["name"].as_str()?;
            (format!("prompt `{name}`"), tools.route_prompt(name)?.entry)
        }
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            let uri = params["uri"].as_str()?;
            (format!("resource `{uri}`"), tools.route_uri(uri)?)
        }
        "completion/complete" => {
            let r = &params["ref"];
            match (r["name"].as_str(), r["uri"].as_str()) {
                (Some(name), _) => (format!("prompt `{name}`"), tools.route_prompt(name)?.entry),
                (None, Some(uri)) => (format!("resource `{uri}`"), tools.route_uri(uri)?),
                _ => return None,
            }
        }
        _ => return None,
    };
    Some((what, entry.spec.scopes.clone()))
}

fn parse_error() -> Response {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": -32700, "message": "the request body is not valid JSON-RPC"}
    });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

fn full(max: usize) -> Response {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {
            "code": -32000,
            "message": format!("warden is serving its most sessions at once (http.max_sessions = {max}); retry shortly"),
        }
    });
    let mut r = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S));
    r
}
