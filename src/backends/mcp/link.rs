//! The live connection to a running MCP server: what its calls are sent
//! through, and what it sends back unasked.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::ActorRef;
#[allow(deprecated)]
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, ClientCapabilities, ClientConfig, ClientRequest,
    ClientResult, CreateMessageRequest, CreateMessageRequestParams, CreateMessageResult,
    ElicitRequest, ElicitRequestParams, ElicitResult, ElicitationCapability, ErrorCode,
    GetExtensions, Implementation, ListRootsRequest, ListRootsResult,
    LoggingMessageNotificationParam, ProgressNotificationParam, ProgressToken, ProtocolVersion,
    ResourceUpdatedNotificationParam, RootsCapabilities, SamplingCapability, ServerRequest,
    ServerResult,
};
use rmcp::service::{
    NotificationContext, Peer, PeerRequestOptions, RequestContext, RoleClient, ServiceError,
};
use rmcp::{ClientHandler, ErrorData as McpError};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::pipe::{RouteProgress, WithoutProgress};
use super::server::{SaidLimit, ServerMsg, STDERR_LINES_PER_SECOND, STDERR_LINE_MAX};
use crate::config::ASK_DEADLINE;
use crate::core::call::{
    Asker, Backend, BoxFuture, Call, Payload, Progress, ProgressFn, ToolOutput, ToolResult,
};
use crate::core::error::{ErrorKind, ToolError};
use crate::core::runtime::Runtime;
use crate::core::session::{LogLevel, Notice};
use crate::core::status::ServerLive;
use crate::core::text::blank;
use crate::mcp::fast::{Calls, Reply};

/// How long a call whose connection closed waits for the child's exit
/// status, so its answer can say how the server ended.
pub(super) const EXIT_STATUS_WAIT: Duration = Duration::from_millis(500);
/// How long sending a cancellation downstream may take before it is given up.
const CANCEL_SEND_DEADLINE: Duration = Duration::from_millis(200);

/// Progress tokens warden put on its downstream requests, mapped back to the
/// callers' progress sinks (which carry the callers' own tokens).
pub(super) type ProgressRoutes = Arc<Mutex<HashMap<ProgressToken, ProgressFn>>>;

/// The tool calls in flight on one server, each with its client's `Asker`
/// (none for a caller that cannot be asked): a request the server makes
/// during a call goes to the client of the one call in flight. With several
/// in flight it cannot be told whose it is (stdio carries no link from a
/// server's request to the call it serves), and the server is answered an
/// error rather than a guess.
#[derive(Clone, Default)]
pub(super) struct Askers(Arc<Mutex<Vec<InFlight>>>);

/// One call in flight: its place, and its client if it can be asked.
type InFlight = (u64, Option<Arc<dyn Asker>>);

/// A call's place in its server's `Askers`, given up when the call ends.
struct Asking<'a>(&'a Askers, u64);

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        let mut calls = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        calls.retain(|(id, _)| *id != self.1);
    }
}

static NEXT_ASKING: AtomicU64 = AtomicU64::new(1);

impl Askers {
    fn enter(&self, asker: Option<Arc<dyn Asker>>) -> Asking<'_> {
        let id = NEXT_ASKING.fetch_add(1, Ordering::Relaxed);
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, asker));
        Asking(self, id)
    }

    /// The client of the one call in flight, or why there is none.
    fn only(&self) -> Result<Arc<dyn Asker>, String> {
        let calls = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match calls.as_slice() {
            [] => Err("no call of this server is in flight to ask on behalf of".into()),
            [(_, Some(asker))] => Ok(asker.clone()),
            [(_, None)] => Err("the call in flight has no client that can be asked".into()),
            more => Err(format!(
                "{} calls of this server are in flight and the request names none of them",
                more.len()
            )),
        }
    }
}

/// Removes a progress route when the call ends, however it ends.
struct Route<'a>(&'a ProgressRoutes, Option<ProgressToken>);

impl Drop for Route<'_> {
    fn drop(&mut self) {
        if let Some(token) = self.1.take() {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&token);
        }
    }
}

