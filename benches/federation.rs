//! What federation costs on top of the model calls: a job through a 3-node
//! loopback mesh against the same fixed-latency provider called directly;
//! the first token through the mesh against the provider's first token; and
//! how long a cancel takes to stop every participant's model call.
//!
//! After the criterion runs it prints p50/p99 of each and the overhead
//! (job time minus the model calls on its critical path), one figure per
//! line as `name: value unit` (a stable format: scripts read it).
//! Run: cargo bench --bench federation

#[path = "../tests/support/mesh.rs"]
mod mesh;
#[path = "../llm/tests/common/mod.rs"]
mod sse_server;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use hivemesh::llm::provider::openai::OpenAiConfig;
use hivemesh::llm::{Budget, ChatMessage, ChatRequest, Chunk, LlmClient};
use hivemesh::node::NodeHandle;
use hivemesh::node::federation::Submission;
use hivemesh::node::federation::spec::{Facts, Mode};
use hivemesh::protocol::{JobId, TallyRule};
use mesh::Mesh;
use sse_server::{Reply, TestServer};
use tokio::runtime::Runtime;

/// Every provider call waits this long before its first token.
const LATENCY: Duration = Duration::from_millis(20);
/// A question containing this word gets a long, slow answer (to cancel).
const SLOW: &str = "slowly";

async fn fixed_latency_provider() -> TestServer {
    TestServer::responding(|body| {
        let system = body["messages"][0]["content"].as_str().unwrap_or_default();
        let asked = body["messages"].to_string();
        let (text, delay) = if asked.contains(SLOW) {
            ("tick ".repeat(400), Duration::from_millis(50))
        } else if system.contains("the Curator") {
            ("Final: Paris is the capital of France.".to_string(), Duration::ZERO)
        } else {
            ("Paris is the capital of France.".to_string(), Duration::ZERO)
        };
        let pieces = text.split_inclusive(' ').map(String::from).collect();
        let stream = Reply::Stream { pieces, delay, usage: None, keepalive: false };
        Reply::AfterLatency(LATENCY, Box::new(stream))
    })
    .await
}

fn submission(mode: Mode, question: &str) -> Submission {
    Submission {
        question: vec![ChatMessage::user(question)],
        mode,
        profile: "fast".into(),
        peers: 3,
        quorum: None,
        rule: TallyRule::Schulze,
        deadline: Some(Duration::from_secs(60)),
        max_tokens: None,
    }
}

/// Submits at the first node and waits for the outcome (done, or a panic).
async fn run_job(asker: &NodeHandle, mode: Mode) -> Duration {
    let client = asker.client();
    let mut changes = client.job_changes();
    let federation = asker.federation().expect("federation");
    let started = Instant::now();
    let job = federation.submit(submission(mode, "What is the capital of France?")).await.expect("submit");
    let mut view = client.job(job).await.expect("job");
    let trace = std::env::var_os("FEDERATION_TRACE").is_some();
    loop {
        if let Some(outcome) = Facts::read(job, &view.contributions).outcome {
            assert_eq!(outcome.status, "done", "{outcome:?}");
            return started.elapsed();
        }
        match changes.recv().await {
            Ok(change) if change.job() == job => {
                if trace {
                    let kinds: Vec<String> = change
                        .fresh
                        .iter()
                        .map(|c| {
                            let elapsed = serde_json::from_slice::<serde_json::Value>(&c.body)
                                .ok()
                                .and_then(|body| body["elapsed_ms"].as_u64());
                            match elapsed {
                                Some(ms) => format!("{} (call {ms} ms)", c.kind),
                                None => c.kind.clone(),
                            }
                        })
                        .collect();
                    eprintln!("trace {mode:?} {:7.2} ms {kinds:?}", started.elapsed().as_secs_f64() * 1e3);
                }
                view = change.view
            }
            Ok(_) => {}
            Err(_) => view = client.job(job).await.expect("job"),
        }
    }
}

/// Submit to the first token frame reaching the asker.
async fn first_token(asker: &NodeHandle) -> Duration {
    let mut frames = asker.client().job_frames();
    let started = Instant::now();
    let federation = asker.federation().expect("federation");
    let job = federation.submit(submission(Mode::Council, "Capital of France?")).await.expect("submit");
    loop {
        let frame = frames.recv().await.expect("frames");
        if frame.job == job {
            return started.elapsed();
        }
    }
}

