//! The tools supervisor: one tool actor per tool, restarted one-for-one.
//!
//! Policy, in OTP's terms: every tool may restart `max_restarts` times within
//! `window`; each restart waits an exponential backoff with jitter. One more
//! failure inside the window and the tool is `failed`: its calls are answered
//! `unavailable` and the rest of the runtime goes on. A worker that crashes
//! inside a tool actor is replaced by the factory at once, and counts against
//! the same budget, so a tool whose calls keep crashing ends up `failed` too.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde_json::{json, Value};

use crate::backends::mcp::{Catalog, Link, ServerActor, ServerArgs};
use crate::config::{Backoff, RestartType, SupervisorConfig, ToolKindSpec, ToolSpec, DEFAULT_PATH};
use crate::core::breaker::CircuitBreaker;
use crate::core::ratelimit::TokenBucket;
use crate::core::runtime::Runtime;
use crate::ops::recovery::Level;
use crate::supervise::tool::{self, ToolRef};

/// The registered name of the tools supervisor.
pub const NAME: &str = "tools";

/// Where a tool is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolState {
    Starting,
    Running,
    /// Waiting out its backoff before the next start.
    Restarting {
        until: Instant,
    },
    /// Past its restart budget; tried again with a fresh budget at `retry_at`.
    Failed {
        reason: String,
        retry_at: Instant,
    },
    /// Cannot run at all (its program is missing).
    Unavailable {
        reason: String,
    },
    /// Ended, and its restart type says it stays down (an MCP server that is
    /// `temporary`, or `transient` and exited cleanly).
    Stopped {
        reason: String,
    },
}

impl ToolState {
    pub fn name(&self) -> &'static str {
        match self {
            ToolState::Starting => "starting",
            ToolState::Running => "running",
            ToolState::Restarting { .. } => "restarting",
            ToolState::Failed { .. } => "failed",
            ToolState::Unavailable { .. } => "unavailable",
            ToolState::Stopped { .. } => "stopped",
        }
    }
}

/// What a running tool's calls are sent to.
#[derive(Clone)]
pub enum Handle {
    /// A command or builtin tool: its factory.
    Factory(ToolRef),
    /// An MCP server: the live connection to its child.
    Server(Arc<Link>),
}

impl Handle {
    /// The actor behind it (to kill it).
    pub fn cell(&self) -> ActorCell {
        match self {
            Handle::Factory(f) => f.get_cell(),
            Handle::Server(link) => link.cell().clone(),
        }
    }
}

/// The shared, live record of one tool: written by the supervisor and the
/// workers, read by the transport and `status`.
pub struct ToolEntry {
    pub spec: Arc<ToolSpec>,
    pub validator: jsonschema::Validator,
    state: Mutex<ToolState>,
    actor: Mutex<Option<Handle>>,
    since: Mutex<Instant>,
    pub restarts: AtomicU32,
    /// Calls accepted and not yet answered (running or queued).
    pub in_flight: AtomicUsize,
    last_error: Mutex<Option<String>>,
    /// The tool's circuit breaker; its clock is driven by the breaker actor.
    breaker: Mutex<CircuitBreaker>,
    /// The tool's rate limit, if it has one.
    pub bucket: Option<Mutex<TokenBucket>>,
    /// One permit per worker; a worker holds one while it runs a call. The
    /// memory policy holds half of them to run the tool at half concurrency.
    pub gate: Arc<tokio::sync::Semaphore>,
    /// The task holding the permits taken by the memory policy.
    reserved: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// This tool's own memory level (from its `memory` budget), as a `Level` number.
    own_level: AtomicU8,
    /// Start times of the calls workers are running, by a call number.
    calls: Mutex<BTreeMap<u64, Instant>>,
    next_call: AtomicU64,
    /// An MCP server's tools, prompts and resources, as last listed; kept
    /// while it restarts so the client's list stays put.
    catalog: std::sync::RwLock<Arc<Catalog>>,
    /// Set by an MCP server's actor when its child exited with status 0.
    clean_exit: AtomicBool,
}

