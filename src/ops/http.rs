//! The optional HTTP listener (`[http] listen`): `/metrics` for Prometheus,
//! `/health` and `/ready` for whoever watches warden.
//!
//! A tiny HTTP/1.1 responder on tokio, not a web framework: GET only, one
//! request per connection (`Connection: close`), the request head capped at
//! 8 KiB and read under a 2 s deadline, at most 64 connections at once. A slow
//! or hostile peer costs one short-lived task and nothing else. It reads only
//! what the runtime already exposes (`Metrics::render`, `Runtime::status`).
//!
//! Started by the root supervisor: [`bind`] first (so a bad or taken address
//! is a start-up error), then [`serve`] in its own task until its token is
//! cancelled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::core::runtime::Runtime;
use crate::core::status;

/// The `actor` field of this module's log events.
const ACTOR: &str = "http";
/// The Prometheus text exposition format.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";
/// After an accept error (out of file descriptors, say), wait before the next accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// After answering, how long to wait for the peer to close first: closing a
/// socket with unread bytes in it sends a reset that can destroy the answer.
const LINGER: Duration = Duration::from_millis(250);
/// Bytes read and thrown away while lingering.
const LINGER_MAX: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
struct Limits {
    /// The whole request head must arrive within this.
    read_deadline: Duration,
    /// The whole response must be written within this.
    write_deadline: Duration,
    /// Bytes of request line and headers, the empty line included.
    max_head: usize,
    /// Connections handled at once; more wait in the kernel's backlog.
    max_connections: usize,
}

const LIMITS: Limits = Limits {
    read_deadline: Duration::from_secs(2),
    write_deadline: Duration::from_secs(2),
    max_head: 8 * 1024,
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

/// Answers `/metrics`, `/health` and `/ready` on `listener` until `shutdown`
/// is cancelled; connections still open then are dropped.
pub async fn serve(listener: TcpListener, runtime: Arc<Runtime>, shutdown: CancellationToken) {
    serve_with(listener, runtime, shutdown, LIMITS).await
}

async fn serve_with(
    listener: TcpListener,
    runtime: Arc<Runtime>,
    shutdown: CancellationToken,
    limits: Limits,
) {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    tracing::info!(actor = ACTOR, %addr, "HTTP listener started (/metrics, /health, /ready)");
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let permit = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(actor = ACTOR, %addr, %error, "accepting an HTTP connection failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            },
        };
        let runtime = runtime.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = connection(stream, peer, &runtime, limits) => {}
            }
        });
    }
    tracing::info!(actor = ACTOR, %addr, "HTTP listener stopped");
}

