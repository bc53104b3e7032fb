//! `actors/*.toml`: one tool per file, by its `kind`, checked into a
//! [`ToolSpec`] with the defaults applied.
//!
//! A file is read as the fields every kind takes ([`Common`]), the fields of
//! a program warden launches ([`Process`], for `command` and `mcp`), and the
//! fields of its own kind. Each part is its own struct, read from the text
//! with the path of every error kept: serde's internally tagged enums buffer
//! the whole file first and then report every error at the top level, which
//! `warden check` cannot name a field from. A key no part of the file's kind
//! takes is a problem that says which kind does take it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::builtin::Builtin;
use super::runtime::{BreakerConfig, BreakerOverride, Config};
use super::template::ArgTemplate;
use super::units::{ByteSize, Rate, RateLimit};
use super::{parse_toml, Problem};

/// Environment variables a command tool gets unless its file says otherwise.
pub const DEFAULT_ENV_PASS: &[&str] = &["LANG", "LC_ALL", "TZ"];
/// `PATH` given to command tools (the parent's `PATH` is not inherited).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Environment variables an MCP server gets unless its file says otherwise:
/// servers are often launched through `npx` or `uvx`, which need `PATH` and `HOME`.
pub const DEFAULT_MCP_ENV_PASS: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ"];
/// Default for an MCP server's `ping_every`.
pub const DEFAULT_PING_EVERY: Duration = Duration::from_secs(10);
/// Default for an MCP server's `ping_timeout`; two missed pings in a row and
/// the server is wedged.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for an MCP server's `start_timeout`: launch, `initialize` and the
/// first listing of its tools, prompts and resources.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolKind {
    Command,
    Builtin,
    Mcp,
}

impl ToolKind {
    const ALL: [ToolKind; 3] = [ToolKind::Command, ToolKind::Builtin, ToolKind::Mcp];

    fn name(self) -> &'static str {
        match self {
            ToolKind::Command => "command",
            ToolKind::Builtin => "builtin",
            ToolKind::Mcp => "mcp",
        }
    }

    /// The keys a file of this kind takes.
    fn fields(self) -> Vec<&'static str> {
        let own = match self {
            ToolKind::Command => [fields_of::<Process>(), fields_of::<CommandFields>()].concat(),
            ToolKind::Builtin => fields_of::<BuiltinFields>().to_vec(),
            ToolKind::Mcp => [fields_of::<Process>(), fields_of::<McpFields>()].concat(),
        };
        [fields_of::<Common>(), own.as_slice()].concat()
    }
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

/// Whom one MCP server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One server for every client (the default).
    #[default]
    Server,
    /// One server per client session, started at the session's first
    /// request for it and stopped when the session ends.
    Session,
}

/// Default for an MCP server's `max_sessions` (with `scope = "session"`).
pub const DEFAULT_MAX_SESSION_SERVERS: u32 = 16;

/// Who is shed first under memory pressure (used by the recovery policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Critical,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub fn name(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

/// Resource limits applied in a command tool's process (setrlimit).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
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

