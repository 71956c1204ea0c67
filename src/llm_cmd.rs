//! `hivemesh ask` (the pipeline on this machine) and `hivemesh model ...`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hivemesh::gpu::engine::{BackendChoice, TallyEngine};
use hivemesh::llm::council::judge_messages;
use hivemesh::llm::pipeline::{Pipeline, PipelineEvent, PipelineOptions, Profiles, Stage};
use hivemesh::llm::provider::embedded::{EmbeddedModel, EmbeddedOptions, EmbeddedProvider};
use hivemesh::llm::provider::openai::{OPENROUTER_BASE_URL, OpenAiConfig, OpenAiProvider};
use hivemesh::llm::{Budget, ChatMessage, ChatRequest, LlmClient, ResilienceConfig, model_file};
use hivemesh::node::federation::FederationConfig;
use tokio_util::sync::CancellationToken;

use crate::cli::LlmArgs;
use crate::output::{self, errln, out, outln};

fn progress_line(line: &str) {
    errln!("hivemesh: {line}");
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
            // The role prompt every candidate and likelihood ballot starts
            // with, into the prefix cache: the first job skips its prefill.
            let warm = model.clone();
            let role = judge_messages(&[]);
            tokio::task::spawn_blocking(move || warm.warm_prefix(&role)).await??;
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
    /// Cancel the pipeline after this long.
    pub deadline: Option<Duration>,
    pub json: bool,
}

/// `hivemesh ask`: the whole pipeline here; stdout gets exactly the
/// curator's final answer (or, with `--json`, one JSON document).
pub async fn ask(args: AskArgs<'_>, data_dir: &Path) -> anyhow::Result<()> {
    let profiles = load_profiles(args.llm, data_dir)?;
    let profile = profiles.get(args.profile)?.clone();
    let client = build_client(args.llm, data_dir).await?;
    let pipeline = Pipeline::new(client);
    let options =
        PipelineOptions { seed: args.seed, budget: Budget::new(args.budget_usd, None), ..Default::default() };
    let (events, mut received) = tokio::sync::mpsc::channel(256);
    let cancel = CancellationToken::new();
    let ctrl_c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            errln!("hivemesh: cancelling");
            ctrl_c.cancel();
        }
    });
    let deadline_passed = Arc::new(AtomicBool::new(false));
    if let Some(deadline) = args.deadline {
        let (cancel, passed) = (cancel.clone(), deadline_passed.clone());
        tokio::spawn(async move {
            tokio::time::sleep(deadline).await;
            passed.store(true, Ordering::SeqCst);
            cancel.cancel();
        });
    }
    let conversation = vec![ChatMessage::user(args.question)];
    // Live tokens only for a person watching stdout, and never into JSON.
    let live = !args.json && output::stdout_is_terminal();
    let printer = tokio::spawn(async move {
        let mut view = AskView::new(live, console::Term::stdout().size().1);
        while let Some(event) = received.recv().await {
            view.event(&event);
        }
        view
    });
    let outcome = pipeline.run(&conversation, &profile, &options, &events, &cancel).await;
    drop(events);
    let mut view = printer.await.context("the progress display stopped")?;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            view.fail();
            if deadline_passed.load(Ordering::SeqCst) {
                let secs = args.deadline.map_or(0, |d| d.as_secs());
                bail!("the pipeline did not finish within its deadline of {secs} s (--deadline)");
            }
            return Err(error.into());
        }
    };
    if !args.json {
        view.settle(&outcome.answer);
        return Ok(());
    }
    view.settle_quietly();
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
        "answer": outcome.answer, "curation": outcome.curation.as_str(), "profile": profile.name, "stages": stages,
        "elapsed_ms": outcome.elapsed.as_secs_f64() * 1e3, "cost_usd": outcome.cost_usd(),
    });
    outln!("{report}");
    Ok(())
}

/// What `ask` shows while the pipeline runs: stage lines on stderr and, on
/// a terminal, the curator's tokens live on stdout. Text an attempt streamed
/// and then lost (a failure, a retry, a retraction) is erased; at the end
/// stdout holds exactly the final answer.
struct AskView {
    /// Curator text shown live on stdout (a terminal) since the last erase.
    live: Option<String>,
    /// The terminal's width in columns, to know how many rows live text took.
    columns: usize,
    /// Lines that belong after the answer (the curator's finish, the total).
    after_answer: Vec<String>,
}

impl AskView {
    fn new(live: bool, columns: u16) -> Self {
        Self { live: live.then(String::new), columns: usize::from(columns.max(1)), after_answer: Vec::new() }
    }

