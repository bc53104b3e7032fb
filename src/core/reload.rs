//! Reloading the configuration: from the files as they are now and the
//! registry running, the next generation's registry, keeping the entry (and
//! so the actor, the child process, the breaker) of every tool whose spec did
//! not change.
//!
//! The whole new set has been validated before a plan is made (`config::load`
//! refuses it whole). Applying it is the supervisor's: start the new entries,
//! swap the registry in, retire the old ones, which finish their calls in
//! flight and stop.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{Config, ToolSpec};
use crate::core::registry::{BadSchema, Registry, ToolEntry};

/// The next generation, ready to apply.
pub struct Plan {
    pub registry: Registry,
    pub diff: Diff,
    /// New entries (added or changed tools): started before the swap.
    pub start: Vec<Arc<ToolEntry>>,
    /// Entries the new registry leaves behind (changed or removed tools):
    /// retired after the swap.
    pub retire: Vec<Arc<ToolEntry>>,
}

/// What a reload changed, by tool name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Diff {
    pub generation: u64,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: usize,
    /// Settings in config.toml that changed but take effect only at the next
    /// start of warden, such as `[http]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart_needed: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// The next registry after `current`, for the tools `specs`. `taken` says
/// whether an actor name is still registered (a replaced tool's actor keeps
/// its name while it drains, so its successor takes `name@gN`).
pub fn plan(
    current: &Registry,
    specs: Vec<ToolSpec>,
    taken: &dyn Fn(&str) -> bool,
) -> Result<Plan, BadSchema> {
    let generation = current.generation + 1;
    let mut diff = Diff {
        generation,
        ..Diff::default()
    };
    let (mut entries, mut start, mut retire) = (Vec::new(), Vec::new(), Vec::new());
    for spec in specs {
        let old = current.get(&spec.name);
        if let Some(old) = old.filter(|old| *old.spec == spec) {
            diff.unchanged += 1;
            entries.push(old.clone());
            continue;
        }
        let name = spec.name.clone();
        let base = spec.actor_name();
        let actor = if taken(&base) || old.is_some() {
            format!("{base}@g{generation}")
        } else {
            base
        };
        let entry = Arc::new(ToolEntry::named(spec, actor)?);
        match old {
            Some(old) => {
                diff.changed.push(name);
                retire.push(old.clone());
            }
            None => diff.added.push(name),
        }
        start.push(entry.clone());
        entries.push(entry);
    }
    let mut removed = current.removals().to_vec();
    for old in current.iter() {
        if entries.iter().any(|e| e.spec.name == old.spec.name) {
            continue;
        }
        diff.removed.push(old.spec.name.clone());
        let why = format!("it was removed by the reload to configuration generation {generation}");
        match old.spec.mcp() {
            None => removed.push((old.spec.name.clone(), why)),
            Some(_) => removed.extend(
                old.catalog()
                    .tools
                    .iter()
                    .map(|t| (t.name.to_string(), why.clone())),
            ),
        }
        retire.push(old.clone());
    }
    Ok(Plan {
        registry: Registry::of(entries, generation, removed),
        diff,
        start,
        retire,
    })
}

/// Which lists a client should fetch again after `plan` is applied: tools
/// whenever anything changed; prompts and resources when an MCP server did.
pub fn lists_changed(plan: &Plan) -> (bool, bool) {
    let servers = plan
        .start
        .iter()
        .chain(&plan.retire)
        .any(|e| e.spec.mcp().is_some());
    (!plan.diff.is_empty(), servers)
}

/// The sections of config.toml that changed from `running` to `new` and
/// cannot change while warden runs. `[defaults]` and `[breaker]` reach the
/// tools through their specs, `[supervisor]` is applied live, and
/// `server.actors_dir` names where the new set was read from.
pub fn restart_needed(running: &Config, new: &Config) -> Vec<String> {
    let mut server = new.server.clone();
    server.actors_dir = running.server.actors_dir.clone();
    let sections = [
        ("server", server != running.server),
        ("log", new.log != running.log),
        ("control", new.control != running.control),
        ("http", new.http != running.http),
        ("auth", new.auth != running.auth),
        ("memory", new.memory != running.memory),
        ("lag", new.lag != running.lag),
    ];
    sections
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(name, _)| format!("[{name}]"))
        .collect()
}

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// `warden reload`, over the control socket.
    Control,
    Sighup,
    /// `[server] watch`: a file changed.
    Watch,
}

