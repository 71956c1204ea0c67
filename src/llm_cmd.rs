//! `hivemesh ask` (the pipeline on this machine) and `hivemesh model ...`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, bail};
use hivemesh::gpu::engine::{BackendChoice, TallyEngine};
use hivemesh::llm::pipeline::{Pipeline, PipelineEvent, PipelineOptions, Profiles, Stage};
use hivemesh::llm::provider::embedded::{EmbeddedModel, EmbeddedOptions, EmbeddedProvider};
use hivemesh::llm::provider::openai::{OPENROUTER_BASE_URL, OpenAiConfig, OpenAiProvider};
use hivemesh::llm::{Budget, ChatMessage, ChatRequest, LlmClient, ResilienceConfig, model_file};
use hivemesh::node::federation::FederationConfig;
use tokio_util::sync::CancellationToken;

use crate::cli::LlmArgs;

fn progress_line(line: &str) {
    eprintln!("hivemesh: {line}");
}

/// The model file to use: `--model`, else the default one, pulled on first use.
pub async fn model_path(explicit: Option<&Path>, data_dir: &Path) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if !path.is_file() {
            bail!("{}", model_file::how_to_supply(path, "the file given with --model does not exist"));
        }
        return Ok(path.to_path_buf());
    }
    let path = model_file::default_model_path(data_dir);
    Ok(model_file::ensure_default(&path, &progress_line).await?)
}

/// A client for the provider named on the command line, behind the resilience layer.
pub async fn build_client(args: &LlmArgs, data_dir: &Path) -> anyhow::Result<Arc<LlmClient>> {
    let client = match args.provider.as_str() {
        "local" => {
            let path = model_path(args.model.as_deref(), data_dir).await?;
            let provider = EmbeddedProvider::new(path, EmbeddedOptions::default());
            // Load before the first stage, so its latency is the model's, not the disk's.
            let model = provider.model().await?;
            progress_line(&format!(
                "loaded {} in {:.0} ms",
                model.name(),
                model.load_time.as_secs_f64() * 1e3
            ));
            // Retrying or rate-limiting a local model helps nothing.
            let config =
                ResilienceConfig { max_attempts: 1, rate_per_second: None, ..ResilienceConfig::default() };
            LlmClient::new(Arc::new(provider), config)
        }
        other => {
            let (name, base_url, key_var) = if other == "openrouter" {
                ("openrouter", OPENROUTER_BASE_URL, "OPENROUTER_API_KEY")
            } else if other.starts_with("http://") || other.starts_with("https://") {
                (other, other, "HIVEMESH_API_KEY")
            } else {
                bail!("unknown provider {other:?}: use local, openrouter or an http(s):// base URL");
            };
            let key_var = args.api_key_env.as_deref().unwrap_or(key_var);
            let mut config = OpenAiConfig::new(name, base_url, &args.provider_model);
            config.api_key = std::env::var(key_var).ok().filter(|key| !key.is_empty());
            config.embedding_model = args.embedding_model.clone();
            if other == "openrouter" && config.api_key.is_none() {
                bail!("--provider openrouter needs an API key in ${key_var}");
            }
            LlmClient::new(Arc::new(OpenAiProvider::new(config)?), ResilienceConfig::default())
        }
    };
    Ok(Arc::new(client))
}

/// Built-in profiles plus `--profiles FILE` (or DATA_DIR/profiles.toml when present).
pub fn load_profiles(args: &LlmArgs, data_dir: &Path) -> anyhow::Result<Profiles> {
    let file = match &args.profiles {
        Some(path) => Some(path.clone()),
        None => Some(data_dir.join("profiles.toml")).filter(|path| path.is_file()),
    };
    let Some(file) = file else { return Ok(Profiles::default()) };
    let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
    Profiles::default().with_toml(&text).map_err(|err| anyhow::anyhow!("{}: {err}", file.display()))
}

