//! What the scenario makes happen: a manual trigger, a resolution, and the people's answers —
//! replies built as real emails and fed to the intake, or answers given on the web form.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};

use super::run::Simulation;
use super::{Event, Inject, ResolveRule, SimError, err};
use crate::engine::RunRequest;
use crate::store::NewAnswer;

impl Simulation<'_> {
    /// Applies one scripted event at `now`.
    pub(super) async fn inject(
        &mut self,
        now: DateTime<Utc>,
        inject: Inject,
    ) -> Result<(), SimError> {
        match inject {
            Inject::Trigger(inputs) => {
                let req = RunRequest {
                    trigger_kind: "api",
                    ..RunRequest::manual(&inputs)
                };
                self.engine
                    .trigger(&self.workflow, &req)
                    .await
                    .map_err(err)?;
                Ok(())
            }
            Inject::Resolve(rule) => self.resolve(now, &rule).await,
            Inject::Reply { token, rule } => self.answer(now, &token, rule).await,
        }
    }

    /// `[[resolve]]`: resolves the given run's escalation (or the latest open one).
    async fn resolve(&mut self, now: DateTime<Utc>, rule: &ResolveRule) -> Result<(), SimError> {
        let run_id = match rule.run {
            Some(n) => self
                .run_numbers
                .iter()
                .find(|(_, v)| **v == n)
                .map(|(k, _)| k.clone()),
            None => {
                let mut open: Vec<(&String, &usize)> = self
                    .run_numbers
                    .iter()
                    .filter(|(k, _)| !self.finished.contains(*k))
                    .collect();
                open.sort_by_key(|(_, n)| **n);
                open.last().map(|(k, _)| (*k).clone())
            }
        };
        let by = rule.by.clone().unwrap_or_else(|| "operator".into());
        let done = match &run_id {
            Some(id) => self
                .store
                .resolve_incident(id, now, "cli", &by, &rule.note)
                .await
                .map_err(err)?,
            None => false,
        };
        self.events.push(Event {
            at: now,
            kind: "resolve".into(),
            run: run_id
                .as_ref()
                .and_then(|id| self.run_numbers.get(id).copied()),
            to: Vec::new(),
            cc: Vec::new(),
            summary: if done {
                format!("{by} resolves: {}", rule.note)
            } else {
                format!("{by} tries to resolve, but no escalation is open")
            },
            body: String::new(),
            attachments: Vec::new(),
        });
        Ok(())
    }

    /// Answer rule `rule` for the request `token`: a reply by mail through the intake, or an
    /// answer on the web form.
    async fn answer(
        &mut self,
        now: DateTime<Utc>,
        token: &str,
        rule: usize,
    ) -> Result<(), SimError> {
        let scenario = self.scenario;
        let r = &scenario.answer[rule];
        let Some(req) = self.store.request_by_token(token).await.map_err(err)? else {
            return Ok(());
        };
        let sender = r.from.clone().unwrap_or_else(|| req.recipient.clone());
        let mut body = String::new();
        for (k, v) in &r.fields {
            let v = match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            body.push_str(&format!("{k}: {v}\n"));
        }
        let text = r.text.clone().unwrap_or_else(|| {
            if req.kind == "ack" {
                "了解しました。対応します。".into()
            } else {
                String::new()
            }
        });
        if !text.is_empty() {
            body.push_str(&format!("\n{text}\n"));
        }
        let fields_line = r
            .fields
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    match v {
                        toml::Value::String(s) => s.clone(),
                        o => o.to_string(),
                    }
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let via = r
            .via
            .as_ref()
            .map_or_else(|| "email".to_string(), |v| v.get_ref().clone());
        // A returned 様式: a workbook with the scenario's cell values, and what pmoflow reads
        // from it (the same reader as for real mail) for the timeline.
        let workbook = match (&req.form, r.workbook.is_empty()) {
            (Some(form), false) => {
                let spec: crate::workbook::FormSpec =
                    serde_json::from_value(form.clone()).map_err(err)?;
                let values: BTreeMap<String, Json> = r
                    .workbook
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or_default()))
                    .collect();
                let bytes = crate::workbook::form::sample_answer(&spec, &values).map_err(err)?;
                let read = crate::workbook::form::read_answer(
                    &spec,
                    &spec.file,
                    &bytes,
                    &crate::workbook::Limits::default(),
                )
                .map_err(err)?;
                let shown: Vec<String> = read
                    .cells
                    .iter()
                    .filter(|c| !c.value.is_null() || c.error.is_some())
                    .map(|c| match &c.error {
                        Some(e) => format!("{}({}){e}", c.field, c.at),
                        None => format!(
                            "{}={} ({})",
                            c.field,
                            c.value
                                .as_str()
                                .map_or_else(|| c.value.to_string(), str::to_string),
                            c.at
                        ),
                    })
                    .collect();
                Some((spec.file.clone(), bytes, shown.join(", ")))
            }
            _ => None,
        };
        let fields_line = match &workbook {
            Some((file, _, read)) if fields_line.is_empty() => format!("{file} → {read}"),
            Some((file, _, read)) => format!("{fields_line}; {file} → {read}"),
            None => fields_line,
        };
        if via == "web" {
            // As the answer page would: typed, or refused (a scenario's mistake, said as such).
            let mut typed: std::collections::BTreeMap<String, serde_json::Value> = r
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or_default()))
                .collect();
            if let Some(p) = req.types.apply(&mut typed).into_iter().next() {
                return Err(SimError::new(format!(
                    "rule {rule}: the answer page would refuse this web answer: {}",
                    p.message
                )));
            }
            let fields = serde_json::to_value(&typed).map_err(err)?;
            let answer = NewAnswer {
                token: token.to_string(),
                via: "web".into(),
                from: Some(sender.clone()),
                message_id: None,
                fields: if req.kind == "ack" {
                    json!({ "ack": true })
                } else {
                    fields
                },
                text: r.text.clone().unwrap_or_default(),
                attachments: json!([]),
                complete: true,
                form_fields: Vec::new(),
            };
            self.store
                .record_answer(now, &answer, &format!("sim:{token}:{rule}"))
                .await
                .map_err(err)?;
        } else {
            self.replies += 1;
            let (content_type, body) = match &workbook {
                Some((file, bytes, _)) => {
                    let b64 =
                        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes);
                    let lines: Vec<&str> = b64
                        .as_bytes()
                        .chunks(76)
                        .map(|c| std::str::from_utf8(c).unwrap_or_default())
                        .collect();
                    (
                        "multipart/mixed; boundary=\"sim-boundary\"".to_string(),
                        format!(
                            "--sim-boundary\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n{body}\n--sim-boundary\nContent-Type: {}\nContent-Disposition: attachment; filename*=UTF-8''{}\nContent-Transfer-Encoding: base64\n\n{}\n--sim-boundary--\n",
                            crate::message::email::content_type_for(file),
                            percent(file),
                            lines.join("\n")
                        ),
                    )
                }
                None => ("text/plain; charset=utf-8".to_string(), body),
            };
            let raw = format!(
                "From: {sender}\r\nTo: {}\r\nSubject: Re: {}\r\nIn-Reply-To: <{}>\r\nMessage-ID: <sim.{}@simulate.invalid>\r\nDate: {}\r\nMIME-Version: 1.0\r\nContent-Type: {content_type}\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{}",
                crate::message::correlate::reply_address(&self.pattern, token),
                req.subject,
                req.message_id,
                self.replies,
                now.with_timezone(&self.tz).to_rfc2822(),
                body.replace('\n', "\r\n"),
            );
            self.intake
                .receive("simulate", raw.as_bytes())
                .await
                .map_err(err)?;
        }
        self.events.push(Event {
            at: now,
            kind: "answer".into(),
            run: self.run_numbers.get(&req.run_id).copied(),
            to: vec![req.recipient.clone()],
            cc: Vec::new(),
            summary: format!(
                "{sender} {} by {via}{}",
                if req.kind == "ack" {
                    "acknowledges"
                } else {
                    "answers"
                },
                if fields_line.is_empty() {
                    String::new()
                } else {
                    format!(": {fields_line}")
                }
            ),
            body: String::new(),
            attachments: Vec::new(),
        });
        Ok(())
    }
}

/// RFC 2231 percent-encoding of a file name.
fn percent(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
