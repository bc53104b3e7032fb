//! A tool actor: a ractor factory of `concurrency` workers in front of a
//! bounded queue of `queue` jobs.
//!
//! The queue bound is what bounds a tool's concurrency: a job that finds the
//! queue full is discarded (`DiscardMode::Newest`) and its caller answered
//! `busy` at once by [`AnswerBusy`]. A worker runs one call at a time under the
//! call's deadline; a worker that panics is replaced by the factory, and the
//! caller of its call sees its reply port dropped.

use std::path::PathBuf;
use std::sync::Arc;

use ractor::factory::{
    queues::DefaultQueue, routing::QueuerRouting, DiscardHandler, DiscardMode, DiscardReason,
    DiscardSettings, Factory, FactoryArguments, FactoryMessage, Job, Worker, WorkerBuilder,
    WorkerId,
};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr};
use rmcp::model::CallToolResult;
use serde_json::{Map, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backends::{builtin, command};
use crate::config::{ToolKindSpec, ToolSpec};
use crate::core::error::ToolError;
use crate::core::runtime::Runtime;
use crate::supervise::tools::ToolEntry;

/// One progress report of a running call.
#[derive(Debug, Clone)]
pub struct Progress {
    pub progress: f64,
    pub total: Option<f64>,
    pub message: Option<String>,
}

/// Where a worker sends progress; the transport maps it onto the client's token.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// What a successful call produced.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutput {
    pub text: String,
    /// Extra lines for the reader, such as a truncation notice.
    pub notes: Vec<String>,
    /// A downstream MCP server's whole result (every content type, `isError`,
    /// `structuredContent`), passed on unchanged instead of `text`.
    pub downstream: Option<Box<CallToolResult>>,
}

impl ToolOutput {
    pub fn text(text: impl Into<String>) -> Self {
        ToolOutput {
            text: text.into(),
            notes: Vec::new(),
            downstream: None,
        }
    }

    pub fn downstream(result: CallToolResult) -> Self {
        ToolOutput {
            text: String::new(),
            notes: Vec::new(),
            downstream: Some(Box::new(result)),
        }
    }
}

pub type ToolResult = Result<ToolOutput, ToolError>;

/// One call, as a job in a tool's queue.
pub struct Call {
    /// The arguments, already validated against the tool's schema.
    pub args: Map<String, Value>,
    /// Cancelled when the client cancels, the deadline passes, or warden shuts down.
    pub cancel: CancellationToken,
    pub progress: Option<ProgressFn>,
    /// Taken by whoever answers: the worker, or the discard handler.
    pub reply: Option<RpcReplyPort<ToolResult>>,
}

pub type ToolMsg = FactoryMessage<(), Call>;
pub type ToolRef = ActorRef<ToolMsg>;
type ToolFactory =
    Factory<(), Call, (), ToolWorker, QueuerRouting<(), Call>, DefaultQueue<(), Call>>;

/// The registered name of a tool's actor.
pub fn actor_name(tool: &str) -> String {
    format!("tool:{tool}")
}

/// Spawns the tool's factory under `supervisor`.
pub async fn spawn(
    entry: Arc<ToolEntry>,
    runtime: Arc<Runtime>,
    program: Option<PathBuf>,
    supervisor: ActorCell,
) -> Result<(ToolRef, JoinHandle<()>), SpawnErr> {
    let spec = entry.spec.clone();
    let builder = ToolWorkerBuilder {
        worker: Arc::new(ToolWorker {
            spec: spec.clone(),
            entry: entry.clone(),
            runtime,
            program,
            started: Arc::default(),
        }),
    };
    let args = FactoryArguments::builder()
        .worker_builder(Box::new(builder))
        .queue(Default::default())
        .router(Default::default())
        .num_initial_workers(spec.concurrency)
        .discard_settings(DiscardSettings::Static {
            limit: spec.queue,
            mode: DiscardMode::Newest,
        })
        .discard_handler(Arc::new(AnswerBusy {
            tool: spec.name.clone(),
        }))
        .build();
    Actor::spawn_linked(
        Some(actor_name(&spec.name)),
        ToolFactory::default(),
        args,
        supervisor,
    )
    .await
}

/// Answers a discarded job `busy` instead of dropping it silently.
struct AnswerBusy {
    tool: String,
}

impl DiscardHandler<(), Call> for AnswerBusy {
    fn discard(&self, reason: DiscardReason, job: &mut Job<(), Call>) {
        if let Some(reply) = job.msg.reply.take() {
            let what = format!("Tool `{}`", self.tool);
            let error = match reason {
                DiscardReason::Shutdown => {
                    ToolError::unavailable(&self.tool, "it is stopping", None)
                }
                _ => ToolError::busy(&what),
            };
            let _ = reply.send(Err(error));
        }
    }
}

