//! `status`: the supervision tree and live counters, as one type that the
//! runtime makes and `warden status` (table and `--json`), the `status`
//! builtin, `/health` and `/ready` read. The JSON schema is documented in
//! README.md: fields are added, never renamed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::core::catalog::Exports;
use crate::core::health::{Action, Child, LagStats};
use crate::core::levels::Level;
use crate::core::names;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub warden: WardenLine,
    pub health: HealthLine,
    pub actors: Vec<ActorLine>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WardenLine {
    pub version: String,
    pub pid: u32,
    pub uptime_s: u64,
    pub config: String,
    /// "running", or "draining" once warden stops taking calls.
    pub state: String,
    pub rss_bytes: Option<u64>,
    pub in_flight: usize,
    pub max_in_flight: usize,
    /// Where the JSON log files go; absent when file logging is off
    /// (`warden logs` finds an instance's files through it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_dir: Option<String>,
    /// The MCP sessions open (stdio: the one client; HTTP: each session and
    /// each stateless request being served).
    #[serde(default)]
    pub sessions: SessionsLine,
    /// What holds each program together with everything it starts.
    #[serde(default)]
    pub containment: ContainmentLine,
    /// The runtime's threads (`server.worker_threads`, or its default).
    #[serde(default)]
    pub threads: usize,
    /// The configuration generation in force, and the last refused reload.
    #[serde(default)]
    pub reload: ReloadLine,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadLine {
    /// 0: the configuration warden started with; each applied reload that
    /// changed something adds one.
    pub generation: u64,
    /// When the generation in force was loaded (Unix seconds), and how long ago.
    pub loaded_unix: u64,
    pub loaded_s: u64,
    /// Settings changed in config.toml that wait for a restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart_needed: Vec<String>,
    /// The last reload refused since the last one applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<RefusedLine>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RefusedLine {
    pub trigger: String,
    pub ago_s: u64,
    /// Each as `file: field: reason`.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionsLine {
    pub open: usize,
    /// "TRANSPORT PROTOCOL" (such as "http 2025-11-25") → sessions.
    pub by_protocol: BTreeMap<String, usize>,
    /// The longest any open session has gone without a call, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_idle_s: Option<u64>,
    /// With `[auth]`: principal → sessions open (names, never tokens).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_principal: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainmentLine {
    /// "cgroup2", "freezer" or "subreaper" (see `server.containment`).
    pub kind: String,
    /// True when nothing a program starts can outlive its call or warden,
    /// also when warden is SIGKILLed (cgroups); false for the subreaper.
    pub complete: bool,
    /// The directory of the cgroup cells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cells: Option<String>,
    /// Why no cgroup is used, when none is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why_not: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthLine {
    /// None until the health actor's first sample.
    pub memory: Option<MemoryLine>,
    pub lag: LagStats,
    pub lag_alert: bool,
    pub recovery: RecoveryLine,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryLine {
    pub warden_rss_bytes: u64,
    /// Allocated and not freed, of warden's own heap (glibc only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heap_in_use_bytes: Option<u64>,
    pub total_bytes: u64,
    pub limit_bytes: u64,
    pub limit_source: String,
    pub fraction: f64,
    pub children: Vec<Child>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryLine {
    pub level: Level,
    pub level_for_s: u64,
    pub actions: Vec<Action>,
    pub counts: BTreeMap<String, u64>,
}

/// One of the root's children (and the root itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActorLine {
    pub name: String,
    pub state: String,
    pub restarts: u32,
    /// The tools supervisor's tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<Vec<ToolLine>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolLine {
    /// Its actor: `tool:NAME` or `server:NAME`.
    pub name: String,
    pub tool: String,
    pub state: String,
    pub uptime_s: u64,
    pub restarts: u32,
    pub workers: usize,
    pub priority: String,
    pub memory_budget_bytes: Option<u64>,
    pub memory_level: Level,
    pub half_concurrency: bool,
    pub running: usize,
    pub in_flight: usize,
    pub queue_depth: usize,
    pub queue_capacity: usize,
    pub last_error: Option<String>,
    pub breaker: BreakerLine,
    pub processes: Vec<ProcessLine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_in_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerLine>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerLine {
    pub state: String,
    pub failure_rate: f64,
    pub slow_rate: f64,
    pub calls_in_window: usize,
    pub open_for_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_open_in_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessLine {
    pub pid: i32,
    pub rss_bytes: Option<u64>,
}

/// An MCP server's part of its tool line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerLine {
    /// While the server runs.
    #[serde(flatten)]
    pub live: Option<ServerLive>,
    pub prefix: String,
    pub restart: String,
    pub exports: Exports,
}

/// A running server's process and connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerLive {
    pub pid: i32,
    pub up_s: u64,
    /// The server's name, version and protocol, as it said in `initialize`.
    pub server: Value,
    pub missed_pings: u32,
    pub last_ping_ms: f64,
}

impl Status {
    pub fn actor(&self, name: &str) -> Option<&ActorLine> {
        self.actors.iter().find(|a| a.name == name)
    }

    /// The tools supervisor's tools.
    pub fn tools(&self) -> &[ToolLine] {
        self.actor(names::TOOLS)
            .and_then(|a| a.children.as_deref())
            .unwrap_or(&[])
    }

    pub fn tool(&self, name: &str) -> Option<&ToolLine> {
        self.tools().iter().find(|t| t.tool == name)
    }

    fn actor_state(&self, name: &str) -> &str {
        self.actor(name).map_or("stopped", |a| a.state.as_str())
    }
}

/// A component's health, worst last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    Healthy,
    Degraded,
    Unhealthy,
}

impl Health {
    pub fn name(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Unhealthy => "unhealthy",
        }
    }

    /// The HTTP status `/health` answers with.
    pub fn http_status(self) -> u16 {
        match self {
            Health::Healthy => 200,
            Health::Degraded => 207,
            Health::Unhealthy => 503,
        }
    }
}

