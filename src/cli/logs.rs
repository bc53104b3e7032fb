//! `warden logs`: reads the JSON log files `warden serve` writes (see
//! `logging.rs`), filters them, and prints them as readable lines or unchanged;
//! `-f` keeps following them across rotations, like `tail -F`.
//!
//! Memory stays bounded whatever the size of the files: the tail reads the
//! files backwards from the newest and keeps only the last N matching lines;
//! following reads only the bytes appended since the last poll, and holds at
//! most one incomplete line. A line longer than `MAX_LINE` is skipped.
//!
//! This is the only code besides the transport that writes stdout, and it runs
//! only in `warden logs`, never in `warden serve`.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, IsTerminal, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::cli::operator::{Failure, Target, EXIT_NOT_RUNNING};
use crate::core::text;

/// Default for `--lines`: events printed before following.
pub const DEFAULT_LINES: usize = 50;
/// How often `-f` looks for new lines, new files, truncation and replacement.
pub const POLL_EVERY: Duration = Duration::from_millis(200);
/// Bytes read from a log file at a time.
const CHUNK: usize = 64 * 1024;
/// A longer log line is skipped rather than held in memory.
const MAX_LINE: usize = 16 << 20;
/// What `logging.rs` names the files: `warden.<date>.log` or `warden.log`.
const FILE_PREFIX: &str = "warden";
const FILE_SUFFIX: &str = "log";
/// Fields a readable line shows in its own columns (or not at all: `target`
/// when the event names its actor).
const COLUMNS: &[&str] = &["timestamp", "level", "pid", "message", "actor", "target"];

/// The options of `warden logs` (the config path is main.rs's).
#[derive(Debug, Clone, clap::Args)]
pub struct LogsArgs {
    /// After the last lines, keep printing new events as they are written, across rotations (like tail -F).
    #[arg(short, long)]
    pub follow: bool,
    /// Only events at this level or more severe.
    #[arg(long, value_enum, ignore_case = true)]
    pub level: Option<Level>,
    /// Only this actor's events (warden, transport, tools, breaker); an event
    /// without an actor matches the last segment of its target (rmcp::service: service).
    #[arg(long)]
    pub actor: Option<String>,
    /// Only events about this tool.
    #[arg(long)]
    pub tool: Option<String>,
    /// Only events from this long ago or later, such as "10m", "2h" or "1day".
    #[arg(long, value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// Print the matching JSON lines unchanged instead of readable lines.
    #[arg(long)]
    pub json: bool,
    /// How many of the last matching events to print (before following, with -f).
    #[arg(short = 'n', long, default_value_t = DEFAULT_LINES)]
    pub lines: usize,
}

/// The config `warden logs` falls back to when no instance runs.
const DEFAULT_CONFIG: &str = "config.toml";

/// Where `warden logs` reads: the log directory of the config it was given;
/// else the one the running instance reports through its control socket
/// (`--pid` picks one of several); else, with none running, the one of
/// `config.toml` here.
pub async fn locate(config: Option<&Path>, target: &Target) -> Result<PathBuf, Failure> {
    if let Some(config) = config {
        return log_dir_of(config);
    }
    match target.status().await {
        Ok(status) => status.warden.log_dir.map(PathBuf::from).ok_or_else(|| {
            Failure(
                1,
                format!(
                    "warden pid {} writes no log files (its [log] level is off)",
                    status.warden.pid
                ),
            )
        }),
        Err(Failure(EXIT_NOT_RUNNING, why)) if target.pid.is_none() => {
            let here = Path::new(DEFAULT_CONFIG);
            if here.exists() {
                log_dir_of(here)
            } else {
                Err(Failure(
                    1,
                    format!("{why}, and no {DEFAULT_CONFIG} here: pass --config FILE or set WARDEN_CONFIG"),
                ))
            }
        }
        Err(failure) => Err(failure),
    }
}

/// The log directory a config names.
fn log_dir_of(config: &Path) -> Result<PathBuf, Failure> {
    crate::config::load_runtime(config, &|k| std::env::var(k).ok())
        .map(|runtime| runtime.log.dir)
        .map_err(|problems| {
            let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
            Failure(1, text.join("\n"))
        })
}

