//! The HTTP listener (`[http] listen`): `/metrics` for Prometheus, `/health`
//! and `/ready` for whoever watches warden.
//!
//! An axum router served by hyper's HTTP/1 server from our own accept loop,
//! which caps connections, sets TCP_NODELAY, and bounds every connection: a
//! request head of at most 8 KiB that must arrive within 2 s (else the
//! connection is closed), bodies of at most 64 KiB, and 5 s to answer. A
//! slow or hostile peer costs one short-lived task and nothing else. At the
//! cap, a new connection takes the place of the one idle longest (no
//! request on it, or none since its last answer went out), so idle
//! connections never keep a client waiting; only busy ones count. The
//! router reads only what the runtime exposes (`metrics_text`, `status`);
//! other routers (MCP over HTTP, next) merge into it.
//!
//! Started by the root supervisor: [`bind`] first (so a bad or taken address
//! is a start-up error), then [`serve`] in its own task until its token is
//! cancelled.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::core::runtime::Runtime;
use crate::core::status;

/// The `actor` field of this module's log events.
const ACTOR: &str = "http";
/// The Prometheus text exposition format.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";
/// After an accept error (out of file descriptors, say), wait before the next accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What one connection may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The whole request head must arrive within this, or the connection closes.
    pub head_deadline: Duration,
    /// Bytes of request line and headers.
    pub max_head: usize,
    /// Bytes of a request body.
    pub max_body: usize,
    /// A request must be answered within this (408 otherwise).
    pub answer_deadline: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
}

pub const LIMITS: Limits = Limits {
    head_deadline: Duration::from_secs(2),
    max_head: 8 * 1024,
    max_body: 64 * 1024,
    answer_deadline: Duration::from_secs(5),
    max_connections: 64,
};

/// Binds the listener for `[http] listen` (an address such as "127.0.0.1:9464").
pub async fn bind(listen: &str) -> std::io::Result<TcpListener> {
    let addr: SocketAddr = listen.parse().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("http.listen {listen:?} is not an address such as \"127.0.0.1:9464\": {e}"),
        )
    })?;
    TcpListener::bind(addr).await
}

/// `/metrics`, `/health` and `/ready`, with the body and time limits.
pub fn router(runtime: Arc<Runtime>, limits: Limits) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(runtime)
        .layer(RequestBodyLimitLayer::new(limits.max_body))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.answer_deadline,
        ))
}

async fn metrics(State(runtime): State<Arc<Runtime>>) -> Response {
    let mut r = runtime.metrics_text().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(METRICS_CONTENT_TYPE),
    );
    no_store(r)
}

async fn health(State(runtime): State<Arc<Runtime>>) -> Response {
    let (health, body) = status::health(&runtime.status());
    let code = StatusCode::from_u16(health.http_status()).unwrap_or(StatusCode::OK);
    no_store((code, Json(body)).into_response())
}

async fn ready(State(runtime): State<Arc<Runtime>>) -> Response {
    let (ready, body) = status::readiness(&runtime.status());
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    no_store((code, Json(body)).into_response())
}

/// Health is now, not whatever a cache saw.
fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// How long the connections open at shutdown may take to finish what they
/// are sending: answers produced in the last moments of a drain (the final
/// result of a `subscriptions/listen`, what rmcp flushes as its sessions
/// end) still reach their clients.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `shutdown` is cancelled; then each
/// connection finishes the answer it is sending and closes, within
/// [`SHUTDOWN_FLUSH`], and `serve` returns once they have (or the time is up).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    limits: Limits,
) {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let service = TowerToHyperService::new(router);
    let conns = Arc::new(Conns::default());
    let mut tasks = tokio::task::JoinSet::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.head_deadline)
        .max_header_size(limits.max_head)
        // Clients and the tests read headers as HTTP/1.1 spelled them for
        // decades ("Content-Type"), not hyper's lowercase.
        .title_case_headers(true);
    loop {
        // Forget the connections that have ended.
        while tasks.try_join_next().is_some() {}
        let stream = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(actor = ACTOR, %addr, %error, "accepting an HTTP connection failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            },
        };
        // At the cap, the connection idle longest makes room; with every
        // one busy, this one waits for the first to end.
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                conns.evict_idlest();
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                }
            }
        };
        // Small answers go out at once, not after a delayed ACK.
        let _ = stream.set_nodelay(true);
        let (id, state) = conns.add();
        let tracked = {
            let (service, state) = (service.clone(), state.clone());
            hyper::service::service_fn(move |req| {
                let busy = Busy::new(state.clone());
                let answer = service.call(req);
                async move {
                    let r = answer.await?;
                    Ok::<_, std::convert::Infallible>(
                        r.map(|body| axum::body::Body::new(Tracked { body, _busy: busy })),
                    )
                }
            })
        };
        let connection = http.serve_connection(TokioIo::new(stream), tracked);
        let (shutdown, conns) = (shutdown.clone(), conns.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let mut connection = std::pin::pin!(connection);
            let done = tokio::select! {
                _ = shutdown.cancelled() => {
                    // The answer being sent is finished; then it closes.
                    connection.as_mut().graceful_shutdown();
                    tokio::time::timeout(SHUTDOWN_FLUSH, connection).await.ok()
                }
                _ = state.evicted.cancelled() => {
                    // Idle: closed at once (a request just begun is answered first).
                    connection.as_mut().graceful_shutdown();
                    tokio::time::timeout(limits.answer_deadline, connection).await.ok()
                }
                done = connection.as_mut() => Some(done),
            };
            if let Some(Err(e)) = done {
                tracing::debug!(actor = ACTOR, error = %e, "HTTP connection ended with an error");
            }
            conns.remove(id);
        });
    }
    // Each connection has SHUTDOWN_FLUSH; a little more for them all.
    let flushed = tokio::time::timeout(SHUTDOWN_FLUSH + Duration::from_millis(100), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if flushed.is_err() {
        tasks.abort_all();
    }
    tracing::info!(actor = ACTOR, %addr, "HTTP listener stopped");
}

