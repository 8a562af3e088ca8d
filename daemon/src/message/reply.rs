//! The new part of a reply, and the answers in it.
//!
//! [`new_text`] removes what the sender quoted and signed: pmoflow's own cut-marker line,
//! attribution lines (`2027年4月1日(木) 9:00 山田 <…>:`, `On … wrote:`, `At … you wrote:`,
//! Gmail's date-first `2016-03-03 17:21 GMT+01:00 Name <…>:`, and the German, French, Italian,
//! Spanish, Portuguese, Dutch, Scandinavian, Polish, Russian and Chinese forms), header blocks
//! (`差出人:`/`From:`/`Von:`/`De:`… followed by a date, recipient or subject header, also in
//! `*bold*` markup), original-message and forward separators (`-----Original Message-----`,
//! Thunderbird's `-------- Original Message --------`, `----- 元のメッセージ -----`,
//! `Begin forwarded message:`, `-----Ursprüngliche Nachricht-----`, …), `>` lines (keeping answers
//! written between them), `-- ` signatures, ruled-off signature blocks, and "sent from my phone"
//! footers in the usual languages. The rules follow those of Discourse's `email_reply_trimmer`,
//! written anew for the mail PJMO leads and their vendors send.
//!
//! [`parse_fields`] reads `項目: 値` lines (ASCII or full-width colon, `【項目】値`, `■項目：値`)
//! for the requested fields; a value runs over the following lines until the next field, a blank
//! line, or a closing phrase (`よろしくお願いいたします。`, `以上`, `取り急ぎご報告まで`, `Best
//! regards`…); trailing sign-off lines of the last value (the sender's name, a contact signature
//! with telephone or address lines) are not part of it. Values are NFKC-normalised and `「45％」`
//! becomes the number 45. Everything else is kept as free text.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;
use serde_json::Value as Json;

use super::correlate::{fold_width, nfkc};

/// The line pmoflow puts in its request mails: everything from it down is ours.
pub const CUT_MARKER: &str = "――――― この線より上にご記入ください ―――――";

/// The new text of a reply.
pub fn new_text(body: &str) -> String {
    let lines: Vec<&str> = body.lines().collect();
    let mut cut = lines.len();
    for (i, line) in lines.iter().enumerate() {
        if is_history_start(&lines, i) || is_phone_signature(line) {
            cut = i;
            break;
        }
        if is_marker(line) {
            cut = i;
            break;
        }
    }
    // Gmail-style attribution followed by `>` lines with answers in between (inline answers):
    // keep the unquoted lines after it.
    let mut kept: Vec<&str> = lines[..cut].to_vec();
    if cut < lines.len() && is_attribution(&lines, cut) {
        let rest = &lines[cut..];
        let inline: Vec<&str> = rest
            .iter()
            .skip(attribution_len(&lines, cut))
            .take_while(|l| !is_marker(l))
            .filter(|l| !is_quoted(l))
            .copied()
            .collect();
        if inline.iter().any(|l| !l.trim().is_empty()) {
            kept.extend(inline);
        }
    }
    let kept: Vec<&str> = kept.into_iter().filter(|l| !is_quoted(l)).collect();
    let kept = strip_signature(&kept);
    kept.join("\n").trim().to_string()
}

fn is_quoted(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with('>') || t.starts_with('＞') || t.starts_with('|')
}

fn is_marker(line: &str) -> bool {
    let t = nfkc(line);
    t.contains("この線より上") || t.to_lowercase().contains("reply above this line")
}

/// "Sent from my phone" footers (which end the new text), in the languages of the clients
/// ministry staff and their vendors use. Only short lines count: a sentence that happens to
/// start with "Sent from" is text.
fn is_phone_signature(line: &str) -> bool {
    static FOOTERS: LazyLock<Vec<Regex>> = LazyLock::new(|| {
        [
            r"^(iPhone|iPad|Android|Xperia|Galaxy|AQUOS|arrows|Pixel|Outlook|Gmail|Yahoo!?メール|docomo|ドコモ|au|Softbank)\S*\s?から送信",
            r"^Outlook for (iOS|Android) ?を入手",
            r"^[(<]*sent (from|via|with|by) .+",
            r"^get outlook for ",
            r"^\w+ from mobile",
            r"^envoyé (de|depuis) (mon|ma|yahoo)",
            r"^von meinem .+ gesendet",
            r"^diese nachricht wurde von .+ gesendet",
            r"^inviato da ",
            r"^enviado (desde|do|de) (mi|meu|o meu) ",
            r"^verzonden met ",
            r"^verstuurd vanaf mijn ",
            r"^sendt fra min ",
            r"^skickat från min ",
            r"^從我的 ?.+ ?傳送",
            r"^从我的 ?.+ ?发送",
        ]
        .iter()
        .map(|r| Regex::new(&format!("(?i){r}")).expect("a valid pattern"))
        .collect()
    });
    let t = nfkc(line.trim());
    t.chars().count() <= 60 && FOOTERS.iter().any(|r| r.is_match(&t))
}

