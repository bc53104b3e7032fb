//! Running a command tool's program, safely.
//!
//! No shell, ever: the argv template is rendered element by element, and one
//! `{placeholder}` becomes part of exactly one argv element. The program runs
//! in its own session (so its whole process group can be killed), dies with
//! warden (PR_SET_PDEATHSIG), under rlimits, with a cleared environment and a
//! fixed working directory. Output is read while it streams, keeping at most
//! `max_output` bytes of each stream in memory.

pub mod guard;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

use crate::config::{ArgTemplate, CommandSpec, Piece};
use crate::core::error::{ErrorKind, ToolError};
use crate::supervise::tool::{Progress, ProgressFn, ToolOutput};

/// Linux refuses a single argv string longer than this (MAX_ARG_STRLEN, 32 pages).
pub const MAX_ARG_LEN: usize = 128 * 1024 - 1;
/// Bytes of stderr quoted in an `execution_failed` answer.
pub const STDERR_TAIL: usize = 2048;
/// Progress notifications for streamed output are sent at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// How long to wait for a killed process to be reaped before giving up on it.
const REAP_DEADLINE: Duration = Duration::from_secs(2);

/// Process groups of programs that are running now, with their tool, so that
/// shutdown can kill whatever is left and operators can see and signal them.
/// A `std` mutex: it is held for an insert, a remove or a copy only.
static LIVE_GROUPS: Mutex<BTreeMap<i32, String>> = Mutex::new(BTreeMap::new());

/// Kills every process group still registered (used at shutdown).
pub fn kill_all_groups() -> usize {
    let groups: Vec<i32> = LIVE_GROUPS.lock().unwrap().keys().copied().collect();
    for &g in &groups {
        let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
    }
    groups.len()
}

/// The process groups (= leader pids) of a tool's running calls.
pub fn tool_groups(tool: &str) -> Vec<i32> {
    LIVE_GROUPS
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, t)| t.as_str() == tool)
        .map(|(&g, _)| g)
        .collect()
}

/// Every live process group with its tool.
pub fn live_groups() -> std::collections::HashMap<i32, String> {
    LIVE_GROUPS
        .lock()
        .unwrap()
        .iter()
        .map(|(&g, t)| (g, t.clone()))
        .collect()
}

/// Why warden itself killed a group (the memory policy): its call's answer says so.
static KILL_REASONS: Mutex<BTreeMap<i32, String>> = Mutex::new(BTreeMap::new());

/// Kills a live process group with SIGKILL and records why, for the answer
/// of the call it was running. False when the group is not (or no longer) live.
pub fn kill_group_because(pgid: i32, reason: String) -> bool {
    // Under the live-groups lock, so the reason cannot outlive its group.
    let live = LIVE_GROUPS.lock().unwrap();
    if !live.contains_key(&pgid) {
        return false;
    }
    KILL_REASONS.lock().unwrap().insert(pgid, reason);
    killpg(Pid::from_raw(pgid), Signal::SIGKILL).is_ok()
}

/// Why warden killed a live group, if it did.
pub fn kill_reason(pgid: i32) -> Option<String> {
    KILL_REASONS.lock().unwrap().get(&pgid).cloned()
}

/// Sends `signal` to every process group of a tool's running calls.
pub fn signal_tool(tool: &str, signal: Signal) -> usize {
    let groups = tool_groups(tool);
    for &g in &groups {
        let _ = killpg(Pid::from_raw(g), signal);
    }
    groups.len()
}

/// A running program's process group: registered while it lives, killed and
/// unregistered when dropped.
pub struct GroupGuard(i32);

impl GroupGuard {
    pub fn register(pgid: i32, tool: &str) -> Self {
        LIVE_GROUPS.lock().unwrap().insert(pgid, tool.to_string());
        crate::exec::guard::watch(pgid);
        GroupGuard(pgid)
    }

