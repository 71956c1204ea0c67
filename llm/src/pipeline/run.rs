//! Runs the four stages against their clients, streaming events, retrying a
//! failed stage per the profile, and stopping everything on cancellation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Curation, PipelineEvent, Profile, Stage, TokenBatcher, stage_messages, strip_prompt_echo};
use crate::council::{judge_messages, rank_by_scores};
use crate::{Budget, ChatMessage, ChatRequest, Chunk, Completion, LlmClient, LlmError};

#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// Token frames go out at most this often per stage.
    pub frame_interval: Duration,
    /// Pause before a failed stage's next attempt.
    pub stage_retry_delay: Duration,
    pub budget: Budget,
    /// Fixes sampling for reproducible runs (each stage derives its own seed).
    pub seed: Option<u64>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            frame_interval: Duration::from_millis(16),
            stage_retry_delay: Duration::from_millis(200),
            budget: Budget::unlimited(),
            seed: None,
        }
    }
}

/// What one stage produced.
#[derive(Clone, Debug, PartialEq)]
pub struct StageOutput {
    pub stage: Stage,
    pub model: String,
    pub provider: String,
    pub text: String,
    pub tokens: u64,
    pub cost_usd: f64,
    pub latency: Duration,
    pub attempts: u32,
}

/// A successful run: the curator's answer and every stage's output.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineOutcome {
    pub answer: String,
    pub stages: Vec<StageOutput>,
    pub elapsed: Duration,
    /// How the curator made the answer: `Select` (the draft or the refined
    /// answer as written) or `Rewrite` (its model wrote it); never `Auto`.
    pub curation: Curation,
}

impl PipelineOutcome {
    pub fn stage(&self, stage: Stage) -> Option<&StageOutput> {
        self.stages.iter().find(|output| output.stage == stage)
    }

    pub fn cost_usd(&self) -> f64 {
        self.stages.iter().map(|output| output.cost_usd).sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("stage {stage} failed after {attempts} attempt(s): {reason}")]
    StageFailed { stage: Stage, attempts: u32, reason: LlmError },
    #[error("cancelled")]
    Cancelled,
}

/// The pipeline with a client for each stage (one shared client by default).
#[derive(Clone)]
pub struct Pipeline {
    default_client: Arc<LlmClient>,
    stage_clients: HashMap<Stage, Arc<LlmClient>>,
}

/// One run's shared context.
struct Run<'a> {
    profile: &'a Profile,
    options: &'a PipelineOptions,
    events: &'a mpsc::Sender<PipelineEvent>,
    cancel: &'a CancellationToken,
    started: Instant,
}

impl Run<'_> {
    fn at_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1e3
    }

    async fn emit(&self, event: PipelineEvent) {
        // A consumer that went away does not stop the job.
        let _ = self.events.send(event).await;
    }
}

impl Pipeline {
    pub fn new(default_client: Arc<LlmClient>) -> Self {
        Self { default_client, stage_clients: HashMap::new() }
    }

    /// Runs `stage` on its own client (another provider, or a peer).
    pub fn with_stage_client(mut self, stage: Stage, client: Arc<LlmClient>) -> Self {
        self.stage_clients.insert(stage, client);
        self
    }

    fn client(&self, stage: Stage) -> &Arc<LlmClient> {
        self.stage_clients.get(&stage).unwrap_or(&self.default_client)
    }