/// `/health`: the overall health and a JSON body per component.
///
/// Unhealthy: the tools supervisor or the transport is not running, or
/// event-loop lag is past `lag.alert`. Degraded: the breaker, health or
/// recovery actor is not running, memory is at the degrade level or above,
/// or a tool is not running (starting, restarting, failed, unavailable) or
/// its breaker is not closed. Else healthy.
///
/// This is liveness: a draining warden is alive and finishing its calls
/// (`/ready` is what turns it away), so draining, and actors stopped by the
/// drain, do not make it unhealthy; a restart would only cut the calls short.
pub fn health(status: &Status) -> (Health, Value) {
    let mut components = Map::new();
    let mut overall = Health::Healthy;
    let mut add = |name: String, health: Health, mut detail: Map<String, Value>| {
        overall = overall.max(health);
        detail.insert("status".into(), json!(health.name()));
        components.insert(name, Value::Object(detail));
    };
    let state = |s: &str| Map::from_iter([("state".to_string(), json!(s))]);
    let draining = status.warden.state == "draining";
    add(
        "warden".into(),
        Health::Healthy,
        state(&status.warden.state),
    );
    for (name, when_down) in [
        (names::TRANSPORT, Health::Unhealthy),
        (names::TOOLS, Health::Unhealthy),
        (names::BREAKER, Health::Degraded),
        (names::HEALTH, Health::Degraded),
        (names::RECOVERY, Health::Degraded),
    ] {
        let s = status.actor_state(name);
        let health = if s == "running" || draining {
            Health::Healthy
        } else {
            when_down
        };
        add(name.into(), health, state(s));
    }
    // Memory: shedding load is degraded; event-loop lag past `lag.alert` is unhealthy.
    let h = &status.health;
    let level = h.recovery.level;
    let memory = if level >= Level::Degrade {
        Health::Degraded
    } else {
        Health::Healthy
    };
    add(
        "memory".into(),
        memory,
        Map::from_iter([
            ("level".to_string(), json!(level.name())),
            (
                "fraction".to_string(),
                json!(h.memory.as_ref().map(|m| m.fraction)),
            ),
        ]),
    );
    let lag = if h.lag_alert {
        Health::Unhealthy
    } else {
        Health::Healthy
    };
    add(
        "lag".into(),
        lag,
        Map::from_iter([
            ("recent_max_ms".to_string(), json!(h.lag.recent_max_ms)),
            ("p99_ms".to_string(), json!(h.lag.p99_ms)),
        ]),
    );
    for tool in status.tools() {
        let closed = matches!(tool.breaker.state.as_str(), "closed" | "forced_closed");
        let health = if tool.state == "running" && closed {
            Health::Healthy
        } else {
            Health::Degraded
        };
        let mut detail = state(&tool.state);
        detail.insert("breaker".into(), json!(tool.breaker.state));
        detail.insert("restarts".into(), json!(tool.restarts));
        if let Some(reason) = &tool.reason {
            detail.insert("reason".into(), json!(reason));
        }
        add(format!("tool:{}", tool.tool), health, detail);
    }
    (
        overall,
        json!({ "status": overall.name(), "components": components }),
    )
}

