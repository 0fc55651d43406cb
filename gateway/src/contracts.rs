//! Machine-readable contracts, generated from the Rust types (their JSON Schemas, through
//! schemars) and the view contracts: the OpenAPI 3.1 document of the HTTP gateway (served at
//! `/v1/openapi.json`) and the AsyncAPI 3 document of the NATS subjects. Both are committed
//! under `schemas/` and checked for staleness by the tests.

use serde_json::{Map, Value, json};

use crate::views::VIEWS;

/// The schemas of the types that cross the edge, and those only HTTP uses.
fn http_schemas() -> Map<String, Value> {
    let mut settings = schemars::generate::SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    let mut generator = settings.into_generator();
    generator.subschema_for::<crate::replays::ReplayRequest>();
    generator.subschema_for::<crate::replays::ReplayJob>();
    let mut schemas = type_schemas();
    schemas.extend(generator.take_definitions(true));
    schemas
}

/// Reusable schemas of the Rust types that cross the edge, with references rewritten to
/// `prefix` (`#/components/schemas/` in both documents).
fn type_schemas() -> Map<String, Value> {
    let mut settings = schemars::generate::SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    let mut generator = settings.into_generator();
    generator.subschema_for::<commands::Command>();
    generator.subschema_for::<commands::Outcome>();
    generator.subschema_for::<ledger::Event>();
    let mut schemas = generator.take_definitions(true);
    for (name, tag) in [
        ("Command", "type"),
        ("Outcome", "status"),
        ("Event", "type"),
    ] {
        if let Some(schema) = schemas.get_mut(name) {
            title_variants(schema, tag, name);
        }
    }
    schemas.insert("CloudEvent".into(), cloud_event_schema());
    schemas.insert(
        "Error".into(),
        json!({
            "description": "A request the gateway refused itself.",
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "description": "Stable, machine-readable."},
                    "message": {"type": "string", "description": "For people: what was wrong and what was expected."}
                }
            }}
        }),
    );
    schemas.insert(
        "ViewAnswer".into(),
        json!({
            "type": "object",
            "required": ["seq", "result"],
            "properties": {
                "seq": {"type": "integer", "minimum": 0, "description": "The ledger sequence the answer reflects (also its ETag)."},
                "result": {"description": "The operation's answer (docs/VIEWS.md; rows in schemas/views/)."}
            }
        }),
    );
    schemas.insert(
        "ViewRefusal".into(),
        json!({
            "type": "object",
            "required": ["seq", "error"],
            "properties": {
                "seq": {"type": "integer", "minimum": 0},
                "error": {"type": "object", "properties": {
                    "code": {"enum": ["bad_query", "not_found", "timeout", "too_large", "unavailable"]},
                    "message": {"type": "string"}
                }}
            }
        }),
    );
    schemas.insert(
        "EventPage".into(),
        json!({
            "type": "object",
            "required": ["events", "next_after"],
            "properties": {
                "events": {"type": "array", "items": {"$ref": "#/components/schemas/CloudEvent"}},
                "next_after": {"type": "integer", "minimum": 0, "description": "Ask for the next page with `after` set to this."},
                "last_seq": {"type": ["integer", "null"], "description": "The ledger's last sequence when the page was read."}
            }
        }),
    );
    schemas.insert(
        "BatchOutcomes".into(),
        json!({
            "type": "object",
            "required": ["outcomes"],
            "properties": {"outcomes": {"type": "array", "items": {
                "type": "object",
                "required": ["http_status", "outcome"],
                "properties": {
                    "http_status": {"type": "integer", "description": "The status this command alone would have been answered with."},
                    "outcome": {"$ref": "#/components/schemas/Outcome"}
                }
            }}}
        }),
    );
    schemas
}

/// Names each variant of a tagged enum by its tag (`order.place` -> `OrderPlaceCommand`), so
/// that code generators name their types after what they are instead of `Command_type_17`.
fn title_variants(schema: &mut Value, tag: &str, suffix: &str) {
    for variant in schema
        .get_mut("oneOf")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        let Some(value) = variant["properties"][tag]["const"].as_str() else {
            continue;
        };
        let title: String = value
            .split(['.', '_'])
            .map(|word| {
                let mut chars = word.chars();
                chars
                    .next()
                    .map(|first| first.to_uppercase().chain(chars).collect::<String>())
                    .unwrap_or_default()
            })
            .collect();
        variant["title"] = json!(format!("{title}{suffix}"));
    }
}

