//! Framing bytes that are already encoded (the node's stream codecs):
//! `frame_prefix` and `declared_length` agree with `encode_frame`.

use hivemesh_protocol::codec::{CodecError, LENGTH_PREFIX_BYTES, declared_length, frame_prefix};
use hivemesh_protocol::encode_frame;

#[test]
fn a_prefix_is_the_one_encode_frame_writes() {
    let frame = encode_frame(&"a message".to_string(), 64).expect("encode");
    let body_len = frame.len() - LENGTH_PREFIX_BYTES;
    assert_eq!(frame_prefix(body_len, 64).expect("prefix"), frame[..LENGTH_PREFIX_BYTES]);
    assert_eq!(declared_length(&frame, 64), Ok(body_len));
}

#[test]
fn lengths_over_the_limit_are_refused_both_ways() {
    assert_eq!(frame_prefix(65, 64), Err(CodecError::Oversized { len: 65, max: 64 }));
    assert_eq!(frame_prefix(64, 64), Ok(64u32.to_be_bytes()));
    assert_eq!(declared_length(&65u32.to_be_bytes(), 64), Err(CodecError::Oversized { len: 65, max: 64 }));
    let too_long = u32::MAX as usize + 1;
    assert!(matches!(frame_prefix(too_long, usize::MAX), Err(CodecError::Oversized { .. })));
}

#[test]
fn a_short_prefix_is_truncated() {
    assert_eq!(declared_length(&[0, 0, 1], 64), Err(CodecError::Truncated { needed: 4, available: 3 }));
}