/// The fields every kind of actor file takes.
#[derive(Debug, Clone, Deserialize)]
pub struct Common {
    pub name: String,
    pub kind: ToolKind,
    #[serde(default)]
    pub description: String,
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
    /// Overrides of `[breaker]` for this tool.
    #[serde(default)]
    pub breaker: BreakerOverride,
    /// Calls allowed per time unit ("10/s"); beyond it: rate_limited.
    pub rate: Option<Rate>,
    /// Calls allowed at once from a full bucket (default: one second's worth).
    pub burst: Option<u32>,
    /// Over HTTP with `[auth]`: the scopes a principal needs, all of them, to
    /// see and use this tool (for an MCP server: every export). None: any
    /// principal warden accepts.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// A program warden launches: a command tool's, or an MCP server.
#[derive(Debug, Clone, Deserialize)]
pub struct Process {
    /// A path, or a name looked up in `PATH`.
    pub command: Option<String>,
    /// For `command`: the argv template; `{field}` is replaced by one argument.
    /// For `mcp`: the arguments, taken literally.
    #[serde(default)]
    pub args: Vec<String>,
    /// The working directory (default `/`).
    pub cwd: Option<PathBuf>,
    /// Environment variables set for the program.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Variables passed through from warden's environment.
    pub env_pass: Option<Vec<String>>,
    #[serde(default)]
    pub limits: Limits,
}

/// `kind = "command"`.
#[derive(Debug, Clone, Deserialize)]
pub struct CommandFields {
    /// The arguments that name files. Each must resolve, with symlinks
    /// followed, inside `cwd`; `..` and symlinks out are refused.
    #[serde(default)]
    pub paths: Vec<String>,
    /// JSON Schema of the arguments.
    pub input: Option<toml::Table>,
}

/// `kind = "builtin"`.
#[derive(Debug, Clone, Deserialize)]
pub struct BuiltinFields {
    /// Which builtin (defaults to `name`).
    pub builtin: Option<String>,
}

/// `kind = "mcp"`.
#[derive(Debug, Clone, Deserialize)]
pub struct McpFields {
    /// A remote server's Streamable HTTP endpoint, instead of `command`:
    /// `https://example.com/mcp`.
    pub url: Option<String>,
    /// HTTP headers sent to a remote server with every request (its own
    /// credentials, say); their values never appear in logs or status.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The server's tools and prompts are exported as `<prefix>_<name>`
    /// (default: the actor's name).
    pub prefix: Option<String>,
    /// How often the server is pinged.
    #[serde(default, with = "humantime_serde")]
    pub ping_every: Option<Duration>,
    /// A ping unanswered this long is missed; two in a row and the server is restarted.
    #[serde(default, with = "humantime_serde")]
    pub ping_timeout: Option<Duration>,
    /// Launch, handshake and first listing must finish within this.
    #[serde(default, with = "humantime_serde")]
    pub start_timeout: Option<Duration>,
    /// permanent (default), transient or temporary.
    pub restart: Option<RestartType>,
    /// "server" (default): one server for all; "session": one per client
    /// session, stopped when the session ends.
    pub scope: Option<Scope>,
    /// With `scope = "session"`: servers running at once; a new session's
    /// request beyond it answers `busy`.
    pub max_sessions: Option<u32>,
    /// With `[auth]`: scopes one export needs besides the actor's `scopes`,
    /// by the server's own tool name: `{ write_file = ["files:write"] }`.
    #[serde(default)]
    pub export_scopes: std::collections::BTreeMap<String, Vec<String>>,
    /// Export only these of the server's tools (by its names).
    pub tools: Option<Vec<String>>,
    /// Export all of the server's tools but these.
    pub exclude: Option<Vec<String>>,
    /// Export a tool under another name (before the prefix):
    /// `{ create_issue = "new_issue" }`.
    #[serde(default)]
    pub rename: std::collections::BTreeMap<String, String>,
}

/// Which of an MCP server's tools are exported, and as what (before the
/// prefix). Prompts and resources are exported whole.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportFilter {
    pub only: Option<Vec<String>>,
    pub exclude: Vec<String>,
    pub rename: std::collections::BTreeMap<String, String>,
}

impl ExportFilter {
    /// The name the server's tool `name` is exported under (before the
    /// prefix), or none when it is not exported.
    pub fn export<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        let listed = self
            .only
            .as_ref()
            .is_none_or(|o| o.iter().any(|n| n == name));
        if !listed || self.exclude.iter().any(|n| n == name) {
            return None;
        }
        Some(self.rename.get(name).map_or(name, String::as_str))
    }
}

/// One actor file, read by its kind.
#[derive(Debug, Clone)]
pub struct ActorFile {
    pub common: Common,
    pub kind: KindFile,
}

#[derive(Debug, Clone)]
pub enum KindFile {
    Command(Process, CommandFields),
    Builtin(BuiltinFields),
    Mcp(Process, McpFields),
}