fn is_history_start(lines: &[&str], i: usize) -> bool {
    let t = lines[i].trim();
    t.contains("元のメッセージ")
        || t.contains("Forwarded message")
        || t.contains("転送されたメッセージ")
        || is_separator(t)
        || is_header_block(lines, i)
        || is_attribution(lines, i)
}

/// Original-message and forward separators: `-----Original Message-----`, Thunderbird's
/// `-------- Original Message --------`, `*----- Forwarded Message -----*`, `Begin forwarded
/// message:` and their translations.
fn is_separator(line: &str) -> bool {
    static SEPARATORS: LazyLock<Vec<Regex>> = LazyLock::new(|| {
        let names = [
            "original message",
            "forwarded message",
            "reply message",
            "ursprüngliche nachricht",
            "original-nachricht",
            "weitergeleitete nachricht",
            "message d'origine",
            "message original",
            "message transféré",
            "mensaje original",
            "mensaje reenviado",
            "messaggio originale",
            "messaggio inoltrato",
            "mensagem original",
            "mensagem encaminhada",
            "oorspronkelijk bericht",
            "doorgestuurd bericht",
            "opprinnelig melding",
            "ursprungligt meddelande",
            "原始邮件",
            "原始郵件",
            "転送メッセージ",
        ]
        .join("|");
        [
            format!(r"^[>*\s]*-{{2,}}\s*({names})\s*-{{2,}}"),
            r"^[>\s]*(begin forwarded message|début du message (transféré|réexpédié)|anfang der weitergeleiteten nachricht|inicio del mensaje reenviado|inizio messaggio inoltrato)\s*:".to_string(),
        ]
        .iter()
        .map(|r| Regex::new(&format!("(?i){r}")).expect("a valid pattern"))
        .collect()
    });
    let t = nfkc(line);
    SEPARATORS.iter().any(|r| r.is_match(&t))
}

/// A header block of a quoted or forwarded message: `差出人: …` / `From: …` / `Von: …` /
/// `De: …` … followed within four lines by a date, recipient or subject header. Keys may be in
/// `*bold*` markup (`*From:* …`, Outlook's plain-text alternative).
fn is_header_block(lines: &[&str], i: usize) -> bool {
    const FROM: &[&str] = &[
        "差出人",
        "送信者",
        "from",
        "von",
        "de",
        "da",
        "van",
        "fra",
        "från",
        "od",
        "发件人",
        "寄件者",
        "expéditeur",
        "absender",
    ];
    const OTHERS: &[&str] = &[
        "送信日時",
        "日付",
        "日時",
        "件名",
        "宛先",
        "cc",
        "sent",
        "date",
        "subject",
        "to",
        "gesendet",
        "datum",
        "an",
        "betreff",
        "envoyé",
        "objet",
        "à",
        "inviato",
        "data",
        "oggetto",
        "a",
        "enviado",
        "enviada em",
        "fecha",
        "para",
        "asunto",
        "assunto",
        "verzonden",
        "aan",
        "onderwerp",
        "sendt",
        "til",
        "emne",
        "skickat",
        "till",
        "ämne",
        "发送时间",
        "日期",
        "收件人",
        "主题",
        "寄件日期",
        "收件者",
        "主旨",
        "wysłano",
        "temat",
        "do",
    ];
    let key = |l: &str| {
        let n = nfkc(l.trim());
        n.trim_start_matches(['>', ' '])
            .split_once(':')
            .map(|(k, _)| k.trim().trim_matches('*').trim().to_lowercase())
            .unwrap_or_default()
    };
    if !FROM.contains(&key(lines[i]).as_str()) {
        return false;
    }
    lines
        .iter()
        .skip(i + 1)
        .take(4)
        .any(|l| OTHERS.contains(&key(l).as_str()))
}

