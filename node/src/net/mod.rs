//! The networked node: a libp2p swarm driving the membership machine.

mod behaviour;
mod bootstrap;
mod describe;
mod driver;
mod handle;
mod job_cache;
mod job_sync;
pub mod private;
mod refusals;
mod replication;
mod trust;

pub use behaviour::{MAX_SWIM_FRAME, SWIM_PROTOCOL};
pub use describe::error_chain;
pub use driver::unix_ms;
pub use handle::{
    MemberInfo, MembersReport, NodeClient, NodeConfig, NodeError, NodeHandle, ReplicationConfig,
    StatusReport, spawn_node,
};
pub use job_cache::JobCache;
pub use trust::{ForceLeaveError, ForceLeaveReport};
