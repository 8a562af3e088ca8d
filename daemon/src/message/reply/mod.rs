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
//! [`read`] does both for a reply to a request; [`parse_fields`] reads `項目: 値` lines (ASCII or full-width colon, `【項目】値`, `■項目：値`)
//! for the requested fields; a value runs over the following lines until the next field, a blank
//! line, or a closing phrase (`よろしくお願いいたします。`, `以上`, `取り急ぎご報告まで`, `Best
//! regards`…); trailing sign-off lines of the last value (the sender's name, a contact signature
//! with telephone or address lines) are not part of it. Values are NFKC-normalised and `「45％」`
//! becomes the number 45. Everything else is kept as free text.
//!
//! The parts: [`history`] (where the new text ends, inline answers, gateway banners),
//! [`signature`] (signatures and sign-offs), [`fields`] (field lines, tables, the request's own
//! form filled in below an unquoted original).

mod fields;
mod history;
mod signature;

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value as Json;

use super::correlate;
use fields::Wanted;
pub use fields::normalise_value;

/// The line pmoflow puts in its request mails: everything from it down is ours.
pub const CUT_MARKER: &str = "――――― この線より上にご記入ください ―――――";

/// Whether the new text of a reply acknowledges: a line that starts with ACK / OK, or contains
/// 了解, 承知, 確認しました or 対応します (after width folding, any case).
pub fn is_ack(text: &str) -> bool {
    text.lines().any(|line| {
        let l = correlate::fold_width(line).trim().to_lowercase();
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

/// A reply as pmoflow reads it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Reading {
    /// The new text: what the sender wrote, without the history and the signature.
    pub new_text: String,
    /// The requested fields found, and the free text.
    pub answers: Answers,
    /// Where the fields were found when not in the new text: `original_form` (the request's own
    /// form filled in below an unquoted original).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found_in: Option<&'static str>,
}

/// Reads a reply's body for the request's `fields`: its new text, then the fields in it; when
/// the new text answers none of them, the request's own form filled in below an unquoted
/// original. `sender` is the sender's display name, if known (see [`parse_fields`]).
pub fn read(body: &str, fields: &[String], sender: Option<&str>) -> Reading {
    let wanted = Wanted::new(fields);
    let new_text = history::new_text(body, &wanted);
    let mut answers = fields::parse(&new_text, &wanted, sender);
    let mut found_in = None;
    if answers.fields.is_empty() && !fields.is_empty() {
        let form = fields::form_in_history(body, &wanted);
        if !form.is_empty() {
            answers.fields = form;
            found_in = Some("original_form");
        }
    }
    Reading {
        new_text,
        answers,
        found_in,
    }
}

/// The new text of a reply (the request's fields unknown).
pub fn new_text(body: &str) -> String {
    history::new_text(body, &Wanted::new(&[]))
}

/// Reads the requested `fields` from the new text of a reply. `sender` is the sender's display
/// name, if known: a trailing line with that name (or a part of it, such as the family name) is a
/// sign-off, not part of the last value.
pub fn parse_fields(text: &str, fields: &[String], sender: Option<&str>) -> Answers {
    fields::parse(text, &Wanted::new(fields), sender)
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
    fn a_ruled_block_with_field_lines_is_not_a_signature() {
        let body = "お疲れ様です。\n\n━━━━━━━━━━\n総合評価: 良好\n進捗: 80%\n━━━━━━━━━━\n";
        let r = read(body, &fields(), None);
        assert_eq!(r.answers.fields["総合評価"], Json::from("良好"));
        assert_eq!(r.answers.fields["進捗"], Json::from(80));
        // Without the request's fields the block is still taken for a signature.
        assert_eq!(new_text(body), "お疲れ様です。");
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
