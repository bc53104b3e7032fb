//! `config.toml`: the runtime's sections, their defaults, `WARDEN_*`
//! overrides, and the checks that make a set of values consistent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::units::{ByteSize, MemoryLimit, Rate, RateLimit};
use super::Problem;

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
/// `server.worker_threads` when unset, serving one client on stdio: one
/// thread runs every actor (a call's hops are task switches, not wake-ups;
/// see BENCHMARKS.md). Two or more let the watchdog answer even while a
/// task holds a thread. Serving MCP over HTTP, the default is one thread per
/// core instead: many clients at once gain more than one client's call
/// loses there (BENCHMARKS.md, "Threads for HTTP").
pub const DEFAULT_WORKER_THREADS: usize = 1;
/// The most threads the HTTP default takes, however many cores there are.
pub const MAX_DEFAULT_HTTP_THREADS: usize = 8;
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
/// Default for `supervisor.cooloff`: how long a tool failed past its restart
/// budget waits before it is tried again (with a fresh budget).
pub const DEFAULT_COOLOFF: Duration = Duration::from_secs(300);
/// Default for `server.input_wait`: how long a 2026-07-28 client's call
/// whose MCP server asked it something waits for the retry with the answer.
pub const DEFAULT_INPUT_WAIT: Duration = Duration::from_secs(60);
/// How long an MCP server's request (sampling, elicitation, roots) waits
/// for the client's answer, on any protocol; `server.input_wait` is at most it.
pub const ASK_DEADLINE: Duration = Duration::from_secs(120);

/// The runtime configuration, `config.toml`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub supervisor: SupervisorConfig,
    pub defaults: ToolDefaults,
    pub breaker: BreakerConfig,
    pub log: LogConfig,
    pub control: ControlConfig,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub memory: MemoryConfig,
    pub lag: LagConfig,
}

impl Config {
    /// MCP served beyond this machine to anyone who reaches it.
    pub fn mcp_unguarded(&self) -> bool {
        self.http.mcp && self.http.exposed() && self.auth.mode == AuthMode::None
    }
}

/// `[auth]`: who may use MCP over HTTP, and with which tools. Off by
/// default; stdio needs none (the client launched warden).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Where clients reach warden, such as "https://mcp.example.com" behind a
    /// TLS-terminating proxy: the protected resource metadata's URLs are
    /// built from it. Default: "http://" and `http.listen`.
    pub public_url: String,
    /// The authorization servers that issue tokens for this resource, named
    /// in its metadata (RFC 9728).
    pub authorization_servers: Vec<String>,
    /// `mode = "token"`: the bearer tokens accepted.
    pub tokens: Vec<TokenConfig>,
    /// `mode = "jwt"`: the `iss` every token must name.
    pub issuer: String,
    /// `mode = "jwt"`: the `aud` every token must name (RFC 8707: this
    /// resource). Default: the URL of `/mcp` built from `public_url`.
    pub audience: String,
    /// `mode = "jwt"`: the issuer's keys: a JWKS file (read again when a
    /// token names a key it lacks), or an `https://` (or `http://`) URL to
    /// fetch it from.
    pub jwks: String,
    /// `mode = "jwt"`: a PEM file of the CA certificates an `https://` JWKS
    /// is checked against, for a private issuer. Default: the web's roots,
    /// built in (webpki-roots).
    pub jwks_ca: String,
    /// `mode = "jwt"`: slack for `exp` and `nbf` against clock skew.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Calls (and prompt and resource requests) each principal may make per
    /// time unit ("10/s"), all tools together; beyond it: rate_limited.
    pub rate: Option<Rate>,
    /// The most a principal may make at once after being idle (default: one
    /// second's worth of `rate`).
    pub burst: Option<u32>,
}

impl AuthConfig {
    /// The limit of each principal: `rate` and `burst` of its token, else
    /// of `[auth]`.
    pub fn limit_of(&self, token: Option<&TokenConfig>) -> Option<RateLimit> {
        let (rate, burst) = match token.and_then(|t| t.rate.map(|r| (r, t.burst))) {
            Some(own) => own,
            None => (self.rate?, self.burst),
        };
        Some(RateLimit::new(rate, burst))
    }
}

/// Default for `auth.leeway`.
pub const DEFAULT_AUTH_LEEWAY: Duration = Duration::from_secs(30);

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::None,
            public_url: String::new(),
            authorization_servers: Vec::new(),
            tokens: Vec::new(),
            issuer: String::new(),
            audience: String::new(),
            jwks: String::new(),
            jwks_ca: String::new(),
            leeway: DEFAULT_AUTH_LEEWAY,
            rate: None,
            burst: None,
        }
    }
}

