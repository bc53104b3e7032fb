//! Configuration: `config.toml` for the runtime and one `actors/*.toml` per tool.
//!
//! Everything is typed with serde and `deny_unknown_fields`; durations are
//! humantime strings and sizes are strings like "1MiB". Loading never stops at
//! the first problem: [`load`] returns every problem it finds, each naming the
//! file, the field and the reason, so `warden check` can print them all.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Default for `server.max_in_flight`: calls running or queued, all tools together.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;
/// Default for `server.shutdown_grace`: how long in-flight calls may finish after stdin closes.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Default for `server.max_line`, in bytes: a longer request line is refused unread.
pub const DEFAULT_MAX_LINE: u64 = 16 << 20;
/// Default for `log.level` and `log.stderr`. rmcp's info-level span wraps every
/// request; entering it on each poll is measurable per call, and it says nothing
/// warden's own call line does not.
pub const DEFAULT_LOG_FILTER: &str = "info,rmcp=warn";
/// Default for `server.worker_threads`: one thread runs every actor (about 5×
/// faster per call than two; see BENCHMARKS.md). Two or more let the watchdog
/// answer even while a task holds a thread.
pub const DEFAULT_WORKER_THREADS: usize = 1;
/// Default for `defaults.concurrency`: workers per tool.
pub const DEFAULT_CONCURRENCY: usize = 2;
/// Default for `defaults.queue`: jobs waiting per tool beyond the busy workers.
pub const DEFAULT_QUEUE: usize = 16;
/// Default for `defaults.timeout`: the deadline of one call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for `defaults.max_output`, in bytes, for stdout and for stderr each.
pub const DEFAULT_MAX_OUTPUT: u64 = 1 << 20;
/// Default for `defaults.grace`: how long past its deadline a call may take
/// before the caller answers `timeout` without waiting for the worker.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);
/// Default for `supervisor.max_restarts` within `supervisor.window`.
pub const DEFAULT_MAX_RESTARTS: u32 = 5;
/// Default for `supervisor.window`.
pub const DEFAULT_RESTART_WINDOW: Duration = Duration::from_secs(30);
/// Default for `supervisor.backoff.min`.
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Default for `supervisor.backoff.max`.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Environment variables a command tool gets unless its file says otherwise.
pub const DEFAULT_ENV_PASS: &[&str] = &["LANG", "LC_ALL", "TZ"];
/// `PATH` given to command tools (the parent's `PATH` is not inherited).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Environment variables an MCP server gets unless its file says otherwise:
/// servers are often launched through `npx` or `uvx`, which need `PATH` and `HOME`.
pub const DEFAULT_MCP_ENV_PASS: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ"];
/// Default for `supervisor.cooloff`: how long a tool failed past its restart
/// budget waits before it is tried again (with a fresh budget).
pub const DEFAULT_COOLOFF: Duration = Duration::from_secs(300);
/// Default for an MCP server's `ping_every`.
pub const DEFAULT_PING_EVERY: Duration = Duration::from_secs(10);
/// Default for an MCP server's `ping_timeout`; two missed pings in a row and
/// the server is wedged.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for an MCP server's `start_timeout`: launch, `initialize` and the
/// first listing of its tools, prompts and resources.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);

/// One problem found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.file.display(),
            self.field,
            self.reason
        )
    }
}

/// A size in bytes, written in config as "1MiB", "512KiB", "64MB" or "4096".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("`{s}` is not a size (write it like \"1MiB\" or \"64KiB\")"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` (use B, KiB, MiB, GiB, KB, MB or GB)"
                ))
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n >= 1 << 30 && n.is_multiple_of(1 << 30) {
            write!(f, "{}GiB", n >> 30)
        } else if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", n >> 20)
        } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", n >> 10)
        } else {
            write!(f, "{n}B")
        }
    }
}

/// The runtime configuration, `config.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub supervisor: SupervisorConfig,
    pub defaults: ToolDefaults,
    pub breaker: BreakerConfig,
    pub log: LogConfig,
    pub control: ControlConfig,
    pub http: HttpConfig,
    pub memory: MemoryConfig,
    pub lag: LagConfig,
}

/// The memory budget of the whole process tree and the recovery levels, as
/// fractions of it. Each level is entered at its threshold and left 5 points
/// below it, so a tree hovering at a threshold does not flap.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// The budget: "auto" (the cgroup v2 `memory.max` of warden's cgroup when
    /// set, else total RAM) or a size such as "512MiB".
    pub limit: MemoryLimit,
    /// Every actor sheds what it holds; the allocator returns free memory.
    pub trim_at: f64,
    /// `low` tools answer `degraded`; `normal` ones run at half concurrency.
    pub degrade_at: f64,
    /// The heaviest child is restarted, one at a time, until below `degrade_at`.
    pub restart_at: f64,
    /// How often the health actor measures memory.
    #[serde(with = "humantime_serde")]
    pub sample_every: Duration,
    /// The least time between two restarts by the memory policy.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            limit: MemoryLimit::Auto,
            trim_at: 0.70,
            degrade_at: 0.90,
            restart_at: 0.95,
            sample_every: Duration::from_secs(1),
            cooldown: Duration::from_secs(5),
        }
    }
}

/// `memory.limit`: "auto" or a size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryLimit {
    Auto,
    Fixed(ByteSize),
}

impl<'de> Deserialize<'de> for MemoryLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match ByteSizeOrAuto::deserialize(d)? {
            ByteSizeOrAuto::Str(s) if s == "auto" => Ok(MemoryLimit::Auto),
            ByteSizeOrAuto::Str(s) => ByteSize::parse(&s)
                .map(MemoryLimit::Fixed)
                .map_err(|e| serde::de::Error::custom(format!("{e}, or \"auto\""))),
            ByteSizeOrAuto::Int(n) => Ok(MemoryLimit::Fixed(ByteSize(n))),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ByteSizeOrAuto {
    Int(u64),
    Str(String),
}

/// Event-loop lag (how late a periodic tick fires, or how long a runtime
/// thread has been stuck in one task) and what each threshold does.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LagConfig {
    /// Above it, lag is logged.
    #[serde(with = "humantime_serde")]
    pub warn: Duration,
    /// Above it, health is unhealthy.
    #[serde(with = "humantime_serde")]
    pub alert: Duration,
    /// Above it, recovery replaces the actors whose calls are past their deadline.
    #[serde(with = "humantime_serde")]
    pub recover: Duration,
}

