//! Stream shapes real OpenAI-compatible servers send (vLLM, llama.cpp,
//! OpenRouter, Ollama, LiteLLM), replayed by a loopback server: every error
//! shape is an error with the server's message, `null` is absent, bad UTF-8
//! costs one character, a stream without a finish_reason is never an answer,
//! and nothing but an accepted answer is cached.

mod common;

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use common::{Reply, TestServer};
use hivemesh_llm::provider::openai::{OpenAiConfig, OpenAiProvider};
use hivemesh_llm::{Budget, ChatMessage, ChatRequest, LlmClient, LlmError, ResilienceConfig};
use serde_json::json;

fn config() -> ResilienceConfig {
    ResilienceConfig {
        max_attempts: 3,
        min_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        breaker_failures: 50,
        ..ResilienceConfig::default()
    }
}

fn client_with(server: &TestServer, config: ResilienceConfig) -> LlmClient {
    let provider = OpenAiConfig::new("test", server.base_url(), "m");
    LlmClient::new(Arc::new(OpenAiProvider::new(provider).expect("client")), config)
}

/// No retries inside the client, to see each stream's own outcome.
fn client(server: &TestServer) -> LlmClient {
    client_with(server, ResilienceConfig { max_attempts: 1, ..config() })
}

fn question(text: &str) -> ChatRequest {
    ChatRequest::new("", vec![ChatMessage::user(text)])
}

async fn ask(client: &LlmClient, text: &str) -> Result<String, LlmError> {
    client.complete(question(text), &Budget::unlimited(), |_| {}).await.map(|completion| completion.text)
}

const PARIS_IS_THE_CAP: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Paris is the cap\"},\"finish_reason\":null}]}\n\n";
const GOOD: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"Paris.\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";

fn sse(events: &[&str]) -> Reply {
    Reply::Raw(events.iter().map(|event| format!("{event}\n\n")).collect())
}

#[tokio::test]
async fn a_vllm_error_after_text_is_an_error_not_a_truncated_answer() {
    let vllm = r#"data: {"object":"error","message":"Engine loop died: CUDA out of memory","type":"InternalServerError","param":null,"code":500}"#;
    let server = TestServer::scripted(vec![
        Reply::Raw(format!("{PARIS_IS_THE_CAP}{vllm}\n\ndata: [DONE]\n\n")),
        Reply::Raw(GOOD.into()),
    ])
    .await;
    let client = client(&server);
    let error = ask(&client, "capital of France?").await.expect_err("never \"Paris is the cap\"");
    match &error {
        LlmError::MidStream { message, code, .. } => {
            assert!(message.contains("Engine loop died: CUDA out of memory"), "{message}");
            assert_eq!(code.as_deref(), Some("500"));
        }
        other => panic!("expected the server's error, got {other:?}"),
    }
    assert!(error.is_retryable(), "a 500 inside the stream is worth another try");
    // Nothing was cached: the same question reaches the server and gets the whole answer.
    assert_eq!(ask(&client, "capital of France?").await.expect("second try"), "Paris.");
    assert_eq!(server.seen().len(), 2);
    assert_eq!(client.stats().cache_hits, 0);
}

