//! `/v1/jobs`: submit, read, follow (server-sent events) and cancel
//! federated jobs.

use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use hivemesh_crdt::job_doc::Verified;
use hivemesh_llm::ChatMessage;
use hivemesh_llm::pipeline::Stage;
use hivemesh_protocol::{Ballot, Envelope, JobId, NodeId, TallyRule, decode_message, open};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::{ApiError, AppState, error};
use crate::federation::spec::{self, Facts, Mode};
use crate::federation::{FederationHandle, Limits, Submission, SubmitError};
use crate::net::{ClientError, NodeClient};
use crate::replica::{JobChanged, JobError, JobView};

/// Longest deadline a job may ask for: one hour.
pub const MAX_DEADLINE_MS: u64 = 60 * 60 * 1000;

/// The context window a job's prompt must fit, in tokens: the embedded
/// model's (candle's `MAX_SEQ_LEN`), the smallest a mesh is likely to hold.
pub const CONTEXT_TOKENS: usize = 4096;

/// Characters per token when estimating a prompt's length (English text
/// runs at about four; an estimate that refuses only what cannot fit).
pub const CHARS_PER_TOKEN: usize = 4;

/// Roles a message may have (`developer` is OpenAI's newer `system`).
pub const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

/// A job as `POST /v1/jobs` takes it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub question: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
    pub mode: Option<String>,
    pub profile: Option<String>,
    /// Council size, the asker included (0: every live member).
    pub peers: Option<usize>,
    pub quorum: Option<u32>,
    pub rule: Option<String>,
    pub deadline_ms: Option<u64>,
    pub max_tokens: Option<u32>,
}

impl JobRequest {
    /// Checks every field against `limits`; the error names the field at fault.
    pub fn into_submission(self, limits: &Limits) -> Result<Submission, ApiError> {
        let question = match (self.question, self.messages) {
            (Some(question), None) => vec![ChatMessage::user(question)],
            (None, Some(messages)) if !messages.is_empty() => messages,
            (None, Some(_)) => return Err(ApiError::invalid("messages", "messages is empty")),
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid("messages", "give either question or messages, not both"));
            }
            (None, None) => {
                return Err(ApiError::invalid("question", "a job needs a question (or messages)"));
            }
        };
        let question = check_messages(question)?;
        let mode = self
            .mode
            .as_deref()
            .unwrap_or("council")
            .parse::<Mode>()
            .map_err(|m| ApiError::invalid("mode", m.to_string()))?;
        let rule = self
            .rule
            .as_deref()
            .unwrap_or("schulze")
            .parse::<TallyRule>()
            .map_err(|e| ApiError::invalid("rule", e.to_string()))?;
        let deadline = self.deadline_ms.map(check_deadline).transpose()?;
        let max_tokens = self.max_tokens.map(|n| check_max_tokens("max_tokens", n, limits)).transpose()?;
        check_context(&question, max_tokens.unwrap_or(limits.max_tokens_per_call))?;
        Ok(Submission {
            question,
            mode,
            profile: self.profile.unwrap_or_else(|| "fast".into()),
            peers: self.peers.unwrap_or(3),
            quorum: self.quorum,
            rule,
            deadline,
            max_tokens,
        })
    }
}

/// `deadline_ms` between 1 and [`MAX_DEADLINE_MS`].
pub(crate) fn check_deadline(ms: u64) -> Result<Duration, ApiError> {
    if (1..=MAX_DEADLINE_MS).contains(&ms) {
        Ok(Duration::from_millis(ms))
    } else {
        Err(ApiError::invalid(
            "deadline_ms",
            format!("deadline_ms must be between 1 and {MAX_DEADLINE_MS} (ms); got {ms}"),
        ))
    }
}

/// A completion-token limit between 1 and the node's per-call limit.
pub(crate) fn check_max_tokens(field: &str, n: u32, limits: &Limits) -> Result<u32, ApiError> {
    let most = limits.max_tokens_per_call;
    if (1..=most).contains(&n) {
        Ok(n)
    } else {
        Err(ApiError::invalid(
            field,
            format!("{field} must be between 1 and {most} (this node's limit per model call); got {n}"),
        ))
    }
}

