//! GPU backend: the WGSL kernels in `shaders/`, run through wgpu. Buffers
//! are kept and grown across calls; results are integers, so they match the
//! CPU backend bit for bit (checked by property tests).

use std::sync::Mutex;

use hivemesh_protocol::TallyRule;
use wgpu::util::DeviceExt as _;

use crate::input::{TallyError, TallyInput, TallyResult};
use crate::{cpu, outcome};

const WORKGROUP: u32 = 256;
/// Workgroups per dispatch: enough to fill a large GPU, few enough that the
/// per-workgroup partial results stay small to read back.
const MAX_WORKGROUPS: u32 = 1024;
/// The pairwise kernel keeps an n*n matrix in 16 KiB of workgroup memory.
pub const MAX_GPU_SCHULZE_CANDIDATES: u32 = 64;

/// Why no GPU backend could be created.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GpuUnavailable {
    #[error("no GPU adapter found: {0}")]
    NoAdapter(String),
    #[error("only a software adapter is available ({0}); it is slower than the CPU backend")]
    SoftwareOnly(String),
    #[error("the GPU device could not be opened: {0}")]
    Device(String),
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    mode: u32,
    n: u32,
    ballots: u32,
    weighted: u32,
}

/// A wgpu device with the tally pipelines compiled.
pub struct GpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    scores: wgpu::ComputePipeline,
    pairwise: wgpu::ComputePipeline,
    /// Largest input buffer one dispatch may bind, in u32 elements.
    max_elements: usize,
    buffers: Mutex<Buffers>,
}

