//! `server:<name>`: the actor that owns one downstream MCP server process.
//!
//! It launches the server (own session, PDEATHSIG, its group registered),
//! logs its stderr (rate limited, secrets blanked), and runs the rmcp client
//! handshake and first listing in a task under `start_timeout`, so that
//! `pre_start` returns at once. Once started it publishes the catalog into
//! the tool's entry, registers the [`Link`] as the tool's backend and pings
//! the server. The actor stops when the child ends (exit watcher), a ping is
//! missed twice (it kills the group, saying why), or it is killed; the
//! tools supervisor decides on a restart by the server's `restart` type.
//!
//! **Architecture Invariant:** every call in flight on the link gets one
//! answer when the server ends; the server's process group never outlives
//! its actor.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use rmcp::model::{ClientRequest, PingRequest, ProtocolVersion};
use rmcp::service::{RoleClient, RunningService, ServiceError};
use rmcp::transport::streamable_http_client::{
    StreamableHttpClientTransport, StreamableHttpClientTransportConfig,
};
use rmcp::ServiceExt;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt};
use tokio::sync::watch;

use super::catalog::list_everything;
use super::link::{Askers, Downstream, Link, ProgressRoutes, EXIT_STATUS_WAIT};
use super::pipe::{ChildTransport, ProgressTap, Tapped};
use crate::config::{McpSpec, Rate, RateLimit};
use crate::core::catalog::Catalog;
use crate::core::ratelimit::TokenBucket;
use crate::core::registry::{ToolEntry, ToolState};
use crate::core::runtime::Runtime;
use crate::core::session::Notice;
use crate::exec::{self, Exit, GroupGuard};
use crate::mcp::fast::Calls;

/// Lines of a server's stderr (and, separately, log messages) logged per
/// second, after a burst of [`STDERR_BURST`]; the rest are counted and
/// dropped, so a flood cannot fill the disk or hold the runtime.
pub(super) const STDERR_LINES_PER_SECOND: f64 = 50.0;
const STDERR_BURST: u32 = 200;
/// A longer stderr line (or log message) is cut to this many bytes.
pub(super) const STDERR_LINE_MAX: usize = 2048;
/// Pings missed in a row before a server counts as wedged and is restarted.
const MISSED_PINGS_WEDGED: u32 = 2;
/// How long a server stopped by warden gets to exit on its own after its
/// stdin is closed, before its group is killed.
const STOP_GRACE: Duration = Duration::from_millis(1000);

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
    pub spec: McpSpec,
    pub runtime: Arc<Runtime>,
    pub program: PathBuf,
}

