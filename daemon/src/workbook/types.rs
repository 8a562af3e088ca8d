//! Typed answer fields on every channel: a request's `types` (`{ type = "choice", options = […] }`,
//! `{ type = "number", unit = "万円", min = 0 }`, `"date"`, `"bool"`, `"text"`) govern the mail
//! body, the answer page and the 様式 alike. Values are stored typed (a number is a JSON number
//! in the field's unit); a value that does not fit gets a Japanese sentence naming the field,
//! what was written and what is allowed.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::form::Problem;
use super::value::{Kind, Raw, number_text, typed};

/// Field name → what it takes, as stored with each request (`requests.types`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct FieldTypes(pub BTreeMap<String, Kind>);

impl FieldTypes {
    /// `with.types` as written in a workflow; every problem as a sentence.
    pub fn parse(v: &Json) -> Result<FieldTypes, Vec<String>> {
        let Json::Object(m) = v else {
            return Err(vec![format!(
                "`types` must be a table of field = type, got {v}"
            )]);
        };
        let mut out = BTreeMap::new();
        let mut problems = Vec::new();
        for (field, t) in m {
            match kind_of(field, t) {
                Ok(k) => {
                    out.insert(field.clone(), k);
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        if problems.is_empty() {
            Ok(FieldTypes(out))
        } else {
            Err(problems)
        }
    }

    /// What `field` takes, if declared.
    pub fn get(&self, field: &str) -> Option<&Kind> {
        self.0.get(field)
    }

    /// Whether nothing is declared.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Converts the declared fields of `fields` to their types in place; a value that does not
    /// fit is left as written and reported. Empty values are removed (they answer nothing).
    pub fn apply(&self, fields: &mut BTreeMap<String, Json>) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (field, kind) in &self.0 {
            let Some(v) = fields.get(field) else {
                continue;
            };
            let raw = match (v, kind) {
                (Json::Null, _) => Raw::Empty,
                (Json::String(s), _) => Raw::Text(s.clone()),
                // The body reader turns "100" into a number: a text field keeps it as written.
                (Json::Number(n), Kind::Text | Kind::Choice { .. }) => Raw::Text(n.to_string()),
                (Json::Number(n), _) => Raw::Number(n.as_f64().unwrap_or(f64::NAN)),
                (Json::Bool(b), _) => Raw::Bool(*b),
                (other, _) => Raw::Text(other.to_string()),
            };
            match typed(&raw, kind, false) {
                Ok(Some(value)) => {
                    fields.insert(field.clone(), value);
                }
                Ok(None) => {
                    fields.remove(field);
                }
                Err(why) => problems.push(Problem {
                    field: Some(field.clone()),
                    at: None,
                    message: format!("{field}{why}"),
                }),
            }
        }
        problems
    }

    /// What a field takes, in a few words for the request mail and the answer page:
    /// `良好／注意／要対応`, `万円・0以上`, `日付`; `None` for free text.
    pub fn hint(&self, field: &str) -> Option<String> {
        hint(self.0.get(field)?)
    }
}

/// The fields as a form to fill in, one `項目（what it takes）: ` line each. The reply reader
/// takes `総合評価（良好／注意／要対応）: 良好` as `総合評価`.
pub fn form_lines(fields: &[String], types: &FieldTypes) -> String {
    fields
        .iter()
        .map(|f| match types.hint(f) {
            Some(h) => format!("{f}（{h}）: \n"),
            None => format!("{f}: \n"),
        })
        .collect()
}

/// A kind in a few words (see [`FieldTypes::hint`]).
pub fn hint(kind: &Kind) -> Option<String> {
    match kind {
        Kind::Auto | Kind::Text => None,
        Kind::Choice { choices } => Some(choices.join("／")),
        Kind::Number { unit, min, max } => {
            let u = unit.as_deref().unwrap_or("");
            let mut parts = vec![if u.is_empty() {
                "数値".to_string()
            } else {
                u.to_string()
            }];
            match (min, max) {
                (Some(a), Some(b)) => {
                    parts.push(format!("{}〜{}", number_text(*a), number_text(*b)))
                }
                (Some(a), None) => parts.push(format!("{}以上", number_text(*a))),
                (None, Some(b)) => parts.push(format!("{}以下", number_text(*b))),
                (None, None) => {}
            }
            Some(parts.join("・"))
        }
        Kind::Date => Some("日付".into()),
        Kind::Bool => Some("はい／いいえ".into()),
    }
}

/// A `types` entry that does not declare a type (the workflow author's mistake, a sentence).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TypeDeclError(pub String);

impl From<String> for TypeDeclError {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// One entry of `types` as written: a name (`"date"`), or a table with `type` and, for numbers,
/// `unit`, `min`, `max`, for choices `options`.
pub fn kind_of(field: &str, v: &Json) -> Result<Kind, TypeDeclError> {
    let bad = || {
        format!(
            "`types.{field}` must be {} (or a table with `type`, and `unit`/`min`/`max` for a number or `options` for a choice), got {v}",
            Kind::NAMES
        )
    };
    let (name, table) = match v {
        Json::String(s) => (s.as_str(), None),
        Json::Object(m) => (m.get("type").and_then(Json::as_str).unwrap_or(""), Some(m)),
        _ => return Err(TypeDeclError(bad())),
    };
    let known = ["type", "unit", "min", "max", "options"];
    if let Some(k) = table.and_then(|m| m.keys().find(|k| !known.contains(&k.as_str()))) {
        return Err(TypeDeclError(format!(
            "`types.{field}` has an unknown key `{k}` (known: type, unit, min, max, options)"
        )));
    }
    let get = |k: &str| table.and_then(|m| m.get(k));
    if name == "choice" {
        let options: Vec<String> = match get("options") {
            Some(Json::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|o| o.as_str().map(str::to_string).ok_or_else(bad))
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(TypeDeclError(format!(
                    "`types.{field}` is a choice and needs `options`, a non-empty list such as [\"良好\", \"注意\", \"要対応\"]"
                )));
            }
        };
        return Ok(Kind::Choice { choices: options });
    }
    if get("options").is_some() {
        return Err(TypeDeclError(format!(
            "`types.{field}`: `options` belongs to type = \"choice\""
        )));
    }
    let unit = match get("unit") {
        None => None,
        Some(Json::String(u)) => Some(u.as_str()),
        Some(_) => return Err(TypeDeclError(bad())),
    };
    let bound = |k: &str| match get(k) {
        None => Ok(None),
        Some(Json::Number(n)) => Ok(n.as_f64()),
        Some(other) => Err(TypeDeclError(format!(
            "`types.{field}.{k}` must be a number, got {other}"
        ))),
    };
    let (min, max) = (bound("min")?, bound("max")?);
    if (min.is_some() || max.is_some() || unit.is_some()) && name != "number" {
        return Err(TypeDeclError(format!(
            "`types.{field}`: `unit`, `min` and `max` belong to type = \"number\""
        )));
    }
    if let (Some(a), Some(b)) = (min, max)
        && a > b
    {
        return Err(TypeDeclError(format!(
            "`types.{field}`: min ({a}) is greater than max ({b})"
        )));
    }
    match Kind::named(name, unit).ok_or_else(bad)? {
        Kind::Number { unit, .. } => Ok(Kind::Number { unit, min, max }),
        k => Ok(k),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is the failure
mod tests {
    use serde_json::json;

    use super::*;

    fn types() -> FieldTypes {
        FieldTypes::parse(&json!({
            "総合評価": { "type": "choice", "options": ["良好", "注意", "要対応"] },
            "予算額": { "type": "number", "unit": "万円", "min": 0 },
            "遅延日数": { "type": "number", "unit": "日", "min": 0 },
            "報告日": "date",
            "目標・KPI": "text",
        }))
        .unwrap()
    }

    #[test]
    fn body_values_are_typed_and_refusals_name_the_field() {
        let mut f: BTreeMap<String, Json> = [
            ("総合評価", json!("「注意」")),
            ("予算額", json!("1億2,000万円")),
            ("遅延日数", json!(12)),
            ("報告日", json!("令和9年4月1日")),
            ("目標・KPI", json!(100)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert!(types().apply(&mut f).is_empty());
        assert_eq!(f["総合評価"], json!("注意"));
        assert_eq!(f["予算額"], json!(12000));
        assert_eq!(f["遅延日数"], json!(12));
        assert_eq!(f["報告日"], json!("2027-04-01"));
        assert_eq!(f["目標・KPI"], json!("100"));

        let mut bad: BTreeMap<String, Json> = [
            ("総合評価".to_string(), json!("まあまあ")),
            ("予算額".to_string(), json!("未定")),
            ("遅延日数".to_string(), json!(-2)),
        ]
        .into_iter()
        .collect();
        let problems: Vec<String> = types()
            .apply(&mut bad)
            .into_iter()
            .map(|p| p.message)
            .collect();
        assert_eq!(
            problems,
            [
                "予算額は数値で入力してください（入力値: 「未定」）",
                "総合評価は「良好」「注意」「要対応」のいずれかを選択してください（入力値: 「まあまあ」）",
                "遅延日数は0日以上の数値で入力してください（入力値: 「-2」）",
            ]
        );
        assert_eq!(bad["総合評価"], json!("まあまあ"), "kept as written");
    }

    #[test]
    fn declarations_are_checked() {
        let e = |v: Json| kind_of("x", &v).unwrap_err().0;
        assert!(e(json!({ "type": "choice" })).contains("needs `options`"));
        assert!(e(json!({ "type": "text", "unit": "円" })).contains("belong to type = \"number\""));
        assert!(e(json!({ "type": "number", "min": 5, "max": 1 })).contains("greater than max"));
        assert!(e(json!({ "type": "number", "maximum": 1 })).contains("unknown key `maximum`"));
        assert!(e(json!("integer")).contains("\"choice\""));
        assert_eq!(
            types().hint("総合評価").as_deref(),
            Some("良好／注意／要対応")
        );
        assert_eq!(types().hint("予算額").as_deref(), Some("万円・0以上"));
        assert_eq!(types().hint("目標・KPI"), None);
    }
}
