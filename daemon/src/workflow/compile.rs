//! From the raw file to a checked [`Workflow`], or to located diagnostics.
//!
//! Everything that can be known before a run is checked here: unknown keys, duplicate ids, unknown
//! actions and parameters, bad durations, template and expression syntax, and every name a
//! template reads (`inputs.x`, `steps.y`, `data.z`) against what will exist when it runs.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;

use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use toml::Spanned;

use super::raw::{RawStep, RawWorkflow, toml_to_json};
use super::{DEFAULT_PARALLELISM, RetryPolicy, Step, Workflow};
use crate::actions::ActionKind;
use crate::diag::Diagnostic;
use crate::duration::{DURATION_HINT, HumanDuration};
use crate::template;

/// Names of `run.*` available to templates.
pub const RUN_FIELDS: &[&str] = &["id", "workflow", "started_at", "scheduled_at", "trigger"];

/// Global functions of the template language, which are not context names.
const GLOBALS: &[&str] = &[
    "range",
    "dict",
    "debug",
    "namespace",
    "add_business_days",
    "is_business_day",
    "nth_business_day",
    "first_business_day",
    "last_business_day",
    "days_between",
    "business_day_on_or_before",
];

/// The id syntax for workflows and steps: it appears in URLs, CLI arguments and template paths.
fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && id.len() <= 64
}

const ID_HINT: &str = "ids use lowercase ASCII letters, digits, '-' and '_', start with a letter or digit, at most 64 characters";

/// Collects diagnostics for one file.
pub(super) struct Ctx<'a> {
    path: &'a Path,
    source: &'a str,
    pub(super) diags: Vec<Diagnostic>,
}

impl Ctx<'_> {
    pub(super) fn error(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.diags.push(Diagnostic::span(
            self.path,
            self.source,
            span,
            message,
            hint,
        ));
    }
}

/// What templates of one step may read.
struct Scope<'a> {
    inputs: &'a BTreeSet<String>,
    steps_before: &'a [String],
    all_steps: &'a BTreeSet<String>,
    data: &'a BTreeSet<String>,
    has_item: bool,
    /// A `request` step's template file, which also reads `request.*`.
    has_request: bool,
}

impl Scope<'_> {
    /// Checks one dotted name read by a template; returns message and hint when it is wrong.
    fn check(&self, name: &str) -> Option<(String, Option<String>)> {
        let mut parts = name.split('.');
        let head = parts.next().unwrap_or_default();
        let second = parts.next();
        match head {
            "inputs" => second.and_then(|key| {
                (!self.inputs.contains(key)).then(|| {
                    (
                        format!("unknown input `{key}`"),
                        Some(if self.inputs.is_empty() {
                            "declare it with a default under [inputs]".to_string()
                        } else {
                            format!(
                                "declared inputs: {}; declare new ones under [inputs]",
                                join(self.inputs)
                            )
                        }),
                    )
                })
            }),
            "steps" => second.and_then(|key| {
                if self.steps_before.iter().any(|s| s == key) {
                    None
                } else if self.all_steps.contains(key) {
                    Some((
                        format!("step `{key}` has not run yet at this point"),
                        Some("a step can only read the output of steps before it".into()),
                    ))
                } else {
                    Some((
                        format!("unknown step `{key}`"),
                        Some(if self.steps_before.is_empty() {
                            "no step runs before this one".into()
                        } else {
                            format!("steps before this one: {}", self.steps_before.join(", "))
                        }),
                    ))
                }
            }),
            "data" => second.and_then(|key| {
                (!self.data.contains(key)).then(|| {
                    (
                        format!("unknown data file `{key}`"),
                        Some(if self.data.is_empty() {
                            "reference data lives in TOML files under workflows/data/".into()
                        } else {
                            format!("data files: {}", join(self.data))
                        }),
                    )
                })
            }),
            "run" => second.and_then(|key| {
                (!RUN_FIELDS.contains(&key)).then(|| {
                    (
                        format!("unknown run field `{key}`"),
                        Some(format!("run fields: {}", RUN_FIELDS.join(", "))),
                    )
                })
            }),
            "now" => None,
            "request" if self.has_request => None,
            "item" | "index" if self.has_item => None,
            "item" | "index" => Some((
                format!("`{head}` is only defined in a step with `foreach`"),
                None,
            )),
            g if GLOBALS.contains(&g) => None,
            other => Some((
                format!("unknown name `{other}`"),
                Some(
                    "templates can read inputs, steps, run, now, data (and item, index in a foreach step)"
                        .into(),
                ),
            )),
        }
    }
}

