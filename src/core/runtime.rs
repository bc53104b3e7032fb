//! The state the actors share, and a call's path through it.
//!
//! A call: look the tool up → validate its arguments against the schema →
//! take a global in-flight permit (none left: `busy`) → offer the job to the
//! tool's bounded queue (full: `busy`) → a worker runs it under its deadline →
//! exactly one answer comes back, whatever dies in between.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::factory::{Job, JobOptions};
use ractor::{ActorRef, RpcReplyPort};
use serde_json::{json, Map, Value};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::backends::mcp::Link;
use crate::config::{Config, Loaded, Priority};
use crate::core::breaker::{self, Outcome};
use crate::core::error::{ErrorKind, ToolError};
use crate::core::metrics::Metrics;
use crate::exec::Groups;
use crate::ops::health::{LagRecorder, Snapshot};
use crate::ops::recovery::{Level, RecoveryView};
use crate::supervise::tool::{Call, ProgressFn, ToolResult};
use crate::supervise::tools::{self, Handle, Target, ToolEntry, ToolState, Tools};

/// Everything the actors share. Read-mostly; live counters are atomics.
pub struct Runtime {
    pub config: Config,
    pub config_path: std::path::PathBuf,
    pub tools: Tools,
    /// Permits for calls in flight across all tools (`server.max_in_flight`).
    in_flight: Semaphore,
    /// Cancelled when warden stops taking calls (stdin closed, SIGTERM).
    pub draining: CancellationToken,
    /// Cancelled when the shutdown grace is over: every running call is killed.
    pub kill_all: CancellationToken,
    pub metrics: Metrics,
    /// Restarts of the root's children (breaker, tools, control), by name.
    root_restarts: std::sync::Mutex<std::collections::BTreeMap<&'static str, u32>>,
    started: Instant,
    /// Lag samples of the last minute, written by the health actor's probe.
    pub lag: Arc<LagRecorder>,
    /// The health actor's latest measurement.
    health: std::sync::Mutex<Option<Arc<Snapshot>>>,
    /// The memory level of the whole tree, as a `Level` number.
    level: AtomicU8,
    /// What the recovery policy has done, for `status`.
    pub recovery: std::sync::Mutex<RecoveryView>,
    /// What the transport should tell the client unasked (lists changed, log
    /// messages of MCP servers); dropped rather than waited for when full.
    notices: tokio::sync::mpsc::Sender<Notice>,
    notices_rx: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<Notice>>>,
    /// The process groups of every program warden runs.
    pub groups: Arc<Groups>,
}

/// Notices queued for the client before they are dropped.
const NOTICE_BUFFER: usize = 256;

/// Something the client should hear about without asking.
#[derive(Debug, Clone)]
pub enum Notice {
    ToolsChanged,
    PromptsChanged,
    ResourcesChanged,
    /// A log message of an MCP server, with its level ("info", "error", ...).
    Log {
        level: String,
        logger: String,
        data: Value,
    },
}

/// How long a forwarded call that was cancelled may take to pass the
/// cancellation on to its MCP server.
const FORWARD_CANCEL_GRACE: Duration = Duration::from_millis(250);

/// Why a call got no tool answer at all (a protocol-level error).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("unknown tool `{0}`")]
    UnknownTool(String),
}

impl Runtime {
    pub fn new(loaded: Loaded, groups: Arc<Groups>) -> Result<Arc<Self>, String> {
        let tools = Tools::new(loaded.tools)?;
        let metrics = Metrics::new();
        for t in tools.iter() {
            metrics.register_tool(&t.spec.name);
        }
        let (notices, notices_rx) = tokio::sync::mpsc::channel(NOTICE_BUFFER);
        Ok(Arc::new(Runtime {
            metrics,
            in_flight: Semaphore::new(loaded.config.server.max_in_flight),
            config: loaded.config,
            config_path: loaded.path,
            tools,
            draining: CancellationToken::new(),
            kill_all: CancellationToken::new(),
            root_restarts: Default::default(),
            started: Instant::now(),
            lag: Default::default(),
            health: Default::default(),
            level: AtomicU8::new(Level::Normal as u8),
            recovery: Default::default(),
            notices,
            notices_rx: std::sync::Mutex::new(Some(notices_rx)),
            groups,
        }))
    }

