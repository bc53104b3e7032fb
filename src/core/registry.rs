//! The tools: one live record per actor file, and the routing of a client's
//! names to them.
//!
//! A `Registry` is one generation of the configuration: immutable once made.
//! A reload makes the next one (`core::reload`), keeping the entries of the
//! tools that did not change, and the runtime swaps it in whole. The tools a
//! server exports change with it, in its entry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::config::ToolSpec;
use crate::core::breaker::CircuitBreaker;
use crate::core::call::Backend;
use crate::core::catalog::Catalog;
use crate::core::error::ToolError;
use crate::core::gate::Gate;
use crate::core::levels::Level;
use crate::core::ratelimit::TokenBucket;
use crate::core::status::{ProcessLine, ServerLine, ToolLine};
use crate::exec::Groups;

/// A tool the registry does not have.
#[derive(Debug, thiserror::Error)]
#[error("unknown tool `{0}`")]
pub struct UnknownTool(pub String);

/// A tool whose input schema does not compile (config checks it first).
#[derive(Debug, thiserror::Error)]
#[error("{tool}: its input schema does not compile: {reason}")]
pub struct BadSchema {
    pub tool: String,
    pub reason: String,
}

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

/// A tool's state and what runs its calls, changed together under one lock
/// so that no reader sees `Running` without a backend.
struct Life {
    state: ToolState,
    backend: Option<Arc<dyn Backend>>,
    since: Instant,
}

/// The shared, live record of one tool: written by its supervisor, its actor
/// and the call path, read by `status`.
pub struct ToolEntry {
    /// Unique among every entry this process made: a tool replaced by a
    /// reload is a new entry under the same name.
    pub id: u64,
    pub spec: Arc<ToolSpec>,
    /// The name its actor registers: `tool:x` (`server:x`), or, for an
    /// entry that replaced another while that one drains, `tool:x@gN`.
    actor: String,
    /// Set once, when a reload replaced or removed the tool: why. Its actor
    /// stops when its calls in flight are done.
    retired: OnceLock<String>,
    /// The name a backend calls a command or builtin tool by.
    name: Arc<str>,
    pub validator: jsonschema::Validator,
    life: Mutex<Life>,
    pub restarts: AtomicU32,
    last_error: Mutex<Option<String>>,
    /// The tool's circuit breaker; its clock is driven by the breaker actor.
    breaker: Mutex<CircuitBreaker>,
    bucket: Option<Mutex<TokenBucket>>,
    /// `concurrency` running, `queue` waiting, beyond that busy.
    pub gate: Gate,
    /// This tool's own memory level (from its `memory` budget), as a `Level` number.
    own_level: AtomicU8,
    /// An MCP server's exports, as last listed; kept while it restarts so
    /// the client's lists stay put.
    catalog: RwLock<Arc<Catalog>>,
    /// Set by an MCP server's actor when its child exited with status 0.
    clean_exit: AtomicBool,
    /// For a `scope = "session"` server's instance: the session it serves.
    /// It is not in the registry; the registry's entry lists for it.
    session: Option<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these leaves usable data: keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

static NEXT_ENTRY: AtomicU64 = AtomicU64::new(1);

impl ToolEntry {
    pub fn new(spec: ToolSpec) -> Result<Self, BadSchema> {
        let actor = spec.actor_name();
        ToolEntry::named(spec, actor)
    }

    /// An entry whose actor registers as `actor`.
    pub fn named(spec: ToolSpec, actor: String) -> Result<Self, BadSchema> {
        let validator = jsonschema::validator_for(&Value::Object(spec.input_schema.clone()))
            .map_err(|e| BadSchema {
                tool: spec.name.clone(),
                reason: e.to_string(),
            })?;
        Ok(ToolEntry {
            id: NEXT_ENTRY.fetch_add(1, Ordering::Relaxed),
            actor,
            retired: OnceLock::new(),
            name: Arc::from(spec.name.as_str()),
            validator,
            life: Mutex::new(Life {
                state: ToolState::Starting,
                backend: None,
                since: Instant::now(),
            }),
            restarts: AtomicU32::new(0),
            last_error: Mutex::new(None),
            breaker: Mutex::new(CircuitBreaker::new(spec.breaker.clone())),
            bucket: spec
                .rate_limit
                .map(|limit| Mutex::new(TokenBucket::new(limit, Instant::now()))),
            gate: Gate::new(spec.concurrency, spec.queue),
            own_level: AtomicU8::new(0),
            catalog: Default::default(),
            clean_exit: AtomicBool::new(false),
            session: None,
            spec: Arc::new(spec),
        })
    }

