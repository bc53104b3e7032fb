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
//! To an MCP server over its pipes ([`Calls`]): a `tools/call` whose caller
//! wants no progress is written straight onto the server's stdin, with an id
//! of warden's own (from 2^32 up, past the ids rmcp counts from 0), and its
//! answer goes from the line read off the server's stdout straight to the
//! waiting call. rmcp's client loop would take the request over a channel,
//! spawn its write, and hand the answer over after a turn of its loop.
//!
//! Everything else goes through rmcp: every other request, a call with a
//! progress token downstream, a 2026-07-28 request or server.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rmcp::model::{
    CallToolResult, ClientRequest, ErrorData, GetMeta, JsonObject, JsonRpcRequest, RequestId,
    RequestMetaObject, ServerJsonRpcMessage, ServerResult,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{Peer, ServerHandler};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::io::AsyncWrite;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::core::call::BoxFuture;
use crate::mcp::server::WardenServer;
use crate::mcp::wire::Outbox;

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
        // A request naming its protocol version is a 2026-07-28 one: rmcp
        // shapes its result (cache hints, `input_required`).
        let takes = request.request.get_meta().protocol_version().is_none()
            && !self.server.session().is_stateless();
        let (id, mut call) = match request {
            JsonRpcRequest {
                id,
                request: ClientRequest::CallToolRequest(call),
                ..
            } if takes => (id, call),
            request => return Err(request),
        };
        // As rmcp does, the request's `_meta` goes to the handler's context.
        let meta = std::mem::take(call.extensions.get_or_insert_default::<RequestMetaObject>());
        let ct = CancellationToken::new();
        let mut context = RequestContext::new(id.clone(), peer.clone());
        context.ct = ct.clone();
        context.meta = meta;
        context.extensions = std::mem::take(&mut call.extensions);
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

/// The id of the first call the lane sends a server: past every id rmcp's
/// counter (a `u32` from 0) gives the requests it sends the same server.
const FIRST_ID: i64 = 1 << 32;

/// What a server answered a call the lane sent it.
pub enum Reply {
    Done(CallToolResult),
    /// A JSON-RPC error.
    Refused(ErrorData),
    /// A result that does not read as a tool result (a task's, say).
    NotAToolResult,
}

/// Where the lane writes its lines: an MCP server's stdin.
pub trait Wire: Send + Sync {
    fn post(&self, line: &Outgoing<'_>) -> BoxFuture<'static, io::Result<()>>;
}

impl<W: AsyncWrite + Unpin + Send + 'static> Wire for Arc<Outbox<W>> {
    fn post(&self, line: &Outgoing<'_>) -> BoxFuture<'static, io::Result<()>> {
        Box::pin(self.send_later(line, false))
    }
}

/// A line the lane writes to a server.
#[derive(Serialize)]
pub struct Outgoing<'a> {
    jsonrpc: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<i64>,
    method: &'static str,
    params: Params<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Params<'a> {
    Call {
        name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        arguments: Option<&'a JsonObject>,
    },
    Cancelled {
        #[serde(rename = "requestId")]
        request_id: i64,
        reason: &'a str,
    },
}

type Waiting = HashMap<i64, oneshot::Sender<Reply>>;

/// One MCP server's pipes: the `tools/call` requests the lane sends it.
pub struct Calls {
    wire: Box<dyn Wire>,
    next: AtomicI64,
    /// Calls sent and not answered, by id; `None` once the server's output
    /// has ended (every waiting call hears it as its answer's sender going).
    waiting: Mutex<Option<Waiting>>,
}

/// The server's output has ended: the call was not sent.
#[derive(Debug)]
pub struct Gone;

/// A call sent: its answer comes on `answer`. Dropped, it stops waiting.
pub struct Sent {
    calls: Arc<Calls>,
    id: i64,
    pub answer: oneshot::Receiver<Reply>,
}

impl Calls {
    pub fn new(wire: impl Wire + 'static) -> Arc<Calls> {
        Arc::new(Calls {
            wire: Box::new(wire),
            next: AtomicI64::new(FIRST_ID),
            waiting: Mutex::new(Some(HashMap::new())),
        })
    }

