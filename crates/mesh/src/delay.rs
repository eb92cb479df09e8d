//! A byte stream that hands on what it receives only after a fixed delay:
//! an emulated link of known latency for in-process harnesses (the test
//! machines have no `netem`). Writes pass straight through; each side delays
//! what it reads, so a link between two delayed nodes has `delay` each way.
//!
//! Bounded: at most [`MAX_BUFFERED`] bytes wait; past it the stream stops
//! reading from the socket until the oldest bytes are due, so TCP's own flow
//! control pushes back on the sender.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

/// Most bytes held back at once per stream.
pub const MAX_BUFFERED: usize = 4 * 1024 * 1024;

/// A stream whose reads lag by a fixed delay.
pub struct Delayed<S> {
    inner: S,
    delay: Duration,
    queue: VecDeque<(Instant, Vec<u8>)>,
    buffered: usize,
    eof: bool,
    timer: Pin<Box<Sleep>>,
}

impl<S> Delayed<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, delay: Duration) -> Self {
        Delayed {
            inner,
            delay,
            queue: VecDeque::new(),
            buffered: 0,
            eof: false,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Delayed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // Take in everything the socket has now, stamped with when it is due.
        let mut chunk = [0u8; 16 * 1024];
        while !this.eof && this.buffered < MAX_BUFFERED {
            match Pin::new(&mut this.inner).poll_read(cx, &mut chunk) {
                Poll::Ready(Ok(0)) => this.eof = true,
                Poll::Ready(Ok(n)) => {
                    this.queue
                        .push_back((Instant::now() + this.delay, chunk[..n].to_vec()));
                    this.buffered += n;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        loop {
            let Some((due, _)) = this.queue.front() else {
                return if this.eof {
                    Poll::Ready(Ok(0))
                } else {
                    Poll::Pending
                };
            };
            let due = *due;
            if due <= Instant::now() {
                break;
            }
            this.timer.as_mut().reset(due);
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        let Some((due, mut bytes)) = this.queue.pop_front() else {
            return Poll::Pending;
        };
        let n = bytes.len().min(buf.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        this.buffered -= n;
        if n < bytes.len() {
            bytes.drain(..n);
            this.queue.push_front((due, bytes));
        }
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Delayed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn bytes_arrive_after_the_delay_and_in_order() {
        let source = futures::io::Cursor::new(b"hello world".to_vec());
        let mut reader = Delayed::new(source, Duration::from_millis(30));
        let start = Instant::now();
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"hello world");
        assert!(start.elapsed() >= Duration::from_millis(30));
        let mut sink = Delayed::new(
            futures::io::Cursor::new(Vec::new()),
            Duration::from_secs(60),
        );
        sink.write_all(b"x").await.unwrap();
        assert_eq!(sink.inner.get_ref(), b"x", "writes are not delayed");
    }
}
