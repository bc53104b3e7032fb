//! A call's path, from a client's request to its one answer.
//!
//! Route the name → validate the arguments against the tool's schema → the
//! tool's rate limit → shed `low` tools under memory pressure → a global
//! in-flight permit (`server.max_in_flight`) → not draining → the tool's
//! state → a permit of its circuit breaker → a place in its gate (full:
//! `busy`) → a lane → the tool's backend runs it, watched by the watchdog →
//! the breaker and the metrics hear how it ended.
//!
//! **Architecture Invariant:** [`Runtime::call`] returns exactly one answer
//! for every call: the backend's, or a refusal before anything ran, or
//! `cancelled` / `timeout` from the watchdog at the tool's deadline,
//! whatever the backend does.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::config::{Priority, Scope};
use crate::core::breaker::Outcome;
use crate::core::error::{ErrorKind, ToolError};
use crate::core::levels::Level;
use crate::core::registry::{Target, ToolEntry, ToolState};
use crate::core::runtime::Runtime;
use crate::core::session::Session;

/// How long a cancelled call's backend may take to stop and say so (kill
/// its process group, tell its MCP server) before the watchdog answers alone.
const CANCEL_GRACE: Duration = Duration::from_millis(250);

/// A boxed future, as a [`Backend`] returns them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One progress report of a running call.
#[derive(Debug, Clone)]
pub struct Progress {
    pub progress: f64,
    pub total: Option<f64>,
    pub message: Option<String>,
}

/// Where a running call's progress goes: the protocol layer maps it onto the
/// client's own token. Never blocks; a slow client loses reports, not answers.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// Who is calling: the principal's name and scopes (none on stdio, where
/// the client launched warden).
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub name: String,
    pub scopes: Vec<String>,
    /// Its rate limit, over every tool (`[auth] rate`).
    pub limit: Option<crate::config::RateLimit>,
}

impl Principal {
    /// The scopes of `needed` this principal does not have.
    pub fn lacks(&self, needed: &[String]) -> Vec<String> {
        needed
            .iter()
            .filter(|s| !self.scopes.contains(s))
            .cloned()
            .collect()
    }

    /// Whether it may see and use what needs `needed`.
    pub fn may(&self, needed: &[String]) -> bool {
        needed.iter().all(|s| self.scopes.contains(s))
    }
}

/// What every request carries into the runtime.
pub struct CallCtx<'a> {
    pub session: &'a Session,
    pub principal: Option<&'a Principal>,
    /// The client's cancellation of this request.
    pub cancel: &'a CancellationToken,
    pub progress: Option<ProgressFn>,
    /// Asks the client something on a server's behalf during the call.
    pub asker: Option<Arc<dyn Asker>>,
}

/// The client of a call, for the requests a server makes of it while the
/// call runs (sampling, elicitation, roots). The request and the answer are
/// the protocol's own types in `Payload`s (the answer may be an error the
/// client gave); the protocol layer implements it.
pub trait Asker: Send + Sync {
    fn ask(&self, request: Payload) -> BoxFuture<'static, Payload>;
}

/// Something the runtime passes through without reading: a downstream
/// server's result, in the protocol's own type, so that it reaches the
/// client without being decoded and encoded again on the way.
pub struct Payload(Box<dyn Any + Send + Sync>);

impl Payload {
    pub fn new<T: Any + Send + Sync>(value: T) -> Payload {
        Payload(Box::new(value))
    }

    /// The value, if it is a `T`.
    pub fn downcast<T: Any>(self) -> Result<T, Payload> {
        self.0.downcast::<T>().map(|b| *b).map_err(Payload)
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Payload(..)")
    }
}

/// What a successful call produced.
#[derive(Debug)]
pub struct ToolOutput {
    pub text: String,
    /// Extra lines for the reader, such as a truncation notice.
    pub notes: Vec<String>,
    /// A downstream MCP server's whole result, passed on instead of `text`.
    pub passthrough: Option<Payload>,
}

impl ToolOutput {
    pub fn text(text: impl Into<String>) -> Self {
        ToolOutput {
            text: text.into(),
            notes: Vec::new(),
            passthrough: None,
        }
    }

    pub fn passthrough(result: Payload) -> Self {
        ToolOutput {
            text: String::new(),
            notes: Vec::new(),
            passthrough: Some(result),
        }
    }
}

