//! `status-digest`: turns the answers of a PJMO status collection into a portfolio summary —
//! counts by 総合評価, late and unanswered projects, cost overruns, the projects that need a
//! PJMO支援 case — and a CSV with one line per project (UTF-8 with BOM, so that Excel opens it).
//!
//! Input: `projects` (the register: `id`, `name`, `lead`, optional `budget` in yen) and
//! `responses` (one per project: `project`, `status` answered/late/unanswered/bounced,
//! `fields` as the request step typed them, optional `days_late`). Amounts are the typed fields
//! `予算額` and `見込額`, numbers in `amount_unit` (default 万円); `遅延日数` is a number of days.
//! Nothing is read out of sentences: the request's `types` did the reading.

use pmoflow_plugin_sdk::{Context, Descriptor, Guest, StepError, export_plugin};
use serde::Deserialize;
use serde_json::{Map, Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    projects: Vec<Project>,
    #[serde(default)]
    responses: Vec<Response>,
    /// A forecast more than this many percent over budget is an overrun.
    #[serde(default = "ten")]
    overrun_percent: f64,
    /// More than this many days late opens a support case.
    #[serde(default = "thirty")]
    late_days: i64,
    /// What the amount fields count in: 円, 千円, 万円, 百万円 or 億円.
    #[serde(default = "man_yen")]
    amount_unit: String,
}

fn man_yen() -> String {
    "万円".into()
}

/// Yen in one `unit`.
fn yen_per(unit: &str) -> Option<f64> {
    Some(match unit {
        "円" => 1.0,
        "千円" => 1e3,
        "万円" => 1e4,
        "百万円" => 1e6,
        "億円" => 1e8,
        _ => return None,
    })
}

fn ten() -> f64 {
    10.0
}

fn thirty() -> i64 {
    30
}

#[derive(Deserialize)]
struct Project {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    lead: String,
    /// Budget in yen, if the register has it (else read from the answer).
    budget: Option<f64>,
    /// The lead's address: matches a `request` step's output (`to`) without a `project` key.
    #[serde(default)]
    lead_email: String,
}

#[derive(Deserialize)]
struct Response {
    /// The project id; or, for a `request` step's output passed as is, `to` (the lead's address).
    #[serde(default)]
    project: String,
    #[serde(default)]
    to: String,
    #[serde(default = "unanswered")]
    status: String,
    #[serde(default)]
    fields: Map<String, Value>,
    #[serde(default)]
    days_late: Option<i64>,
}

fn unanswered() -> String {
    "unanswered".into()
}

const INPUT_SCHEMA: &str = r#"{
  "type": "object",
  "required": ["projects"],
  "additionalProperties": false,
  "properties": {
    "projects": {
      "type": "array",
      "items": {
        "type": "object",
        "required": ["id"],
        "properties": {
          "id": { "type": "string" },
          "name": { "type": "string" },
          "lead": { "type": "string" },
          "budget": { "type": "number" },
          "lead_email": { "type": "string" }
        }
      }
    },
    "responses": {
      "type": "array",
      "items": {
        "type": "object",
        "properties": {
          "project": { "type": "string" },
          "to": { "type": "string" },
          "status": { "enum": ["answered", "late", "unanswered", "bounced"] },
          "fields": { "type": "object" },
          "days_late": { "type": "integer" }
        }
      }
    },
    "overrun_percent": { "type": "number", "minimum": 0 },
    "late_days": { "type": "integer", "minimum": 0 },
    "amount_unit": { "enum": ["円", "千円", "万円", "百万円", "億円"] }
  }
}"#;

/// The ratings, in the order the summary lists them.
const RATINGS: [&str; 3] = ["良好", "注意", "要対応"];

struct StatusDigest;

impl Guest for StatusDigest {
    fn describe() -> Descriptor {
        Descriptor {
            name: "status-digest".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Portfolio summary and CSV from PJMO status answers".into(),
            input_schema: INPUT_SCHEMA.into(),
            output_schema: r#"{"type":"object"}"#.into(),
            capabilities: vec!["log".into()],
        }
    }

    fn run(_ctx: Context, input: String) -> Result<String, StepError> {
        let input: Input = serde_json::from_str(&input)
            .map_err(|e| StepError::InvalidInput(format!("status-digest: {e}")))?;
        Ok(digest(&input).to_string())
    }
}

