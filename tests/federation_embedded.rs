//! The slow one: a council job across three real nodes whose provider is the
//! embedded model (SmolLM2-135M, pulled on first use into the same place
//! `hivemesh model pull` uses). One loaded model is shared by the three
//! in-process nodes, as `hivemesh mesh` does.

#[path = "support/mesh.rs"]
mod mesh;
#[path = "../llm/tests/common/mod.rs"]
mod sse_server;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hivemesh::llm::provider::embedded::{EmbeddedOptions, EmbeddedProvider};
use hivemesh::llm::{ChatMessage, LlmClient, ResilienceConfig, model_file};
use hivemesh::node::NodeHandle;
use hivemesh::node::federation::Submission;
use hivemesh::node::federation::spec::{Facts, Mode};
use hivemesh::protocol::TallyRule;

/// `HIVEMESH_DATA_DIR`, else the platform data directory (as the CLI does).
fn model_path() -> PathBuf {
    let data_dir = std::env::var_os("HIVEMESH_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| hivemesh::node::keystore::default_data_dir().expect("a home directory"));
    model_file::default_model_path(&data_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_council_of_three_embedded_models_answers_and_votes() {
    let path = model_file::ensure_default(&model_path(), &|line| eprintln!("{line}"))
        .await
        .unwrap_or_else(|err| panic!("the embedded model is needed for this test: {err}"));
    let provider = EmbeddedProvider::new(path, EmbeddedOptions::default());
    provider.model().await.expect("the pinned model loads");
    let resilience =
        ResilienceConfig { max_attempts: 1, rate_per_second: None, ..ResilienceConfig::default() };
    let client = Arc::new(LlmClient::new(Arc::new(provider), resilience));

    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let mut nodes: Vec<NodeHandle> = Vec::new();
    for dir in &dirs {
        let bootstrap = nodes.first().and_then(|first| first.address("quic-v1"));
        let node = mesh::start_with_client(dir.path(), bootstrap, client.clone(), 1, |federation| {
            federation.default_deadline = Duration::from_secs(300);
        })
        .await;
        nodes.push(node);
    }
    mesh::wait_for_registry(&nodes).await;

    let asker = &nodes[0];
    let mut changes = asker.client().job_changes();
    let submission = Submission {
        question: vec![ChatMessage::user("What is the capital of France?")],
        mode: Mode::Council,
        profile: "fast".into(),
        peers: 3,
        quorum: None,
        rule: TallyRule::Schulze,
        deadline: Some(Duration::from_secs(300)),
        // Short answers keep an unoptimised test build quick.
        max_tokens: Some(24),
    };
    let job = asker.federation().expect("federation").submit(submission).await.expect("submit");
    let deadline = Instant::now() + Duration::from_secs(300);
    let (facts, outcome) = loop {
        let view = asker.client().job(job).await.expect("job");
        let facts = Facts::read(job, &view.contributions);
        if let Some(outcome) = facts.outcome.clone() {
            break (facts, outcome);
        }
        assert!(Instant::now() < deadline, "the job did not finish: {facts:?}");
        let _ = tokio::time::timeout(Duration::from_secs(5), changes.recv()).await;
    };
    assert_eq!(outcome.status, "done", "{outcome:?}");
    let answer = outcome.answer.as_deref().unwrap_or_default();
    assert!(!answer.trim().is_empty(), "the council answered");
    assert_eq!(facts.candidates.len(), 3, "a candidate from every node");
    // A 135M model's rewrite makes answers worse (docs/adr/0012): on the
    // embedded model the curator selects, so the answer is the vote's
    // winner exactly as its author wrote it.
    assert_eq!(outcome.curation.as_deref(), Some("select"), "{outcome:?}");
    let winner = outcome.winner.as_deref().expect("a winner");
    let winning =
        facts.candidates.iter().find(|(peer, _)| peer.to_string() == winner).expect("winner's text");
    assert_eq!(answer, winning.1.text, "the answer is the winning candidate as written");
    let likelihood = vec![("method".to_string(), "likelihood".to_string())];
    for node in &nodes {
        let me = node.federation().expect("federation");
        assert!(me.stats.ballots_cast.load(std::sync::atomic::Ordering::Relaxed) >= 1, "every node voted");
        assert_eq!(me.stats.votes_by_method.get_or_create(&likelihood).get(), 1, "each voted by likelihood");
    }
    let tally = outcome.tally.expect("a tally");
    assert_eq!(tally["result"]["ballots"], 3, "three valid ballots counted: {tally}");
    assert!(outcome.excluded.is_empty(), "{:?}", outcome.excluded);
    eprintln!("embedded council answered in {} ms: {answer}", outcome.elapsed_ms);
}
