//! `POST /v1/chat/completions`, OpenAI-compatible: any OpenAI client uses
//! the whole mesh as one model. `model` picks the mode and profile:
//! `hivemesh` or `council` (council, fast profile), `pipeline`, or
//! `council:PROFILE` / `pipeline:PROFILE`. The job's outcome (candidates,
//! ballots, tally) rides along in an extra `hivemesh` field.
//!
//! Every documented request field is either honoured (forwarded to every
//! model call of the job) or refused with a 400 naming it; none is ignored.
//! Streamed, the answer is sent once the job's outcome exists, so what is
//! streamed is exactly the job's final answer (never a partial attempt).

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use hivemesh_llm::{ChatMessage, ToolCall};
use hivemesh_protocol::{JobId, TallyRule};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc};

use super::jobs::{
    CancelOnDrop, KEEP_ALIVE, check_context, check_max_tokens, check_messages, federation, submit_error,
};
use super::{ApiError, AppState};
use crate::federation::spec::{Facts, Mode, Outcome, Sampling};
use crate::federation::{FederationHandle, Submission};
use crate::net::NodeClient;
use crate::replica::JobChanged;

/// How long a request waits for its job beyond the job's own deadline.
const DEFAULT_WAIT: Duration = Duration::from_secs(180);

/// Most `stop` sequences, as OpenAI allows.
const MAX_STOP: usize = 4;

