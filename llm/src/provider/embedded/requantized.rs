//! The model re-quantized to Q8_0, saved beside the model file so that only
//! the first load pays for the re-quantization (about a second for
//! SmolLM2-135M on two cores; reading the saved file takes a fraction of
//! that). The saved file's name carries the source file's size and
//! modification time, so a replaced model is re-quantized again. Saving is
//! best effort: a read-only directory or a full disk costs the next load the
//! re-quantization, nothing else. A saved file that does not load (cut
//! short, corrupt, from another version) is ignored and written again.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use candle_core::Device;
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_transformers::models::quantized_llama::ModelWeights;

/// Where the re-quantized copy of `source` is kept:
/// `<stem>.q8_0-<size>-<mtime seconds>.gguf` in the same directory; `None`
/// when the source's size or time cannot be read.
pub fn saved_path(source: &Path) -> Option<PathBuf> {
    let metadata = std::fs::metadata(source).ok()?;
    let modified = metadata.modified().ok()?.duration_since(UNIX_EPOCH).ok()?.as_secs();
    let stem = source.file_stem()?.to_string_lossy();
    Some(source.with_file_name(format!("{stem}.q8_0-{}-{modified}.gguf", metadata.len())))
}

/// The weights in a saved re-quantized file; `None` (with a warning unless
/// the file is simply absent) when it is missing or does not load.
pub fn load(saved: &Path) -> Option<ModelWeights> {
    let mut file = std::fs::File::open(saved).ok()?;
    let loaded = gguf_file::Content::read(&mut file)
        .and_then(|content| ModelWeights::from_gguf(content, &mut file, &Device::Cpu));
    match loaded {
        Ok(weights) => Some(weights),
        Err(err) => {
            tracing::warn!(file = %saved.display(), %err, "the saved Q8_0 model does not load; re-quantizing");
            None
        }
    }
}

/// Writes `gguf` to `saved` through a temporary file in the same directory
/// and a rename, so no reader ever sees half a file. Failures are logged.
pub fn save(saved: &Path, gguf: &[u8]) {
    let dir = saved.parent().unwrap_or_else(|| Path::new("."));
    let written = tempfile::NamedTempFile::new_in(dir).and_then(|mut temp| {
        temp.write_all(gguf)?;
        temp.as_file().sync_all()?;
        temp.persist(saved).map_err(|err| err.error)?;
        Ok(())
    });
    if let Err(err) = written {
        tracing::warn!(file = %saved.display(), %err, "cannot save the Q8_0 model; the next load re-quantizes");
    }
}

/// Rewrites the file in memory with every 4/5-bit matrix as Q8_0, which
/// candle's x86 kernels decode much faster. Returns the new GGUF file's bytes.
pub fn requantize(content: gguf_file::Content, file: &mut std::fs::File) -> candle_core::Result<Vec<u8>> {
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
