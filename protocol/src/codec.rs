//! Wire codec: postcard bodies in frames with a 4-byte big-endian length
//! prefix. Every decoder checks the declared length against a hard maximum
//! before allocating, and rejects truncated input and trailing bytes.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes of the length prefix in front of every frame.
pub const LENGTH_PREFIX_BYTES: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("truncated input: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    Oversized { len: usize, max: usize },
    #[error("{count} trailing bytes after the message")]
    TrailingBytes { count: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("could not encode message: {0}")]
    Encode(String),
}

impl CodecError {
    /// A short stable label, for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Truncated { .. } => "truncated",
            Self::Oversized { .. } => "oversized",
            Self::TrailingBytes { .. } => "trailing_bytes",
            Self::Malformed(_) => "malformed",
            Self::Encode(_) => "encode",
        }
    }
}

/// Encodes a message body (no frame).
pub fn encode_message<T: Serialize>(message: &T) -> Result<Vec<u8>, CodecError> {
    postcard::to_stdvec(message).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes exactly one message body; bytes left over are an error, because a
/// peer that appends data is either buggy or probing.
pub fn decode_message<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| match e {
        postcard::Error::DeserializeUnexpectedEnd => {
            CodecError::Truncated { needed: bytes.len() + 1, available: bytes.len() }
        }
        other => CodecError::Malformed(other.to_string()),
    })?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes { count: rest.len() });
    }
    Ok(value)
}

/// Encodes a message as one frame, refusing bodies over `max` bytes.
pub fn encode_frame<T: Serialize>(message: &T, max: usize) -> Result<Vec<u8>, CodecError> {
    let body = encode_message(message)?;
    if body.len() > max {
        return Err(CodecError::Oversized { len: body.len(), max });
    }
    let mut frame = Vec::with_capacity(LENGTH_PREFIX_BYTES + body.len());
    frame.extend_from_slice(&frame_prefix(body.len(), max)?);
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// The length prefix of a frame whose body is `len` bytes: `len` as a
/// 4-byte big-endian integer, refused above `max` (and above `u32::MAX`).
/// For framing bytes that are already encoded (a stream codec).
pub fn frame_prefix(len: usize, max: usize) -> Result<[u8; LENGTH_PREFIX_BYTES], CodecError> {
    match u32::try_from(len) {
        Ok(prefix) if len <= max => Ok(prefix.to_be_bytes()),
        _ => Err(CodecError::Oversized { len, max }),
    }
}

/// Decodes a buffer that must hold exactly one frame.
pub fn decode_frame<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, CodecError> {
    let len = declared_length(bytes, max)?;
    let end = LENGTH_PREFIX_BYTES + len;
    if bytes.len() < end {
        return Err(CodecError::Truncated { needed: end, available: bytes.len() });
    }
    if bytes.len() > end {
        return Err(CodecError::TrailingBytes { count: bytes.len() - end });
    }
    decode_message(&bytes[LENGTH_PREFIX_BYTES..end])
}

/// The body length a frame's prefix (its first [`LENGTH_PREFIX_BYTES`] of
/// `bytes`) declares, refused above `max` before anything is allocated;
/// `Truncated` when `bytes` is shorter than a prefix.
pub fn declared_length(bytes: &[u8], max: usize) -> Result<usize, CodecError> {
    let Some(prefix) = bytes.first_chunk::<LENGTH_PREFIX_BYTES>() else {
        return Err(CodecError::Truncated { needed: LENGTH_PREFIX_BYTES, available: bytes.len() });
    };
    let len = u32::from_be_bytes(*prefix) as usize;
    if len > max {
        return Err(CodecError::Oversized { len, max });
    }
    Ok(len)
}

/// Splits a byte stream into frame bodies. Holds at most one partial frame
/// (bounded by `max`) plus whatever the caller pushed since the last drain.
#[derive(Debug)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
    max: usize,
}

impl FrameDecoder {
    pub fn new(max: usize) -> Self {
        Self { buffer: Vec::new(), max }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete frame body, `None` if more bytes are needed. An
    /// oversized length prefix is reported as soon as the prefix arrives; the
    /// stream cannot be resynchronised after that, so the caller should close it.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, CodecError> {
        let len = match declared_length(&self.buffer, self.max) {
            Ok(len) => len,
            Err(CodecError::Truncated { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let end = LENGTH_PREFIX_BYTES + len;
        if self.buffer.len() < end {
            return Ok(None);
        }
        let body = self.buffer[LENGTH_PREFIX_BYTES..end].to_vec();
        self.buffer.drain(..end);
        Ok(Some(body))
    }

    /// Bytes received but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }
}
