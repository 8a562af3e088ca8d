//! The answer form behind a request mail's link (`/answer/{token}`): fields rendered by what
//! they take (a `<select>` for a choice, a number input with its unit, a date input), the 様式
//! download and upload, and the submission — checked on the server with the same types as a
//! reply by mail, answered `422` with every problem beside its field and the values kept.

use super::links::*;
#[allow(unused_imports)]
use super::*;
use crate::workbook::form::{Offered, read_offered};
use crate::workbook::{FormSpec, Kind};

pub(super) async fn latest_answer(
    state: &AppState,
    row: &RequestRow,
) -> Option<crate::store::AnswerRow> {
    let answers = state
        .store
        .answers_for(std::slice::from_ref(&row.token))
        .await
        .ok()?;
    let id = row.answer_id.as_ref()?;
    answers.into_iter().find(|a| &a.id == id)
}

pub(super) async fn answer_form(
    state: &AppState,
    token: &str,
    row: &RequestRow,
    status: StatusCode,
    values: &HashMap<String, String>,
    errors: &[(Option<String>, String)],
) -> Response {
    let tz = state.services.mail.timezone;
    let latest = latest_answer(state, row).await;
    let fields: Vec<Json> = row
        .fields
        .iter()
        .map(|f| {
            let value = values.get(&format!("field:{f}")).cloned().or_else(|| {
                latest.as_ref().and_then(|a| match a.fields.get(f) {
                    Some(Json::String(s)) => Some(s.clone()),
                    Some(Json::Null) | None => None,
                    Some(other) => Some(other.to_string()),
                })
            });
            let error: Vec<&str> = errors
                .iter()
                .filter(|(field, _)| field.as_deref() == Some(f.as_str()))
                .map(|(_, m)| m.as_str())
                .collect();
            let mut field = json!({
                "name": f,
                "required": row.required.contains(f),
                "value": value.unwrap_or_default(),
                "error": error.join(" "),
                "input": "text",
            });
            match row.types.get(f) {
                Some(Kind::Choice { choices }) => {
                    field["input"] = json!("select");
                    field["options"] = json!(choices);
                }
                Some(Kind::Number { unit, min, max }) => {
                    field["input"] = json!("number");
                    let u = unit.as_deref().unwrap_or("");
                    let n = |v: f64| format!("{}{u}", crate::workbook::value::number_text(v));
                    field["unit"] = json!(unit);
                    field["range"] = json!(match (min, max) {
                        (Some(a), Some(b)) => format!("{}から{}まで", n(*a), n(*b)),
                        (Some(a), None) => format!("{}以上", n(*a)),
                        (None, Some(b)) => format!("{}以下", n(*b)),
                        (None, None) => String::new(),
                    });
                }
                Some(Kind::Date) => field["input"] = json!("date"),
                Some(Kind::Bool) => {
                    field["input"] = json!("select");
                    field["options"] = json!(["はい", "いいえ"]);
                    if let Some(b) = crate::workbook::value::parse_bool(
                        field["value"].as_str().unwrap_or_default(),
                    ) {
                        field["value"] = json!(if b { "はい" } else { "いいえ" });
                    }
                }
                _ => {}
            }
            field
        })
        .collect();
    let general: Vec<&str> = errors
        .iter()
        .filter(|(field, _)| field.as_ref().is_none_or(|f| !row.fields.contains(f)))
        .map(|(_, m)| m.as_str())
        .collect();
    let text = values
        .get("text")
        .cloned()
        .or_else(|| latest.as_ref().map(|a| a.text.clone()))
        .unwrap_or_default();
    page(
        state,
        status,
        "answer.html",
        json!({
            "title": "回答フォーム",
            "subject": row.subject,
            "recipient": row.recipient,
            "deadline": row.deadline.map(|d| local(d, tz)),
            "answered": row.answered_at.map(|d| local(d, tz)),
            "fields": fields,
            "text": text,
            "errors": general,
            "problems": errors.len(),
            "nonce": new_nonce(state, token),
            "action": format!("/answer/{token}"),
            "form": row.form.as_ref().and_then(|f| f.get("file")).and_then(Json::as_str),
            "form_url": format!("/answer/{token}/form"),
        }),
    )
}