/// `auth.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    None,
    /// Static bearer tokens, each with a name and scopes.
    Token,
    /// JWTs (RS256, ES256, EdDSA) checked against an issuer's keys.
    Jwt,
}

/// One static bearer token: its principal's name, its scopes, and the token
/// itself as a SHA-256 hash, or the name of the environment variable or the
/// file that holds it (read at start, kept only as its hash).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub env: Option<String>,
    /// A file holding the token (a mounted secret); a trailing newline is
    /// not part of it. Relative to the config file.
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// This principal's own `rate` and `burst` instead of `[auth]`'s.
    #[serde(default)]
    pub rate: Option<Rate>,
    #[serde(default)]
    pub burst: Option<u32>,
}

impl TokenConfig {
    /// The token itself, where the config names its environment variable or
    /// file (None where it gives the hash): read now, as at start.
    pub fn read_token(&self) -> Result<Option<String>, String> {
        if let Some(var) = &self.env {
            return std::env::var(var)
                .map(Some)
                .map_err(|_| format!("${var} is not set"));
        }
        match &self.file {
            Some(path) => std::fs::read_to_string(path)
                .map(|t| Some(t.trim_end_matches(['\n', '\r']).to_string()))
                .map_err(|e| format!("{}: {e}", path.display())),
            None => Ok(None),
        }
    }
}

/// The least entropy a token read from the environment or a file may have, in bits.
pub const MIN_TOKEN_BITS: f64 = 128.0;

/// An estimate of a token's entropy: its length times the bits of the
/// alphabet its characters are drawn from (digits, lower, upper, other).
pub fn token_bits(token: &str) -> f64 {
    let classes = [
        (token.bytes().any(|b| b.is_ascii_digit()), 10.0),
        (token.bytes().any(|b| b.is_ascii_lowercase()), 26.0),
        (token.bytes().any(|b| b.is_ascii_uppercase()), 26.0),
        (token.bytes().any(|b| !b.is_ascii_alphanumeric()), 32.0),
    ];
    let alphabet: f64 = classes.iter().filter(|(on, _)| *on).map(|(_, n)| n).sum();
    // A token of one repeated character has no entropy however long.
    let distinct = token
        .chars()
        .collect::<std::collections::HashSet<_>>()
        .len();
    if distinct < 2 {
        return 0.0;
    }
    token.chars().count() as f64 * alphabet.max(1.0).log2()
}

/// Whether `scope` is a scope token (RFC 6749: printable ASCII but space, `"` and `\\`).
pub fn is_scope(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// The memory budget of the whole process tree and the recovery levels, as
/// fractions of it. Each level is entered at its threshold and left 5 points
/// below it, so a tree hovering at a threshold does not flap.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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

/// Event-loop lag (how late a periodic tick fires, or how long a runtime
/// thread has been stuck in one task) and what each threshold does.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
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

/// Default for `http.session_idle`: a legacy MCP session unused this long is closed.
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(300);
/// Default for `http.max_sessions`.
pub const DEFAULT_MAX_SESSIONS: usize = 256;
/// Default for `http.body_deadline`.
pub const DEFAULT_BODY_DEADLINE: Duration = Duration::from_secs(10);

/// The optional HTTP listener: /metrics, /health, /ready, and MCP at /mcp.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// An address such as "127.0.0.1:9464"; empty: no listener.
    pub listen: String,
    /// Serve MCP over Streamable HTTP at /mcp (`warden serve --http ADDR`);
    /// stdin is not read then.
    pub mcp: bool,
    /// A session (protocol 2025-11-25 and older) unused this long is closed,
    /// its calls cancelled.
    #[serde(with = "humantime_serde")]
    pub session_idle: Duration,
    /// Sessions open (and stateless requests being served) at once; a new
    /// one beyond it is answered 503 with Retry-After.
    pub max_sessions: usize,
    /// `Host` values accepted besides the loopback names (against DNS
    /// rebinding): "mcp.example.com" or "mcp.example.com:8080".
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted, such as "https://app.example.com:443"; a
    /// request with another `Origin` is refused (403). Empty: any Origin that
    /// is loopback.
    pub allowed_origins: Vec<String>,
    /// A request body to /mcp must have arrived within this (else 408).
    #[serde(with = "humantime_serde")]
    pub body_deadline: Duration,
    /// After SIGTERM, warden keeps its port open at least this long (turning
    /// away what is new with 503 or 404), so that a load balancer sees
    /// `/ready` fail and stops sending before the port closes.
    #[serde(with = "humantime_serde")]
    pub drain_notice: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: String::new(),
            mcp: false,
            session_idle: DEFAULT_SESSION_IDLE,
            max_sessions: DEFAULT_MAX_SESSIONS,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            body_deadline: DEFAULT_BODY_DEADLINE,
            drain_notice: Duration::ZERO,
        }
    }
}

