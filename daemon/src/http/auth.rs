//! API tokens: their roles, how a bearer token is checked, and how a new one is made.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use sha2::{Digest, Sha256};

use super::{AppState, api_error};

/// A role of an API token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read only.
    Viewer,
    /// Can trigger, acknowledge, deliver mail.
    Operator,
    /// Everything.
    Admin,
}

impl Role {
    /// From `viewer`, `operator`, `admin`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// An API token as configured: its name, role, public id and argon2 hash (never the token).
#[derive(Debug, Clone)]
pub struct ApiToken {
    /// Who it belongs to (shown in logs and the audit trail).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The public part of the token (`pmo_{id}_{secret}`) that selects the one hash to verify;
    /// `None` for a token made before ids existed, which is verified the slow way.
    pub id: Option<String>,
    /// PHC string.
    pub hash: String,
}

/// Refused token digests remembered at most (the set is emptied when full).
const MAX_REFUSED: usize = 10_000;

/// The configured tokens and what is known of presented ones. An unknown token never reaches
/// argon2: a token of the current form names its id, and only the hash with that id is
/// verified; a token whose id nobody has is refused at once. Verified tokens are remembered by
/// their SHA-256 digest, refused ones too (bounded), so argon2 runs once per distinct token.
/// Verification runs on the blocking pool, one at a time per configured token: a burst against
/// one token's id cannot delay the first use of another.
#[derive(Debug, Default)]
pub(super) struct TokenBook {
    tokens: Vec<ApiToken>,
    /// One lock per configured token, and the last one for tokens without an id.
    locks: Vec<tokio::sync::Mutex<()>>,
    verified: Mutex<HashMap<[u8; 32], (String, Role)>>,
    refused: Mutex<HashSet<[u8; 32]>>,
}

impl TokenBook {
    pub(super) fn new(tokens: Vec<ApiToken>) -> Self {
        let locks = (0..=tokens.len()).map(|_| Default::default()).collect();
        Self {
            tokens,
            locks,
            ..Self::default()
        }
    }

    fn known(&self, digest: &[u8; 32]) -> Option<Option<(String, Role)>> {
        if let Some(w) = lock(&self.verified).get(digest) {
            return Some(Some(w.clone()));
        }
        lock(&self.refused).contains(digest).then_some(None)
    }

    /// The configured token `token` is, if any: (name, role).
    pub(super) async fn verify(&self, token: &str) -> Option<(String, Role)> {
        if token.is_empty() {
            return None;
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(known) = self.known(&digest) {
            return known;
        }
        let id = token_id(token);
        let candidates: Vec<usize> = (0..self.tokens.len())
            .filter(|&i| self.tokens[i].id.as_deref() == id)
            .collect();
        let lock_index = match (id, candidates.first()) {
            (_, None) => return None,
            (Some(_), Some(&i)) => i,
            (None, Some(_)) => self.tokens.len(),
        };
        let _guard = self.locks[lock_index].lock().await;
        // Whoever held the lock may have just verified (or refused) this very token.
        if let Some(known) = self.known(&digest) {
            return known;
        }
        let hashes: Vec<(String, Role, String)> = candidates
            .iter()
            .map(|&i| {
                let t = &self.tokens[i];
                (t.name.clone(), t.role, t.hash.clone())
            })
            .collect();
        let presented = token.to_string();
        let found = tokio::task::spawn_blocking(move || {
            use argon2::PasswordVerifier;
            hashes.into_iter().find_map(|(name, role, hash)| {
                let hash = argon2::PasswordHash::new(&hash).ok()?;
                argon2::Argon2::default()
                    .verify_password(presented.as_bytes(), &hash)
                    .ok()
                    .map(|()| (name, role))
            })
        })
        .await
        .ok()
        .flatten();
        match &found {
            Some(w) => {
                lock(&self.verified).insert(digest, w.clone());
            }
            None => {
                let mut refused = lock(&self.refused);
                if refused.len() >= MAX_REFUSED {
                    refused.clear();
                }
                refused.insert(digest);
            }
        }
        found
    }

    /// The names of configured tokens without an id (made before ids existed).
    pub(super) fn without_id(&self) -> impl Iterator<Item = &str> {
        self.tokens
            .iter()
            .filter(|t| t.id.is_none())
            .map(|t| t.name.as_str())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The id of a token of the current form `pmo_{id}_{secret}`: 8 and 40 lowercase hex digits.
pub fn token_id(token: &str) -> Option<&str> {
    let (id, secret) = token.strip_prefix("pmo_")?.split_once('_')?;
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    (hex(id, ID_LEN) && hex(secret, SECRET_LEN)).then_some(id)
}

/// Whether `id` is a well-formed token id (for the configuration).
pub fn is_token_id(id: &str) -> bool {
    id.len() == ID_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

const ID_LEN: usize = 8;
const SECRET_LEN: usize = 40;

/// The configured token `token` is, if any: (name, role).
pub(crate) async fn verify_token(state: &AppState, token: &str) -> Option<(String, Role)> {
    state.tokens.verify(token).await
}

/// Checks `Authorization: Bearer` against the configured hashes; returns the caller.
pub(super) async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    need: Role,
) -> Result<(String, Role), Response> {
    let unauthorized = || {
        let mut r = api_error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"pmoflow\""),
        );
        r
    };
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        return Err(unauthorized());
    };
    let who = verify_token(state, token).await;
    match who {
        None => {
            tracing::warn!("API call with an unknown bearer token refused");
            Err(unauthorized())
        }
        Some((name, role)) if role < need => {
            tracing::warn!(token = %name, ?role, "API call refused: role too low");
            Err(api_error(
                StatusCode::FORBIDDEN,
                &format!("token `{name}` has role {role:?}; this needs {need:?} or higher"),
            ))
        }
        Some(w) => Ok(w),
    }
}

/// A new API token (shown once), its public id and its PHC hash (what `[[http.tokens]]` keeps).
#[derive(Debug)]
pub struct NewToken {
    /// `pmo_{id}_{secret}`: 4 random bytes of id and 20 of secret, in hex.
    pub token: String,
    /// The token's public id.
    pub id: String,
    /// Argon2id PHC string of `token`.
    pub hash: String,
}

/// Why a token could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The operating system's random source failed.
    #[error("no randomness: {0}")]
    Random(getrandom::Error),
    /// Argon2 refused to hash.
    #[error("cannot hash the token: {0}")]
    Hash(argon2::password_hash::Error),
}