/// Prints the logs in `dir` as `args` asks, only process `pid`'s events if
/// given; returns the exit code.
pub fn run(dir: &Path, args: &LogsArgs, pid: Option<u32>) -> u8 {
    let color =
        io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let since = args
        .since
        .map(|ago| SystemTime::now().checked_sub(ago).unwrap_or(UNIX_EPOCH));
    let printer = Printer {
        json: args.json,
        color,
        filter: Filter {
            level: args.level,
            actor: args.actor.clone(),
            tool: args.tool.clone(),
            since,
            pid,
        },
    };
    let files = log_files(dir);
    if files.is_empty() {
        eprintln!("warden: no log files in {}", dir.display());
        if !args.follow {
            return 1;
        }
        eprintln!("warden: waiting for them");
    }
    let mut out = io::BufWriter::new(io::stdout().lock());
    let (lines, current) = tail(&files, args.lines, &printer, args.follow);
    // A write error is stdout closed (`warden logs | head`): nothing more to do.
    for line in lines.iter().rev() {
        if out.write_all(line).is_err() {
            return 0;
        }
    }
    if out.flush().is_err() || !args.follow {
        return 0;
    }
    // SIGINT and SIGTERM keep their default action (the process ends); every
    // poll's output is flushed before sleeping, so nothing printed is lost.
    let mut follower = Follower {
        dir: dir.to_path_buf(),
        current,
    };
    loop {
        if follower
            .poll(&printer, &mut out)
            .and_then(|()| out.flush())
            .is_err()
            || stdout_gone()
        {
            return 0;
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// Whether stdout is a pipe or socket whose reader has gone, or a terminal
/// that hung up: found without writing (as `tail -f` does), so that
/// `warden logs -f | head` ends with `head`, not at the next log line.
fn stdout_gone() -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let stdout = std::io::stdout();
    let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::empty())];
    // Error, hang-up and invalid-descriptor are reported whatever `events` asks for.
    let gone = PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL;
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0].revents().is_some_and(|r| r.intersects(gone))
}

/// A tracing level, least severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Level {
    Trace,
    Debug,
    Info,
    #[value(alias = "warning")]
    Warn,
    Error,
}

impl Level {
    /// The level of a log line ("INFO"; any case).
    pub fn parse(s: &str) -> Option<Level> {
        Some(match s.to_ascii_uppercase().as_str() {
            "TRACE" => Level::Trace,
            "DEBUG" => Level::Debug,
            "INFO" => Level::Info,
            "WARN" | "WARNING" => Level::Warn,
            "ERROR" => Level::Error,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        }
    }

    /// tracing-subscriber's colours.
    fn ansi(self) -> &'static str {
        match self {
            Level::Trace => "\x1b[35m",
            Level::Debug => "\x1b[34m",
            Level::Info => "\x1b[32m",
            Level::Warn => "\x1b[33m",
            Level::Error => "\x1b[31m",
        }
    }
}

/// An RFC 3339 time as `warden serve` writes them (UTC, `Z`), with any
/// number of fraction digits.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(s).ok()
}

/// One log line's object, its fields in the order they were written.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    fields: Vec<(String, Value)>,
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = Event;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Event, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    fields.push(entry);
                }
                Ok(Event { fields })
            }
        }
        d.deserialize_map(Fields)
    }
}

impl Event {
    /// A log line (without its newline); `None` if it is not a JSON object.
    pub fn parse(line: &[u8]) -> Option<Event> {
        serde_json::from_slice(line).ok()
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn level(&self) -> Option<Level> {
        self.str("level").and_then(Level::parse)
    }

    pub fn timestamp(&self) -> Option<SystemTime> {
        self.str("timestamp").and_then(parse_time)
    }

    /// The `actor` field, else the `target` (a module path).
    fn who(&self) -> Option<&str> {
        self.str("actor").or_else(|| self.str("target"))
    }
}

/// Which events to print. An event without the field a filter needs does not match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// This level or more severe.
    pub level: Option<Level>,
    /// The `actor` field, or the target's last path segment when there is no actor.
    pub actor: Option<String>,
    pub tool: Option<String>,
    /// At this time or later.
    pub since: Option<SystemTime>,
    /// Written by this process.
    pub pid: Option<u32>,
}

impl Filter {
    pub fn matches(&self, e: &Event) -> bool {
        if let Some(min) = self.level {
            if e.level().is_none_or(|l| l < min) {
                return false;
            }
        }
        if let Some(want) = &self.actor {
            let ok = match e.str("actor") {
                Some(actor) => actor == want,
                None => e
                    .str("target")
                    .is_some_and(|t| t == want || t.rsplit("::").next() == Some(want.as_str())),
            };
            if !ok {
                return false;
            }
        }
        if let Some(want) = self.pid {
            if e.get("pid").and_then(Value::as_u64) != Some(u64::from(want)) {
                return false;
            }
        }
        if let Some(want) = &self.tool {
            if e.str("tool") != Some(want.as_str()) {
                return false;
            }
        }
        if let Some(since) = self.since {
            if e.timestamp().is_none_or(|t| t < since) {
                return false;
            }
        }
        true
    }
}

