//! What a federated job's document holds: one signed contribution per
//! (kind, author), bodies in JSON (ballots: a postcard signed envelope).
//!
//! | kind | author | body |
//! |---|---|---|
//! | `spec` | asker | [`JobSpec`] |
//! | `candidate` | each council member | [`Output`] |
//! | `round` | asker | [`Round`]: the candidates put to the vote, anonymised |
//! | `ballot` (any kind starting so) | each voter | signed `Ballot` envelope |
//! | `stage.NAME` | the peer running that pipeline stage | [`Output`] |
//! | `assign.NAME` | asker | [`Assignment`]: a stage moved to another peer |
//! | `failure`, `failure.stage.NAME` | a participant | [`Failure`]: it could not do its part |
//! | `cancel` | asker | the reason |
//! | `outcome` | asker | [`Outcome`]: the answer, ballots, tally, who did what |

use hivemesh_crdt::job_doc::Verified;
use hivemesh_llm::ChatMessage;
use hivemesh_llm::pipeline::Stage;
use hivemesh_protocol::{JobId, NodeId, TallyRule};
use serde::{Deserialize, Serialize};

pub const SPEC: &str = "spec";
pub const CANDIDATE: &str = Part::Candidate.as_str();
pub const ROUND: &str = Part::Round.as_str();
pub const BALLOT: &str = Part::Ballot.as_str();
pub const FAILURE: &str = "failure";
pub const CANCEL: &str = "cancel";
pub use crate::replica::OUTCOME_KIND as OUTCOME;

/// One piece of work a participant does in a job: the key of its running
/// task, and (as [`Part::as_str`]) the kind it writes its result under and
/// names in a [`Failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// A council member's answer: `candidate`.
    Candidate,
    /// A pipeline stage's output: `stage.NAME`.
    Stage(Stage),
    /// The asker putting the candidates to the vote: `round`.
    Round,
    /// A council member's signed ranking: `ballot`.
    Ballot,
    /// The asker writing the outcome (a tally, a pipeline's answer, a
    /// failure or a cancellation): `outcome`.
    Outcome,
    /// The asker moving a stage to another peer: `assign.NAME`.
    Assign(Stage),
}

impl Part {
    /// The part's name, as written in job documents.
    pub const fn as_str(self) -> &'static str {
        match self {
            Part::Candidate => "candidate",
            Part::Round => "round",
            Part::Ballot => "ballot",
            Part::Outcome => "outcome",
            Part::Stage(Stage::Generator) => "stage.generator",
            Part::Stage(Stage::Refiner) => "stage.refiner",
            Part::Stage(Stage::Validator) => "stage.validator",
            Part::Stage(Stage::Curator) => "stage.curator",
            Part::Assign(Stage::Generator) => "assign.generator",
            Part::Assign(Stage::Refiner) => "assign.refiner",
            Part::Assign(Stage::Validator) => "assign.validator",
            Part::Assign(Stage::Curator) => "assign.curator",
        }
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind a stage's output is written under: `stage.NAME`.
pub fn stage_kind(stage: Stage) -> String {
    Part::Stage(stage).as_str().to_string()
}

/// The kind a participant's failure at `part` is written under: `failure`
/// for a candidate (one per member), `failure.stage.NAME` for a stage, so
/// that a peer holding two stages keeps both failures in the document (one
/// contribution per kind and author).
pub fn failure_kind(part: &str) -> String {
    if part == CANDIDATE { FAILURE.to_string() } else { format!("{FAILURE}.{part}") }
}

/// Whether a contribution's kind is a failure (`failure` or `failure.PART`).
pub fn is_failure(kind: &str) -> bool {
    kind == FAILURE || kind.strip_prefix(FAILURE).is_some_and(|rest| rest.starts_with('.'))
}

/// The kind of the asker's reassignment of a stage: `assign.NAME`.
pub fn assign_kind(stage: Stage) -> String {
    Part::Assign(stage).as_str().to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// K peers answer, everyone ranks the answers, the tally's winner goes to
    /// the curator.
    Council,
    /// The Hive pipeline with each stage on a peer that offers its model.
    Pipeline,
}

/// A mode name that is neither `council` nor `pipeline`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown mode {name:?}: use council or pipeline")]
pub struct UnknownMode {
    pub name: String,
}

impl std::str::FromStr for Mode {
    type Err = UnknownMode;
    fn from_str(text: &str) -> Result<Self, UnknownMode> {
        match text {
            "council" => Ok(Self::Council),
            "pipeline" => Ok(Self::Pipeline),
            other => Err(UnknownMode { name: other.to_string() }),
        }
    }
}

/// The job as the asker posed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub question: Vec<ChatMessage>,
    pub mode: Mode,
    pub profile: String,
    /// Every peer with a part in the job, the asker included.
    pub participants: Vec<NodeId>,
    /// Pipeline mode: the peer for generator, refiner, validator, curator.
    #[serde(default)]
    pub stages: Vec<NodeId>,
    /// Candidates (council) and ballots needed to go on without the missing.
    pub quorum: u32,
    pub rule: TallyRule,
    pub created_ms: u64,
    /// After this, the job goes on with what it has, or fails.
    pub deadline_ms: u64,
    /// Most completion tokens any one model call in this job may produce.
    pub max_tokens: u32,
    /// Sampling parameters the asker gave, applied to every model call.
    #[serde(default)]
    pub sampling: Sampling,
}

