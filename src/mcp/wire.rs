//! Newline-delimited JSON-RPC over pipes, both ways: warden's own stdio
//! (`stdio`) and each MCP server's (`ChildTransport`, here).
//!
//! Lines in are bounded: a line past the cap is consumed and dropped as it
//! arrives, never held. Lines out are written in batches: a send queues its
//! line at once, in the order sends are made, and whichever send gets the pipe
//! writes every line waiting in one write. With many calls in flight that is
//! one system call (and one wake-up of the reader) for several messages
//! instead of one each.

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolResult, ClientNotification, ClientRequest, GetExtensions, GetMeta, JsonRpcMessage,
    JsonRpcResponse, JsonRpcVersion2_0, RequestId, ServerResult,
};
use rmcp::service::{RoleClient, RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// How long closing a server's stdin may wait for a write in progress.
const CLOSE_DEADLINE: Duration = Duration::from_secs(1);

/// One outcome of [`LineReader::read_line`].
pub enum Line {
    /// A whole line is in [`LineReader::line`] (the last one may lack its newline).
    Complete,
    /// A line of this many bytes was past the cap and has been dropped.
    Oversized(usize),
    Eof,
}

/// Reads lines of at most `max_line` bytes.
pub struct LineReader<R> {
    reader: R,
    /// The line being read (kept across cancelled reads).
    line: Vec<u8>,
    /// Bytes of the current line dropped for being past `max_line`.
    oversized: usize,
    max_line: usize,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    pub fn new(reader: R, max_line: usize) -> Self {
        LineReader {
            reader,
            line: Vec::new(),
            oversized: 0,
            max_line,
        }
    }

    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// The line read, without its newline.
    pub fn line(&self) -> &[u8] {
        &self.line
    }

    /// Forgets the line read; call once it has been handled.
    pub fn clear(&mut self) {
        self.line.clear();
    }

    /// Reads until a whole line is in `line()`. Cancel-safe: a partly read
    /// line stays here for the next call. A line past the cap is consumed and
    /// dropped as it arrives.
    pub async fn read_line(&mut self) -> io::Result<Line> {
        loop {
            let buf = self.reader.fill_buf().await?;
            if buf.is_empty() {
                if self.oversized > 0 {
                    return Ok(Line::Oversized(std::mem::take(&mut self.oversized)));
                }
                return Ok(if self.line.is_empty() {
                    Line::Eof
                } else {
                    Line::Complete
                });
            }
            let (chunk, used) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], i + 1),
                None => (buf, buf.len()),
            };
            let complete = used > chunk.len();
            if self.oversized > 0 || self.line.len() + chunk.len() > self.max_line {
                self.oversized += self.line.len() + chunk.len();
                self.line.clear();
                self.line.shrink_to(64 * 1024);
            } else {
                self.line.extend_from_slice(chunk);
            }
            self.reader.consume(used);
            if complete {
                if self.oversized > 0 {
                    return Ok(Line::Oversized(std::mem::take(&mut self.oversized)));
                }
                return Ok(Line::Complete);
            }
        }
    }
}

/// The writing end of a pipe, shared by every send: lines are queued in
/// order and written in batches.
pub struct Outbox<W> {
    queued: std::sync::Mutex<Vec<u8>>,
    /// `None` once closed.
    pipe: tokio::sync::Mutex<Option<W>>,
    /// A write failed: the lines it carried are lost, and so is the pipe.
    broken: AtomicBool,
}

impl<W: AsyncWrite + Unpin> Outbox<W> {
    pub fn new(pipe: W) -> Self {
        Outbox {
            queued: std::sync::Mutex::new(Vec::new()),
            pipe: tokio::sync::Mutex::new(Some(pipe)),
            broken: AtomicBool::new(false),
        }
    }

    /// Queues `msg` as one line; it goes out with the next [`Outbox::flush`].
    pub fn queue(&self, msg: &impl serde::Serialize) -> io::Result<()> {
        let mut queued = self.queued.lock().unwrap();
        let start = queued.len();
        if let Err(e) = serde_json::to_writer(&mut *queued, msg) {
            queued.truncate(start);
            return Err(io::Error::other(e));
        }
        queued.push(b'\n');
        Ok(())
    }

    /// Writes every line queued so far, this caller's included. Returns once
    /// they are written, by this call or by one that got the pipe first.
    pub async fn flush(&self) -> io::Result<()> {
        let mut pipe = self.pipe.lock().await;
        let batch = std::mem::take(&mut *self.queued.lock().unwrap());
        if self.broken.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "an earlier write failed",
            ));
        }
        if batch.is_empty() {
            return Ok(());
        }
        let Some(w) = pipe.as_mut() else {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "closed"));
        };
        let written = match w.write_all(&batch).await {
            Ok(()) => w.flush().await,
            Err(e) => Err(e),
        };
        if written.is_err() {
            self.broken.store(true, Ordering::Relaxed);
        }
        written
    }

    /// Queues `msg` now (so it keeps its place in line) and returns the
    /// write, to be awaited later: what a `Transport::send` returns.
    pub fn send_later(
        self: &Arc<Self>,
        msg: &impl serde::Serialize,
    ) -> impl std::future::Future<Output = io::Result<()>> + Send + 'static
    where
        W: Send + 'static,
    {
        let queued = self.queue(msg);
        let outbox = self.clone();
        async move {
            queued?;
            outbox.flush().await
        }
    }

    /// Queues and writes one message.
    pub async fn send(&self, msg: &impl serde::Serialize) -> io::Result<()> {
        self.queue(msg)?;
        self.flush().await
    }

    /// Writes what is queued, then closes the pipe (the reader sees EOF).
    pub async fn close(&self) -> io::Result<()> {
        let flushed = self.flush().await;
        drop(self.pipe.lock().await.take());
        flushed
    }
}