/// The connections open, each with what says whether it is idle.
#[derive(Default)]
struct Conns {
    next: AtomicUsize,
    open: Mutex<HashMap<usize, Arc<ConnState>>>,
}

struct ConnState {
    /// Requests on it whose answers are not yet all sent.
    busy: AtomicUsize,
    /// When it last went idle (or opened).
    idle_since: Mutex<Instant>,
    evicted: tokio_util::sync::CancellationToken,
}

impl Conns {
    fn add(&self) -> (usize, Arc<ConnState>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            busy: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            evicted: CancellationToken::new(),
        });
        self.lock().insert(id, state.clone());
        (id, state)
    }

    fn remove(&self, id: usize) {
        self.lock().remove(&id);
    }

    /// Closes the connection idle longest, if one is.
    fn evict_idlest(&self) {
        let open = self.lock();
        let idlest = open
            .values()
            .filter(|c| c.busy.load(Ordering::Acquire) == 0 && !c.evicted.is_cancelled())
            .min_by_key(|c| *c.idle_since.lock().unwrap_or_else(|p| p.into_inner()));
        if let Some(c) = idlest {
            c.evicted.cancel();
            tracing::debug!(
                actor = ACTOR,
                open = open.len(),
                "connection cap reached: closed the connection idle longest"
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Arc<ConnState>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One request on a connection, from its head until its answer's last
/// byte (an SSE stream is busy as long as it is open).
struct Busy(Arc<ConnState>);

impl Busy {
    fn new(state: Arc<ConnState>) -> Busy {
        state.busy.fetch_add(1, Ordering::AcqRel);
        Busy(state)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An answer's body that keeps its connection busy until it is sent or dropped.
struct Tracked {
    body: axum::body::Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// The listener end to end against a runtime with no actors started.
    #[tokio::test]
    async fn serves_until_cancelled_and_refuses_what_it_does_not_serve() {
        let (_dir, runtime) = crate::core::runtime::test_runtime(
            "",
            &[("echo", "name = \"echo\"\nkind = \"builtin\"\n")],
        );
        runtime.metrics.call("echo", "ok", 0.001);
        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let limits = Limits {
            head_deadline: Duration::from_millis(200),
            ..LIMITS
        };
        let router = router(runtime, limits);
        let server = tokio::spawn(serve(listener, router, shutdown.clone(), limits));

        let ask = |request: Vec<u8>| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&request).await.unwrap();
            let mut out = String::new();
            tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
                .await
                .expect("an answer within 5 s")
                .unwrap();
            out
        };
        let get = |path: &str| {
            ask(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes())
        };

        let r = get("/metrics").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(
            r.contains("Content-Type: text/plain; version=0.0.4\r\n"),
            "{r}"
        );
        assert!(r.contains("Cache-Control: no-store\r\n"), "{r}");
        assert!(r.contains("warden_calls_total{"), "{r}");

        // No actors run here: the tools supervisor is missing, and the tool
        // is still `starting`.
        let r = get("/health").await;
        let body: serde_json::Value =
            serde_json::from_str(r.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["components"]["tool:echo"]["state"], "starting", "{r}");
        assert_ne!(body["status"], "healthy", "{r}");
        let r = get("/ready").await;
        assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
        assert!(r.ends_with("\"starting\":[\"echo\"]}"), "{r}");

        assert!(get("/nope").await.starts_with("HTTP/1.1 404 Not Found\r\n"));
        let r = ask(
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc"
                .to_vec(),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
        assert!(r.contains("Allow: GET"), "{r}");
        assert!(ask(b"nonsense\r\n\r\n".to_vec())
            .await
            .starts_with("HTTP/1.1 400 "));
        let big = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(LIMITS.max_head)
        );
        assert!(ask(big.into_bytes()).await.starts_with("HTTP/1.1 431 "));
        // A head that never ends: the connection is closed at the deadline.
        let started = std::time::Instant::now();
        let r = ask(b"GET /metrics HTTP/1.1\r\n".to_vec()).await;
        assert!(!r.contains("200 OK"), "{r}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("serve returns once cancelled")
            .unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the port is closed"
        );
    }
}
