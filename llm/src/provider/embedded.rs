//! The embedded offline model: any llama-architecture GGUF run with candle on
//! the CPU, tokenizer rebuilt from the file's own metadata. The default
//! provider, so a fresh machine answers with no key and no network.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::quantized_llama::{MAX_SEQ_LEN, ModelWeights};
use futures_util::future::BoxFuture;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};
use tokio::sync::{OnceCell, mpsc};

use super::{ChunkStream, Provider};
use crate::{ChatMessage, ChatRequest, Chunk, LlmError, Usage};

mod prefix_cache;
pub use prefix_cache::DEFAULT_MAX_TOKENS as DEFAULT_PREFIX_CACHE_TOKENS;
use prefix_cache::{PrefillError, SharedPrefixCache};

/// The name the embedded provider reports.
pub const PROVIDER_NAME: &str = "local";

/// GGUF token type of control tokens (`<|im_start|>` and friends).
const CONTROL_TOKEN: i32 = 3;
/// Penalty on recently generated tokens; a 135M model loops without it.
const REPEAT_PENALTY: f32 = 1.1;
const REPEAT_WINDOW: usize = 64;

/// How the model file is loaded.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Re-quantize 4/5-bit weights to Q8_0 at load: about 2.5× faster decoding
    /// on x86 for 0.4 s more load and ~200 MB more memory.
    pub requantize_q8: bool,
    /// Tokens of attention state kept for prompts that start alike (see
    /// [`EmbeddedModel::generate`]); 0 turns prefix caching off. Default
    /// [`DEFAULT_PREFIX_CACHE_TOKENS`] (about 45 KiB per token for SmolLM2-135M).
    pub prefix_cache_tokens: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self { requantize_q8: true, prefix_cache_tokens: DEFAULT_PREFIX_CACHE_TOKENS }
    }
}

/// Fixes the CPU thread counts candle reads from the environment, keeping
/// the counts it would choose by itself: `CANDLE_NUM_THREADS` (its quantized
/// matmul pool; by default the physical cores) and `RAYON_NUM_THREADS` (by
/// default the logical CPUs, rayon's own choice). Either is left alone when
/// already set.
///
/// Why: with neither set, candle 0.11's `get_num_threads` counts physical
/// cores by opening and parsing `/proc/cpuinfo` (`num_cpus::get_physical`,
/// uncached) on every f32 matmul; the llama attention makes two per layer, so
/// 60 file reads per decoded token of SmolLM2-135M (30 layers), 30-80 µs each
/// on a 2-core machine, several ms of a 13 ms token.
///
/// # Safety
/// It sets process environment variables: call it before any other thread
/// starts (first thing in `main`), as `std::env::set_var` requires.
pub unsafe fn pin_cpu_thread_counts() {
    let candle = candle_core::utils::get_num_threads();
    let logical = std::thread::available_parallelism().map_or(candle, std::num::NonZeroUsize::get);
    // SAFETY: the caller guarantees no other thread runs yet.
    unsafe {
        if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
            std::env::set_var("CANDLE_NUM_THREADS", candle.to_string());
        }
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            std::env::set_var("RAYON_NUM_THREADS", logical.to_string());
        }
    }
}

/// Load and generation measurements.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Generation ended at one of the request's `stop` sequences.
    pub stopped_at_sequence: bool,
    /// Leading prompt tokens whose state came from the prefix cache.
    pub prefill_cached_tokens: usize,
    /// Of `prefill`, the time spent waiting for another caller's prefill of
    /// the same prompt (whose state was then used).
    pub prefill_waited: Duration,
    pub prefill: Duration,
    pub decode: Duration,
}

/// A loaded model. Generations clone the weights handle (shared tensors, own KV
/// cache), so several can run at once.
pub struct EmbeddedModel {
    weights: ModelWeights,
    tokenizer: Tokenizer,
    stop_tokens: Vec<u32>,
    /// Attention states (with their last logits) after prompt prefixes.
    prefix_cache: SharedPrefixCache<(ModelWeights, Tensor)>,
    name: String,
    pub load_time: Duration,
}

