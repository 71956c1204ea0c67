//! What a node should do next for a job, decided from the job's document,
//! who is alive and the time. Pure: the same facts give the same actions on
//! every node, which is what lets any participant see how far a job got.

use hivemesh_llm::council::anonymous_order;
use hivemesh_llm::pipeline::Stage;
use hivemesh_protocol::NodeId;

use super::spec::{Assignment, Facts, Missing, Mode, Part, Round};

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write this node's council candidate.
    Answer,
    /// Run a pipeline stage here.
    RunStage(Stage),
    /// Asker: put these candidates to the vote.
    OpenRound(Round),
    /// Rank the round's candidates and cast a signed ballot.
    Vote,
    /// Asker: tally the ballots, run the curator, write the outcome.
    /// `absent`: the participants without a ballot, and why.
    Conclude { absent: Vec<Missing> },
    /// Asker: the pipeline's curator is done; write the outcome.
    FinishPipeline,
    /// Asker: move a stage whose peer is down or failed.
    Reassign(Stage, Assignment),
    /// Asker: the job cannot finish.
    Fail { reason: String, missing: Vec<Missing> },
    /// Asker: write the outcome of a cancelled job.
    ConfirmCancel,
    /// Stop any model call still running for this job.
    Stop,
}

/// `live` says whether a peer is up (this node is always up); `capable`
/// lists live peers that could take over a stage, best first.
pub fn plan(
    me: NodeId,
    facts: &Facts,
    live: &dyn Fn(&NodeId) -> bool,
    capable: &[NodeId],
    now_ms: u64,
) -> Vec<Action> {
    let Some(spec) = &facts.spec else { return Vec::new() };
    let asker = facts.asker == Some(me);
    if facts.outcome.is_some() {
        return vec![Action::Stop];
    }
    if facts.cancelled.is_some() {
        return if asker { vec![Action::Stop, Action::ConfirmCancel] } else { vec![Action::Stop] };
    }
    let late = now_ms >= spec.deadline_ms;
    match spec.mode {
        Mode::Council => plan_council(me, asker, facts, live, late),
        Mode::Pipeline => plan_pipeline(me, asker, facts, live, capable, late),
    }
}

/// Why `peer` will not do `part`, with its failure's code, or `None` while
/// it still may.
fn missing_reason(
    facts: &Facts,
    peer: &NodeId,
    part: Part,
    live: &dyn Fn(&NodeId) -> bool,
    late: bool,
) -> Option<(String, Option<String>)> {
    if let Some(failure) = facts.failure(peer, part.as_str()) {
        Some((format!("its {part} failed: {}", failure.reason), failure.code.clone()))
    } else if !live(peer) {
        Some(("down".into(), None))
    } else if late {
        Some(("missed the deadline".into(), None))
    } else {
        None
    }
}

/// "; no candidate from <peer>: <why>" for each missing member, so a
/// failed quorum says who and why, not only how many.
fn without(missing: &[Missing]) -> String {
    missing.iter().map(|m| format!("; no candidate from {}: {}", m.peer, m.reason)).collect()
}

