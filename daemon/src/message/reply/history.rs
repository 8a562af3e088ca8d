//! Where the new text of a reply ends and the history begins, and what of the history the
//! sender wrote into: answers between `>` lines, values typed under a quoted `項目:` line.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;

use super::correlate::nfkc;
use super::fields::{Wanted, field_label};
use super::signature::{is_rule, strip_signature};

/// The new text of a reply to a request for `wanted` fields (empty when they are not known).
pub(super) fn new_text(body: &str, wanted: &Wanted<'_>) -> String {
    let body = body.trim_start_matches('\u{feff}');
    let all: Vec<&str> = body.lines().collect();
    let lines = &all[gateway_banner_end(&all)..];
    let cut = (0..lines.len())
        .find(|&i| {
            is_history_start(lines, i) || is_phone_signature(lines[i]) || is_marker(lines[i])
        })
        .unwrap_or(lines.len());
    let mut kept: Vec<&str> = lines[..cut].to_vec();
    kept.extend(inline_answers(lines, cut));
    let kept = values_under_quoted_labels(&kept);
    let kept: Vec<&str> = kept
        .iter()
        .map(|l| l.as_ref())
        .filter(|l| !is_quoted(l))
        .collect();
    let mut end = strip_signature(&kept, wanted);
    // Mail trackers' invisible marks (Gmail add-ons end a message with `ᐧ`) are not text.
    while end > 0
        && kept[end - 1]
            .trim()
            .chars()
            .all(|c| matches!(c, 'ᐧ' | '\u{200b}' | '\u{feff}') || c.is_whitespace())
    {
        end -= 1;
    }
    kept[..end].join("\n").trim().to_string()
}

/// What the sender wrote into a quoted history: after an attribution (`On … wrote:`) or a quoted
/// line (the client quoted our whole request, cut marker included), the unquoted lines between
/// and after the `>` lines, up to an unquoted history start (an older message not quoted) or our
/// own unquoted cut marker. The quoted lines are returned too (for [`values_under_quoted_labels`]);
/// nothing when the sender wrote nothing there.
fn inline_answers<'a>(lines: &[&'a str], cut: usize) -> Vec<&'a str> {
    let Some(first) = lines.get(cut) else {
        return Vec::new();
    };
    let skip = if is_quoted(first) {
        1
    } else {
        match attribution_len(lines, cut) {
            0 => return Vec::new(),
            n => n,
        }
    };
    // Only a quoted history holds inline answers: after an attribution, the quote must start
    // with its first line (otherwise the older message follows unquoted, all of it history) —
    // unless nothing was written above the attribution: some clients put it on top of the reply.
    if !lines[cut + skip..]
        .iter()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| is_quoted(l))
    {
        if lines[..cut].iter().all(|l| l.trim().is_empty()) {
            return (cut + skip..lines.len())
                .take_while(|&j| !(is_history_start(lines, j) || is_marker(lines[j])))
                .map(|j| lines[j])
                .collect();
        }
        return Vec::new();
    }
    let region: Vec<&str> = (cut + skip..lines.len())
        .take_while(|&j| {
            let l = lines[j];
            is_quoted(l) || !(is_marker(l) || is_history_start(lines, j) || is_phone_signature(l))
        })
        .map(|j| lines[j])
        .collect();
    if region.iter().any(|l| !is_quoted(l) && !l.trim().is_empty()) {
        region
    } else {
        Vec::new()
    }
}

/// A value typed on its own line right under the quoted `> 項目:` line it answers becomes
/// `項目: 値` (unless the sender wrote the label again).
fn values_under_quoted_labels<'a>(lines: &[&'a str]) -> Vec<Cow<'a, str>> {
    let mut out: Vec<Cow<'a, str>> = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let label = i
            .checked_sub(1)
            .map(|p| lines[p])
            .filter(|p| is_quoted(p))
            .and_then(|p| empty_label(unquote(p)));
        match label {
            Some(label)
                if !is_quoted(line)
                    && !line.trim().is_empty()
                    && field_label(line).is_none_or(|l| l != super::fields::key_form(&label)) =>
            {
                out.push(Cow::Owned(format!("{label}: {}", line.trim())));
            }
            _ => out.push(Cow::Borrowed(line)),
        }
    }
    out
}

/// The text of a quoted line, without its `>` marks.
fn unquote(line: &str) -> &str {
    line.trim_start()
        .trim_start_matches(['>', '＞', '|', ' '])
        .trim()
}

