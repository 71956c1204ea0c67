//! The networked node: a libp2p swarm driving the membership machine.
//! Below the federation and the API: nothing here imports them; the node
//! is put together above, in `wiring`.

mod behaviour;
mod bootstrap;
mod client;
mod codec;
mod describe;
mod driver;
mod dto;
mod job_cache;
mod job_sync;
mod job_task;
pub mod private;
mod refusals;
mod replication;
mod start;
mod trust;

pub use behaviour::SWIM_PROTOCOL;
pub use client::{ClientError, NodeClient};
pub use codec::{FrameError, MAX_SWIM_FRAME};
pub use describe::error_chain;
pub use driver::unix_ms;
pub use dto::{MemberInfo, MembersReport, StatusReport};
pub use job_cache::JobCache;
pub use start::{Listening, RunSettings, StartError, SwarmSettings, listen};
pub use trust::{ForceLeaveError, ForceLeaveReport};
