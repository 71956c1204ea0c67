//! The asking side: which peers offer a model, and forwarding a request to
//! one of them (or to this node's own provider).

use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use libp2p::PeerId;

use super::serve::Server;
use super::{
    BodyFrame, ForwardHead, ForwardRequest, GatewayError, HEAD_TIMEOUT, MAX_BODY_FRAME, MAX_HEAD_BYTES,
    MAX_REQUEST_BYTES, PROTOCOL, read_frame_within, write_frame,
};
use crate::net::{ClientError, NodeClient};
use crate::replica::ViewKind;

/// A response body as it arrives.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// A peer that offers the model, from the signed registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub peer: PeerId,
    /// The load the peer advertises (lower first).
    pub load: u32,
    /// This node itself: served by its own provider, no stream needed.
    pub me: bool,
}

/// The peers offering `model`, alive in the registry view (never suspect
/// or down), least loaded first, this node first among equals.
pub async fn candidates(node: &NodeClient, model: &str) -> Result<Vec<Candidate>, ClientError> {
    let report = node.view(Some(ViewKind::Registry)).await?;
    let mut found = Vec::new();
    if report.me.models.iter().any(|m| m == model)
        && let Ok(peer) = report.me.member.peer_id.parse::<PeerId>()
    {
        found.push(Candidate { peer, load: report.me.load.unwrap_or(0), me: true });
    }
    for member in &report.members {
        if member.member.state != "alive" || !member.models.iter().any(|m| m == model) {
            continue;
        }
        if let Ok(peer) = member.member.peer_id.parse::<PeerId>() {
            found.push(Candidate { peer, load: member.load.unwrap_or(0), me: false });
        }
    }
    found.sort_by_key(|c| (c.load, !c.me, c.peer.to_bytes()));
    Ok(found)
}

/// A forwarded request's answer: the head and the body to stream on.
pub struct Forwarded {
    pub head: ForwardHead,
    pub body: BodyStream,
}

/// Sends `request` to `candidate` and waits for its head.
pub async fn forward(
    control: &mut libp2p_stream::Control,
    local: Option<&Server>,
    candidate: &Candidate,
    request: ForwardRequest,
) -> Result<Forwarded, GatewayError> {
    if candidate.me {
        let Some(server) = local else {
            return Err(GatewayError::Open {
                peer: candidate.peer.to_string(),
                reason: "this node takes no jobs (--no-jobs)".into(),
            });
        };
        let answer = server.answer(None, request).await;
        let body: BodyStream = match answer.response {
            Some(response) => {
                Box::pin(response.bytes_stream().map(|chunk| chunk.map_err(std::io::Error::other)))
            }
            None => Box::pin(futures::stream::iter([Ok(Bytes::from(answer.refusal))])),
        };
        return Ok(Forwarded { head: answer.head, body });
    }
    let mut stream = control.open_stream(candidate.peer, PROTOCOL).await.map_err(|error| {
        GatewayError::Open { peer: candidate.peer.to_string(), reason: error.to_string() }
    })?;
    write_frame(&mut stream, &request, MAX_REQUEST_BYTES).await?;
    let head: ForwardHead = read_frame_within(&mut stream, MAX_HEAD_BYTES, HEAD_TIMEOUT).await?;
    Ok(Forwarded { head, body: body_of(stream) })
}

/// The body frames of a stream: their bytes, then the end. A stream that
/// stops before its `End`, or an `End` with an error, yields an error, so
/// the client's response breaks off instead of looking complete.
fn body_of(stream: libp2p::Stream) -> BodyStream {
    Box::pin(futures::stream::unfold(Some(stream), |state| async move {
        let mut stream = state?;
        match read_frame_within::<BodyFrame>(&mut stream, MAX_BODY_FRAME + 64, HEAD_TIMEOUT).await {
            Ok(BodyFrame::Data(bytes)) => Some((Ok(Bytes::from(bytes)), Some(stream))),
            Ok(BodyFrame::End(None)) => None,
            Ok(BodyFrame::End(Some(reason))) => Some((Err(std::io::Error::other(reason)), None)),
            Err(error) => {
                let reason = format!("the serving peer's stream ended early: {error}");
                Some((Err(std::io::Error::other(reason)), None))
            }
        }
    }))
}
