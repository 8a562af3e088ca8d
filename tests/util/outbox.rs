//! What left the daemon by mail, as the recipients received it: the SMTP sink's Maildir read
//! with Python's `email` package ([`decode_mail`]), waited for, and picked by addressee or
//! subject. And the way back in: a reply handed to `pmoflow inbound` as an MTA pipes it.

use std::path::Path;
use std::time::Duration;

use serde_json::Value as Json;

use crate::mail::is_copy;
use crate::{cli_ok, decode_mail, wait};

/// How long a test waits for mail to arrive: the outbox polls every 200 ms in the tests'
/// configurations, but a loaded machine runs several daemons at once.
pub const MAIL_WAIT: Duration = Duration::from_secs(60);

/// Every message the sink has received into `dir` so far (none if nothing arrived yet).
pub fn received(dir: &Path) -> Vec<Json> {
    if dir.exists() {
        decode_mail(dir)
    } else {
        Vec::new()
    }
}

/// Waits until at least `n` messages arrived in `dir`; returns them all.
pub fn wait_mail(dir: &Path, n: usize) -> Vec<Json> {
    wait_mail_where(dir, &format!("{n} mails in {}", dir.display()), |m| {
        m.len() >= n
    })
}

/// Waits until `done` holds for the messages received so far; returns them all. On timeout
/// the message shows who got what.
pub fn wait_mail_where(dir: &Path, what: &str, done: impl Fn(&[Json]) -> bool) -> Vec<Json> {
    wait::until_blocking(what, MAIL_WAIT, || {
        let m = received(dir);
        if done(&m) {
            return Ok(m);
        }
        Err(m
            .iter()
            .map(|x| (x["to"].clone(), x["subject"].clone()))
            .collect::<Vec<_>>())
    })
}

/// Waits until `n` messages whose subject contains every one of `parts` arrived; returns
/// those messages.
pub fn wait_subject(dir: &Path, parts: &[&str], n: usize) -> Vec<Json> {
    let has = |m: &Json| {
        let subject = m["subject"].as_str().unwrap_or("");
        parts.iter().all(|p| subject.contains(p))
    };
    wait_mail_where(dir, &format!("{n} mails with {parts:?}"), |m| {
        m.iter().filter(|x| has(x)).count() >= n
    })
    .into_iter()
    .filter(has)
    .collect()
}

/// The first `To` address of a message.
pub fn to_addr(m: &Json) -> String {
    m["to"][0].as_str().unwrap().to_string()
}

/// The request (【要回答】, not a cc copy) sent to an address containing `who`.
pub fn mail_to<'a>(mails: &'a [Json], who: &str) -> &'a Json {
    mails
        .iter()
        .find(|m| {
            to_addr(m).contains(who)
                && m["subject"].as_str().unwrap().starts_with("【要回答】")
                && !is_copy(m)
        })
        .unwrap_or_else(|| panic!("no request to {who} in {mails:#?}"))
}

/// The messages whose subject contains `part`, copies for the people in cc left out.
pub fn with_subject<'a>(mails: &'a [Json], part: &str) -> Vec<&'a Json> {
    mails
        .iter()
        .filter(|m| m["subject"].as_str().unwrap_or("").contains(part) && !is_copy(m))
        .collect()
}

/// The copies, for the people in cc, of the messages whose subject contains `part`.
pub fn copies_of<'a>(mails: &'a [Json], part: &str) -> Vec<&'a Json> {
    mails
        .iter()
        .filter(|m| m["subject"].as_str().unwrap_or("").contains(part) && is_copy(m))
        .collect()
}

/// The bare address of a `Name <address>` header value.
pub fn bare(address: &str) -> String {
    address
        .rsplit('<')
        .next()
        .unwrap()
        .trim_end_matches('>')
        .to_string()
}

/// The address a reply to `request` goes to (its `Reply-To`, bare).
pub fn reply_address(request: &Json) -> String {
    bare(request["reply_to"].as_str().expect("a Reply-To"))
}

/// Hands one message to `pmoflow inbound` in `dir` (as an MTA's pipe delivery does); the CLI
/// must succeed; returns what it printed (`…: answer (done)` and the like).
pub fn deliver(dir: &Path, raw: impl AsRef<[u8]>) -> String {
    let path = dir.join(format!("in-{}.eml", fastrand::u64(..)));
    std::fs::write(&path, raw).unwrap();
    cli_ok(dir, &["inbound", path.to_str().unwrap()])
}
