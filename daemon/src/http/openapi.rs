//! The machine-facing routes as one table: the router is built from it and the OpenAPI 3.1
//! document (`GET /api/openapi.json`) is generated from it, so the document cannot miss or
//! invent a route. Request bodies, query parameters, responses and error bodies have schemas
//! derived (with `schemars`) from the Rust types the handlers deserialize and serialize.
//!
//! The document is made per request from the live catalog: `POST /api/runs` lists each loaded
//! workflow with the inputs it declares (a `oneOf` on `workflow`), and each workflow with a
//! webhook trigger has its own `POST /hooks/{id}` path with its inputs. A generic client or
//! API fuzzer can therefore build requests the daemon accepts. Response links chain a started
//! run to reading, cancelling, retrying and resolving it.

use axum::Router;
use axum::routing::{MethodRouter, get, post};
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde_json::{Value as Json, json};

use super::{AppState, Role, api};
use crate::workflow::catalog::Catalog;

/// Makes the schema of a type (a `$ref` into `components/schemas` for named types).
type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn s<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

fn inline<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    T::json_schema(g)
}

/// What a request body is.
#[derive(Clone, Copy)]
enum BodyKind {
    /// JSON of this type.
    Json(SchemaFn),
    /// `POST /api/runs`: one alternative per loaded workflow.
    StartRun,
    /// `POST /hooks/{id}`: the workflow's inputs.
    HookInputs,
    /// Raw bytes in one of these media types.
    Raw(&'static [&'static str]),
}

#[derive(Clone, Copy)]
struct Body {
    kind: BodyKind,
    required: bool,
    description: &'static str,
}

/// One response: its status, what it means and (for success bodies) its schema. Error
/// statuses (4xx, 5xx) without a schema answer [`api::ApiError`].
#[derive(Clone, Copy)]
struct Resp {
    code: u16,
    what: &'static str,
    schema: Option<SchemaFn>,
    /// The body is this media type instead of JSON.
    media: Option<&'static str>,
}

const fn r(code: u16, what: &'static str) -> Resp {
    Resp {
        code,
        what,
        schema: None,
        media: None,
    }
}

const fn rs(code: u16, what: &'static str, schema: SchemaFn) -> Resp {
    Resp {
        code,
        what,
        schema: Some(schema),
        media: None,
    }
}

const fn text(code: u16, what: &'static str) -> Resp {
    file(code, what, "text/plain")
}

/// A body of another media type (`text/csv`, a workbook).
const fn file(code: u16, what: &'static str, media: &'static str) -> Resp {
    Resp {
        code,
        what,
        schema: None,
        media: Some(media),
    }
}

/// A response link: `operation`'s `param` is taken from `expr` (a runtime expression).
#[derive(Clone, Copy)]
struct Link {
    name: &'static str,
    operation: &'static str,
    param: &'static str,
    expr: &'static str,
}

/// One documented operation.
pub(super) struct Op {
    id: &'static str,
    method: &'static str,
    path: &'static str,
    /// The least role, or `None` for no bearer token (public, signed, or the link's token).
    role: Option<Role>,
    summary: &'static str,
    query: Option<SchemaFn>,
    body: Option<Body>,
    responses: Vec<Resp>,
    /// Links from the success responses.
    links: &'static [Link],
    handler: fn() -> MethodRouter<AppState>,
}

const RUN_LINKS: &[Link] = &[
    Link {
        name: "GetRun",
        operation: "getRun",
        param: "id",
        expr: "$response.body#/run_id",
    },
    Link {
        name: "CancelRun",
        operation: "cancelRun",
        param: "id",
        expr: "$response.body#/run_id",
    },
    Link {
        name: "RetryRun",
        operation: "retryRun",
        param: "id",
        expr: "$response.body#/run_id",
    },
    Link {
        name: "ResolveRun",
        operation: "resolveRun",
        param: "id",
        expr: "$response.body#/run_id",
    },
];