impl EmbeddedModel {
    pub fn load(path: &Path, options: &EmbeddedOptions) -> Result<Self, LlmError> {
        let started = Instant::now();
        let shown = path.display();
        let mut file = std::fs::File::open(path)
            .map_err(|err| LlmError::ModelUnavailable(format!("cannot open model file {shown}: {err}")))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|err| LlmError::Model(format!("{shown} is not a readable GGUF file: {err}")))?;
        let architecture = metadata_string(&content, "general.architecture").unwrap_or_default();
        if architecture != "llama" {
            return Err(LlmError::Model(format!(
                "{shown}: architecture {architecture:?} is not supported; give a llama-architecture GGUF"
            )));
        }
        let tokenizer =
            tokenizer_from_gguf(&content).map_err(|err| LlmError::Model(format!("{shown}: {err}")))?;
        let mut stop_tokens: Vec<u32> = ["<|im_end|>", "<|endoftext|>", "</s>"]
            .iter()
            .filter_map(|token| tokenizer.token_to_id(token))
            .collect();
        if let Some(eos) = content.metadata.get("tokenizer.ggml.eos_token_id").and_then(|v| v.to_u32().ok()) {
            stop_tokens.push(eos);
        }
        let device = Device::Cpu;
        let model_error = |err: candle_core::Error| LlmError::Model(format!("{shown}: {err}"));
        let weights = if options.requantize_q8 {
            let buffer = requantized_gguf(content, &mut file).map_err(model_error)?;
            let mut cursor = std::io::Cursor::new(buffer);
            let content = gguf_file::Content::read(&mut cursor).map_err(model_error)?;
            ModelWeights::from_gguf(content, &mut cursor, &device).map_err(model_error)?
        } else {
            ModelWeights::from_gguf(content, &mut file, &device).map_err(model_error)?
        };
        Ok(Self {
            weights,
            tokenizer,
            stop_tokens,
            prefix_cache: SharedPrefixCache::new(options.prefix_cache_tokens),
            name: model_name(path),
            load_time: started.elapsed(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The chat template of SmolLM2 and other ChatML models.
    pub fn prompt(messages: &[ChatMessage]) -> String {
        let mut prompt = String::new();
        for message in messages {
            prompt.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", message.role, message.content));
        }
        prompt.push_str("<|im_start|>assistant\n");
        prompt
    }

    /// Generates synchronously (call it off the async runtime). `on_text` gets
    /// each decoded piece and returns false to stop; `cancelled` is checked per token.
    pub fn generate(
        &self,
        request: &ChatRequest,
        cancelled: &AtomicBool,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<GenerationStats, LlmError> {
        let failed = |err: candle_core::Error| LlmError::Model(format!("generation failed: {err}"));
        let (prompt, message_starts) = self.encode_prompt(&request.messages)?;
        let prompt = prompt.as_slice();
        let room = MAX_SEQ_LEN.saturating_sub(prompt.len());
        if room == 0 {
            return Err(LlmError::ContextLengthExceeded {
                provider: PROVIDER_NAME.into(),
                message: format!(
                    "prompt is {} tokens; the embedded model holds at most {MAX_SEQ_LEN}",
                    prompt.len()
                ),
            });
        }
        let max_tokens = (request.max_tokens as usize).min(room);
        let (mut sampler, greedy) = sampler(request);
        let mut decoder = self.tokenizer.decode_stream(true);
        let mut context: Vec<u32> = prompt.to_vec();
        let mut stats = GenerationStats { prompt_tokens: prompt.len(), ..GenerationStats::default() };
        let mut stops = StopSequences::new(&request.stop);

        let started = Instant::now();
        let (mut weights, mut logits, facts) = match self.prefill(prompt, &message_starts, cancelled) {
            Ok(prefilled) => prefilled,
            Err(LlmError::Cancelled) => return Ok(stats),
            Err(err) => return Err(err),
        };
        stats.prefill_cached_tokens = facts.cached_tokens;
        stats.prefill_waited = facts.waited;
        stats.prefill = started.elapsed();
        let decode_started = Instant::now();
        for _ in 0..max_tokens {
            if cancelled.load(Ordering::Relaxed) {
                break;
            }
            let mut row: Vec<f32> = logits.squeeze(0).and_then(|row| row.to_vec1()).map_err(failed)?;
            let start = context.len().saturating_sub(REPEAT_WINDOW);
            apply_repeat_penalty(&mut row, REPEAT_PENALTY, &context[start..]);
            apply_openai_penalties(&mut row, request, &context[prompt.len()..]);
            let token = if greedy {
                argmax(&row)
            } else {
                let len = row.len();
                sampler.sample(&Tensor::from_vec(row, len, &Device::Cpu).map_err(failed)?).map_err(failed)?
            };
            if self.stop_tokens.contains(&token) {
                break;
            }
            stats.generated_tokens += 1;
            let text = decoder.step(token).map_err(|err| LlmError::Model(format!("cannot decode: {err}")))?;
            if let Some(text) = text {
                let (ready, stopped) = stops.push(&text);
                if !ready.is_empty() && !on_text(&ready) {
                    break;
                }
                if stopped {
                    stats.stopped_at_sequence = true;
                    break;
                }
            }
            context.push(token);
            logits = self.forward(&mut weights, &[token], context.len() - 1).map_err(failed)?;
        }
        let rest = stops.finish();
        if !stats.stopped_at_sequence && !rest.is_empty() {
            on_text(&rest);
        }
        stats.decode = decode_started.elapsed();
        Ok(stats)
    }
}

impl EmbeddedModel {
    /// The chat-template tokens of `messages` (see [`prompt`](Self::prompt)),
    /// and where each message starts in them. Each message is tokenized on
    /// its own (the template starts each with a special token, so this is
    /// how the whole text tokenizes too): a `<|im_start|>` written inside a
    /// message's text is never taken for the start of one.
    fn encode_prompt(&self, messages: &[ChatMessage]) -> Result<(Vec<u32>, Vec<usize>), LlmError> {
        let mut tokens = Vec::new();
        let mut starts = Vec::with_capacity(messages.len() + 1);
        let pieces = messages
            .iter()
            .map(|message| format!("<|im_start|>{}\n{}<|im_end|>\n", message.role, message.content))
            .chain(["<|im_start|>assistant\n".to_string()]);
        for piece in pieces {
            let encoding = self
                .tokenizer
                .encode(piece, false)
                .map_err(|err| LlmError::Model(format!("cannot tokenize the prompt: {err}")))?;
            starts.push(tokens.len());
            tokens.extend_from_slice(encoding.get_ids());
        }
        Ok((tokens, starts))
    }

    /// The model's state and logits after `prompt` (not empty), from the
    /// longest cached prefix on (see `prefix_cache`), keeping a state at
    /// each of `message_starts` and at the end. Cached and fresh states
    /// agree to float rounding: the cached part's keys and values are the
    /// ones a prefill computes, the rest attends to them through a
    /// rectangular causal mask.
    ///
    /// Errors: [`LlmError::Cancelled`] when `cancelled` is set before the
    /// state is ready, [`LlmError::Model`] when a forward pass fails.
    fn prefill(
        &self,
        prompt: &[u32],
        message_starts: &[usize],
        cancelled: &AtomicBool,
    ) -> Result<(ModelWeights, Tensor, prefix_cache::Prefilled<()>), LlmError> {
        if prompt.is_empty() {
            return Err(LlmError::Model("the prompt is empty".into()));
        }
        let extend = |state: Option<(ModelWeights, Tensor)>, range: std::ops::Range<usize>| {
            let mut weights = state.map_or_else(|| self.weights.clone(), |(weights, _)| weights);
            let logits = self.forward(&mut weights, &prompt[range.clone()], range.start)?;
            Ok((weights, logits))
        };
        match self.prefix_cache.prefill(prompt, message_starts, cancelled, extend) {
            Ok(done) => {
                let (weights, logits) = done.state;
                let facts = prefix_cache::Prefilled {
                    state: (),
                    cached_tokens: done.cached_tokens,
                    waited: done.waited,
                };
                Ok((weights, logits, facts))
            }
            Err(PrefillError::Cancelled) => Err(LlmError::Cancelled),
            Err(PrefillError::Forward(err)) => {
                let err: candle_core::Error = err;
                Err(LlmError::Model(format!("prefill failed: {err}")))
            }
        }
    }

    /// One forward pass over `tokens` at positions `at..`; the last
    /// position's logits, `[1, vocab]`.
    fn forward(&self, state: &mut ModelWeights, tokens: &[u32], at: usize) -> candle_core::Result<Tensor> {
        let input = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
        state.forward(&input, at)
    }

    /// Prefills `messages` into the prefix cache now, so the first request
    /// under them (a role prompt, say) starts after their state. Returns the
    /// prompt's length in tokens. Call it off the async runtime.
    ///
    /// Errors: [`LlmError::Model`] when tokenizing or the forward pass fails.
    pub fn warm_prefix(&self, messages: &[ChatMessage]) -> Result<usize, LlmError> {
        let (prompt, starts) = self.encode_prompt(messages)?;
        self.prefill(&prompt, &starts, &AtomicBool::new(false))?;
        Ok(prompt.len())
    }

    /// Prefix cache `(hits, misses, tokens held)` so far.
    pub fn prefix_cache_counts(&self) -> (u64, u64, usize) {
        self.prefix_cache.counts()
    }
}

impl EmbeddedModel {
    /// How likely this model finds each continuation as the assistant's reply
    /// to `messages`: the mean natural-log probability per token (so ≤ 0;
    /// higher is more likely), the end-of-turn token included, so a reply
    /// that stops where the model would stop scores higher than one cut off.
    /// Only the first [`SCORE_MAX_TOKENS`] tokens of a continuation count; an
    /// empty one scores `f64::NEG_INFINITY`. The prompt is prefilled once and
    /// shared; each continuation then costs one decode step per token.
    /// This is the "sequence likelihood" judgement of self-consistency
    /// decoding (Wang et al., 2022, compare their "weighted by normalized
    /// probability" variant). Call it off the async runtime.
    ///
    /// Errors: [`LlmError::ContextLengthExceeded`] when the prompt does not
    /// fit the context, [`LlmError::Model`] when the forward pass fails.
    pub fn mean_log_likelihood(
        &self,
        messages: &[ChatMessage],
        continuations: &[&str],
        cancelled: &AtomicBool,
    ) -> Result<Vec<f64>, LlmError> {
        let failed = |err: candle_core::Error| LlmError::Model(format!("scoring failed: {err}"));
        let encode = |text: String| {
            self.tokenizer
                .encode(text, false)
                .map(|encoding| encoding.get_ids().to_vec())
                .map_err(|err| LlmError::Model(format!("cannot tokenize: {err}")))
        };
        let (prompt, message_starts) = self.encode_prompt(messages)?;
        if prompt.len() + SCORE_MAX_TOKENS + 1 >= MAX_SEQ_LEN {
            return Err(LlmError::ContextLengthExceeded {
                provider: PROVIDER_NAME.into(),
                message: format!(
                    "prompt is {} tokens; scoring needs it under {}",
                    prompt.len(),
                    MAX_SEQ_LEN - SCORE_MAX_TOKENS - 1
                ),
            });
        }
        let end_of_turn = self.tokenizer.token_to_id("<|im_end|>").or(self.stop_tokens.first().copied());
        let started = Instant::now();
        let (prefilled, first_logits, facts) = self.prefill(&prompt, &message_starts, cancelled)?;
        let prefill_ms = started.elapsed().as_secs_f64() * 1e3;
        let mut scored_tokens = 0;
        let mut scores = Vec::with_capacity(continuations.len());
        for text in continuations {
            let mut tokens = encode(text.trim().to_string())?;
            if tokens.is_empty() {
                scores.push(f64::NEG_INFINITY);
                continue;
            }
            if tokens.len() > SCORE_MAX_TOKENS {
                tokens.truncate(SCORE_MAX_TOKENS);
            } else {
                tokens.extend(end_of_turn);
            }
            let mut weights = prefilled.clone();
            let mut logits = first_logits.clone();
            let mut total = 0.0;
            for (offset, &token) in tokens.iter().enumerate() {
                if cancelled.load(Ordering::Relaxed) {
                    return Err(LlmError::Cancelled);
                }
                let row: Vec<f32> = logits.squeeze(0).and_then(|row| row.to_vec1()).map_err(failed)?;
                total += log_softmax_at(&row, token as usize);
                if offset + 1 < tokens.len() {
                    logits = self.forward(&mut weights, &[token], prompt.len() + offset).map_err(failed)?;
                }
            }
            scored_tokens += tokens.len();
            scores.push(total / tokens.len() as f64);
        }
        tracing::debug!(
            prompt_tokens = prompt.len(),
            cached_tokens = facts.cached_tokens,
            waited_ms = facts.waited.as_secs_f64() * 1e3,
            prefill_ms,
            scored_tokens,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "embedded scoring"
        );
        Ok(scores)
    }
}

/// Tokens of a continuation that [`EmbeddedModel::mean_log_likelihood`] reads.
pub const SCORE_MAX_TOKENS: usize = 48;

/// `ln softmax(row)[index]`, computed stably; `-inf` for an index outside the row.
fn log_softmax_at(row: &[f32], index: usize) -> f64 {
    let Some(&value) = row.get(index) else { return f64::NEG_INFINITY };
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&x| f64::from(x - max).exp()).sum();
    f64::from(value - max) - sum.ln()
}

/// A model is named after its file: `SmolLM2-135M-Instruct.Q4_1`.
fn model_name(path: &Path) -> String {
    path.file_stem().map_or_else(|| "embedded".into(), |stem| stem.to_string_lossy().into_owned())
}

/// Greedy at temperature 0; otherwise nucleus sampling with the request's
/// `top_p` (0.9 when it gives none; 1 samples from the whole distribution).
/// The flag is true for greedy decoding, which [`argmax`] does on the
/// logits slice without the processor.
fn sampler(request: &ChatRequest) -> (LogitsProcessor, bool) {
    let seed = request.seed.unwrap_or_else(rand::random);
    let temperature = f64::from(request.temperature);
    let top_p = request.top_p.map_or(0.9, |p| f64::from(p).clamp(0.0, 1.0));
    let sampling = if request.temperature <= 0.0 || top_p <= 0.0 {
        Sampling::ArgMax
    } else if top_p >= 1.0 {
        Sampling::All { temperature }
    } else {
        Sampling::TopP { p: top_p, temperature }
    };
    let greedy = matches!(sampling, Sampling::ArgMax);
    (LogitsProcessor::from_sampling(seed, sampling), greedy)
}

/// The index of the largest logit, the first one on a tie; 0 for an empty
/// row. The same choice as candle's `Tensor::argmax` (which
/// `LogitsProcessor` uses for `Sampling::ArgMax`), without building a tensor.
fn argmax(row: &[f32]) -> u32 {
    let Some(&first) = row.first() else { return 0 };
    let (mut best, mut best_value) = (0, first);
    for (index, &value) in row.iter().enumerate() {
        if best_value < value {
            best = index;
            best_value = value;
        }
    }
    best as u32
}

/// The repeat penalty of CTRL (Keskar et al., 2019) as candle's
/// `candle_transformers::utils::apply_repeat_penalty` applies it, in place:
/// each distinct token of `context` has its logit divided by `penalty` when
/// it is ≥ 0, multiplied by it otherwise. Tokens outside the row are ignored.
/// `context` is the short recent window (64 tokens), so duplicates are found
/// by a scan rather than a hash set.
fn apply_repeat_penalty(row: &mut [f32], penalty: f32, context: &[u32]) {
    for (at, token) in context.iter().enumerate() {
        if context[..at].contains(token) {
            continue;
        }
        if let Some(logit) = row.get_mut(*token as usize) {
            if *logit >= 0.0 {
                *logit /= penalty;
            } else {
                *logit *= penalty;
            }
        }
    }
}

/// OpenAI's presence and frequency penalties over the tokens generated so
/// far, in place on the logits row: `logit -= frequency × count + presence
/// × (count > 0)`, as the OpenAI API reference defines them. The row is left
/// as it was when neither is set.
fn apply_openai_penalties(row: &mut [f32], request: &ChatRequest, generated: &[u32]) {
    let presence = request.presence_penalty.unwrap_or(0.0);
    let frequency = request.frequency_penalty.unwrap_or(0.0);
    if (presence == 0.0 && frequency == 0.0) || generated.is_empty() {
        return;
    }
    let mut counts: std::collections::HashMap<u32, f32> = std::collections::HashMap::new();
    for token in generated {
        *counts.entry(*token).or_default() += 1.0;
    }
    for (token, count) in counts {
        if let Some(logit) = row.get_mut(token as usize) {
            *logit -= frequency * count + presence;
        }
    }
}

/// Holds back generated text that may be the start of a `stop` sequence, so
/// that no part of a stop sequence is ever emitted (OpenAI: "the returned
/// text will not contain the stop sequence").
struct StopSequences<'a> {
    stops: &'a [String],
    pending: String,
}

impl<'a> StopSequences<'a> {
    fn new(stops: &'a [String]) -> Self {
        Self { stops, pending: String::new() }
    }

    /// Adds decoded text; returns what may be emitted now, and whether a
    /// stop sequence was reached (the text before it is then all there is).
    fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        let stops = self.stops.iter().filter(|stop| !stop.is_empty());
        if let Some(at) = stops.filter_map(|stop| self.pending.find(stop.as_str())).min() {
            let ready = self.pending[..at].to_string();
            self.pending.clear();
            return (ready, true);
        }
        // Keep the longest tail that could still grow into a stop sequence.
        let keep = self
            .stops
            .iter()
            .flat_map(|stop| {
                (1..stop.len())
                    .filter(|&n| stop.is_char_boundary(n))
                    .filter(|&n| self.pending.ends_with(&stop[..n]))
            })
            .max()
            .unwrap_or(0);
        let split = self.pending.len() - keep;
        let ready = self.pending[..split].to_string();
        self.pending.drain(..split);
        (ready, false)
    }

    /// What is still held back once generation ended without a stop sequence.
    fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

fn metadata_string(content: &gguf_file::Content, key: &str) -> Option<String> {
    content.metadata.get(key).and_then(|value| value.to_string().ok()).cloned()
}

/// Why a GGUF file's metadata yields no tokenizer (`EmbeddedModel::load`
/// reports it as [`LlmError::Model`], prefixed with the file's path).
#[derive(Debug, thiserror::Error)]
enum TokenizerError {
    #[error("metadata has no {key}")]
    MissingKey { key: &'static str },
    /// The key is there but is not an array.
    #[error("{key}: {source}")]
    NotArray { key: &'static str, source: candle_core::Error },
    #[error("a token is not a string: {0}")]
    TokenNotString(#[source] candle_core::Error),
    #[error("a merge is not a string: {0}")]
    MergeNotString(#[source] candle_core::Error),
    /// A merge is `"LEFT RIGHT"`, two tokens and one space.
    #[error("merge {merge:?} has no space")]
    MergeWithoutSpace { merge: String },
    #[error("token_type: {0}")]
    TokenType(#[source] candle_core::Error),
    /// The vocabulary and merges do not make a BPE model (a merge of
    /// unknown tokens, say).
    #[error("BPE: {0}")]
    Bpe(#[source] tokenizers::Error),
}

/// BPE with the GPT-2 byte-level scheme and single-digit splitting, which is
/// what SmolLM2's tokenizer.json says; GGUF carries the vocabulary and merges.
fn tokenizer_from_gguf(content: &gguf_file::Content) -> Result<Tokenizer, TokenizerError> {
    let array = |key: &'static str| {
        content
            .metadata
            .get(key)
            .ok_or(TokenizerError::MissingKey { key })?
            .to_vec()
            .map_err(|source| TokenizerError::NotArray { key, source })
    };
    let tokens: Vec<String> = array("tokenizer.ggml.tokens")?
        .iter()
        .map(|value| value.to_string().cloned().map_err(TokenizerError::TokenNotString))
        .collect::<Result<_, _>>()?;
    let merges = array("tokenizer.ggml.merges")?
        .iter()
        .map(|value| {
            let merge = value.to_string().map_err(TokenizerError::MergeNotString)?;
            let (left, right) = merge
                .split_once(' ')
                .ok_or_else(|| TokenizerError::MergeWithoutSpace { merge: merge.clone() })?;
            Ok((left.to_string(), right.to_string()))
        })
        .collect::<Result<Vec<_>, TokenizerError>>()?;
    let types: Vec<i32> = match content.metadata.get("tokenizer.ggml.token_type") {
        Some(value) => value
            .to_vec()
            .map_err(TokenizerError::TokenType)?
            .iter()
            .map(|value| value.to_i32().unwrap_or(1))
            .collect(),
        None => Vec::new(),
    };
    let vocab: Vocab = tokens.iter().enumerate().map(|(id, token)| (token.clone(), id as u32)).collect();
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(TokenizerError::Bpe)?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
        PreTokenizerWrapper::Digits(Digits::new(true)),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
    ])));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, kind)| **kind == CONTROL_TOKEN)
        .map(|(token, _)| AddedToken::from(token.clone(), true))
        .collect();
    tokenizer.add_special_tokens(&special);
    Ok(tokenizer)
}

/// Rewrites the file in memory with every 4/5-bit matrix as Q8_0, which
/// candle's x86 kernels decode much faster.
fn requantized_gguf(content: gguf_file::Content, file: &mut std::fs::File) -> candle_core::Result<Vec<u8>> {
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len());
    for name in names {
        let tensor = content.tensor(file, name, &Device::Cpu)?;
        let dims = tensor.shape().dims().to_vec();
        let worth_it = !matches!(tensor.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::Q8_0)
            && dims.len() == 2
            && dims[1] % GgmlDType::Q8_0.block_size() == 0;
        let tensor = if worth_it {
            QTensor::quantize(&tensor.dequantize(&Device::Cpu)?, GgmlDType::Q8_0)?
        } else {
            tensor
        };
        tensors.push((name.clone(), tensor));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> =
        content.metadata.iter().map(|(key, value)| (key.as_str(), value)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> =
        tensors.iter().map(|(name, tensor)| (name.as_str(), tensor)).collect();
    let mut buffer = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut buffer, &metadata, &tensor_refs)?;
    Ok(buffer.into_inner())
}

/// The embedded model behind the `Provider` trait. Loads on first use.
pub struct EmbeddedProvider {
    path: PathBuf,
    /// The file's stem, reported as the model name.
    model_name: String,
    options: EmbeddedOptions,
    model: OnceCell<Arc<EmbeddedModel>>,
}

impl EmbeddedProvider {
    pub fn new(path: PathBuf, options: EmbeddedOptions) -> Self {
        Self { model_name: model_name(&path), path, options, model: OnceCell::new() }
    }

