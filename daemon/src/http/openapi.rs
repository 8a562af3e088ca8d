//! The machine-facing routes as one table: the router is built from it and the OpenAPI document
//! (`GET /api/openapi.json`) is generated from it, so the document cannot miss or invent a route.

use axum::Router;
use axum::routing::{MethodRouter, get, post};
use serde_json::{Value as Json, json};

use super::{AppState, Role, api};

/// One documented operation.
pub(super) struct Op {
    pub method: &'static str,
    pub path: &'static str,
    /// The least role, or `None` for no bearer token (public, signed, or the link's token).
    pub role: Option<Role>,
    pub summary: &'static str,
    /// Request body media type and a description of it.
    pub body: Option<(&'static str, &'static str)>,
    /// Status codes and what they mean.
    pub responses: &'static [(u16, &'static str)],
    pub handler: fn() -> MethodRouter<AppState>,
}

const AUTH: &[(u16, &str)] = &[
    (401, "no bearer token, or an unknown one"),
    (403, "the token's role is too low"),
];

/// Every machine-facing route.
pub(super) fn ops() -> Vec<Op> {
    vec![
        Op {
            method: "get",
            path: "/healthz",
            role: None,
            summary: "The process is up",
            body: None,
            responses: &[(200, "ok")],
            handler: || get(|| async { "ok" }),
        },
        Op {
            method: "get",
            path: "/readyz",
            role: None,
            summary: "The database answers and workflows are loaded",
            body: None,
            responses: &[(200, "ready"), (503, "not ready")],
            handler: || get(api::readyz),
        },
        Op {
            method: "get",
            path: "/metrics",
            role: None,
            summary: "Prometheus text format",
            body: None,
            responses: &[(200, "metrics")],
            handler: || get(api::metrics),
        },
        Op {
            method: "post",
            path: "/hooks/{workflow}",
            role: Some(Role::Operator),
            summary: "Start a run of a workflow with a webhook trigger (signed with X-Pmoflow-Timestamp/X-Pmoflow-Signature, or a bearer token)",
            body: Some(("application/json", "the inputs, an object")),
            responses: &[
                (202, "started: {run_id}"),
                (200, "the same call again: {run_id, duplicate}"),
                (400, "inputs not an object, undeclared, or invalid JSON"),
                (
                    401,
                    "no credentials, bad signature, or outside the 5-minute window",
                ),
                (403, "role too low"),
                (404, "no such workflow, or no webhook trigger"),
            ],
            handler: || post(api::hook),
        },
        Op {
            method: "get",
            path: "/api/workflows",
            role: Some(Role::Viewer),
            summary: "Workflows with next fire and last run; invalid files",
            body: None,
            responses: &[(200, "{workflows, invalid}")],
            handler: || get(api::workflows),
        },
        Op {
            method: "get",
            path: "/api/workflows/{id}",
            role: Some(Role::Viewer),
            summary: "One workflow: triggers, next 5 fires, last error, recent runs",
            body: None,
            responses: &[(200, "the workflow"), (404, "no such workflow")],
            handler: || get(api::workflow),
        },
        Op {
            method: "get",
            path: "/api/runs",
            role: Some(Role::Viewer),
            summary: "Runs, newest first (query: workflow, status, limit)",
            body: None,
            responses: &[(200, "{runs}"), (400, "unknown status")],
            handler: || get(api::runs).post(api::trigger),
        },
        Op {
            method: "post",
            path: "/api/runs",
            role: Some(Role::Operator),
            summary: "Start a run",
            body: Some(("application/json", "{workflow, inputs}")),
            responses: &[
                (201, "{run_id}"),
                (400, "bad body or inputs"),
                (404, "unknown workflow"),
            ],
            handler: || post(api::trigger),
        },
        Op {
            method: "get",
            path: "/api/runs/{id}",
            role: Some(Role::Viewer),
            summary: "A run with its steps and events",
            body: None,
            responses: &[(200, "{run, steps, events}"), (404, "no such run")],
            handler: || get(api::run),
        },
        Op {
            method: "post",
            path: "/api/runs/{id}/cancel",
            role: Some(Role::Operator),
            summary: "Cancel a run",
            body: None,
            responses: &[
                (200, "cancelled"),
                (202, "cancel requested (the run is executing)"),
                (404, "no such run"),
                (409, "already finished"),
            ],
            handler: || post(api::cancel),
        },
        Op {
            method: "post",
            path: "/api/runs/{id}/resolve",
            role: Some(Role::Operator),
            summary: "Resolve a run's open escalation: the chain stops, the 最終報 goes out",
            body: Some(("application/json", "{note?, by?}")),
            responses: &[
                (200, "resolved"),
                (400, "bad body"),
                (404, "no open escalation in this run"),
            ],
            handler: || post(api::resolve),
        },
        Op {
            method: "post",
            path: "/api/runs/{id}/retry",
            role: Some(Role::Operator),
            summary: "Give a failed run's failed steps another attempt",
            body: None,
            responses: &[
                (202, "retrying"),
                (404, "no such run"),
                (409, "the run is not failed"),
            ],
            handler: || post(api::retry),
        },
        Op {
            method: "get",
            path: "/api/requests",
            role: Some(Role::Viewer),
            summary: "Requests: who was asked, who answered (query: status, limit)",
            body: None,
            responses: &[(200, "{requests}"), (400, "unknown status")],
            handler: || get(api::requests),
        },
        Op {
            method: "get",
            path: "/api/outbox",
            role: Some(Role::Viewer),
            summary: "Outgoing messages (query: status, limit)",
            body: None,
            responses: &[(200, "{messages}"), (400, "unknown status")],
            handler: || get(api::outbox),
        },
        Op {
            method: "post",
            path: "/api/outbox/{id}/retry",
            role: Some(Role::Operator),
            summary: "Queue a dead message again",
            body: None,
            responses: &[(200, "queued"), (409, "no such dead message")],
            handler: || post(api::outbox_retry),
        },
        Op {
            method: "get",
            path: "/api/cluster",
            role: Some(Role::Viewer),
            summary: "The daemons sharing the database: instance, label, version, state, heartbeat age, runs and roles held, warnings",
            body: None,
            responses: &[
                (
                    200,
                    "{backend, daemons, roles, versions, schema_applied, schema_known, warnings}",
                ),
                (503, "the database does not answer"),
            ],
            handler: || get(api::cluster),
        },
        Op {
            method: "get",
            path: "/api/audit",
            role: Some(Role::Admin),
            summary: "The audit log, newest first",
            body: None,
            responses: &[(200, "{entries}")],
            handler: || get(api::audit_log),
        },
        Op {
            method: "post",
            path: "/api/acks",
            role: Some(Role::Operator),
            summary: "Acknowledge an acknowledgement request",
            body: Some(("application/json", "{token, by}")),
            responses: &[
                (201, "acknowledged"),
                (200, "already acknowledged"),
                (400, "bad body"),
                (404, "unknown token"),
                (410, "closed or expired"),
            ],
            handler: || post(super::api_ack),
        },
        Op {
            method: "post",
            path: "/inbound/email",
            role: Some(Role::Operator),
            summary: "Receive a raw RFC 5322 message (an MTA delivering over HTTP)",
            body: Some(("message/rfc822", "the message")),
            responses: &[
                (202, "{id, status, outcome}"),
                (200, "duplicate"),
                (400, "empty body"),
                (413, "over the size limit"),
            ],
            handler: || post(super::inbound_email),
        },
        Op {
            method: "get",
            path: "/api/openapi.json",
            role: None,
            summary: "This document",
            body: None,
            responses: &[(200, "OpenAPI 3.1")],
            handler: || get(|| async { axum::Json(document()) }),
        },
    ]
}

