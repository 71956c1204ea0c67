//! The OpenAI-compatible client against a real streaming server on loopback:
//! parsing, headers, retries, breaker, cache, cost, budget, cancellation.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Reply, TestServer};
use futures_util::StreamExt;
use hivemesh_llm::provider::openai::{OpenAiConfig, OpenAiProvider};
use hivemesh_llm::{
    BreakerState, Budget, ChatMessage, ChatRequest, Chunk, LlmClient, LlmError, ResilienceConfig,
};

fn fast_config() -> ResilienceConfig {
    ResilienceConfig {
        max_attempts: 3,
        min_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        breaker_failures: 50,
        ..ResilienceConfig::default()
    }
}

fn client(server: &TestServer, config: ResilienceConfig) -> LlmClient {
    let mut provider = OpenAiConfig::new("test", server.base_url(), "test/default-model");
    provider.api_key = Some("sk-test-key".into());
    LlmClient::new(Arc::new(OpenAiProvider::new(provider).expect("client")), config)
}

fn question(text: &str) -> ChatRequest {
    ChatRequest::new("", vec![ChatMessage::user(text)])
}

#[tokio::test]
async fn streams_text_usage_and_cost_past_keepalives_with_the_expected_headers() {
    let server = TestServer::scripted(vec![Reply::text(&["The capital", " of France", " is Paris."])]).await;
    let client = client(&server, fast_config());
    let mut pieces = Vec::new();
    let budget = Budget::unlimited();
    let mut request = question("capital of France?");
    request.temperature = 0.3;
    request.max_tokens = 50;
    let completion =
        client.complete(request, &budget, |text| pieces.push(text.to_string())).await.expect("ok");

    assert_eq!(pieces, ["The capital", " of France", " is Paris."]);
    assert_eq!(completion.text, "The capital of France is Paris.");
    assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
    let usage = completion.usage.expect("usage in the last chunk");
    assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.cost_usd), (12, 3, Some(0.00042)));
    assert!((budget.snapshot().spent_usd - 0.00042).abs() < 1e-12, "cost accounted to the job");

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let headers = &seen[0].headers;
    assert_eq!(headers["authorization"], "Bearer sk-test-key");
    assert_eq!(headers["x-title"], "hivemesh");
    assert!(headers.contains_key("http-referer"));
    let body = &seen[0].body;
    assert_eq!(body["model"], "test/default-model", "empty model means the provider default");
    assert_eq!(body["stream"], true);
    assert_eq!(body["max_tokens"], 50);
    assert_eq!(body["messages"][0]["content"], "capital of France?");
}

#[tokio::test]
async fn a_429_is_retried_after_the_servers_retry_after() {
    let throttled = Reply::Status {
        code: 429,
        retry_after: Some("0.3".into()),
        body: r#"{"error":{"message":"Rate limit exceeded"}}"#.into(),
    };
    let server = TestServer::scripted(vec![throttled, Reply::text(&["fine"])]).await;
    let client = client(&server, fast_config());
    let started = Instant::now();
    let completion = client.complete(question("q"), &Budget::unlimited(), |_| {}).await.expect("retried");
    assert_eq!(completion.text, "fine");
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    assert!(gap >= Duration::from_millis(290), "waited only {gap:?} despite Retry-After: 0.3");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(client.stats().retries, 1);
}

#[tokio::test]
async fn server_errors_are_retried_until_the_attempts_run_out() {
    let server = TestServer::scripted(vec![Reply::status(502, "upstream down")]).await;
    let client = client(&server, fast_config());
    let error = client.complete(question("q"), &Budget::unlimited(), |_| {}).await.expect_err("fails");
    assert!(matches!(error, LlmError::Status { status: 502, .. }), "{error:?}");
    assert!(error.to_string().contains("upstream down"), "{error}");
    assert_eq!(server.seen().len(), 3, "max_attempts = 3");
}

#[tokio::test]
async fn client_errors_are_never_retried() {
    for code in [400, 401, 402, 403] {
        let server = TestServer::scripted(vec![Reply::status(code, "not allowed")]).await;
        let client = client(&server, fast_config());
        let error = client.complete(question("q"), &Budget::unlimited(), |_| {}).await.expect_err("fails");
        assert!(error.to_string().contains(&format!("HTTP {code}: not allowed")), "{error}");
        assert_eq!(server.seen().len(), 1, "HTTP {code} must not be retried");
    }
}