/// Every machine-facing route.
pub(super) fn ops() -> Vec<Op> {
    vec![
        Op {
            id: "healthz",
            method: "get",
            path: "/healthz",
            role: None,
            summary: "The process is up",
            query: None,
            body: None,
            responses: vec![text(200, "ok")],
            links: &[],
            handler: || get(|| async { "ok" }),
        },
        Op {
            id: "readyz",
            method: "get",
            path: "/readyz",
            role: None,
            summary: "The database answers and workflows are loaded",
            query: None,
            body: None,
            responses: vec![
                rs(200, "ready", s::<api::Readiness>),
                rs(503, "not ready", s::<api::Readiness>),
            ],
            links: &[],
            handler: || get(api::readyz),
        },
        Op {
            id: "metrics",
            method: "get",
            path: "/metrics",
            role: None,
            summary: "Prometheus text format",
            query: None,
            body: None,
            responses: vec![text(200, "metrics")],
            links: &[],
            handler: || get(api::metrics),
        },
        Op {
            id: "startRunByWebhook",
            method: "post",
            path: "/hooks/{workflow}",
            role: Some(Role::Operator),
            summary: "Start a run of a workflow with a webhook trigger (signed with X-Pmoflow-Timestamp/X-Pmoflow-Signature, or a bearer token)",
            query: None,
            body: Some(Body {
                kind: BodyKind::HookInputs,
                required: false,
                description: "the inputs, an object of the workflow's declared inputs",
            }),
            responses: vec![
                rs(202, "started", s::<api::RunStarted>),
                rs(
                    200,
                    "the same call again (signature or Idempotency-Key)",
                    s::<api::RunStarted>,
                ),
                r(
                    400,
                    "inputs not an object, not declared by the workflow, or invalid JSON",
                ),
                r(
                    401,
                    "no credentials, bad signature, or outside the 5-minute window",
                ),
                r(404, "no such workflow, or no webhook trigger"),
            ],
            links: RUN_LINKS,
            handler: || post(api::hook),
        },
        Op {
            id: "listWorkflows",
            method: "get",
            path: "/api/workflows",
            role: Some(Role::Viewer),
            summary: "Workflows with next fire and last run; invalid files",
            query: None,
            body: None,
            responses: vec![rs(200, "the workflows", s::<api::WorkflowList>)],
            links: &[Link {
                name: "GetWorkflow",
                operation: "getWorkflow",
                param: "id",
                expr: "$response.body#/workflows/0/id",
            }],
            handler: || get(api::workflows),
        },
        Op {
            id: "getWorkflow",
            method: "get",
            path: "/api/workflows/{id}",
            role: Some(Role::Viewer),
            summary: "One workflow: triggers, next 5 fires, last error, recent runs",
            query: None,
            body: None,
            responses: vec![
                rs(200, "the workflow", s::<api::WorkflowDetail>),
                r(404, "no such workflow"),
            ],
            links: &[],
            handler: || get(api::workflow),
        },
        Op {
            id: "listRuns",
            method: "get",
            path: "/api/runs",
            role: Some(Role::Viewer),
            summary: "Runs, newest first",
            query: Some(inline::<api::RunsQuery>),
            body: None,
            responses: vec![
                rs(200, "the runs", s::<api::RunList>),
                r(400, "unknown status, or limit outside 1..1000"),
            ],
            links: &[Link {
                name: "GetRun",
                operation: "getRun",
                param: "id",
                expr: "$response.body#/runs/0/id",
            }],
            handler: || get(api::runs).post(api::trigger),
        },
        Op {
            id: "startRun",
            method: "post",
            path: "/api/runs",
            role: Some(Role::Operator),
            summary: "Start a run",
            query: None,
            body: Some(Body {
                kind: BodyKind::StartRun,
                required: true,
                description: "the workflow and inputs overriding its defaults",
            }),
            responses: vec![
                rs(201, "started", s::<api::RunStarted>),
                r(400, "bad body, or an input the workflow does not declare"),
                r(404, "unknown workflow"),
            ],
            links: RUN_LINKS,
            handler: || post(api::trigger),
        },
        Op {
            id: "getRun",
            method: "get",
            path: "/api/runs/{id}",
            role: Some(Role::Viewer),
            summary: "A run with its steps and events",
            query: None,
            body: None,
            responses: vec![
                rs(200, "the run", s::<api::RunDetail>),
                r(404, "no such run"),
            ],
            links: &[],
            handler: || get(api::run),
        },
        Op {
            id: "cancelRun",
            method: "post",
            path: "/api/runs/{id}/cancel",
            role: Some(Role::Operator),
            summary: "Cancel a run",
            query: None,
            body: None,
            responses: vec![
                rs(200, "cancelled", s::<api::Done>),
                rs(
                    202,
                    "cancel requested (the run is executing)",
                    s::<api::Done>,
                ),
                r(404, "no such run"),
                r(409, "already finished"),
            ],
            links: &[],
            handler: || post(api::cancel),
        },
        Op {
            id: "resolveRun",
            method: "post",
            path: "/api/runs/{id}/resolve",
            role: Some(Role::Operator),
            summary: "Resolve a run's open escalation: the chain stops, the 最終報 goes out",
            query: None,
            body: Some(Body {
                kind: BodyKind::Json(s::<api::ResolveBody>),
                required: false,
                description: "a note and who resolved it (both optional)",
            }),
            responses: vec![
                rs(200, "resolved", s::<api::Done>),
                r(400, "bad body"),
                r(404, "no such run"),
                r(
                    409,
                    "the run has no open escalation (not an escalation, or already resolved)",
                ),
            ],
            links: &[],
            handler: || post(api::resolve),
        },
        Op {
            id: "retryRun",
            method: "post",
            path: "/api/runs/{id}/retry",
            role: Some(Role::Operator),
            summary: "Give a failed run's failed steps another attempt",
            query: None,
            body: None,
            responses: vec![
                rs(202, "retrying", s::<api::Done>),
                r(404, "no such run"),
                r(409, "the run is not failed"),
            ],
            links: &[],
            handler: || post(api::retry),
        },
        Op {
            id: "listRequests",
            method: "get",
            path: "/api/requests",
            role: Some(Role::Viewer),
            summary: "Requests: who was asked, who answered",
            query: Some(inline::<api::RequestsQuery>),
            body: None,
            responses: vec![
                rs(200, "the requests", s::<api::RequestList>),
                r(400, "unknown status, or limit outside 1..1000"),
            ],
            links: &[],
            handler: || get(api::requests),
        },
        Op {
            id: "getPortfolio",
            method: "get",
            path: "/api/portfolio",
            role: Some(Role::Viewer),
            summary: "The portfolio: typed answers per subject and period",
            query: Some(inline::<super::portfolio::PortfolioParams>),
            body: None,
            responses: vec![
                rs(200, "the entries", s::<super::portfolio::PortfolioList>),
                r(400, "a parameter longer than documented"),
            ],
            links: &[],
            handler: || get(super::portfolio::api_json),
        },
        Op {
            id: "getPortfolioCsv",
            method: "get",
            path: "/api/portfolio.csv",
            role: Some(Role::Viewer),
            summary: "The portfolio as CSV (UTF-8 with BOM), one line per subject and period",
            query: Some(inline::<super::portfolio::PortfolioParams>),
            body: None,
            responses: vec![
                file(200, "the CSV", "text/csv"),
                r(400, "a parameter longer than documented"),
            ],
            links: &[],
            handler: || get(super::portfolio::api_csv),
        },
        Op {
            id: "getPortfolioXlsx",
            method: "get",
            path: "/api/portfolio.xlsx",
            role: Some(Role::Viewer),
            summary: "The portfolio as an Excel workbook: a sheet per field, a line chart per numeric field",
            query: Some(inline::<super::portfolio::PortfolioParams>),
            body: None,
            responses: vec![
                file(
                    200,
                    "the workbook",
                    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                ),
                r(400, "a parameter longer than documented"),
                r(500, "the workbook could not be written"),
            ],
            links: &[],
            handler: || get(super::portfolio::api_xlsx),
        },
        Op {
            id: "listOutbox",
            method: "get",
            path: "/api/outbox",
            role: Some(Role::Viewer),
            summary: "Outgoing messages",
            query: Some(inline::<api::OutboxQuery>),
            body: None,
            responses: vec![
                rs(200, "the messages", s::<api::OutboxList>),
                r(400, "unknown status, or limit outside 1..1000"),
            ],
            links: &[Link {
                name: "RetryMessage",
                operation: "retryMessage",
                param: "id",
                expr: "$response.body#/messages/0/id",
            }],
            handler: || get(api::outbox),
        },
        Op {
            id: "retryMessage",
            method: "post",
            path: "/api/outbox/{id}/retry",
            role: Some(Role::Operator),
            summary: "Queue a dead message again",
            query: None,
            body: None,
            responses: vec![
                rs(200, "queued", s::<api::Done>),
                r(409, "no such dead message"),
            ],
            links: &[],
            handler: || post(api::outbox_retry),
        },
        Op {
            id: "getCluster",
            method: "get",
            path: "/api/cluster",
            role: Some(Role::Viewer),
            summary: "The daemons sharing the database: instance, label, version, state, heartbeat age, runs and roles held, warnings",
            query: None,
            body: None,
            responses: vec![rs(200, "the cluster", s::<crate::cluster::ClusterView>)],
            links: &[],
            handler: || get(api::cluster),
        },
        Op {
            id: "listAudit",
            method: "get",
            path: "/api/audit",
            role: Some(Role::Admin),
            summary: "The audit log, newest first",
            query: Some(inline::<api::AuditQuery>),
            body: None,
            responses: vec![
                rs(200, "the entries", s::<api::AuditList>),
                r(400, "limit outside 1..1000"),
            ],
            links: &[],
            handler: || get(api::audit_log),
        },
        Op {
            id: "acknowledge",
            method: "post",
            path: "/api/acks",
            role: Some(Role::Operator),
            summary: "Acknowledge an acknowledgement request",
            query: None,
            body: Some(Body {
                kind: BodyKind::Json(s::<super::AckBody>),
                required: true,
                description: "the request's token and who acknowledges",
            }),
            responses: vec![
                rs(201, "acknowledged", s::<api::Done>),
                rs(200, "already acknowledged", s::<api::Done>),
                r(400, "bad body"),
                r(404, "unknown token"),
                r(410, "closed or expired"),
            ],
            links: &[],
            handler: || post(super::api_ack),
        },
        Op {
            id: "receiveEmail",
            method: "post",
            path: "/inbound/email",
            role: Some(Role::Operator),
            summary: "Receive a raw RFC 5322 message (an MTA delivering over HTTP)",
            query: None,
            body: Some(Body {
                kind: BodyKind::Raw(&["message/rfc822", "application/octet-stream"]),
                required: true,
                description: "the message, as it arrived",
            }),
            responses: vec![
                rs(
                    202,
                    "stored (and processed, when it could be at once)",
                    s::<api::InboundReceived>,
                ),
                rs(200, "a message already received", s::<api::InboundReceived>),
                r(400, "empty body"),
            ],
            links: &[],
            handler: || post(super::inbound_email),
        },
        Op {
            id: "openapi",
            method: "get",
            path: "/api/openapi.json",
            role: None,
            summary: "This document",
            query: None,
            body: None,
            responses: vec![Resp {
                code: 200,
                what: "OpenAPI 3.1",
                schema: None,
                media: None,
            }],
            links: &[],
            handler: || get(openapi_json),
        },
    ]
}