    /// Writes a `tools/call` to the server.
    pub async fn send(
        self: &Arc<Self>,
        name: &str,
        arguments: Option<&JsonObject>,
    ) -> Result<Sent, Gone> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, answer) = oneshot::channel();
        // Waiting before the line goes: the answer can be read before the
        // write returns.
        self.waiting().as_mut().ok_or(Gone)?.insert(id, tx);
        let sent = Sent {
            calls: self.clone(),
            id,
            answer,
        };
        let line = Outgoing {
            jsonrpc: "2.0",
            id: Some(id),
            method: "tools/call",
            params: Params::Call { name, arguments },
        };
        self.wire.post(&line).await.map_err(|_| Gone)?;
        Ok(sent)
    }

    /// A line from the server: if it answers a call of the lane, the answer
    /// goes to that call and `true` says the line is taken.
    pub fn answer(&self, line: &[u8]) -> bool {
        #[derive(Deserialize)]
        struct Answer<'a> {
            id: Option<RequestId>,
            #[serde(borrow)]
            result: Option<&'a RawValue>,
            error: Option<ErrorData>,
        }
        let mut waiting = self.waiting();
        let Some(calls) = waiting.as_mut().filter(|w| !w.is_empty()) else {
            return false;
        };
        let Ok(Answer {
            id: Some(RequestId::Number(id)),
            result,
            error,
        }) = serde_json::from_slice::<Answer>(line)
        else {
            return false;
        };
        if result.is_none() && error.is_none() {
            return false;
        }
        let Some(tx) = calls.remove(&id) else {
            return false;
        };
        drop(waiting);
        let reply = match (result, error) {
            (_, Some(error)) => Reply::Refused(error),
            (Some(result), None) => match serde_json::from_str(result.get()) {
                Ok(result) => Reply::Done(result),
                Err(_) => Reply::NotAToolResult,
            },
            (None, None) => return false,
        };
        let _ = tx.send(reply);
        true
    }

    /// The server's output has ended: the calls waiting hear it, and no
    /// call is sent any more.
    pub fn end(&self) {
        self.waiting().take();
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Option<Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Sent {
    /// Tells the server to stop the call; its answer is no longer awaited.
    pub async fn cancel(&self, reason: &str) {
        if let Some(w) = self.calls.waiting().as_mut() {
            w.remove(&self.id);
        }
        let line = Outgoing {
            jsonrpc: "2.0",
            id: None,
            method: "notifications/cancelled",
            params: Params::Cancelled {
                request_id: self.id,
                reason,
            },
        };
        let _ = self.calls.wire.post(&line).await;
    }
}

impl Drop for Sent {
    fn drop(&mut self) {
        if let Some(w) = self.calls.waiting().as_mut() {
            w.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use tokio::io::AsyncBufReadExt;

    /// A lane over an in-memory pipe, and the server's end of it.
    fn lane() -> (
        Arc<Calls>,
        tokio::io::Lines<tokio::io::BufReader<tokio::io::DuplexStream>>,
    ) {
        let (w, r) = tokio::io::duplex(64 * 1024);
        let calls = Calls::new(Arc::new(Outbox::new(w)));
        (calls, tokio::io::BufReader::new(r).lines())
    }

    async fn next(
        lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::io::DuplexStream>>,
    ) -> Value {
        serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn calls_go_out_with_ids_of_their_own_and_their_answers_come_back_to_them() {
        let (calls, mut server) = lane();
        let args = json!({"text": "hi"}).as_object().cloned();
        let mut a = calls.send("echo", args.as_ref()).await.unwrap();
        let mut b = calls.send("echo", None).await.unwrap();
        let first = next(&mut server).await;
        assert_eq!(
            first,
            json!({"jsonrpc": "2.0", "id": FIRST_ID, "method": "tools/call",
                   "params": {"name": "echo", "arguments": {"text": "hi"}}})
        );
        let second = next(&mut server).await;
        assert_eq!(second["id"], FIRST_ID + 1);
        assert!(second["params"].get("arguments").is_none(), "{second}");

        // Not the lane's: a request of the server's, a response to an id of
        // rmcp's, a notification. They go on to rmcp.
        let others = [
            json!({"jsonrpc": "2.0", "id": FIRST_ID, "method": "roots/list"}),
            json!({"jsonrpc": "2.0", "id": 3, "result": {"content": []}}),
            json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {}}),
        ];
        for line in others {
            assert!(!calls.answer(line.to_string().as_bytes()), "{line}");
        }
        // Answers, in any order.
        let error = json!({"jsonrpc": "2.0", "id": FIRST_ID + 1,
                           "error": {"code": -32602, "message": "no such tool"}});
        assert!(calls.answer(error.to_string().as_bytes()));
        let result = json!({"jsonrpc": "2.0", "id": FIRST_ID,
                            "result": {"content": [{"type": "text", "text": "hi"}]}});
        assert!(calls.answer(result.to_string().as_bytes()));
        match (&mut a.answer).await.unwrap() {
            Reply::Done(r) => assert_eq!(r.content.len(), 1),
            _ => panic!("a tool result"),
        }
        match (&mut b.answer).await.unwrap() {
            Reply::Refused(e) => assert_eq!(e.message, "no such tool"),
            _ => panic!("the server's error"),
        }
        // Answered once: the same answer again is not the lane's.
        assert!(!calls.answer(result.to_string().as_bytes()));

        let mut c = calls.send("echo", None).await.unwrap();
        let odd = json!({"jsonrpc": "2.0", "id": FIRST_ID + 2, "result": {"content": 7}});
        assert!(calls.answer(odd.to_string().as_bytes()));
        assert!(matches!(
            (&mut c.answer).await.unwrap(),
            Reply::NotAToolResult
        ));
    }

    #[tokio::test]
    async fn a_cancelled_call_is_told_to_the_server_and_its_late_answer_is_not_the_lanes() {
        let (calls, mut server) = lane();
        let sent = calls.send("sleep", None).await.unwrap();
        next(&mut server).await;
        sent.cancel("timeout").await;
        assert_eq!(
            next(&mut server).await,
            json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                   "params": {"requestId": FIRST_ID, "reason": "timeout"}})
        );
        let late = json!({"jsonrpc": "2.0", "id": FIRST_ID, "result": {"content": []}});
        assert!(!calls.answer(late.to_string().as_bytes()));
        // A call dropped unanswered is forgotten too.
        drop(calls.send("sleep", None).await.unwrap());
        let late = json!({"jsonrpc": "2.0", "id": FIRST_ID + 1, "result": {"content": []}});
        assert!(!calls.answer(late.to_string().as_bytes()));
    }

    #[tokio::test]
    async fn when_the_servers_output_ends_the_waiting_calls_hear_it_and_none_is_sent() {
        let (calls, _server) = lane();
        let mut sent = calls.send("sleep", None).await.unwrap();
        calls.end();
        assert!((&mut sent.answer).await.is_err(), "its sender is gone");
        assert!(calls.send("sleep", None).await.is_err());
    }
}
