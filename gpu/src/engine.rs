//! Backend selection. `auto` uses a GPU only when a real (non-software)
//! adapter exists and a job is at least as large as the crossover measured
//! on that adapter at start-up; otherwise the CPU, with one log line saying why.

use std::str::FromStr;
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

/// Tallies jobs on the backend chosen at construction.
pub struct TallyEngine {
    gpu: Option<GpuBackend>,
    /// Ballots from which the GPU is used (0 when forced).
    crossover_ballots: usize,
}

impl TallyEngine {
    pub fn new(choice: BackendChoice) -> Result<Self, GpuUnavailable> {
        match choice {
            BackendChoice::Cpu => Ok(Self { gpu: None, crossover_ballots: usize::MAX }),
            BackendChoice::Gpu => Ok(Self { gpu: Some(GpuBackend::new(true)?), crossover_ballots: 0 }),
            BackendChoice::Auto => Ok(match GpuBackend::new(false) {
                Ok(gpu) => {
                    let crossover_ballots = measure_crossover(&gpu);
                    tracing::info!(adapter = gpu.adapter_name(), crossover_ballots, "GPU tallying enabled");
                    Self { gpu: Some(gpu), crossover_ballots }
                }
                Err(why) => {
                    tracing::info!("tallying on the CPU: {why}");
                    Self { gpu: None, crossover_ballots: usize::MAX }
                }
            }),
        }
    }

    /// Tallies one job; returns the result and the backend that counted it.
    pub fn tally(&self, input: &TallyInput) -> (Result<TallyResult, TallyError>, String) {
        match &self.gpu {
            Some(gpu) if input.ballot_count() >= self.crossover_ballots => {
                (gpu.tally(input), format!("gpu ({})", gpu.adapter_name()))
            }
            _ => (cpu::tally(input), "cpu".to_string()),
        }
    }

    pub fn crossover_ballots(&self) -> Option<usize> {
        self.gpu.as_ref().map(|_| self.crossover_ballots)
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
    for shift in (14..=24).step_by(2) {
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