    fn event(&mut self, event: &PipelineEvent) {
        match event {
            PipelineEvent::StageStarted { stage, model, provider, attempt, at_ms } => {
                if *stage == Stage::Curator {
                    // A new attempt replaces whatever an earlier one streamed.
                    self.erase();
                }
                let retry = if *attempt > 1 { format!(" (attempt {attempt})") } else { String::new() };
                errln!("[{at_ms:>7.0} ms] {stage} started on {provider}/{model}{retry}");
            }
            PipelineEvent::Tokens { stage: Stage::Curator, text, .. } => {
                if let Some(shown) = &mut self.live {
                    out!("{text}");
                    shown.push_str(text);
                }
            }
            PipelineEvent::Tokens { .. } => {}
            PipelineEvent::StageFinished { stage, tokens, cost_usd, latency_ms, cached, at_ms } => {
                let cached = if *cached { ", cached" } else { "" };
                let line = format!(
                    "[{at_ms:>7.0} ms] {stage} finished: {tokens} tokens in {latency_ms:.0} ms, ${cost_usd:.6}{cached}"
                );
                if *stage == Stage::Curator {
                    self.after_answer.push(line);
                } else {
                    errln!("{line}");
                }
            }
            PipelineEvent::Error { stage, message, will_retry, at_ms } => {
                if *stage == Stage::Curator {
                    self.erase();
                }
                let next = if *will_retry { "; retrying" } else { "" };
                errln!("[{at_ms:>7.0} ms] {stage} failed: {message}{next}");
            }
            PipelineEvent::Done { tokens, cost_usd, at_ms, .. } => {
                self.after_answer
                    .push(format!("[{at_ms:>7.0} ms] done: {tokens} tokens in all, ${cost_usd:.6}"));
            }
            PipelineEvent::Retracted { stage, attempt, at_ms } => {
                if *stage == Stage::Curator {
                    self.erase();
                }
                errln!("[{at_ms:>7.0} ms] {stage} attempt {attempt} taken back (its text is not the answer)");
            }
        }
    }

    /// Takes the live text off the terminal (it was not the answer).
    fn erase(&mut self) {
        let Some(shown) = &mut self.live else { return };
        if shown.is_empty() {
            return;
        }
        let rows = rows_taken(shown, self.columns);
        let term = console::Term::stdout();
        let _ = term.clear_line().and_then(|()| term.clear_last_lines(rows - 1));
        shown.clear();
    }

    /// The pipeline failed: no partial answer stays on screen.
    fn fail(&mut self) {
        self.erase();
    }

    /// Prints the final answer (unless the live text already is exactly
    /// it), then the lines that follow it.
    fn settle(&mut self, answer: &str) {
        match &self.live {
            Some(shown) if shown == answer => outln!(),
            _ => {
                self.erase();
                outln!("{answer}");
            }
        }
        self.flush_after_answer();
    }

    /// `--json`: the lines that follow the answer, and no answer text.
    fn settle_quietly(&mut self) {
        self.erase();
        self.flush_after_answer();
    }

    fn flush_after_answer(&mut self) {
        for line in self.after_answer.drain(..) {
            errln!("{line}");
        }
    }
}

/// Terminal rows that `text`, written from the start of a row, occupies on
/// a terminal `columns` wide (the cursor ends on the last one).
fn rows_taken(text: &str, columns: usize) -> usize {
    text.split('\n').map(|line| console::measure_text_width(line).div_ceil(columns).max(1)).sum()
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

/// `hivemesh model path`: the path alone on stdout, so `--model "$(hivemesh
/// model path)"` works; whether the file is there yet goes to stderr.
pub fn path(data_dir: &Path) {
    let path = model_file::default_model_path(data_dir);
    if !model_file::is_present(&path) {
        errln!("hivemesh: the model is not there yet; `hivemesh model pull` fetches it");
    }
    outln!("{}", path.display());
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
        EmbeddedModel::load(
            &path,
            &EmbeddedOptions { requantize_q8: requantize, ..EmbeddedOptions::default() },
        )
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
        outln!("{report}");
    } else {
        outln!("model        {} (Q8_0 re-quantized: {requantize})", model.name());
        outln!("load         {:.0} ms", model.load_time.as_secs_f64() * 1e3);
        outln!("prefill      {} tokens, {:.1} tokens/s", stats.prompt_tokens, prefill_tps);
        outln!("decode       {} tokens, {:.1} tokens/s", stats.generated_tokens, decode_tps);
        if let (Some(loaded), Some(peak)) = (rss_loaded, peak_rss_kib()) {
            outln!(
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
