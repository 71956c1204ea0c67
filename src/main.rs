use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use hivemesh::node::keystore;
use hivemesh::protocol::identity::hex;

mod cli;
mod tally_cmd;
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
        Ok(code) => code,
        Err(e) => {
            eprintln!("hivemesh: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exit status of `tally` when the outcome is valid but not final.
const EXIT_NO_QUORUM: u8 = 2;

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let data_dir = || match &cli.data_dir {
        Some(dir) => Ok(dir.clone()),
        None => keystore::default_data_dir(),
    };
    match &cli.command {
        Command::Id { json } => print_id(data_dir()?, *json).map(|_| ExitCode::SUCCESS),
        Command::Tally {
            file,
            rule,
            backend,
            quorum,
            json,
            generate,
            voters,
            candidates,
            equivocators,
            seed,
        } => {
            let backend = backend.parse().map_err(anyhow::Error::msg)?;
            let quorum = quorum.parse().map_err(anyhow::Error::msg)?;
            if *generate {
                let rule = tally_cmd::parse_rule(rule.as_deref().unwrap_or("schulze"))?;
                let out = tally_cmd::generate(rule, *voters, *candidates, *equivocators, *seed)?;
                println!("{}", serde_json::to_string(&out)?);
                return Ok(ExitCode::SUCCESS);
            }
            let path = file.as_deref().unwrap_or(std::path::Path::new("-"));
            let reached = tally_cmd::recheck(path, rule.as_deref(), backend, quorum, *json)?;
            Ok(if reached { ExitCode::SUCCESS } else { ExitCode::from(EXIT_NO_QUORUM) })
        }
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