impl ActorFile {
    /// Reads one file, adding every problem of its keys to `problems`; the
    /// file when its parts could be read (keys no part takes are ignored
    /// there, after being reported here).
    pub fn read(file: &Path, text: &str, problems: &mut Vec<Problem>) -> Option<ActorFile> {
        fn part<T: serde::de::DeserializeOwned>(
            file: &Path,
            text: &str,
            problems: &mut Vec<Problem>,
        ) -> Option<T> {
            parse_toml(file, text).map_err(|p| problems.push(p)).ok()
        }
        let common: Common = part(file, text, problems)?;
        problems.extend(unknown_keys(file, text, common.kind));
        let kind = match common.kind {
            ToolKind::Command => {
                let (process, own) = (part(file, text, problems), part(file, text, problems));
                KindFile::Command(process?, own?)
            }
            ToolKind::Builtin => KindFile::Builtin(part(file, text, problems)?),
            ToolKind::Mcp => {
                let (process, own) = (part(file, text, problems), part(file, text, problems));
                KindFile::Mcp(process?, own?)
            }
        };
        Some(ActorFile { common, kind })
    }
}

/// The top-level keys a file of `kind` does not take, each a problem saying
/// which kind takes it (or that none does).
fn unknown_keys(file: &Path, text: &str, kind: ToolKind) -> Vec<Problem> {
    let Ok(table) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let mine = kind.fields();
    table
        .keys()
        .filter(|k| !mine.contains(&k.as_str()))
        .map(|key| {
            let takers: Vec<String> = ToolKind::ALL
                .into_iter()
                .filter(|k| k.fields().contains(&key.as_str()))
                .map(|k| format!("{:?}", k.name()))
                .collect();
            let reason = match (kind, key.as_str()) {
                (ToolKind::Mcp, "input") => {
                    "is only for kind = \"command\" (an MCP server's tools bring their own schemas)"
                        .to_string()
                }
                _ if takers.is_empty() => format!(
                    "unknown field `{key}`; a {} tool takes {}",
                    kind.name(),
                    mine.join(", ")
                ),
                _ => format!("is only for kind = {}", takers.join(" or ")),
            };
            Problem {
                file: file.to_path_buf(),
                field: key.clone(),
                reason,
            }
        })
        .collect()
}

