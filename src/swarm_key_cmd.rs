//! `hivemesh swarm-key`: a new key for a private swarm (ADR 0016), or the
//! fingerprint of one.

use std::path::Path;

use hivemesh::node::net::private::{new_swarm_key, read_swarm_key, swarm_key_fingerprint, swarm_key_text};

use crate::output::outln;

/// Prints a new key in kubo's swarm.key format, or with `fingerprint` the
/// fingerprint of the key in that file.
pub fn run(fingerprint: Option<&Path>) -> anyhow::Result<()> {
    match fingerprint {
        Some(path) => outln!("{}", swarm_key_fingerprint(&read_swarm_key(path)?)),
        None => {
            let text = swarm_key_text(&new_swarm_key()?);
            outln!("{}", text.trim_end());
        }
    }
    Ok(())
}