impl GpuBackend {
    /// Opens the best adapter. A software adapter (lavapipe, llvmpipe,
    /// WARP) is refused unless `allow_software` is set: tests use it to run
    /// the real shaders on machines without a GPU.
    pub fn new(allow_software: bool) -> Result<Self, GpuUnavailable> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
        let options = wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        };
        let adapter = pollster::block_on(instance.request_adapter(&options))
            .map_err(|e| GpuUnavailable::NoAdapter(e.to_string()))?;
        let info = adapter.get_info();
        if info.device_type == wgpu::DeviceType::Cpu && !allow_software {
            return Err(GpuUnavailable::SoftwareOnly(info.name));
        }
        let limits = adapter.limits();
        let descriptor = wgpu::DeviceDescriptor {
            label: Some("hivemesh-tally"),
            required_limits: limits.clone(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&descriptor))
            .map_err(|e| GpuUnavailable::Device(e.to_string()))?;
        let max_bytes = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        let pipeline = |label: &str, source: &str| {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let scores = pipeline(
            "scores",
            concat!(include_str!("shaders/params.wgsl"), include_str!("shaders/scores.wgsl")),
        );
        let pairwise = pipeline(
            "pairwise",
            concat!(include_str!("shaders/params.wgsl"), include_str!("shaders/pairwise.wgsl")),
        );
        Ok(Self {
            device,
            queue,
            info,
            scores,
            pairwise,
            max_elements: (max_bytes / 4).min(u32::MAX as u64) as usize,
            buffers: Mutex::new(Buffers::default()),
        })
    }

    pub fn adapter_name(&self) -> &str {
        &self.info.name
    }

    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Tallies one job on the GPU. Inputs the kernels cannot take in one
    /// dispatch (Schulze over 64 candidates, list rules larger than one
    /// buffer, ballots with multiplicities) are counted on the CPU instead,
    /// with a debug log.
    pub fn tally(&self, input: &TallyInput) -> Result<TallyResult, TallyError> {
        input.check_shape()?;
        let n = input.candidates;
        let ballots = input.ballot_count() as u64;
        let too_big = input.uses_lists() && input.items.len().max(input.offsets.len()) > self.max_elements;
        if too_big
            || input.has_multiplicities()
            || (input.rule == TallyRule::Schulze && n > MAX_GPU_SCHULZE_CANDIDATES)
        {
            tracing::debug!(
                candidates = n,
                items = input.items.len(),
                multiplicities = input.has_multiplicities(),
                "input exceeds the GPU kernels' limits; using the CPU"
            );
            return cpu::tally(input);
        }
        let mut buffers = self.buffers.lock().map_err(|_| TallyError::Gpu("buffer lock poisoned".into()))?;
        let (counts, invalid) = match input.rule {
            TallyRule::Schulze => self.run_pairwise(&mut buffers, input)?,
            _ => self.run_scores(&mut buffers, input)?,
        };
        if invalid > 0 {
            return Err(TallyError::InvalidBallot { ballot: input.first_invalid_ballot().unwrap_or(0) });
        }
        Ok(match input.rule {
            TallyRule::Schulze => outcome::from_pairwise(ballots, n as usize, counts),
            rule => outcome::from_scores(rule, ballots, counts),
        })
    }

    fn run_scores(&self, buffers: &mut Buffers, input: &TallyInput) -> Result<(Vec<u64>, u64), TallyError> {
        let n = input.candidates as usize;
        let slots = n + 1;
        let mut totals = vec![0u64; slots];
        let mode = match input.rule {
            TallyRule::Approval => 1,
            TallyRule::Borda => 2,
            _ => 0,
        };
        let weighted = u32::from(input.rule == TallyRule::WeightedPlurality);
        // Single-choice inputs are split into dispatches that fit a buffer;
        // list inputs were checked to fit in one.
        let ranges = if mode == 0 {
            chunk_ranges(input.items.len(), self.max_elements)
        } else {
            vec![(0, input.items.len())]
        };
        for (start, end) in ranges {
            let ballots = if mode == 0 { end - start } else { input.ballot_count() };
            let params = Params { mode, n: n as u32, ballots: ballots as u32, weighted };
            let weights = if weighted == 1 { &input.weights[start..end] } else { &[][..] };
            let groups = workgroups(ballots);
            let partial_words = groups as usize * slots * 2;
            let words = self.dispatch(
                buffers,
                Kernel::Scores,
                params,
                [&input.items[start..end], weights, &input.offsets],
                partial_words,
                groups,
            )?;
            for group in words.chunks_exact(slots * 2) {
                for (slot, pair) in group.chunks_exact(2).enumerate() {
                    totals[slot] += u64::from(pair[0]) | (u64::from(pair[1]) << 32);
                }
            }
        }
        let invalid = totals.pop().unwrap_or(0);
        Ok((totals, invalid))
    }

    fn run_pairwise(&self, buffers: &mut Buffers, input: &TallyInput) -> Result<(Vec<u64>, u64), TallyError> {
        let n = input.candidates as usize;
        let ballots = input.ballot_count();
        let params = Params { mode: 3, n: n as u32, ballots: ballots as u32, weighted: 0 };
        let groups = workgroups(ballots);
        let words = self.dispatch(
            buffers,
            Kernel::Pairwise,
            params,
            [&input.items, &[], &input.offsets],
            1 + groups as usize * n * n,
            groups,
        )?;
        let mut matrix = vec![0u64; n * n];
        for group in words[1..].chunks_exact(n * n) {
            matrix.iter_mut().zip(group).for_each(|(m, &g)| *m += u64::from(g));
        }
        Ok((matrix, u64::from(words[0])))
    }

    /// Uploads the inputs, runs `kernel` over `groups` workgroups and reads
    /// back `partial_words` u32s of per-workgroup results.
    fn dispatch(
        &self,
        buffers: &mut Buffers,
        kernel: Kernel,
        params: Params,
        inputs: [&[u32]; 3],
        partial_words: usize,
        groups: u32,
    ) -> Result<Vec<u32>, TallyError> {
        let device = &self.device;
        let params_buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("params"),
            contents: bytemuck::bytes_of(&params),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        for (slot, data) in inputs.iter().enumerate() {
            let buffer = buffers.input(device, slot, data.len(), storage);
            if !data.is_empty() {
                self.queue.write_buffer(buffer, 0, bytemuck::cast_slice(data));
            }
        }
        let partial_bytes = (partial_words * 4) as u64;
        buffers.sized(device, Slot::Partials, partial_bytes, storage | wgpu::BufferUsages::COPY_SRC);
        let pipeline = match kernel {
            Kernel::Scores => &self.scores,
            Kernel::Pairwise => &self.pairwise,
        };
        let layout = pipeline.get_bind_group_layout(0);
        let mut entries =
            vec![wgpu::BindGroupEntry { binding: 0, resource: params_buffer.as_entire_binding() }];
        for &binding in kernel.input_bindings() {
            let buffer = buffers.slot(Slot::Input(binding as usize - 1));
            entries.push(wgpu::BindGroupEntry { binding, resource: buffer.as_entire_binding() });
        }
        entries.push(wgpu::BindGroupEntry {
            binding: 4,
            resource: buffers.slot(Slot::Partials).as_entire_binding(),
        });
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("tally"),
            layout: &layout,
            entries: &entries,
        });
        buffers.sized(
            device,
            Slot::Readback,
            partial_bytes,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );
        let mut encoder =
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("tally") });
        // Zeroed on the device: no host allocation or upload per call.
        encoder.clear_buffer(buffers.slot(Slot::Partials), 0, Some(partial_bytes));
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("tally"),
                timestamp_writes: None,
            });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(groups, 1, 1);
        }
        encoder.copy_buffer_to_buffer(
            buffers.slot(Slot::Partials),
            0,
            buffers.slot(Slot::Readback),
            0,
            partial_bytes,
        );
        self.queue.submit([encoder.finish()]);
        let readback = buffers.slot(Slot::Readback);
        let slice = readback.slice(..partial_bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| TallyError::Gpu(e.to_string()))?;
        rx.recv()
            .map_err(|_| TallyError::Gpu("map callback dropped".into()))?
            .map_err(|e| TallyError::Gpu(e.to_string()))?;
        let words = {
            let view = slice.get_mapped_range().map_err(|e| TallyError::Gpu(e.to_string()))?;
            bytemuck::cast_slice::<u8, u32>(&view).to_vec()
        };
        readback.unmap();
        Ok(words)
    }
}