    /// Loads the model now (it otherwise loads on the first call).
    pub async fn model(&self) -> Result<Arc<EmbeddedModel>, LlmError> {
        self.model
            .get_or_try_init(|| async {
                let path = self.path.clone();
                let options = self.options.clone();
                let loaded = tokio::task::spawn_blocking(move || EmbeddedModel::load(&path, &options))
                    .await
                    .map_err(|err| LlmError::Model(format!("model loader crashed: {err}")))??;
                tracing::info!(
                    model = loaded.name(),
                    load_ms = loaded.load_time.as_millis() as u64,
                    "embedded model loaded"
                );
                Ok(Arc::new(loaded))
            })
            .await
            .cloned()
    }

    async fn start(&self, request: ChatRequest) -> Result<ChunkStream, LlmError> {
        let model = self.model().await?;
        let (sender, receiver) = mpsc::channel::<Result<Chunk, LlmError>>(64);
        let cancelled = Arc::new(AtomicBool::new(false));
        let worker_cancelled = cancelled.clone();
        tokio::task::spawn_blocking(move || {
            let mut reason = "stop";
            let outcome = model.generate(&request, &worker_cancelled, |text| {
                // A closed channel means the caller dropped the stream: stop.
                sender.blocking_send(Ok(Chunk::Text(text.to_string()))).is_ok()
            });
            let message = match outcome {
                Ok(stats) => {
                    tracing::debug!(
                        prompt_tokens = stats.prompt_tokens,
                        cached_tokens = stats.prefill_cached_tokens,
                        waited_ms = stats.prefill_waited.as_secs_f64() * 1e3,
                        prefill_ms = stats.prefill.as_secs_f64() * 1e3,
                        generated_tokens = stats.generated_tokens,
                        decode_ms = stats.decode.as_secs_f64() * 1e3,
                        "embedded generation"
                    );
                    if stats.generated_tokens >= request.max_tokens as usize && !stats.stopped_at_sequence {
                        reason = "length";
                    }
                    let usage = Usage {
                        prompt_tokens: stats.prompt_tokens as u64,
                        completion_tokens: stats.generated_tokens as u64,
                        cost_usd: Some(0.0),
                    };
                    let _ = sender.blocking_send(Ok(Chunk::Usage(usage)));
                    Ok(Chunk::Finished { reason: reason.into() })
                }
                Err(error) => Err(error),
            };
            let _ = sender.blocking_send(message);
        });
        Ok(Box::pin(CancelOnDrop { receiver, cancelled }))
    }
}

impl Provider for EmbeddedProvider {
    fn name(&self) -> &str {
        PROVIDER_NAME
    }

