//! MCP servers as supervised tool actors: the gateway (`kind = "mcp"`).
//!
//! A `server:<name>` actor launches one downstream MCP server over stdio, in
//! its own process group that dies with warden, and speaks to it as an rmcp
//! client. Its tools and prompts are re-exported as `<prefix>_<name>`, its
//! resources under their own URIs; when the server says a list changed (or it
//! comes back from a restart with other tools) warden lists again and tells
//! its own client. Calls go straight from the caller's task to the live
//! [`Link`] (the rmcp client's own task is the connection's mailbox); the
//! tool's `concurrency` and `queue` bound them in `Runtime::forward`.
//!
//! The actor ends when its child does (crash, exit, kill, or a wedge found by
//! two missed pings): every call in flight on the link is answered at once,
//! saying how the server ended, and the tools supervisor restarts the server
//! under its restart budget and backoff, as its `restart` type allows.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
#[allow(deprecated)]
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, ClientCapabilities, ClientConfig, ClientRequest,
    GetExtensions, GetPromptRequestParams, GetPromptResponse, Implementation,
    LoggingMessageNotificationParam, PingRequest, ProgressNotificationParam, ProgressToken, Prompt,
    ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse, Resource, ResourceTemplate,
    ServerResult, Tool,
};
use rmcp::service::{
    NotificationContext, Peer, PeerRequestOptions, RoleClient, RunningService, ServiceError,
};
use rmcp::{ClientHandler, ServiceExt};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{McpSpec, Rate, RateLimit};
use crate::core::error::{ErrorKind, ToolError};
use crate::core::ratelimit::TokenBucket;
use crate::core::runtime::{Notice, Runtime};
use crate::exec::{self, Exit, GroupGuard};
use crate::mcp::wire::{ChildTransport, WithoutProgress};
use crate::supervise::tool::{Progress, ProgressFn, ToolOutput, ToolResult};
use crate::supervise::tools::{Handle, ToolEntry, ToolState};

/// Lines of a server's stderr logged per second, after a burst of
/// [`STDERR_BURST`]; the rest are counted and dropped, so a flood cannot
/// fill the disk or hold the runtime.
const STDERR_LINES_PER_SECOND: f64 = 50.0;
const STDERR_BURST: u32 = 200;
/// A longer stderr line is cut to this many bytes in the log.
const STDERR_LINE_MAX: usize = 2048;
/// Pings missed in a row before a server counts as wedged and is restarted.
const MISSED_PINGS_WEDGED: u32 = 2;
/// How long a call whose connection closed waits for the child's exit
/// status, so its answer can say how the server ended.
const EXIT_STATUS_WAIT: Duration = Duration::from_millis(500);
/// How long a server stopped by warden gets to exit on its own after its
/// stdin is closed, before its group is killed.
const STOP_GRACE: Duration = Duration::from_millis(1000);
/// How long sending a cancellation downstream may take before it is given up.
const CANCEL_SEND_DEADLINE: Duration = Duration::from_millis(200);

/// The registered name of an MCP server's actor.
pub fn actor_name(server: &str) -> String {
    format!("server:{server}")
}

/// What a server offers, as warden's client sees it: names prefixed.
#[derive(Default)]
pub struct Catalog {
    /// Exported tools, in the server's order, with their downstream names.
    pub tools: Vec<(Tool, Arc<str>)>,
    pub prompts: Vec<(Prompt, String)>,
    /// Resources keep their URIs (content refers to them); names are prefixed.
    pub resources: Vec<Resource>,
    pub templates: Vec<ResourceTemplate>,
    /// Names that could not be exported, with why.
    pub skipped: Vec<String>,
}

