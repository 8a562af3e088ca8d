//! The OpenAPI 3.1 document built from the route table: operations, parameters, bodies (the
//! start-a-run and webhook bodies from the live catalog's inputs), responses and links.

#[allow(unused_imports)]
use super::*;

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