    fn default_model(&self) -> &str {
        &self.model_name
    }

    fn open(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChunkStream, LlmError>> {
        Box::pin(self.start(request))
    }

    fn score(
        &self,
        messages: Vec<ChatMessage>,
        continuations: Vec<String>,
    ) -> BoxFuture<'_, Result<Option<Vec<f64>>, LlmError>> {
        Box::pin(async move {
            let model = self.model().await?;
            // Dropping this future (a cancelled or expired job) stops the
            // scoring at its next token instead of letting it run on.
            let cancelled = Arc::new(AtomicBool::new(false));
            let _stop_on_drop = StopOnDrop(cancelled.clone());
            let scored = tokio::task::spawn_blocking(move || {
                let texts: Vec<&str> = continuations.iter().map(String::as_str).collect();
                model.mean_log_likelihood(&messages, &texts, &cancelled)
            })
            .await
            .map_err(|err| LlmError::Model(format!("scoring thread crashed: {err}")))??;
            Ok(Some(scored))
        })
    }
}

/// Sets its flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The receiving end of a generation; dropping it stops the model at its next token.
struct CancelOnDrop {
    receiver: mpsc::Receiver<Result<Chunk, LlmError>>,
    cancelled: Arc<AtomicBool>,
}

impl futures_util::Stream for CancelOnDrop {
    type Item = Result<Chunk, LlmError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.receiver.poll_recv(cx)
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut held = StopSequences::new(&stops);
        let mut out = String::new();
        for piece in pieces {
            let (ready, stopped) = held.push(piece);
            out.push_str(&ready);
            if stopped {
                return (out, true);
            }
        }
        out.push_str(&held.finish());
        (out, false)
    }

