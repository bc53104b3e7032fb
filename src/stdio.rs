//! MCP over stdio, hardened: newline-delimited JSON-RPC with bounded lines.
//!
//! rmcp's own stdio transport ends the session on a notification before
//! `initialize`, and drops bad lines silently. This one keeps a bad client
//! served: a line that is not JSON is logged and skipped; JSON that is not a
//! valid message is answered with a JSON-RPC error when it carries an id; a
//! notification or response before `initialize` is logged and dropped; a line
//! longer than `server.max_line` is skipped without being held in memory.
//! On EOF or SIGTERM it stops taking requests and ends the session once the
//! calls in flight have finished or the shutdown grace is over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::model::{ClientJsonRpcMessage, ClientRequest, ErrorData, RequestId, ServerJsonRpcMessage};
use rmcp::service::RoleServer;
use rmcp::transport::Transport;
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

use crate::runtime::Runtime;

/// How often the drain checks whether the calls in flight have finished.
const DRAIN_POLL: Duration = Duration::from_millis(10);

pub struct StdioTransport<R, W> {
    reader: R,
    writer: Arc<Mutex<W>>,
    runtime: Arc<Runtime>,
    max_line: usize,
    initialized: bool,
    line: Vec<u8>,
}

impl<R, W> StdioTransport<R, W>
where
    R: AsyncBufRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    pub fn new(reader: R, writer: W, runtime: Arc<Runtime>) -> Self {
        let max_line = runtime.config.server.max_line.0 as usize;
        StdioTransport {
            reader,
            writer: Arc::new(Mutex::new(writer)),
            runtime,
            max_line,
            initialized: false,
            line: Vec::new(),
        }
    }

    async fn write(writer: &Mutex<W>, msg: &ServerJsonRpcMessage) -> std::io::Result<()> {
        let mut bytes = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        let mut w = writer.lock().await;
        w.write_all(&bytes).await?;
        w.flush().await
    }

    /// Reads one line into `self.line`. `Ok(false)` at EOF; a line past the
    /// cap is consumed and dropped, and reported as `Err(bytes seen)`.
    async fn read_line(&mut self) -> std::io::Result<Result<bool, usize>> {
        self.line.clear();
        let mut oversized = 0usize;
        loop {
            let buf = self.reader.fill_buf().await?;
            if buf.is_empty() {
                let got = !self.line.is_empty() || oversized > 0;
                return Ok(if oversized > 0 { Err(oversized) } else { Ok(got) });
            }
            let (chunk, done) = match memchr(buf) {
                Some(i) => (&buf[..i], i + 1),
                None => (buf, buf.len()),
            };
            let found_newline = done > chunk.len();
            if oversized > 0 || self.line.len() + chunk.len() > self.max_line {
                oversized += self.line.len() + chunk.len();
                self.line.clear();
                self.line.shrink_to(64 * 1024);
            } else {
                self.line.extend_from_slice(chunk);
            }
            self.reader.consume(done);
            if found_newline {
                return Ok(if oversized > 0 { Err(oversized) } else { Ok(true) });
            }
        }
    }

    /// Decides what to do with one line: pass a message on, answer it here, or drop it.
    async fn classify(&mut self) -> Option<ClientJsonRpcMessage> {
        let text = trim_ascii(&self.line);
        if text.is_empty() {
            return None;
        }
        match serde_json::from_slice::<ClientJsonRpcMessage>(text) {
            Ok(msg) => {
                if !self.initialized {
                    match &msg {
                        ClientJsonRpcMessage::Request(r) => {
                            if matches!(r.request, ClientRequest::InitializeRequest(_)) {
                                self.initialized = true;
                            }
                        }
                        other => {
                            tracing::warn!(kind = message_kind(other), "dropped a message that arrived before initialize");
                            return None;
                        }
                    }
                }
                Some(msg)
            }
            Err(parse_error) => {
                let Ok(value) = serde_json::from_slice::<Value>(text) else {
                    tracing::warn!(bytes = text.len(), "skipped a line that is not JSON");
                    return None;
                };
                let id = value.get("id").and_then(|id| serde_json::from_value::<RequestId>(id.clone()).ok());
                let method = value.get("method").and_then(Value::as_str);
                match (id, method) {
                    (Some(id), Some(method)) => {
                        let error = ErrorData::invalid_params(
                            format!("invalid params for `{method}`: {parse_error}"),
                            None,
                        );
                        tracing::warn!(request_id = %id, %method, error = %parse_error, "answered a malformed request");
                        let _ = Self::write(&self.writer, &ServerJsonRpcMessage::error(error, Some(id))).await;
                    }
                    (Some(id), None) if value.get("result").is_some() || value.get("error").is_some() => {
                        tracing::warn!(request_id = %id, "dropped a response to a request warden never made");
                    }
                    (_, Some(method)) => {
                        tracing::warn!(%method, error = %parse_error, "dropped a malformed notification");
                    }
                    (id, None) => {
                        let error = ErrorData::invalid_request(format!("not a JSON-RPC 2.0 message: {parse_error}"), None);
                        tracing::warn!(error = %parse_error, "answered a line that is JSON but not JSON-RPC");
                        let _ = Self::write(&self.writer, &ServerJsonRpcMessage::error(error, id)).await;
                    }
                }
                None
            }
        }
    }

}

impl<R, W> Transport<RoleServer> for StdioTransport<R, W>
where
    R: AsyncBufRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: ServerJsonRpcMessage,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send + 'static {
        let writer = self.writer.clone();
        async move { Self::write(&writer, &item).await }
    }

    async fn receive(&mut self) -> Option<ClientJsonRpcMessage> {
        loop {
            if self.runtime.draining.is_cancelled() {
                drain(&self.runtime).await;
                return None;
            }
            let draining = self.runtime.draining.clone();
            let read = tokio::select! {
                read = self.read_line() => read,
                _ = draining.cancelled() => continue,
            };
            match read {
                Ok(Ok(true)) => {
                    if let Some(msg) = self.classify().await {
                        return Some(msg);
                    }
                }
                Ok(Ok(false)) | Err(_) => {
                    tracing::info!("stdin closed; draining");
                    drain(&self.runtime).await;
                    return None;
                }
                Ok(Err(bytes)) => {
                    tracing::warn!(bytes, max_line = self.max_line, "skipped a line longer than server.max_line");
                    let error = ErrorData::invalid_request(
                        format!("request line of {bytes} bytes exceeds server.max_line ({} bytes)", self.max_line),
                        None,
                    );
                    let _ = Self::write(&self.writer, &ServerJsonRpcMessage::error(error, None)).await;
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.writer.lock().await.flush().await
    }
}

fn memchr(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

fn message_kind(msg: &ClientJsonRpcMessage) -> &'static str {
    match msg {
        ClientJsonRpcMessage::Request(_) => "request",
        ClientJsonRpcMessage::Response(_) => "response",
        ClientJsonRpcMessage::Notification(_) => "notification",
        ClientJsonRpcMessage::Error(_) => "error",
    }
}

/// Stop taking requests; let calls in flight finish until the grace is over,
/// then cancel what is left.
async fn drain(runtime: &Runtime) {
    runtime.draining.cancel();
    let grace = runtime.config.server.shutdown_grace;
    let start = Instant::now();
    while runtime.in_flight() > 0 && start.elapsed() < grace {
        tokio::time::sleep(DRAIN_POLL).await;
    }
    let left = runtime.in_flight();
    if left > 0 {
        tracing::warn!(calls = left, grace = %humantime::format_duration(grace), "shutdown grace over; cancelling the calls still running");
    }
    runtime.kill_all.cancel();
}
