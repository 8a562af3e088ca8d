//! IMAP polling.

use std::time::Duration;

use serde::Deserialize;

/// How to reach the IMAP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImapTls {
    /// TLS from the first byte (port 993).
    Tls,
    /// Plain connection upgraded with STARTTLS (port 143).
    #[default]
    Starttls,
    /// No TLS (a local server, tests).
    None,
}

/// `[imap]`, resolved.
#[derive(Debug, Clone)]
pub struct ImapConfig {
    /// Host name.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS mode.
    pub tls: ImapTls,
    /// Login name.
    pub username: String,
    /// Password (empty with `oauth2`).
    pub password: crate::message::settings::Secret,
    /// `oauth2 = "NAME"`: log in with a token instead of the password.
    pub oauth2: Option<ImapOAuth2>,
    /// The mailbox replies arrive in.
    pub mailbox: String,
    /// Where processed messages are moved, if anywhere.
    pub processed_mailbox: Option<String>,
    /// How often to poll when IDLE is not available (and at most between IDLE rounds).
    pub poll_interval: Duration,
    /// Use IDLE when the server offers it.
    pub idle: bool,
    /// Connect and command timeout.
    pub timeout: Duration,
    /// Extra CA certificates (PEM) to trust besides the public roots: a ministry's own CA.
    pub ca_file: Option<std::path::PathBuf>,
}

/// `[imap] oauth2` and `sasl`.
#[derive(Debug, Clone)]
pub struct ImapOAuth2 {
    /// The `[oauth2.NAME]` the token comes from.
    pub source: String,
    /// The SASL mechanism.
    pub sasl: crate::oauth::Sasl,
}

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::TryStreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::intake::Intake;
use crate::clock::SharedClock;
use crate::store::Store;

/// A connection, plain or TLS.
#[derive(Debug)]
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

type Session = async_imap::Session<Conn>;

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    /// Network or protocol.
    #[error("imap: {0}")]
    Imap(#[from] async_imap::error::Error),
    /// Network.
    #[error("imap connection: {0}")]
    Io(#[from] std::io::Error),
    /// A step took too long.
    #[error("imap: no answer within {0:?}")]
    Timeout(Duration),
    /// The database.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// No token for the login.
    #[error(transparent)]
    Token(#[from] crate::oauth::TokenError),
    /// Login refused or the mailbox is unusable.
    #[error("imap: {0}")]
    Refused(String),
}

async fn within<T, E: Into<ImapError>>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ImapError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(ImapError::Timeout(limit)),
    }
}