fn join(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(", ")
}

/// Compiles one workflow file. `data` names the reference data files available as `data.<stem>`.
pub fn compile(
    path: &Path,
    source: &str,
    data: &BTreeSet<String>,
) -> Result<Workflow, Vec<Diagnostic>> {
    let raw: RawWorkflow = match toml::from_str(source) {
        Ok(raw) => raw,
        Err(err) => {
            let offset = err.span().map(|s| s.start).unwrap_or(0);
            let message = err.message().trim().replace('\n', "; ");
            let hint = message
                .starts_with("unknown field")
                .then(|| "see docs/workflow-format.md for the keys each table accepts".to_string());
            return Err(vec![Diagnostic::at(path, source, offset, message, hint)]);
        }
    };
    let mut cx = Ctx {
        path,
        source,
        diags: Vec::new(),
    };

    let id = raw.id.get_ref().clone();
    if !valid_id(&id) {
        cx.error(
            raw.id.span(),
            format!("invalid workflow id `{id}`"),
            Some(ID_HINT.into()),
        );
    }

    let inputs: serde_json::Map<String, Json> = raw
        .inputs
        .iter()
        .map(|(k, v)| (k.get_ref().clone(), toml_to_json(v.get_ref())))
        .collect();
    let input_names: BTreeSet<String> = inputs.keys().cloned().collect();

    let (triggers, webhook) = super::triggers::compile_triggers(&mut cx, &raw, &input_names);

    let all_steps: BTreeSet<String> = raw
        .steps
        .iter()
        .map(|s| s.get_ref().id.get_ref().clone())
        .collect();
    if raw.steps.is_empty() {
        cx.error(
            raw.id.span(),
            format!("workflow `{id}` has no steps"),
            Some("add at least one [[steps]] table".into()),
        );
    }
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut before: Vec<String> = Vec::new();
    let mut steps = Vec::new();
    for spanned in &raw.steps {
        let step = spanned.get_ref();
        let step_id = step.id.get_ref().clone();
        if !valid_id(&step_id) {
            cx.error(
                step.id.span(),
                format!("invalid step id `{step_id}`"),
                Some(ID_HINT.into()),
            );
        }
        if let Some(first) = seen.get(&step_id) {
            let (line, _) = crate::diag::line_col(source, *first);
            cx.error(
                step.id.span(),
                format!("duplicate step id `{step_id}`"),
                Some(format!("the first step with this id is at line {line}")),
            );
        } else {
            seen.insert(step_id.clone(), step.id.span().start);
        }
        let scope = Scope {
            inputs: &input_names,
            steps_before: &before,
            all_steps: &all_steps,
            data,
            has_item: step.foreach.is_some(),
            has_request: false,
        };
        if let Some(step) = compile_step(&mut cx, spanned, &scope) {
            steps.push(step);
        }
        before.push(step_id);
    }

    if !cx.diags.is_empty() {
        return Err(cx.diags);
    }
    Ok(Workflow {
        name: raw
            .name
            .map(|n| n.into_inner())
            .unwrap_or_else(|| id.clone()),
        description: raw.description.map(|d| d.into_inner()).unwrap_or_default(),
        id,
        triggers,
        webhook,
        inputs,
        steps,
        hash: content_hash(source),
        path: path.to_path_buf(),
    })
}

/// SHA-256 of a workflow's source, hex.
pub fn content_hash(source: &str) -> String {
    hex::encode(Sha256::digest(source.as_bytes()))
}