struct ToolWorkerBuilder {
    worker: Arc<ToolWorker>,
}

impl WorkerBuilder<ToolWorker, ()> for ToolWorkerBuilder {
    fn build(&mut self, _wid: WorkerId) -> (ToolWorker, ()) {
        (ToolWorker::clone(&self.worker), ())
    }
}

/// Runs calls of one tool, one at a time.
#[derive(Clone)]
pub struct ToolWorker {
    spec: Arc<ToolSpec>,
    entry: Arc<ToolEntry>,
    runtime: Arc<Runtime>,
    /// The resolved program of a command tool.
    program: Option<PathBuf>,
    /// Worker ids this factory has started: a second start of an id is the
    /// factory replacing a worker that died.
    started: Arc<std::sync::Mutex<std::collections::HashSet<WorkerId>>>,
}

impl Worker for ToolWorker {
    type Key = ();
    type Message = Call;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        wid: WorkerId,
        _factory: &ActorRef<FactoryMessage<(), Call>>,
        _args: (),
    ) -> Result<(), ActorProcessingErr> {
        let replacement = !self.started.lock().unwrap().insert(wid);
        if replacement {
            // Counted here, at the one place every replacement passes through
            // (a panic, a kill), and charged to the tool's restart budget.
            if let Some(sup) = ractor::registry::where_is(crate::supervise::tools::NAME) {
                let _ =
                    sup.send_message(crate::supervise::tools::ToolsSupervisorMsg::WorkerCrashed(
                        self.spec.name.clone(),
                    ));
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        _wid: WorkerId,
        _factory: &ActorRef<FactoryMessage<(), Call>>,
        Job { msg, key, .. }: Job<(), Call>,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let Call {
            args,
            cancel,
            progress,
            reply,
        } = msg;
        let Some(reply) = reply else { return Ok(key) };
        // Cancelled (by the client, the watchdog or shutdown) while it waited.
        let cancelled = || {
            Err(ToolError::cancelled(
                "The call was cancelled before it started.",
            ))
        };
        if cancel.is_cancelled() {
            let _ = reply.send(cancelled());
            return Ok(key);
        }
        // A permit of the tool's gate: all are free unless the memory policy
        // runs the tool at half concurrency.
        let _permit = tokio::select! {
            permit = self.entry.gate.acquire() => permit,
            _ = cancel.cancelled() => {
                let _ = reply.send(cancelled());
                return Ok(key);
            }
        };
        let _call = self.entry.call_started();
        let started = std::time::Instant::now();
        let work = async {
            match &self.spec.kind {
                ToolKindSpec::Command(cmd) => match &self.program {
                    None => Err(ToolError::internal("command tool without a program")),
                    Some(program) => {
                        command::call(
                            &self.spec,
                            cmd,
                            program,
                            &self.runtime.groups,
                            &args,
                            &cancel,
                            progress.as_ref(),
                        )
                        .await
                    }
                },
                ToolKindSpec::Builtin(b) => builtin::run(*b, &args, &self.runtime, &cancel).await,
                ToolKindSpec::Mcp(_) => Err(ToolError::internal(
                    "an MCP server's calls are forwarded, not run by a worker",
                )),
            }
        };
        // A call honours its cancellation within the grace (exec kills and
        // reaps the group); one that does not is dropped here, so a future
        // that ignores cancellation cannot hold the worker.
        let result = tokio::select! {
            result = work => result,
            _ = async { cancel.cancelled().await; tokio::time::sleep(self.spec.grace).await } => {
                Err(ToolError::cancelled("The call was cancelled and did not stop within the grace; it was dropped."))
            }
        };
        let _ = reply.send(result);
        let deadline = self.spec.timeout + self.spec.grace;
        if started.elapsed() > deadline {
            // Only a call that held the thread gets here: the watchdog in
            // `Runtime::dispatch` answered its caller `timeout` long ago. A
            // worker that blocked once is not trusted again: failing makes the
            // factory replace it, and the supervisor counts the restart.
            let why = format!(
                "a call held its worker for {} (deadline and grace {}); the worker was replaced",
                humantime::format_duration(std::time::Duration::from_millis(
                    started.elapsed().as_millis() as u64
                )),
                humantime::format_duration(deadline)
            );
            self.entry.set_last_error(why.clone());
            tracing::warn!(actor = %actor_name(&self.spec.name), "{why}");
            return Err(why.into());
        }
        Ok(key)
    }
}