impl Trigger {
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Control => "control",
            Trigger::Sighup => "sighup",
            Trigger::Watch => "watch",
        }
    }
}

/// How a reload ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    /// The new set runs (possibly identical to the old: an empty diff).
    Applied(Diff),
    /// The new set is invalid; the running one keeps serving.
    Refused { problems: Vec<String> },
}

impl Outcome {
    /// The metric's label.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Applied(d) if d.is_empty() => "unchanged",
            Outcome::Applied(_) => "applied",
            Outcome::Refused { .. } => "refused",
        }
    }
}

/// A request for a reload, with where to send how it ended.
pub struct Request {
    pub trigger: Trigger,
    pub reply: Option<tokio::sync::oneshot::Sender<Outcome>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(actors: &[(&str, &str)]) -> Vec<ToolSpec> {
        crate::config::check_texts("", actors).unwrap().tools
    }

    const ECHO: (&str, &str) = ("echo.toml", "name = \"echo\"\nkind = \"builtin\"\n");

    fn true_tool(description: &str) -> (&'static str, String) {
        (
            "t.toml",
            format!("name = \"t\"\nkind = \"command\"\ncommand = \"/bin/true\"\ndescription = \"{description}\"\n[input]\ntype = \"object\"\n"),
        )
    }

    #[test]
    fn unchanged_entries_are_kept_and_the_rest_replaced_added_or_removed() {
        let (t, t_text) = true_tool("one");
        let current = Registry::new(specs(&[ECHO, (t, &t_text)])).unwrap();
        let echo = current.get("echo").unwrap().clone();
        let old_t = current.get("t").unwrap().clone();

        let (t, t2) = true_tool("two");
        let srv = (
            "srv.toml",
            "name = \"srv\"\nkind = \"mcp\"\ncommand = \"/bin/true\"\n",
        );
        let plan = plan(&current, specs(&[ECHO, (t, &t2), srv]), &|n| n == "tool:t").unwrap();
        assert_eq!(plan.diff.generation, 1);
        assert_eq!(plan.diff.unchanged, 1);
        assert_eq!(plan.diff.changed, ["t"]);
        assert_eq!(plan.diff.added, ["srv"]);
        assert!(plan.diff.removed.is_empty());
        // The same entry: same actor, same breaker.
        assert!(Arc::ptr_eq(plan.registry.get("echo").unwrap(), &echo));
        let new_t = plan.registry.get("t").unwrap();
        assert!(!Arc::ptr_eq(new_t, &old_t));
        assert_eq!(new_t.actor_name(), "tool:t@g1");
        assert_eq!(plan.registry.get("srv").unwrap().actor_name(), "server:srv");
        assert_eq!(plan.start.len(), 2);
        assert_eq!(plan.retire.len(), 1);
        assert!(Arc::ptr_eq(&plan.retire[0], &old_t));
        assert_eq!(lists_changed(&plan), (true, true));

        // Removing: the name is remembered, and forgotten when it comes back.
        let next = super::plan(&plan.registry, specs(&[ECHO]), &|_| false).unwrap();
        assert_eq!(next.diff.removed, ["t", "srv"]);
        assert!(next.registry.removed("t").unwrap().contains("generation 2"));
        let again = super::plan(&next.registry, specs(&[ECHO, (t, &t2)]), &|_| false).unwrap();
        assert_eq!(again.diff.added, ["t"]);
        assert!(again.registry.removed("t").is_none());
        assert_eq!(again.registry.get("t").unwrap().actor_name(), "tool:t");
    }

    #[test]
    fn the_same_files_are_an_empty_diff() {
        let current = Registry::new(specs(&[ECHO])).unwrap();
        let plan = plan(&current, specs(&[ECHO]), &|_| true).unwrap();
        assert!(plan.diff.is_empty());
        assert!(plan.start.is_empty() && plan.retire.is_empty());
        assert_eq!(lists_changed(&plan), (false, false));
    }

    #[test]
    fn settings_that_need_a_restart_are_named_by_section() {
        let running = Config::default();
        let mut new = running.clone();
        new.defaults.timeout = std::time::Duration::from_secs(1);
        new.supervisor.max_restarts = 1;
        new.server.actors_dir = "elsewhere".into();
        assert!(restart_needed(&running, &new).is_empty());
        new.http.listen = "127.0.0.1:1".into();
        new.server.max_in_flight = 1;
        assert_eq!(restart_needed(&running, &new), ["[server]", "[http]"]);
    }
}
