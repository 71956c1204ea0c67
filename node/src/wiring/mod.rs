//! The node put together: identity, state, swarm, federation, gateway and
//! control API, started in that order by [`spawn_node`]. This module sits
//! above `net`, `federation` and `api`; none of them imports it.

mod config;
mod handle;
mod spawn;

pub use config::{NodeConfig, ReplicationConfig};
pub use handle::NodeHandle;
pub use spawn::{NodeError, spawn_node};
