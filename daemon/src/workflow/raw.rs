//! The workflow file exactly as written: serde structs with spans, `deny_unknown_fields`
//! everywhere, so that a typo is an error with a line and column rather than a silent default.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A workflow file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkflow {
    pub id: Spanned<String>,
    pub name: Option<Spanned<String>>,
    pub description: Option<Spanned<String>>,
    #[serde(default)]
    pub triggers: Vec<Spanned<RawTrigger>>,
    #[serde(default)]
    pub inputs: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    pub steps: Vec<Spanned<RawStep>>,
}

/// One `[[triggers]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrigger {
    pub cron: Option<Spanned<String>>,
    pub timezone: Option<Spanned<String>>,
    #[serde(default)]
    pub inputs: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
}

/// One `[[steps]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub id: Spanned<String>,
    pub name: Option<Spanned<String>>,
    pub action: Spanned<String>,
    #[serde(default)]
    pub with: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(rename = "if")]
    pub condition: Option<Spanned<String>>,
    pub foreach: Option<Spanned<String>>,
    pub parallelism: Option<Spanned<i64>>,
    pub retry: Option<Spanned<RawRetry>>,
    pub timeout: Option<Spanned<String>>,
}

/// `retry = { attempts, backoff, max_backoff }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: Option<Spanned<i64>>,
    pub backoff: Option<Spanned<String>>,
    pub max_backoff: Option<Spanned<String>>,
}

/// Converts a TOML value to JSON; datetimes become their RFC 3339 text.
pub fn toml_to_json(value: &toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(items) => J::Array(items.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => J::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}
