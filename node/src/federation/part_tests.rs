//! `Part` names: the strings job documents have always carried.

use hivemesh_llm::pipeline::Stage;

use super::{Part, assign_kind, stage_kind};

#[test]
fn parts_keep_their_document_names() {
    assert_eq!(Part::Candidate.as_str(), "candidate");
    assert_eq!(Part::Round.as_str(), "round");
    assert_eq!(Part::Ballot.as_str(), "ballot");
    assert_eq!(Part::Outcome.as_str(), crate::replica::OUTCOME_KIND);
    assert_eq!(Part::Stage(Stage::Refiner).to_string(), "stage.refiner");
    assert_eq!(Part::Assign(Stage::Curator).to_string(), "assign.curator");
}

#[test]
fn stage_and_assign_parts_are_the_prefix_and_the_stage_name() {
    for stage in Stage::ALL {
        assert_eq!(Part::Stage(stage).as_str(), format!("stage.{}", stage.as_str()));
        assert_eq!(Part::Assign(stage).as_str(), format!("assign.{}", stage.as_str()));
        assert_eq!(stage_kind(stage), Part::Stage(stage).as_str());
        assert_eq!(assign_kind(stage), Part::Assign(stage).as_str());
    }
}
