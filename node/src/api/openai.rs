//! `POST /v1/chat/completions`, OpenAI-compatible: any OpenAI client uses
//! the whole mesh as one model. `model` picks the mode and profile:
//! `hivemesh` or `council` (council, fast profile), `pipeline`, or
//! `council:PROFILE` / `pipeline:PROFILE`. The job's outcome (candidates,
//! ballots, tally) rides along in an extra `hivemesh` field.

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use hivemesh_llm::ChatMessage;
use hivemesh_protocol::{JobId, TallyRule};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::AppState;
use super::jobs::{federation, submit_error};
use crate::federation::Submission;
use crate::federation::spec::{Facts, Mode, Outcome};
use crate::net::NodeClient;

/// How long a request waits for its job beyond the job's own deadline.
const DEFAULT_WAIT: Duration = Duration::from_secs(180);

#[derive(Debug, Deserialize)]
pub struct ChatBody {
    model: String,
    messages: Vec<IncomingMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default, alias = "max_completion_tokens")]
    max_tokens: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct IncomingMessage {
    role: String,
    content: Value,
}

/// OpenAI's error body: `{"error": {"message", "type", "code"}}`.
fn openai_error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    let body = json!({ "error": { "message": message.into(), "type": kind, "code": status.as_u16() } });
    (status, Json(body)).into_response()
}

/// `hivemesh`, `council`, `pipeline`, optionally `:PROFILE`.
fn parse_model(model: &str, profiles: &[String]) -> Result<(Mode, String), String> {
    let (mode, profile) = model.split_once(':').unwrap_or((model, "fast"));
    let mode = match mode {
        "hivemesh" | "council" => Mode::Council,
        "pipeline" => Mode::Pipeline,
        other => {
            return Err(format!(
                "unknown model {other:?}: use hivemesh, council, pipeline, council:PROFILE or pipeline:PROFILE"
            ));
        }
    };
    if !profiles.iter().any(|p| p == profile) {
        return Err(format!("unknown profile {profile:?}: this node has {}", profiles.join(", ")));
    }
    Ok((mode, profile.to_string()))
}

fn text_of(content: &Value) -> Result<String, String> {
    match content {
        Value::String(text) => Ok(text.clone()),
        Value::Array(parts) => parts
            .iter()
            .map(|part| {
                match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(text)) => Ok(text.to_string()),
                    _ => Err("only text content parts are supported".to_string()),
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|parts| parts.join("")),
        Value::Null => Ok(String::new()),
        _ => Err("message content must be a string or a list of text parts".into()),
    }
}

pub async fn models(State(state): State<AppState>) -> Response {
    let profiles = state.jobs.as_ref().map(|j| j.profiles.clone()).unwrap_or_default();
    let mut ids = vec!["hivemesh".to_string(), "council".into(), "pipeline".into()];
    for profile in &profiles {
        ids.push(format!("council:{profile}"));
        ids.push(format!("pipeline:{profile}"));
    }
    let data: Vec<Value> =
        ids.iter().map(|id| json!({ "id": id, "object": "model", "owned_by": "hivemesh" })).collect();
    Json(json!({ "object": "list", "data": data })).into_response()
}

pub async fn chat_completions(
    State(state): State<AppState>,
    body: Result<Json<ChatBody>, JsonRejection>,
) -> Response {
    let federation = match federation(&state) {
        Ok(f) => f.clone(),
        Err(response) => return *response,
    };
    let body = match body {
        Ok(Json(body)) => body,
        Err(rejection) => {
            return openai_error(rejection.status(), "invalid_request_error", rejection.body_text());
        }
    };
    let (mode, profile) = match parse_model(&body.model, &federation.profiles) {
        Ok(parsed) => parsed,
        Err(message) => return openai_error(StatusCode::NOT_FOUND, "model_not_found", message),
    };
    let mut question = Vec::new();
    for (index, message) in body.messages.iter().enumerate() {
        match text_of(&message.content) {
            Ok(content) => question.push(ChatMessage { role: message.role.clone(), content }),
            Err(reason) => {
                return openai_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    format!("messages[{index}]: {reason}"),
                );
            }
        }
    }
    if question.is_empty() {
        return openai_error(StatusCode::BAD_REQUEST, "invalid_request_error", "messages is empty");
    }
    let submission = Submission {
        question,
        mode,
        profile,
        peers: 3,
        quorum: None,
        rule: TallyRule::Schulze,
        deadline: None,
        max_tokens: body.max_tokens,
    };
    let (changes, frames) = (state.client.job_changes(), state.client.job_frames());
    let job = match federation.submit(submission).await {
        Ok(job) => job,
        Err(e) => return submit_error(e),
    };
    if body.stream {
        stream(state.client.clone(), job, body.model, changes, frames)
    } else {
        whole(&state.client, job, &body.model, changes).await
    }
}

