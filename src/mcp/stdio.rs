//! MCP over stdio, hardened: newline-delimited JSON-RPC with bounded lines.
//!
//! rmcp's own stdio transport ends the session on a notification before
//! `initialize`, and drops bad lines silently. This one keeps a bad client
//! served: a line that is not JSON is answered with a parse error (-32700) on
//! the id it names, found without parsing it (null if it names none); JSON
//! that is not a valid message is answered with a JSON-RPC error; a request
//! reusing the id of one still in flight, or of a cancelled one whose handler
//! has not ended, is refused (rmcp would otherwise drop one of the two
//! answers, or send the cancelled one's for the new call); a
//! notification or response before `initialize` is logged and dropped; a line
//! longer than `server.max_line` is skipped without being held in memory.
//! On EOF or SIGTERM it stops taking requests and ends the session once the
//! calls in flight have finished or the shutdown grace is over.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, ClientJsonRpcMessage, ClientNotification,
    ClientRequest, CustomRequest, ErrorData, JsonRpcRequest, JsonRpcVersion2_0, RequestId,
    ServerJsonRpcMessage,
};
use rmcp::service::RoleServer;
use rmcp::transport::Transport;
use rmcp::ServiceExt;
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncWrite};

use crate::core::names;
use crate::core::runtime::Runtime;
use crate::core::session::Session;
use crate::mcp::fast::Lane;
use crate::mcp::server::{forward_notices, WardenServer};
use crate::mcp::wire::{answered, Line, LineReader, Outbox};

/// How often the drain checks whether the calls in flight have finished.
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// How long the answers of cancelled calls may take to be written before
/// the session ends without them.
const CANCELLED_FLUSH: Duration = Duration::from_secs(1);
/// Requests read but not yet answered, at the most, per `max_in_flight` slot:
/// past it stdin is not read until answers are written, so a client that does
/// not read its responses cannot grow warden's memory.
const PENDING_PER_SLOT: usize = 2;
/// Bytes of output waiting for a client that does not read them, at the
/// most, before warden stops reading its requests and drops notifications
/// (progress, log messages, list changes) instead of queueing them. Answers
/// are never dropped: the calls already read still finish, so the backlog
/// can pass this by what they answer. The requests the fast lane holds
/// (read, not yet answered) count in it too: reading runs ahead of their
/// answers there.
pub const OUT_BUDGET: usize = 64 << 20;

/// After a cancelled request's handler ends, its id stays reserved this
/// long more: rmcp queues the handler's answer as the handler returns and
/// drops it a moment later, and a new request with the id registered in
/// between would be sent that answer.
const CANCELLED_ID_SETTLE: Duration = Duration::from_millis(50);

/// The requests handed to rmcp, by id: whose answers have not been written,
/// whose handlers still run, and which the client cancelled.
#[derive(Default)]
struct Pending {
    ids: std::sync::Mutex<Ids>,
    answered: tokio::sync::Notify,
}

#[derive(Default)]
struct Ids {
    by_id: HashMap<RequestId, Entry>,
    /// The sum of `unanswered` over all ids.
    unanswered: usize,
}

/// Counts per id: a client may reuse an id while the first is in flight.
#[derive(Default)]
struct Entry {
    unanswered: usize,
    handlers: usize,
    /// The client cancelled a request with this id: rmcp will drop its
    /// answer. `Some(t)` once no handler with the id runs, since `t`.
    cancelled: Option<Option<Instant>>,
}

/// Why a request's id cannot be used now.
enum InUse {
    Unanswered,
    CancelledEnding,
}

impl Entry {
    fn idle(&self, now: Instant) -> bool {
        self.unanswered == 0
            && self.handlers == 0
            && match self.cancelled {
                None => true,
                Some(None) => false,
                Some(Some(ended)) => now.duration_since(ended) >= CANCELLED_ID_SETTLE,
            }
    }
}

impl Pending {
    fn ids(&self) -> std::sync::MutexGuard<'_, Ids> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request is handed to rmcp: an answer is awaited, a handler will run.
    fn add(&self, id: &RequestId) {
        let mut ids = self.ids();
        let e = ids.by_id.entry(id.clone()).or_default();
        e.unanswered += 1;
        e.handlers += 1;
        ids.unanswered += 1;
    }

