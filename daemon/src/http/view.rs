//! What the pages show instead of raw values: statuses, triggers and events in Japanese, and a
//! step's output as readable tables (an answer as 項目 / 値 rows), the raw JSON kept behind a
//! `<details>` for those who need it.

use serde_json::{Value as Json, json};

/// A step's status: (badge class, Japanese).
pub(super) fn step_status(status: &str) -> (&'static str, &'static str) {
    match status {
        "succeeded" => ("b-good", "成功"),
        "failed" => ("b-bad", "失敗"),
        "skipped" => ("b-none", "スキップ"),
        "running" => ("b-warn", "実行中"),
        "waiting" => ("b-warn", "待機中"),
        "retry_wait" => ("b-warn", "再試行待ち"),
        _ => ("b-warn", "未開始"),
    }
}

/// How a run was started, in Japanese.
pub(super) fn trigger_ja(kind: &str) -> &'static str {
    match kind {
        "schedule" => "定期実行",
        "webhook" => "Webhook",
        "api" => "API",
        "manual" => "手動",
        "simulate" => "シミュレーション",
        _ => "その他",
    }
}

/// A run event's kind, in Japanese.
pub(super) fn event_ja(kind: &str) -> &'static str {
    match kind {
        "attempt_failed" => "試行失敗",
        "attempt_interrupted" => "試行中断",
        "retried" => "再実行",
        "step_failed" => "ステップ失敗",
        "cancelled" => "中止",
        "cancel_requested" => "中止要求",
        "finished" | "run_finished" => "終了",
        _ => "その他",
    }
}

/// Japanese labels of the keys step outputs use most; other keys are shown as written.
fn label(key: &str) -> String {
    match key {
        "to" => "宛先",
        "status" => "状態",
        "status_ja" => "状態",
        "fields" => "回答内容",
        "text" => "本文・補足",
        "via" => "回答経路",
        "answered_at" => "回答日時",
        "from" => "回答者",
        "attachments" => "添付ファイル",
        "bounce" => "不達の理由",
        "tag" => "整理番号",
        "late" => "期限後",
        "name" => "名称",
        "project" => "プロジェクト",
        "reasons" => "理由",
        "message_id" => "Message-ID",
        "sent" => "送信",
        "count" => "件数",
        "total" => "合計",
        "answered" => "回答数",
        other => other,
    }
    .to_string()
}

/// Keys left out of the tables (they stay in the raw JSON).
fn hidden(key: &str) -> bool {
    matches!(
        key,
        "status" | "history" | "request_message_id" | "message_id" | "context" | "csv"
    )
}

/// A value's status word in Japanese, where it is one.
fn word(v: &str) -> String {
    match v {
        "answered" => "回答済",
        "late" => "期限後回答",
        "unanswered" => "未回答",
        "bounced" => "不達",
        "acknowledged" => "確認済",
        "unacknowledged" => "未確認",
        "email" => "メール",
        "web" => "Webフォーム",
        "true" => "はい",
        "false" => "いいえ",
        other => other,
    }
    .to_string()
}

/// The order keys are shown in (others after them, as stored).
const ORDER: [&str; 12] = [
    "to",
    "status_ja",
    "fields",
    "text",
    "answered_at",
    "via",
    "from",
    "attachments",
    "bounce",
    "project",
    "name",
    "reasons",
];

fn ordered<'a>(keys: impl Iterator<Item = &'a String>) -> Vec<&'a String> {
    let mut keys: Vec<&String> = keys.collect();
    keys.sort_by_key(|k| ORDER.iter().position(|o| o == k).unwrap_or(ORDER.len()));
    keys
}

