//! Circuit breakers: one state machine per tool.
//!
//! [`CircuitBreaker`] is plain data with the time passed in, so every
//! transition is unit-tested without sleeping. It lives in the tool's
//! `ToolEntry` behind a mutex, so asking for a permit is not an actor round
//! trip on every call. Its clock (an open breaker turns half-open on its own)
//! is driven by the breaker actor in `ops`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::BreakerConfig;
use crate::core::status::BreakerLine;

/// How long a caller refused while half-open (all trials taken) should wait.
const HALF_OPEN_RETRY: Duration = Duration::from_millis(100);

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// Trial calls: `issued` let through so far, `passed` of them succeeded.
    HalfOpen {
        issued: usize,
        passed: usize,
    },
    ForcedOpen,
    ForcedClosed,
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half_open",
            State::ForcedOpen => "forced_open",
            State::ForcedClosed => "forced_closed",
        }
    }

    /// The `warden_breaker_state` gauge value.
    pub fn gauge(&self) -> i64 {
        match self {
            State::Closed => 0,
            State::Open { .. } => 1,
            State::HalfOpen { .. } => 2,
            State::ForcedOpen => 3,
            State::ForcedClosed => 4,
        }
    }
}

/// How a call ended, as the breaker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// timeout, execution_failed, internal (a crashed worker included).
    Failure,
    /// Not the tool's fault (validation, cancelled, busy, ...): not counted,
    /// and a half-open trial it held is given back.
    Ignored,
}

/// Permission for one call. Stale tickets (issued before a transition) are
/// not counted, so a call that started while closed cannot close a breaker
/// that opened meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    generation: u64,
    trial: bool,
}

/// A state change, with the figures that caused it.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub failure_rate: f64,
    pub slow_rate: f64,
    pub calls: usize,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    failed: bool,
    slow: bool,
}

/// One tool's breaker: a count-based sliding window, resilience4j style.
#[derive(Debug)]
pub struct CircuitBreaker {
    policy: BreakerConfig,
    state: State,
    window: VecDeque<Sample>,
    /// The current open time: `open_for`, grown by failed trials.
    open_for: Duration,
    generation: u64,
}