    /// An answer with this id was written (or failed for good).
    fn answered(&self, id: &RequestId) {
        let mut ids = self.ids();
        let Some(e) = ids.by_id.get_mut(id) else {
            return;
        };
        if e.unanswered > 0 {
            e.unanswered -= 1;
            ids.unanswered -= 1;
        }
        Self::tidy(&mut ids, id);
        drop(ids);
        self.answered.notify_waiters();
    }

    /// A handler with this id returned (or was dropped).
    fn handler_ended(&self, id: &RequestId) {
        let mut ids = self.ids();
        let Some(e) = ids.by_id.get_mut(id) else {
            return;
        };
        e.handlers = e.handlers.saturating_sub(1);
        if e.handlers == 0 && e.cancelled == Some(None) {
            e.cancelled = Some(Some(Instant::now()));
        }
        Self::tidy(&mut ids, id);
    }

    /// The client cancelled the request with this id: rmcp drops its answer
    /// (one already queued counts in the outbox's byte budget), so stop
    /// waiting for it, and keep the id until its handler has ended.
    fn cancelled(&self, id: &RequestId) {
        let mut ids = self.ids();
        let now = Instant::now();
        ids.by_id.retain(|_, e| !e.idle(now));
        let Some(e) = ids.by_id.get_mut(id) else {
            return;
        };
        if e.unanswered == 0 {
            return;
        }
        e.unanswered -= 1;
        e.cancelled = Some((e.handlers == 0).then_some(now));
        ids.unanswered -= 1;
        drop(ids);
        self.answered.notify_waiters();
    }

    fn in_use(&self, id: &RequestId) -> Option<InUse> {
        let mut ids = self.ids();
        let e = ids.by_id.get(id)?;
        if e.unanswered > 0 {
            return Some(InUse::Unanswered);
        }
        if !e.idle(Instant::now()) && e.cancelled.is_some() {
            return Some(InUse::CancelledEnding);
        }
        Self::tidy(&mut ids, id);
        None
    }

    fn tidy(ids: &mut Ids, id: &RequestId) {
        if ids.by_id.get(id).is_some_and(|e| e.idle(Instant::now())) {
            ids.by_id.remove(id);
        }
    }

    fn len(&self) -> usize {
        self.ids().unanswered
    }
}

/// warden's server, telling [`Pending`] when each request's handler ends.
struct Tracked {
    inner: WardenServer,
    pending: Arc<Pending>,
}

/// Calls [`Pending::handler_ended`] however the handler ends (also dropped
/// when the session ends).
struct HandlerRuns<'a> {
    pending: &'a Pending,
    id: RequestId,
}

impl Drop for HandlerRuns<'_> {
    fn drop(&mut self) {
        self.pending.handler_ended(&self.id);
    }
}

impl rmcp::Service<RoleServer> for Tracked {
    async fn handle_request(
        &self,
        request: ClientRequest,
        context: rmcp::service::RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ServerResult, ErrorData> {
        let _runs = HandlerRuns {
            pending: &self.pending,
            id: context.id.clone(),
        };
        // Without `initialize` (2026-07-28), each request names its version.
        if let Some(v) = context.protocol_version() {
            self.inner.session().set_protocol(v.as_str());
        }
        self.inner.handle_request(request, context).await
    }

    async fn handle_notification(
        &self,
        notification: ClientNotification,
        context: rmcp::service::NotificationContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.inner.handle_notification(notification, context).await
    }

    fn get_info(&self) -> rmcp::model::ServerConfig {
        rmcp::Service::<RoleServer>::get_info(&self.inner)
    }

    fn supported_protocol_versions(
        &self,
    ) -> std::borrow::Cow<'static, [rmcp::model::ProtocolVersion]> {
        rmcp::Service::<RoleServer>::supported_protocol_versions(&self.inner)
    }
}

