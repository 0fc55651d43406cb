//! Views over HTTP: `GET /v1/views/{view}/{op}?field=value...` asks `view.<view>.<op>` with
//! the query string as its JSON body (typed by the view's schema in `schemas/views/`), with
//! `min_seq` for read-your-writes and an `ETag` from the ledger sequence the answer reflects;
//! `GET /v1/views/{view}/changes` streams the view's changes as Server-Sent Events,
//! resumable with `Last-Event-ID`.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use projections::client::{ResumeAfter, ViewClient, ViewError, ViewWatch, Watched};
use serde_json::{Value, json};

use crate::{Gateway, Refusal, error, unavailable};

/// Every view the gateway serves, with its query contract.
pub const VIEWS: [(&str, &str); 9] = [
    ("ats", include_str!("../../schemas/views/ats.schema.json")),
    (
        "allocation",
        include_str!("../../schemas/views/allocation.schema.json"),
    ),
    (
        "audit",
        include_str!("../../schemas/views/audit.schema.json"),
    ),
    (
        "margin",
        include_str!("../../schemas/views/margin.schema.json"),
    ),
    (
        "finance",
        include_str!("../../schemas/views/finance.schema.json"),
    ),
    (
        "replenishment",
        include_str!("../../schemas/views/replenishment.schema.json"),
    ),
    (
        "exceptions",
        include_str!("../../schemas/views/exceptions.schema.json"),
    ),
    ("kpis", include_str!("../../schemas/views/kpis.schema.json")),
    (
        "trace",
        include_str!("../../schemas/views/trace.schema.json"),
    ),
];

/// Parameters every view takes as whole numbers (`rows` paging, read-your-writes).
const COMMON_INTEGERS: [&str; 2] = ["limit", "min_seq"];

/// How each parameter of a view's queries is typed: names whose schema type is an integer or
/// a boolean; every other parameter is a string.
#[derive(Debug, Default)]
struct ParamTypes {
    integers: BTreeSet<String>,
    booleans: BTreeSet<String>,
}

fn param_types() -> &'static BTreeMap<&'static str, ParamTypes> {
    static TYPES: OnceLock<BTreeMap<&'static str, ParamTypes>> = OnceLock::new();
    TYPES.get_or_init(|| {
        VIEWS
            .iter()
            .map(|(view, schema)| {
                let schema: Value = serde_json::from_str(schema).expect("view schemas are JSON");
                let mut types = ParamTypes::default();
                types
                    .integers
                    .extend(COMMON_INTEGERS.iter().map(|s| s.to_string()));
                let queries = schema["query"]["oneOf"].as_array().cloned();
                for query in queries.into_iter().flatten() {
                    for (name, property) in query["properties"].as_object().into_iter().flatten() {
                        let has = |t: &str| match &property["type"] {
                            Value::String(s) => s == t,
                            Value::Array(a) => a.iter().any(|x| x == t),
                            _ => false,
                        };
                        if has("integer") {
                            types.integers.insert(name.clone());
                        } else if has("boolean") {
                            types.booleans.insert(name.clone());
                        }
                    }
                }
                (*view, types)
            })
            .collect()
    })
}

/// The JSON body for a query string, or which parameter is not of its type.
fn query_body(view: &str, params: &BTreeMap<String, String>) -> Result<Value, Refusal> {
    let types = &param_types()[view];
    let mut body = serde_json::Map::new();
    for (name, value) in params {
        let typed = if types.integers.contains(name) {
            json!(value.parse::<u64>().map_err(|_| bad_param(
                name,
                value,
                "a whole number of 0 or more"
            ))?)
        } else if types.booleans.contains(name) {
            json!(
                value
                    .parse::<bool>()
                    .map_err(|_| bad_param(name, value, "true or false"))?
            )
        } else {
            json!(value)
        };
        body.insert(name.clone(), typed);
    }
    Ok(Value::Object(body))
}

fn bad_param(name: &str, value: &str, expected: &str) -> Refusal {
    error(
        StatusCode::BAD_REQUEST,
        "bad_query",
        &format!("`{name}`: `{value}` is not {expected}"),
    )
}

fn known(view: &str) -> Result<(), Refusal> {
    if VIEWS.iter().any(|(v, _)| *v == view) {
        return Ok(());
    }
    Err(error(
        StatusCode::NOT_FOUND,
        "unknown_view",
        &format!(
            "no view `{view}`; the views are {}",
            VIEWS.map(|(v, _)| v).join(", ")
        ),
    ))
}

