//! `hivemesh tally`: re-check a job's signed ballots, count a PrefLib file
//! of unsigned ones, or generate a file of signed ballots.
//!
//! Signed ballot file format (JSON):
//! `{"job": HEX32, "rule": RULE, "candidates": N | [labels],
//!   "eligible": [PEER_ID...], "ballots": [HEX(postcard(Envelope))...]}`.
//! PrefLib files (`soc`, `soi`, `toc`, `toi`) are told apart by their
//! content (a `#` header) or their extension, Debian tally sheets by their
//! `V:` lines; see [`preflib`].

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

use crate::output::outln;
use anyhow::{Context, bail};
use hivemesh::gpu::ballot_box::{JobSpec, Quorum, validate};
use hivemesh::gpu::engine::{BackendChoice, TallyEngine};
use hivemesh::gpu::{Counts, TallyResult};
use hivemesh::protocol::{
    Ballot, BallotChoice, Envelope, JobId, NodeId, NodeIdentity, PeerId, TallyRule, decode_message,
    encode_message, seal,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

mod preflib;

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Candidates {
    Count(u32),
    Labels(Vec<String>),
}

/// A signed ballot file as `--generate` writes it.
#[derive(Debug, Serialize, Deserialize)]
pub struct BallotFile {
    pub job: String,
    pub rule: String,
    pub candidates: Candidates,
    pub eligible: Vec<String>,
    pub ballots: Vec<String>,
}

/// The same file as read: every ballot's hex borrowed from the file's text
/// (copied only if it holds JSON escapes), so 64 K ballots cost no 64 K
/// strings before they are decoded.
#[derive(Debug, Deserialize)]
struct BallotFileRef<'a> {
    #[serde(borrow)]
    job: Cow<'a, str>,
    rule: String,
    candidates: Candidates,
    #[serde(borrow)]
    eligible: Vec<Cow<'a, str>>,
    #[serde(borrow)]
    ballots: Vec<Cow<'a, str>>,
}

pub fn parse_rule(s: &str) -> anyhow::Result<TallyRule> {
    Ok(s.parse::<TallyRule>()?)
}

/// The whole of a file, or of stdin for `-`, as text.
pub fn read_input(path: &Path) -> anyhow::Result<String> {
    String::from_utf8(read_bytes(path)?).with_context(|| format!("{} is not UTF-8 text", path.display()))
}

/// The whole of a file, or of stdin for `-`.
fn read_bytes(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if path == Path::new("-") {
        std::io::stdin().read_to_end(&mut bytes).context("reading stdin")?;
    } else {
        bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    }
    Ok(bytes)
}

/// Tallies `path`: a PrefLib file (by content or extension), a Debian
/// tally sheet (by content) or a signed ballot file. Prints the report; returns whether quorum was reached
/// (always true for PrefLib files, which have no quorum).
pub fn recheck(
    path: &Path,
    rule: Option<&str>,
    backend: BackendChoice,
    quorum: Quorum,
    json: bool,
) -> anyhow::Result<bool> {
    let bytes = read_bytes(path)?;
    if let Some(file) = preflib::read(path, &bytes)? {
        preflib::tally(&file, rule, backend, json)?;
        return Ok(true);
    }
    recheck_signed(path, &bytes, rule, backend, quorum, json)
}

/// Prints the outcome lines shared by signed and PrefLib reports: the
/// winner (its number only when its label is not already that number),
/// any tie for first, the ranking and the counts. `number(c)` is how
/// candidate c is numbered for the reader ("candidate 2", "alternative 3").
fn print_outcome(
    result: &TallyResult,
    labels: &[String],
    number: impl Fn(u32) -> String,
) -> anyhow::Result<()> {
    let label = |c: u32| labels.get(c as usize).cloned().unwrap_or_else(|| number(c));
    match result.winner {
        Some(w) if label(w) == number(w) => outln!("winner: {}", label(w)),
        Some(w) => outln!("winner: {} ({})", label(w), number(w)),
        None => outln!("winner: none (no valid ballots)"),
    }
    if result.tied_for_first.len() > 1 {
        let tied: Vec<String> = result.tied_for_first.iter().map(|&c| label(c)).collect();
        outln!("tied for first: {}", tied.join(", "));
    }
    let ranking: Vec<String> = result.ranking.iter().map(|&c| label(c)).collect();
    outln!("ranking: {}", ranking.join(" > "));
    match &result.counts {
        Counts::Scores(scores) => {
            let scores: Vec<String> =
                scores.iter().enumerate().map(|(c, s)| format!("{} {s}", label(c as u32))).collect();
            outln!("scores: {}", scores.join(", "));
        }
        Counts::Pairwise { pairwise, strongest } => {
            let names: Vec<String> = (0..result.ranking.len() as u32).map(label).collect();
            print_matrix("pairwise (ballots preferring the row to the column)", &names, pairwise);
            print_matrix("strongest paths", &names, strongest);
        }
    }
    Ok(())
}