impl Default for LagConfig {
    fn default() -> Self {
        LagConfig {
            warn: Duration::from_millis(100),
            alert: Duration::from_secs(5),
            recover: Duration::from_secs(10),
        }
    }
}

/// Below this, `memory.limit` could not even hold warden at rest.
pub const IDLE_FOOTPRINT: u64 = 16 << 20;

/// The control socket `warden status`, `kill` and `metrics` talk to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// "auto": `$XDG_RUNTIME_DIR/warden` (or `/tmp/warden-<uid>`), one socket
    /// per instance named after its pid; "off": none; else a directory.
    pub socket: String,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: "auto".into(),
        }
    }
}

/// The optional HTTP listener: /metrics, /health, /ready.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// An address such as "127.0.0.1:9464"; empty: no listener.
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Directory of the actor files; relative to the config file.
    pub actors_dir: PathBuf,
    /// Calls running or queued across all tools; beyond it a call answers `busy`.
    pub max_in_flight: usize,
    /// After stdin closes or SIGTERM, how long in-flight calls may still finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// The longest request line read from stdin.
    pub max_line: ByteSize,
    /// Threads running the actors: 1 is a single-threaded runtime (no
    /// cross-thread wake-ups per call); more is tokio's multi-thread runtime.
    pub worker_threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            actors_dir: PathBuf::from("actors"),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            max_line: ByteSize(DEFAULT_MAX_LINE),
            worker_threads: DEFAULT_WORKER_THREADS,
        }
    }
}

/// Restart policy of the tools supervisor, in OTP's vocabulary.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// Restarts allowed per tool within `window`; one more and the tool is `failed`.
    pub max_restarts: u32,
    /// Also how long a restarted tool must stay up before its backoff starts
    /// again from `backoff.min`.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    pub backoff: Backoff,
    /// A tool failed past its budget is tried again after this, with a fresh budget.
    #[serde(with = "humantime_serde")]
    pub cooloff: Duration,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            max_restarts: DEFAULT_MAX_RESTARTS,
            window: DEFAULT_RESTART_WINDOW,
            backoff: Backoff::default(),
            cooloff: DEFAULT_COOLOFF,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Backoff {
    #[serde(with = "humantime_serde")]
    pub min: Duration,
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: DEFAULT_BACKOFF_MIN,
            max: DEFAULT_BACKOFF_MAX,
        }
    }
}

/// Per-tool defaults; every actor file may override them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolDefaults {
    pub concurrency: usize,
    pub queue: usize,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    pub max_output: ByteSize,
}

impl Default for ToolDefaults {
    fn default() -> Self {
        ToolDefaults {
            concurrency: DEFAULT_CONCURRENCY,
            queue: DEFAULT_QUEUE,
            timeout: DEFAULT_TIMEOUT,
            grace: DEFAULT_GRACE,
            max_output: ByteSize(DEFAULT_MAX_OUTPUT),
        }
    }
}

/// Circuit breaker policy, in resilience4j's vocabulary. `[breaker]` holds the
/// defaults; an actor file's `[breaker]` table overrides any of them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Off: the tool's calls are never refused by its breaker.
    pub enabled: bool,
    /// The last N calls whose outcomes decide.
    pub window: usize,
    /// Calls needed in the window before the rates count.
    pub min_calls: usize,
    /// Failure rate (0..=1) at which the breaker opens.
    pub failure_rate: f64,
    /// A call longer than this is slow.
    #[serde(with = "humantime_serde")]
    pub slow_call: Duration,
    /// Slow-call rate (0..=1) at which the breaker opens.
    pub slow_rate: f64,
    /// How long it stays open before letting trial calls through.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    /// The cap of `open_for` as it grows after failed trials.
    #[serde(with = "humantime_serde")]
    pub open_for_max: Duration,
    /// `open_for` is multiplied by this after each failed trial.
    pub backoff_factor: f64,
    /// Trial calls let through when half-open.
    pub half_open_calls: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            window: 20,
            min_calls: 10,
            failure_rate: 0.5,
            slow_call: Duration::from_secs(10),
            slow_rate: 0.8,
            open_for: Duration::from_secs(30),
            open_for_max: Duration::from_secs(300),
            backoff_factor: 2.0,
            half_open_calls: 3,
        }
    }
}

/// An actor file's `[breaker]`: any field of `BreakerConfig`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerOverride {
    pub enabled: Option<bool>,
    pub window: Option<usize>,
    pub min_calls: Option<usize>,
    pub failure_rate: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    pub slow_call: Option<Duration>,
    pub slow_rate: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    pub open_for: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub open_for_max: Option<Duration>,
    pub backoff_factor: Option<f64>,
    pub half_open_calls: Option<usize>,
}

impl BreakerConfig {
    fn merged(&self, o: &BreakerOverride) -> BreakerConfig {
        BreakerConfig {
            enabled: o.enabled.unwrap_or(self.enabled),
            window: o.window.unwrap_or(self.window),
            min_calls: o.min_calls.unwrap_or(self.min_calls),
            failure_rate: o.failure_rate.unwrap_or(self.failure_rate),
            slow_call: o.slow_call.unwrap_or(self.slow_call),
            slow_rate: o.slow_rate.unwrap_or(self.slow_rate),
            open_for: o.open_for.unwrap_or(self.open_for),
            open_for_max: o.open_for_max.unwrap_or(self.open_for_max),
            backoff_factor: o.backoff_factor.unwrap_or(self.backoff_factor),
            half_open_calls: o.half_open_calls.unwrap_or(self.half_open_calls),
        }
    }

    /// Every inconsistency, as (field, reason).
    fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.window == 0 {
            out.push(("window", "must be at least 1".to_string()));
        }
        if self.min_calls == 0 || self.min_calls > self.window {
            out.push((
                "min_calls",
                format!("must be between 1 and window ({})", self.window),
            ));
        }
        for (field, rate) in [
            ("failure_rate", self.failure_rate),
            ("slow_rate", self.slow_rate),
        ] {
            if !(rate > 0.0 && rate <= 1.0) {
                out.push((field, format!("{rate} must be in (0, 1]")));
            }
        }
        if self.open_for.is_zero() || self.open_for > self.open_for_max {
            out.push(("open_for", "needs 0 < open_for <= open_for_max".to_string()));
        }
        if self.backoff_factor.is_nan() || self.backoff_factor < 1.0 {
            out.push(("backoff_factor", "must be at least 1".to_string()));
        }
        if self.half_open_calls == 0 {
            out.push(("half_open_calls", "must be at least 1".to_string()));
        }
        if self.slow_call.is_zero() {
            out.push(("slow_call", "must be longer than 0s".to_string()));
        }
        out
    }
}