/// The status a view's refusal is answered with.
fn refusal_status(code: &str) -> StatusCode {
    match code {
        "bad_query" => StatusCode::BAD_REQUEST,
        "not_found" => StatusCode::NOT_FOUND,
        "timeout" => StatusCode::GATEWAY_TIMEOUT,
        "too_large" => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// `GET /v1/views`: the views and their query contracts.
pub async fn list(State(gw): State<Gateway>, headers: HeaderMap) -> Response {
    if let Err(response) = gw.caller(&headers) {
        return response.into_response();
    }
    let views: Vec<Value> = VIEWS
        .iter()
        .map(|(view, schema)| {
            let schema: Value = serde_json::from_str(schema).expect("json");
            json!({"view": view, "query": schema["query"], "version": schema["version"]})
        })
        .collect();
    (StatusCode::OK, axum::Json(json!({"views": views}))).into_response()
}

/// `GET /v1/views/{view}/{op}?...`.
pub async fn query(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    Path((view, op)): Path<(String, String)>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Response {
    let caller = match gw.caller(&headers) {
        Ok(caller) => caller,
        Err(refusal) => return refusal.into_response(),
    };
    if let Err(response) = known(&view) {
        return response.into_response();
    }
    let mut body = match query_body(&view, &params) {
        Ok(body) => body,
        Err(refusal) => return refusal.into_response(),
    };
    let min_seq = body
        .as_object_mut()
        .and_then(|b| b.remove("min_seq"))
        .and_then(|v| v.as_u64());
    let nats = match gw.connection(caller.as_deref()).await {
        Ok(nats) => nats,
        Err(refusal) => return refusal.into_response(),
    };
    let answer = ViewClient::new(nats)
        .ask(&view, &op, body, min_seq, gw.config().view_timeout)
        .await;
    gw.metrics()
        .view_answered(&view, !matches!(answer, Err(ViewError::Unavailable { .. })));
    match answer {
        Ok(answer) => {
            let etag = format!("\"{}\"", answer.seq);
            let matches = headers
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
            let mut response = if matches {
                StatusCode::NOT_MODIFIED.into_response()
            } else {
                (
                    StatusCode::OK,
                    axum::Json(json!({"seq": answer.seq, "result": answer.result})),
                )
                    .into_response()
            };
            response.headers_mut().insert(
                header::ETAG,
                HeaderValue::from_str(&etag).expect("digits are a header value"),
            );
            response
        }
        Err(ViewError::Refused {
            seq, code, message, ..
        }) => (
            refusal_status(&code),
            axum::Json(json!({"seq": seq, "error": {"code": code, "message": message}})),
        )
            .into_response(),
        Err(e @ ViewError::Unavailable { .. }) => unavailable(&e.to_string()).into_response(),
    }
}

/// `GET /v1/views/{view}/changes`: the view's rows as SSE events: first its whole state
/// (`initial: true`), then every change. Each event's id is `<generation>:<revision>`; a
/// client that reconnects with it as `Last-Event-ID` gets only what changed since (each row
/// at its latest value), or, if a rebuild replaced that generation meanwhile, a `reset` event
/// and then the new generation's whole state.
pub async fn changes(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    Path(view): Path<String>,
) -> Response {
    if let Err(response) = gw.caller(&headers) {
        return response.into_response();
    }
    if let Err(response) = known(&view) {
        return response.into_response();
    }
    let resume = match headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        None => None,
        Some(id) => match id.rsplit_once(':').and_then(|(g, r)| {
            Some(ResumeAfter {
                generation: g.to_owned(),
                revision: r.parse().ok()?,
            })
        }) {
            Some(after) => Some(after),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_last_event_id",
                    &format!(
                        "`Last-Event-ID: {id}`: expected `<generation>:<revision>` as this stream sent it"
                    ),
                ).into_response();
            }
        },
    };
    // The view buckets live with the projectors (with credentials, in their account).
    let nats = match gw.projector_connection().await {
        Ok(nats) => nats,
        Err(refusal) => return refusal.into_response(),
    };
    let js = async_nats::jetstream::new(nats);
    let watch = match ViewWatch::resume(js, &view, resume).await {
        Ok(watch) => watch,
        Err(e) => return unavailable(&e.to_string()).into_response(),
    };
    Sse::new(follow(watch))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn follow(watch: ViewWatch) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures::stream::unfold(Some(watch), |watch| async move {
        let mut watch = watch?;
        let event = match watch.next_watched().await? {
            Ok(Watched::Change(c)) => SseEvent::default()
                .event("change")
                .id(format!("{}:{}", c.generation, c.revision))
                .data(
                    json!({"key": c.key, "value": c.value, "generation": c.generation, "initial": c.initial})
                        .to_string(),
                ),
            Ok(Watched::Reset { generation }) => SseEvent::default()
                .event("reset")
                .data(json!({"generation": generation}).to_string()),
            Err(e) => {
                let event = SseEvent::default().event("error").data(
                    json!({"code": "unavailable", "message": e.to_string()}).to_string(),
                );
                return Some((Ok(event), None));
            }
        };
        Some((Ok(event), Some(watch)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_typed_by_the_views_schemas() {
        let params: BTreeMap<String, String> = [
            ("sku", "85123"),
            ("location", "UK-DC"),
            ("after_seq", "42"),
            ("limit", "10"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let body = query_body("ats", &params).unwrap();
        // A numeric SKU stays a string; the paging fields are numbers.
        assert_eq!(
            body,
            json!({"sku": "85123", "location": "UK-DC", "after_seq": 42, "limit": 10})
        );
        let bad: BTreeMap<String, String> = [("limit".to_owned(), "ten".to_owned())].into();
        let response = query_body("ats", &bad).unwrap_err().into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        for (view, _) in VIEWS {
            assert!(param_types()[view].integers.contains("limit"), "{view}");
        }
    }
}