#[tokio::test]
async fn an_error_event_mid_stream_is_an_error_not_a_short_answer() {
    let reply = Reply::MidStreamError {
        pieces: vec!["The capital".into()],
        message: "Provider disconnected unexpectedly".into(),
    };
    let server = TestServer::scripted(vec![reply]).await;
    let client = client(&server, fast_config());
    let mut pieces = Vec::new();
    let error = client
        .complete(question("q"), &Budget::unlimited(), |text| pieces.push(text.to_string()))
        .await
        .expect_err("mid-stream error");
    assert_eq!(pieces, ["The capital"]);
    match error {
        LlmError::MidStream { message, code, .. } => {
            assert_eq!(message, "Provider disconnected unexpectedly");
            assert_eq!(code.as_deref(), Some("server_error"));
        }
        other => panic!("expected a mid-stream error, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_streams_get_errors_naming_the_problem() {
    let server = TestServer::scripted(vec![
        Reply::Raw("data: {\"choices\": [\n\n".into()),
        Reply::Raw(": ping\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"cut\"}}]}\n\n".into()),
    ])
    .await;
    // No retries: a failure before the first chunk would be retried with the next reply.
    let client = client(&server, ResilienceConfig { max_attempts: 1, ..fast_config() });
    let broken = client.complete(question("a"), &Budget::unlimited(), |_| {}).await.expect_err("broken JSON");
    assert!(broken.to_string().contains("not a chat-completions chunk"), "{broken}");
    let cut = client.complete(question("b"), &Budget::unlimited(), |_| {}).await.expect_err("no [DONE]");
    assert!(matches!(cut, LlmError::Incomplete { .. }), "{cut:?}");
    assert!(
        cut.to_string().contains("closed before [DONE] after 1 text chunk(s) but without a finish_reason"),
        "{cut}"
    );
}

#[tokio::test]
async fn the_breaker_opens_after_repeated_failures_and_closes_after_a_good_probe() {
    let server = TestServer::scripted(vec![
        Reply::status(500, "boom"),
        Reply::status(500, "boom"),
        Reply::text(&["recovered"]),
    ])
    .await;
    let config = ResilienceConfig {
        max_attempts: 1,
        breaker_failures: 2,
        breaker_open_for: Duration::from_millis(200),
        ..fast_config()
    };
    let client = client(&server, config);
    for _ in 0..2 {
        client.complete(question("q"), &Budget::unlimited(), |_| {}).await.expect_err("500");
    }
    let refused = client.complete(question("q"), &Budget::unlimited(), |_| {}).await.expect_err("open");
    assert!(matches!(refused, LlmError::CircuitOpen { .. }), "{refused:?}");
    assert_eq!(server.seen().len(), 2, "an open breaker makes no request");
    assert_eq!(client.stats().breakers, vec![("test/default-model".to_string(), BreakerState::Open)]);

    tokio::time::sleep(Duration::from_millis(250)).await;
    let probe = client.complete(question("q"), &Budget::unlimited(), |_| {}).await.expect("probe succeeds");
    assert_eq!(probe.text, "recovered");
    assert_eq!(client.stats().breakers, vec![("test/default-model".to_string(), BreakerState::Closed)]);
    assert_eq!(client.stats().breaker_rejections, 1);
}

#[tokio::test]
async fn identical_requests_are_served_from_the_cache() {
    let server = TestServer::scripted(vec![Reply::text(&["Paris"])]).await;
    let client = client(&server, fast_config());
    let budget = Budget::unlimited();
    let first = client.complete(question("capital?"), &budget, |_| {}).await.expect("first");
    let second = client.complete(question("capital?"), &budget, |_| {}).await.expect("second");
    assert!(!first.cached && second.cached);
    assert_eq!(second.text, "Paris");
    assert_eq!(server.seen().len(), 1, "the repeat made no request");
    let mut warmer = question("capital?");
    warmer.temperature = 0.9;
    client.complete(warmer, &budget, |_| {}).await.expect("other parameters");
    assert_eq!(server.seen().len(), 2, "different parameters, different key");
    assert_eq!(client.stats().cache_hits, 1);
    assert!((budget.snapshot().spent_usd - 0.00084).abs() < 1e-12, "the cached answer cost nothing");
}

#[tokio::test]
async fn a_spent_budget_stops_further_calls_with_a_clear_error() {
    let server = TestServer::scripted(vec![Reply::text(&["one"])]).await;
    let client = client(&server, fast_config());
    let budget = Budget::new(Some(0.0008), None);
    client.complete(question("a"), &budget, |_| {}).await.expect("0.00042 of 0.0008");
    client.complete(question("b"), &budget, |_| {}).await.expect("0.00084: now over");
    let error = client.complete(question("c"), &budget, |_| {}).await.expect_err("over budget");
    assert!(matches!(error, LlmError::BudgetExceeded { .. }), "{error:?}");
    assert!(error.to_string().contains("job budget exceeded: spent $0.000840 of $0.000800"), "{error}");
    assert_eq!(server.seen().len(), 2, "no request once the budget is spent");

    let tokens = Budget::new(None, Some(3));
    let long = TestServer::scripted(vec![Reply::text(&["a", "b", "c", "d", "e", "f"])]).await;
    let error = client_for(&long).complete(question("d"), &tokens, |_| {}).await.expect_err("token budget");
    assert!(matches!(error, LlmError::TokenBudgetExceeded { used: 4, budget: 3 }), "{error:?}");
}

fn client_for(server: &TestServer) -> LlmClient {
    client(server, fast_config())
}

#[tokio::test]
async fn dropping_a_stream_hangs_up_on_the_server_promptly() {
    let pieces: Vec<&str> = vec!["tick"; 50];
    let server = TestServer::scripted(vec![Reply::slow(&pieces, Duration::from_millis(100))]).await;
    let client = client(&server, fast_config());
    let mut stream = client.stream(question("q"), &Budget::unlimited()).await.expect("opened");
    let first = stream.next().await.expect("a chunk").expect("ok");
    assert_eq!(first, Chunk::Text("tick".into()));
    let cancelled_at = Instant::now();
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(2);
    while server.hangups().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let hangups = server.hangups();
    assert_eq!(hangups.len(), 1, "the server saw the stream abandoned");
    let lag = hangups[0] - cancelled_at;
    // The server notices at its next write, at most one 100 ms piece later.
    assert!(lag < Duration::from_millis(500), "hang-up took {lag:?} (the full stream takes 5 s)");
}

#[tokio::test]
async fn an_unreachable_server_is_a_connect_error_after_retries() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let provider =
        OpenAiProvider::new(OpenAiConfig::new("gone", format!("http://{addr}/v1"), "m")).expect("client");
    let client = LlmClient::new(Arc::new(provider), fast_config());
    let error = client.complete(question("q"), &Budget::unlimited(), |_| {}).await.expect_err("refused");
    assert!(matches!(error, LlmError::Connect { .. }), "{error:?}");
    assert_eq!(client.stats().attempts, 3);
}

#[tokio::test]
async fn embeddings_come_back_in_input_order_and_only_with_an_embedding_model() {
    let server = TestServer::scripted(vec![Reply::text(&["ok"])])
        .await
        .with_embeddings(|text| vec![text.len() as f32, 1.0]);
    let mut config = OpenAiConfig::new("test", server.base_url(), "chat-model");
    let without =
        LlmClient::new(Arc::new(OpenAiProvider::new(config.clone()).expect("provider")), fast_config());
    assert_eq!(without.embed(vec!["a".into()]).await.expect("no call"), None, "no embedding model: no call");
    assert!(server.seen().is_empty());

    config.embedding_model = Some("embed-small".into());
    let with =
        LlmClient::new(Arc::new(OpenAiProvider::new(config.clone()).expect("provider")), fast_config());
    let vectors = with.embed(vec!["a".into(), "abc".into(), "ab".into()]).await.expect("embeddings");
    // The server lists them in reverse; the client puts them back by index.
    assert_eq!(vectors, Some(vec![vec![1.0, 1.0], vec![3.0, 1.0], vec![2.0, 1.0]]));
    assert_eq!(server.seen()[0].body["model"], "embed-small");

    let plain = TestServer::scripted(vec![Reply::text(&["ok"])]).await;
    let mut config = OpenAiConfig::new("plain", plain.base_url(), "chat-model");
    config.embedding_model = Some("missing".into());
    let client = LlmClient::new(Arc::new(OpenAiProvider::new(config).expect("provider")), fast_config());
    let error = client.embed(vec!["a".into()]).await.expect_err("a 404");
    assert!(matches!(error, LlmError::Status { status: 404, .. }), "{error}");
}