    /// Queues a notice for the client; one that does not fit is dropped.
    pub fn notify(&self, notice: Notice) {
        if self.notices.try_send(notice).is_err() {
            tracing::debug!(actor = "transport", "a notice for the client was dropped");
        }
    }

    /// The notices, for the one transport that forwards them.
    pub fn take_notices(&self) -> Option<tokio::sync::mpsc::Receiver<Notice>> {
        self.notices_rx.lock().unwrap().take()
    }

    /// The Prometheus text, with the queue depths brought up to date first.
    /// Memory and lag are as of the health actor's latest sample.
    pub fn metrics_text(&self) -> String {
        for t in self.tools.iter() {
            let running = t.running();
            let depth = t.in_flight.load(Ordering::Relaxed).saturating_sub(running);
            self.metrics.set_queue_depth(&t.spec.name, depth);
        }
        self.metrics.set_in_flight(self.in_flight());
        self.metrics.render()
    }

    /// Stores the health actor's measurement and brings the gauges up to date.
    pub fn publish_health(&self, s: Arc<Snapshot>) {
        self.metrics.set_memory("process", s.warden_rss);
        self.metrics
            .set_memory("children", s.total.saturating_sub(s.warden_rss));
        self.metrics.set_memory("total", s.total);
        self.metrics.set_memory("budget", s.limit);
        self.metrics.set_lag("p50", s.lag.p50_ms / 1e3);
        self.metrics.set_lag("p99", s.lag.p99_ms / 1e3);
        self.metrics.set_lag("max", s.lag.max_ms / 1e3);
        *self.health.lock().unwrap() = Some(s);
    }

    pub fn health(&self) -> Option<Arc<Snapshot>> {
        self.health.lock().unwrap().clone()
    }

    /// The memory level of the whole tree.
    pub fn level(&self) -> Level {
        Level::from_u8(self.level.load(Ordering::Relaxed))
    }

    pub fn set_level(&self, level: Level) {
        self.level.store(level as u8, Ordering::Relaxed);
        self.metrics.set_memory_level(level as i64);
        let mut view = self.recovery.lock().unwrap();
        if view.level.map(|(l, _)| l) != Some(level) {
            view.level = Some((level, Instant::now()));
        }
    }

    /// Whether health is failing on lag: a tick later than `lag.alert` in the
    /// last two samples.
    pub fn lag_alert(&self) -> bool {
        self.health()
            .is_some_and(|s| s.lag.recent_max_ms >= self.config.lag.alert.as_secs_f64() * 1e3)
    }

    /// Counts a restart of one of the root's children.
    pub fn count_restart(&self, child: &'static str) {
        *self.root_restarts.lock().unwrap().entry(child).or_default() += 1;
    }

    /// Calls accepted and not yet answered, all tools together.
    pub fn in_flight(&self) -> usize {
        self.config.server.max_in_flight - self.in_flight.available_permits()
    }