/// One readable line (without its newline):
/// `2026-11-22T04:41:49.909Z INFO  transport  call request_id=2 tool=echo outcome=ok`.
pub fn format_event(e: &Event, color: bool) -> String {
    let mut s = String::with_capacity(160);
    match e.str("timestamp") {
        Some(t) => match parse_time(t) {
            Some(ts) => s.push_str(&humantime::format_rfc3339_millis(ts).to_string()),
            None => s.push_str(&text::printable(t)),
        },
        None => s.push('-'),
    }
    s.push(' ');
    let raw_level = e.str("level").unwrap_or("-");
    let level = Level::parse(raw_level);
    let name = level.map_or(raw_level, |l| l.name());
    match level {
        Some(l) if color => {
            s.push_str(l.ansi());
            s.push_str(name);
            s.push_str("\x1b[0m");
            s.push_str(&" ".repeat(5usize.saturating_sub(name.len())));
        }
        _ => s.push_str(&format!("{:<5}", text::printable(name))),
    }
    s.push(' ');
    // The instance that wrote it (files from before pids were logged have none).
    if let Some(pid) = e.get("pid").and_then(Value::as_u64) {
        s.push_str(&format!("{pid:>7} "));
    }
    s.push_str(&format!("{:<10}", text::printable(e.who().unwrap_or("-"))));
    match e.get("message") {
        Some(Value::String(m)) if !m.is_empty() => {
            s.push(' ');
            s.push_str(&text::printable(m));
        }
        Some(Value::String(_)) | None => {}
        Some(other) => {
            s.push(' ');
            s.push_str(&text::printable(&other.to_string()));
        }
    }
    for (k, v) in &e.fields {
        if COLUMNS.contains(&k.as_str()) {
            continue;
        }
        s.push(' ');
        s.push_str(&text::printable(k));
        s.push('=');
        s.push_str(&format_value(v));
    }
    s
}

/// A field's value: strings bare unless empty or holding spaces, quotes or
/// control characters (then JSON-quoted); anything else as compact JSON.
pub fn format_value(v: &Value) -> Cow<'_, str> {
    match v {
        Value::String(t) => {
            let quote = t.is_empty()
                || t.chars()
                    .any(|c| c.is_whitespace() || text::is_unsafe(c) || c == '"');
            if quote {
                Cow::Owned(text::quoted(t))
            } else {
                Cow::Borrowed(t)
            }
        }
        // Arrays and objects are JSON, which leaves C1 and bidi characters raw.
        other => Cow::Owned(text::printable(&other.to_string()).into_owned()),
    }
}

/// Turns log lines into output: filters, then formats or passes them through.
struct Printer {
    json: bool,
    color: bool,
    filter: Filter,
}

impl Printer {
    /// What to print for one log line (without its newline), newline included;
    /// `None` if it is skipped. Lines that are not JSON objects are skipped in
    /// both modes, so `--json` output is always JSON lines.
    fn render(&self, line: &[u8]) -> Option<Vec<u8>> {
        let event = Event::parse(line)?;
        if !self.filter.matches(&event) {
            return None;
        }
        let mut out = if self.json {
            line.to_vec()
        } else {
            format_event(&event, self.color).into_bytes()
        };
        out.push(b'\n');
        Some(out)
    }

    fn emit(&self, line: &[u8], out: &mut dyn Write) -> io::Result<()> {
        match self.render(line) {
            Some(bytes) => out.write_all(&bytes),
            None => Ok(()),
        }
    }
}

/// Orders log files by the time in their names (`warden.log`, written by
/// `rotation = "never"`, after any dated file).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct FileKey {
    undated: bool,
    /// Year, month, day, hour, minute; what the name leaves out is 0.
    when: [u32; 5],
    name: String,
}

/// The key of a log file's name; `None` for any other file.
fn file_key(name: &str) -> Option<FileKey> {
    let middle = name
        .strip_prefix(FILE_PREFIX)?
        .strip_suffix(FILE_SUFFIX)?
        .strip_prefix('.')?;
    if middle.is_empty() {
        return Some(FileKey {
            undated: true,
            when: [0; 5],
            name: name.into(),
        });
    }
    let date = middle.strip_suffix('.')?;
    let parts: Vec<&str> = date.split('-').collect();
    let widths = [4, 2, 2, 2, 2];
    if !(3..=5).contains(&parts.len()) {
        return None;
    }
    let mut when = [0u32; 5];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != widths[i] || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        when[i] = p.parse().ok()?;
    }
    Some(FileKey {
        undated: false,
        when,
        name: name.into(),
    })
}

