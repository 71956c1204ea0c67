//! Pipeline overhead on top of provider time, against a real SSE server on
//! loopback: a direct call, the whole pipeline, first-token latency, and the
//! client's stream parsing rate.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Reply, TestServer};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hivemesh_llm::pipeline::{Pipeline, PipelineEvent, PipelineOptions, Profiles, Stage};
use hivemesh_llm::provider::openai::{OpenAiConfig, OpenAiProvider};
use hivemesh_llm::{Budget, ChatMessage, ChatRequest, LlmClient, ResilienceConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A fixed provider latency before each reply's first piece.
const LATENCY: Duration = Duration::from_millis(20);

fn client(server: &TestServer) -> Arc<LlmClient> {
    let provider =
        OpenAiProvider::new(OpenAiConfig::new("loopback", server.base_url(), "m")).expect("client");
    let config = ResilienceConfig { cache_entries: 0, rate_per_second: None, ..ResilienceConfig::default() };
    Arc::new(LlmClient::new(Arc::new(provider), config))
}

fn fixed_latency_reply() -> Reply {
    let mut pieces = vec!["word ".to_string(); 16];
    pieces[0] = "first ".into();
    Reply::Stream { pieces, delay: Duration::ZERO, usage: Some((10, 16, None)), keepalive: true }
}

/// The server waits `latency` before answering, like a provider would, then
/// streams all 16 pieces at once.
async fn server(latency: Duration) -> TestServer {
    if latency.is_zero() {
        return TestServer::responding(|_| fixed_latency_reply()).await;
    }
    TestServer::responding(move |_| Reply::AfterLatency(latency, Box::new(fixed_latency_reply()))).await
}

async fn run_pipeline(pipeline: &Pipeline, first_token: &mut Option<Duration>) {
    let profile = Profiles::default().get("fast").expect("fast").clone();
    let (events, mut received) = mpsc::channel(1024);
    let conversation = [ChatMessage::user("What is the capital of France?")];
    let started = Instant::now();
    let cancel = CancellationToken::new();
    let options = PipelineOptions::default();
    let outcome = {
        let run = pipeline.run(&conversation, &profile, &options, &events, &cancel);
        tokio::pin!(run);
        loop {
            tokio::select! {
                outcome = &mut run => break outcome,
                Some(event) = received.recv() => {
                    if first_token.is_none() && matches!(event, PipelineEvent::Tokens { stage: Stage::Generator, .. }) {
                        *first_token = Some(started.elapsed());
                    }
                }
            }
        }
    };
    outcome.expect("pipeline");
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(20);
    for (label, latency) in [("zero_latency", Duration::ZERO), ("20ms_provider", LATENCY)] {
        let server = runtime.block_on(server(latency));
        let client = client(&server);
        let request = ChatRequest::new("", vec![ChatMessage::user("What is the capital of France?")]);
        group.bench_function(format!("direct_call/{label}"), |b| {
            b.to_async(&runtime).iter(|| async {
                client.complete(request.clone(), &Budget::unlimited(), |_| {}).await.expect("call")
            })
        });
        let pipeline = Pipeline::new(client.clone());
        group.bench_function(format!("hive_4_stages/{label}"), |b| {
            b.to_async(&runtime).iter(|| async { run_pipeline(&pipeline, &mut None).await })
        });
        group.bench_function(format!("first_generator_token/{label}"), |b| {
            b.to_async(&runtime).iter_custom(|iterations| {
                let pipeline = pipeline.clone();
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iterations {
                        let mut first = None;
                        run_pipeline(&pipeline, &mut first).await;
                        total += first.expect("a first token");
                    }
                    total
                }
            })
        });
    }
    group.finish();

    let mut parsing = c.benchmark_group("client_stream");
    let pieces: Vec<String> = (0..1000).map(|i| format!("token{i} ")).collect();
    let server = runtime.block_on(TestServer::responding(move |_| Reply::Stream {
        pieces: pieces.clone(),
        delay: Duration::ZERO,
        usage: None,
        keepalive: true,
    }));
    let client = client(&server);
    let request = ChatRequest::new("", vec![ChatMessage::user("stream")]);
    parsing.throughput(Throughput::Elements(1000));
    parsing.bench_function("1000_chunks_with_keepalives", |b| {
        b.to_async(&runtime).iter(|| async {
            client.complete(request.clone(), &Budget::unlimited(), |_| {}).await.expect("call")
        })
    });
    parsing.finish();
}

criterion_group!(pipeline_benches, benches);
criterion_main!(pipeline_benches);
