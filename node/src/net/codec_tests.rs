//! The node's stream codecs over in-memory streams: protocol framing on the
//! wire, limits enforced from the prefix, refusals with a clear error.

use futures::io::Cursor;
use hivemesh_protocol::FrameDecoder;
use libp2p::request_response::Codec;

use super::*;

const SWIM: StreamProtocol = StreamProtocol::new("/test/swim");

/// The bytes `write` puts on a stream.
async fn written<F, Fut>(write: F) -> (io::Result<()>, Vec<u8>)
where
    F: FnOnce(Cursor<Vec<u8>>) -> Fut,
    Fut: std::future::Future<Output = (io::Result<()>, Cursor<Vec<u8>>)>,
{
    let (result, cursor) = write(Cursor::new(Vec::new())).await;
    (result, cursor.into_inner())
}

fn frame_error(error: &io::Error) -> &FrameError {
    error.get_ref().and_then(|e| e.downcast_ref::<FrameError>()).expect("a FrameError inside")
}

#[tokio::test]
async fn a_swim_frame_is_a_protocol_frame_and_reads_back() {
    let body = b"ping from a".to_vec();
    let (result, bytes) = written(|mut io| async move {
        let result = SwimCodec.write_request(&SWIM, &mut io, body).await;
        (result, io)
    })
    .await;
    result.expect("write");
    assert_eq!(bytes[..4], (11u32).to_be_bytes());
    let mut decoder = FrameDecoder::new(MAX_SWIM_FRAME);
    decoder.push(&bytes);
    assert_eq!(decoder.next_frame().expect("protocol decodes it"), Some(b"ping from a".to_vec()));
    assert_eq!(decoder.buffered(), 0);
    let read = SwimCodec.read_request(&SWIM, &mut Cursor::new(bytes)).await.expect("read");
    assert_eq!(read, b"ping from a");
}

#[tokio::test]
async fn an_oversized_swim_frame_is_refused_from_its_prefix_alone() {
    // Only the prefix: reading the body would end in UnexpectedEof instead.
    let prefix = ((MAX_SWIM_FRAME + 1) as u32).to_be_bytes().to_vec();
    let error = SwimCodec.read_request(&SWIM, &mut Cursor::new(prefix)).await.expect_err("oversized");
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    assert_eq!(
        frame_error(&error).error,
        CodecError::Oversized { len: MAX_SWIM_FRAME + 1, max: MAX_SWIM_FRAME }
    );
    assert_eq!(
        error.to_string(),
        format!("membership frame of {} bytes exceeds the limit of {MAX_SWIM_FRAME}", MAX_SWIM_FRAME + 1)
    );
}

#[tokio::test]
async fn a_state_frame_at_the_limit_passes_and_one_byte_more_is_refused() {
    let at_limit = vec![7u8; MAX_FRAME_BYTES];
    let (result, bytes) = written(|mut io| async move {
        let result = StateCodec.write_response(&SWIM, &mut io, at_limit).await;
        (result, io)
    })
    .await;
    result.expect("write at the limit");
    let read = StateCodec.read_response(&SWIM, &mut Cursor::new(bytes)).await.expect("read at the limit");
    assert_eq!(read.len(), MAX_FRAME_BYTES);

    let mut over = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes().to_vec();
    over.resize(4 + MAX_FRAME_BYTES + 1, 7);
    let error = StateCodec.read_request(&SWIM, &mut Cursor::new(over)).await.expect_err("over the limit");
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    assert_eq!(frame_error(&error).what, "state");
}

#[tokio::test]
async fn an_oversized_body_is_refused_before_a_byte_is_written() {
    let (result, bytes) = written(|mut io| async move {
        let result = SwimCodec.write_request(&SWIM, &mut io, vec![0; MAX_SWIM_FRAME + 1]).await;
        (result, io)
    })
    .await;
    let error = result.expect_err("too large");
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(frame_error(&error).what, "membership");
    assert!(bytes.is_empty(), "{} bytes written", bytes.len());
}

#[tokio::test]
async fn a_truncated_frame_is_an_early_end() {
    let mut bytes = 10u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(b"short");
    let error = StateCodec.read_request(&SWIM, &mut Cursor::new(bytes)).await.expect_err("truncated");
    assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    let error =
        StateCodec.read_request(&SWIM, &mut Cursor::new(vec![0u8, 0])).await.expect_err("half a prefix");
    assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn a_wrong_acknowledgement_byte_is_refused() {
    SwimCodec.read_response(&SWIM, &mut Cursor::new(vec![ACK])).await.expect("the ack");
    let error = SwimCodec.read_response(&SWIM, &mut Cursor::new(vec![2u8])).await.expect_err("not the ack");
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
}
