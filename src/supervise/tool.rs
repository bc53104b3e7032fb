//! A command or builtin tool's actor, `tool:<name>`: the supervisor of its
//! `concurrency` workers, one per lane of the tool's gate.
//!
//! The gate (`core::gate`) is the tool's bounded mailbox: `concurrency`
//! calls running, `queue` waiting, beyond that `busy`. A call that holds
//! lane `i` is sent to worker `i`, whose own mailbox therefore never holds
//! more than the one call it runs. A worker runs it on its own task, so the
//! watchdog on the caller's side answers even when a call holds its thread.
//! A worker that panics, is killed, or held a call past its deadline is
//! replaced at once and the replacement counts against the tool's restart
//! budget; the caller of its call is answered `internal`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::{oneshot, watch};

use crate::backends::{builtin, command};
use crate::config::{Builtin, CommandSpec, ToolSpec};
use crate::core::call::{Backend, BoxFuture, Call, ToolResult};
use crate::core::error::ToolError;
use crate::core::registry::ToolEntry;
use crate::core::runtime::Runtime;
use crate::supervise::tools::{child_ended, ToolsSupervisorMsg};

/// How long a call waits for a replacement worker on its lane.
const REPLACEMENT_WAIT: Duration = Duration::from_secs(1);

pub struct ToolActor;

pub struct ToolArgs {
    pub entry: Arc<ToolEntry>,
    pub runtime: Arc<Runtime>,
    pub work: Work,
    /// The tool's backend, whose lanes this actor's workers fill.
    pub lanes: Arc<Workers>,
    pub supervisor: ActorRef<ToolsSupervisorMsg>,
}

/// What a tool's workers run.
pub enum Work {
    /// A command tool, its program resolved.
    Command(CommandSpec, PathBuf),
    Builtin(Builtin),
}

pub struct ToolActorState {
    worker: Arc<Worker>,
    lanes: Arc<Workers>,
    /// Which lane each live worker serves.
    by_id: std::collections::HashMap<ActorId, usize>,
    supervisor: ActorRef<ToolsSupervisorMsg>,
}

pub enum ToolMsg {}

impl Actor for ToolActor {
    type Msg = ToolMsg;
    type State = ToolActorState;
    type Arguments = ToolArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ToolMsg>,
        args: ToolArgs,
    ) -> Result<ToolActorState, ActorProcessingErr> {
        let spec = args.entry.spec.clone();
        let worker = Arc::new(Worker {
            spec: spec.clone(),
            runtime: args.runtime,
            work: args.work,
        });
        let mut state = ToolActorState {
            worker,
            lanes: args.lanes,
            by_id: Default::default(),
            supervisor: args.supervisor,
        };
        for lane in 0..spec.concurrency {
            state.start_worker(&myself, lane).await?;
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<ToolMsg>,
        _state: &mut ToolActorState,
    ) -> Result<(), ActorProcessingErr> {
        myself
            .stop_children_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
            .await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<ToolMsg>,
        event: SupervisionEvent,
        state: &mut ToolActorState,
    ) -> Result<(), ActorProcessingErr> {
        let Some((cell, why)) = child_ended(event) else {
            return Ok(());
        };
        let Some(lane) = state.by_id.remove(&cell.get_id()) else {
            return Ok(());
        };
        if state.worker.runtime.draining.is_cancelled() {
            return Ok(());
        }
        let reason = match why.strip_prefix("failed: ") {
            Some(failure) => format!("a worker failed and was replaced: {failure}"),
            None => "a worker was killed and was replaced".to_string(),
        };
        // A worker that cannot be replaced takes its tool down: the tools
        // supervisor restarts the whole actor.
        state.start_worker(&myself, lane).await?;
        let _ = state
            .supervisor
            .cast(ToolsSupervisorMsg::WorkerReplaced(myself.get_id(), reason));
        Ok(())
    }
}

/// However the tool actor ends (a killed actor skips `post_stop`), its
/// lanes close: calls on them, and calls still waiting for them, are
/// answered at once instead of waiting for workers that will not come.
impl Drop for ToolActorState {
    fn drop(&mut self) {
        for lane in &self.lanes.lanes {
            lane.send_replace(None);
        }
    }
}

impl ToolActorState {
    async fn start_worker(
        &mut self,
        myself: &ActorRef<ToolMsg>,
        lane: usize,
    ) -> Result<(), ActorProcessingErr> {
        let (worker, _) =
            Actor::spawn_linked(None, WorkerActor, self.worker.clone(), myself.get_cell()).await?;
        self.by_id.insert(worker.get_id(), lane);
        self.lanes.lanes[lane].send_replace(Some(worker));
        Ok(())
    }
}