/// The backend of a running MCP server.
pub struct Link {
    pub(super) server: String,
    pub(super) peer: Peer<RoleClient>,
    pub(super) progress: ProgressRoutes,
    pub(super) pid: i32,
    /// A call's deadline downstream: the tool's `timeout`.
    pub(super) timeout: Duration,
    /// How the child ended, once it has (set before the calls learn of it).
    pub(super) ended: watch::Receiver<Option<String>>,
    pub(super) started: Instant,
    /// The server's name, version and protocol.
    pub(super) info: Value,
    pub(super) missed_pings: AtomicU32,
    pub(super) last_ping_us: AtomicU64,
    /// The server's secret env values, blanked out of its error messages
    /// (they reach the client, the call log and `last_error`).
    pub(super) secrets: Arc<[String]>,
    /// The calls in flight, for the server's requests to their clients.
    pub(super) askers: Askers,
    /// The fast lane for calls without progress, over a local server's pipes.
    pub(super) lane: Option<Arc<Calls>>,
}

impl Backend for Link {
    fn call(&self, call: Call) -> BoxFuture<'_, ToolResult> {
        // Boxed in any case: forwarding holds rmcp's request machinery, and
        // the call path's future stays small (tokio copies it into a task).
        Box::pin(self.call_tool(call))
    }

    fn forward(
        &self,
        request: Payload,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<Payload, ToolError>> {
        Box::pin(async move {
            let request = request
                .downcast::<ClientRequest>()
                .map_err(|_| ToolError::internal("a forwarded request that is not MCP"))?;
            let what = match &request {
                ClientRequest::GetPromptRequest(_) => "the prompt request",
                ClientRequest::ReadResourceRequest(_) => "the resource request",
                _ => "the request",
            };
            let answer = self.exchange(request, &cancel, None, what).await?;
            Ok(Payload::new(answer))
        })
    }

    fn server(&self) -> Option<ServerLive> {
        Some(ServerLive {
            pid: self.pid,
            up_s: self.started.elapsed().as_secs(),
            server: self.info.clone(),
            missed_pings: self.missed_pings.load(Ordering::Relaxed),
            last_ping_ms: self.last_ping_us.load(Ordering::Relaxed) as f64 / 1e3,
        })
    }
}

impl Link {
    /// Forwards one `tools/call` and waits for its result.
    async fn call_tool(&self, call: Call) -> ToolResult {
        let Call {
            tool,
            args,
            cancel,
            progress,
            asker,
            ..
        } = call;
        let _asking = self.askers.enter(asker);
        let what = format!("`{tool}`");
        if let (Some(lane), None) = (&self.lane, &progress) {
            return self.call_in_lane(lane, &tool, args, &cancel, &what).await;
        }
        let params = CallToolRequestParams::new(tool.to_string()).with_arguments(args);
        let mut request = CallToolRequest::new(params);
        if progress.is_none() {
            request.extensions_mut().insert(WithoutProgress);
        }
        let request = ClientRequest::CallToolRequest(request);
        match self.exchange(request, &cancel, progress, &what).await? {
            ServerResult::CallToolResult(result) => {
                Ok(ToolOutput::passthrough(Payload::new(result)))
            }
            _ => Err(self.not_a_tool_result(&tool)),
        }
    }

    /// One call through the fast lane: the same answers as through rmcp.
    async fn call_in_lane(
        &self,
        lane: &Arc<Calls>,
        tool: &str,
        args: rmcp::model::JsonObject,
        cancel: &CancellationToken,
        what: &str,
    ) -> ToolResult {
        let Ok(mut sent) = lane.send(tool, Some(&args)).await else {
            return Err(self.gone().await);
        };
        let reply = match self.settle(&mut sent.answer, cancel).await {
            Ok(reply) => reply,
            Err(stopped) => {
                let reason = stopped.reason();
                return Err(self.stopped(stopped, what, sent.cancel(reason)).await);
            }
        };
        match reply {
            Ok(Reply::Done(result)) => Ok(ToolOutput::passthrough(Payload::new(result))),
            Ok(Reply::Refused(e)) => Err(self.failed(ServiceError::McpError(e), what).await),
            Ok(Reply::NotAToolResult) => Err(self.not_a_tool_result(tool)),
            Err(_) => Err(self.gone().await),
        }
    }

    fn not_a_tool_result(&self, tool: &str) -> ToolError {
        ToolError::new(
            ErrorKind::ExecutionFailed,
            format!("MCP server `{}` answered `{tool}` with something other than a tool result (a task or an input request, which warden does not relay).", self.server),
            "Use the server directly for this tool, or ask its author for a plain result.",
        )
    }

