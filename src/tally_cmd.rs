//! `hivemesh tally`: re-check a job's signed ballots, or generate a file of them.
//!
//! File format (JSON):
//! `{"job": HEX32, "rule": RULE, "candidates": N | [labels],
//!   "eligible": [PEER_ID...], "ballots": [HEX(postcard(Envelope))...]}`

use std::io::Read;
use std::path::Path;

use crate::output::outln;
use anyhow::{Context, bail};
use hivemesh::gpu::ballot_box::{JobSpec, Quorum, validate};
use hivemesh::gpu::engine::{BackendChoice, TallyEngine};
use hivemesh::protocol::{
    Ballot, BallotChoice, Envelope, JobId, NodeId, NodeIdentity, TallyRule, decode_message, encode_message,
    seal,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Candidates {
    Count(u32),
    Labels(Vec<String>),
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BallotFile {
    pub job: String,
    pub rule: String,
    pub candidates: Candidates,
    pub eligible: Vec<String>,
    pub ballots: Vec<String>,
}

pub fn parse_rule(s: &str) -> anyhow::Result<TallyRule> {
    s.parse().map_err(anyhow::Error::msg)
}

/// The whole of a file, or of stdin for `-`.
pub fn read_input(path: &Path) -> anyhow::Result<String> {
    let mut text = String::new();
    if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).context("reading stdin")?;
    } else {
        text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    }
    Ok(text)
}

/// Validates and tallies a ballot file; prints the report; returns whether
/// quorum was reached.
pub fn recheck(
    path: &Path,
    rule: Option<&str>,
    backend: BackendChoice,
    quorum: Quorum,
    json: bool,
) -> anyhow::Result<bool> {
    let file: BallotFile = serde_json::from_str(&read_input(path)?)
        .with_context(|| format!("{} is not a ballot file", path.display()))?;
    let job_bytes: [u8; 16] = hex::decode(&file.job)
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("job {:?} is not 32 hex digits", file.job))?;
    let rule = parse_rule(rule.unwrap_or(&file.rule))?;
    let (candidates, labels) = match file.candidates {
        Candidates::Count(n) => (n, (0..n).map(|i| format!("candidate {i}")).collect()),
        Candidates::Labels(labels) => (labels.len() as u32, labels),
    };
    let eligible = file
        .eligible
        .iter()
        .enumerate()
        .map(|(i, p)| {
            p.parse::<NodeId>().map_err(|_| anyhow::anyhow!("eligible[{i}] {p:?} is not a peer id"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let envelopes = file
        .ballots
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let bytes = hex::decode(text).with_context(|| format!("ballot {i} is not hex"))?;
            decode_message::<Envelope>(&bytes).with_context(|| format!("ballot {i} is not an envelope"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let spec = JobSpec { job: JobId(job_bytes), rule, candidates, eligible, quorum };
    let counted = validate(&spec, &envelopes);
    let engine = TallyEngine::new(backend).context("opening the tally backend")?;
    let (result, used) = engine.tally(&counted.input);
    let result = result.context("tallying")?;
    let reached = counted.quorum_reached();
    let report = serde_json::json!({
        "status": if reached { "final" } else { "no quorum" },
        "rule": rule.name(),
        "backend": used,
        "eligible": spec.eligible.len(),
        "valid": counted.voters.len(),
        "quorum_required": counted.quorum_required,
        "quorum_reached": reached,
        "winner": result.winner.map(|w| serde_json::json!({"index": w, "label": labels[w as usize]})),
        "tied_for_first": result.tied_for_first,
        "ranking": result.ranking,
        "counts": result.counts,
        "excluded": counted.excluded,
        "equivocations": counted.equivocations,
    });
    if json {
        outln!("{report:#}");
    } else {
        outln!(
            "status: {} ({} of {} eligible voters; quorum needs {})",
            report["status"].as_str().unwrap_or(""),
            counted.voters.len(),
            spec.eligible.len(),
            counted.quorum_required
        );
        outln!("rule: {}   backend: {used}", rule.name());
        match result.winner {
            Some(w) => outln!("winner: {} (candidate {w})", labels[w as usize]),
            None => outln!("winner: none (no valid ballots)"),
        }
        let ranking: Vec<String> = result.ranking.iter().map(|&c| labels[c as usize].clone()).collect();
        outln!("ranking: {}", ranking.join(" > "));
        outln!("counts: {}", serde_json::to_string(&result.counts)?);
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
