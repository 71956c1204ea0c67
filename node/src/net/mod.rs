//! The networked node: a libp2p swarm driving the membership machine.

mod behaviour;
mod bootstrap;
mod driver;
mod handle;

pub use behaviour::{MAX_SWIM_FRAME, SWIM_PROTOCOL};
pub use handle::{
    MemberInfo, MembersReport, NodeClient, NodeConfig, NodeError, NodeHandle, StatusReport, spawn_node,
};