/// Gmail-style attribution: `2027年4月1日(木) 9:00 山田 太郎 <yamada@…>:` (possibly wrapped over
/// two lines), iPhone's `2027/04/01 9:00、山田 <…>のメール:`, or `On … wrote:`.
fn is_attribution(lines: &[&str], i: usize) -> bool {
    attribution_len(lines, i) > 0
}

fn attribution_len(lines: &[&str], i: usize) -> usize {
    let t = nfkc(lines[i].trim());
    let next = lines.get(i + 1).map(|l| nfkc(l.trim())).unwrap_or_default();
    if is_attribution_line(&t) {
        return 1;
    }
    if !next.is_empty() && next.chars().count() < 120 && starts_attribution(&t) {
        let joined = format!("{t} {next}");
        if is_attribution_line(&joined) {
            return 2;
        }
    }
    let japanese = {
        let b = t.as_bytes();
        let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
        digits == 4
            && ((t[4..].starts_with('年') && t.contains('月') && t.contains('日'))
                || (t[4..].starts_with('/') && t.contains(':')))
    };
    let english = t.starts_with("On ") || t.starts_with("on ");
    if !(japanese || english) {
        return 0;
    }
    let ends = |s: &str| s.ends_with(':') || s.ends_with("wrote:") || s.ends_with("書きました:");
    if ends(&t) {
        1
    } else if !next.is_empty() && ends(&next) && next.len() < 120 {
        2
    } else {
        0
    }
}

/// `On … wrote:` and its relatives in the languages of the clients pmoflow hears from
/// (one line, NFKC).
fn is_attribution_line(line: &str) -> bool {
    static ATTRIBUTIONS: LazyLock<Vec<Regex>> = LazyLock::new(|| {
        [
            // English: On … wrote:, At … you wrote:, In message … writes:
            r"^(on|at) .+ (wrote|writes|said|says) ?:?$",
            r"^in message .+ writes ?:?$",
            // Name <address> wrote: / schrieb am …: / a écrit : …
            r"^.{0,80}<?[\w.+-]+@[\w.-]+\.\w{2,}>?\)? (wrote|schrieb|a écrit|escribió|escreveu|ha scritto|skrev|schreef)\b.{0,80}:$",
            r"^.+ wrote on .+:$",
            // German
            r"^am .+ (schrieb|geschrieben|schrieben sie)\b.*:$",
            // French
            r"^le .+ (a écrit|nous a dit) ?:?$",
            // Italian
            r"^il .+ ha scritto ?:?$",
            // Spanish
            r"^el .+ escribió ?:?$",
            // Portuguese
            r"^em .+ escreveu ?:?$",
            // Dutch
            r"^op .+ (schreef|het volgende geschreven)\b.*:?$",
            // Norwegian, Danish, Swedish
            r"^den .+ (skrev|skrev följande)\b.*:$",
            r"^.+ kl\. .+ skrev .+:$",
            // Polish, Slovak
            r"^(dnia|dňa) .+ napisał(\(a\))? ?:?$",
            // Russian, Ukrainian
            r"^.+ (пишет|написал|написала|пише) ?:$",
            // Chinese
            r"^在.+写道 ?:?$",
            r"^於.+寫道 ?:?$",
            // Gmail's date-first forms: 2016-03-03 17:21 GMT+01:00 Name <…>:, 2013/10/2 Name <…>
            r"^20\d\d-\d\d-\d\d \d{1,2}:\d\d GMT[+-]\d\d?:\d\d .+$",
            r"^\d{4}[/.-]\d{1,2}[/.-]\d{1,2}.{1,80}<[^@<>\s]+@[^@<>\s]+\.[^@<>\s]+>:?$",
        ]
        .iter()
        .map(|r| Regex::new(&format!("(?i){r}")).expect("a valid pattern"))
        .collect()
    });
    ATTRIBUTIONS.iter().any(|r| r.is_match(line))
}

/// Whether a line may be the first half of an attribution wrapped over two lines.
fn starts_attribution(line: &str) -> bool {
    let first = line.split(' ').next().unwrap_or("").to_lowercase();
    matches!(
        first.as_str(),
        "on" | "at" | "am" | "le" | "il" | "el" | "em" | "op" | "den" | "dnia" | "dňa"
    ) || line.starts_with('在')
        || line.starts_with(|c: char| c.is_ascii_digit())
}

