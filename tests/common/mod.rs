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
