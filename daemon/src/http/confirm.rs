//! The page behind a confirmation mail (`/confirm/{token}`): a reply matched only by subject tag
//! and sender, whose sender nobody authenticated, is held until the address it claims confirms
//! it here (one click, a POST with a signed nonce). Opening the link changes nothing.

use super::links::*;
#[allow(unused_imports)]
use super::*;

/// The held message a confirmation token names (404 for anything else).
async fn held(state: &AppState, token: &str) -> Option<crate::store::InboundRow> {
    if !crate::message::correlate::is_token(token) {
        return None;
    }
    let hash = crate::inbound::intake::confirm_hash(token);
    match state.store.inbound_by_confirm(&hash).await {
        Ok(row) => row,
        Err(e) => {
            tracing::error!(error = %e, "held message lookup failed");
            None
        }
    }
}

fn confirmed_before(state: &AppState) -> Response {
    message(
        state,
        StatusCode::OK,
        "確認済みです",
        "このメールは既に確認済みです。ありがとうございました。",
        "ok",
    )
}

pub(super) async fn confirm_page(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Response {
    let Some(row) = held(&state, &token).await else {
        return refused(&state, &token, Refused::Unknown, "confirmation page");
    };
    if row.status != "held" {
        return confirmed_before(&state);
    }
    let request = match &row.token {
        Some(t) => state.store.request_by_token(t).await.ok().flatten(),
        None => None,
    };
    let Some(request) = request else {
        return refused(&state, &token, Refused::Unknown, "confirmation page");
    };
    if state.clock.now() > request.expires_at {
        return refused(&state, &token, Refused::Expired, "confirmation page");
    }
    let text = crate::inbound::parse(&row.raw, state.services.replies.max_size)
        .map(|m| crate::message::reply::new_text(&m.text))
        .unwrap_or_default();
    page(
        &state,
        StatusCode::OK,
        "confirm.html",
        json!({
            "title": "ご回答の受付確認",
            "request": request.subject,
            "from": row.from,
            "subject": row.subject,
            "received": local(row.received_at, state.services.mail.timezone),
            "text": text.trim(),
            "nonce": new_nonce(&state, &token),
            "action": format!("/confirm/{token}"),
        }),
    )
}

pub(super) async fn confirm_submit(
    State(state): State<AppState>,
    Path(token): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let Some(row) = held(&state, &token).await else {
        return refused(&state, &token, Refused::Unknown, "confirmation");
    };
    let nonce = form.get("nonce").cloned().unwrap_or_default();
    if let Err(why) = check_nonce(&state, &token, &nonce) {
        tracing::warn!(inbound = %row.id, why, "confirmation with a bad nonce refused");
        return message(
            &state,
            StatusCode::FORBIDDEN,
            "送信できませんでした",
            "ページの有効期限が切れたか、不正な送信です。リンクを開き直してください。",
            "error",
        );
    }
    match state.intake.confirm(&token, true).await {
        Ok(None) => confirmed_before(&state),
        Ok(Some(p)) => match p.outcome.as_str() {
            "answer" => message(
                &state,
                StatusCode::OK,
                "回答を受け付けました",
                "ご確認ありがとうございました。ご回答を受け付けました。",
                "ok",
            ),
            "incomplete_answer" => message(
                &state,
                StatusCode::OK,
                "回答を受け付けました",
                "ご確認ありがとうございました。ご回答を受け付けましたが、不足している項目があります。別途お送りするメールをご確認ください。",
                "ok",
            ),
            _ => {
                tracing::info!(inbound = %p.id, outcome = %p.outcome, "confirmed reply not taken as an answer");
                message(
                    &state,
                    StatusCode::GONE,
                    "受付終了",
                    "この依頼の受付は終了しているため、回答として受け付けられませんでした。PMO事務局にお問い合わせください。",
                    "error",
                )
            }
        },
        Err(e) => {
            tracing::error!(error = %e, "confirmation could not be stored");
            unavailable(&state)
        }
    }
}