fn cloud_event_schema() -> Value {
    let string = |description: &str| json!({"type": "string", "description": description});
    json!({
        "description": "One ledger event in CloudEvents 1.0 JSON form. `data` is the event's payload as in the `Event` schema (its `data` member); `type` is `erp.` and the event type.",
        "type": "object",
        "required": ["specversion", "id", "source", "type", "subject", "time", "data", "seq"],
        "properties": {
            "specversion": {"const": "1.0"},
            "id": string("The event id (UUID v7)."),
            "source": string("urn:erp:ledger:<stream>"),
            "type": string("erp.<event type>, e.g. erp.order.placed"),
            "subject": string("The entity the event belongs to, e.g. ord.<order>"),
            "time": {"type": "string", "format": "date-time", "description": "When the ledger recorded it."},
            "datacontenttype": {"const": "application/json"},
            "data": {"type": "object"},
            "seq": {"type": "integer", "minimum": 1, "description": "Its position in the ledger."},
            "effectiveat": {"type": "string", "format": "date-time", "description": "Business time: when it happened, as its command said."},
            "actorid": string("Who acted."),
            "actorrole": string("In which role."),
            "commandid": string("The command that caused it."),
            "correlationid": string("The business flow it belongs to."),
            "legalentity": string("The legal entity it was recorded for."),
            "hash": string("SHA-256 of the stored bytes (hex).")
        }
    })
}

/// Replaces `{"$ref": "#/$defs/X"}` inside `value` with the definition itself.
fn inline_refs(value: &mut Value, defs: &Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref")
                && let Some(name) = r.strip_prefix("#/$defs/")
                && let Some(def) = defs.get(name)
            {
                let mut def = def.clone();
                inline_refs(&mut def, defs);
                map.remove("$ref");
                if let Value::Object(d) = def {
                    for (k, v) in d {
                        map.entry(k).or_insert(v);
                    }
                }
            }
            for v in map.values_mut() {
                inline_refs(v, defs);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| inline_refs(v, defs)),
        _ => {}
    }
}

/// One operation of a view, as the OpenAPI document describes it.
struct ViewOperation {
    view: &'static str,
    op: String,
    description: String,
    params: Map<String, Value>,
    required: Vec<String>,
}

