//! The names of the supervision tree's actors: the vocabulary `status`,
//! `/health`, `warden kill` and the log's `actor` field share. The actors
//! register under these names; nothing here knows what an actor is.

/// The root supervisor.
pub const ROOT: &str = "warden";
/// The stdio session.
pub const TRANSPORT: &str = "transport";
/// The operator's control socket.
pub const CONTROL: &str = "control";
/// Samples memory and event-loop lag.
pub const HEALTH: &str = "health";
/// The memory and lag policy.
pub const RECOVERY: &str = "recovery";
/// The circuit breakers' clock.
pub const BREAKER: &str = "breaker";
/// The supervisor of the tool actors.
pub const TOOLS: &str = "tools";

/// The root's children, in the order `status` lists them.
pub const ROOT_CHILDREN: [&str; 6] = [TRANSPORT, CONTROL, HEALTH, RECOVERY, BREAKER, TOOLS];