/// Known roles, and the fields each role needs.
pub(crate) fn check_messages(messages: Vec<ChatMessage>) -> Result<Vec<ChatMessage>, ApiError> {
    messages
        .into_iter()
        .enumerate()
        .map(|(i, mut message)| {
            match message.role.as_str() {
                "developer" => message.role = "system".into(),
                "tool" if message.tool_call_id.is_none() => {
                    return Err(ApiError::invalid(
                        format!("messages[{i}].tool_call_id"),
                        format!("messages[{i}]: a tool message needs tool_call_id"),
                    ));
                }
                role if !ROLES.contains(&role) => {
                    return Err(ApiError::invalid(
                        format!("messages[{i}].role"),
                        format!("messages[{i}]: unknown role {role:?}: use one of {}", ROLES.join(", ")),
                    ));
                }
                _ => {}
            }
            if message.tool_calls.is_some() && message.role != "assistant" {
                return Err(ApiError::invalid(
                    format!("messages[{i}].tool_calls"),
                    format!("messages[{i}]: only an assistant message has tool_calls"),
                ));
            }
            Ok(message)
        })
        .collect()
}

/// Refuses up front a prompt that cannot fit [`CONTEXT_TOKENS`] with room
/// for `max_tokens` of answer (estimated at [`CHARS_PER_TOKEN`]).
pub(crate) fn check_context(messages: &[ChatMessage], max_tokens: u32) -> Result<(), ApiError> {
    let chars: usize = messages
        .iter()
        .map(|m| {
            let calls: usize = m
                .tool_calls
                .iter()
                .flatten()
                .map(|c| c.function.name.len() + c.function.arguments.len())
                .sum();
            m.content.chars().count() + calls
        })
        .sum();
    let estimate = chars / CHARS_PER_TOKEN;
    let room = CONTEXT_TOKENS.saturating_sub(max_tokens as usize);
    if estimate > room {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "the prompt is about {estimate} tokens ({chars} characters), longer than the {room} tokens the models' \
                 {CONTEXT_TOKENS}-token context leaves beside {max_tokens} tokens of answer: shorten it"
            ),
        )
        .with_code("context_length_exceeded"));
    }
    Ok(())
}

pub(crate) fn federation(state: &AppState) -> Result<&FederationHandle, Box<Response>> {
    state.jobs.as_ref().ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_IMPLEMENTED,
            "this node takes no part in jobs (started without a model provider)",
        ))
    })
}

pub(crate) fn submit_error(error_: SubmitError) -> Response {
    match error_ {
        SubmitError::Busy(message) => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, format!("busy: {message}"))
                .with_code("busy")
                .into_response()
        }
        SubmitError::Invalid(message) => error(StatusCode::BAD_REQUEST, message),
        SubmitError::Node(ClientError::Job(job)) => job_error(job),
        SubmitError::Node(other) => error(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
    }
}

