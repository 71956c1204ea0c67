//! Ballot validation before counting: signatures (batch-verified),
//! eligibility, known candidates, one ballot per voter, equivocation, quorum.
//! Everything excluded is reported with its index and reason, so anyone
//! holding the same signed ballots reaches the same outcome.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use hivemesh_protocol::{
    Ballot, BallotChoice, Domain, Envelope, EnvelopeError, JobId, MessageError, NodeId, TallyRule, open,
    verify_batch_stateless,
};
use rayon::prelude::*;
use serde::Serialize;

use crate::input::{TIED_WITH_PREVIOUS, TallyInput};

/// How many valid ballots make an outcome final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quorum {
    /// More than two thirds of the eligible voters (the default).
    #[default]
    TwoThirds,
    /// More than half of the eligible voters.
    Majority,
    /// At least this many.
    AtLeast(u32),
}

impl Quorum {
    pub fn required(self, eligible: usize) -> usize {
        match self {
            Quorum::TwoThirds => eligible * 2 / 3 + 1,
            Quorum::Majority => eligible / 2 + 1,
            Quorum::AtLeast(k) => k as usize,
        }
    }
}

impl FromStr for Quorum {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "two-thirds" => Ok(Quorum::TwoThirds),
            "majority" => Ok(Quorum::Majority),
            n => match n.parse::<u32>() {
                Ok(0) => Err("quorum 0 would make no ballots final: use a number of ballots from 1".into()),
                Ok(k) => Ok(Quorum::AtLeast(k)),
                Err(_) => {
                    Err(format!("unknown quorum {n:?}: use two-thirds, majority, or a number of ballots"))
                }
            },
        }
    }
}

/// What a job's ballots are checked against.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub job: JobId,
    pub rule: TallyRule,
    pub candidates: u32,
    pub eligible: Vec<NodeId>,
    pub quorum: Quorum,
}

/// A ballot left out of the count, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exclusion {
    /// Position in the input.
    pub index: usize,
    /// The signer, when the envelope named one.
    pub voter: Option<String>,
    pub reason: String,
}

/// Two different ballots signed by one voter for one job. The two envelopes
/// at these input positions are the evidence: both signatures verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Equivocation {
    pub voter: String,
    pub ballots: [usize; 2],
}

/// The validated ballots, ready for a backend, and the bookkeeping.
#[derive(Debug, Clone)]
pub struct Counted {
    pub input: TallyInput,
    /// Voters whose ballot was counted, in input order.
    pub voters: Vec<NodeId>,
    pub excluded: Vec<Exclusion>,
    pub equivocations: Vec<Equivocation>,
    pub quorum_required: usize,
}

impl Counted {
    pub fn quorum_reached(&self) -> bool {
        self.voters.len() >= self.quorum_required
    }
}

/// Envelopes per signature batch, at most. Each batch is one ed25519 batch
/// equation, whose multiscalar multiplication costs less per signature the
/// larger it is; a bad signature re-checks only its own batch one by one.
pub const MAX_VERIFY_CHUNK: usize = 1024;
/// Envelopes per signature batch, at least (unless there are fewer).
pub const MIN_VERIFY_CHUNK: usize = 64;

