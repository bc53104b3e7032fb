//! Protocol bridging: a 2026-07-28 client takes no requests during a call,
//! so when the MCP server behind its call (which speaks an older protocol)
//! asks something — sampling, elicitation, roots — the call is answered
//! `input_required` with the question, and goes on waiting. The client's
//! retry, carrying its answers and the `requestState` warden gave, takes
//! the answers down and waits for the tool's result, or the next question.
//!
//! The call runs in a task of its own from its first request, holding its
//! session (over HTTP, a place among `max_sessions`) and its place in its
//! tool's gate: the tool's `concurrency` bounds the calls waiting. A call
//! waits `server.input_wait` for the retry and is then cancelled, down to its
//! server. The server is mid-request, so the retry must reach this process:
//! another replica answers it with an error naming the `requestState`.

// Sampling and roots are deprecated in 2026-07-28 (SEP-2577), but the
// servers behind warden speak older protocols, where they are not.
#![allow(deprecated)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    ClientCapabilities, ClientResult, CreateMessageResult, ElicitResult, InputRequest,
    InputRequests, InputRequiredResult, InputResponses, ListRootsResult, ServerRequest,
};
use rmcp::ErrorData as McpError;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::core::call::{Asker, BoxFuture, CallError, Payload, ProgressFn, ToolResult};
use crate::core::error::ToolError;
use crate::core::names;

/// Questions a call's server may have open at once before the next one
/// waits for room (a server asks one at a time in practice).
const OPEN_QUESTIONS: usize = 8;

/// The calls of 2026-07-28 clients waiting for their clients' retries, by
/// the `requestState` each was answered with.
pub struct Bridge {
    waiting: Mutex<HashMap<String, Waiting>>,
    wait: Duration,
}

/// A call that asked its client something and waits for the retry.
struct Waiting {
    call: Bridged,
    tool: String,
    principal: Option<String>,
    /// Cancels the call when the wait is over, unless the retry came.
    expiry: tokio::task::AbortHandle,
}

/// What a round of a bridged call came to.
pub enum Round {
    /// The call's answer.
    Done(Result<ToolResult, CallError>),
    /// Its server asks the client: the call waits for the retry.
    Asked(InputRequiredResult),
}

/// What the task running a bridged call gives the runtime.
pub struct CallParts {
    pub cancel: CancellationToken,
    pub progress: ProgressFn,
    pub asker: Arc<dyn Asker>,
}

