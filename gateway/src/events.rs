//! The ledger as JSON: `GET /v1/events?after=SEQ` a page at a time, and
//! `GET /v1/events/stream` as Server-Sent Events that follow the log, resumable with
//! `Last-Event-ID`. Every event is a CloudEvents 1.0 JSON object; only committed batches are
//! served (foreign messages are passed over), so the feed holds exactly what the views apply.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use ledger::envelope::RecordedEvent;
use ledger::jetstream::ATOMIC_BATCH_MAX;
use ledger::walk::{WalkUntil, Walked, walk};
use serde_json::{Value, json};

use crate::{Gateway, Refusal, error, unavailable};

/// Events in one page, at most (and by default).
pub const PAGE_MAX: usize = 1_000;
pub const PAGE_DEFAULT: usize = 100;

/// One recorded event as a CloudEvents 1.0 JSON object. Extension attributes carry what the
/// ledger adds: `seq` (its position), `effectiveat` (business time; `time` is when it was
/// recorded), the actor, the command and flow it came from, its legal entity and its hash.
pub fn cloud_event(stream: &str, event: &RecordedEvent) -> Value {
    let e = &event.envelope;
    let data = serde_json::to_value(&e.event).expect("events serialise");
    json!({
        "specversion": "1.0",
        "id": e.event_id,
        "source": format!("urn:erp:ledger:{stream}"),
        "type": format!("erp.{}", e.event.event_type().name()),
        "subject": e.subject.relative(),
        "time": event.recorded_at.to_string(),
        "datacontenttype": "application/json",
        "data": data["data"],
        "seq": event.seq,
        "effectiveat": e.effective_at.to_string(),
        "actorid": e.actor.id.to_string(),
        "actorrole": e.actor.role.to_string(),
        "commandid": e.command_id,
        "correlationid": e.correlation_id,
        "legalentity": e.legal_entity.to_string(),
        "hash": event.hash.to_hex(),
    })
}

#[derive(Debug, serde::Deserialize)]
pub struct PageQuery {
    after: Option<String>,
    limit: Option<String>,
}

fn parse_u64(name: &str, value: Option<&str>) -> Result<Option<u64>, Refusal> {
    value
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                error(
                    StatusCode::BAD_REQUEST,
                    "bad_query",
                    &format!("`{name}`: `{v}` is not a whole number of 0 or more"),
                )
            })
        })
        .transpose()
}

/// Where a walk must start to deliver every event after `after`: a batch holds at most
/// `ATOMIC_BATCH_MAX` messages, so starting that far back frames the batch `after` is in
/// whole (earlier events are skipped; a batch cut at the start reads as foreign and is
/// passed over).
fn walk_start(after: u64) -> u64 {
    (after + 1)
        .saturating_sub(ATOMIC_BATCH_MAX as u64 - 1)
        .max(1)
}

/// `GET /v1/events?after=SEQ&limit=N`: up to N events after sequence SEQ, oldest first, and
/// `next_after` to ask for the next page with.
pub async fn page(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> Response {
    if let Err(refusal) = ledger_reader(&gw, &headers) {
        return refusal.into_response();
    }
    let after = match parse_u64("after", q.after.as_deref()) {
        Ok(after) => after.unwrap_or(0),
        Err(refusal) => return refusal.into_response(),
    };
    let limit = match parse_u64("limit", q.limit.as_deref()) {
        Ok(None) => PAGE_DEFAULT,
        Ok(Some(n)) if (1..=PAGE_MAX as u64).contains(&n) => n as usize,
        Ok(Some(n)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_query",
                &format!("`limit`: {n}; expected 1 to {PAGE_MAX}"),
            )
            .into_response();
        }
        Err(refusal) => return refusal.into_response(),
    };
    let log = &gw.inner.log;
    let stream = log.config().stream.clone();
    let mut walker = match walk(log, walk_start(after), WalkUntil::CaughtUp, None).await {
        Ok(walker) => walker,
        Err(e) => return unavailable(&format!("reading the ledger: {e}")).into_response(),
    };
    let mut events = Vec::new();
    // The last sequence the page covers: its last event, or, when it ends at the log's end,
    // the last record read (markers and foreign messages included).
    let mut covered = after;
    'walk: while let Some(item) = walker.next().await {
        let item = match item {
            Ok(item) => item,
            Err(e) => return unavailable(&format!("reading the ledger: {e}")).into_response(),
        };
        match item {
            Walked::Batch(batch) => {
                for event in batch.events.iter().filter(|e| e.seq > after) {
                    events.push(cloud_event(&stream, event));
                    covered = event.seq;
                    if events.len() == limit {
                        break 'walk;
                    }
                }
                covered = covered.max(batch.marker.seq);
            }
            Walked::Foreign(f) => covered = covered.max(f.seq),
        }
    }
    let last_seq = ledger::log::EventLog::last_sequence(log).await.ok();
    let body = json!({
        "events": events,
        "next_after": covered,
        "last_seq": last_seq,
    });
    let mut response = (StatusCode::OK, axum::Json(body)).into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Who asks for the feed, if they may read the ledger.
