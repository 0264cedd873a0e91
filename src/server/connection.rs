//! One client connection: the I/O loop around the sans-IO session.
//!
//! Replies are gathered in one buffer and written when the client has no further command
//! waiting (or the buffer is large), so pipelined commands cost one write, not one per line.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::file::{FileChunk, Tail};
use super::limits::Slot;
use super::metrics::{ListenerLabel, Metrics};
use super::{Shared, rt, tls};
use crate::auth;
use crate::config::Config;
use crate::protocol::body::BodyEncoder;
use crate::protocol::lines::{Line, LineReader};
use crate::protocol::response::{self, Code};
use crate::session::{Credential, Effect, LoginFailure, Message, Mode, Session, Settings};
use crate::store::{Mailbox, MessageError, OpenError, template};

/// Output is written once it grows past this, even mid-reply: big, so a burst of RETRs
/// costs few writes (and, with TLS, full records).
const WRITE_CHUNK: usize = 256 * 1024;
/// Reads from message files; large, so most messages are read, end included, in one trip to
/// the blocking pool.
const FILE_CHUNK: usize = 128 * 1024;
/// An idle session keeps an output buffer no larger than this.
const IDLE_OUT: usize = 4 * 1024;
const IDLE_TOO_LONG: &[u8] = b"-ERR Timeout, closing connection\r\n";
const LOGIN_TIME_UP: &[u8] = b"-ERR Login time limit reached, closing connection\r\n";
/// How long a client may take to accept what we write before we give up on it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a session ended, for its log line.
enum End {
    /// QUIT, or the server closed after too many bad commands or failed logins.
    Closed,
    /// QUIT in TRANSACTION: the update ran.
    Quit,
    /// STLS accepted: the TLS handshake comes next.
    StartTls,
    /// SIGTERM: the session was told goodbye.
    Shutdown,
    Disconnected,
    Timeout,
    Error(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Closed => f.write_str("closed"),
            End::Quit => f.write_str("quit"),
            End::StartTls => f.write_str("starttls"),
            End::Shutdown => f.write_str("shutdown"),
            End::Disconnected => f.write_str("disconnected"),
            End::Timeout => f.write_str("timeout"),
            End::Error(e) => write!(f, "error ({e})"),
        }
    }
}

struct Connection<'a, S> {
    stream: S,
    ctx: &'a Context<'a>,
    out: Vec<u8>,
    session: Session,
    mailbox: Option<Mailbox>,
    /// The login name and mode of the session, once logged in.
    login: Option<(String, Mode)>,
    /// This session's place among its user's sessions from this address.
    session_slot: Option<Slot<(String, IpAddr)>>,
    /// Messages sent by RETR whose Seen flag is still to be set.
    retrieved: Vec<usize>,
    /// The message read buffer, kept from one RETR to the next while the client pipelines
    /// them (empty when idle).
    file_buf: Vec<u8>,
}

/// What a successful login hands to the connection.
struct LoggedIn {
    mailbox: Mailbox,
    messages: Arc<[Message]>,
    mode: Mode,
    login: String,
    slot: Slot<(String, IpAddr)>,
}

/// What a connection knows of its surroundings.
struct Context<'a> {
    shared: &'a Shared,
    /// The configuration as it was when the client connected; a reload affects new ones.
    config: Arc<Config>,
    peer: SocketAddr,
    listener: &'a ListenerLabel,
    /// When the client must be logged in by, however busy it keeps the connection.
    login_deadline: Instant,
}

/// Serves one client: plain (offering STLS when a certificate is loaded), or TLS from the
/// first byte on an implicit-TLS listener.
pub async fn serve(
    stream: rt::TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    implicit_tls: bool,
    listener: &ListenerLabel,
) {
    // Our own batching decides when bytes go out; Nagle would only add latency.
    let _ = stream.set_nodelay(true);
    let config = shared.config();
    let ctx = Context {
        shared,
        login_deadline: Instant::now() + config.login_time_limit,
        config,
        peer,
        listener,
    };
    let config = &ctx.config;
    let acceptor = shared.tls_acceptor();
    let settings = Settings {
        plaintext_auth: config.allow_plaintext_auth
            || implicit_tls
            || peer.ip().to_canonical().is_loopback(),
        stls: acceptor.is_some() && !implicit_tls,
        apop_banner: config.enable_apop.then(|| apop_banner(&config.hostname)),
        login_delay: config.login_delay.map(|d| d.as_secs().max(1)),
        hostname: config.hostname.clone(),
        ..Settings::default()
    };
    if implicit_tls {
        let Some(tls) = handshake(acceptor, stream, &ctx).await else {
            return;
        };
        let mut conn = Connection::new(tls, &ctx, settings);
        let end = conn.run().await;
        conn.finish(end).await;
        return;
    }
    let mut conn = Connection::new(stream, &ctx, settings);
    let end = conn.run().await;
    if !matches!(end, End::StartTls) {
        conn.finish(end).await;
        return;
    }
    // Only the stream and the session carry over: the line buffer, with anything the client
    // pipelined after STLS in plaintext, is dropped here (RFC 2595 §2.2).
    let Connection {
        stream,
        mut session,
        ..
    } = conn;
    let Some(tls) = handshake(acceptor, stream, &ctx).await else {
        return;
    };
    session.tls_started();
    let mut conn = Connection::resume(tls, &ctx, session);
    let end = conn.run().await;
    conn.finish(end).await;
}

