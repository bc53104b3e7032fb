//! The rmcp server handler: one per session, MCP requests in, runtime calls
//! out. MCP types stop here (and in `backends::mcp`): the runtime below
//! speaks `ToolResult`, `ToolError` and opaque payloads.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

#[allow(deprecated)]
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ClientRequest, ClientResult,
    CompleteRequest, CompleteRequestParams, CompleteResult, ContentBlock, ErrorCode,
    GetPromptRequest, GetPromptRequestParams, GetPromptResponse, Implementation,
    InitializeRequestParams, InitializeResult, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, LoggingLevel, LoggingMessageNotificationParam,
    PaginatedRequestParams, ProgressNotificationParam, ProtocolVersion, ReadResourceRequest,
    ReadResourceRequestParams, ReadResourceResponse, Reference, ResourceUpdatedNotificationParam,
    ResultType, ServerCapabilities, ServerConfig, ServerRequest, ServerResult,
    SetLevelRequestParams, SubscribeRequest, SubscribeRequestParams, SubscriptionFilter, Tool,
    UnsubscribeRequest, UnsubscribeRequestParams,
};
use rmcp::service::{RequestContext, RoleServer, SubscriptionContext, SubscriptionSendError};
use rmcp::{ErrorData as McpError, Peer, ServerHandler};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::core::call::{
    Asker, CallCtx, CallError, Payload, Principal, Progress, ProgressFn, ToolOutput, ToolResult,
};
use crate::core::catalog::{Catalog, Definition};
use crate::core::error::ToolError;
use crate::core::names;
use crate::core::registry::{Registry, ToolEntry};
use crate::core::runtime::Runtime;
use crate::core::session::{LogLevel, Notice, Session};
use crate::mcp::bridge::{Bridge, Round};

/// Progress notifications buffered per call; past it they are dropped, not waited for.
const PROGRESS_BUFFER: usize = 16;
/// How long an answer waits for its call's progress reports to go out first.
const PROGRESS_FLUSH_DEADLINE: std::time::Duration = std::time::Duration::from_millis(100);

/// The handler of one session.
#[derive(Clone)]
pub struct WardenServer {
    runtime: Arc<Runtime>,
    session: Arc<Session>,
    offer: Offer,
    /// Over HTTP: what ends the session when rmcp lets go of the handler.
    http: Option<Arc<HttpSession>>,
}

/// An HTTP session's hold on its `Session`: rmcp drops the handler (every
/// clone of it) when the session closes or a stateless request is answered,
/// and the last drop ends the session, which cancels its calls.
pub struct HttpSession {
    session: Arc<Session>,
    runtime: Arc<Runtime>,
    open: Arc<crate::mcp::http::Open>,
    /// Taken when the client says it is initialized, to forward list changes.
    notices: std::sync::Mutex<Option<broadcast::Receiver<Notice>>>,
    forwarder: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for HttpSession {
    fn drop(&mut self) {
        self.session.end();
        self.open.closed();
        release_subscriptions(&self.runtime, &self.session);
        if let Some(f) = self
            .forwarder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            f.abort();
        }
        tracing::debug!(
            actor = names::TRANSPORT,
            session = self.session.id,
            "HTTP session ended"
        );
    }
}

/// What every session of one runtime is offered alike: warden's own tools
/// and the capabilities. Made once per configuration generation, not per
/// session: over HTTP each stateless request is a session of its own.
#[derive(Clone)]
pub struct Offer {
    /// The command and builtin tools of one generation (MCP servers' tools
    /// are listed live).
    tools: Arc<std::sync::Mutex<(u64, Arc<Vec<Tool>>)>>,
    caps: ServerCapabilities,
    /// The calls of 2026-07-28 clients waiting for their retries.
    bridge: Arc<Bridge>,
}

impl Offer {
    // `enable_logging`: see the note on the `ServerHandler` impl below.
    #[allow(deprecated)]
    pub fn new(runtime: &Runtime) -> Offer {
        let registry = runtime.tools();
        // Prompts and resources come from MCP servers, which a reload may
        // add: declared whether or not one runs now.
        let caps = ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .enable_logging()
            .enable_prompts()
            .enable_prompts_list_changed()
            .enable_resources()
            .enable_resources_list_changed()
            .enable_resources_subscribe()
            .enable_completions()
            .build();
        Offer {
            tools: Arc::new(std::sync::Mutex::new((
                registry.generation,
                own_tools(&registry),
            ))),
            caps,
            bridge: Bridge::new(runtime.config.server.input_wait),
        }
    }

