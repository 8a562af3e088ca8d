//! Signed webhooks: `X-Pmoflow-Timestamp: <unix seconds>` and
//! `X-Pmoflow-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
//! A receiver recomputes the HMAC and rejects timestamps outside its tolerance (5 minutes is the
//! default here), which makes a replayed request recognisable. The signature is computed at each
//! delivery attempt, so retries carry a fresh timestamp; `Idempotency-Key` stays the same.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header carrying the signing time.
pub const TIMESTAMP_HEADER: &str = "X-Pmoflow-Timestamp";
/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Pmoflow-Signature";
/// Header carrying the idempotency key (the message id).
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// Default replay window.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// `sha256=<hex>` over `"{timestamp}.{body}"`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    #[allow(clippy::expect_used)]
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Why a signed request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The timestamp header is not a number.
    #[error("malformed timestamp")]
    BadTimestamp,
    /// Outside the tolerance: a replay, or a badly wrong clock.
    #[error("timestamp outside the {0} s window (replayed or stale request)")]
    Stale(i64),
    /// The signature does not match.
    #[error("signature does not match")]
    BadSignature,
}

/// Verifies a signed request at `now` (unix seconds).
pub fn verify(
    secret: &[u8],
    timestamp: &str,
    body: &[u8],
    signature: &str,
    now: i64,
    tolerance: i64,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    if (now - ts).abs() > tolerance {
        return Err(VerifyError::Stale(tolerance));
    }
    let expected = sign(secret, ts, body);
    // Constant-time comparison of equal-length ASCII strings.
    let (a, b) = (expected.as_bytes(), signature.trim().as_bytes());
    if a.len() != b.len() || a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) != 0 {
        return Err(VerifyError::BadSignature);
    }
    Ok(())
}

/// A Slack incoming-webhook payload.
pub fn slack(text: &str) -> serde_json::Value {
    serde_json::json!({ "text": text })
}

/// A Microsoft Teams incoming-webhook payload (MessageCard).
pub fn teams(title: Option<&str>, text: &str) -> serde_json::Value {
    let mut card = serde_json::json!({
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "summary": title.unwrap_or(text),
        "text": text,
    });
    if let (Some(t), Some(map)) = (title, card.as_object_mut()) {
        map.insert("title".into(), serde_json::Value::String(t.to_string()));
    }
    card
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let sig = sign(b"k", 1_700_000_000, b"{\"a\":1}");
        assert!(verify(b"k", "1700000000", b"{\"a\":1}", &sig, 1_700_000_100, 300).is_ok());
        assert_eq!(
            verify(b"k", "1700000000", b"{\"a\":2}", &sig, 1_700_000_100, 300),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify(b"k", "1700000000", b"{\"a\":1}", &sig, 1_700_000_900, 300),
            Err(VerifyError::Stale(300))
        );
        assert_eq!(
            verify(b"x", "1700000000", b"{\"a\":1}", &sig, 1_700_000_000, 300),
            Err(VerifyError::BadSignature)
        );
    }
}
