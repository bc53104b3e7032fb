//! Tools compiled into warden.

use serde_json::{Map, Value};

use crate::config::Builtin;
use crate::core::call::{ToolOutput, ToolResult};
use crate::core::error::{ErrorKind, ToolError};
use crate::core::runtime::Runtime;

/// Runs one call of a builtin. `block` and `hang` ignore cancellation on
/// purpose: they are what the watchdog is tested with.
pub async fn run(builtin: Builtin, args: &Map<String, Value>, runtime: &Runtime) -> ToolResult {
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
            let status = serde_json::to_string_pretty(&runtime.status())
                .map_err(|e| ToolError::internal(format!("status: {e}")))?;
            Ok(ToolOutput::text(status))
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
