//! What the health actor measured and what the recovery policy did: data the
//! actors in `ops` write and the call path and `status` read.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::core::levels::Level;

/// How far back the lag percentiles look.
const LAG_WINDOW: Duration = Duration::from_secs(60);
/// Recovery actions kept for `status`.
pub const KEPT_ACTIONS: usize = 20;

/// One measurement of the tree.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Resident memory of warden itself.
    pub warden_rss: u64,
    /// Bytes warden's allocator has handed out and not had back (glibc's
    /// mallinfo2): against `warden_rss`, it tells a leak (both climb) from
    /// fragmentation or pages kept for reuse (only the RSS does).
    pub heap_in_use: Option<u64>,
    /// Each direct child of warden with its descendants, heaviest first.
    pub children: Vec<Child>,
    /// warden plus every descendant.
    pub total: u64,
    /// The budget and where it came from ("config", "cgroup" or "ram").
    pub limit: u64,
    pub limit_source: &'static str,
    /// `total / limit`.
    pub fraction: f64,
    pub lag: LagStats,
}

/// A direct child of warden (a process-group leader) and what hangs below it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Child {
    pub pid: i32,
    /// The tool it runs for, when warden knows.
    pub tool: Option<String>,
    /// Resident memory of the child and all its descendants.
    #[serde(rename = "rss_bytes")]
    pub rss: u64,
    pub processes: usize,
}

/// Lag over the last minute, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LagStats {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The latest tick's lag.
    pub last_ms: f64,
    /// The largest lag of the last few seconds (since about the previous sample).
    pub recent_max_ms: f64,
    pub samples: usize,
}

/// The lag samples of the last minute, written by the probe task.
#[derive(Default)]
pub struct LagRecorder {
    samples: Mutex<VecDeque<(Instant, Duration)>>,
    /// The running probe task; there is one at a time.
    probe: Mutex<Option<tokio::task::AbortHandle>>,
}

impl LagRecorder {
    /// Registers the running probe; returns the one it replaces.
    pub fn set_probe(&self, probe: tokio::task::AbortHandle) -> Option<tokio::task::AbortHandle> {
        self.probe.lock().unwrap().replace(probe)
    }

    pub fn record(&self, at: Instant, lag: Duration) {
        let mut s = self.samples.lock().unwrap();
        while s
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t) > LAG_WINDOW)
        {
            s.pop_front();
        }
        s.push_back((at, lag));
    }

    /// The percentiles of the last minute; `recent_max_ms` over the last `recent`.
    pub fn stats(&self, recent: Duration) -> LagStats {
        let s = self.samples.lock().unwrap();
        let last = s.back().map_or(Duration::ZERO, |(_, l)| *l);
        let recent_max = s
            .back()
            .map(|(newest, _)| {
                s.iter()
                    .rev()
                    .take_while(|(t, _)| newest.duration_since(*t) <= recent)
                    .map(|(_, l)| *l)
                    .max()
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        let mut v: Vec<Duration> = s.iter().map(|(_, l)| *l).collect();
        drop(s);
        v.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let pct = |p: f64| {
            if v.is_empty() {
                0.0
            } else {
                ms(v[((v.len() - 1) as f64 * p).round() as usize])
            }
        };
        LagStats {
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            max_ms: v.last().copied().map_or(0.0, ms),
            last_ms: ms(last),
            recent_max_ms: ms(recent_max),
            samples: v.len(),
        }
    }
}

/// One thing the recovery policy did, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    pub at_unix_ms: u64,
    /// trim, degrade, restore, restart or lag_restart.
    pub action: String,
    /// What it acted on: "warden", a tool, or a child ("tool:<name> pid <n>").
    pub target: String,
    pub reason: String,
    pub before_bytes: u64,
    pub before_fraction: f64,
    /// The tree at the next sample after the action.
    pub after_bytes: Option<u64>,
    pub after_fraction: Option<f64>,
}

/// What the recovery policy has done.
#[derive(Default)]
pub struct RecoveryView {
    pub level: Option<(Level, Instant)>,
    pub actions: VecDeque<Action>,
    pub counts: BTreeMap<String, u64>,
}

/// The health actor's and the recovery policy's findings, shared.
#[derive(Default)]
pub struct HealthView {
    /// Lag samples of the last minute, written by the health actor's probe.
    pub lag: Arc<LagRecorder>,
    snapshot: Mutex<Option<Arc<Snapshot>>>,
    /// The memory level of the whole tree, as a `Level` number.
    level: AtomicU8,
    pub recovery: Mutex<RecoveryView>,
}

impl HealthView {
    pub fn latest(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.lock().unwrap().clone()
    }

    pub(crate) fn store(&self, s: Arc<Snapshot>) {
        *self.snapshot.lock().unwrap() = Some(s);
    }

    /// The memory level of the whole tree.
    pub fn level(&self) -> Level {
        Level::from_u8(self.level.load(Ordering::Relaxed))
    }

    pub(crate) fn store_level(&self, level: Level) {
        self.level.store(level as u8, Ordering::Relaxed);
        let mut view = self.recovery.lock().unwrap();
        if view.level.map(|(l, _)| l) != Some(level) {
            view.level = Some((level, Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_percentiles_over_the_window() {
        let r = LagRecorder::default();
        let t0 = Instant::now();
        for i in 0..100u64 {
            r.record(t0 + Duration::from_millis(i), Duration::from_millis(i));
        }
        let s = r.stats(Duration::from_millis(10));
        assert_eq!(s.samples, 100);
        assert_eq!(s.recent_max_ms, 99.0);
        assert_eq!(s.max_ms, 99.0);
        assert_eq!(s.last_ms, 99.0);
        assert!((49.0..=50.0).contains(&s.p50_ms), "{s:?}");
        assert_eq!(s.p99_ms, 98.0);
        // A minute later the old samples are gone.
        r.record(t0 + Duration::from_secs(61), Duration::from_millis(1));
        let s = r.stats(Duration::from_millis(10));
        assert_eq!((s.samples, s.max_ms, s.recent_max_ms), (1, 1.0, 1.0));
    }
}
