//! The `assets@1.0` routes (HyperMesh's asset API) and the privacy filter of
//! `/~meta@1.0/info`. Specified in `docs/assets.md`.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `GET /~assets@1.0/list` | | assets as the caller's view allows |
//! | `POST /assets/register` | signed `Register` (an operator) | 201, or 200 when it already was |
//! | `GET /assets/{id}` | | one asset |
//! | `PUT /assets/{id}/allocate` | signed `Allocate` | 201, or 200 for a replay |
//! | `DELETE /assets/{id}/release` | signed `Release` (owner or operator) | 200 |
//!
//! Reads are filtered by the node's privacy level and who asks: an `x-ferrobeam-auth` header
//! holding a signed `Read` message of an operator sees everything; otherwise the peer address
//! decides ([`Caller::Local`] for loopback and private ranges).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, post, put};
use serde_json::{Value as Json, json};

use super::{ApiResult, parse_message, read_body};
use crate::assets::request::Signed;
use crate::assets::{Answer, AssetId, Caller, View, view};
use crate::message::{VerifiedMessage, json as message_json, unb64};
use crate::node::{NodeError, Shared};

/// The header that authenticates a read: unpadded base64url of the JSON form of a signed
/// message `{action: "Read", path: <request path>, timestamp: <ms since the Unix epoch>}`.
pub const AUTH_HEADER: &str = "x-ferrobeam-auth";
/// How far a `Read` message's timestamp may be from the node's clock, in ms. A captured header
/// can be replayed for this long, for the same path only; reads change nothing.
pub const AUTH_SKEW_MS_MAX: u64 = 5 * 60 * 1000;
/// Largest `x-ferrobeam-auth` header: a Read message with one RSA-4096 commitment is ~1.5 KiB
/// of JSON, ~2 KiB in base64url.
pub const AUTH_HEADER_BYTES_MAX: usize = 8 * 1024;

/// The asset routes, merged into the main router.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/~assets@1.0/list", get(list))
        .route("/assets/register", post(register))
        .route("/assets/{id}", get(asset))
        .route("/assets/{id}/allocate", put(allocate))
        .route("/assets/{id}/release", delete(release))
}

/// The peer's socket address, when the server was started with connection info.
pub struct Peer(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| *addr);
        Ok(Peer(peer))
    }
}

/// Loopback, RFC 1918, link-local, IPv6 unique-local and link-local (and IPv4-mapped forms).
pub fn is_private_network(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_private_network(IpAddr::V4(v4)),
            None => v6.is_loopback() || v6.is_unique_local() || v6.is_unicast_link_local(),
        },
    }
}