impl Catalog {
    fn build(
        prefix: &str,
        tools: Vec<Tool>,
        prompts: Vec<Prompt>,
        resources: Vec<Resource>,
        templates: Vec<ResourceTemplate>,
    ) -> Catalog {
        let mut c = Catalog::default();
        for mut t in tools {
            let exported = format!("{prefix}_{}", t.name);
            if !crate::config::valid_tool_name(&exported) {
                c.skipped.push(format!(
                    "tool `{}`: `{exported}` does not match ^[a-zA-Z0-9_-]{{1,64}}$",
                    t.name
                ));
                continue;
            }
            let downstream: Arc<str> = Arc::from(t.name.as_ref());
            t.name = exported.into();
            c.tools.push((t, downstream));
        }
        for mut p in prompts {
            let downstream = std::mem::take(&mut p.name);
            p.name = format!("{prefix}_{downstream}");
            c.prompts.push((p, downstream));
        }
        for mut r in resources {
            r.name = format!("{prefix}_{}", r.name);
            c.resources.push(r);
        }
        for mut t in templates {
            t.name = format!("{prefix}_{}", t.name);
            c.templates.push(t);
        }
        c
    }

    /// The downstream name of an exported tool.
    pub fn tool(&self, exported: &str) -> Option<&Arc<str>> {
        self.tools
            .iter()
            .find(|(t, _)| t.name == exported)
            .map(|(_, d)| d)
    }

    pub fn prompt(&self, exported: &str) -> Option<&str> {
        self.prompts
            .iter()
            .find(|(p, _)| p.name == exported)
            .map(|(_, d)| d.as_str())
    }

    /// Whether a `resources/read` of this URI belongs to this server: a listed
    /// resource, or a URI a template of it could produce (its text before the
    /// first `{`).
    pub fn serves_uri(&self, uri: &str) -> bool {
        self.resources.iter().any(|r| r.uri == uri)
            || self.templates.iter().any(|t| {
                let head = t.uri_template.split('{').next().unwrap_or("");
                !head.is_empty() && uri.starts_with(head)
            })
    }

    /// Which of the three lists differ from `other`'s.
    fn changes(&self, other: &Catalog) -> [bool; 3] {
        let names = |c: &Catalog| -> Vec<Value> {
            c.tools
                .iter()
                .map(|(t, _)| serde_json::to_value(t).unwrap_or_default())
                .collect()
        };
        let prompts = |c: &Catalog| -> Vec<Value> {
            c.prompts
                .iter()
                .map(|(p, _)| serde_json::to_value(p).unwrap_or_default())
                .collect()
        };
        let resources = |c: &Catalog| -> (Value, Value) {
            (
                serde_json::to_value(&c.resources).unwrap_or_default(),
                serde_json::to_value(&c.templates).unwrap_or_default(),
            )
        };
        [
            names(self) != names(other),
            prompts(self) != prompts(other),
            resources(self) != resources(other),
        ]
    }

    /// Counts for `status`.
    pub fn summary(&self) -> Value {
        json!({
            "tools": self.tools.len(),
            "prompts": self.prompts.len(),
            "resources": self.resources.len(),
            "resource_templates": self.templates.len(),
            "skipped": self.skipped,
        })
    }
}

/// Progress tokens warden put on its downstream requests, mapped back to the
/// callers' progress sinks (which carry the callers' own tokens).
type ProgressRoutes = Arc<Mutex<HashMap<ProgressToken, ProgressFn>>>;

/// Removes a progress route when the call ends, however it ends.
struct Route<'a>(&'a ProgressRoutes, Option<ProgressToken>);

impl Drop for Route<'_> {
    fn drop(&mut self) {
        if let Some(token) = self.1.take() {
            self.0.lock().unwrap().remove(&token);
        }
    }
}

/// The live connection to a running server: what calls are sent through.
pub struct Link {
    server: String,
    peer: Peer<RoleClient>,
    progress: ProgressRoutes,
    pid: i32,
    /// How the child ended, once it has (set before the calls learn of it).
    ended: watch::Receiver<Option<String>>,
    cell: ActorCell,
    started: Instant,
    info: Value,
    missed_pings: AtomicU32,
    last_ping_us: AtomicU64,
}

