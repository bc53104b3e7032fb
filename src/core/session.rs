//! Sessions: one per connected MCP client, and what they hear unasked.
//!
//! A session owns a cancellation token, a child of the runtime's: ending the
//! session cancels its calls and nothing else, and the end of warden ends
//! every session. It has its own subscription to the runtime's notices (a
//! broadcast: every session hears every list change), and its client's
//! logging level for the server log messages it forwards.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Notices buffered per session before a slow one starts losing them.
pub const NOTICE_BUFFER: usize = 256;
/// Resources one session may be subscribed to at once.
pub const MAX_SUBSCRIPTIONS: usize = 1024;

/// Something a client should hear about without asking.
#[derive(Debug, Clone)]
pub enum Notice {
    ToolsChanged,
    PromptsChanged,
    ResourcesChanged,
    /// An MCP server says a resource changed: for the sessions subscribed
    /// to its URI.
    ResourceUpdated {
        uri: String,
    },
    /// A log message of an MCP server.
    Log {
        level: LogLevel,
        logger: String,
        data: Value,
    },
}

/// The syslog severities MCP log messages carry, least severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum LogLevel {
    Debug,
    Info,
    Notice,
    Warning,
    Error,
    Critical,
    Alert,
    Emergency,
}

impl LogLevel {
    const ALL: [LogLevel; 8] = [
        LogLevel::Debug,
        LogLevel::Info,
        LogLevel::Notice,
        LogLevel::Warning,
        LogLevel::Error,
        LogLevel::Critical,
        LogLevel::Alert,
        LogLevel::Emergency,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Notice => "notice",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
            LogLevel::Critical => "critical",
            LogLevel::Alert => "alert",
            LogLevel::Emergency => "emergency",
        }
    }

    pub fn parse(name: &str) -> Option<LogLevel> {
        Self::ALL.into_iter().find(|l| l.name() == name)
    }
}

/// The runtime's side of the notices: one sender, a receiver per session.
pub struct Notices {
    tx: broadcast::Sender<Notice>,
}

impl Notices {
    pub fn new() -> Notices {
        Notices {
            tx: broadcast::channel(NOTICE_BUFFER).0,
        }
    }

    /// Tells every open session; with none open, nobody hears it.
    pub fn send(&self, notice: Notice) {
        let _ = self.tx.send(notice);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.tx.subscribe()
    }
}

impl Default for Notices {
    fn default() -> Self {
        Notices::new()
    }
}

/// One connected client.
pub struct Session {
    pub id: u64,
    /// "stdio" or "http".
    pub transport: &'static str,
    cancel: CancellationToken,
    /// The client's `logging/setLevel`, as a `LogLevel` number; none set: every message.
    level: AtomicU8,
    /// The protocol version the client and warden agreed on.
    protocol: OnceLock<String>,
    /// Over HTTP with `[auth]`: the principal of its first authorized request.
    principal: OnceLock<String>,
    opened: Instant,
    /// When the last call began, in ms after `opened`.
    last_call_ms: AtomicU64,
    /// The resource URIs the client subscribed to.
    resources: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// A subscription past [`MAX_SUBSCRIPTIONS`].
#[derive(Debug, thiserror::Error)]
#[error(
    "a session may subscribe to at most {MAX_SUBSCRIPTIONS} resources; unsubscribe from some first"
)]
pub struct TooManySubscriptions;

/// No `logging/setLevel` yet.
const LEVEL_UNSET: u8 = u8::MAX;

impl Session {
    /// Opens session `id` under `parent` (the runtime's token), subscribed
    /// to `notices`.
    pub fn open(
        id: u64,
        transport: &'static str,
        parent: &CancellationToken,
        notices: &Notices,
    ) -> (Session, broadcast::Receiver<Notice>) {
        let session = Session {
            id,
            transport,
            cancel: parent.child_token(),
            level: AtomicU8::new(LEVEL_UNSET),
            protocol: OnceLock::new(),
            principal: OnceLock::new(),
            opened: Instant::now(),
            last_call_ms: AtomicU64::new(0),
            resources: Default::default(),
        };
        (session, notices.subscribe())
    }

