//! OAuth2 token sources (`[oauth2.NAME]`): how the daemon logs in to Exchange Online, Google
//! Workspace and LINE WORKS, which refuse passwords.
//!
//! A [`TokenSourceConfig`] is data, read by `config`; the assembly turns each into a live
//! [`TokenSource`] that fetches access tokens (the `oauth2` crate for the client-credentials
//! grant, a signed JWT for the JWT-bearer grant of RFC 7523), caches them, refreshes them before
//! they expire and once more when a server refuses one. One fetch at a time per source: callers
//! that need a token while one is being fetched wait for it. A failed fetch is remembered for a
//! few seconds so that many deliveries failing at once do not hammer the identity provider.
//! Tokens and secrets never appear in errors or logs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::message::settings::Secret;

pub mod hints;
pub mod jwt;
pub mod sasl;

pub use sasl::Sasl;

/// Who issues the tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Microsoft Entra ID (Exchange Online): client credentials, with a secret or a certificate.
    Microsoft,
    /// Google Workspace: a service account with domain-wide delegation (JWT bearer).
    Google,
    /// Any RFC 6749 token endpoint: client credentials.
    Generic,
    /// LINE WORKS API 2.0: a service-account JWT (bot messages).
    LineWorks,
}

impl Provider {
    /// The names accepted in `provider = "…"`.
    pub const NAMES: &'static str = "microsoft, google, generic, line-works";

    /// Parses a `provider` value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "microsoft" => Some(Self::Microsoft),
            "google" => Some(Self::Google),
            "generic" => Some(Self::Generic),
            "line-works" => Some(Self::LineWorks),
            _ => None,
        }
    }

    /// The name in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Microsoft => "microsoft",
            Self::Google => "google",
            Self::Generic => "generic",
            Self::LineWorks => "line-works",
        }
    }
}

/// Where a client secret is: read once at start (an environment variable), or read again at
/// every token fetch (a file: a rotated secret is picked up without a restart).
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// The value, read at start.
    Value(Secret),
    /// A file holding the value.
    File(PathBuf),
}

/// A secret file that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct SecretFileError {
    /// The file.
    pub path: String,
    /// Why.
    pub source: std::io::Error,
}

impl SecretSource {
    fn read(&self) -> Result<Secret, SecretFileError> {
        match self {
            Self::Value(s) => Ok(s.clone()),
            Self::File(p) => std::fs::read_to_string(p)
                .map(|v| Secret::new(v.trim()))
                .map_err(|source| SecretFileError {
                    path: p.display().to_string(),
                    source,
                }),
        }
    }
}

/// How the client proves who it is.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A client secret (client-credentials grant).
    ClientSecret(SecretSource),
    /// A certificate (Microsoft): a client assertion signed with its private key.
    Certificate {
        /// The private key, PEM.
        key_pem: Secret,
        /// `x5t#S256`: base64url of the SHA-256 of the certificate (DER).
        thumbprint: String,
    },
    /// A Google service account: the JWT-bearer grant, acting as `subject`.
    ServiceAccount {
        /// `client_email` of the key file.
        client_email: String,
        /// `private_key_id` of the key file.
        key_id: Option<String>,
        /// `private_key` of the key file, PEM.
        key_pem: Secret,
        /// The mailbox the daemon acts as (domain-wide delegation).
        subject: String,
    },
    /// LINE WORKS: a JWT signed by the app's service account, plus the client secret.
    LineWorks {
        /// The client secret.
        secret: SecretSource,
        /// The service account id (`…serviceaccount@…`).
        service_account: String,
        /// The private key, PEM.
        key_pem: Secret,
    },
}

/// `[oauth2.NAME]`, resolved: data only.
#[derive(Debug, Clone)]
pub struct TokenSourceConfig {
    /// The table's name.
    pub name: String,
    /// Who issues the tokens.
    pub provider: Provider,
    /// The token endpoint.
    pub token_url: String,
    /// The client (application) id.
    pub client_id: String,
    /// The scope asked for (space-separated; may be empty).
    pub scope: String,
    /// How the client authenticates.
    pub credential: Credential,
}

