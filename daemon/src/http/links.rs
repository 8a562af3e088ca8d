//! The pages behind the links in request mails: the answer form (`/answer/{token}`) and the
//! acknowledgement page (`/ack/{token}`), with their single-use signed nonces and the refusals
//! (404 unknown, 409 replayed, 410 closed or expired). Opening a link never changes anything.

#[allow(unused_imports)]
use super::*;
use crate::workbook::FormSpec;
use crate::workbook::form::{Offered, read_offered};

pub(super) fn page(state: &AppState, status: StatusCode, name: &str, ctx: Json) -> Response {
    match state
        .pages
        .get_template(name)
        .and_then(|t| t.render(minijinja::Value::from_serialize(&ctx)))
    {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, template = name, "page cannot be rendered");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

pub(super) fn message(
    state: &AppState,
    status: StatusCode,
    title: &str,
    text: &str,
    kind: &str,
) -> Response {
    page(
        state,
        status,
        "message.html",
        json!({ "title": title, "message": text, "kind": kind }),
    )
}

/// Why a token link is refused.
pub(super) enum Refused {
    Unknown,
    Expired,
    Closed,
}

pub(super) async fn find(state: &AppState, token: &str, kind: &str) -> Result<RequestRow, Refused> {
    if !crate::message::correlate::is_token(token) {
        return Err(Refused::Unknown);
    }
    let row = match state.store.request_by_token(token).await {
        Ok(Some(r)) if r.kind == kind => r,
        Ok(_) => return Err(Refused::Unknown),
        Err(e) => {
            tracing::error!(error = %e, "request lookup failed");
            return Err(Refused::Unknown);
        }
    };
    if state.clock.now() > row.expires_at {
        return Err(Refused::Expired);
    }
    if row.status == "closed" || row.status == "bounced" {
        return Err(Refused::Closed);
    }
    Ok(row)
}

/// A request whose step has finished takes no more answers: its output is final.
pub(super) async fn step_finished(state: &AppState, row: &RequestRow) -> bool {
    if row.final_at.is_some() {
        return true;
    }
    match state
        .store
        .request_step_finished(&row.run_id, &row.step_key)
        .await
    {
        Ok(done) => done,
        Err(e) => {
            tracing::error!(error = %e, "step lookup failed");
            false
        }
    }
}

pub(super) fn refused(state: &AppState, token: &str, why: Refused, what: &str) -> Response {
    let prefix = lookup_of(token).chars().take(8).collect::<String>();
    match why {
        Refused::Unknown => {
            tracing::warn!(token_prefix = %prefix, what, "link with an unknown or forged token refused");
            message(
                state,
                StatusCode::NOT_FOUND,
                "リンクが無効です",
                "このリンクは無効です。メールに記載されたリンクをもう一度ご確認ください。",
                "error",
            )
        }
        Refused::Expired => {
            tracing::warn!(token_prefix = %prefix, what, "link with an expired token refused");
            message(
                state,
                StatusCode::GONE,
                "有効期限切れ",
                "このリンクは有効期限が切れています。PMO事務局にお問い合わせください。",
                "error",
            )
        }
        Refused::Closed => {
            tracing::warn!(token_prefix = %prefix, what, "link to a closed request refused");
            message(
                state,
                StatusCode::GONE,
                "受付終了",
                "この依頼の受付は終了しました。PMO事務局にお問い合わせください。",
                "error",
            )
        }
    }
}

type HmacSha256 = Hmac<Sha256>;

pub(super) fn sign(key: &[u8], token: &str, issued: i64, salt: &str) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| {
        // HMAC takes keys of any length; this branch cannot run.
        HmacSha256::new_from_slice(&[0u8; 32]).unwrap_or_else(|_| unreachable_mac())
    });
    mac.update(format!("{token}|{issued}|{salt}").as_bytes());
    mac.finalize().into_bytes().to_vec()
}

#[allow(clippy::panic)] // HMAC accepts every key length.
pub(super) fn unreachable_mac() -> HmacSha256 {
    panic!("HMAC rejected a key")
}

pub(super) fn new_nonce(state: &AppState, token: &str) -> String {
    let issued = state.clock.now().timestamp_millis();
    let mut salt = [0u8; 8];
    let _ = getrandom::fill(&mut salt);
    let salt = hex::encode(salt);
    let sig = hex::encode(sign(&state.key, token, issued, &salt));
    format!("{issued}.{salt}.{sig}")
}

/// Checks a form nonce: signed by us for this token, and not older than two hours.
pub(super) fn check_nonce(state: &AppState, token: &str, nonce: &str) -> Result<(), &'static str> {
    let mut parts = nonce.splitn(3, '.');
    let (Some(issued), Some(salt), Some(sig)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("malformed");
    };
    let issued: i64 = issued.parse().map_err(|_| "malformed")?;
    let sig = hex::decode(sig).map_err(|_| "malformed")?;
    let mut mac = HmacSha256::new_from_slice(&state.key).map_err(|_| "key")?;
    mac.update(format!("{token}|{issued}|{salt}").as_bytes());
    mac.verify_slice(&sig).map_err(|_| "bad signature")?;
    let age = state.clock.now().timestamp_millis() - issued;
    if !(0..=NONCE_TTL_MS).contains(&age) {
        return Err("expired");
    }
    Ok(())
}

