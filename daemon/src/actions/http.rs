//! `action = "http"`: a request whose response (status, headers, JSON or text body) becomes the
//! step output, for workflows that read ministry systems. 5xx, 429 and network errors are
//! retryable; other non-2xx statuses fail the step unless listed in `ok_status`.

use std::collections::BTreeMap;

use serde_json::{Value as Json, json};

use super::{ActionContext, Outcome, Param, StepError, WithProblem, is_dynamic, str_param};

pub(crate) const PARAMS: &[Param] = &[
    Param {
        name: "url",
        required: true,
    },
    Param {
        name: "method",
        required: false,
    },
    Param {
        name: "headers",
        required: false,
    },
    Param {
        name: "json",
        required: false,
    },
    Param {
        name: "body",
        required: false,
    },
    Param {
        name: "ok_status",
        required: false,
    },
];

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];

pub(crate) fn check(with: &BTreeMap<String, Json>) -> Vec<WithProblem> {
    let mut problems = Vec::new();
    if let Some(m) = with.get("method").filter(|v| !is_dynamic(v))
        && !m
            .as_str()
            .is_some_and(|m| METHODS.contains(&m.to_ascii_uppercase().as_str()))
    {
        problems.push(WithProblem {
            key: Some("method".into()),
            message: format!("unknown HTTP method {m}"),
            hint: Some(format!("use one of {}", METHODS.join(", "))),
        });
    }
    if with.contains_key("json") && with.contains_key("body") {
        problems.push(WithProblem {
            key: Some("body".into()),
            message: "`http` takes either `json` or `body`, not both".into(),
            hint: None,
        });
    }
    problems
}

pub(crate) async fn run(cx: &ActionContext<'_>, with: &Json) -> Result<Outcome, StepError> {
    let url = str_param(with, "url")?.unwrap_or_default();
    let method = str_param(with, "method")?
        .unwrap_or("GET")
        .to_ascii_uppercase();
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| StepError::fatal(format!("unknown HTTP method `{method}`")))?;
    // The egress policy, before anything is sent; the client checks redirects and resolved
    // addresses again. A refused destination does not become allowed by retrying.
    let parsed = cx
        .services
        .egress
        .check_url(url)
        .map_err(|e| StepError::fatal(format!("request to {url} refused: {e}")))?;
    let mut req = cx.http.request(method, parsed);
    for (k, v) in super::header_pairs(with)? {
        req = req.header(k, v);
    }
    if let Some(j) = with.get("json") {
        req = req.json(j);
    } else if let Some(b) = str_param(with, "body")? {
        req = req.body(b.to_string());
    }
    let resp = req
        .send()
        .await
        .map_err(|e| match crate::egress::refusal(&e) {
            Some(refused) => StepError::fatal(format!("request to {url} refused: {refused}")),
            None => StepError::retryable(format!("HTTP request to {url} failed: {e}")),
        })?;
    let status = resp.status().as_u16();
    let headers: serde_json::Map<String, Json> = resp
        .headers()
        .iter()
        .filter_map(|(k, v)| {
            Some((
                k.as_str().to_string(),
                Json::String(v.to_str().ok()?.to_string()),
            ))
        })
        .collect();
    // Read as it streams, never more than the cap: an oversized answer fails the step (the
    // same URL would answer the same again, so it is not retried).
    let bytes = crate::egress::read_capped(resp, cx.services.egress.max_response())
        .await
        .map_err(|e| match e {
            crate::egress::ReadError::TooLarge { .. } => StepError::fatal(format!("{url}: {e}")),
            crate::egress::ReadError::Read(_) => {
                StepError::retryable(format!("reading the response of {url}: {e}"))
            }
        })?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let ok: Vec<u64> = with
        .get("ok_status")
        .and_then(Json::as_array)
        .map(|a| a.iter().filter_map(Json::as_u64).collect())
        .unwrap_or_default();
    if !(200..300).contains(&status) && !ok.contains(&u64::from(status)) {
        let snippet: String = text.chars().take(200).collect();
        let message = format!("{url} answered {status}: {snippet}");
        return Err(if status >= 500 || status == 429 || status == 408 {
            StepError::retryable(message)
        } else {
            StepError::fatal(message)
        });
    }
    let body = serde_json::from_str::<Json>(&text).unwrap_or(Json::String(text));
    Ok(Outcome::Done(
        json!({ "status": status, "headers": headers, "body": body }),
    ))
}
