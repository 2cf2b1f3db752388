//! Attestation routes (`attest@1.0`, and `snp@1.0` for HyperBEAM clients), merged into the
//! main router. Documented in `docs/http-api.md`.
//!
//! - `GET /~attest@1.0/report?nonce=HEX[&process=ID]`: evidence JSON (version 1, see
//!   `docs/verifiers.md`); with `Accept: application/octet-stream`, the raw SNP report or
//!   TPMS_ATTEST. The nonce is required.
//! - `GET /~snp@1.0/generate[?nonce=HEX][&process=ID]`: the same evidence. The nonce is optional
//!   there, as HyperBEAM's route takes none: without one the node draws 32 random bytes and the
//!   evidence carries them. Such evidence is genuine but not fresh (it can be replayed), so a
//!   verifier that wants freshness sends its own nonce.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::ApiResult;
use crate::message::Id;
use crate::node::Shared;
use crate::node::attest::{AttestError, parse_nonce};

/// Media type of the raw hardware report.
pub const RAW_MEDIA_TYPE: &str = "application/octet-stream";
/// Bytes of the nonce the node draws when `/~snp@1.0/generate` is called without one.
pub const GENERATED_NONCE_BYTES: usize = 32;

/// The attestation routes, over the node's shared state.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/~attest@1.0/report", get(report))
        .route("/~snp@1.0/generate", get(generate))
}

async fn report(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let nonce = query
        .get("nonce")
        .ok_or(AttestError::NonceMissing)
        .and_then(|text| parse_nonce(text))?;
    answer(&shared, &headers, &query, nonce).await
}

async fn generate(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let nonce = match query.get("nonce") {
        Some(text) => parse_nonce(text)?,
        None => {
            let mut nonce = vec![0u8; GENERATED_NONCE_BYTES];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
            nonce
        }
    };
    answer(&shared, &headers, &query, nonce).await
}

async fn answer(
    shared: &Shared,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    nonce: Vec<u8>,
) -> ApiResult<Response> {
    let process: Option<Id> = query.get("process").map(|p| p.parse()).transpose()?;
    let evidence = shared.evidence(nonce, process).await?;
    let kind = evidence.kind.to_string();
    if wants_raw(headers) {
        return Ok((
            [
                (header::CONTENT_TYPE, RAW_MEDIA_TYPE.to_owned()),
                (
                    header::HeaderName::from_static("x-ferrobeam-evidence-kind"),
                    kind,
                ),
            ],
            evidence.report.0,
        )
            .into_response());
    }
    // Serializing plain structs with string keys cannot fail.
    let body = serde_json::to_vec(&evidence).unwrap_or_default();
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (
                header::HeaderName::from_static("x-ferrobeam-evidence-kind"),
                kind,
            ),
        ],
        body,
    )
        .into_response())
}

/// True when the client asks for the raw report (`Accept: application/octet-stream`).
fn wants_raw(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| media.split(';').next().unwrap_or_default().trim() == RAW_MEDIA_TYPE)
}