/// One connection: one request head, one answer, close.
async fn connection(mut stream: TcpStream, peer: SocketAddr, runtime: &Runtime, limits: Limits) {
    let started = Instant::now();
    let head = match tokio::time::timeout(
        limits.read_deadline,
        read_head(&mut stream, limits.max_head),
    )
    .await
    {
        Ok(head) => head,
        Err(_) => Err(HeadError::Timeout),
    };
    let request = head
        .as_deref()
        .map_err(|e| *e)
        .and_then(|h| request_line(h).map_err(HeadError::Bad));
    let (method, path, response) = match &request {
        Ok(req) => (req.method, req.path, respond(req, runtime)),
        Err(HeadError::Closed) => {
            tracing::trace!(actor = ACTOR, %peer, "connection closed without a request");
            return;
        }
        Err(HeadError::Io) => return,
        Err(e) => ("-", "-", Response::error(e.status())),
    };
    let bytes = response.to_bytes();
    let written = tokio::time::timeout(limits.write_deadline, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
    let error = match written {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("write deadline passed".to_string()),
    };
    tracing::debug!(
        actor = ACTOR,
        %peer,
        method,
        path,
        status = response.status,
        bytes = response.body.len(),
        elapsed_us = started.elapsed().as_micros() as u64,
        error = error.as_deref(),
        "request"
    );
    if error.is_none() {
        linger(&mut stream).await;
    }
}

/// Reads and drops what the peer still sends until it closes, briefly.
async fn linger(stream: &mut TcpStream) {
    let _ = tokio::time::timeout(LINGER, async {
        let mut buf = [0u8; 1024];
        let mut read = 0;
        while read < LINGER_MAX {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    })
    .await;
}

/// Why no request could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadError {
    /// The peer closed before sending anything (a port probe): no answer.
    Closed,
    /// Reading failed (a reset): no answer.
    Io,
    /// The peer closed in the middle of the head.
    Incomplete,
    /// Past the read deadline.
    Timeout,
    /// Past `max_head` bytes.
    TooLarge,
    /// A malformed request line: the status to answer.
    Bad(u16),
}

impl HeadError {
    fn status(self) -> u16 {
        match self {
            HeadError::Closed | HeadError::Io | HeadError::Incomplete => 400,
            HeadError::Timeout => 408,
            HeadError::TooLarge => 431,
            HeadError::Bad(status) => status,
        }
    }
}

/// The request head (request line and headers, up to and including the empty
/// line), at most `max` bytes of it.
async fn read_head(stream: &mut TcpStream, max: usize) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if head.len() >= max {
            return Err(HeadError::TooLarge);
        }
        let room = (max - head.len()).min(chunk.len());
        let n = stream
            .read(&mut chunk[..room])
            .await
            .map_err(|_| HeadError::Io)?;
        if n == 0 {
            return Err(if head.is_empty() {
                HeadError::Closed
            } else {
                HeadError::Incomplete
            });
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&head) {
            head.truncate(end);
            return Ok(head);
        }
    }
}

/// Where the head ends: just past the first empty line (CRLF or bare LF).
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.iter().enumerate().find_map(|(i, &b)| {
        if b != b'\n' {
            return None;
        }
        match buf.get(i + 1..) {
            Some([b'\n', ..]) => Some(i + 2),
            Some([b'\r', b'\n', ..]) => Some(i + 3),
            _ => None,
        }
    })
}

/// What the responder looks at in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Request<'a> {
    method: &'a str,
    /// The target without its query string.
    path: &'a str,
}

/// The request line of a head (empty lines before it are skipped), or the
/// status to refuse it with.
fn request_line(head: &[u8]) -> Result<Request<'_>, u16> {
    let start = head
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .ok_or(400u16)?;
    let rest = &head[start..];
    let line = rest
        .iter()
        .position(|&b| b == b'\n')
        .map_or(rest, |end| &rest[..end]);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = std::str::from_utf8(line).map_err(|_| 400u16)?;
    parse_request_line(line)
}

/// `METHOD SP origin-form-target SP HTTP/1.x`, or the status to refuse it with
/// (400 malformed, 505 another HTTP version).
fn parse_request_line(line: &str) -> Result<Request<'_>, u16> {
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(400);
    }
    if !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(400);
    }
    match version {
        "HTTP/1.1" | "HTTP/1.0" => {}
        v if v.starts_with("HTTP/") => return Err(505),
        _ => return Err(400),
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Ok(Request { method, path })
}

