//! The serving side: a peer's forwarded request goes to this node's own
//! provider when it names a model this node advertises, within the asking
//! peer's quota (ADR 0017); the provider's answer streams back unchanged.

use std::sync::Arc;
use std::time::Instant;

use futures::{AsyncWriteExt, StreamExt};
use hivemesh_llm::LlmClient;
use libp2p::PeerId;
use tokio::task::JoinHandle;

use super::{
    BodyFrame, Endpoint, ForwardHead, ForwardRequest, MAX_BODY_FRAME, MAX_HEAD_BYTES, MAX_REQUEST_BYTES,
    PROTOCOL, error_body, read_frame, write_frame,
};
use crate::federation::quota::PeerQuotas;
use crate::net::NodeClient;
use crate::replica::ViewKind;

/// What serving needs: the node (for the models it advertises now), its
/// provider and the per-peer quotas.
#[derive(Clone)]
pub struct Server {
    pub node: NodeClient,
    pub client: Arc<LlmClient>,
    pub quotas: Arc<PeerQuotas>,
}

/// An answer: the head, and the provider's response to stream (none when
/// the head is this node's own refusal, whose body is `refusal`).
pub struct Answer {
    pub head: ForwardHead,
    pub response: Option<reqwest::Response>,
    pub refusal: Vec<u8>,
}

impl Answer {
    fn refuse(status: u16, message: &str, code: &str) -> Self {
        Self {
            head: ForwardHead { status, content_type: "application/json".into() },
            response: None,
            refusal: error_body(message, code),
        }
    }
}

impl Server {
    /// Answers `request` for `asker` (`None`: this node's own API, never
    /// limited). Refuses a model this node does not advertise (its key
    /// pays only for what its owner offers), a body whose `model` differs
    /// from the routed one, and a peer over its quota.
    pub async fn answer(&self, asker: Option<&PeerId>, mut request: ForwardRequest) -> Answer {
        if request.endpoint == Endpoint::Embeddings && request.model.is_empty() {
            // "Your embedding model": a council voter with none of its own
            // asking (federation::embed); answered without a provider call
            // when this node has none.
            let Some(model) = self.client.embedding_model().map(str::to_string) else {
                return Answer::refuse(404, "this peer has no embedding model", "no_embedding_model");
            };
            let mut body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
            body["model"] = serde_json::Value::String(model.clone());
            request.body = body.to_string().into_bytes();
            request.model = model;
            return self.call(asker, request).await;
        }
        let offered = match self.node.view(Some(ViewKind::Registry)).await {
            Ok(report) => report.me.models,
            Err(error) => return Answer::refuse(503, &error.to_string(), "node_stopped"),
        };
        if !offered.contains(&request.model) {
            let message = format!("model {:?} is not offered by this peer", request.model);
            return Answer::refuse(404, &message, "model_not_found");
        }
        let body_model = serde_json::from_slice::<serde_json::Value>(&request.body)
            .ok()
            .and_then(|v| v.get("model").and_then(|m| m.as_str().map(str::to_string)));
        if body_model.as_deref() != Some(request.model.as_str()) {
            return Answer::refuse(
                400,
                "the body's model is not the model the request was routed on",
                "model_mismatch",
            );
        }
        self.call(asker, request).await
    }

    /// Admits the asker (a remote peer) against its quota, then forwards.
    async fn call(&self, asker: Option<&PeerId>, request: ForwardRequest) -> Answer {
        if let Some(peer) = asker
            && let Err(refusal) = self.quotas.admit(&peer.to_string(), Instant::now())
        {
            return Answer::refuse(429, &refusal.to_string(), "quota");
        }
        match self.client.forward(request.endpoint.path(), request.body).await {
            Ok(Some(response)) => {
                let content_type = response
                    .headers()
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("application/json")
                    .to_string();
                Answer {
                    head: ForwardHead { status: response.status().as_u16(), content_type },
                    response: Some(response),
                    refusal: Vec::new(),
                }
            }
            Ok(None) => Answer::refuse(
                501,
                &format!(
                    "this peer's provider ({}) is not an HTTP server and takes no forwarded requests",
                    self.client.provider_name()
                ),
                "not_forwardable",
            ),
            Err(error) => Answer::refuse(502, &error.to_string(), "provider_unreachable"),
        }
    }
}

