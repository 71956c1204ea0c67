//! The one trait every model source sits behind, so the pipeline cannot tell
//! an HTTP provider from the embedded model.

pub mod embedded;
pub mod openai;
pub mod sse;

use std::pin::Pin;

use futures_util::Stream;
use futures_util::future::BoxFuture;

use crate::{ChatMessage, ChatRequest, Chunk, LlmError};

/// A started completion. Dropping it cancels the call: the HTTP body is closed,
/// the embedded model stops at its next token.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk, LlmError>> + Send>>;

/// A source of streamed chat completions.
pub trait Provider: Send + Sync + 'static {
    /// Short label used in events, breaker keys and errors (`openrouter`, `local`, a URL).
    fn name(&self) -> &str;

    /// The model used when a request leaves `model` empty.
    fn default_model(&self) -> &str;

    /// Starts a completion. Resolves once the provider has accepted the request
    /// (HTTP status checked, or model loaded), so that retries can wrap exactly this step.
    fn open(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChunkStream, LlmError>>;

    /// One embedding per text, in order; `None` when this provider has no
    /// embedding model (callers then fall back to something else).
    fn embed(&self, _texts: Vec<String>) -> BoxFuture<'_, Result<Option<Vec<Vec<f32>>>, LlmError>> {
        Box::pin(async { Ok(None) })
    }

    /// The model this provider embeds with (`/embeddings`), if it has one.
    fn embedding_model(&self) -> Option<&str> {
        None
    }

    /// Sends an OpenAI request body, unchanged, to `path` (`chat/completions`
    /// or `embeddings`) under the provider's base URL with its key, and
    /// returns the response whatever its status, headers and body still to
    /// be read (streams pass through byte for byte). `None` when the
    /// provider is not an HTTP server (the embedded model): the swarm's
    /// gateway (docs/adr/0020) then cannot forward to it.
    fn forward(
        &self,
        _path: &str,
        _body: Vec<u8>,
    ) -> BoxFuture<'_, Result<Option<reqwest::Response>, LlmError>> {
        Box::pin(async { Ok(None) })
    }

    /// How likely this provider's model finds each continuation as the
    /// assistant's reply to `messages`: mean log-probability per token, one
    /// score per continuation, higher is more likely. `None` when the provider
    /// cannot score (OpenAI-compatible servers stream text, not likelihoods
    /// of given text); the embedded model can.
    fn score(
        &self,
        _messages: Vec<ChatMessage>,
        _continuations: Vec<String>,
    ) -> BoxFuture<'_, Result<Option<Vec<f64>>, LlmError>> {
        Box::pin(async { Ok(None) })
    }
}
