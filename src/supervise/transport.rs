//! The transport actor, `transport`: the stdio client's session in the
//! supervision tree. It runs the session (`mcp::stdio`) in a task and tells
//! the root when it ends; `warden serve` on stdio exits then.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use crate::core::names;
use crate::core::runtime::Runtime;
use crate::supervise::root::RootMsg;

pub struct TransportActor;

pub enum TransportMsg {
    /// The stdio session is over, for the reason given.
    SessionEnded(String),
}

pub struct TransportArgs {
    pub runtime: Arc<Runtime>,
    pub root: ActorRef<RootMsg>,
}

pub struct TransportState {
    root: ActorRef<RootMsg>,
    session: JoinHandle<()>,
}

impl Drop for TransportState {
    /// A killed actor skips `post_stop`; the session ends with it anyway.
    fn drop(&mut self) {
        self.session.abort();
    }
}

impl Actor for TransportActor {
    type Msg = TransportMsg;
    type State = TransportState;
    type Arguments = TransportArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TransportMsg>,
        args: TransportArgs,
    ) -> Result<TransportState, ActorProcessingErr> {
        let runtime = args.runtime;
        let session = tokio::spawn(async move {
            let reason = crate::mcp::stdio::serve(runtime).await;
            let _ = myself.send_message(TransportMsg::SessionEnded(reason));
        });
        Ok(TransportState {
            root: args.root,
            session,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<TransportMsg>,
        msg: TransportMsg,
        state: &mut TransportState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            // The root stops the tree, this actor with it: stopping here
            // would reach the root first, as a supervision event, and read
            // as the transport being lost.
            TransportMsg::SessionEnded(reason) => {
                tracing::info!(actor = names::TRANSPORT, %reason, "MCP session ended");
                let _ = state.root.send_message(RootMsg::SessionEnded);
            }
        }
        Ok(())
    }
}