/// The field names a struct's `Deserialize` derive accepts, read from the
/// derive itself so that the lists cannot drift from the structs.
fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Fields(&'static [&'static str]);

    impl<'de> serde::Deserializer<'de> for &mut Fields {
        type Error = serde::de::value::Error;

        fn deserialize_any<V: serde::de::Visitor<'de>>(
            self,
            _: V,
        ) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("only structs"))
        }

        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = fields;
            Err(serde::de::Error::custom("fields read"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    let mut fields = Fields(&[]);
    let _ = T::deserialize(&mut fields);
    fields.0
}

/// A tool ready to run: its actor file with the defaults applied.
#[derive(Debug, Clone, PartialEq)]
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
    /// The scopes a principal needs to see and use it (`[auth]`).
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ToolKindSpec {
    Command(CommandSpec),
    Builtin(Builtin),
    Mcp(McpSpec),
}

impl ToolSpec {
    /// The scopes a principal needs for this tool, or for the export
    /// `export` (the server's own name) of this MCP server.
    pub fn scopes_for(&self, export: Option<&str>) -> Vec<String> {
        let mut scopes = self.scopes.clone();
        if let (Some(m), Some(name)) = (self.mcp(), export) {
            for s in m.export_scopes.get(name).into_iter().flatten() {
                if !scopes.contains(s) {
                    scopes.push(s.clone());
                }
            }
        }
        scopes
    }

    /// The registered name of the tool's actor: `tool:<name>`, or
    /// `server:<name>` for an MCP server.
    pub fn actor_name(&self) -> String {
        match self.kind {
            ToolKindSpec::Mcp(_) => format!("server:{}", self.name),
            _ => format!("tool:{}", self.name),
        }
    }

    pub fn mcp(&self) -> Option<&McpSpec> {
        match &self.kind {
            ToolKindSpec::Mcp(m) => Some(m),
            _ => None,
        }
    }

    /// The watchdog's deadline of one call: its `timeout` (which the tool
    /// enforces itself), then `grace` for it to stop before warden answers
    /// without it.
    pub fn deadline(&self) -> Duration {
        self.timeout + self.grace
    }
}

/// A downstream MCP server, launched over stdio and supervised.
#[derive(Clone, PartialEq)]
pub struct McpSpec {
    /// The program to launch; empty for a remote server (`url`).
    pub program: String,
    /// A remote server's endpoint, reached over Streamable HTTP instead of
    /// launching `program`.
    pub url: Option<String>,
    /// Sent to a remote server with every request.
    pub headers: Vec<(String, String)>,
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
    pub scope: Scope,
    /// With `scope = "session"`: servers at once.
    pub max_sessions: u32,
    /// Scopes one export needs besides the actor's, by the server's tool name.
    pub export_scopes: std::collections::BTreeMap<String, Vec<String>>,
    /// `tools`, `exclude` and `rename`.
    pub exports: ExportFilter,
}

impl McpSpec {
    /// The values of environment variables whose names look secret: they are
    /// blanked out of anything warden writes or keeps (the server's stderr
    /// and log messages, its error messages).
    pub fn secrets(&self) -> Vec<String> {
        let mut secrets = secret_values(&self.env);
        // Every header value: credentials hide in headers of any name.
        secrets.extend(
            self.headers
                .iter()
                .filter(|(_, v)| v.len() >= 4)
                .map(|(_, v)| v.clone()),
        );
        secrets
    }
}

/// The values in `env` whose names look secret (and are long enough not to
/// blank every `a` in a text).
pub fn secret_values(env: &[(String, String)]) -> Vec<String> {
    env.iter()
        .filter(|(k, v)| looks_secret(k) && v.len() >= 4)
        .map(|(_, v)| v.clone())
        .collect()
}

/// Environment values are never printed; the names are.
impl fmt::Debug for McpSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpSpec")
            .field("program", &self.program)
            .field("url", &self.url)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("args", &self.args)
            .field("cwd", &self.cwd)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("prefix", &self.prefix)
            .field("restart", &self.restart)
            .field("scope", &self.scope)
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

#[derive(Debug, Clone, PartialEq)]
pub struct CommandSpec {
    pub program: String,
    pub args: Vec<ArgTemplate>,
    pub cwd: PathBuf,
    /// The complete environment of the program (nothing else is inherited).
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    /// Arguments that name files, confined to `cwd`.
    pub paths: Vec<String>,
}

/// Tool names as MCP clients accept them.
pub fn valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub(super) fn load_actors(config: &Config, problems: &mut Vec<Problem>) -> Vec<ToolSpec> {
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
                field: super::WHOLE_FILE.into(),
                reason: format!("cannot read: {e}"),
            }),
        }
    }
    actors_from_texts(texts, config, problems)
}

pub(super) fn actors_from_texts(
    files: Vec<(PathBuf, String)>,
    config: &Config,
    problems: &mut Vec<Problem>,
) -> Vec<ToolSpec> {
    let mut tools: Vec<ToolSpec> = Vec::new();
    for (file, text) in files {
        let before = problems.len();
        let Some(actor) = ActorFile::read(&file, &text, problems) else {
            continue;
        };
        if let Some(other) = tools.iter().find(|t| t.name == actor.common.name) {
            problems.push(Problem {
                file: file.clone(),
                field: "name".into(),
                reason: format!(
                    "tool `{}` is already defined in {}",
                    actor.common.name,
                    other.file.display()
                ),
            });
            continue;
        }
        let spec = check_actor(actor, &file, config, problems);
        if let Some(spec) = spec.filter(|_| problems.len() == before) {
            tools.push(spec);
        }
    }
    check_exported_names(&tools, problems);
    tools
}

/// The name a client sees for what a server exports as `name`: prefixed, or
/// as it is with `prefix = ""`.
pub fn exported_name(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}_{name}")
    }
}