/// Marks a request whose caller wants no progress reports. rmcp puts a
/// progress token on every request; on one marked so, the token is left off
/// the wire, and the server does no progress work for nobody (measured on
/// server-everything: about a tenth of its calls per second).
#[derive(Debug, Clone, Copy)]
pub struct WithoutProgress;

const PROGRESS_TOKEN: &str = "progressToken";

/// warden as the client of one MCP server over its stdin and stdout.
///
/// rmcp's own pipe transport reads every response into `ServerResult`, an
/// untagged union it tries variant by variant: a tool's result is the
/// sixteenth, after fifteen failed attempts that each build an error. This one
/// remembers which requests are `tools/call` and reads their results as
/// `CallToolResult` directly; anything else, or a tool result that does not
/// read as one, goes through rmcp's reading unchanged.
pub struct ChildTransport<R, W> {
    lines: LineReader<R>,
    outbox: Arc<Outbox<W>>,
    /// `tools/call` requests sent and not yet answered or cancelled.
    calls: HashSet<RequestId>,
}

impl<R, W> ChildTransport<R, W>
where
    R: AsyncBufRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    pub fn new(stdout: R, stdin: W, max_line: usize) -> Self {
        ChildTransport {
            lines: LineReader::new(stdout, max_line),
            outbox: Arc::new(Outbox::new(stdin)),
            calls: HashSet::new(),
        }
    }

    /// One line from the server as a message, or `None` to skip it.
    fn read(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        let line = self.lines.line().trim_ascii();
        if line.is_empty() {
            return None;
        }
        if let Some(msg) = tool_result(line, &mut self.calls) {
            return Some(msg);
        }
        match serde_json::from_slice::<RxJsonRpcMessage<RoleClient>>(line) {
            Ok(msg) => {
                if let Some(id) = answered(&msg) {
                    self.calls.remove(id);
                }
                Some(msg)
            }
            Err(e) => {
                // As rmcp does: a server's stdout is for the protocol, its
                // stderr (logged) for everything else; noise is skipped.
                tracing::debug!(error = %e, bytes = line.len(), "skipped a line from an MCP server that is not a message");
                None
            }
        }
    }
}

/// The request a message answers: a response's or an error's id.
pub fn answered<Req, Resp, Noti>(msg: &JsonRpcMessage<Req, Resp, Noti>) -> Option<&RequestId> {
    match msg {
        JsonRpcMessage::Response(r) => Some(&r.id),
        JsonRpcMessage::Error(e) => e.id.as_ref(),
        _ => None,
    }
}

/// The answer to a `tools/call` in `calls`, read as what it is.
fn tool_result(
    line: &[u8],
    calls: &mut HashSet<RequestId>,
) -> Option<RxJsonRpcMessage<RoleClient>> {
    #[derive(Deserialize)]
    struct Answer<'a> {
        #[allow(dead_code)]
        jsonrpc: JsonRpcVersion2_0,
        id: RequestId,
        #[serde(borrow)]
        result: &'a RawValue,
    }
    if calls.is_empty() {
        return None;
    }
    let answer: Answer = serde_json::from_slice(line).ok()?;
    if !calls.contains(&answer.id) {
        return None;
    }
    let result: CallToolResult = serde_json::from_str(answer.result.get()).ok()?;
    calls.remove(&answer.id);
    Some(JsonRpcMessage::Response(JsonRpcResponse {
        jsonrpc: JsonRpcVersion2_0,
        id: answer.id,
        result: ServerResult::CallToolResult(result),
    }))
}