/// Drops a trailing signature: after a `-- ` line, or a block that starts with a rule
/// (`━━━`, `-----`, `＿＿＿`, `===`, `***`) and has no field lines, within the last 12 lines.
fn strip_signature<'a>(lines: &[&'a str]) -> Vec<&'a str> {
    if let Some(i) = lines.iter().position(|l| *l == "-- " || *l == "--") {
        return lines[..i].to_vec();
    }
    let start = lines.len().saturating_sub(12);
    for i in start..lines.len() {
        let t = lines[i].trim();
        let rule = t.chars().count() >= 5
            && t.chars().all(|c| {
                matches!(
                    c,
                    '━' | '─'
                        | '-'
                        | 'ー'
                        | '＿'
                        | '_'
                        | '='
                        | '＝'
                        | '*'
                        | '＊'
                        | '〓'
                        | '■'
                        | '□'
                        | '+'
                        | '~'
                        | '～'
                )
            });
        if rule {
            return lines[..i].to_vec();
        }
    }
    lines.to_vec()
}

/// Whether the new text of a reply acknowledges: a line that starts with ACK / OK, or contains
/// 了解, 承知, 確認しました or 対応します (after width folding, any case).
pub fn is_ack(text: &str) -> bool {
    text.lines().any(|line| {
        let l = super::correlate::fold_width(line).trim().to_lowercase();
        let first = l.split(|c: char| !c.is_alphanumeric()).next().unwrap_or("");
        first == "ack"
            || first == "ok"
            || first == "acknowledged"
            || ["了解", "承知", "確認しました", "対応します"]
                .iter()
                .any(|w| l.contains(w))
    })
}

/// The answers found in a reply.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Answers {
    /// Requested fields that were filled in.
    pub fields: BTreeMap<String, Json>,
    /// Everything else, trimmed.
    pub free_text: String,
}

/// Reads the requested `fields` from the new text of a reply. `sender` is the sender's display
/// name, if known: a trailing line with that name (or a part of it, such as the family name) is a
/// sign-off, not part of the last value.
pub fn parse_fields(text: &str, fields: &[String], sender: Option<&str>) -> Answers {
    let wanted: Vec<(String, &String)> = fields.iter().map(|f| (key_form(f), f)).collect();
    let mut answers = Answers::default();
    let mut free: Vec<String> = Vec::new();
    let mut current: Option<(&String, Vec<String>)> = None;
    let mut blank_seen = false;
    let finish = |answers: &mut Answers, current: Option<(&String, Vec<String>)>| {
        if let Some((name, lines)) = current {
            let value = lines.join("\n").trim().to_string();
            if !value.is_empty() {
                answers.fields.insert(name.clone(), normalise_value(&value));
            }
        }
    };
    for line in text.lines() {
        if let Some((name, value)) = field_line(line, &wanted) {
            finish(&mut answers, current.take());
            current = Some((name, vec![value]));
            blank_seen = false;
            continue;
        }
        if line.trim().is_empty() {
            blank_seen = true;
            if current.is_none() {
                free.push(String::new());
            }
            continue;
        }
        if current.is_some() && is_closing(line) {
            // よろしくお願いいたします。/ 以上 / Best regards end a value, blank line or not.
            finish(&mut answers, current.take());
            free.push(line.trim_end().to_string());
            blank_seen = false;
            continue;
        }
        match &mut current {
            // A value continues until a blank line; one whose first line was empty may start
            // after a blank line.
            Some((_, lines)) if !blank_seen || lines.iter().all(|l| l.trim().is_empty()) => {
                lines.push(fold_width(line.trim()));
            }
            _ => {
                finish(&mut answers, current.take());
                free.push(line.trim_end().to_string());
            }
        }
        blank_seen = false;
    }
    // The last value may run into a signature written without a delimiter.
    if let Some((_, lines)) = &mut current {
        let cut = signoff_start(lines, sender);
        let tail: Vec<String> = lines.drain(cut..).collect();
        finish(&mut answers, current.take());
        free.extend(tail);
    }
    answers.free_text = free.join("\n").trim().to_string();
    answers
}