    /// Runs one call to its single answer. `cancel` is the client's cancellation.
    pub async fn call(
        &self,
        tool: &str,
        args: Option<Map<String, Value>>,
        cancel: CancellationToken,
        progress: Option<ProgressFn>,
    ) -> Result<ToolResult, CallError> {
        let target = self
            .tools
            .route(tool)
            .ok_or_else(|| CallError::UnknownTool(tool.to_string()))?;
        let started = Instant::now();
        let result = self
            .admit_and_run(target, args, cancel, progress, started)
            .await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind.as_str(),
        };
        self.metrics
            .call(tool, outcome, started.elapsed().as_secs_f64());
        Ok(result)
    }

    /// Validation, admission (rate limit, in-flight cap, tool state, breaker),
    /// then the tool actor; the breaker hears how it ended.
    async fn admit_and_run(
        &self,
        Target { entry, downstream }: Target<'_>,
        args: Option<Map<String, Value>>,
        cancel: CancellationToken,
        progress: Option<ProgressFn>,
        started: Instant,
    ) -> ToolResult {
        let tool = entry.spec.name.as_str();
        let args_value = Value::Object(args.unwrap_or_default());
        check_args(&entry.validator, &args_value)?;
        let Value::Object(args) = args_value else {
            unreachable!("built from a map above")
        };
        if let Some(bucket) = &entry.bucket {
            let taken = bucket.lock().unwrap().try_take(started);
            if let Err(wait) = taken {
                return Err(ToolError::rate_limited(tool, entry.spec.rate_limit, wait));
            }
        }
        let level = self.level().max(entry.own_level());
        if level >= Level::Degrade && entry.spec.priority == Priority::Low {
            let used = self.health().map_or(0.0, |s| s.fraction * 100.0);
            return Err(ToolError::degraded(
                tool,
                level.name(),
                used,
                crate::ops::recovery::degraded_retry(self.config.memory.sample_every),
            ));
        }
        let Ok(_permit) = self.in_flight.try_acquire() else {
            return Err(ToolError::busy("warden (max_in_flight)"));
        };
        if self.draining.is_cancelled() {
            return Err(ToolError::unavailable(
                tool,
                "warden is shutting down",
                None,
            ));
        }
        let actor = match entry.state() {
            ToolState::Running => entry.actor(),
            ToolState::Restarting { until } => {
                let wait = until.saturating_duration_since(Instant::now());
                return Err(ToolError::unavailable(
                    tool,
                    "it is restarting",
                    Some(wait.max(Duration::from_millis(10))),
                ));
            }
            ToolState::Starting => None,
            ToolState::Failed { reason, retry_at } => {
                let wait = retry_at.saturating_duration_since(Instant::now());
                return Err(ToolError::unavailable(tool, &reason, Some(wait)));
            }
            ToolState::Unavailable { reason } | ToolState::Stopped { reason } => {
                return Err(ToolError::unavailable(tool, &reason, None));
            }
        };
        let Some(actor) = actor else {
            return Err(ToolError::unavailable(
                tool,
                "it is starting",
                Some(Duration::from_millis(100)),
            ));
        };
        let (permit, transition) = entry.breaker().try_acquire(started);
        if let Some(t) = transition {
            breaker::report(tool, t);
        }
        let ticket = match permit {
            Ok(ticket) => ticket,
            Err(wait) => {
                return Err(ToolError::circuit_open(
                    tool,
                    wait,
                    &entry.breaker().snapshot(started),
                ))
            }
        };

        self.metrics.set_in_flight(self.in_flight());
        let result = match (actor, downstream) {
            (Handle::Factory(actor), _) => {
                self.dispatch(entry, actor, args, cancel, progress).await
            }
            // Boxed: the forwarding future holds rmcp's request machinery
            // and is large; inline, every call's future (builtins too) would
            // be that large, and tokio copies it when the task is spawned.
            (Handle::Server(link), Some(downstream)) => {
                Box::pin(self.forward(entry, &link, &downstream, args, cancel, progress)).await
            }
            (Handle::Server(_), None) => Err(ToolError::internal(format!(
                "`{tool}` is an MCP server, not a tool"
            ))),
        };
        let outcome = match &result {
            Ok(_) => Outcome::Success,
            Err(e) if e.kind.is_tool_failure() => Outcome::Failure,
            Err(_) => Outcome::Ignored,
        };
        let now = Instant::now();
        let transition = entry.breaker().record(ticket, outcome, now - started, now);
        if let Some(t) = transition {
            breaker::report(tool, t);
        }
        self.metrics.set_in_flight(self.in_flight() - 1);
        result
    }

    /// Offers the job to the tool actor's queue and waits for its one answer.
    async fn dispatch(
        &self,
        entry: &ToolEntry,
        actor: crate::supervise::tool::ToolRef,
        args: Map<String, Value>,
        cancel: CancellationToken,
        progress: Option<ProgressFn>,
    ) -> ToolResult {
        let tool = entry.spec.name.as_str();
        entry.in_flight.fetch_add(1, Ordering::Relaxed);
        let _accounted = InFlight(&entry.in_flight);
        let spec = &entry.spec;
        // The job's own token: cancelled by the client, by shutdown, or by the watchdog.
        let job_cancel = self.kill_all.child_token();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            key: (),
            msg: Call {
                args,
                cancel: job_cancel.clone(),
                progress,
                reply: Some(RpcReplyPort::from(tx)),
            },
            options: JobOptions::default(),
            accepted: None,
        };
        if ActorRef::cast(&actor, ractor::factory::FactoryMessage::Dispatch(job)).is_err() {
            return Err(ToolError::unavailable(
                tool,
                "its actor has stopped",
                Some(Duration::from_millis(100)),
            ));
        }
        // The watchdog: the worker enforces `timeout` itself; past timeout + grace
        // the caller answers on its own and stops waiting.
        let deadline = spec.timeout + spec.grace;
        let answer = tokio::select! {
            answer = rx => answer,
            _ = cancel.cancelled() => {
                job_cancel.cancel();
                return Err(ToolError::cancelled("The call was cancelled; its process group was killed."));
            }
            _ = tokio::time::sleep(deadline) => {
                job_cancel.cancel();
                entry.set_last_error("a call ran past its deadline and grace");
                return Err(ToolError::new(
                    ErrorKind::Timeout,
                    format!("Tool `{tool}` did not answer within {}.", humantime::format_duration(deadline)),
                    "Retry later; if it keeps happening, ask the operator to check the tool.",
                ).detail("timeout_ms", spec.timeout.as_millis() as u64));
            }
        };
        match answer {
            Ok(result) => {
                if let Err(e) = &result {
                    if e.kind.is_tool_failure() {
                        entry.set_last_error(e.message.clone());
                    }
                }
                result
            }
            Err(_) => {
                // The reply port was dropped: the worker (or the whole tool actor) died
                // with this call. Its replacement reports to the supervisor; answer now.
                Err(ToolError::internal(format!(
                    "The worker running this call of `{tool}` crashed; it has been replaced."
                ))
                .retry_after(Duration::from_millis(100)))
            }
        }
    }

    /// Sends a call to an MCP server and waits for its one answer. The bound
    /// is the same as a tool actor's: `concurrency` calls on the server at
    /// once, `queue` more waiting for a turn, the rest `busy`.
    async fn forward(
        &self,
        entry: &Arc<ToolEntry>,
        link: &Link,
        downstream: &str,
        args: Map<String, Value>,
        cancel: CancellationToken,
        progress: Option<ProgressFn>,
    ) -> ToolResult {
        let spec = &entry.spec;
        let waiting = entry.in_flight.fetch_add(1, Ordering::Relaxed);
        let _accounted = InFlight(&entry.in_flight);
        if waiting >= spec.concurrency + spec.queue {
            return Err(ToolError::busy(&format!("MCP server `{}`", spec.name)));
        }
        let job_cancel = self.kill_all.child_token();
        let _cancel_on_return = job_cancel.clone().drop_guard();
        let deadline = spec.timeout + spec.grace;
        let run = async {
            let _permit = tokio::select! {
                permit = entry.gate.acquire() => permit,
                _ = job_cancel.cancelled() => return Err(ToolError::cancelled("The call was cancelled before it started.")),
            };
            let _call = entry.call_started();
            link.call_tool(downstream, args, &job_cancel, progress, spec.timeout)
                .await
        };
        // The watchdog, as for a tool actor: the link enforces `timeout`
        // itself; past timeout + grace the caller answers on its own.
        let mut run = std::pin::pin!(run);
        let late = tokio::select! {
            result = &mut run => return result,
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(deadline) => true,
        };
        // The link tells the server to stop the call (with the request id it
        // used downstream) when its token is cancelled: give it a moment.
        job_cancel.cancel();
        let _ = tokio::time::timeout(FORWARD_CANCEL_GRACE, &mut run).await;
        if !late {
            return Err(ToolError::cancelled(
                "The call was cancelled; the server was told to stop it.",
            ));
        }
        entry.set_last_error("a call ran past its deadline and grace");
        Err(ToolError::new(
            ErrorKind::Timeout,
            format!(
                "MCP server `{}` did not answer within {}.",
                spec.name,
                humantime::format_duration(deadline)
            ),
            "Retry later; if it keeps happening, ask the operator to check the server.",
        )
        .detail("timeout_ms", spec.timeout.as_millis() as u64))
    }

    /// The supervision tree and live counters: what `status` shows. The
    /// schema is documented in README.md; add fields, never rename them.
    pub fn status(&self) -> Value {
        let restarts = self.root_restarts.lock().unwrap().clone();
        let actor = |name: &'static str| {
            let state = match ractor::registry::where_is(name) {
                Some(cell) => format!("{:?}", cell.get_status()).to_lowercase(),
                None => "stopped".to_string(),
            };
            json!({"name": name, "state": state, "restarts": restarts.get(name).copied().unwrap_or(0)})
        };
        let tools: Vec<Value> = self.tools.iter().map(|t| t.status(&self.groups)).collect();
        let mut health = match self.health() {
            Some(s) => json!({
                "memory": {
                    "warden_rss_bytes": s.warden_rss,
                    "total_bytes": s.total,
                    "limit_bytes": s.limit,
                    "limit_source": s.limit_source,
                    "fraction": s.fraction,
                    "children": s.children,
                },
                "lag": s.lag,
                "lag_alert": self.lag_alert(),
            }),
            None => {
                json!({"memory": null, "lag": self.lag.stats(Duration::from_secs(2)), "lag_alert": false})
            }
        };
        health["recovery"] = self.recovery.lock().unwrap().to_json();
        let mut tools_node = actor(tools::NAME);
        tools_node["children"] = json!(tools);
        json!({
            "warden": {
                "version": env!("CARGO_PKG_VERSION"),
                "pid": std::process::id(),
                "uptime_s": self.started.elapsed().as_secs(),
                "config": self.config_path.display().to_string(),
                "state": if self.draining.is_cancelled() { "draining" } else { "running" },
                "rss_bytes": crate::exec::rss_bytes(std::process::id() as i32),
                "in_flight": self.in_flight(),
                "max_in_flight": self.config.server.max_in_flight,
            },
            "health": health,
            "actors": [
                actor(crate::supervise::root::NAME),
                actor(crate::mcp::server::NAME),
                actor(crate::ops::control::NAME),
                actor(crate::ops::health::NAME),
                actor(crate::ops::recovery::NAME),
                actor(breaker::NAME),
                tools_node,
            ]
        })
    }
}