impl ToolEntry {
    pub fn new(spec: ToolSpec) -> Result<Self, String> {
        let validator = jsonschema::validator_for(&Value::Object(spec.input_schema.clone()))
            .map_err(|e| e.to_string())?;
        Ok(ToolEntry {
            validator,
            state: Mutex::new(ToolState::Starting),
            actor: Mutex::new(None),
            since: Mutex::new(Instant::now()),
            restarts: AtomicU32::new(0),
            in_flight: AtomicUsize::new(0),
            last_error: Mutex::new(None),
            breaker: Mutex::new(CircuitBreaker::new(spec.breaker.clone())),
            bucket: spec
                .rate_limit
                .map(|limit| Mutex::new(TokenBucket::new(limit, Instant::now()))),
            gate: Arc::new(tokio::sync::Semaphore::new(spec.concurrency)),
            reserved: Mutex::new(None),
            own_level: AtomicU8::new(0),
            calls: Mutex::new(BTreeMap::new()),
            next_call: AtomicU64::new(0),
            catalog: Default::default(),
            clean_exit: AtomicBool::new(false),
            spec: Arc::new(spec),
        })
    }

    /// The tool's breaker, locked. Hold it for a decision, never across an await.
    pub fn breaker(&self) -> std::sync::MutexGuard<'_, CircuitBreaker> {
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> ToolState {
        self.state.lock().unwrap().clone()
    }

    /// Where the tool's calls go, when the tool is running.
    pub fn actor(&self) -> Option<Handle> {
        self.actor.lock().unwrap().clone()
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().unwrap().clone()
    }

    pub fn set_catalog(&self, catalog: Catalog) {
        *self.catalog.write().unwrap() = Arc::new(catalog);
    }

    pub fn set_clean_exit(&self, clean: bool) {
        self.clean_exit.store(clean, Ordering::Relaxed);
    }

    fn take_clean_exit(&self) -> bool {
        self.clean_exit.swap(false, Ordering::Relaxed)
    }

    pub(crate) fn set(&self, state: ToolState, actor: Option<Handle>) {
        *self.state.lock().unwrap() = state;
        *self.actor.lock().unwrap() = actor;
        *self.since.lock().unwrap() = Instant::now();
    }

    pub fn own_level(&self) -> Level {
        Level::from_u8(self.own_level.load(Ordering::Relaxed))
    }

    pub fn set_own_level(&self, level: Level) {
        self.own_level.store(level as u8, Ordering::Relaxed);
    }

    /// Runs the tool at half its concurrency (rounded up) or at all of it;
    /// true when that changed. Calls already running are not interrupted:
    /// the held permits are taken as they finish.
    pub fn set_reduced(&self, reduce: bool) -> bool {
        let mut reserved = self.reserved.lock().unwrap();
        match (reduce, reserved.is_some()) {
            (true, false) => {
                let hold = (self.spec.concurrency / 2) as u32;
                let gate = self.gate.clone();
                *reserved = Some(tokio::spawn(async move {
                    let _held = gate.acquire_many_owned(hold).await;
                    std::future::pending::<()>().await
                }));
                true
            }
            (false, true) => {
                if let Some(task) = reserved.take() {
                    task.abort();
                }
                true
            }
            _ => false,
        }
    }

    pub fn is_reduced(&self) -> bool {
        self.reserved.lock().unwrap().is_some()
    }

    /// Marks a call as running until the returned guard is dropped.
    pub fn call_started(self: &Arc<Self>) -> RunningCall {
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        self.calls.lock().unwrap().insert(id, Instant::now());
        RunningCall(self.clone(), id)
    }

