//! The transport actor: MCP over stdio (rmcp), the only writer of stdout.
//!
//! It runs an rmcp server session on a [`StdioTransport`] and turns MCP
//! requests into runtime calls; when the session ends (stdin closed, SIGTERM)
//! it tells the root supervisor, which shuts warden down. MCP types stop
//! here: the runtime below speaks `ToolResult` and `ToolError`.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};
#[allow(deprecated)]
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, GetPromptRequestParams,
    GetPromptResponse, Implementation, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, LoggingLevel, LoggingMessageNotificationParam,
    PaginatedRequestParams, ProgressNotificationParam, ProtocolVersion, ReadResourceRequestParams,
    ReadResourceResponse, ServerCapabilities, ServerConfig, SetLevelRequestParams, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData as McpError, ServerHandler, ServiceExt};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::backends::mcp::{Catalog, Link};
use crate::core::error::ToolError;
use crate::core::runtime::{CallError, Notice, Runtime};
use crate::mcp::stdio::StdioTransport;
use crate::supervise::root::RootMsg;
use crate::supervise::tool::{Progress, ProgressFn, ToolOutput, ToolResult};
use crate::supervise::tools::{Handle, ToolEntry};

/// The registered name of the transport actor.
pub const NAME: &str = "transport";
/// Progress notifications buffered per call; past it they are dropped, not waited for.
const PROGRESS_BUFFER: usize = 16;
/// How long an answer waits for its call's progress reports to go out first.
const PROGRESS_FLUSH_DEADLINE: std::time::Duration = std::time::Duration::from_millis(100);

pub struct TransportActor;

pub enum TransportMsg {
    /// The MCP session is over, for the reason given.
    SessionEnded(String),
}

pub struct TransportArgs {
    pub runtime: Arc<Runtime>,
    pub root: ActorRef<RootMsg>,
}

pub struct TransportState {
    root: ActorRef<RootMsg>,
    session: JoinHandle<()>,
}

