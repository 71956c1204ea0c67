//! Membership: SWIM failure detection (foca) as a sans-IO state machine.
//!
//! Nothing here touches sockets, tasks or the wall clock: the node drives it
//! with tokio and real libp2p connections, the simulation with a virtual
//! clock and a simulated network, and both run exactly this code.

pub mod clock;
mod config;
mod lifeguard;
mod machine;
mod member_id;
mod restart;
mod view;

pub use config::MembershipConfig;
pub use lifeguard::{ClaimError, suspicion_timeout};
pub use machine::{Membership, Output, SuspicionStep, Timer};
pub use member_id::{MAX_ADDRESSES_PER_MEMBER, MemberId};
pub use restart::start_generation;
pub use view::{MemberEvent, MemberState, MemberView, MembershipStats, RejectReason};