pub type ToolResult = Result<ToolOutput, ToolError>;

/// One admitted call, as its backend gets it.
pub struct Call {
    /// The tool's name where it runs: its own, or its name on its MCP server.
    pub tool: Arc<str>,
    /// Validated against the tool's schema.
    pub args: Map<String, Value>,
    /// Cancelled by the client, the watchdog or shutdown.
    pub cancel: CancellationToken,
    pub progress: Option<ProgressFn>,
    /// The lane of the tool's gate the call holds: `0..concurrency`.
    pub lane: usize,
    /// The call's client, for a server's requests to it.
    pub asker: Option<Arc<dyn Asker>>,
}

/// What runs a running tool's calls: its actor's workers, or the link to
/// its MCP server. Registered in the tool's entry while the tool runs.
pub trait Backend: Send + Sync {
    /// Runs one call to its answer. The backend enforces the tool's
    /// `timeout` itself and answers a cancellation promptly; the watchdog
    /// covers the rest.
    fn call(&self, call: Call) -> BoxFuture<'_, ToolResult>;

    /// Passes on a request that is not a tool call (`prompts/get`,
    /// `resources/read`): only MCP servers take them, and the registry routes
    /// them nowhere else.
    fn forward(
        &self,
        request: Payload,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<Payload, ToolError>> {
        let _ = (request, cancel);
        Box::pin(async {
            Err(ToolError::internal(
                "this tool takes no requests but tools/call",
            ))
        })
    }

    /// A live MCP server's line in `status`.
    fn server(&self) -> Option<crate::core::status::ServerLive> {
        None
    }
}

/// Where the instances of `scope = "session"` MCP servers come from: one
/// per session, started and stopped by the supervision layer.
pub trait Instances: Send + Sync {
    /// The instance of the server `entry` that serves `session`: started on
    /// the session's first request for it (and waited for, within the
    /// server's `start_timeout`), stopped when the session ends.
    fn of<'a>(
        &'a self,
        entry: &'a ToolEntry,
        session: &'a Session,
    ) -> BoxFuture<'a, Result<Arc<ToolEntry>, ToolError>>;

    /// Every instance running now (for `status`).
    fn running(&self) -> Vec<Arc<ToolEntry>>;
}

/// Why a call got no tool answer at all (a protocol-level error).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("unknown tool `{0}`")]
    UnknownTool(String),
    /// The caller's principal lacks scopes the tool needs: nothing ran.
    #[error("`{tool}` needs the scope(s) {}", missing.join(" "))]
    Forbidden { tool: String, missing: Vec<String> },
}

/// What a request asks of a backend, once admitted: a tool call, or a
/// request passed through to an MCP server.
trait Work {
    type Output;

    fn start(
        self,
        backend: &dyn Backend,
        cancel: CancellationToken,
        progress: Option<ProgressFn>,
        lane: usize,
    ) -> BoxFuture<'_, Result<Self::Output, ToolError>>;
}

struct ToolCall {
    tool: Arc<str>,
    args: Map<String, Value>,
    asker: Option<Arc<dyn Asker>>,
}

impl Work for ToolCall {
    type Output = ToolOutput;

    fn start(
        self,
        backend: &dyn Backend,
        cancel: CancellationToken,
        progress: Option<ProgressFn>,
        lane: usize,
    ) -> BoxFuture<'_, ToolResult> {
        backend.call(Call {
            tool: self.tool,
            args: self.args,
            cancel,
            progress,
            lane,
            asker: self.asker,
        })
    }
}

struct Forward(Payload);

impl Work for Forward {
    type Output = Payload;

    fn start(
        self,
        backend: &dyn Backend,
        cancel: CancellationToken,
        _progress: Option<ProgressFn>,
        _lane: usize,
    ) -> BoxFuture<'_, Result<Payload, ToolError>> {
        backend.forward(self.0, cancel)
    }
}