fn job_error(error_: JobError) -> Response {
    match error_ {
        JobError::Unknown(job) => error(StatusCode::NOT_FOUND, format!("no job {job} on this node")),
        JobError::Busy { .. } => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, error_.to_string()).with_code("busy").into_response()
        }
        other => error(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

fn node_error(error_: ClientError) -> Response {
    match error_ {
        ClientError::Job(job) => job_error(job),
        other => error(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
    }
}

fn parse_id(id: &str) -> Result<JobId, Box<Response>> {
    id.parse::<JobId>().map_err(|e| Box::new(ApiError::invalid("id", e.to_string()).into_response()))
}

pub async fn submit(
    State(state): State<AppState>,
    body: Result<Json<JobRequest>, JsonRejection>,
) -> Response {
    let federation = match federation(&state) {
        Ok(f) => f,
        Err(response) => return *response,
    };
    let request = match body {
        Ok(Json(request)) => request,
        Err(rejection) => return error(rejection.status(), format!("bad job: {}", rejection.body_text())),
    };
    let submission = match request.into_submission(&federation.limits) {
        Ok(s) => s,
        Err(e) => return ApiError { message: format!("bad job: {}", e.message), ..e }.into_response(),
    };
    match federation.submit(submission).await {
        Ok(job) => (
            StatusCode::ACCEPTED,
            Json(json!({ "id": job.to_string(), "url": format!("/v1/jobs/{job}"), "events": format!("/v1/jobs/{job}/events") })),
        )
            .into_response(),
        Err(e) => submit_error(e),
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
}

pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => {
            return ApiError::invalid(
                "limit",
                format!("{}: limit is a count from 0 to 1000", rejection.body_text()),
            )
            .into_response();
        }
    };
    let limit = query.limit.unwrap_or(20).min(1000);
    let jobs = match state.client.jobs(limit).await {
        Ok(jobs) => jobs,
        Err(e) => return node_error(e),
    };
    let mut rows = Vec::new();
    for (job, created_ms, finished_ms) in jobs {
        let summary = match state.client.job(job).await {
            Ok(view) => summary(&view),
            Err(_) => json!({ "id": job.to_string() }),
        };
        rows.push(json!({ "created_ms": created_ms, "finished_ms": finished_ms, "job": summary }));
    }
    Json(json!({ "jobs": rows })).into_response()
}

pub async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let job = match parse_id(&id) {
        Ok(job) => job,
        Err(response) => return *response,
    };
    match state.client.job(job).await {
        Ok(view) => Json(job_json(&view)).into_response(),
        Err(e) => node_error(e),
    }
}

pub async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let federation = match federation(&state) {
        Ok(f) => f,
        Err(response) => return *response,
    };
    let job = match parse_id(&id) {
        Ok(job) => job,
        Err(response) => return *response,
    };
    match federation.cancel(job).await {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({ "id": id, "status": "cancelling" }))).into_response(),
        Err(SubmitError::Invalid(message)) => error(StatusCode::CONFLICT, message),
        Err(e) => submit_error(e),
    }
}

/// The job's state in one word.
pub fn status_of(facts: &Facts) -> &str {
    if let Some(outcome) = &facts.outcome {
        return &outcome.status;
    }
    if facts.cancelled.is_some() {
        "cancelling"
    } else if facts.round.is_some() {
        "voting"
    } else {
        "running"
    }
}

fn summary(view: &JobView) -> Value {
    let facts = Facts::read(view.job, &view.contributions);
    let question = facts.spec.as_ref().and_then(|s| s.question.last()).map(|m| m.content.clone());
    json!({
        "id": view.job.to_string(),
        "status": status_of(&facts),
        "mode": facts.spec.as_ref().map(|s| s.mode),
        "question": question,
        "answer": facts.outcome.as_ref().and_then(|o| o.answer.clone()),
    })
}

/// Everything a reader of the job's document can see.
pub fn job_json(view: &JobView) -> Value {
    let facts = Facts::read(view.job, &view.contributions);
    let peer = |p: &NodeId| p.to_string();
    json!({
        "id": view.job.to_string(),
        "status": status_of(&facts),
        "asker": facts.asker.as_ref().map(peer),
        "spec": facts.spec.as_ref().map(spec_json),
        "candidates": facts.candidates.iter().map(|(p, o)| json!({ "peer": peer(p), "model": o.model, "tokens": o.tokens, "elapsed_ms": o.elapsed_ms })).collect::<Vec<_>>(),
        "stages": facts.stages.iter().map(|(s, p, o)| json!({ "stage": s.as_str(), "peer": peer(p), "tokens": o.tokens, "elapsed_ms": o.elapsed_ms })).collect::<Vec<_>>(),
        "round": facts.round.as_ref().map(|r| json!({ "candidates": r.candidates.iter().map(peer).collect::<Vec<_>>(), "missing": r.missing })),
        "ballots": facts.ballots.iter().map(|(p, kind, _)| json!({ "voter": peer(p), "kind": kind })).collect::<Vec<_>>(),
        "failures": facts.failures.iter().map(|(p, f)| json!({ "peer": peer(p), "part": f.part, "reason": f.reason, "code": f.code })).collect::<Vec<_>>(),
        "reassigned": facts.assignments.iter().map(|(s, a)| json!({ "stage": s.as_str(), "to": peer(&a.peer), "reason": a.reason })).collect::<Vec<_>>(),
        "cancelled": facts.cancelled,
        "outcome": facts.outcome,
        "heads": view.heads,
    })
}

