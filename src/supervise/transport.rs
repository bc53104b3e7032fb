//! The transport actor, `transport`: the stdio client's session in the
//! supervision tree. It runs the session (`mcp::stdio`) in a task and tells
//! the root when it ends; `warden serve` on stdio exits then. Serving MCP over
//! HTTP (`http.mcp`), the sessions live in the listener instead, and this
//! actor ends warden's run once a drain has let the calls in flight finish.

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

/// Over HTTP nothing ends the run but a drain (SIGTERM): it returns once the
/// calls in flight have finished and `http.drain_notice` has passed, or once
/// the root has cancelled the calls at the end of the grace and they have
/// been answered (1 s at most). Stateless requests still being answered
/// (a `subscriptions/listen` ends with a final result when warden drains)
/// get that same second: stopping rmcp's service under one lost its answer.
async fn http_drain(runtime: &Runtime) -> String {
    const POLL: std::time::Duration = std::time::Duration::from_millis(10);
    runtime.draining.cancelled().await;
    let notice = tokio::time::Instant::now() + runtime.config.http.drain_notice;
    while (runtime.in_flight() > 0 || tokio::time::Instant::now() < notice)
        && !runtime.kill_all.is_cancelled()
    {
        tokio::time::sleep(POLL).await;
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    while (runtime.in_flight() > 0 || runtime.stateless_open() > 0)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(POLL).await;
    }
    format!("drained ({} calls left)", runtime.in_flight())
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
            let reason = if runtime.config.http.mcp {
                http_drain(&runtime).await
            } else {
                crate::mcp::stdio::serve(runtime).await
            };
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
