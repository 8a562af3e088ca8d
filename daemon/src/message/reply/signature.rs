//! Where a reply's signature starts: a delimited or ruled-off block at the end of the new text,
//! and the sign-off lines (name, organisation, contact and postal address) written straight
//! under the last value; closing phrases that end a value.

use std::sync::LazyLock;

use regex::Regex;

use super::correlate::nfkc;
use super::fields::Wanted;

/// Where a trailing signature starts in the new text (`lines.len()` when there is none): at a
/// `-- ` line, or at a rule (`━━━`, `-----`, `＿＿＿`, `===`, `***`) within the last 12 lines that is
/// not the first line of the text. A block that holds a line of the request's fields is never a
/// signature.
pub(super) fn strip_signature(lines: &[&str], wanted: &Wanted<'_>) -> usize {
    let first = lines.iter().position(|l| !l.trim().is_empty()).unwrap_or(0);
    let no_fields = |from: usize| !lines[from..].iter().any(|l| wanted.is_field_line(l));
    if let Some(i) = lines.iter().position(|l| *l == "-- " || *l == "--")
        && no_fields(i)
    {
        return i;
    }
    let start = lines.len().saturating_sub(12).max(first + 1);
    (start..lines.len())
        .find(|&i| is_rule(lines[i]) && no_fields(i))
        .unwrap_or(lines.len())
}

/// A ruled line: five or more of `━ ─ - ー ＿ _ = ＝ * ＊ 〓 ■ □ + ~ ～`.
pub(super) fn is_rule(line: &str) -> bool {
    let t = line.trim();
    t.chars().count() >= 5
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
        })
}

/// A closing phrase or sign-off line: it ends a value wherever it occurs.
pub(super) fn is_closing(line: &str) -> bool {
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
/// block at the end made of the sender's name, contact lines (telephone, extension, fax, mail
/// address, postal code, web address), postal address lines (the prefecture and city, the
/// building, the floor) and organisation lines, holding at least one name or contact line. The
/// value's first line is always kept.
pub(super) fn signoff_start(lines: &[String], sender: Option<&str>) -> usize {
    let mut cut = lines.len();
    let mut strong = false;
    for j in (1..lines.len()).rev() {
        let l = lines[j].as_str();
        if is_contact_line(l) || is_sender_name(l, sender) {
            strong = true;
        } else if !(is_organisation_line(l) || is_address_line(l)) {
            break;
        }
        cut = j;
    }
    if strong { cut } else { lines.len() }
}

/// A line of a postal address: a prefecture and its city or ward, a block number, a building
/// or a floor (`東京都千代田区霞が関1-2-3`, `中央合同庁舎第5号館 12階`, `〇〇ビル 3F`).
fn is_address_line(line: &str) -> bool {
    static ADDRESS: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(
            r"^(東京都|北海道|京都府|大阪府|\p{Han}{2,3}県)|^\p{Han}{1,4}[市区町村郡]\p{Han}|\d+丁目|\d+番地?|\d+号(館|室)?$|(ビル|庁舎|号館|タワー|センター棟|別館|本館)(\s*\d+\s*(階|F))?$|\d+\s*(階|F)$|^\d{1,4}-\d{1,4}(-\d{1,4})?$",
        )
        .expect("a valid pattern")
    });
    let t = nfkc(line.trim());
    t.chars().count() <= 50 && !t.contains(['。', ':', '：']) && ADDRESS.is_match(&t)
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
