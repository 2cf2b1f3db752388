//! The HTTP API (axum on tokio), in HyperBEAM's path style: devices are addressed as
//! `/~name@1.0/...`, processes as `/<process-id>/<action>`, and `&key=value` inside a path
//! segment sets keys as a query string would (`/<pid>/compute&slot=3`).
//!
//! Every error is JSON `{"error": code, "message": text}` with the status of
//! [`NodeError::status`]; the code is [`NodeError::code`]. Every route is documented in
//! `docs/http-api.md`.
//!
//! Posted messages are verified in batches off the tokio workers ([`verify::Verifier`]).

pub mod assets;
mod attest;
pub mod server;
pub mod verify;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value as Json, json};

use crate::message::{Id, Message, json as message_json, wire};
use crate::node::{NodeError, Shared};
use crate::schedule::{Assignment, PROCESS_TYPE};

/// Media type of the rkyv wire form in request bodies.
pub const WIRE_MEDIA_TYPE: &str = "application/x-ferrobeam-message";
/// Most assignments one `schedule` request returns; ask again with `from` for more.
pub const SCHEDULE_PAGE_MAX: u64 = 1000;

impl IntoResponse for NodeError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = json!({ "error": self.code(), "message": self.to_string() });
        // The code travels in a header too, so the metrics layer can count it.
        (
            status,
            [("x-ferrobeam-error", self.code())],
            axum::Json(body),
        )
            .into_response()
    }
}

/// A handler's result: JSON, or a JSON error that is also counted in `/metrics`.
type ApiResult<T> = Result<T, ApiError>;

/// A [`NodeError`] on its way out, counted by code.
pub struct ApiError(NodeError);

impl<E: Into<NodeError>> From<E> for ApiError {
    fn from(e: E) -> Self {
        ApiError(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

/// Builds the router over the node's shared state.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/~meta@1.0/info", get(assets::info))
        .route("/~meta@1.0/info/address", get(info_address))
        .route("/~wasm@1.0/module", post(upload_module))
        .route("/~wasm@1.0/module/{id}", get(download_module))
        .route("/~scheduler@1.0/schedule", post(schedule_any))
        .route("/~message@1.0/{id}", get(message_by_id))
        .route("/metrics", get(metrics))
        .route("/{process}/{action}", get(process_get).post(process_post))
        .merge(assets::routes())
        .merge(attest::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            count_errors,
        ))
        .with_state(shared)
}

async fn count_errors(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    if response.status().is_client_error() || response.status().is_server_error() {
        let code = response
            .headers()
            .get("x-ferrobeam-error")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("http")
            .to_owned();
        shared
            .metrics
            .requests_rejected
            .get_or_create(&crate::node::metrics::CodeLabel { code })
            .inc();
    }
    response
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError(NodeError::NotFound(format!("no route for {}", uri.path())))
}

async fn info_address(State(shared): State<Arc<Shared>>) -> String {
    shared.address.to_string()
}

/// `/metrics` names hardware (CPU brand, MACs, GPU UUIDs): only callers with the full view of
/// the node's privacy level get it (local callers at `private-network`, operators always).
async fn metrics(
    State(shared): State<Arc<Shared>>,
    peer: assets::Peer,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    if assets::view_of(&shared, &headers, &peer, "/metrics")? != crate::assets::View::Full {
        return Err(NodeError::Forbidden(format!(
            "privacy level {} shows /metrics to operators and local callers only",
            shared.assets.privacy().as_str()
        ))
        .into());
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics_text(),
    ))
}

/// Reads a body up to the configured maximum; over it is a JSON 413, not axum's plain text.
/// A body that takes longer than `http-body-timeout-ms` (a stalled or trickling upload) is a
/// JSON 408, and hyper closes the connection since the body was not read to its end.
async fn read_body(shared: &Shared, body: Body) -> Result<Bytes, NodeError> {
    let limit = shared.config.body_bytes_max;
    let timeout_ms = shared.config.http_body_timeout_ms;
    tokio::time::timeout(
        Duration::from_millis(timeout_ms),
        axum::body::to_bytes(body, limit),
    )
    .await
    .map_err(|_| NodeError::RequestTimeout(timeout_ms))?
    .map_err(|_| NodeError::BodyTooLarge(limit))
}

