//! The breaker actor, `breaker`: the circuit breakers' clock.
//!
//! An open breaker turns half-open when its time is over, on its own, with
//! no call arriving: this actor's clock task sleeps until the next open
//! breaker is due (or until the call path opens another) and moves every
//! due one. The state machines themselves live in the tools' entries; a
//! restarted breaker actor starts a new clock, which re-arms every timer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::core::runtime::Runtime;

/// The longest the clock sleeps with nothing due.
const IDLE_TICK: Duration = Duration::from_secs(60);

pub struct BreakerActor;

/// The running clock task, ended with the actor however it ends (a killed
/// actor skips `post_stop`, but its state is dropped).
pub struct BreakerState(tokio::task::JoinHandle<()>);

impl Drop for BreakerState {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Actor for BreakerActor {
    type Msg = ();
    type State = BreakerState;
    type Arguments = Arc<Runtime>;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        runtime: Arc<Runtime>,
    ) -> Result<BreakerState, ActorProcessingErr> {
        Ok(BreakerState(tokio::spawn(clock(runtime))))
    }
}

/// Moves due breakers to half-open, then sleeps until the next is due or a
/// breaker opens.
async fn clock(runtime: Arc<Runtime>) {
    loop {
        let now = Instant::now();
        let next = runtime.tick_breakers(now).unwrap_or(now + IDLE_TICK);
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = runtime.breaker_clock.notified() => {}
        }
    }
}
