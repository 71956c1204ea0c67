//! hivemesh-node: the one crate that does I/O. Today it holds the on-disk
//! identity; the swarm, storage and HTTP API join it as their issues land.

pub mod keystore;

pub use keystore::{KeystoreError, StoredIdentity, default_data_dir, load_or_create};