    /// Warden's own tools in `registry`'s generation.
    fn tools(&self, registry: &Registry) -> Arc<Vec<Tool>> {
        let mut tools = self.tools.lock().unwrap_or_else(|p| p.into_inner());
        if tools.0 != registry.generation {
            *tools = (registry.generation, own_tools(registry));
        }
        tools.1.clone()
    }
}

/// The command and builtin tools, as MCP lists them.
fn own_tools(registry: &Registry) -> Arc<Vec<Tool>> {
    Arc::new(
        registry
            .iter()
            .filter(|t| t.spec.mcp().is_none())
            .map(|t| {
                Tool::new(
                    t.spec.name.clone(),
                    t.spec.description.clone(),
                    Arc::new(t.spec.input_schema.clone()),
                )
            })
            .collect(),
    )
}

impl WardenServer {
    pub fn new(runtime: Arc<Runtime>, session: Arc<Session>) -> Self {
        let offer = Offer::new(&runtime);
        WardenServer::offering(runtime, session, &offer)
    }

    fn offering(runtime: Arc<Runtime>, session: Arc<Session>, offer: &Offer) -> Self {
        WardenServer {
            runtime,
            session,
            offer: offer.clone(),
            http: None,
        }
    }

    /// The handler of a new HTTP session (or stateless request).
    pub fn for_http(
        runtime: Arc<Runtime>,
        open: Arc<crate::mcp::http::Open>,
        offer: &Offer,
    ) -> Self {
        let (session, notices) = runtime.open_session("http");
        open.opened();
        let http = Arc::new(HttpSession {
            session: session.clone(),
            runtime: runtime.clone(),
            open,
            notices: std::sync::Mutex::new(Some(notices)),
            forwarder: std::sync::Mutex::new(None),
        });
        WardenServer {
            http: Some(http),
            ..WardenServer::offering(runtime, session, offer)
        }
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// What the MCP servers export, one list from each server's catalog,
    /// read into the protocol's types.
    fn exported<T: DeserializeOwned>(
        &self,
        principal: &Option<Arc<Principal>>,
        list: impl Fn(&crate::config::ToolSpec, &Catalog) -> Vec<Definition>,
    ) -> Vec<T> {
        self.runtime
            .tools()
            .servers()
            .filter(|server| allowed(principal, &server.spec.scopes))
            .flat_map(|server| list(&server.spec, &server.catalog()))
            .filter_map(|def| T::deserialize(&Value::Object((*def).clone())).ok())
            .collect()
    }

    /// The server a resource URI belongs to.
    fn owner_of(&self, uri: &str) -> Result<Arc<ToolEntry>, McpError> {
        self.runtime.tools().route_uri(uri).cloned().ok_or_else(|| {
            McpError::resource_not_found(
                format!("no server offers `{uri}`; resources/list shows the resources"),
                Some(json!({"uri": uri})),
            )
        })
    }

    /// A request for an MCP server, through the runtime's admission.
    async fn forward(
        &self,
        entry: &ToolEntry,
        request: ClientRequest,
        context: &RequestContext<RoleServer>,
    ) -> Result<ServerResult, McpError> {
        let principal = principal_noted(&self.session, context)?;
        self.forward_as(entry, request, principal, &context.ct)
            .await
    }

    /// Subscribes the session to `uri`; its server hears it from the first
    /// session only (as `resources/subscribe`: warden's servers speak the
    /// protocols before 2026-07-28, where it is not deprecated).
    #[allow(deprecated)]
    async fn watch(&self, uri: &str, context: &RequestContext<RoleServer>) -> Result<(), McpError> {
        let entry = self.owner_of(uri)?;
        let elsewhere = self.runtime.subscribed_elsewhere(uri, self.session.id);
        let new = self
            .session
            .subscribe(uri)
            .map_err(|e| McpError::invalid_params(e.to_string(), Some(json!({"uri": uri}))))?;
        if !new || elsewhere {
            return Ok(());
        }
        let request = ClientRequest::SubscribeRequest(SubscribeRequest::new(
            SubscribeRequestParams::new(uri),
        ));
        if let Err(e) = self.forward(&entry, request, context).await {
            self.session.unsubscribe(uri);
            return Err(e);
        }
        Ok(())
    }

    /// Unsubscribes the session from `uri`; its server hears it once no
    /// other session is subscribed.
    async fn unwatch_as(
        &self,
        uri: &str,
        principal: Option<Arc<Principal>>,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<(), McpError> {
        if !self.session.unsubscribe(uri) || self.runtime.subscribed_elsewhere(uri, self.session.id)
        {
            return Ok(());
        }
        let Some(entry) = self.runtime.tools().route_uri(uri).cloned() else {
            return Ok(());
        };
        self.forward_as(&entry, unsubscribe_request(uri), principal, cancel)
            .await
            .map(drop)
    }

    /// The list changes and resource updates for one `subscriptions/listen`,
    /// until it ends.
    async fn listen_until_ended(
        &self,
        notices: &mut broadcast::Receiver<Notice>,
        sink: &rmcp::service::SubscriptionSink,
        subscription: &SubscriptionContext,
    ) -> Result<(), McpError> {
        loop {
            let notice = tokio::select! {
                _ = subscription.cancelled() => return Ok(()),
                _ = self.runtime.draining.cancelled() => return Ok(()),
                notice = notices.recv() => notice,
            };
            let sent = match notice {
                Ok(Notice::ToolsChanged) => sink.notify_tool_list_changed().await,
                Ok(Notice::PromptsChanged) => sink.notify_prompt_list_changed().await,
                Ok(Notice::ResourcesChanged) => sink.notify_resource_list_changed().await,
                // The sink passes only the URIs the subscription named.
                Ok(Notice::ResourceUpdated { uri }) => sink.notify_resource_updated(uri).await,
                // Log messages have no place on a subscription stream.
                Ok(Notice::Log { .. }) => continue,
                // Changes were missed: every list may be stale.
                Err(broadcast::error::RecvError::Lagged(dropped)) => {
                    tracing::warn!(
                        actor = names::TRANSPORT,
                        session = self.session.id,
                        dropped,
                        "notices dropped on a subscription: the client read them too slowly"
                    );
                    let _ = sink.notify_tool_list_changed().await;
                    let _ = sink.notify_prompt_list_changed().await;
                    sink.notify_resource_list_changed().await
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            };
            match sent {
                Ok(()) | Err(SubscriptionSendError::NotificationNotAccepted(_)) => {}
                Err(_) => return Ok(()),
            }
        }
    }

    /// A request for an MCP server on behalf of `principal`, cancelled by `cancel`.
    async fn forward_as(
        &self,
        entry: &ToolEntry,
        request: ClientRequest,
        principal: Option<Arc<Principal>>,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<ServerResult, McpError> {
        if let Some(p) = &principal {
            let missing = p.lacks(&entry.spec.scopes);
            if !missing.is_empty() {
                return Err(McpError::invalid_params(
                    format!(
                        "`{}` needs the scope(s) {}",
                        entry.spec.name,
                        missing.join(" ")
                    ),
                    None,
                ));
            }
        }
        let ctx = CallCtx {
            session: &self.session,
            principal: principal.as_deref(),
            cancel,
            progress: None,
            asker: None,
        };
        // Boxed, like every forwarded request: rmcp spawns one future type
        // for every request, as large as its largest branch, and copies it.
        let answer = Box::pin(self.runtime.forward(&ctx, entry, Payload::new(request)))
            .await
            .map_err(|e| forward_error(&e))?;
        answer
            .downcast::<ServerResult>()
            .map(complete)
            .map_err(|_| forward_error(&ToolError::internal("a server's answer that is not MCP")))
    }
}

impl WardenServer {
    /// A 2026-07-28 client's call to an MCP server: a new call starts in a
    /// task of its own (holding this session), a retry resumes the call its
    /// `requestState` names; either runs until answered or asked again.
    async fn bridged(
        &self,
        request: CallToolRequestParams,
        context: &RequestContext<RoleServer>,
        principal: Option<Arc<Principal>>,
        progress: Option<ProgressFn>,
    ) -> Result<Round, McpError> {
        let bridge = &self.offer.bridge;
        let tool = request.name.to_string();
        let name = principal.as_ref().map(|p| p.name.clone());
        let call = match request.request_state {
            Some(state) => bridge.resume(
                &state,
                &tool,
                name.as_deref(),
                request.input_responses.unwrap_or_default(),
            )?,
            None => {
                let (server, tool, args) = (self.clone(), tool.clone(), request.arguments);
                Bridge::start(context.client_capabilities(), move |parts| async move {
                    // The whole handler, not only the fields used: over HTTP
                    // it holds the session, which ends with its last clone.
                    let server = server;
                    let ctx = CallCtx {
                        session: &server.session,
                        principal: principal.as_deref(),
                        cancel: &parts.cancel,
                        progress: Some(parts.progress),
                        asker: Some(parts.asker),
                    };
                    server.runtime.call(&ctx, &tool, args).await
                })
            }
        };
        Ok(bridge
            .round(call, &tool, name.as_deref(), progress, &context.ct)
            .await)
    }
}

/// A server's answer as a 2026-07-28 client needs it: with `resultType`,
/// which a server on an older protocol does not send (rmcp takes it off
/// again for clients on those).
fn complete(mut result: ServerResult) -> ServerResult {
    let result_type = match &mut result {
        ServerResult::CompleteResult(r) => &mut r.result_type,
        ServerResult::GetPromptResult(r) => &mut r.result_type,
        ServerResult::ListPromptsResult(r) => &mut r.result_type,
        ServerResult::ListResourcesResult(r) => &mut r.result_type,
        ServerResult::ListResourceTemplatesResult(r) => &mut r.result_type,
        ServerResult::ReadResourceResult(r) => &mut r.result_type,
        ServerResult::ListToolsResult(r) => &mut r.result_type,
        ServerResult::CallToolResult(r) => &mut r.result_type,
        _ => return result,
    };
    result_type.get_or_insert(ResultType::COMPLETE);
    result
}

// Logging is deprecated by SEP-2577, but clients such as the MCP Inspector
// still send logging/setLevel, and answering -32601 breaks them.
#[allow(deprecated)]
impl ServerHandler for WardenServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(self.offer.caps.clone())
            .with_server_info(Implementation::new("warden", env!("CARGO_PKG_VERSION")))
            .with_instructions("Tools served by warden; `status` shows the runtime's health.")
    }

    /// Every version rmcp knows, up to 2026-07-28: a client that asks for
    /// 2025-11-25 in `initialize` gets exactly that, one that opens with
    /// `server/discover` (or names 2026-07-28 in `_meta`) is served statelessly.
    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(ProtocolVersion::known_up_to(&ProtocolVersion::V_2026_07_28))
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        context.peer.set_peer_info(request.clone());
        principal_noted(&self.session, &context)?;
        let answer = self.negotiate_initialize(&request)?;
        self.session.set_protocol(answer.protocol_version.as_str());
        Ok(answer)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        // Without `initialize` (2026-07-28), each request names its version.
        if let Some(v) = context.protocol_version() {
            self.session.set_protocol(v.as_str());
        }
        let principal = principal_noted(&self.session, &context)?;
        // What a server with `prefix = ""` exports under the name of one of
        // warden's own tools (or of an earlier server's) is not callable:
        // calls go to the first. It is not listed either.
        let registry = self.runtime.tools();
        let own = self.offer.tools(&registry);
        let mut names: std::collections::HashSet<String> =
            own.iter().map(|t| t.name.to_string()).collect();
        let mut tools: Vec<Tool> = match &principal {
            None => own.as_ref().clone(),
            Some(p) => own
                .iter()
                .filter(|t| registry.get(&t.name).is_some_and(|e| p.may(&e.spec.scopes)))
                .cloned()
                .collect(),
        };
        tools.extend(
            self.exported::<Tool>(&principal, |spec, c| {
                c.tools
                    .iter()
                    .filter(|t| allowed(&principal, &spec.scopes_for(Some(&t.downstream))))
                    .map(|t| t.def.clone())
                    .collect()
            })
            .into_iter()
            .filter(|t| names.insert(t.name.to_string())),
        );
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        let principal = principal_noted(&self.session, &context)?;
        Ok(ListPromptsResult::with_all_items(
            self.exported(&principal, |_, c| {
                c.prompts.iter().map(|p| p.def.clone()).collect()
            }),
        ))
    }

    async fn get_prompt(
        &self,
        mut request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        let tools = self.runtime.tools();
        let Some(target) = tools.route_prompt(&request.name) else {
            return Err(McpError::invalid_params(
                format!(
                    "unknown prompt `{}`; prompts/list shows the prompts",
                    request.name
                ),
                Some(json!({"field": "name", "value": request.name})),
            ));
        };
        request.name = target.name.to_string();
        let request = ClientRequest::GetPromptRequest(GetPromptRequest::new(request));
        match self.forward(target.entry, request, &context).await? {
            ServerResult::GetPromptResult(r) => Ok(r.into()),
            ServerResult::InputRequiredResult(r) => Ok(r.into()),
            _ => Err(unexpected_answer(target.entry, "prompts/get")),
        }
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let principal = principal_noted(&self.session, &context)?;
        Ok(ListResourcesResult::with_all_items(
            self.exported(&principal, |_, c| {
                c.resources.iter().map(|r| r.def.clone()).collect()
            }),
        ))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        let principal = principal_noted(&self.session, &context)?;
        Ok(ListResourceTemplatesResult::with_all_items(
            self.exported(&principal, |_, c| {
                c.templates.iter().map(|t| t.def.clone()).collect()
            }),
        ))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let tools = self.runtime.tools();
        let Some(entry) = tools.route_uri(&request.uri) else {
            return Err(McpError::resource_not_found(
                format!(
                    "no server offers `{}`; resources/list shows the resources",
                    request.uri
                ),
                Some(json!({"uri": request.uri})),
            ));
        };
        let request = ClientRequest::ReadResourceRequest(ReadResourceRequest::new(request));
        match self.forward(entry, request, &context).await? {
            ServerResult::ReadResourceResult(r) => Ok(r.into()),
            ServerResult::InputRequiredResult(r) => Ok(r.into()),
            _ => Err(unexpected_answer(entry, "resources/read")),
        }
    }

    /// To the server of the prompt or resource template named; no server,
    /// no suggestions.
    async fn complete(
        &self,
        mut request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        let tools = self.runtime.tools();
        let target = match &mut request.r#ref {
            Reference::Prompt(p) => tools.route_prompt(&p.name).map(|t| {
                p.name = t.name.to_string();
                t.entry
            }),
            Reference::Resource(r) => tools.route_uri(&r.uri),
            _ => None,
        };
        let Some(entry) = target else {
            return Ok(CompleteResult::default());
        };
        let request = ClientRequest::CompleteRequest(CompleteRequest::new(request));
        match self.forward(entry, request, &context).await? {
            ServerResult::CompleteResult(r) => Ok(r),
            _ => Err(unexpected_answer(entry, "completion/complete")),
        }
    }

