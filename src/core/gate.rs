//! A tool's gate: `concurrency` calls running, `queue` more waiting, beyond
//! that busy. The one concurrency mechanism, for command, builtin and MCP
//! tools alike.
//!
//! A call first takes a [`Ticket`] (a place in line: refused at once when
//! running and waiting calls fill `concurrency + queue`), then waits for a
//! [`Lane`]: one of `concurrency` numbered lanes, handed out in arrival order.
//! A tool actor runs lane `i`'s call on its worker `i`, so a worker's mailbox
//! never holds more than the call it runs. Under memory pressure the recovery
//! policy holds half the lanes, and the tool runs at half its concurrency.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{Semaphore, SemaphorePermit};

pub struct Gate {
    concurrency: usize,
    /// Running plus waiting calls allowed.
    capacity: usize,
    /// Calls holding a ticket: admitted and not yet answered.
    in_flight: AtomicUsize,
    /// One permit per lane; taken by running calls, and by the memory policy.
    permits: Arc<Semaphore>,
    lanes: Mutex<Lanes>,
    /// The task holding the permits taken by the memory policy.
    reserved: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct Lanes {
    free: Vec<usize>,
    /// When each lane's running call started.
    started: Vec<Option<Instant>>,
}

impl Gate {
    pub fn new(concurrency: usize, queue: usize) -> Gate {
        Gate {
            concurrency,
            capacity: concurrency + queue,
            in_flight: AtomicUsize::new(0),
            permits: Arc::new(Semaphore::new(concurrency)),
            lanes: Mutex::new(Lanes {
                // Popped from the end: lane 0 is handed out first.
                free: (0..concurrency).rev().collect(),
                started: vec![None; concurrency],
            }),
            reserved: Mutex::new(None),
        }
    }

    fn lanes(&self) -> MutexGuard<'_, Lanes> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place in line, or `None` when the tool is at capacity.
    pub fn enter(&self) -> Option<Ticket<'_>> {
        let before = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let ticket = Ticket { gate: self };
        (before < self.capacity).then_some(ticket)
    }

    /// Calls admitted and not yet answered (running or waiting).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Calls holding a lane.
    pub fn running(&self) -> usize {
        self.lanes().started.iter().flatten().count()
    }

    /// Calls waiting for a lane.
    pub fn queued(&self) -> usize {
        self.in_flight().saturating_sub(self.running())
    }

    /// When the longest-running call started.
    pub fn oldest(&self) -> Option<Instant> {
        self.lanes().started.iter().flatten().min().copied()
    }

    /// Runs the tool at half its concurrency (rounded up) or at all of it;
    /// true when that changed. Calls already running are not interrupted:
    /// the held lanes are taken as they finish.
    pub fn set_reduced(&self, reduce: bool) -> bool {
        let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        match (reduce, reserved.is_some()) {
            (true, false) => {
                let hold = (self.concurrency / 2) as u32;
                let permits = self.permits.clone();
                *reserved = Some(tokio::spawn(async move {
                    let _held = permits.acquire_many_owned(hold).await;
                    std::future::pending::<()>().await
                }));
                true
            }
            (false, true) => {
                if let Some(task) = reserved.take() {
                    task.abort();
                }
                true
            }
            _ => false,
        }
    }

    pub fn is_reduced(&self) -> bool {
        self.reserved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

/// A call's place in line; dropped when the call is answered.
pub struct Ticket<'a> {
    gate: &'a Gate,
}

impl<'a> Ticket<'a> {
    /// Waits for a free lane, in arrival order. Cancel-safe: a call that
    /// stops waiting gives up nothing but its place.
    pub async fn lane(&self) -> Lane<'a> {
        let gate = self.gate;
        let permit = gate
            .permits
            .acquire()
            .await
            .expect("the gate's semaphore is never closed");
        let mut lanes = gate.lanes();
        // A permit is only ever held with a lane, or by the memory policy
        // (which takes permits, not lanes): there is always a free lane here.
        let index = lanes.free.pop().expect("a free lane for every permit");
        lanes.started[index] = Some(Instant::now());
        Lane {
            gate,
            index,
            _permit: permit,
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.gate.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A running call's lane; dropped when the call has its answer.
pub struct Lane<'a> {
    gate: &'a Gate,
    index: usize,
    _permit: SemaphorePermit<'a>,
}

impl Lane<'_> {
    pub fn index(&self) -> usize {
        self.index
    }
}

impl Drop for Lane<'_> {
    fn drop(&mut self) {
        let mut lanes = self.gate.lanes();
        lanes.started[self.index] = None;
        lanes.free.push(self.index);
        // The permit goes back after the lane, when `_permit` drops.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn n_running_q_waiting_then_busy() {
        let gate = Gate::new(2, 1);
        let a = gate.enter().unwrap();
        let b = gate.enter().unwrap();
        let c = gate.enter().unwrap();
        assert!(gate.enter().is_none(), "2 running + 1 waiting: busy");
        assert_eq!(gate.in_flight(), 3, "a refused call leaves no trace");
        let (la, lb) = (a.lane().await, b.lane().await);
        assert_eq!((la.index(), lb.index()), (0, 1));
        assert_eq!((gate.running(), gate.queued()), (2, 1));
        // The third waits until a lane is free, and gets that lane.
        let waiting = tokio::time::timeout(Duration::from_millis(20), c.lane()).await;
        assert!(waiting.is_err(), "no lane while two run");
        drop(lb);
        assert_eq!(c.lane().await.index(), 1);
        drop((la, a, b));
        assert_eq!(gate.in_flight(), 1);
    }

    #[tokio::test]
    async fn half_concurrency_holds_half_the_lanes() {
        let gate = Gate::new(4, 0);
        assert!(gate.set_reduced(true));
        assert!(!gate.set_reduced(true), "already reduced");
        tokio::task::yield_now().await;
        let tickets: Vec<_> = (0..4).map(|_| gate.enter().unwrap()).collect();
        let mut lanes = Vec::new();
        for t in &tickets[..2] {
            lanes.push(t.lane().await);
        }
        let third = tokio::time::timeout(Duration::from_millis(20), tickets[2].lane()).await;
        assert!(third.is_err(), "two of four lanes are held");
        assert!(gate.set_reduced(false));
        tokio::task::yield_now().await;
        lanes.push(tickets[2].lane().await);
        assert_eq!(gate.running(), 3);
        assert!(gate.oldest().is_some());
    }
}