impl CircuitBreaker {
    pub fn new(policy: BreakerConfig) -> Self {
        CircuitBreaker {
            open_for: policy.open_for,
            window: VecDeque::with_capacity(policy.window),
            policy,
            state: State::Closed,
            generation: 0,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// (failure rate, slow rate, calls) over the window.
    pub fn rates(&self) -> (f64, f64, usize) {
        let n = self.window.len();
        if n == 0 {
            return (0.0, 0.0, 0);
        }
        let failed = self.window.iter().filter(|s| s.failed).count();
        let slow = self.window.iter().filter(|s| s.slow).count();
        (failed as f64 / n as f64, slow as f64 / n as f64, n)
    }

    /// A permit for one call, or how long until trial calls are let through.
    /// An open breaker past its time turns half-open here too, in case its
    /// timer was lost with a restarted breaker actor.
    pub fn try_acquire(&mut self, now: Instant) -> (Result<Ticket, Duration>, Option<Transition>) {
        if !self.policy.enabled {
            return (Ok(self.ticket(false)), None);
        }
        let mut transition = None;
        if let State::Open { until } = self.state {
            if now >= until {
                transition = self.on_timer(now);
            }
        }
        let permit = match &mut self.state {
            State::Closed | State::ForcedClosed => Ok(false),
            State::Open { until } => Err(until.saturating_duration_since(now)),
            State::ForcedOpen => Err(self.open_for),
            State::HalfOpen { issued, .. } => {
                if *issued < self.policy.half_open_calls {
                    *issued += 1;
                    Ok(true)
                } else {
                    Err(HALF_OPEN_RETRY)
                }
            }
        };
        (permit.map(|trial| self.ticket(trial)), transition)
    }

    fn ticket(&self, trial: bool) -> Ticket {
        Ticket {
            generation: self.generation,
            trial,
        }
    }

    /// Records how a call with `ticket` ended.
    pub fn record(
        &mut self,
        ticket: Ticket,
        outcome: Outcome,
        elapsed: Duration,
        now: Instant,
    ) -> Option<Transition> {
        if ticket.generation != self.generation || !self.policy.enabled {
            return None;
        }
        let slow = elapsed >= self.policy.slow_call;
        let failed = outcome == Outcome::Failure;
        match self.state {
            State::Closed => {
                if outcome == Outcome::Ignored {
                    return None;
                }
                if self.window.len() == self.policy.window {
                    self.window.pop_front();
                }
                self.window.push_back(Sample { failed, slow });
                let (failure_rate, slow_rate, n) = self.rates();
                if n >= self.policy.min_calls
                    && (failure_rate >= self.policy.failure_rate
                        || slow_rate >= self.policy.slow_rate)
                {
                    let reason = if failure_rate >= self.policy.failure_rate {
                        "failure rate reached its threshold"
                    } else {
                        "slow-call rate reached its threshold"
                    };
                    return Some(self.open(now, reason));
                }
                None
            }
            State::HalfOpen { issued, passed } if ticket.trial => {
                if outcome == Outcome::Ignored {
                    // Give the trial back.
                    self.state = State::HalfOpen {
                        issued: issued.saturating_sub(1),
                        passed,
                    };
                    return None;
                }
                if failed || slow {
                    self.open_for = self
                        .open_for
                        .mul_f64(self.policy.backoff_factor)
                        .min(self.policy.open_for_max);
                    return Some(self.open(now, "a trial call failed"));
                }
                let passed = passed + 1;
                if passed >= self.policy.half_open_calls {
                    self.open_for = self.policy.open_for;
                    return Some(self.go(State::Closed, "every trial call passed"));
                }
                self.state = State::HalfOpen { issued, passed };
                None
            }
            _ => None,
        }
    }

    /// The open time is over: let trial calls through.
    pub fn on_timer(&mut self, now: Instant) -> Option<Transition> {
        match self.state {
            State::Open { until } if now >= until => Some(self.go(
                State::HalfOpen {
                    issued: 0,
                    passed: 0,
                },
                "open time over",
            )),
            _ => None,
        }
    }

    pub fn force_open(&mut self) -> Option<Transition> {
        (self.state != State::ForcedOpen)
            .then(|| self.go(State::ForcedOpen, "forced open by the operator"))
    }

    pub fn force_closed(&mut self) -> Option<Transition> {
        (self.state != State::ForcedClosed)
            .then(|| self.go(State::ForcedClosed, "forced closed by the operator"))
    }

    /// Back to closed with an empty window and the base open time.
    pub fn reset(&mut self) -> Option<Transition> {
        self.open_for = self.policy.open_for;
        let t = self.go(State::Closed, "reset by the operator");
        (t.from != State::Closed).then_some(t)
    }

    fn open(&mut self, now: Instant, reason: &'static str) -> Transition {
        self.go(
            State::Open {
                until: now + self.open_for,
            },
            reason,
        )
    }

    fn go(&mut self, to: State, reason: &'static str) -> Transition {
        let (failure_rate, slow_rate, calls) = self.rates();
        let from = std::mem::replace(&mut self.state, to);
        self.window.clear();
        self.generation += 1;
        Transition {
            from,
            to,
            failure_rate,
            slow_rate,
            calls,
            reason,
        }
    }

    /// When an open breaker lets trial calls through.
    pub fn opens_until(&self) -> Option<Instant> {
        match self.state {
            State::Open { until } => Some(until),
            _ => None,
        }
    }

    /// The breaker as `status` shows it.
    pub fn snapshot(&self, now: Instant) -> BreakerLine {
        let (failure_rate, slow_rate, calls) = self.rates();
        BreakerLine {
            state: self.state.name().to_string(),
            failure_rate: round3(failure_rate),
            slow_rate: round3(slow_rate),
            calls_in_window: calls,
            open_for_ms: self.open_for.as_millis() as u64,
            half_open_in_ms: self
                .opens_until()
                .map(|until| until.saturating_duration_since(now).as_millis() as u64),
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// What an operator can do to a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Force {
    Open,
    Closed,
    Reset,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BreakerConfig {
        BreakerConfig {
            enabled: true,
            window: 4,
            min_calls: 4,
            failure_rate: 0.5,
            slow_call: Duration::from_secs(1),
            slow_rate: 0.75,
            open_for: Duration::from_secs(10),
            open_for_max: Duration::from_secs(35),
            backoff_factor: 2.0,
            half_open_calls: 2,
        }
    }

    const FAST: Duration = Duration::from_millis(5);
    const SLOW: Duration = Duration::from_secs(2);

    /// Runs one call through the breaker; returns the transition it caused.
    fn call(
        b: &mut CircuitBreaker,
        outcome: Outcome,
        elapsed: Duration,
        now: Instant,
    ) -> Option<Transition> {
        let (permit, t) = b.try_acquire(now);
        assert!(t.is_none());
        let ticket = permit.expect("a permit");
        b.record(ticket, outcome, elapsed, now)
    }

    #[test]
    fn stays_closed_below_min_calls_even_when_all_fail() {
        let mut b = CircuitBreaker::new(policy());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(call(&mut b, Outcome::Failure, FAST, t0).is_none());
        }
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.rates(), (1.0, 0.0, 3));
    }

    #[test]
    fn opens_when_the_failure_rate_reaches_the_threshold() {
        let mut b = CircuitBreaker::new(policy());
        let t0 = Instant::now();
        call(&mut b, Outcome::Success, FAST, t0);
        call(&mut b, Outcome::Success, FAST, t0);
        call(&mut b, Outcome::Failure, FAST, t0);
        let t = call(&mut b, Outcome::Failure, FAST, t0).expect("opens at 2 of 4 = 0.5");
        assert_eq!(t.from, State::Closed);
        assert_eq!(
            t.to,
            State::Open {
                until: t0 + Duration::from_secs(10)
            }
        );
        assert_eq!((t.failure_rate, t.calls), (0.5, 4));
        let (permit, _) = b.try_acquire(t0 + Duration::from_secs(4));
        assert_eq!(permit, Err(Duration::from_secs(6)));
    }

    #[test]
    fn the_window_slides_old_failures_out() {
        let mut b = CircuitBreaker::new(policy());
        let t0 = Instant::now();
        call(&mut b, Outcome::Failure, FAST, t0);
        for _ in 0..3 {
            call(&mut b, Outcome::Success, FAST, t0);
        }
        // Window: F S S S (0.25). The failure slides out; one more failure: S S S F.
        assert!(call(&mut b, Outcome::Failure, FAST, t0).is_none());
        assert_eq!(b.rates(), (0.25, 0.0, 4));
        assert!(call(&mut b, Outcome::Success, FAST, t0).is_none());
        let t = call(&mut b, Outcome::Failure, FAST, t0).expect("S F S F = 0.5 opens");
        assert_eq!(t.calls, 4);
    }

    #[test]
    fn slow_calls_open_it_too() {
        let mut b = CircuitBreaker::new(policy());
        let t0 = Instant::now();
        call(&mut b, Outcome::Success, FAST, t0);
        call(&mut b, Outcome::Success, SLOW, t0);
        call(&mut b, Outcome::Success, SLOW, t0);
        let t = call(&mut b, Outcome::Success, SLOW, t0).expect("3 of 4 slow = 0.75");
        assert_eq!(t.slow_rate, 0.75);
        assert_eq!(t.reason, "slow-call rate reached its threshold");
    }

    #[test]
    fn ignored_outcomes_do_not_count() {
        let mut b = CircuitBreaker::new(policy());
        let t0 = Instant::now();
        for _ in 0..10 {
            call(&mut b, Outcome::Ignored, FAST, t0);
        }
        assert_eq!(b.rates(), (0.0, 0.0, 0));
    }

    fn opened(now: Instant) -> CircuitBreaker {
        let mut b = CircuitBreaker::new(policy());
        for _ in 0..4 {
            call(&mut b, Outcome::Failure, FAST, now);
        }
        assert!(matches!(b.state(), State::Open { .. }));
        b
    }

    #[test]
    fn open_turns_half_open_on_its_timer_and_trials_close_it() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        assert!(
            b.on_timer(t0 + Duration::from_secs(9)).is_none(),
            "too early"
        );
        let t = b.on_timer(t0 + Duration::from_secs(10)).expect("half-open");
        assert_eq!(
            t.to,
            State::HalfOpen {
                issued: 0,
                passed: 0
            }
        );
        let now = t0 + Duration::from_secs(10);
        let (a, _) = b.try_acquire(now);
        let (c, _) = b.try_acquire(now);
        let (third, _) = b.try_acquire(now);
        assert_eq!(third, Err(HALF_OPEN_RETRY), "only half_open_calls trials");
        assert!(b.record(a.unwrap(), Outcome::Success, FAST, now).is_none());
        let t = b
            .record(c.unwrap(), Outcome::Success, FAST, now)
            .expect("closes");
        assert_eq!(t.to, State::Closed);
        assert!(b.try_acquire(now).0.is_ok());
    }

    #[test]
    fn a_failed_trial_reopens_with_a_growing_capped_open_time() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let mut now = t0;
        for expected in [20, 35, 35] {
            now += b.open_for;
            b.on_timer(now).expect("half-open");
            let t = call(&mut b, Outcome::Failure, FAST, now).expect("reopens");
            assert_eq!(
                t.to,
                State::Open {
                    until: now + Duration::from_secs(expected)
                }
            );
        }
        // A success after that resets the open time to its base.
        now += b.open_for;
        b.on_timer(now).unwrap();
        call(&mut b, Outcome::Success, FAST, now);
        call(&mut b, Outcome::Success, FAST, now).expect("closed");
        assert_eq!(b.open_for, Duration::from_secs(10));
    }