fn tls_connector(cfg: &ImapConfig) -> Result<tokio_rustls::TlsConnector, ImapError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = &cfg.ca_file {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path).map_err(|e| {
            ImapError::Refused(format!("cannot read ca_file {}: {e}", path.display()))
        })?;
        for cert in certs {
            let cert = cert.map_err(|e| {
                ImapError::Refused(format!("bad certificate in {}: {e}", path.display()))
            })?;
            roots.add(cert).map_err(|e| {
                ImapError::Refused(format!(
                    "unusable CA certificate in {}: {e}",
                    path.display()
                ))
            })?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    let config = config.unwrap_or_else(|_| {
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map(|b| {
            b.with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        })
        .unwrap_or_else(|_| unreachable_config())
    });
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[allow(clippy::panic)] // ring always supports TLS 1.3; this cannot happen.
fn unreachable_config() -> rustls::ClientConfig {
    panic!("no TLS protocol version available")
}

async fn tls_wrap(cfg: &ImapConfig, tcp: TcpStream) -> Result<Conn, ImapError> {
    let name = rustls::pki_types::ServerName::try_from(cfg.host.clone())
        .map_err(|e| ImapError::Refused(format!("bad host name {}: {e}", cfg.host)))?;
    let tls = within(cfg.timeout, tls_connector(cfg)?.connect(name, tcp)).await?;
    Ok(Conn::Tls(Box::new(tls)))
}

/// Connects and logs in.
async fn connect(
    cfg: &ImapConfig,
    tokens: &crate::oauth::TokenSources,
) -> Result<Session, ImapError> {
    let tcp = within(
        cfg.timeout,
        TcpStream::connect((cfg.host.as_str(), cfg.port)),
    )
    .await?;
    let conn = match cfg.tls {
        ImapTls::Tls => tls_wrap(cfg, tcp).await?,
        ImapTls::None => Conn::Plain(tcp),
        ImapTls::Starttls => {
            let mut client = async_imap::Client::new(tcp);
            within(cfg.timeout, client.read_response()).await?;
            within(
                cfg.timeout,
                client.run_command_and_check_ok("STARTTLS", None),
            )
            .await?;
            tls_wrap(cfg, client.into_inner()).await?
        }
    };
    let mut client = async_imap::Client::new(conn);
    if cfg.tls != ImapTls::Starttls {
        // The greeting (after STARTTLS there is none).
        within(cfg.timeout, client.read_response()).await?;
    }
    if let Some(oauth) = &cfg.oauth2 {
        return login_with_token(cfg, oauth, tokens, client).await;
    }
    match tokio::time::timeout(
        cfg.timeout,
        client.login(&cfg.username, cfg.password.expose()),
    )
    .await
    {
        Ok(Ok(s)) => Ok(s),
        Ok(Err((e, _))) => Err(ImapError::Refused(format!(
            "login as {} refused: {e}",
            cfg.username
        ))),
        Err(_) => Err(ImapError::Timeout(cfg.timeout)),
    }
}

/// SASL with a bearer token: the first message carries it; an error challenge is answered so
/// that the server ends with its tagged `NO`, and what it said is kept for the error.
struct TokenLogin {
    first: Option<String>,
    abort: &'static str,
    server_said: Arc<std::sync::Mutex<Option<String>>>,
}

impl async_imap::Authenticator for TokenLogin {
    type Response = String;

    fn process(&mut self, challenge: &[u8]) -> String {
        match self.first.take() {
            Some(first) => first,
            None => {
                // No `.await` under this lock.
                if let Ok(mut said) = self.server_said.lock() {
                    *said = Some(String::from_utf8_lossy(challenge).into_owned());
                }
                self.abort.to_string()
            }
        }
    }
}

/// Logs in with a token from the source; when the server refuses it, once more with a fresh
/// one (it may have been revoked before it expired), then gives up with what usually causes it.
async fn login_with_token(
    cfg: &ImapConfig,
    oauth: &ImapOAuth2,
    tokens: &crate::oauth::TokenSources,
    mut client: async_imap::Client<Conn>,
) -> Result<Session, ImapError> {
    let source = tokens.get(&oauth.source)?;
    let mut last = String::new();
    for attempt in 0..2 {
        let token = source.token().await?;
        let said = Arc::new(std::sync::Mutex::new(None));
        let login = TokenLogin {
            first: Some(oauth.sasl.initial_response(
                &cfg.username,
                token.expose(),
                &cfg.host,
                cfg.port,
            )),
            abort: oauth.sasl.abort_response(),
            server_said: said.clone(),
        };
        match tokio::time::timeout(
            cfg.timeout,
            client.authenticate(oauth.sasl.mechanism(), login),
        )
        .await
        {
            Ok(Ok(session)) => return Ok(session),
            Ok(Err((e, c))) => {
                let detail = said
                    .lock()
                    .ok()
                    .and_then(|s| s.clone())
                    .map(|s| format!(" (server: {s})"))
                    .unwrap_or_default();
                last = format!("{e}{detail}");
                if !matches!(
                    e,
                    async_imap::error::Error::No(_) | async_imap::error::Error::Bad(_)
                ) {
                    return Err(ImapError::Imap(e));
                }
                if attempt == 0 {
                    tracing::info!(source = %oauth.source, "imap refused the token; fetching a fresh one");
                    source.refused(&token).await;
                }
                client = c;
            }
            Err(_) => return Err(ImapError::Timeout(cfg.timeout)),
        }
    }
    Err(ImapError::Refused(format!(
        "AUTHENTICATE {} as {} failed: {last}. {}",
        oauth.sasl.mechanism(),
        cfg.username,
        crate::oauth::hints::refused(source.provider(), "IMAP")
    )))
}

/// The key under which a mailbox's position is stored.
pub fn mailbox_key(cfg: &ImapConfig) -> String {
    format!("{}@{}:{}/{}", cfg.username, cfg.host, cfg.port, cfg.mailbox)
}

/// What one poll did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PollStats {
    /// Messages fetched and stored.
    pub stored: usize,
    /// Fetched but already stored (a crash after storing, before the UID advanced).
    pub duplicates: usize,
    /// Older than the mailbox's registration: skipped.
    pub skipped_old: usize,
}

/// A fetched message: UID, bytes (possibly cut at the size limit), full size, arrival.
type Fetched = (i64, Vec<u8>, usize, Option<chrono::DateTime<chrono::Utc>>);

