//! How to run one node: its configuration.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};

use crate::federation::FederationConfig;
use crate::membership::MembershipConfig;
use crate::net::private::PreSharedKey;
use crate::replica::{JobsConfig, Profile};

/// How to run one node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    /// Where the HTTP control API listens; `None` for no API.
    pub api: Option<SocketAddr>,
    /// Bearer token every API request must carry; required when the API is
    /// bound beyond loopback.
    pub api_token: Option<String>,
    /// Names (or IP addresses) the API also answers to in the `Host`
    /// header, beyond the address it is bound to and `localhost`: e.g. the
    /// name of a proxy in front of it (`--api-allow-host`). Any other Host
    /// gets 421 (ADR 0014).
    pub api_allow_hosts: Vec<String>,
    /// Web origins (`scheme://host[:port]`, exact) whose pages may call the
    /// API, with CORS answers (`--api-allow-origin`). A request from any
    /// other page's origin gets 403; requests without `Origin` (curl, SDKs)
    /// pass. `*` and `null` are refused at start (ADR 0014).
    pub api_allow_origins: Vec<String>,
    pub membership: MembershipConfig,
    pub replication: ReplicationConfig,
    /// Taking part in LLM jobs; `None` for a node that only relays state.
    pub federation: Option<FederationConfig>,
    /// The swarm key (`--swarm-key`, ADR 0016): every connection is TCP
    /// wrapped in libp2p pnet with this key, and QUIC is off (QUIC
    /// addresses to listen on are an error; learned ones are never dialled).
    pub swarm_key: Option<PreSharedKey>,
    /// The only peers this node keeps connections with (`--allow-peers`,
    /// ADR 0016); `None` allows every peer. Changed at run time with
    /// [`crate::net::NodeClient::set_allowed_peers`].
    pub allow_peers: Option<HashSet<PeerId>>,
}

/// How the node replicates its state.
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    /// Period of anti-entropy rounds with a random live member.
    pub anti_entropy: Duration,
    /// At or below this many nodes (this one included), the default view is
    /// majority rule over peers' views; above it, the registry.
    pub majority_threshold: usize,
    /// What this node advertises in the registry at start; `None` keeps the
    /// profile last advertised at run time (or the default on a new node).
    pub profile: Option<Profile>,
    /// Limits and compaction of the job documents this node holds.
    pub jobs: JobsConfig,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            anti_entropy: Duration::from_secs(5),
            majority_threshold: 25,
            profile: None,
            jobs: JobsConfig::default(),
        }
    }
}

impl NodeConfig {
    /// Loopback-only defaults with ephemeral ports: what tests and local
    /// meshes want.
    pub fn loopback(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            listen: vec![
                "/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("static multiaddr"),
                "/ip4/127.0.0.1/tcp/0".parse().expect("static multiaddr"),
            ],
            bootstrap: Vec::new(),
            mdns: false,
            api: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            api_token: None,
            api_allow_hosts: Vec::new(),
            api_allow_origins: Vec::new(),
            membership: MembershipConfig::lan(16),
            replication: ReplicationConfig::default(),
            federation: None,
            swarm_key: None,
            allow_peers: None,
        }
    }
}