/// The two compute kernels, and which input buffers each one binds.
#[derive(Clone, Copy)]
enum Kernel {
    /// `shaders/scores.wgsl`: items (1), weights (2), offsets (3).
    Scores,
    /// `shaders/pairwise.wgsl`: items (1), offsets (3).
    Pairwise,
}

impl Kernel {
    fn input_bindings(self) -> &'static [u32] {
        match self {
            Kernel::Scores => &[1, 2, 3],
            Kernel::Pairwise => &[1, 3],
        }
    }
}

/// `[start, end)` ranges of at most `chunk` elements covering `len`; one empty
/// range when `len` is 0, so an empty job still dispatches (and reads back zeros).
fn chunk_ranges(len: usize, chunk: usize) -> Vec<(usize, usize)> {
    let chunk = chunk.max(1);
    (0..len.max(1)).step_by(chunk).map(|start| (start, (start + chunk).min(len))).collect()
}

fn workgroups(ballots: usize) -> u32 {
    (ballots.div_ceil(WORKGROUP as usize) as u32).clamp(1, MAX_WORKGROUPS)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Input(usize),
    Partials,
    Readback,
}

/// Device buffers kept across calls and grown (to the next power of two)
/// only when an input does not fit.
#[derive(Default)]
struct Buffers {
    held: Vec<(Slot, wgpu::Buffer)>,
}

impl Buffers {
    fn input(
        &mut self,
        device: &wgpu::Device,
        index: usize,
        elements: usize,
        usage: wgpu::BufferUsages,
    ) -> &wgpu::Buffer {
        self.sized(device, Slot::Input(index), (elements.max(1) * 4) as u64, usage)
    }

    fn sized(
        &mut self,
        device: &wgpu::Device,
        slot: Slot,
        bytes: u64,
        usage: wgpu::BufferUsages,
    ) -> &wgpu::Buffer {
        let position = self.held.iter().position(|(s, _)| *s == slot);
        let fits = position.is_some_and(|p| self.held[p].1.size() >= bytes);
        if !fits {
            let size = bytes.max(16).next_power_of_two();
            let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("tally"),
                size,
                usage,
                mapped_at_creation: false,
            });
            match position {
                Some(p) => self.held[p].1 = buffer,
                None => self.held.push((slot, buffer)),
            }
        }
        self.slot(slot)
    }

    fn slot(&self, slot: Slot) -> &wgpu::Buffer {
        &self.held.iter().find(|(s, _)| *s == slot).expect("buffer allocated before use").1
    }
}
