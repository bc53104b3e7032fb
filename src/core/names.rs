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

/// What `warden kill` takes, for its help: every actor name `status` shows
/// but the transport and the root, which are refused.
pub const KILLABLE: [(&str, &str); 8] = [
    (
        "tool:NAME",
        "a command or builtin tool's actor, with all its workers",
    ),
    (
        "tool:NAME/worker:N",
        "one worker of a tool; the call it runs is answered `internal`",
    ),
    (
        "server:NAME",
        "an MCP server's actor; its process group is killed with it",
    ),
    (TOOLS, "the supervisor of the tool actors"),
    (BREAKER, "the circuit breakers' clock"),
    (HEALTH, "the memory and event-loop lag sampler"),
    (RECOVERY, "the memory and lag policy"),
    (CONTROL, "the control socket (this command reconnects)"),
];

/// `warden kill`'s long help, from [`KILLABLE`].
pub fn kill_help() -> String {
    let mut help = String::from(
        "Chaos: kill one actor of a running instance; its supervisor restarts it.\n\n\
         ACTOR is a name from `warden status`:\n",
    );
    for (name, what) in KILLABLE {
        help.push_str(&format!("  {name:<20} {what}\n"));
    }
    help.push_str(&format!(
        "`{TRANSPORT}` (the client's session) and `{ROOT}` cannot be killed.\n\n\
         With --signal, signals the processes of a tool's running calls instead.\n\n\
         Example: warden kill tool:echo"
    ));
    help
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_root_child_but_the_transport_is_killable() {
        let killable: Vec<&str> = KILLABLE.iter().map(|(name, _)| *name).collect();
        for child in ROOT_CHILDREN {
            assert_eq!(killable.contains(&child), child != TRANSPORT, "{child}");
        }
        assert!(!killable.contains(&ROOT));
    }
}
