//! The client side of the statement bound: a stream wrapper that notices a
//! server that stopped answering.
//!
//! A server-side `statement_timeout` ends a slow statement with an error,
//! but a frozen server (a stopped process, a peer behind a dead network path
//! that still holds the TCP connection) never sends that error, and TCP
//! keepalives do not help while the kernel on the other side still answers
//! them. So every connection [`crate::Target::connect_raw`] opens reads and
//! writes through [`Watched`], which follows the protocol's message framing
//! in both directions and counts the requests still waiting for their
//! `ReadyForQuery`. When a request is outstanding and nothing has moved for
//! the watch period (the statement bound plus a grace, at most
//! [`LONGEST_WATCH`] plus the grace), it asks the server for a sign of life
//! on a new connection, bounded by `connect_timeout`:
//!
//! - an answer (even a refusal) means the server is alive and busy (a long
//!   `CREATE INDEX` sends nothing until it ends): the watch starts again;
//! - no answer means the server is frozen or unreachable: the connection
//!   fails with an error naming the host and the setting.
//!
//! The error reaches the waiting request as a `FATAL` server error (SQLSTATE
//! `08006`, connection failure) put into the stream at a message boundary,
//! so the caller's own error chain shows it; then the stream ends. The
//! wrapper sits above TLS (a TLS connection watches the decrypted stream and
//! the socket below it is left alone), so this holds with every `sslmode`.
//!
//! Rejected: a client-side timer per statement. It would have to be set
//! at every call site and would kill long statements on a live server; the
//! liveness question is the one a frozen server cannot answer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Added to the statement bound before the server is asked for a sign of
/// life, so a server-side `statement_timeout` error has time to arrive.
pub const GRACE: Duration = Duration::from_secs(2);

/// The longest a watched request waits in silence before the first sign of
/// life is asked for (plus [`GRACE`]), whatever the statement bound: a
/// frozen server is noticed in about this time plus `connect_timeout` even
/// when statements may run for hours.
pub const LONGEST_WATCH: Duration = Duration::from_secs(30);

/// What the sign-of-life check found.
pub(crate) type Probe = Pin<Box<dyn Future<Output = bool> + Send>>;

/// Starts a sign-of-life check: true when the server answered a new
/// connection within `connect_timeout`.
pub(crate) type Prober = Arc<dyn Fn() -> Probe + Send + Sync>;

/// What a watch needs to know besides the stream.
#[derive(Clone)]
pub(crate) struct Settings {
    /// `host:port`, for the message.
    pub host: String,
    /// The statement bound in force on the connection, if any (for the message).
    pub statement_timeout: Option<Duration>,
    /// The `connect_timeout` the sign-of-life check is bounded by (for the message).
    pub connect_timeout: Duration,
    /// Asks for a sign of life.
    pub prober: Prober,
}

impl Settings {
    /// How long a request may go without any traffic before the check.
    pub(crate) fn period(&self) -> Duration {
        self.statement_timeout
            .filter(|d| !d.is_zero())
            .map_or(LONGEST_WATCH, |d| d.min(LONGEST_WATCH))
            + GRACE
    }
}

/// Follows the message framing of one direction of the protocol.
#[derive(Default)]
struct Framer {
    /// False while messages without a type byte may come (the frontend's
    /// SSLRequest and StartupMessage: length, then a protocol code).
    typed: bool,
    /// The current message's header seen so far.
    header: [u8; 8],
    header_len: usize,
    /// Bytes of the current message's body still to come.
    body_left: usize,
    /// The backend answers an SSLRequest with one byte, not a message.
    raw_byte_expected: bool,
}

const SSL_REQUEST: u32 = 80_877_103;
const PROTOCOL_3: u32 = 196_608;

impl Framer {
    fn backend() -> Framer {
        Framer {
            typed: true,
            ..Framer::default()
        }
    }

    /// At a message boundary (nothing half-read).
    fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.body_left == 0 && !self.raw_byte_expected
    }

    /// Feeds bytes; calls `on_message` with the type byte of each message
    /// whose header completes (0 and the protocol code for an untyped one).
    fn feed(&mut self, mut bytes: &[u8], mut on_message: impl FnMut(u8, u32)) {
        while !bytes.is_empty() {
            if self.raw_byte_expected {
                self.raw_byte_expected = false;
                bytes = &bytes[1..];
                continue;
            }
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let want = if self.typed { 5 } else { 8 };
            let n = (want - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len < want {
                continue;
            }
            self.header_len = 0;
            let h = self.header;
            if self.typed {
                let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
                self.body_left = (len as usize).saturating_sub(4);
                on_message(h[0], 0);
            } else {
                let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
                let code = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                self.body_left = (len as usize).saturating_sub(8);
                if code != SSL_REQUEST {
                    self.typed = true;
                }
                on_message(0, code);
            }
        }
    }
}