impl Link {
    /// The server's actor (for killing it).
    pub fn cell(&self) -> &ActorCell {
        &self.cell
    }

    /// The child's line in `status`.
    pub fn status(&self) -> Value {
        json!({
            "pid": self.pid,
            "up_s": self.started.elapsed().as_secs(),
            "server": self.info,
            "missed_pings": self.missed_pings.load(Ordering::Relaxed),
            "last_ping_ms": self.last_ping_us.load(Ordering::Relaxed) as f64 / 1e3,
        })
    }

    /// Forwards one `tools/call` and waits for its result; cancellation and
    /// the timeout are forwarded downstream with the request id warden used.
    pub async fn call_tool(
        &self,
        tool: &str,
        args: Map<String, Value>,
        cancel: &CancellationToken,
        progress: Option<ProgressFn>,
        timeout: Duration,
    ) -> ToolResult {
        let params = CallToolRequestParams::new(tool.to_string()).with_arguments(args);
        let mut request = CallToolRequest::new(params);
        if progress.is_none() {
            request.extensions_mut().insert(WithoutProgress);
        }
        let request = ClientRequest::CallToolRequest(request);
        let mut handle = match self
            .peer
            .send_request_with_option(request, PeerRequestOptions::no_options())
            .await
        {
            Ok(h) => h,
            Err(_) => return Err(self.gone().await),
        };
        let _route = Route(
            &self.progress,
            progress.map(|sink| {
                let token = handle.progress_token.clone();
                self.progress.lock().unwrap().insert(token.clone(), sink);
                token
            }),
        );
        let answer = tokio::select! {
            answer = &mut handle.rx => answer,
            _ = cancel.cancelled() => {
                let _ = tokio::time::timeout(CANCEL_SEND_DEADLINE, handle.cancel(Some("cancelled by warden's client".into()))).await;
                return Err(ToolError::cancelled(format!(
                    "The call was cancelled; `{}` was told to stop it.",
                    self.server
                )));
            }
            _ = tokio::time::sleep(timeout) => {
                let _ = tokio::time::timeout(CANCEL_SEND_DEADLINE, handle.cancel(Some("timeout".into()))).await;
                return Err(ToolError::new(
                    ErrorKind::Timeout,
                    format!("MCP server `{}` did not answer `{tool}` within {}; the call was cancelled downstream.", self.server, humantime::format_duration(timeout)),
                    "Retry with a narrower request, or ask the operator to raise this tool's timeout.",
                ).detail("timeout_ms", timeout.as_millis() as u64));
            }
        };
        match answer {
            Ok(Ok(ServerResult::CallToolResult(result))) => Ok(ToolOutput::downstream(result)),
            Ok(Ok(_)) => Err(ToolError::new(
                ErrorKind::ExecutionFailed,
                format!("MCP server `{}` answered `{tool}` with something other than a tool result (a task or an input request, which warden does not relay).", self.server),
                "Use the server directly for this tool, or ask its author for a plain result.",
            )),
            Ok(Err(e)) => Err(self.failed(e, &format!("`{tool}`")).await),
            Err(_) => Err(self.gone().await),
        }
    }

    /// Forwards `prompts/get` under a deadline.
    pub async fn get_prompt(
        &self,
        params: GetPromptRequestParams,
        deadline: Duration,
    ) -> Result<GetPromptResponse, ToolError> {
        self.within(
            deadline,
            "the prompt request",
            self.peer.get_prompt_once(params),
        )
        .await
    }

    /// Forwards `resources/read` under a deadline.
    pub async fn read_resource(
        &self,
        params: ReadResourceRequestParams,
        deadline: Duration,
    ) -> Result<ReadResourceResponse, ToolError> {
        self.within(
            deadline,
            "the resource request",
            self.peer.read_resource_once(params),
        )
        .await
    }

