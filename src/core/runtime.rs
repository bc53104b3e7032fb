//! The runtime: what every session, actor and call shares.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, Notify, Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Loaded, Problem};
use crate::core::breaker::{Force, State, Transition};
use crate::core::call::Instances;
use crate::core::error::ToolError;
use crate::core::health::{HealthView, Snapshot};
use crate::core::levels::Level;
use crate::core::metrics::Metrics;
use crate::core::names;
use crate::core::ratelimit::TokenBucket;
use crate::core::registry::{BadSchema, Registry, ToolEntry, UnknownTool};
use crate::core::reload::{self, Outcome, Trigger};
use crate::core::session::{Notice, Notices, Session};
use crate::core::status::{
    ActorLine, BreakerLine, ContainmentLine, HealthLine, MemoryLine, RecoveryLine, RefusedLine,
    ReloadLine, SessionsLine, Status, WardenLine,
};
use crate::exec::Groups;

/// Reload requests waiting for the reloader; more are refused at once.
const RELOAD_QUEUE: usize = 8;
/// How long `warden reload` waits for its reload to be applied.
pub const RELOAD_DEADLINE: Duration = Duration::from_secs(8);

/// Reads the configuration again, as `warden serve` first read it.
pub type Loader = Box<dyn Fn() -> Result<Loaded, Vec<Problem>> + Send + Sync>;

/// Everything the actors and sessions share. Read-mostly; live counters are
/// atomics or short locks.
pub struct Runtime {
    /// The configuration warden started with. A reload changes the tools
    /// (through their specs) and the supervisor's policy; the rest of it
    /// waits for a restart (`reload::restart_needed`).
    pub config: Config,
    pub config_path: PathBuf,
    /// The tools of the configuration generation in force, swapped whole.
    registry: RwLock<Arc<Registry>>,
    /// Entries a reload replaced or removed whose actors still run.
    retired: Mutex<Vec<Arc<ToolEntry>>>,
    reloads: mpsc::Sender<reload::Request>,
    /// Taken by the reloader when it starts.
    reload_queue: Mutex<Option<mpsc::Receiver<reload::Request>>>,
    loader: OnceLock<Loader>,
    /// Runs the instances of `scope = "session"` servers (set by the tools
    /// supervisor's layer at start).
    instances: OnceLock<Arc<dyn Instances>>,
    reload_view: Mutex<ReloadView>,
    pub metrics: Metrics,
    /// The process groups of every program warden runs.
    pub groups: Arc<Groups>,
    /// What the health actor measured and the recovery policy did.
    pub health: HealthView,
    /// Cancelled when warden stops taking calls (SIGTERM, or the end of the
    /// stdio session).
    pub draining: CancellationToken,
    /// Cancelled when the shutdown grace is over: every session ends and every
    /// running call is killed. The parent of every session's token.
    pub kill_all: CancellationToken,
    /// Permits for calls in flight across all tools (`server.max_in_flight`).
    in_flight: Semaphore,
    notices: Notices,
    /// The root's children as the root supervisor last saw them.
    actors: Mutex<Vec<ActorLine>>,
    /// Wakes the breaker actor's clock when a breaker opens.
    pub breaker_clock: Notify,
    next_session: AtomicU64,
    /// Every session opened and not yet dropped, for status.
    sessions: Mutex<Vec<std::sync::Weak<Session>>>,
    started: Instant,
    /// Each principal's rate limit bucket, by name (`[auth] rate`).
    principal_buckets: Mutex<std::collections::HashMap<String, TokenBucket>>,
}

/// Principals whose buckets are kept at once.
const PRINCIPAL_BUCKETS: usize = 10_000;

