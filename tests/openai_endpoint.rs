//! `/v1/chat/completions` and its sibling routes against three real nodes on
//! loopback, each with a scripted OpenAI-compatible provider: every
//! documented field honoured or refused by name, OpenAI's error shape on
//! every route, usage and finish reasons as the providers reported them,
//! hang-ups cancelling jobs, and complete, typed replays.

#[path = "support/mesh.rs"]
mod mesh;
#[path = "../llm/tests/common/mod.rs"]
mod sse_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hivemesh::llm::provider::openai::{OpenAiConfig, OpenAiProvider};
use hivemesh::llm::{Budget, ChatMessage, ChatRequest, LlmClient, ResilienceConfig};
use mesh::{LIMIT, Mesh};
use serde_json::{Value, json};
use sse_server::{Reply, TestServer};

const CANDIDATE: &str = "Paris is the capital of France.";
const FINAL: &str = "Final: Paris is the capital of France.";

fn is_curator(body: &Value) -> bool {
    body["messages"][0]["content"].as_str().unwrap_or_default().contains("the Curator")
}

/// A provider answering like `mesh::provider`, reporting usage with
/// `prompt_tokens` prompt tokens per call.
async fn reporting(prompt_tokens: u64) -> TestServer {
    TestServer::responding(move |body| {
        let text = if is_curator(body) { FINAL } else { CANDIDATE };
        let pieces: Vec<String> = text.split_inclusive(' ').map(String::from).collect();
        let completion = pieces.len() as u64;
        Reply::Stream {
            pieces,
            delay: Duration::ZERO,
            usage: Some((prompt_tokens, completion, None)),
            keepalive: false,
        }
    })
    .await
}

async fn mesh_of(servers: Vec<TestServer>) -> Mesh {
    Mesh::with_servers(servers, 1).await
}

async fn quick_mesh() -> Mesh {
    mesh_of(vec![reporting(12).await, reporting(12).await, reporting(12).await]).await
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(LIMIT).build().expect("client")
}

async fn chat(mesh: &Mesh, body: Value) -> (u16, Value) {
    let response =
        http().post(format!("{}/v1/chat/completions", mesh.api(0))).json(&body).send().await.expect("post");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The `data:` payloads of a whole SSE body, and its `event:` names.
fn sse(text: &str) -> Vec<(String, String)> {
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let mut name = String::from("message");
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(value) = line.strip_prefix("event:") {
                name = value.trim().to_string();
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push(value.strip_prefix(' ').unwrap_or(value).to_string());
            }
        }
        if !data.is_empty() {
            events.push((name, data.join("\n")));
        }
    }
    events
}

async fn chat_stream(mesh: &Mesh, body: Value) -> Vec<String> {
    let response =
        http().post(format!("{}/v1/chat/completions", mesh.api(0))).json(&body).send().await.expect("post");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("stream");
    sse(&text).into_iter().map(|(_, data)| data).collect()
}

fn question() -> Value {
    json!([{ "role": "user", "content": "What is the capital of France?" }])
}

