//! The stream codecs of the node's request-response protocols, framed as
//! `hivemesh_protocol::codec` frames: a 4-byte big-endian length prefix and
//! the body, the length checked against the protocol's limit before anything
//! is allocated. One frame per stream and direction; the bodies are bytes
//! the driver decodes (a bad one is counted there).

use std::io;

use hivemesh_protocol::codec::{CodecError, LENGTH_PREFIX_BYTES, declared_length, frame_prefix};
use hivemesh_protocol::limits::MAX_FRAME_BYTES;
use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{StreamProtocol, request_response};

/// A membership frame larger than this is refused before it is read.
pub const MAX_SWIM_FRAME: usize = 64 * 1024 + 64;

/// A frame refused by a codec: which protocol's, and why (the length over
/// the limit, as the protocol codec reports it). Carried inside the
/// `io::Error` libp2p's codecs return.
#[derive(Debug, thiserror::Error)]
#[error("{what} {error}")]
pub struct FrameError {
    /// `membership` or `state`.
    pub what: &'static str,
    pub error: CodecError,
}

impl FrameError {
    fn io(kind: io::ErrorKind, what: &'static str, error: CodecError) -> io::Error {
        io::Error::new(kind, Self { what, error })
    }
}

/// Reads one frame body, refusing a declared length above `max` from the
/// prefix alone (`InvalidData`); a stream that ends early is `UnexpectedEof`.
async fn read_frame<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
    what: &'static str,
) -> io::Result<Vec<u8>> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    io.read_exact(&mut prefix).await?;
    let len =
        declared_length(&prefix, max).map_err(|e| FrameError::io(io::ErrorKind::InvalidData, what, e))?;
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    Ok(body)
}

/// Writes `body` as one frame; a body above `max` is refused before any
/// byte is written (`InvalidInput`).
async fn write_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    body: &[u8],
    max: usize,
    what: &'static str,
) -> io::Result<()> {
    let prefix =
        frame_prefix(body.len(), max).map_err(|e| FrameError::io(io::ErrorKind::InvalidInput, what, e))?;
    io.write_all(&prefix).await?;
    io.write_all(body).await?;
    io.flush().await
}

/// One SWIM frame per stream (at most [`MAX_SWIM_FRAME`] bytes); the
/// receiver answers with one byte once it has handled it.
#[derive(Clone, Copy, Debug, Default)]
pub struct SwimCodec;

const ACK: u8 = 1;

impl request_response::Codec for SwimCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = ();

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, MAX_SWIM_FRAME, "membership").await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<()>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut ack = [0u8; 1];
        io.read_exact(&mut ack).await?;
        if ack[0] == ACK {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected membership acknowledgement byte"))
        }
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, frame: Vec<u8>) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &frame, MAX_SWIM_FRAME, "membership").await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, (): ()) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&[ACK]).await?;
        io.flush().await
    }
}

/// Replicated-state messages (registry pushes, anti-entropy, job sync, view
/// requests): one frame each way, at most `MAX_FRAME_BYTES`.
#[derive(Clone, Copy, Debug, Default)]
pub struct StateCodec;

impl request_response::Codec for StateCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, MAX_FRAME_BYTES, "state").await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, MAX_FRAME_BYTES, "state").await
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, frame: Vec<u8>) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &frame, MAX_FRAME_BYTES, "state").await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, frame: Vec<u8>) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &frame, MAX_FRAME_BYTES, "state").await
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