/// A rate limit, written "10/s", "600/m" or "100/h".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
}

impl Rate {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (n, unit) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not a rate (write it like \"10/s\")"))?;
        let n: f64 = n
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: `{n}` is not a number"))?;
        let secs = match unit.trim() {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("`{s}`: unknown unit `{other}` (use s, m or h)")),
        };
        if !(n > 0.0 && n.is_finite()) {
            return Err(format!("`{s}`: the count must be above 0"));
        }
        Ok(Rate {
            per_second: n / secs,
        })
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Rate::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A tool's token bucket: `rate` refills, `burst` is the most it holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub rate: Rate,
    pub burst: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rotation {
    Minutely,
    Hourly,
    Daily,
    Never,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Directory of the rolling JSON log files; relative to the config file.
    pub dir: PathBuf,
    pub rotation: Rotation,
    /// Log files kept; older ones are deleted.
    pub keep: usize,
    /// Level of the JSON file log (a tracing filter such as "info" or "warden=debug").
    pub level: String,
    /// Level of the readable lines on stderr ("off" for none).
    pub stderr: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            dir: PathBuf::from("logs"),
            rotation: Rotation::Daily,
            keep: 7,
            level: DEFAULT_LOG_FILTER.into(),
            stderr: DEFAULT_LOG_FILTER.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolKind {
    Command,
    Builtin,
    Mcp,
}

/// When an MCP server that ended is started again, in OTP's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestartType {
    /// Always.
    #[default]
    Permanent,
    /// Only after an abnormal end (a crash, a signal, a non-zero exit, a wedge).
    Transient,
    /// Never.
    Temporary,
}

/// Who is shed first under memory pressure (used by the recovery policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Critical,
    #[default]
    Normal,
    Low,
}

/// Resource limits applied in a command tool's process (setrlimit).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// CPU time (RLIMIT_CPU), rounded up to whole seconds.
    #[serde(default, with = "humantime_serde")]
    pub cpu: Option<Duration>,
    /// Address space (RLIMIT_AS).
    pub memory: Option<ByteSize>,
    /// Open file descriptors (RLIMIT_NOFILE).
    pub open_files: Option<u64>,
}

/// One tool, as written in `actors/<name>.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorFile {
    pub name: String,
    pub kind: ToolKind,
    #[serde(default)]
    pub description: String,
    /// For `builtin`: which builtin (defaults to `name`).
    pub builtin: Option<String>,
    /// For `command` and `mcp`: the program, a path or a name looked up in `PATH`.
    pub command: Option<String>,
    /// For `command`: the argv template; `{field}` is replaced by one argument.
    /// For `mcp`: the arguments, taken literally.
    #[serde(default)]
    pub args: Vec<String>,
    /// For `command` and `mcp`: the working directory (default `/`).
    pub cwd: Option<PathBuf>,
    /// For `command` and `mcp`: environment variables set for the program.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// For `command` and `mcp`: variables passed through from warden's environment.
    pub env_pass: Option<Vec<String>>,
    /// For `command`: the arguments that name files. Each must resolve, with
    /// symlinks followed, inside `cwd`; `..` and symlinks out are refused.
    #[serde(default)]
    pub paths: Vec<String>,
    /// For `mcp`: the server's tools and prompts are exported as `<prefix>_<name>`
    /// (default: the actor's name).
    pub prefix: Option<String>,
    /// For `mcp`: how often the server is pinged.
    #[serde(default, with = "humantime_serde")]
    pub ping_every: Option<Duration>,
    /// For `mcp`: a ping unanswered this long is missed; two in a row and the server is restarted.
    #[serde(default, with = "humantime_serde")]
    pub ping_timeout: Option<Duration>,
    /// For `mcp`: launch, handshake and first listing must finish within this.
    #[serde(default, with = "humantime_serde")]
    pub start_timeout: Option<Duration>,
    /// For `mcp`: permanent (default), transient or temporary.
    pub restart: Option<RestartType>,
    pub concurrency: Option<usize>,
    pub queue: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub max_output: Option<ByteSize>,
    #[serde(default)]
    pub priority: Priority,
    /// The resident-memory budget of each of this tool's child processes: at
    /// the `[memory]` thresholds of it the child is trimmed, degraded, restarted.
    pub memory: Option<ByteSize>,
    /// JSON Schema of the arguments (command tools).
    pub input: Option<toml::Table>,
    #[serde(default)]
    pub limits: Limits,
    /// Overrides of `[breaker]` for this tool.
    #[serde(default)]
    pub breaker: BreakerOverride,
    /// Calls allowed per time unit ("10/s"); beyond it: rate_limited.
    pub rate: Option<Rate>,
    /// Calls allowed at once from a full bucket (default: one second's worth).
    pub burst: Option<u32>,
}

/// A tool ready to run: its actor file with the defaults applied.
#[derive(Debug, Clone)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub file: PathBuf,
    pub kind: ToolKindSpec,
    pub concurrency: usize,
    pub queue: usize,
    pub timeout: Duration,
    pub grace: Duration,
    pub max_output: u64,
    pub priority: Priority,
    /// Resident-memory budget of each child process of this tool.
    pub memory: Option<u64>,
    /// JSON Schema of the arguments, as JSON.
    pub input_schema: serde_json::Map<String, serde_json::Value>,
    pub breaker: BreakerConfig,
    pub rate_limit: Option<RateLimit>,
}

#[derive(Debug, Clone)]
pub enum ToolKindSpec {
    Command(CommandSpec),
    Builtin(crate::backends::builtin::Builtin),
    Mcp(McpSpec),
}

impl ToolSpec {
    /// The registered name of the tool's actor: `tool:<name>`, or
    /// `server:<name>` for an MCP server.
    pub fn actor_name(&self) -> String {
        match self.kind {
            ToolKindSpec::Mcp(_) => crate::backends::mcp::actor_name(&self.name),
            _ => crate::supervise::tool::actor_name(&self.name),
        }
    }