/// The log files in `dir`, oldest first. A missing directory has none.
fn log_files(dir: &Path) -> Vec<(FileKey, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(FileKey, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
        .filter_map(|e| Some((file_key(e.file_name().to_str()?)?, e.path())))
        .collect();
    files.sort();
    files
}

/// Calls `each` with the lines of `file` before `end`, last line first, until
/// it returns false; reads `chunk` bytes at a time, backwards. Bytes after the
/// last newline are a line only when `include_partial` (else they are still
/// being written). Returns where the complete lines end.
fn lines_backwards(
    file: &mut File,
    end: u64,
    include_partial: bool,
    chunk: usize,
    each: &mut dyn FnMut(&[u8]) -> bool,
) -> io::Result<u64> {
    let mut buf = vec![0u8; chunk];
    let mut pos = end;
    // The end of the line whose start is not found yet, in the order read:
    // its last piece first.
    let mut pieces: Vec<Vec<u8>> = Vec::new();
    let mut pieces_len = 0usize;
    let mut too_long = false;
    // Whether that line ends with a newline.
    let mut terminated = false;
    let mut complete_end = None;
    let mut line = Vec::new();
    let mut give = |part: &[u8], pieces: &mut Vec<Vec<u8>>, terminated: bool, too_long: bool| {
        let empty = part.is_empty() && pieces.is_empty();
        if too_long || !(terminated || include_partial) || (!terminated && empty) {
            return true;
        }
        if pieces.is_empty() {
            return each(part);
        }
        line.clear();
        line.extend_from_slice(part);
        for p in pieces.iter().rev() {
            line.extend_from_slice(p);
        }
        each(&line)
    };
    while pos > 0 {
        let start = pos.saturating_sub(chunk as u64);
        let buf = &mut buf[..(pos - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(buf)?;
        let mut right = buf.len();
        while let Some(i) = buf[..right].iter().rposition(|&b| b == b'\n') {
            complete_end.get_or_insert(start + i as u64 + 1);
            let more = give(&buf[i + 1..right], &mut pieces, terminated, too_long);
            if !more {
                return Ok(complete_end.unwrap_or(0));
            }
            pieces.clear();
            pieces_len = 0;
            too_long = false;
            terminated = true;
            right = i;
        }
        if !too_long && right > 0 {
            pieces_len += right;
            if pieces_len > MAX_LINE {
                too_long = true;
                pieces.clear();
            } else {
                pieces.push(buf[..right].to_vec());
            }
        }
        pos = start;
    }
    if end > 0 {
        give(&[], &mut pieces, terminated, too_long);
    }
    Ok(complete_end.unwrap_or(0))
}

/// The last `n` lines to print from `files` (oldest first), newest first, and
/// with `follow` the newest file opened where its complete lines end.
fn tail(
    files: &[(FileKey, PathBuf)],
    n: usize,
    printer: &Printer,
    follow: bool,
) -> (Vec<Vec<u8>>, Option<Current>) {
    let mut picked: Vec<Vec<u8>> = Vec::new();
    let mut current = None;
    for (i, (key, path)) in files.iter().enumerate().rev() {
        let newest = i + 1 == files.len();
        if picked.len() >= n && !(newest && follow) {
            break;
        }
        // A file deleted since the listing (`keep`) is skipped.
        let Ok(mut file) = File::open(path) else {
            continue;
        };
        let Ok(meta) = file.metadata() else {
            continue;
        };
        let read = lines_backwards(&mut file, meta.len(), !newest, CHUNK, &mut |line| {
            if picked.len() >= n {
                return false;
            }
            if let Some(out) = printer.render(line) {
                picked.push(out);
            }
            picked.len() < n
        });
        match read {
            Ok(complete_end) if newest && follow => {
                current = Some(Current::new(key.clone(), path.clone(), file, complete_end))
            }
            Ok(_) => {}
            Err(e) => eprintln!("warden: reading {}: {e}", path.display()),
        }
    }
    (picked, current)
}

/// The file being followed.
struct Current {
    key: FileKey,
    path: PathBuf,
    file: File,
    /// Device and inode: the file behind `path` may be replaced.
    id: (u64, u64),
    /// Bytes read so far.
    offset: u64,
    /// The last line read so far when it has no newline yet.
    partial: Vec<u8>,
    /// That line passed `MAX_LINE`: skip it up to its newline.
    partial_too_long: bool,
}

impl Current {
    fn new(key: FileKey, path: PathBuf, file: File, offset: u64) -> Current {
        let id = file.metadata().map_or((0, 0), |m| (m.dev(), m.ino()));
        Current {
            key,
            path,
            file,
            id,
            offset,
            partial: Vec::new(),
            partial_too_long: false,
        }
    }

    fn open(key: FileKey, path: PathBuf) -> Option<Current> {
        let file = File::open(&path).ok()?;
        Some(Current::new(key, path, file, 0))
    }

    /// Prints the complete lines appended since the last read. A read error
    /// is nothing new (the next poll tries again); an error is stdout's.
    fn read_new(&mut self, printer: &Printer, out: &mut dyn Write) -> io::Result<()> {
        if self.file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Ok(());
        }
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match self.file.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Ok(()),
            };
            self.offset += n as u64;
            let mut data = &buf[..n];
            while let Some(i) = data.iter().position(|&b| b == b'\n') {
                if self.partial_too_long {
                    self.partial_too_long = false;
                } else if self.partial.is_empty() {
                    printer.emit(&data[..i], out)?;
                } else {
                    self.partial.extend_from_slice(&data[..i]);
                    let line = std::mem::take(&mut self.partial);
                    printer.emit(&line, out)?;
                }
                data = &data[i + 1..];
            }
            if !self.partial_too_long && !data.is_empty() {
                if self.partial.len() + data.len() > MAX_LINE {
                    self.partial_too_long = true;
                    self.partial = Vec::new();
                } else {
                    self.partial.extend_from_slice(data);
                }
            }
        }
    }

    /// The file is done (rotated away or replaced): its last line counts even
    /// without a newline.
    fn finish(&mut self, printer: &Printer, out: &mut dyn Write) -> io::Result<()> {
        self.read_new(printer, out)?;
        let line = std::mem::take(&mut self.partial);
        if !line.is_empty() && !self.partial_too_long {
            printer.emit(&line, out)?;
        }
        self.partial_too_long = false;
        Ok(())
    }
}

