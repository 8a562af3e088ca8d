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
        helpers::register(&mut env);
        env
    })
}

/// `ctx` with the business calendar the calendar helpers (`add_business_days`,
/// `is_business_day`, …) use: the run's catalog's, passed with each render rather than held in
/// a global, so that two catalogs (two simulations, a reload) never see each other's calendar.
/// Without one, the helpers use the computed national calendar.
pub fn with_calendar(ctx: Value, calendar: Arc<crate::calendar::Calendar>) -> Value {
    minijinja::context! { __pmoflow_calendar => Value::from_object(helpers::CalendarObject(calendar)), ..ctx }
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

/// The expression of a string that is exactly one `{{ … }}` and nothing else.
fn single_expression(s: &str) -> Option<&str> {
    let inner = s.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    let inner = inner.strip_prefix('-').unwrap_or(inner);
    let inner = inner.strip_suffix('-').unwrap_or(inner);
    (!inner.contains("{{") && !inner.contains("}}") && !inner.contains("{%"))
        .then_some(inner.trim())
}

/// Renders every string inside a JSON value. A string that is one `{{ expression }}` whose
/// value is a list, a table, a number or a boolean becomes that value.
pub fn render_json(
    value: &serde_json::Value,
    ctx: &Value,
) -> Result<serde_json::Value, TemplateError> {
    render_json_with(value, ctx, false)
}

/// [`render_json`]; with `scalars`, a single expression giving a number or a boolean also keeps
/// its type (plugin inputs, which are checked against a JSON schema).
pub fn render_json_with(
    value: &serde_json::Value,
    ctx: &Value,
    scalars: bool,
) -> Result<serde_json::Value, TemplateError> {
    Ok(match value {
        serde_json::Value::String(s) => match single_expression(s) {
            // `"{{ data.projects.projects }}"` is that list, not its text; likewise maps,
            // numbers and booleans. Anything else renders as text.
            Some(expr) => {
                let v = eval(expr, ctx)?;
                let native = match v.kind() {
                    minijinja::value::ValueKind::Seq | minijinja::value::ValueKind::Map => true,
                    minijinja::value::ValueKind::Number | minijinja::value::ValueKind::Bool => {
                        scalars
                    }
                    _ => false,
                };
                match native {
                    true => serde_json::to_value(&v)
                        .unwrap_or_else(|_| serde_json::Value::String(v.to_string())),
                    false => serde_json::Value::String(render(s, ctx)?),
                }
            }
            None => serde_json::Value::String(render(s, ctx)?),
        },
        serde_json::Value::Array(items) => serde_json::Value::Array(
            items
                .iter()
                .map(|v| render_json_with(v, ctx, scalars))
                .collect::<Result<_, _>>()?,
        ),
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_json_with(v, ctx, scalars)?)))
                .collect::<Result<_, TemplateError>>()?,
        ),
        other => other.clone(),
    })
}

/// Compiles an expression. minijinja 2.24's lexer panics ("empty lexer stack") on an
/// expression that closes the variable block it is lexed in (`a }} b`); such an expression is
/// refused here as a syntax error, so that a workflow file cannot stop a load or a run (found
/// by the `workflow` and `template` fuzz targets).
fn compile_expression<'s>(expr: &'s str) -> Result<minijinja::Expression<'s, 's>, TemplateError> {
    if closes_block(expr) {
        return Err(TemplateError {
            message: "syntax error: unexpected `}}` or `%}` in an expression".into(),
            line: None,
        });
    }
    let env = env();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        env.compile_expression(expr)
    })) {
        Ok(compiled) => Ok(compiled?),
        Err(_) => Err(TemplateError {
            message: "syntax error: unexpected `}}` or `%}` in an expression".into(),
            line: None,
        }),
    }
}

/// Whether `expr` holds `}}` or `%}` outside a string literal.
fn closes_block(expr: &str) -> bool {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut prev = '\0';
    for c in expr.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
                prev = '\0';
                continue;
            }
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '}' && (prev == '}' || prev == '%') => return true,
            None => {}
        }
        prev = c;
    }
    false
}

