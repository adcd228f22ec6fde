//! The stdio transport: newline-delimited JSON on stdin and stdout.
//!
//! stdout carries protocol messages only. A line over the size limit is
//! skipped without being held in memory and answered with an error; EOF on
//! stdin, SIGINT or SIGTERM end the connection gracefully.

use std::sync::Arc;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};

use crate::connection::ConnectionHandler;
use crate::server::{EVENT_DRAIN_TIMEOUT, ServerContext};
use crate::session::{ConnectionSession, OUTBOUND_QUEUE, OutboundItem, Transport};
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

/// Reads one line into `buf` (cleared first), keeping at most `max` bytes in
/// memory: the rest of a longer line is consumed and dropped.
pub async fn read_line_limited<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<LineRead> {
    buf.clear();
    let mut skipped: Option<usize> = None;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(match skipped {
                Some(len) => LineRead::TooLarge(len),
                None if buf.is_empty() => LineRead::Eof,
                None => LineRead::Line,
            });
        }
        let newline = available.iter().position(|&b| b == b'\n');
        let chunk = &available[..newline.unwrap_or(available.len())];
        match skipped.as_mut() {
            Some(len) => *len += chunk.len(),
            None if buf.len() + chunk.len() > max => {
                skipped = Some(buf.len() + chunk.len());
                buf.clear();
            }
            None => buf.extend_from_slice(chunk),
        }
        let used = chunk.len() + usize::from(newline.is_some());
        reader.consume(used);
        if newline.is_some() {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(match skipped {
                Some(len) => LineRead::TooLarge(len),
                None => LineRead::Line,
            });
        }
    }
}

/// Serves one connection on stdin/stdout until EOF or shutdown. EOF on
/// stdin shuts the whole server down through `stop`.
pub async fn serve_stdio(
    ctx: ServerContext,
    shutdown: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
) {
    serve_lines(tokio::io::stdin(), tokio::io::stdout(), ctx, shutdown, stop).await;
}

/// Serves one line-delimited connection over any reader and writer.
pub async fn serve_lines<R, W>(
    input: R,
    output: W,
    ctx: ServerContext,
    mut shutdown: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
) where
    R: tokio::io::AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let writer = tokio::spawn(write_lines(output, rx));
    let session = Arc::new(ConnectionSession::new(Transport::Stdio, tx));
    tracing::info!(connection = session.id(), "stdio connection open");
    let mut handler = ConnectionHandler::new(session, ctx.service(), ctx.processor());

    let mut reader = BufReader::new(input);
    let mut line = Vec::new();
    let limit = ctx.max_message_bytes();
    let overrun = handler.session().overrun();
    tokio::pin!(overrun);
    loop {
        let read = tokio::select! {
            read = read_line_limited(&mut reader, &mut line, limit) => read,
            _ = shutdown.wait_for(|stop| *stop) => break,
            reason = &mut overrun => {
                tracing::error!(%reason, "stdout is not being read; shutting down");
                break;
            }
        };
        let keep_going = match read {
            Ok(LineRead::Line) if line.iter().all(u8::is_ascii_whitespace) => true,
            Ok(LineRead::Line) => handler.handle_frame(&line).await,
            Ok(LineRead::TooLarge(len)) => {
                tracing::warn!(len, limit, "refusing an oversized message");
                handler.reject(too_large_error(limit)).await
            }
            Ok(LineRead::Eof) => {
                tracing::info!("stdin closed; shutting down");
                break;
            }
            Err(err) => {
                tracing::error!(%err, "reading stdin failed");
                break;
            }
        };
        if !keep_going {
            break;
        }
    }
    // This connection is the server: its end is the server's end.
    let _ = stop.send(true);
    handler
        .session()
        .close_subscriptions(true, EVENT_DRAIN_TIMEOUT)
        .await;
    // Dropping the handler drops the last sender, which lets the writer
    // finish the queue and stop.
    drop(handler);
    if let Err(err) = writer.await {
        tracing::error!(%err, "stdout writer failed");
    }
}

async fn write_lines<W: AsyncWrite + Unpin>(mut output: W, mut rx: mpsc::Receiver<OutboundItem>) {
    while let Some(item) = rx.recv().await {
        let written = async {
            output.write_all(item.text.as_bytes()).await?;
            output.write_all(b"\n").await?;
            output.flush().await
        }
        .await;
        // The request spans end here, after their response was written.
        drop(item);
        if let Err(err) = written {
            tracing::warn!(%err, "stdout closed; dropping further output");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Result<String, LineRead>> {
        let mut reader = BufReader::with_capacity(4, input);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            match read_line_limited(&mut reader, &mut buf, max)
                .await
                .expect("io")
            {
                LineRead::Line => out.push(Ok(String::from_utf8_lossy(&buf).into_owned())),
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
        use tokio::io::AsyncReadExt;
        use tracing_subscriber::layer::SubscriberExt;

        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
        let ended = || exporter.get_finished_spans().expect("spans").len();

        // A pipe too small for the message: the write cannot finish until
        // the reader drains it.
        let (mut reader, writer) = tokio::io::duplex(8);
        let (tx, rx) = mpsc::channel(4);
        let writing = tokio::spawn(write_lines(writer, rx));
        let text = "x".repeat(64);
        tx.send(OutboundItem {
            text: text.clone(),
            spans: vec![tracing::info_span!("held")],
        })
        .await
        .expect("queue");

        let mut first = [0u8; 8];
        reader.read_exact(&mut first).await.expect("first bytes");
        assert_eq!(
            ended(),
            0,
            "span ended before its message was fully written"
        );

        let mut rest = vec![0u8; text.len() + 1 - first.len()];
        reader.read_exact(&mut rest).await.expect("rest");
        drop(tx);
        writing.await.expect("writer");
        assert_eq!(ended(), 1, "span did not end once its message was written");
    }

    #[tokio::test]
    async fn line_of_exactly_the_limit_is_accepted() {
        assert_eq!(lines(b"12345\n", 5).await, vec![Ok("12345".into())]);
    }
}
