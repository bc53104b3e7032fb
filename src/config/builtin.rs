//! The builtins warden has: their names and argument schemas. What they do
//! is `backends::builtin`'s.

use serde_json::{json, Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// Returns its `message`: connectivity checks and benchmarks.
    Echo,
    /// The supervision tree as JSON.
    Status,
    /// The runtime's metrics in the Prometheus text format.
    Metrics,
    /// Chaos: panics the worker that runs it, to exercise supervision.
    Panic,
    /// Chaos: blocks the runtime thread running it for `ms` milliseconds and
    /// ignores cancellation, to exercise the lag probe and the watchdog.
    Block,
    /// Chaos: waits `ms` milliseconds without blocking, ignoring cancellation.
    Hang,
}

impl Builtin {
    pub const NAMES: &'static [&'static str] =
        &["echo", "status", "metrics", "panic", "block", "hang"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "echo" => Some(Builtin::Echo),
            "status" => Some(Builtin::Status),
            "metrics" => Some(Builtin::Metrics),
            "panic" => Some(Builtin::Panic),
            "block" => Some(Builtin::Block),
            "hang" => Some(Builtin::Hang),
            _ => None,
        }
    }

    /// What a client is told the builtin does, unless its actor file says.
    pub fn description(self) -> &'static str {
        match self {
            Builtin::Echo => "Returns its message: a connectivity check",
            Builtin::Status => "The warden supervision tree as JSON: each actor's state, restarts, queue and calls in flight",
            Builtin::Metrics => "warden's metrics in the Prometheus text format",
            Builtin::Panic => "Chaos: panics the worker running it, to exercise supervision",
            Builtin::Block => "Chaos: blocks a runtime thread for ms milliseconds, ignoring cancellation",
            Builtin::Hang => "Chaos: waits ms milliseconds without blocking, ignoring cancellation",
        }
    }

    pub fn input_schema(self) -> Map<String, Value> {
        let schema = match self {
            Builtin::Echo => json!({
                "type": "object",
                "required": ["message"],
                "additionalProperties": false,
                "properties": {
                    "message": {"type": "string", "description": "The text to send back."}
                }
            }),
            Builtin::Block | Builtin::Hang => json!({
                "type": "object",
                "required": ["ms"],
                "additionalProperties": false,
                "properties": {
                    "ms": {"type": "integer", "minimum": 0, "maximum": 600000,
                           "description": "How long to block or hang, in milliseconds."}
                }
            }),
            Builtin::Status | Builtin::Metrics | Builtin::Panic => json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {}
            }),
        };
        // Every schema above is an object.
        schema.as_object().cloned().unwrap_or_default()
    }
}