/// A new API token and its PHC hash (for `pmoflow token new`).
pub fn new_token() -> Result<NewToken, TokenError> {
    use argon2::PasswordHasher;
    let mut raw = [0u8; ID_LEN / 2 + SECRET_LEN / 2];
    getrandom::fill(&mut raw).map_err(TokenError::Random)?;
    let id = hex::encode(&raw[..ID_LEN / 2]);
    let token = format!("pmo_{id}_{}", hex::encode(&raw[ID_LEN / 2..]));
    let salt =
        argon2::password_hash::SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    let hash = argon2::Argon2::default()
        .hash_password(token.as_bytes(), &salt)
        .map_err(TokenError::Hash)?
        .to_string();
    Ok(NewToken { token, id, hash })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn book(tokens: &[(&NewToken, Option<&str>)]) -> TokenBook {
        TokenBook::new(
            tokens
                .iter()
                .enumerate()
                .map(|(i, (t, id))| ApiToken {
                    name: format!("t{i}"),
                    role: Role::Viewer,
                    id: id.map(str::to_string),
                    hash: t.hash.clone(),
                })
                .collect(),
        )
    }

    #[test]
    fn a_new_token_names_its_id() {
        let t = new_token().unwrap();
        assert_eq!(token_id(&t.token), Some(t.id.as_str()));
        assert!(is_token_id(&t.id));
        assert_eq!(
            token_id("pmo_0123456789abcdef0123456789abcdef0123456789abcdef"),
            None
        );
        assert_eq!(token_id("pmo_0123abcd_xyz"), None);
    }

    #[tokio::test]
    async fn tokens_are_verified_by_id_and_unknown_ids_never_reach_argon2() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        let book = book(&[(&a, Some(&a.id)), (&b, Some(&b.id))]);
        assert_eq!(book.verify(&a.token).await.unwrap().0, "t0");
        assert_eq!(book.verify(&b.token).await.unwrap().0, "t1");
        // The right secret under another token's id is not that token.
        let swapped = format!("pmo_{}_{}", b.id, &a.token[13..]);
        assert_eq!(book.verify(&swapped).await, None);
        // An unknown id is refused without any verification: nothing is remembered of it.
        let unknown = format!("pmo_ffffffff_{}", &a.token[13..]);
        assert_eq!(book.verify(&unknown).await, None);
        assert!(
            lock(&book.refused).len() == 1,
            "only the swapped token was verified"
        );
        // A token with no id when every configured token has one: refused at once too.
        assert_eq!(book.verify("pmo_legacy").await, None);
        assert!(lock(&book.refused).len() == 1);
    }

    #[tokio::test]
    async fn a_token_without_id_in_the_configuration_still_works() {
        let a = new_token().unwrap();
        let book = book(&[(&a, None)]);
        assert_eq!(
            book.verify(&a.token).await,
            None,
            "its id is not configured"
        );
        let legacy = NewToken {
            token: "pmo_0123456789abcdef0123456789abcdef0123456789abcdef".into(),
            id: String::new(),
            hash: {
                use argon2::PasswordHasher;
                let salt = argon2::password_hash::SaltString::generate(
                    &mut argon2::password_hash::rand_core::OsRng,
                );
                argon2::Argon2::default()
                    .hash_password(
                        b"pmo_0123456789abcdef0123456789abcdef0123456789abcdef",
                        &salt,
                    )
                    .unwrap()
                    .to_string()
            },
        };
        let book = super::TokenBook::new(vec![ApiToken {
            name: "old".into(),
            role: Role::Admin,
            id: None,
            hash: legacy.hash.clone(),
        }]);
        assert_eq!(book.verify(&legacy.token).await.unwrap().1, Role::Admin);
        assert_eq!(book.without_id().collect::<Vec<_>>(), ["old"]);
    }
}