/// Parses a message body in the form its content type names (JSON by default).
fn parse_message(headers: &HeaderMap, body: &[u8]) -> Result<Message, NodeError> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if media.starts_with(WIRE_MEDIA_TYPE) {
        Ok(wire::decode(body)?)
    } else {
        Ok(message_json::from_slice(body)?)
    }
}

async fn upload_module(
    State(shared): State<Arc<Shared>>,
    body: Body,
) -> ApiResult<(StatusCode, axum::Json<Json>)> {
    let wasm = read_body(&shared, body).await?;
    let id = shared.add_module(&wasm).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "module": id, "bytes": wasm.len() })),
    ))
}

async fn download_module(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id: Id = id.parse()?;
    let wasm = shared
        .store
        .module(&id)?
        .ok_or(NodeError::UnknownModule(id))?;
    Ok(([(header::CONTENT_TYPE, "application/wasm")], wasm))
}

async fn message_by_id(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Json>> {
    let id: Id = id.parse()?;
    let message = shared
        .store
        .message(&id)?
        .ok_or_else(|| NodeError::NotFound(format!("message {id}")))?;
    Ok(axum::Json(message_json::to_json(&message)))
}

/// `POST /~scheduler@1.0/schedule`: a `type: Process` message spawns; any other message is
/// scheduled on the process its `target` names.
async fn schedule_any(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, axum::Json<Json>)> {
    let bytes = read_body(&shared, body).await?;
    let message = parse_message(&headers, &bytes)?;
    if message.text("type") == Some(PROCESS_TYPE) {
        return spawn(&shared, message).await;
    }
    let target = message
        .text("target")
        .ok_or_else(|| NodeError::BadRequest("a message needs a target process".into()))?;
    let process: Id = target.parse()?;
    schedule_on(&shared, process, message).await
}

async fn spawn(shared: &Shared, message: Message) -> ApiResult<(StatusCode, axum::Json<Json>)> {
    let module = crate::node::process_module(&message)?;
    let verified = shared.verifier.verify(message).await?;
    if shared.store.module(&module)?.is_none() {
        return Err(NodeError::UnknownModule(module).into());
    }
    let ack = shared.sequencer.spawn(verified).await?;
    Ok(acknowledged(shared, &ack))
}

async fn schedule_on(
    shared: &Shared,
    process: Id,
    message: Message,
) -> ApiResult<(StatusCode, axum::Json<Json>)> {
    match message.text("target") {
        Some(target) if target == process.to_string() => {}
        Some(target) => {
            return Err(NodeError::TargetMismatch {
                target: target.chars().take(64).collect(),
                process,
            }
            .into());
        }
        None => {
            return Err(NodeError::BadRequest(
                "the message must name its process in a signed `target` field".into(),
            )
            .into());
        }
    }
    let verified = shared.verifier.verify(message).await?;
    let ack = shared.sequencer.schedule(process, verified).await?;
    Ok(acknowledged(shared, &ack))
}

/// 201 with the ack for a newly scheduled message, 200 for one scheduled before.
fn acknowledged(shared: &Shared, ack: &crate::node::Ack) -> (StatusCode, axum::Json<Json>) {
    let status = if ack.duplicate {
        StatusCode::OK
    } else {
        shared.metrics.messages_scheduled.inc();
        StatusCode::CREATED
    };
    (status, axum::Json(ack_json(ack)))
}

fn ack_json(ack: &crate::node::Ack) -> Json {
    json!({
        "id": ack.id,
        "process": ack.process,
        "slot": ack.slot,
        "assignment": ack.assignment,
        "timestamp": ack.timestamp,
        "hashpath": ack.hashpath,
        "duplicate": ack.duplicate,
    })
}

/// Splits a HyperBEAM-style segment `name&k=v&k2=v2` into the name and its keys.
pub fn split_segment(segment: &str) -> (&str, HashMap<String, String>) {
    let mut parts = segment.split('&');
    let name = parts.next().unwrap_or_default();
    let keys = parts
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_ascii_lowercase(), v.to_owned()))
        })
        .collect();
    (name, keys)
}

