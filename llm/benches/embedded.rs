//! Decode speed of the embedded model (the file is pulled on first use).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hivemesh_llm::provider::embedded::{EmbeddedModel, EmbeddedOptions};
use hivemesh_llm::{ChatMessage, ChatRequest, model_file};

const TOKENS: u32 = 64;

fn model_path() -> PathBuf {
    let data_dir = std::env::var_os("HIVEMESH_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| {
        directories::ProjectDirs::from("org", "hivemesh", "hivemesh").expect("home").data_dir().to_path_buf()
    });
    model_file::default_model_path(&data_dir)
}

fn benches(c: &mut Criterion) {
    // SAFETY: criterion runs this first, before any thread of ours starts.
    unsafe { hivemesh_llm::provider::embedded::pin_cpu_thread_counts() };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let path = runtime
        .block_on(model_file::ensure_default(&model_path(), &|line| eprintln!("{line}")))
        .expect("the embedded model");
    let mut group = c.benchmark_group("embedded");
    group.sample_size(10);
    for (label, requantize_q8) in [("q8_0", true), ("q4_1_as_shipped", false)] {
        // Prefix caching off: every iteration prefills the whole prompt.
        let options = EmbeddedOptions { requantize_q8, prefix_cache_tokens: 0 };
        let model = EmbeddedModel::load(&path, &options).expect("load");
        let prompt = "Tell a long story about a lighthouse keeper who finds a message in a bottle.";
        let mut request = ChatRequest::new("", vec![ChatMessage::user(prompt)]);
        request.max_tokens = TOKENS;
        request.seed = Some(1);
        let generated = model.generate(&request, &AtomicBool::new(false), |_| true).expect("warm-up");
        assert_eq!(generated.generated_tokens, TOKENS as usize, "the prompt must not stop early");
        group.throughput(Throughput::Elements(u64::from(TOKENS)));
        group.bench_function(format!("generate_{TOKENS}_tokens/{label}"), |b| {
            b.iter(|| model.generate(&request, &AtomicBool::new(false), |_| true).expect("generate"))
        });
    }
    group.finish();
}

criterion_group!(embedded_benches, benches);
criterion_main!(embedded_benches);