pub struct ServerState {
    entry: Arc<ToolEntry>,
    spec: McpSpec,
    runtime: Arc<Runtime>,
    pid: i32,
    /// Set once started (the link itself lives in the tool's entry).
    service: Option<RunningService<RoleClient, Downstream>>,
    progress: ProgressRoutes,
    /// The calls in flight, shared by the link and the client handler.
    askers: Askers,
    /// The fast lane for `tools/call` over the child's pipes (none for a
    /// remote server).
    lane: Option<Arc<Calls>>,
    ended: watch::Receiver<Option<String>>,
    /// How the child ended, once the exit watcher said so.
    exit: Option<(String, bool)>,
    started: Instant,
    /// Kills the child's whole group when the actor ends, however it ends
    /// (none for a remote server).
    group: Option<GroupGuard>,
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
            spec,
            runtime,
            program,
        }: ServerArgs,
    ) -> Result<ServerState, ActorProcessingErr> {
        if let Some(url) = spec.url.clone() {
            return Ok(reach(myself, entry, spec, runtime, url));
        }
        let name = entry.spec.name.clone();
        let me = entry.spec.actor_name();

        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(&spec.args)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&spec.cwd)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let (mut child, group) = runtime
            .groups
            .spawn(&name, &mut cmd, spec.limits.clone())
            .map_err(|e| format!("cannot start `{}`: {e}", exec::program_name(&spec.program)))?;
        let pid = child.id().map_or(0, |p| p as i32);
        let (stdin, stdout, stderr) = (
            child.stdin.take().ok_or("no stdin pipe")?,
            child.stdout.take().ok_or("no stdout pipe")?,
            child.stderr.take().ok_or("no stderr pipe")?,
        );
        // The server's secret env values, blanked out of all it says.
        let secrets: Arc<[String]> = spec.secrets().into();
        let stderr_task = tokio::spawn(log_stderr(stderr, me.clone(), secrets.clone()));
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
        tracing::info!(actor = %me, server_pid = pid, program = %spec.program, "MCP server launched");

        let ClientSide {
            progress,
            askers,
            tap,
            handler,
        } = client_side(me.clone(), &myself, &spec, &runtime, secrets);
        let max_line = runtime.config.server.max_line.0 as usize;
        let stdout = tokio::io::BufReader::with_capacity(64 * 1024, stdout);
        let mut transport = ChildTransport::new(stdout, stdin, max_line).with_progress(tap);
        let lane = transport.lane();
        let starter = {
            let (prefix, filter) = (spec.prefix.clone(), spec.exports.clone());
            start(myself.clone(), spec.start_timeout, async move {
                let service = handler
                    .serve(transport)
                    .await
                    .map_err(|e| format!("the MCP handshake failed: {e}"))?;
                let catalog = list_everything(service.peer(), &prefix, &filter)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((service, catalog))
            })
        };
        Ok(ServerState {
            entry,
            spec,
            runtime,
            pid,
            service: None,
            progress,
            askers,
            lane: Some(lane),
            ended,
            exit: None,
            started: Instant::now(),
            group: Some(group),
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
        let me = state.entry.spec.actor_name();
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
                // A process that ended while starting: say how, not just
                // that the pipe closed.
                let how = match state.group {
                    Some(_) => {
                        tokio::time::timeout(EXIT_STATUS_WAIT, wait_ended(state.ended.clone()))
                            .await
                            .ok()
                            .and_then(|_| state.ended.borrow().clone())
                    }
                    None => None,
                };
                let why = match how {
                    Some(how) => format!("{why} (it {how})"),
                    None => why,
                };
                tracing::error!(actor = %me, server_pid = state.pid, reason = %why, "MCP server failed to start");
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
                let killed = state.group.is_some()
                    && state.runtime.groups.kill_because(state.pid, why.clone());
                if !killed {
                    state.entry.set_last_error(why.clone());
                    myself.stop(Some(why));
                }
            }
            ServerMsg::Refresh => {
                let Some(service) = &state.service else {
                    return Ok(());
                };
                let spec = &state.spec;
                let listed = tokio::time::timeout(
                    spec.ping_timeout.max(Duration::from_secs(5)),
                    list_everything(service.peer(), &spec.prefix, &spec.exports),
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
            if state.exit.is_none() && state.group.is_some() {
                let _ = tokio::time::timeout(STOP_GRACE, wait_ended(state.ended.clone())).await;
            }
        }
        if let Some(group) = &state.group {
            group.kill();
        }
        Ok(())
    }
}

/// The client side of warden's link to a server: the routes of its calls'
/// progress, its calls in flight, the tap its transport hands progress
/// reports to, and the rmcp handler of what the server says and asks.
struct ClientSide {
    progress: ProgressRoutes,
    askers: Askers,
    tap: ProgressTap,
    handler: Downstream,
}

