//! Delivery: SMTP (lettre, pooled), `.eml` files when no SMTP server is configured, and HTTP
//! for webhooks. Each attempt ends `Sent`, `Temporary` (retry) or `Permanent` (dead at once).
//!
//! Payloads, as stored in the outbox:
//! - email: `{ "from": envelope sender, "to": [envelope recipients], "raw": message }`
//! - webhook: `{ "url", "headers": {…}, "body": text, "secret": optional secret name }`

use std::path::PathBuf;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde_json::Value as Json;

use super::{Delivery, DeliveryConfig, MessageKind, Secret, SmtpConfig, SmtpTls, webhook};

/// Why the transports could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The SMTP relay's TLS settings were refused.
    #[error("SMTP {host}: {error}")]
    Smtp {
        /// `[mail.smtp] host`.
        host: String,
        /// lettre's reason.
        #[source]
        error: lettre::transport::smtp::Error,
    },
    /// `[smtp] oauth2` names no token source.
    #[error(transparent)]
    Token(crate::oauth::TokenError),
    /// The webhook HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Http(#[source] reqwest::Error),
}

/// Why `pmoflow mail check` could not log in to the SMTP server.
#[derive(Debug, thiserror::Error)]
pub enum SmtpCheckError {
    /// No connection (or no token to log in with).
    #[error("{0}")]
    Connect(String),
    /// The server hung up after EHLO.
    #[error("the server closed the connection after EHLO")]
    ClosedAfterEhlo,
    /// The login was refused; the hint says what to check.
    #[error("login refused: {detail}. {hint}")]
    LoginRefused {
        /// The server's answer.
        detail: String,
        /// What to check (the provider's usual causes).
        hint: String,
    },
    /// Any other SMTP error.
    #[error("{0}")]
    Smtp(String),
}

/// The SMTP relay: one pooled lettre transport, or, with OAuth2, one per access token (the
/// credentials of a lettre pool are fixed; a new token makes a new pool, the old one closes when
/// its last delivery ends).
enum Smtp {
    Password(AsyncSmtpTransport<Tokio1Executor>),
    Token {
        cfg: SmtpConfig,
        pool_size: u32,
        source: std::sync::Arc<crate::oauth::TokenSource>,
        /// The transport of the current token. No `.await` under this lock.
        current: std::sync::Mutex<Option<(Secret, AsyncSmtpTransport<Tokio1Executor>)>>,
    },
}

/// The transports of one daemon.
pub struct Transports {
    smtp: Option<Smtp>,
    tokens: crate::oauth::TokenSources,
    eml_dir: PathBuf,
    http: reqwest::Client,
    delivery: std::sync::Arc<DeliveryConfig>,
}

/// A lettre transport for `cfg`, logging in with `credentials` (password, or an XOAUTH2 token).
fn smtp_transport(
    cfg: &SmtpConfig,
    pool_size: u32,
    credentials: Option<(Credentials, Vec<Mechanism>)>,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, TransportError> {
    let smtp_error = |error| TransportError::Smtp {
        host: cfg.host.clone(),
        error,
    };
    let builder = match cfg.tls {
        SmtpTls::Starttls => {
            AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&cfg.host).map_err(smtp_error)?
        }
        SmtpTls::Tls => {
            AsyncSmtpTransport::<Tokio1Executor>::relay(&cfg.host).map_err(smtp_error)?
        }
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.host),
    };
    // One pooled connection per concurrent delivery.
    let pool = lettre::transport::smtp::PoolConfig::new().max_size(pool_size);
    let mut builder = builder
        .port(cfg.port)
        .timeout(Some(cfg.timeout))
        .pool_config(pool);
    if let Some((credentials, mechanisms)) = credentials {
        builder = builder.credentials(credentials).authentication(mechanisms);
    }
    Ok(builder.build())
}

/// Whether an SMTP error is the server refusing the login (530, 534, 535, 454), which retrying
/// the message cannot fix but fixing the configuration can: never a reason to drop a message.
fn is_auth_refusal(e: &lettre::transport::smtp::Error) -> bool {
    e.status()
        .is_some_and(|c| matches!(c.to_string().as_str(), "530" | "534" | "535" | "454"))
}