    /// The session subscribes; the server of the URI hears it only from the
    /// first session that does (its `notifications/resources/updated` then go
    /// to every session subscribed).
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.watch(&request.uri, &context).await
    }

    /// The server hears it only when no other session is still subscribed.
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let principal = principal_noted(&self.session, &context)?;
        self.unwatch_as(&request.uri, principal, &context.ct).await
    }

    /// `subscriptions/listen` (2026-07-28): the list changes and the updates
    /// of the resources named, each on the stream of the request that asked
    /// for them.
    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        // rmcp keeps what was asked for and what `get_info` declares.
        let mut accepted = SubscriptionFilter::builder()
            .tools_list_changed()
            .prompts_list_changed()
            .resources_list_changed()
            .build();
        // The URIs some server offers; the others are left out of the ack.
        let tools = self.runtime.tools();
        accepted.resource_subscriptions = requested
            .resource_subscriptions
            .as_ref()
            .map(|uris| -> Vec<String> {
                uris.iter()
                    .filter(|uri| tools.route_uri(uri).is_some())
                    .take(crate::core::session::MAX_SUBSCRIPTIONS)
                    .cloned()
                    .collect()
            })
            .filter(|uris| !uris.is_empty());
        Some(accepted)
    }

    /// Until the client goes away (its stream closes, which cancels the
    /// request) or warden drains: then the final result tells it the
    /// subscription ended, and it listens again elsewhere.
    async fn listen(&self, subscription: SubscriptionContext) -> Result<(), McpError> {
        let mut notices = self.runtime.notices();
        // A 2026-07-28 request names its version: the session is stateless,
        // which the drain waits on until the final result is out.
        if let Some(v) = subscription.request_context().protocol_version() {
            self.session.set_protocol(v.as_str());
        }
        let sink = subscription.sink().clone();
        tracing::debug!(actor = names::TRANSPORT, session = self.session.id, accepted = ?sink.accepted(), "subscription opened");
        let principal = principal_noted(&self.session, subscription.request_context())?;
        // The resources named are this session's subscriptions while it listens.
        let uris = sink
            .accepted()
            .resource_subscriptions
            .clone()
            .unwrap_or_default();
        for uri in &uris {
            if let Err(e) = self.watch(uri, subscription.request_context()).await {
                tracing::info!(actor = names::TRANSPORT, session = self.session.id, %uri, error = %e.message, "a resource of the subscription cannot be watched");
            }
        }
        let ended = self
            .listen_until_ended(&mut notices, &sink, &subscription)
            .await;
        // The request is over (its token cancelled): the server is told on a
        // token of its own, bounded by the server's deadline.
        for uri in &uris {
            let _ = self
                .unwatch_as(uri, principal.clone(), &Default::default())
                .await;
        }
        ended
    }

    /// Over HTTP, list changes and log messages reach a session once its
    /// client is initialized (on stdio, `stdio::serve` forwards them).
    async fn on_initialized(&self, context: rmcp::service::NotificationContext<RoleServer>) {
        let Some(http) = &self.http else { return };
        let Some(notices) = http
            .notices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let task = tokio::spawn(forward_notices(notices, context.peer, self.session.clone()));
        *http.forwarder.lock().unwrap_or_else(|p| p.into_inner()) = Some(task.abort_handle());
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        tracing::info!(actor = names::TRANSPORT, session = self.session.id, level = ?request.level, "client set the log level");
        if let Some(level) = log_level(request.level) {
            self.session.set_level(level);
        }
        Ok(())
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let started = Instant::now();
        if let Some(v) = context.protocol_version() {
            self.session.set_protocol(v.as_str());
        }
        let request_id = context.id.to_string();
        let tool = request.name.to_string();
        let progress = context
            .meta
            .get_progress_token()
            .map(|token| ProgressSink::new(context.peer.clone(), token));
        let principal = principal_noted(&self.session, &context)?;
        let report = progress.as_ref().map(|p| p.report.clone());
        // A 2026-07-28 client is not asked during a call: a call to an MCP
        // server (the only tools that ask) goes through the bridge.
        let round = if self.session.is_stateless()
            && (request.request_state.is_some() || self.runtime.tools().asks(&tool))
        {
            self.bridged(request, &context, principal.clone(), report)
                .await?
        } else {
            let ctx = CallCtx {
                session: &self.session,
                principal: principal.as_deref(),
                cancel: &context.ct,
                progress: report,
                asker: (!self.session.is_stateless()).then(|| {
                    Arc::new(ClientAsker {
                        peer: context.peer.clone(),
                    }) as Arc<dyn Asker>
                }),
            };
            Round::Done(self.runtime.call(&ctx, &tool, request.arguments).await)
        };
        if let Some(progress) = progress {
            progress.finish().await;
        }
        // Whole microseconds: `0.124`, not `0.12375299999999999`.
        let duration_ms = started.elapsed().as_micros() as f64 / 1000.0;
        let session = self.session.id;
        // The principal's name, never its token.
        let principal = principal.as_ref().map(|p| p.name.as_str());
        let outcome = match round {
            Round::Done(outcome) => outcome,
            Round::Asked(question) => {
                tracing::info!(actor = names::TRANSPORT, %request_id, %tool, outcome = "input_required", duration_ms, session, principal, "call");
                return Ok(question.into());
            }
        };
        match outcome {
            Err(CallError::UnknownTool(name)) => {
                tracing::warn!(actor = names::TRANSPORT, %request_id, tool = %name, outcome = "unknown_tool", duration_ms, session, principal, "call");
                Err(McpError::invalid_params(
                    format!("unknown tool `{name}`; tools/list shows the tools"),
                    Some(json!({"field": "name", "value": name})),
                ))
            }
            // Past the HTTP layer's 403 only in a batch: refused alike, as
            // a protocol error, since nothing ran.
            Err(e @ CallError::Forbidden { .. }) => {
                tracing::warn!(actor = names::TRANSPORT, %request_id, %tool, outcome = "forbidden", duration_ms, session, principal, "call");
                Err(McpError::invalid_params(
                    e.to_string(),
                    Some(json!({"field": "name", "value": tool})),
                ))
            }
            Ok(result) => {
                match &result {
                    Ok(_) => {
                        tracing::info!(actor = names::TRANSPORT, %request_id, %tool, outcome = "ok", duration_ms, session, principal, "call")
                    }
                    Err(e) => {
                        tracing::warn!(actor = names::TRANSPORT, %request_id, %tool, outcome = %e.kind, duration_ms, error = %e.message, session, principal, "call")
                    }
                }
                Ok(to_mcp(result).into())
            }
        }
    }
}

