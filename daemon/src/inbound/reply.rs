//! The new part of a reply, and the answers in it.
//!
//! [`new_text`] removes what the sender quoted and signed: pmoflow's own cut-marker line, Gmail's
//! attribution line (`2027年4月1日(木) 9:00 山田 <…>:`, `On … wrote:`), Outlook's header block
//! (`差出人:`/`From:` followed by `送信日時:`/`Sent:`/`日付:`/`Date:`), `-----Original
//! Message-----` and `----- 元のメッセージ -----`, `>` lines (keeping answers written between
//! them), `-- ` signatures, ruled-off Japanese signature blocks, and "sent from my phone" lines.
//!
//! [`parse_fields`] reads `項目: 値` lines (ASCII or full-width colon, `【項目】値`, `■項目：値`)
//! for the requested fields; a value runs over the following lines until the next field or a
//! blank line; values are NFKC-normalised and `「45％」` becomes the number 45. Everything else is
//! kept as free text.

use std::collections::BTreeMap;

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

fn is_phone_signature(line: &str) -> bool {
    let t = line.trim();
    [
        "iPhoneから送信",
        "iPadから送信",
        "Sent from my iPhone",
        "Sent from my iPad",
        "Androidから送信",
        "Sent from Outlook for iOS",
        "Sent from Outlook for Android",
        "Outlook for iOS を入手",
        "Outlook for Android を入手",
    ]
    .iter()
    .any(|s| t.starts_with(s))
}

fn is_history_start(lines: &[&str], i: usize) -> bool {
    let t = lines[i].trim();
    let lower = t.to_lowercase();
    lower.starts_with("-----original message-----")
        || lower.starts_with("----- original message -----")
        || t.contains("元のメッセージ")
        || t.contains("Forwarded message")
        || t.contains("転送されたメッセージ")
        || lower.starts_with("-------- forwarded message")
        || is_outlook_block(lines, i)
        || is_attribution(lines, i)
}

/// `差出人: …` / `From: …` followed within four lines by a date or subject header.
fn is_outlook_block(lines: &[&str], i: usize) -> bool {
    let key = |l: &str| {
        let n = nfkc(l.trim());
        n.split_once(':')
            .map(|(k, _)| k.trim().to_lowercase())
            .unwrap_or_default()
    };
    let first = key(lines[i]);
    if !matches!(first.as_str(), "差出人" | "from" | "送信者") {
        return false;
    }
    lines.iter().skip(i + 1).take(4).any(|l| {
        matches!(
            key(l).as_str(),
            "送信日時" | "sent" | "日付" | "date" | "件名" | "subject" | "宛先" | "to"
        )
    })
}

/// Gmail-style attribution: `2027年4月1日(木) 9:00 山田 太郎 <yamada@…>:` (possibly wrapped over
/// two lines), iPhone's `2027/04/01 9:00、山田 <…>のメール:`, or `On … wrote:`.
fn is_attribution(lines: &[&str], i: usize) -> bool {
    attribution_len(lines, i) > 0
}

fn attribution_len(lines: &[&str], i: usize) -> usize {
    let t = nfkc(lines[i].trim());
    let next = lines.get(i + 1).map(|l| nfkc(l.trim())).unwrap_or_default();
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

/// Reads the requested `fields` from the new text of a reply.
pub fn parse_fields(text: &str, fields: &[String]) -> Answers {
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
    finish(&mut answers, current.take());
    answers.free_text = free.join("\n").trim().to_string();
    answers
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
    wanted
        .iter()
        .find(|(k, _)| *k == key)
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
        let a = parse_fields(&text, &fields());
        assert_eq!(a.fields["総合評価"], Json::from("注意"));
        assert_eq!(a.fields["進捗"], Json::from(95));
        assert_eq!(a.free_text, "よろしくお願いします。");
    }

    #[test]
    fn inline_answers_between_quotes() {
        let body = "お疲れ様です。\n\nOn Thu, Apr 1, 2027 at 9:00 AM PMO <pmo@example.go.jp> wrote:\n> 総合評価:\n総合評価: 良好\n> 課題:\n課題:\n・ベンダー調整\n・要員確保\n> よろしく\n";
        let text = new_text(body);
        let a = parse_fields(&text, &fields());
        assert_eq!(a.fields["総合評価"], Json::from("良好"));
        assert_eq!(a.fields["課題"], Json::from("・ベンダー調整\n・要員確保"));
        assert_eq!(a.free_text, "お疲れ様です。");
    }

    #[test]
    fn outlook_block_and_signature() {
        let body = "【総合評価】要対応\n経費: 「105%」\n\n━━━━━━━━━━\n架空省 情報システム課\n山田 太郎\n━━━━━━━━━━\n\n差出人: PMO事務局 <pmo@example.go.jp>\n送信日時: 2027年4月1日 9:00\n宛先: 山田\n件名: 【要回答】\n";
        let text = new_text(body);
        assert_eq!(text, "【総合評価】要対応\n経費: 「105%」");
        let a = parse_fields(&text, &fields());
        assert_eq!(a.fields["総合評価"], Json::from("要対応"));
        assert_eq!(a.fields["経費"], Json::from(105));
    }
}
