//! Errors from providers, the resilience layer and the pipeline.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The provider answered with a non-success HTTP status.
    #[error("{provider} answered HTTP {status}: {message}")]
    Status { provider: String, status: u16, message: String, retry_after: Option<Duration> },
    /// An error reported under HTTP 200: an error event inside the stream, in
    /// any shape (an `error` key, `object: "error"`, `event: error`,
    /// `finish_reason: "error"`), or a JSON error body in place of the stream.
    /// Text that came before it is not an answer.
    #[error("{provider} reported an error mid-stream: {message}")]
    MidStream { provider: String, message: String, code: Option<String> },
    #[error("could not reach {provider}: {message}")]
    Connect { provider: String, message: String },
    #[error("{provider} timed out: {message}")]
    Timeout { provider: String, message: String },
    /// The connection closed before the response was complete (a reset, or
    /// a body cut short mid-stream). Retryable.
    #[error("{provider} dropped the connection: {message}")]
    Disconnected { provider: String, message: String },
    /// The stream ended without a `finish_reason`: the answer is not known to
    /// be whole (a server that serves one request at a time ends the current
    /// stream this way when another request arrives). Retryable.
    #[error("{provider} ended the stream without finishing the answer: {message}")]
    Incomplete { provider: String, message: String },
    /// HTTP 200, then the body closed without a single event. llama.cpp's
    /// server does this when the prompt does not fit its context. Not retried.
    #[error(
        "{provider} answered 200 but the stream carried no events; the prompt may be longer than the model's context window"
    )]
    EmptyStream { provider: String },
    /// The server says the prompt does not fit the model's context window
    /// (its 400 `context_length_exceeded` or equivalent). Not retried.
    #[error("{provider}: the prompt is longer than the model's context window: {message}")]
    ContextLengthExceeded { provider: String, message: String },
    /// The stream carried something that is not a chat-completions chunk.
    #[error("{provider} sent a malformed stream: {message}")]
    Malformed { provider: String, message: String },
    #[error("circuit open for {provider} model {model}: too many recent failures; retry later")]
    CircuitOpen { provider: String, model: String },
    #[error("job budget exceeded: spent ${spent:.6} of ${budget:.6}; no further model calls")]
    BudgetExceeded { spent: f64, budget: f64 },
    #[error("job token budget exceeded: {used} tokens of {budget}; generation stopped")]
    TokenBudgetExceeded { used: u64, budget: u64 },
    #[error("cancelled")]
    Cancelled,
    /// No model file, and it could not be fetched; the message says how to supply one.
    #[error("{0}")]
    ModelUnavailable(String),
    /// The embedded model failed while loading or generating.
    #[error("embedded model: {0}")]
    Model(String),
    #[error("bad request: {0}")]
    BadRequest(String),
}

impl LlmError {
    /// Worth another try: throttling, server errors, timeouts, dropped
    /// connections and streams that stopped short. 400, 401, 402 and 403 are
    /// the caller's problem and are never retried, nor is an in-stream error
    /// whose code is one of those, nor a prompt over the context window.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::MidStream { code, .. } => !code.as_deref().is_some_and(is_client_error_code),
            Self::Connect { .. } | Self::Timeout { .. } | Self::Disconnected { .. } => true,
            Self::Incomplete { .. } | Self::Malformed { .. } => true,
            _ => false,
        }
    }

    /// A stable code for errors a caller may act on, as OpenAI's error
    /// bodies spell it: `context_length_exceeded` for a prompt the model
    /// cannot hold. `None` for the rest.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            Self::ContextLengthExceeded { .. } => Some("context_length_exceeded"),
            _ => None,
        }
    }

    /// The server's `Retry-After`, when it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Counts against the provider's circuit breaker (the caller's own mistakes do not).
    pub fn trips_breaker(&self) -> bool {
        self.is_retryable()
    }
}

/// A 4xx code other than 408 (timeout) and 429 (throttled), as an in-stream error may carry.
fn is_client_error_code(code: &str) -> bool {
    code.parse::<u16>().is_ok_and(|code| (400..500).contains(&code) && code != 408 && code != 429)
}