fn plan_council(
    me: NodeId,
    asker: bool,
    facts: &Facts,
    live: &dyn Fn(&NodeId) -> bool,
    late: bool,
) -> Vec<Action> {
    let Some(spec) = &facts.spec else { return Vec::new() };
    let member = spec.participants.contains(&me);
    let mut actions = Vec::new();
    match &facts.round {
        None => {
            if member
                && facts.candidate_of(&me).is_none()
                && !facts.failed(&me, Part::Candidate.as_str())
                && !late
            {
                actions.push(Action::Answer);
            }
            if asker {
                let mut missing = Vec::new();
                let mut waiting = 0;
                for peer in spec.participants.iter().filter(|p| facts.candidate_of(p).is_none()) {
                    match missing_reason(facts, peer, Part::Candidate, live, late) {
                        Some((reason, code)) => {
                            missing.push(Missing { peer: peer.to_string(), reason, code })
                        }
                        None => waiting += 1,
                    }
                }
                let arrived = spec.participants.len() - missing.len() - waiting;
                let quorum = spec.quorum.max(1) as usize;
                if waiting > 0 && arrived + waiting < quorum {
                    // The quorum is out of reach: fail now rather than at the
                    // deadline (the outcome stops the calls still running).
                    let reason = format!(
                        "only {} of {} candidates can still arrive; the quorum is {}{}",
                        arrived + waiting,
                        spec.participants.len(),
                        spec.quorum,
                        without(&missing)
                    );
                    actions.push(Action::Fail { reason, missing });
                } else if waiting == 0 {
                    let present: Vec<&(NodeId, _)> = spec
                        .participants
                        .iter()
                        .filter_map(|p| facts.candidates.iter().find(|(a, _)| a == p))
                        .collect();
                    if present.len() >= spec.quorum.max(1) as usize {
                        let texts: Vec<&str> = present.iter().map(|(_, o)| o.text.as_str()).collect();
                        let order = anonymous_order(&facts.job, &texts);
                        let candidates = order.into_iter().map(|i| present[i].0).collect();
                        actions.push(Action::OpenRound(Round { candidates, missing }));
                    } else {
                        let reason = format!(
                            "only {} of {} candidates arrived; the quorum is {}{}",
                            present.len(),
                            spec.participants.len(),
                            spec.quorum,
                            without(&missing)
                        );
                        actions.push(Action::Fail { reason, missing });
                    }
                }
            }
        }
        Some(_) => {
            if member && !facts.has_voted(&me) && !facts.failed(&me, Part::Ballot.as_str()) {
                actions.push(Action::Vote);
            }
            if asker {
                let voted = spec.participants.iter().filter(|p| facts.has_voted(p)).count();
                let waiting = spec
                    .participants
                    .iter()
                    .filter(|p| {
                        !facts.has_voted(p) && missing_reason(facts, p, Part::Ballot, live, late).is_none()
                    })
                    .count();
                // Conclude once every ballot is in or out, or as soon as the
                // quorum is out of reach (the outcome then says so).
                if waiting == 0 || voted + waiting < spec.quorum.max(1) as usize {
                    let round_missing = facts.round.as_ref().map_or(&[][..], |r| &r.missing[..]);
                    let absent = spec
                        .participants
                        .iter()
                        .filter(|p| !facts.has_voted(p))
                        // Listed once: a member with no candidate is in the
                        // round's missing list already.
                        .filter(|p| !round_missing.iter().any(|m| m.peer == p.to_string()))
                        .filter_map(|p| {
                            let (reason, code) = missing_reason(facts, p, Part::Ballot, live, late)?;
                            Some(Missing {
                                peer: p.to_string(),
                                reason: format!("no ballot: {reason}"),
                                code,
                            })
                        })
                        .collect();
                    actions.push(Action::Conclude { absent });
                }
            }
        }
    }
    actions
}

/// The stages whose output `stage` reads.
fn inputs(stage: Stage) -> &'static [Stage] {
    match stage {
        Stage::Generator => &[],
        Stage::Refiner | Stage::Validator => &[Stage::Generator],
        Stage::Curator => &[Stage::Refiner, Stage::Validator],
    }
}