/// Who asks: an operator (valid auth header), or a local or remote unauthenticated caller.
///
/// # Errors
/// [`NodeError::Unauthenticated`] for a malformed, stale or misdirected header,
/// [`NodeError::Message`] (401) when its signature does not verify, [`NodeError::Forbidden`]
/// when a non-operator signed it.
pub fn caller(
    shared: &Shared,
    headers: &HeaderMap,
    peer: &Peer,
    path: &str,
) -> Result<Caller, NodeError> {
    let Some(header) = headers.get(AUTH_HEADER) else {
        let local = peer.0.is_some_and(|addr| is_private_network(addr.ip()));
        return Ok(if local { Caller::Local } else { Caller::Remote });
    };
    let unauthenticated = |why: &str| NodeError::Unauthenticated(format!("{AUTH_HEADER}: {why}"));
    if header.len() > AUTH_HEADER_BYTES_MAX {
        return Err(unauthenticated("too long"));
    }
    let text = header.to_str().map_err(|_| unauthenticated("not ASCII"))?;
    let bytes = unb64(text, AUTH_HEADER).map_err(|_| unauthenticated("not base64url"))?;
    let message = message_json::from_slice(&bytes)?;
    // Inline, not through the batch verifier: operator reads are rare, and this check sits in
    // the synchronous view decision every GET shares.
    let verified = VerifiedMessage::verify(message)?;
    let read = verified.message();
    if read.text("action") != Some("Read") || read.text("path") != Some(path) {
        return Err(unauthenticated("must be a Read message for this path"));
    }
    let timestamp = read
        .get("timestamp")
        .and_then(crate::message::Value::as_int)
        .and_then(|t| u64::try_from(t).ok())
        .ok_or_else(|| unauthenticated("timestamp must be ms since the Unix epoch"))?;
    let now = now_ms();
    if now.abs_diff(timestamp) > AUTH_SKEW_MS_MAX {
        return Err(unauthenticated(
            "timestamp is too far from the node's clock",
        ));
    }
    if !shared.assets.is_operator(&verified.from()) {
        return Err(NodeError::Forbidden(format!(
            "{} is not an operator of this node",
            verified.from()
        )));
    }
    Ok(Caller::Operator)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What the caller of `path` may see at the node's privacy level.
pub(crate) fn view_of(
    shared: &Shared,
    headers: &HeaderMap,
    peer: &Peer,
    path: &str,
) -> Result<View, NodeError> {
    let caller = caller(shared, headers, peer, path)?;
    Ok(shared.assets.privacy().view(caller))
}

fn forbidden(shared: &Shared) -> NodeError {
    NodeError::Forbidden(format!(
        "privacy level {} shows assets to operators only",
        shared.assets.privacy().as_str()
    ))
}

/// `/~meta@1.0/info` as `view` allows.
pub fn info_json(shared: &Shared, view: View) -> Json {
    let kinds = shared.assets.read(view::kinds_json);
    let privacy = shared.assets.privacy().as_str();
    match view {
        View::AddressOnly => json!({ "address": shared.address }),
        View::KindsAndCounts => json!({
            "address": shared.address,
            "public-key": crate::message::b64(&shared.public_key),
            "scheme": "ed25519",
            "version": env!("CARGO_PKG_VERSION"),
            "devices": crate::node::DEVICES,
            "privacy": privacy,
            "assets": kinds,
        }),
        View::Full | View::NoIdentities => {
            let mut info = shared.info();
            info["privacy"] = json!(privacy);
            info["assets"] = kinds;
            info
        }
    }
}

/// The `/~meta@1.0/info` handler.
pub async fn info(
    State(shared): State<Arc<Shared>>,
    peer: Peer,
    headers: HeaderMap,
) -> ApiResult<axum::Json<Json>> {
    let view = view_of(&shared, &headers, &peer, "/~meta@1.0/info")?;
    Ok(axum::Json(info_json(&shared, view)))
}

async fn list(
    State(shared): State<Arc<Shared>>,
    peer: Peer,
    headers: HeaderMap,
) -> ApiResult<axum::Json<Json>> {
    let view = view_of(&shared, &headers, &peer, "/~assets@1.0/list")?;
    let privacy = shared.assets.privacy();
    let list = shared
        .assets
        .read(|registry| view::list_json(registry, privacy, view));
    Ok(axum::Json(list.ok_or_else(|| forbidden(&shared))?))
}

async fn asset(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    peer: Peer,
    headers: HeaderMap,
) -> ApiResult<axum::Json<Json>> {
    let view = view_of(&shared, &headers, &peer, &format!("/assets/{id}"))?;
    if !view.shows_assets() {
        return Err(forbidden(&shared).into());
    }
    let id: AssetId = id.parse()?;
    let asset = shared
        .assets
        .read(|registry| registry.asset(&id).map(|a| view::asset_json(a, view)));
    Ok(axum::Json(asset.ok_or_else(|| {
        NodeError::NotFound(format!("asset {id}"))
    })?))
}

/// Reads, parses and verifies a signed asset request.
async fn signed(shared: &Shared, headers: &HeaderMap, body: Body) -> Result<Signed, NodeError> {
    let bytes = read_body(shared, body).await?;
    let message = parse_message(headers, &bytes)?;
    let verified = shared.verifier.verify(message).await?;
    Ok(Signed::parse(&verified)?)
}

/// Decides on a blocking thread (the decision waits for an fsync).
async fn handle(
    shared: &Arc<Shared>,
    signed: Signed,
    path: Option<AssetId>,
) -> Result<Answer, NodeError> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || shared.assets.handle(&signed, path))
        .await
        .map_err(|e| NodeError::Unavailable(e.to_string()))?
}

fn answer_json(shared: &Shared, answer: Answer) -> (StatusCode, Json) {
    match answer {
        Answer::Registered { asset, duplicate } => {
            let asset = shared.assets.read(|registry| {
                registry
                    .asset(&asset)
                    .map(|a| view::asset_json(a, View::Full))
            });
            let status = if duplicate {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            (status, json!({ "asset": asset, "duplicate": duplicate }))
        }
        Answer::Allocated {
            allocation,
            duplicate,
            released,
        } => {
            let status = if duplicate {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            let body = json!({
                "allocation": view::allocation_json(&allocation),
                "duplicate": duplicate,
                "released": released,
            });
            (status, body)
        }
        Answer::Released {
            released,
            duplicate,
        } => (
            StatusCode::OK,
            json!({ "released": view::released_json(&released), "duplicate": duplicate }),
        ),
        Answer::Executor { .. } => (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": "Unreachable", "message": "executor answers are not HTTP answers" }),
        ),
    }
}

async fn register(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, axum::Json<Json>)> {
    let signed = signed(&shared, &headers, body).await?;
    let answer = handle(&shared, signed, None).await?;
    let (status, body) = answer_json(&shared, answer);
    Ok((status, axum::Json(body)))
}

async fn allocate(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, axum::Json<Json>)> {
    on_asset(shared, &id, &headers, body, "Allocate", "PUT .../allocate").await
}

async fn release(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, axum::Json<Json>)> {
    on_asset(shared, &id, &headers, body, "Release", "DELETE .../release").await
}

/// A signed `action` request on the asset in the path (allocate, release).
async fn on_asset(
    shared: Arc<Shared>,
    id: &str,
    headers: &HeaderMap,
    body: Body,
    action: &str,
    route: &str,
) -> ApiResult<(StatusCode, axum::Json<Json>)> {
    let path: AssetId = id.parse()?;
    let signed = signed(&shared, headers, body).await?;
    if signed.request.action() != action {
        return Err(NodeError::BadRequest(format!("{route} takes an {action} message")).into());
    }
    let answer = handle(&shared, signed, Some(path)).await?;
    let (status, body) = answer_json(&shared, answer);
    Ok((status, axum::Json(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_network_ranges() {
        for local in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private_network(local.parse().unwrap()), "{local}");
        }
        for remote in [
            "8.8.8.8",
            "172.32.0.1",
            "100.64.0.1",
            "2001:db8::1",
            "::ffff:1.1.1.1",
        ] {
            assert!(!is_private_network(remote.parse().unwrap()), "{remote}");
        }
    }
}