/// Sampling parameters forwarded to every model call of a job (OpenAI's
/// names); unset ones leave the profile's or the provider's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// The asker's seed; each call gets its own seed derived from it, so
    /// council members sample independently yet reproducibly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
}

impl Sampling {
    /// The seed for one call: the asker's seed mixed (FNV-1a) with the
    /// calling peer and the part it plays, stable across runs and versions.
    pub fn seed_for(&self, peer: &NodeId, part: &str) -> Option<u64> {
        let seed = self.seed?;
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let bytes = seed.to_le_bytes();
        let peer = peer.to_string();
        for byte in bytes.iter().chain(peer.as_bytes()).chain(part.as_bytes()) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        Some(hash)
    }
}

/// A model's answer: a council candidate or a pipeline stage's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub text: String,
    pub model: String,
    pub tokens: u64,
    pub elapsed_ms: u64,
    /// Prompt tokens as the provider reported them (0 when it did not).
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Why the provider stopped (`stop`, `length`, ...), when it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
}

/// The candidates put to the vote, in anonymous order, by author.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Round {
    pub candidates: Vec<NodeId>,
    /// Council members left out, with the reason (down, failed, late).
    pub missing: Vec<Missing>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Missing {
    pub peer: String,
    pub reason: String,
    /// The failure's code when it had one (`context_length_exceeded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub peer: NodeId,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub part: String,
    pub reason: String,
    /// A stable code for a cause the asker can act on
    /// (`context_length_exceeded`: see `LlmError::code`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// How the job ended. `ballot_file` is exactly what `hivemesh tally` reads,
/// so anyone can re-check the count from the signed ballots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub status: String,
    pub answer: Option<String>,
    pub error: Option<String>,
    /// Council: candidates in vote order with their authors; pipeline: stages.
    pub contributions: Vec<Attributed>,
    pub winner: Option<String>,
    pub tally: Option<serde_json::Value>,
    pub ballot_file: Option<serde_json::Value>,
    pub excluded: Vec<serde_json::Value>,
    pub missing: Vec<Missing>,
    pub elapsed_ms: u64,
    /// How the answer was made: `select` (a candidate as written: the vote
    /// winner, or the pipeline curator's pick of draft or refined answer),
    /// `rewrite` (the curator's model wrote it), or `fallback` (the curator
    /// failed and the winner stands). Absent in outcomes of older nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curation: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attributed {
    pub part: String,
    pub peer: String,
    pub text: String,
    pub model: String,
    pub tokens: u64,
    pub elapsed_ms: u64,
    /// Prompt tokens as the provider reported them (0 when it did not).
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Why the provider stopped (`stop`, `length`, ...), when it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
}