fn digest(input: &Input) -> Value {
    let mut by_rating: Map<String, Value> = RATINGS
        .iter()
        .chain(&["未回答"])
        .map(|r| (r.to_string(), json!(0)))
        .collect();
    let (mut late, mut unanswered, mut overruns, mut cases, mut rows) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut csv = String::from(
        "\u{feff}プロジェクトID,プロジェクト名,PJMO,回答状況,総合評価,予算(円),見込(円),超過率(%),遅延日数,支援\r\n",
    );
    for p in &input.projects {
        let r = input.responses.iter().rev().find(|r| {
            r.project == p.id
                || (r.project.is_empty()
                    && !p.lead_email.is_empty()
                    && r.to.eq_ignore_ascii_case(p.lead_email.trim()))
        });
        let status = r.map(|r| r.status.as_str()).unwrap_or("unanswered");
        let answered = matches!(status, "answered" | "late");
        let field = |k: &str| {
            r.and_then(|r| r.fields.get(k))
                .and_then(Value::as_str)
                .map(str::trim)
                .unwrap_or("")
        };
        let rating = if answered {
            normalise_rating(field("総合評価"))
        } else {
            "未回答".to_string()
        };
        if let Some(n) = by_rating.get_mut(&rating) {
            *n = json!(n.as_i64().unwrap_or(0) + 1);
        } else {
            by_rating.insert(rating.clone(), json!(1));
        }
        let number = |k: &str| {
            r.and_then(|r| r.fields.get(k)).and_then(|v| match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().replace(',', "").parse().ok(),
                _ => None,
            })
        };
        let scale = yen_per(&input.amount_unit).unwrap_or(1e4);
        let budget = p.budget.or_else(|| number("予算額").map(|b| b * scale));
        let forecast = number("見込額").map(|f| f * scale);
        let over = match (budget, forecast) {
            (Some(b), Some(f)) if b > 0.0 => Some(((f - b) / b * 1000.0).round() / 10.0),
            _ => None,
        };
        let days_late = r
            .and_then(|r| {
                r.days_late
                    .or_else(|| number("遅延日数").map(|d| d.round() as i64))
            })
            .unwrap_or(0);
        let mut reasons = Vec::new();
        if rating == "要対応" {
            reasons.push("総合評価が要対応".to_string());
        }
        if days_late > input.late_days {
            reasons.push(format!("{days_late}日遅延"));
        }
        if let Some(o) = over
            && o > input.overrun_percent
        {
            reasons.push(format!("経費超過 {o}%"));
            overruns.push(json!({
                "project": p.id, "name": p.name, "budget": budget, "forecast": forecast, "over_percent": o,
            }));
        }
        let entry = json!({ "project": p.id, "name": p.name, "lead": p.lead });
        match status {
            "late" => late.push(entry.clone()),
            "answered" => {}
            _ => unanswered
                .push(json!({ "project": p.id, "name": p.name, "lead": p.lead, "status": status })),
        }
        if !reasons.is_empty() {
            cases.push(json!({ "project": p.id, "name": p.name, "reasons": reasons }));
        }
        let label = match status {
            "answered" => "回答済",
            "late" => "期限後回答",
            "bounced" => "不達",
            _ => "未回答",
        };
        let num = |v: Option<f64>| v.map(|x| format!("{x:.0}")).unwrap_or_default();
        csv.push_str(
            &[
                p.id.clone(),
                p.name.clone(),
                p.lead.clone(),
                label.to_string(),
                rating.clone(),
                num(budget),
                num(forecast),
                over.map(|o| o.to_string()).unwrap_or_default(),
                days_late.to_string(),
                if reasons.is_empty() {
                    String::new()
                } else {
                    reasons.join("・")
                },
            ]
            .iter()
            .map(|c| csv_cell(c))
            .collect::<Vec<_>>()
            .join(","),
        );
        csv.push_str("\r\n");
        rows.push(json!({
            "project": p.id, "name": p.name, "lead": p.lead, "status": status, "status_ja": label,
            "rating": rating,
            "budget": budget, "forecast": forecast, "over_percent": over, "days_late": days_late,
            "support": reasons,
        }));
    }
    let answered = rows
        .iter()
        .filter(|r| matches!(r["status"].as_str(), Some("answered" | "late")))
        .count();
    json!({
        "total": input.projects.len(),
        "answered": answered,
        "by_rating": by_rating,
        "late": late,
        "unanswered": unanswered,
        "cost_overruns": overruns,
        "support_cases": cases,
        "rows": rows,
        "csv": csv,
    })
}

/// `良好`, `注意`, `要対応` as people write them (full-width spaces, 「」, trailing notes).
fn normalise_rating(value: &str) -> String {
    let v: String = value
        .chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '「' | '」' | '【' | '】'))
        .collect();
    RATINGS
        .iter()
        .find(|r| v.starts_with(*r))
        .map(|r| r.to_string())
        .unwrap_or_else(|| {
            if v.is_empty() {
                "記載なし".into()
            } else {
                v
            }
        })
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

export_plugin!(StatusDigest);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratings_as_people_write_them() {
        assert_eq!(normalise_rating("「要対応」（詳細は別紙）"), "要対応");
        assert_eq!(yen_per("千円"), Some(1e3));
    }

    #[test]
    fn request_output_matches_by_lead_address() {
        let input: Input = serde_json::from_value(json!({
            "projects": [
                { "id": "P01", "name": "A", "lead": "佐藤", "lead_email": "sato@a.example", "budget": 10000000 },
                { "id": "P02", "name": "B", "lead": "鈴木", "lead_email": "suzuki@b.example" }
            ],
            "responses": [
                { "to": "SATO@a.example", "status": "answered", "status_ja": "回答済",
                  "fields": { "総合評価": "注意", "予算額": 1000, "見込額": 1200, "遅延日数": 45 } },
                { "to": "suzuki@b.example", "status": "unanswered", "fields": {} }
            ]
        }))
        .unwrap();
        let out = digest(&input);
        assert_eq!(out["rows"][0]["days_late"], 45);
        assert_eq!(out["rows"][0]["over_percent"], 20.0);
        assert_eq!(out["rows"][1]["status"], "unanswered");
        assert_eq!(
            out["support_cases"][0]["reasons"],
            json!(["45日遅延", "経費超過 20%"])
        );
    }
}
