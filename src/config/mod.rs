//! Configuration: `config.toml` for the runtime and one `actors/*.toml` per tool.
//!
//! Everything is typed with serde; durations are humantime strings and sizes
//! are strings like "1MiB"; unknown fields are errors. Loading never stops at
//! the first problem: [`load`] returns every problem it finds, each naming the
//! file, the field and the reason, so `warden check` can print them all.
//!
//! **Architecture Invariant:** this module imports nothing else of the crate;
//! everything else reads its types.

mod actor;
mod builtin;
mod runtime;
mod template;
pub mod tls;
mod units;

use std::fmt;
use std::path::{Path, PathBuf};

pub use actor::{
    exported_name, looks_secret, secret_values, valid_tool_name, CommandSpec, ExportFilter, Limits,
    McpSpec, Priority, RestartType, Scope, ToolKindSpec, ToolSpec, DEFAULT_ENV_PASS,
    DEFAULT_MCP_ENV_PASS, DEFAULT_PATH, DEFAULT_PING_EVERY, DEFAULT_PING_TIMEOUT,
    DEFAULT_START_TIMEOUT,
};
pub use builtin::Builtin;
pub use runtime::*;
pub use template::{ArgTemplate, Piece, TemplateError};
pub use units::{ByteSize, MemoryLimit, Rate, RateLimit, UnitError};

use actor::{actors_from_texts, load_actors};

/// One problem found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// The field at fault, or [`WHOLE_FILE`].
    pub field: String,
    pub reason: String,
}

/// The `field` of a problem with a file as a whole (it cannot be read).
pub const WHOLE_FILE: &str = "-";

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field == WHOLE_FILE {
            return write!(f, "{}: {}", self.file.display(), self.reason);
        }
        write!(
            f,
            "{}: {}: {}",
            self.file.display(),
            self.field,
            self.reason
        )
    }
}

/// Everything `warden serve` needs: the runtime config and the tools.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub path: PathBuf,
    pub config: Config,
    pub tools: Vec<ToolSpec>,
}

/// Loads `config.toml`, applies `WARDEN_*` overrides and loads every actor
/// file. Returns every problem found.
pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Loaded, Vec<Problem>> {
    let (config, mut problems) = read_runtime(path, env).map_err(|p| vec![p])?;
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
    match read_runtime(path, env).map_err(|p| vec![p])? {
        (config, problems) if problems.is_empty() => Ok(config),
        (_, problems) => Err(problems),
    }
}

/// The runtime config and its problems; only the one problem when the file
/// cannot be read (what would follow from it, such as a missing `actors/`
/// beside it, says nothing more).
fn read_runtime(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Config, Vec<Problem>), Problem> {
    let mut problems = Vec::new();
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let text = std::fs::read_to_string(path).map_err(|e| Problem {
        file: path.to_path_buf(),
        field: WHOLE_FILE.into(),
        reason: if e.kind() == std::io::ErrorKind::NotFound {
            "no such config file: pass --config FILE or set WARDEN_CONFIG".into()
        } else {
            format!("cannot read the config file: {e}")
        },
    })?;
    let mut config = runtime_from_text(path, &text, &mut problems);
    apply_env(&mut config, path, env, &mut problems);
    resolve_relative(&mut config, &base);
    check_config(&config, path, &mut problems);
    Ok((config, problems))
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
    fn input_wait_is_bounded_by_how_long_a_servers_request_waits() {
        assert!(problem_fields("[server]\ninput_wait = \"2m\"\n").is_empty());
        assert_eq!(
            problem_fields("[server]\ninput_wait = \"5m\"\n"),
            ["server.input_wait"]
        );
        assert_eq!(
            problem_fields("[server]\ninput_wait = \"100ms\"\n"),
            ["server.input_wait"]
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
    fn a_server_per_session_needs_a_command_and_a_cap_of_one_or_more() {
        let fields = |actor: &str| -> Vec<String> {
            match check_texts("", &[("s.toml", actor)]) {
                Ok(_) => vec![],
                Err(problems) => problems.into_iter().map(|p| p.field).collect(),
            }
        };
        let server = "name = \"s\"\nkind = \"mcp\"\ncommand = \"node\"\n";
        assert!(fields(&format!("{server}scope = \"session\"\nmax_sessions = 4\n")).is_empty());
        assert_eq!(
            fields(&format!("{server}scope = \"session\"\nmax_sessions = 0\n")),
            ["max_sessions"]
        );
        assert_eq!(
            fields(&format!("{server}max_sessions = 4\n")),
            ["max_sessions"]
        );
        assert_eq!(fields(&format!("{server}scope = \"user\"\n")), ["scope"]);
        assert_eq!(
            fields("name = \"s\"\nkind = \"mcp\"\nurl = \"https://example.com/mcp\"\nscope = \"session\"\n"),
            ["scope"]
        );
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
    fn one_server_may_keep_its_names_and_two_may_not() {
        let dir = tempfile::tempdir().unwrap();
        let actors = dir.path().join("actors");
        std::fs::create_dir(&actors).unwrap();
        write(dir.path(), "config.toml", "");
        let server = |name: &str, extra: &str| {
            format!("name = \"{name}\"\nkind = \"mcp\"\ncommand = \"node\"\n{extra}")
        };
        write(&actors, "a.toml", &server("a", "prefix = \"\"\n"));
        write(&actors, "b.toml", &server("b", "prefix = \"b\"\n"));
        write(
            &actors,
            "echo.toml",
            "name = \"echo\"\nkind = \"builtin\"\n",
        );
        let loaded = load(&dir.path().join("config.toml"), &no_env).unwrap();
        let a = loaded.tools.iter().find(|t| t.name == "a").unwrap();
        assert_eq!(a.mcp().unwrap().prefix, "");
        assert_eq!(exported_name("", "search"), "search");
        assert_eq!(exported_name("gh", "search"), "gh_search");
        // A builtin without a description gets its own.
        let echo = loaded.tools.iter().find(|t| t.name == "echo").unwrap();
        assert!(
            echo.description.starts_with("Returns its message"),
            "{}",
            echo.description
        );
        write(&actors, "c.toml", &server("c", "prefix = \"\"\n"));
        let problems = load(&dir.path().join("config.toml"), &no_env).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].file.ends_with("c.toml"), "{problems:?}");
        assert_eq!(problems[0].field, "prefix");
        assert!(
            problems[0].reason.contains("mcp server `a` in")
                && problems[0].reason.contains("a.toml"),
            "{}",
            problems[0].reason
        );
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