/// A stream that fails, naming the host, when the server stops answering.
pub struct Watched<S> {
    inner: S,
    watch: Option<Watch>,
}

struct Watch {
    settings: Settings,
    /// Requests written whose `ReadyForQuery` has not arrived.
    pending: u64,
    /// The last time anything moved (a read, a write, an answered check).
    last_traffic: Instant,
    timer: Pin<Box<Sleep>>,
    probe: Option<Probe>,
    frontend: Framer,
    backend: Framer,
    /// The failure, once decided: the message, and whether it was put in the stream.
    failed: Option<(String, bool)>,
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, settings: Settings) -> Watched<S> {
        let now = Instant::now();
        Watched {
            inner,
            watch: Some(Watch {
                settings,
                pending: 0,
                last_traffic: now,
                timer: Box::pin(tokio::time::sleep_until(now)),
                probe: None,
                frontend: Framer::default(),
                backend: Framer::backend(),
                failed: None,
            }),
        }
    }

    /// Stops watching: a TLS stream above this one watches the decrypted
    /// messages instead.
    pub(crate) fn unwatched(mut self) -> Watched<S> {
        self.watch = None;
        self
    }

    /// The settings of the watch, to watch the TLS stream above with.
    pub(crate) fn settings(&self) -> Option<Settings> {
        self.watch.as_ref().map(|w| w.settings.clone())
    }
}

impl Watch {
    fn wrote(&mut self, bytes: &[u8]) {
        self.last_traffic = Instant::now();
        let pending = &mut self.pending;
        let mut ssl_request = false;
        self.frontend.feed(bytes, |ty, code| match (ty, code) {
            // A simple query, a Sync and a function call each end in one
            // ReadyForQuery, as does the startup.
            (b'Q' | b'S' | b'F', _) | (0, PROTOCOL_3) => *pending += 1,
            (0, SSL_REQUEST) => ssl_request = true,
            _ => {}
        });
        if ssl_request {
            self.backend.raw_byte_expected = true;
        }
    }

    fn read(&mut self, bytes: &[u8]) {
        self.last_traffic = Instant::now();
        let pending = &mut self.pending;
        self.backend.feed(bytes, |ty, _| {
            if ty == b'Z' {
                *pending = pending.saturating_sub(1);
            }
        });
    }