    #[test]
    fn stop_sequences_end_the_text_before_them_even_split_across_tokens() {
        assert_eq!(run(&["\n\n"], &["Paris", ".", "\n", "\nMore"]), ("Paris.".into(), true));
        assert_eq!(run(&["END"], &["a E", "N", "D b"]), ("a ".into(), true));
        // A held-back prefix that never completes is emitted in the end.
        assert_eq!(run(&["END"], &["a E", "N"]), ("a EN".into(), false));
        assert_eq!(run(&[], &["plain ", "text"]), ("plain text".into(), false));
        assert_eq!(run(&["", "x"], &["a", "b"]), ("ab".into(), false), "an empty stop string is ignored");
        // The earliest of several stop sequences wins.
        assert_eq!(run(&["c", "b"], &["abc"]), ("a".into(), true));
    }

    #[test]
    fn penalties_lower_the_logits_of_generated_tokens_as_openai_defines_them() {
        let mut request = ChatRequest::new("m", Vec::new());
        let mut same = vec![1.0f32, 1.0, 1.0];
        apply_openai_penalties(&mut same, &request, &[0, 0, 1]);
        assert_eq!(same, vec![1.0, 1.0, 1.0]);
        request.presence_penalty = Some(0.5);
        request.frequency_penalty = Some(0.25);
        let mut penalised = vec![1.0f32, 1.0, 1.0];
        apply_openai_penalties(&mut penalised, &request, &[0, 0, 1, 7]);
        assert_eq!(penalised, vec![0.0, 0.25, 1.0], "token 7 is outside the row");
    }