    pub fn kill(&self) {
        let _ = killpg(Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
        let mut live = LIVE_GROUPS.lock().unwrap();
        live.remove(&self.0);
        KILL_REASONS.lock().unwrap().remove(&self.0);
        drop(live);
        crate::exec::guard::forget(self.0);
    }
}

/// Renders the argv template with validated arguments. An element whose
/// placeholder has no value (an optional argument left out) is dropped whole.
///
/// Option injection: before a literal `--` element, an element that starts
/// with a placeholder is where the program looks for options, so a value
/// starting with `-` is refused there (after `--`, or behind literal text such
/// as `--name={x}`, it is only ever data).
pub fn render_argv(
    template: &[ArgTemplate],
    args: &Map<String, Value>,
) -> Result<Vec<String>, ToolError> {
    let mut argv = Vec::with_capacity(template.len());
    let mut options_ended = false;
    for element in template {
        let mut out = String::new();
        let mut missing = false;
        // The placeholder the element starts with, if it starts with one.
        let mut leading = None;
        for piece in element.pieces() {
            let name = match piece {
                Piece::Text(t) => {
                    out.push_str(t);
                    continue;
                }
                Piece::Field(name) => name.as_str(),
            };
            let value = match args.get(name) {
                None | Some(Value::Null) => {
                    missing = true;
                    continue;
                }
                Some(Value::String(s)) => std::borrow::Cow::Borrowed(s.as_str()),
                Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string().into(),
                Some(_) => {
                    return Err(ToolError::new(
                        ErrorKind::Validation,
                        format!("Argument `{name}` must be a string, number or boolean."),
                        "Pass a single value for this argument.",
                    )
                    .detail("field", name))
                }
            };
            if out.is_empty() && value.starts_with('-') {
                leading.get_or_insert(name);
            }
            out.push_str(&value);
        }
        if let (Some(name), false) = (leading, options_ended) {
            return Err(ToolError::new(
                ErrorKind::Validation,
                format!("Argument `{name}` starts with `-`, where the program would read it as an option."),
                "Pass a value that does not start with `-` (for a file, prefix it with `./`).",
            )
            .detail("field", name)
            .detail("rule", "leading_dash"));
        }
        options_ended |= element.ends_options();
        if out.contains('\0') {
            return Err(ToolError::new(
                ErrorKind::Validation,
                "An argument contains a NUL byte, which cannot be passed to a program.",
                "Remove the NUL byte from the argument.",
            ));
        }
        if out.len() > MAX_ARG_LEN {
            return Err(ToolError::new(
                ErrorKind::Validation,
                format!("An argument is {} bytes long; a program's argument can be at most {MAX_ARG_LEN} bytes.", out.len()),
                "Send a shorter value.",
            )
            .detail("field", element.fields().collect::<Vec<_>>().join(","))
            .detail("rule", "max_arg_len"));
        }
        if !missing {
            argv.push(out);
        }
    }
    Ok(argv)
}

/// Checks the arguments listed in `paths`: each, taken relative to `cwd`,
/// must resolve inside `cwd` with every symlink followed. The longest part
/// that exists is resolved by the kernel (`canonicalize`); the rest, not yet
/// created, may not climb with `..`. The check happens before the program
/// starts: a symlink someone swaps in afterwards is not caught, so confine
/// tools to trees that callers cannot write.
pub fn confine_paths(
    cwd: &Path,
    paths: &[String],
    args: &Map<String, Value>,
) -> Result<(), ToolError> {
    let escape = |name: &str, why: &str| {
        ToolError::new(
            ErrorKind::Validation,
            format!(
                "Argument `{name}` {why}; it must stay inside {}.",
                cwd.display()
            ),
            "Pass a path inside the tool's directory, without `..` or symlinks out of it.",
        )
        .detail("field", name)
        .detail("rule", "outside_cwd")
    };
    if paths.is_empty() {
        // The common case, on every command call: no file system access.
        return Ok(());
    }
    let root = cwd
        .canonicalize()
        .map_err(|e| ToolError::internal(format!("the tool's cwd {}: {e}", cwd.display())))?;
    for name in paths {
        let Some(Value::String(value)) = args.get(name) else {
            continue;
        };
        let wanted = cwd.join(value);
        // The longest existing ancestor decides; below it are only plain names
        // (`file_name` is never `..`), which cannot climb out.
        let mut existing = wanted.as_path();
        let resolved = loop {
            match existing.canonicalize() {
                Ok(p) => break p,
                // It is there but does not resolve: a dangling or looping
                // symlink, or one warden may not follow.
                Err(_) if existing.symlink_metadata().is_ok() => {
                    return Err(escape(name, "is a link that does not resolve"))
                }
                Err(_) => match (existing.parent(), existing.file_name()) {
                    (Some(parent), Some(_)) => existing = parent,
                    // `..` at the end, or nothing left that exists.
                    _ => return Err(escape(name, "does not resolve to a path")),
                },
            }
        };
        if !resolved.starts_with(&root) {
            return Err(escape(name, "leads outside the tool's directory"));
        }
    }
    Ok(())
}

/// Finds the program: a path is taken as it is, a bare name is looked up in `path`.
pub fn resolve_program(program: &str, path: &str) -> Result<PathBuf, String> {
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return if executable(&p) {
            Ok(p)
        } else {
            Err(format!("`{program}` does not exist or is not executable"))
        };
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| executable(p))
        .ok_or_else(|| format!("`{program}` was not found in PATH ({path})"))
}