async fn wait_outcome(
    client: &NodeClient,
    job: JobId,
    changes: &mut broadcast::Receiver<JobId>,
) -> Option<Outcome> {
    let deadline = tokio::time::Instant::now() + DEFAULT_WAIT;
    loop {
        if let Ok(view) = client.job(job).await
            && let Some(outcome) = Facts::read(job, &view.contributions).outcome
        {
            return Some(outcome);
        }
        match tokio::time::timeout_at(deadline, changes.recv()).await {
            Err(_) => return None,
            Ok(Err(broadcast::error::RecvError::Closed)) => return None,
            Ok(_) => {}
        }
    }
}

fn created() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn usage(outcome: &Outcome) -> Value {
    let completion: u64 = outcome.contributions.iter().map(|c| c.tokens).sum();
    json!({ "prompt_tokens": 0, "completion_tokens": completion, "total_tokens": completion })
}

async fn whole(
    client: &NodeClient,
    job: JobId,
    model: &str,
    mut changes: broadcast::Receiver<JobId>,
) -> Response {
    let Some(outcome) = wait_outcome(client, job, &mut changes).await else {
        return openai_error(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("job {job} did not finish in time"),
        );
    };
    let Some(answer) = outcome.answer.clone() else {
        let message = format!("job {job} {}: {}", outcome.status, outcome.error.clone().unwrap_or_default());
        return openai_error(StatusCode::BAD_GATEWAY, "hivemesh_job_failed", message);
    };
    Json(json!({
        "id": format!("chatcmpl-{job}"),
        "object": "chat.completion",
        "created": created(),
        "model": model,
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": answer }, "finish_reason": "stop" }],
        "usage": usage(&outcome),
        "hivemesh": { "job": job.to_string(), "outcome": outcome },
    }))
    .into_response()
}

/// Streams the curator's tokens as they come, then the outcome.
fn stream(
    client: NodeClient,
    job: JobId,
    model: String,
    mut changes: broadcast::Receiver<JobId>,
    mut frames: broadcast::Receiver<crate::replica::JobFrame>,
) -> Response {
    let (tx, rx) = mpsc::channel::<Event>(256);
    tokio::spawn(async move {
        let id = format!("chatcmpl-{job}");
        let chunk = |delta: Value, finish: Value, extra: Option<Value>| {
            let mut body = json!({
                "id": id, "object": "chat.completion.chunk", "created": created(), "model": model,
                "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
            });
            if let Some(extra) = extra {
                body["hivemesh"] = extra;
            }
            Event::default().data(body.to_string())
        };
        let _ = tx.send(chunk(json!({ "role": "assistant" }), Value::Null, None)).await;
        let mut streamed = false;
        let outcome = loop {
            tokio::select! {
                frame = frames.recv() => {
                    if let Ok(frame) = frame
                        && frame.job == job
                        && (frame.part == "curator" || frame.part == "stage.curator")
                    {
                        streamed = true;
                        if tx.send(chunk(json!({ "content": frame.text }), Value::Null, None)).await.is_err() {
                            return;
                        }
                    }
                }
                outcome = wait_outcome(&client, job, &mut changes) => break outcome,
                () = tx.closed() => return,
            }
        };
        match outcome {
            Some(outcome) => {
                if let (false, Some(answer)) = (streamed, &outcome.answer) {
                    let _ = tx.send(chunk(json!({ "content": answer }), Value::Null, None)).await;
                }
                let finish = if outcome.answer.is_some() { "stop" } else { "error" };
                let extra = json!({ "job": job.to_string(), "outcome": outcome });
                let _ = tx.send(chunk(json!({}), json!(finish), Some(extra))).await;
            }
            None => {
                let error = json!({ "error": { "message": format!("job {job} did not finish in time"), "type": "timeout" } });
                let _ = tx.send(Event::default().data(error.to_string())).await;
            }
        }
        let _ = tx.send(Event::default().data("[DONE]")).await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok::<_, Infallible>(event), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}
