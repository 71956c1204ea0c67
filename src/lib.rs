//! hivemesh: a peer-to-peer gossip node that federates LLM consensus jobs.
//!
//! This crate is the `hivemesh` binary plus re-exports of the workspace
//! crates, so examples and embedders need one dependency.

pub use hivemesh_crdt as crdt;
pub use hivemesh_gpu as gpu;
pub use hivemesh_llm as llm;
pub use hivemesh_node as node;
pub use hivemesh_protocol as protocol;

/// PrefLib's preference files (soc, soi, toc, toi), read for `hivemesh tally`.
pub mod preflib;