    pub fn mcp(&self) -> Option<&McpSpec> {
        match &self.kind {
            ToolKindSpec::Mcp(m) => Some(m),
            _ => None,
        }
    }
}

/// A downstream MCP server, launched over stdio and supervised.
#[derive(Clone)]
pub struct McpSpec {
    pub program: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// The complete environment of the server (nothing else is inherited).
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    pub prefix: String,
    pub ping_every: Duration,
    pub ping_timeout: Duration,
    pub start_timeout: Duration,
    pub restart: RestartType,
}

impl McpSpec {
    /// The values of environment variables whose names look secret: they are
    /// blanked out of anything warden writes (the server's stderr in the log).
    pub fn secrets(&self) -> Vec<&str> {
        self.env
            .iter()
            .filter(|(k, v)| looks_secret(k) && v.len() >= 4)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Environment values are never printed; the names are.
impl fmt::Debug for McpSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpSpec")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("cwd", &self.cwd)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("prefix", &self.prefix)
            .field("restart", &self.restart)
            .finish_non_exhaustive()
    }
}

/// Whether a variable or field name looks like it holds a secret.
pub fn looks_secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "token",
        "key",
        "secret",
        "password",
        "passwd",
        "credential",
        "auth",
    ]
    .iter()
    .any(|w| n.contains(w))
}

#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub program: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// The complete environment of the program (nothing else is inherited).
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    /// Arguments that name files, confined to `cwd`.
    pub paths: Vec<String>,
}

/// Everything `warden serve` needs: the runtime config and the tools.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub path: PathBuf,
    pub config: Config,
    pub tools: Vec<ToolSpec>,
}

