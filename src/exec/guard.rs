//! The guardian: a tiny process that outlives warden by a moment, to kill the
//! process groups warden leaves behind when it is SIGKILLed.
//!
//! PR_SET_PDEATHSIG kills warden's direct children when warden dies, but not
//! what they started themselves (`npx` → `sh` → `node`). The guardian is
//! warden's own binary run as `warden __guard`, detached (its own session,
//! not warden's child); warden tells it where its cgroup cells are and every
//! process group it starts and ends over a pipe. When the pipe reaches end of
//! file, warden is gone, by whatever means: the guardian SIGKILLs every group
//! still listed, ends every cell (see [`contain`](super::contain)) and exits.
//!
//! Only `warden serve` starts one ([`Guardian::spawn`]) and hands it to the
//! runtime's [`Groups`](super::groups::Groups); the library's tests run without.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::os::fd::AsFd;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::Mutex;

use nix::sys::signal::{killpg, signal, SigHandler, Signal};
use nix::unistd::Pid;

/// The subcommand that runs the guardian.
pub const SUBCOMMAND: &str = "__guard";

/// warden's end of the guardian's pipe. Its writes are non-blocking: a
/// guardian that stopped reading costs a lost message (logged), never a
/// stalled warden.
pub struct Guardian {
    pipe: Mutex<ChildStdin>,
}

/// A guardian being started: its first process forks the guardian and exits.
pub struct Starting {
    child: std::process::Child,
    stdin: ChildStdin,
}

impl Guardian {
    /// Starts the guardian (`warden __guard`, this same binary) without
    /// waiting: its first process execs this whole binary
    /// (about 3 ms here), which can overlap the rest of warden's start-up
    /// until [`Starting::ready`].
    pub fn spawn() -> std::io::Result<Starting> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg(SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let stdin = child.stdin.take().expect("stdin is piped");
        Ok(Starting { child, stdin })
    }
    /// The guardian should kill this group if warden dies.
    pub fn watch(&self, pgid: i32) {
        self.send(&format!("+{pgid}\n"));
    }

    /// This group is gone (warden killed and reaped it).
    pub fn forget(&self, pgid: i32) {
        self.send(&format!("-{pgid}\n"));
    }

    /// warden's cells are under `root`: end them all if warden dies.
    pub fn cells(&self, root: &std::path::Path) {
        self.send(&format!("@{}\n", root.display()));
    }

    fn send(&self, line: &str) {
        let mut pipe = self.pipe.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = pipe.write_all(line.as_bytes()) {
            tracing::warn!(actor = "warden", error = %e, "the guardian missed a process group update");
        }
    }
}

impl Starting {
    /// Reaps the first process, once it has forked the guardian. Before
    /// warden becomes a child subreaper (no cgroups): the guardian must not
    /// be reparented to warden, whose sweep would end it.
    pub fn ready(mut self) -> std::io::Result<Guardian> {
        let status = self.child.wait()?;
        if !status.success() {
            return Err(std::io::Error::other(format!(
                "the guardian did not start ({status})"
            )));
        }
        let stdin = self.stdin;
        let flags = nix::fcntl::fcntl(stdin.as_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(stdin.as_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(Guardian {
            pipe: Mutex::new(stdin),
        })
    }
}

/// The guardian's main: detach, then keep the list until end of file.
pub fn run() -> ! {
    // SAFETY: nothing else runs in this process yet (no threads started).
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => std::process::exit(0),
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(_) => std::process::exit(1),
    }
    let _ = nix::unistd::setsid();
    // A terminal's Ctrl-C or an operator's SIGTERM is for warden; the
    // guardian ends when warden does.
    // SAFETY: setting signal dispositions to ignore installs no handler code.
    unsafe {
        let _ = signal(Signal::SIGINT, SigHandler::SigIgn);
        let _ = signal(Signal::SIGTERM, SigHandler::SigIgn);
        let _ = signal(Signal::SIGHUP, SigHandler::SigIgn);
    }
    let mut groups = BTreeSet::new();
    let mut roots = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if let Some(root) = line.strip_prefix('@') {
            roots.push(std::path::PathBuf::from(root));
            continue;
        }
        let (op, pgid) = line.split_at(line.len().min(1));
        let Ok(pgid) = pgid.parse::<i32>() else {
            continue;
        };
        match op {
            "+" if pgid > 1 => {
                groups.insert(pgid);
            }
            "-" => {
                groups.remove(&pgid);
            }
            _ => {}
        }
    }
    for g in groups {
        let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
    }
    for root in roots {
        super::contain::end_root(&root, super::contain::EMPTY_DEADLINE);
    }
    std::process::exit(0)
}
