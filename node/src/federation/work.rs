//! The actions `plan` asks for, done with this node's own model client:
//! each ends by writing one signed contribution to the job's document.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hivemesh_gpu::ballot_box::Equivocation;
use hivemesh_gpu::engine::TallyEngine;
use hivemesh_llm::council::{
    LIKELIHOOD_AGREEMENT_WEIGHT, embedding_agreement, judge_messages, lexical_agreement, likelihood_scores,
    rank_by_scores,
};
use hivemesh_llm::pipeline::{Curation, Profiles, Stage, TokenBatcher, stage_messages, strip_prompt_echo};
use hivemesh_llm::{Budget, ChatMessage, ChatRequest, LlmClient};
use hivemesh_protocol::{
    Ballot, BallotChoice, Envelope, EquivocationProof, JobId, NodeId, NodeIdentity, TallyRule,
    encode_message, seal,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::outcome::{self, CouncilCount};
use super::quota::{PeerQuotas, QUOTA_CODE};
use super::spec::{self, Assignment, CANDIDATE, FAILURE, Facts, JobSpec, Missing, Output, ROUND, stage_kind};
use super::{Action, FederationStats, Limits};
use crate::net::{NodeClient, unix_ms};
use crate::replica::JobFrame;

/// Frames of streamed text go out at most this often per call.
const FRAME_INTERVAL: Duration = Duration::from_millis(16);

/// Everything a piece of work needs, shared by all of them.
pub struct WorkContext {
    pub node: NodeClient,
    pub me: NodeId,
    pub identity: Arc<NodeIdentity>,
    pub client: Arc<LlmClient>,
    pub profiles: Profiles,
    pub tally: Arc<TallyEngine>,
    pub stats: Arc<FederationStats>,
    pub limits: Limits,
    /// Model calls running at once (`Limits::max_running_calls`).
    pub calls: Arc<Semaphore>,
    /// Remote askers' hourly limits (ADR 0017).
    pub quotas: Arc<PeerQuotas>,
    /// Peers' embedding models, for voting when this node has none.
    pub peer_embeddings: super::embed::PeerEmbeddings,
}

/// Why a piece of work could not write its contribution (logged; the
/// loop retries what is still needed at the next change or tick).
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    #[error("the job has no round yet")]
    NoRound,
    #[error(transparent)]
    Node(#[from] crate::net::ClientError),
    #[error("cannot encode a contribution: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Profile(#[from] hivemesh_llm::pipeline::ProfileError),
    #[error("cannot sign a ballot: {0}")]
    Seal(#[from] hivemesh_protocol::MessageError),
    #[error("cannot encode a ballot: {0}")]
    Codec(#[from] hivemesh_protocol::CodecError),
    #[error(transparent)]
    Count(#[from] outcome::CountError),
    #[error("the tally task ended early: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A model-call action (`Answer`, `RunStage`) waiting its turn: a remote
/// asker's call is admitted against its quota first (refused at once, not
/// after the wait), then waits for a call slot holding only the job id and
/// the action; the job's facts are read and the call's future (kilobytes)
/// built only once a slot is free. 10,000 queued calls were 10,000 tasks
/// each holding both (`cargo bench --bench job_capacity`).
pub async fn run_model_call(ctx: Arc<WorkContext>, job: JobId, asker: NodeId, action: Action) {
    let part = match &action {
        Action::Answer => CANDIDATE.to_string(),
        Action::RunStage(stage) => stage_kind(*stage),
        _ => return Box::pin(run_with(ctx, job, None, action, None)).await,
    };
    if asker != ctx.me
        && let Err(refusal) = ctx.quotas.admit(&asker.to_string(), Instant::now())
    {
        tracing::info!(%job, part, %refusal, "model call refused");
        let failed = CallFailed { reason: refusal.to_string(), code: Some(QUOTA_CODE.to_string()) };
        if let Err(error) = put(&ctx, job, &spec::failure_kind(&part), &failed.into_failure(&part)).await {
            tracing::warn!(%job, %error, "job work failed");
        }
        return;
    }
    let Ok(permit) = call_slot(&ctx).await else { return };
    Box::pin(run_with(ctx, job, None, action, Some(permit))).await;
}

/// Does one action for `job`; errors are logged (the loop retries what is
/// still needed when the document next changes or the next tick comes).
pub async fn run(ctx: Arc<WorkContext>, job: JobId, facts: Facts, action: Action) {
    run_with(ctx, job, Some(facts), action, None).await;
}

/// `run`, with the facts read now when not given, and a model call's slot
/// when already held.
async fn run_with(
    ctx: Arc<WorkContext>,
    job: JobId,
    facts: Option<Facts>,
    action: Action,
    permit: Option<OwnedSemaphorePermit>,
) {
    let facts = match facts {
        Some(facts) => facts,
        None => match ctx.node.job(job).await {
            Ok(view) => Facts::read(job, &view.contributions),
            Err(error) => return tracing::debug!(%job, %error, "a queued model call's job is gone"),
        },
    };
    let Some(spec) = facts.spec.clone() else { return };
    let result = match action {
        Action::Answer => answer(&ctx, job, &spec, &facts, permit).await,
        Action::RunStage(stage) => run_stage(&ctx, job, &spec, &facts, stage, permit).await,
        Action::OpenRound(round) => put(&ctx, job, ROUND, &round).await,
        Action::Vote => vote(&ctx, job, &spec, &facts).await,
        Action::Conclude { absent } => conclude(&ctx, job, &spec, &facts, absent).await,
        Action::FinishPipeline => finish_pipeline(&ctx, job, &spec, &facts).await,
        Action::Reassign(stage, assignment) => reassign(&ctx, job, stage, &assignment).await,
        Action::Fail { reason, missing } => {
            FederationStats::bump(&ctx.stats.failed);
            let outcome = outcome::ended(&spec, unix_ms(), "failed", Some(reason), missing);
            put(&ctx, job, spec::OUTCOME, &outcome).await
        }
        Action::ConfirmCancel => {
            FederationStats::bump(&ctx.stats.cancelled);
            let reason = facts.cancelled.clone().unwrap_or_default();
            put(
                &ctx,
                job,
                spec::OUTCOME,
                &outcome::ended(&spec, unix_ms(), "cancelled", Some(reason), Vec::new()),
            )
            .await
        }
        Action::Stop => Ok(()),
    };
    if let Err(error) = result {
        tracing::warn!(%job, %error, "job work failed");
    }
}

async fn put<T: serde::Serialize>(
    ctx: &WorkContext,
    job: JobId,
    kind: &str,
    body: &T,
) -> Result<(), WorkError> {
    let bytes = serde_json::to_vec(body)?;
    let started = Instant::now();
    ctx.node.contribute(job, kind, bytes).await?;
    tracing::debug!(%job, kind, took_us = started.elapsed().as_micros() as u64, "contribution durable and pushed");
    Ok(())
}

async fn answer(
    ctx: &WorkContext,
    job: JobId,
    spec: &JobSpec,
    facts: &Facts,
    permit: Option<OwnedSemaphorePermit>,
) -> Result<(), WorkError> {
    let profile = ctx.profiles.get(&spec.profile)?;
    let messages = stage_messages(Stage::Generator, profile, &spec.question, "", "", "");
    let asker = facts.asker.unwrap_or(ctx.me);
    match call_model(ctx, job, spec, asker, (CANDIDATE, Stage::Generator), messages, permit).await {
        Ok(output) => put(ctx, job, CANDIDATE, &output).await,
        Err(failed) => put(ctx, job, FAILURE, &failed.into_failure(CANDIDATE)).await,
    }
}

async fn run_stage(
    ctx: &WorkContext,
    job: JobId,
    spec: &JobSpec,
    facts: &Facts,
    stage: Stage,
    permit: Option<OwnedSemaphorePermit>,
) -> Result<(), WorkError> {
    let profile = ctx.profiles.get(&spec.profile)?;
    let text = |s: Stage| facts.stage_output(s).map(|o| o.text.clone()).unwrap_or_default();
    let (draft, refined, review) = (text(Stage::Generator), text(Stage::Refiner), text(Stage::Validator));
    if stage == Stage::Curator && profile.curation.resolve(ctx.client.provider_name()) == Curation::Select {
        let output = select_answer(ctx, job, spec, stage, [draft, refined]).await;
        return put(ctx, job, &stage_kind(stage), &output).await;
    }
    let messages = stage_messages(stage, profile, &spec.question, &draft, &refined, &review);
    let asker = facts.asker.unwrap_or(ctx.me);
    let part = stage_kind(stage);
    match call_model(ctx, job, spec, asker, (&part, stage), messages, permit).await {
        Ok(output) => put(ctx, job, &part, &output).await,
        Err(failed) => put(ctx, job, &spec::failure_kind(&part), &failed.into_failure(&part)).await,
    }
}

async fn reassign(
    ctx: &WorkContext,
    job: JobId,
    stage: Stage,
    assignment: &Assignment,
) -> Result<(), WorkError> {
    tracing::info!(%job, stage = stage.as_str(), to = %assignment.peer, reason = %assignment.reason, "stage reassigned");
    put(ctx, job, &spec::assign_kind(stage), assignment).await
}

/// A model call that failed: the reason, and a code when the cause is one
/// the asker can act on (see `LlmError::code`).
struct CallFailed {
    reason: String,
    code: Option<String>,
}

impl CallFailed {
    fn other(reason: String) -> Self {
        Self { reason, code: None }
    }

    fn into_failure(self, part: &str) -> spec::Failure {
        spec::Failure { part: part.to_string(), reason: self.reason, code: self.code }
    }
}

/// One model call under the node's call limit, its text streamed to the
/// asker in frames. `permit`: the call slot, when the caller already waited
/// for it (and admitted a remote asker's call against its quota).
async fn call_model(
    ctx: &WorkContext,
    job: JobId,
    spec: &JobSpec,
    asker: NodeId,
    (part, stage): (&str, Stage),
    messages: Vec<ChatMessage>,
    permit: Option<OwnedSemaphorePermit>,
) -> Result<Output, CallFailed> {
    let profile = ctx.profiles.get(&spec.profile).map_err(|e| CallFailed::other(e.to_string()))?;
    let settings = profile.stage(stage);
    let max_tokens = settings.max_tokens.min(spec.max_tokens).min(ctx.limits.max_tokens_per_call);
    let mut request = ChatRequest::new(settings.model.clone(), messages);
    let sampling = &spec.sampling;
    request.temperature = sampling.temperature.unwrap_or(settings.temperature);
    request.max_tokens = max_tokens;
    request.seed = sampling.seed_for(&ctx.me, part).or_else(|| {
        // No seed asked for: still one per job, member and part, so that each
        // member's call is its own sample (identical requests would share one
        // cached answer) and a retry of a call repeats it.
        let mut job_seed = [0; 8];
        job_seed.copy_from_slice(&job.0[..8]);
        let unseeded = spec::Sampling { seed: Some(u64::from_le_bytes(job_seed)), ..sampling.clone() };
        unseeded.seed_for(&ctx.me, part)
    });
    request.top_p = sampling.top_p;
    request.stop = sampling.stop.clone();
    request.presence_penalty = sampling.presence_penalty;
    request.frequency_penalty = sampling.frequency_penalty;
    // A remote asker's call is admitted against its hourly quota before it
    // waits in line; its tokens and cost are charged when it ends.
    let remote = (asker != ctx.me).then(|| asker.to_string());
    let _permit = match permit {
        Some(permit) => permit,
        None => {
            if let Some(peer) = &remote
                && let Err(refusal) = ctx.quotas.admit(peer, Instant::now())
            {
                tracing::info!(%job, part, %refusal, "model call refused");
                return Err(CallFailed { reason: refusal.to_string(), code: Some(QUOTA_CODE.to_string()) });
            }
            call_slot(ctx).await.map_err(|_| CallFailed::other("the node is shutting down".to_string()))?
        }
    };
    let _running = Gauge::hold(&ctx.stats.running_calls);
    FederationStats::bump(&ctx.stats.model_calls);
    let started = Instant::now();
    let mut batcher = TokenBatcher::new(FRAME_INTERVAL);
    let peer = ctx.me.to_string();
    let send = |text: String| {
        let frame = JobFrame { job, part: part.to_string(), peer: peer.clone(), attempt: 1, text };
        ctx.node.try_send_frame(asker, frame);
    };
    let budget = Budget::new(None, Some(u64::from(max_tokens) + 16));
    // Boxed: the provider call's future is kilobytes, and a call waiting
    // for its permit above should not carry that much (10,000 queued jobs
    // are 10,000 such tasks; `cargo bench --bench job_capacity`).
    let result = Box::pin(ctx.client.complete(request, &budget, |text| {
        if let Some(frame) = batcher.push(text, Instant::now()) {
            send(frame);
        }
    }))
    .await;
    if let Some(rest) = batcher.finish() {
        send(rest);
    }
    if let (Some(peer), Ok(completion)) = (&remote, &result) {
        let usage = completion.usage;
        let tokens = usage.map_or(completion.chunks, |u| u.prompt_tokens.saturating_add(u.completion_tokens));
        let usd = usage.and_then(|u| u.cost_usd).unwrap_or(0.0);
        ctx.quotas.charge(peer, tokens, usd, Instant::now());
    }
    let label = vec![("part".to_string(), part.to_string())];
    ctx.stats.call_seconds.get_or_create(&label).observe(started.elapsed().as_secs_f64());
    match result {
        Ok(completion) => Ok(Output {
            // Role prompts and echoed inputs are never part of an answer.
            text: strip_prompt_echo(&completion.text),
            model: ctx.client.resolve_model(&settings.model).to_string(),
            tokens: completion.tokens(),
            elapsed_ms: started.elapsed().as_millis() as u64,
            prompt_tokens: completion.usage.map_or(0, |usage| usage.prompt_tokens),
            finish_reason: completion.finish_reason.clone(),
        }),
        Err(error) => {
            FederationStats::bump(&ctx.stats.model_call_failures);
            Err(CallFailed {
                reason: format!("{} failed on {}: {error}", part, ctx.me),
                code: error.code().map(str::to_string),
            })
        }
    }
}

/// Holds one count in a gauge (`queued_calls`, `running_calls`) for as long
/// as it lives: dropped when the wait or call ends, or when its task is
/// aborted (a cancelled job), so the gauge never leaks.
struct Gauge<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> Gauge<'a> {
    fn hold(gauge: &'a std::sync::atomic::AtomicU64) -> Self {
        FederationStats::bump(gauge);
        Self(gauge)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Waits for a model-call slot, counted in `queued_calls` meanwhile.
async fn call_slot(ctx: &WorkContext) -> Result<OwnedSemaphorePermit, tokio::sync::AcquireError> {
    let _queued = Gauge::hold(&ctx.stats.queued_calls);
    ctx.calls.clone().acquire_owned().await
}

/// Ranks the round's candidates by agreement, without their authors, and
/// casts this node's signed ballot.
async fn vote(ctx: &WorkContext, job: JobId, spec: &JobSpec, facts: &Facts) -> Result<(), WorkError> {
    let round = facts.round.as_ref().ok_or(WorkError::NoRound)?;
    let texts: Vec<&str> = round
        .candidates
        .iter()
        .map(|peer| facts.candidate_of(peer).map_or("", |o| o.text.as_str()))
        .collect();
    // A remote asker over its quota gets a ballot ranked by word overlap,
    // which calls no model (ADR 0017).
    let asker = facts.asker.unwrap_or(ctx.me);
    let free = asker != ctx.me && ctx.quotas.exhausted(&asker.to_string(), Instant::now());
    let ranking = judge(ctx, job, &spec.question, &texts, free).await;
    let choice = match spec.rule {
        TallyRule::Plurality | TallyRule::WeightedPlurality => BallotChoice::Single(ranking[0]),
        TallyRule::Approval => BallotChoice::Approve(ranking[..ranking.len().div_ceil(2)].to_vec()),
        TallyRule::Borda | TallyRule::Schulze => BallotChoice::Rank(ranking),
    };
    let ballot = Ballot { job, voter: ctx.me, rule: spec.rule, choice, weight: 1 };
    let now = unix_ms();
    let envelope = seal(&ctx.identity, now, now, &ballot)?;
    let bytes = encode_message(&envelope)?;
    ctx.node.contribute(job, spec::BALLOT, bytes).await?;
    FederationStats::bump(&ctx.stats.ballots_cast);
    Ok(())
}

/// This voter's ranking of the candidates, best first, and the method
/// counted in `hivemesh_votes_total{method}`: by its own model's likelihood
/// of each candidate (plus agreement) when its provider can score, else by
/// embedding agreement when it has an embedding model, else by word overlap
/// (see `hivemesh_llm::council`). A method that fails falls to the next;
/// `lexical_only` skips straight to word overlap.
async fn judge(
    ctx: &WorkContext,
    job: JobId,
    question: &[ChatMessage],
    texts: &[&str],
    lexical_only: bool,
) -> Vec<u32> {
    let owned: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
    let lexical = lexical_agreement(texts);
    if lexical_only {
        let label = vec![("method".to_string(), "lexical".to_string())];
        ctx.stats.votes_by_method.get_or_create(&label).inc();
        return rank_by_scores(&lexical);
    }
    let scored = match Box::pin(ctx.client.score(judge_messages(question), owned.clone())).await {
        Ok(Some(likelihood)) if likelihood.len() == texts.len() => {
            Some(likelihood_scores(&likelihood, &lexical, LIKELIHOOD_AGREEMENT_WEIGHT))
        }
        Ok(_) => None,
        Err(error) => {
            tracing::warn!(%job, %error, "likelihood scoring failed; ranking by agreement");
            None
        }
    };
    let (scores, method) = match scored {
        Some(scores) => (scores, "likelihood"),
        None => match Box::pin(ctx.client.embed(owned.clone())).await {
            Ok(Some(embeddings)) if embeddings.len() == texts.len() => {
                (embedding_agreement(&embeddings), "embeddings")
            }
            Ok(_) => match Box::pin(ctx.peer_embeddings.embed(&ctx.node, ctx.me, &owned)).await {
                Some(embeddings) => (embedding_agreement(&embeddings), "peer_embeddings"),
                None => (lexical, "lexical"),
            },
            Err(error) => {
                tracing::warn!(%job, %error, "embeddings failed; ranking by word overlap");
                (lexical, "lexical")
            }
        },
    };
    let label = vec![("method".to_string(), method.to_string())];
    ctx.stats.votes_by_method.get_or_create(&label).inc();
    rank_by_scores(&scores)
}

/// A curator that selects: of `options` (the pipeline's draft and refined
/// answer), the one this node's model finds most likely as the answer; the
/// first non-empty one when it cannot score. Never fails: selecting needs
/// no model call that could.
async fn select_answer(
    ctx: &WorkContext,
    job: JobId,
    spec: &JobSpec,
    stage: Stage,
    options: [String; 2],
) -> Output {
    let started = Instant::now();
    let present: Vec<String> = options.into_iter().filter(|text| !text.trim().is_empty()).collect();
    let mut best = 0;
    if present.len() > 1 {
        match Box::pin(ctx.client.score(judge_messages(&spec.question), present.clone())).await {
            Ok(Some(scores)) if scores.len() == present.len() => best = rank_by_scores(&scores)[0] as usize,
            Ok(_) => {}
            Err(error) => tracing::warn!(%job, %error, "scoring failed; the draft stands"),
        }
    }
    let model = ctx.profiles.get(&spec.profile).map(|p| p.stage(stage).model.clone()).unwrap_or_default();
    Output {
        text: present.get(best).cloned().unwrap_or_default(),
        model: ctx.client.resolve_model(&model).to_string(),
        tokens: 0,
        elapsed_ms: started.elapsed().as_millis() as u64,
        prompt_tokens: 0,
        finish_reason: Some("stop".into()),
    }
}

/// Validates and tallies the ballots, hands the winner and the runner-up to
/// the curator, and writes the outcome with everything needed to re-check it.
async fn conclude(
    ctx: &WorkContext,
    job: JobId,
    spec: &JobSpec,
    facts: &Facts,
    absent: Vec<Missing>,
) -> Result<(), WorkError> {
    let engine = ctx.tally.clone();
    let (counting_spec, counting_facts) = (spec.clone(), facts.clone());
    let now = unix_ms();
    let count = tokio::task::spawn_blocking(move || {
        outcome::count_council(job, &counting_spec, &counting_facts, &absent, &engine, now)
    })
    .await??;
    report_equivocations(ctx, &count.equivocations, &count.envelopes).await;
    let CouncilCount { mut outcome, winner, runner_up, voters, mut contributions, .. } = count;
    let Some(winner) = winner else {
        FederationStats::bump(&ctx.stats.failed);
        return put(ctx, job, spec::OUTCOME, &outcome).await;
    };
    FederationStats::bump(&ctx.stats.tallies);
    if let Some(backend) = outcome.tally.as_ref().and_then(|t| t["backend"].as_str()) {
        let label = vec![("backend".to_string(), backend.to_string())];
        let ballots = outcome.tally.as_ref().and_then(|t| t["result"]["ballots"].as_f64()).unwrap_or(0.0);
        ctx.stats.tally_ballots.get_or_create(&label).observe(ballots);
    }
    FederationStats::bump(&ctx.stats.finished);
    let round = facts.round.clone().ok_or(WorkError::NoRound)?;
    let text_of =
        |i: usize| facts.candidate_of(&round.candidates[i]).map(|o| o.text.clone()).unwrap_or_default();
    let profile = ctx.profiles.get(&spec.profile)?;
    if profile.curation.resolve(ctx.client.provider_name()) == Curation::Select {
        outcome.answer = Some(text_of(winner));
        outcome.curation = Some(Curation::Select.as_str().into());
        outcome.contributions = contributions;
        return put(ctx, job, spec::OUTCOME, &outcome).await;
    }
    let review = format!(
        "{voters} council members voted; this answer ranked first under {:?}, the refined answer second.",
        spec.rule
    );
    let refined = runner_up.map(text_of).unwrap_or_default();
    let messages =
        stage_messages(Stage::Curator, profile, &spec.question, &text_of(winner), &refined, &review);
    let me = ctx.me;
    match call_model(ctx, job, spec, me, ("curator", Stage::Curator), messages, None).await {
        Ok(output) if !output.text.is_empty() => {
            contributions.push(outcome::attributed("curator", &me, &output));
            outcome.answer = Some(output.text);
            outcome.curation = Some(Curation::Rewrite.as_str().into());
        }
        failed => {
            // The council's winner still stands as the answer.
            let reason = match failed {
                Err(failed) => failed.reason,
                Ok(_) => "it wrote nothing but an echo of its prompt".to_string(),
            };
            outcome.answer = Some(text_of(winner));
            outcome.curation = Some("fallback".into());
            outcome.error =
                Some(format!("the curator failed, so this is the winning candidate as written: {reason}"));
        }
    }
    outcome.contributions = contributions;
    put(ctx, job, spec::OUTCOME, &outcome).await
}

async fn finish_pipeline(
    ctx: &WorkContext,
    job: JobId,
    spec: &JobSpec,
    facts: &Facts,
) -> Result<(), WorkError> {
    let outcome = outcome::pipeline_outcome(spec, facts, unix_ms());
    FederationStats::bump(&ctx.stats.finished);
    put(ctx, job, spec::OUTCOME, &outcome).await
}

/// Hands each equivocation's two signed ballots to the node, which verifies
/// them again, stores the proof and gossips it (docs/adr/0019).
async fn report_equivocations(ctx: &WorkContext, found: &[Equivocation], envelopes: &[Envelope]) {
    for equivocation in found {
        let [a, b] = equivocation.ballots;
        let (Some(a), Some(b)) = (envelopes.get(a), envelopes.get(b)) else { continue };
        let proof = EquivocationProof { ballots: [a.clone(), b.clone()] };
        match ctx.node.report_equivocation(proof).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::error!(%error, voter = %equivocation.voter, "the tally's equivocation did not verify as a proof")
            }
            Err(error) => tracing::debug!(%error, "could not hand an equivocation proof to the node"),
        }
    }
}