    /// Checks the silence; `Ready` with the failure message when the server
    /// is gone. Registers the waker while a request waits.
    fn poll_check(&mut self, cx: &mut Context<'_>) -> Poll<String> {
        if let Some((msg, _)) = &self.failed {
            return Poll::Ready(msg.clone());
        }
        if self.pending == 0 {
            self.probe = None;
            return Poll::Pending;
        }
        loop {
            if let Some(probe) = self.probe.as_mut() {
                let Poll::Ready(alive) = probe.as_mut().poll(cx) else {
                    return Poll::Pending;
                };
                self.probe = None;
                if !alive {
                    let msg = self.settings.frozen(self.last_traffic.elapsed()).0;
                    tracing::debug!("{msg}");
                    self.failed = Some((msg.clone(), false));
                    return Poll::Ready(msg);
                }
                self.last_traffic = Instant::now();
            }
            let deadline = self.last_traffic + self.settings.period();
            if self.timer.deadline() != deadline {
                self.timer.as_mut().reset(deadline);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.probe = Some((self.settings.prober)());
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs())
}

impl Settings {
    /// The failure after `silent` without an answer.
    pub(crate) fn frozen(&self, silent: Duration) -> Frozen {
        let bound = match self.statement_timeout.filter(|d| !d.is_zero()) {
            Some(d) => format!("statement_timeout {}", secs(d)),
            None => "no statement_timeout".to_owned(),
        };
        Frozen(format!(
            "no answer from {} for {} ({bound}), and a new connection got none within {} (connect_timeout); is the server frozen or the network down?",
            self.host,
            secs(silent),
            secs(self.connect_timeout),
        ))
    }

    /// Runs `work` while asking the server for a sign of life every
    /// period; fails when none comes. For connections dbtool does not open
    /// itself (sqlx's), whose streams cannot be watched.
    pub(crate) async fn guard<F: Future>(&self, work: F) -> Result<F::Output, Frozen> {
        let watch = async {
            let start = Instant::now();
            loop {
                tokio::time::sleep(self.period()).await;
                if !(self.prober)().await {
                    return self.frozen(start.elapsed());
                }
            }
        };
        tokio::select! {
            out = work => Ok(out),
            frozen = watch => Err(frozen),
        }
    }
}

/// A server stopped answering: its message names the host and the bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frozen(pub String);

impl std::fmt::Display for Frozen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Frozen {}

/// A `FATAL` ErrorResponse carrying `message`, SQLSTATE 08006.
fn error_response(message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "08006"),
        (b'M', message),
    ] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = vec![b'E'];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn gone(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, msg.to_owned())
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(watch) = this.watch.as_mut() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        if let Some((msg, injected)) = &mut watch.failed {
            // Once: the message as a server error where a message may
            // start (the waiting request gets it), then the end.
            if !*injected && watch.backend.at_boundary() {
                *injected = true;
                let bytes = error_response(msg);
                if buf.remaining() >= bytes.len() {
                    buf.put_slice(&bytes);
                    return Poll::Ready(Ok(()));
                }
            }
            return Poll::Ready(Err(gone(msg)));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = &buf.filled()[before..];
                if !got.is_empty() {
                    watch.read(got);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match watch.poll_check(cx) {
                Poll::Pending => Poll::Pending,
                // Read again at once: this time the failure is returned.
                Poll::Ready(_) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let Some(watch) = this.watch.as_mut() else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        if watch.failed.is_some() {
            // The reading side reports it; a write would only block.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                watch.wrote(&buf[..n]);
                // Arm the timer now: the server's silence wakes nobody else.
                if watch.poll_check(cx).is_ready() {
                    cx.waker().wake_by_ref();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                if watch.poll_check(cx).is_ready() {
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(watch) = this.watch.as_mut() else {
            return Pin::new(&mut this.inner).poll_flush(cx);
        };
        if watch.failed.is_some() {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => {
                if watch.poll_check(cx).is_ready() {
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S> tokio_postgres::tls::TlsStream for Watched<S>
where
    S: tokio_postgres::tls::TlsStream + Unpin,
{
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        self.inner.channel_binding()
    }
}

/// A TCP or Unix-domain socket to a server.
pub enum Socket {
    /// TCP.
    Tcp(tokio::net::TcpStream),
    /// A Unix-domain socket.
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A TLS connector whose streams are watched in place of the socket below.
pub struct WatchedTls<T>(pub(crate) T);

impl<S, T> tokio_postgres::tls::TlsConnect<Watched<S>> for WatchedTls<T>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: tokio_postgres::tls::TlsConnect<Watched<S>> + Send + 'static,
    T::Future: Send,
{
    type Stream = Watched<T::Stream>;
    type Error = T::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Stream, T::Error>> + Send>>;

    fn connect(self, stream: Watched<S>) -> Self::Future {
        let settings = stream.settings();
        let connect = self.0.connect(stream.unwatched());
        Box::pin(async move {
            let tls = connect.await?;
            Ok(match settings {
                Some(s) => Watched::new(tls, s),
                None => Watched {
                    inner: tls,
                    watch: None,
                },
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup() -> Vec<u8> {
        let mut body = PROTOCOL_3.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0u\0\0");
        let mut out = (body.len() as u32 + 4).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }

    fn typed(ty: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![ty];
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn framing_counts_requests_across_split_writes() {
        let mut f = Framer::default();
        let mut seen = Vec::new();
        let mut bytes = vec![0, 0, 0, 8];
        bytes.extend_from_slice(&SSL_REQUEST.to_be_bytes());
        bytes.extend(startup());
        bytes.extend(typed(b'Q', b"SELECT 1\0"));
        bytes.extend(typed(b'P', b"\0SELECT 2\0\0\0"));
        bytes.extend(typed(b'S', b""));
        // One byte at a time: every split point.
        for b in &bytes {
            f.feed(std::slice::from_ref(b), |t, c| seen.push((t, c)));
        }
        assert_eq!(
            seen,
            vec![
                (0, SSL_REQUEST),
                (0, PROTOCOL_3),
                (b'Q', 0),
                (b'P', 0),
                (b'S', 0)
            ]
        );
        assert!(f.at_boundary());
    }

    #[test]
    fn the_backend_answer_to_ssl_request_is_one_raw_byte() {
        let mut f = Framer {
            raw_byte_expected: true,
            ..Framer::backend()
        };
        let mut seen = Vec::new();
        let mut bytes = vec![b'N'];
        bytes.extend(typed(b'R', &[0, 0, 0, 0]));
        bytes.extend(typed(b'Z', b"I"));
        f.feed(&bytes, |t, _| seen.push(t));
        assert_eq!(seen, vec![b'R', b'Z']);
    }

    #[test]
    fn the_injected_error_is_one_whole_message() {
        let bytes = error_response("no answer from h:1");
        let mut f = Framer::backend();
        let mut seen = Vec::new();
        f.feed(&bytes, |t, _| seen.push(t));
        assert_eq!(seen, vec![b'E']);
        assert!(f.at_boundary());
    }
}
