//! Logs: JSON lines to rolling files, readable lines to stderr. Never stdout.
//!
//! The file log is written into a buffer under a mutex and flushed by a
//! small thread every `FLUSH_EVERY` (and at exit): a log line costs a memcpy
//! on the request path, not a system call or a thread wake-up. What is lost
//! when warden is SIGKILLed is at most the last `FLUSH_EVERY` of lines.

use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{self, LogConfig};

/// How often buffered file log lines are written out.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Bytes buffered before a write is forced.
const BUFFER_BYTES: usize = 64 * 1024;

type FileBuffer = Arc<Mutex<BufWriter<Appender>>>;

/// The rolling file, noting whether bytes reached it since the flusher last
/// looked: only a write can open a new file (a rotation), so only then may
/// a file's mode need fixing.
struct Appender {
    file: RollingFileAppender,
    wrote: bool,
}

impl Write for Appender {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.wrote = true;
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

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
            let appender = Appender {
                file: appender,
                wrote: false,
            };
            let buffer: FileBuffer =
                Arc::new(Mutex::new(BufWriter::with_capacity(BUFFER_BYTES, appender)));
            private_files(&cfg.dir);
            start_flusher(Arc::downgrade(&buffer), cfg.dir.clone());
            let layer = tracing_subscriber::fmt::layer()
                .event_format(JsonLine)
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

/// The file log's lines: what tracing-subscriber's JSON formatter writes
/// with `flatten_event(true)` and no spans (`timestamp`, `level`, the
/// event's fields in order, `target`), byte for byte, written straight into
/// the line. That formatter goes through serde_json and an adaptor that
/// checks every piece it writes as UTF-8, and formats the timestamp into a
/// `String` first: with a line per call, the echo path ran 1.18× the calls/s
/// at 32 in flight without the line (BENCHMARKS.md, "The call log line").
struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use tracing_log::NormalizeEvent;
        // A `log` crate record carries its own target (and the fields say where from).
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        w.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut w)?;
        w.write_str("\",\"level\":\"")?;
        w.write_str(meta.level().as_str())?;
        w.write_char('"')?;
        let mut fields = JsonFields {
            w: &mut w,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        w.write_str(",\"target\":")?;
        json_str(&mut w, meta.target())?;
        w.write_str("}\n")
    }
}

/// An event's fields as JSON object members, as tracing-serde's map visitor
/// writes them through serde_json.
struct JsonFields<'a, 'w> {
    w: &'a mut Writer<'w>,
    result: std::fmt::Result,
}

impl JsonFields<'_, '_> {
    fn member(
        &mut self,
        field: &tracing::field::Field,
        value: impl FnOnce(&mut Writer<'_>) -> std::fmt::Result,
    ) {
        if self.result.is_ok() {
            self.result = (|| {
                self.w.write_char(',')?;
                json_str(self.w, field.name())?;
                self.w.write_char(':')?;
                value(self.w)
            })();
        }
    }
}

impl tracing::field::Visit for JsonFields<'_, '_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.member(field, |w| json_str(w, value));
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.member(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        // serde_json's own digits (and `null` for what JSON has no number for).
        self.member(field, |w| {
            let mut digits = [0u8; 40];
            let mut out = std::io::Cursor::new(&mut digits[..]);
            serde_json::to_writer(&mut out, &value).map_err(|_| std::fmt::Error)?;
            let len = out.position() as usize;
            w.write_str(std::str::from_utf8(&digits[..len]).map_err(|_| std::fmt::Error)?)
        });
    }

    /// Also what `%value`, errors, 128-bit integers and bytes come as.
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.member(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

/// A JSON string, escaped as serde_json escapes it.
fn json_str(w: &mut Writer<'_>, text: &str) -> std::fmt::Result {
    w.write_char('"')?;
    Escaped(w).write_str(text)?;
    w.write_char('"')
}

/// Writes what it is given escaped for the inside of a JSON string: `"`,
/// `\` and control characters, as serde_json does (`\n`, `\u001b`, ...).
struct Escaped<'a, 'w>(&'a mut Writer<'w>);

impl std::fmt::Write for Escaped<'_, '_> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let bytes = text.as_bytes();
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let escape = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0x00..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&text[start..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            start = i + 1;
        }
        self.0.write_str(&text[start..])
    }
}

