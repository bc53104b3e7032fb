//! The `warden` command line: wiring only; everything lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "warden",
    version,
    about = "A supervised MCP server runtime: tools as actors, defined as data"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve MCP on stdin/stdout (what an MCP client launches).
    ///
    /// Example: warden serve --config /etc/warden/config.toml
    Serve {
        /// The runtime config; actors/ is found relative to it.
        #[arg(long, default_value = "config.toml", env = "WARDEN_CONFIG")]
        config: PathBuf,
        /// Serve MCP over Streamable HTTP at http://ADDR/mcp instead of
        /// stdio (sets [http] listen and mcp); for example 127.0.0.1:8080.
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
    },
    /// Validate the config and every actor file; print every problem, exit 1 if any.
    ///
    /// Example: warden check --config config.toml
    Check {
        #[arg(long, default_value = "config.toml", env = "WARDEN_CONFIG")]
        config: PathBuf,
    },
    /// Start `warden serve`, call one tool over MCP, print its answer (exit 1 on an error result).
    ///
    /// Example: warden call echo message=hi
    Call {
        #[arg(long, default_value = "config.toml", env = "WARDEN_CONFIG")]
        config: PathBuf,
        /// The tool to call.
        tool: String,
        /// Arguments as key=value; values are JSON where the schema wants a non-string.
        args: Vec<String>,
    },
    /// Print warden's JSON log files as readable lines: the last events, filtered; -f follows them.
    ///
    /// It reads the files of the running instance (found through its control
    /// socket, like `status`; --pid picks one, and shows only its events),
    /// else those of --config, else of config.toml here.
    ///
    /// Example: warden logs -f --level warn --tool echo --since 10m
    Logs {
        /// Read this config's [log] dir instead of asking a running instance.
        #[arg(long, env = "WARDEN_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        args: warden::cli::logs::LogsArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Show a running instance: a header, then one line per actor (state,
    /// uptime, restarts, queue, calls in flight, breaker, processes, last error).
    ///
    /// Exit code 3 when no instance runs. Example: warden status --watch
    Status {
        /// Print the status as JSON (the schema is in README.md).
        #[arg(long)]
        json: bool,
        /// Redraw every second.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Chaos: kill one actor of a running instance; its supervisor restarts it.
    // The long help, listing every actor name, is made by `names::kill_help`.
    Kill {
        actor: String,
        /// Send this signal (TERM, KILL, ...) to the tool's running programs.
        #[arg(long)]
        signal: Option<String>,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Reload the config and actor files of a running instance: validate the
    /// whole set, apply only what changed, drop no call. Exit 0 once applied,
    /// 1 when refused (the running set keeps serving). SIGHUP does the same.
    ///
    /// Example: warden reload && warden status
    Reload {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Print a running instance's metrics in the Prometheus text format.
    ///
    /// Example: warden metrics | grep warden_breaker_state
    Metrics {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Print a completion script for a shell.
    ///
    /// Example: warden completions bash > ~/.local/share/bash-completion/completions/warden
    Completions { shell: clap_complete::Shell },
    /// Write warden's man pages (warden.1 and one per command) into DIR,
    /// or print warden.1 alone.
    ///
    /// Example: warden man ~/.local/share/man/man1 && man warden-logs
    Man {
        /// The directory to write the pages into (created if missing).
        dir: Option<PathBuf>,
    },
    /// Force a tool's circuit breaker open or closed, or reset it.
    ///
    /// Example: warden breaker disk_usage reset
    Breaker {
        tool: String,
        #[arg(value_parser = ["open", "closed", "reset"])]
        action: String,
        #[command(flatten)]
        target: TargetArgs,
    },
}

/// Which running instance an operator command talks to.
#[derive(clap::Args)]
struct TargetArgs {
    /// The instance's pid, when several run.
    #[arg(long)]
    pid: Option<u32>,
    /// The directory of control sockets (default: $XDG_RUNTIME_DIR/warden, else /tmp/warden-UID; and ~/.local/state/warden, where an instance goes when the first cannot be trusted).
    #[arg(long, env = "WARDEN_CONTROL_DIR")]
    dir: Option<PathBuf>,
}

impl TargetArgs {
    fn target(self) -> warden::cli::operator::Target {
        warden::cli::operator::Target {
            dirs: match self.dir {
                Some(dir) => vec![dir],
                None => warden::ops::control::socket_dirs("auto"),
            },
            pid: self.pid,
        }
    }
}

/// The command line's definition, with the help texts made from the code.
fn cli_command() -> clap::Command {
    Cli::command().mut_subcommand("kill", |kill| {
        kill.long_about(warden::core::names::kill_help())
    })
}

fn main() -> ExitCode {
    // The guardian (`warden __guard`) is an internal entry point, not a
    // command: outside clap, it stays out of the help, completions and man pages.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(warden::exec::guard::SUBCOMMAND))
    {
        warden::exec::guard::run();
    }
    let cli = Cli::from_arg_matches(&cli_command().get_matches()).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Check { config } => match load(&config) {
            Ok(loaded) => {
                println!(
                    "{}: ok, {} tools",
                    loaded.path.display(),
                    loaded.tools.len()
                );
                let http = &loaded.config.http;
                if loaded.config.mcp_unguarded() {
                    println!(
                        "{}: http.listen: warning: {} serves MCP beyond this machine with no authorization: anyone who reaches it can run every tool",
                        loaded.path.display(),
                        http.listen
                    );
                }
                ExitCode::SUCCESS
            }
            Err(problems) => {
                for p in &problems {
                    println!("{p}");
                }
                println!("{} problem(s)", problems.len());
                ExitCode::from(1)
            }
        },
        Command::Serve { config, http } => {
            // Started first, so that its exec overlaps loading the config;
            // waited for before the containment is set up.
            let guardian = warden::exec::guard::Guardian::spawn();
            let mut loaded = match load(&config) {
                Ok(l) => l,
                Err(problems) => {
                    for p in &problems {
                        eprintln!("{p}");
                    }
                    eprintln!(
                        "warden: refusing to start: {} problem(s) in the config",
                        problems.len()
                    );
                    return ExitCode::from(1);
                }
            };
            if let Some(addr) = http.clone() {
                if addr.parse::<std::net::SocketAddr>().is_err() {
                    eprintln!("warden: --http {addr:?} is not an address such as 127.0.0.1:8080");
                    return ExitCode::from(2);
                }
                loaded.config.http.listen = addr;
                loaded.config.http.mcp = true;
            }
            let _guard = warden::ops::logging::init(&loaded.config.log);
            let guardian = guardian
                .and_then(|g| g.ready())
                .map_err(|e| tracing::warn!(error = %e, "no guardian: if warden is SIGKILLed, what its children started may outlive it"))
                .ok();
            let loaded_threads = loaded.config.server.threads(loaded.config.http.mcp);
            let cells = match warden::exec::contain::Cells::open(loaded.config.server.containment) {
                Ok(cells) => cells,
                Err(why) => {
                    eprintln!("warden: server.containment: the one asked for is not available here: {why}");
                    return ExitCode::from(1);
                }
            };
            match (cells.kind().complete(), cells.why_not()) {
                (true, _) => tracing::info!(actor = "warden", containment = cells.kind().name(), cells = %cells.root().map(|r| r.display().to_string()).unwrap_or_default(), "every program runs in a cgroup of its own"),
                (false, why) => tracing::warn!(actor = "warden", containment = cells.kind().name(), why_no_cgroup = why.unwrap_or("asked for in config"), "no cgroups: a process that leaves its group is found by a sweep, and can outlive a SIGKILL of warden"),
            }
            let groups = warden::exec::Groups::new(guardian, cells);
            let runtime = match warden::core::runtime::Runtime::new(loaded, groups) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("warden: {e}");
                    return ExitCode::from(1);
                }
            };
            // A reload reads the files as this start did, --http included.
            runtime.set_loader(Box::new(move || {
                let mut loaded = load(&config)?;
                if let Some(addr) = &http {
                    loaded.config.http.listen = addr.clone();
                    loaded.config.http.mcp = true;
                }
                Ok(loaded)
            }));
            let rt = serve_runtime(loaded_threads);
            let code = match rt.block_on(warden::supervise::root::serve(runtime)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "warden could not start");
                    ExitCode::from(1)
                }
            };
            // tokio reads stdin on a blocking thread that cannot be interrupted;
            // after SIGTERM stdin may still be open, so do not wait for it.
            rt.shutdown_timeout(std::time::Duration::from_millis(100));
            code
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut cli_command(), "warden", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man { dir } => {
            let written = match &dir {
                Some(dir) => std::fs::create_dir_all(dir)
                    .and_then(|()| clap_mangen::generate_to(cli_command(), dir)),
                None => clap_mangen::Man::new(cli_command()).render(&mut std::io::stdout().lock()),
            };
            match (written, dir) {
                (Ok(()), _) => ExitCode::SUCCESS,
                (Err(e), Some(dir)) => {
                    eprintln!(
                        "warden: cannot write the man pages into {}: {e}",
                        dir.display()
                    );
                    ExitCode::from(1)
                }
                // A closed pipe (`warden man | head`): nothing to add.
                (Err(_), None) => ExitCode::from(1),
            }
        }
        Command::Call { config, tool, args } => {
            let code = tokio_runtime().block_on(warden::cli::call::run(&config, &tool, &args));
            ExitCode::from(code as u8)
        }
        Command::Status {
            json,
            watch,
            target,
        } => {
            let t = target.target();
            operator_exit(warden::cli::operator::status(&t, json, watch))
        }
        Command::Kill {
            actor,
            signal,
            target,
        } => {
            let t = target.target();
            operator_exit(warden::cli::operator::kill(&t, &actor, signal.as_deref()))
        }
        Command::Metrics { target } => {
            let t = target.target();
            operator_exit(warden::cli::operator::metrics(&t))
        }
        Command::Reload { target } => {
            let t = target.target();
            operator_exit(warden::cli::operator::reload(&t))
        }
        Command::Breaker {
            tool,
            action,
            target,
        } => {
            let t = target.target();
            operator_exit(warden::cli::operator::breaker(&t, &tool, &action))
        }
        Command::Logs {
            config,
            args,
            target,
        } => {
            let pid = target.pid;
            let target = target.target();
            let located =
                tokio_runtime().block_on(warden::cli::logs::locate(config.as_deref(), &target));
            match located {
                Ok(dir) => ExitCode::from(warden::cli::logs::run(&dir, &args, pid)),
                Err(warden::cli::operator::Failure(code, msg)) => {
                    eprintln!("warden: {msg}");
                    ExitCode::from(code as u8)
                }
            }
        }
    }
}

fn operator_exit(
    f: impl std::future::Future<Output = Result<(), warden::cli::operator::Failure>>,
) -> ExitCode {
    let code = tokio_runtime().block_on(warden::cli::operator::run(f));
    ExitCode::from(code as u8)
}

fn load(config: &std::path::Path) -> Result<warden::config::Loaded, Vec<warden::config::Problem>> {
    warden::config::load(config, &|k| std::env::var(k).ok())
}

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}

/// `server.worker_threads = 1` (the default on stdio) runs every actor on one thread,
/// where a call's hops between actors are task switches, not cross-thread
/// wake-ups (about 5× faster per call, see BENCHMARKS.md); more selects
/// tokio's multi-thread runtime, where a task holding one thread cannot stop
/// the transport and the watchdog on another.
fn serve_runtime(worker_threads: usize) -> tokio::runtime::Runtime {
    let mut builder = if worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(worker_threads);
        b
    };
    builder
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}