impl Bridge {
    pub fn new(wait: Duration) -> Arc<Bridge> {
        Arc::new(Bridge {
            waiting: Mutex::new(HashMap::new()),
            wait,
        })
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a call in a task of its own: `run` makes its future from the
    /// parts, the asker turning its server's requests into questions for
    /// a client that declared `caps`.
    pub fn start<F>(caps: Option<ClientCapabilities>, run: impl FnOnce(CallParts) -> F) -> Bridged
    where
        F: Future<Output = Result<ToolResult, CallError>> + Send + 'static,
    {
        let cancel = CancellationToken::new();
        let (asks_tx, asks) = mpsc::channel(OPEN_QUESTIONS);
        let (done_tx, done) = oneshot::channel();
        let relay: Arc<Mutex<Option<ProgressFn>>> = Arc::default();
        let progress: ProgressFn = {
            let relay = relay.clone();
            Arc::new(move |p| {
                let sink = relay.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let Some(sink) = sink {
                    sink(p);
                }
            })
        };
        let asker = Arc::new(Questions {
            tx: asks_tx,
            caps: caps.unwrap_or_default(),
        });
        let call = run(CallParts {
            cancel: cancel.clone(),
            progress,
            asker,
        });
        tokio::spawn(async move {
            let _ = done_tx.send(call.await);
        });
        Bridged {
            done,
            asks,
            open: BTreeMap::new(),
            asked: 0,
            relay,
            cancel: cancel.clone(),
            _cancel_on_drop: cancel.drop_guard(),
        }
    }

    /// The call a retry names, with the client's answers taken down to its
    /// server: only for the tool it called and the principal that called it.
    pub fn resume(
        &self,
        state: &str,
        tool: &str,
        principal: Option<&str>,
        answers: InputResponses,
    ) -> Result<Bridged, McpError> {
        let mut waiting = self.waiting();
        let found = match waiting.get(state) {
            None => Err(McpError::invalid_params(
                "requestState names no call waiting for input here: it was answered already, its wait (server.input_wait) is over, or another warden holds it; call the tool again",
                Some(json!({"field": "requestState"})),
            )),
            Some(w) if w.tool != tool => Err(McpError::invalid_params(
                format!(
                    "requestState belongs to a call of `{}`, not `{tool}`",
                    w.tool
                ),
                Some(json!({"field": "name", "value": tool})),
            )),
            Some(w) if w.principal.as_deref() != principal => Err(McpError::invalid_request(
                "requestState belongs to another principal's call",
                None,
            )),
            Some(_) => Ok(()),
        };
        found?;
        let Some(Waiting {
            mut call, expiry, ..
        }) = waiting.remove(state)
        else {
            unreachable!("checked under the same lock")
        };
        drop(waiting);
        expiry.abort();
        call.answer(answers);
        Ok(call)
    }

    /// Runs `call` until it is answered or its server asks something; the
    /// call's progress goes to `progress` meanwhile. A call that asks waits
    /// here for the retry. A client gone before the round ends cancels it.
    pub async fn round(
        self: &Arc<Self>,
        mut call: Bridged,
        tool: &str,
        principal: Option<&str>,
        progress: Option<ProgressFn>,
        client_gone: &CancellationToken,
    ) -> Round {
        call.set_progress(progress);
        let step = tokio::select! {
            step = call.step() => step,
            _ = client_gone.cancelled() => {
                call.cancel.cancel();
                Some(answer_of((&mut call.done).await))
            }
        };
        call.set_progress(None);
        if let Some(done) = step {
            return Round::Done(done);
        }
        let questions = call.questions();
        let state = new_state();
        let expiry = {
            let (bridge, state, wait) = (Arc::downgrade(self), state.clone(), self.wait);
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let Some(bridge) = bridge.upgrade() else {
                    return;
                };
                // Dropping the call cancels it.
                let expired = bridge.waiting().remove(&state);
                if let Some(w) = expired {
                    tracing::info!(actor = names::TRANSPORT, tool = %w.tool, wait = %humantime::format_duration(wait), "a call waiting for its client's input was cancelled: no retry came");
                }
            })
            .abort_handle()
        };
        self.waiting().insert(
            state.clone(),
            Waiting {
                call,
                tool: tool.to_string(),
                principal: principal.map(str::to_string),
                expiry,
            },
        );
        Round::Asked(InputRequiredResult::new(Some(questions), Some(state)))
    }
}

/// The answer the call's task sent.
fn answer_of(
    done: Result<Result<ToolResult, CallError>, oneshot::error::RecvError>,
) -> Result<ToolResult, CallError> {
    done.unwrap_or_else(|_| {
        Ok(Err(ToolError::internal(
            "the task running the call ended without an answer",
        )))
    })
}

