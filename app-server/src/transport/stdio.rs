//! The stdio transport: newline-delimited JSON on stdin and stdout.
//!
//! stdout carries protocol messages only. A line over the size limit is
//! skipped without being held in memory and answered with an error; EOF on
//! stdin, SIGINT or SIGTERM end the connection gracefully.

use std::sync::Arc;

use std::io::{Read, Write};
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, ReadBuf};
use tokio::sync::{mpsc, oneshot, watch};

use crate::connection::ConnectionHandler;
use crate::server::ServerContext;
use skein_otel::rpc::RequestSpan;

use crate::session::{OutboundItem, StallReporter, Transport};
use crate::transport::too_large_error;

/// One read from a line-delimited stream.
#[derive(Debug, PartialEq, Eq)]
pub enum LineRead {
    /// A complete line (without its newline or carriage return).
    Line,
    /// A line longer than the limit; it was skipped. Holds its length.
    TooLarge(usize),
    /// End of input.
    Eof,
}

/// Assembles lines from a buffered reader, keeping at most `max` bytes of
/// a line in memory: the rest of a longer line is consumed and dropped.
///
/// [`next`](Self::next) is cancel-safe: a partial line stays here when its
/// future is dropped, and the next call goes on with it.
#[derive(Debug)]
pub struct LineAssembler {
    line: Vec<u8>,
    skipped: Option<usize>,
    complete: bool,
    max: usize,
}

impl LineAssembler {
    /// An assembler for lines of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            line: Vec::new(),
            skipped: None,
            complete: false,
            max,
        }
    }

    /// The line the last [`LineRead::Line`] completed.
    pub fn line(&self) -> &[u8] {
        &self.line
    }

    /// Reads on until a line is complete, skipped as too large, or the
    /// input ends.
    pub async fn next<R: AsyncBufRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> std::io::Result<LineRead> {
        if self.complete {
            self.line.clear();
            self.complete = false;
        }
        loop {
            let available = reader.fill_buf().await?;
            if available.is_empty() {
                self.complete = true;
                return Ok(match self.skipped.take() {
                    Some(len) => LineRead::TooLarge(len),
                    None if self.line.is_empty() => LineRead::Eof,
                    None => LineRead::Line,
                });
            }
            let newline = available.iter().position(|&b| b == b'\n');
            let chunk = &available[..newline.unwrap_or(available.len())];
            match self.skipped.as_mut() {
                Some(len) => *len += chunk.len(),
                None if self.line.len() + chunk.len() > self.max => {
                    self.skipped = Some(self.line.len() + chunk.len());
                    self.line.clear();
                }
                None => self.line.extend_from_slice(chunk),
            }
            let used = chunk.len() + usize::from(newline.is_some());
            reader.consume(used);
            if newline.is_some() {
                if self.line.last() == Some(&b'\r') {
                    self.line.pop();
                }
                self.complete = true;
                return Ok(match self.skipped.take() {
                    Some(len) => LineRead::TooLarge(len),
                    None => LineRead::Line,
                });
            }
        }
    }
}

/// Serves one connection on stdin/stdout until EOF or shutdown. EOF on
/// stdin shuts the whole server down through `stop`.
///
/// stdin and stdout are driven by two plain threads, not by tokio's
/// `stdin()` / `stdout()`, which hand every read, write and flush to the
/// blocking pool: the reader hands whole chunks to the connection, and the
/// writer writes whole batches of replies.
pub async fn serve_stdio(
    ctx: ServerContext,
    shutdown: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
) {
    let input = match ChunkReader::spawn("skein-stdin", std::io::stdin()) {
        Ok(input) => input,
        Err(err) => {
            tracing::error!(%err, "cannot start the stdin reader");
            let _ = stop.send(true);
            return;
        }
    };
    serve_lines(input, std::io::stdout(), ctx, shutdown, stop).await;
}

/// Most messages gathered into one batch for the writer.
const BATCH_MESSAGES: usize = 1024;

