//! The typed errors a client can get back from a tool call.
//!
//! A failing tool is an answer, not a crash: every kind here becomes an
//! `isError` result with a short sentence, a one-line suggestion and
//! machine-readable fields (see `mcp::convert`).

use std::fmt;
use std::time::Duration;

use serde_json::{json, Map, Value};

/// What went wrong, as a client can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The arguments break the tool's schema.
    Validation,
    /// The tool cannot run now: its program is missing or it failed past its restart budget.
    Unavailable,
    /// The tool's queue, or the runtime's in-flight cap, is full.
    Busy,
    /// The tool's rate limit is exhausted.
    RateLimited,
    /// The tool's circuit breaker is open.
    CircuitOpen,
    /// The tool is shed under memory pressure.
    Degraded,
    /// The call ran past its deadline; its processes were killed.
    Timeout,
    /// The client cancelled the call; its processes were killed.
    Cancelled,
    /// The program ran and failed (non-zero exit, killed by a signal).
    ExecutionFailed,
    /// A bug or a crashed worker inside warden.
    Internal,
}

impl ErrorKind {
    /// Failures of the tool itself, which its circuit breaker counts.
    pub fn is_tool_failure(self) -> bool {
        matches!(
            self,
            ErrorKind::Timeout | ErrorKind::ExecutionFailed | ErrorKind::Internal
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Validation => "validation",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Busy => "busy",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::Degraded => "degraded",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::ExecutionFailed => "execution_failed",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tool call's failure, with what to do about it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolError {
    pub kind: ErrorKind,
    /// One human sentence: what happened.
    pub message: String,
    /// One line: what the caller can do next.
    pub suggestion: String,
    /// When retrying makes sense, after how long.
    pub retry_after: Option<Duration>,
    /// Machine-readable specifics (exit code, schema path, ...).
    pub details: Map<String, Value>,
}

impl ToolError {
    pub fn new(kind: ErrorKind, message: impl Into<String>, suggestion: impl Into<String>) -> Self {
        ToolError {
            kind,
            message: message.into(),
            suggestion: suggestion.into(),
            retry_after: None,
            details: Map::new(),
        }
    }

    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.into(), value.into());
        self
    }

    /// Shed under memory pressure: a `low` priority tool at the degrade level.
    pub fn degraded(tool: &str, level: &str, used_pct: f64, retry: Duration) -> Self {
        ToolError::new(
            ErrorKind::Degraded,
            format!(
                "Tool `{tool}` is shed while warden is short of memory (level {level}, {used_pct:.0} % of its budget in use)."
            ),
            "Retry later, or use a tool that does not depend on this one; critical tools still answer.",
        )
        .retry_after(retry)
        .detail("memory_level", level)
    }

    /// The call was cancelled (by its client, the watchdog or shutdown);
    /// `what` says what became of the work.
    pub fn cancelled(what: impl Into<String>) -> Self {
        ToolError::new(
            ErrorKind::Cancelled,
            what,
            "Nothing to do; send the call again if you still need it.",
        )
    }

    pub fn busy(what: &str) -> Self {
        ToolError::new(
            ErrorKind::Busy,
            format!("{what} is at capacity and cannot take another call now."),
            "Retry shortly, or send fewer calls at once.",
        )
        .retry_after(Duration::from_millis(100))
    }

    pub fn unavailable(tool: &str, why: &str, retry: Option<Duration>) -> Self {
        let e = ToolError::new(
            ErrorKind::Unavailable,
            format!("Tool `{tool}` is unavailable: {why}."),
            match retry {
                Some(_) => "Retry after the suggested delay; `warden status` shows the tool's state.",
                None => "Ask the operator to check the tool (`warden status`, `warden logs`); other tools still work.",
            },
        );
        match retry {
            Some(d) => e.retry_after(d),
            None => e,
        }
    }

    pub fn rate_limited(
        tool: &str,
        limit: Option<crate::config::RateLimit>,
        wait: Duration,
    ) -> Self {
        let mut e = ToolError::new(
            ErrorKind::RateLimited,
            format!("Tool `{tool}` is over its rate limit."),
            "Wait for the suggested delay before calling it again.",
        )
        .retry_after(wait);
        if let Some(l) = limit {
            e = e
                .detail("rate_per_second", l.rate.per_second)
                .detail("burst", l.burst);
        }
        e
    }

    /// A principal over its own limit (`[auth] rate`), whatever the tool.
    pub fn principal_rate_limited(
        principal: &str,
        limit: crate::config::RateLimit,
        wait: Duration,
    ) -> Self {
        ToolError::new(
            ErrorKind::RateLimited,
            format!("`{principal}` is over its rate limit."),
            "Wait for the suggested delay before calling again; the limit counts every tool.",
        )
        .retry_after(wait)
        .detail("rate_per_second", limit.rate.per_second)
        .detail("burst", limit.burst)
    }

    pub fn circuit_open(
        tool: &str,
        until_half_open: Duration,
        breaker: crate::core::status::BreakerLine,
    ) -> Self {
        let mut e = ToolError::new(
            ErrorKind::CircuitOpen,
            format!(
                "Tool `{tool}` is failing and its circuit breaker is open; nothing was run."
            ),
            "Retry after the suggested delay, when trial calls are let through; `status` shows the breaker.",
        )
        .retry_after(until_half_open);
        e.details.insert(
            "breaker".into(),
            serde_json::to_value(breaker).unwrap_or_default(),
        );
        e
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ToolError::new(
            ErrorKind::Internal,
            message,
            "Retry the call; if it keeps failing, report it with the warden log.",
        )
    }

    /// The `structuredContent` object a client receives.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "kind": self.kind.as_str(),
            "message": self.message,
            "suggestion": self.suggestion,
        });
        if let Some(d) = self.retry_after {
            v["retry_after_ms"] = json!(d.as_millis() as u64);
        }
        if !self.details.is_empty() {
            v["details"] = Value::Object(self.details.clone());
        }
        v
    }

    /// The text content a client (and the model behind it) reads.
    pub fn text(&self) -> String {
        let mut s = format!(
            "{}: {}\nSuggestion: {}",
            self.kind, self.message, self.suggestion
        );
        if let Some(d) = self.retry_after {
            s.push_str(&format!(" (retry after {} ms)", d.as_millis()));
        }
        s
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for ToolError {}
