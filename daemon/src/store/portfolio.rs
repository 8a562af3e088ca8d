//! The portfolio: every accepted answer of a request with a `record` kept as typed values per
//! (workflow, subject, period, field), and 未回答 for a period nobody answered. Written in the
//! transaction that accepts the answer (or closes the request), so it is never written twice for
//! one answer and never missing for an accepted one; read by the pages, the API and the exports.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sqlx::Row;

use super::{Result, Store, StoreError, from_ms};

/// Whom and which period a request's answers are about (`with.record`, rendered).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RecordKey {
    /// The subject's id (a project id).
    pub subject: String,
    /// The period (`2027-04`, `2027Q1`, `2027年度`): compared as text, so write it sortable.
    pub period: String,
    /// The subject's display name.
    #[serde(default)]
    pub name: String,
    /// Who is responsible for the subject.
    #[serde(default)]
    pub owner: String,
}

/// One typed value of a period.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct PortfolioValue {
    /// The value: a number in the field's unit, text, an ISO date or a boolean.
    pub value: Json,
    /// What a number counts in (`万円`, `日`), as the request declared it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The field's place in the request's `fields`.
    #[serde(skip)]
    pub position: i64,
    /// Where it came from: `email`, `web` or `workbook` (the 様式).
    pub source: String,
    /// The answer it came from.
    pub answer_id: String,
    /// Given after the deadline.
    pub late: bool,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// When a correction replaced it (history only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub superseded_at: Option<DateTime<Utc>>,
}

/// One subject in one period.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct PortfolioEntry {
    /// The workflow that asked.
    pub workflow_id: String,
    /// The subject's id.
    pub subject: String,
    /// Its display name.
    pub name: String,
    /// Its owner.
    pub owner: String,
    /// The period.
    pub period: String,
    /// `answered` or `unanswered`.
    pub status: String,
    /// How the latest accepted answer came (`email`, `web`, …); none when unanswered.
    pub via: Option<String>,
    /// The latest accepted answer was late.
    pub late: bool,
    /// The run that asked.
    pub run_id: String,
    /// When the entry was last written.
    pub recorded_at: DateTime<Utc>,
    /// The current value of each field.
    pub values: BTreeMap<String, PortfolioValue>,
}

/// A subject with its display name and owner.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Subject {
    /// The workflow.
    pub workflow_id: String,
    /// The subject's id.
    pub subject: String,
    /// Display name.
    pub name: String,
    /// Owner.
    pub owner: String,
}

/// Which part of the portfolio to read.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
pub struct PortfolioQuery {
    /// Only this workflow.
    pub workflow: Option<String>,
    /// Only this subject.
    pub subject: Option<String>,
    /// Periods from this one (inclusive, compared as text).
    pub from: Option<String>,
    /// Periods up to this one (inclusive).
    pub to: Option<String>,
}

/// An accepted answer to record (inside the transaction that accepts it).
pub(super) struct Accepted<'a> {
    pub workflow_id: &'a str,
    pub run_id: &'a str,
    pub token: &'a str,
    pub record: &'a RecordKey,
    pub answer_id: &'a str,
    pub via: &'a str,
    pub fields: &'a Json,
    pub form_fields: &'a [String],
    pub types: &'a crate::workbook::FieldTypes,
    pub order: &'a [String],
    pub late: bool,
    pub now: i64,
}

