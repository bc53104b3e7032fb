//! The health actor: measures the resident memory of the whole process tree
//! (warden and every descendant, each child on its own too), the memory
//! budget, and event-loop lag; publishes a [`Snapshot`] to `status`, the
//! metrics and the recovery actor.
//!
//! Lag is how late a periodic tick on the tokio runtime fires: a task that
//! sleeps [`TICK`] and records by how much it overslept. A task that blocks
//! the thread it runs on makes every tick behind it late by as much.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};

use crate::config::MemoryLimit;
use crate::core::health::{Child, LagRecorder, Snapshot};
use crate::core::names;
use crate::core::runtime::Runtime;
use crate::exec::contain::Cell;
use crate::exec::groups::children;

/// The period of the lag probe.
pub const TICK: Duration = Duration::from_millis(50);

/// Runs the lag probe until the task is aborted: sleep one tick, record how
/// late the wake-up came. After a late tick the next one is scheduled from
/// now, so one stall is counted once, not as a burst of late ticks.
pub async fn probe_lag(recorder: Arc<LagRecorder>, warn: Duration) {
    let mut next = tokio::time::Instant::now() + TICK;
    loop {
        tokio::time::sleep_until(next).await;
        let now = tokio::time::Instant::now();
        let lag = now.saturating_duration_since(next);
        recorder.record(now.into_std(), lag);
        if lag > warn {
            tracing::warn!(
                actor = names::HEALTH,
                lag_ms = lag.as_millis() as u64,
                warn_ms = warn.as_millis() as u64,
                "event loop lag: a task held a runtime thread"
            );
        }
        next = now + TICK;
    }
}

/// The memory budget: a configured size, else the cgroup v2 `memory.max` of
/// warden's cgroup (the smallest along its path), else total RAM.
pub fn budget(limit: MemoryLimit, system: &mut System) -> (u64, &'static str) {
    if let MemoryLimit::Fixed(size) = limit {
        return (size.0, "config");
    }
    if let Some(max) = cgroup_memory_max() {
        return (max, "cgroup");
    }
    system.refresh_memory();
    (system.total_memory(), "ram")
}

fn cgroup_memory_max() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    let mut dir = std::path::PathBuf::from("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let mut smallest: Option<u64> = None;
    loop {
        if let Ok(v) = std::fs::read_to_string(dir.join("memory.max")) {
            if let Ok(n) = v.trim().parse::<u64>() {
                smallest = Some(smallest.map_or(n, |s| s.min(n)));
            }
        }
        if dir == std::path::Path::new("/sys/fs/cgroup") || !dir.pop() {
            break;
        }
    }
    smallest
}

/// What warden's heap holds in use: small chunks and mmapped ones, over
/// every arena (glibc's mallinfo2; None with another C library).
pub fn heap_in_use() -> Option<u64> {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        let m = unsafe { nix::libc::mallinfo2() };
        Some((m.uordblks + m.hblkhd) as u64)
    }
    #[cfg(not(target_env = "gnu"))]
    None
}

/// How [`measure`] finds warden's descendants.
pub enum Walk {
    /// Down from warden through `/proc/PID/task/TID/children`: a few reads
    /// per descendant, whatever else runs on the host.
    Children,
    /// Every process on the host, each read for its parent: where the
    /// kernel lacks those files (built without `CONFIG_PROC_CHILDREN`).
    Scan(Box<System>),
}

impl Walk {
    /// The cheaper walk where the kernel has it.
    pub fn new() -> Result<Walk, sysinfo::Error> {
        let me = std::process::id();
        if std::path::Path::new(&format!("/proc/{me}/task/{me}/children")).exists() {
            Ok(Walk::Children)
        } else {
            Ok(Walk::Scan(Box::new(System::new()?)))
        }
    }

    /// Each process's children: with [`Walk::Children`] those of `root`
    /// and of every process below it, with [`Walk::Scan`] those of every
    /// process that has any.
    fn tree(&mut self, root: i32) -> HashMap<i32, Vec<i32>> {
        let mut kids: HashMap<i32, Vec<i32>> = HashMap::new();
        match self {
            Walk::Children => {
                let mut stack = vec![root];
                while let Some(pid) = stack.pop() {
                    if kids.contains_key(&pid) {
                        continue;
                    }
                    let below = children(pid);
                    stack.extend(&below);
                    kids.insert(pid, below);
                }
            }
            Walk::Scan(system) => {
                system.refresh_processes_specifics(
                    ProcessesToUpdate::All,
                    true,
                    // Threads are listed as processes unless told otherwise.
                    ProcessRefreshKind::nothing().without_tasks(),
                );
                for (pid, p) in system.processes() {
                    if p.thread_kind().is_some() {
                        continue;
                    }
                    if let Some(parent) = p.parent() {
                        kids.entry(parent.as_u32() as i32)
                            .or_default()
                            .push(pid.as_u32() as i32);
                    }
                }
            }
        }
        kids
    }
}

/// A process's resident set in bytes (`/proc/PID/statm`); None once it is
/// gone.
fn rss_of(pid: i32) -> Option<u64> {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let page = *PAGE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .map_or(4096, |n| n as u64)
    });
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_ascii_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page)
}