fn plan_pipeline(
    me: NodeId,
    asker: bool,
    facts: &Facts,
    live: &dyn Fn(&NodeId) -> bool,
    capable: &[NodeId],
    late: bool,
) -> Vec<Action> {
    let mut actions = Vec::new();
    for stage in Stage::ALL {
        let ready = inputs(stage).iter().all(|s| facts.stage_output(*s).is_some());
        if !ready || facts.stage_output(stage).is_some() {
            continue;
        }
        let Some(peer) = facts.stage_peer(stage) else { continue };
        let part = Part::Stage(stage).as_str();
        if peer == me && !facts.failed(&me, part) && !late {
            actions.push(Action::RunStage(stage));
        }
        if asker && !late && (facts.failed(&peer, part) || !live(&peer)) {
            let why = if facts.failed(&peer, part) { "failed" } else { "down" };
            let next = capable.iter().find(|p| **p != peer && !facts.failed(p, part));
            match next {
                Some(next) => actions.push(Action::Reassign(
                    stage,
                    Assignment { peer: *next, reason: format!("{peer} {why}") },
                )),
                None => actions.push(Action::Fail {
                    reason: format!(
                        "{} failed on {peer} ({why}) and no other peer can run it",
                        stage.as_str()
                    ),
                    missing: Vec::new(),
                }),
            }
        }
    }
    if asker {
        if facts.stage_output(Stage::Curator).is_some() {
            actions.push(Action::FinishPipeline);
        } else if late {
            actions.push(Action::Fail {
                reason: "the deadline passed before the curator finished".into(),
                missing: Vec::new(),
            });
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use hivemesh_protocol::{NodeIdentity, TallyRule};

    use super::*;
    use crate::federation::spec::{Failure, JobSpec, Output};

    fn peer(n: u8) -> NodeId {
        NodeIdentity::from_seed([n; 32]).node_id()
    }

    fn council(members: u8, quorum: u32) -> Facts {
        let participants: Vec<NodeId> = (0..members).map(peer).collect();
        let spec = JobSpec {
            question: vec![hivemesh_llm::ChatMessage::user("Capital of Peru?")],
            mode: Mode::Council,
            profile: "fast".into(),
            participants,
            stages: Vec::new(),
            quorum,
            rule: TallyRule::Schulze,
            created_ms: 0,
            deadline_ms: 120_000,
            max_tokens: 64,
            sampling: Default::default(),
        };
        Facts { job: [7; 16], asker: Some(peer(0)), spec: Some(spec), ..Facts::default() }
    }

    fn output(text: &str) -> Output {
        Output {
            text: text.into(),
            model: "m".into(),
            tokens: 1,
            elapsed_ms: 1,
            prompt_tokens: 0,
            finish_reason: None,
        }
    }

    fn failure(part: &str) -> Failure {
        Failure { part: part.into(), reason: "boom".into(), code: None }
    }

    fn is_fail(actions: &[Action]) -> bool {
        actions.iter().any(|a| matches!(a, Action::Fail { .. }))
    }

    #[test]
    fn a_council_fails_as_soon_as_its_candidate_quorum_is_out_of_reach() {
        let live = |_: &NodeId| true;
        // Two members, quorum 2: the other member's candidate failed while
        // the asker's own is still being written. Waiting for the deadline
        // cannot help.
        let mut facts = council(2, 2);
        facts.failures.push((peer(1), failure("candidate")));
        let actions = plan(peer(0), &facts, &live, &[], 1_000);
        assert!(is_fail(&actions), "{actions:?}");
        let Some(Action::Fail { reason, .. }) = actions.iter().find(|a| matches!(a, Action::Fail { .. }))
        else {
            unreachable!()
        };
        assert!(reason.contains("only 1 of 2 candidates can still arrive"), "{reason}");
        assert!(
            reason.contains(&format!("no candidate from {}: its candidate failed: boom", peer(1))),
            "the member and why are named: {reason}"
        );

        // Three members, quorum 2, one failed: two can still arrive, so wait.
        let mut facts = council(3, 2);
        facts.failures.push((peer(2), failure("candidate")));
        assert!(!is_fail(&plan(peer(0), &facts, &live, &[], 1_000)));
        // A second member down as well: out of reach.
        let down = |p: &NodeId| *p != peer(1);
        assert!(is_fail(&plan(peer(0), &facts, &down, &[], 1_000)));
    }

    #[test]
    fn a_council_concludes_as_soon_as_its_ballot_quorum_is_out_of_reach() {
        let mut facts = council(3, 3);
        for n in 0..3 {
            facts.candidates.push((peer(n), output(&format!("answer {n}"))));
        }
        facts.round = Some(Round { candidates: (0..3).map(peer).collect(), missing: Vec::new() });
        facts.ballots.push((peer(0), "ballot".into(), Vec::new()));
        let live = |_: &NodeId| true;
        let concludes = |actions: &[Action]| actions.iter().any(|a| matches!(a, Action::Conclude { .. }));
        assert!(!concludes(&plan(peer(0), &facts, &live, &[], 1_000)), "still waiting");
        facts.failures.push((peer(1), failure("ballot")));
        let actions = plan(peer(0), &facts, &live, &[], 1_000);
        assert!(concludes(&actions), "quorum 3 cannot be met: {actions:?}");
        let absent = actions.iter().find_map(|a| match a {
            Action::Conclude { absent } => Some(absent.clone()),
            _ => None,
        });
        let absent = absent.unwrap_or_default();
        assert_eq!(absent.len(), 1, "peer 1's failed ballot is named; peer 2 may still vote: {absent:?}");
        assert_eq!(absent[0].peer, peer(1).to_string());
        assert!(absent[0].reason.contains("ballot failed"), "{:?}", absent[0].reason);
    }
}
