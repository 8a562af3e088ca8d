//! `POST /hooks/{workflow}`: webhook triggers, signed or with an operator token.

#[allow(unused_imports)]
use super::*;

/// `POST /hooks/{workflow}`: starts a run of a workflow with `[[triggers]] webhook = true`. The
/// JSON body is the inputs. Signed (`X-Pmoflow-Timestamp` + `X-Pmoflow-Signature`, the scheme of
/// outgoing webhooks, with the trigger's `secret`) or a bearer token with the operator role. A
/// signed request outside the 5-minute window is refused; the same signed request (or the same
/// `Idempotency-Key`) again returns the run it started.
pub(in crate::http) async fn hook(
    State(state): State<AppState>,
    Path(workflow): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(engine) = state.engine.clone() else {
        return api_error(StatusCode::SERVICE_UNAVAILABLE, "no engine in this process");
    };
    let catalog = engine.registry().catalog();
    let Some(hook) = catalog
        .workflows
        .get(&workflow)
        .and_then(|wf| wf.webhook.clone())
    else {
        return api_error(
            StatusCode::NOT_FOUND,
            &format!("no workflow `{workflow}` with a webhook trigger"),
        );
    };
    let signature = headers
        .get(crate::message::webhook::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    let (actor, dedup) = match signature {
        Some(sig) => {
            let Some(secret) = hook
                .secret
                .as_ref()
                .and_then(|name| state.services.secrets.get(name))
            else {
                tracing::warn!(
                    workflow,
                    "signed webhook call, but the trigger has no usable secret"
                );
                return api_error(
                    StatusCode::UNAUTHORIZED,
                    "this workflow does not accept signed calls (no secret configured)",
                );
            };
            let ts = headers
                .get(crate::message::webhook::TIMESTAMP_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if let Err(e) = crate::message::webhook::verify(
                secret.expose().as_bytes(),
                ts,
                &body,
                sig,
                state.clock.now().timestamp(),
                crate::message::webhook::DEFAULT_TOLERANCE_SECS,
            ) {
                tracing::warn!(workflow, reason = %e, "webhook call refused");
                return api_error(StatusCode::UNAUTHORIZED, &e.to_string());
            }
            ("signature".to_string(), Some(format!("hook:sig:{sig}")))
        }
        None => match authorize(&state, &headers, Role::Operator).await {
            Ok((name, _)) => (name, None),
            Err(r) => return r,
        },
    };
    let dedup = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(|k| format!("hook:key:{k}"))
        .or(dedup);
    let mut inputs = Json::Object(hook.inputs.clone());
    if !body.is_empty() {
        match serde_json::from_slice::<Json>(&body) {
            Ok(Json::Object(m)) => {
                if let Some(obj) = inputs.as_object_mut() {
                    obj.extend(m);
                }
            }
            Ok(other) => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    &format!("the body must be a JSON object of inputs, got {other}"),
                );
            }
            Err(e) => {
                return api_error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}"));
            }
        }
    }
    let req = RunRequest {
        trigger_kind: "webhook",
        dedup_key: dedup.as_deref(),
        ..RunRequest::manual(&inputs)
    };
    match engine.trigger(&workflow, &req).await {
        Ok(Created::New(id)) => {
            audit(&state, &actor, "hook", Some(&id), &workflow).await;
            ok(
                StatusCode::ACCEPTED,
                RunStarted {
                    run_id: id,
                    duplicate: false,
                },
            )
        }
        Ok(Created::Existing(id)) => ok(
            StatusCode::OK,
            RunStarted {
                run_id: id,
                duplicate: true,
            },
        ),
        Err(e) => trigger_error(&e),
    }
}
