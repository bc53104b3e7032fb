//! Newline-delimited JSON-RPC over pipes, both ways: warden's own stdio
//! (`stdio`) and each MCP server's (`backends::mcp::pipe`).
//!
//! Lines in are bounded: a line past the cap is consumed and dropped as it
//! arrives, never held. Lines out are written in batches: a send queues its
//! line at once, in the order sends are made, and whichever send gets the pipe
//! writes every line waiting in one write. With many calls in flight that is
//! one system call (and one wake-up of the reader) for several messages
//! instead of one each.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use rmcp::model::{JsonRpcMessage, RequestId};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// One outcome of [`LineReader::read_line`].
pub enum Line {
    /// A whole line is in [`LineReader::line`] (the last one may lack its newline).
    Complete,
    /// A line of this many bytes was past the cap and has been dropped.
    Oversized(usize),
    Eof,
}

/// Reads lines of at most `max_line` bytes.
pub struct LineReader<R> {
    reader: R,
    /// The line being read (kept across cancelled reads).
    line: Vec<u8>,
    /// Bytes of the current line dropped for being past `max_line`.
    oversized: usize,
    max_line: usize,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    pub fn new(reader: R, max_line: usize) -> Self {
        LineReader {
            reader,
            line: Vec::new(),
            oversized: 0,
            max_line,
        }
    }

    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// The line read, without its newline.
    pub fn line(&self) -> &[u8] {
        &self.line
    }

    /// Forgets the line read; call once it has been handled.
    pub fn clear(&mut self) {
        self.line.clear();
    }

    /// Reads until a whole line is in `line()`. Cancel-safe: a partly read
    /// line stays here for the next call. A line past the cap is consumed and
    /// dropped as it arrives.
    pub async fn read_line(&mut self) -> io::Result<Line> {
        loop {
            let buf = self.reader.fill_buf().await?;
            if buf.is_empty() {
                if self.oversized > 0 {
                    return Ok(Line::Oversized(std::mem::take(&mut self.oversized)));
                }
                return Ok(if self.line.is_empty() {
                    Line::Eof
                } else {
                    Line::Complete
                });
            }
            let (chunk, used) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], i + 1),
                None => (buf, buf.len()),
            };
            let complete = used > chunk.len();
            if self.oversized > 0 || self.line.len() + chunk.len() > self.max_line {
                self.oversized += self.line.len() + chunk.len();
                self.line.clear();
                self.line.shrink_to(64 * 1024);
            } else {
                self.line.extend_from_slice(chunk);
            }
            self.reader.consume(used);
            if complete {
                if self.oversized > 0 {
                    return Ok(Line::Oversized(std::mem::take(&mut self.oversized)));
                }
                return Ok(Line::Complete);
            }
        }
    }
}

/// The writing end of a pipe, shared by every send: lines are queued in
/// order and written in batches.
pub struct Outbox<W> {
    queued: std::sync::Mutex<Vec<u8>>,
    /// `None` once closed.
    pipe: tokio::sync::Mutex<Option<W>>,
    /// A write failed: the lines it carried are lost, and so is the pipe.
    broken: AtomicBool,
    /// Bytes queued or being written, not yet out: what a reader that stopped
    /// reading costs warden.
    backlog: AtomicUsize,
}

impl<W: AsyncWrite + Unpin> Outbox<W> {
    pub fn new(pipe: W) -> Self {
        Outbox {
            queued: std::sync::Mutex::new(Vec::new()),
            pipe: tokio::sync::Mutex::new(Some(pipe)),
            broken: AtomicBool::new(false),
            backlog: AtomicUsize::new(0),
        }
    }

    /// Bytes queued or being written and not yet out.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Queues `msg` as one line; it goes out with the next [`Outbox::flush`].
    pub fn queue(&self, msg: &impl serde::Serialize) -> io::Result<()> {
        let mut queued = self.queued.lock().unwrap();
        let start = queued.len();
        if let Err(e) = serde_json::to_writer(&mut *queued, msg) {
            queued.truncate(start);
            return Err(io::Error::other(e));
        }
        queued.push(b'\n');
        self.backlog
            .fetch_add(queued.len() - start, Ordering::Relaxed);
        Ok(())
    }