/// Tool names as MCP clients accept them.
pub fn valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Loads `config.toml` (or its defaults when `path` does not exist and
/// `must_exist` is false), applies `WARDEN_*` overrides and loads every actor
/// file. Returns every problem found.
pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Loaded, Vec<Problem>> {
    let (config, mut problems) = read_runtime(path, env);
    let tools = load_actors(&config, &mut problems);
    loaded(path, config, tools, problems)
}

/// The loaded config, or every problem found on the way.
fn loaded(
    path: &Path,
    config: Config,
    tools: Vec<ToolSpec>,
    problems: Vec<Problem>,
) -> Result<Loaded, Vec<Problem>> {
    if problems.is_empty() {
        Ok(Loaded {
            path: path.to_path_buf(),
            config,
            tools,
        })
    } else {
        Err(problems)
    }
}

/// Only `config.toml` (with `WARDEN_*` overrides), not the actor files: for
/// commands such as `warden logs`, which must work when an actor file is broken.
pub fn load_runtime(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<Problem>> {
    match read_runtime(path, env) {
        (config, problems) if problems.is_empty() => Ok(config),
        (_, problems) => Err(problems),
    }
}

fn read_runtime(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> (Config, Vec<Problem>) {
    let mut problems = Vec::new();
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut config = match std::fs::read_to_string(path) {
        Ok(text) => runtime_from_text(path, &text, &mut problems),
        Err(e) => {
            problems.push(Problem {
                file: path.to_path_buf(),
                field: "-".into(),
                reason: format!("cannot read the config file: {e}"),
            });
            Config::default()
        }
    };
    apply_env(&mut config, path, env, &mut problems);
    resolve_relative(&mut config, &base);
    check_config(&config, path, &mut problems);
    (config, problems)
}

fn runtime_from_text(path: &Path, text: &str, problems: &mut Vec<Problem>) -> Config {
    parse_toml::<Config>(path, text).unwrap_or_else(|p| {
        problems.push(p);
        Config::default()
    })
}

/// Checks a config file's text and actor files' texts (name, text) the way
/// `warden check` checks them on disk, without reading any file. For the
/// fuzz targets and property tests: whatever the text, an answer, never a
/// panic.
pub fn check_texts(config: &str, actors: &[(&str, &str)]) -> Result<Loaded, Vec<Problem>> {
    let path = Path::new("/check/config.toml");
    let mut problems = Vec::new();
    let config = runtime_from_text(path, config, &mut problems);
    check_config(&config, path, &mut problems);
    let files = actors
        .iter()
        .map(|(name, text)| (Path::new("/check/actors").join(name), text.to_string()))
        .collect();
    let tools = actors_from_texts(files, &config, &mut problems);
    loaded(path, config, tools, problems)
}

fn parse_toml<T: serde::de::DeserializeOwned>(file: &Path, text: &str) -> Result<T, Problem> {
    let problem = |field: String, reason: String| Problem {
        file: file.to_path_buf(),
        field,
        reason,
    };
    let de = toml::de::Deserializer::parse(text)
        .map_err(|e| problem("-".into(), e.message().trim().to_string()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = match e.path().to_string() {
            p if p == "." => "-".to_string(),
            p => p,
        };
        problem(field, e.inner().message().trim().to_string())
    })
}

/// `WARDEN_*` variables override the main runtime fields.
fn apply_env(
    config: &mut Config,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    let mut bad = |var: &str, reason: String| {
        problems.push(Problem {
            file: path.to_path_buf(),
            field: format!("${var}"),
            reason,
        })
    };
    if let Some(v) = env("WARDEN_ACTORS_DIR") {
        config.server.actors_dir = PathBuf::from(v);
    }
    if let Some(v) = env("WARDEN_MAX_IN_FLIGHT") {
        match v.parse() {
            Ok(n) => config.server.max_in_flight = n,
            Err(_) => bad(
                "WARDEN_MAX_IN_FLIGHT",
                format!("`{v}` is not a whole number"),
            ),
        }
    }
    if let Some(v) = env("WARDEN_SHUTDOWN_GRACE") {
        match humantime::parse_duration(&v) {
            Ok(d) => config.server.shutdown_grace = d,
            Err(e) => bad("WARDEN_SHUTDOWN_GRACE", format!("`{v}`: {e}")),
        }
    }
    if let Some(v) = env("WARDEN_CONTROL_DIR") {
        config.control.socket = v;
    }
    if let Some(v) = env("WARDEN_LOG_DIR") {
        config.log.dir = PathBuf::from(v);
    }
    if let Some(v) = env("WARDEN_LOG_LEVEL") {
        config.log.level = v;
    }
    if let Some(v) = env("WARDEN_LOG_STDERR") {
        config.log.stderr = v;
    }
}

fn resolve_relative(config: &mut Config, base: &Path) {
    for p in [&mut config.server.actors_dir, &mut config.log.dir] {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
}

fn check_config(config: &Config, path: &Path, problems: &mut Vec<Problem>) {
    let mut bad = |field: &str, reason: &str| {
        problems.push(Problem {
            file: path.to_path_buf(),
            field: field.into(),
            reason: reason.into(),
        })
    };
    if config.server.max_in_flight == 0 {
        bad("server.max_in_flight", "must be at least 1");
    }
    if config.server.worker_threads == 0 || config.server.worker_threads > 64 {
        bad("server.worker_threads", "must be between 1 and 64");
    }
    if config.server.max_line.0 < 1024 {
        bad("server.max_line", "must be at least 1KiB");
    }
    if config.defaults.concurrency == 0 {
        bad("defaults.concurrency", "must be at least 1");
    }
    if config.defaults.timeout.is_zero() {
        bad("defaults.timeout", "must be longer than 0s");
    }
    let b = config.supervisor.backoff;
    if b.min.is_zero() || b.min > b.max {
        bad("supervisor.backoff", "needs 0 < min <= max");
    }
    if config.supervisor.window.is_zero() {
        bad("supervisor.window", "must be longer than 0s");
    }
    if config.supervisor.cooloff.is_zero() {
        bad("supervisor.cooloff", "must be longer than 0s");
    }
    for (field, reason) in config.breaker.problems() {
        bad(&format!("breaker.{field}"), &reason);
    }
    let m = &config.memory;
    for (field, v) in [
        ("trim_at", m.trim_at),
        ("degrade_at", m.degrade_at),
        ("restart_at", m.restart_at),
    ] {
        if !(v > 0.05 && v <= 1.0) {
            bad(
                &format!("memory.{field}"),
                "must be a fraction above 0.05 and at most 1.0 (0.9 is 90 %)",
            );
        }
    }
    if !(m.trim_at < m.degrade_at && m.degrade_at < m.restart_at) {
        bad(
            "memory",
            "needs trim_at < degrade_at < restart_at (each level is entered above the one before)",
        );
    }
    if let MemoryLimit::Fixed(limit) = m.limit {
        if (limit.0 as f64 * m.trim_at) < IDLE_FOOTPRINT as f64 {
            bad(
                "memory.limit",
                &format!(
                    "{limit} is below warden's idle footprint: trim_at of it is under {}",
                    ByteSize(IDLE_FOOTPRINT)
                ),
            );
        }
    }
    if m.sample_every < Duration::from_millis(50) {
        bad("memory.sample_every", "must be at least 50ms");
    }
    let l = &config.lag;
    if l.warn.is_zero() || !(l.warn < l.alert && l.alert < l.recover) {
        bad("lag", "needs 0 < warn < alert < recover");
    }
    if !config.http.listen.is_empty() && config.http.listen.parse::<std::net::SocketAddr>().is_err()
    {
        bad(
            "http.listen",
            "is not an address such as \"127.0.0.1:9464\"",
        );
    }
    for (field, filter) in [
        ("log.level", &config.log.level),
        ("log.stderr", &config.log.stderr),
    ] {
        if tracing_subscriber::EnvFilter::builder()
            .parse(filter.as_str())
            .is_err()
        {
            bad(
                field,
                "is not a log filter (try \"info\", \"debug\" or \"off\")",
            );
        }
    }
}

fn load_actors(config: &Config, problems: &mut Vec<Problem>) -> Vec<ToolSpec> {
    let dir = &config.server.actors_dir;
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect(),
        Err(e) => {
            problems.push(Problem {
                file: dir.clone(),
                field: "server.actors_dir".into(),
                reason: format!("cannot read the actors directory: {e}"),
            });
            return Vec::new();
        }
    };
    files.sort();
    let mut texts = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => texts.push((file, text)),
            Err(e) => problems.push(Problem {
                file,
                field: "-".into(),
                reason: format!("cannot read: {e}"),
            }),
        }
    }
    actors_from_texts(texts, config, problems)
}

fn actors_from_texts(
    files: Vec<(PathBuf, String)>,
    config: &Config,
    problems: &mut Vec<Problem>,
) -> Vec<ToolSpec> {
    let mut tools: Vec<ToolSpec> = Vec::new();
    for (file, text) in files {
        let actor: ActorFile = match parse_toml(&file, &text) {
            Ok(a) => a,
            Err(p) => {
                problems.push(p);
                continue;
            }
        };
        if let Some(other) = tools.iter().find(|t| t.name == actor.name) {
            problems.push(Problem {
                file: file.clone(),
                field: "name".into(),
                reason: format!(
                    "tool `{}` is already defined in {}",
                    actor.name,
                    other.file.display()
                ),
            });
            continue;
        }
        if let Some(spec) = check_actor(actor, &file, config, problems) {
            tools.push(spec);
        }
    }
    check_exported_names(&tools, problems);
    tools
}

/// An MCP server's tools are exported as `<prefix>_<tool>`, and its prompts
/// likewise: no other tool or server may be able to produce the same name.
fn check_exported_names(tools: &[ToolSpec], problems: &mut Vec<Problem>) {
    for server in tools {
        let Some(m) = server.mcp() else { continue };
        let mine = format!("{}_", m.prefix);
        for other in tools {
            if std::ptr::eq(other, server) {
                continue;
            }
            let clash = match other.mcp() {
                // Either prefix could produce names of the other (`a_` and `a_b_`).
                Some(o) => {
                    let theirs = format!("{}_", o.prefix);
                    (theirs.starts_with(&mine) || mine.starts_with(&theirs))
                        .then(|| format!("mcp server `{}` (prefix `{}`)", other.name, o.prefix))
                }
                None => other
                    .name
                    .starts_with(&mine)
                    .then(|| format!("tool `{}`", other.name)),
            };
            // Reported once, on the file that sorts later.
            if let Some(what) = clash.filter(|_| other.file < server.file || other.mcp().is_none())
            {
                problems.push(Problem {
                    file: server.file.clone(),
                    field: "prefix".into(),
                    reason: format!(
                        "tools exported as `{mine}*` could collide with {what} in {}",
                        other.file.display()
                    ),
                });
            }
        }
    }
}

/// Checks one actor file and applies the defaults; `None` if it has problems.
fn check_actor(
    a: ActorFile,
    file: &Path,
    config: &Config,
    problems: &mut Vec<Problem>,
) -> Option<ToolSpec> {
    let defaults = &config.defaults;
    let before = problems.len();
    let mut bad = |field: &str, reason: String| {
        problems.push(Problem {
            file: file.to_path_buf(),
            field: field.into(),
            reason,
        })
    };
    if !valid_tool_name(&a.name) {
        bad(
            "name",
            format!("`{}` must match ^[a-zA-Z0-9_-]{{1,64}}$", a.name),
        );
    }
    let concurrency = a.concurrency.unwrap_or(defaults.concurrency);
    if concurrency == 0 {
        bad("concurrency", "must be at least 1".into());
    }
    let timeout = a.timeout.unwrap_or(defaults.timeout);
    if timeout.is_zero() {
        bad("timeout", "must be longer than 0s".into());
    }
    // Fields each kind takes, beyond the common ones.
    let process_fields = |a: &ActorFile| -> Vec<&'static str> {
        let mut set = Vec::new();
        if a.command.is_some() {
            set.push("command");
        }
        if !a.args.is_empty() {
            set.push("args");
        }
        if a.cwd.is_some() {
            set.push("cwd");
        }
        if !a.env.is_empty() {
            set.push("env");
        }
        if a.env_pass.is_some() {
            set.push("env_pass");
        }
        set
    };
    let mcp_fields = |a: &ActorFile| -> Vec<&'static str> {
        let mut set = Vec::new();
        if a.prefix.is_some() {
            set.push("prefix");
        }
        if a.ping_every.is_some() {
            set.push("ping_every");
        }
        if a.ping_timeout.is_some() {
            set.push("ping_timeout");
        }
        if a.start_timeout.is_some() {
            set.push("start_timeout");
        }
        if a.restart.is_some() {
            set.push("restart");
        }
        set
    };
    let only_for = |fields: Vec<&'static str>, kinds: &str, bad: &mut dyn FnMut(&str, String)| {
        for field in fields {
            bad(field, format!("is only for kind = {kinds}"));
        }
    };

    let (kind, input_schema) = match a.kind {
        ToolKind::Builtin => {
            only_for(process_fields(&a), "\"command\" or \"mcp\"", &mut bad);
            only_for(mcp_fields(&a), "\"mcp\"", &mut bad);
            if !a.paths.is_empty() {
                bad("paths", "is only for kind = \"command\"".into());
            }
            if a.input.is_some() {
                bad("input", "is only for kind = \"command\"".into());
            }
            let which = a.builtin.clone().unwrap_or_else(|| a.name.clone());
            match crate::backends::builtin::Builtin::from_name(&which) {
                Some(b) => (Some(ToolKindSpec::Builtin(b)), b.input_schema()),
                None => {
                    bad(
                        "builtin",
                        format!(
                            "unknown builtin `{which}` (known: {})",
                            crate::backends::builtin::Builtin::NAMES.join(", ")
                        ),
                    );
                    (None, serde_json::Map::new())
                }
            }
        }
        ToolKind::Mcp => {
            if a.builtin.is_some() {
                bad("builtin", "is only for kind = \"builtin\"".into());
            }
            if !a.paths.is_empty() {
                bad("paths", "is only for kind = \"command\"".into());
            }
            if a.input.is_some() {
                bad(
                    "input",
                    "is only for kind = \"command\" (an MCP server's tools bring their own schemas)"
                        .into(),
                );
            }
            let program = a.command.clone().unwrap_or_default();
            if program.is_empty() {
                bad(
                    "command",
                    "an mcp server needs `command`, the program to launch".into(),
                );
            }
            let prefix = a.prefix.clone().unwrap_or_else(|| a.name.clone());
            // The shortest exported name, `<prefix>_x`, must itself be a valid tool name.
            if !valid_tool_name(&format!("{prefix}_x")) {
                bad(
                    "prefix",
                    format!("`{prefix}` must match ^[a-zA-Z0-9_-]{{1,62}}$ (tools are exported as <prefix>_<tool>)"),
                );
            }
            let ping_every = a.ping_every.unwrap_or(DEFAULT_PING_EVERY);
            let ping_timeout = a.ping_timeout.unwrap_or(DEFAULT_PING_TIMEOUT);
            if ping_every < Duration::from_millis(50) {
                bad("ping_every", "must be at least 50ms".into());
            }
            if ping_timeout.is_zero() {
                bad("ping_timeout", "must be longer than 0s".into());
            }
            let start_timeout = a.start_timeout.unwrap_or(DEFAULT_START_TIMEOUT);
            if start_timeout.is_zero() {
                bad("start_timeout", "must be longer than 0s".into());
            }
            let (cwd, env) = process_setup(&a, DEFAULT_MCP_ENV_PASS, &mut bad);
            let mcp = McpSpec {
                program,
                args: a.args.clone(),
                cwd,
                env,
                limits: a.limits.clone(),
                prefix,
                ping_every,
                ping_timeout,
                start_timeout,
                restart: a.restart.unwrap_or_default(),
            };
            let schema = serde_json::json!({"type": "object"});
            let serde_json::Value::Object(schema) = schema else {
                unreachable!("an object")
            };
            (Some(ToolKindSpec::Mcp(mcp)), schema)
        }
        ToolKind::Command => {
            if a.builtin.is_some() {
                bad("builtin", "is only for kind = \"builtin\"".into());
            }
            only_for(mcp_fields(&a), "\"mcp\"", &mut bad);
            let schema = match &a.input {
                Some(t) => match serde_json::to_value(t) {
                    Ok(serde_json::Value::Object(m)) => m,
                    _ => {
                        bad("input", "must be a table (a JSON Schema object)".into());
                        serde_json::Map::new()
                    }
                },
                None => {
                    bad(
                        "input",
                        "a command tool needs an [input] JSON Schema for its arguments".into(),
                    );
                    serde_json::Map::new()
                }
            };
            if !schema.is_empty() {
                check_schema(&schema, &mut bad);
            }
            let program = a.command.clone().unwrap_or_default();
            if program.is_empty() {
                bad(
                    "command",
                    "a command tool needs `command`, the program to run".into(),
                );
            }
            for (i, arg) in a.args.iter().enumerate() {
                match crate::exec::placeholders(arg) {
                    Ok(names) => {
                        for n in names {
                            let declared =
                                schema.get("properties").and_then(|p| p.get(&n)).is_some();
                            if !declared {
                                bad(
                                    &format!("args[{i}]"),
                                    format!("placeholder `{{{n}}}` is not a property of [input]"),
                                );
                            }
                        }
                    }
                    Err(e) => bad(&format!("args[{i}]"), e),
                }
            }
            for (i, name) in a.paths.iter().enumerate() {
                let prop = schema.get("properties").and_then(|p| p.get(name));
                if prop.is_none() {
                    bad(
                        &format!("paths[{i}]"),
                        format!("`{name}` is not a property of [input]"),
                    );
                } else if prop.and_then(|p| p.get("type")) != Some(&serde_json::json!("string")) {
                    bad(
                        &format!("paths[{i}]"),
                        format!("`{name}` must be of type \"string\" in [input]"),
                    );
                }
            }
            let (cwd, env) = process_setup(&a, DEFAULT_ENV_PASS, &mut bad);
            (
                Some(ToolKindSpec::Command(CommandSpec {
                    program,
                    args: a.args.clone(),
                    cwd,
                    env,
                    limits: a.limits.clone(),
                    paths: a.paths.clone(),
                })),
                schema,
            )
        }
    };
    let breaker = config.breaker.merged(&a.breaker);
    // A bad `[breaker]` in config.toml is reported once, there.
    let overridden = breaker != config.breaker;
    for (field, reason) in breaker.problems().into_iter().filter(|_| overridden) {
        bad(&format!("breaker.{field}"), reason);
    }
    let rate_limit = a.rate.map(|rate| RateLimit {
        rate,
        burst: a
            .burst
            .unwrap_or_else(|| (rate.per_second.ceil() as u32).max(1)),
    });
    if a.burst == Some(0) {
        bad("burst", "must be at least 1".into());
    }
    if a.memory.is_some_and(|m| m.0 < 1 << 20) {
        bad("memory", "must be at least 1MiB".into());
    }
    if a.burst.is_some() && a.rate.is_none() {
        bad("burst", "needs `rate`".into());
    }
    if problems.len() > before {
        return None;
    }
    Some(ToolSpec {
        name: a.name,
        description: a.description,
        file: file.to_path_buf(),
        kind: kind?,
        concurrency,
        queue: a.queue.unwrap_or(defaults.queue),
        timeout,
        grace: defaults.grace,
        max_output: a.max_output.unwrap_or(defaults.max_output).0,
        priority: a.priority,
        memory: a.memory.map(|m| m.0),
        input_schema,
        breaker,
        rate_limit,
    })
}