/// A closing phrase or sign-off line: it ends a value wherever it occurs.
fn is_closing(line: &str) -> bool {
    static CLOSINGS: LazyLock<Vec<Regex>> = LazyLock::new(|| {
        [
            r"(よろしく|宜しく|よろしゅう)(お願い|おねがい|頼み|たのみ)",
            r"^以上(です|となります|になります|[、。,.\s]|$)",
            r"^取り?急ぎ",
            r"^(失礼|しつれい)(いた|致)?(し)?ます",
            r"^ご(確認|査収|検討|高配)の?(ほど|程)?(を)?(よろしく|宜しく|お願い)",
            r"^(どうぞ|何卒|なにとぞ)",
            r"^((best|kind|warm|warmest) )?regards\b",
            r"^(many )?thanks\b",
            r"^thank you\b",
            r"^(yours )?(sincerely|truly)\b",
            r"^(cheers|best),?$",
            r"^mit freundlichen grüßen",
            r"^(viele |beste )?grüße",
            r"^cordialement",
            r"^bien (à vous|cordialement)",
            r"^(un )?saludo",
            r"^(cordiali )?saluti",
            r"^atenciosamente",
            r"^met vriendelijke groet",
        ]
        .iter()
        .map(|r| Regex::new(&format!("(?i){r}")).expect("a valid pattern"))
        .collect()
    });
    let t = nfkc(line.trim());
    t.chars().count() <= 60 && CLOSINGS.iter().any(|r| r.is_match(&t))
}

/// Where the trailing sign-off of a value's lines starts (`lines.len()` if it has none): a
/// block at the end made of the sender's name and contact lines (telephone, extension, fax,
/// mail address, postal code, web address), with the organisation lines between them. The
/// value's first line is always kept.
fn signoff_start(lines: &[String], sender: Option<&str>) -> usize {
    let mut cut = lines.len();
    let mut strong = false;
    for j in (1..lines.len()).rev() {
        let l = lines[j].as_str();
        if is_contact_line(l) || is_sender_name(l, sender) {
            strong = true;
        } else if !(strong && is_organisation_line(l)) {
            break;
        }
        cut = j;
    }
    if strong { cut } else { lines.len() }
}

fn is_contact_line(line: &str) -> bool {
    static CONTACT: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(
            r"(?i)^(tel|phone|fax|mobile|携帯|電話|内線|直通|代表|e-?mail|mail|メール|url|〒)\b|^〒|^(tel|fax|e-?mail|mail)\s*[:.]|(内線|直通)\s*[0-9]|^[\w.+-]+@[\w.-]+\.\w{2,}$|^https?://\S+$|\b0\d{1,4}-\d{1,4}-\d{3,4}\b",
        )
        .expect("a valid pattern")
    });
    CONTACT.is_match(&nfkc(line.trim()))
}

fn is_organisation_line(line: &str) -> bool {
    const ENDINGS: &[&str] = &[
        "省",
        "庁",
        "局",
        "部",
        "課",
        "室",
        "係",
        "班",
        "センター",
        "事務所",
        "株式会社",
        "PJMO",
        "PMO",
        "Inc.",
        "Ltd.",
        "K.K.",
    ];
    let t = nfkc(line.trim());
    t.chars().count() <= 40
        && !t.contains('。')
        && t.split_whitespace().any(|w| {
            ENDINGS.iter().any(|e| w.ends_with(e))
                || w.starts_with("株式会社")
                || w.starts_with("(株)")
        })
}

/// A line that is the sender's display name, or one of its parts (`山田`, `山田 太郎`, `山田です。`).
fn is_sender_name(line: &str, sender: Option<&str>) -> bool {
    let Some(sender) = sender.map(nfkc).filter(|s| !s.trim().is_empty()) else {
        return false;
    };
    let squash = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    let t = nfkc(line.trim());
    let t = t
        .trim_end_matches(['。', '.', ' '])
        .trim_end_matches("です")
        .trim_end_matches("より")
        .trim();
    if t.is_empty() {
        return false;
    }
    squash(t) == squash(&sender)
        || sender
            .split_whitespace()
            .any(|part| part.chars().count() >= 2 && part == t)
}

/// A field name as compared: NFKC, no spaces or brackets, lower case.
fn key_form(s: &str) -> String {
    fold_width(s)
        .chars()
        .filter(|c| {
            !c.is_whitespace()
                && !matches!(c, '【' | '】' | '[' | ']' | '■' | '・' | '●' | '◆' | '*')
        })
        .collect::<String>()
        .to_lowercase()
}

