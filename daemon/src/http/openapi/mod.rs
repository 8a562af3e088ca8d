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

mod schema;
pub use schema::document;

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