/// `tail -F` over the log directory.
struct Follower {
    dir: PathBuf,
    current: Option<Current>,
}

impl Follower {
    /// Prints what was written since the last poll: the rest of the current
    /// file, then of each newer file in turn; a truncated or replaced file is
    /// read again from its start. An error is stdout's.
    fn poll(&mut self, printer: &Printer, out: &mut dyn Write) -> io::Result<()> {
        if self.current.is_none() {
            // No file yet: the first one that appears, from its start.
            let Some((key, path)) = log_files(&self.dir).into_iter().next() else {
                return Ok(());
            };
            self.current = Current::open(key, path);
        }
        while let Some(cur) = self.current.as_mut() {
            cur.read_new(printer, out)?;
            if let Ok(meta) = std::fs::metadata(&cur.path) {
                if (meta.dev(), meta.ino()) != cur.id {
                    // Replaced: the old file is done; the new one is read from its start.
                    cur.finish(printer, out)?;
                    match Current::open(cur.key.clone(), cur.path.clone()) {
                        Some(new) => {
                            *cur = new;
                            continue;
                        }
                        None => return Ok(()),
                    }
                }
                if meta.len() < cur.offset {
                    // Truncated: what is there now was written after.
                    cur.offset = 0;
                    cur.partial.clear();
                    cur.partial_too_long = false;
                    continue;
                }
            }
            let next = log_files(&self.dir)
                .into_iter()
                .find(|(key, _)| *key > cur.key);
            let Some((key, path)) = next else {
                return Ok(());
            };
            // Rotated: finish the old file (what was written before the
            // listing), then go on with the next one.
            cur.finish(printer, out)?;
            if let Some(new) = Current::open(key, path) {
                *cur = new;
            } else {
                // Deleted before it could be opened: the next poll lists again.
                return Ok(());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALL: &str = r#"{"timestamp":"2026-11-22T04:41:49.909715Z","level":"INFO","message":"call","actor":"transport","request_id":"2","tool":"echo","outcome":"ok","duration_ms":0.1,"target":"warden::transport"}"#;
    const RMCP: &str = r#"{"timestamp":"2026-11-22T04:41:50.000001Z","level":"WARN","message":"response error","id":"3","error":"unknown tool `nope`","target":"rmcp::service"}"#;

    fn event(line: &str) -> Event {
        Event::parse(line.as_bytes()).expect("a JSON object")
    }

    fn line(ts: &str, level: &str, message: &str, tool: &str) -> String {
        format!(
            r#"{{"timestamp":"{ts}","level":"{level}","message":"{message}","actor":"transport","tool":"{tool}","target":"warden::transport"}}"#
        )
    }

    fn printer(json: bool) -> Printer {
        Printer {
            json,
            color: false,
            filter: Filter::default(),
        }
    }

    #[test]
    fn timestamps_parse_as_utc_and_print_to_the_millisecond() {
        let t = parse_time("2026-11-22T04:41:49.909715Z").unwrap();
        let d = t.duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(
            (d.as_secs(), d.subsec_nanos()),
            (1_795_322_509, 909_715_000)
        );
        assert_eq!(
            humantime::format_rfc3339_millis(t).to_string(),
            "2026-11-22T04:41:49.909Z"
        );
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        assert_eq!(parse_time("2026-11-22T04:41:49.909715+00:00"), Some(t));
        let leap = parse_time("2024-02-29T23:59:59Z").unwrap();
        assert_eq!(
            humantime::format_rfc3339_millis(leap).to_string(),
            "2024-02-29T23:59:59.000Z"
        );
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-22T24:00:00Z",
            "2026-11-22T04:41:49",
            "2026-11-22T04:41:49.9+1",
            "2026-11-22X04:41:49Z",
            // Not what warden writes: local offsets, and times before 1970.
            "2026-11-22T05:41:49+01:00",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(parse_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn levels_are_ordered_by_severity() {
        use Level::*;
        assert!(Trace < Debug && Debug < Info && Info < Warn && Warn < Error);
        assert_eq!(Level::parse("WARN"), Some(Warn));
        assert_eq!(Level::parse("warning"), Some(Warn));
        assert_eq!(Level::parse("Error"), Some(Error));
        assert_eq!(Level::parse("loud"), None);
        for l in [Trace, Debug, Info, Warn, Error] {
            assert_eq!(Level::parse(l.name()), Some(l));
        }
    }

    #[test]
    fn readable_lines() {
        assert_eq!(
            format_event(&event(CALL), false),
            "2026-11-22T04:41:49.909Z INFO  transport  call request_id=2 tool=echo outcome=ok duration_ms=0.1"
        );
        // No actor: the target names the source, and stays out of the fields.
        assert_eq!(
            format_event(&event(RMCP), false),
            "2026-11-22T04:41:50.000Z WARN  rmcp::service response error id=3 error=\"unknown tool `nope`\""
        );
        let colored = format_event(&event(CALL), true);
        assert!(
            colored.starts_with("2026-11-22T04:41:49.909Z \x1b[32mINFO\x1b[0m  transport  call"),
            "{colored:?}"
        );
        // The writer's pid is a column of its own, after the level.
        let with_pid = CALL.replacen('{', r#"{"pid":4242,"#, 1);
        assert_eq!(
            format_event(&event(&with_pid), false),
            "2026-11-22T04:41:49.909Z INFO     4242 transport  call request_id=2 tool=echo outcome=ok duration_ms=0.1"
        );
        let odd = r#"{"level":"TRACE","message":"two\nlines","empty":"","n":3,"ok":true,"list":[1,"a"],"quote":"say \"hi\"","path":"/a=b"}"#;
        assert_eq!(
            format_event(&event(odd), false),
            r#"- TRACE -          two\nlines empty="" n=3 ok=true list=[1,"a"] quote="say \"hi\"" path=/a=b"#
        );
    }

    #[test]
    fn filters() {
        let call = event(CALL);
        let rmcp = event(RMCP);
        let all = Filter::default();
        assert!(all.matches(&call) && all.matches(&rmcp));

        let warn = Filter {
            level: Some(Level::Warn),
            ..Filter::default()
        };
        assert!(!warn.matches(&call) && warn.matches(&rmcp));
        let info = Filter {
            level: Some(Level::Info),
            ..Filter::default()
        };
        assert!(info.matches(&call) && info.matches(&rmcp));

        let actor = |a: &str| Filter {
            actor: Some(a.into()),
            ..Filter::default()
        };
        assert!(actor("transport").matches(&call));
        assert!(!actor("transport").matches(&rmcp));
        assert!(!actor("trans").matches(&call));
        // The actor field wins over the target.
        assert!(!actor("warden::transport").matches(&call));
        assert!(actor("service").matches(&rmcp));
        assert!(actor("rmcp::service").matches(&rmcp));

        let tool = |t: &str| Filter {
            tool: Some(t.into()),
            ..Filter::default()
        };
        assert!(tool("echo").matches(&call));
        assert!(!tool("ech").matches(&call));
        assert!(!tool("echo").matches(&rmcp));

        let since = |ts: &str| Filter {
            since: parse_time(ts),
            ..Filter::default()
        };
        assert!(since("2026-11-22T04:41:49Z").matches(&call));
        assert!(since("2026-11-22T04:41:49.909715Z").matches(&call));
        assert!(!since("2026-11-22T04:41:49.909716Z").matches(&call));
        assert!(since("2026-11-22T04:41:50Z").matches(&rmcp));
        assert!(!since("2020-01-01T00:00:00Z").matches(&event(r#"{"level":"INFO"}"#)));

        let pid = |p: u32| Filter {
            pid: Some(p),
            ..Filter::default()
        };
        let mine = event(r#"{"pid":4242,"level":"INFO"}"#);
        assert!(pid(4242).matches(&mine));
        assert!(!pid(4243).matches(&mine));
        assert!(
            !pid(4242).matches(&call),
            "an event without a pid is nobody's"
        );
    }

    #[test]
    fn lines_that_are_not_json_objects_are_skipped() {
        let p = printer(false);
        for junk in ["", "not json", "[1,2]", "42", "{\"level\":", "{} trailing"] {
            assert_eq!(p.render(junk.as_bytes()), None, "{junk:?}");
        }
        assert_eq!(
            printer(true).render(CALL.as_bytes()),
            Some(format!("{CALL}\n").into_bytes())
        );
    }

    #[test]
    fn log_file_names_sort_by_time() {
        for bad in [
            "warden.log.gz",
            "warden.2026-11-22.txt",
            "other.2026-11-22.log",
            "warden.2026-11.log",
            "warden.2026-11-22-4.log",
            "warden..log",
            "wardenlog",
        ] {
            assert_eq!(file_key(bad), None, "{bad}");
        }
        let mut names = vec![
            "warden.log",
            "warden.2026-11-22-04-05.log",
            "warden.2026-11-23.log",
            "warden.2026-11-22-04.log",
            "warden.2026-11-22.log",
            "warden.2025-12-31-23-59.log",
        ];
        names.sort_by_key(|n| file_key(n).unwrap());
        assert_eq!(
            names,
            [
                "warden.2025-12-31-23-59.log",
                "warden.2026-11-22.log",
                "warden.2026-11-22-04.log",
                "warden.2026-11-22-04-05.log",
                "warden.2026-11-23.log",
                "warden.log",
            ]
        );
    }

    fn backwards(text: &[u8], include_partial: bool, chunk: usize) -> (Vec<String>, u64) {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(text).unwrap();
        let mut got = Vec::new();
        let end = lines_backwards(
            &mut f,
            text.len() as u64,
            include_partial,
            chunk,
            &mut |l| {
                got.push(String::from_utf8(l.to_vec()).unwrap());
                true
            },
        )
        .unwrap();
        got.reverse();
        (got, end)
    }

    #[test]
    fn reading_backwards_finds_every_line_at_any_chunk_size() {
        let text = b"first\n\nthird line\nfourth\npartial";
        for chunk in 1..=40 {
            let (lines, end) = backwards(text, false, chunk);
            assert_eq!(
                lines,
                ["first", "", "third line", "fourth"],
                "chunk {chunk}"
            );
            assert_eq!(end, 25);
            let (lines, _) = backwards(text, true, chunk);
            assert_eq!(
                lines,
                ["first", "", "third line", "fourth", "partial"],
                "chunk {chunk}"
            );
            let (lines, end) = backwards(b"a\nb\n", false, chunk);
            assert_eq!((lines, end), (vec!["a".to_string(), "b".to_string()], 4));
            let (lines, end) = backwards(b"no newline", false, chunk);
            assert_eq!((lines.len(), end), (0, 0));
        }
        assert_eq!(backwards(b"", true, 4), (vec![], 0));
    }

    #[test]
    fn the_tail_is_the_last_matching_lines_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let old = (0..30)
            .map(|i| line("2026-01-01T00:00:00Z", "INFO", &format!("old{i}"), "echo") + "\n")
            .collect::<String>();
        std::fs::write(dir.path().join("warden.2026-01-01.log"), old).unwrap();
        let new = format!(
            "{}\nnot json\n{}\n{}\n{{\"partial",
            line("2026-01-02T00:00:00Z", "INFO", "new0", "echo"),
            line("2026-01-02T00:00:00Z", "ERROR", "new1", "other"),
            line("2026-01-02T00:00:00Z", "INFO", "new2", "echo"),
        );
        std::fs::write(dir.path().join("warden.2026-01-02.log"), &new).unwrap();
        let files = log_files(dir.path());
        assert_eq!(files.len(), 2);
        let messages = |picked: Vec<Vec<u8>>| -> Vec<String> {
            picked
                .iter()
                .rev()
                .map(|l| {
                    event(std::str::from_utf8(l).unwrap())
                        .str("message")
                        .unwrap()
                        .to_string()
                })
                .collect()
        };
        let (picked, current) = tail(&files, 5, &printer(true), true);
        assert_eq!(messages(picked), ["old28", "old29", "new0", "new1", "new2"]);
        let current = current.expect("following the newest file");
        assert!(current.path.ends_with("warden.2026-01-02.log"));
        assert_eq!(current.offset, new.rfind('\n').unwrap() as u64 + 1);

        let echo = Printer {
            json: true,
            color: false,
            filter: Filter {
                tool: Some("echo".into()),
                ..Filter::default()
            },
        };
        let (picked, current) = tail(&files, 3, &echo, false);
        assert_eq!(messages(picked), ["old29", "new0", "new2"]);
        assert!(current.is_none());
        let (picked, _) = tail(&files, 0, &echo, false);
        assert!(picked.is_empty());
        let (picked, _) = tail(&files, 1000, &echo, false);
        assert_eq!(picked.len(), 32);
    }

    /// Appends to a file.
    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn poll(f: &mut Follower) -> Vec<String> {
        let mut out = Vec::new();
        f.poll(&printer(false), &mut out).unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| l.split_whitespace().nth(3).unwrap().to_string())
            .collect()
    }

    #[test]
    fn following_handles_partial_lines_rotation_truncation_and_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let ts = "2026-01-01T00:00:00Z";
        let first = dir.path().join("warden.2026-01-01-00-00.log");
        let second = dir.path().join("warden.2026-01-01-00-01.log");
        let mut f = Follower {
            dir: dir.path().to_path_buf(),
            current: None,
        };
        assert!(poll(&mut f).is_empty(), "no files yet");

        append(&first, &(line(ts, "INFO", "a", "echo") + "\n"));
        assert_eq!(poll(&mut f), ["a"], "the first file, from its start");
        assert!(poll(&mut f).is_empty());

        // A line is printed once its newline is written.
        let b = line(ts, "INFO", "b", "echo");
        append(&first, &b[..10]);
        assert!(poll(&mut f).is_empty());
        append(
            &first,
            &(b[10..].to_string() + "\n" + &line(ts, "INFO", "c", "echo")[..5]),
        );
        assert_eq!(poll(&mut f), ["b"]);

        // Rotation: the old file's last line (even without its newline) comes
        // first, then every line of the new file.
        append(&first, &line(ts, "INFO", "c", "echo")[5..]);
        append(&second, &(line(ts, "INFO", "d", "echo") + "\n"));
        assert_eq!(poll(&mut f), ["c", "d"]);
        append(&first, &(line(ts, "INFO", "late", "echo") + "\n"));
        append(&second, &(line(ts, "INFO", "e", "echo") + "\n"));
        assert_eq!(poll(&mut f), ["e"], "an older file is not read again");

        // Truncated: read again from the start.
        std::fs::write(&second, line(ts, "INFO", "f", "echo") + "\n").unwrap();
        assert_eq!(poll(&mut f), ["f"]);

        // Replaced (a new file under the same name): from its start.
        let tmp = dir.path().join("next");
        std::fs::write(
            &tmp,
            line(ts, "INFO", "g", "echo") + "\n" + &line(ts, "INFO", "h", "echo") + "\n",
        )
        .unwrap();
        std::fs::rename(&tmp, &second).unwrap();
        assert_eq!(poll(&mut f), ["g", "h"]);

        // Several new files at once: each in order.
        for (minute, msg) in [("03", "j"), ("02", "i")] {
            append(
                &dir.path()
                    .join(format!("warden.2026-01-01-00-{minute}.log")),
                &(line(ts, "INFO", msg, "echo") + "\n"),
            );
        }
        assert_eq!(poll(&mut f), ["i", "j"]);
    }

    #[test]
    fn following_skips_an_overlong_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warden.log");
        let ts = "2026-01-01T00:00:00Z";
        std::fs::write(&path, "").unwrap();
        let mut f = Follower {
            dir: dir.path().to_path_buf(),
            current: None,
        };
        assert!(poll(&mut f).is_empty());
        let huge = "x".repeat(MAX_LINE / 2 + 1);
        append(&path, &huge);
        append(&path, &huge);
        append(&path, &huge);
        assert!(poll(&mut f).is_empty());
        assert!(f.current.as_ref().unwrap().partial.is_empty());
        append(
            &path,
            &format!("tail\n{}\n", line(ts, "INFO", "after", "echo")),
        );
        assert_eq!(poll(&mut f), ["after"]);
    }
}