/// Validates signed ballot envelopes for one job. Signatures are checked in
/// batches (one per rayon thread, [`MIN_VERIFY_CHUNK`] to
/// [`MAX_VERIFY_CHUNK`] envelopes each), and decoded and checked against the
/// job, in parallel; the result (counted ballots, exclusions and their order)
/// is the same as checking one by one.
pub fn validate(spec: &JobSpec, envelopes: &[Envelope]) -> Counted {
    let eligible: HashSet<NodeId> = spec.eligible.iter().copied().collect();
    let chunk =
        envelopes.len().div_ceil(rayon::current_num_threads()).clamp(MIN_VERIFY_CHUNK, MAX_VERIFY_CHUNK);
    let checked: Vec<Vec<Result<Ballot, Rejection>>> = envelopes
        .par_chunks(chunk)
        .map(|chunk| {
            let signatures = verify_batch_stateless(chunk, Domain::BALLOT);
            chunk
                .iter()
                .zip(signatures)
                .map(|(env, sig)| {
                    sig.map_err(Rejection::Envelope)
                        .and_then(|_| open::<Ballot>(env).map_err(Rejection::Payload))
                        .and_then(|ballot| check_against_job(spec, &eligible, ballot))
                })
                .collect()
        })
        .collect();
    let mut excluded = Vec::new();
    let mut by_voter: HashMap<NodeId, Vec<(usize, Ballot)>> = HashMap::with_capacity(envelopes.len());
    let mut voter_order = Vec::new();
    for (index, (env, checked)) in envelopes.iter().zip(checked.into_iter().flatten()).enumerate() {
        match checked {
            Ok(ballot) => {
                let entry = by_voter.entry(ballot.voter).or_default();
                if entry.is_empty() {
                    voter_order.push(ballot.voter);
                }
                entry.push((index, ballot));
            }
            Err(reason) => excluded.push(Exclusion {
                index,
                voter: Some(env.sender.to_string()),
                reason: reason.to_string(),
            }),
        }
    }

    let mut equivocations = Vec::new();
    let mut counted = Vec::new();
    for voter in voter_order {
        let Some(ballots) = by_voter.remove(&voter) else { continue };
        let (first_index, first) = &ballots[0];
        if let Some((other_index, _)) = ballots.iter().find(|(_, b)| b != first) {
            equivocations
                .push(Equivocation { voter: voter.to_string(), ballots: [*first_index, *other_index] });
            for (index, _) in &ballots {
                excluded.push(Exclusion {
                    index: *index,
                    voter: Some(voter.to_string()),
                    reason: format!(
                        "equivocation: the voter signed different ballots (inputs {first_index} and {other_index})"
                    ),
                });
            }
            continue;
        }
        for (index, _) in &ballots[1..] {
            excluded.push(Exclusion {
                index: *index,
                voter: Some(voter.to_string()),
                reason: format!("duplicate of ballot {first_index}"),
            });
        }
        if let Some(first) = ballots.into_iter().next() {
            counted.push(first);
        }
    }
    counted.sort_by_key(|(index, _)| *index);
    excluded.sort_by_key(|e| e.index);

    Counted {
        input: to_input(spec, counted.iter().map(|(_, b)| b)),
        voters: counted.iter().map(|(_, b)| b.voter).collect(),
        excluded,
        equivocations,
        // Distinct voters: a repeated entry must not lower the bar.
        quorum_required: spec.quorum.required(eligible.len()),
    }
}

/// Why one ballot is left out before counting; its text is the published
/// [`Exclusion::reason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Rejection {
    /// The signature or envelope header did not verify.
    #[error("{0}")]
    Envelope(EnvelopeError),
    /// The payload is not a valid ballot.
    #[error("{0}")]
    Payload(MessageError),
    #[error("ballot is for another job")]
    OtherJob,
    #[error("ballot is for rule {ballot:?}, the job uses {job:?}")]
    OtherRule { ballot: TallyRule, job: TallyRule },
    #[error("voter is not eligible for this job")]
    NotEligible,
    #[error("unknown candidate {candidate} (the job has {candidates})")]
    UnknownCandidate { candidate: u32, candidates: u32 },
}

fn check_against_job(
    spec: &JobSpec,
    eligible: &HashSet<NodeId>,
    ballot: Ballot,
) -> Result<Ballot, Rejection> {
    if ballot.job != spec.job {
        return Err(Rejection::OtherJob);
    }
    if ballot.rule != spec.rule {
        return Err(Rejection::OtherRule { ballot: ballot.rule, job: spec.rule });
    }
    if !eligible.contains(&ballot.voter) {
        return Err(Rejection::NotEligible);
    }
    let unknown = match &ballot.choice {
        BallotChoice::Single(c) => (*c >= spec.candidates).then_some(*c),
        BallotChoice::Approve(list) | BallotChoice::Rank(list) => {
            list.iter().copied().find(|&c| c >= spec.candidates)
        }
        BallotChoice::RankGroups(groups) => groups.iter().flatten().copied().find(|&c| c >= spec.candidates),
    };
    if let Some(candidate) = unknown {
        return Err(Rejection::UnknownCandidate { candidate, candidates: spec.candidates });
    }
    Ok(ballot)
}

fn to_input<'a>(spec: &JobSpec, ballots: impl Iterator<Item = &'a Ballot>) -> TallyInput {
    let mut input = TallyInput {
        rule: spec.rule,
        candidates: spec.candidates,
        items: vec![],
        weights: vec![],
        offsets: vec![0],
    };
    for ballot in ballots {
        match &ballot.choice {
            BallotChoice::Single(c) => {
                input.items.push(*c);
                if spec.rule == TallyRule::WeightedPlurality {
                    input.weights.push(ballot.weight);
                }
            }
            BallotChoice::Approve(list) | BallotChoice::Rank(list) => {
                input.items.extend_from_slice(list);
                input.offsets.push(input.items.len() as u32);
            }
            BallotChoice::RankGroups(groups) => {
                for group in groups {
                    for (i, &c) in group.iter().enumerate() {
                        input.items.push(if i == 0 { c } else { c | TIED_WITH_PREVIOUS });
                    }
                }
                input.offsets.push(input.items.len() as u32);
            }
        }
    }
    if !input.uses_lists() {
        input.offsets.clear();
    }
    input
}