/// Measures warden and its descendants, and with each group what its cell
/// holds (also what left it and was re-parented away from warden).
/// Blocking (reads /proc): run it off the runtime.
pub fn measure(
    walk: &mut Walk,
    groups: &HashMap<i32, (String, Option<Arc<Cell>>)>,
) -> (u64, Vec<Child>) {
    let me = std::process::id() as i32;
    let kids = walk.tree(me);
    let warden_rss = rss_of(me).unwrap_or(0);
    let mut children: Vec<Child> = kids
        .get(&me)
        .into_iter()
        .flatten()
        .map(|&pid| {
            let group = groups.get(&pid);
            let mut seen = std::collections::HashSet::new();
            let mut stack = vec![pid];
            // What the cell holds, also what left the group and warden's tree.
            if let Some(cell) = group.and_then(|(_, cell)| cell.as_ref()) {
                stack.extend(cell.members());
            }
            let (mut rss, mut n) = (0, 0);
            while let Some(p) = stack.pop() {
                if !seen.insert(p) {
                    continue;
                }
                if let Some(bytes) = rss_of(p) {
                    rss += bytes;
                    n += 1;
                }
                match kids.get(&p) {
                    Some(k) => stack.extend(k),
                    // A cell member that left warden's tree.
                    None if matches!(walk, Walk::Children) => stack.extend(children(p)),
                    None => {}
                }
            }
            Child {
                pid,
                tool: group.map(|(owner, _)| owner.clone()),
                rss,
                processes: n,
            }
        })
        .collect();
    children.sort_by_key(|c| std::cmp::Reverse(c.rss));
    (warden_rss, children)
}

pub struct HealthActor;

pub enum HealthMsg {
    Sample,
}

pub struct HealthState {
    runtime: Arc<Runtime>,
    walk: Option<Walk>,
    limit: (u64, &'static str),
    probe: tokio::task::JoinHandle<()>,
}

impl Actor for HealthActor {
    type Msg = HealthMsg;
    type State = HealthState;
    type Arguments = Arc<Runtime>;

    async fn pre_start(
        &self,
        myself: ActorRef<HealthMsg>,
        runtime: Arc<Runtime>,
    ) -> Result<HealthState, ActorProcessingErr> {
        let limit = budget(runtime.config.memory.limit, &mut System::new()?);
        tracing::info!(
            actor = names::HEALTH,
            limit_bytes = limit.0,
            source = limit.1,
            "memory budget"
        );
        let probe = tokio::spawn(probe_lag(
            runtime.health.lag.clone(),
            runtime.config.lag.warn,
        ));
        // A killed health actor never ran `post_stop`: end its probe here.
        if let Some(old) = runtime.health.lag.set_probe(probe.abort_handle()) {
            old.abort();
        }
        let _ = myself.cast(HealthMsg::Sample);
        Ok(HealthState {
            runtime,
            walk: Some(Walk::new()?),
            limit,
            probe,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<HealthMsg>,
        state: &mut HealthState,
    ) -> Result<(), ActorProcessingErr> {
        state.probe.abort();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<HealthMsg>,
        HealthMsg::Sample: HealthMsg,
        state: &mut HealthState,
    ) -> Result<(), ActorProcessingErr> {
        let every = state.runtime.config.memory.sample_every;
        let mut walk = state.walk.take().ok_or("health: no process walk")?;
        let groups = state.runtime.groups.owners();
        let (walk, (warden_rss, children)) = tokio::task::spawn_blocking(move || {
            let m = measure(&mut walk, &groups);
            (walk, m)
        })
        .await?;
        state.walk = Some(walk);
        let total = warden_rss + children.iter().map(|c| c.rss).sum::<u64>();
        let (limit, limit_source) = state.limit;
        let snapshot = Arc::new(Snapshot {
            warden_rss,
            heap_in_use: heap_in_use(),
            total,
            limit,
            limit_source,
            fraction: total as f64 / limit.max(1) as f64,
            lag: state.runtime.health.lag.stats(every * 2),
            children,
        });
        state.runtime.publish_health(snapshot.clone());
        if let Some(recovery) = ractor::registry::where_is(names::RECOVERY) {
            let _ = recovery.send_message(crate::ops::recovery::RecoveryMsg::Snapshot(snapshot));
        }
        myself.send_after(every, || HealthMsg::Sample);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_child_and_its_descendants() {
        // `sleep` run by `sh`, both below this test process.
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 5 & wait"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let groups = HashMap::from([(child.id() as i32, ("t".to_string(), None))]);
        let walks = [
            Walk::new().unwrap(),
            Walk::Scan(Box::new(System::new().unwrap())),
        ];
        let measured: Vec<_> = walks
            .into_iter()
            .map(|mut walk| measure(&mut walk, &groups))
            .collect();
        let _ = child.kill();
        let _ = child.wait();
        for (own, children) in measured {
            assert!(own > 1 << 20, "own rss {own}");
            let c = children
                .iter()
                .find(|c| c.pid == child.id() as i32)
                .expect("the child is measured");
            assert_eq!(c.tool.as_deref(), Some("t"));
            assert_eq!(c.processes, 2, "sh and its sleep");
            assert!(c.rss > 0);
        }
    }

    #[test]
    fn a_fixed_limit_wins_over_the_cgroup() {
        let mut system = System::new().unwrap();
        let (n, source) = budget(
            MemoryLimit::Fixed(crate::config::ByteSize(64 << 20)),
            &mut system,
        );
        assert_eq!((n, source), (64 << 20, "config"));
        let (n, source) = budget(MemoryLimit::Auto, &mut system);
        assert!(n > 0 && (source == "cgroup" || source == "ram"));
    }
}