/// Every operation of every view.
fn view_operations() -> Vec<ViewOperation> {
    let mut operations = Vec::new();
    for (view, contract) in VIEWS {
        let contract: Value = serde_json::from_str(contract).expect("view contracts are JSON");
        let defs = contract["query"]["$defs"].clone();
        for query in contract["query"]["oneOf"].as_array().into_iter().flatten() {
            let mut query = query.clone();
            inline_refs(&mut query, &defs);
            let op = query["properties"]["op"]["const"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let mut params = query["properties"].as_object().cloned().unwrap_or_default();
            params.remove("op");
            let required = query["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str())
                .filter(|r| *r != "op")
                .map(str::to_owned)
                .collect();
            let description = query["description"].as_str().unwrap_or_default().to_owned();
            operations.push(ViewOperation {
                view,
                op,
                description,
                params,
                required,
            });
        }
        operations.push(ViewOperation {
            view,
            op: "status".into(),
            description: "The view's checkpoint, lag behind the ledger and health.".into(),
            params: Map::new(),
            required: Vec::new(),
        });
        let mut rows = Map::new();
        rows.insert(
            "prefix".into(),
            json!({"type": "string", "description": "Only keys that start with this."}),
        );
        rows.insert(
            "after".into(),
            json!({"type": "string", "description": "The `next_after` of the previous page."}),
        );
        rows.insert("limit".into(), json!({"type": "integer", "minimum": 1}));
        operations.push(ViewOperation {
            view,
            op: "rows".into(),
            description: "Every row in key order, a page at a time.".into(),
            params: rows,
            required: Vec::new(),
        });
    }
    operations
}

fn response(description: &str, schema: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn retry_after() -> Value {
    json!({"Retry-After": {"description": "Seconds to wait before sending again (the same id is safe).", "schema": {"type": "integer"}}})
}

/// The OpenAPI 3.1 document of the gateway.
pub fn openapi() -> Value {
    let error = |d: &str| response(d, "Error");
    let outcome = |d: &str| response(d, "Outcome");
    let mut paths = Map::new();
    paths.insert("/v1/commands".into(), json!({"post": {
        "operationId": "submitCommand",
        "summary": "Send one command; the answer is its outcome, as on NATS. The command id is the idempotency key: sending it again answers the first outcome.",
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Command"}}}},
        "responses": {
            "200": outcome("Accepted (or the first outcome of an accepted command sent again)."),
            "400": outcome("Invalid: `field` names what is wrong; nothing was recorded."),
            "401": error("No valid bearer token."),
            "403": outcome("Forbidden: the user's roles, entities or actor do not allow it (recorded), or the user sends no commands."),
            "409": outcome("The command id was used before with another body."),
            "422": outcome("Rejected by a business rule (its `code`); recorded."),
            "503": {"description": "Unavailable: nothing was stored; send it again.", "headers": retry_after(), "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Outcome"}}}}
        }
    }}));
    paths.insert("/v1/commands/batch".into(), json!({"post": {
        "operationId": "submitCommands",
        "summary": "Send many commands in order (at most 5,000), many awaiting an answer at once; every outcome comes back in the same order.",
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "array", "maxItems": crate::BATCH_COMMANDS_MAX, "items": {"$ref": "#/components/schemas/Command"}}}}},
        "responses": {
            "200": response("Every command's outcome, in order.", "BatchOutcomes"),
            "400": error("The body is not a JSON array."),
            "401": error("No valid bearer token."),
            "413": error("More than 5,000 commands.")
        }
    }}));
    paths.insert("/v1/commands/{command_id}".into(), json!({"get": {
        "operationId": "getOutcome",
        "summary": "The recorded outcome of a command.",
        "parameters": [{"name": "command_id", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}}],
        "responses": {
            "200": outcome("Its outcome."),
            "400": error("Not a UUID."),
            "404": {"description": "No outcome recorded for this id.", "content": {"application/json": {"schema": {"type": "object", "properties": {"status": {"const": "unknown"}, "command_id": {"type": "string"}}}}}},
            "503": error("The processor did not answer.")
        }
    }}));
    paths.insert("/v1/views".into(), json!({"get": {
        "operationId": "listViews",
        "summary": "The views and their query contracts.",
        "responses": {"200": {"description": "Views.", "content": {"application/json": {"schema": {"type": "object"}}}}}
    }}));
    for ViewOperation {
        view,
        op,
        description,
        params,
        required,
    } in view_operations()
    {
        let mut parameters: Vec<Value> = params
            .iter()
            .map(|(name, schema)| {
                json!({"name": name, "in": "query", "required": required.contains(name), "schema": schema})
            })
            .collect();
        parameters.push(json!({"name": "min_seq", "in": "query", "required": false,
            "description": "Answer only once the view has applied the ledger up to this sequence (read-your-writes); 504 if it does not in time.",
            "schema": {"type": "integer", "minimum": 0}}));
        parameters.push(json!({"name": "If-None-Match", "in": "header", "required": false, "schema": {"type": "string"}}));
        paths.insert(format!("/v1/views/{view}/{op}"), json!({"get": {
            "operationId": format!("{view}_{op}"),
            "tags": [view],
            "summary": description,
            "parameters": parameters,
            "responses": {
                "200": {"description": "The answer and the ledger sequence it reflects.",
                    "headers": {"ETag": {"description": "The sequence, quoted.", "schema": {"type": "string"}}},
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ViewAnswer"}}}},
                "304": {"description": "Unchanged since the ETag sent in If-None-Match."},
                "400": response("A parameter is missing or of the wrong type.", "ViewRefusal"),
                "401": error("No valid bearer token."),
                "404": response("No such row.", "ViewRefusal"),
                "503": error("The view's projector is not answering."),
                "504": response("The view did not reach `min_seq` in time.", "ViewRefusal")
            }
        }}));
    }
    paths.insert("/v1/views/{view}/changes".into(), json!({"get": {
        "operationId": "viewChanges",
        "summary": "The view's rows as Server-Sent Events: `change` events (data: key, value or null when deleted, generation, initial), first the whole state then every change. Reconnect with the last id as Last-Event-ID to get only what changed since; a `reset` event says a rebuild replaced the generation and its whole state follows.",
        "parameters": [
            {"name": "view", "in": "path", "required": true, "schema": {"enum": VIEWS.map(|(v, _)| v)}},
            {"name": "Last-Event-ID", "in": "header", "required": false, "schema": {"type": "string", "description": "<generation>:<revision>"}}
        ],
        "responses": {"200": {"description": "An event stream.", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                      "400": error("A Last-Event-ID this stream did not send."),
                      "404": error("No such view.")}
    }}));
    paths.insert("/v1/events".into(), json!({"get": {
        "operationId": "listEvents",
        "summary": "The ledger's events after a sequence, oldest first, as CloudEvents (committed batches only). With credentials: the auditor and users with the admin or auditor role.",
        "parameters": [
            {"name": "after", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0, "default": 0}},
            {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": crate::events::PAGE_MAX, "default": crate::events::PAGE_DEFAULT}}
        ],
        "responses": {"200": response("A page of events.", "EventPage"), "400": error("A bad parameter."), "401": error("No valid bearer token."), "403": error("The user may not read the ledger.")}
    }}));
    paths.insert("/v1/events/stream".into(), json!({"get": {
        "operationId": "streamEvents",
        "summary": "Every event after `after` (or Last-Event-ID), then each new one as it is committed: Server-Sent Events named `ledger`, id = sequence, data = CloudEvent JSON.",
        "parameters": [
            {"name": "after", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0}},
            {"name": "Last-Event-ID", "in": "header", "required": false, "schema": {"type": "integer", "minimum": 0}}
        ],
        "responses": {"200": {"description": "An event stream.", "content": {"text/event-stream": {"schema": {"type": "string"}}}}, "403": error("The user may not read the ledger.")}
    }}));
    let replays = "With credentials: the auditor and users with the admin or auditor role (a replay reads the whole ledger).";
    paths.insert("/v1/replays".into(), json!({
        "post": {
            "operationId": "startReplay",
            "summary": format!("Replays a view as of a point of either timeline (as `erp replay` does): the point is resolved now, the ledger is read from sequence 1 in the background. 202 with the job; poll its Location. {replays}"),
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ReplayRequest"}}}},
            "responses": {"202": response("The replay, running.", "ReplayJob"), "400": error("A bad field (named in the message)."), "401": error("No valid bearer token."), "403": error("The user may not read the ledger."), "422": error("The point is ambiguous (the server's clock stepped back around it)."), "429": error(&format!("{} replays are running already.", crate::replays::RUNNING_MAX)), "503": error("The ledger could not be read.")}
        },
        "get": {
            "operationId": "listReplays",
            "summary": format!("The recent replays (the last {}), newest first, without rows; and the views a replay builds. {replays}", crate::replays::KEPT),
            "responses": {"200": {"description": "Replays and views.", "content": {"application/json": {"schema": {"type": "object", "properties": {
                "replays": {"type": "array", "items": {"$ref": "#/components/schemas/ReplayJob"}},
                "views": {"type": "array", "items": {"type": "object", "properties": {"view": {"type": "string"}, "holds": {"type": "string"}}}}}}}}},
                "401": error("No valid bearer token."), "403": error("The user may not read the ledger.")}
        }
    }));
    paths.insert("/v1/replays/{id}".into(), json!({"get": {
        "operationId": "getReplay",
        "summary": format!("A replay: progress while running; its rows once done; why, once failed. {replays}"),
        "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}}],
        "responses": {"200": response("The replay.", "ReplayJob"), "400": error("Not a UUID."), "401": error("No valid bearer token."), "403": error("The user may not read the ledger."), "404": error("No such replay (kept until the gateway restarts, the last few only).")}
    }}));
    let open = json!([]);
    paths.insert("/healthz".into(), json!({"get": {"operationId": "health", "security": open, "summary": "The gateway answers.", "responses": {"200": {"description": "Up."}}}}));
    paths.insert("/readyz".into(), json!({"get": {"operationId": "ready", "security": open, "summary": "Ready: the processor answers and it and every view are within --ready-lag records of the ledger's end.", "responses": {"200": {"description": "Ready."}, "503": {"description": "Not ready, with what is not."}}}}));
    paths.insert("/metrics".into(), json!({"get": {"operationId": "metrics", "security": open, "summary": "Prometheus metrics.", "responses": {"200": {"description": "Text exposition format.", "content": {"text/plain": {"schema": {"type": "string"}}}}}}}));
    paths.insert("/v1/openapi.json".into(), json!({"get": {"operationId": "openapi", "security": open, "summary": "This document.", "responses": {"200": {"description": "OpenAPI 3.1."}}}}));
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "erp gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Event-sourced inventory and order ledger: commands, views and the ledger's events over HTTP and JSON. The same commands, outcomes and views as on NATS (docs/HTTP.md).",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}
        },
        "servers": [{"url": "http://127.0.0.1:8080"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": http_schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "A token from `erp auth token USER`: requests act as that user. A gateway without --auth needs none."}}
        }
    })
}

