//! hivemesh-node: the one crate that does I/O. It holds the on-disk
//! identity, the libp2p swarm that drives membership, and the control API.
//! `membership` and `sim` are sans-IO and run the same code on a virtual
//! clock. `wiring` puts a node together (`spawn_node`) above `net`,
//! `federation` and `api`.

pub mod api;
pub mod federation;
pub mod gateway;
pub mod keystore;
pub mod membership;
pub mod net;
pub mod replica;
pub mod sim;
pub mod wiring;

pub use keystore::{KeystoreError, StoredIdentity, default_data_dir, load_or_create};
pub use net::{ClientError, MemberInfo, MembersReport, NodeClient};
pub use wiring::{NodeConfig, NodeError, NodeHandle, ReplicationConfig, spawn_node};

pub use libp2p::Multiaddr;