/// How a node takes part in jobs with the provider named on the command
/// line, and the model names it offers.
pub async fn federation(llm: &LlmArgs, data_dir: &Path) -> anyhow::Result<(FederationConfig, Vec<String>)> {
    let client = build_client(llm, data_dir).await?;
    let tally = Arc::new(TallyEngine::new(BackendChoice::Auto).context("cannot set up tallying")?);
    let mut config = FederationConfig::new(client.clone(), tally);
    config.profiles = load_profiles(llm, data_dir)?;
    let offered = vec![client.resolve_model("default").to_string()];
    Ok((config, offered))
}

pub struct AskArgs<'a> {
    pub question: &'a str,
    pub llm: &'a LlmArgs,
    pub profile: &'a str,
    pub seed: Option<u64>,
    pub budget_usd: Option<f64>,
    pub json: bool,
}

/// `hivemesh ask`: the whole pipeline here, the curator's answer on stdout.
pub async fn ask(args: AskArgs<'_>, data_dir: &Path) -> anyhow::Result<()> {
    let profiles = load_profiles(args.llm, data_dir)?;
    let profile = profiles.get(args.profile).map_err(anyhow::Error::msg)?.clone();
    let client = build_client(args.llm, data_dir).await?;
    let pipeline = Pipeline::new(client);
    let options =
        PipelineOptions { seed: args.seed, budget: Budget::new(args.budget_usd, None), ..Default::default() };
    let (events, mut received) = tokio::sync::mpsc::channel(256);
    let cancel = CancellationToken::new();
    let ctrl_c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("hivemesh: cancelling");
            ctrl_c.cancel();
        }
    });
    let conversation = vec![ChatMessage::user(args.question)];
    let printer = tokio::spawn(async move {
        while let Some(event) = received.recv().await {
            show_event(&event);
        }
    });
    let outcome = pipeline.run(&conversation, &profile, &options, &events, &cancel).await;
    drop(events);
    let _ = printer.await;
    let outcome = outcome?;
    if args.json {
        let stages: Vec<_> = outcome
            .stages
            .iter()
            .map(|stage| {
                serde_json::json!({
                    "stage": stage.stage, "model": stage.model, "provider": stage.provider,
                    "text": stage.text, "tokens": stage.tokens, "cost_usd": stage.cost_usd,
                    "latency_ms": stage.latency.as_secs_f64() * 1e3, "attempts": stage.attempts,
                })
            })
            .collect();
        let report = serde_json::json!({
            "answer": outcome.answer, "profile": profile.name, "stages": stages,
            "elapsed_ms": outcome.elapsed.as_secs_f64() * 1e3, "cost_usd": outcome.cost_usd(),
        });
        println!("{report}");
    }
    Ok(())
}

/// Progress on stderr; the curator's tokens on stdout.
fn show_event(event: &PipelineEvent) {
    match event {
        PipelineEvent::StageStarted { stage, model, provider, attempt, at_ms } => {
            let retry = if *attempt > 1 { format!(" (attempt {attempt})") } else { String::new() };
            eprintln!("[{at_ms:>7.0} ms] {stage} started on {provider}/{model}{retry}");
        }
        PipelineEvent::Tokens { stage: Stage::Curator, text, .. } => {
            print!("{text}");
            let _ = std::io::stdout().flush();
        }
        PipelineEvent::Tokens { .. } => {}
        PipelineEvent::StageFinished { stage, tokens, cost_usd, latency_ms, cached, at_ms } => {
            if *stage == Stage::Curator {
                println!();
            }
            let cached = if *cached { ", cached" } else { "" };
            eprintln!(
                "[{at_ms:>7.0} ms] {stage} finished: {tokens} tokens in {latency_ms:.0} ms, ${cost_usd:.6}{cached}"
            );
        }
        PipelineEvent::Error { stage, message, will_retry, at_ms } => {
            let next = if *will_retry { "; retrying" } else { "" };
            eprintln!("[{at_ms:>7.0} ms] {stage} failed: {message}{next}");
        }
        PipelineEvent::Done { tokens, cost_usd, at_ms, .. } => {
            eprintln!("[{at_ms:>7.0} ms] done: {tokens} tokens in all, ${cost_usd:.6}");
        }
    }
}