fn client_side(
    actor_name: String,
    myself: &ActorRef<ServerMsg>,
    spec: &McpSpec,
    runtime: &Arc<Runtime>,
    secrets: Arc<[String]>,
) -> ClientSide {
    let progress: ProgressRoutes = Arc::default();
    let askers = Askers::default();
    ClientSide {
        tap: ProgressTap {
            routes: progress.clone(),
            secrets: secrets.clone(),
        },
        handler: Downstream {
            actor_name,
            prefix: spec.prefix.clone(),
            progress: progress.clone(),
            actor: myself.clone(),
            runtime: runtime.clone(),
            log_limit: Arc::default(),
            secrets,
            askers: askers.clone(),
        },
        progress,
        askers,
    }
}

/// The handshake and first listing, in a task under `timeout`, reported to
/// the actor as `Started` or `StartFailed`.
fn start(
    myself: ActorRef<ServerMsg>,
    timeout: Duration,
    handshake: impl std::future::Future<
            Output = Result<(RunningService<RoleClient, Downstream>, Catalog), String>,
        > + Send
        + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let msg = match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(started)) => ServerMsg::Started(Box::new(started)),
            Ok(Err(why)) => ServerMsg::StartFailed(why),
            Err(_) => ServerMsg::StartFailed(format!(
                "it did not finish starting (initialize and listing) within {}",
                humantime::format_duration(timeout)
            )),
        };
        let _ = myself.cast(msg);
    })
}

/// How often a remote server's connection is looked at for having closed.
const CLOSED_POLL: Duration = Duration::from_millis(250);
/// How long connecting to a remote server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A remote server (`url`): no process, a Streamable HTTP connection, with
/// the actor's headers on every request. rmcp's client opens a fresh
/// session when the server answers 404 (it forgot ours); a connection that
/// closes, or pings that go unanswered, stop the actor, and the tools
/// supervisor connects again with its backoff, as it restarts a process.
fn reach(
    myself: ActorRef<ServerMsg>,
    entry: Arc<ToolEntry>,
    spec: McpSpec,
    runtime: Arc<Runtime>,
    url: String,
) -> ServerState {
    let me = entry.spec.actor_name();
    let secrets: Arc<[String]> = spec.secrets().into();
    let (ended_tx, ended) = watch::channel(None);
    let (peer_tx, mut peer_rx) = watch::channel::<Option<rmcp::Peer<RoleClient>>>(None);
    let watcher = {
        let myself = myself.clone();
        tokio::spawn(async move {
            let Ok(peer) = peer_rx.wait_for(Option::is_some).await.map(|p| p.clone()) else {
                return;
            };
            let Some(peer) = peer else { return };
            while !peer.is_transport_closed() {
                tokio::time::sleep(CLOSED_POLL).await;
            }
            let how = "closed its connection".to_string();
            let _ = ended_tx.send(Some(how.clone()));
            let _ = myself.cast(ServerMsg::Exited(how, false));
        })
    };
    tracing::info!(actor = %me, url = %url, "connecting to the remote MCP server");
    let ClientSide {
        progress,
        askers,
        tap,
        handler,
    } = client_side(me, &myself, &spec, &runtime, secrets.clone());
    let starter = {
        let (prefix, filter) = (spec.prefix.clone(), spec.exports.clone());
        let headers = spec.headers.clone();
        let concurrency = entry.spec.concurrency;
        start(myself, spec.start_timeout, async move {
            let blank = |e: String| crate::core::text::blank(&e, &secrets).to_string();
            let inner = remote_transport(&url, &headers, concurrency).map_err(blank)?;
            let service = handler.serve(Tapped { inner, tap }).await.map_err(|e| {
                let e = without_type_names(&e.to_string());
                blank(format!("the MCP handshake with {url} failed: {e}"))
            })?;
            let _ = peer_tx.send(Some(service.peer().clone()));
            let catalog = list_everything(service.peer(), &prefix, &filter)
                .await
                .map_err(|e| blank(e.to_string()))?;
            Ok((service, catalog))
        })
    };
    ServerState {
        entry,
        spec,
        runtime,
        pid: 0,
        service: None,
        progress,
        askers,
        lane: None,
        ended,
        exit: None,
        started: Instant::now(),
        group: None,
        tasks: AbortOnDrop(vec![watcher.abort_handle(), starter.abort_handle()]),
    }
}

