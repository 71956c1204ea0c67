//! `/v1/chat/completions` and `/v1/embeddings` for a model a peer offers
//! (docs/adr/0020): the request goes, body unchanged, to the least loaded
//! live peer offering it (or this node's own provider), the next one when a
//! peer fails before its answer starts; the answer comes back unchanged but
//! for its `id`, streamed as it arrives.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use bytes::Bytes;
use futures::StreamExt;

use super::{ApiError, AppState};
use crate::gateway::{BodyStream, Endpoint, ForwardRequest, GatewayError, candidates, forward};

/// The model names the mesh itself answers (a council or a pipeline job).
const MODES: [&str; 3] = ["hivemesh", "council", "pipeline"];

/// `POST /v1/chat/completions`: a mode (`council`, `pipeline:PROFILE`, ...)
/// runs a job here (`super::openai`); any other model goes to a peer that
/// offers it.
pub(super) async fn chat_completions(state: State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(response) = json_content_type(&headers) {
        return *response;
    }
    match swarm_model(&body) {
        Some(model) => route(&state, Endpoint::ChatCompletions, &model, body.to_vec()).await,
        None => super::openai::chat_completions(state, Json::from_bytes(&body)).await,
    }
}

/// `POST /v1/embeddings`: always a peer's model (the mesh has no mode for it).
pub(super) async fn embeddings(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(response) = json_content_type(&headers) {
        return *response;
    }
    let model = serde_json::from_slice::<serde_json::Value>(&body).map(|v| v.get("model").cloned());
    match model {
        Ok(Some(serde_json::Value::String(model))) => {
            route(&state, Endpoint::Embeddings, &model, body.to_vec()).await
        }
        Ok(_) => {
            ApiError::invalid("model", "`model` is required: a model name a peer offers (GET /v1/models)")
                .into_response()
        }
        Err(error) => ApiError::invalid("body", format!("the body is not JSON: {error}")).into_response(),
    }
}

/// 415 unless the body is declared JSON, as axum's `Json` answers.
fn json_content_type(headers: &HeaderMap) -> Result<(), Box<Response>> {
    let declared = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let essence = declared.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    if essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json")) {
        return Ok(());
    }
    let message = "Expected request with `Content-Type: application/json`";
    Err(Box::new(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, message).into_response()))
}

/// The body's `model` when it names no mode of the mesh (so a peer's).
fn swarm_model(body: &[u8]) -> Option<String> {
    let value = serde_json::from_slice::<serde_json::Value>(body).ok()?;
    let model = value.get("model")?.as_str()?;
    let base = model.split_once(':').map_or(model, |(base, _)| base);
    (!MODES.contains(&base)).then(|| model.to_string())
}