/// Evaluates an expression to a value.
pub fn eval(expr: &str, ctx: &Value) -> Result<Value, TemplateError> {
    let compiled = compile_expression(expr)?;
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
    let compiled = compile_expression(expr)?;
    Ok(compiled.undeclared_variables(true).into_iter().collect())
}

/// Converts any serialisable value into a template value.
pub fn value<T: serde::Serialize>(v: &T) -> Value {
    Value::from_serialize(v)
}

/// Shared, immutable reference data (`data.<stem>`).
pub type Data = Arc<serde_json::Value>;

mod helpers {
    //! Japanese-calendar helpers for templates: `{{ now | jp_date }}` → `12月4日(金)`,
    //! `add_business_days(date, n)`, fiscal years and quarters.

    use std::sync::Arc;

    use chrono::{DateTime, NaiveDate};
    use minijinja::value::Object;
    use minijinja::{Environment, Error, ErrorKind, State};

    use crate::calendar::{Calendar, format};

    /// The calendar in a render context (see [`super::with_calendar`]).
    #[derive(Debug)]
    pub(super) struct CalendarObject(pub(super) Arc<Calendar>);

    impl Object for CalendarObject {}

    /// The calendar the render was given, or the computed national one.
    fn calendar(state: &State<'_, '_>) -> Arc<Calendar> {
        state
            .lookup("__pmoflow_calendar")
            .and_then(|v| {
                v.downcast_object_ref::<CalendarObject>()
                    .map(|c| c.0.clone())
            })
            .unwrap_or_default()
    }

