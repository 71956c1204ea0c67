//! Trust routes (docs/adr/0019): equivocation proofs and force-leave.
//!
//! - `GET /v1/byzantine`: the proofs held here and the peers they exclude.
//! - `POST /v1/byzantine` `{"ballots": [HEX, HEX]}`: hand the node a proof
//!   (two signed ballot envelopes, hex of postcard, as in a ballot file);
//!   201 when new, 200 when already held, 400 naming what does not verify.
//! - `DELETE /v1/byzantine/{peer}`: clear this node's mark on `peer`
//!   (here only; other nodes decide for themselves); 404 when none.
//! - `POST /v1/force-leave` `{"peer": PEER_ID}`: sign a force-leave claim
//!   for the peer's current generation and send it to the swarm; 202.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use hivemesh_protocol::{Envelope, EquivocationProof, NodeId, PeerId, decode_message};
use serde::Deserialize;

use super::{ApiError, json_rejected, stopped};
use crate::net::{ForceLeaveError, NodeClient};
use crate::replica::EvidenceError;

pub(super) async fn list(State(client): State<NodeClient>) -> Response {
    match client.evidence().await {
        Ok(report) => Json(report).into_response(),
        Err(e) => stopped(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProofBody {
    ballots: Vec<String>,
}

fn envelope(index: usize, text: &str) -> Result<Envelope, ApiError> {
    let param = format!("ballots[{index}]");
    let bytes = hex::decode(text.trim())
        .map_err(|e| ApiError::invalid(&param, format!("{param} is not hex: {e}")))?;
    decode_message(&bytes)
        .map_err(|e| ApiError::invalid(&param, format!("{param} is not a signed envelope: {e}")))
}

pub(super) async fn report(
    State(client): State<NodeClient>,
    body: Result<Json<ProofBody>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(body) => body,
        Err(rejection) => return json_rejected("bad proof", &rejection),
    };
    if body.ballots.len() != 2 {
        let message = format!("a proof is exactly two ballots, got {}", body.ballots.len());
        return ApiError::invalid("ballots", message).into_response();
    }
    let ballots = match (envelope(0, &body.ballots[0]), envelope(1, &body.ballots[1])) {
        (Ok(a), Ok(b)) => [a, b],
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let proof = EquivocationProof { ballots };
    let equivocation = match proof.verify() {
        Ok(equivocation) => equivocation,
        Err(error) => {
            return ApiError::invalid("ballots", EvidenceError::from(error).to_string())
                .with_code("not_a_proof")
                .into_response();
        }
    };
    let peer = equivocation.voter.to_peer_id().map(|p| p.to_string()).unwrap_or_default();
    let body =
        |new: bool| serde_json::json!({ "peer": peer, "job": equivocation.job.to_string(), "new": new });
    match client.report_equivocation(proof).await {
        Ok(Ok(true)) => (StatusCode::CREATED, Json(body(true))).into_response(),
        Ok(Ok(false)) => Json(body(false)).into_response(),
        Ok(Err(EvidenceError::Full)) => {
            ApiError::new(StatusCode::INSUFFICIENT_STORAGE, EvidenceError::Full.to_string()).into_response()
        }
        Ok(Err(error)) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
        Err(e) => stopped(e),
    }
}

/// At most this much of a bad value is echoed back in an error.
const ECHO_CHARS: usize = 80;

fn node_of(param: &str, text: &str) -> Result<NodeId, ApiError> {
    let shown: String = match text.chars().count() > ECHO_CHARS {
        true => text.chars().take(ECHO_CHARS).chain("...".chars()).collect(),
        false => text.to_string(),
    };
    let peer: PeerId = text
        .trim()
        .parse()
        .map_err(|e| ApiError::invalid(param, format!("{param} {shown:?} is not a peer id: {e}")))?;
    NodeId::from_peer_id(&peer)
        .map_err(|e| ApiError::invalid(param, format!("{param} {shown:?} is not an ed25519 peer id: {e}")))
}

pub(super) async fn clear(State(client): State<NodeClient>, Path(peer): Path<String>) -> Response {
    let node = match node_of("peer", &peer) {
        Ok(node) => node,
        Err(e) => return e.into_response(),
    };
    match client.clear_evidence(node).await {
        Ok(Ok(true)) => Json(serde_json::json!({ "peer": peer, "cleared": true })).into_response(),
        Ok(Ok(false)) => {
            ApiError::new(StatusCode::NOT_FOUND, format!("no uncleared equivocation proof against {peer}"))
                .into_response()
        }
        Ok(Err(error)) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
        Err(e) => stopped(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ForceLeaveBody {
    peer: String,
}

pub(super) async fn force_leave(
    State(client): State<NodeClient>,
    body: Result<Json<ForceLeaveBody>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(body) => body,
        Err(rejection) => return json_rejected("bad force-leave", &rejection),
    };
    let node = match node_of("peer", &body.peer) {
        Ok(node) => node,
        Err(e) => return e.into_response(),
    };
    match client.force_leave(node).await {
        Ok(Ok(report)) => (StatusCode::ACCEPTED, Json(report)).into_response(),
        Ok(Err(error @ ForceLeaveError::UnknownPeer(_))) => {
            ApiError { param: Some("peer".into()), ..ApiError::new(StatusCode::NOT_FOUND, error.to_string()) }
                .into_response()
        }
        Ok(Err(error @ ForceLeaveError::Itself)) => {
            ApiError::invalid("peer", error.to_string()).into_response()
        }
        Ok(Err(error)) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
        Err(e) => stopped(e),
    }
}