/// `項目:` with nothing after the colon (a short label, not a sentence or an attribution).
fn empty_label(text: &str) -> Option<String> {
    let t = text.trim_end();
    let label = t.strip_suffix(':').or_else(|| t.strip_suffix('：'))?.trim();
    let ok = !label.is_empty()
        && label.chars().count() <= 40
        && !label.contains(['。', '、', '<', '@'])
        && !is_attribution_line(&nfkc(t));
    ok.then(|| label.to_string())
}

/// A security gateway's warning at the top of the body (`このメールは組織外から送信されています`,
/// `[EXTERNAL] …`, `CAUTION: This email originated from outside …`), between ruled lines or as
/// the first paragraph: the index of the first line after it (0 when there is none). It is
/// neither the answer nor a signature.
fn gateway_banner_end(lines: &[&str]) -> usize {
    let Some(first) = lines.iter().position(|l| !l.trim().is_empty()) else {
        return 0;
    };
    if is_rule(lines[first]) {
        let close = (first + 1..lines.len().min(first + 12)).find(|&j| is_rule(lines[j]));
        return match close {
            Some(close)
                if lines[first + 1..close]
                    .iter()
                    .any(|l| is_gateway_warning(l)) =>
            {
                close + 1
            }
            _ => 0,
        };
    }
    if is_gateway_warning(lines[first]) {
        let end = (first..lines.len())
            .find(|&j| lines[j].trim().is_empty())
            .unwrap_or(lines.len());
        if end - first <= 6 && end < lines.len() {
            return end;
        }
    }
    0
}

/// A line of a gateway's warning banner.
fn is_gateway_warning(line: &str) -> bool {
    // Most first lines say nothing of the kind: a cheap look before the pattern.
    let lower = line.to_lowercase();
    if !(line.contains(['外', '注', '警'])
        || ["external", "caution", "warning", "outside"]
            .iter()
            .any(|w| lower.contains(w)))
    {
        return false;
    }
    static WARNING: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(
            r"(?i)組織外|外部から|社外から|庁外から|省外から|外部(の)?メール|外部送信者|^\[(external|外部)|^【(外部|注意|警告)|^\*?(caution|warning|external).{0,20}(email|e-mail|message|sender)|originated from outside|from an external sender|external email|このメールは.{0,20}(送信|受信)",
        )
        .expect("a valid pattern")
    });
    WARNING.is_match(&nfkc(line.trim()))
}

pub(super) fn is_quoted(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with('>') || t.starts_with('＞') || t.starts_with('|')
}

pub(super) fn is_marker(line: &str) -> bool {
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
    let line = line.trim();
    if line.chars().count() > 60 {
        return false;
    }
    let t = nfkc(line);
    t.chars().count() <= 60 && FOOTERS.iter().any(|r| r.is_match(&t))
}

pub(super) fn is_history_start(lines: &[&str], i: usize) -> bool {
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
    if t.ends_with(':') && is_attribution_line(&t) {
        return 1;
    }
    // Wrapped over up to five lines (`Name <` / `address>:`; `… schrieb am Fr., 28.` / `Apr.
    // 2017 um 11:53 Uhr:`; `Le … "Name"` / `<address>` / `a écrit :`; a `> wrote:` line): the
    // shortest span that reads as one attribution and ends with a colon.
    if !t.is_empty()
        && (starts_attribution(&t) || t.contains('@') || t.ends_with('<') || t.starts_with('"'))
    {
        let mut joined = t.clone();
        for k in 1..=5 {
            let Some(line) = lines.get(i + k) else {
                break;
            };
            let part = line.trim().trim_start_matches(['>', '＞']).trim();
            if part.chars().count() >= 120 {
                break;
            }
            if part.is_empty() {
                continue;
            }
            joined.push(' ');
            joined.push_str(part);
            if joined.ends_with([':', '：']) && is_attribution_line(&nfkc(&joined)) {
                return k + 1;
            }
        }
    }
    if is_attribution_line(&t) {
        return 1;
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
            r"^.{0,80}<[^<>\s]+@[^<>\s]+> napisał(\(a\))? ?:$",
            // Zoho: ---- On … wrote ----
            r"^-{2,} ?(on|am|le) .+ (wrote|schrieb|a écrit) ?-{2,}$",
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
