//! Command-line interface definitions.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// A peer-to-peer gossip node: nodes find each other, track who is alive,
/// replicate state, and answer questions together with LLM consensus jobs.
#[derive(Debug, Parser)]
#[command(name = "hivemesh", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Where the node keeps its identity and state. Defaults to the platform's
    /// data directory (on Linux, ~/.local/share/hivemesh).
    #[arg(long, global = true, env = "HIVEMESH_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print this node's PeerId, creating its identity on first use.
    ///
    /// The identity is an ed25519 key in DATA_DIR/identity.key (PKCS#8 PEM,
    /// mode 0600). The same key signs the node's messages and defines its
    /// libp2p PeerId, so keep the file to keep the node's name.
    Id {
        /// Print a JSON object instead of the bare PeerId.
        #[arg(long)]
        json: bool,
    },
}