pub(crate) fn ledger_reader(gw: &Gateway, headers: &HeaderMap) -> Result<(), Refusal> {
    let caller = gw.caller(headers)?;
    if gw.may_read_ledger(&caller) {
        return Ok(());
    }
    Err(error(
        StatusCode::FORBIDDEN,
        "forbidden",
        &format!(
            "user `{}` may not read the ledger's events; the auditor and users with the admin or auditor role may",
            caller.as_deref().unwrap_or("?")
        ),
    ))
}

#[derive(Debug, serde::Deserialize)]
pub struct StreamQuery {
    after: Option<String>,
}

/// `GET /v1/events/stream?after=SEQ`: every event after SEQ (or after the `Last-Event-ID`
/// header a reconnecting client sends), then each new one as it is committed, as SSE events
/// named `ledger` whose id is the event's sequence.
pub async fn stream(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> Response {
    if let Err(refusal) = ledger_reader(&gw, &headers) {
        return refusal.into_response();
    }
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let after = match parse_u64(
        "Last-Event-ID",
        last_event_id.as_deref().or(q.after.as_deref()),
    ) {
        Ok(after) => after.unwrap_or(0),
        Err(refusal) => return refusal.into_response(),
    };
    let log = &gw.inner.log;
    let walker = match walk(log, walk_start(after), WalkUntil::Follow, None).await {
        Ok(walker) => walker,
        Err(e) => return unavailable(&format!("reading the ledger: {e}")).into_response(),
    };
    let stream_name = log.config().stream.clone();
    Sse::new(follow(walker, stream_name, after))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn follow<C: ledger::log::LogCursor + 'static>(
    walker: ledger::walk::Walker<C>,
    stream: String,
    after: u64,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let state = (walker, std::collections::VecDeque::<SseEvent>::new(), false);
    futures::stream::unfold(state, move |(mut walker, mut ready, mut ended)| {
        let stream = stream.clone();
        async move {
            loop {
                if let Some(event) = ready.pop_front() {
                    return Some((Ok(event), (walker, ready, ended)));
                }
                if ended {
                    return None;
                }
                match walker.next().await {
                    Some(Ok(Walked::Batch(batch))) => {
                        for event in batch.events.iter().filter(|e| e.seq > after) {
                            ready.push_back(
                                SseEvent::default()
                                    .event("ledger")
                                    .id(event.seq.to_string())
                                    .data(cloud_event(&stream, event).to_string()),
                            );
                        }
                    }
                    Some(Ok(Walked::Foreign(_))) => {}
                    Some(Err(e)) => {
                        // The client sees why the stream ended; reconnecting resumes after
                        // the last event it got.
                        ready.push_back(
                            SseEvent::default()
                                .event("error")
                                .data(json!({"code": "unavailable", "message": format!("reading the ledger: {e}")}).to_string()),
                        );
                        ended = true;
                    }
                    None => ended = true,
                }
            }
        }
    })
}