    /// The slice versions choose exactly what candle's tensor versions
    /// chose before them: the same penalised logits, the same greedy token
    /// (ties included), over rows with positive, negative and repeated entries.
    #[test]
    fn repeat_penalty_and_argmax_on_slices_match_candles_tensor_versions() {
        let mut state = 0x2545_f491_u32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        for round in 0..50 {
            let len = 1 + (next() % 300) as usize;
            let mut row: Vec<f32> = (0..len).map(|_| (next() % 2001) as f32 / 100.0 - 10.0).collect();
            if round % 5 == 0 {
                // A tie for the largest logit: the first one wins.
                let top = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let at = (next() as usize) % len;
                row[at] = top;
            }
            let context: Vec<u32> = (0..64).map(|_| next() % (len as u32 + 5)).collect();
            let tensor = Tensor::new(row.as_slice(), &Device::Cpu).expect("row");
            let expected =
                candle_transformers::utils::apply_repeat_penalty(&tensor, REPEAT_PENALTY, &context)
                    .expect("penalty");
            let mut penalised = row.clone();
            apply_repeat_penalty(&mut penalised, REPEAT_PENALTY, &context);
            assert_eq!(penalised, expected.to_vec1::<f32>().expect("vec"), "round {round}");
            let mut processor = LogitsProcessor::from_sampling(0, Sampling::ArgMax);
            assert_eq!(argmax(&penalised), processor.sample(&expected).expect("argmax"), "round {round}");
        }
        assert_eq!(argmax(&[]), 0);
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn a_gguf_without_a_usable_vocabulary_names_what_is_missing() {
        use gguf_file::Value;
        let strings =
            |items: &[&str]| Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect());
        let mut content = gguf_file::Content {
            magic: gguf_file::VersionedMagic::GgufV3,
            metadata: Default::default(),
            tensor_infos: Default::default(),
            tensor_data_offset: 0,
        };
        let error = tokenizer_from_gguf(&content).expect_err("no tokens");
        assert!(matches!(error, TokenizerError::MissingKey { key: "tokenizer.ggml.tokens" }), "{error:?}");
        assert_eq!(error.to_string(), "metadata has no tokenizer.ggml.tokens");

        content.metadata.insert("tokenizer.ggml.tokens".into(), strings(&["a", "b", "ab"]));
        content.metadata.insert("tokenizer.ggml.merges".into(), Value::U32(1));
        let error = tokenizer_from_gguf(&content).expect_err("merges not an array");
        assert!(matches!(error, TokenizerError::NotArray { key: "tokenizer.ggml.merges", .. }), "{error:?}");

        content.metadata.insert("tokenizer.ggml.merges".into(), strings(&["ab"]));
        let error = tokenizer_from_gguf(&content).expect_err("merge without a space");
        assert_eq!(error.to_string(), "merge \"ab\" has no space");

        content.metadata.insert("tokenizer.ggml.merges".into(), strings(&["a b"]));
        assert!(tokenizer_from_gguf(&content).is_ok());
    }
}
