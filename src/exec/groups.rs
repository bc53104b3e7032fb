//! The process groups of the programs warden runs: one table, owned by the
//! runtime, so that shutdown can kill whatever is left, operators can see
//! and signal a tool's programs, and a kill by the memory policy can say why.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::sync::{Arc, Mutex, RwLock};

use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::contain::{Cell, Cells, Kind};
use super::guard::Guardian;
use super::isolate;
use super::spawn::{Process, Spec};
use crate::config::Limits;

/// The live process groups (a group's id is its leader's pid), with the
/// tool each runs for and the cell that holds it with all it started.
/// `std` mutexes: each is held for an insert, a remove or a copy only.
pub struct Groups {
    live: Mutex<BTreeMap<i32, Group>>,
    /// Kills what is still listed if warden dies; none in the library's tests.
    guardian: Option<Guardian>,
    cells: Cells,
    /// Held (shared) from a spawn to its group's registration, and
    /// (exclusively) by the subreaper's sweep: a child just spawned is never
    /// taken for an orphan.
    spawning: RwLock<()>,
    /// Subreaper: what left its group, seen while its parent lived or
    /// adopted by warden after.
    strays: Mutex<Strays>,
    /// Cells killed but not yet empty, removed by a later sweep.
    doomed: Mutex<Vec<Arc<Cell>>>,
    /// The strays' groups the guardian was told of.
    told: Mutex<BTreeSet<i32>>,
}

struct Group {
    owner: String,
    /// Why warden itself killed it (the memory policy), for its call's answer.
    killed_because: Option<String>,
    cell: Option<Arc<Cell>>,
}

/// Subreaper: processes in another process group than their group's leader.
/// A sweep sees them below a live leader (and tells the guardian their group
/// at once), or only once warden adopted them (their parent died first).
#[derive(Default)]
struct Strays {
    /// Seen below a live leader: pid → (leader, its own pgid).
    seen: HashMap<i32, (i32, i32)>,
    /// Adopted by warden, until reaped.
    orphans: BTreeMap<i32, Orphan>,
}

/// A process that left its group and lost its parent, adopted by warden. It
/// ends with the group it was seen in; if it was never seen, nothing says
/// which group it came from, and it ends once every group live when it was
/// found has ended.
struct Orphan {
    pgid: i32,
    waiting_for: BTreeSet<i32>,
    killed: bool,
}

impl Groups {
    pub fn new(guardian: Option<Guardian>, cells: Cells) -> Arc<Groups> {
        if let (Some(g), Some(root)) = (&guardian, cells.root()) {
            g.cells(root);
        }
        Arc::new(Groups {
            live: Mutex::new(BTreeMap::new()),
            guardian,
            cells,
            spawning: RwLock::new(()),
            strays: Mutex::new(Strays::default()),
            doomed: Mutex::new(Vec::new()),
            told: Mutex::new(BTreeSet::new()),
        })
    }

    /// The containment in force.
    pub fn containment(&self) -> &Cells {
        &self.cells
    }