/// `/ready`: ready unless warden is draining or a tool is still starting.
/// Failed tools do not make warden unready: their calls are answered.
pub fn readiness(status: &Status) -> (bool, Value) {
    if status.warden.state != "running" {
        return (
            false,
            json!({ "ready": false, "reason": "warden is draining" }),
        );
    }
    let starting: Vec<&str> = status
        .tools()
        .iter()
        .filter(|t| t.state == "starting")
        .map(|t| t.tool.as_str())
        .collect();
    if !starting.is_empty() {
        return (
            false,
            json!({ "ready": false, "reason": "tools are starting", "starting": starting }),
        );
    }
    (true, json!({ "ready": true }))
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A status with `tools` as (name, state, breaker state).
    pub fn status(warden_state: &str, actors_up: bool, tools: &[(&str, &str, &str)]) -> Status {
        let up = if actors_up { "running" } else { "stopped" };
        let tool = |(name, state, breaker): &(&str, &str, &str)| ToolLine {
            name: format!("tool:{name}"),
            tool: name.to_string(),
            state: state.to_string(),
            uptime_s: 1,
            restarts: 0,
            workers: 2,
            priority: "normal".into(),
            memory_budget_bytes: None,
            memory_level: Level::Normal,
            half_concurrency: false,
            running: 0,
            in_flight: 0,
            queue_depth: 0,
            queue_capacity: 16,
            last_error: None,
            breaker: BreakerLine {
                state: breaker.to_string(),
                failure_rate: 0.0,
                slow_rate: 0.0,
                calls_in_window: 0,
                open_for_ms: 30000,
                half_open_in_ms: None,
            },
            processes: vec![],
            restart_in_ms: None,
            reason: None,
            retry_in_ms: None,
            server: None,
        };
        let mut actors: Vec<ActorLine> = std::iter::once(names::ROOT)
            .chain(names::ROOT_CHILDREN)
            .map(|name| ActorLine {
                name: name.into(),
                state: up.into(),
                restarts: 0,
                children: None,
            })
            .collect();
        if let Some(t) = actors.iter_mut().find(|a| a.name == names::TOOLS) {
            t.children = Some(tools.iter().map(tool).collect());
        }
        Status {
            warden: WardenLine {
                version: "0.1.0".into(),
                pid: 42,
                uptime_s: 61,
                config: "/etc/warden/config.toml".into(),
                state: warden_state.into(),
                rss_bytes: Some(11534336),
                in_flight: 1,
                max_in_flight: 256,
                log_dir: Some("/etc/warden/logs".into()),
                sessions: SessionsLine {
                    open: 1,
                    by_protocol: BTreeMap::from([("stdio 2025-11-25".into(), 1)]),
                    oldest_idle_s: Some(3),
                    by_principal: BTreeMap::new(),
                },
                containment: ContainmentLine {
                    kind: "cgroup2".into(),
                    complete: true,
                    cells: Some("/sys/fs/cgroup/warden-42".into()),
                    why_not: None,
                },
                threads: 1,
                reload: ReloadLine::default(),
            },
            health: HealthLine {
                memory: None,
                lag: LagStats::default(),
                lag_alert: false,
                recovery: RecoveryLine {
                    level: Level::Normal,
                    level_for_s: 61,
                    actions: vec![],
                    counts: BTreeMap::new(),
                },
            },
            actors,
        }
    }

    #[test]
    fn health_is_the_worst_component() {
        let (h, body) = health(&status("running", true, &[("echo", "running", "closed")]));
        assert_eq!(
            (h, body["status"].clone()),
            (Health::Healthy, json!("healthy"))
        );
        assert_eq!(body["components"]["tool:echo"]["state"], "running");
        let (h, body) = health(&status("running", true, &[("echo", "running", "open")]));
        assert_eq!(h, Health::Degraded);
        assert_eq!(body["components"]["tool:echo"]["status"], "degraded");
        let (h, body) = health(&status("draining", false, &[]));
        assert_eq!(h, Health::Healthy, "a drain is alive: {body}");
        assert_eq!(body["components"]["warden"]["state"], "draining");
        let (h, body) = health(&status("running", false, &[]));
        assert_eq!(h, Health::Unhealthy, "transport and tools down");
        assert_eq!(body["components"]["breaker"]["status"], "degraded");
        let mut lagging = status("running", true, &[]);
        lagging.health.lag_alert = true;
        assert_eq!(health(&lagging).0, Health::Unhealthy);
        let mut short = status("running", true, &[]);
        short.health.recovery.level = Level::Degrade;
        assert_eq!(health(&short).0, Health::Degraded);
    }

    #[test]
    fn ready_unless_draining_or_starting() {
        assert!(readiness(&status("running", true, &[("echo", "failed", "open")])).0);
        let (ready, body) = readiness(&status("running", true, &[("echo", "starting", "closed")]));
        assert!(!ready);
        assert_eq!(body["starting"], json!(["echo"]));
        assert!(!readiness(&status("draining", true, &[])).0);
    }

    #[test]
    fn status_round_trips_through_its_json() {
        let s = status("running", true, &[("echo", "restarting", "closed")]);
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&text).unwrap(), s);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(
            v["health"]["memory"].is_null(),
            "kept as null, not left out"
        );
        assert!(v["actors"][0].get("children").is_none());
        let tool = &v["actors"][6]["children"][0];
        assert!(tool["last_error"].is_null() && tool.get("reason").is_none());
    }
}
