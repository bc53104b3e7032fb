//! The fast lane for `tools/call`, the request a client repeats thousands
//! of times, past rmcp's service loops on both sides of warden.
//!
//! On warden's own stdio ([`Lane`]): a `tools/call` of a session that began
//! with `initialize` goes from the transport straight to the session's
//! handler, in a task of its own, and its answer straight to stdout. rmcp's
//! loop would spawn the handler, send its answer back to the loop over a
//! channel, and spawn again to write it. The handler is the same
//! `call_tool` rmcp calls, so ids, error shapes, progress and the result
//! are what rmcp would send; what rmcp does around the handler for such a
//! session is done here: a `notifications/cancelled` cancels the call and
//! its answer is not sent, and the result carries no `resultType` (the
//! protocols before 2026-07-28 have none).
//!
//! Everything else goes through rmcp: every other request, and every
//! 2026-07-28 request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rmcp::model::{
    ClientRequest, GetExtensions, GetMeta, JsonRpcRequest, RequestId, ServerJsonRpcMessage,
    ServerResult,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{Peer, ServerHandler};
use tokio_util::sync::CancellationToken;

use crate::core::call::BoxFuture;
use crate::mcp::server::WardenServer;

/// warden's own stdio: the `tools/call` requests of one session.
pub struct Lane {
    server: WardenServer,
    /// The session's client, once rmcp has served `initialize`: until then
    /// every request goes through rmcp.
    peer: OnceLock<Peer<RoleServer>>,
    /// The lane's calls in flight, by id, for `notifications/cancelled`.
    calls: Mutex<HashMap<RequestId, CancellationToken>>,
}

/// A call the lane took: its answer, or `None` when the client cancelled it
/// (its answer is not sent).
pub type Answer = BoxFuture<'static, Option<ServerJsonRpcMessage>>;

impl Lane {
    pub fn new(server: WardenServer) -> Arc<Lane> {
        Arc::new(Lane {
            server,
            peer: OnceLock::new(),
            calls: Mutex::default(),
        })
    }

    /// rmcp has served `initialize`: calls may take the lane from now on.
    pub fn open(&self, peer: Peer<RoleServer>) {
        let _ = self.peer.set(peer);
    }

    /// Takes a `tools/call` of a session on a protocol before 2026-07-28,
    /// and gives any other request back.
    // The request given back is moved on once, as `Verdict` moves it:
    // boxing it would cost an allocation per request.
    #[allow(clippy::result_large_err)]
    pub fn take(
        self: &Arc<Self>,
        request: JsonRpcRequest<ClientRequest>,
    ) -> Result<Answer, JsonRpcRequest<ClientRequest>> {
        let Some(peer) = self.peer.get() else {
            return Err(request);
        };
        let JsonRpcRequest {
            jsonrpc,
            id,
            mut request,
        } = request;
        // A request naming its protocol version is a 2026-07-28 one: rmcp
        // shapes its result (cache hints, `input_required`).
        let versioned = request.get_meta().protocol_version().is_some();
        // As rmcp does, the request's `_meta` goes to the handler's context.
        let meta = std::mem::take(request.get_meta_mut());
        let mut call = match request {
            ClientRequest::CallToolRequest(call)
                if !versioned && !self.server.session().is_stateless() =>
            {
                call
            }
            mut request => {
                *request.get_meta_mut() = meta;
                return Err(JsonRpcRequest {
                    jsonrpc,
                    id,
                    request,
                });
            }
        };
        let ct = CancellationToken::new();
        let mut context = RequestContext::new(id.clone(), peer.clone());
        context.ct = ct.clone();
        context.meta = meta;
        context.extensions = std::mem::take(call.extensions_mut());
        self.calls().insert(id.clone(), ct.clone());
        let lane = self.clone();
        Ok(Box::pin(async move {
            let result = lane.server.call_tool(call.params, context).await;
            lane.calls().remove(&id);
            if ct.is_cancelled() {
                return None;
            }
            Some(match result {
                Ok(response) => {
                    let mut result = ServerResult::from(response);
                    result.strip_result_type_for_legacy_peer();
                    ServerJsonRpcMessage::response(result, id)
                }
                Err(error) => ServerJsonRpcMessage::error(error, Some(id)),
            })
        }))
    }

    /// The client cancelled the request with this id: if the lane has it,
    /// the call is cancelled and its answer will not be sent.
    pub fn cancel(&self, id: &RequestId) {
        if let Some(ct) = self.calls().get(id) {
            ct.cancel();
        }
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, HashMap<RequestId, CancellationToken>> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }
}