/// Serves the client that launched warden, over stdin and stdout, until its
/// session ends; says why it ended.
pub async fn serve(runtime: Arc<Runtime>) -> String {
    let (session, notices) = runtime.open_session("stdio");
    // Pipes (how MCP clients launch servers) are driven by the IO reactor;
    // anything else falls back to tokio's blocking stdio.
    let (stdin, stdout) = rmcp::transport::stdio_pipes();
    let transport = StdioTransport::new(
        tokio::io::BufReader::with_capacity(64 * 1024, stdin),
        stdout,
        runtime.clone(),
        session.clone(),
    );
    let inner = WardenServer::new(runtime, session.clone());
    let lane = Lane::new(inner.clone());
    let transport = transport.with_lane(lane.clone());
    let server = Tracked {
        inner,
        pending: transport.pending.clone(),
    };
    let reason = match server.serve(transport).await {
        Ok(running) => {
            lane.open(running.peer().clone());
            let notices = tokio::spawn(forward_notices(
                notices,
                running.peer().clone(),
                session.clone(),
            ));
            let reason = match running.waiting().await {
                Ok(quit) => format!("{quit:?}"),
                Err(e) => format!("session task failed: {e}"),
            };
            notices.abort();
            reason
        }
        Err(e) => format!("no session: {e}"),
    };
    session.end();
    reason
}

pub struct StdioTransport<R, W> {
    lines: LineReader<R>,
    outbox: Arc<Outbox<W>>,
    runtime: Arc<Runtime>,
    session: Arc<Session>,
    initialized: bool,
    /// stdin has closed.
    eof: bool,
    /// When the drain began (EOF or SIGTERM).
    drain_started: Option<Instant>,
    /// When the session's calls were cancelled, at the end of the drain.
    cancelled_at: Option<Instant>,
    pending: Arc<Pending>,
    max_pending: usize,
    /// Notifications dropped because the client did not read its output.
    dropped_notices: Arc<std::sync::atomic::AtomicU64>,
    /// The fast lane for `tools/call`, when there is one.
    lane: Option<Arc<Lane>>,
    /// Bytes of the requests the lane has taken and not yet answered.
    lane_bytes: Arc<AtomicUsize>,
}

impl<R, W> StdioTransport<R, W>
where
    R: AsyncBufRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    pub fn new(reader: R, writer: W, runtime: Arc<Runtime>, session: Arc<Session>) -> Self {
        let max_line = runtime.config.server.max_line.0 as usize;
        let max_pending = (runtime.config.server.max_in_flight * PENDING_PER_SLOT).max(64);
        StdioTransport {
            lines: LineReader::new(reader, max_line),
            outbox: Arc::new(Outbox::new(writer)),
            runtime,
            session,
            initialized: false,
            eof: false,
            drain_started: None,
            cancelled_at: None,
            pending: Arc::default(),
            max_pending,
            dropped_notices: Arc::default(),
            lane: None,
            lane_bytes: Arc::default(),
        }
    }

    /// `tools/call` requests the lane takes go to it, not to rmcp.
    pub fn with_lane(mut self, lane: Arc<Lane>) -> Self {
        self.lane = Some(lane);
        self
    }

    /// Hands a request (of `bytes` on the wire) to the fast lane, which
    /// answers it in a task of its own; gives it back for rmcp if the lane
    /// does not take it.
    fn to_lane(
        &self,
        request: JsonRpcRequest<ClientRequest>,
        bytes: usize,
    ) -> Option<ClientJsonRpcMessage> {
        let Some(lane) = &self.lane else {
            return Some(ClientJsonRpcMessage::Request(request));
        };
        let id = request.id.clone();
        let answer = match lane.take(request) {
            Ok(answer) => answer,
            Err(request) => return Some(ClientJsonRpcMessage::Request(request)),
        };
        let (outbox, pending) = (self.outbox.clone(), self.pending.clone());
        let held = super::wire::Held::new(self.lane_bytes.clone(), bytes);
        tokio::spawn(async move {
            let answer = {
                let _runs = HandlerRuns {
                    pending: &pending,
                    id: id.clone(),
                };
                answer.await
            };
            // `None`: the client cancelled it, and hears no answer. Once
            // queued, the answer's bytes count in the outbox's backlog.
            let write = answer.map(|answer| outbox.send_later(&answer, true));
            drop(held);
            if let Some(write) = write {
                let _ = write.await;
                pending.answered(&id);
            }
        });
        None
    }

    /// Whether stdin waits: too many requests unanswered, or too many bytes
    /// of output unread.
    fn held_back(&self) -> bool {
        self.pending.len() >= self.max_pending || self.over_budget()
    }

    /// Output unread and requests held in the lane: past [`OUT_BUDGET`].
    fn over_budget(&self) -> bool {
        self.outbox.backlog() + self.lane_bytes.load(Ordering::Relaxed) > OUT_BUDGET
    }

    /// Decides what to do with one line, and writes the answer it gets here.
    async fn classify(&mut self) -> Option<ClientJsonRpcMessage> {
        match decide(self.lines.line(), &mut self.initialized) {
            Verdict::Pass(msg) => Some(msg),
            Verdict::Answer(answer) => {
                let _ = self.outbox.send(&answer).await;
                None
            }
            Verdict::Drop => None,
        }
    }
}