/// `項目: 値`, `項目：値`, `【項目】値`, `■項目: 値`, `1. 項目: 値` for a wanted field.
fn field_line<'a>(line: &str, wanted: &[(String, &'a String)]) -> Option<(&'a String, String)> {
    let n = fold_width(line.trim());
    let n = n
        .trim_start_matches(|c: char| c.is_ascii_digit() || matches!(c, '.' | ')' | '(' | ' '))
        .trim_start_matches(['■', '・', '●', '◆', '*', '-', ' ']);
    let (key, value) = if let Some(rest) = n.strip_prefix('【') {
        let (k, v) = rest.split_once('】')?;
        (k, v.trim_start_matches([':', ' ']))
    } else {
        let (k, v) = n.split_once(':')?;
        (k, v)
    };
    let key = key_form(key);
    // `総合評価（良好／注意／要対応）: 良好`: the request mail says what a field takes in
    // brackets after its name.
    let base = key
        .strip_suffix(')')
        .and_then(|k| k.rfind('(').map(|i| k[..i].to_string()));
    wanted
        .iter()
        .find(|(k, _)| *k == key)
        .or_else(|| wanted.iter().find(|(k, _)| Some(k) == base.as_ref()))
        .map(|(_, name)| (*name, value.trim().to_string()))
}

/// NFKC, without surrounding 「」; a bare number or percentage becomes a JSON number.
pub fn normalise_value(value: &str) -> Json {
    let v = fold_width(value.trim());
    let v = v
        .strip_prefix('「')
        .and_then(|s| s.strip_suffix('」'))
        .unwrap_or(&v)
        .trim()
        .to_string();
    let numeric = v.trim_end_matches('%').replace(',', "");
    if !numeric.is_empty()
        && numeric
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
        && let Ok(n) = numeric.parse::<f64>()
        && n.is_finite()
    {
        return serde_json::Number::from_f64(n)
            .map(|num| {
                if n.fract() == 0.0 && n.abs() < 1e15 {
                    Json::from(n as i64)
                } else {
                    Json::Number(num)
                }
            })
            .unwrap_or(Json::String(v));
    }
    Json::String(v)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn fields() -> Vec<String> {
        ["総合評価", "進捗", "経費", "リスク", "課題"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn gmail_top_posting() {
        let body = "総合評価：注意\n進捗: ９５％\n\nよろしくお願いします。\n\n2027年4月1日(木) 9:00 PMO事務局 <pmo+abc@example.go.jp>:\n\n> 総合評価:\n> 進捗:\n";
        let text = new_text(body);
        assert_eq!(
            text,
            "総合評価：注意\n進捗: ９５％\n\nよろしくお願いします。"
        );
        let a = parse_fields(&text, &fields(), None);
        assert_eq!(a.fields["総合評価"], Json::from("注意"));
        assert_eq!(a.fields["進捗"], Json::from(95));
        assert_eq!(a.free_text, "よろしくお願いします。");
    }

    #[test]
    fn inline_answers_between_quotes() {
        let body = "お疲れ様です。\n\nOn Thu, Apr 1, 2027 at 9:00 AM PMO <pmo@example.go.jp> wrote:\n> 総合評価:\n総合評価: 良好\n> 課題:\n課題:\n・ベンダー調整\n・要員確保\n> よろしく\n";
        let text = new_text(body);
        let a = parse_fields(&text, &fields(), None);
        assert_eq!(a.fields["総合評価"], Json::from("良好"));
        assert_eq!(a.fields["課題"], Json::from("・ベンダー調整\n・要員確保"));
        assert_eq!(a.free_text, "お疲れ様です。");
    }

    #[test]
    fn outlook_block_and_signature() {
        let body = "【総合評価】要対応\n経費: 「105%」\n\n━━━━━━━━━━\n架空省 情報システム課\n山田 太郎\n━━━━━━━━━━\n\n差出人: PMO事務局 <pmo@example.go.jp>\n送信日時: 2027年4月1日 9:00\n宛先: 山田\n件名: 【要回答】\n";
        let text = new_text(body);
        assert_eq!(text, "【総合評価】要対応\n経費: 「105%」");
        let a = parse_fields(&text, &fields(), None);
        assert_eq!(a.fields["総合評価"], Json::from("要対応"));
        assert_eq!(a.fields["経費"], Json::from(105));
    }
}
