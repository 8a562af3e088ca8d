//! Built-in step actions, one file each, dispatched through [`ActionKind`].
//!
//! An action has two faces: a static one used by validation (which `with` keys it takes and what a
//! literal value must look like) and a run-time one (`run`, given the rendered `with`). Adding an
//! action means adding a file and one arm in each `match` here.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use crate::clock::SharedClock;

mod deadline;
pub mod email;
pub mod escalate;
pub mod fail;
pub mod http;
pub mod log;
pub(crate) mod mail;
pub mod plugin;
pub mod request;
pub mod wait;
pub mod webhook;

/// The names of the built-in actions, for hints.
pub const BUILTINS: &[&str] = &[
    "log", "wait", "fail", "email", "webhook", "http", "request", "escalate",
];

/// One parameter an action accepts in `with`.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    /// Key in `with`.
    pub name: &'static str,
    /// Whether the key must be present.
    pub required: bool,
}

/// Which action a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Write a message to the daemon log and the step output.
    Log,
    /// Wait durably for a duration or until an instant.
    Wait,
    /// Fail the step on purpose.
    Fail,
    /// Send an email through the outbox.
    Email,
    /// POST to a webhook through the outbox.
    Webhook,
    /// Call an HTTP API; the response is the output.
    Http,
    /// Run a sandboxed WebAssembly plugin (`plugin:NAME`; the name is on the step).
    Plugin,
    /// Ask people by email and wait for their answers.
    Request,
    /// Alert a chain of people until someone acknowledges; follow up until resolved.
    Escalate,
}

/// A static problem with a step's `with` table: which key (if any), message and hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithProblem {
    /// The key the problem is about; `None` means the `with` table as a whole.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

/// What an action did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Finished with this output.
    Done(Json),
    /// Park the step until this instant; it then finishes with `{"until": …}`.
    WaitUntil(DateTime<Utc>),
    /// Finished with this output, and these messages go to the outbox in the same commit.
    Emit(Json, Vec<crate::store::NewMessage>),
    /// Park the step until `until` and call the action again then, or earlier when what it
    /// waits for happens (an answer arrives), with `state`. The messages and requests are
    /// committed with the park.
    Suspend {
        /// When to call the action again at the latest.
        until: DateTime<Utc>,
        /// Handed back to the next call as `ActionContext::state`.
        state: Json,
        /// Outbox messages committed with the park.
        messages: Vec<crate::store::NewMessage>,
        /// Request rows committed with the park.
        requests: Vec<crate::store::NewRequest>,
    },
}

/// Whether a failed step may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A transient failure: retried while the step's retry policy allows.
    Retryable,
    /// Retrying cannot help (bad input, template error, deliberate failure).
    Fatal,
}

/// A step failure, with the engine's retry decision in the type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    /// Retryable or fatal.
    pub kind: ErrorKind,
    /// Readable reason.
    pub message: String,
}

impl StepError {
    /// A failure that retrying can fix.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Retryable,
            message: message.into(),
        }
    }

    /// A failure that retrying cannot fix.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Fatal,
            message: message.into(),
        }
    }
}

/// What steps need besides the store and the clock: settings as data, and the plugins the
/// assembly (`daemon`, `simulate`) built.
#[derive(Debug, Clone, Default)]
pub struct StepServices {
    /// Mail settings.
    pub mail: crate::message::settings::MailSettings,
    /// Reply settings.
    pub replies: crate::message::settings::ReplySettings,
    /// This process's metrics.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Named secrets (`[secrets]`).
    pub secrets: std::collections::BTreeMap<String, crate::message::settings::Secret>,
    /// The workflows directory (templates, attachments).
    pub workflows_dir: std::path::PathBuf,
    /// Where the `http` and `webhook` actions may send requests (`[egress]`).
    pub egress: std::sync::Arc<crate::egress::EgressPolicy>,
    /// The WebAssembly plugins (the daemon's host; in a simulation, the scenario's results in
    /// front of one).
    pub plugins: Option<std::sync::Arc<dyn crate::plugins::PluginRunner>>,
}