    /// A new instance of this (`scope = "session"`) server for `session`:
    /// an entry of its own (state, gate, breaker, actor `server:x#sN`).
    pub fn instance(&self, session: u64) -> Result<Self, BadSchema> {
        let mut entry =
            ToolEntry::named((*self.spec).clone(), format!("{}#s{session}", self.actor))?;
        entry.session = Some(session);
        Ok(entry)
    }

    /// The session an instance serves (none for an entry of the registry).
    pub fn session(&self) -> Option<u64> {
        self.session
    }

    /// The name its actor registers under (for `warden kill` and recovery).
    pub fn actor_name(&self) -> &str {
        &self.actor
    }

    /// Marks the tool as left behind by a reload; the first reason stays.
    pub fn retire(&self, why: String) {
        let _ = self.retired.set(why);
    }

    /// Why a reload left it behind, if one did.
    pub fn retired(&self) -> Option<&str> {
        self.retired.get().map(String::as_str)
    }

    /// "Tool `x`" or "MCP server `x`", as answers name it.
    pub fn what(&self) -> String {
        match self.spec.mcp() {
            Some(_) => format!("MCP server `{}`", self.spec.name),
            None => format!("Tool `{}`", self.spec.name),
        }
    }

    /// The tool's breaker, locked. Hold it for a decision, never across an await.
    pub fn breaker(&self) -> MutexGuard<'_, CircuitBreaker> {
        lock(&self.breaker)
    }

    /// A token of the tool's rate limit, or how long until there is one.
    pub fn take_token(&self, now: Instant) -> Result<(), Duration> {
        match &self.bucket {
            Some(bucket) => lock(bucket).try_take(now),
            None => Ok(()),
        }
    }

    pub fn state(&self) -> ToolState {
        lock(&self.life).state.clone()
    }

    /// The state and, while running, what runs the calls: read together.
    pub fn life(&self) -> (ToolState, Option<Arc<dyn Backend>>) {
        let life = lock(&self.life);
        (life.state.clone(), life.backend.clone())
    }

    /// How long the tool has been in its state.
    pub fn in_state_for(&self) -> Duration {
        lock(&self.life).since.elapsed()
    }

