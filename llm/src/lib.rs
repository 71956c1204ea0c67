//! hivemesh's LLM layer: an OpenAI-compatible streaming client, the embedded
//! offline model, the resilience layer every call goes through, and the Hive
//! pipeline (Generator -> Refiner and Validator in parallel -> Curator).

pub mod breaker;
mod budget;
mod client;
pub mod council;
mod error;
pub mod model_file;
pub mod pipeline;
pub mod provider;
mod types;

pub use breaker::BreakerState;
pub use budget::{Account, Budget};
pub use client::{ClientStats, LlmClient, ResilienceConfig};
pub use error::LlmError;
pub use types::{ChatMessage, ChatRequest, Chunk, Completion, FunctionCall, ToolCall, Usage};