/// The reloads as status shows them.
struct ReloadView {
    loaded_at: Instant,
    loaded_unix: u64,
    refused: Option<(Instant, Trigger, Vec<String>)>,
    restart_needed: Vec<String>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Runtime {
    pub fn new(loaded: Loaded, groups: Arc<Groups>) -> Result<Arc<Self>, BadSchema> {
        let tools = Registry::new(loaded.tools)?;
        let metrics = Metrics::new();
        for t in tools.iter() {
            metrics.register_tool(&t.spec.name);
        }
        let actors = std::iter::once(names::ROOT)
            .chain(names::ROOT_CHILDREN)
            .map(|name| ActorLine {
                name: name.into(),
                state: "stopped".into(),
                restarts: 0,
                children: None,
            })
            .collect();
        let (reloads, reload_queue) = mpsc::channel(RELOAD_QUEUE);
        Ok(Arc::new(Runtime {
            metrics,
            in_flight: Semaphore::new(loaded.config.server.max_in_flight),
            config: loaded.config,
            config_path: loaded.path,
            registry: RwLock::new(Arc::new(tools)),
            retired: Mutex::new(Vec::new()),
            reloads,
            reload_queue: Mutex::new(Some(reload_queue)),
            loader: OnceLock::new(),
            instances: OnceLock::new(),
            reload_view: Mutex::new(ReloadView {
                loaded_at: Instant::now(),
                loaded_unix: unix_now(),
                refused: None,
                restart_needed: Vec::new(),
            }),
            groups,
            health: HealthView::default(),
            draining: CancellationToken::new(),
            kill_all: CancellationToken::new(),
            notices: Notices::new(),
            actors: Mutex::new(actors),
            breaker_clock: Notify::new(),
            next_session: AtomicU64::new(1),
            sessions: Mutex::new(Vec::new()),
            started: Instant::now(),
            principal_buckets: Mutex::new(std::collections::HashMap::new()),
        }))
    }

    /// The tools of the generation in force. Route a request on one snapshot
    /// and keep it while the request runs.
    pub fn tools(&self) -> Arc<Registry> {
        self.registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Swaps in the next generation's registry. The entries it leaves
    /// behind (`retired`) stay in status until their actors stop.
    pub fn install(&self, registry: Registry, retired: &[Arc<ToolEntry>]) {
        for entry in registry.iter() {
            self.metrics.register_tool(&entry.spec.name);
        }
        self.retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(retired.iter().cloned());
        *self.registry.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(registry);
    }

    /// The retired entries still running.
    pub fn retired(&self) -> Vec<Arc<ToolEntry>> {
        self.retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A retired entry's actor has stopped.
    pub fn forget_retired(&self, id: u64) {
        self.retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|e| e.id != id);
    }

    /// What starts and stops the instances of `scope = "session"` servers.
    pub fn set_instances(&self, instances: Arc<dyn Instances>) {
        let _ = self.instances.set(instances);
    }

    /// The instance of the server `entry` that serves `session`.
    pub async fn instance(
        &self,
        entry: &ToolEntry,
        session: &Session,
    ) -> Result<Arc<ToolEntry>, ToolError> {
        match self.instances.get() {
            Some(instances) => instances.of(entry, session).await,
            None => Err(ToolError::unavailable(
                &entry.spec.name,
                "servers per session are not running",
                None,
            )),
        }
    }

    /// How warden reads its configuration again (main sets it, with the
    /// command line's overrides); by default `config::load` of the same path.
    pub fn set_loader(&self, loader: Loader) {
        let _ = self.loader.set(loader);
    }

    /// The configuration files as they are now, checked as `warden check` does.
    pub fn load_again(&self) -> Result<Loaded, Vec<Problem>> {
        match self.loader.get() {
            Some(load) => load(),
            None => crate::config::load(&self.config_path, &|k| std::env::var(k).ok()),
        }
    }

    /// The reloader's queue; `None` once taken.
    pub fn take_reload_queue(&self) -> Option<mpsc::Receiver<reload::Request>> {
        self.reload_queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Asks for a reload and waits (with a deadline) for how it ended.
    pub async fn reload(&self, trigger: Trigger) -> Result<Outcome, String> {
        if self.draining.is_cancelled() {
            return Err("warden is shutting down".into());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let request = reload::Request {
            trigger,
            reply: Some(tx),
        };
        self.reloads.try_send(request).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => "too many reloads waiting; try again".to_string(),
            mpsc::error::TrySendError::Closed(_) => "warden is shutting down".to_string(),
        })?;
        match tokio::time::timeout(RELOAD_DEADLINE, rx).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(_)) => Err("warden is shutting down".into()),
            Err(_) => Err(format!(
                "no answer within {}; `warden status` shows whether it was applied",
                humantime::format_duration(RELOAD_DEADLINE)
            )),
        }
    }