    /// Waits for `answer` under the tool's timeout, or until the call is cancelled.
    async fn settle<F: std::future::Future>(
        &self,
        answer: F,
        cancel: &CancellationToken,
    ) -> Result<F::Output, Stopped> {
        tokio::select! {
            answer = answer => Ok(answer),
            _ = cancel.cancelled() => Err(Stopped::Cancelled),
            _ = tokio::time::sleep(self.timeout) => Err(Stopped::TimedOut),
        }
    }

    /// A call stopped before its answer: `tell` tells the server so (within
    /// a deadline), and the caller hears why.
    async fn stopped(
        &self,
        stopped: Stopped,
        what: &str,
        tell: impl std::future::Future,
    ) -> ToolError {
        let _ = tokio::time::timeout(CANCEL_SEND_DEADLINE, tell).await;
        match stopped {
            Stopped::Cancelled => ToolError::cancelled(format!(
                "The call was cancelled; `{}` was told to stop it.",
                self.server
            )),
            Stopped::TimedOut => ToolError::new(
                ErrorKind::Timeout,
                format!("MCP server `{}` did not answer {what} within {}; the call was cancelled downstream.", self.server, humantime::format_duration(self.timeout)),
                "Retry with a narrower request, or ask the operator to raise this tool's timeout.",
            ).detail("timeout_ms", self.timeout.as_millis() as u64),
        }
    }

    /// Sends one request and waits for its answer, under the tool's timeout;
    /// a cancellation or the timeout is passed on downstream, with the
    /// request id warden used. `progress` hears the server's reports on the
    /// token warden put on the request.
    async fn exchange(
        &self,
        mut request: ClientRequest,
        cancel: &CancellationToken,
        progress: Option<ProgressFn>,
        what: &str,
    ) -> Result<ServerResult, ToolError> {
        // The transport routes the token to the sink as it writes the
        // request: a report the server sends at once finds its way.
        let routed = progress.is_some();
        if let Some(sink) = progress {
            request.extensions_mut().insert(RouteProgress(sink));
        }
        let mut handle = match self
            .peer
            .send_request_with_option(request, PeerRequestOptions::no_options())
            .await
        {
            Ok(h) => h,
            Err(_) => return Err(self.gone().await),
        };
        // Whatever happens next, the route goes with the call.
        let _route = Route(
            &self.progress,
            routed.then(|| handle.progress_token.clone()),
        );
        let answer = match self.settle(&mut handle.rx, cancel).await {
            Ok(answer) => answer,
            Err(stopped) => {
                let reason = Some(stopped.reason().to_string());
                return Err(self.stopped(stopped, what, handle.cancel(reason)).await);
            }
        };
        match answer {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(e)) => Err(self.failed(e, what).await),
            Err(_) => Err(self.gone().await),
        }
    }

    /// A request that got no result: the server's JSON-RPC error (bad
    /// parameters are a `validation` error), or the server's end.
    async fn failed(&self, e: ServiceError, what: &str) -> ToolError {
        match e {
            ServiceError::McpError(e) => {
                let kind = if e.code == rmcp::model::ErrorCode::INVALID_PARAMS {
                    ErrorKind::Validation
                } else {
                    ErrorKind::ExecutionFailed
                };
                let message = blank(&e.message, &self.secrets);
                let data = blank_value(e.data.unwrap_or(Value::Null), &self.secrets);
                ToolError::new(
                    kind,
                    format!("MCP server `{}` refused {what}: {message}", self.server),
                    "Check the arguments against the server's schema (tools/list shows it); the message says what it objected to.",
                )
                .detail("code", e.code.0)
                .detail("data", data)
            }
            ServiceError::TransportClosed | ServiceError::TransportSend(_) => self.gone().await,
            other => ToolError::internal(format!("MCP server `{}`: {other}", self.server)),
        }
    }

    /// The answer for a call whose connection closed under it: the server
    /// ended. Waits briefly for the exit status so the answer can say how.
    async fn gone(&self) -> ToolError {
        let mut ended = self.ended.clone();
        let how = tokio::time::timeout(EXIT_STATUS_WAIT, ended.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|v| v.clone()))
            .unwrap_or_else(|| "its connection closed".to_string());
        // `unavailable`, not a tool failure: the crash is the supervisor's
        // business (restart budget), and counting every call it took down
        // would open the breaker on the restarted server.
        ToolError::new(
            ErrorKind::Unavailable,
            format!(
                "MCP server `{}` ended during the call: {how}.",
                self.server
            ),
            "Retry shortly (`warden status` shows when the server is back); if it keeps happening, ask the operator to check the server's log.",
        )
        .retry_after(Duration::from_millis(500))
        .detail("server_exited", true)
    }
}