/// The answer to a well-formed request.
fn respond(req: &Request<'_>, runtime: &Runtime) -> Response {
    let known = matches!(req.path, "/metrics" | "/health" | "/ready");
    if !known {
        return Response::error(404);
    }
    if req.method != "GET" {
        return Response::error(405);
    }
    match req.path {
        "/metrics" => Response {
            status: 200,
            content_type: METRICS_CONTENT_TYPE,
            body: runtime.metrics_text(),
        },
        "/health" => {
            let (health, body) = status::health(&runtime.status());
            Response::json(health.http_status(), &body)
        }
        _ => {
            let (ready, body) = status::readiness(&runtime.status());
            Response::json(if ready { 200 } else { 503 }, &body)
        }
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn json(status: u16, body: &Value) -> Self {
        let mut body = body.to_string();
        body.push('\n');
        Response {
            status,
            content_type: "application/json",
            body,
        }
    }

    fn error(status: u16) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{}\n", reason(status).to_lowercase()),
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let allow = if self.status == 405 {
            "Allow: GET\r\n"
        } else {
            ""
        };
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{allow}Connection: close\r\n\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len(),
        )
        .into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        207 => "Multi-Status",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_lines_parse() {
        assert_eq!(
            parse_request_line("GET /metrics HTTP/1.1"),
            Ok(Request {
                method: "GET",
                path: "/metrics"
            })
        );
        assert_eq!(
            parse_request_line("GET /health?verbose=1#x HTTP/1.0"),
            Ok(Request {
                method: "GET",
                path: "/health"
            })
        );
        // Other methods parse; the router refuses them.
        assert_eq!(
            parse_request_line("POST /ready HTTP/1.1").unwrap().method,
            "POST"
        );
        assert_eq!(parse_request_line("GET / HTTP/2.0"), Err(505));
        for bad in [
            "",
            "GET",
            "GET /metrics",
            "GET /metrics HTTP/1.1 extra",
            "GET  /metrics HTTP/1.1",
            "GET metrics HTTP/1.1",
            "GET http://host/metrics HTTP/1.1",
            "GET * HTTP/1.1",
            "GET /metrics FTP/1.0",
            "G(T /metrics HTTP/1.1",
            "GET /met\u{7f}rics HTTP/1.1",
            "GET /métrics HTTP/1.1",
        ] {
            assert_eq!(parse_request_line(bad), Err(400), "{bad:?}");
        }
    }

    #[test]
    fn heads_end_at_the_first_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r"), None);
        let head = b"\r\nGET /ready HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(head_end(head), Some(head.len()));
        assert_eq!(
            request_line(head),
            Ok(Request {
                method: "GET",
                path: "/ready"
            })
        );
        assert_eq!(request_line(b"\r\n\r\n"), Err(400));
        assert_eq!(request_line(b"GET /\xff HTTP/1.1\r\n\r\n"), Err(400));
    }

    #[test]
    fn responses_are_complete_and_close() {
        let text = String::from_utf8(Response::error(405).to_bytes()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nAllow: GET\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nmethod not allowed\n"));
        let r = Response::json(200, &json!({"ready": true}));
        let text = String::from_utf8(r.to_bytes()).unwrap();
        assert!(text.contains("Content-Type: application/json\r\n"));
        assert!(text.contains(&format!("Content-Length: {}\r\n", r.body.len())));
        assert!(!text.contains("Allow"));
    }

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
            read_deadline: Duration::from_millis(200),
            max_head: 256,
            ..LIMITS
        };
        let server = tokio::spawn(serve_with(listener, runtime, shutdown.clone(), limits));

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
        let get = |path: &str| ask(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes());

        let r = get("/metrics").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(
            r.contains("Content-Type: text/plain; version=0.0.4\r\n"),
            "{r}"
        );
        assert!(r.contains("Connection: close\r\n"), "{r}");
        assert!(r.contains("warden_calls_total{"), "{r}");

        // No actors run here: the tools supervisor is missing (or belongs to
        // another test of this binary), and the tool is still `starting`.
        let r = get("/health").await;
        let body: Value = serde_json::from_str(r.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["components"]["tool:echo"]["state"], "starting", "{r}");
        assert_ne!(body["status"], "healthy", "{r}");
        let r = get("/ready").await;
        assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
        assert!(r.ends_with("\"starting\":[\"echo\"]}\n"), "{r}");

        assert!(get("/nope").await.starts_with("HTTP/1.1 404 Not Found\r\n"));
        let r = ask(b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc".to_vec()).await;
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
        assert!(r.contains("Allow: GET\r\n"), "{r}");
        assert!(ask(b"nonsense\r\n\r\n".to_vec())
            .await
            .starts_with("HTTP/1.1 400 "));
        let big = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(300));
        assert!(ask(big.into_bytes()).await.starts_with("HTTP/1.1 431 "));
        // A head that never ends: answered 408 at the read deadline.
        let r = ask(b"GET /metrics HTTP/1.1\r\n".to_vec()).await;
        assert!(r.starts_with("HTTP/1.1 408 "), "{r}");

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