    fn live(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, Group>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spawns `cmd` isolated (see [`isolate`]) in a cell of its own, and holds
    /// its group until the guard is dropped, which kills it and all it started.
    pub fn spawn(
        self: &Arc<Self>,
        owner: &str,
        cmd: &mut tokio::process::Command,
        limits: Limits,
    ) -> io::Result<(tokio::process::Child, GroupGuard)> {
        let cell = self
            .cells
            .cell()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot create its cgroup: {e}")))?;
        isolate(cmd, limits, cell.as_ref().map(Cell::join_fd));
        let spawning = self.spawning.read().unwrap_or_else(|p| p.into_inner());
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                if let Some(cell) = &cell {
                    cell.remove();
                }
                return Err(e);
            }
        };
        let pgid = child.id().map_or(0, |p| p as i32);
        let guard = self.register(pgid, owner, cell.map(Arc::new));
        drop(spawning);
        Ok((child, guard))
    }

    /// Starts a command tool's program with [`spawn`](super::spawn): the
    /// same promises as [`Groups::spawn`], without a fork of warden.
    pub fn launch(
        self: &Arc<Self>,
        owner: &str,
        mut spec: Spec,
    ) -> io::Result<(Process, GroupGuard)> {
        let cell = self
            .cells
            .cell()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot create its cgroup: {e}")))?;
        spec.cell = cell.as_ref().map(Cell::join_fd);
        spec.cell_home = cell.as_ref().and_then(Cell::home_fd);
        let spawning = self.spawning.read().unwrap_or_else(|p| p.into_inner());
        let process = match super::spawn::spawn(&spec) {
            Ok(process) => process,
            Err(e) => {
                if let Some(cell) = &cell {
                    cell.remove();
                }
                return Err(e);
            }
        };
        let guard = self.register(process.id(), owner, cell.map(Arc::new));
        drop(spawning);
        Ok((process, guard))
    }

    fn register(self: &Arc<Self>, pgid: i32, owner: &str, cell: Option<Arc<Cell>>) -> GroupGuard {
        self.live().insert(
            pgid,
            Group {
                owner: owner.to_string(),
                killed_because: None,
                cell: cell.clone(),
            },
        );
        // A group in a cell needs no line to the guardian: it ends every
        // cell under the root when warden dies. Two fewer writes, and one
        // fewer wake-up of the guardian, per call.
        if let (Some(g), None) = (&self.guardian, &cell) {
            g.watch(pgid);
        }
        GroupGuard {
            groups: self.clone(),
            pgid,
            cell,
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
        let sent = killpg(Pid::from_raw(pgid), Signal::SIGKILL).is_ok();
        if let Some(cell) = &group.cell {
            cell.kill();
        }
        sent
    }

    /// Why warden killed a live group, if it did.
    pub fn kill_reason(&self, pgid: i32) -> Option<String> {
        self.live().get(&pgid)?.killed_because.clone()
    }

    /// Kills every group still registered, with all they started, and every
    /// process warden adopted (at shutdown); how many groups.
    pub fn kill_all(&self) -> usize {
        let n = {
            let live = self.live();
            for (&g, group) in live.iter() {
                let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
                if let Some(cell) = &group.cell {
                    cell.kill();
                }
            }
            live.len()
        };
        self.sweep_with(true);
        n
    }

    /// warden's last step: ends and removes every cell, waiting a moment for
    /// them to empty. The guardian does the same if warden cannot.
    pub fn close(&self) {
        self.kill_all();
        if let Some(root) = self.cells.root() {
            super::contain::end_root(root, std::time::Duration::from_millis(200));
        }
    }

    /// The groups of one tool's running programs.
    pub fn of(&self, owner: &str) -> Vec<i32> {
        self.live()
            .iter()
            .filter(|(_, g)| g.owner == owner)
            .map(|(&pgid, _)| pgid)
            .collect()
    }

    /// Every live group with its tool and its cell (None without cgroups:
    /// then its descendants are what it holds). The cells are read by the
    /// caller, off the lock.
    pub fn owners(&self) -> HashMap<i32, (String, Option<Arc<Cell>>)> {
        self.live()
            .iter()
            .map(|(&pgid, g)| (pgid, (g.owner.clone(), g.cell.clone())))
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

    /// Removes the cells that have emptied, and, as subreaper, finds the
    /// processes warden adopted, ends those whose groups have all ended and
    /// reaps them. Called when a group ends and every so often.
    pub fn sweep(&self) {
        self.sweep_with(false);
    }

    fn sweep_with(&self, end_all: bool) {
        {
            let mut doomed = self.doomed.lock().unwrap_or_else(|p| p.into_inner());
            doomed.retain(|cell| !cell.remove());
        }
        if self.cells.kind() != Kind::Subreaper {
            return;
        }
        let _no_spawn = self.spawning.write().unwrap_or_else(|p| p.into_inner());
        let live = self.live();
        let mut strays = self.strays.lock().unwrap_or_else(|p| p.into_inner());
        let Strays { seen, orphans } = &mut *strays;
        let watch = |pgid: i32| {
            if let Some(g) = &self.guardian {
                g.watch(pgid);
            }
        };
        // Below a live leader but out of its group: the guardian learns of it
        // now, so that it is ended even if warden is SIGKILLed.
        for &leader in live.keys() {
            for pid in descendants(leader) {
                let pgid = pgid_of(pid);
                if pgid != leader && !live.contains_key(&pgid) && !seen.contains_key(&pid) {
                    seen.insert(pid, (leader, pgid));
                    watch(pgid);
                }
            }
        }
        for pid in own_children() {
            if live.contains_key(&pid) || orphans.contains_key(&pid) {
                continue;
            }
            let pgid = pgid_of(pid);
            let waiting_for = match seen.get(&pid) {
                Some(&(leader, _)) => live.keys().copied().filter(|&g| g == leader).collect(),
                None => {
                    watch(pgid);
                    live.keys().copied().collect()
                }
            };
            tracing::info!(
                actor = "warden",
                pid,
                pgid,
                "adopted a process that left its group"
            );
            orphans.insert(
                pid,
                Orphan {
                    pgid,
                    waiting_for,
                    killed: false,
                },
            );
        }
        for (&pid, orphan) in orphans.iter_mut() {
            orphan.waiting_for.retain(|g| live.contains_key(g));
            if (end_all || orphan.waiting_for.is_empty()) && !orphan.killed {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                if !live.contains_key(&orphan.pgid) {
                    let _ = killpg(Pid::from_raw(orphan.pgid), Signal::SIGKILL);
                }
                orphan.killed = true;
            }
        }
        orphans.retain(|&pid, _| {
            matches!(
                waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::StillAlive)
            )
        });
        seen.retain(|&pid, _| orphans.contains_key(&pid) || kill(Pid::from_raw(pid), None).is_ok());
        // The guardian forgets a group no stray is in any more (its id may be reused).
        let held: BTreeSet<i32> = seen
            .values()
            .map(|&(_, pgid)| pgid)
            .chain(orphans.values().map(|o| o.pgid))
            .collect();
        let mut told = self.told.lock().unwrap_or_else(|p| p.into_inner());
        for &gone in told.difference(&held) {
            if let Some(g) = &self.guardian {
                if !live.contains_key(&gone) {
                    g.forget(gone);
                }
            }
        }
        *told = held;
    }

    fn ended(&self, pgid: i32, cell: Option<Arc<Cell>>) {
        self.live().remove(&pgid);
        if let (Some(g), None) = (&self.guardian, &cell) {
            g.forget(pgid);
        }
        // An empty cell nobody else holds goes to the next program, if the
        // containment keeps spares; else it is removed.
        let to_remove = match cell.map(Arc::try_unwrap) {
            Some(Ok(cell)) => self.cells.recycle(cell).err().map(Arc::new),
            Some(Err(shared)) => Some(shared),
            None => None,
        };
        if let Some(cell) = to_remove {
            if !cell.remove() {
                self.doomed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(cell);
            }
        }
        self.sweep();
    }
}