/// Why a call ended before its answer.
enum Stopped {
    Cancelled,
    TimedOut,
}

impl Stopped {
    /// What the server is told.
    fn reason(&self) -> &'static str {
        match self {
            Stopped::Cancelled => "cancelled by warden's client",
            Stopped::TimedOut => "timeout",
        }
    }
}

/// warden as the client of one downstream server: what the server sends
/// unasked goes to the callers' progress sinks, to every session, or to the
/// server's actor.
#[derive(Clone)]
pub struct Downstream {
    pub(super) actor_name: String,
    pub(super) prefix: String,
    pub(super) progress: ProgressRoutes,
    pub(super) actor: ActorRef<ServerMsg>,
    pub(super) runtime: Arc<Runtime>,
    /// The server's log messages get its stderr's limits.
    pub(super) log_limit: Arc<std::sync::Mutex<SaidLimit>>,
    /// The server's secret env values, blanked out of what it says.
    pub(super) secrets: Arc<[String]>,
    /// The calls in flight on the server, whose clients its requests reach.
    pub(super) askers: Askers,
}

impl Downstream {
    /// Passes a request of the server on to the client of the call it
    /// belongs to, and brings back the client's answer (or its error).
    async fn ask(
        &self,
        request: ServerRequest,
        context: &RequestContext<RoleClient>,
        what: &str,
    ) -> Result<ClientResult, McpError> {
        let refuse = |why: String| {
            tracing::info!(actor = %self.actor_name, request = what, %why, "a server's request was not passed on");
            McpError::new(
                ErrorCode::INTERNAL_ERROR,
                format!("warden cannot pass {what} on: {why}"),
                None,
            )
        };
        let asker = self.askers.only().map_err(refuse)?;
        let answer = tokio::select! {
            answer = asker.ask(Payload::new(request)) => answer,
            _ = context.ct.cancelled() => return Err(refuse("the server cancelled it".into())),
            _ = tokio::time::sleep(ASK_DEADLINE) => {
                return Err(refuse(format!("the client did not answer within {}", humantime::format_duration(ASK_DEADLINE))))
            }
        };
        answer
            .downcast::<Result<ClientResult, McpError>>()
            .unwrap_or_else(|_| Err(refuse("the client's answer is not MCP".into())))
    }
}

fn unexpected(what: &str) -> McpError {
    McpError::internal_error(
        format!("the client answered {what} with something else"),
        None,
    )
}

/// A server's progress report, to the sink of the call it is about.
pub(super) fn report_progress(
    routes: &ProgressRoutes,
    secrets: &[String],
    params: ProgressNotificationParam,
) {
    let sink = routes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&params.progress_token)
        .cloned();
    if let Some(sink) = sink {
        sink(Progress {
            progress: params.progress,
            total: params.total,
            // Bounded and blanked like the server's log messages.
            message: params.message.map(|m| {
                let m = blank(&m, secrets);
                cut(&m).unwrap_or_else(|| m.into_owned())
            }),
        });
    }
}

/// `text` cut to [`STDERR_LINE_MAX`] bytes, saying how much was cut; `None`
/// when it fits.
fn cut(text: &str) -> Option<String> {
    if text.len() <= STDERR_LINE_MAX {
        return None;
    }
    let mut end = STDERR_LINE_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(format!(
        "{}… ({} bytes cut)",
        &text[..end],
        text.len() - end
    ))
}

/// `value` with `secrets` blanked out of its JSON text.
fn blank_value(value: Value, secrets: &[String]) -> Value {
    let text = value.to_string();
    match blank(&text, secrets) {
        Cow::Borrowed(_) => value,
        Cow::Owned(blanked) => serde_json::from_str(&blanked).unwrap_or(Value::String(blanked)),
    }
}

/// A log message's data as warden passes it on: secrets blanked, and cut
/// to [`STDERR_LINE_MAX`] bytes of JSON text (then a string saying how much
/// was cut).
fn bounded_data(data: Value, secrets: &[String]) -> Value {
    let data = blank_value(data, secrets);
    cut(&data.to_string()).map_or(data, Value::String)
}

