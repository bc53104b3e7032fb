//! A cheaper spawn for command tools: `clone(CLONE_VM | CLONE_VFORK)`, the
//! way `posix_spawn` starts a program, with warden's isolation applied in the
//! child before `execve`.
//!
//! std's `Command` forks as soon as a `pre_exec` hook is set, and a fork
//! copies warden's page tables for a child that throws them away at once.
//! Here the child runs on a small stack of its own in warden's memory while
//! warden's thread waits (`CLONE_VFORK`), and makes only system calls: reset
//! the signal handlers, `setsid`, `PR_SET_PDEATHSIG` (and check that warden
//! is still its parent), join its cgroup cell, set the rlimits, put the
//! pipes on 0/1/2, `chdir`, restore the signal mask, `execve`. Everything it
//! touches is made before the clone. A step that fails leaves its errno and
//! its name where warden reads them once the child is gone.
//!
//! The child's exit is read from a pidfd, so nothing else may reap it.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use crate::config::Limits;

/// The child's stack: it makes system calls only, none of them deep.
const CHILD_STACK: usize = 64 * 1024;

/// A stack for a `CLONE_VM` child, in warden's memory. Every clone takes
/// its bounds from here: a child given more than was allocated writes its
/// frames over whatever warden keeps above it.
struct Stack(Vec<u8>);

impl Stack {
    fn new(len: usize) -> Stack {
        // Uninitialised: the child writes its frames before it reads them.
        Stack(Vec::with_capacity(len))
    }

    /// The lowest address and the length of the part a child may use: both
    /// 16-byte aligned, inside the allocation.
    fn bounds(&mut self) -> (u64, u64) {
        let base = self.0.as_mut_ptr() as u64;
        let low = (base + 15) & !15;
        let len = (self.0.capacity() as u64 - (low - base)) & !15;
        (low, len)
    }

    /// Where the child's stack pointer starts: the top, 16-byte aligned.
    fn top(&mut self) -> *mut libc::c_void {
        let (low, len) = self.bounds();
        (low + len) as *mut libc::c_void
    }
}

/// What to start.
pub struct Spec {
    pub path: CString,
    /// argv[0] included.
    pub argv: Vec<CString>,
    /// `NAME=value` each: the whole environment.
    pub env: Vec<CString>,
    pub cwd: CString,
    pub limits: Limits,
    /// The cgroup cell's open `cgroup.procs`, which the child joins.
    pub cell: Option<RawFd>,
    /// The cell's directory on cgroup v2: the child is born in it instead.
    pub cell_home: Option<RawFd>,
}

impl Spec {
    /// `path` with `argv` (after argv[0]), the environment `env` and the
    /// working directory `cwd`; None when one holds a NUL byte.
    pub fn new(
        path: &std::path::Path,
        argv: &[String],
        env: &[(String, String)],
        cwd: &std::path::Path,
        limits: Limits,
    ) -> io::Result<Spec> {
        use std::os::unix::ffi::OsStrExt;
        let c = |b: &[u8]| {
            CString::new(b).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "an argument holds a NUL byte")
            })
        };
        let path = c(path.as_os_str().as_bytes())?;
        let mut all = vec![path.clone()];
        for a in argv {
            all.push(c(a.as_bytes())?);
        }
        let env = env
            .iter()
            .map(|(k, v)| c(format!("{k}={v}").as_bytes()))
            .collect::<io::Result<_>>()?;
        Ok(Spec {
            path,
            argv: all,
            env,
            cwd: c(cwd.as_os_str().as_bytes())?,
            limits,
            cell: None,
            cell_home: None,
        })
    }
}

/// A started program: its pid, its stdout and stderr, and its exit.
pub struct Process {
    pid: i32,
    pidfd: AsyncFd<OwnedFd>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
    status: Option<ExitStatus>,
}

impl Process {
    pub fn id(&self) -> i32 {
        self.pid
    }

    /// Waits for the program to end, and reaps it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        loop {
            let mut ready = self.pidfd.readable().await?;
            if let Some(status) = reap(self.pid, libc::WNOHANG)? {
                self.status = Some(status);
                return Ok(status);
            }
            ready.clear_ready();
        }
    }
}

