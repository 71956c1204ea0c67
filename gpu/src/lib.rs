//! hivemesh-gpu: vote tallying. Plurality, weighted plurality, approval,
//! Borda and Schulze, on the CPU (rayon) and on a GPU (wgpu compute shaders),
//! with bit-identical results: every count is an integer.
//!
//! Sans-IO apart from the GPU device itself: inputs are plain arrays, outputs
//! plain values.

pub mod ballot_box;
pub mod cpu;
pub mod engine;
pub mod input;
pub mod outcome;
pub mod wgpu_backend;

pub use input::{Counts, TIED_WITH_PREVIOUS, TallyError, TallyInput, TallyResult};
