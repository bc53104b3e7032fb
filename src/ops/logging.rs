//! Logs: JSON lines to rolling files, readable lines to stderr. Never stdout.
//!
//! The file log is written into a buffer under a mutex and flushed by a
//! small thread every `FLUSH_EVERY` (and at exit): a log line costs a memcpy
//! on the request path, not a system call or a thread wake-up. What is lost
//! when warden is SIGKILLed is at most the last `FLUSH_EVERY` of lines.

use std::io::{BufWriter, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{self, LogConfig};

/// How often buffered file log lines are written out.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Bytes buffered before a write is forced.
const BUFFER_BYTES: usize = 64 * 1024;

type FileBuffer = Arc<Mutex<BufWriter<RollingFileAppender>>>;

/// Flushes the file log when dropped: keep it alive for as long as warden logs.
pub struct LogGuard {
    buffer: Option<FileBuffer>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(buffer) = &self.buffer {
            let _ = lock(buffer).flush();
        }
    }
}

/// Installs the global subscriber.
pub fn init(cfg: &LogConfig) -> LogGuard {
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(SafeStderr)
        .with_ansi(false)
        .with_target(false)
        .with_filter(EnvFilter::new(&cfg.stderr));
    // `level = "off"` opens no file at all (what `warden call`'s child runs with).
    let opened = cfg.file_logging().then(|| file_appender(cfg));
    let (file, buffer, problem) = match opened {
        Some(Ok(appender)) => {
            let buffer: FileBuffer =
                Arc::new(Mutex::new(BufWriter::with_capacity(BUFFER_BYTES, appender)));
            private_files(&cfg.dir);
            start_flusher(Arc::downgrade(&buffer), cfg.dir.clone());
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_writer(SharedFile {
                    buffer: buffer.clone(),
                    pid: format!("{{\"pid\":{},", std::process::id()).into_bytes(),
                })
                .with_filter(EnvFilter::new(&cfg.level));
            (Some(layer), Some(buffer), None)
        }
        Some(Err(e)) => (None, None, Some(e)),
        None => (None, None, None),
    };
    tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .init();
    if let Some(e) = problem {
        tracing::warn!(dir = %cfg.dir.display(), error = %e, "file logging is off: cannot open the log directory");
    }
    LogGuard { buffer }
}

fn start_flusher(buffer: std::sync::Weak<Mutex<BufWriter<RollingFileAppender>>>, dir: PathBuf) {
    let _ = std::thread::Builder::new()
        .name("warden-log-flush".into())
        .spawn(move || {
            while let Some(buffer) = buffer.upgrade() {
                let _ = lock(&buffer).flush();
                drop(buffer);
                // A flush is where a rotation opens a new file.
                private_files(&dir);
                std::thread::sleep(FLUSH_EVERY);
            }
        });
}

/// Makes warden's log files in `dir` 0600. The appender creates each file
/// (at start and at every rotation) with the process's umask, usually 0644,
/// and offers no say in it: this runs at start and after every flush, so
/// a file a rotation opened is 0644 until the next flush at the latest
/// (`FLUSH_EVERY`), inside a directory warden made 0700. A umask for the
/// whole process would reach the files the tools' programs create.
fn private_files(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("warden.") && name.ends_with(".log")) && name != "warden.log" {
            continue;
        }
        if let Ok(meta) = e.metadata() {
            if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
                let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o600));
            }
        }
    }
}

fn lock(buffer: &FileBuffer) -> MutexGuard<'_, BufWriter<RollingFileAppender>> {
    // A panic while holding the lock leaves a usable buffer: keep logging.
    buffer
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// stderr for readable lines, one event per line whatever its fields hold:
/// the formatter writes values as they are, so a newline in a tool's name
/// or an MCP server's message would forge a line (in the file an MCP host
/// keeps of warden's stderr) and an ESC would reach a terminal. Every
/// control character but the event's final newline is escaped.
struct SafeStderr;

struct SafeStderrWriter;

impl Write for SafeStderrWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let (body, end) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, "\n"),
            None => (buf, ""),
        };
        use std::borrow::Cow;
        // Invalid UTF-8 becomes U+FFFD: a stray 0x9b byte is CSI to an 8-bit terminal.
        let text = String::from_utf8_lossy(body);
        let valid = matches!(text, Cow::Borrowed(_));
        match crate::core::text::printable(&text) {
            // The common case: nothing to escape, the line as it came.
            Cow::Borrowed(_) if valid => std::io::stderr().lock().write_all(buf),
            safe => std::io::stderr()
                .lock()
                .write_all(format!("{safe}{end}").as_bytes()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for SafeStderr {
    type Writer = SafeStderrWriter;

    fn make_writer(&'a self) -> Self::Writer {
        SafeStderrWriter
    }
}

/// The file log's writer. Every event gets this process's `pid` as its
/// first field: instances sharing a log directory (and `warden call`'s
/// children, when asked to log) stay apart, and `warden logs --pid` can pick.
struct SharedFile {
    buffer: FileBuffer,
    /// `{"pid":N,`: replaces the `{` that opens each event's JSON object.
    pid: Vec<u8>,
}

/// One event's write, under the lock.
struct SharedFileWriter<'a> {
    file: MutexGuard<'a, BufWriter<RollingFileAppender>>,
    pid: &'a [u8],
    /// Nothing of this event written yet.
    fresh: bool,
}

impl Write for SharedFileWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        // tracing's JSON formatter writes each event whole, in one call.
        match buf.strip_prefix(b"{") {
            Some(rest) if std::mem::take(&mut self.fresh) => {
                self.file.write_all(self.pid)?;
                self.file.write_all(rest)
            }
            _ => {
                self.fresh = false;
                self.file.write_all(buf)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Flushing is the flusher thread's job; an event's flush must stay cheap.
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for SharedFile {
    type Writer = SharedFileWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        SharedFileWriter {
            file: lock(&self.buffer),
            pid: &self.pid,
            fresh: true,
        }
    }
}

fn file_appender(cfg: &LogConfig) -> Result<RollingFileAppender, String> {
    // Directories warden creates are its own (0700); one that exists is the
    // operator's, and keeps its mode.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.dir)
        .map_err(|e| e.to_string())?;
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