/// Makes a program warden launches its own session and process group (so the
/// whole group can be killed), dying with warden (PR_SET_PDEATHSIG), with no
/// core dumps and the rlimits of `limits`.
pub fn isolate(cmd: &mut tokio::process::Command, limits: crate::config::Limits) {
    let parent = std::process::id() as i32;
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (setsid, prctl, getppid, setrlimit).
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            if nix::unistd::getppid().as_raw() != parent {
                // warden died between fork and prctl: nobody will read our output.
                return Err(std::io::Error::other("parent exited"));
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

/// What `run` needs besides the spec.
pub struct Run<'a> {
    /// The tool this program runs for (for status and `warden kill --signal`).
    pub tool: &'a str,
    pub program: &'a Path,
    pub argv: Vec<String>,
    pub timeout: Duration,
    pub max_output: u64,
    pub cancel: &'a CancellationToken,
    pub progress: Option<&'a ProgressFn>,
}

enum Ending {
    Exited(
        std::io::Result<std::process::ExitStatus>,
        Captured,
        Captured,
    ),
    TimedOut,
    Cancelled,
}

/// Runs the program to completion, timeout or cancellation. Never leaves a
/// process of its group behind.
pub async fn run(spec: &CommandSpec, run: Run<'_>) -> Result<ToolOutput, ToolError> {
    let mut cmd = tokio::process::Command::new(run.program);
    cmd.args(&run.argv)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    isolate(&mut cmd, spec.limits.clone());
    let mut child = cmd.spawn().map_err(|e| spawn_error(&spec.program, e))?;
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    // Kills the group however this function ends, also when its future is
    // dropped half-way (the worker running it was killed).
    let group = GroupGuard::register(pgid, run.tool);
    let kill_group = || group.kill();
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let started = Instant::now();

    let ending = {
        let work = async {
            let progress = ProgressThrottle::new(run.progress);
            let (out, err, status) = tokio::join!(
                read_capped(stdout, run.max_output, KeepBytes::Head, Some(&progress)),
                read_capped(stderr, run.max_output, KeepBytes::Tail, None),
                async {
                    let status = child.wait().await;
                    // The leader is gone; end whatever it left running in its group,
                    // so that the pipes close and nothing outlives the call.
                    kill_group();
                    status
                }
            );
            Ending::Exited(status, out, err)
        };
        tokio::select! {
            ending = work => ending,
            _ = tokio::time::sleep(run.timeout) => Ending::TimedOut,
            _ = run.cancel.cancelled() => Ending::Cancelled,
        }
    };
    if !matches!(ending, Ending::Exited(..)) {
        kill_group();
        let _ = tokio::time::timeout(REAP_DEADLINE, child.wait()).await;
    }
    let killed_because = KILL_REASONS.lock().unwrap().remove(&pgid);
    drop(group);
    if let (Some(reason), Ending::Exited(..)) = (killed_because, &ending) {
        return Err(ToolError::new(
            ErrorKind::ExecutionFailed,
            format!(
                "`{}` was restarted by warden: {reason}.",
                program_name(&spec.program)
            ),
            "Retry; if it keeps happening, ask for less at once or ask the operator to raise the tool's memory budget.",
        )
        .detail("restarted_by", "recovery")
        .detail("duration_ms", started.elapsed().as_millis() as u64));
    }

    match ending {
        Ending::TimedOut => Err(ToolError::new(
            ErrorKind::Timeout,
            format!(
                "`{}` did not finish within {}; its process group was killed.",
                program_name(&spec.program),
                humantime::format_duration(run.timeout)
            ),
            "Retry with a narrower request, or ask the operator to raise this tool's timeout.",
        )
        .detail("timeout_ms", run.timeout.as_millis() as u64)),
        Ending::Cancelled => Err(ToolError::new(
            ErrorKind::Cancelled,
            "The call was cancelled; its process group was killed.",
            "Nothing to do; send the call again if you still need it.",
        )),
        Ending::Exited(status, out, err) => {
            let status = status
                .map_err(|e| ToolError::internal(format!("waiting for the program failed: {e}")))?;
            finish(spec, status, out, err, started.elapsed())
        }
    }
}

fn finish(
    spec: &CommandSpec,
    status: std::process::ExitStatus,
    out: Captured,
    err: Captured,
    elapsed: Duration,
) -> Result<ToolOutput, ToolError> {
    let stdout = String::from_utf8_lossy(&out.bytes).into_owned();
    if status.success() {
        let mut notes = Vec::new();
        if out.truncated() {
            notes.push(format!(
                "[warden: output truncated: kept the first {} of {} bytes]",
                out.bytes.len(),
                out.total
            ));
        }
        return Ok(ToolOutput {
            text: stdout,
            notes,
            downstream: None,
        });
    }
    let tail_start = err.bytes.len().saturating_sub(STDERR_TAIL);
    let stderr_tail = String::from_utf8_lossy(&err.bytes[tail_start..])
        .trim_end()
        .to_string();
    let (what, mut e) = match (status.code(), status.signal()) {
        (Some(code), _) => (
            format!("exited with status {code}"),
            ToolError::new(ErrorKind::ExecutionFailed, "", "").detail("exit_code", code),
        ),
        (None, Some(sig)) => (
            format!("was killed by signal {sig}"),
            ToolError::new(ErrorKind::ExecutionFailed, "", "").detail("signal", sig),
        ),
        (None, None) => (
            "ended abnormally".to_string(),
            ToolError::new(ErrorKind::ExecutionFailed, "", ""),
        ),
    };
    e.message = if stderr_tail.is_empty() {
        format!("`{}` {what}.", program_name(&spec.program))
    } else {
        format!("`{}` {what}: {stderr_tail}", program_name(&spec.program))
    };
    e.suggestion = "Check the arguments against the tool's description; the stderr tail says what the program objected to.".into();
    Err(e
        .detail("stderr_tail", stderr_tail)
        .detail("stdout", stdout)
        .detail("duration_ms", elapsed.as_millis() as u64))
}

/// The program as messages name it: its file name, not the path from the
/// actor file (which the operator has, and which would crowd out the reason).
pub fn program_name(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

fn spawn_error(program: &str, e: std::io::Error) -> ToolError {
    match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
            ToolError::unavailable(
                program,
                &format!("the program cannot be started ({e})"),
                None,
            )
        }
        _ => ToolError::internal(format!("starting `{program}` failed: {e}")),
    }
}

