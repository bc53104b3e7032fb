//! The root supervisor, `warden`: starts the breaker actor, the tools
//! supervisor, the recovery and health actors, the control socket and the
//! transport, and owns shutdown.
//!
//! Children start in order (tools before transport, so no call can arrive
//! before its tool exists) and stop in reverse. A child that dies is started
//! again, except the transport: the client's session lived in it, so warden
//! shuts down. When the MCP session ends the root stops the tree and kills any
//! process group still registered.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::core::names;
use crate::core::runtime::Runtime;
use crate::ops::breaker::BreakerActor;
use crate::ops::control::ControlActor;
use crate::ops::health::HealthActor;
use crate::ops::recovery::RecoveryActor;
use crate::supervise::tools::ToolsSupervisor;
use crate::supervise::transport::{TransportActor, TransportArgs};

/// The registered name of the root supervisor.
pub const NAME: &str = names::ROOT;
/// How long children get to stop before they are killed.
const STOP_CHILDREN_DEADLINE: Duration = Duration::from_secs(5);
/// How often killed cells are removed and, as subreaper, adopted processes swept.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

pub struct Root;

pub enum RootMsg {
    /// The MCP session is over: shut warden down.
    SessionEnded,
}

/// The root's children, in start order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Child {
    Breaker,
    Tools,
    Recovery,
    Health,
    Control,
    Transport,
}

impl Child {
    const START_ORDER: [Child; 6] = [
        Child::Breaker,
        Child::Tools,
        // Recovery before health, so the first sample has somewhere to go.
        Child::Recovery,
        Child::Health,
        Child::Control,
        Child::Transport,
    ];

    fn name(self) -> &'static str {
        match self {
            Child::Breaker => names::BREAKER,
            Child::Tools => names::TOOLS,
            Child::Recovery => names::RECOVERY,
            Child::Health => names::HEALTH,
            Child::Control => names::CONTROL,
            Child::Transport => names::TRANSPORT,
        }
    }
}

pub struct RootState {
    runtime: Arc<Runtime>,
    children: Vec<(Child, ActorCell)>,
    /// Stops the optional HTTP listener when dropped (also if `pre_start` fails).
    /// The HTTP listener: cancelling it stops it, and its task ends once
    /// its connections have finished what they were sending.
    http: Option<(tokio_util::sync::DropGuard, tokio::task::JoinHandle<()>)>,
}

impl Actor for Root {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = Arc<Runtime>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        runtime: Arc<Runtime>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = RootState {
            runtime,
            children: Vec::new(),
            http: None,
        };
        state.runtime.set_actor(NAME, "running");
        for child in Child::START_ORDER {
            state.start(&myself, child).await?;
        }
        state.http = start_http(&state.runtime).await;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RootMsg::SessionEnded => {
                state.runtime.draining.cancel();
                state.runtime.kill_all.cancel();
                myself.stop(Some("session ended".into()));
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        while let Some((_, cell)) = state.children.pop() {
            let _ = cell
                .stop_and_wait(Some("shutdown".into()), Some(STOP_CHILDREN_DEADLINE))
                .await;
        }
        let killed = state.runtime.groups.kill_all();
        if killed > 0 {
            tracing::warn!(
                actor = NAME,
                groups = killed,
                "killed process groups left at shutdown"
            );
        }
        // Last, so that /health answers 503 (draining) while the tree stops;
        // the answers still being sent get their moment to finish.
        if let Some((stop, serving)) = state.http.take() {
            drop(stop);
            let flush = crate::ops::http::SHUTDOWN_FLUSH + std::time::Duration::from_millis(500);
            let _ = tokio::time::timeout(flush, serving).await;
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Some((cell, why)) = crate::supervise::tools::child_ended(event) else {
            return Ok(());
        };
        if state.runtime.draining.is_cancelled() {
            return Ok(());
        }
        let Some(i) = state
            .children
            .iter()
            .position(|(_, c)| c.get_id() == cell.get_id())
        else {
            return Ok(());
        };
        let (child, _) = state.children.remove(i);
        state.runtime.set_actor(child.name(), "stopped");
        state.restart_child(&myself, child, &why).await;
        Ok(())
    }
}

/// The optional HTTP listener (`[http] listen`). One that cannot bind is
/// logged, not fatal: the client's MCP session matters more.
async fn start_http(
    runtime: &Arc<Runtime>,
) -> Option<(tokio_util::sync::DropGuard, tokio::task::JoinHandle<()>)> {
    let listen = &runtime.config.http.listen;
    if listen.is_empty() {
        return None;
    }
    match crate::ops::http::bind(listen).await {
        Ok(listener) => {
            let mcp = runtime.config.http.mcp;
            tracing::info!(actor = NAME, %listen, mcp, "HTTP listener ready: /metrics, /health, /ready{}", if mcp { ", /mcp" } else { "" });
            if runtime.config.mcp_unguarded() {
                tracing::warn!(actor = NAME, %listen, "MCP is served beyond this machine with no authorization: anyone who reaches this address can run every tool");
            }
            let stop = tokio_util::sync::CancellationToken::new();
            let mut limits = crate::ops::http::LIMITS;
            let mut router = crate::ops::http::router(runtime.clone(), limits);
            if mcp {
                // Each session may hold a GET stream open besides its POSTs.
                limits.max_connections = limits
                    .max_connections
                    .max(2 * runtime.config.http.max_sessions + 16);
                router = router.merge(crate::mcp::http::router(runtime.clone(), stop.clone()));
            }
            let serving = tokio::spawn(crate::ops::http::serve(
                listener,
                router,
                stop.clone(),
                limits,
            ));
            Some((stop.drop_guard(), serving))
        }
        Err(e) => {
            tracing::error!(actor = NAME, %listen, error = %e, "cannot listen for HTTP; going on without it");
            None
        }
    }
}

impl RootState {
    async fn start(
        &mut self,
        myself: &ActorRef<RootMsg>,
        child: Child,
    ) -> Result<(), ActorProcessingErr> {
        let name = Some(child.name().to_string());
        let sup = myself.get_cell();
        let rt = self.runtime.clone();
        let cell = match child {
            Child::Breaker => Actor::spawn_linked(name, BreakerActor, rt, sup)
                .await?
                .0
                .get_cell(),
            Child::Tools => Actor::spawn_linked(name, ToolsSupervisor, rt, sup)
                .await?
                .0
                .get_cell(),
            Child::Recovery => Actor::spawn_linked(name, RecoveryActor, rt, sup)
                .await?
                .0
                .get_cell(),
            Child::Health => Actor::spawn_linked(name, HealthActor, rt, sup)
                .await?
                .0
                .get_cell(),
            Child::Control => Actor::spawn_linked(name, ControlActor, rt, sup)
                .await?
                .0
                .get_cell(),
            Child::Transport => {
                let args = TransportArgs {
                    runtime: rt,
                    root: myself.clone(),
                };
                Actor::spawn_linked(name, TransportActor, args, sup)
                    .await?
                    .0
                    .get_cell()
            }
        };
        self.children.push((child, cell));
        self.runtime.set_actor(child.name(), "running");
        Ok(())
    }