/// An MCP server's tools are exported as `<prefix>_<tool>`, and its prompts
/// likewise: no other tool or server may be able to produce the same name.
/// A server with `prefix = ""` keeps its names: which of them collide is only
/// known once it lists them (warden's own tools, then prefixed servers, win),
/// so the one rule here is that two servers cannot both go unprefixed.
fn check_exported_names(tools: &[ToolSpec], problems: &mut Vec<Problem>) {
    for server in tools {
        let Some(m) = server.mcp() else { continue };
        let mine = format!("{}_", m.prefix);
        for other in tools {
            if std::ptr::eq(other, server) {
                continue;
            }
            let reason = match other.mcp() {
                Some(o) if m.prefix.is_empty() && o.prefix.is_empty() => Some(format!(
                    "prefix = \"\" exports the server's names as they are, and so does mcp server `{}` in {}: give one of them a prefix",
                    other.name,
                    other.file.display()
                )),
                Some(o) if m.prefix.is_empty() || o.prefix.is_empty() => None,
                // Either prefix could produce names of the other (`a_` and `a_b_`).
                Some(o) => {
                    let theirs = format!("{}_", o.prefix);
                    (theirs.starts_with(&mine) || mine.starts_with(&theirs)).then(|| {
                        format!(
                            "tools exported as `{mine}*` could collide with mcp server `{}` (prefix `{}`) in {}",
                            other.name,
                            o.prefix,
                            other.file.display()
                        )
                    })
                }
                None if m.prefix.is_empty() => None,
                None => other.name.starts_with(&mine).then(|| {
                    format!(
                        "tools exported as `{mine}*` could collide with tool `{}` in {}",
                        other.name,
                        other.file.display()
                    )
                }),
            };
            // Reported once, on the file that sorts later.
            if let Some(reason) =
                reason.filter(|_| other.file < server.file || other.mcp().is_none())
            {
                problems.push(Problem {
                    file: server.file.clone(),
                    field: "prefix".into(),
                    reason,
                });
            }
        }
    }
}

/// Checks one actor file and applies the defaults; `None` if it has problems.
fn check_actor(
    ActorFile { common: a, kind }: ActorFile,
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
    let (kind, input_schema) = match kind {
        KindFile::Builtin(b) => builtin_spec(&a, b, &mut bad),
        KindFile::Mcp(process, m) => mcp_spec(&a, process, m, &mut bad),
        KindFile::Command(process, c) => command_spec(process, c, &mut bad),
    };
    let breaker = config.breaker.merged(&a.breaker);
    // A bad `[breaker]` in config.toml is reported once, there.
    let overridden = breaker != config.breaker;
    for (field, reason) in breaker.problems().into_iter().filter(|_| overridden) {
        bad(&format!("breaker.{field}"), reason);
    }
    let rate_limit = a.rate.map(|rate| RateLimit::new(rate, a.burst));
    if a.burst == Some(0) {
        bad("burst", "must be at least 1".into());
    }
    if a.memory.is_some_and(|m| m.0 < 1 << 20) {
        bad("memory", "must be at least 1MiB".into());
    }
    if a.burst.is_some() && a.rate.is_none() {
        bad("burst", "needs `rate`".into());
    }
    for s in &a.scopes {
        if !super::runtime::is_scope(s) {
            bad(
                "scopes",
                format!("{s:?} is not a scope (printable ASCII, no spaces or quotes)"),
            );
        }
    }
    if problems.len() > before {
        return None;
    }
    let kind = kind?;
    // Clients show the description, and some (the conformance suite) require one.
    let description = match (&kind, a.description.trim().is_empty()) {
        (_, false) => a.description,
        (ToolKindSpec::Builtin(b), true) => b.description().to_string(),
        (ToolKindSpec::Command(c), true) => format!(
            "Runs {}",
            c.program.rsplit('/').next().unwrap_or(&c.program)
        ),
        (ToolKindSpec::Mcp(_), true) => String::new(),
    };
    Some(ToolSpec {
        name: a.name,
        description,
        file: file.to_path_buf(),
        kind,
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
        scopes: a.scopes,
    })
}

type Schema = serde_json::Map<String, serde_json::Value>;