impl Smtp {
    /// The transport to send with now, and the token it logs in with (if any).
    async fn transport(
        &self,
    ) -> Result<(AsyncSmtpTransport<Tokio1Executor>, Option<Secret>), Delivery> {
        match self {
            Smtp::Password(t) => Ok((t.clone(), None)),
            Smtp::Token {
                cfg,
                pool_size,
                source,
                current,
            } => {
                let token = source
                    .token()
                    .await
                    .map_err(|e| Delivery::Temporary(e.to_string()))?;
                let mut current = current
                    .lock()
                    .map_err(|_| Delivery::Temporary("SMTP transport lock poisoned".into()))?;
                if let Some((t, transport)) = current.as_ref()
                    && t == &token
                {
                    return Ok((transport.clone(), Some(token)));
                }
                let user = cfg.username.clone().unwrap_or_default();
                let transport = smtp_transport(
                    cfg,
                    *pool_size,
                    Some((
                        Credentials::new(user, token.expose().to_string()),
                        vec![Mechanism::Xoauth2],
                    )),
                )
                .map_err(|e| Delivery::Temporary(e.to_string()))?;
                *current = Some((token.clone(), transport.clone()));
                Ok((transport, Some(token)))
            }
        }
    }
}

impl Transports {
    /// Builds the transports from the configuration; `tokens` are the live `[oauth2.*]`
    /// sources (for `[smtp] oauth2`).
    pub fn new(
        delivery: std::sync::Arc<DeliveryConfig>,
        tokens: crate::oauth::TokenSources,
    ) -> Result<Self, TransportError> {
        let pool_size = u32::try_from(delivery.outbox.concurrency).unwrap_or(8);
        let smtp = match &delivery.mail.smtp {
            None => None,
            Some(cfg) => match &cfg.oauth2 {
                Some(name) => Some(Smtp::Token {
                    cfg: cfg.clone(),
                    pool_size,
                    source: tokens.get(name).map_err(TransportError::Token)?,
                    current: std::sync::Mutex::new(None),
                }),
                None => {
                    let credentials = match (&cfg.username, &cfg.password) {
                        (Some(user), Some(pass)) => Some((
                            Credentials::new(user.clone(), pass.expose().to_string()),
                            vec![Mechanism::Plain, Mechanism::Login],
                        )),
                        _ => None,
                    };
                    Some(Smtp::Password(smtp_transport(cfg, pool_size, credentials)?))
                }
            },
        };
        let http = crate::egress::client(
            delivery.egress.clone(),
            delivery.outbox.webhook_timeout,
            concat!("pmoflow/", env!("CARGO_PKG_VERSION")),
        )
        .map_err(TransportError::Http)?;
        Ok(Self {
            smtp,
            tokens,
            eml_dir: delivery.mail.outbox_dir.clone(),
            http,
            delivery,
        })
    }

    /// `pmoflow mail check`: connects to the SMTP server, says EHLO and logs in (with a fresh
    /// token once more if the first is refused); sends nothing. `Ok(None)` without `[smtp]`.
    pub async fn check_smtp(&self) -> Result<Option<String>, SmtpCheckError> {
        let Some(smtp) = &self.smtp else {
            return Ok(None);
        };
        for attempt in 0..2 {
            let (transport, token) = smtp.transport().await.map_err(|d| match d {
                Delivery::Temporary(m) | Delivery::Later(m, _) | Delivery::Permanent(m) => {
                    SmtpCheckError::Connect(m)
                }
                Delivery::Sent => SmtpCheckError::Connect(String::new()),
            })?;
            match transport.test_connection().await {
                Ok(true) => {
                    return Ok(Some(if token.is_some() {
                        "EHLO and AUTH XOAUTH2 accepted".into()
                    } else if self
                        .delivery
                        .mail
                        .smtp
                        .as_ref()
                        .is_some_and(|c| c.password.is_some())
                    {
                        "EHLO and AUTH accepted".into()
                    } else {
                        "EHLO accepted (no login configured)".into()
                    }));
                }
                Ok(false) => return Err(SmtpCheckError::ClosedAfterEhlo),
                Err(e) if is_auth_refusal(&e) => {
                    if let (Some(token), Smtp::Token { source, .. }) = (&token, smtp)
                        && attempt == 0
                    {
                        source.refused(token).await;
                        continue;
                    }
                    return Err(SmtpCheckError::LoginRefused {
                        detail: e.to_string(),
                        hint: self.refusal_hint(smtp),
                    });
                }
                Err(e) => return Err(SmtpCheckError::Smtp(e.to_string())),
            }
        }
        Err(SmtpCheckError::LoginRefused {
            detail: "refused again with a fresh token".into(),
            hint: self.refusal_hint(smtp),
        })
    }