#[derive(Deserialize)]
pub struct EventsQuery {
    /// Cancel the job (on every participant) when this client hangs up
    /// before it ends: for a client following a job it asked.
    #[serde(default)]
    cancel_on_disconnect: bool,
}

/// One event per contribution as it appears, `tokens` events for streamed
/// text, and `done` after the outcome. A finished job replays every
/// contribution, typed and in the order the job made them.
pub async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => {
            return ApiError::invalid("cancel_on_disconnect", rejection.body_text()).into_response();
        }
    };
    let job = match parse_id(&id) {
        Ok(job) => job,
        Err(response) => return *response,
    };
    let (changes, frames) = (state.client.job_changes(), state.client.job_frames());
    if let Err(e) = state.client.job(job).await {
        return node_error(e);
    }
    let guard = state.jobs.clone().filter(|_| query.cancel_on_disconnect).map(|f| CancelOnDrop::new(f, job));
    let (tx, rx) = mpsc::channel::<Event>(256);
    tokio::spawn(async move {
        let finished = follow(state.client.clone(), job, changes, frames, tx).await;
        if let (true, Some(guard)) = (finished, guard) {
            guard.disarm();
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok::<_, Infallible>(event), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response()
}

/// How often an idle event stream sends a comment: also how soon a client's
/// hang-up is noticed.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(1);

/// Cancels a job when dropped, unless disarmed first: held by whatever
/// serves a client that asked the job, so that a hang-up stops it.
pub(crate) struct CancelOnDrop {
    federation: Option<FederationHandle>,
    job: JobId,
}

impl CancelOnDrop {
    pub(crate) fn new(federation: FederationHandle, job: JobId) -> Self {
        Self { federation: Some(federation), job }
    }

    /// The job ended (or was handed over): nothing to cancel.
    pub(crate) fn disarm(mut self) {
        self.federation = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(federation) = self.federation.take() {
            let job = self.job;
            tracing::info!(%job, "the client hung up; cancelling its job");
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if let Err(e) = federation.cancel(job).await {
                        tracing::debug!(%job, error = %e, "cancel after hang-up");
                    }
                });
            }
        }
    }
}

/// Sends the job's events until its outcome (true) or until the client
/// goes or the node stops (false). The job is read once (and again only
/// after falling behind); then each pushed change carries its new state.
async fn follow(
    client: NodeClient,
    job: JobId,
    mut changes: broadcast::Receiver<JobChanged>,
    mut frames: broadcast::Receiver<crate::replica::JobFrame>,
    tx: mpsc::Sender<Event>,
) -> bool {
    let mut seen: HashSet<(String, NodeId)> = HashSet::new();
    let Ok(mut view) = client.job(job).await else { return false };
    loop {
        let mut fresh: Vec<&Verified> =
            view.contributions.iter().filter(|c| seen.insert((c.kind.clone(), c.author))).collect();
        fresh.sort_by_key(|c| replay_rank(&c.kind));
        for c in fresh {
            let data =
                json!({ "kind": c.kind, "peer": c.author.to_string(), "body": typed_body(&c.kind, &c.body) });
            if tx.send(Event::default().event(event_name(&c.kind)).data(data.to_string())).await.is_err() {
                return false;
            }
            if c.kind == spec::OUTCOME {
                let _ = tx
                    .send(Event::default().event("done").data(json!({ "id": job.to_string() }).to_string()))
                    .await;
                return true;
            }
        }
        view = loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Ok(changed) if changed.job() == job => break changed.view,
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => match client.job(job).await {
                        Ok(view) => break view,
                        Err(_) => return false,
                    },
                    Err(_) => return false,
                },
                frame = frames.recv() => match frame {
                    Ok(frame) if frame.job == job => {
                        let data = json!({ "part": frame.part, "peer": frame.peer, "attempt": frame.attempt, "text": frame.text });
                        if tx.send(Event::default().event("tokens").data(data.to_string())).await.is_err() {
                            return false;
                        }
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return false,
                },
                () = tx.closed() => return false,
                () = client.stopped() => {
                    let error = super::openai::node_stopped(job);
                    let _ = tx.send(Event::default().event("error").data(error.body().to_string())).await;
                    return false;
                }
            }
        };
    }
}