    /// A date from `YYYY-MM-DD` or an RFC 3339 instant (its own local date).
    fn date(text: &str) -> Result<NaiveDate, Error> {
        let t = text.trim();
        NaiveDate::parse_from_str(t, "%Y-%m-%d")
            .or_else(|_| DateTime::parse_from_rfc3339(t).map(|d| d.date_naive()))
            .map_err(|_| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    format!("`{text}` is not a date (YYYY-MM-DD or RFC 3339)"),
                )
            })
    }

    fn iso(d: NaiveDate) -> String {
        d.format("%Y-%m-%d").to_string()
    }

    fn month(year: i32, month: u32) -> Result<(i32, u32), Error> {
        if (1..=12).contains(&month) {
            Ok((year, month))
        } else {
            Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("month must be 1…12, got {month}"),
            ))
        }
    }

    fn nth(state: &State<'_, '_>, year: i32, m: u32, n: i32) -> Result<String, Error> {
        let (year, m) = month(year, m)?;
        calendar(state)
            .nth_business_day(year, m, n)
            .map(iso)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    format!("{year}-{m:02} has no business day {n}"),
                )
            })
    }

    pub(super) fn register(env: &mut Environment<'static>) {
        env.add_filter("jp_date", |v: String| date(&v).map(format::md_ja));
        env.add_filter("jp_era_year", |v: String| date(&v).map(format::era_year));
        env.add_filter("fiscal_year", |v: String| date(&v).map(format::fiscal_year));
        env.add_filter("fiscal_year_ja", |v: String| {
            date(&v).map(|d| format::fiscal_year_ja(format::fiscal_year(d)))
        });
        env.add_filter("fiscal_quarter", |v: String| {
            date(&v).map(format::fiscal_quarter)
        });
        env.add_filter("date", |v: String| date(&v).map(iso));
        env.add_function(
            "add_business_days",
            |state: &State<'_, '_>, v: String, n: i64| {
                date(&v).map(|d| iso(calendar(state).add_business_days(d, n)))
            },
        );
        env.add_function("is_business_day", |state: &State<'_, '_>, v: String| {
            date(&v).map(|d| calendar(state).is_business_day(d))
        });
        env.add_function(
            "nth_business_day",
            |state: &State<'_, '_>, year: i32, m: u32, n: i32| nth(state, year, m, n),
        );
        env.add_function(
            "first_business_day",
            |state: &State<'_, '_>, year: i32, m: u32| nth(state, year, m, 1),
        );
        env.add_function(
            "last_business_day",
            |state: &State<'_, '_>, year: i32, m: u32| nth(state, year, m, -1),
        );
        env.add_function("days_between", |a: String, b: String| {
            Ok::<_, Error>((date(&b)? - date(&a)?).num_days())
        });
        env.add_function(
            "business_day_on_or_before",
            |state: &State<'_, '_>, v: String| {
                date(&v).map(|d| {
                    let cal = calendar(state);
                    let mut d = d;
                    while !cal.is_business_day(d) {
                        d = d.pred_opt().unwrap_or(d);
                    }
                    iso(d)
                })
            },
        );
        // `{{ f['整備経費'] | amount('千円') }}` → 60,000千円: a number with thousands
        // separators and its unit; anything else (text as a person wrote it) as it is.
        env.add_filter(
            "amount",
            |v: minijinja::Value, unit: Option<String>| -> String {
                let unit = unit.unwrap_or_default();
                match f64::try_from(v.clone()) {
                    Ok(n) if v.kind() == minijinja::value::ValueKind::Number => {
                        let whole = n.trunc();
                        let digits = format!("{}", whole.abs() as u64);
                        let mut out = String::new();
                        for (i, c) in digits.chars().enumerate() {
                            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                                out.push(',');
                            }
                            out.push(c);
                        }
                        let frac = n.abs() - whole.abs();
                        let frac = if frac > 0.0 {
                            format!("{frac:.3}")
                                .trim_start_matches('0')
                                .trim_end_matches('0')
                                .to_string()
                        } else {
                            String::new()
                        };
                        format!("{}{out}{frac}{unit}", if n < 0.0 { "-" } else { "" })
                    }
                    _ if v.is_undefined() || v.is_none() => String::new(),
                    _ => v.to_string(),
                }
            },
        );
        env.add_filter("yen", |v: i64| {
            let digits = v.unsigned_abs().to_string();
            let mut out = String::new();
            for (i, c) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i).is_multiple_of(3) {
                    out.push(',');
                }
                out.push(c);
            }
            format!("{}{out}円", if v < 0 { "-" } else { "" })
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_expression_that_closes_its_block_is_a_syntax_error_not_a_panic() {
        for expr in ["1 }} 2", "a %} b", "x.y }}z"] {
            let e = expression_names(expr).expect_err(expr);
            assert!(e.message.contains("syntax error"), "{expr}: {}", e.message);
            assert!(eval(expr, &Value::UNDEFINED).is_err());
        }
        assert!(expression_names("inputs.a == \"}}\"").is_ok());
    }

    #[test]
    fn amounts_print_with_separators_and_their_unit() {
        let ctx = minijinja::context! { f => serde_json::json!({ "a": 60000, "b": -1234.5, "c": "未定" }) };
        let r = |t: &str| render(t, &ctx).expect(t);
        assert_eq!(r("{{ f.a | amount('千円') }}"), "60,000千円");
        assert_eq!(r("{{ f.b | amount }}"), "-1,234.5");
        assert_eq!(r("{{ f.c | amount('千円') }}"), "未定");
        assert_eq!(r("{{ f.missing | default(none) | amount('円') }}"), "");
    }

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
    fn japanese_calendar_helpers() {
        let ctx = value(&serde_json::json!({"d": "2026-12-04T17:00:00+09:00"}));
        let out = render(
            "{{ d | jp_date }} {{ d | jp_era_year }} {{ d | fiscal_year_ja }} Q{{ d | fiscal_quarter }} \
             {{ add_business_days('2027-04-30', 1) }} {{ first_business_day(2027, 1) }} \
             {{ last_business_day(2027, 5) }} {% if not is_business_day('2027-03-22') %}closed{% endif %}",
            &ctx,
        )
        .expect("renders");
        assert_eq!(
            out,
            "12月4日(金) 令和8年 令和8年度 Q3 2027-05-06 2027-01-04 2027-05-31 closed"
        );
    }

    #[test]
    fn day_counts_and_amounts() {
        let out = render(
            "{{ days_between('2027-04-01', '2027-05-01') }} {{ business_day_on_or_before('2027-08-29') }} {{ business_day_on_or_before('2027-08-31') }} {{ 120000000 | yen }} {{ -1500 | yen }}",
            &value(&serde_json::json!({})),
        )
        .expect("renders");
        assert_eq!(out, "30 2027-08-27 2027-08-31 120,000,000円 -1,500円");
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