/// Forwards `body` for `model` to a peer offering it.
pub(super) async fn route(state: &AppState, endpoint: Endpoint, model: &str, body: Vec<u8>) -> Response {
    let found = match candidates(&state.client, model).await {
        Ok(found) => found,
        Err(error) => {
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response();
        }
    };
    if found.is_empty() {
        return ApiError {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "unknown model {model:?}: no live peer offers it (GET /v1/models lists the swarm's models, \
                     and hivemesh, council, pipeline, council:PROFILE, pipeline:PROFILE)"
                ),
            )
        }
        .into_response();
    };
    let mut control = state.client.streams();
    let mut tried = Vec::new();
    // Peers whose breaker for this model is open go last (still tried, as
    // a last resort, rather than answering 502 while one might answer).
    let (mut ready, mut held) = (Vec::new(), Vec::new());
    for candidate in found {
        match state.breakers.try_acquire(candidate.peer, model) {
            Some(permit) => ready.push((candidate, Some(permit))),
            None => held.push((candidate, None)),
        }
    }
    ready.append(&mut held);
    for (candidate, permit) in ready {
        let request = ForwardRequest { endpoint, model: model.to_string(), body: body.clone() };
        match forward(&mut control, state.gateway.as_ref(), &candidate, request).await {
            // A peer that cannot serve now (not offering it after all, over
            // its quota, its provider down): the next one may.
            Ok(answer) if matches!(answer.head.status, 404 | 429 | 500..=599) => {
                if let Some(permit) = permit {
                    permit.failure();
                }
                tried.push(format!("{}: HTTP {}", candidate.peer, answer.head.status));
                tracing::debug!(peer = %candidate.peer, status = answer.head.status, %model, "a peer could not serve; trying the next");
            }
            Ok(answer) => {
                if let Some(permit) = permit {
                    permit.success();
                }
                let status = StatusCode::from_u16(answer.head.status).unwrap_or(StatusCode::BAD_GATEWAY);
                let stream = answer.head.content_type.starts_with("text/event-stream");
                let body = with_new_id(answer.body, stream);
                return Response::builder()
                    .status(status)
                    .header(header::CONTENT_TYPE, answer.head.content_type)
                    .header("x-hivemesh-peer", candidate.peer.to_string())
                    .body(Body::from_stream(body))
                    .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
            }
            // The peer may be running the request still: asking another
            // would run it twice.
            Err(error @ GatewayError::Timeout(_)) => {
                if let Some(permit) = permit {
                    permit.failure();
                }
                let message = format!("{} took too long to answer: {error}", candidate.peer);
                return ApiError::new(StatusCode::GATEWAY_TIMEOUT, message).into_response();
            }
            Err(error) => {
                if let Some(permit) = permit {
                    permit.failure();
                }
                tried.push(format!("{}: {error}", candidate.peer));
                tracing::debug!(peer = %candidate.peer, %error, %model, "forwarding failed; trying the next peer");
            }
        }
    }
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        format!("no peer offering {model:?} could answer: {}", tried.join("; ")),
    )
    .with_code("no_peer_answered")
    .into_response()
}

/// The body with its response id (each event's, in a stream) replaced by
/// one of this node's, the rest byte for byte.
fn with_new_id(body: BodyStream, stream: bool) -> BodyStream {
    let id = format!("chatcmpl-hm-{}", hex::encode(random_bytes()));
    let state = (body, IdRewriter::new(id, stream), false);
    Box::pin(futures::stream::unfold(state, |(mut body, mut rewriter, ended)| async move {
        if ended {
            return None;
        }
        loop {
            match body.next().await {
                Some(Ok(chunk)) => {
                    let out = rewriter.feed(&chunk);
                    if !out.is_empty() {
                        return Some((Ok(Bytes::from(out)), (body, rewriter, false)));
                    }
                }
                Some(Err(error)) => return Some((Err(error), (body, rewriter, true))),
                None => {
                    let rest = Bytes::from(rewriter.finish());
                    return Some((Ok(rest), (body, rewriter, true)));
                }
            }
        }
    }))
}

fn random_bytes() -> [u8; 12] {
    let mut bytes = [0u8; 12];
    if getrandom::fill(&mut bytes).is_err() {
        bytes[..8].copy_from_slice(&crate::net::unix_ms().to_be_bytes());
    }
    bytes
}

/// Replaces the first `"id"` value of each JSON document (each `data:`
/// line of a stream) with `id`, textually: key order, spacing and every
/// other byte stay as the provider wrote them.
struct IdRewriter {
    id: String,
    stream: bool,
    pending: Vec<u8>,
}

impl IdRewriter {
    fn new(id: String, stream: bool) -> Self {
        Self { id, stream, pending: Vec::new() }
    }

    /// What to send on for `bytes`: whole lines of a stream, rewritten; a
    /// JSON body is held until it ends (see [`IdRewriter::finish`]).
    fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(bytes);
        if !self.stream {
            return Vec::new();
        }
        let Some(end) = self.pending.iter().rposition(|b| *b == b'\n') else { return Vec::new() };
        let lines: Vec<u8> = self.pending.drain(..=end).collect();
        lines.split_inclusive(|b| *b == b'\n').flat_map(|line| self.line(line)).collect()
    }

    /// A stream line: a `data:` event's JSON with the new id; any other
    /// line, or one that is not UTF-8, exactly as it came.
    fn line(&self, line: &[u8]) -> Vec<u8> {
        match line.strip_prefix(b"data:") {
            Some(rest) => {
                let mut out = b"data:".to_vec();
                out.extend(rewrite(rest, &self.id));
                out
            }
            None => line.to_vec(),
        }
    }

    /// The rest at the end of the body.
    fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.pending);
        if self.stream { self.line(&rest) } else { rewrite(&rest, &self.id) }
    }
}