    /// A request's answer, or why there is none: a refusal, the server's end,
    /// or no answer within `deadline`.
    async fn within<T>(
        &self,
        deadline: Duration,
        what: &str,
        request: impl std::future::Future<Output = Result<T, ServiceError>>,
    ) -> Result<T, ToolError> {
        match tokio::time::timeout(deadline, request).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(self.failed(e, what).await),
            Err(_) => Err(ToolError::new(
                ErrorKind::Timeout,
                format!(
                    "MCP server `{}` did not answer {what} within {}.",
                    self.server,
                    humantime::format_duration(deadline)
                ),
                "Retry later; `warden status` shows the server.",
            )),
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
                ToolError::new(
                    kind,
                    format!("MCP server `{}` refused {what}: {}", self.server, e.message),
                    "Check the arguments against the server's schema (tools/list shows it); the message says what it objected to.",
                )
                .detail("code", e.code.0)
                .detail("data", e.data.unwrap_or(Value::Null))
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

/// warden as the client of one downstream server.
#[derive(Clone)]
pub struct Downstream {
    server: String,
    prefix: String,
    progress: ProgressRoutes,
    actor: ActorRef<ServerMsg>,
    runtime: Arc<Runtime>,
}

#[allow(deprecated)]
impl ClientHandler for Downstream {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("warden", env!("CARGO_PKG_VERSION")),
        )
        .with_protocol_version(ProtocolVersion::V_2025_11_25)
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let sink = self
            .progress
            .lock()
            .unwrap()
            .get(&params.progress_token)
            .cloned();
        if let Some(sink) = sink {
            sink(Progress {
                progress: params.progress,
                total: params.total,
                message: params.message,
            });
        }
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let level = serde_json::to_value(params.level)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "info".into());
        let logger = match &params.logger {
            Some(l) => format!("{}/{l}", self.prefix),
            None => self.prefix.clone(),
        };
        tracing::info!(actor = %actor_name(&self.server), %level, %logger, data = %params.data, "server log message");
        self.runtime.notify(Notice::Log {
            level,
            logger,
            data: params.data,
        });
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
}

/// The actor that owns one downstream server process.
pub struct ServerActor;

pub enum ServerMsg {
    /// The handshake and the first listing are done.
    Started(Box<(RunningService<RoleClient, Downstream>, Catalog)>),
    /// The server did not finish starting; why.
    StartFailed(String),
    /// The child process ended: how, and whether it was a clean exit (status 0).
    Exited(String, bool),
    /// The server said one of its lists changed: list again.
    Refresh,
    /// Pings went unanswered: the server is wedged.
    Wedged(String),
}

pub struct ServerArgs {
    pub entry: Arc<ToolEntry>,
    pub runtime: Arc<Runtime>,
    pub program: PathBuf,
}

pub struct ServerState {
    entry: Arc<ToolEntry>,
    runtime: Arc<Runtime>,
    pid: i32,
    /// Set once started (the link itself lives in the tool's entry).
    service: Option<RunningService<RoleClient, Downstream>>,
    progress: ProgressRoutes,
    ended: watch::Receiver<Option<String>>,
    /// How the child ended, once the exit watcher said so.
    exit: Option<(String, bool)>,
    started: Instant,
    /// Kills the child's whole group when the actor ends, however it ends.
    group: GroupGuard,
    /// The stderr reader, the exit watcher, the starter and the pinger.
    tasks: AbortOnDrop,
}

