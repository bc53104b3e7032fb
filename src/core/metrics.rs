//! The runtime's Prometheus registry: what it counts and how it is named.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Call duration buckets, in seconds: from a builtin's microseconds to a program's minutes.
const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0,
];

pub struct Metrics {
    registry: Registry,
    calls: IntCounterVec,
    call_seconds: HistogramVec,
    in_flight: IntGauge,
    breaker_state: IntGaugeVec,
    breaker_transitions: IntCounterVec,
    restarts: IntCounterVec,
    queue_depth: IntGaugeVec,
    memory: IntGaugeVec,
    memory_level: IntGauge,
    recovery_actions: IntCounterVec,
    lag: prometheus::GaugeVec,
    sessions_open: IntGaugeVec,
    http_requests: IntCounterVec,
    reloads: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let calls = IntCounterVec::new(
            Opts::new(
                "warden_calls_total",
                "Tool calls answered, by tool and outcome (ok or an error kind)",
            ),
            &["tool", "outcome"],
        )
        .expect("valid metric");
        let call_seconds = HistogramVec::new(
            HistogramOpts::new(
                "warden_call_duration_seconds",
                "Time from accepting a call to its answer",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["tool"],
        )
        .expect("valid metric");
        let in_flight = IntGauge::new("warden_in_flight", "Calls accepted and not yet answered")
            .expect("valid metric");
        let breaker_state = IntGaugeVec::new(
            Opts::new(
                "warden_breaker_state",
                "Circuit breaker state: 0 closed, 1 open, 2 half_open, 3 forced_open, 4 forced_closed",
            ),
            &["tool"],
        )
        .expect("valid metric");
        let breaker_transitions = IntCounterVec::new(
            Opts::new(
                "warden_breaker_transitions_total",
                "Circuit breaker state changes",
            ),
            &["tool", "from", "to"],
        )
        .expect("valid metric");
        let restarts = IntCounterVec::new(
            Opts::new(
                "warden_actor_restarts_total",
                "Tool actor and worker restarts",
            ),
            &["tool"],
        )
        .expect("valid metric");
        let queue_depth = IntGaugeVec::new(
            Opts::new("warden_queue_depth", "Calls waiting in a tool's queue"),
            &["tool"],
        )
        .expect("valid metric");
        let memory = IntGaugeVec::new(
            Opts::new(
                "warden_memory_bytes",
                "Resident memory: warden itself (process), its descendants (children), both (total), and the budget",
            ),
            &["what"],
        )
        .expect("valid metric");
        let memory_level = IntGauge::new(
            "warden_memory_level",
            "Recovery level of the whole tree: 0 normal, 1 trim, 2 degrade, 3 restart",
        )
        .expect("valid metric");
        let recovery_actions = IntCounterVec::new(
            Opts::new(
                "warden_recovery_actions_total",
                "Actions of the recovery policy (trim, degrade, restart, lag_restart), by target",
            ),
            &["action", "target"],
        )
        .expect("valid metric");
        let lag = prometheus::GaugeVec::new(
            Opts::new(
                "warden_event_loop_lag_seconds",
                "How late the runtime's periodic tick fired over the last minute (p50, p99, max)",
            ),
            &["stat"],
        )
        .expect("valid metric");
        let sessions_open = IntGaugeVec::new(
            Opts::new("warden_sessions_open", "MCP sessions open, by transport"),
            &["transport"],
        )
        .expect("valid metric");
        let http_requests = IntCounterVec::new(
            Opts::new(
                "warden_http_requests_total",
                "HTTP requests to /mcp answered, by method and status code",
            ),
            &["method", "status"],
        )
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                "warden_reloads_total",
                "Configuration reloads, by outcome (applied, unchanged, refused)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        for outcome in ["applied", "unchanged", "refused"] {
            reloads.with_label_values(&[outcome]);
        }
        for c in [
            Box::new(calls.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reloads.clone()),
            Box::new(sessions_open.clone()),
            Box::new(http_requests.clone()),
            Box::new(call_seconds.clone()),
            Box::new(in_flight.clone()),
            Box::new(breaker_state.clone()),
            Box::new(breaker_transitions.clone()),
            Box::new(restarts.clone()),
            Box::new(queue_depth.clone()),
            Box::new(memory.clone()),
            Box::new(memory_level.clone()),
            Box::new(recovery_actions.clone()),
            Box::new(lag.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            calls,
            call_seconds,
            in_flight,
            breaker_state,
            breaker_transitions,
            restarts,
            queue_depth,
            memory,
            memory_level,
            recovery_actions,
            lag,
            sessions_open,
            http_requests,
            reloads,
        }
    }

    pub fn reload(&self, outcome: &str) {
        self.reloads.with_label_values(&[outcome]).inc();
    }

    pub fn set_sessions_open(&self, transport: &str, n: usize) {
        self.sessions_open
            .with_label_values(&[transport])
            .set(n as i64);
    }

    pub fn http_request(&self, method: &str, status: u16) {
        self.http_requests
            .with_label_values(&[method, &status.to_string()])
            .inc();
    }

    pub fn set_memory_level(&self, level: i64) {
        self.memory_level.set(level);
    }

    pub fn recovery_action(&self, action: &str, target: &str) {
        self.recovery_actions
            .with_label_values(&[action, target])
            .inc();
    }

    pub fn set_lag(&self, stat: &str, seconds: f64) {
        self.lag.with_label_values(&[stat]).set(seconds);
    }

    pub fn set_queue_depth(&self, tool: &str, depth: usize) {
        self.queue_depth
            .with_label_values(&[tool])
            .set(depth as i64);
    }

    pub fn set_memory(&self, what: &str, bytes: u64) {
        self.memory.with_label_values(&[what]).set(bytes as i64);
    }

    /// Makes every tool's series exist from the start, at zero.
    pub fn register_tool(&self, tool: &str) {
        self.breaker_state.with_label_values(&[tool]).set(0);
        self.restarts.with_label_values(&[tool]);
        self.queue_depth.with_label_values(&[tool]).set(0);
    }

    pub fn call(&self, tool: &str, outcome: &str, seconds: f64) {
        self.calls.with_label_values(&[tool, outcome]).inc();
        self.call_seconds
            .with_label_values(&[tool])
            .observe(seconds);
    }

    pub fn set_in_flight(&self, n: usize) {
        self.in_flight.set(n as i64);
    }

    pub fn breaker_transition(&self, tool: &str, from: &str, to: &str, gauge: i64) {
        self.breaker_state.with_label_values(&[tool]).set(gauge);
        self.breaker_transitions
            .with_label_values(&[tool, from, to])
            .inc();
    }

    pub fn restart(&self, tool: &str) {
        self.restarts.with_label_values(&[tool]).inc();
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