    /// `pmoflow mail check --send-test ADDRESS`: one short message through the real path.
    pub async fn send_test(&self, to: &str, message_id: &str, raw: &str) -> Delivery {
        let from = self
            .delivery
            .mail
            .from
            .parse::<lettre::message::Mailbox>()
            .map(|m| m.email.to_string())
            .unwrap_or_default();
        let payload = serde_json::json!({
            "from": from,
            "to": [to],
            "raw": raw,
        });
        self.email(message_id, &payload).await
    }

    /// One delivery attempt.
    pub async fn deliver(
        &self,
        kind: MessageKind,
        message_id: &str,
        payload: &Json,
        now_unix: i64,
    ) -> Delivery {
        match kind {
            MessageKind::Email => self.email(message_id, payload).await,
            MessageKind::Webhook => self.webhook(message_id, payload, now_unix).await,
        }
    }

    async fn email(&self, message_id: &str, payload: &Json) -> Delivery {
        let raw = payload["raw"].as_str().unwrap_or_default();
        let Some(smtp) = &self.smtp else {
            return self.write_eml(message_id, raw).await;
        };
        let from = payload["from"].as_str().and_then(|f| f.parse().ok());
        let to: Vec<lettre::Address> = payload["to"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()?.parse().ok()).collect())
            .unwrap_or_default();
        let envelope = match Envelope::new(from, to) {
            Ok(e) => e,
            Err(e) => return Delivery::Permanent(format!("invalid envelope: {e}")),
        };
        // With a token: a refusal may mean it was revoked early; once more with a fresh one.
        for attempt in 0..2 {
            let (transport, token) = match smtp.transport().await {
                Ok(t) => t,
                Err(d) => return d,
            };
            // lettre bounds the connection and each read by `[smtp] timeout`, but not a server
            // that accepts the connection and never greets (found by the SMTP fault test): the
            // whole transaction gets three times the timeout.
            let limit = self
                .delivery
                .mail
                .smtp
                .as_ref()
                .map_or(std::time::Duration::from_secs(90), |c| c.timeout * 3);
            let sent = tokio::time::timeout(limit, transport.send_raw(&envelope, raw.as_bytes()));
            let sent = match sent.await {
                Ok(sent) => sent,
                Err(_) => {
                    return Delivery::Temporary(format!(
                        "SMTP: the server did not finish the transaction within {} s",
                        limit.as_secs()
                    ));
                }
            };
            match sent {
                Ok(_) => return Delivery::Sent,
                Err(e) if is_auth_refusal(&e) => {
                    if let (Some(token), Smtp::Token { source, .. }) = (&token, smtp)
                        && attempt == 0
                    {
                        source.refused(token).await;
                        continue;
                    }
                    return Delivery::Temporary(format!(
                        "SMTP login refused: {e}. {}",
                        self.refusal_hint(smtp)
                    ));
                }
                Err(e) if e.is_permanent() => {
                    return Delivery::Permanent(format!("SMTP server refused the message: {e}"));
                }
                Err(e) => return Delivery::Temporary(format!("SMTP: {e}")),
            }
        }
        Delivery::Temporary("SMTP login refused".into())
    }

    fn refusal_hint(&self, smtp: &Smtp) -> String {
        match smtp {
            Smtp::Token { source, .. } => crate::oauth::hints::refused(source.provider(), "SMTP"),
            Smtp::Password(_) => "check [smtp] username and password".into(),
        }
    }

    /// Writes the exact bytes that would be sent to `outbox_dir/<message-id>.eml` (write then
    /// rename, so a reader never sees half a file; the same message always has the same name).
    async fn write_eml(&self, message_id: &str, raw: &str) -> Delivery {
        let name: String = message_id
            .trim_matches(|c| c == '<' || c == '>')
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '@' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let dir = self.eml_dir.clone();
        let raw = raw.to_string();
        let result = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, raw.as_bytes())?;
            std::fs::rename(&tmp, dir.join(format!("{name}.eml")))
        })
        .await;
        match result {
            Ok(Ok(())) => Delivery::Sent,
            Ok(Err(e)) => Delivery::Temporary(format!("cannot write .eml: {e}")),
            Err(e) => Delivery::Temporary(format!("cannot write .eml: {e}")),
        }
    }

    async fn webhook(&self, message_id: &str, payload: &Json, now_unix: i64) -> Delivery {
        // A URL kept as a secret is read only here, and never appears in a reason.
        let secret_url = payload["url_secret"].as_str();
        let url = match secret_url {
            Some(name) => match self.delivery.secrets.get(name) {
                Some(v) => v.expose(),
                None => return Delivery::Temporary(format!("secret `{name}` is not configured")),
            },
            None => payload["url"].as_str().unwrap_or_default(),
        };
        // The egress policy; a refusal is permanent. A secret URL is not shown, only its host.
        let url = match self.delivery.egress.check_url(url) {
            Ok(u) => u,
            Err(e) => {
                return Delivery::Permanent(match (secret_url, e) {
                    (Some(name), crate::egress::EgressError::BadUrl { .. }) => {
                        format!("secret `{name}` does not hold an http(s) URL")
                    }
                    (Some(name), e) => format!("the URL in secret `{name}` is refused: {e}"),
                    (None, e) => format!("refused: {e}"),
                });
            }
        };
        let body = payload["body"].as_str().unwrap_or_default().to_string();
        let mut req = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(webhook::IDEMPOTENCY_HEADER, message_id);
        if let Some(headers) = payload["headers"].as_object() {
            for (k, v) in headers {
                if let Some(v) = v.as_str() {
                    req = req.header(k.as_str(), v);
                }
            }
        }
        // A bearer token (LINE WORKS bots): fetched (or taken from the cache) at delivery.
        let mut bearer = None;
        if let Some(name) = payload["oauth2"].as_str() {
            let source = match self.tokens.get(name) {
                Ok(s) => s,
                Err(e) => return Delivery::Temporary(e.to_string()),
            };
            match source.token().await {
                Ok(token) => {
                    req = req.bearer_auth(token.expose());
                    bearer = Some((source, token));
                }
                Err(e) => return Delivery::Temporary(e.to_string()),
            }
        }
        if let Some(name) = payload["secret"].as_str() {
            let Some(secret) = self.delivery.secrets.get(name) else {
                return Delivery::Temporary(format!("secret `{name}` is not configured"));
            };
            req = req
                .header(webhook::TIMESTAMP_HEADER, now_unix.to_string())
                .header(
                    webhook::SIGNATURE_HEADER,
                    webhook::sign(secret.expose().as_bytes(), now_unix, body.as_bytes()),
                );
        }
        match req.body(body).send().await {
            Ok(resp) => {
                let status = resp.status();
                if status.is_success() {
                    Delivery::Sent
                } else if let (401, Some((source, token))) = (status.as_u16(), &bearer) {
                    // Revoked or expired early: the next attempt fetches a fresh token.
                    source.refused(token).await;
                    Delivery::Temporary(format!(
                        "HTTP {status}: the token of [oauth2.{}] was refused; a fresh one is fetched for the next attempt",
                        source.name()
                    ))
                } else if let Some(wait) = (status.as_u16() == 429 || status.as_u16() == 503)
                    .then(|| resp.headers().get(reqwest::header::RETRY_AFTER))
                    .flatten()
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry_after(v, now_unix))
                {
                    Delivery::Later(
                        format!("HTTP {status} (Retry-After: {} s)", wait.as_secs()),
                        wait,
                    )
                } else if status.as_u16() == 408
                    || status.as_u16() == 425
                    || status.as_u16() == 429
                    || status.is_server_error()
                {
                    Delivery::Temporary(format!("HTTP {status}"))
                } else {
                    // Only the start is shown; a long error page is not read whole.
                    let text = crate::egress::read_capped(resp, 64 << 10)
                        .await
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default();
                    Delivery::Permanent(format!(
                        "HTTP {status}: {}",
                        text.chars().take(200).collect::<String>()
                    ))
                }
            }
            Err(e) if crate::egress::refusal(&e).is_some() => Delivery::Permanent(format!(
                "refused: {}",
                crate::egress::refusal(&e)
                    .map(ToString::to_string)
                    .unwrap_or_default()
            )),
            Err(e) if secret_url.is_some() => {
                Delivery::Temporary(format!("HTTP: {}", e.without_url()))
            }
            Err(e) => Delivery::Temporary(format!("HTTP: {e}")),
        }
    }
}
/// A `Retry-After` value (RFC 9110: delay-seconds or an HTTP-date) as a wait from `now_unix`;
/// `None` when unreadable. A date in the past means at once.
fn retry_after(value: &str, now_unix: i64) -> Option<std::time::Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(std::time::Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value)
        .ok()?
        .timestamp();
    Some(std::time::Duration::from_secs(
        u64::try_from(at - now_unix).unwrap_or(0),
    ))
}
