//! Feeds arbitrary bytes to every decoder a peer's input reaches first: the
//! one-shot frame decoder, the streaming decoder (in two pieces), and, for
//! anything that decodes, envelope verification and typed opening.
#![no_main]

use hivemesh_protocol::limits::MAX_FRAME_BYTES;
use hivemesh_protocol::{Ballot, Domain, Envelope, FrameDecoder, PeerEntry, Verifier, decode_frame, open};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = decode_frame::<Envelope>(data, MAX_FRAME_BYTES) {
        let mut verifier = Verifier::default();
        let _ = verifier.verify(&env, Domain::BALLOT, env.timestamp_ms);
        let _ = open::<Ballot>(&env);
        let _ = open::<PeerEntry>(&env);
    }
    let split = data.first().map_or(0, |b| *b as usize).min(data.len());
    let mut decoder = FrameDecoder::new(MAX_FRAME_BYTES);
    decoder.push(&data[..split]);
    decoder.push(&data[split..]);
    while let Ok(Some(body)) = decoder.next_frame() {
        let _ = hivemesh_protocol::decode_message::<Envelope>(&body);
    }
});