fn scalar(v: &Json) -> Option<String> {
    match v {
        Json::Null => Some("—".into()),
        Json::String(s) if s.is_empty() => Some("—".into()),
        // An instant as the pages show them (the reader's time zone, to the minute).
        Json::String(s) if s.len() >= 20 && chrono::DateTime::parse_from_rfc3339(s).is_ok() => {
            let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
            Some(
                t.with_timezone(&chrono_tz::Asia::Tokyo)
                    .format("%Y-%m-%d %H:%M")
                    .to_string(),
            )
        }
        Json::String(s) => Some(word(s)),
        Json::Bool(b) => Some(word(&b.to_string())),
        Json::Number(n) => Some(crate::portfolio::grouped(n.as_f64().unwrap_or(0.0))),
        Json::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            Some(a.iter().filter_map(scalar).collect::<Vec<_>>().join("、"))
        }
        _ => None,
    }
}

/// The output as the template draws it: `{kind: "text", text}`, `{kind: "pairs", rows:
/// [{label, text | view}]}` or `{kind: "table", columns, rows}`; nesting stops at `depth`.
pub(super) fn output(v: &Json, depth: usize) -> Json {
    if let Some(t) = scalar(v) {
        return json!({ "kind": "text", "text": t });
    }
    if depth == 0 {
        return json!({ "kind": "text", "text": v.to_string() });
    }
    match v {
        Json::Object(m) => {
            let rows: Vec<Json> = ordered(m.keys())
                .into_iter()
                .filter(|k| !hidden(k))
                .map(|k| json!({ "label": label(k), "view": cell(k, &m[k.as_str()], depth - 1) }))
                .collect();
            json!({ "kind": "pairs", "rows": rows })
        }
        Json::Array(items) => {
            let mut columns: Vec<String> = Vec::new();
            for item in items {
                if let Some(m) = item.as_object() {
                    for k in m.keys() {
                        // A column that is empty in every row says nothing.
                        let any = items.iter().any(|i| {
                            i.get(k).is_some_and(|v| {
                                !matches!(v, Json::Null) && v != "" && v != &json!([])
                            })
                        });
                        if !hidden(k) && !columns.contains(k) && any {
                            columns.push(k.clone());
                        }
                    }
                }
            }
            let columns: Vec<String> = ordered(columns.iter()).into_iter().cloned().collect();
            let rows: Vec<Json> = items
                .iter()
                .map(|item| {
                    Json::Array(
                        columns
                            .iter()
                            .map(|c| cell(c, item.get(c).unwrap_or(&Json::Null), depth - 1))
                            .collect(),
                    )
                })
                .collect();
            json!({
                "kind": "table",
                "columns": columns.iter().map(|c| label(c)).collect::<Vec<_>>(),
                "rows": rows,
            })
        }
        other => json!({ "kind": "text", "text": other.to_string() }),
    }
}

/// A value under `key`: numbers that are identifiers (a tag) are not grouped.
fn cell(key: &str, v: &Json, depth: usize) -> Json {
    match (key, v) {
        ("tag", Json::Number(n)) => json!({ "kind": "text", "text": n.to_string() }),
        _ => output(v, depth),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_reads_as_rows_in_japanese() {
        let out = output(
            &json!([{ "to": "sato@example.go.jp", "status": "answered", "status_ja": "回答済",
                      "fields": { "総合評価": "良好", "予算額": 12000 }, "history": [] }]),
            3,
        );
        assert_eq!(out["kind"], "table");
        assert_eq!(out["columns"], json!(["宛先", "状態", "回答内容"]));
        let fields = &out["rows"][0][2];
        assert_eq!(fields["kind"], "pairs");
        assert_eq!(fields["rows"][0]["label"], "予算額");
        assert_eq!(fields["rows"][0]["view"]["text"], "12,000");
        assert_eq!(out["rows"][0][1]["text"], "回答済");
        let one = output(
            &json!({ "tag": 633169, "answered_at": "2026-12-07T06:40:05.145+00:00" }),
            2,
        );
        assert_eq!(one["rows"][0]["view"]["text"], "2026-12-07 15:40");
        assert_eq!(one["rows"][1]["view"]["text"], "633169");
    }
}