#[allow(deprecated)]
impl ClientHandler for Downstream {
    /// Sampling, elicitation and roots are declared: a request for them is
    /// passed to the client of the call in flight, which may not have them
    /// (then the server is answered an error saying so).
    fn get_info(&self) -> ClientConfig {
        let mut caps = ClientCapabilities::default();
        caps.roots = Some(RootsCapabilities::default());
        caps.sampling = Some(SamplingCapability::default());
        caps.elicitation = Some(ElicitationCapability::default());
        ClientConfig::new(
            caps,
            Implementation::new("warden", env!("CARGO_PKG_VERSION")),
        )
        .with_protocol_version(ProtocolVersion::V_2025_11_25)
    }

    /// Only reached by a report `ProgressTap` did not take first.
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        report_progress(&self.progress, &self.secrets, params);
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let level = serde_json::to_value(params.level)
            .ok()
            .and_then(|v| v.as_str().and_then(LogLevel::parse))
            .unwrap_or(LogLevel::Info);
        let dropped = {
            let mut limit = self.log_limit.lock().unwrap_or_else(|p| p.into_inner());
            if !limit.admit() {
                return;
            }
            limit.take_dropped()
        };
        if dropped > 0 {
            tracing::warn!(actor = %self.actor_name, dropped, "server log messages dropped (over {STDERR_LINES_PER_SECOND}/s)");
        }
        let logger = match &params.logger {
            Some(l) => blank(&format!("{}/{l}", self.prefix), &self.secrets).into_owned(),
            None => self.prefix.clone(),
        };
        let data = bounded_data(params.data, &self.secrets);
        tracing::info!(actor = %self.actor_name, level = level.name(), %logger, %data, "server log message");
        self.runtime.notify(Notice::Log {
            level,
            logger,
            data,
        });
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, McpError> {
        let request = ServerRequest::CreateMessageRequest(CreateMessageRequest::new(params));
        match self
            .ask(request, &context, "sampling/createMessage")
            .await?
        {
            ClientResult::CreateMessageResult(r) => Ok(*r),
            _ => Err(unexpected("sampling/createMessage")),
        }
    }

    async fn create_elicitation(
        &self,
        params: ElicitRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, McpError> {
        let request = ServerRequest::ElicitRequest(ElicitRequest::new(params));
        match self.ask(request, &context, "elicitation/create").await? {
            ClientResult::ElicitResult(r) => Ok(r),
            _ => Err(unexpected("elicitation/create")),
        }
    }

    async fn list_roots(
        &self,
        context: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, McpError> {
        let request = ServerRequest::ListRootsRequest(ListRootsRequest::default());
        match self.ask(request, &context, "roots/list").await? {
            ClientResult::ListRootsResult(r) => Ok(r),
            _ => Err(unexpected("roots/list")),
        }
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.actor.cast(ServerMsg::Refresh);
    }

    async fn on_prompt_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.actor.cast(ServerMsg::Refresh);
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.actor.cast(ServerMsg::Refresh);
    }

    /// To the sessions subscribed to the URI (each session's forwarder
    /// looks); a URI longer than any a client could have subscribed to is dropped.
    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        if params.uri.len() <= MAX_URI {
            self.runtime
                .notify(Notice::ResourceUpdated { uri: params.uri });
        }
    }
}

/// The longest resource URI whose updates are passed on.
const MAX_URI: usize = 8 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_messages_pass_at_the_stderr_rate_and_the_rest_are_counted() {
        let mut limit = SaidLimit::default();
        let passed = (0..1000).filter(|_| limit.admit()).count();
        // The burst, and perhaps a token or two refilled meanwhile.
        assert!((200..210).contains(&passed), "{passed}");
        std::thread::sleep(Duration::from_millis(50));
        assert!(limit.admit());
        assert!(limit.take_dropped() >= 790);
        assert_eq!(limit.take_dropped(), 0);
    }

    #[test]
    fn log_data_is_blanked_and_cut() {
        let secrets = ["s3cret".to_string()];
        assert_eq!(
            bounded_data(serde_json::json!({"k": "a s3cret"}), &secrets),
            serde_json::json!({"k": "a [redacted]"})
        );
        let long = bounded_data(Value::String("é".repeat(5000)), &secrets);
        let text = long.as_str().unwrap();
        assert!(text.len() < 2100 && text.ends_with("bytes cut)"), "{text}");
    }
}
