//! Backend selection. `auto` uses a GPU only when a real (non-software)
//! adapter exists and a job is at least as large as the crossover measured
//! on that adapter; otherwise the CPU, with one log line saying why. The
//! adapter is looked for only when the first job large enough for a GPU to
//! win arrives: a council's few ballots, or a small ballot file, never
//! start a graphics driver (drivers print their own complaints on stderr).

use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Instant;

use crate::cpu;
use crate::input::{TallyError, TallyInput, TallyResult};
use crate::wgpu_backend::{GpuBackend, GpuUnavailable};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    Cpu,
    /// The GPU, software adapters included; an error if there is none.
    Gpu,
    #[default]
    Auto,
}

impl FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "gpu" => Ok(Self::Gpu),
            "auto" => Ok(Self::Auto),
            other => Err(format!("unknown backend {other:?}: use cpu, gpu or auto")),
        }
    }
}

/// The smallest job `measure_crossover` tries: below it `auto` never
/// looks for a GPU.
const SMALLEST_GPU_JOB: usize = 1 << 14;

/// Tallies jobs on the backend chosen at construction.
pub struct TallyEngine {
    choice: BackendChoice,
    /// The GPU and the ballots from which it is used (0 when forced);
    /// `None` inside when there is none worth using. Set at construction
    /// for `gpu`, on the first large job for `auto`.
    gpu: OnceLock<Option<(GpuBackend, usize)>>,
}

impl TallyEngine {
    /// `gpu` opens the adapter now (an error if there is none); `cpu` and
    /// `auto` open nothing yet.
    pub fn new(choice: BackendChoice) -> Result<Self, GpuUnavailable> {
        let gpu = OnceLock::new();
        match choice {
            BackendChoice::Cpu => {
                let _ = gpu.set(None);
            }
            BackendChoice::Gpu => {
                let _ = gpu.set(Some((GpuBackend::new(true)?, 0)));
            }
            BackendChoice::Auto => {}
        }
        Ok(Self { choice, gpu })
    }

    /// Tallies one job; returns the result and the backend that counted it.
    pub fn tally(&self, input: &TallyInput) -> (Result<TallyResult, TallyError>, String) {
        match self.gpu_for(input.ballot_count()) {
            Some((gpu, crossover)) if input.ballot_count() >= *crossover => {
                (gpu.tally(input), format!("gpu ({})", gpu.adapter_name()))
            }
            _ => (cpu::tally(input), "cpu".to_string()),
        }
    }

    /// The GPU for a job of `ballots`, looking for one (`auto`) the first
    /// time a job is large enough for it to matter.
    fn gpu_for(&self, ballots: usize) -> Option<&(GpuBackend, usize)> {
        if let Some(known) = self.gpu.get() {
            return known.as_ref();
        }
        if self.choice != BackendChoice::Auto || ballots < SMALLEST_GPU_JOB {
            return None;
        }
        self.gpu.get_or_init(probe_auto).as_ref()
    }

    /// Ballots from which the GPU is used; `None` while no GPU is in use
    /// (none found, or `auto` has not needed to look yet).
    pub fn crossover_ballots(&self) -> Option<usize> {
        self.gpu.get().and_then(Option::as_ref).map(|(_, crossover)| *crossover)
    }
}

/// `auto`'s GPU: a real adapter and its measured crossover, or none.
fn probe_auto() -> Option<(GpuBackend, usize)> {
    match GpuBackend::new(false) {
        Ok(gpu) => {
            let crossover_ballots = measure_crossover(&gpu);
            tracing::info!(adapter = gpu.adapter_name(), crossover_ballots, "GPU tallying enabled");
            Some((gpu, crossover_ballots))
        }
        Err(why) => {
            tracing::info!("tallying on the CPU: {why}");
            None
        }
    }
}

/// The smallest plurality job (powers of four from 16 K to 16 M votes) that
/// the GPU, upload included, counts faster than the CPU.
fn measure_crossover(gpu: &GpuBackend) -> usize {
    let fastest = |f: &dyn Fn()| {
        (0..3)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .min()
            .unwrap_or_default()
    };
    for shift in (SMALLEST_GPU_JOB.trailing_zeros()..=24).step_by(2) {
        let size = 1usize << shift;
        let input = TallyInput::plurality(8, (0..size as u32).map(|i| i % 8).collect());
        let gpu_time = fastest(&|| drop(gpu.tally(&input)));
        let cpu_time = fastest(&|| drop(cpu::tally(&input)));
        if gpu_time < cpu_time {
            return size;
        }
    }
    usize::MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_looks_for_no_gpu_for_a_small_job() {
        let engine = TallyEngine::new(BackendChoice::Auto).expect("auto never fails");
        let input = TallyInput::plurality(3, vec![0, 1, 1, 2, 1]);
        let (result, backend) = engine.tally(&input);
        assert_eq!(result.expect("tally").winner, Some(1));
        assert_eq!(backend, "cpu");
        assert!(engine.gpu.get().is_none(), "no adapter was opened for 5 ballots");
    }

    #[test]
    fn cpu_never_looks_for_a_gpu() {
        let engine = TallyEngine::new(BackendChoice::Cpu).expect("cpu");
        let input = TallyInput::plurality(2, vec![0; SMALLEST_GPU_JOB]);
        assert_eq!(engine.tally(&input).1, "cpu");
        assert!(matches!(engine.gpu.get(), Some(None)));
        assert_eq!(engine.crossover_ballots(), None);
    }
}