fn builtin_spec(
    a: &Common,
    b: BuiltinFields,
    bad: &mut dyn FnMut(&str, String),
) -> (Option<ToolKindSpec>, Schema) {
    let which = b.builtin.unwrap_or_else(|| a.name.clone());
    match Builtin::from_name(&which) {
        Some(b) => (Some(ToolKindSpec::Builtin(b)), b.input_schema()),
        None => {
            bad(
                "builtin",
                format!(
                    "unknown builtin `{which}` (known: {})",
                    Builtin::NAMES.join(", ")
                ),
            );
            (None, Schema::new())
        }
    }
}

fn mcp_spec(
    a: &Common,
    process: Process,
    m: McpFields,
    bad: &mut dyn FnMut(&str, String),
) -> (Option<ToolKindSpec>, Schema) {
    let program = process.command.clone().unwrap_or_default();
    let url = m.url.filter(|u| !u.is_empty());
    match &url {
        None if program.is_empty() => bad(
            "command",
            "an mcp server needs `command`, the program to launch, or `url`, a remote server's endpoint".into(),
        ),
        None if !m.headers.is_empty() => {
            bad("headers", "are for a remote server (`url`)".into())
        }
        None => {}
        Some(_) if !program.is_empty() => bad(
            "url",
            "an mcp server is launched (`command`) or reached (`url`), not both".into(),
        ),
        Some(u) => {
            if !(u.starts_with("https://") || u.starts_with("http://"))
                || u.parse::<http::Uri>().map_or(true, |uri| uri.host().is_none())
            {
                bad("url", format!("`{u}` is not an http:// or https:// URL"));
            }
            let local = [
                ("args", !process.args.is_empty()),
                ("cwd", process.cwd.is_some()),
                ("env", !process.env.is_empty()),
                ("env_pass", process.env_pass.is_some()),
                ("memory", a.memory.is_some()),
            ];
            for (field, given) in local {
                if given {
                    bad(field, "is for a server warden launches, not a remote one (`url`)".into());
                }
            }
        }
    }
    for (k, v) in &m.headers {
        let name_ok = http::HeaderName::from_bytes(k.as_bytes()).is_ok();
        if !name_ok || http::HeaderValue::from_str(v).is_err() {
            bad(&format!("headers.{k}"), "is not a valid HTTP header".into());
        }
    }
    let prefix = m.prefix.unwrap_or_else(|| a.name.clone());
    // The shortest exported name, `<prefix>_x`, must itself be a valid tool
    // name; "" exports the server's names as they are.
    if !prefix.is_empty() && !valid_tool_name(&format!("{prefix}_x")) {
        bad(
            "prefix",
            format!("`{prefix}` must match ^[a-zA-Z0-9_-]{{1,62}}$ (tools are exported as <prefix>_<tool>)"),
        );
    }
    let ping_every = m.ping_every.unwrap_or(DEFAULT_PING_EVERY);
    let ping_timeout = m.ping_timeout.unwrap_or(DEFAULT_PING_TIMEOUT);
    if ping_every < Duration::from_millis(50) {
        bad("ping_every", "must be at least 50ms".into());
    }
    if ping_timeout.is_zero() {
        bad("ping_timeout", "must be longer than 0s".into());
    }
    let start_timeout = m.start_timeout.unwrap_or(DEFAULT_START_TIMEOUT);
    if start_timeout.is_zero() {
        bad("start_timeout", "must be longer than 0s".into());
    }
    let (cwd, env) = process_setup(&process, DEFAULT_MCP_ENV_PASS, bad);
    for s in m.export_scopes.values().flatten() {
        if !super::runtime::is_scope(s) {
            bad(
                "export_scopes",
                format!("{s:?} is not a scope (printable ASCII, no spaces or quotes)"),
            );
        }
    }
    let scope = m.scope.unwrap_or_default();
    if scope == Scope::Session && url.is_some() {
        bad(
            "scope",
            "\"session\" starts a server per session: it needs `command`, not `url`".into(),
        );
    }
    match m.max_sessions {
        Some(_) if scope != Scope::Session => {
            bad("max_sessions", "is for scope = \"session\"".into())
        }
        Some(0) => bad("max_sessions", "must be at least 1".into()),
        _ => {}
    }
    let exports = export_filter(&prefix, m.tools, m.exclude, m.rename, bad);
    let spec = McpSpec {
        program,
        url,
        headers: m.headers.into_iter().collect(),
        args: process.args,
        cwd,
        env,
        limits: process.limits,
        prefix,
        ping_every,
        ping_timeout,
        start_timeout,
        restart: m.restart.unwrap_or_default(),
        scope,
        max_sessions: m.max_sessions.unwrap_or(DEFAULT_MAX_SESSION_SERVERS),
        export_scopes: m.export_scopes,
        exports,
    };
    let mut schema = Schema::new();
    schema.insert("type".into(), "object".into());
    (Some(ToolKindSpec::Mcp(spec)), schema)
}

