//! The swarm as one OpenAI-compatible gateway (docs/adr/0020): a request for
//! a model a peer offers is forwarded, body unchanged, to that peer over a
//! libp2p stream (`/hivemesh/openai/1.0.0`), which sends it to its own
//! provider and streams the provider's answer back byte for byte.
//!
//! Wire: the asker writes one frame ([`ForwardRequest`]: a 4-byte
//! big-endian length and postcard, at most [`MAX_REQUEST_BYTES`]); the
//! server writes one frame ([`ForwardHead`]: status and content type), then
//! the response body as [`BodyFrame`]s: the provider's bytes as they come,
//! and one `End` saying whether the body was whole. A stream that stops
//! without `End`, or an `End` with an error, ends the client's response
//! with an error too, never as if the answer were complete. The connection is
//! the swarm's own (noise-authenticated, pnet and allowlist applied), so
//! the server knows which peer asks and charges its quota.

pub mod breakers;
mod route;
mod serve;

use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use hivemesh_protocol::{CodecError, decode_message, encode_frame};
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

pub use route::{BodyStream, Candidate, Forwarded, candidates, forward};
pub use serve::{Answer, Server, spawn_server};

/// The gateway's stream protocol.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/hivemesh/openai/1.0.0");

/// Largest request body forwarded (the API's own body limit is below it).
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Largest response head frame.
const MAX_HEAD_BYTES: usize = 4 * 1024;

/// How long either side waits for the other's frame.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// Which OpenAI endpoint a forwarded request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Endpoint {
    ChatCompletions,
    Embeddings,
}

impl Endpoint {
    /// The path under a provider's base URL (`.../v1`).
    pub fn path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat/completions",
            Self::Embeddings => "embeddings",
        }
    }
}

/// What the asker sends: the endpoint and the client's JSON body, unchanged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardRequest {
    pub endpoint: Endpoint,
    /// The model the asker routed on (also inside `body`).
    pub model: String,
    pub body: Vec<u8>,
}

/// What the server answers before the body: the provider's status and
/// content type (`text/event-stream` for a stream), or the server's own
/// refusal (404 model not here, 429 quota, 502 provider unreachable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardHead {
    pub status: u16,
    pub content_type: String,
}

/// One piece of a forwarded response body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum BodyFrame {
    /// Bytes of the body, exactly as the provider sent them.
    Data(Vec<u8>),
    /// The end: `None` when the provider's body ended normally, else why it
    /// broke off.
    End(Option<String>),
}

/// Largest body frame (a provider's chunk is split to fit).
const MAX_BODY_FRAME: usize = 256 * 1024;

/// How long the asker waits for the head: the serving peer's provider may
/// take this long to answer a whole (non-streamed) completion.
const HEAD_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot open a stream to {peer}: {reason}")]
    Open { peer: String, reason: String },
    #[error("stream I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame: {0}")]
    Frame(#[from] CodecError),
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    Oversized { len: usize, max: usize },
    #[error("no frame within {0:?}")]
    Timeout(Duration),
}

async fn write_frame<T: Serialize>(
    stream: &mut libp2p::Stream,
    message: &T,
    max: usize,
) -> Result<(), GatewayError> {
    let frame = encode_frame(message, max)?;
    stream.write_all(&frame).await?;
    stream.flush().await?;
    Ok(())
}

async fn read_frame<T: serde::de::DeserializeOwned>(
    stream: &mut libp2p::Stream,
    max: usize,
) -> Result<T, GatewayError> {
    read_frame_within(stream, max, FRAME_TIMEOUT).await
}

async fn read_frame_within<T: serde::de::DeserializeOwned>(
    stream: &mut libp2p::Stream,
    max: usize,
    timeout: Duration,
) -> Result<T, GatewayError> {
    let read = async {
        let mut length = [0u8; 4];
        stream.read_exact(&mut length).await?;
        let len = u32::from_be_bytes(length) as usize;
        if len > max {
            return Err(GatewayError::Oversized { len, max });
        }
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await?;
        Ok(decode_message(&body)?)
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| GatewayError::Timeout(timeout))?
}

/// An OpenAI error body, as the API's own errors are shaped.
fn error_body(message: &str, code: &str) -> Vec<u8> {
    serde_json::json!({ "error": { "message": message, "type": "invalid_request_error", "param": "model", "code": code } })
        .to_string()
        .into_bytes()
}