/// warden's children now (its own and those it adopted), from /proc.
fn own_children() -> Vec<i32> {
    children(std::process::id() as i32)
}

/// The children of a process (of all its threads), from
/// `/proc/PID/task/TID/children`; none once it is gone. (The kernel's list
/// can miss a child forked while it is read.)
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"));
    for task in tasks.into_iter().flatten().flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Every descendant of a process still below it.
fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut stack = children(pid);
    while let Some(p) = stack.pop() {
        out.push(p);
        stack.extend(children(p));
    }
    out
}

fn pgid_of(pid: i32) -> i32 {
    nix::unistd::getpgid(Some(Pid::from_raw(pid))).map_or(pid, |p| p.as_raw())
}

/// A running program's process group and cell: registered while it lives,
/// killed and unregistered when dropped, however the code holding it ends.
pub struct GroupGuard {
    groups: Arc<Groups>,
    pgid: i32,
    cell: Option<Arc<Cell>>,
}

impl GroupGuard {
    /// Kills the group and everything in its cell.
    pub fn kill(&self) {
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        if let Some(cell) = &self.cell {
            cell.kill();
        }
    }

    /// Why warden killed this group, if it did.
    pub fn kill_reason(&self) -> Option<String> {
        self.groups.kill_reason(self.pgid)
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
        let cell = self.cell.take();
        self.groups.ended(self.pgid, cell);
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
        let groups = Groups::new(None, Cells::groups_only());
        let guard = groups.register(pgid, "t", None);
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