/// Over HTTP with `[auth]`: the principal the request's token names.
fn principal_of(context: &RequestContext<RoleServer>) -> Option<Arc<Principal>> {
    context
        .extensions
        .get::<axum::http::request::Parts>()?
        .extensions
        .get::<Arc<Principal>>()
        .cloned()
}

/// The request's principal, noted on its session (for `status`): a session
/// belongs to the principal of its first request, and a request of another
/// one (a valid token, but not the session's) is refused.
fn principal_noted(
    session: &Session,
    context: &RequestContext<RoleServer>,
) -> Result<Option<Arc<Principal>>, McpError> {
    let p = principal_of(context);
    if let Some(p) = &p {
        session.set_principal(&p.name);
        if session.principal().is_some_and(|owner| owner != p.name) {
            tracing::warn!(actor = names::TRANSPORT, session = session.id, principal = %p.name, "refused a request on another principal's session");
            return Err(McpError::invalid_request(
                "this session belongs to another principal; open a session of your own",
                None,
            ));
        }
    }
    Ok(p)
}

/// Whether what needs `scopes` is for the request's principal (always, without one).
fn allowed(principal: &Option<Arc<Principal>>, scopes: &[String]) -> bool {
    principal.as_ref().is_none_or(|p| p.may(scopes))
}

