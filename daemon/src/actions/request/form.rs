//! `with.form`: the Excel 様式 a request sends. The template (under the workflows directory) is
//! read when the request goes out; its cell map (`with.cells`, or names defined in the
//! workbook) and value kinds (`with.types`, or the template's validation rules) are stored with
//! each request, so a returned workbook is read the same way whatever happens to the file
//! later; each addressee gets a copy prefilled from `with.prefill`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value as Json;

use crate::actions::{ActionContext, StepError, WithProblem, is_dynamic, str_param};
use crate::workbook::{FieldTypes, FormSpec, form::Mapping};

/// A loaded form.
pub(super) struct Form {
    /// The cell map stored with each request.
    pub spec: FormSpec,
    /// The template's bytes.
    pub template: Vec<u8>,
}

/// What the step keeps to send the form again with a reminder.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct FormState {
    /// `with.form`, `form_name`, `cells` and `types` as rendered.
    pub with: Json,
    /// `with.prefill`.
    pub prefill: BTreeMap<String, Json>,
}

impl FormState {
    /// What to keep of `with`.
    pub fn of(with: &Json) -> Result<Option<FormState>, StepError> {
        if str_param(with, "form")?.is_none_or(|s| s.trim().is_empty()) {
            return Ok(None);
        }
        let keep: serde_json::Map<String, Json> = ["form", "form_name", "cells", "types"]
            .iter()
            .filter_map(|k| with.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect();
        Ok(Some(FormState {
            with: Json::Object(keep),
            prefill: prefill_of(with)?,
        }))
    }
}

pub(super) fn check(with: &BTreeMap<String, Json>) -> Vec<WithProblem> {
    let mut problems = Vec::new();
    if let Some(v) = with.get("form").filter(|v| !is_dynamic(v)) {
        let ok = v.as_str().is_some_and(|s| {
            let l = s.to_lowercase();
            (l.ends_with(".xlsx") || l.ends_with(".xlsm"))
                && !s.contains("..")
                && !Path::new(s).is_absolute()
        });
        if !ok {
            problems.push(WithProblem {
                key: Some("form".into()),
                message: format!(
                    "`form` must be a relative path to an .xlsx or .xlsm file inside the workflows directory, got {v}"
                ),
                hint: Some("form = \"templates/様式1_予算要求.xlsx\"".into()),
            });
        }
    }
    for key in ["cells", "prefill", "form_name"] {
        if with.contains_key(key) && !with.contains_key("form") {
            problems.push(WithProblem {
                key: Some(key.into()),
                message: format!("`{key}` needs `form` (the Excel 様式 it applies to)"),
                hint: None,
            });
        }
    }
    if let Some(Json::Object(cells)) = with.get("cells") {
        for (k, v) in cells {
            if !v.is_string() {
                problems.push(WithProblem {
                    key: Some("cells".into()),
                    message: format!("`cells.{k}` must be a cell such as \"様式1!E10\" or a defined name, got {v}"),
                    hint: None,
                });
            }
        }
    } else if let Some(v) = with.get("cells").filter(|v| !is_dynamic(v)) {
        problems.push(WithProblem {
            key: Some("cells".into()),
            message: format!("`cells` must be a table of field = cell, got {v}"),
            hint: Some("cells = { \"整備経費\" = \"様式1!E10\" }".into()),
        });
    }
    if let Some(types) = with.get("types").filter(|v| !is_dynamic(v))
        && let Err(found) = FieldTypes::parse(types)
    {
        for m in found {
            problems.push(WithProblem {
                key: Some("types".into()),
                message: m,
                hint: Some(
                    "types = { \"総合評価\" = { type = \"choice\", options = [\"良好\", \"注意\", \"要対応\"] }, \"見込額\" = { type = \"number\", unit = \"万円\", min = 0 }, \"開始日\" = \"date\" }"
                        .into(),
                ),
            });
        }
    }
    problems
}

/// `with.types` as rendered, for the request rows (empty without it).
pub(super) fn types_of(with: &Json) -> Result<FieldTypes, StepError> {
    match with.get("types") {
        None | Some(Json::Null) => Ok(FieldTypes::default()),
        Some(v) => FieldTypes::parse(v).map_err(|e| StepError::fatal(e.join("; "))),
    }
}

/// The form of `with.form`, if any.
pub(super) fn load(
    cx: &ActionContext<'_>,
    with: &Json,
    fields: &[String],
    required: &[String],
) -> Result<Option<Form>, StepError> {
    let Some(rel) = str_param(with, "form")?.filter(|s| !s.trim().is_empty()) else {
        return Ok(None);
    };
    let root = &cx.services.workflows_dir;
    let path = crate::inside::resolve(root, root, rel)
        .map_err(|e| StepError::fatal(format!("`form`: {e}")))?;
    let template = std::fs::read(&path)
        .map_err(|e| StepError::fatal(format!("cannot read form {}: {e}", path.display())))?;
    let mut mapping = Mapping {
        fields: fields.to_vec(),
        required: required.to_vec(),
        ..Mapping::default()
    };
    if let Some(Json::Object(cells)) = with.get("cells") {
        for (k, v) in cells {
            let cell = v.as_str().ok_or_else(|| {
                StepError::fatal(format!("`cells.{k}` must be a cell or a defined name"))
            })?;
            mapping.cells.insert(k.clone(), cell.to_string());
        }
    }
    mapping.types.extend(types_of(with)?.0);
    let spec = FormSpec::from_template(&file_name(with, rel)?, &template, &mapping)
        .map_err(|e| StepError::fatal(e.to_string()))?;
    Ok(Some(Form { spec, template }))
}

/// The file name the form is sent as: `with.form_name`, or the template's.
fn file_name(with: &Json, rel: &str) -> Result<String, StepError> {
    let name = match str_param(with, "form_name")?.filter(|s| !s.trim().is_empty()) {
        Some(n) if n.contains(['/', '\\']) => {
            return Err(StepError::fatal(
                "`form_name` must be a file name, not a path",
            ));
        }
        Some(n) => n.trim().to_string(),
        None => Path::new(rel)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| rel.to_string()),
    };
    Ok(name)
}

/// `with.prefill`: field names, defined names or cells → values.
pub(super) fn prefill_of(with: &Json) -> Result<BTreeMap<String, Json>, StepError> {
    match with.get("prefill") {
        None | Some(Json::Null) => Ok(BTreeMap::new()),
        Some(Json::Object(m)) => Ok(m.clone().into_iter().collect()),
        Some(other) => Err(StepError::fatal(format!(
            "`prefill` must be a table of field (or cell) = value, got {other}"
        ))),
    }
}

/// The prefilled copy as an attachment.
pub(super) fn attachment(
    form: &Form,
    prefill: &BTreeMap<String, Json>,
) -> Result<(String, Vec<u8>, String), StepError> {
    let bytes = form
        .spec
        .prefill(&form.template, prefill)
        .map_err(|e| StepError::fatal(e.to_string()))?;
    let ctype = crate::message::email::content_type_for(&form.spec.file).to_string();
    Ok((form.spec.file.clone(), bytes, ctype))
}

/// The attachment again, for a reminder; `None` (and a warning) if the template is gone.
pub(super) fn again(
    cx: &ActionContext<'_>,
    state: &FormState,
    fields: &[String],
) -> Option<(String, Vec<u8>, String)> {
    let made = load(cx, &state.with, fields, &[])
        .and_then(|f| f.map(|f| attachment(&f, &state.prefill)).transpose());
    match made {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "reminder sent without its form");
            None
        }
    }
}
