//! The root supervisor, `warden`: starts the breaker actor, the tools
//! supervisor, then the transport, and owns shutdown.
//!
//! Children start in order (tools before transport, so no call can arrive
//! before its tool exists) and stop in reverse. When the MCP session ends the
//! root stops the tree and kills any process group still registered.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::breaker::{self, BreakerActor, BreakerMsg};
use crate::runtime::Runtime;
use crate::supervisor::{self, ToolsSupervisor, ToolsSupervisorMsg};
use crate::transport::{self, TransportActor, TransportArgs, TransportMsg};

/// The registered name of the root supervisor.
pub const NAME: &str = "warden";
/// How long children get to stop before they are killed.
const STOP_CHILDREN_DEADLINE: Duration = Duration::from_secs(5);

pub struct Root;

pub enum RootMsg {
    /// The MCP session is over: shut warden down.
    SessionEnded,
}

pub struct RootState {
    runtime: Arc<Runtime>,
    breaker: Option<ActorRef<BreakerMsg>>,
    tools: Option<ActorRef<ToolsSupervisorMsg>>,
    transport: Option<ActorRef<TransportMsg>>,
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
            breaker: None,
            tools: None,
            transport: None,
        };
        state.start_breaker(&myself).await?;
        state.start_tools(&myself).await?;
        let (transport, _) = Actor::spawn_linked(
            Some(transport::NAME.into()),
            TransportActor,
            TransportArgs {
                runtime: state.runtime.clone(),
                root: myself.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        state.transport = Some(transport);
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
        // Reverse start order: the transport first, then the tools.
        for cell in [
            state.transport.take().map(|a| a.get_cell()),
            state.tools.take().map(|a| a.get_cell()),
            state.breaker.take().map(|a| a.get_cell()),
        ]
        .into_iter()
        .flatten()
        {
            let _ = cell
                .stop_and_wait(Some("shutdown".into()), Some(STOP_CHILDREN_DEADLINE))
                .await;
        }
        let killed = crate::exec::kill_all_groups();
        if killed > 0 {
            tracing::warn!(
                actor = "warden",
                groups = killed,
                "killed process groups left at shutdown"
            );
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, e) => (cell, format!("failed: {e}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, format!("stopped: {}", reason.unwrap_or_default()))
            }
            _ => return Ok(()),
        };
        if state.runtime.draining.is_cancelled() {
            return Ok(());
        }
        let id = cell.get_id();
        if state.tools.as_ref().is_some_and(|t| t.get_id() == id) {
            // The tools' live state lives in `Runtime`, so a new supervisor picks it up.
            tracing::error!(actor = "warden", %why, "tools supervisor ended; starting a new one");
            state.tools = None;
            if let Err(e) = state.start_tools(&myself).await {
                tracing::error!(actor = "warden", error = %e, "restarting the tools supervisor failed; shutting down");
                myself.stop(Some("tools supervisor lost".into()));
            }
        } else if state.breaker.as_ref().is_some_and(|b| b.get_id() == id) {
            // Breaker state lives in the tool entries; a new actor re-arms the timers.
            tracing::error!(actor = "warden", %why, "breaker actor ended; starting a new one");
            state.breaker = None;
            if let Err(e) = state.start_breaker(&myself).await {
                tracing::error!(actor = "warden", error = %e, "restarting the breaker actor failed; shutting down");
                myself.stop(Some("breaker lost".into()));
            }
        } else if state.transport.as_ref().is_some_and(|t| t.get_id() == id) {
            // The client's session lived in the transport: nothing left to serve.
            tracing::error!(actor = "warden", %why, "transport ended; shutting down");
            state.transport = None;
            state.runtime.draining.cancel();
            state.runtime.kill_all.cancel();
            myself.stop(Some("transport lost".into()));
        }
        Ok(())
    }
}

impl RootState {
    async fn start_breaker(
        &mut self,
        myself: &ActorRef<RootMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let (breaker, _) = Actor::spawn_linked(
            Some(breaker::NAME.into()),
            BreakerActor,
            self.runtime.clone(),
            myself.get_cell(),
        )
        .await?;
        self.breaker = Some(breaker);
        Ok(())
    }

    async fn start_tools(&mut self, myself: &ActorRef<RootMsg>) -> Result<(), ActorProcessingErr> {
        let (tools, _) = Actor::spawn_linked(
            Some(supervisor::NAME.into()),
            ToolsSupervisor,
            self.runtime.clone(),
            myself.get_cell(),
        )
        .await?;
        self.tools = Some(tools);
        Ok(())
    }
}

/// Runs `warden serve` until the MCP session ends or a stop is requested.
pub async fn serve(runtime: Arc<Runtime>) -> Result<(), ractor::SpawnErr> {
    // A panic is a crash the supervisors handle; it belongs in the log, not as
    // raw text on stderr.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(actor = "warden", panic = %info, "an actor panicked");
    }));
    let (_root, handle) = Actor::spawn(Some(NAME.into()), Root, runtime.clone()).await?;
    let draining = runtime.draining.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!(actor = "warden", "SIGTERM: draining"),
            _ = int.recv() => tracing::info!(actor = "warden", "SIGINT: draining"),
        }
        draining.cancel();
    });
    let _ = handle.await;
    crate::exec::kill_all_groups();
    Ok(())
}