impl HttpConfig {
    /// Whether the listener is reachable from beyond this machine.
    pub fn exposed(&self) -> bool {
        self.listen
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| !a.ip().is_loopback())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// Unset: 1 on stdio, one per core (at most 8) serving MCP over HTTP;
    /// see [`ServerConfig::threads`].
    pub worker_threads: Option<usize>,
    /// What keeps a program and everything it starts where warden can end
    /// them all (see `exec::contain`).
    pub containment: Containment,
    /// Reload when config.toml or a file in `actors_dir` changes (as
    /// `warden reload` and SIGHUP do).
    pub watch: bool,
    /// A 2026-07-28 client takes no requests during a call: when the MCP
    /// server behind its call asks something, the call is answered
    /// `input_required` and waits this long for the client's retry carrying
    /// the answer, then is cancelled.
    #[serde(with = "humantime_serde")]
    pub input_wait: Duration,
}

/// `server.containment`: how warden holds each call's program and each MCP
/// server together with whatever they start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Containment {
    /// The strongest this machine allows: cgroup2, else freezer, else subreaper.
    #[default]
    Auto,
    /// One cgroup v2 per program, ended with `cgroup.kill`.
    Cgroup2,
    /// One cgroup in the v1 freezer hierarchy per program: frozen, killed, thawed.
    Freezer,
    /// No cgroups: warden is a child subreaper and sweeps what it adopts.
    Subreaper,
}

impl ServerConfig {
    /// The runtime threads to start: `worker_threads` if set, else 1 on
    /// stdio and one per core (at most 8) when `http_mcp`.
    pub fn threads(&self, http_mcp: bool) -> usize {
        self.worker_threads.unwrap_or_else(|| {
            if http_mcp {
                std::thread::available_parallelism()
                    .map_or(1, |n| n.get())
                    .min(MAX_DEFAULT_HTTP_THREADS)
            } else {
                DEFAULT_WORKER_THREADS
            }
        })
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            actors_dir: PathBuf::from("actors"),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            max_line: ByteSize(DEFAULT_MAX_LINE),
            worker_threads: None,
            containment: Containment::Auto,
            watch: false,
            input_wait: DEFAULT_INPUT_WAIT,
        }
    }
}

