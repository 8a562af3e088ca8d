//! `[oauth2.NAME]`: token sources, checked here with their location in the file. Keys, service
//! account files and certificates are read and parsed now, so a broken one is an error at start,
//! not at the first delivery.

use std::collections::BTreeMap;
use std::path::PathBuf;

use toml::Spanned;

use super::ConfigError;
use super::raw::RawOAuth2;
use super::sections::Reader;
use crate::message::settings::Secret;
use crate::oauth::{Credential, Provider, SecretSource, TokenSourceConfig};

/// The Google service-account key file (the fields pmoflow uses).
#[derive(serde::Deserialize)]
struct ServiceAccountFile {
    client_email: String,
    private_key: String,
    private_key_id: Option<String>,
    token_uri: Option<String>,
}

impl Reader<'_> {
    /// Every `[oauth2.NAME]` table.
    pub(super) fn token_sources(
        &mut self,
        tables: &BTreeMap<String, Spanned<RawOAuth2>>,
    ) -> Result<Vec<TokenSourceConfig>, ConfigError> {
        let mut out = Vec::new();
        for (name, t) in tables {
            out.push(self.token_source(name, t)?);
        }
        Ok(out)
    }

    fn token_source(
        &mut self,
        name: &str,
        table: &Spanned<RawOAuth2>,
    ) -> Result<TokenSourceConfig, ConfigError> {
        let t = table.get_ref();
        let provider = Provider::parse(t.provider.get_ref()).ok_or_else(|| {
            self.err(
                t.provider.span(),
                format!("unknown oauth2 provider `{}`", t.provider.get_ref()),
                Some(format!("providers are {}", Provider::NAMES)),
            )
        })?;
        let what = format!("[oauth2.{name}]");
        let need = |this: &Self, v: &Option<Spanned<String>>, key: &str, example: &str| {
            v.as_ref()
                .map(|s| s.get_ref().clone())
                .filter(|s| !s.trim().is_empty())
                .ok_or_else(|| {
                    this.err(
                        table.span(),
                        format!("{what} (provider {}) needs `{key}`", provider.as_str()),
                        Some(format!("e.g. {key} = {example}")),
                    )
                })
        };
        let token_url = match &t.token_url {
            Some(u)
                if u.get_ref().starts_with("https://") || u.get_ref().starts_with("http://") =>
            {
                Some(u.get_ref().clone())
            }
            Some(u) => {
                return Err(self.err(
                    u.span(),
                    format!("`{}` is not an http(s) URL", u.get_ref()),
                    None,
                ));
            }
            None => None,
        };
        let scope = t.scope.as_ref().map(|s| s.get_ref().clone());
        let (token_url, client_id, scope, credential) = match provider {
            Provider::Microsoft => {
                let tenant = need(
                    self,
                    &t.tenant,
                    "tenant",
                    "\"00000000-0000-0000-0000-000000000000\"",
                )?;
                let url = token_url.unwrap_or_else(|| {
                    format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token")
                });
                let client_id = need(
                    self,
                    &t.client_id,
                    "client_id",
                    "\"APPLICATION (CLIENT) ID\"",
                )?;
                let credential = match (&t.certificate_file, &t.private_key_file) {
                    (Some(cert), Some(key)) => {
                        self.no_secret_with(t, "certificate_file")?;
                        let cert_pem = self.read_file(cert, &what, "certificate")?;
                        let thumbprint =
                            crate::oauth::jwt::thumbprint_s256(&cert_pem).map_err(|e| {
                                self.err(
                                    cert.span(),
                                    format!("{what}: {}: {e}", cert.get_ref().display()),
                                    None,
                                )
                            })?;
                        Credential::Certificate {
                            key_pem: self.read_key(key, &what)?,
                            thumbprint,
                        }
                    }
                    (Some(f), None) | (None, Some(f)) => {
                        return Err(self.err(
                            f.span(),
                            format!("{what}: certificate credentials need both `certificate_file` and `private_key_file`"),
                            None,
                        ));
                    }
                    (None, None) => Credential::ClientSecret(self.client_secret(table, &what)?),
                };
                (
                    url,
                    client_id,
                    scope.unwrap_or_else(|| "https://outlook.office365.com/.default".into()),
                    credential,
                )
            }
            Provider::Google => {
                let Some(file) = &t.service_account_file else {
                    return Err(self.err(
                        table.span(),
                        format!("{what} (provider google) needs `service_account_file`"),
                        Some("e.g. service_account_file = \"/etc/pmoflow/google-sa.json\" (the JSON key of a service account with domain-wide delegation)".into()),
                    ));
                };
                let text = self.read_file(file, &what, "service account file")?;
                let sa: ServiceAccountFile = serde_json::from_str(&text).map_err(|e| {
                    self.err(
                        file.span(),
                        format!("{what}: {} is not a service account key file: {e}", file.get_ref().display()),
                        Some("download a JSON key in the Google Cloud console (IAM → Service accounts → Keys)".into()),
                    )
                })?;
                crate::oauth::jwt::check_key(&sa.private_key).map_err(|e| {
                    self.err(
                        file.span(),
                        format!("{what}: private_key of {}: {e}", file.get_ref().display()),
                        None,
                    )
                })?;
                let subject = need(
                    self,
                    &t.subject,
                    "subject",
                    "\"pmo@ministry.go.jp\" (the mailbox to act as)",
                )?;
                let url = token_url
                    .or(sa.token_uri.clone())
                    .unwrap_or_else(|| "https://oauth2.googleapis.com/token".into());
                (
                    url,
                    sa.client_email.clone(),
                    scope.unwrap_or_else(|| "https://mail.google.com/".into()),
                    Credential::ServiceAccount {
                        client_email: sa.client_email,
                        key_id: sa.private_key_id,
                        key_pem: Secret::new(sa.private_key),
                        subject,
                    },
                )
            }
            Provider::Generic => {
                let Some(url) = token_url else {
                    return Err(self.err(
                        table.span(),
                        format!("{what} (provider generic) needs `token_url`"),
                        Some("e.g. token_url = \"https://idp.example.go.jp/oauth2/token\"".into()),
                    ));
                };
                let client_id = need(self, &t.client_id, "client_id", "\"pmoflow\"")?;
                (
                    url,
                    client_id,
                    scope.unwrap_or_default(),
                    Credential::ClientSecret(self.client_secret(table, &what)?),
                )
            }
            Provider::LineWorks => {
                let client_id = need(self, &t.client_id, "client_id", "\"CLIENT ID of the app\"")?;
                let service_account = need(
                    self,
                    &t.service_account,
                    "service_account",
                    "\"xxxxx.serviceaccount@example\"",
                )?;
                let Some(key) = &t.private_key_file else {
                    return Err(self.err(
                        table.span(),
                        format!("{what} (provider line-works) needs `private_key_file`"),
                        Some("the private key issued with the service account in the Developer Console".into()),
                    ));
                };
                let key_pem = self.read_key(key, &what)?;
                (
                    token_url
                        .unwrap_or_else(|| "https://auth.worksmobile.com/oauth2/v2.0/token".into()),
                    client_id,
                    scope.unwrap_or_else(|| "bot".into()),
                    Credential::LineWorks {
                        secret: self.client_secret(table, &what)?,
                        service_account,
                        key_pem,
                    },
                )
            }
        };
        Ok(TokenSourceConfig {
            name: name.to_string(),
            provider,
            token_url,
            client_id,
            scope,
            credential,
        })
    }

    /// `client_secret_env` or `client_secret_file`, exactly one. A variable that is not set is
    /// kept in `secret_errors` (the daemon refuses to start; `validate` says so).
    fn client_secret(
        &mut self,
        table: &Spanned<RawOAuth2>,
        what: &str,
    ) -> Result<SecretSource, ConfigError> {
        let t = table.get_ref();
        match (&t.client_secret_env, &t.client_secret_file) {
            (Some(var), None) => {
                let value = self.secret(
                    var.span(),
                    &format!("{what} client secret"),
                    Some(var.get_ref()),
                    None,
                );
                Ok(SecretSource::Value(value.unwrap_or_else(|| Secret::new(""))))
            }
            (None, Some(file)) => {
                // Read now to catch a wrong path; read again at every fetch (rotation).
                let _ = self.secret(
                    file.span(),
                    &format!("{what} client secret"),
                    None,
                    Some(file.get_ref()),
                );
                Ok(SecretSource::File(file.get_ref().clone()))
            }
            (Some(var), Some(_)) => Err(self.err(
                var.span(),
                format!("{what}: give either `client_secret_env` or `client_secret_file`"),
                None,
            )),
            (None, None) => Err(self.err(
                table.span(),
                format!("{what} has no client secret"),
                Some("add client_secret_env = \"PMOFLOW_OAUTH2_SECRET\" or client_secret_file = \"/etc/pmoflow/oauth2-secret\"".into()),
            )),
        }
    }

    fn no_secret_with(&self, t: &RawOAuth2, with: &str) -> Result<(), ConfigError> {
        if let Some(s) = &t.client_secret_env {
            return Err(self.err(
                s.span(),
                format!("give either a client secret or `{with}`, not both"),
                None,
            ));
        }
        if let Some(s) = &t.client_secret_file {
            return Err(self.err(
                s.span(),
                format!("give either a client secret or `{with}`, not both"),
                None,
            ));
        }
        Ok(())
    }

    fn read_file(
        &self,
        file: &Spanned<PathBuf>,
        what: &str,
        kind: &str,
    ) -> Result<String, ConfigError> {
        std::fs::read_to_string(file.get_ref()).map_err(|e| {
            self.err(
                file.span(),
                format!(
                    "{what}: cannot read the {kind} {}: {e}",
                    file.get_ref().display()
                ),
                None,
            )
        })
    }

    fn read_key(&self, file: &Spanned<PathBuf>, what: &str) -> Result<Secret, ConfigError> {
        let pem = self.read_file(file, what, "private key")?;
        crate::oauth::jwt::check_key(&pem).map_err(|e| {
            self.err(
                file.span(),
                format!("{what}: {}: {e}", file.get_ref().display()),
                None,
            )
        })?;
        Ok(Secret::new(pem))
    }

    /// `oauth2 = "NAME"` of `[imap]`/`[smtp]`: a configured source, and no password beside it.
    pub(super) fn login_source(
        &self,
        table: &str,
        oauth2: &Option<Spanned<String>>,
        password_given: Option<std::ops::Range<usize>>,
        known: &[TokenSourceConfig],
    ) -> Result<Option<String>, ConfigError> {
        let Some(name) = oauth2 else {
            return Ok(None);
        };
        if let Some(span) = password_given {
            return Err(self.err(
                span,
                format!("[{table}] has both `oauth2` and a password: give one of them"),
                Some("with oauth2 the server is logged in to with a token; remove password_env / password_file".into()),
            ));
        }
        if !known.iter().any(|k| &k.name == name.get_ref()) {
            let names: Vec<&str> = known.iter().map(|k| k.name.as_str()).collect();
            return Err(self.err(
                name.span(),
                format!("no [oauth2.{}] table", name.get_ref()),
                Some(if names.is_empty() {
                    format!("add [oauth2.{}] with its provider and credentials (docs/mail-providers.md)", name.get_ref())
                } else {
                    format!("configured sources: {}", names.join(", "))
                }),
            ));
        }
        Ok(Some(name.get_ref().clone()))
    }
}