impl Drop for Process {
    /// A program dropped unreaped is killed, and reaped once it is gone.
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        // SAFETY: plain kill(2) of the child warden still holds unreaped,
        // so the pid cannot have been reused.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        if matches!(reap(self.pid, libc::WNOHANG), Ok(Some(_))) {
            return;
        }
        let pid = self.pid;
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Take the pidfd along: it is how the end is heard.
        let fd = self.pidfd.get_ref().try_clone();
        handle.spawn(async move {
            if let Ok(fd) = fd.and_then(readable) {
                let _ = fd.readable().await;
            }
            let _ = reap(pid, 0);
        });
    }
}

/// A pidfd, watched for the process's end (it turns readable).
fn readable(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` keeps its one descriptor open until it is dropped,
    // which the `AsyncFd` does.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// `waitpid(pid)`: the status once the program has ended.
fn reap(pid: i32, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
    let mut status = 0;
    // SAFETY: waitpid on our own child, with a valid out pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, flags) };
    match r {
        0 => Ok(None),
        r if r == pid => Ok(Some(ExitStatus::from_raw(status))),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Blocks every signal on this thread (for a clone: no handler of warden's
/// may run in the child, which shares warden's memory); the mask before
/// goes to `old`, for `pthread_sigmask(SIG_SETMASK, old)` to restore.
///
/// # Safety
/// The caller restores `old` on this thread.
unsafe fn block_signals(old: &mut libc::sigset_t) {
    let mut all: libc::sigset_t = std::mem::zeroed();
    libc::sigfillset(&mut all);
    libc::pthread_sigmask(libc::SIG_SETMASK, &all, old);
}

/// A pipe: (read end, write end), both close-on-exec.
fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors it returns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// What the child needs, all made before the clone, and what it leaves
/// behind when a step fails.
#[repr(C)]
struct ChildArgs {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    cell: RawFd,
    parent: libc::pid_t,
    limits: [(libc::c_int, libc::rlim_t, libc::rlim_t); 4],
    nlimits: usize,
    mask: libc::sigset_t,
    /// Set by a failing child: the errno and the step.
    errno: libc::c_int,
    step: *const libc::c_char,
}

/// Starts `spec` in its own session, with stdin on /dev/null and stdout
/// and stderr on pipes.
pub fn spawn(spec: &Spec) -> io::Result<Process> {
    let argv: Vec<*const libc::c_char> = spec
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = spec
        .env
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    // SAFETY: open(2) of a constant path; the descriptor is owned at once.
    let null = unsafe {
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        OwnedFd::from_raw_fd(fd)
    };
    let (out_r, out_w) = pipe_pair()?;
    let (err_r, err_w) = pipe_pair()?;
    let mut limits = [(0, 0, 0); 4];
    let mut nlimits = 0;
    let mut limit = |resource: libc::__rlimit_resource_t, soft: u64, hard: u64| {
        limits[nlimits] = (resource as libc::c_int, soft, hard);
        nlimits += 1;
    };
    limit(libc::RLIMIT_CORE, 0, 0);
    if let Some(cpu) = spec.limits.cpu {
        let secs = cpu.as_secs() + u64::from(cpu.subsec_nanos() > 0);
        limit(libc::RLIMIT_CPU, secs, secs.saturating_add(1));
    }
    if let Some(mem) = spec.limits.memory {
        limit(libc::RLIMIT_AS, mem.0, mem.0);
    }
    if let Some(n) = spec.limits.open_files {
        limit(libc::RLIMIT_NOFILE, n, n);
    }
    let mut args = ChildArgs {
        path: spec.path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: spec.cwd.as_ptr(),
        stdin: null.as_raw_fd(),
        stdout: out_w.as_raw_fd(),
        stderr: err_w.as_raw_fd(),
        cell: -1,
        parent: std::process::id() as libc::pid_t,
        limits,
        nlimits,
        // SAFETY: an all-zero sigset_t is a valid (empty) set, filled below.
        mask: unsafe { std::mem::zeroed() },
        errno: 0,
        step: std::ptr::null(),
    };
    let mut stack = Stack::new(CHILD_STACK);
    let mut pidfd: RawFd = -1;
    // SAFETY: every signal is blocked across the clone, so no handler of
    // warden's runs on the child's stack in warden's memory; the child resets
    // the handlers and restores this mask before execve. With CLONE_VFORK
    // this thread waits until the child has exec'd or exited, so `args`,
    // the strings it points to and the stack outlive the child's use of them.
    let pid = unsafe {
        block_signals(&mut args.mask);
        let mut pid = match spec.cell_home {
            Some(home) => born_in(
                home,
                &mut stack,
                child,
                (&mut args as *mut ChildArgs).cast(),
                &mut pidfd,
            ),
            None => -1,
        };
        if pid == -1 {
            // No cgroup v2 cell, or a kernel without clone3's
            // CLONE_INTO_CGROUP: the child moves into its cell itself.
            args.cell = spec.cell.unwrap_or(-1);
            pid = clone_vm(&mut stack, child, (&mut args as *mut ChildArgs).cast());
        }
        let spawn_errno = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &args.mask, std::ptr::null_mut());
        if pid < 0 {
            return Err(spawn_errno);
        }
        pid
    };
    drop(stack);
    drop((null, out_w, err_w));
    if !args.step.is_null() {
        let _ = reap(pid, 0);
        // SAFETY: the child pointed `step` at one of the static strings below.
        let step = unsafe { CStr::from_ptr(args.step) }.to_string_lossy();
        let e = io::Error::from_raw_os_error(args.errno);
        return Err(io::Error::new(e.kind(), format!("{step}: {e}")));
    }
    // SAFETY: clone3 gave the child's pidfd, or pidfd_open(2) of our
    // unreaped child does; the descriptor is owned at once.
    let pidfd = unsafe {
        let fd = if pidfd >= 0 {
            pidfd
        } else {
            libc::syscall(libc::SYS_pidfd_open, pid, 0) as RawFd
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            libc::kill(pid, libc::SIGKILL);
            let _ = reap(pid, 0);
            return Err(e);
        }
        OwnedFd::from_raw_fd(fd)
    };
    Ok(Process {
        pid,
        pidfd: readable(pidfd)?,
        stdout: Some(pipe::Receiver::from_owned_fd(out_r)?),
        stderr: Some(pipe::Receiver::from_owned_fd(err_r)?),
        status: None,
    })
}

/// `clone(CLONE_VM | CLONE_VFORK)`: the child runs `f(arg)` on `stack`.
///
/// # Safety
/// As for [`born_in`].
unsafe fn clone_vm(
    stack: &mut Stack,
    f: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> libc::pid_t {
    libc::clone(
        f,
        stack.top(),
        libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
        arg,
    )
}

/// Whether clone3 may start a child in its cgroup here: cleared when the
/// kernel says it cannot (too old, or not a cgroup v2 cell).
static CLONE3: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// The kernel's `struct clone_args` (version 2, with `cgroup`).
#[repr(C, align(8))]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `clone3(CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP | CLONE_PIDFD)`: the
/// child starts in the cell `home` (no migration), on `stack`, running
/// [`child`]; its pidfd lands in `pidfd`. Returns the pid; -1 when clone3
/// cannot do it on this kernel (the caller falls back to `clone`); -2 when
/// it failed otherwise, with errno set.
///
/// # Safety
/// Signals blocked; `args` and `stack` live until the child has exec'd or
/// exited (CLONE_VFORK makes this thread wait for that).
#[cfg(target_arch = "x86_64")]
unsafe fn born_in(
    home: RawFd,
    stack: &mut Stack,
    f: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
    pidfd: &mut RawFd,
) -> libc::pid_t {
    use std::sync::atomic::Ordering;
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    if !CLONE3.load(Ordering::Relaxed) {
        return -1;
    }
    let (low, len) = stack.bounds();
    let mut cl = CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD) as u64 | CLONE_INTO_CGROUP,
        pidfd: pidfd as *mut RawFd as u64,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: low,
        stack_size: len,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: home as u64,
    };
    let ret: i64;
    // The child comes out of the syscall on its own stack (its top, 16-byte
    // aligned) with every register as the parent had it but rax = 0: it
    // calls `child(args)` at once, which never returns. The parent jumps
    // past. No Rust code runs in the child before `child`.
    std::arch::asm!(
        "syscall",
        "test rax, rax",
        "jnz 2f",
        "mov rdi, r12",
        "call r13",
        "ud2",
        "2:",
        inlateout("rax") libc::SYS_clone3 => ret,
        in("rdi") &mut cl as *mut CloneArgs,
        in("rsi") std::mem::size_of::<CloneArgs>(),
        in("r12") arg,
        in("r13") f,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack),
    );
    if ret >= 0 {
        return ret as libc::pid_t;
    }
    let errno = -ret as libc::c_int;
    if matches!(
        errno,
        libc::ENOSYS | libc::EINVAL | libc::E2BIG | libc::EOPNOTSUPP
    ) {
        // This kernel cannot: never ask again, and fall back this time.
        CLONE3.store(false, Ordering::Relaxed);
        return -1;
    }
    *libc::__errno_location() = errno;
    -2
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn born_in(
    _: RawFd,
    _: &mut Stack,
    _: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    _: *mut libc::c_void,
    _: &mut RawFd,
) -> libc::pid_t {
    -1
}

/// Whether a child can be born in the cgroup v2 cell `home` (the
/// containment probe at start); None when this kernel's clone3 cannot say.
pub fn can_be_born_in(home: RawFd) -> Option<io::Result<()>> {
    extern "C" fn exit_at_once(_: *mut libc::c_void) -> libc::c_int {
        // SAFETY: _exit in the child, touching nothing.
        unsafe { libc::_exit(0) }
    }
    let mut stack = Stack::new(4096);
    let mut pidfd: RawFd = -1;
    // SAFETY: signals blocked across the clone as in `spawn`; the child
    // exits at once on its own stack.
    let pid = unsafe {
        let mut old: libc::sigset_t = std::mem::zeroed();
        block_signals(&mut old);
        let pid = born_in(
            home,
            &mut stack,
            exit_at_once,
            std::ptr::null_mut(),
            &mut pidfd,
        );
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        pid
    };
    if pidfd >= 0 {
        // SAFETY: clone3 gave us this descriptor; nothing else owns it.
        drop(unsafe { OwnedFd::from_raw_fd(pidfd) });
    }
    match pid {
        -1 => None,
        p if p < 0 => Some(Err(io::Error::last_os_error())),
        p => Some(match reap(p, 0) {
            Ok(Some(status)) if status.success() => Ok(()),
            Ok(_) => Err(io::Error::other("the probe did not exit 0")),
            Err(e) => Err(e),
        }),
    }
}

/// The child, between clone and execve: system calls only, on its own
/// stack, in warden's memory. Never returns.
extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `ChildArgs`, alive until this process
    // execs or exits (CLONE_VFORK); the calls below are raw system calls on
    // descriptors and strings the parent prepared.
    unsafe {
        let a = arg.cast::<ChildArgs>();
        // warden's handlers are not the program's: back to the defaults.
        // What warden ignores stays ignored, as across any exec, but SIGPIPE,
        // which Rust's runtime ignores, as std's spawn does.
        for sig in 1..=libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && (old.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE)
                && old.sa_sigaction != libc::SIG_DFL
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        if libc::setsid() < 0 {
            fail(a, c"setsid")
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
            fail(a, c"prctl(PR_SET_PDEATHSIG)")
        }
        if libc::getppid() != (*a).parent {
            // warden died before the prctl: nobody would read the output.
            *libc::__errno_location() = libc::ESRCH;
            fail(a, c"warden exited")
        }
        let cell = (*a).cell;
        if cell >= 0 && libc::write(cell, c"0".as_ptr().cast(), 1) != 1 {
            fail(a, c"joining its cgroup")
        }
        for i in 0..(*a).nlimits {
            let (resource, soft, hard) = (*a).limits[i];
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(resource as libc::__rlimit_resource_t, &limit) != 0 {
                fail(a, c"setrlimit")
            }
        }
        for (from, to) in [((*a).stdin, 0), ((*a).stdout, 1), ((*a).stderr, 2)] {
            // dup2 onto itself would leave close-on-exec set.
            let ok = if from == to {
                libc::fcntl(to, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(from, to) == to
            };
            if !ok {
                fail(a, c"dup2");
            }
        }
        if libc::chdir((*a).cwd) != 0 {
            fail(a, c"chdir");
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &(*a).mask, std::ptr::null_mut());
        libc::execve((*a).path, (*a).argv, (*a).envp);
        fail(a, c"execve")
    }
}

/// A child's failed step: its errno and name, left for warden; then exit.
///
/// # Safety
/// `a` is the parent's `ChildArgs`, in the child between clone and execve.
unsafe fn fail(a: *mut ChildArgs, step: &'static CStr) -> ! {
    (*a).errno = *libc::__errno_location();
    (*a).step = step.as_ptr();
    libc::_exit(127)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Where the last child below found its stack.
    static CHILD_SP: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn note_stack(_: *mut libc::c_void) -> libc::c_int {
        let here = 0u8;
        CHILD_SP.store(std::ptr::addr_of!(here) as usize, Ordering::SeqCst);
        // SAFETY: _exit in the child, touching nothing else.
        unsafe { libc::_exit(0) }
    }

    /// Runs `clone` with a 4 KiB stack (the probe's), and says whether the
    /// child ran inside it.
    fn child_stays_in_its_stack(clone: impl FnOnce(&mut Stack) -> libc::pid_t) -> Option<bool> {
        let mut stack = Stack::new(4096);
        let low = stack.0.as_ptr() as usize;
        let high = low + stack.0.capacity();
        CHILD_SP.store(0, Ordering::SeqCst);
        // SAFETY: signals blocked across the clone, as in `spawn`.
        let pid = unsafe {
            let mut old: libc::sigset_t = std::mem::zeroed();
            block_signals(&mut old);
            let pid = clone(&mut stack);
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            pid
        };
        if pid < 0 {
            return None;
        }
        let status = reap(pid, 0).unwrap().unwrap();
        assert!(status.success(), "{status}");
        let sp = CHILD_SP.load(Ordering::SeqCst);
        assert_ne!(sp, 0, "the child did not run");
        Some((low..high).contains(&sp))
    }

    /// A child given a stack smaller than the spawn's once wrote its frames
    /// 60 KiB past it, over warden's heap (a crash at start, now and then).
    #[test]
    fn a_clone_runs_inside_the_stack_it_is_given() {
        // SAFETY: the child only stores to a static and exits.
        let fallback =
            child_stays_in_its_stack(|s| unsafe { clone_vm(s, note_stack, std::ptr::null_mut()) });
        assert_eq!(fallback, Some(true), "clone(CLONE_VM)");

        // clone3, born in a cgroup v2 cell, where this machine has them.
        let Ok(cells) = crate::exec::contain::Cells::open(crate::config::Containment::Cgroup2)
        else {
            eprintln!("no cgroup v2 cells here: clone3 into a cell not tried");
            return;
        };
        let cell = cells.cell().unwrap().unwrap();
        let home = cell.home_fd().unwrap();
        let mut pidfd = -1;
        // SAFETY: as above.
        let born = child_stays_in_its_stack(|s| unsafe {
            born_in(home, s, note_stack, std::ptr::null_mut(), &mut pidfd)
        });
        if pidfd >= 0 {
            // SAFETY: clone3 gave us this descriptor.
            drop(unsafe { OwnedFd::from_raw_fd(pidfd) });
        }
        drop(cell);
        crate::exec::contain::end_root(cells.root().unwrap(), std::time::Duration::from_secs(5));
        assert_eq!(born, Some(true), "clone3 into a cell");
    }
}