    pub fn set(&self, state: ToolState, backend: Option<Arc<dyn Backend>>) {
        *lock(&self.life) = Life {
            state,
            backend,
            since: Instant::now(),
        };
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_catalog(&self, catalog: Catalog) {
        *self.catalog.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(catalog);
    }

    pub fn set_clean_exit(&self, clean: bool) {
        self.clean_exit.store(clean, Ordering::Relaxed);
    }

    pub fn take_clean_exit(&self) -> bool {
        self.clean_exit.swap(false, Ordering::Relaxed)
    }

    pub fn own_level(&self) -> Level {
        Level::from_u8(self.own_level.load(Ordering::Relaxed))
    }

    pub fn set_own_level(&self, level: Level) {
        self.own_level.store(level as u8, Ordering::Relaxed);
    }

    pub fn set_last_error(&self, e: impl Into<String>) {
        *lock(&self.last_error) = Some(e.into());
    }

    /// A call's answer, with a failure of the tool remembered as its last error.
    pub fn noted<T>(&self, result: Result<T, ToolError>) -> Result<T, ToolError> {
        if let Err(e) = &result {
            if e.kind.is_tool_failure() {
                self.set_last_error(e.message.clone());
            }
        }
        result
    }

    /// This tool's line in `status`.
    pub fn status(&self, groups: &Groups) -> ToolLine {
        let (state, backend) = self.life();
        let now = Instant::now();
        let spec = &self.spec;
        let ms = |t: Instant| t.saturating_duration_since(now).as_millis() as u64;
        let running = self.gate.running();
        let in_flight = self.gate.in_flight();
        let retired = self.retired();
        ToolLine {
            name: self.actor.clone(),
            tool: spec.name.clone(),
            state: match retired {
                Some(_) => "draining".to_string(),
                None => state.name().to_string(),
            },
            uptime_s: self.in_state_for().as_secs(),
            restarts: self.restarts.load(Ordering::Relaxed),
            workers: spec.concurrency,
            priority: spec.priority.name().to_string(),
            memory_budget_bytes: spec.memory,
            memory_level: self.own_level(),
            half_concurrency: self.gate.is_reduced(),
            running,
            in_flight,
            queue_depth: in_flight.saturating_sub(running),
            queue_capacity: spec.queue,
            last_error: lock(&self.last_error).clone(),
            breaker: self.breaker().snapshot(now),
            processes: groups
                .of(&spec.name)
                .into_iter()
                .map(|pid| ProcessLine {
                    pid,
                    rss_bytes: crate::exec::rss_bytes(pid),
                })
                .collect(),
            restart_in_ms: match state {
                ToolState::Restarting { until } => Some(ms(until)),
                _ => None,
            },
            reason: match &state {
                _ if retired.is_some() => retired.map(str::to_string),
                ToolState::Failed { reason, .. }
                | ToolState::Unavailable { reason }
                | ToolState::Stopped { reason } => Some(reason.clone()),
                _ => None,
            },
            retry_in_ms: match state {
                ToolState::Failed { retry_at, .. } => Some(ms(retry_at)),
                _ => None,
            },
            server: spec.mcp().map(|m| ServerLine {
                live: backend.and_then(|b| b.server()),
                prefix: m.prefix.clone(),
                restart: format!("{:?}", m.restart).to_lowercase(),
                exports: self.catalog().summary(),
            }),
        }
    }
}

/// How many names of removed tools a registry remembers, to answer their
/// calls `unavailable` (removed) rather than as unknown.
const REMEMBERED_REMOVALS: usize = 256;

/// Every tool and MCP server of one generation, by name.
pub struct Registry {
    entries: Vec<Arc<ToolEntry>>,
    by_name: HashMap<String, usize>,
    /// The configuration generation this registry is (0: the one warden
    /// started with).
    pub generation: u64,
    /// Client-facing names reloads removed, and why; oldest first.
    removed: Vec<(String, String)>,
}

/// Where a call to a client's tool name goes.
pub struct Target<'a> {
    pub entry: &'a Arc<ToolEntry>,
    /// The name its backend calls it by: its own, or its name on its server.
    pub name: Arc<str>,
}

impl Registry {
    pub fn new(specs: Vec<ToolSpec>) -> Result<Self, BadSchema> {
        let entries = specs
            .into_iter()
            .map(|spec| ToolEntry::new(spec).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Registry::of(entries, 0, Vec::new()))
    }

