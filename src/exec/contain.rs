//! Containment: each program warden runs (a call's, or an MCP server), with
//! everything it starts, is held where warden can end all of it, also what
//! leaves its process group (`setsid`, `setpgid`, a double fork).
//!
//! A process group is a convention any process can leave; a cgroup cannot be
//! left without privilege. Where warden may create cgroups, every program gets
//! one, its *cell*, which the child joins before exec (so nothing it runs ever
//! starts outside), and ending the program ends the cell: `cgroup.kill` on
//! cgroup v2, freeze, kill, thaw with the v1 freezer. Where it may not, warden
//! becomes a child subreaper: what leaves its group and loses its parent
//! comes back to warden instead of init, and [`Groups`](super::Groups) sweeps it.
//!
//! The cells live in one directory per warden, `warden-PID`, next to warden's
//! own cgroup. The guardian ends whatever is left in it when warden dies, and
//! a warden that finds the directory of a dead one ends and removes it.

use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::config::Containment;

/// How long the freezer may take to freeze a cell before it is killed anyway.
const FREEZE_DEADLINE: Duration = Duration::from_millis(100);
/// How long the guardian and shutdown wait for killed cells to empty.
pub const EMPTY_DEADLINE: Duration = Duration::from_secs(2);

/// The containment in force, chosen once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Cgroup2,
    Freezer,
    Subreaper,
    /// Process groups only: the library's tests, which must not change the
    /// test process (no cgroups made, no subreaper).
    GroupsOnly,
}

impl Kind {
    /// The name `server.containment` and status use.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Cgroup2 => "cgroup2",
            Kind::Freezer => "freezer",
            Kind::Subreaper => "subreaper",
            Kind::GroupsOnly => "process-groups",
        }
    }

    /// Whether nothing a program starts can outlive it, even warden's SIGKILL.
    pub fn complete(self) -> bool {
        matches!(self, Kind::Cgroup2 | Kind::Freezer)
    }
}

/// Where the cells are made, and how they are ended.
#[derive(Debug)]
pub struct Cells {
    kind: Kind,
    /// `.../warden-PID`; None without cgroups.
    root: Option<PathBuf>,
    next: AtomicU64,
    /// Why a stronger containment was not available (for status and the log).
    why_not: Option<String>,
    /// Cells whose program ended with nothing left in them (cgroup v2),
    /// kept for the next programs: a call then pays for no cgroup mkdir,
    /// opens and rmdir.
    spare: std::sync::Mutex<Vec<Cell>>,
}

/// Cells kept for reuse at most.
const SPARE_CELLS: usize = 32;

