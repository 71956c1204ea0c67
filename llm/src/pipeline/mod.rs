//! The Hive pipeline: Generator -> (Refiner and Validator in parallel, both
//! reading the draft) -> Curator (reading all three).

mod batcher;
mod events;
mod profile;
mod prompts;
mod run;

use serde::{Deserialize, Serialize};

pub use batcher::TokenBatcher;
pub use events::PipelineEvent;
pub use profile::{BUILTIN_PROFILES, Curation, Profile, ProfileError, Profiles, StageSettings};
pub use prompts::{GENERATOR_ROLE_PROMPT, render_conversation, stage_messages, strip_prompt_echo};
pub use run::{Pipeline, PipelineError, PipelineOptions, PipelineOutcome, StageOutput};

/// One role in the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Generator,
    Refiner,
    Validator,
    Curator,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::Generator, Stage::Refiner, Stage::Validator, Stage::Curator];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Generator => "generator",
            Stage::Refiner => "refiner",
            Stage::Validator => "validator",
            Stage::Curator => "curator",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
