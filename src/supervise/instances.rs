//! Servers per session: a `scope = "session"` MCP server runs one instance
//! for each client session that uses it, under the server's
//! `max_sessions`. An instance is an entry of its own (state, breaker,
//! gate, link), started by the tools supervisor at the session's first
//! request for it and supervised like any server (restart type, backoff,
//! budget); when the session ends it is retired, and its actor stops once
//! its calls are answered, killing its process group. The registry's entry
//! runs one more instance, shared, which lists the server's tools, prompts
//! and resources for every session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::ActorRef;

use crate::core::call::{BoxFuture, Instances};
use crate::core::error::ToolError;
use crate::core::names;
use crate::core::registry::{ToolEntry, ToolState};
use crate::core::session::Session;
use crate::supervise::tools::ToolsSupervisorMsg;

/// How often a session's first request looks whether its instance is up.
const START_POLL: Duration = Duration::from_millis(10);
/// Beyond the server's `start_timeout`: time for the supervisor to launch it.
const START_SLACK: Duration = Duration::from_secs(1);

/// The instances running, by server entry and session.
#[derive(Default)]
pub struct SessionServers {
    running: Mutex<HashMap<(u64, u64), Arc<ToolEntry>>>,
}

impl SessionServers {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, u64), Arc<ToolEntry>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session's instance of `entry`, and whether it is new: a new one
    /// is started, and stopped when the session ends.
    fn find_or_start(
        self: &Arc<Self>,
        entry: &ToolEntry,
        session: &Session,
        max: usize,
    ) -> Result<(Arc<ToolEntry>, bool), ToolError> {
        let key = (entry.id, session.id);
        let mut running = self.running();
        if let Some(instance) = running.get(&key) {
            return Ok((instance.clone(), false));
        }
        let tool = entry.spec.name.as_str();
        if running.keys().filter(|(id, _)| *id == entry.id).count() >= max {
            return Err(ToolError::busy(&format!(
                "MCP server `{tool}` (a server per session, {max} running: max_sessions)"
            )));
        }
        let supervisor = tools_supervisor(tool)?;
        let instance = Arc::new(
            entry
                .instance(session.id)
                .map_err(|e| ToolError::internal(e.to_string()))?,
        );
        // A reload replaced the server: the session's instance of the old
        // one goes (it would otherwise run until the session ends).
        let replaced: Vec<_> = running
            .iter()
            .filter(|((id, s), e)| *s == session.id && *id != entry.id && e.spec.name == tool)
            .map(|(k, _)| *k)
            .collect();
        let replaced: Vec<_> = replaced.iter().filter_map(|k| running.remove(k)).collect();
        running.insert(key, instance.clone());
        drop(running);
        for old in &replaced {
            old.retire("a reload replaced its server".into());
        }
        if !replaced.is_empty() {
            let _ = supervisor.cast(ToolsSupervisorMsg::Retire(replaced));
        }
        tracing::info!(actor = names::TOOLS, server = %tool, session = session.id, instance = instance.actor_name(), "starting a server for a session");
        let _ = supervisor.cast(ToolsSupervisorMsg::Adopt(instance.clone()));
        let (me, ended, stopping) = (self.clone(), session.cancel().clone(), instance.clone());
        tokio::spawn(async move {
            ended.cancelled().await;
            me.running().remove(&key);
            stopping.retire("its session ended".into());
            tracing::info!(
                actor = names::TOOLS,
                instance = stopping.actor_name(),
                "stopping a session's server: its session ended"
            );
            if let Some(supervisor) = ractor::registry::where_is(names::TOOLS) {
                let supervisor: ActorRef<ToolsSupervisorMsg> = supervisor.into();
                let _ = supervisor.cast(ToolsSupervisorMsg::Retire(vec![stopping]));
            }
        });
        Ok((instance, true))
    }
}

/// The tools supervisor, which starts and watches every server.
fn tools_supervisor(tool: &str) -> Result<ActorRef<ToolsSupervisorMsg>, ToolError> {
    ractor::registry::where_is(names::TOOLS)
        .map(Into::into)
        .ok_or_else(|| {
            ToolError::unavailable(
                tool,
                "the tools supervisor is restarting",
                Some(Duration::from_millis(500)),
            )
        })
}

/// The runtime's handle on the instances.
pub struct Handle(pub Arc<SessionServers>);

impl Instances for Handle {
    fn of<'a>(
        &'a self,
        entry: &'a ToolEntry,
        session: &'a Session,
    ) -> BoxFuture<'a, Result<Arc<ToolEntry>, ToolError>> {
        Box::pin(async move {
            let tool = entry.spec.name.as_str();
            let Some(m) = entry.spec.mcp() else {
                return Err(ToolError::internal(format!(
                    "`{tool}` is not an MCP server"
                )));
            };
            // Over HTTP a 2026-07-28 request is a session of its own: a
            // server started for it would serve one request.
            if session.transport == "http" && session.is_stateless() {
                return Err(ToolError::unavailable(
                    tool,
                    "it runs a server per client session, and a 2026-07-28 request over HTTP has none; connect with a session (protocol 2025-11-25)",
                    None,
                ));
            }
            // The session's first request waits for its server to start;
            // later ones find it in whatever state it is (restarting, say).
            let max = m.max_sessions as usize;
            let (instance, new) = self.0.find_or_start(entry, session, max)?;
            if new {
                started(&instance, m.start_timeout + START_SLACK).await?;
            }
            Ok(instance)
        })
    }

    fn running(&self) -> Vec<Arc<ToolEntry>> {
        let mut all: Vec<_> = self.0.running().values().cloned().collect();
        all.sort_by_key(|e| e.id);
        all
    }
}

/// Waits until `instance` runs, or says why it does not.
async fn started(instance: &ToolEntry, within: Duration) -> Result<(), ToolError> {
    let tool = instance.spec.name.as_str();
    let until = Instant::now() + within;
    loop {
        match instance.state() {
            ToolState::Running => return Ok(()),
            ToolState::Failed { reason, .. }
            | ToolState::Unavailable { reason }
            | ToolState::Stopped { reason } => {
                return Err(ToolError::unavailable(tool, &reason, None))
            }
            ToolState::Starting | ToolState::Restarting { .. } => {}
        }
        if Instant::now() >= until {
            return Err(ToolError::unavailable(
                tool,
                &format!(
                    "this session's server did not start within {}",
                    humantime::format_duration(within)
                ),
                Some(Duration::from_secs(1)),
            ));
        }
        tokio::time::sleep(START_POLL).await;
    }
}