/// A runtime over a temporary config for unit tests: `config` is config.toml,
/// `actors` are (file stem, text) pairs. Keep the directory alive with it.
#[cfg(test)]
pub fn test_runtime(config: &str, actors: &[(&str, &str)]) -> (tempfile::TempDir, Arc<Runtime>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("actors")).unwrap();
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    for (name, text) in actors {
        std::fs::write(dir.path().join("actors").join(format!("{name}.toml")), text).unwrap();
    }
    let loaded = crate::config::load(&dir.path().join("config.toml"), &|_| None).unwrap();
    (dir, Runtime::new(loaded, Groups::new(None)).unwrap())
}

struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Checks a call's arguments against its tool's schema: the first violation
/// as a `validation` error. Public for the fuzz targets.
pub fn check_args(validator: &jsonschema::Validator, args: &Value) -> Result<(), ToolError> {
    // `is_valid` is the fast path; the first error is collected only on failure.
    if !validator.is_valid(args) {
        if let Some(e) = validator.iter_errors(args).next() {
            return Err(validation_error(&e));
        }
    }
    Ok(())
}

/// A schema violation as a `validation` error naming the field and the rule.
fn validation_error(e: &jsonschema::ValidationError<'_>) -> ToolError {
    let field = e
        .instance_path()
        .as_str()
        .trim_start_matches('/')
        .replace('/', ".");
    let rule = e
        .schema_path()
        .as_str()
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_string();
    let where_ = if field.is_empty() {
        "the arguments".to_string()
    } else {
        format!("`{field}`")
    };
    ToolError::new(
        ErrorKind::Validation,
        format!("Invalid {where_}: {} (rule: {rule}).", e.masked()),
        "Fix the arguments to match the tool's inputSchema (tools/list shows it) and call again.",
    )
    .detail("field", field)
    .detail("rule", rule)
    .detail("schema_path", e.schema_path().as_str().to_string())
}