/// The server side of a TLS handshake, bounded by the login timeout. A failed handshake
/// costs this one connection and a debug line: scanners must not flood the log.
async fn handshake(
    acceptor: Option<tls::Acceptor>,
    stream: rt::TcpStream,
    ctx: &Context<'_>,
) -> Option<tls::TlsStream<rt::TcpStream>> {
    let acceptor = acceptor?;
    let limit = ctx
        .config
        .login_timeout
        .min(ctx.login_deadline.saturating_duration_since(Instant::now()));
    let accept = rt::timeout(limit, acceptor.accept(stream));
    // A client that never completes its handshake must not hold up a shutdown.
    let shutdown = async {
        ctx.shared.shutdown.wait().await;
        Err(io::Error::other("server shutting down"))
    };
    match futures_lite::future::or(accept, shutdown).await {
        Ok(tls) => Some(tls),
        Err(e) => {
            log::debug!("TLS handshake with {} failed: {e}", ctx.peer);
            ctx.shared
                .metrics
                .tls_handshake_failures
                .get_or_create(ctx.listener)
                .inc();
            None
        }
    }
}

/// An RFC 1939 §7 timestamp: unique per connection, so an APOP digest cannot be replayed.
fn apop_banner(hostname: &str) -> String {
    let mut nonce = [0u8; 8];
    let _ = getrandom::fill(&mut nonce);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "<{}.{}.{now}@{hostname}>",
        std::process::id(),
        u64::from_le_bytes(nonce)
    )
}

impl<'a, S: AsyncRead + AsyncWrite + Unpin> Connection<'a, S> {
    /// A new connection, its greeting waiting in the output buffer.
    fn new(stream: S, ctx: &'a Context<'a>, settings: Settings) -> Self {
        let mut out = Vec::with_capacity(256);
        let session = Session::new(settings, &mut out);
        Connection {
            stream,
            ctx,
            out,
            session,
            mailbox: None,
            login: None,
            session_slot: None,
            retrieved: Vec::new(),
            file_buf: Vec::new(),
        }
    }

    /// The same session on a new stream (after STLS): no second greeting (RFC 2595 §4).
    fn resume(stream: S, ctx: &'a Context<'a>, session: Session) -> Self {
        let out = Vec::with_capacity(256);
        Connection {
            stream,
            ctx,
            out,
            session,
            mailbox: None,
            login: None,
            session_slot: None,
            retrieved: Vec::new(),
            file_buf: Vec::new(),
        }
    }

