//! Replies as mail clients send them: In-Reply-To and the reply address of a request mail (as
//! `decode_mail` gives it), a plain body, optionally a file attached.

use std::time::Instant;

use serde_json::Value as Json;

/// A plain reply to `request` (In-Reply-To and the reply address), as a mail client sends it.
pub fn reply(from: &str, request: &Json, body: &str) -> Vec<u8> {
    let reply_to = request["reply_to"].as_str().unwrap();
    let reply_to = reply_to.rsplit('<').next().unwrap().trim_end_matches('>');
    format!(
        "From: {from}\r\nTo: {reply_to}\r\nSubject: Re: reply\r\nMessage-ID: <{}.{}@pjmo.example.go.jp>\r\nIn-Reply-To: {irt}\r\nReferences: {irt}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{}\r\n",
        std::process::id(),
        Instant::now().elapsed().as_nanos() + u128::from(fastrand_u32()),
        body.replace('\n', "\r\n"),
        irt = request["message_id"].as_str().unwrap(),
    )
    .into_bytes()
}

/// Whether `m` (as `decode_mail` gives it) is the copy of a request for the people in cc: its
/// own Message-ID, no reply token, no answer link.
pub fn is_copy(m: &Json) -> bool {
    m["message_id"]
        .as_str()
        .is_some_and(|id| id.starts_with("<pmoflow.cc."))
}

/// Unique within the process: a counter, with the clock's nanoseconds against other runs.
pub(crate) fn fastrand_u32() -> u32 {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        .wrapping_add(n.wrapping_mul(1_000_003))
}

/// A reply to `request` with a file attached, as a mail client sends it.
pub fn reply_with_file(
    from: &str,
    request: &Json,
    body: &str,
    name: &str,
    bytes: &[u8],
) -> Vec<u8> {
    use base64::Engine;
    let reply_to = request["reply_to"].as_str().unwrap();
    let reply_to = reply_to.rsplit('<').next().unwrap().trim_end_matches('>');
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let encoded_name: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    // As Outlook labels them.
    let content_type = if name.ends_with(".zip") {
        "application/x-zip-compressed"
    } else {
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    };
    format!(
        "From: {from}\r\nTo: {reply_to}\r\nSubject: Re: reply\r\nMessage-ID: <{}.{}@pjmo.example.go.jp>\r\nIn-Reply-To: {irt}\r\nReferences: {irt}\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{}\r\n--b1\r\nContent-Type: {content_type}\r\nContent-Disposition: attachment; filename*=UTF-8''{encoded_name}\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b1--\r\n",
        std::process::id(),
        Instant::now().elapsed().as_nanos() + u128::from(fastrand_u32()),
        body.replace('\n', "\r\n"),
        lines.join("\r\n"),
        irt = request["message_id"].as_str().unwrap(),
    )
    .into_bytes()
}

/// The nonce of an answer or acknowledgement page.
pub fn nonce_in(html: &str) -> String {
    let start = html.find("name=\"nonce\" value=\"").expect("a nonce") + 20;
    html[start..start + html[start..].find('"').unwrap()].to_string()
}

/// The answer link (`http://…/answer/TOKEN`) in a request mail's body.
pub fn answer_link(request: &Json) -> String {
    request["body"]
        .as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.find("http://").map(|i| l[i..].trim().to_string()))
        .expect("an answer link")
}

/// Opens the answer page of `link` and submits `fields` (`field:NAME` keys) as a browser
/// would: its status and the page it answered with.
pub async fn answer_on_page(link: &str, fields: &[(&str, &str)]) -> (u16, String) {
    let web = reqwest::Client::new();
    let html = web.get(link).send().await.unwrap().text().await.unwrap();
    let nonce = nonce_in(&html);
    let mut form: Vec<(&str, &str)> = vec![("nonce", nonce.as_str())];
    form.extend_from_slice(fields);
    let res = web.post(link).form(&form).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.text().await.unwrap())
}

/// A reply that keeps only the subject tag of `request` (as webmail replying to `From`, or a
/// gateway rewriting the headers, sends it): to the PMO's plain address, no In-Reply-To or
/// References, the subject with its `[#tag]`. `extra` headers go first.
pub fn tag_only_reply(from: &str, request: &Json, body: &str, extra: &str) -> Vec<u8> {
    use base64::Engine;
    let subject = format!("Re: {}", request["subject"].as_str().unwrap());
    let encoded = base64::engine::general_purpose::STANDARD.encode(subject.as_bytes());
    format!(
        "{extra}From: {from}\r\nTo: PMO事務局 <pmo@example.go.jp>\r\nSubject: =?UTF-8?B?{encoded}?=\r\nDate: Mon, 30 Nov 2026 10:00:00 +0900\r\nMessage-ID: <tag-{}.{}@pjmo.example.go.jp>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{}\r\n",
        std::process::id(),
        fastrand_u32(),
        body.replace('\n', "\r\n"),
    )
    .into_bytes()
}

/// The line of `body` holding a link with `path` (e.g. `/answer/`), trimmed.
pub fn url_in(body: &str, path: &str) -> String {
    body.lines()
        .find(|l| l.contains(path))
        .unwrap_or_else(|| panic!("no {path} link in {body}"))
        .trim()
        .to_string()
}
