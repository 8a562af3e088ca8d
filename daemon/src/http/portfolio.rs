//! The portfolio: `GET /api/portfolio` (JSON, typed values), `.csv` and `.xlsx` (a native chart
//! per numeric field), and the pages `/portfolio` (subjects × the latest 24 periods, 要対応
//! first, filters by choice value and owner) and `/portfolio/{subject}` (one project's history:
//! every period's answers, an SVG chart per unit with the same numbers in a table beside it,
//! corrections, links to the runs).

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use super::pages::{to_login, user};
use super::{AppState, Role, api_error, authorize};
use crate::portfolio::{self, Field, svg};
use crate::store::{PortfolioEntry, PortfolioQuery};

/// The periods the overview shows.
const OVERVIEW_PERIODS: usize = 24;

/// Query of the portfolio API.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct PortfolioParams {
    /// Only this workflow.
    #[schemars(length(max = 200))]
    workflow: Option<String>,
    /// Only this subject (a project id).
    #[schemars(length(max = 200))]
    subject: Option<String>,
    /// Periods from this one, inclusive (compared as text: `2027-04`).
    #[schemars(length(max = 40))]
    from: Option<String>,
    /// Periods up to this one, inclusive.
    #[schemars(length(max = 40))]
    to: Option<String>,
}

impl PortfolioParams {
    /// The query, or why not (a value over its documented length). A filter no entry can match
    /// (`from` after `to`, a NUL character) is a valid query with no entries.
    fn check(self) -> Result<PortfolioQuery, super::api::BadRequest> {
        for (name, v, max) in [
            ("workflow", &self.workflow, 200),
            ("subject", &self.subject, 200),
            ("from", &self.from, 40),
            ("to", &self.to, 40),
        ] {
            if let Some(v) = v
                && v.chars().count() > max
            {
                return Err(super::api::BadRequest(format!(
                    "{name} is longer than {max} characters"
                )));
            }
        }
        Ok(PortfolioQuery {
            workflow: self.workflow,
            subject: self.subject,
            from: self.from,
            to: self.to,
        })
    }
}

/// The portfolio: one entry per subject and period, with its typed values.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PortfolioList {
    /// Ordered by workflow, subject and period.
    pub entries: Vec<PortfolioEntry>,
}

async fn entries(
    state: &AppState,
    headers: &HeaderMap,
    q: Result<Query<PortfolioParams>, QueryRejection>,
) -> Result<Vec<PortfolioEntry>, Response> {
    authorize(state, headers, Role::Viewer).await?;
    let q = q
        .map(|Query(q)| q)
        .map_err(|e| api_error(StatusCode::BAD_REQUEST, &e.body_text()))?
        .check()
        .map_err(|m| api_error(StatusCode::BAD_REQUEST, &m.0))?;
    let nul = [&q.workflow, &q.subject, &q.from, &q.to]
        .iter()
        .any(|v| v.as_ref().is_some_and(|v| v.contains('\0')));
    if nul {
        return Ok(Vec::new());
    }
    state
        .store
        .portfolio(&q)
        .await
        .map_err(|e| api_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()))
}

/// `GET /api/portfolio`.
pub(super) async fn api_json(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<PortfolioParams>, QueryRejection>,
) -> Response {
    match entries(&state, &headers, q).await {
        Ok(entries) => (StatusCode::OK, axum::Json(PortfolioList { entries })).into_response(),
        Err(r) => r,
    }
}

