//! The flags of `hivemesh run`. Each is also a config-file key and an
//! environment variable (see `super`): their doc comments are the
//! descriptions `hivemesh config --reference` prints.

use std::net::SocketAddr;
use std::path::PathBuf;

use hivemesh::node::Multiaddr;

use crate::cli::{AdvertiseArgs, ApiAccessArgs, JobLimitArgs, LlmArgs, PrivateSwarmArgs, parse_multiaddr};

/// `hivemesh run`'s flags as clap parsed them. Defaults here are the lowest
/// layer only: `super::resolve` lets the file and the environment override
/// any flag not given on the command line.
#[derive(clap::Args, Debug, Clone)]
pub struct RunFlags {
    /// The config file (TOML; keys are these flags' names with underscores).
    /// Default: DATA_DIR/hivemesh.toml when present.
    #[arg(long, env = "HIVEMESH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on (repeatable). Default: QUIC and TCP on port 4001, all interfaces.
    #[arg(long, value_name = "MULTIADDR", value_parser = parse_multiaddr)]
    pub listen: Vec<Multiaddr>,
    /// A peer to join through (repeatable); /p2p/<PeerId> may be omitted.
    #[arg(long, value_name = "MULTIADDR", value_parser = parse_multiaddr)]
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the local network with mDNS.
    #[arg(long)]
    pub mdns: bool,
    /// Control and job API address. Beyond loopback it needs a bearer
    /// token: --api-token, or one generated into DATA_DIR/api.token.
    /// Web pages cannot use it unless --api-allow-origin names them.
    #[arg(long, default_value = "127.0.0.1:7480")]
    pub api: SocketAddr,
    /// Bearer token the API requires (also read by `hivemesh` commands).
    #[arg(long, env = "HIVEMESH_API_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub api_token: Option<String>,
    #[command(flatten)]
    pub api_access: ApiAccessArgs,
    /// Expected swarm size; tunes how long updates are gossiped and how
    /// long a suspect has to refute.
    #[arg(long, default_value_t = 50)]
    pub expected_size: u32,
    #[command(flatten)]
    pub advertise: AdvertiseArgs,
    /// Milliseconds between anti-entropy rounds with a random live member.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(MIN_ANTI_ENTROPY_MS..))]
    pub anti_entropy_ms: u64,
    /// At or below this many nodes the default member view is majority
    /// rule over the peers' views; above it, the registry.
    #[arg(long, default_value_t = 25)]
    pub majority_threshold: usize,
    /// Take no part in LLM jobs (no model is loaded or called); the node
    /// still relays membership and state.
    #[arg(long)]
    pub no_jobs: bool,
    /// The provider answering this node's share of jobs.
    #[command(flatten)]
    pub llm: LlmArgs,
    #[command(flatten)]
    pub limits: JobLimitArgs,
    #[command(flatten)]
    pub private: PrivateSwarmArgs,
}

/// The shortest `anti_entropy_ms`.
pub const MIN_ANTI_ENTROPY_MS: u64 = 10;
