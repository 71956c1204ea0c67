//! One client for every OpenAI-compatible chat-completions server: OpenRouter,
//! Ollama (`/v1`), vLLM, llama.cpp's server.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use serde::Serialize;

use self::wire::{EventOutcome, NotAChunk, ServerError, error_body, parse_body, parse_event};
use super::sse::{SseEvent, SseParser};
use super::{ChunkStream, Provider};
use crate::{ChatMessage, ChatRequest, Chunk, LlmError};

mod embeddings;

pub use embeddings::embeddings_response;
mod wire;

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
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f32>,
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
    /// the headers; the response whatever its status.
    async fn send_raw(&self, mut builder: reqwest::RequestBuilder) -> Result<reqwest::Response, LlmError> {
        if let Some(key) = &self.config.api_key {
            builder = builder.bearer_auth(key);
        }
        let name = &self.config.name;
        tokio::time::timeout(self.config.response_timeout, builder.send())
            .await
            .map_err(|_| LlmError::Timeout {
                provider: name.clone(),
                message: format!("no response headers within {:?}", self.config.response_timeout),
            })?
            .map_err(|err| transport_error(name, &err))
    }

    /// [`Self::send_raw`]; a non-success status becomes `LlmError::Status`
    /// with the server's message and `Retry-After`.
    async fn send(&self, builder: reqwest::RequestBuilder) -> Result<reqwest::Response, LlmError> {
        let name = &self.config.name;
        let response = self.send_raw(builder).await?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = response.headers().get(RETRY_AFTER).and_then(parse_retry_after);
            let body = read_bounded(response).await;
            let error = error_body(&body);
            if error.is_context_overflow() {
                return Err(LlmError::ContextLengthExceeded {
                    provider: name.clone(),
                    message: format!("HTTP {}: {}", status.as_u16(), error.describe()),
                });
            }
            return Err(LlmError::Status {
                provider: name.clone(),
                status: status.as_u16(),
                message: error.describe(),
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
            top_p: request.top_p,
            stop: (!request.stop.is_empty()).then_some(request.stop.as_slice()),
            presence_penalty: request.presence_penalty,
            frequency_penalty: request.frequency_penalty,
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

    fn embedding_model(&self) -> Option<&str> {
        self.config.embedding_model.as_deref()
    }

    fn forward(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> BoxFuture<'_, Result<Option<reqwest::Response>, LlmError>> {
        let url = format!("{}/{}", self.config.base_url.trim_end_matches('/'), path.trim_start_matches('/'));
        Box::pin(async move {
            let builder = self.http.post(&url).header("Content-Type", "application/json").body(body);
            Ok(Some(self.send_raw(builder).await?))
        })
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

/// A failure of the HTTP exchange itself: a timeout, a refused connection, or
/// a connection that closed early (named a dropped connection, never a
/// malformed stream).
fn transport_error(provider: &str, err: &reqwest::Error) -> LlmError {
    let message = error_chain(err);
    if err.is_timeout() || message.contains("operation timed out") {
        LlmError::Timeout { provider: provider.into(), message }
    } else if err.is_connect() {
        LlmError::Connect { provider: provider.into(), message }
    } else {
        LlmError::Disconnected { provider: provider.into(), message }
    }
}

/// An error the server reported, as the caller's error: a context overflow
/// is named as such.
fn reported(provider: &str, error: ServerError) -> LlmError {
    if error.is_context_overflow() {
        return LlmError::ContextLengthExceeded { provider: provider.into(), message: error.describe() };
    }
    LlmError::MidStream { provider: provider.into(), message: error.message, code: error.code }
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

/// Bytes kept from the start of a body that has produced no event yet, to
/// read it as JSON (an error or a non-streamed completion) if it never does.
const MAX_HEAD: usize = 4 * 1024 * 1024;

struct StreamState<S> {
    provider: String,
    bytes: S,
    parser: SseParser,
    events: VecDeque<SseEvent>,
    pending: VecDeque<Result<Chunk, LlmError>>,
    head: Vec<u8>,
    events_seen: u64,
    text_chunks: u64,
    /// A `finish_reason` arrived.
    finished: bool,
    /// The body ended.
    eof: bool,
    /// Nothing more will be yielded after `pending`.
    over: bool,
}

impl<S> StreamState<S> {
    fn fail(&mut self, error: LlmError) {
        self.over = true;
        self.pending.push_back(Err(error));
    }

    fn push_chunks(&mut self, chunks: Vec<Chunk>) {
        for chunk in chunks {
            match &chunk {
                Chunk::Finished { .. } => self.finished = true,
                Chunk::Text(_) => self.text_chunks += 1,
                _ => {}
            }
            self.pending.push_back(Ok(chunk));
        }
    }

    fn incomplete(&self, what: &str) -> LlmError {
        let message = if self.text_chunks == 0 {
            format!(
                "{what} with no text and no finish_reason (a server that serves one request at a time \
                 ends a stream this way when another request arrives)"
            )
        } else {
            format!("{what} after {} text chunk(s) but without a finish_reason", self.text_chunks)
        };
        LlmError::Incomplete { provider: self.provider.clone(), message }
    }

    fn on_event(&mut self, event: SseEvent) {
        self.events_seen += 1;
        if event.data.trim().is_empty() && event.event != "error" {
            return;
        }
        match parse_event(&event.event, &event.data) {
            Ok(EventOutcome::Chunks(chunks)) => self.push_chunks(chunks),
            Ok(EventOutcome::Done) => {
                self.over = true;
                if !self.finished {
                    let error = self.incomplete("[DONE] arrived");
                    self.pending.push_back(Err(error));
                }
            }
            Ok(EventOutcome::Error(error)) => {
                let error = reported(&self.provider, error);
                self.fail(error);
            }
            Err(NotAChunk(message)) => {
                let provider = self.provider.clone();
                self.fail(LlmError::Malformed { provider, message });
            }
        }
    }

    /// The body ended without `[DONE]`.
    fn on_eof(&mut self) {
        self.over = true;
        if self.finished {
            return;
        }
        let provider = self.provider.clone();
        if self.events_seen > 0 {
            let error = self.incomplete("the stream closed before [DONE]");
            self.pending.push_back(Err(error));
            return;
        }
        let head = String::from_utf8_lossy(&self.head).into_owned();
        if head.trim().is_empty() {
            self.pending.push_back(Err(LlmError::EmptyStream { provider }));
            return;
        }
        // A JSON body in place of the stream: an error, or a whole completion.
        match parse_body(&head) {
            Ok(EventOutcome::Chunks(chunks)) => {
                self.push_chunks(chunks);
                if !self.finished {
                    let error = self.incomplete("a JSON completion in place of a stream ended");
                    self.pending.push_back(Err(error));
                }
            }
            Ok(EventOutcome::Error(error)) => {
                let error = reported(&provider, error);
                self.pending.push_back(Err(error));
            }
            Ok(EventOutcome::Done) => {
                let error = self.incomplete("a bare [DONE]");
                self.pending.push_back(Err(error));
            }
            Err(NotAChunk(message)) => self.pending.push_back(Err(LlmError::Malformed { provider, message })),
        }
    }
}

/// Flattens SSE events into chunks. Comment lines (keep-alives) never reach
/// here: the SSE parser drops them. A stream succeeds only if it carried a
/// `finish_reason` and no error; it ends at `[DONE]` (or when the body ends
/// after a `finish_reason`).
fn chunk_stream(
    provider: String,
    bytes: impl Stream<Item = reqwest::Result<bytes::Bytes>> + Send + 'static,
) -> impl Stream<Item = Result<Chunk, LlmError>> + Send {
    let state = StreamState {
        provider,
        bytes: Box::pin(bytes),
        parser: SseParser::new(),
        events: VecDeque::new(),
        pending: VecDeque::new(),
        head: Vec::new(),
        events_seen: 0,
        text_chunks: 0,
        finished: false,
        eof: false,
        over: false,
    };
    futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(item) = state.pending.pop_front() {
                return Some((item, state));
            }
            if state.over {
                return None;
            }
            if let Some(event) = state.events.pop_front() {
                state.on_event(event);
                continue;
            }
            if state.eof {
                state.on_eof();
                continue;
            }
            let mut events = Vec::new();
            match state.bytes.next().await {
                Some(Ok(bytes)) => {
                    if state.events_seen == 0 && state.head.len() < MAX_HEAD {
                        state.head.extend_from_slice(&bytes);
                    }
                    state.parser.feed(&bytes, &mut events);
                }
                Some(Err(err)) => {
                    let mut error = transport_error(&state.provider, &err);
                    if let LlmError::Disconnected { message, .. } = &mut error {
                        *message = if state.events_seen == 0 {
                            format!(
                                "the body closed before any event ({message}); if this repeats, \
                                 the prompt may be longer than the model's context window"
                            )
                        } else {
                            format!("mid-stream, after {} text chunk(s) ({message})", state.text_chunks)
                        };
                    }
                    if state.finished {
                        // The answer was whole; only the trailer (usage, [DONE]) was lost.
                        tracing::debug!(provider = %state.provider, %error, "connection closed after finish_reason");
                        state.over = true;
                    } else {
                        state.fail(error);
                    }
                    continue;
                }
                None => {
                    state.parser.finish(&mut events);
                    state.eof = true;
                }
            }
            state.events.extend(events);
        }
    })
}