/// `hivemesh model pull`.
pub async fn pull(data_dir: &Path) -> anyhow::Result<()> {
    let path = model_file::default_model_path(data_dir);
    if model_file::is_present(&path) {
        progress_line(&format!("model already present at {}", path.display()));
        return Ok(());
    }
    model_file::pull(&path, &progress_line).await?;
    Ok(())
}

/// `hivemesh model path`.
pub fn path(data_dir: &Path) {
    let path = model_file::default_model_path(data_dir);
    let state = if model_file::is_present(&path) { "present" } else { "missing: hivemesh model pull" };
    println!("{} ({state})", path.display());
}

/// `hivemesh model bench`: load, prefill and decode speed, memory.
pub async fn bench(
    explicit: Option<&Path>,
    data_dir: &Path,
    tokens: u32,
    requantize: bool,
    json: bool,
) -> anyhow::Result<()> {
    let path = model_path(explicit, data_dir).await?;
    let rss_before = rss_kib();
    let model = tokio::task::spawn_blocking(move || {
        EmbeddedModel::load(&path, &EmbeddedOptions { requantize_q8: requantize })
    })
    .await??;
    let rss_loaded = rss_kib();
    let prompt = "Tell a long story about a lighthouse keeper who finds a message in a bottle. \
                  Describe the sea, the weather, the keeper's daily routine and the letter in detail.";
    let mut request = ChatRequest::new("", vec![ChatMessage::user(prompt)]);
    request.max_tokens = tokens;
    request.seed = Some(1);
    let started = Instant::now();
    let model = Arc::new(model);
    let worker = model.clone();
    let stats =
        tokio::task::spawn_blocking(move || worker.generate(&request, &AtomicBool::new(false), |_| true))
            .await??;
    let total = started.elapsed();
    let prefill_tps = stats.prompt_tokens as f64 / stats.prefill.as_secs_f64();
    let decode_tps = stats.generated_tokens as f64 / stats.decode.as_secs_f64();
    let report = serde_json::json!({
        "model": model.name(),
        "requantized_q8_0": requantize,
        "load_ms": model.load_time.as_secs_f64() * 1e3,
        "prompt_tokens": stats.prompt_tokens,
        "prefill_ms": stats.prefill.as_secs_f64() * 1e3,
        "prefill_tokens_per_s": prefill_tps,
        "generated_tokens": stats.generated_tokens,
        "decode_ms": stats.decode.as_secs_f64() * 1e3,
        "decode_tokens_per_s": decode_tps,
        "total_ms": total.as_secs_f64() * 1e3,
        "rss_before_load_mib": rss_before.map(|kib| kib as f64 / 1024.0),
        "rss_loaded_mib": rss_loaded.map(|kib| kib as f64 / 1024.0),
        "rss_peak_mib": peak_rss_kib().map(|kib| kib as f64 / 1024.0),
    });
    if json {
        println!("{report}");
    } else {
        println!("model        {} (Q8_0 re-quantized: {requantize})", model.name());
        println!("load         {:.0} ms", model.load_time.as_secs_f64() * 1e3);
        println!("prefill      {} tokens, {:.1} tokens/s", stats.prompt_tokens, prefill_tps);
        println!("decode       {} tokens, {:.1} tokens/s", stats.generated_tokens, decode_tps);
        if let (Some(loaded), Some(peak)) = (rss_loaded, peak_rss_kib()) {
            println!(
                "RSS          {:.0} MiB loaded, {:.0} MiB peak",
                loaded as f64 / 1024.0,
                peak as f64 / 1024.0
            );
        }
    }
    Ok(())
}

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn rss_kib() -> Option<u64> {
    status_kib("VmRSS:")
}

fn peak_rss_kib() -> Option<u64> {
    status_kib("VmHWM:")
}