    /// Writes every line queued so far, this caller's included. Returns once
    /// they are written, by this call or by one that got the pipe first.
    pub async fn flush(&self) -> io::Result<()> {
        let mut pipe = self.pipe.lock().await;
        let batch = std::mem::take(&mut *self.queued.lock().unwrap());
        // Out, lost with the pipe, or dropped with this future: however this
        // ends, the batch is no longer held here.
        let _held = Held::counted(&self.backlog, batch.len());
        if self.broken.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "an earlier write failed",
            ));
        }
        if batch.is_empty() {
            return Ok(());
        }
        let Some(w) = pipe.as_mut() else {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "closed"));
        };
        let written = match w.write_all(&batch).await {
            Ok(()) => w.flush().await,
            Err(e) => Err(e),
        };
        if written.is_err() {
            self.broken.store(true, Ordering::Relaxed);
        }
        written
    }

    /// Queues `msg` now (so it keeps its place in line) and returns the
    /// write, to be awaited later: what a `Transport::send` returns. With
    /// `coalesce`, the write first lets every other ready task run, so that
    /// answers finishing together go out in one write. That pays on warden's
    /// own stdout at 32 calls in flight (scripts/bench-ab, 15 rounds: echo
    /// 0.86× of the commit before the layered redesign without it, 1.08×
    /// with it; fewer writes, though `yield_now` costs a poll of the IO
    /// driver per line). The pipes to MCP servers write at once: the
    /// gateway's gain above came from stdout alone.
    pub fn send_later(
        self: &Arc<Self>,
        msg: &impl serde::Serialize,
        coalesce: bool,
    ) -> impl std::future::Future<Output = io::Result<()>> + Send + 'static
    where
        W: Send + 'static,
    {
        let queued = self.queue(msg);
        let outbox = self.clone();
        async move {
            queued?;
            if coalesce {
                tokio::task::yield_now().await;
            }
            outbox.flush().await
        }
    }

    /// Queues and writes one message.
    pub async fn send(&self, msg: &impl serde::Serialize) -> io::Result<()> {
        self.queue(msg)?;
        self.flush().await
    }

    /// Writes what is queued, then closes the pipe (the reader sees EOF).
    pub async fn close(&self) -> io::Result<()> {
        let flushed = self.flush().await;
        drop(self.pipe.lock().await.take());
        flushed
    }
}

/// Bytes counted in a budget while held, given back however the holder
/// ends: a flush's batch in the outbox's backlog, a request the stdio lane
/// holds in the stdout budget.
pub(crate) struct Held<C: std::ops::Deref<Target = AtomicUsize>>(C, usize);

impl<C: std::ops::Deref<Target = AtomicUsize>> Held<C> {
    /// Counts `bytes` in `count` until dropped.
    pub(crate) fn new(count: C, bytes: usize) -> Self {
        count.fetch_add(bytes, Ordering::Relaxed);
        Held(count, bytes)
    }

    /// `bytes` that `count` holds already, given back when dropped.
    fn counted(count: C, bytes: usize) -> Self {
        Held(count, bytes)
    }
}

impl<C: std::ops::Deref<Target = AtomicUsize>> Drop for Held<C> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::Relaxed);
    }
}

/// The request a message answers: a response's or an error's id.
pub fn answered<Req, Resp, Noti>(msg: &JsonRpcMessage<Req, Resp, Noti>) -> Option<&RequestId> {
    match msg {
        JsonRpcMessage::Response(r) => Some(&r.id),
        JsonRpcMessage::Error(e) => e.id.as_ref(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_queued_before_a_flush_go_out_in_one_write_in_order() {
        let (w, mut r) = tokio::io::duplex(64 * 1024);
        let outbox = Outbox::new(w);
        for i in 0..3 {
            outbox.queue(&serde_json::json!({ "n": i })).unwrap();
        }
        outbox.flush().await.unwrap();
        // Nothing queued: a flush writes nothing and succeeds.
        outbox.flush().await.unwrap();
        outbox.close().await.unwrap();
        let mut out = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut r, &mut out)
            .await
            .unwrap();
        assert_eq!(out, "{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n");
        assert!(outbox.send(&1).await.is_err(), "closed");
    }

    #[tokio::test]
    async fn the_backlog_counts_bytes_until_they_are_out() {
        let (w, r) = tokio::io::duplex(64 * 1024);
        let outbox = Outbox::new(w);
        outbox.queue(&"abc").unwrap();
        assert_eq!(outbox.backlog(), 6, "\"abc\" and a newline");
        outbox.flush().await.unwrap();
        assert_eq!(outbox.backlog(), 0);
        // A flush dropped while the pipe is full gives its bytes back too.
        outbox.queue(&"x".repeat(200 * 1024)).unwrap();
        let stuck =
            tokio::time::timeout(std::time::Duration::from_millis(50), outbox.flush()).await;
        assert!(stuck.is_err(), "the reader reads nothing: the write waits");
        assert_eq!(outbox.backlog(), 0);
        drop(r);
    }
}