/// Accepts gateway streams until the node stops; one task per stream.
pub fn spawn_server(mut control: libp2p_stream::Control, server: Server) -> Option<JoinHandle<()>> {
    let mut incoming = match control.accept(PROTOCOL) {
        Ok(incoming) => incoming,
        Err(error) => {
            tracing::error!(%error, "the gateway protocol is already registered");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            let server = server.clone();
            tokio::spawn(async move {
                if let Err(error) = serve_one(&server, peer, stream).await {
                    tracing::debug!(%peer, %error, "a forwarded request ended early");
                }
            });
        }
    }))
}

async fn serve_one(
    server: &Server,
    peer: PeerId,
    mut stream: libp2p::Stream,
) -> Result<(), super::GatewayError> {
    let request: ForwardRequest = read_frame(&mut stream, MAX_REQUEST_BYTES).await?;
    let answer = server.answer(Some(&peer), request).await;
    write_frame(&mut stream, &answer.head, MAX_HEAD_BYTES).await?;
    let Some(response) = answer.response else {
        write_frame(&mut stream, &BodyFrame::Data(answer.refusal), MAX_BODY_FRAME + 64).await?;
        write_frame(&mut stream, &BodyFrame::End(None), MAX_HEAD_BYTES).await?;
        stream.close().await?;
        return Ok(());
    };
    let mut usage = UsageScan::default();
    let mut body = response.bytes_stream();
    let mut broke_off = None;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => {
                broke_off = Some(format!("the provider's response broke off: {error}"));
                break;
            }
        };
        usage.feed(&chunk);
        for piece in chunk.chunks(MAX_BODY_FRAME) {
            write_frame(&mut stream, &BodyFrame::Data(piece.to_vec()), MAX_BODY_FRAME + 64).await?;
        }
    }
    write_frame(&mut stream, &BodyFrame::End(broke_off), MAX_HEAD_BYTES).await?;
    stream.close().await?;
    server.quotas.charge(&peer.to_string(), usage.finish(), 0.0, Instant::now());
    Ok(())
}

/// Finds `usage.total_tokens` in a JSON body or an SSE stream as it passes.
#[derive(Default)]
pub(super) struct UsageScan {
    pending: Vec<u8>,
    tokens: u64,
}

/// A body longer than this is not kept whole for the usage scan.
const MAX_SCANNED_LINE: usize = 1024 * 1024;

impl UsageScan {
    pub(super) fn feed(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.line(&line);
        }
        if self.pending.len() > MAX_SCANNED_LINE {
            self.pending.clear();
        }
    }

    fn line(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let json = text.trim().strip_prefix("data:").unwrap_or(text.trim()).trim();
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(json)
            && let Some(total) = value["usage"]["total_tokens"].as_u64()
        {
            self.tokens = total;
        }
    }

    /// The last total seen (0 when the provider reported none).
    pub(super) fn finish(mut self) -> u64 {
        let rest = std::mem::take(&mut self.pending);
        self.line(&rest);
        self.tokens
    }
}

#[cfg(test)]
mod tests {
    use super::UsageScan;

    #[test]
    fn usage_is_found_in_a_stream_split_anywhere_and_in_a_whole_body() {
        let stream = "data: {\"id\":\"a\",\"choices\":[]}\n\ndata: {\"id\":\"a\",\"usage\":{\"total_tokens\":42}}\n\ndata: [DONE]\n\n";
        for split in 0..stream.len() {
            let mut scan = UsageScan::default();
            scan.feed(&stream.as_bytes()[..split]);
            scan.feed(&stream.as_bytes()[split..]);
            assert_eq!(scan.finish(), 42, "split at {split}");
        }
        let mut scan = UsageScan::default();
        scan.feed(br#"{"id":"x","usage":{"prompt_tokens":3,"total_tokens":7}}"#);
        assert_eq!(scan.finish(), 7);
        assert_eq!(UsageScan::default().finish(), 0);
    }
}