/// Tasks that must not outlive the actor (a killed actor skips `post_stop`).
struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl Actor for ServerActor {
    type Msg = ServerMsg;
    type State = ServerState;
    type Arguments = ServerArgs;

    /// Launches the child and returns at once; the handshake runs in a task
    /// (under `start_timeout`), so a slow or broken server delays nothing else.
    async fn pre_start(
        &self,
        myself: ActorRef<ServerMsg>,
        ServerArgs {
            entry,
            runtime,
            program,
        }: ServerArgs,
    ) -> Result<ServerState, ActorProcessingErr> {
        let spec = entry.spec.mcp().ok_or("not an mcp server")?.clone();
        let name = entry.spec.name.clone();
        let me = actor_name(&name);

        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(&spec.args)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&spec.cwd)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        exec::isolate(&mut cmd, spec.limits.clone());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start `{}`: {e}", exec::program_name(&spec.program)))?;
        let pid = child.id().map_or(0, |p| p as i32);
        let group = runtime.groups.register(pid, &name);
        let (stdin, stdout, stderr) = (
            child.stdin.take().ok_or("no stdin pipe")?,
            child.stdout.take().ok_or("no stdout pipe")?,
            child.stderr.take().ok_or("no stderr pipe")?,
        );
        let stderr_task = tokio::spawn(log_stderr(stderr, me.clone(), redactor(&spec)));
        let (ended_tx, ended) = watch::channel(None);
        let watcher = {
            let myself = myself.clone();
            let groups = runtime.groups.clone();
            tokio::spawn(async move {
                let status = child.wait().await;
                let (how, clean) = describe_exit(status, groups.kill_reason(pid));
                let _ = ended_tx.send(Some(how.clone()));
                let _ = myself.cast(ServerMsg::Exited(how, clean));
            })
        };
        tracing::info!(actor = %me, pid, program = %spec.program, "MCP server launched");

        let progress: ProgressRoutes = Arc::default();
        let handler = Downstream {
            server: name.clone(),
            prefix: spec.prefix.clone(),
            progress: progress.clone(),
            actor: myself.clone(),
            runtime: runtime.clone(),
        };
        let starter = {
            let myself = myself.clone();
            let prefix = spec.prefix.clone();
            let start_timeout = spec.start_timeout;
            let max_line = runtime.config.server.max_line.0 as usize;
            tokio::spawn(async move {
                let start = async {
                    let stdout = tokio::io::BufReader::with_capacity(64 * 1024, stdout);
                    let service = handler
                        .serve(ChildTransport::new(stdout, stdin, max_line))
                        .await
                        .map_err(|e| format!("the MCP handshake failed: {e}"))?;
                    let catalog = list_everything(service.peer(), &prefix).await?;
                    Ok::<_, String>((service, catalog))
                };
                let msg = match tokio::time::timeout(start_timeout, start).await {
                    Ok(Ok(started)) => ServerMsg::Started(Box::new(started)),
                    Ok(Err(why)) => ServerMsg::StartFailed(why),
                    Err(_) => ServerMsg::StartFailed(format!(
                        "it did not finish starting (initialize and listing) within {}",
                        humantime::format_duration(start_timeout)
                    )),
                };
                let _ = myself.cast(msg);
            })
        };
        Ok(ServerState {
            entry,
            runtime,
            pid,
            service: None,
            progress,
            ended,
            exit: None,
            started: Instant::now(),
            group,
            tasks: AbortOnDrop(vec![
                stderr_task.abort_handle(),
                watcher.abort_handle(),
                starter.abort_handle(),
            ]),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ServerMsg>,
        msg: ServerMsg,
        state: &mut ServerState,
    ) -> Result<(), ActorProcessingErr> {
        let me = actor_name(&state.entry.spec.name);
        match msg {
            ServerMsg::Started(started) => {
                if let Some((how, clean)) = state.exit.clone() {
                    // It ended between its handshake and now.
                    state.ended_after_start(&myself, how, clean);
                    return Ok(());
                }
                let (service, catalog) = *started;
                state.ready(&myself, service, catalog);
            }
            ServerMsg::StartFailed(why) => {
                // Ended while starting: say how, not just that the pipe closed.
                let how = tokio::time::timeout(EXIT_STATUS_WAIT, wait_ended(state.ended.clone()))
                    .await
                    .ok()
                    .and_then(|_| state.ended.borrow().clone());
                let why = match how {
                    Some(how) => format!("{why} (it {how})"),
                    None => why,
                };
                tracing::error!(actor = %me, pid = state.pid, reason = %why, "MCP server failed to start");
                state.entry.set_last_error(format!("start failed: {why}"));
                myself.stop(Some(why));
            }
            ServerMsg::Exited(how, clean) => {
                state.exit = Some((how.clone(), clean));
                // Still starting: the starter's report comes next and says it.
                if state.service.is_some() {
                    state.ended_after_start(&myself, how, clean);
                }
            }
            ServerMsg::Wedged(why) => {
                tracing::error!(actor = %me, reason = %why, "MCP server is wedged; restarting it");
                if !state.runtime.groups.kill_because(state.pid, why.clone()) {
                    myself.stop(Some(why));
                }
            }
            ServerMsg::Refresh => {
                let (Some(service), Some(spec)) = (&state.service, state.entry.spec.mcp()) else {
                    return Ok(());
                };
                let listed = tokio::time::timeout(
                    spec.ping_timeout.max(Duration::from_secs(5)),
                    list_everything(service.peer(), &spec.prefix),
                )
                .await;
                match listed {
                    Ok(Ok(catalog)) => publish(&state.entry, &state.runtime, catalog),
                    Ok(Err(e)) => {
                        tracing::warn!(actor = %me, error = %e, "listing the server's tools again failed")
                    }
                    Err(_) => {
                        tracing::warn!(actor = %me, "listing the server's tools again timed out")
                    }
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ServerMsg>,
        state: &mut ServerState,
    ) -> Result<(), ActorProcessingErr> {
        // As the MCP spec asks of a client: close the server's stdin and give
        // it a moment to exit on its own; then its whole group is killed.
        // Calls still waiting on the link are answered at once either way.
        if let Some(service) = &state.service {
            service.cancellation_token().cancel();
            if state.exit.is_none() {
                let _ = tokio::time::timeout(STOP_GRACE, wait_ended(state.ended.clone())).await;
            }
        }
        state.group.kill();
        Ok(())
    }
}

impl ServerState {
    fn ended_after_start(&self, myself: &ActorRef<ServerMsg>, how: String, clean: bool) {
        let me = actor_name(&self.entry.spec.name);
        if clean {
            tracing::info!(actor = %me, reason = %how, "MCP server exited");
        } else {
            tracing::error!(actor = %me, reason = %how, "MCP server ended");
        }
        self.entry.set_last_error(format!("server {how}"));
        self.entry.set_clean_exit(clean);
        myself.stop(Some(how));
    }

    /// The handshake is done: publish the catalog, open the link to calls, start pinging.
    fn ready(
        &mut self,
        myself: &ActorRef<ServerMsg>,
        service: RunningService<RoleClient, Downstream>,
        catalog: Catalog,
    ) {
        let Some(spec) = self.entry.spec.mcp() else {
            return;
        };
        let peer = service.peer().clone();
        let info = match peer.peer_info() {
            Some(i) => json!({
                "name": i.server_info.as_ref().map(|s| s.name.clone()),
                "version": i.server_info.as_ref().map(|s| s.version.clone()),
                "protocol_version": i.protocol_version.to_string(),
            }),
            None => Value::Null,
        };
        let link = Arc::new(Link {
            server: self.entry.spec.name.clone(),
            peer,
            progress: self.progress.clone(),
            pid: self.pid,
            ended: self.ended.clone(),
            cell: myself.get_cell(),
            started: self.started,
            info,
            missed_pings: AtomicU32::new(0),
            last_ping_us: AtomicU64::new(0),
        });
        tracing::info!(
            actor = %actor_name(&self.entry.spec.name), pid = self.pid,
            tools = catalog.tools.len(), prompts = catalog.prompts.len(), resources = catalog.resources.len(),
            start_ms = self.started.elapsed().as_millis() as u64,
            "MCP server ready"
        );
        publish(&self.entry, &self.runtime, catalog);
        let pinger = tokio::spawn(ping(
            link.clone(),
            myself.clone(),
            spec.ping_every,
            spec.ping_timeout,
        ));
        self.tasks.0.push(pinger.abort_handle());
        self.entry
            .set(ToolState::Running, Some(Handle::Server(link)));
        self.service = Some(service);
    }
}

async fn wait_ended(mut ended: watch::Receiver<Option<String>>) {
    let _ = ended.wait_for(Option::is_some).await;
}

/// Stores a server's catalog in its entry and tells the client what changed.
fn publish(entry: &ToolEntry, runtime: &Runtime, catalog: Catalog) {
    let name = &entry.spec.name;
    for s in &catalog.skipped {
        tracing::warn!(actor = %actor_name(name), skipped = %s, "not exported");
    }
    let old = entry.catalog();
    let [tools, prompts, resources] = catalog.changes(&old);
    entry.set_catalog(catalog);
    if tools {
        runtime.notify(Notice::ToolsChanged);
    }
    if prompts {
        runtime.notify(Notice::PromptsChanged);
    }
    if resources {
        runtime.notify(Notice::ResourcesChanged);
    }
}

/// Lists the server's tools, and its prompts, resources and templates when
/// its capabilities say it has them.
async fn list_everything(peer: &Peer<RoleClient>, prefix: &str) -> Result<Catalog, String> {
    let caps = peer.peer_info().map(|i| i.capabilities.clone());
    let has = |f: fn(&rmcp::model::ServerCapabilities) -> bool| caps.as_ref().is_some_and(f);
    let tools = if has(|c| c.tools.is_some()) {
        peer.list_all_tools()
            .await
            .map_err(|e| format!("tools/list failed: {e}"))?
    } else {
        Vec::new()
    };
    let prompts = if has(|c| c.prompts.is_some()) {
        peer.list_all_prompts()
            .await
            .map_err(|e| format!("prompts/list failed: {e}"))?
    } else {
        Vec::new()
    };
    let (resources, templates) = if has(|c| c.resources.is_some()) {
        (
            peer.list_all_resources()
                .await
                .map_err(|e| format!("resources/list failed: {e}"))?,
            peer.list_all_resource_templates()
                .await
                .map_err(|e| format!("resources/templates/list failed: {e}"))?,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(Catalog::build(prefix, tools, prompts, resources, templates))
}

/// Pings every `every`; two misses in a row and the actor hears the server is wedged.
async fn ping(link: Arc<Link>, actor: ActorRef<ServerMsg>, every: Duration, timeout: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let sent = Instant::now();
        let request = ClientRequest::PingRequest(PingRequest::default());
        match tokio::time::timeout(timeout, link.peer.send_request(request)).await {
            Ok(Ok(_)) => {
                link.missed_pings.store(0, Ordering::Relaxed);
                link.last_ping_us
                    .store(sent.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            // The connection is gone; the exit watcher reports it.
            Ok(Err(ServiceError::TransportClosed)) => return,
            // An error answer is still an answer: the server is alive.
            Ok(Err(_)) => link.missed_pings.store(0, Ordering::Relaxed),
            Err(_) => {
                let missed = link.missed_pings.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(actor = %actor_name(&link.server), missed, timeout_ms = timeout.as_millis() as u64, "MCP server missed a ping");
                if missed >= MISSED_PINGS_WEDGED {
                    let _ = actor.cast(ServerMsg::Wedged(format!(
                        "it missed {missed} pings in a row ({} each), so it was restarted as wedged",
                        humantime::format_duration(timeout)
                    )));
                    return;
                }
            }
        }
    }
}

/// How the child ended, and whether that was a clean exit.
fn describe_exit(
    status: std::io::Result<std::process::ExitStatus>,
    killed_because: Option<String>,
) -> (String, bool) {
    if let Some(reason) = killed_because {
        return (format!("killed by warden: {reason}"), false);
    }
    match status {
        Ok(s) => (Exit::from(s).to_string(), s.success()),
        Err(e) => (format!("could not be waited for: {e}"), false),
    }
}

/// Blanks the values of secret-looking environment variables out of a line.
fn redactor(spec: &McpSpec) -> impl Fn(&str) -> String + Send + 'static {
    let secrets: Vec<String> = spec.secrets().into_iter().map(str::to_string).collect();
    move |line: &str| {
        let mut out = line.to_string();
        for s in &secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "[redacted]");
            }
        }
        out
    }
}

/// The server's stderr into warden's log, tagged with the server, rate
/// limited; lines are cut at [`STDERR_LINE_MAX`] and secrets blanked.
async fn log_stderr(
    stderr: impl AsyncRead + Unpin,
    actor: String,
    redact: impl Fn(&str) -> String,
) {
    let mut bucket = TokenBucket::new(
        RateLimit {
            rate: Rate {
                per_second: STDERR_LINES_PER_SECOND,
            },
            burst: STDERR_BURST,
        },
        Instant::now(),
    );
    let mut reader = tokio::io::BufReader::new(stderr);
    let mut line = Vec::new();
    let mut dropped: u64 = 0;
    // The count of dropped lines goes to the log once a second, flood or not.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        line.clear();
        // Bounded: a line without a newline is read in pieces, not buffered whole.
        let mut limited = (&mut reader).take(STDERR_LINE_MAX as u64);
        let read = limited.read_until(b'\n', &mut line);
        tokio::pin!(read);
        let n = loop {
            tokio::select! {
                n = &mut read => break n,
                _ = tick.tick() => {
                    if dropped > 0 {
                        tracing::warn!(actor = %actor, dropped, "server stderr lines dropped (over {STDERR_LINES_PER_SECOND}/s)");
                        dropped = 0;
                    }
                }
            }
        };
        match n {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if bucket.try_take(Instant::now()).is_err() {
            dropped += 1;
            continue;
        }
        let text = String::from_utf8_lossy(&line);
        let text = redact(text.trim_end());
        tracing::info!(actor = %actor, stderr = %text, "server stderr");
    }
    if dropped > 0 {
        tracing::warn!(actor = %actor, dropped, "server stderr lines dropped (over {STDERR_LINES_PER_SECOND}/s)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str) -> Tool {
        Tool::new(name.to_string(), "", Arc::new(Map::new()))
    }

    #[test]
    fn names_are_prefixed_and_the_invalid_ones_skipped() {
        let long = "x".repeat(62);
        let c = Catalog::build(
            "ev",
            vec![tool("echo"), tool(&long), tool("has space")],
            vec![],
            vec![],
            vec![],
        );
        let names: Vec<&str> = c.tools.iter().map(|(t, _)| t.name.as_ref()).collect();
        assert_eq!(names, ["ev_echo"]);
        assert_eq!(c.tool("ev_echo").map(|d| d.as_ref()), Some("echo"));
        assert_eq!(c.skipped.len(), 2, "{:?}", c.skipped);
        assert!(c.tool("echo").is_none());
    }

    #[test]
    fn changes_are_seen_per_list() {
        let a = Catalog::build("p", vec![tool("a")], vec![], vec![], vec![]);
        let b = Catalog::build("p", vec![tool("a"), tool("b")], vec![], vec![], vec![]);
        assert_eq!(a.changes(&b), [true, false, false]);
        assert_eq!(a.changes(&a), [false, false, false]);
    }

    #[test]
    fn exits_are_described_and_only_status_zero_is_clean() {
        use std::os::unix::process::ExitStatusExt;
        let ok = std::process::ExitStatus::from_raw(0);
        let code3 = std::process::ExitStatus::from_raw(3 << 8);
        let killed = std::process::ExitStatus::from_raw(9);
        assert_eq!(
            describe_exit(Ok(ok), None),
            ("exited with status 0".into(), true)
        );
        assert_eq!(describe_exit(Ok(code3), None).0, "exited with status 3");
        assert_eq!(describe_exit(Ok(killed), None).0, "was killed by signal 9");
        let (how, clean) = describe_exit(Ok(killed), Some("wedged".into()));
        assert_eq!((how.as_str(), clean), ("killed by warden: wedged", false));
    }
}
