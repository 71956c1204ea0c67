//! The council count's failure reason: it names every participant without a
//! counted ballot and why, so a member SWIM declared down mid-vote reads as
//! that, not as a bare count.

use hivemesh_gpu::engine::{BackendChoice, TallyEngine};
use hivemesh_protocol::{Ballot, BallotChoice, JobId, NodeId, NodeIdentity, TallyRule, encode_message, seal};

use super::count_council;
use crate::federation::spec::{Facts, JobSpec, Missing, Mode, Output, Round};

const JOB: JobId = JobId([7; 16]);

fn identity(n: u8) -> NodeIdentity {
    NodeIdentity::from_seed([n; 32])
}

fn peer(n: u8) -> NodeId {
    identity(n).node_id()
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

/// Member `n`'s signed ballot ranking the candidates `ranking`, as stored.
fn ballot(n: u8, ranking: Vec<u32>) -> (NodeId, String, Vec<u8>) {
    let ballot = Ballot {
        job: JOB,
        voter: peer(n),
        rule: TallyRule::Schulze,
        choice: BallotChoice::Rank(ranking),
        weight: 1,
    };
    let envelope = seal(&identity(n), 1_000, 1_000, &ballot).expect("seal");
    (peer(n), "ballot".into(), encode_message(&envelope).expect("encode"))
}

/// Three members, quorum 2, every candidate in, a round open, and a valid
/// ballot from member 0 only.
fn voted_by_one() -> Facts {
    let participants: Vec<NodeId> = (0..3).map(peer).collect();
    let spec = JobSpec {
        question: vec![hivemesh_llm::ChatMessage::user("Capital of Peru?")],
        mode: Mode::Council,
        profile: "fast".into(),
        participants: participants.clone(),
        stages: Vec::new(),
        quorum: 2,
        rule: TallyRule::Schulze,
        created_ms: 0,
        deadline_ms: 120_000,
        max_tokens: 64,
        sampling: Default::default(),
    };
    let mut facts = Facts { job: JOB.0, asker: Some(peer(0)), spec: Some(spec), ..Facts::default() };
    for (n, p) in participants.iter().enumerate() {
        facts.candidates.push((*p, output(&format!("Lima {n}"))));
    }
    facts.round = Some(Round { candidates: participants, missing: Vec::new() });
    facts.ballots.push(ballot(0, vec![0, 1, 2]));
    facts
}

#[test]
fn a_missed_ballot_quorum_names_the_member_declared_down_and_why() {
    let facts = voted_by_one();
    let spec = facts.spec.clone().expect("spec");
    let engine = TallyEngine::new(BackendChoice::Cpu).expect("cpu engine");
    let absent = vec![
        Missing { peer: peer(1).to_string(), reason: "no ballot: down".into(), code: None },
        Missing { peer: peer(2).to_string(), reason: "no ballot: missed the deadline".into(), code: None },
    ];
    let count = count_council(JOB, &spec, &facts, &absent, &engine, 2_000).expect("count");
    assert_eq!(count.winner, None);
    let error = count.outcome.error.clone().unwrap_or_default();
    assert!(error.starts_with("1 valid ballot of 2 needed"), "{error}");
    assert!(
        error.contains(&format!("no ballot from {}: down (SWIM declared it failed", peer(1))),
        "the down member is named with the cause: {error}"
    );
    assert!(error.contains(&format!("no ballot from {}: missed the deadline", peer(2))), "{error}");
    assert_eq!(count.outcome.missing.len(), 2, "the absent voters are in the outcome's missing list");
}

#[test]
fn a_reached_quorum_is_counted_and_lists_who_did_not_vote() {
    let mut facts = voted_by_one();
    facts.ballots.push(ballot(1, vec![0, 2, 1]));
    let spec = facts.spec.clone().expect("spec");
    let engine = TallyEngine::new(BackendChoice::Cpu).expect("cpu engine");
    let absent = vec![Missing { peer: peer(2).to_string(), reason: "no ballot: down".into(), code: None }];
    let count = count_council(JOB, &spec, &facts, &absent, &engine, 2_000).expect("count");
    assert_eq!(count.winner, Some(0), "both ballots rank candidate 0 first");
    assert_eq!(count.outcome.status, "done");
    assert_eq!(count.outcome.missing.len(), 1);
}