impl Actor for TransportActor {
    type Msg = TransportMsg;
    type State = TransportState;
    type Arguments = TransportArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: TransportArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let runtime = args.runtime;
        let session = tokio::spawn(async move {
            // Pipes (how MCP clients launch servers) are driven by the IO
            // reactor; anything else falls back to tokio's blocking stdio.
            let (stdin, stdout) = rmcp::transport::stdio_pipes();
            let transport = StdioTransport::new(
                tokio::io::BufReader::with_capacity(64 * 1024, stdin),
                stdout,
                runtime.clone(),
            );
            let notices = runtime.take_notices();
            let reason = match WardenServer::new(runtime).serve(transport).await {
                Ok(running) => {
                    if let Some(notices) = notices {
                        tokio::spawn(forward_notices(notices, running.peer().clone()));
                    }
                    match running.waiting().await {
                        Ok(quit) => format!("{quit:?}"),
                        Err(e) => format!("session task failed: {e}"),
                    }
                }
                Err(e) => format!("no session: {e}"),
            };
            let _ = myself.send_message(TransportMsg::SessionEnded(reason));
        });
        Ok(TransportState {
            root: args.root,
            session,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TransportMsg::SessionEnded(reason) => {
                tracing::info!(actor = "transport", %reason, "MCP session ended");
                let _ = state.root.send_message(RootMsg::SessionEnded);
                myself.stop(Some(reason));
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.session.abort();
        Ok(())
    }
}

/// The rmcp handler: MCP requests in, runtime calls out.
#[derive(Clone)]
pub struct WardenServer {
    runtime: Arc<Runtime>,
    /// The command and builtin tools (MCP servers' tools are listed live).
    tools: Arc<Vec<Tool>>,
}

impl WardenServer {
    pub fn new(runtime: Arc<Runtime>) -> Self {
        let tools = runtime
            .tools
            .iter()
            .filter(|t| t.spec.mcp().is_none())
            .map(|t| {
                Tool::new(
                    t.spec.name.clone(),
                    t.spec.description.clone(),
                    Arc::new(t.spec.input_schema.clone()),
                )
            })
            .collect();
        WardenServer {
            runtime,
            tools: Arc::new(tools),
        }
    }
}

impl WardenServer {
    /// What the MCP servers export, one list from each server's catalog.
    fn exported<T>(&self, list: impl Fn(&Catalog) -> Vec<T>) -> Vec<T> {
        self.runtime
            .tools
            .servers()
            .flat_map(|server| list(&server.catalog()))
            .collect()
    }
}

// Logging is deprecated by SEP-2577, but clients such as the MCP Inspector
// still send logging/setLevel, and answering -32601 breaks them.
#[allow(deprecated)]
impl ServerHandler for WardenServer {
    fn get_info(&self) -> ServerConfig {
        let mut caps = ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .enable_logging()
            .build();
        // Prompts and resources only come from MCP servers.
        if self.runtime.tools.servers().next().is_some() {
            caps = ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_logging()
                .enable_prompts()
                .enable_prompts_list_changed()
                .enable_resources()
                .enable_resources_list_changed()
                .build();
        }
        ServerConfig::new(caps)
            .with_server_info(Implementation::new("warden", env!("CARGO_PKG_VERSION")))
            .with_instructions("Tools served by warden; `status` shows the runtime's health.")
    }

    /// Every client stays on the `initialize` handshake.
    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(ProtocolVersion::known_up_to(&ProtocolVersion::V_2025_11_25))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let mut tools = self.tools.as_ref().clone();
        tools.extend(self.exported(|c| c.tools.iter().map(|(t, _)| t.clone()).collect()));
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        Ok(ListPromptsResult::with_all_items(self.exported(|c| {
            c.prompts.iter().map(|(p, _)| p.clone()).collect()
        })))
    }

    async fn get_prompt(
        &self,
        mut request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        let found = self.runtime.tools.servers().find_map(|server| {
            let downstream = server.catalog().prompt(&request.name)?.to_string();
            Some((server.clone(), downstream))
        });
        let Some((server, downstream)) = found else {
            return Err(McpError::invalid_params(
                format!(
                    "unknown prompt `{}`; prompts/list shows the prompts",
                    request.name
                ),
                Some(json!({"field": "name", "value": request.name})),
            ));
        };
        request.name = downstream;
        let link = running_link(&server)?;
        // Boxed, like every forwarded request: rmcp spawns one future type
        // for every request, as large as its largest branch, and copies it.
        Box::pin(link.get_prompt(request, server.spec.timeout))
            .await
            .map_err(|e| McpError::internal_error(e.text(), Some(e.to_json())))
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        Ok(ListResourcesResult::with_all_items(
            self.exported(|c| c.resources.clone()),
        ))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(ListResourceTemplatesResult::with_all_items(
            self.exported(|c| c.templates.clone()),
        ))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let Some(server) = self
            .runtime
            .tools
            .servers()
            .find(|s| s.catalog().serves_uri(&request.uri))
            .cloned()
        else {
            return Err(McpError::resource_not_found(
                format!(
                    "no server offers `{}`; resources/list shows the resources",
                    request.uri
                ),
                Some(json!({"uri": request.uri})),
            ));
        };
        let link = running_link(&server)?;
        Box::pin(link.read_resource(request, server.spec.timeout))
            .await
            .map_err(|e| McpError::internal_error(e.text(), Some(e.to_json())))
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        tracing::info!(actor = "transport", level = ?request.level, "client set the log level");
        Ok(())
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let started = Instant::now();
        let request_id = context.id.to_string();
        let tool = request.name.to_string();
        let progress = context
            .meta
            .get_progress_token()
            .map(|token| ProgressSink::new(context.peer.clone(), token));
        let report = progress.as_ref().map(|p| p.report.clone());
        let outcome = self
            .runtime
            .call(&tool, request.arguments, context.ct.clone(), report)
            .await;
        if let Some(progress) = progress {
            progress.finish().await;
        }
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        match outcome {
            Err(CallError::UnknownTool(name)) => {
                tracing::warn!(actor = "transport", %request_id, tool = %name, outcome = "unknown_tool", duration_ms, "call");
                Err(McpError::invalid_params(
                    format!("unknown tool `{name}`; tools/list shows the tools"),
                    Some(json!({"field": "name", "value": name})),
                ))
            }
            Ok(result) => {
                match &result {
                    Ok(_) => {
                        tracing::info!(actor = "transport", %request_id, %tool, outcome = "ok", duration_ms, "call")
                    }
                    Err(e) => {
                        tracing::warn!(actor = "transport", %request_id, %tool, outcome = %e.kind, duration_ms, error = %e.message, "call")
                    }
                }
                Ok(to_mcp(result).into())
            }
        }
    }
}

/// The live link of an MCP server, or the error a client sees while it is down.
fn running_link(server: &ToolEntry) -> Result<Arc<Link>, McpError> {
    match server.actor() {
        Some(Handle::Server(link)) => Ok(link),
        _ => {
            let e = ToolError::unavailable(
                &server.spec.name,
                &format!("the MCP server is {}", server.state().name()),
                None,
            );
            Err(McpError::internal_error(e.text(), Some(e.to_json())))
        }
    }
}

/// Tells the client what changed and what MCP servers logged, in order, by
/// one task; stops when the client is gone.
#[allow(deprecated)]
async fn forward_notices(
    mut notices: tokio::sync::mpsc::Receiver<Notice>,
    peer: rmcp::Peer<RoleServer>,
) {
    while let Some(notice) = notices.recv().await {
        let sent = match notice {
            Notice::ToolsChanged => peer.notify_tool_list_changed().await.is_ok(),
            Notice::PromptsChanged => peer.notify_prompt_list_changed().await.is_ok(),
            Notice::ResourcesChanged => peer.notify_resource_list_changed().await.is_ok(),
            Notice::Log {
                level,
                logger,
                data,
            } => {
                let level: LoggingLevel =
                    serde_json::from_value(json!(level)).unwrap_or(LoggingLevel::Info);
                let mut param = LoggingMessageNotificationParam::new(level, data);
                param.logger = Some(logger);
                peer.notify_logging_message(param).await.is_ok()
            }
        };
        if !sent && peer.is_transport_closed() {
            return;
        }
    }
}

/// A tool's answer as MCP sees it.
fn to_mcp(result: ToolResult) -> CallToolResult {
    match result {
        Ok(ToolOutput {
            downstream: Some(result),
            ..
        }) => *result,
        Ok(out) => {
            let mut content = vec![ContentBlock::text(out.text)];
            content.extend(out.notes.into_iter().map(ContentBlock::text));
            CallToolResult::success(content)
        }
        Err(e) => error_result(&e),
    }
}

/// An `isError` result: the sentence and suggestion as text, the fields as `structuredContent`.
pub fn error_result(e: &ToolError) -> CallToolResult {
    let mut r = CallToolResult::error(vec![ContentBlock::text(e.text())]);
    r.structured_content = Some(e.to_json());
    r
}

/// Progress of one call, forwarded to the client in order by one task; a
/// client that reads slowly loses progress reports, never a response.
struct ProgressSink {
    report: ProgressFn,
    tx: tokio::sync::mpsc::Sender<SinkMsg>,
    /// Set once the call is answered: later reports are dropped, as the
    /// client no longer knows the token.
    closed: Arc<std::sync::atomic::AtomicBool>,
}

enum SinkMsg {
    Report(Progress),
    /// Answered once every report before it was sent.
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl ProgressSink {
    fn new(peer: rmcp::Peer<RoleServer>, token: rmcp::model::ProgressToken) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<SinkMsg>(PROGRESS_BUFFER);
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let p = match msg {
                    SinkMsg::Report(p) => p,
                    SinkMsg::Flush(done) => {
                        let _ = done.send(());
                        continue;
                    }
                };
                let mut param = ProgressNotificationParam::new(token.clone(), p.progress);
                if let Some(total) = p.total {
                    param = param.with_total(total);
                }
                if let Some(message) = p.message {
                    param = param.with_message(message);
                }
                if peer.notify_progress(param).await.is_err() {
                    break;
                }
            }
        });
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let report = {
            let (tx, closed) = (tx.clone(), closed.clone());
            Arc::new(move |p| {
                if !closed.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = tx.try_send(SinkMsg::Report(p));
                }
            })
        };
        ProgressSink { report, tx, closed }
    }

    /// Before the answer goes out: the reports made so far go first, and
    /// none come after it.
    async fn finish(self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let (done, flushed) = tokio::sync::oneshot::channel();
        let _ = tokio::time::timeout(PROGRESS_FLUSH_DEADLINE, async {
            if self.tx.send(SinkMsg::Flush(done)).await.is_ok() {
                let _ = flushed.await;
            }
        })
        .await;
    }
}