    /// The protocol version agreed on (the first one said counts).
    pub fn set_protocol(&self, version: &str) {
        let _ = self.protocol.set(version.to_string());
    }

    /// Who the session's requests are from (the first one said counts).
    pub fn set_principal(&self, name: &str) {
        if self.principal.get().is_none() {
            let _ = self.principal.set(name.to_string());
        }
    }

    pub fn principal(&self) -> Option<&str> {
        self.principal.get().map(String::as_str)
    }

    pub fn protocol(&self) -> Option<&str> {
        self.protocol.get().map(String::as_str)
    }

    /// A 2026-07-28 (or later) client: it takes no requests and hears no
    /// notices outside its own requests.
    pub fn is_stateless(&self) -> bool {
        self.protocol().is_some_and(|v| v >= "2026-07-28")
    }

    /// A call of this session begins.
    pub fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_call_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since the session's last call began (or since it opened).
    pub fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_call_ms.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(last)
    }

    /// Cancelled when the session ends, or warden does.
    pub fn cancel(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Ends the session: its calls are cancelled.
    pub fn end(&self) {
        self.cancel.cancel();
    }

    fn resources(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<String>> {
        self.resources.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes to `uri`; false when it already was.
    pub fn subscribe(&self, uri: &str) -> Result<bool, TooManySubscriptions> {
        let mut resources = self.resources();
        if resources.contains(uri) {
            return Ok(false);
        }
        if resources.len() >= MAX_SUBSCRIPTIONS {
            return Err(TooManySubscriptions);
        }
        Ok(resources.insert(uri.to_string()))
    }

    /// Unsubscribes from `uri`; false when it was not subscribed.
    pub fn unsubscribe(&self, uri: &str) -> bool {
        self.resources().remove(uri)
    }

    pub fn subscribed(&self, uri: &str) -> bool {
        self.resources().contains(uri)
    }

    pub fn subscriptions(&self) -> Vec<String> {
        self.resources().iter().cloned().collect()
    }

    pub fn set_level(&self, level: LogLevel) {
        self.level.store(level as u8, Ordering::Relaxed);
    }

    /// Whether the client wants server log messages of `level`.
    pub fn wants(&self, level: LogLevel) -> bool {
        match self.level.load(Ordering::Relaxed) {
            LEVEL_UNSET => true,
            min => level as u8 >= min,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_session_hears_a_notice_and_ending_one_cancels_only_it() {
        let root = CancellationToken::new();
        let notices = Notices::new();
        let (a, mut a_rx) = Session::open(1, "stdio", &root, &notices);
        let (b, mut b_rx) = Session::open(2, "http", &root, &notices);
        assert_ne!(a.id, b.id);
        notices.send(Notice::ToolsChanged);
        assert!(matches!(a_rx.recv().await, Ok(Notice::ToolsChanged)));
        assert!(matches!(b_rx.recv().await, Ok(Notice::ToolsChanged)));
        a.end();
        assert!(a.cancel().is_cancelled() && !b.cancel().is_cancelled());
        root.cancel();
        assert!(
            b.cancel().is_cancelled(),
            "the end of warden ends every session"
        );
    }

    #[test]
    fn a_level_filters_log_messages_below_it() {
        let (s, _rx) = Session::open(1, "stdio", &CancellationToken::new(), &Notices::new());
        assert!(s.wants(LogLevel::Debug), "no level set: everything");
        s.set_level(LogLevel::Warning);
        assert!(!s.wants(LogLevel::Info));
        assert!(s.wants(LogLevel::Error));
        assert_eq!(LogLevel::parse("notice"), Some(LogLevel::Notice));
    }
}