/// What an action may use while it runs.
pub struct ActionContext<'a> {
    /// The engine's clock.
    pub clock: &'a SharedClock,
    /// The run being executed.
    pub run_id: &'a str,
    /// The workflow id.
    pub workflow_id: &'a str,
    /// The step key (`id`, or `id[3]` inside a foreach).
    pub step_key: &'a str,
    /// The attempt number, from 1.
    pub attempt: u32,
    /// Configuration the notification actions use.
    pub services: &'a StepServices,
    /// Reference data (`data.*`).
    pub data: &'a Json,
    /// The directory of the workflow file (templates are looked up there first).
    pub workflow_dir: &'a std::path::Path,
    /// The step's template context, for actions that render template files.
    pub template_ctx: Option<&'a minijinja::Value>,
    /// The shared HTTP client.
    pub http: &'a reqwest::Client,
    /// The plugin a `plugin:NAME` step runs.
    pub plugin: Option<&'a str>,
    /// What the previous call of a suspended step saved (`Outcome::Suspend`).
    pub state: Option<&'a Json>,
    /// The database, for actions that read what arrived while they waited.
    pub store: Option<&'a crate::store::Store>,
    /// The business calendar of the run's catalog (business-day deadlines and reminders).
    pub calendar: std::sync::Arc<crate::calendar::Calendar>,
}

impl ActionKind {
    /// Looks up an action by the name written in `action = "…"`.
    pub fn from_name(name: &str) -> Result<Self, WithProblem> {
        match name {
            "log" => Ok(Self::Log),
            "wait" => Ok(Self::Wait),
            "fail" => Ok(Self::Fail),
            "email" => Ok(Self::Email),
            "webhook" => Ok(Self::Webhook),
            "http" => Ok(Self::Http),
            "request" => Ok(Self::Request),
            "escalate" => Ok(Self::Escalate),
            other if other.starts_with("plugin:") => {
                let name = &other["plugin:".len()..];
                let ok = !name.is_empty()
                    && name.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
                    });
                if ok {
                    Ok(Self::Plugin)
                } else {
                    Err(WithProblem {
                        key: None,
                        message: format!("invalid plugin name in `{other}`"),
                        hint: Some("write \"plugin:NAME\" with the name of a directory under plugins/ (lowercase letters, digits, '-', '_')".into()),
                    })
                }
            }
            other => Err(WithProblem {
                key: None,
                message: format!("unknown action `{other}`"),
                hint: Some(format!(
                    "built-in actions are {}; plugins are written \"plugin:NAME\"",
                    BUILTINS.join(", ")
                )),
            }),
        }
    }

    /// The action's name as written in workflow files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::Wait => "wait",
            Self::Fail => "fail",
            Self::Email => "email",
            Self::Webhook => "webhook",
            Self::Http => "http",
            Self::Plugin => "plugin",
            Self::Request => "request",
            Self::Escalate => "escalate",
        }
    }

    /// Whether the action has no effect outside pmoflow's own database. An attempt of such an
    /// action is not recorded as `running` before it runs: repeating it after a crash is
    /// invisible, so that commit would buy nothing. `log`, `wait` and `fail` touch nothing;
    /// `email`, `webhook`, `request` and `escalate` only *queue* messages, committed with the
    /// step and sent by the outbox afterwards. The actions that reach the outside world
    /// themselves (`http`, plugins) return false and are recorded first.
    pub fn is_pure(self) -> bool {
        match self {
            Self::Log
            | Self::Wait
            | Self::Fail
            | Self::Email
            | Self::Webhook
            | Self::Request
            | Self::Escalate => true,
            Self::Http | Self::Plugin => false,
        }
    }

    /// Whether the action renders template files and needs the step's template context.
    pub fn needs_context(self) -> bool {
        matches!(self, Self::Email | Self::Request | Self::Escalate)
    }

    /// Whether a parked step of this action is resumed by calling the action again (rather
    /// than finishing when its wait is over).
    pub fn resumes(self) -> bool {
        matches!(self, Self::Request | Self::Escalate)
    }

    /// The `with` keys this action accepts.
    pub fn params(self) -> &'static [Param] {
        match self {
            Self::Log => log::PARAMS,
            Self::Wait => wait::PARAMS,
            Self::Fail => fail::PARAMS,
            Self::Email => email::PARAMS,
            Self::Webhook => webhook::PARAMS,
            Self::Http => http::PARAMS,
            Self::Plugin => &[],
            Self::Request => request::PARAMS,
            Self::Escalate => escalate::PARAMS,
        }
    }

    /// Static checks of a `with` table: unknown and missing keys, then the action's own checks
    /// of literal (non-template) values.
    pub fn check_with(self, with: &BTreeMap<String, Json>) -> Vec<WithProblem> {
        if self == Self::Plugin {
            // A plugin's parameters are its own (its descriptor's input schema).
            return Vec::new();
        }
        let params = self.params();
        let mut problems = Vec::new();
        for key in with.keys() {
            if !params.iter().any(|p| p.name == key) {
                let known: Vec<_> = params.iter().map(|p| p.name).collect();
                problems.push(WithProblem {
                    key: Some(key.clone()),
                    message: format!("action `{}` has no parameter `{key}`", self.name()),
                    hint: Some(format!("its parameters are: {}", known.join(", "))),
                });
            }
        }
        for param in params.iter().filter(|p| p.required) {
            if !with.contains_key(param.name) {
                problems.push(WithProblem {
                    key: None,
                    message: format!("action `{}` needs `with.{}`", self.name(), param.name),
                    hint: None,
                });
            }
        }
        problems.extend(match self {
            Self::Log => log::check(with),
            Self::Wait => wait::check(with),
            Self::Fail => fail::check(with),
            Self::Email => email::check(with),
            Self::Webhook => webhook::check(with),
            Self::Http => http::check(with),
            Self::Plugin => Vec::new(),
            Self::Request => request::check(with),
            Self::Escalate => escalate::check(with),
        });
        problems
    }

    /// Runs the action with its rendered `with` table.
    pub async fn run(self, cx: &ActionContext<'_>, with: &Json) -> Result<Outcome, StepError> {
        match self {
            Self::Log => log::run(cx, with),
            Self::Wait => wait::run(cx, with),
            Self::Fail => fail::run(cx, with),
            Self::Email => {
                let portfolios = email::portfolio_workbooks(cx, with).await?;
                email::run(cx, with, portfolios)
            }
            Self::Webhook => webhook::run(cx, with),
            Self::Http => http::run(cx, with).await,
            Self::Plugin => plugin::run(cx, with).await,
            Self::Request => request::run(cx, with).await,
            Self::Escalate => escalate::run(cx, with).await,
        }
    }

    /// Effects that must happen only after the step's result is committed.
    pub fn after_commit(self, cx: &ActionContext<'_>, output: &Json) {
        if self == Self::Log {
            log::after_commit(cx, output);
        }
    }
}

