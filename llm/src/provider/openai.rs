//! One client for every OpenAI-compatible chat-completions server: OpenRouter,
//! Ollama (`/v1`), vLLM, llama.cpp's server.

use std::collections::VecDeque;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use serde::Serialize;

use super::sse::{EventOutcome, error_body_message, parse_event};
use super::{ChunkStream, Provider};
use crate::{ChatMessage, ChatRequest, Chunk, LlmError};

mod embeddings;

/// OpenRouter's OpenAI-compatible endpoint.
pub const OPENROUTER_BASE_URL: &str = "https://openrouter.ai/api/v1";

/// How to reach one OpenAI-compatible server.
#[derive(Clone, Debug)]
pub struct OpenAiConfig {
    /// Short label for events and errors.
    pub name: String,
    /// Up to and including `/v1`; `/chat/completions` is appended.
    pub base_url: String,
    pub api_key: Option<String>,
    pub default_model: String,
    /// Sent as `HTTP-Referer` and `X-Title`; OpenRouter uses them to attribute traffic.
    pub referer: String,
    pub title: String,
    pub connect_timeout: Duration,
    /// Longest wait for the response headers.
    pub response_timeout: Duration,
    /// Longest silence inside a stream; keep-alive comments count as activity.
    pub idle_timeout: Duration,
    /// The server's embedding model (`/embeddings`), if it has one: council
    /// voters then rank candidates by embedding similarity.
    pub embedding_model: Option<String>,
}

impl OpenAiConfig {
    pub fn new(
        name: impl Into<String>,
        base_url: impl Into<String>,
        default_model: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            base_url: base_url.into().trim_end_matches('/').to_string(),
            api_key: None,
            default_model: default_model.into(),
            referer: env!("CARGO_PKG_REPOSITORY").to_string(),
            title: "hivemesh".into(),
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            embedding_model: None,
        }
    }

    /// OpenRouter with the given key.
    pub fn openrouter(api_key: String, default_model: impl Into<String>) -> Self {
        Self { api_key: Some(api_key), ..Self::new("openrouter", OPENROUTER_BASE_URL, default_model) }
    }
}

/// The streaming client. Cheap to clone; connections are pooled.
#[derive(Clone, Debug)]
pub struct OpenAiProvider {
    config: OpenAiConfig,
    http: reqwest::Client,
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    temperature: f32,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    stream: bool,
    stream_options: StreamOptions,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// Error bodies are read up to this size; the rest is not needed for a message.
const MAX_ERROR_BODY: usize = 64 * 1024;

impl OpenAiProvider {
    pub fn new(config: OpenAiConfig) -> Result<Self, LlmError> {
        let mut headers = HeaderMap::new();
        let bad_header =
            |what: &str| LlmError::BadRequest(format!("{what} is not a valid HTTP header value"));
        headers.insert(
            "HTTP-Referer",
            HeaderValue::from_str(&config.referer).map_err(|_| bad_header("referer"))?,
        );
        headers.insert("X-Title", HeaderValue::from_str(&config.title).map_err(|_| bad_header("title"))?);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.idle_timeout)
            .build()
            .map_err(|err| LlmError::BadRequest(format!("cannot build HTTP client: {err}")))?;
        Ok(Self { config, http })
    }

    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }

    /// Sends with the key attached, waiting at most `response_timeout` for
    /// the headers; a non-success status becomes `LlmError::Status` with the
    /// server's message and `Retry-After`.
    async fn send(&self, mut builder: reqwest::RequestBuilder) -> Result<reqwest::Response, LlmError> {
        if let Some(key) = &self.config.api_key {
            builder = builder.bearer_auth(key);
        }
        let name = &self.config.name;
        let response = tokio::time::timeout(self.config.response_timeout, builder.send())
            .await
            .map_err(|_| LlmError::Timeout {
                provider: name.clone(),
                message: format!("no response headers within {:?}", self.config.response_timeout),
            })?
            .map_err(|err| transport_error(name, &err))?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = response.headers().get(RETRY_AFTER).and_then(parse_retry_after);
            let body = read_bounded(response).await;
            return Err(LlmError::Status {
                provider: name.clone(),
                status: status.as_u16(),
                message: error_body_message(&body),
                retry_after,
            });
        }
        Ok(response)
    }

    async fn start(&self, request: ChatRequest) -> Result<ChunkStream, LlmError> {
        let model = if request.model.is_empty() { &self.config.default_model } else { &request.model };
        let body = WireRequest {
            model,
            messages: &request.messages,
            temperature: request.temperature,
            max_tokens: request.max_tokens,
            seed: request.seed,
            stream: true,
            stream_options: StreamOptions { include_usage: true },
        };
        let url = format!("{}/chat/completions", self.config.base_url);
        let response =
            self.send(self.http.post(&url).json(&body).header("Accept", "text/event-stream")).await?;
        let name = self.config.name.clone();
        Ok(Box::pin(chunk_stream(name, response.bytes_stream())))
    }
}

impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn default_model(&self) -> &str {
        &self.config.default_model
    }

    fn open(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChunkStream, LlmError>> {
        Box::pin(self.start(request))
    }

    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Option<Vec<Vec<f32>>>, LlmError>> {
        Box::pin(async move {
            match &self.config.embedding_model {
                Some(model) => self.embeddings(model, &texts).await.map(Some),
                None => Ok(None),
            }
        })
    }
}

fn transport_error(provider: &str, err: &reqwest::Error) -> LlmError {
    let message = error_chain(err);
    if err.is_timeout() {
        LlmError::Timeout { provider: provider.into(), message }
    } else if err.is_connect() {
        LlmError::Connect { provider: provider.into(), message }
    } else {
        LlmError::Malformed { provider: provider.into(), message }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// `Retry-After` in (possibly fractional) seconds. HTTP dates are not used by LLM APIs.
fn parse_retry_after(value: &HeaderValue) -> Option<Duration> {
    let seconds: f64 = value.to_str().ok()?.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(3600.0)))
}

async fn read_bounded(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(part)) = response.chunk().await {
        body.extend_from_slice(&part);
        if body.len() >= MAX_ERROR_BODY {
            body.truncate(MAX_ERROR_BODY);
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

struct StreamState<S> {
    events: S,
    pending: VecDeque<Chunk>,
    finished: bool,
    done: bool,
}

/// Flattens SSE events into chunks. Comment lines (keep-alives) never reach here:
/// the SSE parser drops them. The stream ends at `[DONE]`.
fn chunk_stream(
    provider: String,
    bytes: impl Stream<Item = reqwest::Result<bytes::Bytes>> + Send + 'static,
) -> impl Stream<Item = Result<Chunk, LlmError>> + Send {
    let state = StreamState {
        events: Box::pin(bytes.eventsource()),
        pending: VecDeque::new(),
        finished: false,
        done: false,
    };
    futures_util::stream::unfold(state, move |mut state| {
        let provider = provider.clone();
        async move {
            loop {
                if let Some(chunk) = state.pending.pop_front() {
                    if matches!(chunk, Chunk::Finished { .. }) {
                        state.finished = true;
                    }
                    return Some((Ok(chunk), state));
                }
                if state.done {
                    return None;
                }
                let Some(event) = state.events.next().await else {
                    state.done = true;
                    if state.finished {
                        return None;
                    }
                    let message = "stream ended before [DONE]".to_string();
                    return Some((Err(LlmError::Malformed { provider, message }), state));
                };
                let event = match event {
                    Ok(event) => event,
                    Err(err) => {
                        state.done = true;
                        let message = error_chain(&err);
                        let error = if message.contains("operation timed out") {
                            LlmError::Timeout { provider, message }
                        } else {
                            LlmError::Malformed { provider, message }
                        };
                        return Some((Err(error), state));
                    }
                };
                if event.data.trim().is_empty() {
                    continue;
                }
                match parse_event(&event.data) {
                    Ok(EventOutcome::Chunks(chunks)) => state.pending.extend(chunks),
                    Ok(EventOutcome::Done) => {
                        state.done = true;
                        state.finished = true;
                    }
                    Ok(EventOutcome::Error { message, code }) => {
                        state.done = true;
                        return Some((Err(LlmError::MidStream { provider, message, code }), state));
                    }
                    Err(message) => {
                        state.done = true;
                        return Some((Err(LlmError::Malformed { provider, message }), state));
                    }
                }
            }
        }
    })
}