/// The request body. Fields the mesh cannot honour are read so that they
/// can be refused by name; any other field is refused as unrecognised.
#[derive(Debug, Deserialize)]
pub struct ChatBody {
    model: String,
    messages: Vec<IncomingMessage>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    frequency_penalty: Option<f32>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<u32>,
    #[serde(default)]
    logit_bias: Option<Map<String, Value>>,
    #[serde(default)]
    store: Option<bool>,
    #[serde(default)]
    service_tier: Option<String>,
    #[serde(default)]
    modalities: Option<Vec<String>>,
    /// Labels of the request only (no effect on an answer): accepted.
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    safety_identifier: Option<String>,
    #[serde(default)]
    prompt_cache_key: Option<String>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    /// Everything else, documented (audio, prediction, functions, ...) or
    /// not: refused unless null.
    #[serde(flatten)]
    other: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
    /// Padding against length side channels: accepted (nothing here to pad).
    #[serde(default)]
    #[allow(dead_code)]
    include_obfuscation: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct IncomingMessage {
    role: String,
    #[serde(default)]
    content: Value,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCall>>,
    #[serde(default)]
    tool_call_id: Option<String>,
    /// Fields an SDK echoes back in an assistant message (`refusal`,
    /// `annotations`, `audio`, `function_call`): accepted when empty.
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// The request as checked: what the job is asked with.
struct Checked {
    mode: Mode,
    profile: String,
    question: Vec<ChatMessage>,
    max_tokens: Option<u32>,
    sampling: Sampling,
    stream: bool,
    include_usage: bool,
}

/// `hivemesh`, `council`, `pipeline`, optionally `:PROFILE`.
fn parse_model(model: &str, profiles: &[String]) -> Result<(Mode, String), ApiError> {
    let not_found = |message: String| ApiError {
        param: Some("model".into()),
        code: Some("model_not_found"),
        ..ApiError::new(StatusCode::NOT_FOUND, message)
    };
    let (mode, profile) = model.split_once(':').unwrap_or((model, "fast"));
    let mode = match mode {
        "hivemesh" | "council" => Mode::Council,
        "pipeline" => Mode::Pipeline,
        other => {
            return Err(not_found(format!(
                "unknown model {other:?}: use hivemesh, council, pipeline, council:PROFILE or pipeline:PROFILE"
            )));
        }
    };
    if !profiles.iter().any(|p| p == profile) {
        return Err(not_found(format!("unknown profile {profile:?}: this node has {}", profiles.join(", "))));
    }
    Ok((mode, profile.to_string()))
}

fn text_of(index: usize, content: &Value) -> Result<Option<String>, ApiError> {
    let param = || format!("messages[{index}].content");
    match content {
        Value::String(text) => Ok(Some(text.clone())),
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .map(|(p, part)| {
                match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(text)) => Ok(text.to_string()),
                    (kind, _) => Err(ApiError::unsupported(
                        format!("messages[{index}].content[{p}]"),
                        format!(
                            "messages[{index}].content[{p}]: only text content parts are supported, not {}",
                            kind.unwrap_or("this part")
                        ),
                    )),
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|parts| Some(parts.join(""))),
        Value::Null => Ok(None),
        _ => Err(ApiError::invalid(
            param(),
            format!("messages[{index}].content must be a string or a list of text parts"),
        )),
    }
}

/// One message as the providers will get it; roles and their fields checked
/// by `check_messages`.
fn message_of(index: usize, message: IncomingMessage) -> Result<ChatMessage, ApiError> {
    for (key, value) in &message.other {
        let empty = value.is_null() || value.as_array().is_some_and(Vec::is_empty);
        let echoed = ["refusal", "annotations", "audio", "function_call"].contains(&key.as_str());
        if !(echoed && empty) {
            return Err(ApiError::unsupported(
                format!("messages[{index}].{key}"),
                format!("messages[{index}].{key} is not supported by this endpoint"),
            ));
        }
    }
    let content = text_of(index, &message.content)?;
    let has_calls = message.tool_calls.as_ref().is_some_and(|calls| !calls.is_empty());
    if content.is_none() && !(message.role == "assistant" && has_calls) {
        return Err(ApiError::invalid(
            format!("messages[{index}].content"),
            format!(
                "messages[{index}].content is required (only an assistant message with tool_calls may omit it)"
            ),
        ));
    }
    Ok(ChatMessage {
        role: message.role,
        content: content.unwrap_or_default(),
        tool_calls: message.tool_calls,
        tool_call_id: message.tool_call_id,
        name: message.name,
    })
}

fn in_range(param: &str, value: Option<f32>, low: f32, high: f32) -> Result<Option<f32>, ApiError> {
    match value {
        Some(v) if !(low..=high).contains(&v) => {
            Err(ApiError::invalid(param, format!("{param} must be between {low} and {high}; got {v}")))
        }
        _ => Ok(value),
    }
}

/// Refuses, by name, every field the mesh cannot honour.
fn refuse_unsupported(body: &ChatBody) -> Result<(), ApiError> {
    let refuse = |param: &str, why: &str| Err(ApiError::unsupported(param, format!("{param}: {why}")));
    if let Some(n) = body.n
        && n != 1
    {
        return refuse("n", &format!("only n=1 is supported (the mesh gives one agreed answer); got {n}"));
    }
    if let Some(format) = &body.response_format {
        let kind = format.get("type").and_then(Value::as_str).unwrap_or("?");
        if kind != "text" {
            return refuse(
                "response_format",
                &format!("only {{\"type\": \"text\"}} is supported, not {kind:?}"),
            );
        }
    }
    if body.tools.as_ref().is_some_and(|tools| !tools.is_empty()) {
        return refuse("tools", "tool calling is not supported (a council cannot agree on calls)");
    }
    if let Some(choice) = &body.tool_choice
        && !(choice.is_null() || choice == "none" || choice == "auto")
    {
        return refuse(
            "tool_choice",
            "tool calling is not supported; only \"none\" or \"auto\" without tools",
        );
    }
    if body.logprobs == Some(true) {
        return refuse(
            "logprobs",
            "log probabilities are not supported (the answer is curated, not sampled)",
        );
    }
    if body.top_logprobs.is_some_and(|n| n > 0) {
        return refuse("top_logprobs", "log probabilities are not supported");
    }
    if body.logit_bias.as_ref().is_some_and(|bias| !bias.is_empty()) {
        return refuse("logit_bias", "not supported (the mesh's models have different vocabularies)");
    }
    if body.store == Some(true) {
        return refuse("store", "completions are not stored; only store=false");
    }
    if let Some(tier) = &body.service_tier
        && tier != "auto"
        && tier != "default"
    {
        return refuse("service_tier", &format!("only \"auto\" or \"default\", not {tier:?}"));
    }
    if let Some(modalities) = &body.modalities
        && modalities.iter().any(|m| m != "text")
    {
        return refuse("modalities", "only [\"text\"] is supported");
    }
    if body.stream_options.is_some() && body.stream != Some(true) {
        return refuse("stream_options", "only allowed when stream is true");
    }
    if let Some((key, _)) = body.other.iter().find(|(_, value)| !value.is_null()) {
        return Err(ApiError::unsupported(
            key.as_str(),
            format!("unrecognized or unsupported request argument supplied: {key}"),
        ));
    }
    Ok(())
}

fn check(body: ChatBody, federation: &FederationHandle) -> Result<Checked, ApiError> {
    refuse_unsupported(&body)?;
    let (mode, profile) = parse_model(&body.model, &federation.profiles)?;
    if body.max_tokens.is_some() && body.max_completion_tokens.is_some() {
        return Err(ApiError::invalid("max_tokens", "give max_tokens or max_completion_tokens, not both"));
    }
    let max_tokens = match (body.max_tokens, body.max_completion_tokens) {
        (Some(n), _) => Some(check_max_tokens("max_tokens", n, &federation.limits)?),
        (_, Some(n)) => Some(check_max_tokens("max_completion_tokens", n, &federation.limits)?),
        (None, None) => None,
    };
    let stop = match body.stop {
        None => Vec::new(),
        Some(Stop::One(one)) => vec![one],
        Some(Stop::Many(many)) => many,
    };
    if stop.len() > MAX_STOP || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", format!("stop takes up to {MAX_STOP} non-empty sequences")));
    }
    let sampling = Sampling {
        temperature: in_range("temperature", body.temperature, 0.0, 2.0)?,
        top_p: in_range("top_p", body.top_p, 0.0, 1.0)?,
        // OpenAI's seed is any integer; its bits seed every call.
        seed: body.seed.map(|seed| seed as u64),
        stop,
        presence_penalty: in_range("presence_penalty", body.presence_penalty, -2.0, 2.0)?,
        frequency_penalty: in_range("frequency_penalty", body.frequency_penalty, -2.0, 2.0)?,
    };
    if body.messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages is empty"));
    }
    let question = body
        .messages
        .into_iter()
        .enumerate()
        .map(|(index, message)| message_of(index, message))
        .collect::<Result<Vec<_>, _>>()?;
    let question = check_messages(question)?;
    check_context(&question, max_tokens.unwrap_or(federation.limits.max_tokens_per_call))?;
    let _labels = (&body.user, &body.safety_identifier, &body.prompt_cache_key, &body.metadata);
    let stream = body.stream.unwrap_or(false);
    let include_usage = body.stream_options.and_then(|o| o.include_usage).unwrap_or(false);
    let _ = body.parallel_tool_calls;
    Ok(Checked { mode, profile, question, max_tokens, sampling, stream, include_usage })
}