impl Runtime {
    /// Runs one tool call to its single answer.
    pub async fn call(
        &self,
        ctx: &CallCtx<'_>,
        tool: &str,
        args: Option<Map<String, Value>>,
    ) -> Result<ToolResult, CallError> {
        // One generation for the whole call: a reload swaps the registry,
        // the entry this call holds finishes it.
        let tools = self.tools();
        let Some(Target { entry, name }) = tools.route(tool) else {
            if let Some(why) = tools.removed(tool) {
                let result = Err(ToolError::unavailable(tool, why, None));
                self.count(tool, &result, Instant::now());
                return Ok(result);
            }
            return Err(CallError::UnknownTool(tool.to_string()));
        };
        if let Some(p) = ctx.principal {
            let missing = p.lacks(&entry.spec.scopes_for(Some(&name)));
            if !missing.is_empty() {
                return Err(CallError::Forbidden {
                    tool: tool.to_string(),
                    missing,
                });
            }
        }
        let started = Instant::now();
        // jsonschema reads a `Value`; the map goes in and comes out uncopied.
        let mut args = Value::Object(args.unwrap_or_default());
        let result = match check_args(&entry.validator, &args) {
            Ok(()) => {
                let args = args.as_object_mut().map(std::mem::take).unwrap_or_default();
                let work = ToolCall {
                    tool: name,
                    args,
                    asker: ctx.asker.clone(),
                };
                self.admit_and_run(ctx, entry, work, started).await
            }
            Err(e) => Err(e),
        };
        self.count(tool, &result, started);
        Ok(result)
    }

    /// Passes a request other than a tool call (a prompt, a resource) to
    /// the MCP server `entry`, through the same admission as a tool call.
    pub async fn forward(
        &self,
        ctx: &CallCtx<'_>,
        entry: &ToolEntry,
        request: Payload,
    ) -> Result<Payload, ToolError> {
        let started = Instant::now();
        let result = self
            .admit_and_run(ctx, entry, Forward(request), started)
            .await;
        self.count(&entry.spec.name, &result, started);
        result
    }

    fn count<T>(&self, tool: &str, result: &Result<T, ToolError>, started: Instant) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.kind.as_str(),
        };
        self.metrics
            .call(tool, outcome, started.elapsed().as_secs_f64());
    }

    /// Admission, then the gate and the backend; the breaker hears how it ended.
    async fn admit_and_run<W: Work>(
        &self,
        ctx: &CallCtx<'_>,
        entry: &ToolEntry,
        work: W,
        started: Instant,
    ) -> Result<W::Output, ToolError> {
        // A server per session: everything from here on is the session's
        // instance's (its rate limit, breaker, gate and link).
        let instance;
        let entry = match entry.spec.mcp() {
            Some(m) if m.scope == Scope::Session => {
                instance = self.instance(entry, ctx.session).await?;
                &*instance
            }
            _ => entry,
        };
        let tool = entry.spec.name.as_str();
        ctx.session.touch();
        if let Some((p, limit)) = ctx.principal.and_then(|p| Some((p, p.limit?))) {
            if let Err(wait) = self.take_principal_token(&p.name, limit, started) {
                return Err(ToolError::principal_rate_limited(&p.name, limit, wait));
            }
        }
        if let Err(wait) = entry.take_token(started) {
            return Err(ToolError::rate_limited(tool, entry.spec.rate_limit, wait));
        }
        let level = self.health.level().max(entry.own_level());
        if level >= Level::Degrade && entry.spec.priority == Priority::Low {
            let used = self.health.latest().map_or(0.0, |s| s.fraction * 100.0);
            return Err(ToolError::degraded(
                tool,
                level.name(),
                used,
                degraded_retry(self.config.memory.sample_every),
            ));
        }
        let Some(_permit) = self.admit() else {
            return Err(ToolError::busy("warden (max_in_flight)"));
        };
        // Over HTTP the /mcp middleware is the door: what it let in before
        // the drain began is in flight and runs; what came after it turned
        // away (503, 404) before anything ran. On stdio this is the door.
        if self.draining.is_cancelled() && !self.config.http.mcp {
            return Err(ToolError::unavailable(
                tool,
                "warden is shutting down",
                None,
            ));
        }
        let backend = running_backend(entry)?;
        let (permit, transition) = entry.breaker().try_acquire(started);
        if let Some(t) = transition {
            self.breaker_transition(tool, &t);
        }
        let ticket = match permit {
            Ok(ticket) => ticket,
            Err(wait) => {
                return Err(ToolError::circuit_open(
                    tool,
                    wait,
                    entry.breaker().snapshot(started),
                ))
            }
        };
        let result = self.run(ctx, entry, &*backend, work).await;
        let outcome = match &result {
            Ok(_) => Outcome::Success,
            Err(e) if e.kind.is_tool_failure() => Outcome::Failure,
            Err(_) => Outcome::Ignored,
        };
        let now = Instant::now();
        let transition = entry.breaker().record(ticket, outcome, now - started, now);
        if let Some(t) = transition {
            self.breaker_transition(tool, &t);
        }
        result
    }

    /// The gate, then the backend under the watchdog: the backend enforces
    /// `timeout` itself; past `timeout + grace` (queueing included) the call
    /// is answered here whatever the backend does.
    async fn run<W: Work>(
        &self,
        ctx: &CallCtx<'_>,
        entry: &ToolEntry,
        backend: &dyn Backend,
        work: W,
    ) -> Result<W::Output, ToolError> {
        let spec = &entry.spec;
        let Some(ticket) = entry.gate.enter() else {
            return Err(ToolError::busy(&entry.what()));
        };
        // The call's own token: cancelled by the client, by the end of its
        // session or of warden, or by the watchdog.
        let job = ctx.session.cancel().child_token();
        let _cancel_on_return = job.clone().drop_guard();
        let mut run = std::pin::pin!(async {
            let lane = tokio::select! {
                lane = ticket.lane() => lane,
                _ = ctx.cancel.cancelled() => return Err(not_started()),
                _ = job.cancelled() => return Err(not_started()),
            };
            let result = work
                .start(backend, job.clone(), ctx.progress.clone(), lane.index())
                .await;
            drop(lane);
            result
        });
        let late = tokio::select! {
            result = &mut run => return entry.noted(result),
            _ = ctx.cancel.cancelled() => false,
            _ = job.cancelled() => false,
            _ = tokio::time::sleep(spec.deadline()) => true,
        };
        // Let the backend stop the call and say how (its process group
        // killed, its server told); a backend that cannot is answered for.
        job.cancel();
        let stopped = tokio::time::timeout(CANCEL_GRACE, &mut run).await;
        if !late {
            return stopped
                .unwrap_or_else(|_| Err(ToolError::cancelled("The call was cancelled.")));
        }
        entry.set_last_error("a call ran past its deadline and grace");
        Err(ToolError::new(
            ErrorKind::Timeout,
            format!(
                "{} did not answer within {}.",
                entry.what(),
                humantime::format_duration(spec.deadline())
            ),
            "Retry later; if it keeps happening, ask the operator to check the tool.",
        )
        .detail("timeout_ms", spec.timeout.as_millis() as u64))
    }
}