pub(super) async fn answer_page(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Response {
    match find(&state, &token, "request").await {
        Ok(row) if step_finished(&state, &row).await => {
            refused(&state, &token, Refused::Closed, "answer form")
        }
        Ok(row) => answer_form(&state, &token, &row, StatusCode::OK, &HashMap::new(), &[]).await,
        Err(why) => refused(&state, &token, why, "answer form"),
    }
}

/// `GET /answer/{token}/form`: the 様式 exactly as it was mailed to this addressee (prefilled),
/// for a PJMO whose mail system held the attachment back (attachment separation and
/// sanitising gateways are common in government networks). Taken from the request mail in the
/// outbox; opening it changes nothing.
pub(super) async fn answer_form_file(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Response {
    let row = match find(&state, &token, "request").await {
        Ok(row) => row,
        Err(why) => return refused(&state, &token, why, "form download"),
    };
    let not_found = |state: &AppState| {
        message(
            state,
            StatusCode::NOT_FOUND,
            "様式が見つかりません",
            "この依頼には様式がないか、様式を取り出せませんでした。依頼メールに添付の様式をご利用ください。",
            "error",
        )
    };
    let Some(file) = row
        .form
        .as_ref()
        .and_then(|f| f.get("file"))
        .and_then(Json::as_str)
        .map(str::to_string)
    else {
        return not_found(&state);
    };
    let mail = match state
        .store
        .outbox_email(&format!("<{}>", row.message_id))
        .await
    {
        Ok(Some(m)) => m,
        Ok(None) => return not_found(&state),
        Err(e) => {
            tracing::error!(error = %e, "outbox lookup failed");
            return unavailable(&state);
        }
    };
    let raw = mail.payload["raw"].as_str().unwrap_or_default();
    use mail_parser::MimeHeaders as _;
    let parsed = mail_parser::MessageParser::default().parse(raw.as_bytes());
    let bytes = parsed.as_ref().and_then(|m| {
        m.attachments()
            .find(|a| a.attachment_name() == Some(file.as_str()))
            .map(|a| a.contents().to_vec())
    });
    let Some(bytes) = bytes else {
        tracing::warn!(request = row.tag, "the form is not in the request mail");
        return not_found(&state);
    };
    let content_type = if file.to_lowercase().ends_with(".xlsm") {
        "application/vnd.ms-excel.sheet.macroEnabled.12"
    } else {
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    };
    // RFC 6266: an ASCII fallback, and the Japanese name percent-encoded.
    let encoded: String = file
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let disposition = format!("attachment; filename=\"form.xlsx\"; filename*=UTF-8''{encoded}");
    let mut response = (StatusCode::OK, bytes).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// What an answer form sent: its text fields, and the files attached to it (the 様式).
struct Submission {
    form: HashMap<String, String>,
    files: Vec<Offered>,
}

/// Why a submission could not be read: its status and what is logged.
struct Unreadable(StatusCode, String);

impl From<axum::extract::multipart::MultipartError> for Unreadable {
    fn from(e: axum::extract::multipart::MultipartError) -> Self {
        Unreadable(e.status(), e.body_text())
    }
}

impl From<axum::extract::multipart::MultipartRejection> for Unreadable {
    fn from(e: axum::extract::multipart::MultipartRejection) -> Self {
        Unreadable(e.status(), e.body_text())
    }
}

impl From<axum::extract::rejection::FormRejection> for Unreadable {
    fn from(e: axum::extract::rejection::FormRejection) -> Self {
        Unreadable(e.status(), e.body_text())
    }
}

/// Reads a submission of the answer form: `multipart/form-data` (the page sends it, with the
/// 様式 as a file) or `application/x-www-form-urlencoded` (a form without a file input).
async fn submission(request: axum::extract::Request) -> Result<Submission, Unreadable> {
    use axum::extract::FromRequest;
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        });
    if !multipart {
        let Form(form) = Form::<HashMap<String, String>>::from_request(request, &()).await?;
        return Ok(Submission {
            form,
            files: Vec::new(),
        });
    }
    let mut parts = axum::extract::Multipart::from_request(request, &()).await?;
    let mut out = Submission {
        form: HashMap::new(),
        files: Vec::new(),
    };
    while let Some(part) = parts.next_field().await? {
        let name = part.name().unwrap_or_default().to_string();
        match part.file_name().map(str::to_string) {
            Some(file) => {
                let content_type = part
                    .content_type()
                    .unwrap_or("application/octet-stream")
                    .to_string();
                let content = part.bytes().await?;
                // A file input left empty still sends a part, nameless and empty.
                if !file.is_empty() || !content.is_empty() {
                    out.files.push(Offered {
                        name: file.rsplit(['/', '\\']).next().unwrap_or(&file).to_string(),
                        content_type,
                        content: content.to_vec(),
                    });
                }
            }
            None => {
                let text = part.text().await?;
                out.form.insert(name, text);
            }
        }
    }
    Ok(out)
}

pub(super) async fn answer_submit(
    State(state): State<AppState>,
    Path(token): Path<String>,
    request: axum::extract::Request,
) -> Response {
    let row = match find(&state, &token, "request").await {
        Ok(row) => row,
        Err(why) => return refused(&state, &token, why, "answer submission"),
    };
    let Submission { form, files } = match submission(request).await {
        Ok(s) => s,
        Err(Unreadable(status, why)) => {
            tracing::warn!(token_prefix = %lookup_of(&token), %status, why, "unreadable answer form refused");
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                let max = state.services.replies.max_size;
                let limit = if max >= 1 << 20 {
                    format!("{} MiB", max >> 20)
                } else {
                    format!("{} KiB", max >> 10)
                };
                return message(
                    &state,
                    status,
                    "ファイルが大きすぎます",
                    &format!(
                        "送信できるのは合計{limit}までです。様式以外のファイルを添付していないかご確認ください。"
                    ),
                    "error",
                );
            }
            return message(
                &state,
                StatusCode::BAD_REQUEST,
                "送信できませんでした",
                "送信内容を読み取れませんでした。ページを開き直してから送信してください。",
                "error",
            );
        }
    };
    let nonce = form.get("nonce").cloned().unwrap_or_default();
    if let Err(why) = check_nonce(&state, &token, &nonce) {
        tracing::warn!(token_prefix = %lookup_of(&token), why, "answer form with a bad nonce refused");
        return message(
            &state,
            StatusCode::FORBIDDEN,
            "送信できませんでした",
            "フォームの有効期限が切れたか、不正な送信です。ページを開き直してから送信してください。",
            "error",
        );
    }
    let key = format!("web:{}", hex::encode(Sha256::digest(nonce.as_bytes())));
    // A replay is named as such even once the request has closed; a new submission to a
    // request whose step has finished is refused (its output is final).
    match state.store.inbound_seen(&key).await {
        Ok(true) => return replayed(&state, &token),
        Ok(false) => {}
        Err(e) => {
            tracing::error!(error = %e, "answer lookup failed");
            return unavailable(&state);
        }
    }
    if step_finished(&state, &row).await {
        return refused(&state, &token, Refused::Closed, "answer submission");
    }
    let mut fields = std::collections::BTreeMap::new();
    for f in &row.fields {
        let v = form
            .get(&format!("field:{f}"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        if !v.is_empty() {
            fields.insert(
                f.clone(),
                crate::message::reply::normalise_value(&crate::message::correlate::fold_width(&v)),
            );
        }
    }
    // The 様式: read as a returned mail's attachment is (same precedence, same checks), but the
    // sender is here, so what needs correcting is shown at once and nothing is recorded.
    let spec: Option<FormSpec> = row
        .form
        .as_ref()
        .and_then(|f| serde_json::from_value(f.clone()).ok());
    let mut errors: Vec<(Option<String>, String)> = Vec::new();
    let (reads, broken) = match &spec {
        Some(spec) => read_offered(spec, files.clone(), crate::workbook::Limits::default()).await,
        None => (Vec::new(), Vec::new()),
    };
    for (name, why) in &broken {
        tracing::warn!(token_prefix = %lookup_of(&token), file = %name, why = %why, "uploaded workbook not readable");
        errors.push((None, format!("添付ファイル「{name}」: {why}")));
    }
    let mut flagged = Vec::new();
    if let Some(spec) = &spec {
        for p in crate::workbook::form::merge(spec, &reads, &mut fields) {
            flagged.extend(p.field.clone());
            errors.push((p.field, p.message));
        }
    }
    for p in row.types.apply(&mut fields) {
        if !p.field.as_ref().is_some_and(|f| flagged.contains(f)) {
            flagged.extend(p.field.clone());
            errors.push((p.field, p.message));
        }
    }
    for f in &row.required {
        let empty = fields
            .get(f)
            .is_none_or(|v| v.is_null() || v.as_str().is_some_and(|s| s.trim().is_empty()));
        if empty && !flagged.contains(f) {
            errors.push((Some(f.clone()), format!("「{f}」は必須項目です。")));
        }
    }
    if !errors.is_empty() {
        if !files.is_empty() {
            errors.push((
                None,
                "修正した様式を、もう一度添付して送信してください。".into(),
            ));
        }
        return answer_form(
            &state,
            &token,
            &row,
            StatusCode::UNPROCESSABLE_ENTITY,
            &form,
            &errors,
        )
        .await;
    }
    let answer = NewAnswer {
        token: token.clone(),
        via: "web".into(),
        from: Some(row.recipient.clone()),
        message_id: None,
        fields: serde_json::to_value(&fields).unwrap_or_default(),
        text: form
            .get("text")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        attachments: Json::Array(files.iter().map(|f| f.record(&reads, &broken)).collect()),
        complete: true,
        form_fields: crate::workbook::form::given_by_workbook(&reads, &fields),
    };
    match state
        .store
        .record_answer(state.clock.now(), &answer, &key)
        .await
    {
        Ok(Recorded::Accepted) => {
            if let Some(e) = &state.engine {
                e.wake();
            }
            tracing::info!(request = row.tag, via = "web", "answer recorded");
            message(
                &state,
                StatusCode::OK,
                "回答を受け付けました",
                "ご回答ありがとうございました。回答を受け付けました。受付が終了するまでは、同じリンクから修正できます。",
                "ok",
            )
        }
        Ok(Recorded::Replay) => replayed(&state, &token),
        Ok(Recorded::Closed) => refused(&state, &token, Refused::Closed, "answer submission"),
        Err(e) => {
            tracing::error!(error = %e, "answer could not be stored");
            unavailable(&state)
        }
    }
}