fn check_names(
    cx: &mut Ctx<'_>,
    span: Range<usize>,
    names: Result<BTreeSet<String>, template::TemplateError>,
    what: &str,
    scope: &Scope<'_>,
) {
    match names {
        Err(err) => cx.error(span, format!("invalid {what}: {}", err.message), None),
        Ok(names) => {
            for name in names {
                if let Some((message, hint)) = scope.check(&name) {
                    cx.error(span.clone(), format!("{message} in {what}"), hint);
                }
            }
        }
    }
}

/// Checks every string inside a `with` value as a template.
fn check_templates(cx: &mut Ctx<'_>, span: Range<usize>, value: &Json, scope: &Scope<'_>) {
    match value {
        Json::String(s) => check_names(cx, span, template::template_names(s), "template", scope),
        Json::Array(items) => items
            .iter()
            .for_each(|v| check_templates(cx, span.clone(), v, scope)),
        Json::Object(map) => map
            .values()
            .for_each(|v| check_templates(cx, span.clone(), v, scope)),
        _ => {}
    }
}

/// Checks a template file an `email` step names: it exists (next to the workflow or in
/// `templates/`), parses, and reads only names that will exist.
fn check_template_file(cx: &mut Ctx<'_>, span: Range<usize>, name: &str, scope: &Scope<'_>) {
    let dir = cx.path.parent().unwrap_or(Path::new("."));
    let candidates = [dir.to_path_buf(), dir.join("templates")];
    let file = match crate::inside::find(dir, &candidates, name) {
        Ok(Some(file)) => file,
        Ok(None) => {
            cx.error(
                span,
                format!("template file `{name}` not found"),
                Some(format!(
                    "looked in {} and {}",
                    candidates[0].join(name).display(),
                    candidates[1].join(name).display()
                )),
            );
            return;
        }
        Err(e) => {
            cx.error(span, format!("template file: {e}"), None);
            return;
        }
    };
    let file = &file;
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            cx.error(
                span,
                format!("cannot read template file {}: {e}", file.display()),
                None,
            );
            return;
        }
    };
    match template::template_names(&text) {
        Err(err) => cx.diags.push(Diagnostic {
            path: file.clone(),
            line: err.line.unwrap_or(1),
            col: 1,
            message: format!("invalid template: {}", err.message),
            hint: None,
        }),
        Ok(names) => {
            for n in names {
                if let Some((message, hint)) = scope.check(&n) {
                    cx.error(
                        span.clone(),
                        format!("{message} in template file {}", file.display()),
                        hint,
                    );
                }
            }
        }
    }
}

pub(super) fn duration(cx: &mut Ctx<'_>, value: &Spanned<String>) -> Option<std::time::Duration> {
    match HumanDuration::parse(value.get_ref()) {
        Ok(d) => Some(d.0),
        Err(message) => {
            cx.error(
                value.span(),
                message.to_string(),
                Some(DURATION_HINT.into()),
            );
            None
        }
    }
}