/// Records an accepted answer inside a transaction: the subject, the period's entry, and each
/// non-empty field as the current value (the one it replaces becomes history).
macro_rules! record_accepted {
    ($tx:expr, $a:expr) => {{
        let a: &$crate::store::portfolio::Accepted<'_> = $a;
        $crate::store::portfolio::upsert_subject!($tx, a.workflow_id, a.record, a.now);
        sqlx::query(
            "INSERT INTO portfolio_entries (workflow_id, subject, period, status, via, answer_id, \
             late, run_id, token, recorded_at) VALUES ($1, $2, $3, 'answered', $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (workflow_id, subject, period) DO UPDATE SET status = 'answered', \
             via = excluded.via, answer_id = excluded.answer_id, late = excluded.late, \
             run_id = excluded.run_id, token = excluded.token, recorded_at = excluded.recorded_at",
        )
        .bind(a.workflow_id)
        .bind(&a.record.subject)
        .bind(&a.record.period)
        .bind(a.via)
        .bind(a.answer_id)
        .bind(i64::from(a.late))
        .bind(a.run_id)
        .bind(a.token)
        .bind(a.now)
        .execute(&mut *$tx)
        .await?;
        if let Some(fields) = a.fields.as_object() {
            for (field, value) in fields {
                if value.is_null() || value.as_str().is_some_and(|s| s.trim().is_empty()) {
                    continue;
                }
                sqlx::query(
                    "UPDATE portfolio_values SET superseded_at = $1 WHERE workflow_id = $2 \
                     AND subject = $3 AND period = $4 AND field = $5 AND superseded_at IS NULL \
                     AND answer_id <> $6",
                )
                .bind(a.now)
                .bind(a.workflow_id)
                .bind(&a.record.subject)
                .bind(&a.record.period)
                .bind(field)
                .bind(a.answer_id)
                .execute(&mut *$tx)
                .await?;
                let source = if a.form_fields.iter().any(|f| f == field) {
                    "workbook"
                } else {
                    a.via
                };
                sqlx::query(
                    "INSERT INTO portfolio_values (workflow_id, subject, period, field, answer_id, \
                     value, unit, position, source, late, recorded_at) VALUES ($1, $2, $3, $4, $5, \
                     $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
                )
                .bind(a.workflow_id)
                .bind(&a.record.subject)
                .bind(&a.record.period)
                .bind(field)
                .bind(a.answer_id)
                .bind(value.to_string())
                .bind(match a.types.get(field) {
                    Some($crate::workbook::Kind::Number { unit, .. }) => unit.clone(),
                    _ => None,
                })
                .bind(a.order.iter().position(|f| f == field).unwrap_or(a.order.len()) as i64)
                .bind(source)
                .bind(i64::from(a.late))
                .bind(a.now)
                .execute(&mut *$tx)
                .await?;
            }
        }
    }};
}
pub(super) use record_accepted;

/// The subject's name and owner, as the latest request said them (an empty one keeps the old).
macro_rules! upsert_subject {
    ($tx:expr, $workflow_id:expr, $record:expr, $now:expr) => {{
        let r: &$crate::store::portfolio::RecordKey = $record;
        sqlx::query(
            "INSERT INTO portfolio_subjects (workflow_id, subject, name, owner, updated_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (workflow_id, subject) DO UPDATE SET \
             name = CASE WHEN excluded.name <> '' THEN excluded.name ELSE portfolio_subjects.name END, \
             owner = CASE WHEN excluded.owner <> '' THEN excluded.owner ELSE portfolio_subjects.owner END, \
             updated_at = excluded.updated_at",
        )
        .bind($workflow_id)
        .bind(&r.subject)
        .bind(&r.name)
        .bind(&r.owner)
        .bind($now)
        .execute(&mut *$tx)
        .await?;
    }};
}
pub(super) use upsert_subject;

/// A request that closed without an answer: 未回答 for its period, unless someone answered it.
macro_rules! record_unanswered {
    ($tx:expr, $workflow_id:expr, $run_id:expr, $token:expr, $record:expr, $now:expr) => {{
        let r: &$crate::store::portfolio::RecordKey = $record;
        $crate::store::portfolio::upsert_subject!($tx, $workflow_id, r, $now);
        sqlx::query(
            "INSERT INTO portfolio_entries (workflow_id, subject, period, status, late, run_id, \
             token, recorded_at) VALUES ($1, $2, $3, 'unanswered', 0, $4, $5, $6) \
             ON CONFLICT DO NOTHING",
        )
        .bind($workflow_id)
        .bind(&r.subject)
        .bind(&r.period)
        .bind($run_id)
        .bind($token)
        .bind($now)
        .execute(&mut *$tx)
        .await?;
    }};
}
pub(super) use record_unanswered;

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt("portfolio_values", e.to_string())
}

/// The filter as SQL conditions on a table aliased `e`, with the binds in order.
fn conditions(q: &PortfolioQuery) -> (String, Vec<String>) {
    let mut sql = String::from(" WHERE 1 = 1");
    let mut binds = Vec::new();
    for (col, op, v) in [
        ("workflow_id", "=", &q.workflow),
        ("subject", "=", &q.subject),
        ("period", ">=", &q.from),
        ("period", "<=", &q.to),
    ] {
        if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
            binds.push(v.clone());
            sql.push_str(&format!(" AND e.{col} {op} ${}", binds.len()));
        }
    }
    (sql, binds)
}

