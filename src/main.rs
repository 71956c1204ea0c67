use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use hivemesh::node::keystore;
use hivemesh::protocol::identity::hex;

mod cli;
use cli::{Cli, Command};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hivemesh: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let data_dir = match cli.data_dir {
        Some(dir) => dir,
        None => keystore::default_data_dir()?,
    };
    match cli.command {
        Command::Id { json } => print_id(data_dir, json),
    }
}

fn print_id(data_dir: PathBuf, json: bool) -> anyhow::Result<()> {
    let stored = keystore::load_or_create(&data_dir).context("could not load the node identity")?;
    let peer_id = stored.identity.peer_id();
    if stored.created {
        eprintln!("created a new identity in {}", stored.path.display());
    }
    if json {
        let out = serde_json::json!({
            "peer_id": peer_id.to_string(),
            "public_key": hex(&stored.identity.node_id().0),
            "key_file": stored.path,
            "created": stored.created,
        });
        println!("{out}");
    } else {
        println!("{peer_id}");
    }
    Ok(())
}
