//! The resilience layer every model call goes through: result cache, budget,
//! circuit breaker, rate limit, retries with jittered backoff.

use std::collections::HashMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures_util::{Stream, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::breaker::{Breaker, BreakerState, Permit};
use crate::provider::{ChunkStream, Provider};
use crate::{Budget, ChatRequest, Chunk, Completion, LlmError};

/// Knobs of the resilience layer; the defaults suit a hosted API.
#[derive(Clone, Debug)]
pub struct ResilienceConfig {
    /// Attempts per call, the first included.
    pub max_attempts: usize,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// A `Retry-After` longer than this ends the retries (the error carries it).
    pub max_retry_after: Duration,
    /// Consecutive failures that open a provider+model's breaker.
    pub breaker_failures: u32,
    pub breaker_open_for: Duration,
    /// Calls per second to this provider; `None` for no limit (the embedded model).
    pub rate_per_second: Option<NonZeroU32>,
    /// Cached completions kept; 0 disables the cache. Only accepted answers
    /// are stored (see `Completion::is_cacheable`).
    pub cache_entries: u64,
    pub cache_ttl: Duration,
    /// Requests open at once to this provider (completions, streams held
    /// until they end, and embeddings); further calls queue in order. `None`
    /// for no limit. Set `Some(1)` for a server that serves one request at a
    /// time, such as llama-cpp-python's server with default settings, which
    /// ends the running stream early when a second request arrives: the
    /// pipeline's parallel refiner and validator then take turns.
    pub max_concurrent_requests: Option<NonZeroUsize>,
    /// Detect a server that serves one request at a time: when a stream ends
    /// with no text and no `finish_reason` while another request to this
    /// provider is open, later calls take turns (one open at a time) for the
    /// rest of this client's life, and a warning says so. On by default, so
    /// the pipeline gets through against such a server without configuration.
    pub adapt_to_one_at_a_time: bool,
}

impl Default for ResilienceConfig {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
            breaker_failures: 5,
            breaker_open_for: Duration::from_secs(30),
            rate_per_second: NonZeroU32::new(20),
            cache_entries: 1024,
            cache_ttl: Duration::from_secs(600),
            max_concurrent_requests: None,
            adapt_to_one_at_a_time: true,
        }
    }
}

/// Counters for status reports and tests.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ClientStats {
    pub calls: u64,
    pub attempts: u64,
    pub retries: u64,
    pub cache_hits: u64,
    pub breaker_rejections: u64,
    pub failures: u64,
    /// Calls that waited for a free slot under `max_concurrent_requests`
    /// (or, once detected, for a server that serves one request at a time).
    pub queued: u64,
    /// This client found its server serves one request at a time, and now
    /// sends one at a time (see `ResilienceConfig::adapt_to_one_at_a_time`).
    pub one_at_a_time: bool,
    pub breakers: Vec<(String, BreakerState)>,
}

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    attempts: AtomicU64,
    retries: AtomicU64,
    cache_hits: AtomicU64,
    breaker_rejections: AtomicU64,
    failures: AtomicU64,
    queued: AtomicU64,
}

/// Completed answers by request hash.
type ResultCache = moka::sync::Cache<[u8; 32], Arc<Completion>>;

/// Likelihood scores by (messages, continuation) hash. Scoring is
/// deterministic, so a cached score is the score: the voters of an
/// in-process mesh, sharing one client, score the same candidates once.
type ScoreCache = moka::sync::Cache<[u8; 32], f64>;

/// Scores kept; each is one f64 under a 32-byte key.
const SCORE_CACHE_ENTRIES: u64 = 4096;

/// A provider behind the resilience layer. Share it with `Arc`.
pub struct LlmClient {
    provider: Arc<dyn Provider>,
    config: ResilienceConfig,
    breakers: Mutex<HashMap<String, Breaker>>,
    limiter: Option<DefaultDirectRateLimiter>,
    /// `None` when `cache_entries` is 0: no key is hashed, nothing is looked up.
    cache: Option<ResultCache>,
    scores: ScoreCache,
    /// One scoring at a time: scoring is CPU-bound, and the voters of an
    /// in-process mesh would otherwise score the same candidates at once
    /// before any of them could fill the cache.
    scoring: tokio::sync::Mutex<()>,
    gate: Arc<Gate>,
    counters: Arc<Counters>,
}