async fn openapi_json(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::Json<Json> {
    let catalog = state.engine.as_ref().map(|e| e.registry().catalog());
    axum::Json(document(catalog.as_deref()))
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

/// Drops `null` from a schema (a query parameter is optional by being absent, not null).
fn non_null(mut schema: Json) -> Json {
    if let Some(Json::Array(types)) = schema.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let t = types[0].clone();
            schema["type"] = t;
        }
    }
    if let Some(any) = schema.get("anyOf").and_then(Json::as_array) {
        let rest: Vec<&Json> = any.iter().filter(|s| s["type"] != "null").collect();
        if rest.len() == 1 {
            let mut one = rest[0].clone();
            if let (Some(obj), Some(desc)) = (one.as_object_mut(), schema.get("description")) {
                obj.entry("description").or_insert(desc.clone());
            }
            return one;
        }
    }
    schema
}

/// The inputs object of a workflow: its declared inputs (any JSON value, the default shown),
/// nothing else.
fn inputs_schema(inputs: &serde_json::Map<String, Json>) -> Json {
    let props: serde_json::Map<String, Json> = inputs
        .iter()
        .map(|(k, v)| (k.clone(), json!({ "default": v })))
        .collect();
    json!({ "type": "object", "properties": props, "additionalProperties": false })
}