/// Fetches what is new in the selected mailbox and stores it (raw, pending).
async fn poll(
    session: &mut Session,
    cfg: &ImapConfig,
    store: &Store,
    clock: &SharedClock,
    max_size: usize,
) -> Result<PollStats, ImapError> {
    let mailbox = within(cfg.timeout, session.select(&cfg.mailbox)).await?;
    let uidvalidity = i64::from(mailbox.uid_validity.unwrap_or(0));
    let key = mailbox_key(cfg);
    let now = clock.now();
    let (last_uid, registered_at) = match store.imap_mailbox(&key).await? {
        Some(m) if m.uidvalidity == uidvalidity => (m.last_uid, m.registered_at),
        Some(crate::store::MailboxState {
            uidvalidity: old,
            registered_at: reg,
            ..
        }) => {
            // UIDs were reset: look at everything again, but never at mail older than the
            // registration; messages already taken are recognised by their Message-ID.
            tracing::warn!(mailbox = %key, old, new = uidvalidity, "UIDVALIDITY changed; rescanning the mailbox");
            store.imap_register(&key, uidvalidity, 0, reg).await?;
            (0, reg)
        }
        None => {
            // First contact: what is already there predates pmoflow and is never processed.
            let last = i64::from(mailbox.uid_next.unwrap_or(1)).saturating_sub(1);
            store.imap_register(&key, uidvalidity, last, now).await?;
            tracing::info!(mailbox = %key, uidvalidity, after_uid = last, "mailbox registered; earlier messages are ignored");
            (last, now)
        }
    };
    let mut stats = PollStats::default();
    if mailbox.exists == 0 {
        return Ok(stats);
    }
    let range = format!("{}:*", last_uid + 1);
    let query = format!(
        "(UID INTERNALDATE RFC822.SIZE BODY.PEEK[]<0.{}>)",
        max_size + 1
    );
    let fetches: Vec<async_imap::types::Fetch> = within(cfg.timeout * 4, async {
        let stream = session.uid_fetch(&range, &query).await?;
        stream.try_collect::<Vec<_>>().await
    })
    .await?;
    let mut fetched: Vec<Fetched> = fetches
        .iter()
        .filter_map(|f| {
            let uid = i64::from(f.uid?);
            // `N:*` always returns the last message, even when its UID is below N.
            (uid > last_uid).then(|| {
                let body = f.body().unwrap_or_default().to_vec();
                let size = f.size.map_or(body.len(), |s| s as usize);
                let date = f.internal_date().map(|d| d.with_timezone(&chrono::Utc));
                (uid, body, size, date)
            })
        })
        .collect();
    fetched.sort_by_key(|(uid, ..)| *uid);
    let mut moved = Vec::new();
    for (uid, body, size, date) in fetched {
        if date.is_some_and(|d| d < registered_at - chrono::Duration::minutes(5)) {
            stats.skipped_old += 1;
            store
                .inbound_store(
                    &format!("imap:{key}:{uidvalidity}:{uid}:old"),
                    "imap-skipped",
                    b"",
                    0,
                    now,
                    Some((&key, uidvalidity, uid)),
                )
                .await?;
            continue;
        }
        // The Message-ID key recognises a message seen under another UID (a UIDVALIDITY reset,
        // a copy); the UID advances in the same transaction as the insert.
        let source = if body.is_empty() {
            format!("imap:{key}:{uidvalidity}:{uid}")
        } else {
            super::intake::source_key(&body)
        };
        match store
            .inbound_store(
                &source,
                "imap",
                &body,
                size,
                now,
                Some((&key, uidvalidity, uid)),
            )
            .await?
        {
            Some(_) => stats.stored += 1,
            None => {
                stats.duplicates += 1;
                // Still advance past it.
                store
                    .inbound_store(
                        &format!("imap:{key}:{uidvalidity}:{uid}:dup"),
                        "imap-duplicate",
                        b"",
                        0,
                        now,
                        Some((&key, uidvalidity, uid)),
                    )
                    .await?;
            }
        }
        moved.push(uid);
    }
    if let Some(target) = &cfg.processed_mailbox
        && !moved.is_empty()
    {
        let set: Vec<String> = moved.iter().map(i64::to_string).collect();
        if let Err(e) = within(cfg.timeout, session.uid_mv(set.join(","), target)).await {
            tracing::warn!(mailbox = %key, error = %e, "could not move processed messages to {target}");
        }
    }
    Ok(stats)
}

/// Polls the mailbox until shutdown: IDLE when offered, otherwise every `poll_interval`.
/// Connection errors are logged and retried with backoff; they never stop the daemon.
pub async fn run(poller: Poller, shutdown: CancellationToken) {
    let cfg = &poller.cfg;
    let mut backoff = Duration::from_secs(1);
    while !shutdown.is_cancelled() {
        let started = std::time::Instant::now();
        match poller.session_loop(&shutdown).await {
            Ok(()) => return,
            Err(e) => {
                if started.elapsed() > Duration::from_secs(120) {
                    // The session had been working: a fresh failure starts the backoff again.
                    backoff = Duration::from_secs(1);
                }
                tracing::warn!(host = %cfg.host, mailbox = %cfg.mailbox, error = %e, "imap polling failed; retrying in {}s", backoff.as_secs());
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(300));
            }
        }
    }
}