/// What woke the connection's task.
enum Wake {
    /// A line (or its end) from the input.
    Input(std::io::Result<LineRead>),
    /// A notification from one of the threads the connection follows.
    Notice(OutboundItem),
    /// Shutdown, or a client that stopped reading.
    Stop,
}

/// Serves one line-delimited connection over a [`ChunkReader`] and any
/// blocking writer (written from a thread of its own).
///
/// Lines already received are handled one after another, in order, and
/// their replies gathered; the batch goes to the writer thread once no
/// further complete line is buffered. Notifications of the threads the
/// connection follows are batched the same way.
pub async fn serve_lines<W>(
    mut reader: ChunkReader,
    output: W,
    ctx: ServerContext,
    mut shutdown: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
) where
    W: Write + Send + 'static,
{
    let (batches, batches_rx) = mpsc::channel(2);
    let progress = Arc::new(WriteProgress::default());
    let writer = match spawn_line_writer(output, batches_rx, Arc::clone(&progress)) {
        Ok(writer) => writer,
        Err(err) => {
            tracing::error!(%err, "cannot start the stdout writer");
            let _ = stop.send(true);
            return;
        }
    };
    let mut handler = ConnectionHandler::new(
        Transport::Stdio,
        ctx.service(),
        ctx.processor(),
        BATCH_MESSAGES,
    );
    let session = handler.session();
    tracing::info!(connection = session.id(), "stdio connection open");
    let watchdog = tokio::spawn(watch_for_stall(
        progress,
        ctx.client_stall_timeout(),
        session.stall_reporter(),
        session.id(),
    ));

    let limit = ctx.max_message_bytes();
    let mut lines = LineAssembler::new(limit);
    let overrun = handler.session().overrun();
    tokio::pin!(overrun);
    let mut out = Vec::new();
    let mut stalled = false;
    let mut writer_gone = false;
    loop {
        let wake = tokio::select! {
            read = lines.next(&mut reader) => Wake::Input(read),
            Some(item) = handler.next_queued() => Wake::Notice(item),
            _ = shutdown.wait_for(|stop| *stop) => Wake::Stop,
            reason = &mut overrun => {
                tracing::error!(%reason, "stdout is not being read; shutting down");
                stalled = true;
                Wake::Stop
            }
        };
        let mut end = false;
        match wake {
            Wake::Stop => break,
            Wake::Notice(item) => {
                out.push(item);
                handler.take_queued(&mut out);
            }
            Wake::Input(Ok(LineRead::Line)) if lines.line().iter().all(u8::is_ascii_whitespace) => {
            }
            Wake::Input(Ok(LineRead::Line)) => {
                handler.handle_frame(lines.line(), &mut out).await;
            }
            Wake::Input(Ok(LineRead::TooLarge(len))) => {
                tracing::warn!(len, limit, "refusing an oversized message");
                handler.reject(too_large_error(limit), &mut out);
            }
            Wake::Input(Ok(LineRead::Eof)) => {
                tracing::info!("stdin closed; shutting down");
                end = true;
            }
            Wake::Input(Err(err)) => {
                tracing::error!(%err, "reading stdin failed");
                end = true;
            }
        }
        if !end && out.len() < BATCH_MESSAGES && reader.has_line_ready() {
            continue;
        }
        match send_batch(&batches, &mut out, &mut overrun).await {
            Sent::Ok => {}
            Sent::WriterGone => {
                writer_gone = true;
                break;
            }
            Sent::Stalled => {
                stalled = true;
                break;
            }
        }
        if end {
            break;
        }
    }
    // This connection is the server: its end is the server's end.
    let _ = stop.send(true);
    // Threads' final notifications are still written while the
    // forwarders finish, unless output is already lost.
    let mut writing = !stalled && !writer_gone;
    let mut closing = handler.start_closing(writing);
    while let Some(item) = handler.next_while_closing(&mut closing).await {
        if writing {
            out.push(item);
            handler.take_queued(&mut out);
            writing = matches!(send_batch(&batches, &mut out, &mut overrun).await, Sent::Ok);
        }
    }
    if writing {
        handler.take_queued(&mut out);
        send_batch(&batches, &mut out, &mut overrun).await;
    }
    drop(handler);
    // Closing the batch queue lets the writer finish and stop.
    drop(batches);
    watchdog.abort();
    if stalled {
        // The writer is stuck in a write nobody reads; it ends with the
        // process.
        return;
    }
    if writer.await.is_err() {
        tracing::error!("stdout writer thread failed");
    }
}