pub(super) fn local(t: DateTime<Utc>, tz: chrono_tz::Tz) -> String {
    let l = t.with_timezone(&tz);
    format!(
        "{}{}",
        crate::calendar::format::md_ja(l.date_naive()),
        l.format("%H:%M")
    )
}

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
    errors: &[String],
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
            json!({ "name": f, "required": row.required.contains(f), "value": value.unwrap_or_default() })
        })
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
            "errors": errors,
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
    let mut errors = Vec::new();
    let (reads, broken) = match &spec {
        Some(spec) => read_offered(spec, files.clone(), crate::workbook::Limits::default()).await,
        None => (Vec::new(), Vec::new()),
    };
    for (name, why) in &broken {
        tracing::warn!(token_prefix = %lookup_of(&token), file = %name, why = %why, "uploaded workbook not readable");
        errors.push(format!("添付ファイル「{name}」: {why}"));
    }
    let mut flagged = Vec::new();
    if let Some(spec) = &spec {
        for p in crate::workbook::form::merge(spec, &reads, &mut fields) {
            flagged.extend(p.field.clone());
            errors.push(p.message);
        }
    }
    for f in &row.required {
        let empty = fields
            .get(f)
            .is_none_or(|v| v.is_null() || v.as_str().is_some_and(|s| s.trim().is_empty()));
        if empty && !flagged.contains(f) {
            errors.push(format!("「{f}」は必須項目です。"));
        }
    }
    if !errors.is_empty() {
        if !files.is_empty() {
            errors.push("修正した様式を、もう一度添付して送信してください。".into());
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

pub(super) fn replayed(state: &AppState, token: &str) -> Response {
    tracing::warn!(token_prefix = %lookup_of(token), "replayed answer form refused");
    message(
        state,
        StatusCode::CONFLICT,
        "送信済みです",
        "この回答は既に受け付けています。修正する場合はリンクを開き直してください。",
        "error",
    )
}

pub(super) fn unavailable(state: &AppState) -> Response {
    message(
        state,
        StatusCode::SERVICE_UNAVAILABLE,
        "一時的なエラー",
        "一時的に回答を保存できませんでした。しばらくしてからもう一度送信してください。",
        "error",
    )
}

pub(super) async fn ack_page(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    match find(&state, &token, "ack").await {
        Ok(row) => {
            let done = (row.status == "answered").then(|| {
                format!(
                    "{}に確認済みです。",
                    row.answered_at
                        .map(|d| local(d, state.services.mail.timezone))
                        .unwrap_or_default()
                )
            });
            page(
                &state,
                StatusCode::OK,
                "ack.html",
                json!({
                    "title": "確認",
                    "subject": row.subject,
                    "recipient": row.recipient,
                    "done": done,
                    "nonce": new_nonce(&state, &token),
                    "action": format!("/ack/{token}"),
                }),
            )
        }
        Err(why) => refused(&state, &token, why, "ack page"),
    }
}

/// Records an acknowledgement once per request; `Ok(false)` if it was acknowledged before.
pub(super) async fn acknowledge(
    state: &AppState,
    row: &RequestRow,
    via: &str,
    by: Option<String>,
    key: &str,
) -> Result<Recorded, crate::store::StoreError> {
    if row.status == "answered" {
        return Ok(Recorded::Replay);
    }
    let answer = NewAnswer {
        token: row.token.clone(),
        via: via.into(),
        from: by.or_else(|| Some(row.recipient.clone())),
        message_id: None,
        fields: json!({ "ack": true }),
        text: String::new(),
        attachments: json!([]),
        complete: true,
    };
    let done = state
        .store
        .record_answer(state.clock.now(), &answer, key)
        .await?;
    if done == Recorded::Accepted
        && let Some(e) = &state.engine
    {
        e.wake();
    }
    Ok(done)
}

pub(super) async fn ack_submit(
    State(state): State<AppState>,
    Path(token): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let row = match find(&state, &token, "ack").await {
        Ok(row) => row,
        Err(why) => return refused(&state, &token, why, "ack submission"),
    };
    let nonce = form.get("nonce").cloned().unwrap_or_default();
    if let Err(why) = check_nonce(&state, &token, &nonce) {
        tracing::warn!(token_prefix = %lookup_of(&token), why, "ack form with a bad nonce refused");
        return message(
            &state,
            StatusCode::FORBIDDEN,
            "送信できませんでした",
            "ページの有効期限が切れたか、不正な送信です。リンクを開き直してください。",
            "error",
        );
    }
    let key = format!("web:{}", hex::encode(Sha256::digest(nonce.as_bytes())));
    match acknowledge(&state, &row, "web", None, &key).await {
        Ok(Recorded::Closed) => refused(&state, &token, Refused::Closed, "ack submission"),
        Ok(Recorded::Accepted) => {
            tracing::info!(request = row.tag, via = "web", "acknowledged");
            message(
                &state,
                StatusCode::OK,
                "確認を記録しました",
                "ご確認ありがとうございました。確認を記録しました。",
                "ok",
            )
        }
        Ok(Recorded::Replay) => message(
            &state,
            StatusCode::OK,
            "確認済みです",
            "この依頼は既に確認済みです。",
            "ok",
        ),
        Err(e) => {
            tracing::error!(error = %e, "acknowledgement could not be stored");
            message(
                &state,
                StatusCode::SERVICE_UNAVAILABLE,
                "一時的なエラー",
                "一時的に記録できませんでした。しばらくしてからもう一度お試しください。",
                "error",
            )
        }
    }
}