/// A job's document read into typed parts; bodies that do not parse are
/// ignored as if absent (they were signed, so the author is to blame).
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The job id's bytes.
    pub job: [u8; 16],
    pub asker: Option<NodeId>,
    pub spec: Option<JobSpec>,
    pub candidates: Vec<(NodeId, Output)>,
    pub stages: Vec<(Stage, NodeId, Output)>,
    pub assignments: Vec<(Stage, Assignment)>,
    pub round: Option<Round>,
    /// (author, kind, envelope bytes)
    pub ballots: Vec<(NodeId, String, Vec<u8>)>,
    pub failures: Vec<(NodeId, Failure)>,
    pub cancelled: Option<String>,
    pub outcome: Option<Outcome>,
}

impl Facts {
    pub fn read(job: JobId, contributions: &[Verified]) -> Self {
        let mut facts = Self { job: job.0, ..Self::default() };
        // The spec first: only its author's round, cancel and outcome count.
        for c in contributions.iter().filter(|c| c.kind == SPEC) {
            if let Ok(spec) = serde_json::from_slice(&c.body) {
                facts.asker = Some(c.author);
                facts.spec = Some(spec);
            }
        }
        let by_asker = |c: &Verified| Some(c.author) == facts.asker;
        for c in contributions {
            match c.kind.as_str() {
                CANDIDATE => facts.candidates.extend(parse(&c.body).map(|o| (c.author, o))),
                ROUND if by_asker(c) => facts.round = parse(&c.body),
                CANCEL if by_asker(c) => {
                    facts.cancelled = Some(String::from_utf8_lossy(&c.body).into_owned())
                }
                OUTCOME if by_asker(c) => facts.outcome = parse(&c.body),
                kind if is_failure(kind) => facts.failures.extend(parse(&c.body).map(|f| (c.author, f))),
                kind if kind.starts_with(BALLOT) => {
                    facts.ballots.push((c.author, c.kind.clone(), c.body.clone()))
                }
                kind => {
                    if let Some(stage) = kind.strip_prefix("stage.").and_then(stage_named) {
                        facts.stages.extend(parse(&c.body).map(|o| (stage, c.author, o)));
                    } else if let Some(stage) = kind.strip_prefix("assign.").and_then(stage_named)
                        && by_asker(c)
                    {
                        facts.assignments.extend(parse(&c.body).map(|a| (stage, a)));
                    }
                }
            }
        }
        facts
    }

    pub fn candidate_of(&self, peer: &NodeId) -> Option<&Output> {
        self.candidates.iter().find(|(author, _)| author == peer).map(|(_, output)| output)
    }

    /// The output of `stage` from whoever it is assigned to now.
    pub fn stage_output(&self, stage: Stage) -> Option<&Output> {
        let peer = self.stage_peer(stage)?;
        self.stages.iter().find(|(s, author, _)| *s == stage && *author == peer).map(|(_, _, o)| o)
    }

    /// Who runs `stage` now: the asker's latest reassignment, else the spec.
    pub fn stage_peer(&self, stage: Stage) -> Option<NodeId> {
        if let Some((_, assignment)) = self.assignments.iter().find(|(s, _)| *s == stage) {
            return Some(assignment.peer);
        }
        let index = Stage::ALL.iter().position(|s| *s == stage)?;
        self.spec.as_ref()?.stages.get(index).copied()
    }

    pub fn failed(&self, peer: &NodeId, part: &str) -> bool {
        self.failure(peer, part).is_some()
    }

    /// `peer`'s failure to do `part`, if it wrote one.
    pub fn failure(&self, peer: &NodeId, part: &str) -> Option<&Failure> {
        self.failures.iter().find(|(author, f)| author == peer && f.part == part).map(|(_, f)| f)
    }

    /// Whether `peer` cast its ballot (under the plain `ballot` kind; other
    /// ballot kinds are only evidence against their author).
    pub fn has_voted(&self, peer: &NodeId) -> bool {
        self.ballots.iter().any(|(author, kind, _)| author == peer && kind == BALLOT)
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Option<T> {
    serde_json::from_slice(body).ok()
}

pub fn stage_named(name: &str) -> Option<Stage> {
    Stage::ALL.into_iter().find(|s| s.as_str() == name)
}

#[cfg(test)]
#[path = "part_tests.rs"]
mod part_tests;