/// An n x n matrix, one row per candidate, columns in candidate order.
fn print_matrix(title: &str, names: &[String], cells: &[u64]) {
    let width = cells.iter().map(|c| c.to_string().len()).max().unwrap_or(1);
    outln!("{title}:");
    for (row, name) in cells.chunks(names.len().max(1)).zip(names) {
        let line: Vec<String> = row.iter().map(|c| format!("{c:>width$}")).collect();
        outln!("  {}  {name}", line.join(" "));
    }
}

/// The eligible voters' keys, read from their peer ids without the curve
/// point check (`NodeId::from_str` decompresses each key: 64 K of them cost
/// as much as a third of the signature checks). A peer id of any other
/// shape goes through `NodeId::from_str` at once; the point check of the
/// rest is [`check_unverified_keys`]'s, after validation.
fn eligible_keys(peer_ids: &[Cow<'_, str>]) -> anyhow::Result<Vec<NodeId>> {
    let keys: Vec<anyhow::Result<NodeId>> = peer_ids
        .par_iter()
        .enumerate()
        .map(|(i, text)| {
            key_bytes(text).map(Ok).unwrap_or_else(|| {
                text.parse::<NodeId>().map_err(|_| anyhow::anyhow!("eligible[{i}] {text:?} is not a peer id"))
            })
        })
        .collect();
    let keys: Vec<NodeId> = keys.into_iter().collect::<anyhow::Result<_>>()?;
    // A repeated entry would count one voter twice in the quorum's
    // denominator: refuse it, naming both places.
    let mut first_seen = std::collections::HashMap::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        if let Some(first) = first_seen.insert(*key, i) {
            bail!("eligible[{i}] {:?} repeats eligible[{first}]: each voter is listed once", peer_ids[i]);
        }
    }
    Ok(keys)
}

/// An ed25519 peer id's key: the identity multihash (code 0) of the
/// protobuf `PublicKey { Type: Ed25519 (1), Data: 32 bytes }`.
fn key_bytes(peer_id: &str) -> Option<NodeId> {
    const ED25519_PROTOBUF_PREFIX: [u8; 4] = [0x08, 0x01, 0x12, 0x20];
    let peer: PeerId = peer_id.parse().ok()?;
    let hash = peer.as_ref();
    let key = hash.digest().strip_prefix(&ED25519_PROTOBUF_PREFIX[..]).filter(|_| hash.code() == 0)?;
    Some(NodeId(key.try_into().ok()?))
}