    /// Calls a worker is running now.
    pub fn running(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    /// When the longest-running call started.
    pub fn oldest_call(&self) -> Option<Instant> {
        self.calls.lock().unwrap().values().min().copied()
    }

    pub fn set_last_error(&self, e: impl Into<String>) {
        *self.last_error.lock().unwrap() = Some(e.into());
    }

    /// This tool's line in `status`.
    pub fn status(&self, groups: &crate::exec::Groups) -> Value {
        let state = self.state();
        let mut v = json!({
            "name": self.spec.actor_name(),
            "tool": self.spec.name,
            "state": state.name(),
            "uptime_s": self.since.lock().unwrap().elapsed().as_secs(),
            "restarts": self.restarts.load(Ordering::Relaxed),
            "workers": self.spec.concurrency,
            "priority": format!("{:?}", self.spec.priority).to_lowercase(),
            "memory_budget_bytes": self.spec.memory,
            "memory_level": self.own_level().name(),
            "half_concurrency": self.is_reduced(),
            "running": self.running(),
            "in_flight": self.in_flight.load(Ordering::Relaxed),
            "queue_depth": self.in_flight.load(Ordering::Relaxed).saturating_sub(self.running()),
            "queue_capacity": self.spec.queue,
            "last_error": *self.last_error.lock().unwrap(),
            "breaker": self.breaker().snapshot(Instant::now()),
            "processes": groups.of(&self.spec.name)
                .into_iter()
                .map(|pid| json!({"pid": pid, "rss_bytes": crate::exec::rss_bytes(pid)}))
                .collect::<Vec<_>>(),
        });
        match state {
            ToolState::Restarting { until } => {
                v["restart_in_ms"] =
                    json!(until.saturating_duration_since(Instant::now()).as_millis() as u64)
            }
            ToolState::Failed { reason, retry_at } => {
                v["reason"] = json!(reason);
                v["retry_in_ms"] = json!(retry_at
                    .saturating_duration_since(Instant::now())
                    .as_millis() as u64);
            }
            ToolState::Unavailable { reason } | ToolState::Stopped { reason } => {
                v["reason"] = json!(reason)
            }
            _ => {}
        }
        if let Some(m) = self.spec.mcp() {
            let mut server = match self.actor() {
                Some(Handle::Server(link)) => link.status(),
                _ => json!({}),
            };
            server["prefix"] = json!(m.prefix);
            server["restart"] = json!(format!("{:?}", m.restart).to_lowercase());
            server["exports"] = self.catalog().summary();
            v["server"] = server;
        }
        v
    }
}

/// A call a worker is running; dropped when it ends, however it ends.
pub struct RunningCall(Arc<ToolEntry>, u64);

impl Drop for RunningCall {
    fn drop(&mut self) {
        self.0.calls.lock().unwrap().remove(&self.1);
    }
}

/// Every tool, by name. The set of tools and MCP servers is fixed at
/// start-up; the tools a server exports change with it.
pub struct Tools {
    entries: Vec<Arc<ToolEntry>>,
    by_name: HashMap<String, usize>,
}

/// Where a call to a tool name goes.
pub struct Target<'a> {
    pub entry: &'a Arc<ToolEntry>,
    /// For a tool an MCP server exports: its name on that server.
    pub downstream: Option<Arc<str>>,
}

impl Tools {
    pub fn new(specs: Vec<ToolSpec>) -> Result<Self, String> {
        let mut entries = Vec::new();
        let mut by_name = HashMap::new();
        for spec in specs {
            by_name.insert(spec.name.clone(), entries.len());
            let name = spec.name.clone();
            entries.push(Arc::new(
                ToolEntry::new(spec).map_err(|e| format!("{name}: {e}"))?,
            ));
        }
        Ok(Tools { entries, by_name })
    }