/// The working directory and the complete environment of a program warden
/// launches: `PATH`, then the variables passed through, then the file's own.
fn process_setup(
    a: &ActorFile,
    default_pass: &[&str],
    bad: &mut dyn FnMut(&str, String),
) -> (PathBuf, Vec<(String, String)>) {
    let cwd = a.cwd.clone().unwrap_or_else(|| PathBuf::from("/"));
    if !cwd.is_absolute() {
        bad("cwd", "must be an absolute path".into());
    }
    let mut env: Vec<(String, String)> = vec![("PATH".into(), DEFAULT_PATH.into())];
    let pass = a
        .env_pass
        .clone()
        .unwrap_or_else(|| default_pass.iter().map(|s| s.to_string()).collect());
    for name in pass {
        if let Ok(v) = std::env::var(&name) {
            env.retain(|(k, _)| *k != name);
            env.push((name, v));
        }
    }
    for (k, v) in &a.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            bad(
                &format!("env.{k}"),
                "is not a valid environment variable".into(),
            );
        }
        env.retain(|(name, _)| name != k);
        env.push((k.clone(), v.clone()));
    }
    (cwd, env)
}

fn check_schema(
    schema: &serde_json::Map<String, serde_json::Value>,
    bad: &mut dyn FnMut(&str, String),
) {
    if schema.get("type").and_then(|t| t.as_str()) != Some("object") {
        bad(
            "input.type",
            "must be \"object\" (tool arguments are an object)".into(),
        );
    }
    let value = serde_json::Value::Object(schema.clone());
    if let Err(e) = jsonschema::meta::validate(&value) {
        bad(
            &format!("input{}", pointer_to_dots(e.instance_path().as_str())),
            e.to_string(),
        );
        return;
    }
    if let Err(e) = jsonschema::validator_for(&value) {
        bad("input", e.to_string());
    }
}

