//! Running programs, safely: argv from templates, paths confined to a
//! directory, isolated processes, and the table of their process groups.
//!
//! No shell, ever. A program runs in its own session (so its whole process
//! group can be killed), dies with warden (PR_SET_PDEATHSIG, and the guardian
//! for what it starts itself), under rlimits, with a cleared environment and
//! a fixed working directory. This layer knows processes, not tools: what a
//! run means to a caller is `backends::command`'s to say.
//!
//! **Architecture Invariant:** imports nothing of the crate but `config`.

pub mod argv;
pub mod contain;
pub mod groups;
pub mod guard;
pub mod paths;
pub mod run;
pub mod spawn;

use std::fmt;
use std::os::fd::RawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::Signal;

use crate::config::Limits;

pub use groups::{GroupGuard, Groups};

/// Why a tool's program cannot be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgramError {
    #[error("`{0}` does not exist or is not executable")]
    NotExecutable(String),
    #[error("`{program}` was not found in PATH ({path})")]
    NotInPath { program: String, path: String },
}

/// Finds the program: a path is taken as it is, a bare name is looked up in `path`.
pub fn resolve_program(program: &str, path: &str) -> Result<PathBuf, ProgramError> {
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return if executable(&p) {
            Ok(p)
        } else {
            Err(ProgramError::NotExecutable(program.to_string()))
        };
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| executable(p))
        .ok_or_else(|| ProgramError::NotInPath {
            program: program.to_string(),
            path: path.to_string(),
        })
}

/// Makes a program warden launches its own session and process group (so the
/// whole group can be killed), dying with warden (PR_SET_PDEATHSIG), in the
/// cell behind `cell` (see [`contain`]) before its first instruction, with no
/// core dumps and the rlimits of `limits`. [`Groups::spawn`] calls it.
fn isolate(cmd: &mut tokio::process::Command, limits: Limits, cell: Option<RawFd>) {
    let parent = std::process::id() as i32;
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (setsid, prctl, getppid, write, setrlimit).
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            if nix::unistd::getppid().as_raw() != parent {
                // warden died between fork and prctl: nobody will read our output.
                return Err(std::io::Error::other("parent exited"));
            }
            if let Some(fd) = cell {
                contain::join(fd)?;
            }
            setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
            if let Some(cpu) = limits.cpu {
                let secs = cpu.as_secs() + u64::from(cpu.subsec_nanos() > 0);
                setrlimit(Resource::RLIMIT_CPU, secs, secs.saturating_add(1))?;
            }
            if let Some(mem) = limits.memory {
                setrlimit(Resource::RLIMIT_AS, mem.0, mem.0)?;
            }
            if let Some(n) = limits.open_files {
                setrlimit(Resource::RLIMIT_NOFILE, n, n)?;
            }
            Ok(())
        });
    }
}

/// The program as messages name it: its file name, not the path from the
/// actor file (which the operator has, and which would crowd out the reason).
pub fn program_name(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

/// How a process ended, in the words every answer and log line uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    Other,
}

impl From<ExitStatus> for Exit {
    fn from(s: ExitStatus) -> Exit {
        match (s.code(), s.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(sig)) => Exit::Signal(sig),
            _ => Exit::Other,
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exited with status {code}"),
            Exit::Signal(sig) => write!(f, "was killed by signal {sig}"),
            Exit::Other => f.write_str("ended abnormally"),
        }
    }
}

/// Resident memory of a process, from /proc (None when it is gone).
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_resolved_in_path() {
        assert!(resolve_program("sh", "/nonexistent:/bin:/usr/bin").is_ok());
        assert!(resolve_program("no-such-program-here", "/bin:/usr/bin").is_err());
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "data").unwrap();
        assert!(
            resolve_program(plain.to_str().unwrap(), "").is_err(),
            "not executable"
        );
        assert!(resolve_program("/bin/sh", "").is_ok());
    }

    #[test]
    fn exits_are_described_in_one_wording() {
        assert_eq!(
            Exit::from(ExitStatus::from_raw(3 << 8)).to_string(),
            "exited with status 3"
        );
        assert_eq!(
            Exit::from(ExitStatus::from_raw(9)).to_string(),
            "was killed by signal 9"
        );
        assert_eq!(Exit::from(ExitStatus::from_raw(0)), Exit::Code(0));
    }
}