    /// A tool, or an MCP server, by its own name.
    pub fn get(&self, name: &str) -> Option<&Arc<ToolEntry>> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    /// What a client's tool name calls: a command or builtin tool, or a tool
    /// an MCP server exports (its prefix is unique: `warden check` sees to it).
    pub fn route(&self, name: &str) -> Option<Target<'_>> {
        if let Some(entry) = self.get(name).filter(|e| e.spec.mcp().is_none()) {
            return Some(Target {
                entry,
                downstream: None,
            });
        }
        self.servers().find_map(|entry| {
            let m = entry.spec.mcp()?;
            let rest = name.strip_prefix(m.prefix.as_str())?.strip_prefix('_')?;
            let downstream = match entry.catalog().tool(name) {
                Some(d) => d.clone(),
                // While the server is down its list may be stale or not yet
                // known: the call is answered `unavailable` with a retry.
                None if entry.actor().is_none() => Arc::from(rest),
                // A tool the running server does not list is unknown.
                None => return None,
            };
            Some(Target {
                entry,
                downstream: Some(downstream),
            })
        })
    }

    /// The MCP servers.
    pub fn servers(&self) -> impl Iterator<Item = &Arc<ToolEntry>> {
        self.entries.iter().filter(|e| e.spec.mcp().is_some())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<ToolEntry>> {
        self.entries.iter()
    }
}

/// OTP restart intensity: at most `max` restarts within any `window`.
#[derive(Debug)]
pub struct RestartBudget {
    max: u32,
    window: Duration,
    recent: VecDeque<Instant>,
}

impl RestartBudget {
    pub fn new(max: u32, window: Duration) -> Self {
        RestartBudget {
            max,
            window,
            recent: VecDeque::new(),
        }
    }

    /// Records a failure at `now`; `Some(n)` with the restarts in the window
    /// (counting this one) if another restart is allowed, `None` if the budget is spent.
    pub fn record(&mut self, now: Instant) -> Option<u32> {
        while self
            .recent
            .front()
            .is_some_and(|&t| now.duration_since(t) >= self.window)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        let n = self.recent.len() as u32;
        (n <= self.max).then_some(n)
    }
}

/// The delay before restart number `attempt` (1-based): `min * 2^(attempt-1)`,
/// capped at `max`, then "equal jitter": half fixed, half random (`unit` in 0..1).
pub fn backoff_delay(b: Backoff, attempt: u32, unit: f64) -> Duration {
    let exp = b
        .min
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let d = exp.min(b.max);
    d / 2 + d.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
}

/// A small xorshift for jitter; quality does not matter, independence from the clock does.
fn jitter_unit(seed: &mut u64) -> f64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    (*seed >> 11) as f64 / (1u64 << 53) as f64
}

pub struct ToolsSupervisor;

pub enum ToolsSupervisorMsg {
    /// A tool's backoff (or a failed tool's cool-off) is over: start it again.
    Restart(String),
    /// A worker of this tool died and the tool actor replaced it.
    WorkerCrashed(String),
}

pub struct ToolsSupervisorState {
    runtime: Arc<Runtime>,
    policy: SupervisorConfig,
    budgets: HashMap<String, RestartBudget>,
    /// Failures in a row per tool without `window` of running in between:
    /// the backoff's exponent, so it resets only after sustained health.
    streaks: HashMap<String, u32>,
    /// Which tool a child actor is.
    children: HashMap<ActorId, String>,
    seed: u64,
}

