//! The recovery actor: the memory and lag policy.
//!
//! Memory, as a fraction of the budget, puts the tree at a [`Level`]; each
//! level is entered at its threshold and left 5 points below it, so a tree
//! hovering at a threshold does not flap:
//!
//! - **trim** (70 %): the allocator is asked to return free memory;
//! - **degrade** (90 %): `low` tools answer `degraded`, `normal` ones run at
//!   half concurrency, `critical` ones are untouched;
//! - **restart** (95 %): the heaviest child process is restarted, one at a
//!   time with a cooldown, until the tree is below 90 %.
//!
//! A tool with its own `memory` budget gets the same levels against it, for
//! each of its children: at 95 % of its budget a child is restarted even when
//! the whole tree is fine. Lag above `lag.recover` replaces the tool actors
//! whose calls have run past their deadline. Every action is logged with its
//! before and after figures, counted, and kept for `status`. The transport is
//! never touched.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::config::Priority;
use crate::core::health::{Action, Snapshot, KEPT_ACTIONS};
use crate::core::levels::{Level, Thresholds};
use crate::core::names;
use crate::core::registry::ToolEntry;
use crate::core::runtime::Runtime;

pub struct RecoveryActor;

pub enum RecoveryMsg {
    Snapshot(Arc<Snapshot>),
}

/// The levels themselves live in the runtime (`Runtime::level`,
/// `ToolEntry::own_level`), where calls read them; a restarted recovery actor
/// goes on from there, so a crash does not forget that tools were degraded.
pub struct RecoveryState {
    runtime: Arc<Runtime>,
    thresholds: Thresholds,
    last_restart: Option<Instant>,
    /// Actions waiting for the next sample to fill in their after figures.
    awaiting_after: usize,
    /// Said once per stay at `restart` when there is no child to restart.
    said_nothing_to_restart: bool,
}

impl Actor for RecoveryActor {
    type Msg = RecoveryMsg;
    type State = RecoveryState;
    type Arguments = Arc<Runtime>;

