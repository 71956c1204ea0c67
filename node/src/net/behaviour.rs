//! The libp2p behaviours a node runs, and the stream codec that carries SWIM
//! frames between authenticated peers.

use std::collections::HashSet;
use std::io;
use std::time::Duration;

use hivemesh_protocol::limits::MAX_FRAME_BYTES;
use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    PeerId, StreamProtocol, allow_block_list, identify, identity, kad, mdns, ping, request_response,
};

pub const IDENTIFY_PROTOCOL: &str = "/hivemesh/1.0.0";
pub const SWIM_PROTOCOL: StreamProtocol = StreamProtocol::new("/hivemesh/swim/1.0.0");
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/hivemesh/kad/1.0.0");
pub const STATE_PROTOCOL: StreamProtocol = StreamProtocol::new("/hivemesh/state/1.0.0");

/// A membership frame larger than this is refused before it is read.
pub const MAX_SWIM_FRAME: usize = 64 * 1024 + 64;

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// The allowlist (`--allow-peers`, ADR 0016); off when every peer may
    /// connect. First, so a refused connection reaches no other behaviour.
    pub allow: Toggle<allow_block_list::Behaviour<allow_block_list::AllowedPeers>>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub swim: request_response::Behaviour<SwimCodec>,
    pub state: request_response::Behaviour<StateCodec>,
    /// Raw streams: the gateway's forwarded OpenAI requests (ADR 0020).
    pub streams: libp2p_stream::Behaviour,
}

impl Behaviour {
    /// `mdns` failing to start (no multicast, as in many containers) is a
    /// warning, not an error: bootstrap addresses still work. `allow`: the
    /// only peers connections are kept with (`None`: any peer).
    pub fn new(key: &identity::Keypair, mdns: bool, allow: Option<HashSet<PeerId>>) -> Self {
        let peer_id = key.public().to_peer_id();
        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        // Membership finds peers; kademlia's own periodic bootstrap only
        // warns on a lone node.
        kad_config.set_periodic_bootstrap_interval(None);
        let mut kad = kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
        // Server mode without waiting for a confirmed external address, so
        // private and loopback meshes answer Kademlia queries.
        kad.set_mode(Some(kad::Mode::Server));
        let mdns = if mdns {
            match mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id) {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::warn!(error = %e, "mDNS could not start; continuing without LAN discovery");
                    None
                }
            }
        } else {
            None
        };
        let swim = request_response::Behaviour::with_codec(
            SwimCodec,
            [(SWIM_PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
        );
        let state = request_response::Behaviour::with_codec(
            StateCodec,
            [(STATE_PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
        );
        let allow = allow.map(|peers| {
            let mut list = allow_block_list::Behaviour::<allow_block_list::AllowedPeers>::default();
            for peer in peers {
                list.allow_peer(peer);
            }
            list
        });
        Self {
            allow: Toggle::from(allow),
            identify: identify::Behaviour::new(identify::Config::new(
                IDENTIFY_PROTOCOL.to_string(),
                key.public(),
            )),
            ping: ping::Behaviour::default(),
            kad,
            mdns: Toggle::from(mdns),
            swim,
            state,
            streams: libp2p_stream::Behaviour::new(),
        }
    }
}

/// One SWIM frame per stream: a 4-byte big-endian length and the frame; the
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

/// Replicated-state messages (registry pushes, anti-entropy, view requests):
/// one length-prefixed frame each way, at most `MAX_FRAME_BYTES`. Decoding
/// the frame's content is the driver's job, so a bad one is counted there.
#[derive(Clone, Copy, Debug, Default)]
pub struct StateCodec;

/// A 4-byte big-endian length and that many bytes, refused above `max`.
async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize, what: &str) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} frame of {len} bytes exceeds the {max}-byte limit"),
        ));
    }
    let mut frame = vec![0u8; len];
    io.read_exact(&mut frame).await?;
    Ok(frame)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    frame: &[u8],
    max: usize,
    what: &str,
) -> io::Result<()> {
    let len = u32::try_from(frame.len())
        .ok()
        .filter(|l| *l as usize <= max)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{what} frame too large")))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(frame).await?;
    io.flush().await
}

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
