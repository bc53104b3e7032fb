//! The control actor: a Unix socket per running instance, for operators.
//!
//! The socket lives in a per-user directory (mode 0700) as `<pid>.sock` (mode
//! 0600), and every connection's peer uid is checked (SO_PEERCRED): only the
//! user warden runs as may talk to it. The protocol is newline-delimited JSON,
//! one request per line, one response per request:
//!
//! ```text
//! {"cmd":"status"}                                  → {"ok":true,"status":{...}}
//! {"cmd":"metrics"}                                 → {"ok":true,"metrics":"..."}
//! {"cmd":"kill","actor":"tool:echo"}                → {"ok":true,"killed":"tool:echo"}
//! {"cmd":"kill","actor":"tool:x","signal":"TERM"}   → {"ok":true,"signalled":2}
//! {"cmd":"breaker","tool":"x","action":"reset"}     → {"ok":true,"breaker":{...}}
//! {"cmd":"reload"}                                  → {"ok":true,"reload":{"outcome":"applied",...}}
//! ```
//!
//! A refused reload is still `ok` (the request was served): its `outcome` is
//! `refused`, with the problems.
//!
//! Failures answer `{"ok":false,"error":"..."}`.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use crate::core::breaker::Force;
use crate::core::names;
use crate::core::runtime::Runtime;
/// The longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;
/// How long a connection may sit without sending a request.
const IDLE_DEADLINE: Duration = Duration::from_secs(30);
/// Connections served at once; more wait for the accept loop.
const MAX_CONNECTIONS: usize = 16;
/// How long a request to another actor may take.
const ACTOR_DEADLINE: Duration = Duration::from_secs(5);

/// The per-user directories of control sockets for `setting` ("auto" or a
/// path). Where sockets may be, in order: for `auto`, the usual directory and then
/// a private fallback under `$HOME/.local/state/warden`, for when the usual
/// one cannot be trusted (another user can create `/tmp/warden-UID` first).
/// An instance listens in the first it can use; the commands look in all.
pub fn socket_dirs(setting: &str) -> Vec<PathBuf> {
    if setting != "auto" {
        return vec![PathBuf::from(setting)];
    }
    let usual = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if Path::new(&d).is_dir() => Path::new(&d).join("warden"),
        _ => PathBuf::from(format!("/tmp/warden-{}", nix::unistd::getuid())),
    };
    let mut dirs = vec![usual];
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        dirs.push(Path::new(&home).join(".local/state/warden"));
    }
    dirs
}

/// The socket path of the instance with process id `pid`.
pub fn socket_path(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("{pid}.sock"))
}

/// Why the socket directory, or a socket in it, cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("cannot create {}: {source}", .dir.display())]
    Create {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", .dir.display())]
    Read {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("{} belongs to another user", .0.display())]
    NotOurs(PathBuf),
    #[error("{} is open to other users (mode {mode:o}); it must be 0700", .dir.display())]
    Open { dir: PathBuf, mode: u32 },
    #[error("cannot bind {}: {source}", .path.display())]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot chmod {}: {source}", .path.display())]
    Chmod {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Creates the directory 0700 (not its parents), or takes an existing one;
/// either way it must then be a real directory, ours, and private.
pub fn prepare_dir(dir: &Path) -> Result<(), DirError> {
    // Recursive: the fallback's `~/.local/state` may not exist yet.
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(DirError::Create {
                dir: dir.to_path_buf(),
                source,
            })
        }
    }
    check_dir(dir)
}