/// The AsyncAPI 3 document of the NATS subjects: commands and their outcomes, queries, views.
pub fn asyncapi() -> Value {
    let schema = |name: &str| json!({"payload": {"$ref": format!("#/components/schemas/{name}")}});
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    messages.insert("Command".into(), schema("Command"));
    messages.insert("Outcome".into(), schema("Outcome"));
    messages.insert(
        "CommandId".into(),
        json!({"payload": {"type": "string", "format": "uuid"}}),
    );
    messages.insert("Status".into(), json!({"payload": {"type": "object"}}));
    messages.insert("ViewQuery".into(), json!({"payload": {"type": "object", "description": "The operation's query (schemas/views/<view>.schema.json), optionally with min_seq and timeout_ms."}}));
    messages.insert("ViewAnswer".into(), json!({"payload": {"oneOf": [{"$ref": "#/components/schemas/ViewAnswer"}, {"$ref": "#/components/schemas/ViewRefusal"}]}}));
    messages.insert("Event".into(), json!({"payload": {"$ref": "#/components/schemas/Event"}, "contentType": "application/octet-stream", "description": "Stored as bincode with the envelope (docs/EVENTS.md); the schema is the JSON form the event feed serves."}));
    let mut channel = |name: &str,
                       address: &str,
                       description: &str,
                       params: Value,
                       msgs: &[&str]| {
        let m: Map<String, Value> = msgs
            .iter()
            .map(|m| {
                (
                    (*m).to_owned(),
                    json!({"$ref": format!("#/components/messages/{m}")}),
                )
            })
            .collect();
        channels.insert(name.into(), json!({"address": address, "description": description, "parameters": params, "messages": m}));
    };
    let entity_user = json!({"entity": {"description": "The command's legal entity."}, "user": {"description": "The sending NATS user (with credentials; its commands are recorded as its actor)."}});
    channel(
        "commandRequest",
        "rpc.cmd.{entity}.{user}",
        "Request/reply: a command, answered with its outcome once stored.",
        entity_user.clone(),
        &["Command", "Outcome"],
    );
    channel(
        "commandIntake",
        "cmd.{entity}.{user}",
        "The durable intake (COMMANDS stream): a command published here is decided even if no processor is running; its outcome goes to the reply subject in its Erp-Reply-To header.",
        entity_user,
        &["Command"],
    );
    channel(
        "outcomeQuery",
        "rpc.outcome",
        "Request/reply: a command id, answered with its recorded outcome or {\"status\":\"unknown\"}.",
        json!({}),
        &["CommandId", "Outcome"],
    );
    channel(
        "processorStatus",
        "rpc.status",
        "Request/reply: the processor's status.",
        json!({}),
        &["Status"],
    );
    channel(
        "viewQuery",
        "view.{view}.{op}",
        "Request/reply: a view query.",
        json!({"view": {"enum": VIEWS.map(|(v, _)| v)}, "op": {"description": "The view's operation, or status / rows."}}),
        &["ViewQuery", "ViewAnswer"],
    );
    channel(
        "ledger",
        "ledger.>",
        "The LEDGER stream: events and batch markers, written only by the processor (read through a mirror with credentials).",
        json!({}),
        &["Event"],
    );
    let mut operation = |name: &str, action: &str, channel: &str, reply: Option<&str>| {
        let mut op =
            json!({"action": action, "channel": {"$ref": format!("#/channels/{channel}")}});
        if let Some(reply) = reply {
            op["reply"] =
                json!({"messages": [{"$ref": format!("#/channels/{channel}/messages/{reply}")}]});
        }
        operations.insert(name.into(), op);
    };
    operation("sendCommand", "send", "commandRequest", Some("Outcome"));
    operation("queueCommand", "send", "commandIntake", None);
    operation("askOutcome", "send", "outcomeQuery", Some("Outcome"));
    operation("askStatus", "send", "processorStatus", Some("Status"));
    operation("askView", "send", "viewQuery", Some("ViewAnswer"));
    operation("readLedger", "receive", "ledger", None);
    json!({
        "asyncapi": "3.0.0",
        "info": {"title": "erp on NATS", "version": env!("CARGO_PKG_VERSION"), "description": "The ledger's NATS subjects: the same commands, outcomes and views the HTTP gateway serves."},
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": type_schemas()}
    })
}
