//! Framing: truncated, oversized, trailing and malformed input are errors,
//! never panics; random bytes never panic.

use hivemesh_protocol::codec::LENGTH_PREFIX_BYTES;
use hivemesh_protocol::limits::MAX_FRAME_BYTES;
use hivemesh_protocol::{
    CodecError, Domain, Envelope, FrameDecoder, NodeIdentity, decode_frame, encode_frame,
};
use proptest::prelude::*;

fn sample() -> Envelope {
    Envelope::seal(&NodeIdentity::from_seed([7; 32]), Domain::PEER_ENTRY, 42, 1_000, b"hello".to_vec())
        .expect("seal")
}

#[test]
fn round_trip() {
    let frame = encode_frame(&sample(), MAX_FRAME_BYTES).expect("encode");
    assert_eq!(decode_frame::<Envelope>(&frame, MAX_FRAME_BYTES), Ok(sample()));
}

#[test]
fn truncated_frame() {
    let frame = encode_frame(&sample(), MAX_FRAME_BYTES).expect("encode");
    assert_eq!(
        decode_frame::<Envelope>(&frame[..2], MAX_FRAME_BYTES),
        Err(CodecError::Truncated { needed: LENGTH_PREFIX_BYTES, available: 2 })
    );
    let short = &frame[..frame.len() - 1];
    assert_eq!(
        decode_frame::<Envelope>(short, MAX_FRAME_BYTES),
        Err(CodecError::Truncated { needed: frame.len(), available: frame.len() - 1 })
    );
}

#[test]
fn oversized_frame_is_rejected_from_its_prefix_alone() {
    let mut frame = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&[0; 8]);
    assert_eq!(
        decode_frame::<Envelope>(&frame, MAX_FRAME_BYTES),
        Err(CodecError::Oversized { len: MAX_FRAME_BYTES + 1, max: MAX_FRAME_BYTES })
    );
    assert!(matches!(encode_frame(&sample(), 8), Err(CodecError::Oversized { max: 8, .. })));
}

#[test]
fn trailing_bytes_after_frame_or_body() {
    let mut frame = encode_frame(&sample(), MAX_FRAME_BYTES).expect("encode");
    frame.push(0);
    assert_eq!(
        decode_frame::<Envelope>(&frame, MAX_FRAME_BYTES),
        Err(CodecError::TrailingBytes { count: 1 })
    );
    // A length prefix that covers extra bytes after the body.
    let body_len = frame.len() - LENGTH_PREFIX_BYTES;
    frame[..4].copy_from_slice(&(body_len as u32).to_be_bytes());
    assert_eq!(
        decode_frame::<Envelope>(&frame, MAX_FRAME_BYTES),
        Err(CodecError::TrailingBytes { count: 1 })
    );
}

#[test]
fn malformed_body() {
    // Version byte fine, then a varint domain that never ends.
    let body = [1u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    let err = decode_frame::<Envelope>(&frame, MAX_FRAME_BYTES).unwrap_err();
    assert!(matches!(err, CodecError::Malformed(_) | CodecError::Truncated { .. }), "{err:?}");
}

#[test]
fn stream_decoder_reassembles_split_frames_and_stops_at_oversize() {
    let frame = encode_frame(&sample(), MAX_FRAME_BYTES).expect("encode");
    let stream: Vec<u8> = [frame.clone(), frame.clone()].concat();
    let mut decoder = FrameDecoder::new(MAX_FRAME_BYTES);
    let mut bodies = vec![];
    for byte in &stream {
        decoder.push(std::slice::from_ref(byte));
        while let Some(body) = decoder.next_frame().expect("valid stream") {
            bodies.push(body);
        }
    }
    assert_eq!(bodies.len(), 2);
    assert_eq!(decoder.buffered(), 0);
    assert_eq!(bodies[0], frame[LENGTH_PREFIX_BYTES..]);

    let mut decoder = FrameDecoder::new(16);
    decoder.push(&100u32.to_be_bytes());
    assert_eq!(decoder.next_frame(), Err(CodecError::Oversized { len: 100, max: 16 }));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_frame::<Envelope>(&bytes, MAX_FRAME_BYTES);
        let _ = hivemesh_protocol::decode_message::<Envelope>(&bytes);
    }

    #[test]
    fn envelopes_round_trip(seq in any::<u64>(), ts in any::<u64>(), payload in proptest::collection::vec(any::<u8>(), 0..256)) {
        let env = Envelope::seal(&NodeIdentity::from_seed([1; 32]), Domain::BALLOT, seq, ts, payload).expect("seal");
        let frame = encode_frame(&env, MAX_FRAME_BYTES).expect("encode");
        prop_assert_eq!(decode_frame::<Envelope>(&frame, MAX_FRAME_BYTES), Ok(env));
    }
}