/// The socket directory is trusted only if it is a directory (not a link),
/// owned by this user, and closed to everyone else.
pub fn check_dir(dir: &Path) -> Result<(), DirError> {
    let meta = std::fs::symlink_metadata(dir).map_err(|source| DirError::Read {
        dir: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(DirError::NotADirectory(dir.to_path_buf()));
    }
    if meta.uid() != nix::unistd::getuid().as_raw() {
        return Err(DirError::NotOurs(dir.to_path_buf()));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(DirError::Open {
            dir: dir.to_path_buf(),
            mode: meta.mode() & 0o777,
        });
    }
    Ok(())
}

/// Only the user warden runs as may use its control socket.
pub fn peer_allowed(peer_uid: u32, own_uid: u32) -> bool {
    peer_uid == own_uid
}

pub struct ControlActor;

pub struct ControlState {
    path: PathBuf,
    accept: JoinHandle<()>,
}

impl Drop for ControlState {
    /// A killed actor skips `post_stop`; its accept loop must die with it anyway.
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Actor for ControlActor {
    type Msg = ();
    type State = Option<ControlState>;
    type Arguments = Arc<Runtime>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        runtime: Arc<Runtime>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let setting = runtime.config.control.socket.clone();
        if setting == "off" {
            return Ok(None);
        }
        // A control socket that cannot be opened must not keep warden from serving.
        let mut refused = Vec::new();
        for dir in socket_dirs(&setting) {
            match listen(&dir) {
                Ok((listener, path)) => {
                    for e in &refused {
                        tracing::warn!(actor = names::CONTROL, refused = %e, socket = %path.display(), "the usual control directory cannot be trusted; the socket is in the fallback");
                    }
                    tracing::info!(actor = names::CONTROL, socket = %path.display(), "control socket ready");
                    let accept = tokio::spawn(accept_loop(listener, runtime));
                    return Ok(Some(ControlState { path, accept }));
                }
                Err(e) => refused.push(e),
            }
        }
        for e in &refused {
            tracing::error!(actor = names::CONTROL, error = %e, "no control socket; warden status will not see this instance");
        }
        Ok(None)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(s) = state.take() {
            s.accept.abort();
            let _ = std::fs::remove_file(&s.path);
        }
        Ok(())
    }
}

fn listen(dir: &Path) -> Result<(UnixListener, PathBuf), DirError> {
    prepare_dir(dir)?;
    let path = socket_path(dir, std::process::id());
    // A socket of ours from a dead process with our pid: gone with that process.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|source| DirError::Bind {
        path: path.clone(),
        source,
    })?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        DirError::Chmod {
            path: path.clone(),
            source,
        }
    })?;
    Ok((listener, path))
}

async fn accept_loop(listener: UnixListener, runtime: Arc<Runtime>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let own_uid = nix::unistd::getuid().as_raw();
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(actor = names::CONTROL, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let runtime = runtime.clone();
        tokio::spawn(async move {
            let _permit = permit;
            serve_connection(stream, runtime, own_uid).await;
        });
    }
}

async fn serve_connection(mut stream: UnixStream, runtime: Arc<Runtime>, own_uid: u32) {
    let peer = stream.peer_cred().map(|c| c.uid());
    match peer {
        Ok(uid) if peer_allowed(uid, own_uid) => {}
        other => {
            let who = other.map_or_else(|e| format!("unknown ({e})"), |u| u.to_string());
            tracing::warn!(actor = names::CONTROL, peer_uid = %who, "refused a control connection from another user");
            let line = json!({"ok": false, "error": format!("permission denied: uid {who} is not warden's user")});
            let _ = stream.write_all(format!("{line}\n").as_bytes()).await;
            return;
        }
    }
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read).take(u64::MAX);
    let mut line = String::new();
    loop {
        line.clear();
        reader.set_limit(MAX_REQUEST as u64 + 1);
        let n = match tokio::time::timeout(IDLE_DEADLINE, reader.read_line(&mut line)).await {
            Ok(Ok(n)) => n,
            _ => return,
        };
        if n == 0 {
            return;
        }
        let response = if line.len() > MAX_REQUEST || !line.ends_with('\n') {
            json!({"ok": false, "error": format!("request longer than {MAX_REQUEST} bytes")})
        } else {
            handle(&line, &runtime).await
        };
        let mut out = response.to_string();
        out.push('\n');
        // A client that stops reading must not hold a connection slot forever.
        match tokio::time::timeout(IDLE_DEADLINE, write.write_all(out.as_bytes())).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        if line.len() > MAX_REQUEST {
            return;
        }
    }
}

/// One request of the control protocol.
#[derive(Debug, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    // Struct variants, so that `deny_unknown_fields` applies to them too.
    Status {},
    Metrics {},
    Kill {
        actor: String,
        #[serde(default)]
        signal: Option<String>,
    },
    Breaker {
        tool: String,
        action: String,
    },
    Reload {},
}

/// Why a control request was refused; the operator reads the message.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("bad request: {0}")]
    BadRequest(#[from] serde_json::Error),
    #[error("unknown tool `{0}`")]
    UnknownTool(String),
    #[error("unknown breaker action `{0}` (open, closed, reset)")]
    UnknownAction(String),
    #[error("unknown signal `{0}` (for example TERM, KILL, STOP)")]
    UnknownSignal(String),
    #[error("refusing to kill the transport: it would end the client's session")]
    Transport,
    #[error("refusing to kill the root supervisor: it would end warden")]
    Root,
    #[error("`{0}` has no workers (only tool:NAME has)")]
    NoWorkers(String),
    #[error("`{0}` is not a worker number")]
    NotAWorker(String),
    #[error("`{tool}` has {workers} workers")]
    NoSuchWorker { tool: String, workers: usize },
    #[error("no running actor `{0}` (warden status lists them)")]
    NoActor(String),
    #[error("reload: {0}")]
    Reload(String),
}