/// Messages on their way to stdout, as lines, with the request spans that
/// end once they are written.
#[derive(Debug, Default)]
struct Batch {
    bytes: Vec<u8>,
    spans: Vec<RequestSpan>,
}

/// What became of a batch handed to the writer.
enum Sent {
    Ok,
    WriterGone,
    Stalled,
}

/// Hands `out` (emptying it) to the writer thread as one batch, waiting
/// for room unless the client stopped reading.
async fn send_batch(
    batches: &mpsc::Sender<Batch>,
    out: &mut Vec<OutboundItem>,
    overrun: &mut Pin<&mut impl Future<Output = String>>,
) -> Sent {
    if out.is_empty() {
        return Sent::Ok;
    }
    let size = out.iter().map(|item| item.text.len() + 1).sum();
    let mut batch = Batch {
        bytes: Vec::with_capacity(size),
        spans: Vec::with_capacity(out.len()),
    };
    for item in out.drain(..) {
        batch.bytes.extend_from_slice(item.text.as_bytes());
        batch.bytes.push(b'\n');
        batch.spans.extend(item.spans);
    }
    tokio::select! {
        sent = batches.send(batch) => match sent {
            Ok(()) => Sent::Ok,
            Err(_) => Sent::WriterGone,
        },
        reason = overrun.as_mut() => {
            tracing::error!(%reason, "stdout is not being read; shutting down");
            Sent::Stalled
        }
    }
}

/// When the line writer started the write it is still in (or last made
/// progress in it), in milliseconds since [`epoch`]; 0 when it is idle.
#[derive(Debug, Default)]
struct WriteProgress {
    busy_since_ms: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    // At least 1, so that 0 can mean "idle".
    u64::try_from(epoch().elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl WriteProgress {
    fn progressed(&self) {
        self.busy_since_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn idle(&self) {
        self.busy_since_ms.store(0, Ordering::Relaxed);
    }

    /// How long the current write has made no progress.
    fn stuck_for(&self) -> Duration {
        match self.busy_since_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => Duration::from_millis(now_ms().saturating_sub(since)),
        }
    }
}

/// Reports the client as stalled once the writer made no progress for
/// `timeout`.
async fn watch_for_stall(
    progress: Arc<WriteProgress>,
    timeout: Duration,
    reporter: StallReporter,
    connection: u64,
) {
    let period = (timeout / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut ticks = tokio::time::interval(period);
    loop {
        ticks.tick().await;
        if progress.stuck_for() >= timeout {
            reporter.report(connection, timeout);
            return;
        }
    }
}

/// Starts the thread that writes batches to `output`. The returned
/// receiver resolves once the batch queue closed and everything was
/// written (or the output failed).
fn spawn_line_writer<W: Write + Send + 'static>(
    output: W,
    rx: mpsc::Receiver<Batch>,
    progress: Arc<WriteProgress>,
) -> std::io::Result<oneshot::Receiver<()>> {
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("skein-stdout".into())
        .spawn(move || {
            write_lines(output, rx, &progress);
            let _ = done_tx.send(());
        })?;
    Ok(done_rx)
}

/// Writes each batch with one write and one flush. The request spans of a
/// batch end (are dropped) only after its bytes were flushed.
fn write_lines<W: Write>(mut output: W, mut rx: mpsc::Receiver<Batch>, progress: &WriteProgress) {
    while let Some(batch) = rx.blocking_recv() {
        progress.progressed();
        let result =
            write_tracking(&mut output, &batch.bytes, progress).and_then(|()| output.flush());
        progress.idle();
        // The request spans end here, after their responses were written.
        drop(batch);
        if let Err(err) = result {
            tracing::warn!(%err, "stdout closed; dropping further output");
            return;
        }
    }
}

/// `write_all`, marking progress after every partial write.
fn write_tracking<W: Write>(
    output: &mut W,
    mut buf: &[u8],
    progress: &WriteProgress,
) -> std::io::Result<()> {
    while !buf.is_empty() {
        match output.write(buf) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                progress.progressed();
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Size of one read from a [`ChunkReader`]'s source.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// An async buffered reader over a blocking source read on a thread of its
/// own, which hands over whole chunks: one wake-up per chunk, not per line.
#[derive(Debug)]
pub struct ChunkReader {
    rx: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
    done: bool,
}

impl ChunkReader {
    /// Starts a thread named `name` reading `source` until EOF or an error.
    pub fn spawn<S: Read + Send + 'static>(name: &str, mut source: S) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(4);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                loop {
                    let mut chunk = vec![0; READ_CHUNK_BYTES];
                    let read = match source.read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => {
                            chunk.truncate(n);
                            Ok(chunk)
                        }
                        Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(err) => Err(err),
                    };
                    let failed = read.is_err();
                    if tx.blocking_send(read).is_err() || failed {
                        break;
                    }
                }
            })?;
        Ok(Self {
            rx,
            chunk: Vec::new(),
            pos: 0,
            done: false,
        })
    }
}

