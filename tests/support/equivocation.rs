//! A ballot file (`hivemesh tally`'s format) holding two different ballots
//! for one job, both signed with the key of the node whose data directory
//! is given: a proof of equivocation, for `hivemesh byzantine report`.
#![allow(dead_code)]

use std::path::Path;

use hivemesh::protocol::{Ballot, BallotChoice, JobId, TallyRule, encode_message, seal};

pub fn ballot_file(data_dir: &Path, job: u8) -> String {
    let key = hivemesh::node::load_or_create(data_dir).expect("the node's key").identity;
    let ballots: Vec<String> = [0, 1]
        .map(|choice| {
            let ballot = Ballot {
                job: JobId([job; 16]),
                voter: key.node_id(),
                rule: TallyRule::Plurality,
                choice: BallotChoice::Single(choice),
                weight: 1,
            };
            let envelope = seal(&key, 1 + u64::from(choice), 1, &ballot).expect("seal");
            hex::encode(encode_message(&envelope).expect("encode"))
        })
        .into();
    serde_json::json!({ "ballots": ballots }).to_string()
}
