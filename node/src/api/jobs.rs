//! `/v1/jobs`: submit, read, follow (server-sent events) and cancel
//! federated jobs.

use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use hivemesh_llm::ChatMessage;
use hivemesh_protocol::{JobId, NodeId, TallyRule};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::{AppState, error};
use crate::federation::spec::{self, Facts, Mode};
use crate::federation::{FederationHandle, Submission, SubmitError};
use crate::net::{NodeClient, NodeError};
use crate::replica::{JobError, JobView};

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
    pub fn into_submission(self) -> Result<Submission, String> {
        let question = match (self.question, self.messages) {
            (Some(question), None) => vec![ChatMessage::user(question)],
            (None, Some(messages)) if !messages.is_empty() => messages,
            (None, Some(_)) => return Err("messages is empty".into()),
            (Some(_), Some(_)) => return Err("give either question or messages, not both".into()),
            (None, None) => return Err("a job needs a question (or messages)".into()),
        };
        let mode = self.mode.as_deref().unwrap_or("council").parse::<Mode>()?;
        let rule = self.rule.as_deref().unwrap_or("schulze").parse::<TallyRule>()?;
        Ok(Submission {
            question,
            mode,
            profile: self.profile.unwrap_or_else(|| "fast".into()),
            peers: self.peers.unwrap_or(3),
            quorum: self.quorum,
            rule,
            deadline: self.deadline_ms.map(Duration::from_millis),
            max_tokens: self.max_tokens,
        })
    }
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
        SubmitError::Busy(message) => error(StatusCode::TOO_MANY_REQUESTS, format!("busy: {message}")),
        SubmitError::Invalid(message) => error(StatusCode::BAD_REQUEST, message),
        SubmitError::Node(NodeError::Job(job)) => job_error(job),
        SubmitError::Node(other) => error(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
    }
}

fn job_error(error_: JobError) -> Response {
    match error_ {
        JobError::Unknown(job) => error(StatusCode::NOT_FOUND, format!("no job {job} on this node")),
        JobError::Busy { .. } => error(StatusCode::TOO_MANY_REQUESTS, error_.to_string()),
        other => error(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

fn node_error(error_: NodeError) -> Response {
    match error_ {
        NodeError::Job(job) => job_error(job),
        other => error(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
    }
}

fn parse_id(id: &str) -> Result<JobId, Box<Response>> {
    id.parse::<JobId>().map_err(|message| Box::new(error(StatusCode::BAD_REQUEST, message)))
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
    let submission = match request.into_submission() {
        Ok(s) => s,
        Err(message) => return error(StatusCode::BAD_REQUEST, format!("bad job: {message}")),
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

pub async fn list(State(state): State<AppState>, Query(query): Query<ListQuery>) -> Response {
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
        "spec": facts.spec.as_ref().map(|s| json!({
            "question": s.question, "mode": s.mode, "profile": s.profile,
            "participants": s.participants.iter().map(peer).collect::<Vec<_>>(),
            "stages": s.stages.iter().map(peer).collect::<Vec<_>>(),
            "quorum": s.quorum, "rule": s.rule, "created_ms": s.created_ms, "deadline_ms": s.deadline_ms,
        })),
        "candidates": facts.candidates.iter().map(|(p, o)| json!({ "peer": peer(p), "model": o.model, "tokens": o.tokens, "elapsed_ms": o.elapsed_ms })).collect::<Vec<_>>(),
        "stages": facts.stages.iter().map(|(s, p, o)| json!({ "stage": s.as_str(), "peer": peer(p), "tokens": o.tokens, "elapsed_ms": o.elapsed_ms })).collect::<Vec<_>>(),
        "round": facts.round.as_ref().map(|r| json!({ "candidates": r.candidates.iter().map(peer).collect::<Vec<_>>(), "missing": r.missing })),
        "ballots": facts.ballots.iter().map(|(p, kind, _)| json!({ "voter": peer(p), "kind": kind })).collect::<Vec<_>>(),
        "failures": facts.failures.iter().map(|(p, f)| json!({ "peer": peer(p), "part": f.part, "reason": f.reason })).collect::<Vec<_>>(),
        "reassigned": facts.assignments.iter().map(|(s, a)| json!({ "stage": s.as_str(), "to": peer(&a.peer), "reason": a.reason })).collect::<Vec<_>>(),
        "cancelled": facts.cancelled,
        "outcome": facts.outcome,
        "heads": view.heads,
    })
}

/// One event per contribution as it appears, `tokens` events for streamed
/// text, and `done` after the outcome.
pub async fn events(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let job = match parse_id(&id) {
        Ok(job) => job,
        Err(response) => return *response,
    };
    let (changes, frames) = (state.client.job_changes(), state.client.job_frames());
    if let Err(e) = state.client.job(job).await {
        return node_error(e);
    }
    let (tx, rx) = mpsc::channel::<Event>(256);
    tokio::spawn(follow(state.client.clone(), job, changes, frames, tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok::<_, Infallible>(event), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

async fn follow(
    client: NodeClient,
    job: JobId,
    mut changes: broadcast::Receiver<JobId>,
    mut frames: broadcast::Receiver<crate::replica::JobFrame>,
    tx: mpsc::Sender<Event>,
) {
    let mut seen: HashSet<(String, NodeId)> = HashSet::new();
    loop {
        let Ok(view) = client.job(job).await else { return };
        for c in &view.contributions {
            if !seen.insert((c.kind.clone(), c.author)) {
                continue;
            }
            let body: Value = serde_json::from_slice(&c.body).unwrap_or_else(|_| json!(hex::encode(&c.body)));
            let name = event_name(&c.kind);
            let data = json!({ "kind": c.kind, "peer": c.author.to_string(), "body": body });
            if tx.send(Event::default().event(name).data(data.to_string())).await.is_err() {
                return;
            }
            if c.kind == spec::OUTCOME {
                let _ = tx
                    .send(Event::default().event("done").data(json!({ "id": job.to_string() }).to_string()))
                    .await;
                return;
            }
        }
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Ok(changed) if changed != job => continue,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(_) => return,
                },
                frame = frames.recv() => match frame {
                    Ok(frame) if frame.job == job => {
                        let data = json!({ "part": frame.part, "peer": frame.peer, "attempt": frame.attempt, "text": frame.text });
                        if tx.send(Event::default().event("tokens").data(data.to_string())).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                },
                () = tx.closed() => return,
            }
        }
    }
}

fn event_name(kind: &str) -> &'static str {
    match kind {
        spec::SPEC => "job",
        spec::CANDIDATE => "candidate",
        spec::ROUND => "round",
        spec::FAILURE => "failure",
        spec::CANCEL => "cancelled",
        spec::OUTCOME => "outcome",
        k if k.starts_with(spec::BALLOT) => "ballot",
        k if k.starts_with("stage.") => "stage",
        k if k.starts_with("assign.") => "reassigned",
        _ => "contribution",
    }
}
