//! The tools supervisor, `tools`: one actor per tool, restarted one-for-one.
//!
//! Policy, in OTP's terms: every tool may restart `max_restarts` times within
//! `window`; each restart waits an exponential backoff with jitter. One more
//! failure inside the window and the tool is `failed`: its calls are answered
//! `unavailable` until `cooloff` is over, and the rest of the runtime goes on.
//! A worker that a tool actor replaced counts against the same budget, so a
//! tool whose calls keep crashing ends up `failed` too. An MCP server's
//! `restart` type (permanent, transient, temporary) decides whether it comes
//! back at all.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};

use crate::backends::mcp::{ServerActor, ServerArgs};
use crate::config::{McpSpec, RestartType, SupervisorConfig, ToolKindSpec, DEFAULT_PATH};
use crate::core::call::Backend;
use crate::core::names;
use crate::core::registry::{ToolEntry, ToolState};
use crate::core::restart::{backoff_delay, jitter_unit, RestartBudget};
use crate::core::runtime::Runtime;
use crate::exec::ProgramError;
use crate::supervise::instances;
use crate::supervise::tool::{ToolActor, ToolArgs, Work, Workers};

pub struct ToolsSupervisor;

pub enum ToolsSupervisorMsg {
    /// A tool's backoff (or a failed tool's cool-off) is over: start it again.
    Restart(Arc<ToolEntry>),
    /// The tool actor with this id replaced one of its workers, for the
    /// reason given.
    WorkerReplaced(ActorId, String),
    /// A reload: start the actors of these new entries (not yet in the
    /// registry), with this restart policy from now on.
    Start(Vec<Arc<ToolEntry>>, SupervisorConfig, RpcReplyPort<()>),
    /// A reload left these entries behind (or their sessions ended): each
    /// actor stops once its calls in flight are answered.
    Retire(Vec<Arc<ToolEntry>>),
    /// Start a session's own instance of a `scope = "session"` server,
    /// supervised like any server until its session ends.
    Adopt(Arc<ToolEntry>),
    /// Look at the retired actors again.
    Sweep,
}

pub struct ToolsSupervisorState {
    runtime: Arc<Runtime>,
    policy: SupervisorConfig,
    /// By entry id (a tool replaced by a reload starts with a fresh budget).
    budgets: HashMap<u64, RestartBudget>,
    /// Failures in a row per entry without `window` of running in between:
    /// the backoff's exponent, so it resets only after sustained health.
    streaks: HashMap<u64, u32>,
    /// The live tool and server actors, and which entry each runs.
    children: HashMap<ActorId, (Arc<ToolEntry>, ActorCell)>,
    /// Retired entries whose actors still run, and since when.
    draining: HashMap<u64, Instant>,
    seed: u64,
}

/// How often the retired actors are looked at.
const SWEEP_EVERY: Duration = Duration::from_millis(50);
/// How long a retired entry is left before its actor may stop: a call that
/// routed to it just before the swap reaches its gate within this.
const RETIRE_SETTLE: Duration = Duration::from_millis(250);
/// Past its calls' deadline by this much, a retired actor stops anyway.
const RETIRE_EXTRA: Duration = Duration::from_secs(5);

