//! The `warden` command line: wiring only; everything lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Example: warden logs -f --level warn --tool echo --since 10m
    Logs {
        /// The runtime config; its [log] dir holds the files.
        #[arg(long, default_value = "config.toml", env = "WARDEN_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        args: warden::cli::logs::LogsArgs,
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
    ///
    /// ACTOR is a name from `warden status`: tool:NAME, tool:NAME/worker:N,
    /// tools, breaker, control. With --signal, signals the processes of the
    /// tool's running calls instead. The transport cannot be killed.
    /// Example: warden kill tool:echo
    Kill {
        actor: String,
        /// Send this signal (TERM, KILL, ...) to the tool's running programs.
        #[arg(long)]
        signal: Option<String>,
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
    /// Internal: the guardian that kills warden's process groups when warden dies.
    #[command(name = "__guard", hide = true)]
    Guard,
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
    /// The directory of control sockets (default: $XDG_RUNTIME_DIR/warden, else /tmp/warden-UID).
    #[arg(long, env = "WARDEN_CONTROL_DIR")]
    dir: Option<PathBuf>,
}

impl TargetArgs {
    fn target(self) -> warden::cli::operator::Target {
        warden::cli::operator::Target {
            dir: self
                .dir
                .unwrap_or_else(|| warden::ops::control::socket_dir("auto")),
            pid: self.pid,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match load(&config) {
            Ok(loaded) => {
                println!(
                    "{}: ok, {} tools",
                    loaded.path.display(),
                    loaded.tools.len()
                );
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
        Command::Serve { config } => {
            let loaded = match load(&config) {
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
            let _guard = warden::ops::logging::init(&loaded.config.log);
            let guardian = warden::exec::guard::Guardian::start()
                .map_err(|e| tracing::warn!(error = %e, "no guardian: if warden is SIGKILLed, what its children started may outlive it"))
                .ok();
            let loaded_threads = loaded.config.server.worker_threads;
            let groups = warden::exec::Groups::new(guardian);
            let runtime = match warden::core::runtime::Runtime::new(loaded, groups) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("warden: {e}");
                    return ExitCode::from(1);
                }
            };
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
        Command::Guard => warden::exec::guard::run(),
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
        Command::Breaker {
            tool,
            action,
            target,
        } => {
            let t = target.target();
            operator_exit(warden::cli::operator::breaker(&t, &tool, &action))
        }
        Command::Logs { config, args } => {
            match warden::config::load_runtime(&config, &|k| std::env::var(k).ok()) {
                Ok(runtime) => ExitCode::from(warden::cli::logs::run(&runtime.log.dir, &args)),
                Err(problems) => {
                    for p in &problems {
                        eprintln!("{p}");
                    }
                    eprintln!("warden: {} problem(s) in the config", problems.len());
                    ExitCode::from(1)
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

/// `server.worker_threads = 1` (the default) runs every actor on one thread,
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