#[tokio::test]
async fn every_error_shape_servers_send_fails_the_call_with_the_servers_message() {
    let shapes: [(&str, Vec<&str>); 10] = [
        (
            "error key",
            vec![
                PARIS_IS_THE_CAP.trim(),
                r#"data: {"error":{"message":"upstream overloaded","code":"server_error"}}"#,
                "data: [DONE]",
            ],
        ),
        (
            "error string",
            vec![PARIS_IS_THE_CAP.trim(), r#"data: {"error":"litellm: upstream timeout"}"#, "data: [DONE]"],
        ),
        ("object error", vec![r#"data: {"object":"error","message":"vllm engine dead","code":500}"#]),
        (
            "event error json",
            vec![PARIS_IS_THE_CAP.trim(), "event: error\ndata: {\"message\":\"sse error event\"}"],
        ),
        (
            "event error text",
            vec![PARIS_IS_THE_CAP.trim(), "event: error\ndata: plain error text", "data: [DONE]"],
        ),
        (
            "finish_reason error",
            vec![
                PARIS_IS_THE_CAP.trim(),
                r#"data: {"choices":[{"delta":{},"finish_reason":"error"}]}"#,
                "data: [DONE]",
            ],
        ),
        (
            "type error",
            vec![r#"data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#],
        ),
        (
            "choice error",
            vec![
                PARIS_IS_THE_CAP.trim(),
                r#"data: {"choices":[{"index":0,"error":{"message":"choice failed"}}]}"#,
            ],
        ),
        (
            "error after finish",
            vec![
                r#"data: {"choices":[{"delta":{"content":"Paris."},"finish_reason":"stop"}]}"#,
                r#"data: {"error":{"message":"late failure"}}"#,
                "data: [DONE]",
            ],
        ),
        (
            "openrouter",
            vec![
                PARIS_IS_THE_CAP.trim(),
                r#"data: {"error":{"code":502,"message":"Provider disconnected"},"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}"#,
            ],
        ),
    ];
    let expected = [
        "upstream overloaded",
        "litellm: upstream timeout",
        "vllm engine dead",
        "sse error event",
        "plain error text",
        "finish_reason \"error\"",
        "Overloaded",
        "choice failed",
        "late failure",
        "Provider disconnected",
    ];
    for ((shape, events), wanted) in shapes.into_iter().zip(expected) {
        let server = TestServer::scripted(vec![sse(&events), Reply::Raw(GOOD.into())]).await;
        let client = client(&server);
        let error = ask(&client, "q").await.expect_err(shape);
        assert!(matches!(error, LlmError::MidStream { .. }), "{shape}: {error:?}");
        assert!(error.to_string().contains(wanted), "{shape}: {error}");
        assert_eq!(ask(&client, "q").await.expect("the error was not cached"), "Paris.", "{shape}");
    }
}

#[tokio::test]
async fn a_200_json_error_body_in_place_of_a_stream_carries_the_servers_message() {
    for body in [
        r#"{"object":"error","message":"Engine loop died: CUDA out of memory","type":"InternalServerError","param":null,"code":500}"#,
        r#"{"error":{"message":"Engine loop died: CUDA out of memory","type":"server_error"}}"#,
    ] {
        let json_body = Reply::Status { code: 200, retry_after: None, body: body.into() };
        let server = TestServer::scripted(vec![json_body, Reply::Raw(GOOD.into())]).await;
        let client = client(&server);
        let error = ask(&client, "q").await.expect_err("an error, not an answer");
        assert!(error.to_string().contains("Engine loop died: CUDA out of memory"), "{error}");
        assert!(!error.to_string().contains("[DONE]"), "{error}");
        assert!(error.is_retryable(), "{error:?}");
        assert_eq!(ask(&client, "q").await.expect("retry reaches the server"), "Paris.");
    }
}

#[tokio::test]
async fn a_200_json_completion_in_place_of_a_stream_is_accepted() {
    let body = json!({
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2},
    });
    let server =
        TestServer::scripted(vec![Reply::Status { code: 200, retry_after: None, body: body.to_string() }])
            .await;
    let completion =
        client(&server).complete(question("q"), &Budget::unlimited(), |_| {}).await.expect("accepted");
    assert_eq!(completion.text, "Paris.");
    assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
    assert_eq!(completion.usage.map(|usage| usage.completion_tokens), Some(2));
}

#[tokio::test]
async fn only_done_is_an_incomplete_stream_and_the_retry_is_not_served_from_the_cache() {
    let server =
        TestServer::scripted(vec![Reply::Raw("data: [DONE]\n\n".into()), Reply::Raw(GOOD.into())]).await;
    let client = client(&server);
    let error = ask(&client, "q").await.expect_err("no answer");
    assert!(matches!(error, LlmError::Incomplete { .. }), "{error:?}");
    assert!(error.is_retryable());
    assert!(error.to_string().contains("no text and no finish_reason"), "{error}");
    assert_eq!(ask(&client, "q").await.expect("reaches the server"), "Paris.");
    assert_eq!(server.seen().len(), 2, "the empty answer was not cached");
    // The accepted answer is cached; a fresh call still reaches the server.
    assert_eq!(ask(&client, "q").await.expect("cached"), "Paris.");
    assert_eq!((server.seen().len(), client.stats().cache_hits), (2, 1));
    let fresh = client.complete_fresh(question("q"), &Budget::unlimited(), |_| {}).await.expect("fresh");
    assert!(!fresh.cached);
    assert_eq!(server.seen().len(), 3, "complete_fresh skips the cache");
}

#[tokio::test]
async fn a_stream_without_a_finish_reason_is_never_an_answer_nor_cached() {
    let text = "data: {\"choices\":[{\"delta\":{\"content\":\"Paris is\"}}]}\n\n";
    let cut_shapes = [
        format!("{text}data: [DONE]\n\n"),
        // The body closes cleanly with neither finish_reason nor [DONE].
        text.to_string(),
        // A role chunk and [DONE]: llama-cpp-python's interrupted stream.
        "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"},\"finish_reason\":null}]}\n\ndata: [DONE]\n\n".into(),
        // Blank and length-truncated answers are not cached either (the second call must reach the server).
        "data: {\"choices\":[{\"delta\":{\"content\":\"  \"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n".into(),
        "data: {\"choices\":[{\"delta\":{\"content\":\"Paris is\"},\"finish_reason\":\"length\"}]}\n\ndata: [DONE]\n\n".into(),
    ];
    for (shape, body) in cut_shapes.into_iter().enumerate() {
        let server = TestServer::scripted(vec![Reply::Raw(body), Reply::Raw(GOOD.into())]).await;
        let client = client(&server);
        match ask(&client, "q").await {
            Err(error) => {
                assert!(shape < 3, "shape {shape}: {error}");
                assert!(matches!(error, LlmError::Incomplete { .. }), "shape {shape}: {error:?}");
                assert!(error.to_string().contains("without finishing the answer"), "{error}");
            }
            Ok(text) => assert!(shape >= 3, "shape {shape} accepted as {text:?}"),
        }
        assert_eq!(ask(&client, "q").await.expect("the retry reaches the server"), "Paris.", "shape {shape}");
        assert_eq!(server.seen().len(), 2, "shape {shape}");
    }
}

#[tokio::test]
async fn a_failure_before_the_first_chunk_is_retried_inside_the_client() {
    let failures_before_any_text = [
        Reply::Raw("data: [DONE]\n\n".into()),
        Reply::Status {
            code: 200,
            retry_after: None,
            body: r#"{"object":"error","message":"busy","code":503}"#.into(),
        },
        sse(&[r#"data: {"choices":[{"delta":{"role":"assistant"}}]}"#, "data: [DONE]"]),
        sse(&["event: error\ndata: {\"message\":\"overloaded\"}"]),
        Reply::Reset(Vec::new()),
    ];
    let count = failures_before_any_text.len();
    let mut script = failures_before_any_text.to_vec();
    script.push(Reply::Raw(GOOD.into()));
    let server = TestServer::scripted(script).await;
    let client = client_with(&server, ResilienceConfig { max_attempts: count + 1, ..config() });
    assert_eq!(ask(&client, "q").await.expect("the last attempt answers"), "Paris.");
    assert_eq!(server.seen().len(), count + 1);
    assert_eq!(client.stats().retries, count as u64);
    // Once text has been delivered, a failure is the caller's to retry (it showed the text).
    let server =
        TestServer::scripted(vec![Reply::Reset(vec![PARIS_IS_THE_CAP.into()]), Reply::Raw(GOOD.into())])
            .await;
    let client = client_with(&server, config());
    assert!(matches!(ask(&client, "q").await, Err(LlmError::Disconnected { .. })));
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn a_finish_reason_without_done_is_a_whole_answer_even_if_the_connection_then_drops() {
    let finished =
        "data: {\"choices\":[{\"delta\":{\"content\":\"Paris.\"},\"finish_reason\":\"stop\"}]}\n\n";
    for reply in [Reply::Raw(finished.into()), Reply::Reset(vec![finished.into()])] {
        let server = TestServer::scripted(vec![reply]).await;
        let client = client(&server);
        assert_eq!(ask(&client, "q").await.expect("whole"), "Paris.");
        assert_eq!(ask(&client, "q").await.expect("cached"), "Paris.");
        assert_eq!(client.stats().cache_hits, 1, "an accepted answer is cached");
    }
}

#[tokio::test]
async fn null_reads_as_absent_in_every_field_of_a_chunk() {
    let server = TestServer::scripted(vec![sse(&[
        r#"data: {"id":null,"object":null,"created":null,"model":null,"choices":null}"#,
        r#"data: {"choices":[null]}"#,
        r#"data: {"choices":[{"index":null,"delta":null,"finish_reason":null}]}"#,
        r#"data: {"choices":[{"delta":{"role":null,"content":null,"tool_calls":null},"logprobs":null}]}"#,
        r#"data: {"choices":[{"delta":{"content":"Paris"}}],"usage":null,"error":null}"#,
        r#"data: {"choices":[{"delta":{"content":"."},"finish_reason":"stop"}],"usage":{"prompt_tokens":null,"completion_tokens":2,"total_tokens":null,"cost":null}}"#,
        r#"data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":null}}"#,
        "data: [DONE]",
    ])])
    .await;
    let completion =
        client(&server).complete(question("q"), &Budget::unlimited(), |_| {}).await.expect("nulls are fine");
    assert_eq!(completion.text, "Paris.");
    assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
    let usage = completion.usage.expect("usage");
    assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.cost_usd), (5, 0, None));
}

#[tokio::test]
async fn invalid_utf8_in_content_becomes_one_replacement_character_and_the_stream_goes_on() {
    let mut body = b"data: {\"choices\":[{\"delta\":{\"content\":\"caf".to_vec();
    body.push(0xe9); // Latin-1 'e acute': not UTF-8.
    body.extend_from_slice(b" ok\"}}]}\n\n");
    body.extend_from_slice(GOOD.as_bytes());
    let server = TestServer::scripted(vec![Reply::RawBytes(body)]).await;
    let mut pieces = Vec::new();
    let completion = client(&server)
        .complete(question("q"), &Budget::unlimited(), |text| pieces.push(text.to_string()))
        .await
        .expect("delivered");
    assert_eq!(pieces, ["caf\u{fffd} ok", "Paris."]);
    assert_eq!(completion.text, "caf\u{fffd} okParis.");
}

#[tokio::test]
async fn a_dropped_connection_is_named_a_dropped_connection_and_is_retryable() {
    let server =
        TestServer::scripted(vec![Reply::Reset(vec![PARIS_IS_THE_CAP.into()]), Reply::Raw(GOOD.into())])
            .await;
    let client = client(&server);
    let error = ask(&client, "q").await.expect_err("cut");
    assert!(matches!(error, LlmError::Disconnected { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("dropped the connection") && message.contains("mid-stream"), "{message}");
    assert!(!message.contains("malformed"), "{message}");
    assert!(error.is_retryable());
    assert_eq!(ask(&client, "q").await.expect("not cached"), "Paris.");
}

#[tokio::test]
async fn a_prompt_over_the_context_is_named_as_such_and_not_retried() {
    let bodies = [
        // OpenAI.
        r#"{"error":{"message":"This model's maximum context length is 2048 tokens. However, your messages resulted in 9000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
        // llama.cpp's server.
        r#"{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error","n_prompt_tokens":9000,"n_ctx":2048}}"#,
        // vLLM.
        r#"{"object":"error","message":"This model's maximum context length is 2048 tokens. However, you requested 9000 tokens.","type":"BadRequestError","param":null,"code":400}"#,
    ];
    for body in bodies {
        let server =
            TestServer::scripted(vec![Reply::Status { code: 400, retry_after: None, body: body.into() }])
                .await;
        let error = ask(&client(&server), "q").await.expect_err("over the context");
        assert!(matches!(error, LlmError::ContextLengthExceeded { .. }), "{error:?}");
        assert!(error.to_string().contains("longer than the model's context window"), "{error}");
        assert!(!error.is_retryable());
        assert_eq!(server.seen().len(), 1, "a 400 is not retried: {body}");
    }
    // Streaming, llama-cpp-python answers 200 and closes without a single event.
    let server = TestServer::scripted(vec![Reply::Raw(String::new())]).await;
    let error = ask(&client(&server), "q").await.expect_err("empty stream");
    assert!(matches!(error, LlmError::EmptyStream { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("carried no events") && message.contains("context window"), "{message}");
    assert!(!error.is_retryable());
    // The same named inside a 200 stream.
    let in_stream =
        sse(&[r#"data: {"error":{"message":"prompt too long","code":"context_length_exceeded"}}"#]);
    let server = TestServer::scripted(vec![in_stream]).await;
    let error = ask(&client(&server), "q").await.expect_err("over the context");
    assert!(matches!(error, LlmError::ContextLengthExceeded { .. }), "{error:?}");
    // A 4xx code inside a 200 stream is not retried either.
    let in_stream = sse(&[r#"data: {"error":{"message":"invalid model","code":400}}"#]);
    let server = TestServer::scripted(vec![in_stream]).await;
    let error = ask(&client(&server), "q").await.expect_err("bad request");
    assert!(!error.is_retryable(), "{error:?}");
}

#[tokio::test]
async fn a_one_request_at_a_time_server_cuts_the_first_stream_then_requests_take_turns() {
    let pieces: Vec<String> = ["Paris", " is", " the", " capital."].iter().map(|p| p.to_string()).collect();
    let reply = Reply::OneAtATime { pieces, delay: Duration::from_millis(30) };

    let server = TestServer::scripted(vec![reply.clone()]).await;
    let unlimited = client_with(&server, ResilienceConfig { max_attempts: 1, cache_entries: 0, ..config() });
    let (first, second) = tokio::join!(ask(&unlimited, "first"), async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        ask(&unlimited, "second").await
    });
    let error = first.expect_err("the first stream was cut short");
    assert!(matches!(error, LlmError::Incomplete { .. }), "{error:?}");
    assert!(error.to_string().contains("one request at a time"), "{error}");
    assert_eq!(second.expect("the second went through"), "Paris is the capital.");
    assert_eq!(server.interrupted(), 1);
    // The client noticed: from now on its requests take turns.
    assert!(unlimited.stats().one_at_a_time);
    let (first, second) = tokio::join!(ask(&unlimited, "third"), ask(&unlimited, "fourth"));
    assert_eq!(
        (first.expect("third").as_str(), second.expect("fourth").as_str()),
        ("Paris is the capital.", "Paris is the capital.")
    );
    assert_eq!(server.interrupted(), 1, "no stream was cut after the first");

    let server = TestServer::scripted(vec![reply]).await;
    let limited = client_with(
        &server,
        ResilienceConfig { max_concurrent_requests: NonZeroUsize::new(1), cache_entries: 0, ..config() },
    );
    let (first, second) = tokio::join!(ask(&limited, "first"), ask(&limited, "second"));
    assert_eq!(first.expect("first"), "Paris is the capital.");
    assert_eq!(second.expect("second"), "Paris is the capital.");
    assert_eq!(server.interrupted(), 0);
    assert_eq!(server.most_open(), 1, "the calls took turns");
    assert_eq!(limited.stats().queued, 1);
}

#[tokio::test]
async fn per_token_embeddings_are_mean_pooled_and_other_shapes_are_named() {
    let server = TestServer::scripted(vec![Reply::text(&["ok"])]).await.with_embedding_values(|text| {
        json!(vec![vec![text.len() as f32, 0.0], vec![text.len() as f32, 2.0]])
    });
    let mut config = OpenAiConfig::new("llama", server.base_url(), "chat");
    config.embedding_model = Some("SmolLM2".into());
    let client = LlmClient::new(Arc::new(OpenAiProvider::new(config).expect("provider")), self::config());
    let vectors = client.embed(vec!["ab".into(), "abcd".into()]).await.expect("pooled");
    assert_eq!(vectors, Some(vec![vec![2.0, 1.0], vec![4.0, 1.0]]));

    let server =
        TestServer::scripted(vec![Reply::text(&["ok"])]).await.with_embedding_values(|_| json!("AAAAAA=="));
    let mut config = OpenAiConfig::new("odd", server.base_url(), "chat");
    config.embedding_model = Some("e".into());
    let client = LlmClient::new(Arc::new(OpenAiProvider::new(config).expect("provider")), self::config());
    let error = client.embed(vec!["a".into()]).await.expect_err("a string is no vector");
    assert!(
        error.to_string().contains("expected a list of numbers or one list per token, got \"AAAAAA==\""),
        "{error}"
    );
}