impl LlmClient {
    pub fn new(provider: Arc<dyn Provider>, config: ResilienceConfig) -> Self {
        let limiter = config.rate_per_second.map(|rate| RateLimiter::direct(Quota::per_second(rate)));
        let cache = (config.cache_entries > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(config.cache_entries)
                .time_to_live(config.cache_ttl)
                .build()
        });
        let gate = Arc::new(Gate {
            limit: config.max_concurrent_requests.map(|limit| Arc::new(Semaphore::new(limit.get()))),
            serial: Arc::new(Semaphore::new(1)),
            one_at_a_time: AtomicBool::new(false),
            open: AtomicUsize::new(0),
        });
        let scores = moka::sync::Cache::builder().max_capacity(SCORE_CACHE_ENTRIES).build();
        Self {
            provider,
            config,
            breakers: Mutex::default(),
            limiter,
            cache,
            scores,
            scoring: tokio::sync::Mutex::new(()),
            gate,
            counters: Arc::default(),
        }
    }

    /// A place among the open requests: under `max_concurrent_requests`, and
    /// alone once the server is known to serve one request at a time;
    /// waits in line for it.
    async fn slot(&self) -> Slot {
        let mut queued = false;
        let mut take = async |semaphore: &Arc<Semaphore>| {
            if let Ok(permit) = semaphore.clone().try_acquire_owned() {
                return Some(permit);
            }
            queued = true;
            // The semaphores are never closed, so acquiring cannot fail.
            semaphore.clone().acquire_owned().await.ok()
        };
        let limit = match &self.gate.limit {
            Some(semaphore) => take(semaphore).await,
            None => None,
        };
        let serial = match self.gate.one_at_a_time.load(Ordering::SeqCst) {
            true => take(&self.gate.serial).await,
            false => None,
        };
        if queued {
            self.counters.queued.fetch_add(1, Ordering::Relaxed);
        }
        self.gate.open.fetch_add(1, Ordering::SeqCst);
        Slot { gate: self.gate.clone(), _permits: (limit, serial) }
    }

    /// Forwards an OpenAI request body unchanged to the provider (see
    /// [`Provider::forward`]); `Ok(None)` when it is not an HTTP server.
    pub async fn forward(&self, path: &str, body: Vec<u8>) -> Result<Option<reqwest::Response>, LlmError> {
        self.provider.forward(path, body).await
    }

    /// The provider's embedding model, if it has one.
    pub fn embedding_model(&self) -> Option<&str> {
        self.provider.embedding_model()
    }

    pub fn provider_name(&self) -> &str {
        self.provider.name()
    }

    /// The model a request will actually use.
    pub fn resolve_model<'a>(&'a self, requested: &'a str) -> &'a str {
        if requested.is_empty() || requested == "default" { self.provider.default_model() } else { requested }
    }

    /// One embedding per text from the provider's embedding model; `None`
    /// when it has none. Rate-limited like completions.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Option<Vec<Vec<f32>>>, LlmError> {
        let _slot = self.slot().await;
        if let Some(limiter) = &self.limiter {
            limiter.until_ready().await;
        }
        self.provider.embed(texts).await
    }

    /// The provider's likelihood of each continuation as the reply to
    /// `messages` (see [`Provider::score`]); `None` when it cannot score.
    /// Scores are cached (scoring is deterministic), so the voters of an
    /// in-process mesh that share this client score a candidate once.
    pub async fn score(
        &self,
        messages: Vec<crate::ChatMessage>,
        continuations: Vec<String>,
    ) -> Result<Option<Vec<f64>>, LlmError> {
        let mut prefix = Sha256::new();
        prefix.update(self.provider.name().as_bytes());
        prefix.update([0]);
        // Serialising plain strings cannot fail.
        prefix.update(serde_json::to_vec(&messages).unwrap_or_default());
        let keys: Vec<[u8; 32]> = continuations
            .iter()
            .map(|text| {
                let mut hasher = prefix.clone();
                hasher.update([0]);
                hasher.update(text.as_bytes());
                hasher.finalize().into()
            })
            .collect();
        let cached = || keys.iter().map(|key| self.scores.get(key)).collect::<Option<Vec<f64>>>();
        if let Some(scores) = cached() {
            return Ok(Some(scores));
        }
        let _turn = self.scoring.lock().await;
        if let Some(scores) = cached() {
            return Ok(Some(scores));
        }
        let scored = self.provider.score(messages, continuations).await?;
        if let Some(scores) = &scored {
            for (key, score) in keys.into_iter().zip(scores) {
                self.scores.insert(key, *score);
            }
        }
        Ok(scored)
    }

    pub fn stats(&self) -> ClientStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut breakers: Vec<_> = self
            .breakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(model, breaker)| (model.clone(), breaker.state()))
            .collect();
        breakers.sort_by(|a, b| a.0.cmp(&b.0));
        let counters = &self.counters;
        ClientStats {
            calls: load(&counters.calls),
            attempts: load(&counters.attempts),
            retries: load(&counters.retries),
            cache_hits: load(&counters.cache_hits),
            breaker_rejections: load(&counters.breaker_rejections),
            failures: load(&counters.failures),
            queued: load(&counters.queued),
            one_at_a_time: self.gate.one_at_a_time.load(Ordering::SeqCst),
            breakers,
        }
    }

    /// Starts a streamed completion. The returned stream counts tokens against
    /// `budget`, and on its end settles the breaker, the cost and the cache.
    /// An identical earlier answer is replayed from the cache; a new answer
    /// is stored only if it was accepted: it ended with a `finish_reason`
    /// other than `length`, `content_filter` or `error`, carried no error,
    /// and its text is not blank.
    pub async fn stream(&self, request: ChatRequest, budget: &Budget) -> Result<ChunkStream, LlmError> {
        self.stream_with(request, budget, Lookup::Cache).await
    }

    /// Like [`stream`](Self::stream), but never served from the cache: the
    /// call reaches the provider. Use it for every retry (a retry exists
    /// because an earlier answer was not accepted) and for calls that must be
    /// independent of an identical one. An accepted answer is still stored.
    pub async fn stream_fresh(&self, request: ChatRequest, budget: &Budget) -> Result<ChunkStream, LlmError> {
        self.stream_with(request, budget, Lookup::Skip).await
    }

    async fn stream_with(
        &self,
        mut request: ChatRequest,
        budget: &Budget,
        lookup: Lookup,
    ) -> Result<ChunkStream, LlmError> {
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        request.model = self.resolve_model(&request.model).to_string();
        let cache = self.cache.as_ref().map(|cache| (cache.clone(), self.cache_key(&request)));
        if lookup == Lookup::Cache
            && let Some(hit) = cache.as_ref().and_then(|(cache, key)| cache.get(key))
        {
            self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(replay(&hit));
        }
        budget.check()?;
        let breaker = self.breaker(&request.model);
        let attempt = || async {
            let Some(permit) = breaker.try_acquire() else {
                self.counters.breaker_rejections.fetch_add(1, Ordering::Relaxed);
                return Err((
                    LlmError::CircuitOpen {
                        provider: self.provider.name().into(),
                        model: request.model.clone(),
                    },
                    None,
                ));
            };
            // Taken per attempt, so a retry after the server was found to
            // serve one request at a time waits its turn. Held by the
            // returned stream until it ends or is dropped.
            let slot = self.slot().await;
            if let Some(limiter) = &self.limiter {
                limiter.until_ready().await;
            }
            self.counters.attempts.fetch_add(1, Ordering::Relaxed);
            let opened = match self.provider.open(request.clone()).await {
                // A stream that fails before its first chunk showed nothing to
                // anyone: that is retried here like a failed request (a bare
                // `[DONE]`, a JSON error body, a stream cut by another request).
                Ok(mut stream) => match stream.next().await {
                    Some(Err(error)) => Err(error),
                    first => {
                        let first = futures_util::stream::iter(first);
                        Ok(Box::pin(first.chain(stream)) as ChunkStream)
                    }
                },
                Err(error) => Err(error),
            };
            match opened {
                Ok(stream) => Ok((stream, permit, slot)),
                Err(error) => {
                    self.gate.note_failure(&error, "", self.adapt_name());
                    if error.trips_breaker() {
                        permit.failure();
                    }
                    Err((error, None::<Permit>))
                }
            }
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.config.min_backoff)
            .with_max_delay(self.config.max_backoff)
            .with_max_times(self.config.max_attempts.saturating_sub(1))
            .with_jitter();
        let max_retry_after = self.config.max_retry_after;
        let opened = attempt
            .retry(backoff)
            .when(|(error, _)| error.is_retryable())
            .adjust(|(error, _), next| match (next, error.retry_after()) {
                (Some(_), Some(asked)) if asked > max_retry_after => None,
                (Some(_), Some(asked)) => Some(asked),
                (next, _) => next,
            })
            .notify(|(error, _), delay| {
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(provider = self.provider.name(), %error, ?delay, "model call failed; retrying");
            })
            .await;
        match opened {
            Ok((stream, permit, slot)) => Ok(Box::pin(Tracked {
                inner: stream,
                permit: Some(permit),
                slot: Some(slot),
                adapt: self.adapt_name().map(str::to_string),
                budget: budget.clone(),
                collected: Completion::default(),
                cache,
                counters: self.counters.clone(),
                ended: false,
            })),
            Err((error, _)) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                Err(error)
            }
        }
    }

    /// A whole completion; `on_text` sees each piece as it arrives. Fails
    /// unless the stream finished cleanly (a `finish_reason`, no error).
    pub async fn complete(
        &self,
        request: ChatRequest,
        budget: &Budget,
        on_text: impl FnMut(&str),
    ) -> Result<Completion, LlmError> {
        let stream = self.stream(request, budget).await?;
        collect(stream, on_text).await
    }

    /// Like [`complete`](Self::complete), but never served from the cache
    /// (see [`stream_fresh`](Self::stream_fresh)).
    pub async fn complete_fresh(
        &self,
        request: ChatRequest,
        budget: &Budget,
        on_text: impl FnMut(&str),
    ) -> Result<Completion, LlmError> {
        let stream = self.stream_fresh(request, budget).await?;
        collect(stream, on_text).await
    }

    /// The provider's name when one-at-a-time detection is on.
    fn adapt_name(&self) -> Option<&str> {
        self.config.adapt_to_one_at_a_time.then(|| self.provider.name())
    }

    fn breaker(&self, model: &str) -> Breaker {
        let mut breakers = self.breakers.lock().unwrap_or_else(PoisonError::into_inner);
        breakers
            .entry(model.to_string())
            .or_insert_with(|| Breaker::new(self.config.breaker_failures, self.config.breaker_open_for))
            .clone()
    }

    fn cache_key(&self, request: &ChatRequest) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.provider.name().as_bytes());
        hasher.update([0]);
        // Serialising a plain struct of strings and numbers cannot fail.
        hasher.update(serde_json::to_vec(request).unwrap_or_default());
        hasher.finalize().into()
    }
}