/// What the poller works with: the mailbox, the store it writes to, the intake that processes
/// what it stored, and the token sources it logs in with.
pub struct Poller {
    /// The mailbox.
    pub cfg: ImapConfig,
    /// Where messages are stored.
    pub store: Store,
    /// The clock.
    pub clock: SharedClock,
    /// Processes what was stored.
    pub intake: Intake,
    /// For `oauth2` logins.
    pub tokens: crate::oauth::TokenSources,
    /// Largest message taken whole.
    pub max_size: usize,
    /// Crash tests only.
    pub failpoint: Option<String>,
}

impl Poller {
    async fn session_loop(&self, shutdown: &CancellationToken) -> Result<(), ImapError> {
        let (cfg, store, clock, intake, max_size) = (
            &self.cfg,
            &self.store,
            &self.clock,
            &self.intake,
            self.max_size,
        );
        let failpoint = self.failpoint.as_deref();
        let mut session = connect(cfg, &self.tokens).await?;
        let idle = cfg.idle
            && within(cfg.timeout, session.capabilities())
                .await?
                .has_str("IDLE");
        tracing::info!(host = %cfg.host, mailbox = %cfg.mailbox, idle, "imap connected");
        loop {
            let stats = match poll(&mut session, cfg, store, clock, max_size).await {
                Ok(s) => {
                    intake
                        .metrics()
                        .inc("pmoflow_imap_polls_total", &[("result", "ok")]);
                    s
                }
                Err(e) => {
                    intake
                        .metrics()
                        .inc("pmoflow_imap_polls_total", &[("result", "error")]);
                    return Err(e);
                }
            };
            if stats.stored + stats.duplicates + stats.skipped_old > 0 {
                tracing::info!(
                    stored = stats.stored,
                    duplicates = stats.duplicates,
                    skipped_old = stats.skipped_old,
                    "imap poll"
                );
                if stats.stored > 0 && failpoint == Some("after-intake") {
                    // Crash tests: die like `kill -9` between storing and processing.
                    tracing::error!("failpoint after-intake: aborting");
                    std::process::abort();
                }
            }
            if let Err(e) = intake.process_pending().await {
                tracing::warn!(error = %e, "processing inbound mail failed; it stays pending");
            }
            if shutdown.is_cancelled() {
                let _ = tokio::time::timeout(Duration::from_secs(2), session.logout()).await;
                return Ok(());
            }
            if idle {
                let mut handle = session.idle();
                within(cfg.timeout, handle.init()).await?;
                let wait = cfg.poll_interval.min(Duration::from_secs(25 * 60));
                let (fut, stop) = handle.wait_with_timeout(wait);
                let stopped = tokio::select! {
                    r = fut => { r?; false }
                    () = shutdown.cancelled() => true,
                };
                drop(stop);
                session = within(cfg.timeout, handle.done()).await?;
                if stopped {
                    let _ = tokio::time::timeout(Duration::from_secs(2), session.logout()).await;
                    return Ok(());
                }
            } else {
                tokio::select! {
                    () = tokio::time::sleep(cfg.poll_interval) => {}
                    () = shutdown.cancelled() => {
                        let _ = tokio::time::timeout(Duration::from_secs(2), session.logout()).await;
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Polls once (connect, fetch, store, log out) and returns the stats; for `pmoflow inbound
/// poll` and tests.
pub async fn poll_once(
    cfg: &ImapConfig,
    store: &Store,
    clock: &SharedClock,
    tokens: &crate::oauth::TokenSources,
    max_size: usize,
) -> Result<PollStats, ImapError> {
    let mut session = connect(cfg, tokens).await?;
    let stats = poll(&mut session, cfg, store, clock, max_size).await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), session.logout()).await;
    Ok(stats)
}

/// What `pmoflow mail check` reports about the mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxCounts {
    /// Messages in the mailbox.
    pub exists: u32,
    /// Messages not yet seen (`\\Seen` unset).
    pub unseen: usize,
    /// `UIDVALIDITY`.
    pub uid_validity: Option<u32>,
    /// Whether the server offers IDLE.
    pub idle: bool,
}

/// Connects, logs in, examines the mailbox read-only, logs out: `pmoflow mail check`.
pub async fn check(
    cfg: &ImapConfig,
    tokens: &crate::oauth::TokenSources,
) -> Result<MailboxCounts, ImapError> {
    let mut session = connect(cfg, tokens).await?;
    let idle = within(cfg.timeout, session.capabilities())
        .await?
        .has_str("IDLE");
    let mailbox = within(cfg.timeout, session.examine(&cfg.mailbox)).await?;
    let unseen = within(cfg.timeout, session.search("UNSEEN")).await?.len();
    let _ = tokio::time::timeout(Duration::from_secs(2), session.logout()).await;
    Ok(MailboxCounts {
        exists: mailbox.exists,
        unseen,
        uid_validity: mailbox.uid_validity,
        idle,
    })
}