impl ChunkReader {
    /// True when a complete line is already buffered (or another chunk
    /// is waiting), so reading on will not wait.
    pub fn has_line_ready(&self) -> bool {
        let rest = &self.chunk[self.pos.min(self.chunk.len())..];
        rest.contains(&b'\n') || (rest.is_empty() && !self.rx.is_empty())
    }
}

impl AsyncRead for ChunkReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let available = match self.as_mut().poll_fill_buf(cx) {
            Poll::Ready(Ok(available)) => available,
            Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
            Poll::Pending => return Poll::Pending,
        };
        let n = available.len().min(buf.remaining());
        buf.put_slice(&available[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncBufRead for ChunkReader {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<&[u8]>> {
        let this = self.get_mut();
        while this.pos >= this.chunk.len() && !this.done {
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    this.chunk = chunk;
                    this.pos = 0;
                }
                Poll::Ready(Some(Err(err))) => {
                    this.done = true;
                    return Poll::Ready(Err(err));
                }
                Poll::Ready(None) => this.done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(&this.chunk[this.pos.min(this.chunk.len())..]))
    }

    fn consume(mut self: Pin<&mut Self>, amt: usize) {
        self.pos += amt;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    async fn lines(input: &[u8], max: usize) -> Vec<Result<String, LineRead>> {
        let mut reader = BufReader::with_capacity(4, input);
        let mut lines = LineAssembler::new(max);
        let mut out = Vec::new();
        loop {
            match lines.next(&mut reader).await.expect("io") {
                LineRead::Line => out.push(Ok(String::from_utf8_lossy(lines.line()).into_owned())),
                LineRead::Eof => return out,
                other => out.push(Err(other)),
            }
        }
    }

    #[tokio::test]
    async fn splits_lines_across_small_buffers() {
        assert_eq!(
            lines(b"abcdefgh\r\nij\nk", 100).await,
            vec![Ok("abcdefgh".into()), Ok("ij".into()), Ok("k".into())]
        );
    }

    #[tokio::test]
    async fn oversized_line_is_skipped_and_the_next_one_read() {
        assert_eq!(
            lines(b"0123456789\nok\n", 5).await,
            vec![Err(LineRead::TooLarge(10)), Ok("ok".into())]
        );
    }

    #[tokio::test]
    async fn a_span_handed_to_the_writer_ends_only_after_its_bytes_are_written() {
        use opentelemetry::trace::TracerProvider as _;
        use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
        use skein_otel::rpc::RequestSpanBuilder;

        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let (span, _timer) = RequestSpanBuilder::new("model/list", "test")
            .start_span(&provider.tracer("test"), std::iter::empty());
        let ended = || exporter.get_finished_spans().expect("spans").len();

        // A message larger than the pipe's buffer: the write cannot finish
        // until the reader drains it.
        let (mut reader, writer) = std::io::pipe().expect("pipe");
        let (tx, rx) = mpsc::channel(4);
        let done = spawn_line_writer(writer, rx, Arc::default()).expect("writer thread");
        let text = "x".repeat(1024 * 1024);
        tx.send(Batch {
            bytes: format!("{text}\n").into_bytes(),
            spans: vec![span],
        })
        .await
        .expect("queue");

        let mut first = [0u8; 8];
        reader.read_exact(&mut first).expect("first bytes");
        assert_eq!(
            ended(),
            0,
            "span ended before its message was fully written"
        );

        let mut rest = vec![0u8; text.len() + 1 - first.len()];
        reader.read_exact(&mut rest).expect("rest");
        drop(tx);
        done.await.expect("writer");
        assert_eq!(ended(), 1, "span did not end once its message was written");
    }

    #[tokio::test]
    async fn queued_batches_are_written_in_order() {
        let (mut reader, writer) = std::io::pipe().expect("pipe");
        let (tx, rx) = mpsc::channel(64);
        for n in 0..50 {
            tx.send(Batch {
                bytes: format!("{{\"n\":{n}}}\n").into_bytes(),
                spans: Vec::new(),
            })
            .await
            .expect("queue");
        }
        drop(tx);
        let done = spawn_line_writer(writer, rx, Arc::default()).expect("writer thread");
        done.await.expect("writer");
        let mut out = String::new();
        reader.read_to_string(&mut out).expect("read");
        let expected: String = (0..50).map(|n| format!("{{\"n\":{n}}}\n")).collect();
        assert_eq!(out, expected);
    }

    #[tokio::test]
    async fn chunk_reader_yields_the_source_then_eof() {
        let source = std::io::Cursor::new(b"one\ntwo\nthree".repeat(10_000));
        let mut reader = ChunkReader::spawn("test-reader", source).expect("reader");
        let mut lines = LineAssembler::new(1024);
        let mut count = 0;
        loop {
            match lines.next(&mut reader).await.expect("io") {
                LineRead::Line => count += 1,
                LineRead::Eof => break,
                LineRead::TooLarge(len) => panic!("unexpected oversized line of {len}"),
            }
        }
        // 10,000 copies of "one\ntwo\nthree" joined: "threeone" runs together.
        assert_eq!(count, 20_001);
    }

    #[tokio::test]
    async fn a_partial_line_survives_a_cancelled_read() {
        use futures_util::FutureExt;
        use tokio::io::AsyncWriteExt;

        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = BufReader::new(server);
        let mut lines = LineAssembler::new(100);
        client.write_all(b"abc").await.expect("write");
        // The read consumes "abc" and waits for the rest; dropping it
        // (as a `select!` does when another branch wins) keeps "abc".
        assert!(lines.next(&mut reader).now_or_never().is_none());
        client.write_all(b"def\n").await.expect("write");
        assert_eq!(lines.next(&mut reader).await.expect("io"), LineRead::Line);
        assert_eq!(lines.line(), b"abcdef");
    }

    #[tokio::test]
    async fn chunk_reader_knows_when_a_line_is_ready() {
        let source = std::io::Cursor::new(b"one\ntwo".to_vec());
        let mut reader = ChunkReader::spawn("test-ready", source).expect("reader");
        let mut lines = LineAssembler::new(1024);
        assert_eq!(lines.next(&mut reader).await.expect("io"), LineRead::Line);
        assert_eq!(lines.line(), b"one");
        // "two" has no newline: reading on would wait for more input.
        assert!(!reader.has_line_ready());
    }

    #[tokio::test]
    async fn line_of_exactly_the_limit_is_accepted() {
        assert_eq!(lines(b"12345\n", 5).await, vec![Ok("12345".into())]);
    }
}
