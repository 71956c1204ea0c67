//! Running the real `hivemesh` binary against a given data dir.

use std::process::{Command, Output};

pub fn hivemesh(args: &[&str], data_dir: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hivemesh"))
        .args(args)
        .env("HIVEMESH_DATA_DIR", data_dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("run hivemesh")
}

/// Waits (up to 30 s) until a node started on `data_dir` has recorded its
/// API address in `DATA_DIR/api.addr`, and returns that address.
#[allow(dead_code)] // not every test binary starts a node
pub fn wait_for_api(data_dir: &std::path::Path) -> String {
    let addr_file = data_dir.join("api.addr");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !addr_file.exists() {
        assert!(std::time::Instant::now() < deadline, "the node never recorded its API address");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::fs::read_to_string(&addr_file).expect("api.addr").trim().to_string()
}