    /// A registry of these entries. `removed`: names removed by reloads, of
    /// which those that came back are forgotten, and the oldest past the
    /// limit.
    pub fn of(
        entries: Vec<Arc<ToolEntry>>,
        generation: u64,
        mut removed: Vec<(String, String)>,
    ) -> Self {
        let by_name: HashMap<String, usize> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.spec.name.clone(), i))
            .collect();
        let mut registry = Registry {
            entries,
            by_name,
            generation,
            removed: Vec::new(),
        };
        removed.retain(|(name, _)| registry.route(name).is_none());
        let excess = removed.len().saturating_sub(REMEMBERED_REMOVALS);
        removed.drain(..excess);
        registry.removed = removed;
        registry
    }

    /// Why a name a client calls is gone, if a reload removed it.
    pub fn removed(&self, name: &str) -> Option<&str> {
        self.removed
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, why)| why.as_str())
    }

    /// The names reloads removed, oldest first.
    pub fn removals(&self) -> &[(String, String)] {
        &self.removed
    }

    /// A tool, or an MCP server, by its own name.
    pub fn get(&self, name: &str) -> Option<&Arc<ToolEntry>> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    /// What a client's tool name calls: a command or builtin tool, or a tool
    /// an MCP server exports (its prefix is unique: `warden check` sees to it).
    /// Whether a call of `name` goes to an MCP server, which may ask the
    /// caller something while it runs.
    pub fn asks(&self, name: &str) -> bool {
        self.route(name)
            .is_some_and(|t| t.entry.spec.mcp().is_some())
    }

    pub fn route(&self, name: &str) -> Option<Target<'_>> {
        if let Some(entry) = self.get(name).filter(|e| e.spec.mcp().is_none()) {
            return Some(Target {
                entry,
                name: entry.name.clone(),
            });
        }
        self.servers().find_map(|entry| {
            let m = entry.spec.mcp()?;
            let rest = if m.prefix.is_empty() {
                name
            } else {
                name.strip_prefix(m.prefix.as_str())?.strip_prefix('_')?
            };
            let name = match entry.catalog().tool(name) {
                Some(d) => d.clone(),
                // While the server is down its list may be stale or not yet
                // known: the call is answered `unavailable` with a retry.
                None if entry.state() != ToolState::Running => Arc::from(rest),
                // A tool the running server does not list is unknown.
                None => return None,
            };
            Some(Target { entry, name })
        })
    }

    /// The server exporting a prompt, and the prompt's name there.
    pub fn route_prompt(&self, name: &str) -> Option<Target<'_>> {
        self.servers().find_map(|entry| {
            let name = entry.catalog().prompt(name)?.clone();
            Some(Target { entry, name })
        })
    }

    /// The server a resource URI belongs to.
    /// A resource's server: the one listing this exact URI, else the one
    /// whose template matches it most specifically (the longest text before
    /// the template's first `{`; the first server in order on a tie). Exact
    /// first, so that a broad template elsewhere (`f{x}`) cannot take a
    /// resource another server lists.
    pub fn route_uri(&self, uri: &str) -> Option<&Arc<ToolEntry>> {
        if let Some(exact) = self.servers().find(|s| s.catalog().lists_uri(uri)) {
            return Some(exact);
        }
        let mut best: Option<(usize, &Arc<ToolEntry>)> = None;
        for s in self.servers() {
            if let Some(len) = s.catalog().template_match(uri) {
                if best.is_none_or(|(b, _)| len > b) {
                    best = Some((len, s));
                }
            }
        }
        best.map(|(_, s)| s)
    }

    /// The MCP servers.
    pub fn servers(&self) -> impl Iterator<Item = &Arc<ToolEntry>> {
        self.entries.iter().filter(|e| e.spec.mcp().is_some())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<ToolEntry>> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::catalog::{Catalog, Resource, Template};

    fn server(name: &str) -> (String, String) {
        (
            format!("{name}.toml"),
            format!("name = \"{name}\"\nkind = \"mcp\"\ncommand = \"/bin/true\"\n"),
        )
    }

    #[test]
    fn a_listed_uri_goes_to_its_server_before_any_template() {
        let (a, b) = (server("a"), server("b"));
        let loaded = crate::config::check_texts(
            "",
            &[(a.0.as_str(), a.1.as_str()), (b.0.as_str(), b.1.as_str())],
        )
        .unwrap();
        let registry = Registry::new(loaded.tools).unwrap();
        let def = Arc::new(serde_json::Map::new());
        // `a` sorts first and has a template that matches everything `file:`.
        registry.get("a").unwrap().set_catalog(Catalog {
            templates: vec![Template {
                uri_template: "f{x}".into(),
                def: def.clone(),
            }],
            ..Catalog::default()
        });
        let b_catalog = Catalog {
            resources: vec![Resource {
                uri: "file:///data.txt".into(),
                def: def.clone(),
            }],
            templates: vec![Template {
                uri_template: "file:///logs/{name}".into(),
                def,
            }],
            ..Catalog::default()
        };
        let routed = |uri: &str| registry.route_uri(uri).map(|e| e.spec.name.clone());
        // The overlap is there to be warned about.
        assert_eq!(
            b_catalog.overlaps(&registry.get("a").unwrap().catalog()),
            ["file:///data.txt"]
        );
        registry.get("b").unwrap().set_catalog(b_catalog);
        assert_eq!(routed("file:///data.txt").as_deref(), Some("b"));
        // The most specific template wins.
        assert_eq!(routed("file:///logs/x").as_deref(), Some("b"));
        assert_eq!(routed("file:///other").as_deref(), Some("a"));
        assert_eq!(routed("http://x"), None);
    }
}
