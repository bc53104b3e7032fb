//! The process groups of the programs warden runs: one table, owned by the
//! runtime, so that shutdown can kill whatever is left, operators can see
//! and signal a tool's programs, and a kill by the memory policy can say why.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::guard::Guardian;

/// The live process groups (a group's id is its leader's pid), with the
/// tool each runs for. A `std` mutex: it is held for an insert, a remove or
/// a copy only.
pub struct Groups {
    live: Mutex<BTreeMap<i32, Group>>,
    /// Kills what is still listed if warden dies; none in the library's tests.
    guardian: Option<Guardian>,
}

struct Group {
    owner: String,
    /// Why warden itself killed it (the memory policy), for its call's answer.
    killed_because: Option<String>,
}

impl Groups {
    pub fn new(guardian: Option<Guardian>) -> Arc<Groups> {
        Arc::new(Groups {
            live: Mutex::new(BTreeMap::new()),
            guardian,
        })
    }

    fn live(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, Group>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds a new group until the guard is dropped, which kills it.
    pub fn register(self: &Arc<Self>, pgid: i32, owner: &str) -> GroupGuard {
        self.live().insert(
            pgid,
            Group {
                owner: owner.to_string(),
                killed_because: None,
            },
        );
        if let Some(g) = &self.guardian {
            g.watch(pgid);
        }
        GroupGuard {
            groups: self.clone(),
            pgid,
        }
    }

    /// Kills a live group with SIGKILL and records why. False when the group
    /// is not (or no longer) live.
    pub fn kill_because(&self, pgid: i32, reason: String) -> bool {
        // Under the lock, so the reason cannot outlive its group.
        let mut live = self.live();
        let Some(group) = live.get_mut(&pgid) else {
            return false;
        };
        group.killed_because = Some(reason);
        killpg(Pid::from_raw(pgid), Signal::SIGKILL).is_ok()
    }

    /// Why warden killed a live group, if it did.
    pub fn kill_reason(&self, pgid: i32) -> Option<String> {
        self.live().get(&pgid)?.killed_because.clone()
    }

    /// Kills every group still registered (at shutdown); how many.
    pub fn kill_all(&self) -> usize {
        let live = self.live();
        for &g in live.keys() {
            let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
        }
        live.len()
    }

    /// The groups of one tool's running programs.
    pub fn of(&self, owner: &str) -> Vec<i32> {
        self.live()
            .iter()
            .filter(|(_, g)| g.owner == owner)
            .map(|(&pgid, _)| pgid)
            .collect()
    }

    /// Every live group with its tool.
    pub fn owners(&self) -> HashMap<i32, String> {
        self.live()
            .iter()
            .map(|(&pgid, g)| (pgid, g.owner.clone()))
            .collect()
    }

    /// Sends `signal` to every group of a tool; how many.
    pub fn signal(&self, owner: &str, signal: Signal) -> usize {
        let groups = self.of(owner);
        for &g in &groups {
            let _ = killpg(Pid::from_raw(g), signal);
        }
        groups.len()
    }
}

/// A running program's process group: registered while it lives, killed
/// and unregistered when dropped, however the code holding it ends.
pub struct GroupGuard {
    groups: Arc<Groups>,
    pgid: i32,
}

impl GroupGuard {
    pub fn kill(&self) {
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
    }

    /// Why warden killed this group, if it did.
    pub fn kill_reason(&self) -> Option<String> {
        self.groups.kill_reason(self.pgid)
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
        self.groups.live().remove(&self.pgid);
        if let Some(g) = &self.groups.guardian {
            g.forget(self.pgid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_listed_while_held_and_killed_when_dropped() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id() as i32;
        let groups = Groups::new(None);
        let guard = groups.register(pgid, "t");
        assert_eq!(groups.of("t"), [pgid]);
        assert!(groups.kill_because(pgid, "too big".into()));
        assert_eq!(guard.kill_reason().as_deref(), Some("too big"));
        drop(guard);
        assert!(groups.of("t").is_empty());
        assert!(!groups.kill_because(pgid, "again".into()), "gone");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(9));
    }
}