    #[test]
    fn a_slow_trial_counts_as_failed_and_an_ignored_one_is_given_back() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let now = t0 + Duration::from_secs(10);
        b.on_timer(now).unwrap();
        let (a, _) = b.try_acquire(now);
        assert!(b.record(a.unwrap(), Outcome::Ignored, FAST, now).is_none());
        assert_eq!(
            b.state(),
            State::HalfOpen {
                issued: 0,
                passed: 0
            }
        );
        let t = call(&mut b, Outcome::Success, SLOW, now).expect("slow trial reopens");
        assert!(matches!(t.to, State::Open { .. }));
    }

    #[test]
    fn try_acquire_turns_a_late_open_breaker_half_open() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let (permit, t) = b.try_acquire(t0 + Duration::from_secs(11));
        assert!(permit.is_ok());
        assert_eq!(
            t.unwrap().to,
            State::HalfOpen {
                issued: 0,
                passed: 0
            }
        );
    }

    #[test]
    fn stale_tickets_are_not_counted() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(policy());
        let (early, _) = b.try_acquire(t0);
        for _ in 0..4 {
            call(&mut b, Outcome::Failure, FAST, t0);
        }
        assert!(b
            .record(early.unwrap(), Outcome::Success, FAST, t0)
            .is_none());
        assert!(matches!(b.state(), State::Open { .. }));
    }

    #[test]
    fn forced_states_and_reset() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(policy());
        assert_eq!(b.force_open().unwrap().to, State::ForcedOpen);
        assert!(b.force_open().is_none(), "already forced open");
        assert!(b.try_acquire(t0).0.is_err());
        assert!(
            b.on_timer(t0 + Duration::from_secs(3600)).is_none(),
            "no timer leaves forced open"
        );
        assert_eq!(b.force_closed().unwrap().to, State::ForcedClosed);
        for _ in 0..10 {
            assert!(
                call(&mut b, Outcome::Failure, FAST, t0).is_none(),
                "forced closed never opens"
            );
        }
        assert_eq!(b.reset().unwrap().to, State::Closed);
        assert!(b.reset().is_none(), "already closed");
        let mut b = opened(t0);
        assert_eq!(b.reset().unwrap().from.name(), "open");
        assert!(b.try_acquire(t0).0.is_ok());
    }

    /// The operator's API (the control socket calls it): force open, force
    /// closed, reset, with metrics.
    #[test]
    fn operators_force_and_reset_with_metrics() {
        let (_dir, runtime) = crate::core::runtime::test_runtime(
            "",
            &[("echo", "name = \"echo\"\nkind = \"builtin\"\n")],
        );
        let snap = runtime.force_breaker("echo", Force::Open).unwrap();
        assert_eq!(snap.state, "forced_open");
        let entry = runtime.tools().get("echo").unwrap().clone();
        assert!(entry.breaker().try_acquire(Instant::now()).0.is_err());
        assert_eq!(
            runtime.force_breaker("echo", Force::Closed).unwrap().state,
            "forced_closed"
        );
        assert_eq!(
            runtime.force_breaker("echo", Force::Reset).unwrap().state,
            "closed"
        );
        assert!(runtime
            .force_breaker("nope", Force::Reset)
            .unwrap_err()
            .to_string()
            .contains("unknown tool"));
        let m = runtime.metrics.render();
        assert!(m.contains("warden_breaker_transitions_total{from=\"closed\",to=\"forced_open\",tool=\"echo\"} 1"), "{m}");
        assert!(m.contains("warden_breaker_state{tool=\"echo\"} 0"), "{m}");
    }

    #[test]
    fn disabled_breaker_always_permits() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(BreakerConfig {
            enabled: false,
            ..policy()
        });
        for _ in 0..20 {
            assert!(call(&mut b, Outcome::Failure, FAST, t0).is_none());
        }
        assert_eq!(b.state(), State::Closed);
    }
}