fn not_started() -> ToolError {
    ToolError::cancelled("The call was cancelled before it started.")
}

/// The backend of a running tool, or why the tool takes no calls now.
fn running_backend(entry: &ToolEntry) -> Result<Arc<dyn Backend>, ToolError> {
    let tool = entry.spec.name.as_str();
    let (state, backend) = entry.life();
    match (state, backend) {
        (ToolState::Running, Some(backend)) => Ok(backend),
        (ToolState::Restarting { until }, _) => {
            let wait = until.saturating_duration_since(Instant::now());
            Err(ToolError::unavailable(
                tool,
                "it is restarting",
                Some(wait.max(Duration::from_millis(10))),
            ))
        }
        (ToolState::Failed { reason, retry_at }, _) => {
            let wait = retry_at.saturating_duration_since(Instant::now());
            Err(ToolError::unavailable(tool, &reason, Some(wait)))
        }
        (ToolState::Unavailable { reason } | ToolState::Stopped { reason }, _) => {
            Err(ToolError::unavailable(tool, &reason, None))
        }
        (ToolState::Starting | ToolState::Running, _) => Err(ToolError::unavailable(
            tool,
            "it is starting",
            Some(Duration::from_millis(100)),
        )),
    }
}

/// How long a `degraded` answer suggests waiting: about two samples.
pub fn degraded_retry(sample_every: Duration) -> Duration {
    (sample_every * 2).max(Duration::from_secs(1))
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
    let what = if field.is_empty() {
        "The arguments do not".to_string()
    } else {
        format!("Argument `{field}` does not")
    };
    ToolError::new(
        ErrorKind::Validation,
        format!(
            "{what} match the tool's schema: {} (rule: {rule}).",
            e.masked()
        ),
        "Fix the arguments to match the tool's inputSchema (tools/list shows it) and call again.",
    )
    .detail("field", field)
    .detail("rule", rule)
    .detail("schema_path", e.schema_path().as_str().to_string())
}