    /// Runs the four stages. Succeeds only with a complete curator answer;
    /// cancelling `cancel` drops every open model stream at once.
    pub async fn run(
        &self,
        conversation: &[ChatMessage],
        profile: &Profile,
        options: &PipelineOptions,
        events: &mpsc::Sender<PipelineEvent>,
        cancel: &CancellationToken,
    ) -> Result<PipelineOutcome, PipelineError> {
        let run = Run { profile, options, events, cancel, started: Instant::now() };
        let messages = |stage, draft: &str, refined: &str, review: &str| {
            stage_messages(stage, profile, conversation, draft, refined, review)
        };
        let draft = self.stage(&run, Stage::Generator, messages(Stage::Generator, "", "", "")).await?;
        let (refined, review) = tokio::try_join!(
            self.stage(&run, Stage::Refiner, messages(Stage::Refiner, &draft.text, "", "")),
            self.stage(&run, Stage::Validator, messages(Stage::Validator, &draft.text, "", "")),
        )?;
        let curation = profile.curation.resolve(self.client(Stage::Curator).provider_name());
        let curated = match curation {
            Curation::Select => self.select(&run, conversation, [&draft, &refined]).await,
            _ => {
                let mut curated = self
                    .stage(
                        &run,
                        Stage::Curator,
                        messages(Stage::Curator, &draft.text, &refined.text, &review.text),
                    )
                    .await?;
                // Role prompts and echoed inputs are never part of the answer;
                // when some were streamed, the stream is corrected to match.
                let stripped = strip_prompt_echo(&curated.text);
                if stripped != curated.text.trim() {
                    let (stage, attempt) = (Stage::Curator, curated.attempts);
                    run.emit(PipelineEvent::Retracted { stage, attempt, at_ms: run.at_ms() }).await;
                    run.emit(PipelineEvent::Tokens { stage, text: stripped.clone(), at_ms: run.at_ms() })
                        .await;
                }
                curated.text = stripped;
                curated
            }
        };
        let outcome = PipelineOutcome {
            answer: curated.text.trim().to_string(),
            stages: vec![draft, refined, review, curated],
            elapsed: run.started.elapsed(),
            curation,
        };
        let tokens = outcome.stages.iter().map(|output| output.tokens).sum();
        run.emit(PipelineEvent::Done {
            answer: outcome.answer.clone(),
            tokens,
            cost_usd: outcome.cost_usd(),
            at_ms: run.at_ms(),
        })
        .await;
        Ok(outcome)
    }