/// Where a contribution comes in a replay: the order a job makes them.
fn replay_rank(kind: &str) -> u8 {
    match kind {
        spec::SPEC => 0,
        spec::CANDIDATE => 1,
        k if k.starts_with("assign.") => 2,
        k if k.starts_with("stage.") => match spec::stage_named(&k["stage.".len()..]) {
            Some(stage) => 3 + Stage::ALL.iter().position(|s| *s == stage).unwrap_or(0) as u8,
            None => 7,
        },
        k if spec::is_failure(k) => 8,
        spec::ROUND => 9,
        k if k.starts_with(spec::BALLOT) => 10,
        spec::CANCEL => 11,
        spec::OUTCOME => 13,
        _ => 12,
    }
}

/// A contribution's body as JSON, peers as their id strings.
fn typed_body(kind: &str, body: &[u8]) -> Value {
    let peer = |p: &NodeId| p.to_string();
    let parsed = || serde_json::from_slice::<Value>(body).ok();
    let typed = match kind {
        spec::SPEC => serde_json::from_slice::<spec::JobSpec>(body).ok().map(|s| spec_json(&s)),
        spec::ROUND => serde_json::from_slice::<spec::Round>(body)
            .ok()
            .map(|r| json!({ "candidates": r.candidates.iter().map(peer).collect::<Vec<_>>(), "missing": r.missing })),
        spec::CANCEL => Some(json!({ "reason": String::from_utf8_lossy(body) })),
        k if k.starts_with("assign.") => serde_json::from_slice::<spec::Assignment>(body)
            .ok()
            .map(|a| json!({ "peer": peer(&a.peer), "reason": a.reason })),
        k if k.starts_with(spec::BALLOT) => Some(ballot_json(body)),
        _ => parsed(),
    };
    typed.or_else(parsed).unwrap_or_else(|| json!({ "unreadable": hex::encode(body) }))
}

/// A signed ballot: who, under which rule, what they chose; the envelope in hex.
fn ballot_json(bytes: &[u8]) -> Value {
    let envelope = decode_message::<Envelope>(bytes).ok();
    let ballot = envelope.as_ref().and_then(|e| open::<Ballot>(e).ok());
    json!({
        "voter": envelope.as_ref().map(|e| e.sender.to_string()),
        "rule": ballot.as_ref().map(|b| b.rule.name()),
        "choice": ballot.as_ref().map(|b| &b.choice),
        "weight": ballot.as_ref().map(|b| b.weight),
        "envelope": hex::encode(bytes),
    })
}

fn spec_json(s: &spec::JobSpec) -> Value {
    let peer = |p: &NodeId| p.to_string();
    json!({
        "question": s.question, "mode": s.mode, "profile": s.profile,
        "participants": s.participants.iter().map(peer).collect::<Vec<_>>(),
        "stages": s.stages.iter().map(peer).collect::<Vec<_>>(),
        "quorum": s.quorum, "rule": s.rule, "created_ms": s.created_ms, "deadline_ms": s.deadline_ms,
        "max_tokens": s.max_tokens, "sampling": s.sampling,
    })
}

fn event_name(kind: &str) -> &'static str {
    match kind {
        spec::SPEC => "job",
        spec::CANDIDATE => "candidate",
        spec::ROUND => "round",
        k if spec::is_failure(k) => "failure",
        spec::CANCEL => "cancelled",
        spec::OUTCOME => "outcome",
        k if k.starts_with(spec::BALLOT) => "ballot",
        k if k.starts_with("stage.") => "stage",
        k if k.starts_with("assign.") => "reassigned",
        _ => "contribution",
    }
}