    async fn pre_start(
        &self,
        _myself: ActorRef<RecoveryMsg>,
        runtime: Arc<Runtime>,
    ) -> Result<RecoveryState, ActorProcessingErr> {
        Ok(RecoveryState {
            thresholds: Thresholds::of(&runtime.config.memory),
            runtime,
            last_restart: None,
            awaiting_after: 0,
            said_nothing_to_restart: false,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<RecoveryMsg>,
        RecoveryMsg::Snapshot(s): RecoveryMsg,
        state: &mut RecoveryState,
    ) -> Result<(), ActorProcessingErr> {
        state.fill_after(&s);
        state.memory_policy(&s);
        state.child_budgets(&s);
        state.apply_degrade(&s);
        state.lag_policy(&s);
        Ok(())
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Asks the allocator to give free memory back to the system.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl RecoveryState {
    fn record(&mut self, s: &Snapshot, action: &'static str, target: String, reason: String) {
        tracing::warn!(
            actor = names::RECOVERY,
            action,
            %target,
            %reason,
            before_bytes = s.total,
            before_pct = format!("{:.1}", s.fraction * 100.0),
            "recovery action"
        );
        self.runtime
            .metrics
            .recovery_action(action, metric_target(&target));
        let mut view = self.runtime.health.recovery.lock().unwrap();
        *view.counts.entry(action.to_string()).or_default() += 1;
        view.actions.push_back(Action {
            at_unix_ms: unix_ms(),
            action: action.to_string(),
            target,
            reason,
            before_bytes: s.total,
            before_fraction: s.fraction,
            after_bytes: None,
            after_fraction: None,
        });
        while view.actions.len() > KEPT_ACTIONS {
            view.actions.pop_front();
        }
        self.awaiting_after = (self.awaiting_after + 1).min(view.actions.len());
    }

    /// The after figures of the actions taken at the previous sample.
    fn fill_after(&mut self, s: &Snapshot) {
        if self.awaiting_after == 0 {
            return;
        }
        let mut view = self.runtime.health.recovery.lock().unwrap();
        for a in view.actions.iter_mut().rev().take(self.awaiting_after) {
            a.after_bytes = Some(s.total);
            a.after_fraction = Some(s.fraction);
            tracing::info!(
                actor = names::RECOVERY,
                action = %a.action,
                target = %a.target,
                before_bytes = a.before_bytes,
                after_bytes = s.total,
                after_pct = format!("{:.1}", s.fraction * 100.0),
                "recovery action result"
            );
        }
        self.awaiting_after = 0;
    }

    /// The whole tree against the budget.
    fn memory_policy(&mut self, s: &Snapshot) {
        let before = self.runtime.health.level();
        let level = self.thresholds.next(before, s.fraction);
        if level != before {
            let line = format!(
                "memory level {} -> {}: {} of {} ({:.1} %)",
                before.name(),
                level.name(),
                mib(s.total),
                mib(s.limit),
                s.fraction * 100.0
            );
            if level > before {
                tracing::warn!(
                    actor = names::RECOVERY,
                    from = before.name(),
                    to = level.name(),
                    total_bytes = s.total,
                    limit_bytes = s.limit,
                    "{line}"
                );
            } else {
                tracing::info!(
                    actor = names::RECOVERY,
                    from = before.name(),
                    to = level.name(),
                    total_bytes = s.total,
                    limit_bytes = s.limit,
                    "{line}"
                );
            }
            self.runtime.set_level(level);
            self.said_nothing_to_restart = false;
            if level >= Level::Trim && before < level {
                release_free_memory();
                self.record(s, "trim", "warden".into(), line);
            }
        }
        if level == Level::Restart {
            self.restart_heaviest(s);
        }
    }

    /// At `restart`: the heaviest child, if the cooldown since the last one is over.
    fn restart_heaviest(&mut self, s: &Snapshot) {
        let cooldown = self.runtime.config.memory.cooldown;
        if self.last_restart.is_some_and(|t| t.elapsed() < cooldown) {
            return;
        }
        let Some(child) = s.children.first() else {
            if !self.said_nothing_to_restart {
                self.said_nothing_to_restart = true;
                tracing::error!(
                    actor = names::RECOVERY,
                    warden_bytes = s.warden_rss,
                    "memory at the restart level and no child process to restart: warden itself holds {}",
                    mib(s.warden_rss)
                );
            }
            return;
        };
        let reason = format!(
            "the whole tree used {} of its {} budget ({:.0} %), and this child was the heaviest at {}",
            mib(s.total),
            mib(s.limit),
            s.fraction * 100.0,
            mib(child.rss)
        );
        if self.runtime.groups.kill_because(child.pid, reason.clone()) {
            self.last_restart = Some(Instant::now());
            self.record(s, "restart", child_name(&self.runtime, child), reason);
        }
    }

    /// Each child of a tool with its own `memory` budget, against that budget.
    fn child_budgets(&mut self, s: &Snapshot) {
        let runtime = self.runtime.clone();
        let tools = runtime.tools();
        let mut heaviest: HashMap<&str, f64> = HashMap::new();
        for child in &s.children {
            let Some(tool) = child.tool.as_deref() else {
                continue;
            };
            let Some(entry) = tools.get(tool) else {
                continue;
            };
            let Some(budget) = entry.spec.memory else {
                continue;
            };
            let fraction = child.rss as f64 / budget as f64;
            if fraction >= self.thresholds.restart {
                let reason = format!(
                    "it used {} of its own {} budget ({:.0} %)",
                    mib(child.rss),
                    mib(budget),
                    fraction * 100.0
                );
                if runtime.groups.kill_because(child.pid, reason.clone()) {
                    self.record(s, "restart", child_name(&self.runtime, child), reason);
                    continue;
                }
            }
            let f = heaviest.entry(entry.spec.name.as_str()).or_default();
            *f = f.max(fraction);
        }
        for entry in tools.iter() {
            if entry.spec.memory.is_none() {
                continue;
            }
            let name = entry.spec.name.as_str();
            let before = entry.own_level();
            let fraction = heaviest.get(name).copied().unwrap_or(0.0);
            // A child restarted for its own budget does not keep its tool degraded.
            let level = self.thresholds.next(before, fraction).min(Level::Degrade);
            if level != before {
                tracing::info!(
                    actor = names::RECOVERY,
                    tool = name,
                    from = before.name(),
                    to = level.name(),
                    "tool memory level changed"
                );
                entry.set_own_level(level);
            }
        }
    }

    /// `normal` tools at or above `degrade` run at half concurrency; the
    /// others get their full concurrency back.
    fn apply_degrade(&mut self, s: &Snapshot) {
        let global = self.runtime.health.level();
        let runtime = self.runtime.clone();
        for entry in runtime.tools().iter() {
            let level = global.max(entry.own_level());
            let reduce = level >= Level::Degrade && entry.spec.priority == Priority::Normal;
            if entry.gate.set_reduced(reduce) {
                let (action, reason) = if reduce {
                    (
                        "degrade",
                        format!("memory level {}: half concurrency", level.name()),
                    )
                } else {
                    (
                        "restore",
                        "memory back below the degrade level: full concurrency".to_string(),
                    )
                };
                self.record(s, action, entry.spec.actor_name(), reason);
            }
        }
    }

    /// Lag past `lag.recover`: the tool actors with calls past their deadline
    /// are replaced (the tools supervisor restarts them).
    fn lag_policy(&mut self, s: &Snapshot) {
        let recover = self.runtime.config.lag.recover;
        if s.lag.recent_max_ms < recover.as_secs_f64() * 1e3 {
            return;
        }
        let runtime = self.runtime.clone();
        for entry in runtime
            .tools()
            .iter()
            .filter(|e| overdue(e, Instant::now()))
        {
            let deadline = entry.spec.deadline();
            if let Some(actor) = ractor::registry::where_is(entry.actor_name()) {
                actor.kill();
                self.record(
                    s,
                    "lag_restart",
                    entry.spec.actor_name(),
                    format!(
                        "event loop lag of {:.0} ms (recover at {}) with a call past its {} deadline",
                        s.lag.recent_max_ms,
                        humantime::format_duration(recover),
                        humantime::format_duration(deadline)
                    ),
                );
            }
        }
    }
}

/// Whether a tool has a call running past its deadline and grace at `now`.
fn overdue(entry: &ToolEntry, now: Instant) -> bool {
    entry
        .gate
        .oldest()
        .is_some_and(|started| now.saturating_duration_since(started) > entry.spec.deadline())
}

/// The metric's `target` label: the actor, without the pid that the log and
/// status keep. A pid in a label would add a series per restarted child, and
/// the metrics would grow without bound (a 50-minute chaos soak restarted 427).
fn metric_target(target: &str) -> &str {
    match target.split_once(" pid ") {
        Some((actor, _)) => actor,
        None if target.starts_with("pid ") => "process",
        None => target,
    }
}

fn child_name(runtime: &Runtime, c: &crate::core::health::Child) -> String {
    let tools = runtime.tools();
    match c.tool.as_deref().and_then(|t| tools.get(t)) {
        Some(entry) => format!("{} pid {}", entry.spec.actor_name(), c.pid),
        None => format!("pid {}", c.pid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn metric_targets_carry_no_pid() {
        assert_eq!(metric_target("tool:leak pid 4242"), "tool:leak");
        assert_eq!(metric_target("server:gh pid 17"), "server:gh");
        assert_eq!(metric_target("pid 99"), "process");
        assert_eq!(metric_target("warden"), "warden");
    }

    #[tokio::test]
    async fn a_tool_is_overdue_only_while_a_call_runs_past_deadline_and_grace() {
        let (_dir, runtime) = crate::core::runtime::test_runtime(
            "[defaults]\ntimeout = \"100ms\"\ngrace = \"50ms\"\n",
            &[("echo", "name = \"echo\"\nkind = \"builtin\"\n")],
        );
        let tools = runtime.tools();
        let entry = tools.get("echo").unwrap();
        let now = Instant::now();
        assert!(
            !overdue(entry, now + Duration::from_secs(60)),
            "no call running"
        );
        let ticket = entry.gate.enter().unwrap();
        let call = ticket.lane().await;
        assert!(!overdue(entry, now + Duration::from_millis(140)));
        assert!(overdue(entry, now + Duration::from_millis(200)));
        drop(call);
        assert!(
            !overdue(entry, now + Duration::from_millis(200)),
            "the call ended"
        );
    }
}