/// `tools`, `exclude` and `rename`, checked: one of the first two, every
/// new name valid once prefixed, no two tools renamed alike.
fn export_filter(
    prefix: &str,
    only: Option<Vec<String>>,
    exclude: Option<Vec<String>>,
    rename: std::collections::BTreeMap<String, String>,
    bad: &mut dyn FnMut(&str, String),
) -> ExportFilter {
    if only.is_some() && exclude.is_some() {
        bad(
            "exclude",
            "give `tools` (what to export) or `exclude` (what not to), not both".into(),
        );
    }
    let mut seen = std::collections::BTreeMap::new();
    for (old, new) in &rename {
        let exported = exported_name(prefix, new);
        if !valid_tool_name(&exported) {
            bad(
                "rename",
                format!("`{old}` = `{new}`: `{exported}` must match ^[a-zA-Z0-9_-]{{1,64}}$"),
            );
        }
        if let Some(other) = seen.insert(new.as_str(), old.as_str()) {
            bad(
                "rename",
                format!("`{other}` and `{old}` are both renamed `{new}`"),
            );
        }
        if only.as_ref().is_some_and(|o| !o.contains(old)) {
            bad(
                "rename",
                format!("`{old}` is renamed but not in `tools`, so it is not exported"),
            );
        }
    }
    ExportFilter {
        only,
        exclude: exclude.unwrap_or_default(),
        rename,
    }
}

fn command_spec(
    process: Process,
    c: CommandFields,
    bad: &mut dyn FnMut(&str, String),
) -> (Option<ToolKindSpec>, Schema) {
    let schema = match &c.input {
        Some(t) => match serde_json::to_value(t) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => {
                bad("input", "must be a table (a JSON Schema object)".into());
                Schema::new()
            }
        },
        None => {
            bad(
                "input",
                "a command tool needs an [input] JSON Schema for its arguments".into(),
            );
            Schema::new()
        }
    };
    if !schema.is_empty() {
        check_schema(&schema, bad);
    }
    let program = process.command.clone().unwrap_or_default();
    if program.is_empty() {
        bad(
            "command",
            "a command tool needs `command`, the program to run".into(),
        );
    }
    let declared = |name: &str| schema.get("properties").and_then(|p| p.get(name));
    let mut args = Vec::new();
    for (i, arg) in process.args.iter().enumerate() {
        match ArgTemplate::parse(arg) {
            Ok(template) => {
                for n in template.fields().filter(|n| declared(n).is_none()) {
                    bad(
                        &format!("args[{i}]"),
                        format!("placeholder `{{{n}}}` is not a property of [input]"),
                    );
                }
                args.push(template);
            }
            Err(e) => bad(&format!("args[{i}]"), e.to_string()),
        }
    }
    for (i, name) in c.paths.iter().enumerate() {
        match declared(name) {
            None => bad(
                &format!("paths[{i}]"),
                format!("`{name}` is not a property of [input]"),
            ),
            Some(prop) if prop.get("type") != Some(&serde_json::json!("string")) => bad(
                &format!("paths[{i}]"),
                format!("`{name}` must be of type \"string\" in [input]"),
            ),
            Some(_) => {}
        }
    }
    let (cwd, env) = process_setup(&process, DEFAULT_ENV_PASS, bad);
    let spec = CommandSpec {
        program,
        args,
        cwd,
        env,
        limits: process.limits,
        paths: c.paths,
    };
    (Some(ToolKindSpec::Command(spec)), schema)
}

