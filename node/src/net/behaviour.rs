//! The libp2p behaviours a node runs. Their stream codecs (SWIM frames,
//! replicated state) are in `codec`.

use std::collections::HashSet;
use std::time::Duration;

use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    PeerId, StreamProtocol, allow_block_list, identify, identity, kad, mdns, ping, request_response,
};

use super::codec::{StateCodec, SwimCodec};

pub const IDENTIFY_PROTOCOL: &str = "/hivemesh/1.0.0";
pub const SWIM_PROTOCOL: StreamProtocol = StreamProtocol::new("/hivemesh/swim/1.0.0");
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/hivemesh/kad/1.0.0");
pub const STATE_PROTOCOL: StreamProtocol = StreamProtocol::new("/hivemesh/state/1.0.0");

/// Concurrent streams of the state protocol per connection: job pushes,
/// sync rounds and streamed text of many jobs at once. libp2p's default
/// (100) dropped inbound streams with 20 concurrent jobs between three
/// nodes (issue 17's breaker run).
pub const MAX_STATE_STREAMS: usize = 1024;

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
            request_response::Config::default()
                .with_request_timeout(Duration::from_secs(10))
                .with_max_concurrent_streams(MAX_STATE_STREAMS),
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