    /// The curator as a selector: of the draft and the refined answer, the
    /// one the curator's model finds more likely as the reply to the
    /// conversation (see `council::judge_messages`); the draft when it
    /// cannot score or the refined answer is empty. No text is generated,
    /// so the answer is exactly one stage's output.
    async fn select(
        &self,
        run: &Run<'_>,
        conversation: &[ChatMessage],
        options: [&StageOutput; 2],
    ) -> StageOutput {
        let client = self.client(Stage::Curator);
        let model = client.resolve_model(&run.profile.stage(Stage::Curator).model).to_string();
        let provider = client.provider_name().to_string();
        run.emit(PipelineEvent::StageStarted {
            stage: Stage::Curator,
            model: model.clone(),
            provider: provider.clone(),
            attempt: 1,
            at_ms: run.at_ms(),
        })
        .await;
        let started = Instant::now();
        let texts: Vec<String> = options.iter().map(|o| o.text.trim().to_string()).collect();
        let mut best = 0;
        if !texts[1].is_empty() {
            match client.score(judge_messages(conversation), texts.clone()).await {
                Ok(Some(scores)) if scores.len() == texts.len() => best = rank_by_scores(&scores)[0] as usize,
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "the curator could not score; the draft stands"),
            }
        }
        let text = texts[best].clone();
        run.emit(PipelineEvent::Tokens { stage: Stage::Curator, text: text.clone(), at_ms: run.at_ms() })
            .await;
        let latency = started.elapsed();
        run.emit(PipelineEvent::StageFinished {
            stage: Stage::Curator,
            tokens: 0,
            cost_usd: 0.0,
            latency_ms: latency.as_secs_f64() * 1e3,
            cached: false,
            at_ms: run.at_ms(),
        })
        .await;
        StageOutput {
            stage: Stage::Curator,
            model,
            provider,
            text,
            tokens: 0,
            cost_usd: 0.0,
            latency,
            attempts: 1,
        }
    }

    async fn stage(
        &self,
        run: &Run<'_>,
        stage: Stage,
        messages: Vec<ChatMessage>,
    ) -> Result<StageOutput, PipelineError> {
        let client = self.client(stage);
        let settings = run.profile.stage(stage);
        let mut request = ChatRequest::new(client.resolve_model(&settings.model), messages);
        request.temperature = settings.temperature;
        request.max_tokens = settings.max_tokens;
        request.seed = run.options.seed.map(|seed| seed.wrapping_add(stage as u64));
        let attempts = run.profile.stage_attempts.max(1);
        for attempt in 1..=attempts {
            run.emit(PipelineEvent::StageStarted {
                stage,
                model: request.model.clone(),
                provider: client.provider_name().to_string(),
                attempt,
                at_ms: run.at_ms(),
            })
            .await;
            let started = Instant::now();
            // A retry exists because the last answer was not accepted: it must reach the provider.
            let fresh = attempt > 1;
            let mut shown = false;
            let outcome = self.attempt(run, stage, client, request.clone(), fresh, &mut shown).await;
            let error = match outcome {
                Ok(completion) => {
                    let latency = started.elapsed();
                    let cost_usd = completion.usage.and_then(|usage| usage.cost_usd).unwrap_or(0.0);
                    run.emit(PipelineEvent::StageFinished {
                        stage,
                        tokens: completion.tokens(),
                        cost_usd,
                        latency_ms: latency.as_secs_f64() * 1e3,
                        cached: completion.cached,
                        at_ms: run.at_ms(),
                    })
                    .await;
                    return Ok(StageOutput {
                        stage,
                        model: request.model,
                        provider: client.provider_name().to_string(),
                        tokens: completion.tokens(),
                        text: completion.text,
                        cost_usd,
                        latency,
                        attempts: attempt,
                    });
                }
                Err(LlmError::Cancelled) => return Err(PipelineError::Cancelled),
                Err(error) => error,
            };
            let will_retry = attempt < attempts && error.is_retryable();
            if shown {
                run.emit(PipelineEvent::Retracted { stage, attempt, at_ms: run.at_ms() }).await;
            }
            run.emit(PipelineEvent::Error {
                stage,
                message: error.to_string(),
                will_retry,
                at_ms: run.at_ms(),
            })
            .await;
            if !will_retry {
                return Err(PipelineError::StageFailed { stage, attempts: attempt, reason: error });
            }
            tokio::select! {
                _ = run.cancel.cancelled() => return Err(PipelineError::Cancelled),
                _ = tokio::time::sleep(run.options.stage_retry_delay) => {}
            }
        }
        unreachable!("the last attempt either returns its output or its error")
    }

    /// One attempt of one stage, streaming token frames as they come; `shown`
    /// turns true once a frame went out. `fresh` skips the result cache.
    async fn attempt(
        &self,
        run: &Run<'_>,
        stage: Stage,
        client: &LlmClient,
        request: ChatRequest,
        fresh: bool,
        shown: &mut bool,
    ) -> Result<Completion, LlmError> {
        let budget = &run.options.budget;
        let opening = async {
            if fresh {
                client.stream_fresh(request, budget).await
            } else {
                client.stream(request, budget).await
            }
        };
        let mut stream = tokio::select! {
            _ = run.cancel.cancelled() => return Err(LlmError::Cancelled),
            opened = opening => opened?,
        };
        let mut batcher = TokenBatcher::new(run.options.frame_interval);
        let mut ticker = tokio::time::interval(run.options.frame_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut completion = Completion::default();
        loop {
            let frame = tokio::select! {
                biased;
                // Returning drops `stream`, which closes the HTTP body or stops the model.
                _ = run.cancel.cancelled() => return Err(LlmError::Cancelled),
                chunk = stream.next() => match chunk {
                    None => break,
                    Some(chunk) => {
                        let chunk = chunk?;
                        completion.absorb(&chunk);
                        match &chunk {
                            Chunk::Text(text) => batcher.push(text, Instant::now()),
                            _ => None,
                        }
                    }
                },
                _ = ticker.tick() => batcher.flush_due(Instant::now()),
            };
            if let Some(text) = frame {
                *shown = true;
                run.emit(PipelineEvent::Tokens { stage, text, at_ms: run.at_ms() }).await;
            }
        }
        if let Some(text) = batcher.finish() {
            *shown = true;
            run.emit(PipelineEvent::Tokens { stage, text, at_ms: run.at_ms() }).await;
        }
        if completion.text.trim().is_empty() {
            return Err(LlmError::Malformed {
                provider: client.provider_name().to_string(),
                message: format!("{stage} produced an empty answer"),
            });
        }
        Ok(completion)
    }
}
