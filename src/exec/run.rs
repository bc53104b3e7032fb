//! Running one program to its end: isolated, with capped output, under a
//! timeout and a cancellation, never leaving a process of its group behind.

use std::path::Path;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

use super::groups::Groups;
use super::spawn::Spec;
use crate::config::Limits;

/// Progress for streamed output is reported at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// How long to wait for a killed process to be reaped before giving up on it.
const REAP_DEADLINE: Duration = Duration::from_secs(2);

/// What to run, and how.
pub struct Program<'a> {
    /// The tool it runs for (for status and `warden kill --signal`).
    pub owner: &'a str,
    pub path: &'a Path,
    pub argv: Vec<String>,
    /// The complete environment (nothing else is inherited).
    pub env: &'a [(String, String)],
    pub cwd: &'a Path,
    pub limits: &'a Limits,
    pub timeout: Duration,
    /// Bytes kept of stdout and of stderr each; the rest is counted and dropped.
    pub max_output: u64,
}

/// How a run ended.
pub enum Ending {
    Exited {
        status: ExitStatus,
        stdout: Captured,
        stderr: Captured,
        /// Set when warden itself killed the group (the memory policy), and why.
        killed_because: Option<String>,
    },
    TimedOut,
    Cancelled,
}

/// Why a program did not run to an [`Ending`].
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the program cannot be started ({0})")]
    Spawn(#[source] std::io::Error),
    #[error("waiting for the program failed: {0}")]
    Wait(#[source] std::io::Error),
}

/// What was kept of a stream, and how much there was.
pub struct Captured {
    pub bytes: Vec<u8>,
    pub total: u64,
}

impl Captured {
    pub fn truncated(&self) -> bool {
        self.total > self.bytes.len() as u64
    }
}

/// Runs the program to completion, timeout or cancellation. `progress`
/// hears the bytes of stdout so far, at most every [`PROGRESS_EVERY`].
pub async fn run(
    groups: &Arc<Groups>,
    program: Program<'_>,
    cancel: &CancellationToken,
    progress: Option<&(dyn Fn(u64) + Send + Sync)>,
) -> Result<Ending, RunError> {
    let spec = Spec::new(
        program.path,
        &program.argv,
        program.env,
        program.cwd,
        program.limits.clone(),
    )
    .map_err(RunError::Spawn)?;
    // The guard kills the group and its cell however this function ends,
    // also when its future is dropped half-way (the worker running it was
    // killed); a dropped `Process` is killed and reaped.
    let (mut child, group) = groups
        .launch(program.owner, spec)
        .map_err(RunError::Spawn)?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");

    let ending = {
        let work = async {
            let progress = ProgressThrottle::new(progress);
            let (out, err, status) = tokio::join!(
                read_capped(stdout, program.max_output, KeepBytes::Head, Some(&progress)),
                read_capped(stderr, program.max_output, KeepBytes::Tail, None),
                async {
                    let status = child.wait().await;
                    // The leader is gone; end whatever it left running in its group
                    // and its cell, so that the pipes close and nothing outlives the call.
                    group.kill();
                    status
                }
            );
            (status, out, err)
        };
        tokio::select! {
            (status, stdout, stderr) = work => {
                let status = status.map_err(RunError::Wait)?;
                Ending::Exited { status, stdout, stderr, killed_because: group.kill_reason() }
            }
            _ = tokio::time::sleep(program.timeout) => Ending::TimedOut,
            _ = cancel.cancelled() => Ending::Cancelled,
        }
    };
    if !matches!(ending, Ending::Exited { .. }) {
        group.kill();
        let _ = tokio::time::timeout(REAP_DEADLINE, child.wait()).await;
    }
    Ok(ending)
}

#[derive(Clone, Copy)]
enum KeepBytes {
    /// Keep the first bytes (stdout: the answer reads from the top).
    Head,
    /// Keep the last bytes (stderr: the error is usually at the end).
    Tail,
}

/// Reads a stream to its end, holding at most `cap` bytes; the rest is counted
/// and dropped, so a flood can never grow memory past the cap.
async fn read_capped(
    mut r: impl AsyncRead + Unpin,
    cap: u64,
    keep: KeepBytes,
    progress: Option<&ProgressThrottle<'_>>,
) -> Captured {
    let cap = cap as usize;
    let mut bytes = Vec::new();
    let mut total: u64 = 0;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        total += n as u64;
        match keep {
            KeepBytes::Head => {
                let room = cap.saturating_sub(bytes.len());
                bytes.extend_from_slice(&buf[..n.min(room)]);
            }
            KeepBytes::Tail => {
                bytes.extend_from_slice(&buf[..n]);
                if bytes.len() > cap {
                    let excess = bytes.len() - cap;
                    bytes.drain(..excess);
                }
            }
        }
        if let Some(p) = progress {
            p.report(total);
        }
    }
    Captured { bytes, total }
}

/// Passes "bytes of output so far" on, at most every `PROGRESS_EVERY`.
struct ProgressThrottle<'a> {
    sink: Option<&'a (dyn Fn(u64) + Send + Sync)>,
    last: Mutex<Option<Instant>>,
}

impl<'a> ProgressThrottle<'a> {
    fn new(sink: Option<&'a (dyn Fn(u64) + Send + Sync)>) -> Self {
        ProgressThrottle {
            sink,
            last: Mutex::new(None),
        }
    }

    fn report(&self, bytes: u64) {
        let Some(sink) = self.sink else { return };
        let mut last = self.last.lock().unwrap();
        if last.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        sink(bytes);
    }
}
