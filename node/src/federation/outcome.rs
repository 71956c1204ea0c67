//! A job's outcome, built from its facts without I/O: the council count
//! (validation of the signed ballots and the tally, everything needed to
//! re-check it) and the pipeline's assembly. `work` writes these after its
//! model calls; the simulation (`crate::sim::jobs`) writes the same ones.

use hivemesh_gpu::ballot_box::{Equivocation, JobSpec as BallotSpec, Quorum, validate};
use hivemesh_gpu::engine::TallyEngine;
use hivemesh_llm::pipeline::{Curation, Stage};
use hivemesh_protocol::{Envelope, JobId, NodeId, decode_message, encode_message};

use super::spec::{Attributed, Facts, JobSpec, Missing, Outcome, Output, Round, stage_kind};

/// A council job counted: the outcome so far (`failed` without a quorum,
/// else `done` with the winner and the tally, the answer still to write),
/// and what the asker needs next.
pub struct CouncilCount {
    pub outcome: Outcome,
    /// Index into the round's candidates; `None` when the count failed.
    pub winner: Option<usize>,
    pub runner_up: Option<usize>,
    /// Valid ballots counted.
    pub voters: usize,
    /// The candidates in vote order, attributed.
    pub contributions: Vec<Attributed>,
    /// Voters found signing two different ballots, and every envelope read.
    pub equivocations: Vec<Equivocation>,
    pub envelopes: Vec<Envelope>,
}