/// The severity of an MCP log level.
#[allow(deprecated)]
fn log_level(level: LoggingLevel) -> Option<LogLevel> {
    serde_json::to_value(level)
        .ok()
        .and_then(|v| v.as_str().and_then(LogLevel::parse))
}

/// A refusal or failure of a forwarded request, as a JSON-RPC error.
fn forward_error(e: &ToolError) -> McpError {
    McpError::internal_error(e.text(), Some(e.to_json()))
}

fn unexpected_answer(entry: &ToolEntry, method: &str) -> McpError {
    forward_error(&ToolError::internal(format!(
        "MCP server `{}` answered {method} with another kind of result",
        entry.spec.name
    )))
}

/// Tells the session's client (on 2025-11-25 or older) what changed and
/// what MCP servers logged, in order, by one task; stops when the client is gone. A client that falls
/// behind loses the oldest notices (counted in the log), never an answer.
#[allow(deprecated)]
pub async fn forward_notices(
    mut notices: broadcast::Receiver<Notice>,
    peer: Peer<RoleServer>,
    session: Arc<Session>,
) {
    loop {
        let notice = match notices.recv().await {
            Ok(n) => n,
            Err(broadcast::error::RecvError::Lagged(dropped)) => {
                tracing::warn!(
                    actor = names::TRANSPORT,
                    session = session.id,
                    dropped,
                    "notices dropped: the client read them too slowly"
                );
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        // A 2026-07-28 client hears list changes on the `subscriptions/listen`
        // streams it opens, and nothing outside a request.
        if session.is_stateless() {
            continue;
        }
        let sent = match notice {
            Notice::ToolsChanged => peer.notify_tool_list_changed().await.is_ok(),
            Notice::PromptsChanged => peer.notify_prompt_list_changed().await.is_ok(),
            Notice::ResourcesChanged => peer.notify_resource_list_changed().await.is_ok(),
            Notice::ResourceUpdated { uri } => {
                if !session.subscribed(&uri) {
                    continue;
                }
                peer.notify_resource_updated(ResourceUpdatedNotificationParam::new(uri))
                    .await
                    .is_ok()
            }
            Notice::Log {
                level,
                logger,
                data,
            } => {
                if !session.wants(level) {
                    continue;
                }
                let level: LoggingLevel =
                    serde_json::from_value(json!(level.name())).unwrap_or(LoggingLevel::Info);
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

/// How long telling a server that a session which ended is no longer
/// subscribed may take.
const RELEASE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// `resources/unsubscribe` for a server (warden's servers speak the
/// protocols before 2026-07-28, where it is not deprecated).
#[allow(deprecated)]
fn unsubscribe_request(uri: &str) -> ClientRequest {
    ClientRequest::UnsubscribeRequest(UnsubscribeRequest::new(UnsubscribeRequestParams::new(uri)))
}

/// A session ended without unsubscribing: each server whose resource no
/// other open session is subscribed to is told so, in the background. It
/// goes to the server's link directly: the session is gone, and there is
/// no caller to answer.
fn release_subscriptions(runtime: &Arc<Runtime>, session: &Session) {
    let uris = session.subscriptions();
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if uris.is_empty() {
        return;
    }
    let (runtime, id) = (runtime.clone(), session.id);
    handle.spawn(async move {
        for uri in uris {
            if runtime.subscribed_elsewhere(&uri, id) {
                continue;
            }
            let Some(entry) = runtime.tools().route_uri(&uri).cloned() else {
                continue;
            };
            let (_, Some(backend)) = entry.life() else {
                continue;
            };
            let request = Payload::new(unsubscribe_request(&uri));
            let cancel = tokio_util::sync::CancellationToken::new();
            let _ = tokio::time::timeout(RELEASE_DEADLINE, backend.forward(request, cancel)).await;
        }
    });
}

/// The client of one call (on 2025-11-25 or older), for a server's
/// requests during it.
struct ClientAsker {
    peer: Peer<RoleServer>,
}

impl Asker for ClientAsker {
    fn ask(&self, request: Payload) -> crate::core::call::BoxFuture<'static, Payload> {
        let peer = self.peer.clone();
        Box::pin(async move {
            let not_here = |why: String| McpError::new(ErrorCode::METHOD_NOT_FOUND, why, None);
            let answer: Result<ClientResult, McpError> = match request.downcast::<ServerRequest>() {
                Err(_) => Err(McpError::internal_error("a request that is not MCP", None)),
                Ok(request) => {
                    let caps = peer.peer_info().map(|i| i.capabilities.clone());
                    let (what, declared) = match &request {
                        ServerRequest::CreateMessageRequest(_) => (
                            "sampling",
                            caps.as_ref().is_some_and(|c| c.sampling.is_some()),
                        ),
                        ServerRequest::ElicitRequest(_) => (
                            "elicitation",
                            caps.as_ref().is_some_and(|c| c.elicitation.is_some()),
                        ),
                        ServerRequest::ListRootsRequest(_) => {
                            ("roots", caps.as_ref().is_some_and(|c| c.roots.is_some()))
                        }
                        _ => ("this request", false),
                    };
                    if declared {
                        peer.send_request(request).await.map_err(|e| match e {
                            rmcp::service::ServiceError::McpError(e) => e,
                            other => McpError::internal_error(
                                format!("the client did not answer: {other}"),
                                None,
                            ),
                        })
                    } else {
                        Err(not_here(format!("the client does not support {what}")))
                    }
                }
            };
            Payload::new(answer)
        })
    }
}

/// A tool's answer as MCP sees it.
fn to_mcp(result: ToolResult) -> CallToolResult {
    match result {
        Ok(ToolOutput {
            passthrough: Some(result),
            ..
        }) => match result.downcast::<CallToolResult>() {
            Ok(mut r) => {
                r.result_type.get_or_insert(ResultType::COMPLETE);
                r
            }
            Err(_) => error_result(&ToolError::internal(
                "a server's tool result that is not MCP",
            )),
        },
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
    fn new(peer: Peer<RoleServer>, token: rmcp::model::ProgressToken) -> Self {
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