/// The working directory and the complete environment of a program warden
/// launches: `PATH`, then the variables passed through, then the file's own.
fn process_setup(
    p: &Process,
    default_pass: &[&str],
    bad: &mut dyn FnMut(&str, String),
) -> (PathBuf, Vec<(String, String)>) {
    let cwd = p.cwd.clone().unwrap_or_else(|| PathBuf::from("/"));
    if !cwd.is_absolute() {
        bad("cwd", "must be an absolute path".into());
    }
    let mut env: Vec<(String, String)> = vec![("PATH".into(), DEFAULT_PATH.into())];
    let pass = p
        .env_pass
        .clone()
        .unwrap_or_else(|| default_pass.iter().map(|s| s.to_string()).collect());
    for name in pass {
        if let Ok(v) = std::env::var(&name) {
            env.retain(|(k, _)| *k != name);
            env.push((name, v));
        }
    }
    for (k, v) in &p.env {
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

fn check_schema(schema: &Schema, bad: &mut dyn FnMut(&str, String)) {
    if schema.get("type").and_then(|t| t.as_str()) != Some("object") {
        bad(
            "input.type",
            "must be \"object\" (tool arguments are an object)".into(),
        );
    }
    let value = serde_json::Value::Object(schema.clone());
    if let Err(e) = jsonschema::meta::validate(&value) {
        bad(
            &format!("input{}", e.instance_path().as_str().replace('/', ".")),
            e.to_string(),
        );
        return;
    }
    if let Err(e) = jsonschema::validator_for(&value) {
        bad("input", e.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_field_lists_come_from_the_structs() {
        assert!(fields_of::<Common>().contains(&"breaker"));
        assert_eq!(fields_of::<BuiltinFields>(), ["builtin"]);
        let mcp = ToolKind::Mcp.fields();
        assert!(mcp.contains(&"ping_every") && mcp.contains(&"env") && mcp.contains(&"name"));
        assert!(!mcp.contains(&"paths"));
    }

    #[test]
    fn a_bad_input_schema_is_named_by_the_path_of_what_is_wrong() {
        let problems = |schema: serde_json::Value| {
            let mut found = Vec::new();
            check_schema(schema.as_object().unwrap(), &mut |field, reason| {
                found.push((field.to_string(), reason))
            });
            found
        };
        let ok = serde_json::json!({"type": "object",
            "properties": {"path": {"type": "string", "pattern": "^/[a-z]*$", "maxLength": 9}}});
        assert_eq!(problems(ok), []);
        let typo = serde_json::json!({"type": "object", "properties": {"path": {"type": "strng"}}});
        let found = problems(typo);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "input.properties.path.type", "{found:?}");
        assert!(found[0].1.contains("strng"), "{found:?}");
        let bad_regex = serde_json::json!({"type": "object",
            "properties": {"path": {"type": "string", "pattern": "(unclosed"}}});
        let found = problems(bad_regex);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].0.starts_with("input"), "{found:?}");
    }

    #[test]
    fn a_key_of_another_kind_says_which_kind_takes_it() {
        let mut problems = Vec::new();
        let file = ActorFile::read(
            Path::new("a.toml"),
            "name = \"a\"\nkind = \"builtin\"\nargs = []\npaths = []\ncolor = 1\n",
            &mut problems,
        );
        assert!(
            file.is_some(),
            "the parts read; the stray keys are reported"
        );
        let reason = |field: &str| {
            problems
                .iter()
                .find(|p| p.field == field)
                .map(|p| p.reason.clone())
                .unwrap_or_default()
        };
        assert_eq!(reason("args"), "is only for kind = \"command\" or \"mcp\"");
        assert_eq!(reason("paths"), "is only for kind = \"command\"");
        assert!(
            reason("color").starts_with("unknown field `color`"),
            "{problems:?}"
        );
    }
}