/// Adds every operation to `router` (paths with several methods are merged).
pub(super) fn routes(mut router: Router<AppState>) -> Router<AppState> {
    let mut seen = std::collections::BTreeSet::new();
    for op in ops() {
        // `GET /api/runs` also registers `POST` (a path is routed once).
        if seen.insert(op.path) {
            router = router.route(op.path, (op.handler)());
        }
    }
    router
}

/// The OpenAPI 3.1 document.
pub fn document() -> Json {
    let mut paths = serde_json::Map::new();
    for op in ops() {
        let mut responses = serde_json::Map::new();
        let auth: &[(u16, &str)] = if op.role.is_some() && op.path != "/hooks/{workflow}" {
            AUTH
        } else {
            &[]
        };
        for (code, what) in op.responses.iter().chain(auth) {
            responses.insert(code.to_string(), json!({ "description": what }));
        }
        let params: Vec<Json> = op
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        let mut o = json!({
            "summary": op.summary,
            "responses": responses,
            "parameters": params,
        });
        if let Some(role) = op.role {
            o["security"] = json!([{ "bearer": [] }]);
            o["x-pmoflow-role"] = json!(role);
        }
        if let Some((media, what)) = op.body {
            o["requestBody"] =
                json!({ "required": true, "description": what, "content": { media: {} } });
        }
        let entry = paths
            .entry(op.path.to_string())
            .or_insert_with(|| json!({}));
        entry[op.method] = o;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "pmoflow",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The pmoflow daemon's HTTP API. Generated from the route table the daemon is built from.",
        },
        "components": { "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } } },
        "paths": paths,
    })
}