#[derive(Clone, Copy)]
enum KeepBytes {
    /// Keep the first bytes (stdout: the answer reads from the top).
    Head,
    /// Keep the last bytes (stderr: the error is usually at the end).
    Tail,
}

struct Captured {
    bytes: Vec<u8>,
    total: u64,
}

impl Captured {
    fn truncated(&self) -> bool {
        self.total > self.bytes.len() as u64
    }
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

/// Sends "bytes of output so far" as progress, at most every `PROGRESS_EVERY`.
struct ProgressThrottle<'a> {
    sink: Option<&'a ProgressFn>,
    last: Mutex<Option<Instant>>,
}

impl<'a> ProgressThrottle<'a> {
    fn new(sink: Option<&'a ProgressFn>) -> Self {
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
        sink(Progress {
            progress: bytes as f64,
            total: None,
            message: Some(format!("{bytes} bytes of output")),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn template(elements: &[&str]) -> Vec<ArgTemplate> {
        elements
            .iter()
            .map(|e| ArgTemplate::parse(e).unwrap())
            .collect()
    }

    #[test]
    fn one_placeholder_is_one_argv_element() {
        let t = template(&["-h", "{path}", "--depth={n}", "{{literal}}"]);
        let argv = render_argv(
            &t,
            &args(json!({"path": "/tmp; rm -rf / $(id) `id`", "n": 3})),
        )
        .unwrap();
        assert_eq!(
            argv,
            ["-h", "/tmp; rm -rf / $(id) `id`", "--depth=3", "{literal}"]
        );
    }

    #[test]
    fn missing_optional_argument_drops_its_element() {
        let t = template(&["a", "--n={n}", "{path}"]);
        assert_eq!(
            render_argv(&t, &args(json!({"path": "x"}))).unwrap(),
            ["a", "x"]
        );
    }

    #[test]
    fn structured_values_and_nul_bytes_are_refused() {
        let t = template(&["{x}"]);
        let e = render_argv(&t, &args(json!({"x": [1, 2]}))).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Validation);
        let e = render_argv(&t, &args(json!({"x": "a\u{0}b"}))).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Validation);
    }

    #[test]
    fn a_leading_dash_is_refused_where_options_are_read() {
        let t = template(&["{a}", "--n={a}", "--", "{b}"]);
        for hostile in [json!("-rf"), json!("--output=/etc/passwd"), json!(-5)] {
            let e = render_argv(&t, &args(json!({"a": hostile, "b": "x"}))).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Validation, "{hostile}");
            assert_eq!(e.details["rule"], "leading_dash");
            assert_eq!(e.details["field"], "a");
        }
        // Behind literal text, after `--`, or not at the start: only data.
        assert_eq!(
            render_argv(&t, &args(json!({"a": "x-y", "b": "-rf"}))).unwrap(),
            ["x-y", "--n=x-y", "--", "-rf"]
        );
        let t = template(&["pre{a}"]);
        assert_eq!(
            render_argv(&t, &args(json!({"a": "-x"}))).unwrap(),
            ["pre-x"]
        );
    }

    #[test]
    fn paths_stay_inside_cwd() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("out")).unwrap();
        std::os::unix::fs::symlink("sub", root.join("in")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/x", root.join("dangling")).unwrap();
        let check = |v: &str| confine_paths(&root, &["p".to_string()], &args(json!({"p": v})));
        for inside in [
            "",
            ".",
            "sub",
            "sub/../sub",
            "in",
            "in/new-file",
            "new/deeper",
            "./sub/",
        ] {
            assert!(check(inside).is_ok(), "{inside}");
        }
        for outside in [
            "..",
            "../root/../..",
            "/etc",
            "out",
            "out/passwd",
            "sub/../../x",
            "in/../../x",
            "dangling",
            "missing/..",
        ] {
            let e = check(outside).unwrap_err();
            assert_eq!(e.details["rule"], "outside_cwd", "{outside}");
        }
        // Absolute paths inside the root are fine.
        assert!(check(root.join("sub").to_str().unwrap()).is_ok());
        // Arguments not listed are not paths.
        assert!(confine_paths(&root, &[], &args(json!({"p": "/etc"}))).is_ok());
    }

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
}
