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
            let _guard = warden::logging::init(&loaded.config.log);
            let loaded_threads = loaded.config.server.worker_threads;
            let runtime = match warden::runtime::Runtime::new(loaded) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("warden: {e}");
                    return ExitCode::from(1);
                }
            };
            let rt = serve_runtime(loaded_threads);
            let code = match rt.block_on(warden::root::serve(runtime)) {
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
        Command::Call { config, tool, args } => {
            let code = tokio_runtime().block_on(warden::call::run(&config, &tool, &args));
            ExitCode::from(code as u8)
        }
    }
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

/// `server.worker_threads = 1` (the default) runs every actor on one thread:
/// a call's hops between actors are then task switches, not cross-thread
/// wake-ups, which measured 3× faster per call (BENCHMARKS.md).
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