/// Why a council could not be counted.
#[derive(Debug, thiserror::Error)]
pub enum CountError {
    #[error("no round to conclude")]
    NoRound,
    #[error("cannot record an excluded ballot: {0}")]
    Exclusion(#[from] serde_json::Error),
    #[error("the tally failed: {0}")]
    Tally(#[from] hivemesh_gpu::TallyError),
    #[error("the tally has no winner")]
    NoWinner,
}

/// Validates the job's signed ballots against its spec and round and
/// tallies them with `engine`. Errors: no round, or a tally error.
pub fn count_council(
    job: JobId,
    spec: &JobSpec,
    facts: &Facts,
    absent: &[Missing],
    engine: &TallyEngine,
    now_ms: u64,
) -> Result<CouncilCount, CountError> {
    let round = facts.round.clone().ok_or(CountError::NoRound)?;
    let mut excluded = Vec::new();
    let mut envelopes: Vec<Envelope> = Vec::new();
    for (author, kind, bytes) in &facts.ballots {
        match decode_message::<Envelope>(bytes) {
            Ok(envelope) if envelope.sender == *author => envelopes.push(envelope),
            Ok(envelope) => excluded.push(serde_json::json!({
                "voter": author.to_string(), "kind": kind,
                "reason": format!("a ballot signed by {} inside {author}'s contribution", envelope.sender),
            })),
            Err(error) => excluded.push(serde_json::json!({
                "voter": author.to_string(), "kind": kind, "reason": format!("not a signed ballot: {error}"),
            })),
        }
    }
    let ballot_spec = BallotSpec {
        job,
        rule: spec.rule,
        candidates: round.candidates.len() as u32,
        eligible: spec.participants.clone(),
        quorum: Quorum::AtLeast(spec.quorum),
    };
    let counted = validate(&ballot_spec, &envelopes);
    for exclusion in &counted.excluded {
        excluded.push(serde_json::to_value(exclusion)?);
    }
    let contributions: Vec<Attributed> = round
        .candidates
        .iter()
        .enumerate()
        .filter_map(|(i, peer)| {
            facts.candidate_of(peer).map(|o| attributed(&format!("candidate {i}"), peer, o))
        })
        .collect();
    let mut missing = round.missing.clone();
    missing.extend_from_slice(absent);
    let mut outcome = ended(spec, now_ms, "failed", None, missing);
    outcome.ballot_file = Some(ballot_file(job, spec, &round, &envelopes));
    outcome.excluded = excluded;
    let mut count = CouncilCount {
        outcome,
        winner: None,
        runner_up: None,
        voters: counted.voters.len(),
        contributions,
        equivocations: counted.equivocations.clone(),
        envelopes,
    };
    if !counted.quorum_reached() {
        count.outcome.error = Some(quorum_missed(
            counted.voters.len(),
            counted.quorum_required,
            &non_voters(facts, &count),
            &count,
        ));
        count.outcome.contributions = count.contributions.clone();
        return Ok(count);
    }
    let (tally, backend) = engine.tally(&counted.input);
    let tally = tally?;
    let winner = tally.winner.ok_or(CountError::NoWinner)? as usize;
    count.winner = Some(winner);
    count.runner_up = tally.ranking.get(1).map(|&i| i as usize);
    count.outcome.winner = Some(round.candidates[winner].to_string());
    count.outcome.tally = Some(serde_json::json!({ "backend": backend, "result": tally }));
    count.outcome.status = "done".into();
    Ok(count)
}

/// The outcome's missing members who cast no ballot: those missing since
/// the candidates (their reason then) and those without a ballot now.
fn non_voters(facts: &Facts, count: &CouncilCount) -> Vec<Missing> {
    count
        .outcome
        .missing
        .iter()
        .filter(|m| !facts.ballots.iter().any(|(author, _, _)| author.to_string() == m.peer))
        .cloned()
        .collect()
}

/// Why a council failed its ballot quorum, naming each participant without
/// a counted ballot and why: "1 valid ballot of 2 needed; no ballot from
/// 12D3…: down (SWIM declared it failed before its ballot arrived)".
fn quorum_missed(valid: usize, needed: usize, absent: &[Missing], count: &CouncilCount) -> String {
    let plural = if valid == 1 { "" } else { "s" };
    let mut reason = format!("{valid} valid ballot{plural} of {needed} needed");
    let mut without: Vec<String> = absent
        .iter()
        .map(|m| {
            let why = m.reason.strip_prefix("no ballot: ").unwrap_or(&m.reason);
            let why =
                if why == "down" { "down (SWIM declared it failed before its ballot arrived)" } else { why };
            format!("no ballot from {}: {why}", m.peer)
        })
        .collect();
    let excluded = count.outcome.excluded.len();
    if excluded > 0 {
        without.push(format!("{excluded} ballot(s) excluded (see `excluded`)"));
    }
    if !without.is_empty() {
        reason.push_str("; ");
        reason.push_str(&without.join("; "));
    }
    reason
}

/// The pipeline's outcome once its curator is done: every stage's output
/// attributed, stages moved listed as missing, the curator's text as the
/// answer.
pub fn pipeline_outcome(spec: &JobSpec, facts: &Facts, now_ms: u64) -> Outcome {
    let mut outcome = ended(spec, now_ms, "done", None, Vec::new());
    for stage in Stage::ALL {
        if let (Some(peer), Some(output)) = (facts.stage_peer(stage), facts.stage_output(stage)) {
            outcome.contributions.push(attributed(stage.as_str(), &peer, output));
        }
    }
    outcome.missing = facts
        .assignments
        .iter()
        .map(|(stage, a)| Missing {
            // The code of the failure that moved the stage (`quota`, ...).
            code: facts
                .failures
                .iter()
                .find(|(_, failure)| failure.part == stage_kind(*stage))
                .and_then(|(_, failure)| failure.code.clone()),
            peer: a.reason.clone(),
            reason: format!("{} moved to {}", stage.as_str(), a.peer),
        })
        .collect();
    outcome.answer = facts.stage_output(Stage::Curator).map(|o| o.text.clone());
    let as_written = |stage| facts.stage_output(stage).map(|o| &o.text) == outcome.answer.as_ref();
    let selected = as_written(Stage::Generator) || as_written(Stage::Refiner);
    outcome.curation = Some(if selected { Curation::Select } else { Curation::Rewrite }.as_str().into());
    outcome
}

pub fn attributed(part: &str, peer: &NodeId, output: &Output) -> Attributed {
    Attributed {
        part: part.to_string(),
        peer: peer.to_string(),
        text: output.text.clone(),
        model: output.model.clone(),
        tokens: output.tokens,
        elapsed_ms: output.elapsed_ms,
        prompt_tokens: output.prompt_tokens,
        finish_reason: output.finish_reason.clone(),
    }
}

/// An outcome with `status` and nothing else yet; `elapsed_ms` counts from
/// the spec's creation to `now_ms`.
pub fn ended(
    spec: &JobSpec,
    now_ms: u64,
    status: &str,
    error: Option<String>,
    missing: Vec<Missing>,
) -> Outcome {
    Outcome {
        status: status.to_string(),
        answer: None,
        error,
        contributions: Vec::new(),
        winner: None,
        tally: None,
        ballot_file: None,
        excluded: Vec::new(),
        missing,
        elapsed_ms: now_ms.saturating_sub(spec.created_ms),
        curation: None,
    }
}

/// The signed ballots as `hivemesh tally` re-checks them.
fn ballot_file(job: JobId, spec: &JobSpec, round: &Round, envelopes: &[Envelope]) -> serde_json::Value {
    let ballots: Vec<String> =
        envelopes.iter().filter_map(|e| encode_message(e).ok()).map(hex::encode).collect();
    serde_json::json!({
        "job": job.to_string(),
        "rule": spec.rule.name(),
        "candidates": round.candidates.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "eligible": spec.participants.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "ballots": ballots,
    })
}

#[cfg(test)]
#[path = "outcome_tests.rs"]
mod outcome_tests;