/// The backend of a command or builtin tool: each lane's worker.
pub struct Workers {
    tool: String,
    lanes: Vec<watch::Sender<Option<ActorRef<WorkerMsg>>>>,
}

impl Workers {
    /// Lanes with no workers yet: the tool's actor starts them.
    pub fn new(spec: &ToolSpec) -> Arc<Workers> {
        Arc::new(Workers {
            tool: spec.name.clone(),
            lanes: (0..spec.concurrency)
                .map(|_| watch::channel(None).0)
                .collect(),
        })
    }
}

impl Backend for Workers {
    fn call(&self, call: Call) -> BoxFuture<'_, ToolResult> {
        Box::pin(async move {
            let lane = &self.lanes[call.lane];
            let mut replaced = lane.subscribe();
            let (reply, answer) = oneshot::channel();
            let mut msg = WorkerMsg::Run(call, reply);
            loop {
                let worker = replaced.borrow_and_update().clone();
                match worker.map(|w| w.cast(msg)) {
                    Some(Ok(())) => break,
                    // Its worker is being replaced: wait for the new one.
                    Some(Err(ractor::MessagingErr::SendErr(back))) => msg = back,
                    _ => return Err(self.lost()),
                }
                let waited = tokio::time::timeout(REPLACEMENT_WAIT, replaced.changed()).await;
                if !matches!(waited, Ok(Ok(()))) {
                    return Err(self.lost());
                }
            }
            // A dropped reply: the worker died with this call. Its replacement
            // is counted by the tools supervisor; answer now.
            answer.await.unwrap_or_else(|_| Err(self.lost()))
        })
    }
}

impl Workers {
    fn lost(&self) -> ToolError {
        ToolError::internal(format!(
            "The worker running this call of `{}` crashed; it has been replaced.",
            self.tool
        ))
        .retry_after(Duration::from_millis(100))
    }
}

/// Runs one call at a time, for one lane of one tool.
struct WorkerActor;

/// What every worker of a tool shares.
struct Worker {
    spec: Arc<ToolSpec>,
    runtime: Arc<Runtime>,
    work: Work,
}

pub enum WorkerMsg {
    /// Run this call; answer on the sender.
    Run(Call, oneshot::Sender<ToolResult>),
}

impl Actor for WorkerActor {
    type Msg = WorkerMsg;
    type State = Arc<Worker>;
    type Arguments = Arc<Worker>;

    async fn pre_start(
        &self,
        _myself: ActorRef<WorkerMsg>,
        worker: Arc<Worker>,
    ) -> Result<Arc<Worker>, ActorProcessingErr> {
        Ok(worker)
    }

    async fn handle(
        &self,
        _myself: ActorRef<WorkerMsg>,
        WorkerMsg::Run(call, reply): WorkerMsg,
        w: &mut Arc<Worker>,
    ) -> Result<(), ActorProcessingErr> {
        let started = Instant::now();
        let cancel = call.cancel.clone();
        // A call honours its cancellation within the grace (exec kills and
        // reaps the group); one that does not is dropped here, so a future
        // that ignores cancellation cannot hold the worker.
        let result = tokio::select! {
            result = w.run(&call) => result,
            _ = async { cancel.cancelled().await; tokio::time::sleep(w.spec.grace).await } => {
                Err(ToolError::cancelled("The call was cancelled and did not stop within the grace; it was dropped."))
            }
        };
        let _ = reply.send(result);
        let deadline = w.spec.deadline();
        if started.elapsed() > deadline {
            // Only a call that held the thread gets here: the watchdog
            // answered its caller `timeout` long ago. A worker that blocked
            // once is not trusted again: failing makes the tool actor replace
            // it, and the supervisor counts the replacement.
            let held = Duration::from_millis(started.elapsed().as_millis() as u64);
            let why = format!(
                "a call held its worker for {} (deadline and grace {})",
                humantime::format_duration(held),
                humantime::format_duration(deadline)
            );
            tracing::warn!(actor = %w.spec.actor_name(), "{why}; the worker is replaced");
            return Err(why.into());
        }
        Ok(())
    }
}

impl Worker {
    async fn run(&self, call: &Call) -> ToolResult {
        match &self.work {
            Work::Command(cmd, program) => {
                command::call(
                    &self.spec,
                    cmd,
                    program,
                    &self.runtime.groups,
                    &call.args,
                    &call.cancel,
                    call.progress.as_ref(),
                )
                .await
            }
            Work::Builtin(b) => builtin::run(*b, &call.args, &self.runtime).await,
        }
    }
}