/// Restart policy of the tools supervisor, in OTP's vocabulary.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
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
    pub(super) fn merged(&self, o: &BreakerOverride) -> BreakerConfig {
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
    pub(super) fn problems(&self) -> Vec<(&'static str, String)> {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rotation {
    Minutely,
    Hourly,
    Daily,
    Never,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
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

impl LogConfig {
    /// Whether events go to files at all: `level = "off"` opens none.
    pub fn file_logging(&self) -> bool {
        self.level.trim() != "off"
    }
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

/// `WARDEN_*` variables override the main runtime fields.
pub(super) fn apply_env(
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

pub(super) fn resolve_relative(config: &mut Config, base: &Path) {
    for p in [&mut config.server.actors_dir, &mut config.log.dir] {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    // The files of [auth], where they are files: a URL stays as it is.
    let auth = &mut config.auth;
    for t in &mut auth.tokens {
        if let Some(p) = t.file.as_mut().filter(|p| p.is_relative()) {
            *p = base.join(&*p);
        }
    }
    for p in [&mut auth.jwks, &mut auth.jwks_ca] {
        let url = p.starts_with("http://") || p.starts_with("https://");
        if !p.is_empty() && !url && Path::new(p.as_str()).is_relative() {
            *p = base.join(p.as_str()).display().to_string();
        }
    }
}

pub(super) fn check_config(config: &Config, path: &Path, problems: &mut Vec<Problem>) {
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
    if config
        .server
        .worker_threads
        .is_some_and(|n| n == 0 || n > 64)
    {
        bad("server.worker_threads", "must be between 1 and 64");
    }
    if config.server.max_line.0 < 1024 {
        bad("server.max_line", "must be at least 1KiB");
    }
    if config.server.input_wait < Duration::from_secs(1) || config.server.input_wait > ASK_DEADLINE
    {
        bad(
            "server.input_wait",
            &format!(
                "must be between 1s and {} (how long a server's request waits for any answer)",
                humantime::format_duration(ASK_DEADLINE)
            ),
        );
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
    if config.http.mcp && config.http.listen.is_empty() {
        bad(
            "http.mcp",
            "needs http.listen, the address to serve MCP on (or run `warden serve --http ADDR`)",
        );
    }
    if config.http.max_sessions == 0 {
        bad("http.max_sessions", "must be at least 1");
    }
    if config.http.session_idle < Duration::from_secs(1) {
        bad("http.session_idle", "must be at least 1s");
    }
    if config.http.body_deadline < Duration::from_millis(100) {
        bad("http.body_deadline", "must be at least 100ms");
    }
    if config.http.drain_notice > config.server.shutdown_grace {
        bad(
            "http.drain_notice",
            "must not be longer than server.shutdown_grace, which bounds the whole drain",
        );
    }
    let auth = &config.auth;
    match auth.mode {
        AuthMode::None => {}
        AuthMode::Jwt => {
            if auth.issuer.is_empty() {
                bad(
                    "auth.issuer",
                    "mode = \"jwt\" needs the issuer every token must name",
                );
            }
            if auth.jwks.is_empty() {
                bad(
                    "auth.jwks",
                    "mode = \"jwt\" needs the issuer's keys: a JWKS file, or an https:// URL",
                );
            }
            if !auth.jwks_ca.is_empty() {
                if !auth.jwks.starts_with("https://") {
                    bad("auth.jwks_ca", "is only for a JWKS fetched over https://");
                } else if let Err(why) = crate::config::tls::read_ca(&auth.jwks_ca) {
                    bad("auth.jwks_ca", &why);
                }
            }
            if auth.leeway > Duration::from_secs(300) {
                bad("auth.leeway", "must be at most 5m");
            }
        }
        AuthMode::Token if auth.tokens.is_empty() => bad(
            "auth.tokens",
            "mode = \"token\" needs at least one [[auth.tokens]]",
        ),
        AuthMode::Token => {}
    }
    let url = &auth.public_url;
    if !(url.is_empty() || url.starts_with("https://") || url.starts_with("http://")) {
        bad("auth.public_url", "must be an http:// or https:// URL");
    }
    let mut limits = vec![("auth".to_string(), auth.rate, auth.burst)];
    for (i, t) in auth.tokens.iter().enumerate() {
        limits.push((format!("auth.tokens[{i}]"), t.rate, t.burst));
    }
    for (at, rate, burst) in limits {
        if burst == Some(0) {
            bad(&format!("{at}.burst"), "must be at least 1");
        }
        if burst.is_some() && rate.is_none() {
            bad(&format!("{at}.burst"), "needs `rate`");
        }
    }
    let mut names = std::collections::HashSet::new();
    for (i, t) in auth.tokens.iter().enumerate() {
        let field = |f: &str| format!("auth.tokens[{i}].{f}");
        if t.name.is_empty() || !names.insert(t.name.as_str()) {
            bad(&field("name"), "must be set, and unique");
        }
        let given = [t.sha256.is_some(), t.env.is_some(), t.file.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            bad(
                &field("sha256"),
                "a token needs exactly one of sha256, env and file",
            );
        } else if let Some(h) = &t.sha256 {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                bad(&field("sha256"), "must be 64 hex digits: the SHA-256 of the token (`printf %s TOKEN | sha256sum`)");
            }
        } else {
            let (at, held_in) = match (&t.env, &t.file) {
                (Some(var), _) => ("env", format!("${var}")),
                (_, file) => (
                    "file",
                    file.as_deref()
                        .unwrap_or(Path::new(""))
                        .display()
                        .to_string(),
                ),
            };
            match t.read_token() {
                Err(why) => bad(&field(at), &why),
                Ok(token) if token.as_deref().is_none_or(|t| token_bits(t) < MIN_TOKEN_BITS) => bad(
                    &field(at),
                    &format!("the token in {held_in} is too weak: about {:.0} bits, under {MIN_TOKEN_BITS:.0} (try `openssl rand -hex 32`)", token_bits(token.as_deref().unwrap_or(""))),
                ),
                Ok(_) => {}
            }
        }
        for s in &t.scopes {
            if !is_scope(s) {
                bad(
                    &field("scopes"),
                    &format!("{s:?} is not a scope (printable ASCII, no spaces or quotes)"),
                );
            }
        }
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