/// A fresh `requestState`: 128 random bits, so that it cannot be guessed.
fn new_state() -> String {
    let mut bytes = [0u8; 16];
    // The kernel's generator; should it fail, the time and a counter
    // still name one call, and the principal check still holds.
    if getrandom::fill(&mut bytes).is_err() {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes[..8].copy_from_slice(&t.to_le_bytes());
        bytes[8..].copy_from_slice(&n.to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A call of a 2026-07-28 client, running in its own task.
pub struct Bridged {
    done: oneshot::Receiver<Result<ToolResult, CallError>>,
    /// The server's requests, as they come.
    asks: mpsc::Receiver<Question>,
    /// Asked of the client and not answered yet, by key.
    open: BTreeMap<String, Question>,
    asked: u64,
    /// Where the call's progress goes: the client's request of this round.
    relay: Arc<Mutex<Option<ProgressFn>>>,
    cancel: CancellationToken,
    /// A call nobody will retry (its wait over, its client gone) is cancelled.
    _cancel_on_drop: DropGuard,
}

impl Bridged {
    fn set_progress(&self, sink: Option<ProgressFn>) {
        *self.relay.lock().unwrap_or_else(|p| p.into_inner()) = sink;
    }

    /// Waits until the call is answered, or something is asked of its
    /// client (`None`).
    async fn step(&mut self) -> Option<Result<ToolResult, CallError>> {
        // Questions whose call stopped waiting for them are not asked again.
        self.open.retain(|_, q| !q.reply.is_closed());
        if self.open.is_empty() {
            tokio::select! {
                done = &mut self.done => return Some(answer_of(done)),
                q = self.asks.recv() => match q {
                    Some(q) => self.keep(q),
                    // The call ended: its answer is on its way.
                    None => return Some(answer_of((&mut self.done).await)),
                },
            }
        }
        // Whatever else the server asked meanwhile goes in the same answer.
        while let Ok(q) = self.asks.try_recv() {
            self.keep(q);
        }
        None
    }

    fn keep(&mut self, q: Question) {
        self.asked += 1;
        self.open.insert(self.asked.to_string(), q);
    }

    /// The open questions, as the client reads them.
    fn questions(&self) -> InputRequests {
        self.open
            .iter()
            .map(|(key, q)| (key.clone(), q.request.clone()))
            .collect()
    }

    /// Takes the client's answers down to the questions they answer; an
    /// answer that is not the result its question needs reaches the server
    /// as an error saying so. Questions left unanswered are asked again.
    fn answer(&mut self, answers: InputResponses) {
        for (key, value) in answers {
            if let Some(q) = self.open.remove(&key) {
                let answer = q.read(value);
                let _ = q.reply.send(answer);
            }
        }
    }
}

/// A server's request, waiting for the client's answer.
struct Question {
    request: InputRequest,
    reply: oneshot::Sender<Result<ClientResult, McpError>>,
}

impl Question {
    /// The client's answer as the result the request needs.
    fn read(&self, value: Value) -> Result<ClientResult, McpError> {
        fn parse<T: serde::de::DeserializeOwned>(value: Value, what: &str) -> Result<T, McpError> {
            serde_json::from_value(value).map_err(|e| {
                McpError::invalid_params(
                    format!("the client's answer to {what} is not a valid result: {e}"),
                    None,
                )
            })
        }
        Ok(match &self.request {
            InputRequest::CreateMessage(_) => {
                ClientResult::CreateMessageResult(Box::new(parse::<CreateMessageResult>(
                    value,
                    "sampling/createMessage",
                )?))
            }
            InputRequest::Elicitation(_) => {
                ClientResult::ElicitResult(parse::<ElicitResult>(value, "elicitation/create")?)
            }
            InputRequest::ListRoots(_) => {
                ClientResult::ListRootsResult(parse::<ListRootsResult>(value, "roots/list")?)
            }
            _ => {
                return Err(McpError::internal_error(
                    "a question warden cannot read",
                    None,
                ))
            }
        })
    }
}

/// The asker of a bridged call: a server's request becomes a question for
/// the client's next answer, if the client declared what it needs.
struct Questions {
    tx: mpsc::Sender<Question>,
    caps: ClientCapabilities,
}

impl Asker for Questions {
    fn ask(&self, request: Payload) -> BoxFuture<'static, Payload> {
        let not_here =
            |why: String| McpError::new(rmcp::model::ErrorCode::METHOD_NOT_FOUND, why, None);
        let question = match request.downcast::<ServerRequest>() {
            Err(_) => Err(McpError::internal_error("a request that is not MCP", None)),
            Ok(ServerRequest::CreateMessageRequest(r)) if self.caps.sampling.is_some() => {
                Ok(InputRequest::CreateMessage(r))
            }
            Ok(ServerRequest::ElicitRequest(r)) if self.caps.elicitation.is_some() => {
                Ok(InputRequest::Elicitation(r))
            }
            Ok(ServerRequest::ListRootsRequest(r)) if self.caps.roots.is_some() => {
                Ok(InputRequest::ListRoots(r))
            }
            Ok(ServerRequest::CreateMessageRequest(_)) => {
                Err(not_here("the client does not support sampling".into()))
            }
            Ok(ServerRequest::ElicitRequest(_)) => {
                Err(not_here("the client does not support elicitation".into()))
            }
            Ok(ServerRequest::ListRootsRequest(_)) => {
                Err(not_here("the client does not support roots".into()))
            }
            Ok(_) => Err(not_here("the client does not support this request".into())),
        };
        let tx = self.tx.clone();
        Box::pin(async move {
            let answer = match question {
                Err(e) => Err(e),
                Ok(request) => {
                    let (reply, answer) = oneshot::channel();
                    match tx.send(Question { request, reply }).await {
                        Err(_) => Err(McpError::internal_error("the call has ended", None)),
                        Ok(()) => answer.await.unwrap_or_else(|_| {
                            Err(McpError::internal_error(
                                "the client did not answer: its call ended or its wait (server.input_wait) is over",
                                None,
                            ))
                        }),
                    }
                }
            };
            Payload::new(answer)
        })
    }
}