impl Actor for ToolsSupervisor {
    type Msg = ToolsSupervisorMsg;
    type State = ToolsSupervisorState;
    type Arguments = Arc<Runtime>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        runtime: Arc<Runtime>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let policy = runtime.config.supervisor.clone();
        let mut state = ToolsSupervisorState {
            budgets: HashMap::new(),
            streaks: HashMap::new(),
            children: HashMap::new(),
            seed: u64::from(std::process::id()) << 32 | 0x9E37_79B9,
            runtime: runtime.clone(),
            policy,
        };
        for entry in runtime.tools.iter() {
            state.start(&myself, entry.clone()).await;
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        myself
            .stop_children_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
            .await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ToolsSupervisorMsg::Restart(name) => {
                if let Some(entry) = state.runtime.tools.get(&name).cloned() {
                    match entry.state() {
                        ToolState::Restarting { .. } => state.start(&myself, entry).await,
                        ToolState::Failed { retry_at, .. } if Instant::now() >= retry_at => {
                            tracing::info!(actor = "tools", tool = %name, "cool-off over: trying the failed tool again with a fresh budget");
                            state.budgets.remove(&name);
                            state.start(&myself, entry).await;
                        }
                        _ => {}
                    }
                }
            }
            ToolsSupervisorMsg::WorkerCrashed(name) => {
                if let Some(entry) = state.runtime.tools.get(&name).cloned() {
                    let alive = entry.actor().is_some();
                    state.on_failure(&myself, &entry, "a worker died in a call (a panic, a kill, or a call that held it past its deadline) and was replaced", alive);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Some((cell, reason)) = child_ended(event) else {
            return Ok(());
        };
        let Some(name) = state.children.remove(&cell.get_id()) else {
            return Ok(());
        };
        if state.runtime.draining.is_cancelled() {
            return Ok(());
        }
        let Some(entry) = state.runtime.tools.get(&name).cloned() else {
            return Ok(());
        };
        let Some(m) = entry.spec.mcp() else {
            state.on_failure(&myself, &entry, &format!("tool actor {reason}"), false);
            return Ok(());
        };
        // The reason the server's actor stopped with says how the server ended;
        // a killed actor says so instead.
        let why = format!("server {reason}");
        let clean = entry.take_clean_exit();
        let stays_down = match m.restart {
            RestartType::Permanent => false,
            RestartType::Transient => clean,
            RestartType::Temporary => true,
        };
        if stays_down {
            tracing::warn!(actor = "tools", server = %name, reason = %why, restart = ?m.restart, "MCP server ended and is not restarted");
            entry.set(
                ToolState::Stopped {
                    reason: format!("{why}; restart = {:?} keeps it down", m.restart)
                        .to_lowercase(),
                },
                None,
            );
        } else {
            state.on_failure(&myself, &entry, &why, false);
        }
        Ok(())
    }
}

/// The child that ended and why, for the events that mean a child is gone.
pub fn child_ended(event: SupervisionEvent) -> Option<(ActorCell, String)> {
    match event {
        SupervisionEvent::ActorFailed(cell, err) => Some((cell, format!("failed: {err}"))),
        SupervisionEvent::ActorTerminated(cell, _, reason) => Some((
            cell,
            format!(
                "stopped: {}",
                reason.unwrap_or_else(|| "no reason given".into())
            ),
        )),
        _ => None,
    }
}

impl ToolsSupervisorState {
    /// Starts (or restarts) a tool's actor; a failed spawn counts as a failure.
    async fn start(&mut self, myself: &ActorRef<ToolsSupervisorMsg>, entry: Arc<ToolEntry>) {
        let name = entry.spec.name.clone();
        let program = match &entry.spec.kind {
            ToolKindSpec::Command(cmd) => Some((&cmd.program, &cmd.env)),
            ToolKindSpec::Mcp(m) => Some((&m.program, &m.env)),
            ToolKindSpec::Builtin(_) => None,
        };
        let program = match program {
            Some((program, env)) => {
                let path = env
                    .iter()
                    .find(|(k, _)| k == "PATH")
                    .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
                match crate::exec::resolve_program(program, path) {
                    Ok(p) => Some(p),
                    Err(reason) => {
                        tracing::error!(actor = "tools", tool = %name, %reason, "tool is unavailable: its program is missing");
                        entry.set_last_error(reason.clone());
                        entry.set(ToolState::Unavailable { reason }, None);
                        return;
                    }
                }
            }
            None => None::<PathBuf>,
        };
        entry.set(ToolState::Starting, None);
        let spawned = match (&entry.spec.kind, program) {
            (ToolKindSpec::Mcp(_), Some(program)) => {
                let args = ServerArgs {
                    entry: entry.clone(),
                    runtime: self.runtime.clone(),
                    program,
                };
                // The server's actor marks it running once its handshake is
                // done; until then its calls answer `unavailable` (starting).
                Actor::spawn_linked(
                    Some(entry.spec.actor_name()),
                    ServerActor,
                    args,
                    myself.get_cell(),
                )
                .await
                .map(|(actor, _)| (actor.get_id(), None))
                .map_err(|e| e.to_string())
            }
            (_, program) => tool::spawn(
                entry.clone(),
                self.runtime.clone(),
                program,
                myself.get_cell(),
            )
            .await
            .map(|(actor, _)| (actor.get_id(), Some(Handle::Factory(actor))))
            .map_err(|e| e.to_string()),
        };
        match spawned {
            Ok((id, handle)) => {
                self.children.insert(id, name.clone());
                if let Some(handle) = handle {
                    entry.set(ToolState::Running, Some(handle));
                }
                tracing::debug!(actor = "tools", tool = %name, "tool actor started");
            }
            Err(e) => {
                // Never `?` here: a failed spawn must not take the supervisor down.
                tracing::error!(actor = "tools", tool = %name, error = %e, "starting the tool actor failed");
                self.on_failure(myself, &entry, &format!("start failed: {e}"), false);
            }
        }
    }

    /// One failure of a tool: restart it after a backoff, or mark it failed
    /// past its budget. `alive`: the tool actor itself still runs (a worker
    /// died and was already replaced by the factory).
    fn on_failure(
        &mut self,
        myself: &ActorRef<ToolsSupervisorMsg>,
        entry: &Arc<ToolEntry>,
        reason: &str,
        alive: bool,
    ) {
        let name = entry.spec.name.clone();
        entry.set_last_error(reason);
        let budget = self
            .budgets
            .entry(name.clone())
            .or_insert_with(|| RestartBudget::new(self.policy.max_restarts, self.policy.window));
        let Some(attempt) = budget.record(Instant::now()) else {
            let cooloff = self.policy.cooloff;
            tracing::error!(
                actor = "tools",
                tool = %name, %reason,
                max_restarts = self.policy.max_restarts,
                window = %humantime::format_duration(self.policy.window),
                cooloff = %humantime::format_duration(cooloff),
                "tool failed past its restart budget; its calls now answer unavailable until the cool-off ends"
            );
            if let Some(actor) = entry.actor() {
                let cell = actor.cell();
                self.children.remove(&cell.get_id());
                cell.stop(Some("restart budget spent".into()));
            }
            entry.set(
                ToolState::Failed {
                    reason: format!(
                        "{reason}; restart budget of {} in {} spent",
                        self.policy.max_restarts,
                        humantime::format_duration(self.policy.window)
                    ),
                    retry_at: Instant::now() + cooloff,
                },
                None,
            );
            myself.send_after(cooloff, move || ToolsSupervisorMsg::Restart(name));
            return;
        };
        entry.restarts.fetch_add(1, Ordering::Relaxed);
        self.runtime.metrics.restart(&name);
        if alive {
            tracing::warn!(actor = "tools", tool = %name, %reason, restarts_in_window = attempt, "worker replaced");
            return;
        }
        // Up for a whole window since its last start: healthy again, so the
        // backoff starts over from its minimum.
        let streak = self.streaks.entry(name.clone()).or_default();
        let up_for = entry.since.lock().unwrap().elapsed();
        if entry.state() == ToolState::Running && up_for >= self.policy.window {
            *streak = 0;
        }
        *streak += 1;
        let delay = backoff_delay(self.policy.backoff, *streak, jitter_unit(&mut self.seed));
        tracing::warn!(
            actor = "tools",
            tool = %name, %reason, restarts_in_window = attempt,
            backoff_ms = delay.as_millis() as u64,
            "tool actor will be restarted"
        );
        entry.set(
            ToolState::Restarting {
                until: Instant::now() + delay,
            },
            None,
        );
        myself.send_after(delay, move || ToolsSupervisorMsg::Restart(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_max_restarts_within_window() {
        let mut b = RestartBudget::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(b.record(t0), Some(1));
        assert_eq!(b.record(t0 + Duration::from_secs(1)), Some(2));
        assert_eq!(b.record(t0 + Duration::from_secs(2)), Some(3));
        assert_eq!(b.record(t0 + Duration::from_secs(3)), None);
    }

    #[test]
    fn budget_forgets_restarts_older_than_window() {
        let mut b = RestartBudget::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(b.record(t0), Some(1));
        assert_eq!(b.record(t0 + Duration::from_secs(5)), Some(2));
        // t0 leaves the window exactly at t0 + 10s.
        assert_eq!(b.record(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(b.record(t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn zero_budget_fails_on_first_crash() {
        let mut b = RestartBudget::new(0, Duration::from_secs(10));
        assert_eq!(b.record(Instant::now()), None);
    }

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_cap() {
        let b = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(backoff_delay(b, 1, 0.0), Duration::from_millis(50));
        assert_eq!(backoff_delay(b, 1, 1.0), Duration::from_millis(100));
        assert_eq!(backoff_delay(b, 2, 1.0), Duration::from_millis(200));
        assert_eq!(backoff_delay(b, 3, 0.5), Duration::from_millis(300));
        assert_eq!(backoff_delay(b, 10, 1.0), Duration::from_secs(1));
        assert_eq!(backoff_delay(b, 99, 0.0), Duration::from_millis(500));
    }

    /// Kills the tool actor itself (not a worker) and watches the supervisor
    /// restart it, then give up past the budget. The only test in this binary
    /// that registers the `tools` name.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_tool_actor_is_restarted_then_failed_past_its_budget() {
        let (_dir, runtime) =
            crate::core::runtime::test_runtime(
                "[supervisor]\nmax_restarts = 2\nwindow = \"60s\"\nbackoff = { min = \"20ms\", max = \"40ms\" }\n",
                &[("echo", "name = \"echo\"\nkind = \"builtin\"\n")],
            );
        let (sup, handle) = Actor::spawn(Some(NAME.into()), ToolsSupervisor, runtime.clone())
            .await
            .unwrap();
        let entry = runtime.tools.get("echo").unwrap().clone();
        let echo = |rt: Arc<Runtime>| async move {
            let args = serde_json::json!({"message": "x"}).as_object().cloned();
            rt.call("echo", args, Default::default(), None)
                .await
                .unwrap()
        };
        for n in 1..=2 {
            let actor = ractor::registry::where_is(tool::actor_name("echo"))
                .expect("tool actor registered");
            actor.kill();
            wait_for("the restart", || {
                entry.restarts.load(Ordering::Relaxed) == n && entry.state() == ToolState::Running
            })
            .await;
            assert_eq!(echo(runtime.clone()).await.unwrap().text, "x");
        }
        ractor::registry::where_is(tool::actor_name("echo"))
            .unwrap()
            .kill();
        wait_for("the failure", || {
            matches!(entry.state(), ToolState::Failed { .. })
        })
        .await;
        let e = echo(runtime.clone()).await.unwrap_err();
        assert_eq!(e.kind, crate::core::error::ErrorKind::Unavailable);
        assert!(ractor::registry::where_is(tool::actor_name("echo")).is_none());
        sup.stop(None);
        handle.await.unwrap();
    }

    async fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let end = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn jitter_stays_in_unit_interval() {
        let mut seed = 42;
        for _ in 0..1000 {
            let u = jitter_unit(&mut seed);
            assert!((0.0..1.0).contains(&u));
        }
    }
}
