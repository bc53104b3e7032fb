//! warden as the client of one MCP server over its stdin and stdout.

use std::collections::HashSet;
use std::io;
use std::time::Duration;

use rmcp::model::{
    CallToolResult, ClientNotification, ClientRequest, GetExtensions, GetMeta, JsonRpcMessage,
    JsonRpcResponse, JsonRpcVersion2_0, RequestId, ServerNotification, ServerResult,
};
use rmcp::service::{RoleClient, RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::Arc;
use tokio::io::{AsyncBufRead, AsyncWrite};

use super::link::{report_progress, ProgressRoutes};
use crate::core::call::ProgressFn;
use crate::mcp::fast::Calls;
use crate::mcp::wire::{answered, Line, LineReader, Outbox};

/// How long closing a server's stdin may wait for a write in progress.
const CLOSE_DEADLINE: Duration = Duration::from_secs(1);

/// Marks a request whose caller wants no progress reports. rmcp puts a
/// progress token on every request; on one marked so, the token is left off
/// the wire, and the server does no progress work for nobody (measured on
/// server-everything: about a tenth of its calls per second).
#[derive(Debug, Clone, Copy)]
pub struct WithoutProgress;

/// On a request: the sink of its progress reports, routed from the token
/// rmcp put on it as the request is written (the caller learns the token
/// only once rmcp has queued the request, which can be after the server's
/// first report arrived).
#[derive(Clone)]
pub struct RouteProgress(pub ProgressFn);

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
    progress: Option<ProgressTap>,
    /// The fast lane's calls, answered as their lines are read.
    lane: Option<Arc<Calls>>,
}

/// Where a server's progress reports go as they are read, in the order of
/// the server's output. rmcp would hand each notification to a task of its
/// own, while a response goes straight to its caller: on more than one
/// thread, a call's last reports could reach its caller after its answer
/// (and be dropped then, as the client has forgotten the token).
pub struct ProgressTap {
    pub routes: ProgressRoutes,
    /// The server's secret env values, blanked out of progress messages.
    pub secrets: Arc<[String]>,
}

impl ProgressTap {
    /// As a request goes out: its caller's progress sink is routed from the
    /// token rmcp put on it.
    fn route(&self, item: &TxJsonRpcMessage<RoleClient>) {
        let JsonRpcMessage::Request(r) = item else {
            return;
        };
        if let Some(RouteProgress(sink)) = r.request.extensions().get::<RouteProgress>() {
            if let Some(token) = r.request.get_meta().get_progress_token() {
                self.routes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(token, sink.clone());
            }
        }
    }

    /// A progress report read from the server goes to its caller here, in
    /// the order read; anything else is for rmcp.
    fn take(&self, msg: RxJsonRpcMessage<RoleClient>) -> Option<RxJsonRpcMessage<RoleClient>> {
        match msg {
            JsonRpcMessage::Notification(n) => match n.notification {
                ServerNotification::ProgressNotification(p) => {
                    report_progress(&self.routes, &self.secrets, p.params);
                    None
                }
                notification => Some(JsonRpcMessage::Notification(
                    rmcp::model::JsonRpcNotification { notification, ..n },
                )),
            },
            other => Some(other),
        }
    }
}

/// A request whose caller wants no progress reports goes out without the
/// token rmcp put on it.
fn leave_off_progress(item: &mut TxJsonRpcMessage<RoleClient>) {
    if let JsonRpcMessage::Request(r) = item {
        if r.request.extensions().get::<WithoutProgress>().is_some() {
            r.request.get_meta_mut().remove(PROGRESS_TOKEN);
        }
    }
}

/// Any other transport to a server (a remote one's Streamable HTTP), with
/// its calls' progress routed as [`ChildTransport`] routes it.
pub struct Tapped<T> {
    pub inner: T,
    pub tap: ProgressTap,
}

impl<T> Transport<RoleClient> for Tapped<T>
where
    T: Transport<RoleClient>,
{
    type Error = T::Error;

    fn send(
        &mut self,
        mut item: TxJsonRpcMessage<RoleClient>,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send + 'static {
        leave_off_progress(&mut item);
        self.tap.route(&item);
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        loop {
            let msg = self.inner.receive().await?;
            if let Some(msg) = self.tap.take(msg) {
                return Some(msg);
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.inner.close().await
    }
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
            progress: None,
            lane: None,
        }
    }

    /// The fast lane to this server: `tools/call` requests written straight
    /// to its stdin, their answers taken off its stdout before rmcp sees them.
    pub fn lane(&mut self) -> Arc<Calls> {
        self.lane
            .get_or_insert_with(|| Calls::new(self.outbox.clone()))
            .clone()
    }

    /// Progress reports go to `tap` as they are read, not to rmcp.
    pub fn with_progress(mut self, tap: ProgressTap) -> Self {
        self.progress = Some(tap);
        self
    }

    /// One line from the server as a message, or `None` to skip it.
    fn read(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        let line = self.lines.line().trim_ascii();
        if line.is_empty() {
            return None;
        }
        if self.lane.as_ref().is_some_and(|lane| lane.answer(line)) {
            return None;
        }
        if let Some(msg) = tool_result(line, &mut self.calls) {
            return Some(msg);
        }
        match serde_json::from_slice::<RxJsonRpcMessage<RoleClient>>(line) {
            Ok(msg) => {
                let msg = match &self.progress {
                    Some(tap) => tap.take(msg)?,
                    None => msg,
                };
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

impl<R, W> ChildTransport<R, W> {
    /// The server's output has ended: the lane's calls hear it.
    fn end_lane(&self) {
        if let Some(lane) = &self.lane {
            lane.end();
        }
    }
}

impl<R, W> Drop for ChildTransport<R, W> {
    fn drop(&mut self) {
        self.end_lane();
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
        leave_off_progress(&mut item);
        if let Some(tap) = &self.progress {
            tap.route(&item);
        }
        match &mut item {
            JsonRpcMessage::Request(r)
                if matches!(r.request, ClientRequest::CallToolRequest(_)) =>
            {
                self.calls.insert(r.id.clone());
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
        self.outbox.send_later(&item, false)
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
                Ok(Line::Eof) => {
                    self.end_lane();
                    return None;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "reading an MCP server's stdout failed");
                    self.end_lane();
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
}
