//! Logs: JSON lines to rolling files, readable lines to stderr. Never stdout.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{self, LogConfig};

/// Installs the global subscriber. Keep the guard alive: dropping it flushes the file log.
pub fn init(cfg: &LogConfig) -> Option<WorkerGuard> {
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_filter(EnvFilter::new(&cfg.stderr));
    let (file, guard, problem) = match file_appender(cfg) {
        Ok(appender) => {
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_writer(writer)
                .with_filter(EnvFilter::new(&cfg.level));
            (Some(layer), Some(guard), None)
        }
        Err(e) => (None, None, Some(e)),
    };
    tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .init();
    if let Some(e) = problem {
        tracing::warn!(dir = %cfg.dir.display(), error = %e, "file logging is off: cannot open the log directory");
    }
    guard
}

fn file_appender(cfg: &LogConfig) -> Result<RollingFileAppender, String> {
    std::fs::create_dir_all(&cfg.dir).map_err(|e| e.to_string())?;
    let rotation = match cfg.rotation {
        config::Rotation::Minutely => Rotation::MINUTELY,
        config::Rotation::Hourly => Rotation::HOURLY,
        config::Rotation::Daily => Rotation::DAILY,
        config::Rotation::Never => Rotation::NEVER,
    };
    RollingFileAppender::builder()
        .rotation(rotation)
        .filename_prefix("warden")
        .filename_suffix("log")
        .max_log_files(cfg.keep.max(1))
        .build(&cfg.dir)
        .map_err(|e| e.to_string())
}