/// OpenAI's error shape: message and type strings, param and code each a
/// string or null.
fn assert_openai_error(what: &str, body: &Value) {
    let error = &body["error"];
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: message: {body}");
    assert!(error["type"].is_string(), "{what}: type: {body}");
    let object = error.as_object().unwrap_or_else(|| panic!("{what}: error is an object: {body}"));
    assert!(object.contains_key("param") && object.contains_key("code"), "{what}: param and code: {body}");
    assert!(error["param"].is_string() || error["param"].is_null(), "{what}: param: {body}");
    assert!(error["code"].is_string() || error["code"].is_null(), "{what}: code: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counts_every_calls_prompt_tokens_and_streams_a_final_usage_chunk() {
    let mesh = quick_mesh().await;
    // Every call (three candidates and the curator, fewer when a member is
    // left out) reported 12 prompt tokens.
    let calls = |outcome: &Value| 12 * outcome["contributions"].as_array().map_or(0, Vec::len) as u64;
    let (status, body) = chat(&mesh, json!({ "model": "council", "messages": question() })).await;
    assert_eq!(status, 200, "{body}");
    assert!(calls(&body["hivemesh"]["outcome"]) >= 36, "{body:#}");
    assert_eq!(
        body["usage"]["prompt_tokens"].as_u64(),
        Some(calls(&body["hivemesh"]["outcome"])),
        "{body:#}"
    );
    assert_eq!(
        body["usage"]["total_tokens"].as_u64(),
        Some(48 + body["usage"]["completion_tokens"].as_u64().unwrap_or(0))
    );

    let events = chat_stream(
        &mesh,
        json!({ "model": "council", "messages": question(), "stream": true, "stream_options": { "include_usage": true } }),
    )
    .await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:#?}");
    let last: Value = serde_json::from_str(&events[events.len() - 2]).expect("usage chunk");
    assert_eq!(last["choices"], json!([]), "{last}");
    let outcome = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .find_map(|c| c.get("hivemesh").map(|h| h["outcome"].clone()))
        .expect("the outcome rides along");
    assert_eq!(last["usage"]["prompt_tokens"].as_u64(), Some(calls(&outcome)), "{last} {outcome:#}");
    assert!(last["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0, "{last}");
    // Without include_usage, no usage chunk.
    let events =
        chat_stream(&mesh, json!({ "model": "council", "messages": question(), "stream": true })).await;
    let chunks: Vec<Value> =
        events.iter().filter(|e| *e != "[DONE]").map(|e| serde_json::from_str(e).expect("json")).collect();
    assert!(chunks.iter().all(|c| c["choices"] != json!([]) && c.get("usage").is_none()), "{chunks:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_ends_its_stream_with_an_error_event_not_a_finish_reason() {
    let failing = || TestServer::scripted(vec![Reply::status(400, "the model refuses this request")]);
    let mesh = mesh_of(vec![failing().await, failing().await, failing().await]).await;
    let events =
        chat_stream(&mesh, json!({ "model": "council", "messages": question(), "stream": true })).await;
    let error: Value = serde_json::from_str(events.last().expect("an event")).expect("json");
    assert_openai_error("stream", &error);
    assert_eq!(error["error"]["code"], "job_failed", "{events:#?}");
    for event in &events {
        assert!(!event.contains("\"finish_reason\":\"error\""), "no finish_reason error: {events:#?}");
    }
    let (status, body) = chat(&mesh, json!({ "model": "council", "messages": question() })).await;
    assert_eq!(status, 502, "{body}");
    assert_openai_error("whole", &body);
}

/// A stream whose answer was cut at the token limit.
fn cut(text: &str) -> Reply {
    let chunk = json!({ "id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{ "index": 0, "delta": { "content": text }, "finish_reason": null }] });
    let last = json!({ "id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{ "index": 0, "delta": {}, "finish_reason": "length" }] });
    Reply::Raw(format!("data: {chunk}\n\ndata: {last}\n\ndata: [DONE]\n\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_cut_by_max_tokens_finishes_with_length() {
    let server = || {
        TestServer::responding(|body| {
            if is_curator(body) { cut("Final: Paris is the") } else { Reply::text(&[CANDIDATE]) }
        })
    };
    let mesh = mesh_of(vec![server().await, server().await, server().await]).await;
    let (status, body) =
        chat(&mesh, json!({ "model": "council", "messages": question(), "max_tokens": 5 })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "length", "{body:#}");
    let events =
        chat_stream(&mesh, json!({ "model": "council", "messages": question(), "stream": true })).await;
    let finish: Vec<Value> = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .map(|c| c["choices"][0]["finish_reason"].clone())
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, vec![json!("length")], "{events:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_call_history_reaches_providers_unaltered_and_unknown_roles_are_refused() {
    let mesh = quick_mesh().await;
    let history = json!([
        { "role": "system", "content": "Be brief." },
        { "role": "user", "content": "What is the weather in Paris?", "name": "ada" },
        { "role": "assistant", "content": null, "refusal": null, "tool_calls": [
            { "id": "call_1", "type": "function", "function": { "name": "weather", "arguments": "{\"city\":\"Paris\"}" } }
        ] },
        { "role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny" },
        { "role": "user", "content": "So, what is it like?" }
    ]);
    let (status, body) = chat(&mesh, json!({ "model": "council", "messages": history })).await;
    assert_eq!(status, 200, "an assistant message with tool_calls and no content is accepted: {body}");
    let generators: Vec<Value> = mesh
        .servers
        .iter()
        .flat_map(|s| s.seen())
        .map(|seen| seen.body)
        .filter(|body| !is_curator(body))
        .collect();
    assert_eq!(generators.len(), 3, "one candidate call per member");
    for body in &generators {
        let messages = body["messages"].as_array().expect("messages");
        let sent: Vec<&Value> = messages.iter().filter(|m| m["role"] != "system").collect();
        assert_eq!(sent[0]["name"], "ada", "{body:#}");
        assert_eq!(sent[1]["tool_calls"], history[2]["tool_calls"], "{body:#}");
        assert_eq!(sent[1]["content"], Value::Null, "no content stays null: {body:#}");
        assert_eq!(sent[2]["role"], "tool", "{body:#}");
        assert_eq!(sent[2]["tool_call_id"], "call_1", "{body:#}");
        assert_eq!(sent[2]["content"], "18 C, sunny", "{body:#}");
    }

    for (role, messages) in [
        ("wizard", json!([{ "role": "wizard", "content": "Abracadabra" }])),
        ("function", json!([{ "role": "function", "name": "f", "content": "1" }])),
    ] {
        let (status, body) = chat(&mesh, json!({ "model": "council", "messages": messages })).await;
        assert_eq!(status, 400, "{role}: {body}");
        assert_openai_error(role, &body);
        assert!(body["error"]["message"].as_str().unwrap_or_default().contains(role), "{body}");
        assert_eq!(body["error"]["param"], "messages[0].role", "{body}");
    }
    // A tool message without the call it answers, a user message without content.
    for (param, messages) in [
        ("messages[0].tool_call_id", json!([{ "role": "tool", "content": "1" }])),
        ("messages[0].content", json!([{ "role": "user", "content": null }])),
    ] {
        let (status, body) = chat(&mesh, json!({ "model": "council", "messages": messages })).await;
        assert_eq!(status, 400, "{param}: {body}");
        assert_eq!(body["error"]["param"], param, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_fields_reach_every_model_call_with_a_seed_per_member() {
    let mesh = quick_mesh().await;
    let (status, body) = chat(
        &mesh,
        json!({
            "model": "council", "messages": question(), "n": 1, "temperature": 0.25, "top_p": 0.5,
            "seed": 7, "stop": ["END", "STOP"], "presence_penalty": 0.5, "frequency_penalty": -0.5,
            "max_completion_tokens": 40, "response_format": { "type": "text" }, "user": "u-1",
            "tool_choice": "none", "logprobs": false,
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let calls: Vec<Value> = mesh.servers.iter().flat_map(|s| s.seen()).map(|seen| seen.body).collect();
    assert_eq!(calls.len(), 4, "three candidates and the curator");
    let mut seeds = Vec::new();
    for call in &calls {
        assert_eq!(call["temperature"], 0.25, "{call:#}");
        assert_eq!(call["top_p"], 0.5, "{call:#}");
        assert_eq!(call["stop"], json!(["END", "STOP"]), "{call:#}");
        assert_eq!(call["presence_penalty"], 0.5, "{call:#}");
        assert_eq!(call["frequency_penalty"], -0.5, "{call:#}");
        assert!(call["max_tokens"].as_u64().is_some_and(|n| n <= 40), "{call:#}");
        seeds.push(call["seed"].as_u64().expect("a seed on every call"));
    }
    seeds.sort_unstable();
    seeds.dedup();
    assert_eq!(seeds.len(), 4, "each call samples with its own seed: {seeds:?}");

    // The same seed again gives the same per-call seeds (reproducible):
    // each call of the second job reuses its counterpart's seed.
    let before: Vec<u64> = calls.iter().filter_map(|c| c["seed"].as_u64()).collect();
    let (status, body) =
        chat(&mesh, json!({ "model": "council", "messages": question(), "seed": 7, "max_tokens": 40 })).await;
    assert_eq!(status, 200, "{body:#}");
    let again: Vec<u64> =
        mesh.servers.iter().flat_map(|s| s.seen()).filter_map(|s| s.body["seed"].as_u64()).collect();
    assert!(again.len() >= before.len() + 2, "{again:?}");
    for seed in &again {
        assert!(before.contains(seed), "{before:?} {again:?} {body:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_prompts_with_different_parameters_do_not_share_a_cache_entry() {
    let server = TestServer::scripted(vec![Reply::text(&["one"])]).await;
    let provider = OpenAiProvider::new(OpenAiConfig::new("test", server.base_url(), "m")).expect("provider");
    let client = LlmClient::new(Arc::new(provider), ResilienceConfig::default());
    let base = ChatRequest::new("m", vec![ChatMessage::user("Same prompt")]);
    let variants: Vec<ChatRequest> = vec![
        base.clone(),
        ChatRequest { top_p: Some(0.5), ..base.clone() },
        ChatRequest { stop: vec!["END".into()], ..base.clone() },
        ChatRequest { presence_penalty: Some(1.0), ..base.clone() },
        ChatRequest { frequency_penalty: Some(1.0), ..base.clone() },
        ChatRequest { seed: Some(3), ..base.clone() },
    ];
    for request in &variants {
        let budget = Budget::new(None, None);
        client.complete(request.clone(), &budget, |_| {}).await.expect("completes");
    }
    assert_eq!(server.seen().len(), variants.len(), "every variant reached the provider");
    let budget = Budget::new(None, None);
    let repeat = client.complete(base.clone(), &budget, |_| {}).await.expect("completes");
    assert!(repeat.cached, "the identical request is still served from the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_fields_are_refused_naming_the_field() {
    let mesh = quick_mesh().await;
    let cases = [
        ("n", json!(2)),
        ("tools", json!([{ "type": "function", "function": { "name": "f", "parameters": {} } }])),
        ("tool_choice", json!("required")),
        ("logprobs", json!(true)),
        ("top_logprobs", json!(3)),
        ("response_format", json!({ "type": "json_schema", "json_schema": { "name": "x", "schema": {} } })),
        ("response_format", json!({ "type": "json_object" })),
        ("logit_bias", json!({ "50256": -100 })),
        ("store", json!(true)),
        ("modalities", json!(["text", "audio"])),
        ("audio", json!({ "voice": "alloy", "format": "wav" })),
        ("functions", json!([{ "name": "f" }])),
        ("function_call", json!("auto")),
        ("prediction", json!({ "type": "content", "content": "x" })),
        ("reasoning_effort", json!("high")),
        ("web_search_options", json!({})),
        ("frobnicate", json!(1)),
        ("stream_options", json!({ "include_usage": true })),
        ("temperature", json!(3.5)),
        ("top_p", json!(1.5)),
        ("presence_penalty", json!(-3)),
        ("frequency_penalty", json!(9)),
        ("stop", json!(["a", "b", "c", "d", "e"])),
        ("max_tokens", json!(0)),
        ("max_completion_tokens", json!(100_000)),
    ];
    for (field, value) in cases {
        let mut body = json!({ "model": "council", "messages": question() });
        body[field] = value.clone();
        let (status, answer) = chat(&mesh, body).await;
        assert_eq!(status, 400, "{field}={value}: {answer}");
        assert_openai_error(field, &answer);
        assert_eq!(answer["error"]["param"], field, "{field}={value}: {answer}");
        assert!(answer["error"]["message"].as_str().unwrap_or_default().contains(field), "{answer}");
    }
    let calls: usize = mesh.servers.iter().map(|s| s.seen().len()).sum();
    assert_eq!(calls, 0, "no refused request reached a model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_have_created() {
    let mesh = quick_mesh().await;
    let models: Value = http()
        .get(format!("{}/v1/models", mesh.api(0)))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let data = models["data"].as_array().expect("data");
    assert!(data.len() >= 3);
    for model in data {
        assert!(model["created"].as_u64().is_some_and(|c| c > 1_600_000_000), "{model}");
        assert_eq!(model["object"], "model");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_on_every_route_has_openais_shape() {
    let mesh = quick_mesh().await;
    let api = mesh.api(0);
    let unknown_job = "00000000000000000000000000000000";
    let client = http();
    let json_post = |path: &str, body: &str| {
        client.post(format!("{api}{path}")).header("content-type", "application/json").body(body.to_string())
    };
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        ("jobs limit=-1", client.get(format!("{api}/v1/jobs?limit=-1")), 400),
        ("jobs limit=x", client.get(format!("{api}/v1/jobs?limit=x")), 400),
        ("jobs broken json", json_post("/v1/jobs", "{\"question\": "), 400),
        ("jobs wrong type", json_post("/v1/jobs", "{\"question\": 3}"), 422),
        ("jobs unknown field", json_post("/v1/jobs", "{\"question\": \"q\", \"colour\": 1}"), 422),
        ("jobs no content type", client.post(format!("{api}/v1/jobs")).body("{}"), 415),
        ("jobs empty question", json_post("/v1/jobs", "{\"question\": \"  \"}"), 400),
        ("jobs bad mode", json_post("/v1/jobs", "{\"question\": \"q\", \"mode\": \"mob\"}"), 400),
        ("job bad id", client.get(format!("{api}/v1/jobs/not-hex")), 400),
        ("job unknown", client.get(format!("{api}/v1/jobs/{unknown_job}")), 404),
        ("job cancel unknown", client.delete(format!("{api}/v1/jobs/{unknown_job}")), 404),
        ("job events bad id", client.get(format!("{api}/v1/jobs/zz/events")), 400),
        ("job events unknown", client.get(format!("{api}/v1/jobs/{unknown_job}/events")), 404),
        (
            "job events bad query",
            client.get(format!("{api}/v1/jobs/{unknown_job}/events?cancel_on_disconnect=maybe")),
            400,
        ),
        ("chat broken json", json_post("/v1/chat/completions", "{"), 400),
        ("chat no model", json_post("/v1/chat/completions", "{\"messages\": []}"), 422),
        (
            "chat unknown model",
            json_post(
                "/v1/chat/completions",
                "{\"model\": \"gpt-9\", \"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}",
            ),
            404,
        ),
        (
            "chat empty messages",
            json_post("/v1/chat/completions", "{\"model\": \"council\", \"messages\": []}"),
            400,
        ),
        (
            "chat image part",
            json_post(
                "/v1/chat/completions",
                "{\"model\": \"council\", \"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\", \"image_url\": {\"url\": \"x\"}}]}]}",
            ),
            400,
        ),
        ("chat GET", client.get(format!("{api}/v1/chat/completions")), 405),
        ("models POST", client.post(format!("{api}/v1/models")), 405),
        ("members bad view", client.get(format!("{api}/v1/members?view=bogus")), 400),
        ("advertise broken", json_post("/v1/advertise", "{"), 400),
        ("no such route", client.get(format!("{api}/v1/nothing")), 404),
        (
            "too large",
            json_post("/v1/jobs", &format!("{{\"question\": \"{}\"}}", "a".repeat(300 * 1024))),
            413,
        ),
    ];
    for (what, request, status) in cases {
        let response = request.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(response.status().as_u16(), status, "{what}");
        let text = response.text().await.expect("body");
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: not JSON: {text}"));
        assert_openai_error(what, &body);
    }
    // A bad query value names its parameter, as a bad body field does.
    let body: Value = client
        .get(format!("{api}/v1/members?view=bogus"))
        .send()
        .await
        .expect("members")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (&body["error"]["param"], &body["error"]["code"]),
        (&json!("view"), &json!("invalid_value")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_have_openais_shape() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = hivemesh::node::NodeConfig::loopback(dir.path().to_path_buf());
    config.api_token = Some("secret".into());
    let node = hivemesh::node::spawn_node(config).await.expect("node starts");
    let api = format!("http://{}", node.api.expect("api"));
    for (what, token) in [("none", None), ("wrong", Some("Bearer nope"))] {
        let mut request = http().get(format!("{api}/v1/models"));
        if let Some(token) = token {
            request = request.header("authorization", token);
        }
        let response = request.send().await.expect("get");
        assert_eq!(response.status(), 401, "{what}");
        let body: Value = response.json().await.expect("json");
        assert_openai_error(what, &body);
        assert_eq!(body["error"]["type"], "authentication_error");
    }
    let ok = http().get(format!("{api}/v1/models")).bearer_auth("secret").send().await.expect("get");
    assert_eq!(ok.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_longer_than_the_context_is_refused_up_front() {
    let mesh = quick_mesh().await;
    let long = "word ".repeat(20 * 1024); // 100 KB
    let (status, body) =
        chat(&mesh, json!({ "model": "council", "messages": [{ "role": "user", "content": long }] })).await;
    assert_eq!(status, 400, "{body}");
    assert_openai_error("chat", &body);
    assert_eq!(body["error"]["code"], "context_length_exceeded", "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("context"), "{body}");
    let response = http()
        .post(format!("{}/v1/jobs", mesh.api(0)))
        .json(&json!({ "question": long }))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "context_length_exceeded", "{body}");
    let calls: usize = mesh.servers.iter().map(|s| s.seen().len()).sum();
    assert_eq!(calls, 0, "refused before any model call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_the_models_cannot_hold_is_a_400_naming_why_even_past_the_estimate() {
    // Dense text slips under the 4-characters-a-token estimate; the models
    // then refuse it. Every member failing so is the request's fault, said
    // as such, not a 502 "only 0 of 3 candidates arrived".
    let overflowing = || {
        TestServer::responding(|_| {
            Reply::Status {
            code: 400,
            retry_after: None,
            body: json!({"error": {
                "message": "This model's maximum context length is 4096 tokens. However, you requested 6001 tokens.",
                "type": "invalid_request_error", "code": "context_length_exceeded"
            }})
            .to_string(),
        }
        })
    };
    let mesh = mesh_of(vec![overflowing().await, overflowing().await, overflowing().await]).await;
    let dense = "7 ".repeat(6000);
    let (status, body) =
        chat(&mesh, json!({ "model": "council", "messages": [{ "role": "user", "content": dense }] })).await;
    assert_eq!(status, 400, "{body}");
    assert_openai_error("dense", &body);
    assert_eq!(body["error"]["code"], "context_length_exceeded", "{body}");
    assert_eq!(body["error"]["param"], "messages", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("maximum context length is 4096"), "the model's own reason: {message}");
    // Any other failure stays a 502 job_failed, with every member's reason.
    // (One mesh at a time: the first holds the test lock until dropped.)
    drop(mesh);
    let failing = || TestServer::responding(|_| Reply::status(400, "the model refuses this request"));
    let mesh = mesh_of(vec![failing().await, failing().await, failing().await]).await;
    let (status, body) = chat(&mesh, json!({ "model": "council", "messages": question() })).await;
    assert_eq!(status, 502, "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("refuses this request"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_deadlines_and_token_limits_are_validated() {
    let mesh = quick_mesh().await;
    let cases = [
        ("deadline_ms", json!(0)),
        ("deadline_ms", json!(u64::MAX)),
        ("deadline_ms", json!(3_600_001)),
        ("max_tokens", json!(0)),
        ("max_tokens", json!(100_000)),
    ];
    for (field, value) in cases {
        let mut body = json!({ "question": "What is the capital of France?" });
        body[field] = value.clone();
        let response =
            http().post(format!("{}/v1/jobs", mesh.api(0))).json(&body).send().await.expect("post");
        assert_eq!(response.status(), 400, "{field}={value}");
        let body: Value = response.json().await.expect("json");
        assert_openai_error(field, &body);
        assert_eq!(body["error"]["param"], field, "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(field) && message.contains("between 1 and"),
            "the range is named: {message}"
        );
    }
    // Messages given to /v1/jobs are checked like the endpoint's.
    let response = http()
        .post(format!("{}/v1/jobs", mesh.api(0)))
        .json(&json!({ "messages": [{ "role": "wizard", "content": "Abracadabra" }] }))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["param"], "messages[0].role", "{body}");
    // The bounds themselves are accepted.
    let id = mesh.submit(json!({ "question": "What is the capital of France?", "deadline_ms": 3_600_000, "max_tokens": 1 })).await;
    mesh.wait_status(&id, |s| s == "done").await;
}

/// A provider that takes its time: 200 pieces, 100 ms apart.
async fn slow() -> TestServer {
    TestServer::responding(|_| Reply::Stream {
        pieces: vec!["word ".into(); 200],
        delay: Duration::from_millis(100),
        usage: None,
        keepalive: false,
    })
    .await
}

async fn wait_cancelled(mesh: &Mesh, id: &str) -> Value {
    mesh.wait_status(id, |s| s == "cancelled").await
}

async fn latest_job(mesh: &Mesh) -> String {
    let deadline = Instant::now() + LIMIT;
    loop {
        let jobs: Value = http()
            .get(format!("{}/v1/jobs?limit=1", mesh.api(0)))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        if let Some(id) = jobs["jobs"][0]["job"]["id"].as_str() {
            return id.to_string();
        }
        assert!(Instant::now() < deadline, "no job listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every provider call the participants made has been hung up
/// on (each is 20 s long, so none ends by itself first), once there are more
/// than `before` calls; returns how many there are.
async fn wait_hangups(mesh: &Mesh, before: usize) -> usize {
    let deadline = Instant::now() + LIMIT;
    loop {
        let hangups: Vec<usize> = mesh.servers.iter().map(|s| s.hangups().len()).collect();
        let calls: Vec<usize> = mesh.servers.iter().map(|s| s.seen().len()).collect();
        let total = calls.iter().sum::<usize>();
        if hangups == calls && total > before {
            return total;
        }
        assert!(
            Instant::now() < deadline,
            "every participant's provider call is stopped: hang-ups {hangups:?} of calls {calls:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_cancels_its_job_everywhere() {
    let mesh = mesh_of(vec![slow().await, slow().await, slow().await]).await;
    let client = http();

    let calls = 0;

    // A stream: read the role chunk, then hang up.
    let mut response = client
        .post(format!("{}/v1/chat/completions", mesh.api(0)))
        .json(&json!({ "model": "council", "messages": question(), "stream": true }))
        .send()
        .await
        .expect("post");
    let first = response.chunk().await.expect("read").expect("a first chunk");
    let first = String::from_utf8_lossy(&first).to_string();
    let id = first.split("chatcmpl-").nth(1).map(|rest| rest[..32].to_string()).expect("the job's id");
    drop(response);
    let job = wait_cancelled(&mesh, &id).await;
    assert_eq!(job["status"], "cancelled", "{job:#}");
    let calls = wait_hangups(&mesh, calls).await;

    // The cancel replays as text.
    let replay = client.get(format!("{}/v1/jobs/{id}/events", mesh.api(0))).send().await.expect("get");
    let events = sse(&replay.text().await.expect("text"));
    let cancelled = events.iter().find(|(name, _)| name == "cancelled").expect("a cancelled event");
    let cancelled: Value = serde_json::from_str(&cancelled.1).expect("json");
    assert!(cancelled["body"]["reason"].as_str().is_some_and(|r| r.contains("cancel")), "{cancelled}");

    // A plain request whose client gives up.
    let plain = client
        .post(format!("{}/v1/chat/completions", mesh.api(0)))
        .json(&json!({ "model": "council", "messages": question() }))
        .send();
    assert!(tokio::time::timeout(Duration::from_secs(2), plain).await.is_err(), "still running");
    let id = latest_job(&mesh).await;
    wait_cancelled(&mesh, &id).await;
    let calls = wait_hangups(&mesh, calls).await;

    // Following a job it asked, with cancel_on_disconnect.
    let id = mesh.submit(json!({ "question": "What is the capital of France?" })).await;
    let mut events = client
        .get(format!("{}/v1/jobs/{id}/events?cancel_on_disconnect=true", mesh.api(0)))
        .send()
        .await
        .expect("get");
    events.chunk().await.expect("read").expect("a first event");
    drop(events);
    wait_cancelled(&mesh, &id).await;
    wait_hangups(&mesh, calls).await;

    // Following without it cancels nothing.
    let id = mesh.submit(json!({ "question": "What is the capital of France?" })).await;
    let mut events = client.get(format!("{}/v1/jobs/{id}/events", mesh.api(0))).send().await.expect("get");
    events.chunk().await.expect("read").expect("a first event");
    drop(events);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let job = mesh.job(&id).await;
    assert!(job["cancelled"].is_null(), "a watcher's hang-up leaves the job alone: {job:#}");
    client.delete(format!("{}/v1/jobs/{id}", mesh.api(0))).send().await.expect("cancel");
}

fn event_names(events: &[(String, String)]) -> Vec<&str> {
    events.iter().map(|(name, _)| name.as_str()).collect()
}

async fn replay(mesh: &Mesh, id: &str) -> Vec<(String, String)> {
    let response = http().get(format!("{}/v1/jobs/{id}/events", mesh.api(0))).send().await.expect("get");
    sse(&response.text().await.expect("text"))
}

fn is_peer_id(value: &Value) -> bool {
    value.as_str().is_some_and(|s| s.starts_with("12D3KooW"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_jobs_replay_is_complete_and_typed() {
    let mesh = quick_mesh().await;

    let id = mesh.submit(json!({ "question": "What is the capital of France?", "mode": "council" })).await;
    mesh.wait_status(&id, |s| s == "done").await;
    let events = replay(&mesh, &id).await;
    let names = event_names(&events);
    assert_eq!(names.first(), Some(&"job"), "{names:?}");
    assert_eq!(&names[names.len() - 2..], ["outcome", "done"], "{names:?}");
    assert_eq!(names.iter().filter(|n| **n == "candidate").count(), 3, "{names:?}");
    assert_eq!(names.iter().filter(|n| **n == "round").count(), 1, "{names:?}");
    assert!(names.iter().filter(|n| **n == "ballot").count() >= 2, "{names:?}");
    let at = |name: &str| names.iter().position(|n| *n == name).expect(name);
    assert!(
        at("job") < at("candidate") && at("candidate") < at("round") && at("round") < at("ballot"),
        "{names:?}"
    );
    for (name, data) in &events {
        let event: Value = serde_json::from_str(data).expect("json");
        let body = &event["body"];
        match name.as_str() {
            "job" => {
                let participants = body["participants"].as_array().expect("participants");
                assert!(participants.len() == 3 && participants.iter().all(is_peer_id), "{body}");
            }
            "round" => {
                assert!(body["candidates"].as_array().expect("candidates").iter().all(is_peer_id), "{body}")
            }
            "ballot" => {
                assert!(is_peer_id(&body["voter"]), "{body}");
                assert_eq!(body["rule"], "schulze", "{body}");
            }
            "candidate" => assert_eq!(body["text"], CANDIDATE),
            "outcome" => assert_eq!(body["answer"], FINAL),
            _ => {}
        }
        if name != "done" {
            assert!(is_peer_id(&event["peer"]), "{event}");
        }
    }

    let id = mesh.submit(json!({ "question": "What is the capital of France?", "mode": "pipeline" })).await;
    mesh.wait_status(&id, |s| s == "done").await;
    let events = replay(&mesh, &id).await;
    assert_eq!(
        event_names(&events),
        ["job", "stage", "stage", "stage", "stage", "outcome", "done"],
        "every stage replays: {events:#?}"
    );
    let stages: Vec<String> = events[1..5]
        .iter()
        .map(|(_, data)| {
            serde_json::from_str::<Value>(data).expect("json")["kind"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(stages[0], "stage.generator");
    assert_eq!(stages[3], "stage.curator");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streamed_answer_is_exactly_the_jobs_answer() {
    // The curator sends a piece, then its stream errors: the council's
    // winner stands as the answer, and only it may be streamed.
    let server = || {
        TestServer::responding(|body| {
            if is_curator(body) {
                Reply::MidStreamError {
                    pieces: vec!["A partial curator".into()],
                    message: "upstream died".into(),
                }
            } else {
                Reply::text(&[CANDIDATE])
            }
        })
    };
    let mesh = mesh_of(vec![server().await, server().await, server().await]).await;
    for model in ["council"] {
        let events =
            chat_stream(&mesh, json!({ "model": model, "messages": question(), "stream": true })).await;
        let chunks: Vec<Value> = events
            .iter()
            .filter(|e| *e != "[DONE]")
            .map(|e| serde_json::from_str(e).expect("json"))
            .collect();
        let text: String =
            chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
        let outcome = chunks.iter().find_map(|c| c.get("hivemesh")).expect("the outcome rides along");
        assert_eq!(text, outcome["outcome"]["answer"].as_str().expect("an answer"), "{model}: {chunks:#?}");
        assert!(!text.contains("partial"), "{model}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_node_leaves_ends_with_an_error_not_a_cut() {
    let mut mesh = mesh_of(vec![slow().await, slow().await, slow().await]).await;
    let api = mesh.api(0);
    let client = http();
    let mut chat = client
        .post(format!("{api}/v1/chat/completions"))
        .json(&json!({ "model": "council", "messages": question(), "stream": true }))
        .send()
        .await
        .expect("post");
    let first = chat.chunk().await.expect("read").expect("a first chunk");
    let id = String::from_utf8_lossy(&first)
        .split("chatcmpl-")
        .nth(1)
        .map(|rest| rest[..32].to_string())
        .expect("the job's id");
    let mut events = client.get(format!("{api}/v1/jobs/{id}/events")).send().await.expect("events");
    let _ = events.chunk().await.expect("read").expect("the replay begins");

    // The node asked leaves while both streams wait for the answer.
    mesh.nodes.remove(0).leave(Duration::from_secs(2)).await;
    let mut rest = String::new();
    while let Ok(Some(chunk)) = chat.chunk().await {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    let last: Value = sse(&rest)
        .last()
        .and_then(|(_, data)| serde_json::from_str(data).ok())
        .unwrap_or_else(|| panic!("no final event: {rest:?}"));
    assert_eq!(last["error"]["code"], "node_stopped", "{rest}");
    assert!(
        !rest.contains("[DONE]") && !rest.contains("finish_reason\":\"stop"),
        "no answer claimed: {rest}"
    );

    let mut replay = String::new();
    while let Ok(Some(chunk)) = events.chunk().await {
        replay.push_str(&String::from_utf8_lossy(&chunk));
    }
    let error =
        sse(&replay).into_iter().find(|(name, _)| name == "error").unwrap_or_else(|| panic!("{replay}"));
    assert!(error.1.contains("node_stopped"), "{replay}");
}
