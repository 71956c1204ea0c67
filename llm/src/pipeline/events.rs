//! What a running pipeline reports. Serialised with a `type` tag, as the
//! node's server-sent events carry them.

use serde::{Deserialize, Serialize};

use super::Stage;

/// Times are milliseconds since the pipeline started.
///
/// The rule for consumers: what is printed or streamed as the answer is
/// exactly the final answer. A stage's `Tokens` are provisional until its
/// `StageFinished`: when an attempt fails after some of its tokens went out,
/// a `Retracted` for that stage and attempt comes first, before the attempt's
/// `Error` and before any retry's `StageStarted`; erase everything that
/// attempt showed. The answer is `Done::answer`; a run without `Done` (a
/// `PipelineError`) has no answer, and nothing it showed stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PipelineEvent {
    /// A stage (re)started. On a retry (attempt > 1), discard that stage's earlier tokens.
    StageStarted {
        stage: Stage,
        model: String,
        provider: String,
        attempt: u32,
        at_ms: f64,
    },
    /// A frame of generated text.
    Tokens {
        stage: Stage,
        text: String,
        at_ms: f64,
    },
    StageFinished {
        stage: Stage,
        tokens: u64,
        cost_usd: f64,
        latency_ms: f64,
        cached: bool,
        at_ms: f64,
    },
    /// Withdraws every `Tokens` frame of `stage` since its `StageStarted`
    /// with this `attempt`: the attempt failed after showing them (a dropped
    /// connection, an error event after some text, an empty answer), and
    /// then that attempt's `Error` follows; or the curator's text echoed its
    /// prompt ("Question: ... Draft answer: ..."), and then one `Tokens`
    /// frame with the answer as it stands follows. A consumer that printed
    /// those frames erases them; nothing retracted is part of any answer.
    /// Serialised as `{"type":"retracted","stage":"curator","attempt":1,"at_ms":812.5}`.
    Retracted {
        stage: Stage,
        attempt: u32,
        at_ms: f64,
    },
    /// A stage attempt failed; `will_retry` says whether another attempt follows.
    Error {
        stage: Stage,
        message: String,
        will_retry: bool,
        at_ms: f64,
    },
    /// The curator's answer: the pipeline succeeded.
    Done {
        answer: String,
        tokens: u64,
        cost_usd: f64,
        at_ms: f64,
    },
}
