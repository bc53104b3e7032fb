//! Tools compiled into warden.

use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use crate::core::error::{ErrorKind, ToolError};
use crate::core::runtime::Runtime;
use crate::supervise::tool::{ToolOutput, ToolResult};

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
        match schema {
            Value::Object(m) => m,
            _ => unreachable!("schemas above are objects"),
        }
    }
}

pub async fn run(
    builtin: Builtin,
    args: &Map<String, Value>,
    runtime: &Runtime,
    _cancel: &CancellationToken,
) -> ToolResult {
    match builtin {
        Builtin::Echo => match args.get("message") {
            Some(Value::String(s)) => Ok(ToolOutput::text(s.clone())),
            _ => Err(ToolError::new(
                ErrorKind::Validation,
                "`message` must be a string.",
                "Pass {\"message\": \"...\"}.",
            )),
        },
        Builtin::Status => {
            let status = runtime.status();
            Ok(ToolOutput::text(
                serde_json::to_string_pretty(&status).unwrap_or_else(|_| status.to_string()),
            ))
        }
        Builtin::Metrics => Ok(ToolOutput::text(runtime.metrics_text())),
        Builtin::Panic => panic!("the panic builtin was called (chaos test)"),
        Builtin::Block => {
            let ms = args.get("ms").and_then(Value::as_u64).unwrap_or(0);
            // Deliberately the wrong thing in async code: it is what this tool tests.
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Ok(ToolOutput::text(format!("blocked the thread for {ms} ms")))
        }
        Builtin::Hang => {
            let ms = args.get("ms").and_then(Value::as_u64).unwrap_or(0);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            Ok(ToolOutput::text(format!("hung for {ms} ms")))
        }
    }
}
