//! Errors from providers, the resilience layer and the pipeline.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The provider answered with a non-success HTTP status.
    #[error("{provider} answered HTTP {status}: {message}")]
    Status { provider: String, status: u16, message: String, retry_after: Option<Duration> },
    /// An error event inside a 200 stream (OpenRouter's `finish_reason: "error"`).
    #[error("{provider} reported an error mid-stream: {message}")]
    MidStream { provider: String, message: String, code: Option<String> },
    #[error("could not reach {provider}: {message}")]
    Connect { provider: String, message: String },
    #[error("{provider} timed out: {message}")]
    Timeout { provider: String, message: String },
    /// The stream broke off or carried something that is not a chat-completions chunk.
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
    /// Worth another try: throttling, server errors, timeouts and broken connections.
    /// 400, 401, 402 and 403 are the caller's problem and are never retried.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::Connect { .. } | Self::Timeout { .. } | Self::MidStream { .. } => true,
            Self::Malformed { .. } => true,
            _ => false,
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
