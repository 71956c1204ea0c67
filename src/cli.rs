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
    /// Re-check a job's outcome from its signed ballots, or generate a ballot file.
    ///
    /// Verifies every signature, drops ballots from ineligible voters, for
    /// unknown candidates or for another job, excludes both ballots of a voter
    /// who signed two different ones (equivocation), checks quorum, and
    /// tallies. Prints the outcome, the counts (or Schulze's pairwise and
    /// strongest-path matrices) and every excluded ballot with its reason.
    /// Exits 2 when quorum was not reached, 1 on malformed input.
    ///
    /// File format (JSON): {"job": HEX32, "rule": RULE, "candidates": N or
    /// [labels], "eligible": [PEER_ID, ...], "ballots": [HEX, ...]}, each
    /// ballot being a postcard-encoded signed envelope.
    Tally {
        /// Ballot file, or - for stdin. Not used with --generate.
        #[arg(required_unless_present = "generate")]
        file: Option<PathBuf>,
        /// plurality, weighted, approval, borda or schulze. Defaults to the file's rule.
        #[arg(long)]
        rule: Option<String>,
        /// cpu, gpu (software adapters allowed) or auto (a real GPU above the measured crossover).
        #[arg(long, default_value = "auto")]
        backend: String,
        /// two-thirds (more than 2/3 of eligible voters), majority, or a number of ballots.
        #[arg(long, default_value = "two-thirds")]
        quorum: String,
        /// Print the full report as JSON.
        #[arg(long)]
        json: bool,
        /// Write a random signed ballot file to stdout instead (for demos and benchmarks).
        #[arg(long)]
        generate: bool,
        /// With --generate: number of voters.
        #[arg(long, default_value_t = 100)]
        voters: u32,
        /// With --generate: number of candidates.
        #[arg(long, default_value_t = 4)]
        candidates: u32,
        /// With --generate: how many voters also sign a second, different ballot.
        #[arg(long, default_value_t = 0)]
        equivocators: u32,
        /// With --generate: random seed (same seed, same file).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}
