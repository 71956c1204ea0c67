//! How many jobs one node holds at once, and its memory then. One node asks
//! 10,000 council jobs of itself against a provider that takes 30 s per
//! call, so none finishes during the run; the next submission must be
//! refused as busy. Prints submit rate, jobs in flight and RSS.
//! Run: cargo bench --bench job_capacity

#[path = "../tests/support/mesh.rs"]
mod mesh;
#[path = "../llm/tests/common/mod.rs"]
mod sse_server;

use std::time::{Duration, Instant};

use hivemesh::llm::ChatMessage;
use hivemesh::node::federation::spec::Mode;
use hivemesh::node::federation::{Limits, Submission, SubmitError};
use hivemesh::protocol::TallyRule;
use sse_server::{Reply, TestServer};

const JOBS: usize = 10_000;
const PROVIDER_LATENCY: Duration = Duration::from_secs(30);

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn submission(i: usize) -> Submission {
    Submission {
        question: vec![ChatMessage::user(format!("Question number {i}: what is the capital of France?"))],
        mode: Mode::Council,
        profile: "fast".into(),
        peers: 1,
        quorum: None,
        rule: TallyRule::Schulze,
        deadline: Some(Duration::from_secs(600)),
        max_tokens: None,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter that does not name us skips.
    if std::env::args().skip(1).any(|a| !a.starts_with("--") && !"job_capacity".contains(a.as_str())) {
        return;
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let server = TestServer::responding(|_| {
            let pieces = vec!["Paris.".to_string()];
            let stream = Reply::Stream { pieces, delay: Duration::ZERO, usage: None, keepalive: false };
            Reply::AfterLatency(PROVIDER_LATENCY, Box::new(stream))
        })
        .await;
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = Limits {
            max_asked_jobs: JOBS,
            max_running_calls: 64,
            max_queued_calls: 2 * JOBS,
            ..Limits::default()
        };
        let node =
            mesh::start_with(dir.path(), None, &server, 1, |federation| federation.limits = limits).await;
        let federation = node.federation().expect("federation").clone();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle = rss_mib();
        let started = Instant::now();
        for i in 0..JOBS {
            federation.submit(submission(i)).await.unwrap_or_else(|e| panic!("job {i} refused: {e}"));
        }
        let took = started.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let held = rss_mib();
        let stats = &federation.stats;
        let finished = stats.finished.load(std::sync::atomic::Ordering::Relaxed)
            + stats.failed.load(std::sync::atomic::Ordering::Relaxed);
        let running = stats.running_calls.load(std::sync::atomic::Ordering::Relaxed);
        let queued = stats.queued_calls.load(std::sync::atomic::Ordering::Relaxed);
        let refused = matches!(federation.submit(submission(JOBS)).await, Err(SubmitError::Busy(_)));
        println!(
            "job_capacity: {JOBS} council jobs asked of one node (provider latency {} s)",
            PROVIDER_LATENCY.as_secs()
        );
        println!(
            "  submitted in {:.2} s ({:.0} jobs/s)",
            took.as_secs_f64(),
            JOBS as f64 / took.as_secs_f64()
        );
        println!(
            "  in flight: {} (finished {finished}); model calls running {running}, queued {queued}",
            JOBS as u64 - finished
        );
        println!(
            "  RSS: {idle:.1} MiB idle, {held:.1} MiB holding {JOBS} jobs ({:.1} KiB per job)",
            (held - idle) * 1024.0 / JOBS as f64
        );
        println!("  job {} refused as busy: {refused}", JOBS + 1);
        node.kill().await;
    });
}