/// Reads one request line. Public for the fuzz targets.
pub fn parse_request(line: &str) -> Result<Request, ControlError> {
    Ok(serde_json::from_str(line)?)
}

async fn handle(line: &str, runtime: &Arc<Runtime>) -> Value {
    let request = match parse_request(line) {
        Ok(r) => r,
        Err(e) => return json!({"ok": false, "error": e.to_string()}),
    };
    let result = match request {
        Request::Status {} => Ok(json!({ "status": runtime.status() })),
        Request::Metrics {} => Ok(json!({"metrics": runtime.metrics_text()})),
        Request::Kill { actor, signal } => kill(runtime, &actor, signal.as_deref()),
        Request::Breaker { tool, action } => force_breaker(runtime, &tool, &action),
        Request::Reload {} => runtime
            .reload(crate::core::reload::Trigger::Control)
            .await
            .map(|outcome| json!({ "reload": outcome }))
            .map_err(ControlError::Reload),
    };
    match result {
        Ok(Value::Object(mut m)) => {
            m.insert("ok".into(), json!(true));
            Value::Object(m)
        }
        Ok(other) => json!({"ok": true, "result": other}),
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    }
}

fn force_breaker(runtime: &Runtime, tool: &str, action: &str) -> Result<Value, ControlError> {
    let force = match action {
        "open" => Force::Open,
        "closed" | "close" => Force::Closed,
        "reset" => Force::Reset,
        other => return Err(ControlError::UnknownAction(other.to_string())),
    };
    let breaker = runtime
        .force_breaker(tool, force)
        .map_err(|e| ControlError::UnknownTool(e.0))?;
    Ok(json!({ "breaker": breaker }))
}

/// Chaos: kills one actor (its supervisor restarts it), or signals the
/// processes of a tool's running calls.
fn kill(runtime: &Runtime, actor: &str, signal: Option<&str>) -> Result<Value, ControlError> {
    if let Some(sig) = signal {
        let tool = actor
            .strip_prefix("tool:")
            .or_else(|| actor.strip_prefix("server:"))
            .unwrap_or(actor);
        runtime
            .tools()
            .get(tool)
            .ok_or_else(|| ControlError::UnknownTool(tool.to_string()))?;
        let signal = parse_signal(sig)?;
        let n = runtime.groups.signal(tool, signal);
        return Ok(json!({"signalled": n, "signal": format!("{signal:?}")}));
    }
    match actor {
        names::TRANSPORT => return Err(ControlError::Transport),
        names::ROOT => return Err(ControlError::Root),
        _ => {}
    }
    if let Some((tool, worker)) = actor.split_once("/worker:") {
        // Only a tool has workers: `warden/worker:0` would reach the root's
        // children, the transport among them.
        if !tool.starts_with("tool:") {
            return Err(ControlError::NoWorkers(tool.to_string()));
        }
        let index: usize = worker
            .parse()
            .map_err(|_| ControlError::NotAWorker(worker.to_string()))?;
        let cell = ractor::registry::where_is(registered(runtime, tool))
            .ok_or_else(|| ControlError::NoActor(tool.to_string()))?;
        let mut workers = cell.get_children();
        workers.sort_by_key(|c| c.get_id().pid());
        let w = workers
            .get(index)
            .ok_or_else(|| ControlError::NoSuchWorker {
                tool: tool.to_string(),
                workers: workers.len(),
            })?;
        w.kill();
        return Ok(json!({"killed": actor}));
    }
    let cell = ractor::registry::where_is(registered(runtime, actor))
        .ok_or_else(|| ControlError::NoActor(actor.to_string()))?;
    if actor == names::CONTROL {
        // Answer first: killing ourselves drops this connection's accept loop.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            cell.kill();
        });
    } else {
        cell.kill();
    }
    Ok(json!({"killed": actor}))
}