/// Why no token could be had. Never holds a secret or a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The endpoint answered with an OAuth2 error (RFC 6749 §5.2).
    #[error("oauth2 `{name}`: {url} refused the credentials: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        /// The source.
        name: String,
        /// The token endpoint.
        url: String,
        /// `error`, e.g. `invalid_client`.
        error: String,
        /// `error_description`: the provider's own message (e.g. `AADSTS7000215: …`).
        description: Option<String>,
    },
    /// The endpoint could not be reached or answered something that is not a token.
    #[error("oauth2 `{name}`: token endpoint {url}: {reason}")]
    Endpoint {
        /// The source.
        name: String,
        /// The token endpoint.
        url: String,
        /// What happened.
        reason: String,
    },
    /// The credential itself is unusable (secret file unreadable, bad key).
    #[error("oauth2 `{name}`: {reason}")]
    Credential {
        /// The source.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A `oauth2 = "…"` names no `[oauth2.…]` table.
    #[error("no [oauth2.{0}] is configured")]
    Unknown(String),
}

/// A token in the cache.
struct Cached {
    value: Secret,
    refresh_at: Instant,
}

#[derive(Default)]
struct State {
    token: Option<Cached>,
    /// The last failure, kept for [`FAILURE_HOLD`] so that callers do not refetch at once.
    failed: Option<(Instant, TokenError)>,
}

