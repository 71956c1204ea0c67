//! The `hivemesh` command.

// Every line goes through `output`, so a closed pipe never panics.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use hivemesh::node::keystore;
use hivemesh::protocol::identity::hex;

mod cli;
mod config;
mod eval_cmd;
mod job_view;
mod llm_cmd;
mod mesh_ask;
mod mesh_cmd;
mod node_cmd;
mod output;
mod remote_ask;
mod sim_cmd;
mod swarm_key_cmd;
mod tally_cmd;
mod trust_cmd;
use cli::{ByzantineAction, Cli, Command, ModelAction};
use output::{errln, outln};

/// The most nodes `mesh` starts in one process: each runs its own swarm
/// and tasks, and more do not fit a small machine's cores.
const MAX_MESH_NODES: usize = 256;

fn main() -> ExitCode {
    // SAFETY: first thing in main, no other thread runs yet.
    unsafe { hivemesh_llm::provider::embedded::pin_cpu_thread_counts() };
    quiet_headless_vulkan();
    init_logging();
    // The matches also tell which `run` flags were given (config layering).
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(cli, &matches) {
        Ok(code) => code,
        Err(e) => {
            errln!("hivemesh: error: {}", output::error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Log lines on stderr: warnings and up (RUST_LOG for more), coloured only
/// on a terminal, naming the module only when RUST_LOG asked for detail.
fn init_logging() {
    let from_env = tracing_subscriber::EnvFilter::try_from_default_env().ok();
    let detailed = from_env.is_some();
    tracing_subscriber::fmt()
        .with_env_filter(from_env.unwrap_or_else(|| DEFAULT_LOG_FILTER.into()))
        .with_ansi(output::stderr_is_terminal())
        .with_target(detailed)
        .with_writer(std::io::stderr)
        .init();
}

/// Mesa's Vulkan device-select layer asks a Wayland compositor which GPU is
/// the default; with no session, libwayland prints "error: XDG_RUNTIME_DIR
/// is invalid or not set in the environment" on stderr, a message about a
/// desktop hivemesh does not use. With no Wayland session there is nothing
/// for that layer to learn (wgpu picks its adapter itself), so it is turned
/// off through the switch its manifest declares.
fn quiet_headless_vulkan() {
    use std::env::var_os;
    let runtime_dir = var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    let runtime_dir_valid = runtime_dir.is_some_and(|dir| dir.is_absolute() && dir.is_dir());
    let wayland = var_os("WAYLAND_DISPLAY").is_some() || var_os("WAYLAND_SOCKET").is_some();
    if !runtime_dir_valid && !wayland && var_os("NODEVICE_SELECT").is_none() {
        // SAFETY: the first thing main does, before any other thread exists
        // (no runtime, no logger yet), so nothing reads the environment meanwhile.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}

/// automerge logs an ERROR for every pushed change that arrives before its
/// dependencies, which is routine here (they wait in its queue, and sync
/// rounds fill the gap); hivemesh reports real refusals itself. Kademlia
/// warns "Failed to trigger bootstrap: No known peers" while a node is
/// alone, which it says itself (an unreachable bootstrap peer is a line).
const DEFAULT_LOG_FILTER: &str = "warn,automerge=off,libp2p_kad=error";

/// Exit status of `tally` when the outcome is valid but not final.
const EXIT_NO_QUORUM: u8 = 2;

fn run(cli: Cli, matches: &clap::ArgMatches) -> anyhow::Result<ExitCode> {
    let data_dir = || match &cli.data_dir {
        Some(dir) => Ok(dir.clone()),
        None => keystore::default_data_dir(),
    };
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("could not start the async runtime")
    };
    match &cli.command {
        Command::Run(flags) => {
            let dir = data_dir()?;
            let run_matches = matches.subcommand_matches("run").context("no matches for run")?;
            let resolved = config::resolve(&dir, flags.config.as_deref(), Some((flags, run_matches)))?;
            let args = resolved.config.into_run_args()?;
            // A node serves its peers whoever reads its stdout.
            output::keep_running_without_stdout();
            runtime()?.block_on(node_cmd::run(&dir, args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config { flags, json, reference } => {
            if *reference {
                output::out!("{}", config::show::reference());
                return Ok(ExitCode::SUCCESS);
            }
            let config_matches = matches.subcommand_matches("config").context("no matches for config")?;
            let resolved =
                config::resolve(&data_dir()?, flags.config.as_deref(), Some((flags, config_matches)))?;
            config::show::print(&resolved, *json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Mesh { nodes, no_mdns, swarm_key, measure, speedup, ask, mode, profile, json, llm } => {
            anyhow::ensure!((1..=MAX_MESH_NODES).contains(nodes), "--nodes must be 1 to {MAX_MESH_NODES}");
            if let Some(question) = ask {
                anyhow::ensure!(!question.trim().is_empty(), "the question is empty");
            }
            let args = mesh_cmd::MeshArgs {
                nodes: *nodes,
                mdns: !no_mdns,
                swarm_key: swarm_key.clone(),
                measure: *measure,
                speedup: *speedup,
                ask: ask.clone(),
                mode: mode.clone(),
                profile: profile.clone(),
                json: *json,
                llm: llm.clone(),
            };
            let dir = data_dir()?;
            runtime()?.block_on(mesh_cmd::run(&dir, args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval { questions, seed, profile, curation, json, llm } => {
            let args = eval_cmd::EvalArgs {
                questions: *questions,
                seed: *seed,
                profile: profile.clone(),
                curation: curation.clone(),
                json: *json,
                llm: llm.clone(),
            };
            let dir = data_dir()?;
            runtime()?.block_on(eval_cmd::run(&dir, args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Members { json, target, view } => {
            let dir = data_dir()?;
            runtime()?.block_on(node_cmd::members(&dir, target, view.as_deref(), *json))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Advertise { advertise, target } => {
            let change = node_cmd::ProfileChange::parse(advertise)?;
            let dir = data_dir()?;
            runtime()?.block_on(node_cmd::advertise(&dir, target, &change))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Leave { target } => {
            let dir = data_dir()?;
            runtime()?.block_on(node_cmd::leave(&dir, target))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sim { nodes, jobs: Some(jobs), loss, latency_ms, partition, kill, seed, json, .. } => {
            anyhow::ensure!((0.0..=1.0).contains(loss), "--loss must be between 0 and 1, got {loss}");
            let nodes = nodes.unwrap_or(5);
            anyhow::ensure!(nodes >= 3, "--nodes must be at least 3 for a job simulation");
            anyhow::ensure!(
                *kill <= nodes.saturating_sub(3),
                "--kill {kill} leaves fewer than 3 of the {nodes} nodes alive (with 3 nodes, give --kill 0)"
            );
            let mut config = hivemesh::node::sim::jobs::JobSimConfig::new(nodes, *jobs, *seed);
            config.loss = *loss;
            config.latency_ms = latency_ms.clone();
            config.partition = partition.clone();
            config.kill = *kill;
            let clean = sim_cmd::run_jobs(config, *json)?;
            Ok(if clean { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Sim { nodes, jobs: None, loss, latency_ms, partition, kill, soak, seed, json } => {
            anyhow::ensure!((0.0..=1.0).contains(loss), "--loss must be between 0 and 1, got {loss}");
            let nodes = &nodes.unwrap_or(100);
            anyhow::ensure!(*nodes >= 2, "--nodes must be at least 2");
            let mut config = hivemesh::node::sim::SimConfig::new(*nodes, *seed);
            config.loss = *loss;
            config.latency_ms = latency_ms.clone();
            config.partition = partition.clone();
            config.kill = *kill;
            config.soak_secs = *soak;
            sim_cmd::run(config, *json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ask { question, target, mode, peers, llm, profile, seed, budget_usd, deadline, json } => {
            anyhow::ensure!(!question.trim().is_empty(), "the question is empty");
            let deadline = deadline.map(std::time::Duration::from_secs);
            if target.node.is_some() || mode.is_some() {
                anyhow::ensure!(
                    seed.is_none() && budget_usd.is_none(),
                    "--seed and --budget-usd apply to the pipeline run here, not to a job asked of a node"
                );
                let api = node_cmd::api_client(target, &data_dir()?)?;
                let request = remote_ask::Request {
                    question,
                    mode: mode.as_deref().unwrap_or("council"),
                    profile,
                    peers: *peers,
                    deadline,
                    json: *json,
                };
                let done = runtime()?.block_on(remote_ask::ask(&api, request))?;
                return Ok(if done { ExitCode::SUCCESS } else { ExitCode::FAILURE });
            }
            let args = llm_cmd::AskArgs {
                question,
                llm,
                profile,
                seed: *seed,
                budget_usd: *budget_usd,
                deadline,
                json: *json,
            };
            runtime()?.block_on(llm_cmd::ask(args, &data_dir()?))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            // Rendered into memory first: clap_complete panics when its
            // writer fails, and stdout may be a closed pipe.
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "hivemesh", &mut script);
            output::out!("{}", String::from_utf8_lossy(&script));
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { command } => {
            let top = Cli::command();
            let man = match command {
                None => clap_mangen::Man::new(top),
                Some(name) => {
                    let names: Vec<String> =
                        top.get_subcommands().map(|c| c.get_name().to_string()).collect();
                    let found = top.find_subcommand(name).cloned().ok_or_else(|| {
                        anyhow::anyhow!("no command {name:?}; one of: {}", names.join(", "))
                    })?;
                    // Titled as the top page refers to it.
                    clap_mangen::Man::new(found).title(format!("hivemesh-{name}"))
                }
            };
            let mut page = Vec::new();
            man.render(&mut page).context("cannot render the man page")?;
            output::out!("{}", String::from_utf8_lossy(&page));
            Ok(ExitCode::SUCCESS)
        }
        Command::ForceLeave { peer, json, target } => {
            let api = node_cmd::api_client(target, &data_dir()?)?;
            runtime()?.block_on(trust_cmd::force_leave(&api, peer, *json))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Byzantine { action } => {
            let target = match action {
                ByzantineAction::List { target, .. }
                | ByzantineAction::Clear { target, .. }
                | ByzantineAction::Report { target, .. } => target,
            };
            let api = node_cmd::api_client(target, &data_dir()?)?;
            let runtime = runtime()?;
            match action {
                ByzantineAction::List { json, .. } => runtime.block_on(trust_cmd::list(&api, *json))?,
                ByzantineAction::Clear { peer, json, .. } => {
                    runtime.block_on(trust_cmd::clear(&api, peer, *json))?
                }
                ByzantineAction::Report { file, json, .. } => {
                    runtime.block_on(trust_cmd::report(&api, file, *json))?
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Jobs { id, limit, json, target } => {
            let api = node_cmd::api_client(target, &data_dir()?)?;
            runtime()?.block_on(remote_ask::jobs(&api, id.as_deref(), *limit, *json))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Model { action } => {
            let data_dir = data_dir()?;
            match action {
                ModelAction::Pull => runtime()?.block_on(llm_cmd::pull(&data_dir))?,
                ModelAction::Path => llm_cmd::path(&data_dir),
                ModelAction::Bench { tokens, no_requantize, model, json } => runtime()?
                    .block_on(llm_cmd::bench(model.as_deref(), &data_dir, *tokens, !*no_requantize, *json))?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Majority { file } => {
            majority(file.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::SwarmKey { fingerprint } => {
            swarm_key_cmd::run(fingerprint.as_deref()).map(|_| ExitCode::SUCCESS)
        }
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
                outln!("{}", serde_json::to_string(&out)?);
                return Ok(ExitCode::SUCCESS);
            }
            let path = file.as_deref().unwrap_or(std::path::Path::new("-"));
            let reached = tally_cmd::recheck(path, rule.as_deref(), backend, quorum, *json)?;
            Ok(if reached { ExitCode::SUCCESS } else { ExitCode::from(EXIT_NO_QUORUM) })
        }
    }
}

/// `hivemesh majority [FILE|-]`.
fn majority(file: Option<&std::path::Path>) -> anyhow::Result<()> {
    use hivemesh::crdt::majority::{parse_views, resolve};
    let text = tally_cmd::read_input(file.unwrap_or(std::path::Path::new("-")))?;
    let views = parse_views(&text).context("could not read the views")?;
    let resolution = resolve(&views)?;
    outln!("{}", resolution.to_json());
    Ok(())
}

fn print_id(data_dir: PathBuf, json: bool) -> anyhow::Result<()> {
    let stored = keystore::load_or_create(&data_dir).context("could not load the node identity")?;
    let peer_id = stored.identity.peer_id();
    if stored.created {
        errln!("created a new identity in {}", stored.path.display());
    }
    if json {
        let out = serde_json::json!({
            "peer_id": peer_id.to_string(),
            "public_key": hex(&stored.identity.node_id().0),
            "key_file": stored.path,
            "created": stored.created,
        });
        outln!("{out}");
    } else {
        outln!("{peer_id}");
    }
    Ok(())
}
