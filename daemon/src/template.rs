//! The one template and expression language of workflow files (minijinja, strict about undefined
//! names), and the checks that can be made before a run starts.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use minijinja::{Environment, UndefinedBehavior, Value};

/// The shared environment: strict undefined, auto-escaping off (the output is mail text, logs and
/// JSON, not HTML; HTML templates get their own environment when they arrive).
pub fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_keep_trailing_newline(true);
        env
    })
}

/// Whether `text` contains template syntax at all; plain strings skip the engine.
pub fn is_template(text: &str) -> bool {
    text.contains("{{") || text.contains("{%") || text.contains("{#")
}

/// A template or expression problem, with the 1-based line inside the template when known.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    /// What went wrong, without location.
    pub message: String,
    /// 1-based line within the template text, when known.
    pub line: Option<usize>,
}

impl From<minijinja::Error> for TemplateError {
    fn from(err: minijinja::Error) -> Self {
        let mut message = err.kind().to_string();
        if let Some(detail) = err.detail() {
            message = format!("{message}: {detail}");
        }
        Self {
            message,
            line: err.line(),
        }
    }
}

/// Renders `text` in `ctx`. Strings without template syntax are returned as they are.
pub fn render(text: &str, ctx: &Value) -> Result<String, TemplateError> {
    if !is_template(text) {
        return Ok(text.to_string());
    }
    Ok(env().render_str(text, ctx)?)
}

/// Whether any string inside a JSON value is a template.
pub fn json_has_templates(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => is_template(s),
        serde_json::Value::Array(items) => items.iter().any(json_has_templates),
        serde_json::Value::Object(map) => map.values().any(json_has_templates),
        _ => false,
    }
}

/// Renders every string inside a JSON value.
pub fn render_json(
    value: &serde_json::Value,
    ctx: &Value,
) -> Result<serde_json::Value, TemplateError> {
    Ok(match value {
        serde_json::Value::String(s) => serde_json::Value::String(render(s, ctx)?),
        serde_json::Value::Array(items) => serde_json::Value::Array(
            items
                .iter()
                .map(|v| render_json(v, ctx))
                .collect::<Result<_, _>>()?,
        ),
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_json(v, ctx)?)))
                .collect::<Result<_, TemplateError>>()?,
        ),
        other => other.clone(),
    })
}

/// Evaluates an expression to a value.
pub fn eval(expr: &str, ctx: &Value) -> Result<Value, TemplateError> {
    let compiled = env().compile_expression(expr)?;
    Ok(compiled.eval(ctx)?)
}

/// Parses a template and returns the dotted names it reads from its context (`inputs.who`,
/// `steps.greet.output`), for reference checks before any run.
pub fn template_names(text: &str) -> Result<BTreeSet<String>, TemplateError> {
    if !is_template(text) {
        return Ok(BTreeSet::new());
    }
    let tmpl = env().template_from_str(text)?;
    Ok(tmpl.undeclared_variables(true).into_iter().collect())
}

/// Parses an expression and returns the dotted names it reads.
pub fn expression_names(expr: &str) -> Result<BTreeSet<String>, TemplateError> {
    let compiled = env().compile_expression(expr)?;
    Ok(compiled.undeclared_variables(true).into_iter().collect())
}

/// Converts any serialisable value into a template value.
pub fn value<T: serde::Serialize>(v: &T) -> Value {
    Value::from_serialize(v)
}

/// Shared, immutable reference data (`data.<stem>`).
pub type Data = Arc<serde_json::Value>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_about_undefined_names() {
        let ctx = value(&serde_json::json!({"inputs": {"who": "PMO"}}));
        assert_eq!(
            render("こんにちは {{ inputs.who }}", &ctx).expect("renders"),
            "こんにちは PMO"
        );
        let err = render("{{ inputs.nobody }}", &ctx).expect_err("undefined is an error");
        assert!(err.message.contains("undefined"), "{}", err.message);
    }

    #[test]
    fn finds_names() {
        let names = template_names("{{ inputs.who }} {{ steps.a.output.x }}").expect("parses");
        assert!(names.contains("inputs.who"), "{names:?}");
        assert!(names.iter().any(|n| n.starts_with("steps.a")), "{names:?}");
        let names = expression_names("inputs.who != '' and data.people").expect("parses");
        assert!(names.contains("inputs.who"), "{names:?}");
    }
}