/// "/properties/path" → ".properties.path"
fn pointer_to_dots(pointer: &str) -> String {
    pointer.replace('/', ".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// The fields named by the problems of a config.toml (no actor files).
    fn problem_fields(config: &str) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("actors")).unwrap();
        write(dir.path(), "config.toml", config);
        match load(&dir.path().join("config.toml"), &no_env) {
            Ok(_) => vec![],
            Err(problems) => problems.into_iter().map(|p| p.field).collect(),
        }
    }

    #[test]
    fn memory_and_lag_thresholds_must_be_consistent() {
        assert_eq!(
            problem_fields("[memory]\nlimit = \"256MiB\"\n"),
            Vec::<String>::new()
        );
        assert_eq!(
            problem_fields("[memory]\nlimit = \"auto\"\n"),
            Vec::<String>::new()
        );
        // Degrade below trim, restart above 100 %.
        assert_eq!(
            problem_fields("[memory]\ntrim_at = 0.9\ndegrade_at = 0.8\n"),
            ["memory"]
        );
        assert_eq!(
            problem_fields("[memory]\nrestart_at = 1.5\n"),
            ["memory.restart_at"]
        );
        // A budget warden could not even idle in.
        assert_eq!(
            problem_fields("[memory]\nlimit = \"8MiB\"\n"),
            ["memory.limit"]
        );
        let fields = problem_fields("[memory]\nlimit = \"lots\"\n");
        assert_eq!(fields, ["memory.limit"]);
        assert_eq!(
            problem_fields("[lag]\nwarn = \"10s\"\nalert = \"5s\"\n"),
            ["lag"]
        );
        assert_eq!(
            problem_fields("[memory]\nsample_every = \"1ms\"\n"),
            ["memory.sample_every"]
        );
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(ByteSize::parse("1MiB"), Ok(ByteSize(1 << 20)));
        assert_eq!(ByteSize::parse("64KiB"), Ok(ByteSize(64 << 10)));
        assert_eq!(ByteSize::parse("2GB"), Ok(ByteSize(2_000_000_000)));
        assert_eq!(ByteSize::parse("4096"), Ok(ByteSize(4096)));
        assert!(ByteSize::parse("1 parsec").is_err());
        assert!(ByteSize::parse("MiB").is_err());
        assert!(ByteSize::parse("99999999999999GiB").is_err());
        assert_eq!(ByteSize(1 << 20).to_string(), "1MiB");
    }

    #[test]
    fn every_problem_is_reported_with_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let actors = dir.path().join("actors");
        std::fs::create_dir(&actors).unwrap();
        write(
            dir.path(),
            "config.toml",
            "[defaults]\nconcurrency = 0\n[supervisor]\nbackoff = { min = \"5s\", max = \"1s\" }\n",
        );
        write(
            &actors,
            "a.toml",
            "name = \"a\"\nkind = \"command\"\ncolor = \"red\"\n",
        );
        write(
            &actors,
            "b.toml",
            "name = \"b c\"\nkind = \"command\"\ncommand = \"true\"\nargs = [\"{missing}\"]\n[input]\ntype = \"object\"\n",
        );
        write(
            &actors,
            "c.toml",
            "name = \"c\"\nkind = \"builtin\"\ntimeout = \"soon\"\n",
        );
        let problems = load(&dir.path().join("config.toml"), &no_env).unwrap_err();
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        let has = |file: &str, field: &str, words: &str| {
            assert!(
                problems.iter().any(|p| p.file.ends_with(file)
                    && p.field == field
                    && p.reason.contains(words)),
                "no problem {file} {field} {words:?} in {text:#?}"
            )
        };
        has("config.toml", "defaults.concurrency", "at least 1");
        has("config.toml", "supervisor.backoff", "min <= max");
        has("a.toml", "color", "unknown field");
        has("b.toml", "name", "must match");
        has("b.toml", "args[0]", "not a property");
        has("c.toml", "timeout", "soon");
    }

    #[test]
    fn mcp_servers_are_checked_and_colliding_prefixes_name_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let actors = dir.path().join("actors");
        std::fs::create_dir(&actors).unwrap();
        write(dir.path(), "config.toml", "");
        let server = |name: &str, extra: &str| {
            format!("name = \"{name}\"\nkind = \"mcp\"\ncommand = \"node\"\n{extra}")
        };
        write(&actors, "a.toml", &server("a", "prefix = \"gh\"\n"));
        // Exports gh_x too: `gh_` could produce `gh_issues_x` and so could `gh_issues_`.
        write(&actors, "b.toml", &server("b", "prefix = \"gh_issues\"\n"));
        write(
            &actors,
            "c.toml",
            "name = \"gh_tool\"\nkind = \"builtin\"\nbuiltin = \"echo\"\n",
        );
        write(
            &actors,
            "d.toml",
            &server(
                "d",
                "ping_every = \"1ms\"\nrestart = \"sometimes\"\n[input]\ntype = \"object\"\n",
            ),
        );
        write(
            &actors,
            "e.toml",
            "name = \"e\"\nkind = \"mcp\"\nprefix = \"bad prefix\"\n",
        );
        write(
            &actors,
            "f.toml",
            "name = \"f\"\nkind = \"builtin\"\nbuiltin = \"echo\"\nping_every = \"1s\"\n",
        );
        let problems = load(&dir.path().join("config.toml"), &no_env).unwrap_err();
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        let has = |file: &str, field: &str, words: &[&str]| {
            assert!(
                problems.iter().any(|p| p.file.ends_with(file)
                    && p.field == field
                    && words.iter().all(|w| p.reason.contains(w))),
                "no problem {file} {field} {words:?} in {text:#?}"
            )
        };
        has("b.toml", "prefix", &["gh_issues_*", "`a`", "a.toml"]);
        has("a.toml", "prefix", &["gh_*", "tool `gh_tool`", "c.toml"]);
        has("d.toml", "restart", &["sometimes"]);
        has("e.toml", "command", &["needs `command`"]);
        has("e.toml", "prefix", &["bad prefix"]);
        has("f.toml", "ping_every", &["only for kind = \"mcp\""]);
        // A server and its prefix, fine on their own.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("actors")).unwrap();
        write(dir.path(), "config.toml", "");
        write(
            &dir.path().join("actors"),
            "ev.toml",
            &server("everything", "env = { API_TOKEN = \"hunter2-secret\" }\n"),
        );
        let loaded = load(&dir.path().join("config.toml"), &no_env).unwrap();
        let m = loaded.tools[0].mcp().unwrap();
        assert_eq!(m.prefix, "everything");
        assert_eq!(m.ping_every, DEFAULT_PING_EVERY);
        assert_eq!(m.secrets(), ["hunter2-secret"]);
        assert!(
            !format!("{m:?}").contains("hunter2"),
            "Debug shows names only"
        );
        assert_eq!(loaded.tools[0].actor_name(), "server:everything");
    }

    #[test]
    fn env_overrides_runtime_fields() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tools")).unwrap();
        write(dir.path(), "config.toml", "[server]\nmax_in_flight = 3\n");
        let env = |k: &str| match k {
            "WARDEN_MAX_IN_FLIGHT" => Some("7".to_string()),
            "WARDEN_ACTORS_DIR" => Some("tools".to_string()),
            _ => None,
        };
        let loaded = load(&dir.path().join("config.toml"), &env).unwrap();
        assert_eq!(loaded.config.server.max_in_flight, 7);
        assert_eq!(loaded.config.server.actors_dir, dir.path().join("tools"));

        let bad_env = |k: &str| (k == "WARDEN_MAX_IN_FLIGHT").then(|| "lots".to_string());
        let problems = load(&dir.path().join("config.toml"), &bad_env).unwrap_err();
        assert_eq!(problems[0].field, "$WARDEN_MAX_IN_FLIGHT");
    }

    #[test]
    fn shipped_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        let loaded = load(&path, &no_env).unwrap_or_else(|p| panic!("{p:#?}"));
        let names: Vec<&str> = loaded.tools.iter().map(|t| t.name.as_str()).collect();
        assert!(
            names.contains(&"echo") && names.contains(&"status"),
            "{names:?}"
        );
    }
}