fn download(bytes: Vec<u8>, content_type: &'static str, file: &str) -> Response {
    let mut r = (StatusCode::OK, bytes).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `GET /api/portfolio.csv`.
pub(super) async fn api_csv(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<PortfolioParams>, QueryRejection>,
) -> Response {
    match entries(&state, &headers, q).await {
        Ok(entries) => download(
            portfolio::csv(&entries).into_bytes(),
            "text/csv; charset=utf-8",
            "portfolio.csv",
        ),
        Err(r) => r,
    }
}

/// `GET /api/portfolio.xlsx`.
pub(super) async fn api_xlsx(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<PortfolioParams>, QueryRejection>,
) -> Response {
    let entries = match entries(&state, &headers, q).await {
        Ok(e) => e,
        Err(r) => return r,
    };
    match tokio::task::spawn_blocking(move || portfolio::xlsx::workbook(&entries)).await {
        Ok(Ok(bytes)) => download(
            bytes,
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            "portfolio.xlsx",
        ),
        Ok(Err(e)) => api_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// Query of the overview page.
#[derive(Debug, Default, Deserialize)]
pub(super) struct OverviewParams {
    workflow: Option<String>,
    /// The choice field the cells show (default 総合評価, else the first text field).
    field: Option<String>,
    /// Only subjects whose latest value of `field` is this.
    value: Option<String>,
    /// Only this owner's subjects.
    owner: Option<String>,
}

/// A rating's badge: good, warning, bad, or neutral.
fn badge(v: &str) -> &'static str {
    if v.contains("要対応") || v.contains("悪") || v.contains("遅延") {
        "b-bad"
    } else if v.contains("注意") || v.contains("要注意") {
        "b-warn"
    } else if v.contains("良") || v.contains("順調") {
        "b-good"
    } else {
        "b-none"
    }
}

fn rank(v: Option<&str>) -> u8 {
    match v.map(badge) {
        Some("b-bad") => 0,
        Some("b-warn") => 1,
        None => 2,
        Some("b-none") => 3,
        _ => 4,
    }
}

fn text_of(e: &PortfolioEntry, field: &str) -> Option<String> {
    e.values
        .get(field)
        .map(|v| portfolio::value_text(&v.value, v.unit.as_deref()))
}

/// One subject's row of the overview: who, a cell per period, the latest value of the field.
type Row = (Json, Vec<Json>, Option<String>);

/// `GET /portfolio`.
pub(super) async fn overview(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<OverviewParams>,
) -> Response {
    let Some(u) = user(&state, &headers).await else {
        return to_login();
    };
    let all = state
        .store
        .portfolio(&PortfolioQuery {
            workflow: q.workflow.clone().filter(|w| !w.is_empty()),
            ..PortfolioQuery::default()
        })
        .await
        .unwrap_or_default();
    let periods = portfolio::periods(&all, OVERVIEW_PERIODS);
    let entries: Vec<&PortfolioEntry> = all
        .iter()
        .filter(|e| periods.first().is_some_and(|p| &e.period >= p))
        .collect();
    let fields = portfolio::fields(&all);
    let text_fields: Vec<&Field> = fields.iter().filter(|f| !f.numeric).collect();
    let field = q
        .field
        .clone()
        .filter(|f| fields.iter().any(|x| &x.name == f))
        .or_else(|| {
            text_fields
                .iter()
                .find(|f| f.name == "総合評価")
                .map(|f| f.name.clone())
        })
        .or_else(|| text_fields.first().map(|f| f.name.clone()))
        .unwrap_or_default();
    // Per subject: its row of cells and its latest value of the field.
    let mut subjects: BTreeMap<(String, String), Row> = BTreeMap::new();
    let mut owners: BTreeSet<String> = BTreeSet::new();
    let mut values: BTreeSet<String> = BTreeSet::new();
    for e in &entries {
        owners.insert(e.owner.clone());
        let slot = subjects
            .entry((e.workflow_id.clone(), e.subject.clone()))
            .or_insert_with(|| {
                (
                    json!({ "workflow": e.workflow_id, "id": e.subject, "name": e.name, "owner": e.owner }),
                    vec![Json::Null; periods.len()],
                    None,
                )
            });
        let Some(i) = periods.iter().position(|p| p == &e.period) else {
            continue;
        };
        let value = text_of(e, &field);
        if let Some(v) = &value {
            values.insert(v.clone());
        }
        slot.1[i] = json!({
            "value": value,
            "badge": value.as_deref().map(badge).unwrap_or("b-none"),
            "unanswered": e.status != "answered",
            "late": e.late,
            "run": e.run_id,
        });
        if e.status == "answered" {
            slot.2 = value;
        }
    }
    let mut rows: Vec<(u8, String, Json)> = subjects
        .into_iter()
        .filter(|(_, (s, _, latest))| {
            q.owner
                .as_ref()
                .filter(|o| !o.is_empty())
                .is_none_or(|o| s["owner"].as_str() == Some(o.as_str()))
                && q.value
                    .as_ref()
                    .filter(|v| !v.is_empty())
                    .is_none_or(|v| latest.as_deref() == Some(v.as_str()))
        })
        .map(|((_, id), (s, cells, latest))| {
            let mut row = s;
            row["cells"] = Json::Array(cells);
            row["latest"] = json!(latest);
            (rank(latest.as_deref()), id, row)
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let workflows: BTreeSet<&str> = all.iter().map(|e| e.workflow_id.as_str()).collect();
    super::page(
        &state,
        StatusCode::OK,
        "portfolio.html",
        json!({
            "title": "ポートフォリオ",
            "wide": true,
            "user": u,
            "periods": periods,
            "rows": rows.into_iter().map(|r| r.2).collect::<Vec<_>>(),
            "field": field,
            "fields": text_fields.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
            "values": values,
            "owners": owners.into_iter().filter(|o| !o.is_empty()).collect::<Vec<_>>(),
            "workflows": workflows,
            "q": { "workflow": q.workflow, "value": q.value, "owner": q.owner },
        }),
    )
}

/// Query of a subject's page.
#[derive(Debug, Default, Deserialize)]
pub(super) struct SubjectParams {
    workflow: Option<String>,
}

/// `GET /portfolio/{subject}`.
pub(super) async fn subject_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(subject): Path<String>,
    Query(q): Query<SubjectParams>,
) -> Response {
    let Some(u) = user(&state, &headers).await else {
        return to_login();
    };
    let entries = state
        .store
        .portfolio(&PortfolioQuery {
            workflow: q.workflow.clone().filter(|w| !w.is_empty()),
            subject: Some(subject.clone()),
            ..PortfolioQuery::default()
        })
        .await
        .unwrap_or_default();
    let Some(first) = entries.first() else {
        return super::message(
            &state,
            StatusCode::NOT_FOUND,
            "見つかりません",
            "指定された対象の記録はありません。",
            "error",
        );
    };
    let workflow = first.workflow_id.clone();
    let (name, owner) = (first.name.clone(), first.owner.clone());
    let entries: Vec<PortfolioEntry> = entries
        .into_iter()
        .filter(|e| e.workflow_id == workflow)
        .collect();
    let fields = portfolio::fields(&entries);
    let periods: Vec<String> = entries.iter().map(|e| e.period.clone()).collect();
    let history = state
        .store
        .portfolio_history(&workflow, &subject)
        .await
        .unwrap_or_default();
    let table: Vec<Json> = entries
        .iter()
        .map(|e| {
            json!({
                "period": e.period,
                "status": portfolio::status_ja(e),
                "badge": if e.status == "answered" { if e.late { "b-warn" } else { "b-good" } } else { "b-bad" },
                "via": e.via.as_deref().map(portfolio::source_ja),
                "run": e.run_id,
                "cells": fields.iter().map(|f| text_of(e, &f.name).unwrap_or_default()).collect::<Vec<_>>(),
            })
        })
        .collect();
    // A chart per unit: 予算額・見込額 (万円) together, 遅延日数 (日) apart.
    let mut groups: Vec<(String, Vec<&Field>)> = Vec::new();
    for f in fields.iter().filter(|f| f.numeric) {
        let unit = f.unit.clone().unwrap_or_default();
        match groups.iter_mut().find(|(u, _)| *u == unit) {
            Some((_, g)) => g.push(f),
            None => groups.push((unit, vec![f])),
        }
    }
    let charts: Vec<Json> = groups
        .iter()
        .enumerate()
        .map(|(k, (unit, group))| {
            let series: Vec<svg::Series> = group
                .iter()
                .map(|f| svg::Series {
                    name: f.name.clone(),
                    points: entries
                        .iter()
                        .map(|e| e.values.get(&f.name).and_then(|v| v.value.as_f64()))
                        .collect(),
                })
                .collect();
            let names: Vec<&str> = group.iter().map(|f| f.name.as_str()).collect();
            let title = if unit.is_empty() {
                format!("{}の推移", names.join("・"))
            } else {
                format!("{}の推移（{unit}）", names.join("・"))
            };
            json!({
                "svg": svg::line_chart(&format!("chart{k}"), &title, unit, &periods, &series),
                "title": title,
                "fields": names,
                "rows": periods.iter().enumerate().map(|(i, p)| json!({
                    "period": p,
                    "values": series.iter().map(|s| s.points[i].map(|v| format!("{}{unit}", portfolio::grouped(v))).unwrap_or_else(|| "—".into())).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let corrections: Vec<Json> = history
        .iter()
        .filter(|(_, _, v)| v.superseded_at.is_some())
        .map(|(p, f, v)| {
            json!({
                "period": p, "field": f,
                "value": portfolio::value_text(&v.value, v.unit.as_deref()),
                "source": portfolio::source_ja(&v.source),
                "replaced": v.superseded_at.map(|t| t.with_timezone(&state.services.mail.timezone).format("%Y-%m-%d %H:%M").to_string()),
            })
        })
        .collect();
    super::page(
        &state,
        StatusCode::OK,
        "subject.html",
        json!({
            "title": format!("{subject} {name}"),
            "wide": true,
            "user": u,
            "subject": { "id": subject, "name": name, "owner": owner, "workflow": workflow },
            "fields": fields.iter().map(|f| match &f.unit { Some(u) => format!("{}（{u}）", f.name), None => f.name.clone() }).collect::<Vec<_>>(),
            "table": table,
            "charts": charts,
            "corrections": corrections,
        }),
    )
}