    /// Counts and keeps how a reload ended, for metrics and status.
    pub fn record_reload(&self, trigger: Trigger, outcome: &Outcome) {
        self.metrics.reload(outcome.label());
        let mut view = self.reload_view.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Outcome::Applied(diff) => {
                view.refused = None;
                view.restart_needed = diff.restart_needed.clone();
                if !diff.is_empty() {
                    view.loaded_at = Instant::now();
                    view.loaded_unix = unix_now();
                }
            }
            Outcome::Refused { problems } => {
                view.refused = Some((Instant::now(), trigger, problems.clone()));
            }
        }
    }

    /// A new client's session, over `transport` ("stdio" or "http").
    pub fn open_session(
        &self,
        transport: &'static str,
    ) -> (Arc<Session>, tokio::sync::broadcast::Receiver<Notice>) {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (session, notices) = Session::open(id, transport, &self.kill_all, &self.notices);
        let session = Arc::new(session);
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        // Dropped sessions go as new ones come: the list stays as long as
        // the sessions open, plus those ended since the last opening.
        sessions.retain(|s| s.strong_count() > 0);
        sessions.push(Arc::downgrade(&session));
        (session, notices)
    }

    /// Every notice from now on (list changes, servers' log messages).
    pub fn notices(&self) -> tokio::sync::broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    /// The sessions still open (not dropped, not cancelled).
    fn open_sessions(&self) -> Vec<Arc<Session>> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .filter(|s| !s.cancel().is_cancelled())
            .collect()
    }

    /// The sessions open now: how many, by transport and protocol, and the
    /// longest any has gone without a call.
    pub fn sessions(&self) -> SessionsLine {
        let mut line = SessionsLine::default();
        for s in self.open_sessions() {
            line.open += 1;
            let key = format!("{} {}", s.transport, s.protocol().unwrap_or("unknown"));
            *line.by_protocol.entry(key).or_default() += 1;
            if let Some(p) = s.principal() {
                *line.by_principal.entry(p.to_string()).or_default() += 1;
            }
            let idle = s.idle().as_secs();
            line.oldest_idle_s = Some(line.oldest_idle_s.map_or(idle, |o: u64| o.max(idle)));
        }
        line
    }

    /// Open sessions of 2026-07-28 requests over HTTP: each is one request
    /// not yet answered (a `subscriptions/listen` until its final result).
    pub fn stateless_open(&self) -> usize {
        self.open_sessions()
            .iter()
            .filter(|s| s.is_stateless())
            .count()
    }

    /// Whether an open session other than `except` is subscribed to `uri`.
    pub fn subscribed_elsewhere(&self, uri: &str, except: u64) -> bool {
        self.open_sessions()
            .iter()
            .any(|s| s.id != except && s.subscribed(uri))
    }

    /// Every resource URI an open session is subscribed to.
    pub fn subscribed_uris(&self) -> std::collections::BTreeSet<String> {
        self.open_sessions()
            .iter()
            .flat_map(|s| s.subscriptions())
            .collect()
    }

    /// Tells every open session.
    pub fn notify(&self, notice: Notice) {
        self.notices.send(notice);
    }

    /// A token of `principal`'s rate limit, or how long until there is one.
    /// The buckets are by name; past `PRINCIPAL_BUCKETS` names the full ones
    /// (idle long enough to have refilled) are forgotten first.
    pub(crate) fn take_principal_token(
        &self,
        principal: &str,
        limit: crate::config::RateLimit,
        now: Instant,
    ) -> Result<(), Duration> {
        let mut buckets = self
            .principal_buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(principal) && buckets.len() >= PRINCIPAL_BUCKETS {
            buckets.retain(|_, b| !b.is_full(now));
            if buckets.len() >= PRINCIPAL_BUCKETS {
                buckets.clear();
            }
        }
        buckets
            .entry(principal.to_string())
            .or_insert_with(|| TokenBucket::new(limit, now))
            .try_take(now)
    }

    /// A permit of `server.max_in_flight`, or none left.
    pub(crate) fn admit(&self) -> Option<InFlight<'_>> {
        let permit = self.in_flight.try_acquire().ok()?;
        self.metrics.set_in_flight(self.in_flight());
        Some(InFlight {
            runtime: self,
            _permit: permit,
        })
    }

    /// Calls accepted and not yet answered, all tools together.
    pub fn in_flight(&self) -> usize {
        self.config.server.max_in_flight - self.in_flight.available_permits()
    }

    /// The root supervisor's view of one of its children (or of itself).
    pub fn set_actor(&self, name: &str, state: &str) {
        let mut actors = self.actors.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = actors.iter_mut().find(|a| a.name == name) {
            a.state = state.to_string();
        }
    }

    /// Counts a restart of one of the root's children.
    pub fn count_restart(&self, name: &str) {
        let mut actors = self.actors.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = actors.iter_mut().find(|a| a.name == name) {
            a.restarts += 1;
        }
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
        self.health.store(s);
    }

    pub fn set_level(&self, level: Level) {
        self.health.store_level(level);
        self.metrics.set_memory_level(level as i64);
    }

    /// Whether health is failing on lag: a tick later than `lag.alert` in the
    /// last two samples.
    pub fn lag_alert(&self) -> bool {
        self.health
            .latest()
            .is_some_and(|s| s.lag.recent_max_ms >= self.config.lag.alert.as_secs_f64() * 1e3)
    }

    /// Logs and counts a breaker's change of state; an opened breaker's
    /// clock is started.
    pub fn breaker_transition(&self, tool: &str, t: &Transition) {
        tracing::warn!(
            actor = names::BREAKER,
            %tool,
            from = t.from.name(),
            to = t.to.name(),
            reason = t.reason,
            failure_rate = t.failure_rate,
            slow_rate = t.slow_rate,
            calls = t.calls,
            "circuit breaker transition"
        );
        self.metrics
            .breaker_transition(tool, t.from.name(), t.to.name(), t.to.gauge());
        if matches!(t.to, State::Open { .. }) {
            self.breaker_clock.notify_one();
        }
    }

    /// Moves every open breaker whose time is over to half-open; when the
    /// next one is due.
    pub fn tick_breakers(&self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for entry in self.tools().iter() {
            let (t, until) = {
                let mut b = entry.breaker();
                (b.on_timer(now), b.opens_until())
            };
            if let Some(t) = t {
                self.breaker_transition(&entry.spec.name, &t);
            }
            if let Some(until) = until {
                next = Some(next.map_or(until, |n| n.min(until)));
            }
        }
        next
    }

    /// The operator forces a breaker open or closed, or resets it.
    pub fn force_breaker(&self, tool: &str, force: Force) -> Result<BreakerLine, UnknownTool> {
        let tools = self.tools();
        let entry = tools
            .get(tool)
            .ok_or_else(|| UnknownTool(tool.to_string()))?;
        let t = {
            let mut b = entry.breaker();
            match force {
                Force::Open => b.force_open(),
                Force::Closed => b.force_closed(),
                Force::Reset => b.reset(),
            }
        };
        if let Some(t) = t {
            self.breaker_transition(tool, &t);
        }
        let snapshot = entry.breaker().snapshot(Instant::now());
        Ok(snapshot)
    }

    /// The Prometheus text, with the queue depths brought up to date first.
    /// Memory and lag are as of the health actor's latest sample.
    pub fn metrics_text(&self) -> String {
        for t in self.tools().iter() {
            self.metrics.set_queue_depth(&t.spec.name, t.gate.queued());
        }
        self.metrics.set_in_flight(self.in_flight());
        let sessions = self.sessions();
        for transport in ["stdio", "http"] {
            let n = sessions
                .by_protocol
                .iter()
                .filter(|(k, _)| k.split(' ').next() == Some(transport))
                .map(|(_, n)| n)
                .sum();
            self.metrics.set_sessions_open(transport, n);
        }
        self.metrics.render()
    }

    /// The supervision tree and live counters.
    pub fn status(&self) -> Status {
        let mut actors = self
            .actors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let registry = self.tools();
        let retired = self.retired();
        let instances = self
            .instances
            .get()
            .map(|i| i.running())
            .unwrap_or_default();
        let tools = registry
            .iter()
            .chain(&retired)
            .chain(&instances)
            .map(|t| t.status(&self.groups))
            .collect();
        let reload = {
            let view = self.reload_view.lock().unwrap_or_else(|p| p.into_inner());
            ReloadLine {
                generation: registry.generation,
                loaded_unix: view.loaded_unix,
                loaded_s: view.loaded_at.elapsed().as_secs(),
                restart_needed: view.restart_needed.clone(),
                refused: view
                    .refused
                    .as_ref()
                    .map(|(at, trigger, problems)| RefusedLine {
                        trigger: trigger.name().to_string(),
                        ago_s: at.elapsed().as_secs(),
                        problems: problems.clone(),
                    }),
            }
        };
        if let Some(a) = actors.iter_mut().find(|a| a.name == names::TOOLS) {
            a.children = Some(tools);
        }
        let snapshot = self.health.latest();
        let recovery = {
            let view = self
                .health
                .recovery
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let (level, since) = view.level.unwrap_or((Level::Normal, Instant::now()));
            RecoveryLine {
                level,
                level_for_s: since.elapsed().as_secs(),
                actions: view.actions.iter().cloned().collect(),
                counts: view.counts.clone(),
            }
        };
        Status {
            warden: WardenLine {
                version: env!("CARGO_PKG_VERSION").to_string(),
                pid: std::process::id(),
                uptime_s: self.started.elapsed().as_secs(),
                config: self.config_path.display().to_string(),
                state: if self.draining.is_cancelled() {
                    "draining"
                } else {
                    "running"
                }
                .into(),
                rss_bytes: crate::exec::rss_bytes(std::process::id() as i32),
                in_flight: self.in_flight(),
                max_in_flight: self.config.server.max_in_flight,
                log_dir: self
                    .config
                    .log
                    .file_logging()
                    .then(|| self.config.log.dir.display().to_string()),
                sessions: self.sessions(),
                containment: {
                    let cells = self.groups.containment();
                    ContainmentLine {
                        kind: cells.kind().name().to_string(),
                        complete: cells.kind().complete(),
                        cells: cells.root().map(|r| r.display().to_string()),
                        why_not: cells.why_not().map(str::to_string),
                    }
                },
                threads: tokio::runtime::Handle::try_current()
                    .map_or(0, |h| h.metrics().num_workers()),
                reload,
            },
            health: HealthLine {
                memory: snapshot.as_ref().map(|s| MemoryLine {
                    warden_rss_bytes: s.warden_rss,
                    heap_in_use_bytes: s.heap_in_use,
                    total_bytes: s.total,
                    limit_bytes: s.limit,
                    limit_source: s.limit_source.to_string(),
                    fraction: s.fraction,
                    children: s.children.clone(),
                }),
                lag: match &snapshot {
                    Some(s) => s.lag,
                    None => self.health.lag.stats(Duration::from_secs(2)),
                },
                lag_alert: self.lag_alert(),
                recovery,
            },
            actors,
        }
    }
}

/// A call's permit of `server.max_in_flight`.
pub(crate) struct InFlight<'a> {
    runtime: &'a Runtime,
    _permit: SemaphorePermit<'a>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        // The permit itself goes back right after this.
        let n = self.runtime.in_flight().saturating_sub(1);
        self.runtime.metrics.set_in_flight(n);
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
    (
        dir,
        Runtime::new(
            loaded,
            Groups::new(None, crate::exec::contain::Cells::groups_only()),
        )
        .unwrap(),
    )
}
