//! The pages behind the links in request mails, shared by the answer form (`answer.rs`) and the
//! acknowledgement page (`/ack/{token}`), with their single-use signed nonces and the refusals
//! (404 unknown, 409 replayed, 410 closed or expired). Opening a link never changes anything.

#[allow(unused_imports)]
use super::*;

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
        form_fields: Vec::new(),
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