impl Actor for ToolsSupervisor {
    type Msg = ToolsSupervisorMsg;
    type State = ToolsSupervisorState;
    type Arguments = Arc<Runtime>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        runtime: Arc<Runtime>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = ToolsSupervisorState {
            policy: runtime.config.supervisor.clone(),
            budgets: HashMap::new(),
            streaks: HashMap::new(),
            children: HashMap::new(),
            draining: HashMap::new(),
            seed: u64::from(std::process::id()) << 32 | 0x9E37_79B9,
            runtime: runtime.clone(),
        };
        // Once: a restarted supervisor keeps the first one's map of the
        // instances per session (what becomes of their actors when a tools
        // supervisor dies is not tested).
        runtime.set_instances(Arc::new(instances::Handle(Arc::default())));
        for entry in runtime.tools().iter() {
            state.start(&myself, entry.clone()).await;
        }
        // A supervisor that died while a reload's old actors drained: those
        // it cannot watch over any more are stopped now.
        for entry in runtime.retired() {
            if let Some(cell) = ractor::registry::where_is(entry.actor_name()) {
                cell.stop(Some("its supervisor was restarted while it drained".into()));
            }
            runtime.forget_retired(entry.id);
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
            ToolsSupervisorMsg::Restart(entry) => {
                if entry.retired().is_some() {
                    return Ok(());
                }
                match entry.state() {
                    ToolState::Restarting { .. } => state.start(&myself, entry).await,
                    ToolState::Failed { retry_at, .. } if Instant::now() >= retry_at => {
                        tracing::info!(actor = names::TOOLS, tool = %entry.spec.name, "cool-off over: trying the failed tool again with a fresh budget");
                        state.budgets.remove(&entry.id);
                        state.start(&myself, entry).await;
                    }
                    _ => {}
                }
            }
            ToolsSupervisorMsg::WorkerReplaced(id, reason) => {
                if let Some((entry, _)) = state.children.get(&id) {
                    let entry = entry.clone();
                    if entry.retired().is_none() {
                        state.on_failure(&myself, &entry, &reason, true);
                    }
                }
            }
            ToolsSupervisorMsg::Start(entries, policy, reply) => {
                state.policy = policy;
                for entry in entries {
                    state.start(&myself, entry).await;
                }
                let _ = reply.send(());
            }
            ToolsSupervisorMsg::Adopt(entry) => {
                if entry.retired().is_none() {
                    state.start(&myself, entry).await;
                }
            }
            ToolsSupervisorMsg::Retire(entries) => {
                let now = Instant::now();
                for entry in entries {
                    let live = state.children.values().any(|(e, _)| e.id == entry.id);
                    if live {
                        state.draining.insert(entry.id, now);
                    } else {
                        // Nothing runs it (restarting, failed, unavailable).
                        state.runtime.forget_retired(entry.id);
                    }
                    state.budgets.remove(&entry.id);
                    state.streaks.remove(&entry.id);
                }
                if !state.draining.is_empty() {
                    myself.send_after(SWEEP_EVERY, || ToolsSupervisorMsg::Sweep);
                }
            }
            ToolsSupervisorMsg::Sweep => {
                state.sweep();
                if !state.draining.is_empty() {
                    myself.send_after(SWEEP_EVERY, || ToolsSupervisorMsg::Sweep);
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
        let Some((entry, _)) = state.children.remove(&cell.get_id()) else {
            return Ok(());
        };
        if entry.retired().is_some() {
            tracing::info!(actor = names::TOOLS, tool = %entry.spec.name, actor_name = entry.actor_name(), why = entry.retired(), "retired actor stopped");
            state.draining.remove(&entry.id);
            state.runtime.forget_retired(entry.id);
            return Ok(());
        }
        if state.runtime.draining.is_cancelled() {
            return Ok(());
        }
        let name = entry.spec.name.clone();
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
            tracing::warn!(actor = names::TOOLS, server = %name, reason = %why, restart = ?m.restart, "MCP server ended and is not restarted");
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
    /// Stops each retired actor whose calls are all answered (or that is
    /// past their deadline: what still runs is answered by the watchdog).
    /// A stopped one leaves `draining`; its supervision event forgets it.
    fn sweep(&mut self) {
        let now = Instant::now();
        for (entry, cell) in self.children.values() {
            let Some(&since) = self.draining.get(&entry.id) else {
                continue;
            };
            let waited = now.saturating_duration_since(since);
            let idle = entry.gate.in_flight() == 0;
            let overdue = waited >= entry.spec.deadline() + RETIRE_EXTRA;
            if waited >= RETIRE_SETTLE && (idle || overdue) {
                if overdue && !idle {
                    tracing::warn!(actor = names::TOOLS, tool = %entry.spec.name, in_flight = entry.gate.in_flight(), "retired actor still has calls past their deadline; stopping it");
                }
                cell.stop(entry.retired().map(str::to_string));
                self.draining.remove(&entry.id);
            }
        }
    }

    /// Starts (or restarts) a tool's actor; a failed spawn counts as a failure.
    async fn start(&mut self, myself: &ActorRef<ToolsSupervisorMsg>, entry: Arc<ToolEntry>) {
        let name = entry.spec.name.clone();
        let launch = match &entry.spec.kind {
            ToolKindSpec::Command(cmd) => resolve(&cmd.program, &cmd.env)
                .map(|program| Launch::Tool(Work::Command(cmd.clone(), program))),
            ToolKindSpec::Builtin(b) => Ok(Launch::Tool(Work::Builtin(*b))),
            // A remote server has no program to find.
            ToolKindSpec::Mcp(m) if m.url.is_some() => {
                Ok(Launch::Server(m.clone(), std::path::PathBuf::new()))
            }
            ToolKindSpec::Mcp(m) => {
                resolve(&m.program, &m.env).map(|program| Launch::Server(m.clone(), program))
            }
        };
        let launch = match launch {
            Ok(launch) => launch,
            Err(e) => {
                let reason = e.to_string();
                tracing::error!(actor = names::TOOLS, tool = %name, %reason, "tool is unavailable: its program is missing");
                entry.set_last_error(reason.clone());
                entry.set(ToolState::Unavailable { reason }, None);
                return;
            }
        };
        entry.set(ToolState::Starting, None);
        let actor_name = Some(entry.actor_name().to_string());
        let sup = myself.get_cell();
        let spawned = match launch {
            // The server's actor marks it running once its handshake is
            // done; until then its calls answer `unavailable` (starting).
            Launch::Server(spec, program) => {
                let args = ServerArgs {
                    entry: entry.clone(),
                    spec,
                    runtime: self.runtime.clone(),
                    program,
                };
                Actor::spawn_linked(actor_name, ServerActor, args, sup)
                    .await
                    .map(|(actor, _)| (actor.get_cell(), None))
            }
            Launch::Tool(work) => {
                let lanes = Workers::new(&entry.spec);
                let args = ToolArgs {
                    entry: entry.clone(),
                    runtime: self.runtime.clone(),
                    work,
                    lanes: lanes.clone(),
                    supervisor: myself.clone(),
                };
                Actor::spawn_linked(actor_name, ToolActor, args, sup)
                    .await
                    .map(|(actor, _)| (actor.get_cell(), Some(lanes)))
            }
        };
        match spawned {
            Ok((cell, lanes)) => {
                self.children.insert(cell.get_id(), (entry.clone(), cell));
                if let Some(lanes) = lanes {
                    entry.set(ToolState::Running, Some(lanes as Arc<dyn Backend>));
                }
                tracing::debug!(actor = names::TOOLS, tool = %name, "tool actor started");
            }
            Err(e) => {
                // Never `?` here: a failed spawn must not take the supervisor down.
                tracing::error!(actor = names::TOOLS, tool = %name, error = %e, "starting the tool actor failed");
                self.on_failure(myself, &entry, &format!("start failed: {e}"), false);
            }
        }
    }

    /// One failure of a tool: restart it after a backoff, or mark it failed
    /// past its budget. `alive`: the tool actor itself still runs (it
    /// replaced one of its workers).
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
            .entry(entry.id)
            .or_insert_with(|| RestartBudget::new(self.policy.max_restarts, self.policy.window));
        // A remote server that cannot be reached is reconnected with
        // backoff (up to `backoff.max`) for as long as it takes: trying
        // again costs nothing here, and an outage is not a crash loop.
        let remote = entry.spec.mcp().is_some_and(|m| m.url.is_some());
        let recorded = budget.record(Instant::now());
        let recorded = match recorded {
            None if remote => Some(self.policy.max_restarts + 1),
            other => other,
        };
        let Some(attempt) = recorded else {
            let cooloff = self.policy.cooloff;
            tracing::error!(
                actor = names::TOOLS,
                tool = %name, %reason,
                max_restarts = self.policy.max_restarts,
                window = %humantime::format_duration(self.policy.window),
                cooloff = %humantime::format_duration(cooloff),
                "tool failed past its restart budget; its calls now answer unavailable until the cool-off ends"
            );
            let live = self.children.iter().find(|(_, (e, _))| e.id == entry.id);
            if let Some((&id, (_, cell))) = live {
                cell.stop(Some("restart budget spent".into()));
                self.children.remove(&id);
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
            let entry = entry.clone();
            myself.send_after(cooloff, move || ToolsSupervisorMsg::Restart(entry));
            return;
        };
        entry.restarts.fetch_add(1, Ordering::Relaxed);
        self.runtime.metrics.restart(&name);
        if alive {
            tracing::warn!(actor = names::TOOLS, tool = %name, %reason, restarts_in_window = attempt, "worker replaced");
            return;
        }
        // Up for a whole window since its last start: healthy again, so the
        // backoff starts over from its minimum.
        let streak = self.streaks.entry(entry.id).or_default();
        if entry.state() == ToolState::Running && entry.in_state_for() >= self.policy.window {
            *streak = 0;
        }
        *streak += 1;
        let delay = backoff_delay(self.policy.backoff, *streak, jitter_unit(&mut self.seed));
        tracing::warn!(
            actor = names::TOOLS,
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
        let entry = entry.clone();
        myself.send_after(delay, move || ToolsSupervisorMsg::Restart(entry));
    }
}

/// What starts a tool.
enum Launch {
    /// An MCP server, its program resolved.
    Server(McpSpec, PathBuf),
    Tool(Work),
}

/// A tool's program in the `PATH` its environment gives it.
fn resolve(program: &str, env: &[(String, String)]) -> Result<PathBuf, ProgramError> {
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    crate::exec::resolve_program(program, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::call::CallCtx;

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
        let (sup, handle) =
            Actor::spawn(Some(names::TOOLS.into()), ToolsSupervisor, runtime.clone())
                .await
                .unwrap();
        let entry = runtime.tools().get("echo").unwrap().clone();
        let echo = |rt: Arc<Runtime>| async move {
            let (session, _notices) = rt.open_session("stdio");
            let cancel = Default::default();
            let ctx = CallCtx {
                session: &session,
                principal: None,
                cancel: &cancel,
                progress: None,
                asker: None,
            };
            let args = serde_json::json!({"message": "x"}).as_object().cloned();
            rt.call(&ctx, "echo", args).await.unwrap()
        };
        for n in 1..=2 {
            let actor = ractor::registry::where_is("tool:echo").expect("tool actor registered");
            actor.kill();
            wait_for("the restart", || {
                entry.restarts.load(Ordering::Relaxed) == n && entry.state() == ToolState::Running
            })
            .await;
            assert_eq!(echo(runtime.clone()).await.unwrap().text, "x");
        }
        ractor::registry::where_is("tool:echo").unwrap().kill();
        wait_for("the failure", || {
            matches!(entry.state(), ToolState::Failed { .. })
        })
        .await;
        let e = echo(runtime.clone()).await.unwrap_err();
        assert_eq!(e.kind, crate::core::error::ErrorKind::Unavailable);
        assert!(ractor::registry::where_is("tool:echo").is_none());
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
}