fn body_json(
    kind: BodyKind,
    g: &mut SchemaGenerator,
    catalog: Option<&Catalog>,
    hook: Option<&str>,
) -> Json {
    match kind {
        BodyKind::Json(f) => json!({ "application/json": { "schema": f(g) } }),
        BodyKind::Raw(media) => {
            let mut m = serde_json::Map::new();
            for t in media {
                m.insert(
                    (*t).to_string(),
                    json!({ "schema": { "type": "string", "format": "binary", "minLength": 1 } }),
                );
            }
            Json::Object(m)
        }
        BodyKind::StartRun => {
            let alternatives: Vec<Json> = catalog
                .map(|c| {
                    c.workflows
                        .values()
                        .map(|wf| {
                            json!({
                                "type": "object",
                                "title": wf.id,
                                "required": ["workflow"],
                                "properties": {
                                    "workflow": { "const": wf.id, "description": wf.name },
                                    "inputs": inputs_schema(&wf.inputs),
                                },
                                "additionalProperties": false,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            let schema = if alternatives.is_empty() {
                Json::from(g.subschema_for::<api::TriggerBody>())
            } else {
                json!({ "oneOf": alternatives })
            };
            json!({ "application/json": { "schema": schema } })
        }
        BodyKind::HookInputs => {
            let schema = hook
                .and_then(|id| catalog?.workflows.get(id))
                .map(|wf| inputs_schema(&wf.inputs))
                .unwrap_or_else(|| json!({ "type": "object" }));
            json!({ "application/json": { "schema": schema } })
        }
    }
}

/// `g` makes the schemas of what the daemon sends (serialize contract), `gi` of what it
/// reads (deserialize contract).
fn operation(
    op: &Op,
    g: &mut SchemaGenerator,
    gi: &mut SchemaGenerator,
    catalog: Option<&Catalog>,
    hook: Option<&str>,
) -> Json {
    let error = Json::from(g.subschema_for::<api::ApiError>());
    let mut responses: Vec<Resp> = op.responses.clone();
    let has = |rs: &[Resp], code: u16| rs.iter().any(|r| r.code == code);
    let mut extra = Vec::new();
    if op.query.is_some() || op.body.is_some() {
        extra.push(r(400, "a malformed request"));
    }
    if op.path.contains('{') {
        extra.push(r(400, "a path parameter with a control character"));
    }
    if let Some(b) = &op.body {
        extra.push(r(413, "the body is over the size limit"));
        if !matches!(b.kind, BodyKind::Raw(_)) {
            extra.push(r(415, "a body that is not `application/json`"));
        }
    }
    if op.role.is_some() {
        extra.push(r(401, "no bearer token, or an unknown one"));
        if op.role > Some(Role::Viewer) {
            extra.push(r(403, "the token's role is too low"));
        }
    }
    extra.push(r(
        429,
        "too many refused credentials or tokens from this client address; see Retry-After",
    ));
    if !matches!(op.id, "healthz" | "openapi" | "metrics") {
        extra.push(r(
            503,
            "the database does not answer, or the request timed out",
        ));
    }
    for e in extra {
        if !has(&responses, e.code) {
            responses.push(e);
        }
    }
    responses.sort_by_key(|r| r.code);
    let mut out = serde_json::Map::new();
    for resp in &responses {
        let mut o = json!({ "description": resp.what });
        if let Some(media) = resp.media {
            let schema = if media.starts_with("text/") {
                json!({ "type": "string" })
            } else {
                json!({ "type": "string", "contentMediaType": media })
            };
            o["content"] = json!({ media: { "schema": schema } });
        } else if let Some(f) = resp.schema {
            o["content"] = json!({ "application/json": { "schema": f(g) } });
        } else if resp.code >= 400 {
            o["content"] = json!({ "application/json": { "schema": error.clone() } });
        } else if op.id == "openapi" {
            o["content"] = json!({ "application/json": { "schema": { "type": "object" } } });
        }
        if resp.code == 429 {
            o["headers"] = json!({
                "Retry-After": { "description": "seconds until the block ends", "schema": { "type": "integer", "minimum": 1 } }
            });
        }
        if resp.code < 300 && !op.links.is_empty() {
            let links: serde_json::Map<String, Json> = op
                .links
                .iter()
                .map(|l| {
                    (
                        l.name.to_string(),
                        json!({ "operationId": l.operation, "parameters": { l.param: l.expr } }),
                    )
                })
                .collect();
            o["links"] = Json::Object(links);
        }
        out.insert(resp.code.to_string(), o);
    }
    let mut params: Vec<Json> = op
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .filter(|name| hook.is_none() || *name != "workflow")
        .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string", "minLength": 1, "pattern": "^[^\\u0000-\\u001F\\u007F]+$" } }))
        .collect();
    if let Some(f) = op.query {
        let q = Json::from(f(gi));
        let required: Vec<&str> = q["required"]
            .as_array()
            .map(|a| a.iter().filter_map(Json::as_str).collect())
            .unwrap_or_default();
        if let Some(props) = q["properties"].as_object() {
            for (name, schema) in props {
                let schema = non_null(schema.clone());
                let mut p = json!({
                    "name": name,
                    "in": "query",
                    "required": required.contains(&name.as_str()),
                    "schema": schema,
                });
                if let Some(d) = schema.get("description") {
                    p["description"] = d.clone();
                }
                params.push(p);
            }
        }
    }
    if op.id == "startRunByWebhook" {
        for (name, what) in [
            (
                "X-Pmoflow-Timestamp",
                "Unix seconds, signed with the body (signed calls)",
            ),
            (
                "X-Pmoflow-Signature",
                "`sha256=` and the hex HMAC-SHA256 of `timestamp.body` with the trigger's secret (signed calls)",
            ),
            (
                "Idempotency-Key",
                "the same key again returns the run it started",
            ),
        ] {
            params.push(json!({ "name": name, "in": "header", "required": false, "description": what, "schema": { "type": "string" } }));
        }
    }
    let summary = match hook {
        Some(id) => format!("Start a run of `{id}` (webhook trigger)"),
        None => op.summary.to_string(),
    };
    let mut o = json!({
        "operationId": match hook { Some(id) => format!("{}_{id}", op.id), None => op.id.to_string() },
        "summary": summary,
        "responses": out,
        "parameters": params,
    });
    if hook.is_some() {
        o["description"] = json!(op.summary);
    }
    if let Some(role) = op.role {
        o["security"] = if op.id == "startRunByWebhook" {
            // A bearer token, or a signature in the headers above.
            json!([{ "bearer": [] }, {}])
        } else {
            json!([{ "bearer": [] }])
        };
        o["x-pmoflow-role"] = json!(role);
    }
    if let Some(b) = op.body {
        o["requestBody"] = json!({
            "required": b.required,
            "description": b.description,
            "content": body_json(b.kind, gi, catalog, hook),
        });
    }
    o
}

/// The OpenAPI 3.1 document for `catalog` (the live one in the daemon).
pub fn document(catalog: Option<&Catalog>) -> Json {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    let mut g = settings.clone().for_serialize().into_generator();
    let mut gi = settings.for_deserialize().into_generator();
    let mut paths = serde_json::Map::new();
    for op in ops() {
        let hooks: Vec<String> = if op.id == "startRunByWebhook" {
            catalog
                .map(|c| {
                    c.workflows
                        .values()
                        .filter(|wf| wf.webhook.is_some())
                        .map(|wf| wf.id.clone())
                        .collect()
                })
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        if hooks.is_empty() {
            let o = operation(&op, &mut g, &mut gi, catalog, None);
            let entry = paths
                .entry(op.path.to_string())
                .or_insert_with(|| json!({}));
            entry[op.method] = o;
        } else {
            // One path per workflow with a webhook trigger, with its own inputs.
            for id in &hooks {
                let o = operation(&op, &mut g, &mut gi, catalog, Some(id));
                paths.insert(format!("/hooks/{id}"), json!({ op.method: o }));
            }
        }
    }
    // A type both read and sent (a status in a query and in a row) has one schema; what the
    // daemon sends wins.
    let mut schemas = gi.take_definitions(true);
    schemas.extend(g.take_definitions(true));
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "pmoflow",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The pmoflow daemon's HTTP API. Generated from the route table the daemon is built from and the types its handlers use; `POST /api/runs` and the `/hooks/…` paths list the loaded workflows and their inputs. Every error answers `{\"error\": \"…\"}`.",
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas,
        },
        "paths": paths,
    })
}