impl<R, W> Transport<RoleClient> for ChildTransport<R, W>
where
    R: AsyncBufRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    type Error = io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send + 'static {
        let mut item = item;
        match &mut item {
            JsonRpcMessage::Request(r)
                if matches!(r.request, ClientRequest::CallToolRequest(_)) =>
            {
                self.calls.insert(r.id.clone());
                if r.request.extensions().get::<WithoutProgress>().is_some() {
                    r.request.get_meta_mut().remove(PROGRESS_TOKEN);
                }
            }
            JsonRpcMessage::Notification(n) => {
                if let ClientNotification::CancelledNotification(c) = &n.notification {
                    if let Some(id) = &c.params.request_id {
                        self.calls.remove(id);
                    }
                }
            }
            _ => {}
        }
        self.outbox.send_later(&item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        loop {
            match self.lines.read_line().await {
                Ok(Line::Complete) => {
                    let msg = self.read();
                    self.lines.clear();
                    if msg.is_some() {
                        return msg;
                    }
                }
                Ok(Line::Oversized(bytes)) => {
                    tracing::warn!(
                        bytes,
                        max_line = self.lines.max_line(),
                        "skipped a line from an MCP server longer than server.max_line"
                    );
                }
                Ok(Line::Eof) => return None,
                Err(e) => {
                    tracing::debug!(error = %e, "reading an MCP server's stdout failed");
                    return None;
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        tokio::time::timeout(CLOSE_DEADLINE, self.outbox.close())
            .await
            .unwrap_or(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::{CallToolRequest, CallToolRequestParams, JsonRpcRequest, NumberOrString};

    fn call(id: i64) -> TxJsonRpcMessage<RoleClient> {
        JsonRpcMessage::Request(JsonRpcRequest::new(
            NumberOrString::Number(id),
            ClientRequest::CallToolRequest(CallToolRequest::new(CallToolRequestParams::new(
                "echo",
            ))),
        ))
    }

    /// A transport whose server's stdout is `from_server`, and the bytes it wrote.
    async fn exchange(
        sent: Vec<TxJsonRpcMessage<RoleClient>>,
        from_server: &str,
    ) -> (Vec<RxJsonRpcMessage<RoleClient>>, String) {
        let (stdin, mut stdin_peer) = tokio::io::duplex(64 * 1024);
        let from_server = std::io::Cursor::new(from_server.as_bytes().to_vec());
        let mut t = ChildTransport::new(from_server, stdin, 1024);
        for m in sent {
            t.send(m).await.unwrap();
        }
        let mut got = Vec::new();
        while let Some(m) = t.receive().await {
            got.push(m);
        }
        t.close().await.unwrap();
        let mut written = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stdin_peer, &mut written)
            .await
            .unwrap();
        (got, written)
    }

    #[tokio::test]
    async fn tool_results_are_read_as_tool_results_and_the_rest_as_rmcp_reads_it() {
        let from_server = concat!(
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"hi\"}],\"isError\":false}}\n",
            "not json\n",
            "\n",
            // Not a call this transport sent: rmcp's reading (an empty result).
            "{\"jsonrpc\":\"2.0\",\"id\":9,\"result\":{}}\n",
            // A call, answered with an error.
            "{\"jsonrpc\":\"2.0\",\"id\":2,\"error\":{\"code\":-32602,\"message\":\"bad\"}}\n",
            "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\n",
        );
        let long = format!("{{\"pad\":\"{}\"}}\n", "y".repeat(2000));
        let input = format!("{long}{from_server}");
        let (got, written) = exchange(vec![call(1), call(2)], &input).await;
        assert_eq!(got.len(), 4, "{got:?}");
        match &got[0] {
            JsonRpcMessage::Response(r) => match &r.result {
                ServerResult::CallToolResult(t) => {
                    assert_eq!(t.is_error, Some(false));
                    assert_eq!(t.content.len(), 1);
                }
                other => panic!("not a tool result: {other:?}"),
            },
            other => panic!("not a response: {other:?}"),
        }
        assert!(
            matches!(&got[1], JsonRpcMessage::Response(r) if matches!(r.result, ServerResult::EmptyResult(_)))
        );
        assert!(matches!(&got[2], JsonRpcMessage::Error(e) if e.error.code.0 == -32602));
        assert!(matches!(&got[3], JsonRpcMessage::Notification(_)));
        let lines: Vec<&str> = written.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains("\"id\":1") && lines[0].contains("tools/call"));
        assert!(lines[1].contains("\"id\":2"));
    }

    #[tokio::test]
    async fn a_call_without_progress_goes_out_without_a_progress_token() {
        let with_token = |id: i64, quiet: bool| {
            let mut m = call(id);
            if let JsonRpcMessage::Request(r) = &mut m {
                r.request
                    .get_meta_mut()
                    .set_progress_token(rmcp::model::ProgressToken(NumberOrString::Number(id)));
                if quiet {
                    r.request.extensions_mut().insert(WithoutProgress);
                }
            }
            m
        };
        let (_, written) = exchange(vec![with_token(1, true), with_token(2, false)], "").await;
        let lines: Vec<&str> = written.lines().collect();
        assert!(!lines[0].contains(PROGRESS_TOKEN), "{}", lines[0]);
        assert!(lines[1].contains("\"progressToken\":2"), "{}", lines[1]);
    }

    #[tokio::test]
    async fn lines_queued_before_a_flush_go_out_in_one_write_in_order() {
        let (w, mut r) = tokio::io::duplex(64 * 1024);
        let outbox = Outbox::new(w);
        for i in 0..3 {
            outbox.queue(&serde_json::json!({ "n": i })).unwrap();
        }
        outbox.flush().await.unwrap();
        // Nothing queued: a flush writes nothing and succeeds.
        outbox.flush().await.unwrap();
        outbox.close().await.unwrap();
        let mut out = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut r, &mut out)
            .await
            .unwrap();
        assert_eq!(out, "{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n");
        assert!(outbox.send(&1).await.is_err(), "closed");
    }
}