    /// A child died. Its state lives in `Runtime` (tool entries, breakers), so
    /// a new one picks up where it left off; the transport cannot be replaced.
    async fn restart_child(&mut self, myself: &ActorRef<RootMsg>, child: Child, why: &str) {
        if child == Child::Transport {
            tracing::error!(actor = NAME, %why, "transport ended; shutting down");
            self.runtime.draining.cancel();
            self.runtime.kill_all.cancel();
            myself.stop(Some("transport lost".into()));
            return;
        }
        tracing::error!(actor = NAME, child = child.name(), %why, "child ended; starting a new one");
        self.runtime.count_restart(child.name());
        if let Err(e) = self.start(myself, child).await {
            tracing::error!(actor = NAME, child = child.name(), error = %e, "restart failed; shutting down");
            myself.stop(Some(format!("{} lost", child.name())));
        }
    }
}

/// How long past `shutdown_grace` the whole shutdown may take before warden
/// exits without waiting for the rest.
const SHUTDOWN_DEADLINE_EXTRA: Duration = Duration::from_secs(5);

/// SIGTERM or SIGINT: drain. A second one: stop now, killing what runs.
async fn on_signals(
    draining: tokio_util::sync::CancellationToken,
    groups: Arc<crate::exec::Groups>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!(
            actor = NAME,
            "cannot install signal handlers; SIGTERM will not drain"
        );
        return;
    };
    let mut seen = 0;
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        seen += 1;
        if seen == 1 {
            tracing::info!(
                actor = NAME,
                "signal: draining (send it again to stop at once)"
            );
            draining.cancel();
        } else {
            tracing::warn!(actor = NAME, "second signal: stopping at once");
            groups.close();
            std::process::exit(1);
        }
    }
}

/// Runs `warden serve` until the MCP session ends or a stop is requested.
pub async fn serve(runtime: Arc<Runtime>) -> Result<(), ractor::SpawnErr> {
    // A panic is a crash the supervisors handle; it belongs in the log, not as
    // raw text on stderr.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(actor = "warden", panic = %info, "an actor panicked");
    }));
    let triggers = crate::supervise::reload::triggers(&runtime);
    let (_root, handle) = Actor::spawn(Some(NAME.into()), Root, runtime.clone()).await?;
    let signals = tokio::spawn(on_signals(runtime.draining.clone(), runtime.groups.clone()));
    let reloader = tokio::spawn(crate::supervise::reload::run(runtime.clone(), triggers));
    // Removes killed cells once empty; as subreaper, finds and ends what left its group.
    let sweeper = tokio::spawn({
        let groups = runtime.groups.clone();
        async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            loop {
                every.tick().await;
                groups.sweep();
            }
        }
    });
    // The drain: from the first signal, calls in flight have `shutdown_grace`
    // to finish; then every session ends, its calls cancelled. Every wait has
    // a deadline, shutdown too: a client that stops reading its stdout must
    // not keep warden alive. Past grace + this, warden just exits.
    let grace = runtime.config.server.shutdown_grace;
    let drain = async {
        runtime.draining.cancelled().await;
        tokio::time::sleep(grace).await;
        if !runtime.kill_all.is_cancelled() {
            tracing::warn!(actor = NAME, in_flight = runtime.in_flight(), grace = %humantime::format_duration(grace), "shutdown grace over; ending the sessions and their calls");
            runtime.kill_all.cancel();
        }
        tokio::time::sleep(SHUTDOWN_DEADLINE_EXTRA).await;
    };
    tokio::select! {
        _ = handle => {}
        _ = drain => {
            tracing::error!(actor = NAME, deadline = %humantime::format_duration(grace + SHUTDOWN_DEADLINE_EXTRA), "shutdown did not finish in time; exiting anyway");
        }
    }
    signals.abort();
    reloader.abort();
    sweeper.abort();
    runtime.groups.close();
    Ok(())
}
