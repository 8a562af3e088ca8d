//! The scenario file of `pmoflow simulate --answers`: who answers when and what, triggers,
//! resolutions and plugin results; and the time expressions it and the command line use.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde::Deserialize;

use super::{SimError, err};

/// The scenario file (`--answers`): what people and the world do.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// How people answer requests (and acknowledge alerts). The first matching rule applies;
    /// someone no rule matches never answers.
    #[serde(default)]
    pub answer: Vec<AnswerRule>,
    /// Runs started by hand (the CLI, the API, a monitoring webhook) at given times.
    #[serde(default)]
    pub trigger: Vec<TriggerRule>,
    /// Incidents resolved (`pmoflow resolve`) at given times.
    #[serde(default)]
    pub resolve: Vec<ResolveRule>,
    /// Results of plugins that would reach the network, by time.
    #[serde(default)]
    pub plugin: Vec<PluginRule>,
}

/// `[[answer]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerRule {
    /// The addressee (an email address) or `*` for anyone.
    pub who: String,
    /// Only requests whose subject contains this.
    pub subject: Option<String>,
    /// Answer this long after the request was sent (default `1h`).
    pub after: Option<toml::Spanned<String>>,
    /// Or this long after the request's deadline (`"1d"`; late).
    pub after_deadline: Option<toml::Spanned<String>>,
    /// Only the Nth matching request to this person (1-based), e.g. `[1, 3]`.
    pub nth: Option<Vec<u32>>,
    /// `email` (default: a real reply through the intake) or `web` (the answer form).
    pub via: Option<toml::Spanned<String>>,
    /// Field values.
    #[serde(default)]
    pub fields: BTreeMap<String, toml::Value>,
    /// Cell values of the request's Excel 様式, returned as an attached workbook: keys are field
    /// names, names defined in the form or cells (`"様式1!C7"`).
    #[serde(default)]
    pub workbook: BTreeMap<String, toml::Value>,
    /// Free text after the fields (an acknowledgement reply says 了解しました by default).
    pub text: Option<String>,
    /// Send from another address (a delegate, or someone not allowed to answer).
    pub from: Option<String>,
}

/// `[[trigger]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerRule {
    /// When (RFC 3339, or `YYYY-MM-DD HH:MM` in the configured zone).
    pub at: toml::Spanned<String>,
    /// Inputs of the run.
    #[serde(default)]
    pub inputs: BTreeMap<String, toml::Value>,
}

/// `[[resolve]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveRule {
    /// When.
    pub at: toml::Spanned<String>,
    /// Which run (1 = the first run of the simulation; default: the latest open escalation).
    pub run: Option<usize>,
    /// What was done.
    #[serde(default)]
    pub note: String,
    /// Who resolved it.
    pub by: Option<String>,
}

/// `[[plugin]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRule {
    /// Plugin name.
    pub name: String,
    /// From this instant on (default: the start); the latest applicable entry wins.
    pub from: Option<toml::Spanned<String>>,
    /// The plugin's output.
    pub output: toml::Value,
}
/// Parses `2027-04-01`, `2027-04-01 09:00`, `2027-04-01T09:00` (in `tz`) or RFC 3339.
/// A bare date is the start of that day, or its end with `end_of_day`.
pub fn parse_time(
    text: &str,
    tz: chrono_tz::Tz,
    end_of_day: bool,
) -> Result<DateTime<Utc>, SimError> {
    let t = text.trim();
    if let Ok(i) = DateTime::parse_from_rfc3339(t) {
        return Ok(i.with_timezone(&Utc));
    }
    let local = ["%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())
        .or_else(|| {
            NaiveDate::parse_from_str(t, "%Y-%m-%d").ok().map(|d| {
                if end_of_day {
                    d.and_hms_opt(23, 59, 59).unwrap_or_default()
                } else {
                    d.and_hms_opt(0, 0, 0).unwrap_or_default()
                }
            })
        })
        .ok_or_else(|| SimError::new(format!("`{t}` is not a date (2027-04-01), a local time (2027-04-01 09:00) or an RFC 3339 instant")))?;
    tz.from_local_datetime(&local)
        .earliest()
        .map(|x| x.with_timezone(&Utc))
        .ok_or_else(|| SimError::new(format!("`{t}` does not exist in {tz}")))
}

pub(super) fn duration(text: &str) -> Result<chrono::Duration, SimError> {
    crate::duration::HumanDuration::parse(text.trim())
        .map(|d| d.to_chrono())
        .map_err(err)
}

/// Loads a scenario file and checks its times, durations and `via` values, with
/// `file:line:col` in errors.
pub fn load_scenario(path: &Path, tz: chrono_tz::Tz) -> Result<Scenario, SimError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SimError::new(format!("{}: {e}", path.display())))?;
    parse_scenario(path, &text, tz)
}

/// Parses and checks scenario `text` (the contents of `path`).
pub fn parse_scenario(path: &Path, text: &str, tz: chrono_tz::Tz) -> Result<Scenario, SimError> {
    let text = text.to_string();
    let scenario: Scenario = toml::from_str(&text).map_err(|e| {
        let (line, col) = e
            .span()
            .map(|s| crate::diag::line_col(&text, s.start))
            .unwrap_or((1, 1));
        SimError::new(format!("{}:{line}:{col}: {}", path.display(), e.message()))
    })?;
    let at = |v: &toml::Spanned<String>, message: String| {
        let (line, col) = crate::diag::line_col(&text, v.span().start);
        SimError::new(format!("{}:{line}:{col}: {message}", path.display()))
    };
    for r in &scenario.answer {
        for d in [&r.after, &r.after_deadline].into_iter().flatten() {
            duration(d.get_ref())
                .map_err(|e| at(d, format!("{e} (write e.g. \"2d\", \"3h\", \"15m\")")))?;
        }
        if let Some(v) = &r.via
            && !matches!(v.get_ref().as_str(), "email" | "web")
        {
            return Err(at(
                v,
                format!("`via` is \"email\" or \"web\", got \"{}\"", v.get_ref()),
            ));
        }
    }
    let times = scenario
        .trigger
        .iter()
        .map(|t| &t.at)
        .chain(scenario.resolve.iter().map(|r| &r.at))
        .chain(scenario.plugin.iter().filter_map(|p| p.from.as_ref()));
    for t in times {
        parse_time(t.get_ref(), tz, false).map_err(|e| at(t, e.to_string()))?;
    }
    Ok(scenario)
}