fn start_flusher(buffer: std::sync::Weak<Mutex<BufWriter<Appender>>>, dir: PathBuf) {
    let _ = std::thread::Builder::new()
        .name("warden-log-flush".into())
        .spawn(move || {
            while let Some(buffer) = buffer.upgrade() {
                let wrote = {
                    let mut file = lock(&buffer);
                    let _ = file.flush();
                    std::mem::take(&mut file.get_mut().wrote)
                };
                drop(buffer);
                // A write (this flush, or a full buffer's) is where a
                // rotation opens a new file. An idle warden lists nothing.
                if wrote {
                    private_files(&dir);
                }
                std::thread::sleep(FLUSH_EVERY);
            }
        });
}

/// Makes warden's log files in `dir` 0600. The appender creates each file
/// (at start and at every rotation) with the process's umask, usually 0644,
/// and offers no say in it: this runs at start and after every flush that
/// wrote (only a write rotates), so a file a rotation opened is 0644 until
/// the next flush at the latest (`FLUSH_EVERY`), inside a directory warden
/// made 0700. A umask for the
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

fn lock(buffer: &FileBuffer) -> MutexGuard<'_, BufWriter<Appender>> {
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
    file: MutexGuard<'a, BufWriter<Appender>>,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    #[test]
    fn the_flusher_makes_new_files_private_after_a_write_and_reads_nothing_idle() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = RollingFileAppender::builder()
            .rotation(Rotation::NEVER)
            .filename_prefix("warden")
            .filename_suffix("log")
            .build(dir.path())
            .unwrap();
        let buffer: FileBuffer =
            Arc::new(Mutex::new(BufWriter::new(Appender { file, wrote: false })));
        start_flusher(Arc::downgrade(&buffer), dir.path().to_path_buf());
        // What a rotation leaves: a new file with the umask's mode.
        let rotated = dir.path().join("warden.2026-12-07.log");
        std::fs::write(&rotated, "").unwrap();
        std::fs::set_permissions(&rotated, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        std::thread::sleep(FLUSH_EVERY * 4);
        assert_eq!(
            mode(&rotated),
            0o644,
            "nothing was written: nothing is listed"
        );
        lock(&buffer).write_all(b"a line\n").unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while mode(&rotated) != 0o600 {
            assert!(
                std::time::Instant::now() < until,
                "still {:o}",
                mode(&rotated)
            );
            std::thread::sleep(FLUSH_EVERY / 2);
        }
        assert_eq!(mode(&dir.path().join("warden.log")), 0o600);
        assert_eq!(
            std::fs::read(dir.path().join("warden.log")).unwrap(),
            b"a line\n"
        );
    }

    /// The lines, each with its timestamp's digits blanked (the two
    /// formatters read the clock apart).
    fn lines(buf: &Buf) -> Vec<String> {
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| {
                let at = l.find("\"timestamp\":\"").expect(l) + 13;
                let end = at + l[at..].find('"').unwrap();
                assert!(end - at == 27, "an RFC 3339 time with microseconds: {l}");
                format!("{}T{}", &l[..at], &l[end..])
            })
            .collect()
    }

    #[test]
    fn the_file_log_lines_are_what_the_json_formatter_wrote() {
        let (old, new) = (Buf::default(), Buf::default());
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(old.clone()),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(JsonLine)
                    .with_writer(new.clone()),
            );
        tracing::subscriber::with_default(subscriber, || {
            let request_id = 40001;
            tracing::info!(actor = "transport", %request_id, tool = "echo", outcome = "ok", duration_ms = 0.079, session = 1u64, principal = Some("alice"), "call");
            let hostile =
                "x\nERROR forged \u{1b}]0;pwned \"q\" \\ tab\t\u{7f} ünï ✓ \u{0}\u{8}\u{c}\r";
            tracing::warn!(error = %hostile, text = hostile, ?hostile, n = -5i64, big = 1e21f64, nan = f64::NAN, inf = f64::INFINITY, tiny = 1e-7, whole = 3.0, flag = true, wide = u128::MAX, "a \"quoted\" message\r\n");
            let e = std::io::Error::other("disk \"full\"");
            tracing::error!(error = &e as &dyn std::error::Error, "failed");
            let none: Option<&str> = None;
            tracing::debug!(principal = none, "");
            tracing::trace!(target: "somewhere::else", "traced");
        });
        let (old, new) = (lines(&old), lines(&new));
        assert_eq!(old.len(), 5, "{old:#?}");
        assert_eq!(new, old);
    }
}