impl Cells {
    /// The containment `want` names; for `auto`, the strongest this machine
    /// allows. Err when the one asked for is not available, and why.
    pub fn open(want: Containment) -> Result<Cells, String> {
        let me = std::process::id();
        let mut why_not = Vec::new();
        let tries: &[Kind] = match want {
            Containment::Auto => &[Kind::Cgroup2, Kind::Freezer],
            Containment::Cgroup2 => &[Kind::Cgroup2],
            Containment::Freezer => &[Kind::Freezer],
            Containment::Subreaper => &[],
        };
        for &kind in tries {
            match make_root(kind, me) {
                Ok(root) => {
                    return Ok(Cells {
                        kind,
                        root: Some(root),
                        next: AtomicU64::new(0),
                        why_not: None,
                        spare: Default::default(),
                    })
                }
                Err(e) => why_not.push(format!("{}: {e}", kind.name())),
            }
        }
        if want != Containment::Auto && want != Containment::Subreaper {
            return Err(why_not.join("; "));
        }
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| format!("cannot become a child subreaper: {e}"))?;
        Ok(Cells {
            kind: Kind::Subreaper,
            root: None,
            next: AtomicU64::new(0),
            why_not: (!why_not.is_empty()).then(|| why_not.join("; ")),
            spare: Default::default(),
        })
    }

    /// Process groups only (the library's tests).
    pub fn groups_only() -> Cells {
        Cells {
            kind: Kind::GroupsOnly,
            root: None,
            next: AtomicU64::new(0),
            why_not: None,
            spare: Default::default(),
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// Why no cgroup could be used, when none is.
    pub fn why_not(&self) -> Option<&str> {
        self.why_not.as_deref()
    }

    /// An empty cell for one program (None without cgroups): a spare one,
    /// or a new one.
    pub fn cell(&self) -> io::Result<Option<Cell>> {
        let Some(root) = &self.root else {
            return Ok(None);
        };
        if let Some(cell) = self.spare.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(Some(cell));
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Cell::create(root.join(format!("p{n}")), self.kind == Kind::Cgroup2).map(Some)
    }

    /// Takes back a cell whose program ended, for the next one: only a
    /// cgroup v2 cell that emptied without being killed (on Linux 6.18 a
    /// child born by clone3 into a cgroup once killed through `cgroup.kill`
    /// is killed at birth), while fewer than [`SPARE_CELLS`] are kept. Err
    /// gives it back, to be removed.
    pub fn recycle(&self, cell: Cell) -> Result<(), Cell> {
        if !cell.reusable() {
            return Err(cell);
        }
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        if spare.len() >= SPARE_CELLS {
            return Err(cell);
        }
        spare.push(cell);
        Ok(())
    }
}

/// One program's cgroup. Ending it ([`Cell::kill`]) ends every process in it.
#[derive(Debug)]
pub struct Cell {
    dir: PathBuf,
    /// Its `cgroup.procs`, opened before the fork: the child writes "0" to it
    /// (itself) before exec. Close-on-exec, so the program never holds it.
    procs: OwnedFd,
    /// On cgroup v2, the directory itself: a child can be born in the cell
    /// (`clone3` with `CLONE_INTO_CGROUP`) instead of moving into it, which
    /// costs the kernel a wait for an RCU grace period.
    home: Option<OwnedFd>,
    /// On cgroup v2, its `cgroup.kill`, opened with the cell: ending it is
    /// one write.
    killer: Option<fs::File>,
    /// On cgroup v2, its `cgroup.events`: whether anything is still in it.
    events: Option<fs::File>,
    /// How its program's time in it ended, once it has (cgroup v2): found
    /// empty, or killed. Either is final until the cell is recycled: only
    /// warden puts a process in a cell, and `cgroup.kill` lets no fork
    /// escape. So `cgroup.events` is read and `cgroup.kill` written once.
    ended: std::sync::atomic::AtomicU8,
}

/// `Cell::ended`: in use.
const LIVE: u8 = 0;
/// `Cell::ended`: found empty (reusable).
const EMPTIED: u8 = 1;
/// `Cell::ended`: killed through `cgroup.kill` (never reused).
const KILLED: u8 = 2;

impl Cell {
    fn create(dir: PathBuf, v2: bool) -> io::Result<Cell> {
        fs::create_dir(&dir)?;
        let open = || -> io::Result<Cell> {
            let procs = fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))?;
            let (home, killer, events) = if v2 {
                use std::os::unix::fs::OpenOptionsExt;
                let d = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(nix::libc::O_DIRECTORY)
                    .open(&dir)?;
                let k = fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("cgroup.kill"))?;
                let e = fs::File::open(dir.join("cgroup.events"))?;
                (Some(d.into()), Some(k), Some(e))
            } else {
                (None, None, None)
            };
            Ok(Cell {
                dir: dir.clone(),
                procs: procs.into(),
                home,
                killer,
                events,
                ended: LIVE.into(),
            })
        };
        open().inspect_err(|_| {
            let _ = fs::remove_dir(&dir);
        })
    }

    /// The descriptor a new child joins the cell through (see [`join`]).
    pub fn join_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// The cell's directory, for a child born in it (cgroup v2 only).
    pub fn home_fd(&self) -> Option<RawFd> {
        self.home.as_ref().map(AsRawFd::as_raw_fd)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills every process in the cell, wherever it moved in its session or
    /// process group.
    pub fn kill(&self) {
        use std::sync::atomic::Ordering;
        if let Some(mut k) = self.killer.as_ref() {
            if self.ended.load(Ordering::Relaxed) != LIVE {
                return;
            }
            // Nothing in it (the usual end of a call): nothing to kill, and
            // the cell can serve the next program.
            if self.populated() == Some(false) {
                self.ended.store(EMPTIED, Ordering::Relaxed);
                return;
            }
            if k.write_all(b"1").is_ok() {
                self.ended.store(KILLED, Ordering::Relaxed);
                return;
            }
        }
        end(&self.dir);
    }

    /// Whether processes are in the cell (cgroup v2), from `cgroup.events`.
    fn populated(&self) -> Option<bool> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 128];
        let n = self.events.as_ref()?.read_at(&mut buf, 0).ok()?;
        let text = std::str::from_utf8(&buf[..n]).ok()?;
        let line = text.lines().find_map(|l| l.strip_prefix("populated "))?;
        Some(line.trim() == "1")
    }

    /// Found empty at its program's end, never killed (see
    /// [`Cells::recycle`]); made ready for the next program.
    fn reusable(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.killer.is_some()
            && self
                .ended
                .compare_exchange(EMPTIED, LIVE, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// The processes in the cell now.
    pub fn members(&self) -> Vec<i32> {
        members(&self.dir)
    }

    /// Removes the cell; false while processes are still leaving it.
    pub fn remove(&self) -> bool {
        remove(&self.dir)
    }
}

/// In the forked child, before exec: moves the child into the cell behind
/// `fd`. Only async-signal-safe calls (write).
pub fn join(fd: RawFd) -> io::Result<()> {
    // SAFETY: `fd` is the cell's open cgroup.procs, kept open by the parent
    // until the spawn returns; the buffer is a static byte string.
    let n = unsafe { nix::libc::write(fd, b"0".as_ptr().cast(), 1) };
    if n == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Kills everything in a cell directory, by the means its files offer.
pub fn end(dir: &Path) {
    let kill_file = dir.join("cgroup.kill");
    if kill_file.exists() && write_file(&kill_file, "1").is_ok() {
        return;
    }
    let freezer = dir.join("freezer.state");
    let frozen = freezer.exists() && write_file(&freezer, "FROZEN").is_ok();
    if frozen {
        // Frozen, nothing in the cell can fork while it is listed and killed.
        let deadline = Instant::now() + FREEZE_DEADLINE;
        while fs::read_to_string(&freezer).is_ok_and(|s| s.trim() != "FROZEN")
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // Also what a (privileged) program moved into cgroups below its own.
    for pid in members(dir) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    if frozen {
        // The killed processes die when thawed.
        let _ = write_file(&freezer, "THAWED");
    }
}

/// Every process in a cell and the cgroups below it.
fn members(dir: &Path) -> Vec<i32> {
    let mut out: Vec<i32> = fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for sub in subdirs(dir) {
        out.extend(members(&sub));
    }
    out
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// Removes a cell (and any cgroups made below it); false while busy.
fn remove(dir: &Path) -> bool {
    // A cell is a leaf unless a program made cgroups in it: try at once.
    match fs::remove_dir(dir) {
        Ok(()) => return true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
        Err(_) => {}
    }
    for sub in subdirs(dir) {
        remove(&sub);
    }
    match fs::remove_dir(dir) {
        Ok(()) => true,
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    }
}

/// Ends every cell under a warden's root and removes them and the root,
/// waiting up to `deadline` for killed processes to leave. What the
/// guardian does when warden dies; also warden's own last step.
pub fn end_root(root: &Path, deadline: Duration) -> bool {
    let cells = subdirs(root);
    for cell in &cells {
        end(cell);
    }
    let until = Instant::now() + deadline;
    loop {
        let all = cells.iter().filter(|c| !remove(c)).count() == 0;
        if all && remove(root) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        // Killed processes take a moment to exit; end again what is left
        // (a process that was forking when the freezer missed it).
        std::thread::sleep(Duration::from_millis(5));
        for cell in &cells {
            if !members(cell).is_empty() {
                end(cell);
            }
        }
    }
}

fn write_file(path: &Path, value: &str) -> io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

/// Makes `warden-PID` next to warden's own cgroup in the hierarchy of
/// `kind`, after ending what dead wardens left there.
fn make_root(kind: Kind, me: u32) -> Result<PathBuf, String> {
    let base = own_cgroup_dir(kind)?;
    for stale in stale_roots(&base) {
        end_root(&stale, Duration::from_millis(200));
    }
    let root = base.join(format!("warden-{me}"));
    fs::create_dir(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let usable = (|| {
        if kind == Kind::Cgroup2 && !root.join("cgroup.kill").exists() {
            return Err("this kernel has no cgroup.kill (Linux 5.14 or later has)".to_string());
        }
        // A child moves from warden's cgroup into a cell: both sides' common
        // ancestor's cgroup.procs must be writable.
        nix::unistd::access(&base.join("cgroup.procs"), nix::unistd::AccessFlags::W_OK)
            .map_err(|e| format!("cannot move processes in {}: {e}", base.display()))?;
        probe(&root, kind == Kind::Cgroup2)
            .map_err(|e| format!("a process cannot join a cell: {e}"))
    })();
    if let Err(e) = usable {
        let _ = fs::remove_dir(&root);
        return Err(e);
    }
    Ok(root)
}

/// Whether a child can join a cell under `root` (cgroup v2 refuses
/// processes where controllers are enabled below, for one).
/// On cgroup v2 the probe is a child born in the cell, as programs are (see
/// `spawn`): no migration, whose wait for an RCU grace period was most of
/// warden's time to ready.
fn probe(root: &Path, v2: bool) -> io::Result<()> {
    let cell = Cell::create(root.join("probe"), v2)?;
    let fd = cell.join_fd();
    let born = cell.home_fd().and_then(super::spawn::can_be_born_in);
    // SAFETY: the child only writes to an open descriptor and exits.
    let joined = if let Some(born) = born {
        born.is_ok()
    } else {
        match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
            nix::unistd::ForkResult::Child => {
                let code = if join(fd).is_ok() { 0 } else { 1 };
                // SAFETY: _exit is async-signal-safe and skips the parent's atexit state.
                unsafe { nix::libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                matches!(
                    nix::sys::wait::waitpid(child, None),
                    Ok(nix::sys::wait::WaitStatus::Exited(_, 0))
                )
            }
        }
    };
    let deadline = Instant::now() + Duration::from_millis(200);
    while !cell.remove() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    if joined {
        Ok(())
    } else {
        Err(io::Error::other("writing to its cgroup.procs failed"))
    }
}

/// The `warden-PID` directories of wardens that are gone.
fn stale_roots(base: &Path) -> Vec<PathBuf> {
    fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let pid: u32 = name.strip_prefix("warden-")?.parse().ok()?;
            (!Path::new(&format!("/proc/{pid}")).exists()).then(|| e.path())
        })
        .collect()
}

/// The directory of warden's own cgroup in the hierarchy of `kind`.
fn own_cgroup_dir(kind: Kind) -> Result<PathBuf, String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let own = fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let (mount, path) = match kind {
        Kind::Cgroup2 => (
            mount_point(&mountinfo, |fstype, _| fstype == "cgroup2"),
            own_path(&own, |controllers| controllers.is_empty()),
        ),
        Kind::Freezer => {
            let freezer = |opts: &str| opts.split(',').any(|o| o == "freezer");
            (
                mount_point(&mountinfo, |fstype, opts| {
                    fstype == "cgroup" && freezer(opts)
                }),
                own_path(&own, freezer),
            )
        }
        _ => unreachable!("only cgroups have a directory"),
    };
    let mount = mount.ok_or("not mounted")?;
    let path = path.ok_or("warden is in no cgroup of this hierarchy")?;
    Ok(mount.join(path.trim_start_matches('/')))
}

/// The mount point of the first filesystem `matches(fstype, super options)` accepts.
fn mount_point(mountinfo: &str, matches: impl Fn(&str, &str) -> bool) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount = left.split(' ').nth(4)?;
        let mut right = right.split(' ');
        let (fstype, _source, opts) = (right.next()?, right.next()?, right.next()?);
        // Octal escapes (a space is \040) are not worth decoding: skip such mounts.
        (matches(fstype, opts) && !mount.contains('\\')).then(|| PathBuf::from(mount))
    })
}

/// Warden's path in the hierarchy whose controller list `matches`.
fn own_path(cgroup: &str, matches: impl Fn(&str) -> bool) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        matches(controllers).then(|| path.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_and_own_paths_are_read_from_proc() {
        let mountinfo = "\
25 30 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
30 25 0:26 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
31 25 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            mount_point(mountinfo, |t, _| t == "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            mount_point(mountinfo, |t, o| t == "cgroup" && o.contains("freezer")),
            Some(PathBuf::from("/sys/fs/cgroup/freezer"))
        );
        let cgroup = "6:freezer:/a/b\n4:memory:/m\n0::/user.slice/x.scope\n";
        assert_eq!(
            own_path(cgroup, |c| c.is_empty()).as_deref(),
            Some("/user.slice/x.scope")
        );
        assert_eq!(
            own_path(cgroup, |c| c.split(',').any(|c| c == "freezer")).as_deref(),
            Some("/a/b")
        );
    }
}