fn compile_step(cx: &mut Ctx<'_>, spanned: &Spanned<RawStep>, scope: &Scope<'_>) -> Option<Step> {
    let step = spanned.get_ref();
    let errors_before = cx.diags.len();
    let action = match ActionKind::from_name(step.action.get_ref()) {
        Ok(a) => Some(a),
        Err(p) => {
            cx.error(step.action.span(), p.message, p.hint);
            None
        }
    };
    let with: BTreeMap<String, Json> = step
        .with
        .iter()
        .map(|(k, v)| (k.get_ref().clone(), toml_to_json(v.get_ref())))
        .collect();
    if let Some(action) = action {
        for problem in action.check_with(&with) {
            let span = problem
                .key
                .as_deref()
                .and_then(|key| step.with.get_key_value(key))
                .map(|(k, v)| {
                    if problem.message.contains("has no parameter") {
                        k.span()
                    } else {
                        v.span()
                    }
                })
                .unwrap_or_else(|| step.action.span());
            cx.error(span, problem.message, problem.hint);
        }
    }
    for value in step.with.values() {
        check_templates(cx, value.span(), &toml_to_json(value.get_ref()), scope);
    }
    if let Some(ActionKind::Request) = action
        && let Some(value) = step.with.get("template")
        && let Some(name) = value
            .get_ref()
            .as_str()
            .filter(|n| !template::is_template(n))
    {
        let request_scope = Scope {
            has_request: true,
            ..*scope
        };
        check_template_file(cx, value.span(), name, &request_scope);
    }
    if matches!(action, Some(ActionKind::Email | ActionKind::Escalate)) {
        for key in ["template", "html_template"] {
            let Some((_, value)) = step.with.get_key_value(key) else {
                continue;
            };
            let Some(name) = value
                .get_ref()
                .as_str()
                .filter(|n| !template::is_template(n))
            else {
                continue;
            };
            check_template_file(cx, value.span(), name, scope);
        }
    }
    if let Some(cond) = &step.condition {
        // Under `foreach`, an `if` may read `item`/`index`: it is then decided per item.
        let cond_scope = Scope {
            has_item: step.foreach.is_some(),
            ..*scope
        };
        check_names(
            cx,
            cond.span(),
            template::expression_names(cond.get_ref()),
            "`if` expression",
            &cond_scope,
        );
    }
    if let Some(each) = &step.foreach {
        let each_scope = Scope {
            has_item: false,
            ..*scope
        };
        check_names(
            cx,
            each.span(),
            template::expression_names(each.get_ref()),
            "`foreach` expression",
            &each_scope,
        );
    }
    let parallelism = match &step.parallelism {
        None => DEFAULT_PARALLELISM,
        Some(p) if (1..=1000).contains(p.get_ref()) => usize::try_from(*p.get_ref()).unwrap_or(1),
        Some(p) => {
            cx.error(
                p.span(),
                format!(
                    "parallelism must be between 1 and 1000, got {}",
                    p.get_ref()
                ),
                None,
            );
            1
        }
    };
    if step.parallelism.is_some()
        && step.foreach.is_none()
        && let Some(p) = &step.parallelism
    {
        cx.error(
            p.span(),
            "`parallelism` only applies to a step with `foreach`",
            None,
        );
    }
    let mut retry = RetryPolicy::default();
    if let Some(r) = &step.retry {
        let r = r.get_ref();
        if let Some(a) = &r.attempts {
            if (1..=100).contains(a.get_ref()) {
                retry.attempts = u32::try_from(*a.get_ref()).unwrap_or(1);
            } else {
                cx.error(
                    a.span(),
                    format!(
                        "retry attempts must be between 1 and 100, got {}",
                        a.get_ref()
                    ),
                    Some("attempts counts the first try: 1 means no retry".into()),
                );
            }
        }
        if let Some(b) = &r.backoff
            && let Some(d) = duration(cx, b)
        {
            retry.backoff = d;
        }
        if let Some(b) = &r.max_backoff
            && let Some(d) = duration(cx, b)
        {
            retry.max_backoff = d;
        }
        if retry.max_backoff < retry.backoff
            && let Some(b) = &r.max_backoff
        {
            cx.error(b.span(), "max_backoff is shorter than backoff", None);
        }
    }
    let timeout = step.timeout.as_ref().and_then(|t| duration(cx, t));
    if cx.diags.len() > errors_before {
        return None;
    }
    let (line, _) = crate::diag::line_col(cx.source, spanned.span().start);
    Some(Step {
        id: step.id.get_ref().clone(),
        name: step
            .name
            .as_ref()
            .map(|n| n.get_ref().clone())
            .unwrap_or_else(|| step.id.get_ref().clone()),
        action: action?,
        plugin: step
            .action
            .get_ref()
            .strip_prefix("plugin:")
            .map(str::to_string),
        with: Json::Object(with.into_iter().collect()),
        condition: step.condition.as_ref().map(|c| c.get_ref().clone()),
        foreach: step.foreach.as_ref().map(|c| c.get_ref().clone()),
        parallelism,
        retry,
        timeout,
        line,
    })
}