/// rmcp's transport errors name the Rust types of the transport (`Transport
/// [rmcp::transport::worker::WorkerTransport<...>]`); an operator needs
/// what went wrong, not those. A bracketed Rust path is left out.
fn without_type_names(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(" [") {
        // The bracket's end, counting nested ones.
        let mut depth = 0usize;
        let mut end = None;
        for (i, c) in rest[at + 1..].char_indices() {
            match c {
                '[' => depth += 1,
                ']' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(at + 1 + i + 1);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(end) = end else { break };
        let inside = &rest[at + 2..end - 1];
        let is_path = inside.contains("::") && !inside.contains(' ');
        out.push_str(&rest[..if is_path { at } else { end }]);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// rmcp's Streamable HTTP client for `url`: TLS on rustls (the web's
/// roots), `headers` on every request, at most `concurrency` POSTs at once.
fn remote_transport(
    url: &str,
    headers: &[(String, String)],
    concurrency: usize,
) -> Result<StreamableHttpClientTransport<reqwest::Client>, String> {
    let tls = crate::config::tls::client_config(None)?;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|e| format!("the HTTP client cannot be made: {e}"))?;
    let mut config = StreamableHttpClientTransportConfig::with_uri(url.to_string());
    config.reinit_on_expired_session = true;
    config.max_concurrent_requests = concurrency.max(1);
    for (k, v) in headers {
        let name = http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("header `{k}` is not a valid name"))?;
        let value = http::HeaderValue::from_str(v)
            .map_err(|_| format!("header `{k}` has an invalid value"))?;
        config.custom_headers.insert(name, value);
    }
    Ok(StreamableHttpClientTransport::with_client(client, config))
}

impl ServerState {
    fn ended_after_start(&self, myself: &ActorRef<ServerMsg>, how: String, clean: bool) {
        let me = self.entry.spec.actor_name();
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
    /// A server that (re)started has forgotten the subscriptions of the
    /// sessions still subscribed to its resources: it is told them again.
    #[allow(deprecated)]
    fn resubscribe(&mut self, link: &Arc<Link>) {
        // Subscriptions go to the registry's entry, not a session's instance.
        if self.entry.session().is_some() {
            return;
        }
        let catalog = self.entry.catalog();
        let uris: Vec<String> = self
            .runtime
            .subscribed_uris()
            .into_iter()
            .filter(|uri| catalog.lists_uri(uri) || catalog.template_match(uri).is_some())
            .collect();
        if uris.is_empty() {
            return;
        }
        tracing::info!(actor = %self.entry.spec.actor_name(), subscriptions = uris.len(), "subscribing the server again to what its clients subscribed to");
        let peer = link.peer.clone();
        let task = tokio::spawn(async move {
            for uri in uris {
                let request = ClientRequest::SubscribeRequest(rmcp::model::SubscribeRequest::new(
                    rmcp::model::SubscribeRequestParams::new(uri),
                ));
                let _ =
                    tokio::time::timeout(RESUBSCRIBE_DEADLINE, peer.send_request(request)).await;
            }
        });
        self.tasks.0.push(task.abort_handle());
    }

    fn ready(
        &mut self,
        myself: &ActorRef<ServerMsg>,
        service: RunningService<RoleClient, Downstream>,
        catalog: Catalog,
    ) {
        let peer = service.peer().clone();
        // A server on 2026-07-28 takes no call outside rmcp: its requests
        // to warden must come during one rmcp knows of.
        let lane = self.lane.clone().filter(|_| {
            peer.peer_info()
                .is_some_and(|i| i.protocol_version < ProtocolVersion::V_2026_07_28)
        });
        let mut info = match peer.peer_info() {
            Some(i) => json!({
                "name": i.server_info.as_ref().map(|s| s.name.clone()),
                "version": i.server_info.as_ref().map(|s| s.version.clone()),
                "protocol_version": i.protocol_version.to_string(),
            }),
            None => json!({}),
        };
        if let Some(url) = &self.spec.url {
            info["url"] = json!(url);
        }
        let link = Arc::new(Link {
            server: self.entry.spec.name.clone(),
            peer,
            progress: self.progress.clone(),
            pid: self.pid,
            timeout: self.entry.spec.timeout,
            ended: self.ended.clone(),
            started: self.started,
            info,
            missed_pings: AtomicU32::new(0),
            last_ping_us: AtomicU64::new(0),
            secrets: self.spec.secrets().into(),
            askers: self.askers.clone(),
            lane,
        });
        tracing::info!(
            actor = %self.entry.spec.actor_name(), server_pid = self.pid,
            tools = catalog.tools.len(), prompts = catalog.prompts.len(), resources = catalog.resources.len(),
            start_ms = self.started.elapsed().as_millis() as u64,
            "MCP server ready"
        );
        publish(&self.entry, &self.runtime, catalog);
        self.resubscribe(&link);
        let pinger = tokio::spawn(ping(
            link.clone(),
            myself.clone(),
            self.spec.ping_every,
            self.spec.ping_timeout,
        ));
        self.tasks.0.push(pinger.abort_handle());
        self.entry.set(ToolState::Running, Some(link));
        self.service = Some(service);
    }
}

async fn wait_ended(mut ended: watch::Receiver<Option<String>>) {
    let _ = ended.wait_for(Option::is_some).await;
}

/// How long one subscription sent again after a restart may take.
const RESUBSCRIBE_DEADLINE: Duration = Duration::from_secs(5);

/// Stores a server's catalog in its entry and tells the client what changed.
/// A tool exported under a name already taken (by one of warden's own tools
/// or another server's export: possible with `prefix = ""` or `rename`) is
/// skipped, and said so: the name stays with what had it first.
fn publish(entry: &ToolEntry, runtime: &Runtime, mut catalog: Catalog) {
    // A session's instance lists nothing: the registry's entry lists for it.
    if entry.session().is_some() {
        entry.set_catalog(catalog);
        return;
    }
    let registry = runtime.tools();
    // Every name taken, and by what: one pass over the others' lists.
    let mut taken: HashMap<Arc<str>, String> = HashMap::new();
    for own in registry.iter().filter(|e| e.spec.mcp().is_none()) {
        let name = &own.spec.name;
        taken.insert(
            Arc::from(name.as_str()),
            format!("warden's own tool `{name}`"),
        );
    }
    for other in registry
        .servers()
        .filter(|o| o.spec.name != entry.spec.name)
    {
        for t in &other.catalog().tools {
            taken
                .entry(t.name.clone())
                .or_insert_with(|| format!("MCP server `{}`", other.spec.name));
        }
    }
    let skipped = &mut catalog.skipped;
    catalog.tools.retain(|t| match taken.get(&t.name) {
        Some(owner) => {
            skipped.push(format!(
                "tool {:?}: `{}` is taken by {owner}",
                &*t.downstream, t.name
            ));
            false
        }
        None => true,
    });
    for s in &catalog.skipped {
        tracing::warn!(actor = %entry.spec.actor_name(), skipped = %s, "not exported");
    }
    let changes = catalog.changes(&entry.catalog());
    // Resource URIs another server's template also matches: reads go to the
    // server that lists the URI, but the operator should know.
    for other in registry.servers() {
        if other.spec.name == entry.spec.name {
            continue;
        }
        let theirs = other.catalog();
        for (lister, templater, uris) in [
            (
                &entry.spec.name,
                &other.spec.name,
                catalog.overlaps(&theirs),
            ),
            (
                &other.spec.name,
                &entry.spec.name,
                theirs.overlaps(&catalog),
            ),
        ] {
            if !uris.is_empty() {
                tracing::warn!(actor = %entry.spec.actor_name(), lister = %lister, templater = %templater, uris = ?uris, "resources one server lists match another's template; reads go to the server that lists them");
            }
        }
    }
    entry.set_catalog(catalog);
    if changes.tools {
        runtime.notify(Notice::ToolsChanged);
    }
    if changes.prompts {
        runtime.notify(Notice::PromptsChanged);
    }
    if changes.resources {
        runtime.notify(Notice::ResourcesChanged);
    }
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
            Ok(Err(ServiceError::McpError(_))) => link.missed_pings.store(0, Ordering::Relaxed),
            // A remote server's request that failed (no connection, an
            // HTTP error) is no answer; a process's pipe is watched apart.
            Ok(Err(_)) if link.pid != 0 => link.missed_pings.store(0, Ordering::Relaxed),
            Ok(Err(_)) | Err(_) => {
                let missed = link.missed_pings.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(actor = %format!("server:{}", link.server), missed, timeout_ms = timeout.as_millis() as u64, "MCP server missed a ping");
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

/// What a server says unasked (stderr lines, log messages), let through at
/// [`STDERR_LINES_PER_SECOND`] after a burst of [`STDERR_BURST`]; the rest
/// are counted.
pub(super) struct SaidLimit {
    bucket: TokenBucket,
    dropped: u64,
}

impl Default for SaidLimit {
    fn default() -> Self {
        SaidLimit {
            bucket: TokenBucket::new(
                RateLimit {
                    rate: Rate {
                        per_second: STDERR_LINES_PER_SECOND,
                    },
                    burst: STDERR_BURST,
                },
                Instant::now(),
            ),
            dropped: 0,
        }
    }
}

impl SaidLimit {
    /// Whether one more may pass now; if not, it is counted as dropped.
    pub(super) fn admit(&mut self) -> bool {
        let ok = self.bucket.try_take(Instant::now()).is_ok();
        if !ok {
            self.dropped += 1;
        }
        ok
    }

    /// How many were dropped since the last time this was asked.
    pub(super) fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }
}

/// The server's stderr into warden's log, tagged with the server, rate
/// limited; lines are cut at [`STDERR_LINE_MAX`] and secrets blanked.
async fn log_stderr(stderr: impl AsyncRead + Unpin, actor: String, secrets: Arc<[String]>) {
    let mut limit = SaidLimit::default();
    let mut reader = tokio::io::BufReader::new(stderr);
    let mut line = Vec::new();
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
                    let dropped = limit.take_dropped();
                    if dropped > 0 {
                        tracing::warn!(actor = %actor, dropped, "server stderr lines dropped (over {STDERR_LINES_PER_SECOND}/s)");
                    }
                }
            }
        };
        match n {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if !limit.admit() {
            continue;
        }
        let text = String::from_utf8_lossy(&line);
        let text = crate::core::text::blank(text.trim_end(), &secrets);
        tracing::info!(actor = %actor, stderr = %text, "server stderr");
    }
    let dropped = limit.take_dropped();
    if dropped > 0 {
        tracing::warn!(actor = %actor, dropped, "server stderr lines dropped (over {STDERR_LINES_PER_SECOND}/s)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmcp_type_names_are_left_out_of_errors() {
        let said = "Send message error Transport [rmcp::transport::worker::WorkerTransport<rmcp::X<reqwest::Client>>] error: Auth required, when send initialize request";
        assert_eq!(
            without_type_names(said),
            "Send message error Transport error: Auth required, when send initialize request"
        );
        let ours = "Transport [warden::pipe::Tapped<rmcp::W<reqwest::Client>>] error: x";
        assert_eq!(without_type_names(ours), "Transport error: x");
        assert_eq!(without_type_names("plain"), "plain");
        assert_eq!(without_type_names("a [note] b"), "a [note] b");
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