/// The API's start, for `created` in `/v1/models`.
pub(crate) fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
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
        Err(rejection) => return ApiError::new(rejection.status(), rejection.body_text()).into_response(),
    };
    let model = body.model.clone();
    let checked = match check(body, &federation) {
        Ok(checked) => checked,
        Err(e) => return e.into_response(),
    };
    let submission = Submission {
        question: checked.question,
        mode: checked.mode,
        profile: checked.profile,
        peers: 3,
        quorum: None,
        rule: TallyRule::Schulze,
        deadline: None,
        max_tokens: checked.max_tokens,
    };
    let changes = state.client.job_changes();
    let job = match federation.submit_sampled(submission, checked.sampling).await {
        Ok(job) => job,
        Err(e) => return submit_error(e),
    };
    // Whatever serves the answer holds this: a client that hangs up cancels its job.
    let guard = CancelOnDrop::new(federation, job);
    if checked.stream {
        stream(state.client.clone(), job, model, changes, guard, checked.include_usage)
    } else {
        whole(&state.client, job, &model, changes, guard).await
    }
}

async fn wait_outcome(
    client: &NodeClient,
    job: JobId,
    changes: &mut broadcast::Receiver<JobChanged>,
) -> Option<Outcome> {
    let deadline = tokio::time::Instant::now() + DEFAULT_WAIT;
    let mut view = client.job(job).await.ok();
    loop {
        if let Some(outcome) = view.and_then(|view| Facts::read(job, &view.contributions).outcome) {
            return Some(outcome);
        }
        view = match tokio::time::timeout_at(deadline, changes.recv()).await {
            Err(_) | Ok(Err(broadcast::error::RecvError::Closed)) => return None,
            Ok(Ok(changed)) if changed.job() == job => Some(changed.view),
            Ok(Ok(_)) => None,
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => client.job(job).await.ok(),
        };
    }
}

/// Prompt tokens over every model call of the job (as their providers
/// reported them), completion tokens likewise.
fn usage(outcome: &Outcome) -> Value {
    let prompt: u64 = outcome.contributions.iter().map(|c| c.prompt_tokens).sum();
    let completion: u64 = outcome.contributions.iter().map(|c| c.tokens).sum();
    json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion })
}

/// `length` when the call whose text is the answer was cut by its token
/// limit, else `stop`.
fn finish_reason(outcome: &Outcome) -> &'static str {
    let answer = outcome.answer.as_deref().unwrap_or_default();
    let source = outcome.contributions.iter().rev().find(|c| c.text == answer);
    match source.and_then(|c| c.finish_reason.as_deref()) {
        Some("length") => "length",
        _ => "stop",
    }
}