/// What becomes of one line from the client.
#[derive(Debug)]
// One per line, moved straight on: boxing the message would cost an
// allocation per request to save stack space nobody holds.
#[allow(clippy::large_enum_variant)]
pub enum Verdict {
    /// A message for rmcp.
    Pass(ClientJsonRpcMessage),
    /// Answered here, without rmcp: the line could not be served.
    Answer(ErrorAnswer),
    /// Nothing to answer: logged and dropped.
    Drop,
}

/// Decides what to do with one line (without its newline): pass a message
/// on, answer it here, or drop it. `initialized` turns true at `initialize`,
/// or at `server/discover` and any request naming its protocol version in
/// `_meta` (2026-07-28 has no handshake); before it only requests pass.
/// Public for the fuzz targets.
pub fn decide(line: &[u8], initialized: &mut bool) -> Verdict {
    let text = trim_ascii(line);
    if text.is_empty() {
        return Verdict::Drop;
    }
    if *initialized {
        if let Some(call) = tool_call(text) {
            return Verdict::Pass(call);
        }
    }
    let msg = match serde_json::from_slice::<ClientJsonRpcMessage>(text) {
        Ok(msg) => msg,
        Err(parse_error) => return not_a_message(text, parse_error),
    };
    if let ClientJsonRpcMessage::Request(r) = &msg {
        if let Some(custom) = misread_standard(&r.request) {
            // rmcp reads a standard method with malformed params as a custom
            // request and answers "method not found"; the truth is bad params.
            let reason = match custom.method.as_str() {
                "tools/call" => serde_json::from_value::<CallToolRequestParams>(
                    custom.params.clone().unwrap_or(Value::Null),
                )
                .err()
                .map_or_else(|| "malformed params".to_string(), |e| e.to_string()),
                _ => "malformed params".to_string(),
            };
            tracing::warn!(actor = names::TRANSPORT, request_id = %r.id, method = %custom.method, %reason, "answered a malformed request");
            return error_verdict(
                ErrorData::invalid_params(
                    format!("invalid params for `{}`: {reason}", custom.method),
                    None,
                ),
                Some(r.id.clone()),
            );
        }
    }
    if !*initialized {
        match &msg {
            ClientJsonRpcMessage::Request(r) => {
                if matches!(
                    r.request,
                    ClientRequest::InitializeRequest(_) | ClientRequest::DiscoverRequest(_)
                ) || rmcp::model::GetMeta::get_meta(&r.request)
                    .protocol_version()
                    .is_some()
                {
                    *initialized = true;
                }
            }
            other => {
                tracing::warn!(
                    actor = names::TRANSPORT,
                    kind = message_kind(other),
                    "dropped a message that arrived before initialize"
                );
                return Verdict::Drop;
            }
        }
    }
    Verdict::Pass(msg)
}

/// A well-formed `tools/call`, read straight into its type, as rmcp would
/// read it (`_meta` into the request's extensions). rmcp reads any message
/// by buffering it whole and trying each kind in turn, an error built for
/// each miss; a client repeats this request more than any other. `None` for
/// anything else, which rmcp's reading then takes, errors and all.
fn tool_call(text: &[u8]) -> Option<ClientJsonRpcMessage> {
    #[derive(serde::Deserialize)]
    struct Call<'a> {
        jsonrpc: JsonRpcVersion2_0,
        id: RequestId,
        method: &'a str,
        params: CallToolRequestParams,
    }
    let Call {
        jsonrpc,
        id,
        method,
        mut params,
    } = serde_json::from_slice(text).ok()?;
    if method != "tools/call" {
        return None;
    }
    let meta = params.meta.take();
    let mut request = CallToolRequest::new(params);
    if let Some(meta) = meta {
        request.extensions.insert(meta);
    }
    Some(ClientJsonRpcMessage::Request(JsonRpcRequest {
        jsonrpc,
        id,
        request: ClientRequest::CallToolRequest(request),
    }))
}