/// Reads a string parameter from a rendered `with` table.
pub(crate) fn str_param<'a>(with: &'a Json, key: &str) -> Result<Option<&'a str>, StepError> {
    match with.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s)),
        Some(other) => Err(StepError::fatal(format!(
            "`with.{key}` must be a string, got {other}"
        ))),
    }
}

/// Whether a literal value contains template syntax (and so can only be checked at run time).
pub(crate) fn is_dynamic(value: &Json) -> bool {
    matches!(value, Json::String(s) if crate::template::is_template(s))
}

/// The `headers` table of an `http` or `webhook` step, checked: a name that is not an HTTP token
/// or a value with a control character (a CR/LF from a trigger's input would start another
/// header) fails the step instead of reaching the wire.
pub(crate) fn header_pairs(with: &Json) -> Result<Vec<(String, String)>, StepError> {
    let mut out = Vec::new();
    let Some(headers) = with.get("headers") else {
        return Ok(out);
    };
    let Some(map) = headers.as_object() else {
        return Err(StepError::fatal(
            "`headers` must be a table of name = \"value\"",
        ));
    };
    for (name, value) in map {
        let Some(value) = value.as_str() else {
            return Err(StepError::fatal(format!(
                "header `{name}` must be a string"
            )));
        };
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(StepError::fatal(format!(
                "`{name}` is not a valid header name"
            )));
        }
        if value.chars().any(char::is_control)
            || reqwest::header::HeaderValue::from_str(value).is_err()
        {
            return Err(StepError::fatal(format!(
                "header `{name}` contains a control character (a line break?) and is not sent"
            )));
        }
        out.push((name.clone(), value.to_string()));
    }
    Ok(out)
}
