//! What a running pipeline reports. Serialised with a `type` tag, as the
//! node's server-sent events carry them.

use serde::{Deserialize, Serialize};

use super::Stage;

/// Times are milliseconds since the pipeline started.
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