/// Who may open a request to the provider now.
struct Gate {
    /// `max_concurrent_requests`, when set.
    limit: Option<Arc<Semaphore>>,
    /// One permit, taken by every request once `one_at_a_time` is set.
    serial: Arc<Semaphore>,
    one_at_a_time: AtomicBool,
    /// Requests open now.
    open: AtomicUsize,
}

/// A request's place under the `Gate`, given back on drop.
struct Slot {
    gate: Arc<Gate>,
    _permits: (Option<OwnedSemaphorePermit>, Option<OwnedSemaphorePermit>),
}

impl Gate {
    /// Learns from a failed request (while its slot is still held) whether
    /// the server serves one request at a time: its stream ended with no text
    /// and no `finish_reason` while another request was open. `provider` is
    /// `None` when detection is off.
    fn note_failure(&self, error: &LlmError, text: &str, provider: Option<&str>) {
        if let (Some(provider), LlmError::Incomplete { .. }) = (provider, error)
            && text.trim().is_empty()
            && self.open.load(Ordering::SeqCst) > 1
            && !self.one_at_a_time.swap(true, Ordering::SeqCst)
        {
            tracing::warn!(
                provider = %provider,
                "a stream ended empty while another request was open: this server serves one request \
                 at a time, so requests to it now take turns (set max_concurrent_requests to 1 to start so)"
            );
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether the result cache consulted for a call.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lookup {
    Cache,
    Skip,
}

/// Reads a stream to its end into one completion.
async fn collect(mut stream: ChunkStream, mut on_text: impl FnMut(&str)) -> Result<Completion, LlmError> {
    let mut completion = Completion::default();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if let Chunk::Text(text) = &chunk {
            on_text(text);
        }
        completion.absorb(&chunk);
    }
    Ok(completion)
}

/// Whether a completion may be stored and replayed: whole (a `finish_reason`
/// other than `length`, `content_filter` or `error`) and not blank.
fn is_cacheable(completion: &Completion) -> bool {
    let whole = completion
        .finish_reason
        .as_deref()
        .is_some_and(|reason| !matches!(reason, "length" | "content_filter" | "error"));
    whole && !completion.text.trim().is_empty()
}

/// A cached completion played back as a stream. It cost nothing this time.
fn replay(hit: &Completion) -> ChunkStream {
    let mut chunks = vec![Ok(Chunk::Cached), Ok(Chunk::Text(hit.text.clone()))];
    if let Some(usage) = hit.usage {
        chunks.push(Ok(Chunk::Usage(crate::Usage { cost_usd: None, ..usage })));
    }
    chunks.push(Ok(Chunk::Finished { reason: hit.finish_reason.clone().unwrap_or_else(|| "stop".into()) }));
    Box::pin(futures_util::stream::iter(chunks))
}

/// Watches a provider stream to settle its call when it ends.
struct Tracked {
    inner: ChunkStream,
    permit: Option<Permit>,
    /// The concurrency slot, released when the call ends.
    slot: Option<Slot>,
    /// The provider's name when one-at-a-time detection is on.
    adapt: Option<String>,
    budget: Budget,
    collected: Completion,
    cache: Option<(ResultCache, [u8; 32])>,
    counters: Arc<Counters>,
    ended: bool,
}

impl Tracked {
    /// Ends the call once: the budget is charged whatever the outcome.
    fn end(&mut self) -> Option<Permit> {
        self.ended = true;
        self.slot = None;
        self.budget.record_call(self.collected.usage.and_then(|usage| usage.cost_usd));
        self.permit.take()
    }

    fn fail(&mut self, error: &LlmError) {
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = &self.slot {
            slot.gate.note_failure(error, &self.collected.text, self.adapt.as_deref());
        }
        if let Some(permit) = self.end()
            && error.trips_breaker()
        {
            permit.failure();
        }
    }

    fn succeed(&mut self) {
        if let Some(permit) = self.end() {
            permit.success();
        }
        if let Some((cache, key)) = self.cache.take()
            && is_cacheable(&self.collected)
        {
            cache.insert(key, Arc::new(std::mem::take(&mut self.collected)));
        }
    }
}

impl Stream for Tracked {
    type Item = Result<Chunk, LlmError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.succeed();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(chunk))) => {
                this.collected.absorb(&chunk);
                if matches!(chunk, Chunk::Text(_))
                    && let Err(error) = this.budget.spend_tokens(1)
                {
                    this.fail(&error);
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.fail(&error);
                Poll::Ready(Some(Err(error)))
            }
        }
    }
}