async fn process_post(
    State(shared): State<Arc<Shared>>,
    Path((process, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, axum::Json<Json>)> {
    let process: Id = process.parse()?;
    let (name, _) = split_segment(&action);
    if name != "schedule" {
        return Err(NodeError::NotFound(format!("no POST action {name:?}")).into());
    }
    let bytes = read_body(&shared, body).await?;
    let message = parse_message(&headers, &bytes)?;
    schedule_on(&shared, process, message).await
}

async fn process_get(
    State(shared): State<Arc<Shared>>,
    Path((process, action)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let process: Id = process.parse()?;
    let head = shared
        .head(&process)?
        .ok_or(NodeError::UnknownProcess(process))?;
    // A process exists from slot 0 on, so its head's next slot is at least 1.
    let last_slot = head.next_slot - 1;
    match process_action(&action, query)? {
        ProcessAction::Slot => Ok(axum::Json(json!({
            "process": process,
            "current": last_slot,
            "hashpath": head.hashpath,
            "timestamp": head.timestamp_ms,
        }))
        .into_response()),
        ProcessAction::Compute { slot } => compute(&shared, process, slot, last_slot).await,
        ProcessAction::Now => compute(&shared, process, last_slot, last_slot).await,
        ProcessAction::Schedule { from, to } => {
            let to = to.unwrap_or(last_slot).min(last_slot);
            schedule_page(&shared, process, from, to).map(IntoResponse::into_response)
        }
        ProcessAction::Process => {
            let message = shared
                .store
                .message(&process)?
                .ok_or(NodeError::UnknownProcess(process))?;
            Ok(axum::Json(message_json::to_json(&message)).into_response())
        }
    }
}

/// What `GET /<process>/<action>` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessAction {
    /// `slot`: the current slot and hashpath.
    Slot,
    /// `compute&slot=N`: the result of slot N.
    Compute {
        /// The slot.
        slot: u64,
    },
    /// `now`: the result of the current slot.
    Now,
    /// `schedule&from=A&to=B`: a page of assignments (`to` defaults to the current slot).
    Schedule {
        /// First slot.
        from: u64,
        /// Last slot, if given.
        to: Option<u64>,
    },
    /// `process`: the process message.
    Process,
}

/// Parses the action segment of `GET /<process>/<action>` (`name&k=v...`, see
/// [`split_segment`]) together with the query string; keys in the segment win over the query.
///
/// # Errors
/// [`NodeError::NotFound`] for an unknown action, [`NodeError::BadRequest`] for a missing or
/// malformed number.
pub fn process_action(
    action: &str,
    mut query: HashMap<String, String>,
) -> Result<ProcessAction, NodeError> {
    let (name, keys) = split_segment(action);
    query.extend(keys);
    match name {
        "slot" => Ok(ProcessAction::Slot),
        "compute" => {
            let slot = number(&query, "slot")?
                .ok_or_else(|| NodeError::BadRequest("compute needs slot=N".into()))?;
            Ok(ProcessAction::Compute { slot })
        }
        "now" => Ok(ProcessAction::Now),
        "schedule" => Ok(ProcessAction::Schedule {
            from: number(&query, "from")?.unwrap_or(0),
            to: number(&query, "to")?,
        }),
        "process" => Ok(ProcessAction::Process),
        other => Err(NodeError::NotFound(format!("no action {other:?}"))),
    }
}

fn number(query: &HashMap<String, String>, key: &str) -> Result<Option<u64>, NodeError> {
    query
        .get(key)
        .map(|v| {
            v.parse()
                .map_err(|_| NodeError::BadRequest(format!("{key} must be a non-negative integer")))
        })
        .transpose()
}

async fn compute(shared: &Shared, process: Id, slot: u64, last_slot: u64) -> ApiResult<Response> {
    if slot > last_slot {
        return Err(NodeError::SlotNotAssigned { process, slot }.into());
    }
    if let Some(record) = shared.store.result(&process, slot)? {
        return result_response(shared, process, slot, &record);
    }
    let wait = Duration::from_millis(shared.config.compute_wait_ms);
    if shared.computed.wait(process, slot, wait).await
        && let Some(record) = shared.store.result(&process, slot)?
    {
        return result_response(shared, process, slot, &record);
    }
    Err(NodeError::ComputePending { process, slot }.into())
}

/// The stored result record plus `pushed`: what the node did with each outbox message (not part
/// of the computation itself, so `ferrobeam audit` leaves it out of its comparison).
fn result_response(shared: &Shared, process: Id, slot: u64, record: &[u8]) -> ApiResult<Response> {
    let mut record: Json =
        serde_json::from_slice(record).map_err(|e| crate::store::StoreError::Corrupted {
            keyspace: "results",
            reason: e.to_string(),
        })?;
    let pushed = match shared.store.pushes(&process, slot)? {
        Some(bytes) => serde_json::from_slice(&bytes).unwrap_or(Json::Null),
        None => Json::Array(Vec::new()),
    };
    record["pushed"] = pushed;
    Ok(axum::Json(record).into_response())
}

fn schedule_page(shared: &Shared, process: Id, from: u64, to: u64) -> ApiResult<axum::Json<Json>> {
    if from > to {
        return Ok(axum::Json(json!({ "process": process, "assignments": [] })));
    }
    let to = to.min(from.saturating_add(SCHEDULE_PAGE_MAX - 1));
    let signed = shared
        .store
        .assignments(&process, from, to, SCHEDULE_PAGE_MAX as usize)?;
    let mut items = Vec::with_capacity(signed.len());
    for assignment in &signed {
        let parsed =
            Assignment::from_message(assignment).map_err(crate::store::StoreError::from)?;
        let message = shared.store.message(&parsed.message)?.ok_or_else(|| {
            NodeError::Unavailable(format!(
                "message {} of slot {} is missing",
                parsed.message, parsed.slot
            ))
        })?;
        items.push(json!({
            "slot": parsed.slot,
            "assignment": message_json::to_json(assignment),
            "message": message_json::to_json(&message),
        }));
    }
    let next = (to < u64::MAX).then(|| to + 1);
    Ok(axum::Json(json!({
        "process": process,
        "from": from,
        "to": to,
        "next": next,
        "assignments": items,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn segments_split_into_name_and_lowercased_keys() {
        let (name, keys) = split_segment("compute&Slot=3&flag&x=a=b");
        assert_eq!(name, "compute");
        assert_eq!(keys, query(&[("slot", "3"), ("x", "a=b")]));
        assert_eq!(split_segment("").0, "");
    }

    #[test]
    fn actions_parse_with_segment_keys_over_the_query() {
        let none = HashMap::new;
        assert_eq!(process_action("slot", none()).unwrap(), ProcessAction::Slot);
        assert_eq!(
            process_action("compute&slot=3", query(&[("slot", "9")])).unwrap(),
            ProcessAction::Compute { slot: 3 }
        );
        assert_eq!(
            process_action("compute", query(&[("slot", "9")])).unwrap(),
            ProcessAction::Compute { slot: 9 }
        );
        assert_eq!(
            process_action("schedule&to=5", none()).unwrap(),
            ProcessAction::Schedule {
                from: 0,
                to: Some(5)
            }
        );
        assert!(matches!(
            process_action("compute", none()),
            Err(NodeError::BadRequest(_))
        ));
        assert!(matches!(
            process_action("compute&slot=-1", none()),
            Err(NodeError::BadRequest(_))
        ));
        assert!(matches!(
            process_action("schedule&from=x", none()),
            Err(NodeError::BadRequest(_))
        ));
        assert!(matches!(
            process_action("now&slot=x", none()),
            Ok(ProcessAction::Now)
        ));
        assert!(matches!(
            process_action("Slot", none()),
            Err(NodeError::NotFound(_))
        ));
    }
}
