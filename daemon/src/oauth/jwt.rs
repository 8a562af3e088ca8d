//! Signed JWTs (RS256, `jsonwebtoken` on `ring`): Microsoft's client assertion, Google's
//! service-account assertion, LINE WORKS's service-account assertion. Each lives ten minutes
//! at most (an hour for Google and LINE WORKS, their documented maximum), and is made fresh for
//! every token fetch.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use super::TokenSourceConfig;
use crate::message::settings::Secret;

/// Why a key, a certificate or a signature could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// The private key is not an RSA key in PEM.
    #[error("not an RSA private key in PEM: {0}")]
    Key(#[source] jsonwebtoken::errors::Error),
    /// Signing failed.
    #[error("cannot sign the JWT: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
    /// The certificate is not a PEM certificate.
    #[error("not a PEM certificate: {0}")]
    Certificate(String),
}

fn now() -> i64 {
    // Token lifetimes are wall-clock facts of the identity provider, not workflow time.
    chrono::Utc::now().timestamp()
}

fn sign(header: &Header, claims: &serde_json::Value, key_pem: &Secret) -> Result<String, JwtError> {
    let key = EncodingKey::from_rsa_pem(key_pem.expose().as_bytes()).map_err(JwtError::Key)?;
    jsonwebtoken::encode(header, claims, &key).map_err(JwtError::Sign)
}

/// Checks that `pem` is a usable RSA private key (for config loading).
pub fn check_key(pem: &str) -> Result<(), JwtError> {
    EncodingKey::from_rsa_pem(pem.as_bytes())
        .map(|_| ())
        .map_err(JwtError::Key)
}

/// Microsoft Entra ID certificate credentials: `client_assertion` (aud = the token endpoint).
pub(super) fn client_assertion(
    cfg: &TokenSourceConfig,
    key_pem: &Secret,
    thumbprint: &str,
) -> Result<String, JwtError> {
    let mut header = Header::new(Algorithm::RS256);
    header.x5t_s256 = Some(thumbprint.to_string());
    let iat = now();
    let claims = json!({
        "aud": cfg.token_url,
        "iss": cfg.client_id,
        "sub": cfg.client_id,
        "jti": uuid::Uuid::now_v7().to_string(),
        "nbf": iat,
        "iat": iat,
        "exp": iat + 600,
    });
    sign(&header, &claims, key_pem)
}

/// Google service account with domain-wide delegation: acts as `subject`.
pub(super) fn google_assertion(
    cfg: &TokenSourceConfig,
    client_email: &str,
    key_id: Option<&str>,
    key_pem: &Secret,
    subject: &str,
) -> Result<String, JwtError> {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = key_id.map(str::to_string);
    let iat = now();
    let claims = json!({
        "iss": client_email,
        "sub": subject,
        "scope": cfg.scope,
        "aud": cfg.token_url,
        "iat": iat,
        "exp": iat + 3600,
    });
    sign(&header, &claims, key_pem)
}

/// LINE WORKS API 2.0: iss = the client id, sub = the service account.
pub(super) fn line_works_assertion(
    cfg: &TokenSourceConfig,
    service_account: &str,
    key_pem: &Secret,
) -> Result<String, JwtError> {
    let header = Header::new(Algorithm::RS256);
    let iat = now();
    let claims = json!({
        "iss": cfg.client_id,
        "sub": service_account,
        "iat": iat,
        "exp": iat + 3600,
    });
    sign(&header, &claims, key_pem)
}

/// `x5t#S256` of a PEM certificate: base64url (no padding) of the SHA-256 of its DER.
pub fn thumbprint_s256(cert_pem: &str) -> Result<String, JwtError> {
    use base64::Engine;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use sha2::Digest;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| JwtError::Certificate(e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&der)))
}