/// The name the actor an operator calls `actor` registers under: a tool
/// replaced by a reload runs as `tool:x@gN` (while the one it replaced
/// drains, both run), and `tool:x` means the one serving calls.
fn registered(runtime: &Runtime, actor: &str) -> String {
    let tool = actor
        .strip_prefix("tool:")
        .or_else(|| actor.strip_prefix("server:"));
    tool.and_then(|t| runtime.tools().get(t).map(|e| e.actor_name().to_string()))
        .filter(|name| name.starts_with(actor))
        .unwrap_or_else(|| actor.to_string())
}

/// A signal by name, with or without `SIG`. Public for the fuzz targets.
pub fn parse_signal(s: &str) -> Result<nix::sys::signal::Signal, ControlError> {
    let name = s.trim().to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse()
        .map_err(|_| ControlError::UnknownSignal(s.to_string()))
}

/// Why a request over the control socket got no answer, or was refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("cannot send: {0}")]
    Send(#[source] std::io::Error),
    #[error("no answer from warden within 10s")]
    NoAnswer,
    #[error("cannot read the answer: {0}")]
    Read(#[source] std::io::Error),
    #[error("warden closed the connection")]
    Closed,
    #[error("bad answer: {0}")]
    BadAnswer(#[source] serde_json::Error),
    /// warden's own reason.
    #[error("{0}")]
    Refused(String),
}

/// A client of one instance's control socket.
pub struct Client {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Client {
    pub async fn connect(path: &Path) -> std::io::Result<Client> {
        let stream = tokio::time::timeout(ACTOR_DEADLINE, UnixStream::connect(path))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        let (r, w) = stream.into_split();
        Ok(Client {
            reader: BufReader::new(r),
            writer: w,
        })
    }

    /// Sends one request and waits (with a deadline) for its response.
    pub async fn request(&mut self, request: &Value) -> Result<Value, RequestError> {
        let mut line = request.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(RequestError::Send)?;
        let mut answer = String::new();
        match tokio::time::timeout(ACTOR_DEADLINE * 2, self.reader.read_line(&mut answer)).await {
            Err(_) => Err(RequestError::NoAnswer),
            Ok(Err(e)) => Err(RequestError::Read(e)),
            Ok(Ok(0)) => Err(RequestError::Closed),
            Ok(Ok(_)) => {
                let v: Value = serde_json::from_str(&answer).map_err(RequestError::BadAnswer)?;
                if v["ok"] == json!(true) {
                    Ok(v)
                } else {
                    let why = v["error"].as_str().unwrap_or("unknown error");
                    Err(RequestError::Refused(why.to_string()))
                }
            }
        }
    }
}

/// A running instance found through its socket.
#[derive(Debug, Clone)]
pub struct Instance {
    pub pid: u32,
    pub socket: PathBuf,
}

/// The instances with a live socket in `dir`; sockets of dead processes are
/// removed. A directory that is not private to this user is refused.
pub async fn discover(dir: &Path) -> Result<Vec<Instance>, DirError> {
    let mut found = Vec::new();
    if !dir.exists() {
        return Ok(found);
    }
    check_dir(dir)?;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(found);
    };
    for e in entries.flatten() {
        let path = e.path();
        let Some(pid) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".sock"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        match UnixStream::connect(&path).await {
            Ok(_) => found.push(Instance { pid, socket: path }),
            // The file is there but nobody listens: the instance died without cleaning up.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                let _ = std::fs::remove_file(&path);
            }
            Err(_) => {}
        }
    }
    found.sort_by_key(|i| i.pid);
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_uid_is_allowed() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 0));
        assert!(
            !peer_allowed(0, 1000),
            "not even root talks to another user's warden"
        );
        assert!(!peer_allowed(65534, 0));
    }

    #[test]
    fn the_socket_directory_must_be_private() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("ctl");
        prepare_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(prepare_dir(&dir)
            .unwrap_err()
            .to_string()
            .contains("open to other users"));
        let file = base.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(prepare_dir(&file)
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
    }

    #[test]
    fn requests_parse_strictly() {
        assert!(matches!(
            serde_json::from_str(r#"{"cmd":"status"}"#),
            Ok(Request::Status {})
        ));
        assert!(matches!(
            serde_json::from_str(r#"{"cmd":"kill","actor":"tool:x","signal":"TERM"}"#),
            Ok(Request::Kill { .. })
        ));
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"status","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
        assert_eq!(
            parse_signal("term").unwrap(),
            nix::sys::signal::Signal::SIGTERM
        );
        assert_eq!(
            parse_signal("SIGKILL").unwrap(),
            nix::sys::signal::Signal::SIGKILL
        );
        assert!(parse_signal("NOPE").is_err());
    }
}