    async fn run(&mut self) -> End {
        let mut reader = LineReader::new();
        loop {
            loop {
                // Per line: AUTH and its answer, or the answer and the next command, may
                // arrive in one read, and each has its own limit.
                reader.set_limit(self.session.line_limit());
                let Some(line) = reader.next_line() else {
                    break;
                };
                let effect = match line {
                    Line::Command(line) => self.session.command(line, &mut self.out),
                    Line::TooLong => self.session.line_too_long(&mut self.out),
                };
                match self.apply(effect).await {
                    Ok(None) => {}
                    Ok(Some(end)) => return self.flush().await.err().unwrap_or(end),
                    Err(end) => return end,
                }
                if self.out.len() >= WRITE_CHUNK
                    && let Err(end) = self.flush().await
                {
                    return end;
                }
            }
            if let Err(end) = self.flush().await {
                return end;
            }
            self.mark_retrieved_seen().await;
            self.rest();
            let limit = if self.session.is_logged_in() {
                self.ctx.config.idle_timeout
            } else {
                // Dovecot's rule too: a client that keeps sending without logging in (a
                // command a minute, say) must not hold its connection slot for ever.
                let left = self
                    .ctx
                    .login_deadline
                    .saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return self.time_out(LOGIN_TIME_UP).await;
                }
                self.ctx.config.login_timeout.min(left)
            };
            let shutdown = self.ctx.shared.shutdown.clone();
            let read = rt::timeout(limit, self.stream.read(reader.unfilled()));
            let read = futures_lite::future::or(async { Some(read.await) }, async {
                shutdown.wait().await;
                None
            });
            let Some(read) = read.await else {
                // SIGTERM while waiting for a command: goodbye, without UPDATE, so pending
                // deletions are not applied (RFC 1939 §6 applies them only on QUIT).
                response::err(
                    &mut self.out,
                    Some(Code::SysTemp),
                    "Server is shutting down, try again shortly",
                );
                let _ = self.flush().await;
                return End::Shutdown;
            };
            match read {
                Ok(0) => return End::Disconnected,
                Ok(n) => reader.filled(n),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    // RFC 1939 §3: an autologout timer closes without entering UPDATE.
                    let time_up =
                        !self.session.is_logged_in() && Instant::now() >= self.ctx.login_deadline;
                    return self
                        .time_out(if time_up {
                            LOGIN_TIME_UP
                        } else {
                            IDLE_TOO_LONG
                        })
                        .await;
                }
                // A TLS client gone without close_notify (phones often are): not a fault.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return End::Disconnected,
                Err(e) => return End::Error(e.to_string()),
            }
        }
    }

    /// Carries out what the session asked for. `Ok(Some(end))` ends the session after the
    /// pending output is written; `Err` ends it at once.
    async fn apply(&mut self, effect: Effect) -> Result<Option<End>, End> {
        match effect {
            Effect::None => {}
            Effect::Close => {
                // Unlock before the last reply goes out, so a client that logs in again at
                // once is not told the mailbox is in use.
                self.release_mailbox().await;
                return Ok(Some(End::Closed));
            }
            Effect::StartTls => return Ok(Some(End::StartTls)),
            Effect::Authenticate { user, credential } => {
                match self.log_in(user, credential).await {
                    Ok(LoggedIn {
                        mailbox,
                        messages,
                        mode,
                        login,
                        slot,
                    }) => {
                        self.mailbox = Some(mailbox);
                        self.login = Some((login, mode));
                        self.session_slot = Some(slot);
                        let metrics = &self.ctx.shared.metrics;
                        metrics.logins.get_or_create(&Metrics::result("ok")).inc();
                        metrics
                            .sessions_open
                            .get_or_create(&Metrics::label(mode))
                            .inc();
                        self.session.logged_in(messages, mode, &mut self.out);
                    }
                    Err(failure) => {
                        if failure != LoginFailure::BadCredentials {
                            let refused = Metrics::result("refused");
                            self.ctx.shared.metrics.logins.get_or_create(&refused).inc();
                        }
                        if let Effect::Close = self.session.login_failed(failure, &mut self.out) {
                            return Ok(Some(End::Closed));
                        }
                    }
                }
            }
            Effect::SaslLookup { authcid } => {
                let Some(mut exchange) = self.session.take_sasl_exchange() else {
                    return Err(End::Error("SASL lookup without an exchange".into()));
                };
                let users = self.ctx.shared.users();
                let step = {
                    let _permit = self.ctx.shared.hashing.acquire().await;
                    rt::unblock(move || {
                        let step = exchange.credentials(users.sasl_credentials(&authcid));
                        (exchange, step)
                    })
                    .await
                };
                let effect = self.session.sasl_resume(step.0, step.1, &mut self.out);
                // One level deep at most: after a lookup comes a challenge or the outcome.
                return Box::pin(self.apply(effect)).await;
            }
            Effect::Send { index, top_lines } => self.send(index, top_lines).await?,
            Effect::Update { marked, mode: _ } => {
                let Some(mut mailbox) = self.mailbox.take() else {
                    return Err(End::Error("update without a mailbox".into()));
                };
                // The mailbox, and with it the lock, is dropped before the reply is written.
                let seen = std::mem::take(&mut self.retrieved);
                let result = rt::unblock(move || {
                    mailbox.mark_seen_all(&seen);
                    mailbox.update(&marked)
                })
                .await;
                if let (Ok(report), Some((_, mode))) = (&result, &self.login) {
                    let applied = self
                        .ctx
                        .shared
                        .metrics
                        .updates_applied
                        .get_or_create(&Metrics::label(mode));
                    applied.inc_by(report.done as u64);
                }
                self.session.update_finished(result, &mut self.out);
                return Ok(Some(End::Quit));
            }
        }
        Ok(None)
    }

    /// Checks credentials (on the blocking pool, a bounded number at a time), then opens and
    /// locks the maildrop.
    async fn log_in(
        &mut self,
        login: String,
        credential: Credential,
    ) -> Result<LoggedIn, LoginFailure> {
        let shared = self.ctx.shared;
        let config = &self.ctx.config;
        let ip = self.ctx.peer.ip().to_canonical();
        let verified = {
            let _permit = shared.hashing.acquire().await;
            let users = shared.users();
            let login = login.clone();
            rt::unblock(move || {
                let resolved = users.resolve(&login);
                let entry = resolved.as_ref().map(|r| r.entry);
                let ok = match &credential {
                    Credential::Password(password) => {
                        auth::verify_password(entry, password.as_bytes())
                    }
                    Credential::Apop { banner, digest } => auth::verify_apop(entry, banner, digest),
                    Credential::Verified => true,
                    Credential::Rejected(reason) => {
                        log::debug!("SASL exchange failed: {reason}");
                        false
                    }
                };
                resolved.filter(|_| ok).map(|r| (r.entry.clone(), r.device))
            })
            .await
        };
        let Some((entry, device)) = verified else {
            log::warn!("login failed: user={login:?} addr={ip}");
            shared
                .metrics
                .logins
                .get_or_create(&Metrics::result("failed"))
                .inc();
            // Each failure from this address makes the next answer slower; other clients
            // are not slowed, since only this connection waits.
            // SIGTERM cuts the pause short: a guesser must not hold up a shutdown.
            let pause = rt::sleep(shared.limits.failed_login(ip, Instant::now()));
            futures_lite::future::or(pause, shared.shutdown.wait()).await;
            return Err(LoginFailure::BadCredentials);
        };
        shared.limits.succeeded_login(ip);
        if let Err(seconds) = shared.limits.login_delay(&login, Instant::now()) {
            log::info!("login refused, too soon (LOGIN-DELAY): user={login:?} addr={ip}");
            return Err(LoginFailure::TooSoon(seconds));
        }
        let Some(slot) = shared.limits.session(&entry.name, ip) else {
            log::warn!("login refused, too many sessions: user={login:?} addr={ip}");
            return Err(LoginFailure::TooManySessions);
        };
        // Another device of the user always keeps; the primary login gets the user's mode.
        let mode = match device {
            Some(_) => Mode::Keep,
            None => entry.mode.unwrap_or(config.mode),
        };
        let dir = template::maildir_path(
            config.maildir.as_deref(),
            &entry.name,
            entry.home.as_deref(),
        )
        .map_err(|e| {
            log::error!("user {:?}: {e}", entry.name);
            LoginFailure::Misconfigured(
                "Mailbox is not available; contact the administrator".into(),
            )
        })?;
        let opened = rt::unblock(move || Mailbox::open(&dir, mode, device.as_deref())).await;
        match opened {
            Ok((mailbox, messages)) => {
                log::info!(
                    "login: user={login:?} addr={} mode={mode} messages={}",
                    self.ctx.peer.ip(),
                    messages.len()
                );
                Ok(LoggedIn {
                    mailbox,
                    messages,
                    mode,
                    login,
                    slot,
                })
            }
            Err(OpenError::InUse) => {
                log::info!(
                    "login refused, mailbox in use: user={login:?} addr={}",
                    self.ctx.peer.ip()
                );
                Err(LoginFailure::InUse)
            }
            Err(e) => {
                log::error!("user {:?}: cannot open mailbox: {e}", entry.name);
                Err(LoginFailure::System("Cannot open the mailbox".into()))
            }
        }
    }

    /// Streams a message for RETR or TOP. A message whose path the kernel has cached is
    /// opened and read on the executor thread; otherwise opening it, reading its first chunk
    /// and setting the Seen flags pending are one trip to the blocking pool. The rest of a big
    /// message is read from the page cache without one where it can be.
    async fn send(&mut self, index: usize, top_lines: Option<u64>) -> Result<(), End> {
        let Some(mut mailbox) = self.mailbox.take() else {
            return Err(End::Error("send without a mailbox".into()));
        };
        let buf = std::mem::take(&mut self.file_buf);
        let (mut chunk, mut filled) = if let Some(file) = mailbox.open_message_cached(index) {
            self.mailbox = Some(mailbox);
            (FileChunk::new(file, buf, FILE_CHUNK), false)
        } else {
            let seen = std::mem::take(&mut self.retrieved);
            let (mailbox, opened) = rt::unblock(move || {
                mailbox.mark_seen_all(&seen);
                let opened = mailbox.open_message(index).map(|file| {
                    let mut chunk = FileChunk::new(file, buf, FILE_CHUNK);
                    chunk.fill();
                    chunk
                });
                (mailbox, opened)
            })
            .await;
            self.mailbox = Some(mailbox);
            match opened {
                Ok(chunk) => (chunk, true),
                Err(e) => {
                    if let MessageError::Io(e) = &e {
                        log::error!("cannot open a message of {:?}: {e}", self.login_name());
                    }
                    let vanished = matches!(e, MessageError::Vanished);
                    self.session.send_failed(index, vanished, &mut self.out);
                    return Ok(());
                }
            }
        };
        self.session.send_started(index, top_lines, &mut self.out);
        let mut encoder = BodyEncoder::new(top_lines);
        loop {
            if !filled && !chunk.fill_cached() {
                chunk = rt::unblock(move || {
                    chunk.fill();
                    chunk
                })
                .await;
            }
            filled = false;
            encoder.push(chunk.data(), &mut self.out);
            match chunk.tail() {
                Tail::More => {}
                Tail::End => break,
                Tail::Failed(e) => {
                    // Part of the body is out: the reply can't be completed or retracted.
                    log::error!("read error in a message of {:?}: {e}", self.login_name());
                    return Err(End::Error(format!("message read failed: {e}")));
                }
            }
            if encoder.is_done() {
                break;
            }
            if self.out.len() >= WRITE_CHUNK {
                self.flush().await?;
            }
        }
        self.file_buf = chunk.into_buf();
        encoder.finish(&mut self.out);
        if top_lines.is_none() {
            let metrics = &self.ctx.shared.metrics;
            metrics.messages_retrieved.inc();
            metrics
                .octets_retrieved
                .inc_by(self.session.message_size(index));
            // Set Seen with the next trip to the blocking pool, when the client pauses, or
            // when the session ends.
            if self.mailbox.as_ref().is_some_and(|m| !m.is_seen(index)) {
                self.retrieved.push(index);
            }
        }
        Ok(())
    }

    /// Sets the Seen flags still pending: one trip to the blocking pool for a burst of RETRs.
    async fn mark_retrieved_seen(&mut self) {
        if self.retrieved.is_empty() {
            return;
        }
        let seen = std::mem::take(&mut self.retrieved);
        if let Some(mut mailbox) = self.mailbox.take() {
            self.mailbox = Some(
                rt::unblock(move || {
                    mailbox.mark_seen_all(&seen);
                    mailbox
                })
                .await,
            );
        }
    }

    /// Sets the Seen flags still pending and unlocks the mailbox.
    async fn release_mailbox(&mut self) {
        self.mark_retrieved_seen().await;
        self.mailbox = None;
    }

    /// Lets the buffers of a burst of replies go while waiting for the client, so idle
    /// sessions stay small.
    fn rest(&mut self) {
        self.file_buf = Vec::new();
        if self.out.capacity() > IDLE_OUT {
            self.out = Vec::with_capacity(256);
        }
    }

    /// Says why the connection closes, and closes it.
    async fn time_out(&mut self, why: &[u8]) -> End {
        self.out.extend_from_slice(why);
        let _ = self.flush().await;
        End::Timeout
    }

    fn login_name(&self) -> &str {
        self.login.as_ref().map_or("-", |(name, _)| name.as_str())
    }

    /// Writes pending output.
    async fn flush(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        // A TLS stream holds records until flushed; a TCP stream's flush does nothing.
        let written = rt::timeout(WRITE_TIMEOUT, async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        })
        .await;
        self.out.clear();
        match written {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(End::Timeout),
            Err(e) => Err(End::Error(e.to_string())),
        }
    }

    /// Closes the stream (for TLS, with the close_notify alert RFC 8446 §6.1 asks for) and
    /// logs the session.
    async fn finish(mut self, end: End) {
        self.release_mailbox().await;
        let _ = rt::timeout(Duration::from_secs(5), self.stream.close()).await;
        if let Some((_, mode)) = &self.login {
            self.ctx
                .shared
                .metrics
                .sessions_open
                .get_or_create(&Metrics::label(mode))
                .dec();
        }
        self.log_end(&end);
    }

    /// One line per session, for the administrator (never a password).
    fn log_end(&self, end: &End) {
        let stats = self.session.stats();
        let (user, mode) = match &self.login {
            Some((user, mode)) => (user.as_str(), mode.to_string()),
            None => ("-", "-".to_string()),
        };
        log::info!(
            "session end: user={user:?} addr={} mode={mode} retrieved={} octets={} marked={} applied={} end={end}",
            self.ctx.peer,
            stats.retrieved,
            stats.retrieved_octets,
            stats.marked,
            stats.done,
        );
    }
}