/// A JSON-RPC error the transport answers itself. Its `id` is `null`, not
/// absent, when the line named none: JSON-RPC 2.0 (section 5) requires the
/// member, and rmcp's message type leaves it out.
#[derive(Debug, serde::Serialize)]
pub struct ErrorAnswer {
    jsonrpc: &'static str,
    id: Option<RequestId>,
    error: ErrorData,
}

impl ErrorAnswer {
    pub fn new(error: ErrorData, id: Option<RequestId>) -> Self {
        ErrorAnswer {
            jsonrpc: "2.0",
            id,
            error,
        }
    }
}

/// A JSON-RPC error to answer a line with.
fn error_verdict(error: ErrorData, id: Option<RequestId>) -> Verdict {
    Verdict::Answer(ErrorAnswer::new(error, id))
}

/// What to answer to a line that did not read as a client message.
fn not_a_message(text: &[u8], parse_error: serde_json::Error) -> Verdict {
    let value = match serde_json::from_slice::<Value>(text) {
        Ok(value) => value,
        Err(e) => {
            // Not JSON: invalid UTF-8, a raw control character,
            // nesting deeper than serde_json's limit, or noise.
            let id = top_level_id(text);
            tracing::warn!(actor = names::TRANSPORT, bytes = text.len(), request_id = ?id, error = %e, "answered a line that is not JSON");
            return error_verdict(
                ErrorData::parse_error(format!("not valid JSON: {e}"), None),
                id,
            );
        }
    };
    let id = value
        .get("id")
        .and_then(|id| serde_json::from_value::<RequestId>(id.clone()).ok());
    let method = value.get("method").and_then(Value::as_str);
    match (id, method) {
        (Some(id), Some(method)) => {
            tracing::warn!(actor = names::TRANSPORT, request_id = %id, %method, error = %parse_error, "answered a malformed request");
            error_verdict(
                ErrorData::invalid_params(
                    format!("invalid params for `{method}`: {parse_error}"),
                    None,
                ),
                Some(id),
            )
        }
        (Some(id), None) if value.get("result").is_some() || value.get("error").is_some() => {
            tracing::warn!(actor = names::TRANSPORT, request_id = %id, "dropped a response to a request warden never made");
            Verdict::Drop
        }
        (_, Some(method)) => {
            tracing::warn!(actor = names::TRANSPORT, %method, error = %parse_error, "dropped a malformed notification");
            Verdict::Drop
        }
        (id, None) => {
            tracing::warn!(actor = names::TRANSPORT, error = %parse_error, "answered a line that is JSON but not JSON-RPC");
            error_verdict(
                ErrorData::invalid_request(
                    format!("not a JSON-RPC 2.0 message: {parse_error}"),
                    None,
                ),
                id,
            )
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
        let answers = answered(&item).cloned();
        let shed = matches!(item, ServerJsonRpcMessage::Notification(_))
            && self.outbox.backlog() > OUT_BUDGET;
        if shed {
            let n = self.dropped_notices.fetch_add(1, Ordering::Relaxed) + 1;
            if n == 1 || n.is_multiple_of(1000) {
                tracing::warn!(
                    actor = names::TRANSPORT,
                    dropped = n,
                    backlog = self.outbox.backlog(),
                    "the client is not reading its output: notifications dropped"
                );
            }
        }
        let write = (!shed).then(|| self.outbox.send_later(&item, true));
        let pending = self.pending.clone();
        async move {
            let Some(write) = write else {
                return Ok(());
            };
            let written = write.await;
            // Answered once written (or failed for good): it no longer holds memory here.
            if let Some(id) = answers {
                pending.answered(&id);
            }
            written
        }
    }

    async fn receive(&mut self) -> Option<ClientJsonRpcMessage> {
        loop {
            // The drain, after EOF or SIGTERM: until every request read has
            // been answered. After SIGTERM stdin is still read and new calls
            // are refused, and the root ends the session at its grace; after
            // EOF nothing new can come, and the session ends its calls itself
            // at the grace. Either way their answers are written first.
            if self.eof || self.runtime.draining.is_cancelled() {
                let started = *self.drain_started.get_or_insert_with(|| {
                    tracing::info!(
                        actor = names::TRANSPORT,
                        pending = self.pending.len(),
                        "draining"
                    );
                    Instant::now()
                });
                let grace = self.runtime.config.server.shutdown_grace;
                let left = self.pending.len();
                if left == 0 {
                    return None;
                }
                if self.eof && started.elapsed() >= grace && !self.session.cancel().is_cancelled() {
                    tracing::warn!(actor = names::TRANSPORT, requests = left, grace = %humantime::format_duration(grace), "shutdown grace over; cancelling the calls still running");
                    self.session.end();
                }
                if self.session.cancel().is_cancelled() {
                    let at = *self.cancelled_at.get_or_insert_with(Instant::now);
                    if at.elapsed() >= CANCELLED_FLUSH {
                        tracing::warn!(
                            actor = names::TRANSPORT,
                            requests = left,
                            "ending the session with calls unanswered"
                        );
                        return None;
                    }
                }
            }
            let draining = self.runtime.draining.clone();
            let pending = self.pending.clone();
            let read = if self.eof {
                tokio::time::sleep(DRAIN_POLL).await;
                continue;
            } else if self.held_back() {
                // Backpressure, by requests unanswered and by bytes unread:
                // read on once answers have been written.
                let answered = pending.answered.notified();
                let by_bytes = self.over_budget();
                // Checked again now that `answered` listens: one written
                // meanwhile would not be heard.
                if self.held_back() {
                    tokio::select! {
                        _ = answered => {}
                        // Bytes go out without an answer's notice (notifications).
                        _ = tokio::time::sleep(DRAIN_POLL), if by_bytes || self.drain_started.is_some() => {}
                        _ = draining.cancelled(), if self.drain_started.is_none() => {}
                    }
                }
                continue;
            } else if self.drain_started.is_some() {
                tokio::select! {
                    read = self.lines.read_line() => read,
                    _ = tokio::time::sleep(DRAIN_POLL) => continue,
                }
            } else {
                tokio::select! {
                    read = self.lines.read_line() => read,
                    _ = draining.cancelled() => continue,
                }
            };
            match read {
                Ok(Line::Complete) => {
                    let bytes = self.lines.line().len();
                    let msg = self.classify().await;
                    self.lines.clear();
                    match &msg {
                        Some(ClientJsonRpcMessage::Request(r))
                            if let Some(why) = self.pending.in_use(&r.id) =>
                        {
                            tracing::warn!(actor = names::TRANSPORT, request_id = %r.id, "refused a request reusing the id of one in flight");
                            let error = ErrorData::invalid_request(
                                match why {
                                    InUse::Unanswered => format!("request id {} is already in use by a request that has not been answered; use a new id", r.id),
                                    InUse::CancelledEnding => format!("request id {} belongs to a cancelled request that is still ending; use a new id", r.id),
                                },
                                None,
                            );
                            let _ = self
                                .outbox
                                .send(&ErrorAnswer::new(error, Some(r.id.clone())))
                                .await;
                            continue;
                        }
                        Some(ClientJsonRpcMessage::Request(r)) => self.pending.add(&r.id),
                        Some(ClientJsonRpcMessage::Notification(n)) => {
                            if let ClientNotification::CancelledNotification(c) = &n.notification {
                                if let Some(id) = &c.params.request_id {
                                    self.pending.cancelled(id);
                                    if let Some(lane) = &self.lane {
                                        lane.cancel(id);
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                    let msg = match msg {
                        Some(ClientJsonRpcMessage::Request(r)) => self.to_lane(r, bytes),
                        other => other,
                    };
                    if let Some(msg) = msg {
                        return Some(msg);
                    }
                }
                Ok(Line::Eof) | Err(_) => {
                    tracing::info!(actor = names::TRANSPORT, "stdin closed");
                    self.eof = true;
                }
                Ok(Line::Oversized(bytes)) => {
                    tracing::warn!(
                        actor = names::TRANSPORT,
                        bytes,
                        max_line = self.lines.max_line(),
                        "skipped a line longer than server.max_line"
                    );
                    let error = ErrorData::invalid_request(
                        format!(
                            "request line of {bytes} bytes exceeds server.max_line ({} bytes)",
                            self.lines.max_line()
                        ),
                        None,
                    );
                    let _ = self.outbox.send(&ErrorAnswer::new(error, None)).await;
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.outbox.flush().await
    }
}

/// A request rmcp could not type although its method is one MCP defines.
fn misread_standard(request: &ClientRequest) -> Option<&CustomRequest> {
    let ClientRequest::CustomRequest(custom) = request else {
        return None;
    };
    let m = custom.method.as_str();
    let standard = ["initialize", "ping"].contains(&m)
        || [
            "tools/",
            "resources/",
            "prompts/",
            "logging/",
            "completion/",
        ]
        .iter()
        .any(|p| m.starts_with(p));
    standard.then_some(custom)
}

/// The `id` of a line whose top level is a JSON object, found without
/// parsing the rest of it: a line that is not JSON (invalid UTF-8, nesting
/// past serde_json's limit, a raw control character in a string) may still
/// name its request, and then it gets its answer. A loop, not recursion, so
/// no depth costs stack.
fn top_level_id(text: &[u8]) -> Option<RequestId> {
    /// The index just past the string whose opening quote is at `start`.
    fn string_end(text: &[u8], start: usize) -> Option<usize> {
        let mut i = start + 1;
        while i < text.len() {
            match text[i] {
                b'\\' => i += 2,
                b'"' => return Some(i + 1),
                _ => i += 1,
            }
        }
        None
    }
    if text.first() != Some(&b'{') {
        return None;
    }
    let mut depth = 0usize;
    // At depth 1, the next string is a key (after `{` or `,`).
    let mut key_next = false;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => {
                let end = string_end(text, i)?;
                if depth == 1 && key_next && &text[i..end] == b"\"id\"" {
                    let value = text[end..].trim_ascii_start().strip_prefix(b":")?;
                    let value = value.trim_ascii_start();
                    let len = match value.first() {
                        Some(b'"') => string_end(value, 0)?,
                        _ => value
                            .iter()
                            .position(|&b| b == b',' || b == b'}' || b.is_ascii_whitespace())
                            .unwrap_or(value.len()),
                    };
                    return serde_json::from_slice(&value[..len]).ok();
                }
                key_next = false;
                i = end;
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                key_next = depth == 1;
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' => key_next = depth == 1,
            _ => {}
        }
        i += 1;
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;

    fn id(line: &[u8]) -> Option<String> {
        top_level_id(line).map(|id| id.to_string())
    }

    #[test]
    fn a_tool_call_read_straight_is_what_rmcp_reads() {
        let lines = [
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#,
            r#"{"params":{"_meta":{"progressToken":"t1","x":[1]},"name":"e","arguments":{}},"method":"tools/call","id":"a","jsonrpc":"2.0"}"#,
            r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"e","task":{"ttl":5},"extra":1},"unknown":true}"#,
            r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"e","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"},"requestState":"s","inputResponses":{}}}"#,
        ];
        for line in lines {
            let fast = tool_call(line.as_bytes()).expect(line);
            let rmcp: ClientJsonRpcMessage = serde_json::from_str(line).unwrap();
            assert_eq!(
                serde_json::to_value(&fast).unwrap(),
                serde_json::to_value(&rmcp).unwrap(),
                "{line}"
            );
        }
        // Not a well-formed tools/call: left to rmcp's reading.
        let others = [
            r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"tools/call","params":{"name":"e"}}"#,
            r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"e"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"tools/call","params":{"name":"e"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools\/call","params":{"name":"e"}}"#,
        ];
        for line in others {
            assert!(tool_call(line.as_bytes()).is_none(), "{line}");
        }
    }

    #[test]
    fn the_id_of_a_line_that_is_not_json() {
        let deep = [
            b"{\"params\":".as_slice(),
            &[b'['; 100_000],
            &[b']'; 100_000],
            b", \"id\": 7}",
        ]
        .concat();
        assert_eq!(id(&deep).as_deref(), Some("7"));
        assert_eq!(
            id(b"{\"jsonrpc\":\"2.0\",\"id\":\"a\\\"b\",\"x\":\"\xff\"}").as_deref(),
            Some("a\"b")
        );
        assert_eq!(
            id(b"{\"method\":\"x\",\"id\":12,\"s\":\"a\x00b\"").as_deref(),
            Some("12")
        );
        // Only the top level's key counts, not a nested one or a value.
        assert_eq!(
            id(b"{\"params\":{\"id\":5},\"x\":\"id\",\"id\":6}").as_deref(),
            Some("6")
        );
        assert_eq!(id(b"{\"params\":{\"id\":5}}"), None);
        assert_eq!(id(b"[{\"id\":5}]"), None);
        assert_eq!(id(b"not json"), None);
        assert_eq!(id(b"{\"id\":[1]}"), None);
        assert_eq!(id(b"{\"id\""), None);
    }
}