impl Store {
    /// The entries matching `q`, each with its current values, ordered by workflow, subject and
    /// period.
    pub async fn portfolio(&self, q: &PortfolioQuery) -> Result<Vec<PortfolioEntry>> {
        let (filter, binds) = conditions(q);
        let entries_sql = format!(
            "SELECT e.workflow_id, e.subject, e.period, e.status, e.via, e.late, e.run_id, \
             e.recorded_at, COALESCE(s.name, '') AS name, COALESCE(s.owner, '') AS owner \
             FROM portfolio_entries e LEFT JOIN portfolio_subjects s \
             ON s.workflow_id = e.workflow_id AND s.subject = e.subject{filter} \
             ORDER BY e.workflow_id, e.subject, e.period"
        );
        let values_sql = format!(
            "SELECT e.workflow_id, e.subject, e.period, e.field, e.answer_id, e.value, e.unit, e.position, e.source, \
             e.late, e.recorded_at FROM portfolio_values e{filter} AND e.superseded_at IS NULL"
        );
        type Key = (String, String, String);
        with_pool!(self, |pool| {
            let mut q1 = sqlx::query(&entries_sql);
            let mut q2 = sqlx::query(&values_sql);
            for b in &binds {
                q1 = q1.bind(b);
                q2 = q2.bind(b);
            }
            let mut values: BTreeMap<Key, BTreeMap<String, PortfolioValue>> = BTreeMap::new();
            for r in q2.fetch_all(pool).await? {
                let key = (
                    r.try_get("workflow_id")?,
                    r.try_get("subject")?,
                    r.try_get("period")?,
                );
                let value = PortfolioValue {
                    value: serde_json::from_str(&r.try_get::<String, _>("value")?)
                        .map_err(corrupt)?,
                    unit: r.try_get("unit")?,
                    position: r.try_get("position")?,
                    source: r.try_get("source")?,
                    answer_id: r.try_get("answer_id")?,
                    late: r.try_get::<i64, _>("late")? != 0,
                    recorded_at: from_ms(r.try_get("recorded_at")?),
                    superseded_at: None,
                };
                values
                    .entry(key)
                    .or_default()
                    .insert(r.try_get("field")?, value);
            }
            let mut out = Vec::new();
            for r in q1.fetch_all(pool).await? {
                let key: Key = (
                    r.try_get("workflow_id")?,
                    r.try_get("subject")?,
                    r.try_get("period")?,
                );
                out.push(PortfolioEntry {
                    values: values.remove(&key).unwrap_or_default(),
                    workflow_id: key.0,
                    subject: key.1,
                    period: key.2,
                    name: r.try_get("name")?,
                    owner: r.try_get("owner")?,
                    status: r.try_get("status")?,
                    via: r.try_get("via")?,
                    late: r.try_get::<i64, _>("late")? != 0,
                    run_id: r.try_get("run_id")?,
                    recorded_at: from_ms(r.try_get("recorded_at")?),
                });
            }
            Ok(out)
        })
    }

    /// Every value ever recorded for one subject, current and replaced, oldest first:
    /// (period, field, value).
    pub async fn portfolio_history(
        &self,
        workflow_id: &str,
        subject: &str,
    ) -> Result<Vec<(String, String, PortfolioValue)>> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT period, field, answer_id, value, unit, position, source, late, recorded_at, superseded_at \
                 FROM portfolio_values WHERE workflow_id = $1 AND subject = $2 \
                 ORDER BY period, field, recorded_at",
            )
            .bind(workflow_id)
            .bind(subject)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                out.push((
                    r.try_get("period")?,
                    r.try_get("field")?,
                    PortfolioValue {
                        value: serde_json::from_str(&r.try_get::<String, _>("value")?)
                            .map_err(corrupt)?,
                        unit: r.try_get("unit")?,
                        position: r.try_get("position")?,
                        source: r.try_get("source")?,
                        answer_id: r.try_get("answer_id")?,
                        late: r.try_get::<i64, _>("late")? != 0,
                        recorded_at: from_ms(r.try_get("recorded_at")?),
                        superseded_at: r.try_get::<Option<i64>, _>("superseded_at")?.map(from_ms),
                    },
                ));
            }
            Ok(out)
        })
    }

    /// The subjects (of one workflow, or all), by workflow and id.
    pub async fn portfolio_subjects(&self, workflow_id: Option<&str>) -> Result<Vec<Subject>> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT workflow_id, subject, name, owner FROM portfolio_subjects \
                 WHERE $1 = '' OR workflow_id = $1 ORDER BY workflow_id, subject",
            )
            .bind(workflow_id.unwrap_or(""))
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(Subject {
                        workflow_id: r.try_get("workflow_id")?,
                        subject: r.try_get("subject")?,
                        name: r.try_get("name")?,
                        owner: r.try_get("owner")?,
                    })
                })
                .collect()
        })
    }
}
