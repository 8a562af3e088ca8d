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
    pub business_day: Option<Spanned<i64>>,
    pub at: Option<Spanned<String>>,
    pub months: Option<Spanned<Vec<Spanned<i64>>>>,
    pub timezone: Option<Spanned<String>>,
    pub dst: Option<Spanned<DstPolicy>>,
    pub calendar: Option<Spanned<CalendarKind>>,
    pub on_closed_day: Option<Spanned<OnClosedDay>>,
    pub catch_up: Option<Spanned<CatchUp>>,
    pub catch_up_window: Option<Spanned<String>>,
    pub overlap: Option<Spanned<Overlap>>,
    pub jitter: Option<Spanned<String>>,
    /// `webhook = true`: started by `POST /hooks/{workflow}` instead of a schedule.
    pub webhook: Option<Spanned<bool>>,
    /// The `[secrets]` entry whose value signs webhook calls (HMAC, as outgoing webhooks).
    pub secret: Option<Spanned<String>>,
    #[serde(default)]
    pub inputs: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
}

/// What a wall-clock time that does not exist, or exists twice, does on a DST change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DstPolicy {
    /// A missing time runs once at the next valid instant; a repeated time runs once (the first).
    #[default]
    First,
    /// A missing time runs at the next valid instant; a repeated time runs twice.
    Both,
    /// A missing time does not run; a repeated time runs once (the first).
    Skip,
}

/// Which business calendar moves fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum CalendarKind {
    /// The Japanese government calendar (行政機関の休日).
    #[serde(rename = "jp-gov")]
    JpGov,
    /// No calendar: every day is a business day.
    #[serde(rename = "none")]
    None,
}

/// What a fire that lands on a closed day does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnClosedDay {
    /// It does not happen.
    #[default]
    Skip,
    /// It moves to the next business day, same wall-clock time.
    Next,
    /// It moves to the previous business day, same wall-clock time.
    Previous,
}

/// What happens to fires missed while the daemon was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// None runs; each is recorded as skipped.
    None,
    /// The most recent runs; the others are recorded as skipped.
    #[default]
    Latest,
    /// All run, in order.
    All,
}

/// What a fire does while an earlier run of the workflow is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Start anyway.
    #[default]
    Allow,
    /// Do not start; record the fire as skipped.
    Skip,
    /// Start when the earlier runs have finished.
    Queue,
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