/// Finishes what [`eligible_keys`] skipped: every eligible key that signed
/// no counted ballot (a counted voter's key verified its signature, so it
/// is a valid point) must be one, as `NodeId::from_str` demands; the first
/// that is not is the same error it gives.
fn check_unverified_keys(
    peer_ids: &[Cow<'_, str>],
    keys: &[NodeId],
    verified: &[NodeId],
) -> anyhow::Result<()> {
    let verified: HashSet<&NodeId> = verified.iter().collect();
    let bad = keys
        .par_iter()
        .enumerate()
        .filter(|(_, key)| !verified.contains(key))
        .find_first(|(i, _)| peer_ids[*i].parse::<NodeId>().is_err());
    match bad {
        Some((i, _)) => bail!("eligible[{i}] {:?} is not a peer id", peer_ids[i]),
        None => Ok(()),
    }
}

/// Decodes every ballot (hex, then a postcard envelope) on all cores, one
/// reused buffer per worker; the first bad ballot's error names its index.
fn decode_envelopes(ballots: &[Cow<'_, str>]) -> anyhow::Result<Vec<Envelope>> {
    let decoded: Vec<anyhow::Result<Envelope>> = ballots
        .par_iter()
        .enumerate()
        .map_init(Vec::new, |buffer: &mut Vec<u8>, (i, text)| {
            buffer.resize(text.len() / 2, 0);
            hex::decode_to_slice(text.as_bytes(), buffer)
                .with_context(|| format!("ballot {i} is not hex"))?;
            decode_message::<Envelope>(buffer).with_context(|| format!("ballot {i} is not an envelope"))
        })
        .collect();
    decoded.into_iter().collect()
}

/// Validates and tallies a signed ballot file; prints the report; returns
/// whether quorum was reached.
fn recheck_signed(
    path: &Path,
    bytes: &[u8],
    rule: Option<&str>,
    backend: BackendChoice,
    quorum: Quorum,
    json: bool,
) -> anyhow::Result<bool> {
    let started = std::time::Instant::now();
    let file: BallotFileRef<'_> =
        serde_json::from_slice(bytes).with_context(|| format!("{} is not a ballot file", path.display()))?;
    let job_bytes: [u8; 16] = hex::decode(file.job.as_bytes())
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("job {:?} is not 32 hex digits", file.job))?;
    let rule = parse_rule(rule.unwrap_or(&file.rule))?;
    let (candidates, labels) = match file.candidates {
        Candidates::Count(n) => (n, (0..n).map(|i| format!("candidate {i}")).collect()),
        Candidates::Labels(labels) => (labels.len() as u32, labels),
    };
    let eligible = eligible_keys(&file.eligible)?;
    let envelopes = decode_envelopes(&file.ballots)?;
    let decoded = started.elapsed();
    let spec = JobSpec { job: JobId(job_bytes), rule, candidates, eligible, quorum };
    let counted = validate(&spec, &envelopes);
    check_unverified_keys(&file.eligible, &spec.eligible, &counted.voters)?;
    let validated = started.elapsed();
    let engine = TallyEngine::new(backend).context("opening the tally backend")?;
    let (result, used) = engine.tally(&counted.input);
    let result = result.context("tallying")?;
    tracing::debug!(
        ballots = envelopes.len(),
        parse_and_decode_ms = decoded.as_secs_f64() * 1e3,
        validate_ms = (validated - decoded).as_secs_f64() * 1e3,
        tally_ms = (started.elapsed() - validated).as_secs_f64() * 1e3,
        "tally file timings"
    );
    let reached = counted.quorum_reached();
    let label = |c: u32| labels.get(c as usize).cloned().unwrap_or_default();
    let report = serde_json::json!({
        "status": if reached { "final" } else { "no quorum" },
        "rule": rule.name(),
        "backend": used,
        "eligible": spec.eligible.len(),
        "valid": counted.voters.len(),
        "quorum_required": counted.quorum_required,
        "quorum_reached": reached,
        "winner": result.winner.map(|w| serde_json::json!({"index": w, "label": label(w)})),
        "tied_for_first": result.tied_for_first,
        "ranking": result.ranking,
        "counts": result.counts,
        "excluded": counted.excluded,
        "equivocations": counted.equivocations,
    });
    if json {
        outln!("{report:#}");
        return Ok(reached);
    }
    outln!(
        "status: {} ({} of {} eligible voters; quorum needs {})",
        report["status"].as_str().unwrap_or(""),
        counted.voters.len(),
        spec.eligible.len(),
        counted.quorum_required
    );
    outln!("rule: {}   backend: {used}", rule.name());
    print_outcome(&result, &labels, |c| format!("candidate {c}"))?;
    for e in &counted.excluded {
        outln!("excluded ballot {}: {}", e.index, e.reason);
    }
    for e in &counted.equivocations {
        outln!(
            "equivocation by {}: ballots {} and {} (both signatures verify)",
            e.voter,
            e.ballots[0],
            e.ballots[1]
        );
    }
    Ok(reached)
}

/// Writes a ballot file of `voters` random signed ballots; the first
/// `equivocators` voters also sign a second, different ballot.
pub fn generate(
    rule: TallyRule,
    voters: u32,
    candidates: u32,
    equivocators: u32,
    seed: u64,
) -> anyhow::Result<BallotFile> {
    if candidates < 2 {
        bail!("--candidates must be at least 2 so equivocators can vote two ways");
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let job = JobId(rng.random());
    let mut ballots = Vec::with_capacity(voters as usize);
    let mut eligible = Vec::with_capacity(voters as usize);
    for v in 0..voters {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..12].copy_from_slice(&v.to_le_bytes());
        let id = NodeIdentity::from_seed(key);
        eligible.push(id.node_id().to_string());
        let copies = if v < equivocators { 2 } else { 1 };
        let mut previous = None;
        for copy in 0..copies {
            let mut choice = random_choice(rule, candidates, &mut rng);
            while previous.as_ref() == Some(&choice) {
                choice = random_choice(rule, candidates, &mut rng);
            }
            let weight = if rule == TallyRule::WeightedPlurality { rng.random_range(1..=100) } else { 1 };
            let ballot = Ballot { job, voter: id.node_id(), rule, choice: choice.clone(), weight };
            let envelope = seal(&id, 1 + copy, 1_800_000_000_000, &ballot)?;
            ballots.push(hex::encode(encode_message(&envelope)?));
            previous = Some(choice);
        }
    }
    ballots.shuffle(&mut rng);
    Ok(BallotFile {
        job: hex::encode(job.0),
        rule: rule.name().into(),
        candidates: Candidates::Count(candidates),
        eligible,
        ballots,
    })
}

fn random_choice(rule: TallyRule, candidates: u32, rng: &mut impl Rng) -> BallotChoice {
    let mut all: Vec<u32> = (0..candidates).collect();
    all.shuffle(rng);
    match rule {
        TallyRule::Plurality | TallyRule::WeightedPlurality => BallotChoice::Single(all[0]),
        TallyRule::Approval => {
            all.truncate(rng.random_range(1..=candidates as usize));
            BallotChoice::Approve(all)
        }
        TallyRule::Borda | TallyRule::Schulze => BallotChoice::Rank(all),
    }
}