/// A job that ended without an answer, as an OpenAI error naming why each
/// missing member did not answer. When every one of them failed because the
/// prompt does not fit its model's context, the request was the problem:
/// a 400 `context_length_exceeded`, not a 502.
fn failed(job: JobId, outcome: &Outcome) -> ApiError {
    let mut message = format!("job {job} {}: {}", outcome.status, outcome.error.clone().unwrap_or_default());
    for missing in &outcome.missing {
        message.push_str(&format!("; {}: {}", missing.peer, missing.reason));
    }
    const CONTEXT: &str = "context_length_exceeded";
    let too_long =
        !outcome.missing.is_empty() && outcome.missing.iter().all(|m| m.code.as_deref() == Some(CONTEXT));
    if too_long {
        return ApiError {
            param: Some("messages".into()),
            ..ApiError::new(StatusCode::BAD_REQUEST, message)
        }
        .with_code(CONTEXT);
    }
    let code = if outcome.status == "cancelled" { "job_cancelled" } else { "job_failed" };
    ApiError::new(StatusCode::BAD_GATEWAY, message).with_code(code)
}

/// The error a stream ends with when this node stops (leaves, is shut
/// down) before the job's end: the answer was not cut silently.
pub(super) fn node_stopped(job: JobId) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("this node stopped before job {job} ended; its other participants may still finish it"),
    )
    .with_code("node_stopped")
}

fn timed_out(job: JobId) -> ApiError {
    ApiError::new(StatusCode::GATEWAY_TIMEOUT, format!("job {job} did not finish in time"))
        .with_code("timeout")
}

async fn whole(
    client: &NodeClient,
    job: JobId,
    model: &str,
    mut changes: broadcast::Receiver<JobChanged>,
    guard: CancelOnDrop,
) -> Response {
    let outcome = wait_outcome(client, job, &mut changes).await;
    guard.disarm();
    let Some(outcome) = outcome else { return timed_out(job).into_response() };
    let Some(answer) = outcome.answer.clone() else { return failed(job, &outcome).into_response() };
    Json(json!({
        "id": format!("chatcmpl-{job}"),
        "object": "chat.completion",
        "created": unix_seconds(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": answer, "refusal": null },
            "logprobs": null,
            "finish_reason": finish_reason(&outcome),
        }],
        "usage": usage(&outcome),
        "hivemesh": { "job": job.to_string(), "outcome": outcome },
    }))
    .into_response()
}

/// The answer in stream-sized pieces, each ending after a space where it can.
fn pieces(answer: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut piece = String::new();
    for word in answer.split_inclusive(' ') {
        piece.push_str(word);
        if piece.len() >= 24 {
            pieces.push(std::mem::take(&mut piece));
        }
    }
    if !piece.is_empty() {
        pieces.push(piece);
    }
    pieces
}

/// Streams the role at once, keep-alives while the job runs, and the job's
/// final answer once its outcome exists; a job that fails ends the stream
/// with an error event (`data: {"error": {...}}`) the OpenAI SDKs raise.
fn stream(
    client: NodeClient,
    job: JobId,
    model: String,
    mut changes: broadcast::Receiver<JobChanged>,
    guard: CancelOnDrop,
    include_usage: bool,
) -> Response {
    let (tx, rx) = mpsc::channel::<Event>(256);
    tokio::spawn(async move {
        let created = unix_seconds();
        let id = format!("chatcmpl-{job}");
        let chunk = |delta: Value, finish: Value, extra: Option<Value>| {
            let mut body = json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
            });
            if include_usage {
                body["usage"] = Value::Null;
            }
            if let Some(extra) = extra {
                body["hivemesh"] = extra;
            }
            Event::default().data(body.to_string())
        };
        if tx.send(chunk(json!({ "role": "assistant", "content": "" }), Value::Null, None)).await.is_err() {
            return; // the guard cancels the job
        }
        let outcome = tokio::select! {
            outcome = wait_outcome(&client, job, &mut changes) => outcome,
            () = tx.closed() => return,
            () = client.stopped() => {
                // Not the client hanging up: nothing to cancel from here.
                guard.disarm();
                let _ = tx.send(Event::default().data(node_stopped(job).body().to_string())).await;
                return;
            }
        };
        guard.disarm();
        let outcome = match outcome {
            None => {
                let _ = tx.send(Event::default().data(timed_out(job).body().to_string())).await;
                return;
            }
            Some(outcome) => outcome,
        };
        let Some(answer) = outcome.answer.clone() else {
            let _ = tx.send(Event::default().data(failed(job, &outcome).body().to_string())).await;
            return;
        };
        for piece in pieces(&answer) {
            if tx.send(chunk(json!({ "content": piece }), Value::Null, None)).await.is_err() {
                return;
            }
        }
        let usage = usage(&outcome);
        let finish = finish_reason(&outcome);
        let extra = json!({ "job": job.to_string(), "outcome": outcome });
        let _ = tx.send(chunk(json!({}), json!(finish), Some(extra))).await;
        if include_usage {
            let last = json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [], "usage": usage,
            });
            let _ = tx.send(Event::default().data(last.to_string())).await;
        }
        let _ = tx.send(Event::default().data("[DONE]")).await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok::<_, Infallible>(event), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response()
}
