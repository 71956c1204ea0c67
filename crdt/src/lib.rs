//! hivemesh replicated state, sans-IO: the majority-rule resolver for small
//! clusters, the signed registry, per-job automerge documents and their sync
//! sessions. Nothing here opens a socket, spawns a task or reads the clock.

pub mod job_doc;
pub mod majority;
pub mod registry;