/// `bytes` with the JSON document's top-level id replaced; unchanged when
/// they are not UTF-8 (every byte passes as it came).
fn rewrite(bytes: &[u8], id: &str) -> Vec<u8> {
    match std::str::from_utf8(bytes) {
        Ok(text) => replace_id(text, id).into_bytes(),
        Err(_) => bytes.to_vec(),
    }
}

/// `json` with its top-level `id` string replaced by `id`; unchanged when it
/// has none (an embeddings response) or is not JSON (`[DONE]`).
fn replace_id(json: &str, id: &str) -> String {
    let Ok(serde_json::Value::Object(object)) = serde_json::from_str::<serde_json::Value>(json.trim()) else {
        return json.to_string();
    };
    let Some(serde_json::Value::String(old)) = object.get("id") else { return json.to_string() };
    let (Ok(old), Ok(new)) = (serde_json::to_string(old), serde_json::to_string(id)) else {
        return json.to_string();
    };
    json.replacen(&old, &new, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_body_keeps_every_byte_but_its_id() {
        let body = r#"{"id": "chatcmpl-up",  "object":"chat.completion","choices":[{"message":{"content":"chatcmpl-up"}}]}"#;
        let mut rewriter = IdRewriter::new("mine".into(), false);
        assert!(rewriter.feed(&body.as_bytes()[..10]).is_empty());
        assert!(rewriter.feed(&body.as_bytes()[10..]).is_empty());
        let out = String::from_utf8(rewriter.finish()).expect("utf-8");
        assert_eq!(out, body.replacen("\"chatcmpl-up\"", "\"mine\"", 1));
        assert!(out.contains(r#""content":"chatcmpl-up""#), "only the id changes: {out}");
        let embeddings = r#"{"object":"list","data":[{"embedding":[0.1]}]}"#;
        assert_eq!(replace_id(embeddings, "mine"), embeddings);
    }

    #[test]
    fn bytes_that_are_not_utf8_pass_through_unchanged() {
        let body = b"{\"id\":\"up\",\"c\":\"\xff\xfe\x80\"}";
        let mut rewriter = IdRewriter::new("mine".into(), false);
        rewriter.feed(body);
        assert_eq!(rewriter.finish(), body.to_vec());
        let stream = b"data: {\"id\":\"up\",\"c\":\"\xff\"}\n\ndata: {\"id\":\"up\"}\n\n";
        let mut rewriter = IdRewriter::new("mine".into(), true);
        let mut out = rewriter.feed(stream);
        out.extend(rewriter.finish());
        let expected = b"data: {\"id\":\"up\",\"c\":\"\xff\"}\n\ndata: {\"id\":\"mine\"}\n\n";
        assert_eq!(out, expected.to_vec());
    }

    #[test]
    fn every_event_of_a_stream_gets_the_new_id_wherever_the_chunks_split() {
        let body = "data: {\"id\":\"up\",\"choices\":[{\"delta\":{\"content\":\"Pa\"}}]}\n\n: keep-alive\n\ndata: {\"id\":\"up\",\"choices\":[]}\n\ndata: [DONE]\n\n";
        let expected = body.replace("\"up\"", "\"mine\"");
        for split in 0..body.len() {
            let mut rewriter = IdRewriter::new("mine".into(), true);
            let mut out = rewriter.feed(&body.as_bytes()[..split]);
            out.extend(rewriter.feed(&body.as_bytes()[split..]));
            out.extend(rewriter.finish());
            assert_eq!(String::from_utf8(out).expect("utf-8"), expected, "split at {split}");
        }
    }
}
