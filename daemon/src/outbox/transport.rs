//! Delivery: SMTP (lettre, pooled), `.eml` files when no SMTP server is configured, and HTTP
//! for webhooks. Each attempt ends `Sent`, `Temporary` (retry) or `Permanent` (dead at once).
//!
//! Payloads, as stored in the outbox:
//! - email: `{ "from": envelope sender, "to": [envelope recipients], "raw": message }`
//! - webhook: `{ "url", "headers": {…}, "body": text, "secret": optional secret name }`

use std::path::PathBuf;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde_json::Value as Json;

use super::{Delivery, DeliveryConfig, MessageKind, SmtpTls, webhook};

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
    /// The webhook HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Http(#[source] reqwest::Error),
}

/// The transports of one daemon.
pub struct Transports {
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    eml_dir: PathBuf,
    http: reqwest::Client,
    delivery: std::sync::Arc<DeliveryConfig>,
}

impl Transports {
    /// Builds the transports from the configuration.
    pub fn new(delivery: std::sync::Arc<DeliveryConfig>) -> Result<Self, TransportError> {
        let smtp_error = |host: &str| {
            let host = host.to_string();
            move |error| TransportError::Smtp { host, error }
        };
        let smtp = match &delivery.mail.smtp {
            None => None,
            Some(cfg) => {
                let builder = match cfg.tls {
                    SmtpTls::Starttls => {
                        AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&cfg.host)
                            .map_err(smtp_error(&cfg.host))?
                    }
                    SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&cfg.host)
                        .map_err(smtp_error(&cfg.host))?,
                    SmtpTls::None => {
                        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.host)
                    }
                };
                // One pooled connection per concurrent delivery.
                let pool = lettre::transport::smtp::PoolConfig::new()
                    .max_size(u32::try_from(delivery.outbox.concurrency).unwrap_or(8));
                let mut builder = builder
                    .port(cfg.port)
                    .timeout(Some(cfg.timeout))
                    .pool_config(pool);
                if let (Some(user), Some(pass)) = (&cfg.username, &cfg.password) {
                    builder = builder
                        .credentials(Credentials::new(user.clone(), pass.expose().to_string()));
                }
                Some(builder.build())
            }
        };
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .user_agent(concat!("pmoflow/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(TransportError::Http)?;
        Ok(Self {
            smtp,
            eml_dir: delivery.mail.outbox_dir.clone(),
            http,
            delivery,
        })
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
        match smtp.send_raw(&envelope, raw.as_bytes()).await {
            Ok(_) => Delivery::Sent,
            Err(e) if e.is_permanent() => {
                Delivery::Permanent(format!("SMTP server refused the message: {e}"))
            }
            Err(e) => Delivery::Temporary(format!("SMTP: {e}")),
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
                } else if status.as_u16() == 408
                    || status.as_u16() == 425
                    || status.as_u16() == 429
                    || status.is_server_error()
                {
                    Delivery::Temporary(format!("HTTP {status}"))
                } else {
                    let text = resp.text().await.unwrap_or_default();
                    Delivery::Permanent(format!(
                        "HTTP {status}: {}",
                        text.chars().take(200).collect::<String>()
                    ))
                }
            }
            Err(e) if secret_url.is_some() => {
                Delivery::Temporary(format!("HTTP: {}", e.without_url()))
            }
            Err(e) => Delivery::Temporary(format!("HTTP: {e}")),
        }
    }
}