/// How long a failed fetch is answered from memory.
const FAILURE_HOLD: Duration = Duration::from_secs(5);
/// The lifetime assumed when an endpoint does not say (`expires_in` missing).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// A live token source: one per `[oauth2.NAME]`, shared by the IMAP poller, the outbox and the
/// CLI of one process.
pub struct TokenSource {
    cfg: TokenSourceConfig,
    http: reqwest::Client,
    state: tokio::sync::Mutex<State>,
    fetches: AtomicU64,
    metrics: Arc<crate::metrics::Metrics>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("name", &self.cfg.name)
            .field("provider", &self.cfg.provider)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// A source with its own HTTP client (no redirects: a token endpoint that redirects is
    /// misconfigured, and following it would send the secret elsewhere).
    pub fn new(cfg: TokenSourceConfig, metrics: Arc<crate::metrics::Metrics>) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("pmoflow/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Self {
            cfg,
            http,
            state: tokio::sync::Mutex::default(),
            fetches: AtomicU64::new(0),
            metrics,
        }
    }

    /// The source's name (`[oauth2.NAME]`).
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The provider.
    pub fn provider(&self) -> Provider {
        self.cfg.provider
    }

    /// The token endpoint.
    pub fn token_url(&self) -> &str {
        &self.cfg.token_url
    }

    /// How many tokens this source has fetched (successfully or not) since it was made.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// A valid access token: the cached one, or a new one.
    pub async fn token(&self) -> Result<Secret, TokenError> {
        let mut state = self.state.lock().await;
        let now = Instant::now();
        if let Some(t) = &state.token
            && now < t.refresh_at
        {
            return Ok(t.value.clone());
        }
        if let Some((at, e)) = &state.failed
            && now.duration_since(*at) < FAILURE_HOLD
        {
            return Err(e.clone());
        }
        self.fetches.fetch_add(1, Ordering::Relaxed);
        match self.fetch().await {
            Ok((value, lifetime)) => {
                self.metrics.inc(
                    "pmoflow_oauth2_token_fetches_total",
                    &[("source", &self.cfg.name), ("result", "ok")],
                );
                tracing::info!(source = %self.cfg.name, provider = self.cfg.provider.as_str(), expires_in = lifetime.as_secs(), "oauth2 token fetched");
                // Refresh when a fifth of the lifetime (at most five minutes) is left.
                let margin = (lifetime / 5).min(Duration::from_secs(300));
                state.token = Some(Cached {
                    value: value.clone(),
                    refresh_at: Instant::now() + lifetime.saturating_sub(margin),
                });
                state.failed = None;
                Ok(value)
            }
            Err(e) => {
                self.metrics.inc(
                    "pmoflow_oauth2_token_fetches_total",
                    &[("source", &self.cfg.name), ("result", "error")],
                );
                tracing::warn!(source = %self.cfg.name, error = %e, "oauth2 token fetch failed");
                state.token = None;
                state.failed = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    /// A server refused `token`: forget it (unless a newer one is cached already), so that the
    /// next [`TokenSource::token`] fetches a fresh one.
    pub async fn refused(&self, token: &Secret) {
        let mut state = self.state.lock().await;
        if state.token.as_ref().is_some_and(|t| &t.value == token) {
            state.token = None;
        }
    }

    async fn fetch(&self) -> Result<(Secret, Duration), TokenError> {
        let cfg = &self.cfg;
        let cred_err = |reason: String| TokenError::Credential {
            name: cfg.name.clone(),
            reason,
        };
        match &cfg.credential {
            Credential::ClientSecret(secret) => {
                let secret = secret.read().map_err(|e| cred_err(e.to_string()))?;
                self.client_credentials(Some(secret), &[]).await
            }
            Credential::Certificate {
                key_pem,
                thumbprint,
            } => {
                let assertion = jwt::client_assertion(cfg, key_pem, thumbprint)
                    .map_err(|e| cred_err(e.to_string()))?;
                self.client_credentials(
                    None,
                    &[
                        (
                            "client_assertion_type",
                            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                        ),
                        ("client_assertion", assertion),
                    ],
                )
                .await
            }
            Credential::ServiceAccount {
                client_email,
                key_id,
                key_pem,
                subject,
            } => {
                let assertion =
                    jwt::google_assertion(cfg, client_email, key_id.as_deref(), key_pem, subject)
                        .map_err(|e| cred_err(e.to_string()))?;
                self.jwt_bearer(assertion, &[]).await
            }
            Credential::LineWorks {
                secret,
                service_account,
                key_pem,
            } => {
                let secret = secret.read().map_err(|e| cred_err(e.to_string()))?;
                let assertion = jwt::line_works_assertion(cfg, service_account, key_pem)
                    .map_err(|e| cred_err(e.to_string()))?;
                self.jwt_bearer(
                    assertion,
                    &[
                        ("client_id", cfg.client_id.clone()),
                        ("client_secret", secret.expose().to_string()),
                        ("scope", cfg.scope.clone()),
                    ],
                )
                .await
            }
        }
    }

    /// The client-credentials grant through the `oauth2` crate.
    async fn client_credentials(
        &self,
        secret: Option<Secret>,
        extra: &[(&'static str, String)],
    ) -> Result<(Secret, Duration), TokenError> {
        use oauth2::TokenResponse;
        let cfg = &self.cfg;
        let url = oauth2::TokenUrl::new(cfg.token_url.clone())
            .map_err(|e| self.endpoint_error(format!("`{}` is not a URL: {e}", cfg.token_url)))?;
        let mut client =
            oauth2::basic::BasicClient::new(oauth2::ClientId::new(cfg.client_id.clone()))
                .set_token_uri(url)
                .set_auth_type(oauth2::AuthType::RequestBody);
        if let Some(s) = secret {
            client = client.set_client_secret(oauth2::ClientSecret::new(s.expose().to_string()));
        }
        let mut request = client.exchange_client_credentials();
        for scope in cfg.scope.split_whitespace() {
            request = request.add_scope(oauth2::Scope::new(scope.to_string()));
        }
        for (k, v) in extra {
            request = request.add_extra_param(*k, v.clone());
        }
        match request.request_async(&self.http).await {
            Ok(r) => Ok((
                Secret::new(r.access_token().secret().clone()),
                r.expires_in().unwrap_or(DEFAULT_LIFETIME),
            )),
            Err(e) => Err(self.request_error(e)),
        }
    }

    /// The JWT-bearer grant (RFC 7523), which the `oauth2` crate does not offer: one form POST,
    /// whose answer is read with the crate's token and error types.
    async fn jwt_bearer(
        &self,
        assertion: String,
        extra: &[(&'static str, String)],
    ) -> Result<(Secret, Duration), TokenError> {
        use oauth2::TokenResponse;
        let mut form: Vec<(&str, String)> = vec![
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:jwt-bearer".into(),
            ),
            ("assertion", assertion),
        ];
        form.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
        let resp = self
            .http
            .post(&self.cfg.token_url)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| self.endpoint_error(e.without_url().to_string()))?;
        let status = resp.status();
        // A token response is small: 256 KiB is far beyond any real one.
        let body = crate::egress::read_capped(resp, 256 << 10)
            .await
            .map_err(|e| match e {
                crate::egress::ReadError::Read(e) => {
                    self.endpoint_error(e.without_url().to_string())
                }
                e => self.endpoint_error(e.to_string()),
            })?;
        if status.is_success() {
            let r: oauth2::basic::BasicTokenResponse = serde_json::from_slice(&body)
                .map_err(|e| self.endpoint_error(format!("HTTP {status}, not a token: {e}")))?;
            return Ok((
                Secret::new(r.access_token().secret().clone()),
                r.expires_in().unwrap_or(DEFAULT_LIFETIME),
            ));
        }
        match serde_json::from_slice::<oauth2::basic::BasicErrorResponse>(&body) {
            Ok(e) => Err(self.refused_error(&e)),
            Err(_) => Err(self.endpoint_error(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ))),
        }
    }

    fn endpoint_error(&self, reason: String) -> TokenError {
        TokenError::Endpoint {
            name: self.cfg.name.clone(),
            url: self.cfg.token_url.clone(),
            reason,
        }
    }

    fn refused_error(&self, e: &oauth2::basic::BasicErrorResponse) -> TokenError {
        TokenError::Refused {
            name: self.cfg.name.clone(),
            url: self.cfg.token_url.clone(),
            error: e.error().as_ref().to_string(),
            description: e.error_description().cloned(),
        }
    }

    fn request_error<RE: std::error::Error + 'static>(
        &self,
        e: oauth2::RequestTokenError<RE, oauth2::basic::BasicErrorResponse>,
    ) -> TokenError {
        match e {
            oauth2::RequestTokenError::ServerResponse(r) => self.refused_error(&r),
            oauth2::RequestTokenError::Request(e) => {
                let mut reason = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    reason = format!("{reason}: {s}");
                    source = s.source();
                }
                self.endpoint_error(reason)
            }
            // The body is not shown: a malformed success answer may still hold a token.
            oauth2::RequestTokenError::Parse(e, body) => {
                self.endpoint_error(format!("not a token answer ({} bytes): {e}", body.len()))
            }
            oauth2::RequestTokenError::Other(m) => self.endpoint_error(m),
        }
    }
}

/// The live token sources of one process, by name. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct TokenSources(BTreeMap<String, Arc<TokenSource>>);

impl TokenSources {
    /// One live source per configured table.
    pub fn new<'a>(
        configs: impl IntoIterator<Item = &'a TokenSourceConfig>,
        metrics: &Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self(
            configs
                .into_iter()
                .map(|c| {
                    (
                        c.name.clone(),
                        Arc::new(TokenSource::new(c.clone(), metrics.clone())),
                    )
                })
                .collect(),
        )
    }

    /// The source named `name`.
    pub fn get(&self, name: &str) -> Result<Arc<TokenSource>, TokenError> {
        self.0
            .get(name)
            .cloned()
            .ok_or_else(|| TokenError::Unknown(name.to_string()))
    }
}
