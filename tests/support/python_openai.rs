//! The official `openai` Python package, pinned and installed once into the
//! target dir (like a crate), for tests that drive the API with it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

const OPENAI_PACKAGE: &str = "openai==2.54.0";

/// A directory holding the pinned `openai` package, installed on first use.
pub fn openai_package() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-openai-2.54.0");
    let importable = |dir: &Path| {
        Command::new("python3")
            .args(["-c", "import openai"])
            .env("PYTHONPATH", dir)
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if importable(&dir) {
        return dir;
    }
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    let install = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target"])
        .arg(&partial)
        .arg(OPENAI_PACKAGE)
        .output()
        .expect("python3 runs (install Python 3 with pip)");
    assert!(
        install.status.success(),
        "could not install {OPENAI_PACKAGE} for this test (needs pip and PyPI once): {}",
        String::from_utf8_lossy(&install.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&partial, &dir).expect("move the package into place");
    assert!(importable(&dir), "{OPENAI_PACKAGE} installed but does not import");
    dir
}

/// Runs `tests/python/SCRIPT BASE_URL` with the pinned package, off the
/// async runtime; asserts it succeeded and returns the JSON it printed.
pub async fn run_script(script: &str, base_url: String, package: PathBuf) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(script);
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(base_url)
            .env("PYTHONPATH", package)
            .output()
            .expect("python3")
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the client script failed: {stderr}");
    serde_json::from_slice(&output.stdout).expect("the script prints JSON")
}
