//! `action = "email"`: renders a message and puts it in the outbox, in the same transaction that
//! completes the step. Recipients are addresses (`"山田 太郎 <yamada@example.go.jp>"`) or
//! `role:NAME`, resolved from the people directory (`workflows/data/people.toml`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value as Json, json};

use super::{ActionContext, Outcome, Param, StepError, WithProblem, is_dynamic, str_param};
use crate::message::email::{EmailSpec, build, content_type_for};
use crate::store::{MessageKind, NewMessage};

pub(crate) const PARAMS: &[Param] = &[
    Param {
        name: "to",
        required: true,
    },
    Param {
        name: "cc",
        required: false,
    },
    Param {
        name: "bcc",
        required: false,
    },
    Param {
        name: "reply_to",
        required: false,
    },
    Param {
        name: "subject",
        required: true,
    },
    Param {
        name: "body",
        required: false,
    },
    Param {
        name: "template",
        required: false,
    },
    Param {
        name: "html_template",
        required: false,
    },
    Param {
        name: "attachments",
        required: false,
    },
];

pub(crate) fn check(with: &BTreeMap<String, Json>) -> Vec<WithProblem> {
    let mut problems = Vec::new();
    match (with.get("body"), with.get("template")) {
        (Some(_), Some(_)) => problems.push(WithProblem {
            key: Some("template".into()),
            message: "`email` takes either `body` or `template`, not both".into(),
            hint: None,
        }),
        (None, None) => problems.push(WithProblem {
            key: None,
            message: "action `email` needs `with.body` or `with.template`".into(),
            hint: Some(
                "template = \"status_request.txt\" reads workflows/templates/status_request.txt"
                    .into(),
            ),
        }),
        _ => {}
    }
    for key in ["to", "cc", "bcc"] {
        if let Some(v) = with.get(key) {
            let items: Vec<&Json> = match v {
                Json::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            for item in items {
                match item.as_str() {
                    None => problems.push(WithProblem {
                        key: Some(key.into()),
                        message: format!("`{key}` must be an address, `role:NAME`, or a list of them"),
                        hint: None,
                    }),
                    Some(s) if is_dynamic(item) || s.starts_with("role:") || s.contains('@') => {}
                    Some(s) => problems.push(WithProblem {
                        key: Some(key.into()),
                        message: format!("`{s}` is neither an email address nor `role:NAME`"),
                        hint: Some("e.g. \"yamada@example.go.jp\", \"山田 太郎 <yamada@example.go.jp>\" or \"role:pmo_head\"".into()),
                    }),
                }
            }
        }
    }
    problems
}

/// Addresses for one recipient field: literal addresses and `role:NAME` expanded.
pub(crate) fn recipients(
    cx: &ActionContext<'_>,
    with: &Json,
    key: &str,
) -> Result<Vec<String>, StepError> {
    let items: Vec<String> = match with.get(key) {
        None | Some(Json::Null) => return Ok(Vec::new()),
        Some(Json::String(s)) => vec![s.clone()],
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(other) => {
            return Err(StepError::fatal(format!(
                "`with.{key}` must be a string or a list, got {other}"
            )));
        }
    };
    let mut out = Vec::new();
    for item in items {
        let item = item.trim().to_string();
        if item.is_empty() {
            continue;
        }
        if let Some(role) = item.strip_prefix("role:") {
            let people = people_with_role(cx.data, role.trim());
            if people.is_empty() {
                return Err(StepError::fatal(format!(
                    "nobody has the role `{}` in workflows/data/people.toml",
                    role.trim()
                )));
            }
            out.extend(people);
        } else {
            out.push(item);
        }
    }
    Ok(out)
}

/// `"name <email>"` for everyone in `data.people.people` with the role.
pub fn people_with_role(data: &Json, role: &str) -> Vec<String> {
    data["people"]["people"]
        .as_array()
        .map(|people| {
            people
                .iter()
                .filter(|p| {
                    p["roles"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|x| x.as_str() == Some(role)))
                })
                .filter_map(|p| {
                    let email = p["email"].as_str()?;
                    Some(match p["name"].as_str() {
                        Some(name) => format!("{name} <{email}>"),
                        None => email.to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Finds a template file: next to the workflow, then in `workflows/templates/`.
fn find_template(cx: &ActionContext<'_>, name: &str) -> Result<PathBuf, StepError> {
    let candidates = [
        cx.workflow_dir.to_path_buf(),
        cx.services.workflows_dir.join("templates"),
    ];
    match crate::inside::find(&cx.services.workflows_dir, &candidates, name) {
        Ok(Some(path)) => Ok(path),
        Ok(None) => Err(StepError::fatal(format!(
            "template `{name}` not found (looked in {} and {})",
            candidates[0].join(name).display(),
            candidates[1].join(name).display()
        ))),
        Err(e) => Err(StepError::fatal(format!("template: {e}"))),
    }
}

fn render_file(cx: &ActionContext<'_>, name: &str) -> Result<String, StepError> {
    let ctx = cx.template_ctx.cloned().unwrap_or_default();
    render_file_with(cx, name, &ctx)
}

/// Renders template file `name` with `ctx`.
pub(crate) fn render_file_with(
    cx: &ActionContext<'_>,
    name: &str,
    ctx: &minijinja::Value,
) -> Result<String, StepError> {
    let path = find_template(cx, name)?;
    let text = std::fs::read_to_string(&path)
        .map_err(|e| StepError::fatal(format!("cannot read template {}: {e}", path.display())))?;
    crate::template::render(&text, ctx).map_err(|e| {
        StepError::fatal(format!(
            "template {}:{}: {}",
            path.display(),
            e.line.unwrap_or(1),
            e.message
        ))
    })
}

/// The bytes of each `{ name, portfolio = { workflow, periods } }` attachment, by its index in
/// `attachments`: the portfolio workbook of a workflow over its latest periods, read now.
pub(crate) async fn portfolio_workbooks(
    cx: &ActionContext<'_>,
    with: &Json,
) -> Result<Vec<(usize, Vec<u8>)>, StepError> {
    let mut out = Vec::new();
    let Some(list) = with.get("attachments").and_then(Json::as_array) else {
        return Ok(out);
    };
    for (i, item) in list.iter().enumerate() {
        let Some(spec) = item.get("portfolio") else {
            continue;
        };
        let workflow = spec
            .get("workflow")
            .and_then(Json::as_str)
            .filter(|w| !w.trim().is_empty())
            .unwrap_or(cx.workflow_id)
            .to_string();
        let periods = match spec.get("periods") {
            None => 12,
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                .filter(|n| (1..=120).contains(n))
                .ok_or_else(|| {
                    StepError::fatal(format!(
                        "`portfolio.periods` must be a whole number from 1 to 120, got {v}"
                    ))
                })? as usize,
        };
        let store = cx
            .store
            .ok_or_else(|| StepError::retryable("no database for the portfolio attachment"))?;
        let entries = store
            .portfolio(&crate::store::PortfolioQuery {
                workflow: Some(workflow),
                ..Default::default()
            })
            .await
            .map_err(|e| StepError::retryable(e.to_string()))?;
        let keep = crate::portfolio::periods(&entries, periods);
        let entries: Vec<_> = entries
            .into_iter()
            .filter(|e| keep.first().is_some_and(|p| &e.period >= p))
            .collect();
        let bytes = tokio::task::spawn_blocking(move || crate::portfolio::xlsx::workbook(&entries))
            .await
            .map_err(|e| StepError::retryable(e.to_string()))?
            .map_err(|e| StepError::fatal(e.to_string()))?;
        out.push((i, bytes));
    }
    Ok(out)
}

pub(crate) fn run(
    cx: &ActionContext<'_>,
    with: &Json,
    mut portfolios: Vec<(usize, Vec<u8>)>,
) -> Result<Outcome, StepError> {
    let to = recipients(cx, with, "to")?;
    let cc = recipients(cx, with, "cc")?;
    let bcc = recipients(cx, with, "bcc")?;
    let subject = str_param(with, "subject")?.unwrap_or_default().to_string();
    let text = match (str_param(with, "body")?, str_param(with, "template")?) {
        (Some(body), _) => body.to_string(),
        (None, Some(name)) => render_file(cx, name)?,
        (None, None) => {
            return Err(StepError::fatal(
                "action `email` needs `with.body` or `with.template`",
            ));
        }
    };
    let html = str_param(with, "html_template")?
        .map(|n| render_file(cx, n))
        .transpose()?;
    let mut attachments = Vec::new();
    if let Some(list) = with.get("attachments").and_then(Json::as_array) {
        for (i, item) in list.iter().enumerate() {
            if let Json::Object(m) = item
                && m.contains_key("portfolio")
            {
                let name = m.get("name").and_then(Json::as_str).unwrap_or("").trim();
                if name.is_empty() || name.contains(['/', '\\']) {
                    return Err(StepError::fatal(
                        "a portfolio attachment needs `name` (a file name ending in .xlsx)",
                    ));
                }
                let at = portfolios.iter().position(|(k, _)| *k == i);
                let bytes = at.map(|k| portfolios.swap_remove(k).1).unwrap_or_default();
                attachments.push((name.to_string(), bytes, content_type_for(name).to_string()));
                continue;
            }
            if let Json::Object(m) = item
                && m.contains_key("sheets")
            {
                // A generated workbook: `{ name = "一覧.xlsx", sheets = [{ name, columns, rows }] }`.
                let name = m.get("name").and_then(Json::as_str).unwrap_or("").trim();
                if name.is_empty() || name.contains(['/', '\\']) {
                    return Err(StepError::fatal(
                        "a workbook attachment needs `name` (a file name ending in .xlsx)",
                    ));
                }
                let bytes = report_workbook(m.get("sheets").unwrap_or(&Json::Null))
                    .map_err(|e| StepError::fatal(format!("attachment {name}: {e}")))?;
                attachments.push((name.to_string(), bytes, content_type_for(name).to_string()));
                continue;
            }
            if let Json::Object(m) = item {
                // Generated content: `{ name = "summary.csv", content = "{{ … }}" }`.
                let name = m.get("name").and_then(Json::as_str).unwrap_or("").trim();
                let content = m.get("content").and_then(Json::as_str);
                let (false, Some(content)) =
                    (name.is_empty() || name.contains(['/', '\\']), content)
                else {
                    return Err(StepError::fatal(
                        "an attachment table needs `name` (a file name) and `content` (text)",
                    ));
                };
                attachments.push((
                    name.to_string(),
                    content.as_bytes().to_vec(),
                    content_type_for(name).to_string(),
                ));
                continue;
            }
            let rel = item.as_str().ok_or_else(|| {
                StepError::fatal(
                    "`attachments` must be a list of file paths or { name, content } tables",
                )
            })?;
            let root = &cx.services.workflows_dir;
            let path = crate::inside::resolve(root, root, rel)
                .map_err(|e| StepError::fatal(format!("attachment: {e}")))?;
            let bytes = std::fs::read(&path).map_err(|e| {
                StepError::fatal(format!("cannot read attachment {}: {e}", path.display()))
            })?;
            let name = Path::new(rel)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| rel.to_string());
            attachments.push((name.clone(), bytes, content_type_for(&name).to_string()));
        }
    }
    let from = cx.services.mail.from.clone();
    let domain = from
        .rsplit('@')
        .next()
        .map(|d| d.trim_end_matches('>').trim().to_string())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "pmoflow.localhost".into());
    let step: String = cx
        .step_key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '.'
            }
        })
        .collect();
    // Deterministic: the same step of the same run always has the same Message-ID.
    let message_id = format!("<{}.{}@{}>", cx.run_id, step, domain);
    let spec = EmailSpec {
        from,
        to: to.clone(),
        cc: cc.clone(),
        bcc,
        reply_to: str_param(with, "reply_to")?.map(str::to_string),
        subject: subject.clone(),
        text,
        html,
        attachments,
        message_id: message_id.clone(),
        date: cx.clock.now(),
        timezone: cx.services.mail.timezone,
        charset: cx.services.mail.charset,
    };
    let built = build(&spec).map_err(|e| StepError::fatal(e.to_string()))?;
    let target = to
        .iter()
        .chain(cc.iter())
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    let message = NewMessage {
        kind: MessageKind::Email,
        key: format!("{}:{}", cx.run_id, cx.step_key),
        target: target.clone(),
        message_id: message_id.clone(),
        payload: json!({ "from": built.envelope_from, "to": built.envelope_to, "raw": built.raw }),
    };
    Ok(Outcome::Emit(
        json!({ "message_id": message_id, "to": to, "cc": cc, "subject": subject }),
        vec![message],
    ))
}

/// What is wrong with an attachment's `sheets` (a mistake in the workflow, told to its author).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SheetsError {
    /// `sheets` is not a list.
    #[error("`sheets` must be a list of {{ name, columns, rows }} tables")]
    NotAList,
    /// An entry is not a table.
    #[error("sheets[{0}] must be a table")]
    NotATable(usize),
    /// `columns` is not a list.
    #[error("sheet {0}: `columns` must be a list")]
    Columns(String),
    /// A column is neither a header nor a table.
    #[error("sheet {sheet}: column {column} is not a table")]
    Column { sheet: String, column: Json },
    /// `rows` is JSON text of something other than a list.
    #[error("sheet {0}: `rows` is not a list")]
    RowsNotAList(String),
    /// `rows` is text that is not JSON.
    #[error("sheet {sheet}: `rows` is not JSON ({error}); build it with `tojson`")]
    RowsNotJson { sheet: String, error: String },
    /// `rows` is neither a list nor JSON text.
    #[error("sheet {sheet}: `rows` must be a list, got {got}")]
    Rows { sheet: String, got: Json },
    /// A row is neither a list nor a table.
    #[error("sheet {sheet}: row {row} is neither a list nor a table")]
    Row { sheet: String, row: Json },
    /// The workbook could not be written.
    #[error(transparent)]
    Write(#[from] crate::workbook::WorkbookError),
}

/// The `.xlsx` of an attachment's `sheets`: each with `name`, `columns` (`header`, optional
/// `key`, `format`, `width`) and `rows`, a list (or JSON text of a list, as a template loop makes
/// it) of rows, each a list of values in column order or a table read by the columns' `key`s.
pub(crate) fn report_workbook(sheets: &Json) -> Result<Vec<u8>, SheetsError> {
    let list = sheets.as_array().ok_or(SheetsError::NotAList)?;
    let mut out = Vec::new();
    for (i, sheet) in list.iter().enumerate() {
        let m = sheet.as_object().ok_or(SheetsError::NotATable(i))?;
        let name = m
            .get("name")
            .and_then(Json::as_str)
            .unwrap_or("Sheet")
            .to_string();
        let columns = m
            .get("columns")
            .and_then(Json::as_array)
            .ok_or_else(|| SheetsError::Columns(name.clone()))?;
        let mut cols = Vec::new();
        let mut keys = Vec::new();
        for c in columns {
            let (header, key, format, width) = match c {
                Json::String(h) => (h.clone(), None, None, None),
                Json::Object(c) => (
                    c.get("header")
                        .and_then(Json::as_str)
                        .unwrap_or("")
                        .to_string(),
                    c.get("key").and_then(Json::as_str).map(str::to_string),
                    c.get("format").and_then(Json::as_str).map(str::to_string),
                    c.get("width").and_then(Json::as_f64),
                ),
                other => {
                    return Err(SheetsError::Column {
                        sheet: name,
                        column: other.clone(),
                    });
                }
            };
            cols.push(crate::workbook::report::Column {
                header,
                format,
                width,
            });
            keys.push(key);
        }
        let rows = match m.get("rows") {
            None | Some(Json::Null) => Vec::new(),
            Some(Json::Array(a)) => a.clone(),
            Some(Json::String(t)) if t.trim().is_empty() => Vec::new(),
            Some(Json::String(t)) => match serde_json::from_str::<Json>(t) {
                Ok(Json::Array(a)) => a,
                Ok(_) => return Err(SheetsError::RowsNotAList(name)),
                Err(e) => {
                    return Err(SheetsError::RowsNotJson {
                        sheet: name,
                        error: e.to_string(),
                    });
                }
            },
            Some(other) => {
                return Err(SheetsError::Rows {
                    sheet: name,
                    got: other.clone(),
                });
            }
        };
        let rows = rows
            .iter()
            .map(|r| match r {
                Json::Array(a) => Ok(a.clone()),
                Json::Object(o) => Ok(keys
                    .iter()
                    .map(|k| {
                        k.as_ref()
                            .and_then(|k| o.get(k))
                            .cloned()
                            .unwrap_or(Json::Null)
                    })
                    .collect()),
                other => Err(SheetsError::Row {
                    sheet: name.clone(),
                    row: other.clone(),
                }),
            })
            .collect::<Result<Vec<_>, SheetsError>>()?;
        out.push(crate::workbook::report::Sheet {
            name,
            columns: cols,
            rows,
        });
    }
    Ok(crate::workbook::report::write(&out)?)
}