/// Cancel to the last participant's provider seeing its stream hang up.
async fn cancel_latency(mesh: &Mesh) -> Duration {
    let asker = &mesh.nodes[0];
    let federation = asker.federation().expect("federation");
    let hangups_before: Vec<usize> = mesh.servers.iter().map(|s| s.hangups().len()).collect();
    let job: JobId =
        federation.submit(submission(Mode::Council, &format!("Count {SLOW}."))).await.expect("submit");
    while mesh
        .nodes
        .iter()
        .any(|n| n.federation().expect("fed").stats.running_calls.load(Ordering::Relaxed) == 0)
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(LATENCY * 2).await; // every stream is flowing
    let cancelled = Instant::now();
    federation.cancel(job).await.expect("cancel");
    let mut last = cancelled;
    for (server, before) in mesh.servers.iter().zip(hangups_before) {
        loop {
            let hangups = server.hangups();
            if hangups.len() > before {
                last = last.max(hangups[before]);
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    last - cancelled
}

async fn direct_call(client: &LlmClient) -> Duration {
    let started = Instant::now();
    let request = ChatRequest::new("canned", vec![ChatMessage::user("What is the capital of France?")]);
    client.complete(request, &Budget::default(), |_| {}).await.expect("direct call");
    started.elapsed()
}

async fn direct_first_token(client: &LlmClient) -> Duration {
    use futures_util::StreamExt;
    let started = Instant::now();
    let request = ChatRequest::new("canned", vec![ChatMessage::user("Capital of France?")]);
    let mut stream = client.stream(request, &Budget::default()).await.expect("stream");
    while let Some(chunk) = stream.next().await {
        if let Chunk::Text(_) = chunk.expect("chunk") {
            return started.elapsed();
        }
    }
    panic!("no text")
}

type Samples = Arc<Mutex<Vec<Duration>>>;

/// Times `one` like criterion's `iter_custom`, also keeping every sample.
fn measure<F, Fut>(runtime: &Runtime, samples: &Samples, iters: u64, one: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Duration>,
{
    runtime.block_on(async {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let took = one().await;
            samples.lock().expect("samples").push(took);
            total += took;
        }
        total
    })
}

fn percentile(samples: &Samples, p: f64) -> Duration {
    let mut sorted = samples.lock().expect("samples").clone();
    sorted.sort();
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

fn federation(c: &mut Criterion) {
    if std::env::var_os("FEDERATION_TRACE").is_some() {
        // Where a job's time goes: the nodes' own debug events, timestamped.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mesh = runtime.block_on(async {
        let mut servers = Vec::new();
        for _ in 0..3 {
            servers.push(fixed_latency_provider().await);
        }
        Mesh::with_servers(servers, 1).await
    });
    let direct = mesh::client_for(OpenAiConfig::new("direct", mesh.servers[0].base_url(), "canned"));
    let samples: Vec<Samples> = (0..6).map(|_| Samples::default()).collect();
    let mut group = c.benchmark_group("federation");
    // Flat sampling: the same iteration count per sample, so the slow
    // (whole-job) benchmarks take seconds, not minutes.
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(8))
        .sampling_mode(criterion::SamplingMode::Flat);
    let asker = &mesh.nodes[0];
    group.bench_function("direct_provider_call", |b| {
        b.iter_custom(|iters| measure(&runtime, &samples[0], iters, || direct_call(&direct)))
    });
    group.bench_function("council_job_3_nodes", |b| {
        b.iter_custom(|iters| measure(&runtime, &samples[1], iters, || run_job(asker, Mode::Council)))
    });
    group.bench_function("pipeline_job_3_nodes", |b| {
        b.iter_custom(|iters| measure(&runtime, &samples[2], iters, || run_job(asker, Mode::Pipeline)))
    });
    group.bench_function("direct_first_token", |b| {
        b.iter_custom(|iters| measure(&runtime, &samples[3], iters, || direct_first_token(&direct)))
    });
    group.bench_function("first_token_through_mesh", |b| {
        b.iter_custom(|iters| measure(&runtime, &samples[4], iters, || first_token(asker)))
    });
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    group.bench_function("cancel_to_every_provider_hangup", |b| {
        b.iter_custom(|iters| measure(&runtime, &samples[5], iters, || cancel_latency(&mesh)))
    });
    group.finish();

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let overhead = |job: &Samples, calls: u32, p: f64| {
        ms(percentile(job, p)) - calls as f64 * ms(percentile(&samples[0], p))
    };
    println!("\nfederation summary (provider latency {} ms):", LATENCY.as_millis());
    let names =
        ["direct_call", "council_job", "pipeline_job", "direct_first_token", "mesh_first_token", "cancel"];
    // A benchmark left out by a filter has no samples: print nothing
    // derived from it rather than a meaningless difference.
    let measured = |s: &Samples| !s.lock().expect("samples").is_empty();
    for (name, s) in names.iter().zip(&samples).filter(|(_, s)| measured(s)) {
        println!("{name}_p50: {:.2} ms", ms(percentile(s, 0.5)));
        println!("{name}_p99: {:.2} ms", ms(percentile(s, 0.99)));
        println!("{name}_samples: {} count", s.lock().expect("samples").len());
    }
    // Critical paths: council = candidate then curator; pipeline =
    // generator, then refiner and validator side by side, then curator.
    let jobs = [("council", &samples[1], 2), ("pipeline", &samples[2], 3)];
    for (name, job, calls) in jobs.into_iter().filter(|(_, job, _)| measured(job) && measured(&samples[0])) {
        println!("{name}_overhead_p50: {:.2} ms", overhead(job, calls, 0.5));
        println!("{name}_overhead_p99: {:.2} ms", overhead(job, calls, 0.99));
    }
    if measured(&samples[3]) && measured(&samples[4]) {
        println!(
            "first_token_overhead_p50: {:.2} ms",
            ms(percentile(&samples[4], 0.5)) - ms(percentile(&samples[3], 0.5))
        );
    }
    runtime.block_on(async {
        for node in mesh.nodes {
            node.kill().await;
        }
    });
}

criterion_group!(benches, federation);
criterion_main!(benches);
