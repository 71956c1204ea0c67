//! The Hive pipeline against a real streaming server on loopback that answers
//! each stage differently: overlap of refiner and validator, what the curator
//! sees, token framing, retries, failure and cancellation.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Reply, TestServer};
use hivemesh_llm::pipeline::{Pipeline, PipelineError, PipelineEvent, PipelineOptions, Profiles, Stage};
use hivemesh_llm::provider::openai::{OpenAiConfig, OpenAiProvider};
use hivemesh_llm::{ChatMessage, LlmClient, ResilienceConfig};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Which stage sent a request, from its role prompt (the generator's names no role).
fn stage_of(body: &Value) -> Stage {
    let system = body["messages"][0]["content"].as_str().unwrap_or_default();
    [Stage::Refiner, Stage::Validator, Stage::Curator]
        .into_iter()
        .find(|stage| {
            let role = stage.as_str();
            let title = format!("the {}{}", role[..1].to_uppercase(), &role[1..]);
            system.contains(&title)
        })
        .unwrap_or(Stage::Generator)
}

fn pieces(stage: Stage) -> Vec<String> {
    (0..5).map(|i| format!("{stage}-part{i} ")).collect()
}

fn stage_text(stage: Stage) -> String {
    pieces(stage).concat()
}

fn reply(stage: Stage, delay: Duration) -> Reply {
    Reply::Stream { pieces: pieces(stage), delay, usage: Some((20, 5, Some(0.0001))), keepalive: true }
}

fn pipeline(server: &TestServer, attempts: usize) -> Pipeline {
    let config = ResilienceConfig { max_attempts: attempts, cache_entries: 0, ..ResilienceConfig::default() };
    pipeline_with(server, config)
}

fn pipeline_with(server: &TestServer, config: ResilienceConfig) -> Pipeline {
    let provider =
        OpenAiProvider::new(OpenAiConfig::new("loopback", server.base_url(), "m")).expect("client");
    Pipeline::new(Arc::new(LlmClient::new(Arc::new(provider), config)))
}

/// What a consumer that honours `Retracted` still shows of `wanted`'s tokens.
fn shown(events: &[PipelineEvent], wanted: Stage) -> String {
    let mut text = String::new();
    for event in events {
        match event {
            PipelineEvent::StageStarted { stage, .. } | PipelineEvent::Retracted { stage, .. }
                if *stage == wanted =>
            {
                text.clear()
            }
            PipelineEvent::Tokens { stage, text: frame, .. } if *stage == wanted => text.push_str(frame),
            _ => {}
        }
    }
    text
}

/// Index of the first event matching `wanted`.
fn position(events: &[PipelineEvent], wanted: impl Fn(&PipelineEvent) -> bool) -> usize {
    events.iter().position(wanted).expect("the event")
}

/// One SSE text chunk, as a literal.
fn text_event(text: &str) -> String {
    format!("data: {}\n\n", serde_json::json!({"choices": [{"index": 0, "delta": {"content": text}}]}))
}

struct Run {
    result: Result<hivemesh_llm::pipeline::PipelineOutcome, PipelineError>,
    events: Vec<PipelineEvent>,
}

async fn run(pipeline: &Pipeline, cancel: &CancellationToken, profile: &str) -> Run {
    let profiles = Profiles::default();
    let profile = profiles.get(profile).expect("profile").clone();
    let (sender, mut receiver) = mpsc::channel(1024);
    let options = PipelineOptions { stage_retry_delay: Duration::from_millis(10), ..Default::default() };
    let conversation = [ChatMessage::user("What is the capital of France?")];
    let result = pipeline.run(&conversation, &profile, &options, &sender, cancel).await;
    drop(sender);
    let mut events = Vec::new();
    while let Some(event) = receiver.recv().await {
        events.push(event);
    }
    Run { result, events }
}

fn at(events: &[PipelineEvent], wanted: Stage, started: bool) -> f64 {
    events
        .iter()
        .find_map(|event| match event {
            PipelineEvent::StageStarted { stage, at_ms, .. } if started && *stage == wanted => Some(*at_ms),
            PipelineEvent::StageFinished { stage, at_ms, .. } if !started && *stage == wanted => Some(*at_ms),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {} event for {wanted}", if started { "start" } else { "finish" }))
}

#[tokio::test]
async fn refiner_and_validator_overlap_and_the_curator_sees_all_three_outputs() {
    let server = TestServer::responding(|body| reply(stage_of(body), Duration::from_millis(40))).await;
    let outcome = run(&pipeline(&server, 1), &CancellationToken::new(), "balanced").await;
    let result = outcome.result.expect("pipeline succeeds");
    assert_eq!(result.answer, stage_text(Stage::Curator).trim());
    for stage in Stage::ALL {
        // The curator's output is trimmed (echoed prompt scaffolding removed).
        assert_eq!(result.stage(stage).expect("stage output").text.trim(), stage_text(stage).trim());
    }
    assert!((result.cost_usd() - 0.0004).abs() < 1e-12, "four calls at $0.0001");

    let events = &outcome.events;
    let (refine_start, validate_start) =
        (at(events, Stage::Refiner, true), at(events, Stage::Validator, true));
    let (refine_end, validate_end) = (at(events, Stage::Refiner, false), at(events, Stage::Validator, false));
    assert!(refine_start < validate_end && validate_start < refine_end, "the two stages overlap in time");
    assert!(at(events, Stage::Generator, false) <= refine_start.min(validate_start));
    assert!(at(events, Stage::Curator, true) >= refine_end.max(validate_end));
    // Each stage streams for ~200 ms; run in sequence they would need 400 ms.
    assert!((refine_end.max(validate_end) - refine_start.min(validate_start)) < 350.0);

    let seen = server.seen();
    let requests: Vec<Stage> = seen.iter().map(|s| stage_of(&s.body)).collect();
    assert_eq!(requests.len(), 4);
    let curator = seen.iter().find(|s| stage_of(&s.body) == Stage::Curator).expect("curator request");
    let shown = curator.body["messages"][1]["content"].as_str().expect("curator prompt");
    for stage in [Stage::Generator, Stage::Refiner, Stage::Validator] {
        assert!(shown.contains(&stage_text(stage)), "curator prompt lacks the {stage} output: {shown}");
    }
    let refiner = seen.iter().find(|s| stage_of(&s.body) == Stage::Refiner).expect("refiner request");
    let shown = refiner.body["messages"][1]["content"].as_str().expect("refiner prompt");
    assert!(shown.contains(&stage_text(Stage::Generator)) && shown.contains("capital of France"));
    assert!(matches!(events.last(), Some(PipelineEvent::Done { .. })));
}

#[tokio::test]
async fn tokens_arrive_in_frames_not_one_event_per_token() {
    let many: Vec<String> = (0..200).map(|i| format!("t{i} ")).collect();
    let server = TestServer::responding(move |_| Reply::Stream {
        pieces: many.clone(),
        delay: Duration::from_micros(500),
        usage: None,
        keepalive: false,
    })
    .await;
    let outcome = run(&pipeline(&server, 1), &CancellationToken::new(), "fast").await;
    let result = outcome.result.expect("ok");
    let frames: Vec<&String> = outcome
        .events
        .iter()
        .filter_map(|event| match event {
            PipelineEvent::Tokens { stage: Stage::Generator, text, .. } => Some(text),
            _ => None,
        })
        .collect();
    let joined: String = frames.iter().map(|s| s.as_str()).collect();
    assert_eq!(joined, result.stage(Stage::Generator).expect("generator").text, "frames carry every token");
    assert!(frames.len() < 60, "{} frames for 200 tokens streamed over ~100 ms", frames.len());
}

#[tokio::test]
async fn a_stage_that_breaks_mid_stream_is_retried_and_the_job_still_succeeds() {
    let validator_calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let calls = validator_calls.clone();
    let server = TestServer::responding(move |body| match stage_of(body) {
        Stage::Validator if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 => {
            Reply::MidStreamError { pieces: vec!["half".into()], message: "upstream reset".into() }
        }
        stage => reply(stage, Duration::ZERO),
    })
    .await;
    let outcome = run(&pipeline(&server, 1), &CancellationToken::new(), "fast").await;
    let result = outcome.result.expect("retried");
    assert_eq!(result.stage(Stage::Validator).expect("validator").attempts, 2);
    assert_eq!(result.stage(Stage::Validator).expect("validator").text, stage_text(Stage::Validator));
    assert!(outcome.events.iter().any(|event| matches!(
        event,
        PipelineEvent::Error { stage: Stage::Validator, will_retry: true, message, .. } if message.contains("upstream reset")
    )));
    assert!(outcome.events.iter().any(|event| matches!(
        event,
        PipelineEvent::StageStarted { stage: Stage::Validator, attempt: 2, .. }
    )));
    // The half answer it showed was withdrawn before the retry.
    let events = &outcome.events;
    let retracted = position(events, |e| {
        matches!(e, PipelineEvent::Retracted { stage: Stage::Validator, attempt: 1, .. })
    });
    let error = position(events, |e| matches!(e, PipelineEvent::Error { stage: Stage::Validator, .. }));
    let retry = position(events, |e| {
        matches!(e, PipelineEvent::StageStarted { stage: Stage::Validator, attempt: 2, .. })
    });
    assert!(retracted < error && error < retry, "Retracted, then Error, then the retry");
    assert_eq!(shown(events, Stage::Validator), stage_text(Stage::Validator));
}

#[tokio::test]
async fn a_curator_whose_connection_resets_after_one_event_is_retracted_and_only_the_final_answer_stands() {
    let curator_calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let calls = curator_calls.clone();
    let server = TestServer::responding(move |body| match stage_of(body) {
        Stage::Curator if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 => {
            Reply::Reset(vec![text_event("The capital is Lyon")])
        }
        stage => reply(stage, Duration::ZERO),
    })
    .await;
    let outcome = run(&pipeline(&server, 1), &CancellationToken::new(), "fast").await;
    let result = outcome.result.expect("retried");
    let events = &outcome.events;
    assert!(events.iter().any(
        |e| matches!(e, PipelineEvent::Tokens { stage: Stage::Curator, text, .. } if text.contains("Lyon"))
    ));
    let retracted =
        position(events, |e| matches!(e, PipelineEvent::Retracted { stage: Stage::Curator, attempt: 1, .. }));
    let retry = position(events, |e| {
        matches!(e, PipelineEvent::StageStarted { stage: Stage::Curator, attempt: 2, .. })
    });
    assert!(retracted < retry);
    assert!(events.iter().any(|e| matches!(
        e,
        PipelineEvent::Error { stage: Stage::Curator, will_retry: true, message, .. } if message.contains("dropped the connection")
    )));
    // What a consumer shows is exactly the answer.
    assert_eq!(shown(events, Stage::Curator).trim(), result.answer);
    assert!(matches!(events.last(), Some(PipelineEvent::Done { answer, .. }) if *answer == result.answer));
}

#[tokio::test]
async fn a_curator_that_always_fails_after_partial_text_leaves_nothing_shown() {
    let server = TestServer::responding(|body| match stage_of(body) {
        Stage::Curator => Reply::Raw(format!(
            "{}data: {{\"choices\":[{{\"delta\":{{}},\"finish_reason\":\"error\"}}]}}\n\n",
            text_event("Paris is the cap")
        )),
        stage => reply(stage, Duration::ZERO),
    })
    .await;
    let outcome = run(&pipeline(&server, 1), &CancellationToken::new(), "fast").await;
    assert!(
        matches!(outcome.result, Err(PipelineError::StageFailed { stage: Stage::Curator, attempts: 2, .. })),
        "{:?}",
        outcome.result
    );
    let retractions = outcome
        .events
        .iter()
        .filter(|e| matches!(e, PipelineEvent::Retracted { stage: Stage::Curator, .. }))
        .count();
    assert_eq!(retractions, 2, "each failed attempt withdrew its text");
    assert_eq!(shown(&outcome.events, Stage::Curator), "", "no partial answer stands");
    assert!(!outcome.events.iter().any(|e| matches!(e, PipelineEvent::Done { .. })));
}

#[tokio::test]
async fn a_stage_retry_after_an_empty_done_stream_reaches_the_server_not_the_cache() {
    let validator_calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let calls = validator_calls.clone();
    let server = TestServer::responding(move |body| match stage_of(body) {
        // vLLM when it fails before the first token.
        Stage::Validator if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 => {
            Reply::Raw("data: [DONE]\n\n".into())
        }
        stage => reply(stage, Duration::ZERO),
    })
    .await;
    // The result cache on, as `hivemesh ask` has it.
    let config = ResilienceConfig { max_attempts: 1, ..ResilienceConfig::default() };
    let outcome = run(&pipeline_with(&server, config), &CancellationToken::new(), "fast").await;
    let result = outcome.result.expect("the retry got the answer");
    let validator = result.stage(Stage::Validator).expect("validator");
    assert_eq!((validator.attempts, validator.text.as_str()), (2, stage_text(Stage::Validator).as_str()));
    assert_eq!(validator_calls.load(std::sync::atomic::Ordering::SeqCst), 2, "the retry reached the server");
    assert!(!outcome.events.iter().any(|e| matches!(e, PipelineEvent::StageFinished { cached: true, .. })));
}

#[tokio::test]
async fn a_one_request_at_a_time_server_gets_the_whole_pipeline_through_with_a_limit_of_one() {
    let server = TestServer::responding(|body| Reply::OneAtATime {
        pieces: pieces(stage_of(body)),
        delay: Duration::from_millis(5),
    })
    .await;
    let config = ResilienceConfig {
        max_attempts: 1,
        cache_entries: 0,
        max_concurrent_requests: std::num::NonZeroUsize::new(1),
        ..ResilienceConfig::default()
    };
    let outcome = run(&pipeline_with(&server, config), &CancellationToken::new(), "balanced").await;
    let result = outcome.result.expect("the pipeline got through");
    assert_eq!(result.answer, stage_text(Stage::Curator).trim());
    assert_eq!(server.interrupted(), 0, "no stream was cut by another request");
    assert_eq!(server.most_open(), 1, "refiner and validator took turns");
    assert_eq!(server.seen().len(), 4, "one call per stage");
}

#[tokio::test]
async fn a_one_request_at_a_time_server_gets_the_whole_pipeline_through_with_default_settings() {
    let server = TestServer::responding(|body| Reply::OneAtATime {
        pieces: pieces(stage_of(body)),
        delay: Duration::from_millis(20),
    })
    .await;
    let provider =
        OpenAiProvider::new(OpenAiConfig::new("llama-cpp", server.base_url(), "m")).expect("client");
    let client = Arc::new(LlmClient::new(Arc::new(provider), ResilienceConfig::default()));
    let outcome = run(&Pipeline::new(client.clone()), &CancellationToken::new(), "balanced").await;
    let result = outcome.result.expect("the pipeline got through");
    assert_eq!(result.answer, stage_text(Stage::Curator).trim());
    for stage in Stage::ALL {
        assert_eq!(result.stage(stage).expect("stage").text.trim(), stage_text(stage).trim(), "{stage}");
    }
    assert!(server.interrupted() >= 1, "the parallel refiner and validator collided once");
    assert!(client.stats().one_at_a_time, "and then took turns");
    assert_eq!(client.stats().cache_hits, 0);
}

#[tokio::test]
async fn an_empty_200_stream_fails_the_stage_at_once_naming_the_context_window() {
    let server = TestServer::responding(|body| match stage_of(body) {
        Stage::Generator => Reply::Raw(String::new()),
        stage => reply(stage, Duration::ZERO),
    })
    .await;
    let outcome = run(&pipeline(&server, 3), &CancellationToken::new(), "fast").await;
    match outcome.result {
        Err(PipelineError::StageFailed { stage: Stage::Generator, attempts: 1, reason }) => {
            assert!(reason.to_string().contains("context window"), "{reason}");
        }
        other => panic!("expected the generator to fail at once, got {other:?}"),
    }
    assert_eq!(server.seen().len(), 1, "no pointless retries");
}

#[tokio::test]
async fn a_stage_that_keeps_failing_fails_the_job_with_its_name_and_no_answer() {
    let server = TestServer::responding(|body| match stage_of(body) {
        Stage::Validator => Reply::status(503, "validator model overloaded"),
        stage => reply(stage, Duration::from_millis(5)),
    })
    .await;
    let outcome = run(&pipeline(&server, 1), &CancellationToken::new(), "fast").await;
    match outcome.result {
        Err(PipelineError::StageFailed { stage: Stage::Validator, attempts: 2, reason }) => {
            assert!(reason.to_string().contains("validator model overloaded"), "{reason}");
        }
        other => panic!("expected the validator to fail the job, got {other:?}"),
    }
    assert!(!outcome.events.iter().any(|event| matches!(event, PipelineEvent::Done { .. })), "no Done event");
    assert!(
        !outcome
            .events
            .iter()
            .any(|e| matches!(e, PipelineEvent::StageStarted { stage: Stage::Curator, .. }))
    );
    let validator_requests = server.seen().iter().filter(|s| stage_of(&s.body) == Stage::Validator).count();
    assert_eq!(validator_requests, 2, "the profile allows two attempts per stage");
}

#[tokio::test]
async fn cancelling_stops_every_running_stage_within_milliseconds() {
    let server = TestServer::responding(|body| match stage_of(body) {
        Stage::Generator => reply(Stage::Generator, Duration::ZERO),
        // Refiner and validator would stream for 25 s.
        stage => Reply::slow(&["slow "; 50], Duration::from_millis(500)).with_stage(stage),
    })
    .await;
    let pipeline = pipeline(&server, 1);
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let cancelled_at = Arc::new(std::sync::Mutex::new(None));
    let mark = cancelled_at.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        *mark.lock().expect("lock") = Some(Instant::now());
        trigger.cancel();
    });
    let outcome = run(&pipeline, &cancel, "fast").await;
    let returned = Instant::now();
    assert!(matches!(outcome.result, Err(PipelineError::Cancelled)), "{:?}", outcome.result);
    let cancelled_at = cancelled_at.lock().expect("lock").expect("cancelled");
    let lag = returned - cancelled_at;
    assert!(lag < Duration::from_millis(50), "pipeline returned {lag:?} after cancel");
    assert!(!outcome.events.iter().any(|event| matches!(event, PipelineEvent::Done { .. })));
    // Both parallel streams were abandoned; the server notices at its next write.
    let deadline = Instant::now() + Duration::from_secs(2);
    while server.hangups().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.hangups().len(), 2, "refiner and validator streams both hung up");
}

trait WithStage {
    fn with_stage(self, stage: Stage) -> Self;
}

impl WithStage for Reply {
    /// Tags a reply's pieces with the stage, to tell them apart in failures.
    fn with_stage(self, stage: Stage) -> Self {
        match self {
            Reply::Stream { pieces, delay, usage, keepalive } => Reply::Stream {
                pieces: pieces.into_iter().map(|p| format!("{stage}:{p}")).collect(),
                delay,
                usage,
                keepalive,
            },
            other => other,
        }
    }
}
