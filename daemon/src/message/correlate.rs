//! Which request a message answers. Strongest first: the single-use token in a recipient address
//! (sub-addressing, `pmo+{token}@example.go.jp`), then our own Message-ID in `In-Reply-To` /
//! `References` (`<pmoflow.{token}@host>`), then the short tag in the subject (`[#12]`, matched
//! after NFKC normalisation so that `［＃１２］` counts). The caller looks the keys up in that
//! order and always checks the sender as well.

use serde::Serialize;
use unicode_normalization::UnicodeNormalization;

use super::inbound::Inbound;

/// Tokens carry 130 bits of randomness: 26 characters of lower-case base32.
pub const TOKEN_LEN: usize = 26;
const TOKEN_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A correlation key found in a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "by", content = "value", rename_all = "snake_case")]
pub enum Key {
    /// The token in a recipient address.
    Address(String),
    /// The token in a referenced Message-ID of ours.
    MessageId(String),
    /// The subject tag.
    SubjectTag(u64),
}

/// The operating system gave no randomness (a token cannot be made; retry later).
#[derive(Debug, Clone, thiserror::Error)]
#[error("no system randomness: {0}")]
pub struct NoRandomness(pub getrandom::Error);

/// A new random token from the operating system's CSPRNG (5 bits per character: 130 bits).
pub fn new_token() -> Result<String, NoRandomness> {
    let mut bytes = [0u8; TOKEN_LEN];
    getrandom::fill(&mut bytes).map_err(NoRandomness)?;
    Ok(bytes
        .iter()
        .map(|b| TOKEN_ALPHABET[usize::from(b & 31)] as char)
        .collect())
}

/// Whether `s` looks like a token.
pub fn is_token(s: &str) -> bool {
    s.len() == TOKEN_LEN && s.bytes().all(|b| TOKEN_ALPHABET.contains(&b))
}

/// Compares two tokens in constant time.
pub fn token_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The reply address for `token` under `pattern` (which contains `{token}`).
pub fn reply_address(pattern: &str, token: &str) -> String {
    pattern.replace("{token}", token)
}

/// Our Message-ID for a request mail carrying `token` (without angle brackets).
pub fn message_id(token: &str, domain: &str) -> String {
    format!("pmoflow.{token}@{domain}")
}

/// The subject tag of request number `n`.
pub fn subject_tag(n: u64) -> String {
    format!("[#{n}]")
}

/// NFKC: full-width ASCII to ASCII, half-width katakana to full-width, and so on.
pub fn nfkc(s: &str) -> String {
    // Most lines are already in NFKC (ASCII, kana, kanji): a quick check spares the normaliser.
    if unicode_normalization::is_nfkc_quick(s.chars()) == unicode_normalization::IsNormalized::Yes {
        return s.to_string();
    }
    s.nfkc().collect()
}

/// Width folding for answers: full-width ASCII (`：`, `１２`, `％`) to ASCII, the ideographic
/// space to a space, half-width katakana to full-width; unlike NFKC it keeps `①`, `～` and other
/// characters that carry meaning in Japanese text.
pub fn fold_width(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut kana = String::new();
    for c in s.chars() {
        if ('\u{ff61}'..='\u{ff9f}').contains(&c) {
            kana.push(c);
            continue;
        }
        if !kana.is_empty() {
            out.extend(kana.nfkc());
            kana.clear();
        }
        match c {
            '\u{ff01}'..='\u{ff5d}' => {
                out.push(char::from_u32(c as u32 - 0xfee0).unwrap_or(c));
            }
            '\u{3000}' => out.push(' '),
            _ => out.push(c),
        }
    }
    out.extend(kana.nfkc());
    out
}

/// Every key in `msg`, strongest first. `pattern` is the reply-address pattern.
pub fn keys(msg: &Inbound, pattern: &str) -> Vec<Key> {
    let mut keys = Vec::new();
    let pattern = pattern.to_lowercase();
    if let Some((prefix, suffix)) = pattern.split_once("{token}") {
        for r in &msg.recipients {
            if let Some(mid) = r
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(suffix))
                && is_token(mid)
            {
                push(&mut keys, Key::Address(mid.to_string()));
            }
        }
    }
    for id in &msg.references {
        if let Some(token) = id
            .strip_prefix("pmoflow.")
            .and_then(|rest| rest.split('@').next())
            // Reminders are `pmoflow.{token}.r2@…`.
            .and_then(|local| local.split('.').next())
            && is_token(token)
        {
            push(&mut keys, Key::MessageId(token.to_string()));
        }
    }
    if let Some(n) = find_tag(&msg.subject) {
        push(&mut keys, Key::SubjectTag(n));
    }
    keys
}

fn push(keys: &mut Vec<Key>, key: Key) {
    if !keys.contains(&key) {
        keys.push(key);
    }
}

/// `[#12]` anywhere in the subject, after NFKC (`［＃１２］`, `[ #12 ]`).
pub fn find_tag(subject: &str) -> Option<u64> {
    let s = nfkc(subject);
    let mut rest = s.as_str();
    while let Some(i) = rest.find('[') {
        rest = &rest[i + 1..];
        let inner = rest.split(']').next().unwrap_or("").trim();
        if let Some(num) = inner.strip_prefix('#')
            && let Ok(n) = num.trim().parse::<u64>()
        {
            return Some(n);
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_tags() {
        let t = new_token().unwrap();
        assert!(is_token(&t), "{t}");
        assert_ne!(t, new_token().unwrap());
        assert!(token_eq(&t, &t.clone()));
        assert!(!token_eq(&t, &new_token().unwrap()));
        assert_eq!(
            find_tag("Re: 【要回答】11月分状況報告 ［＃１２］"),
            Some(12)
        );
        assert_eq!(find_tag("RE: [#7] 状況"), Some(7));
        assert_eq!(find_tag("[PMO] 状況"), None);
    }
}
