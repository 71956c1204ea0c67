//! `hivemesh run`, `members` and `leave`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow};
use hivemesh::node::api::client::api_token_file;
use hivemesh::node::api::{ApiClient, Method, api_addr_file};
use hivemesh::node::federation::Limits;
use hivemesh::node::federation::quota::QuotaConfig;
use hivemesh::node::membership::MembershipConfig;
use hivemesh::node::net::private::{read_allowlist, read_swarm_key, swarm_key_fingerprint};
use hivemesh::node::replica::{Profile, ViewKind, ViewMember, ViewReport};
use hivemesh::node::{Multiaddr, NodeConfig, ReplicationConfig, spawn_node};
use hivemesh::protocol::{GpuInfo, Role};

use crate::cli::{AdvertiseArgs, ApiAccessArgs, JobLimitArgs, LlmArgs, NodeArgs, PrivateSwarmArgs};
use crate::output::{errln, outln};

pub struct RunArgs {
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    pub api: SocketAddr,
    pub api_token: Option<String>,
    /// `--api-allow-host` and `--api-allow-origin`.
    pub api_access: ApiAccessArgs,
    pub expected_size: u32,
    /// `--models`, `--role` and `--gpu`: the profile, when any is given.
    pub profile: ProfileChange,
    pub anti_entropy: Duration,
    pub majority_threshold: usize,
    /// The provider for this node's share of jobs; `None` takes no part.
    pub llm: Option<LlmArgs>,
    pub limits: JobLimitArgs,
    /// `--swarm-key` and `--allow-peers` (ADR 0016).
    pub private: PrivateSwarmArgs,
    /// `[profiles.NAME]` tables from the config file, as a profiles file's
    /// text; added over the built-in ones and any `--profiles` file.
    pub inline_profiles: Option<String>,
}

/// The fields of the advertised profile that `--models`, `--role` and
/// `--gpu` change; a field whose flag was not given keeps its value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProfileChange {
    pub role: Option<Role>,
    pub models: Option<Vec<String>>,
    /// `Some(None)` clears the GPU (`--gpu none`).
    pub gpu: Option<Option<GpuInfo>>,
}

impl ProfileChange {
    /// Reads `--models`, `--role` and `--gpu`.
    pub fn parse(args: &AdvertiseArgs) -> anyhow::Result<Self> {
        let role = match args.role.as_deref() {
            None => None,
            Some("worker") => Some(Role::Worker),
            Some("bootstrap") => Some(Role::Bootstrap),
            Some("observer") => Some(Role::Observer),
            Some(other) => anyhow::bail!("unknown --role {other:?}; expected worker, bootstrap or observer"),
        };
        let gpu = match args.gpu.as_deref().map(str::trim) {
            None => None,
            Some("none") => Some(None),
            Some(text) => {
                let (name, memory) = text.rsplit_once(':').ok_or_else(|| {
                    anyhow!("--gpu {text:?}: expected NAME:MEMORY_MB, e.g. \"RTX 4090:24564\", or none")
                })?;
                let memory_mb =
                    memory.trim().parse().with_context(|| format!("--gpu {text:?}: bad memory in MB"))?;
                Some(Some(GpuInfo { name: name.trim().to_owned(), memory_mb }))
            }
        };
        let models = args
            .models
            .as_ref()
            .map(|models| models.iter().map(|m| m.trim().to_owned()).filter(|m| !m.is_empty()).collect());
        Ok(Self { role, models, gpu })
    }

    /// Whether no flag was given.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `current` with the given fields replaced.
    pub fn apply(&self, current: Profile) -> Profile {
        Profile {
            role: self.role.unwrap_or(current.role),
            models: self.models.clone().unwrap_or(current.models),
            gpu: self.gpu.clone().unwrap_or(current.gpu),
        }
    }
}

/// The profile a registry view shows for a node.
fn advertised(me: &ViewMember) -> Profile {
    Profile { role: me.role.unwrap_or(Role::Worker), models: me.models.clone(), gpu: me.gpu.clone() }
}

pub async fn run(data_dir: &Path, args: RunArgs) -> anyhow::Result<()> {
    let swarm_key = args.private.swarm_key.as_deref().map(read_swarm_key).transpose()?;
    let allow_peers = args.private.allow_peers.as_deref().map(read_allowlist).transpose()?;
    let listen = if !args.listen.is_empty() {
        args.listen
    } else if swarm_key.is_some() {
        // QUIC has no pre-shared key (ADR 0016).
        vec!["/ip4/0.0.0.0/tcp/4001".parse()?]
    } else {
        vec!["/ip4/0.0.0.0/udp/4001/quic-v1".parse()?, "/ip4/0.0.0.0/tcp/4001".parse()?]
    };
    // Profile flags set the profile (a field not given takes its default);
    // without any the node keeps what it last advertised. Set before the
    // node starts, so nothing it serves ever shows an older profile.
    let mut profile = (!args.profile.is_empty()).then(|| args.profile.apply(Profile::default()));
    let mut offered = Vec::new();
    let federation = match &args.llm {
        None => None,
        Some(llm) => {
            let (mut setup, models) = crate::llm_cmd::federation(llm, data_dir).await?;
            if let Some(text) = &args.inline_profiles {
                let profiles = std::mem::take(&mut setup.profiles).with_toml(text);
                setup.profiles = profiles.map_err(|err| anyhow!("config file: {err}"))?;
            }
            setup.limits = Limits {
                max_asked_jobs: args.limits.max_jobs,
                max_running_calls: args.limits.max_calls.max(1),
                max_tokens_per_call: args.limits.max_tokens,
                ..Limits::default()
            };
            setup.quotas = QuotaConfig::new(args.limits.peer_quota, args.limits.peer_quota_for.clone());
            // Placement prefers peers offering a model: say which, unless
            // `--models` did.
            if let Some(given) = profile.as_mut().filter(|given| given.models.is_empty()) {
                given.models = models.clone();
            }
            offered = models;
            Some(setup)
        }
    };
    let api_token = api_token(data_dir, args.api, args.api_token)?;
    let web_origins = args.api_access.allow_origins.join(", ");
    let config = NodeConfig {
        data_dir: data_dir.to_path_buf(),
        listen,
        bootstrap: args.bootstrap,
        mdns: args.mdns,
        api: Some(args.api),
        api_token,
        api_allow_hosts: args.api_access.allow_hosts,
        api_allow_origins: args.api_access.allow_origins,
        membership: MembershipConfig::lan(args.expected_size),
        replication: ReplicationConfig {
            anti_entropy: args.anti_entropy,
            majority_threshold: args.majority_threshold,
            profile,
            jobs: Default::default(),
        },
        federation,
        swarm_key,
        allow_peers,
    };
    let mut node = spawn_node(config).await.context("could not start the node")?;
    if let Some(key) = &swarm_key {
        outln!("private swarm: swarm key fingerprint {} (TCP only, QUIC off)", swarm_key_fingerprint(key));
    }
    let reload = args.private.allow_peers.clone().map(|file| {
        outln!("allowlist: {} (re-read on SIGHUP)", file.display());
        tokio::spawn(reload_allowlist_on_sighup(node.client(), file))
    });
    if !offered.is_empty() {
        advertise_offered_models(&node, offered).await?;
    }
    outln!("peer id: {}", node.peer_id);
    for addr in &node.listen {
        outln!("listening: {addr}/p2p/{}", node.peer_id);
    }
    if let Some(api) = node.api {
        outln!("control API: http://{api} (try `hivemesh members`)");
        if !web_origins.is_empty() {
            outln!("web pages allowed to call it: {web_origins}");
        }
        if node.federation().is_some() {
            outln!("jobs: hivemesh ask --node http://{api} --mode council \"QUESTION\"");
        }
    }
    outln!("ready in {} ms; Ctrl-C leaves the swarm gracefully", node.ready_in.as_millis());
    tokio::select! {
        _ = shutdown_signal() => {
            errln!("leaving the swarm…");
            node.leave(Duration::from_secs(3)).await;
        }
        _ = node.stopped() => errln!("node stopped (left on request)"),
    }
    if let Some(task) = reload {
        task.abort();
    }
    let _ = std::fs::remove_file(api_addr_file(data_dir));
    Ok(())
}

/// Re-reads the allowlist on every SIGHUP; a file that does not read keeps
/// the list in force, with an error naming the file and line.
async fn reload_allowlist_on_sighup(node: hivemesh::node::NodeClient, file: std::path::PathBuf) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            errln!("cannot listen for SIGHUP: the allowlist will not be reloaded");
            return;
        };
        while hangup.recv().await.is_some() {
            match read_allowlist(&file) {
                Ok(peers) => {
                    let count = peers.len();
                    match node.set_allowed_peers(peers).await {
                        Ok(()) => errln!("allowlist reloaded from {}: {count} peers", file.display()),
                        Err(e) => errln!("allowlist not reloaded: {e}"),
                    }
                }
                Err(e) => errln!("allowlist not reloaded, the old one stays in force: {e}"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (node, file);
}

/// Without profile flags a restarted node keeps what it last advertised
/// (its GPU, its role); it only gains the provider's model when that entry
/// lists none.
async fn advertise_offered_models(
    node: &hivemesh::node::NodeHandle,
    offered: Vec<String>,
) -> anyhow::Result<()> {
    let report = node.client().view(Some(ViewKind::Registry)).await?;
    if !report.me.models.is_empty() {
        return Ok(());
    }
    let profile = Profile { models: offered, ..advertised(&report.me) };
    node.client().advertise(profile).await.context("could not advertise the provider's model")
}

/// The token the API will require: the one given, else (only when the API
/// is reachable beyond loopback) the one in DATA_DIR/api.token, generated
/// there on first use, readable by this user only.
fn api_token(data_dir: &Path, api: SocketAddr, given: Option<String>) -> anyhow::Result<Option<String>> {
    if given.is_some() || api.ip().is_loopback() {
        return Ok(given.filter(|token| !token.is_empty()));
    }
    let file = api_token_file(data_dir);
    if let Ok(token) = std::fs::read_to_string(&file) {
        let token = token.trim();
        anyhow::ensure!(!token.is_empty(), "{} is empty; delete it to get a new token", file.display());
        return Ok(Some(token.to_string()));
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow!("no randomness for an API token: {e}"))?;
    let token = hex::encode(bytes);
    write_private(&file, &token).with_context(|| format!("cannot write {}", file.display()))?;
    outln!("the API on {api} needs a bearer token; it is in {}", file.display());
    Ok(Some(token))
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The API of the node `target` names (or the one on `data_dir`), with
/// `--api-token` when given.
pub fn api_client(target: &NodeArgs, data_dir: &Path) -> anyhow::Result<ApiClient> {
    let api = ApiClient::resolve(target.node.as_deref(), data_dir)?;
    match target.api_token.as_deref().map(str::trim).filter(|token| !token.is_empty()) {
        Some(token) => Ok(ApiClient::new(api.base, Some(token.to_string()))?),
        None => Ok(api),
    }
}

pub async fn members(
    data_dir: &Path,
    target: &NodeArgs,
    view: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let api = api_client(target, data_dir)?;
    let path = match view {
        Some(view) => format!("/v1/members?view={view}"),
        None => "/v1/members".to_string(),
    };
    let report = api.call(Method::GET, &path, None).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let report: ViewReport =
        serde_json::from_value(report).context("the node's member list has an unexpected shape")?;
    outln!(
        "this node: {} ({:?} view; active view: {:?})",
        report.me.member.peer_id,
        report.view,
        report.active_view
    );
    outln!("{:<54} {:<8} {:>5} {:>14}  {:<24} addresses", "peer id", "state", "inc", "last change", "models");
    for m in std::iter::once(&report.me).chain(&report.members) {
        outln!(
            "{:<54} {:<8} {:>5} {:>14}  {:<24} {}",
            m.member.peer_id,
            m.member.state,
            m.member.incarnation,
            format_age(m.member.last_change_ms),
            if m.models.is_empty() { "-".to_owned() } else { m.models.join(",") },
            m.member.addresses.join(" ")
        );
    }
    let alive =
        report.members.iter().filter(|m| matches!(m.member.state.as_str(), "alive" | "suspect")).count();
    outln!("{} members known besides this node, {alive} alive or suspect", report.members.len());
    if let Some(majority) = &report.majority {
        let m = &majority.metrics;
        outln!(
            "majority rule over {} views ({} of {} peers answered): {} conflicts, {} tie-breaks, {} µs",
            m.peer_count,
            majority.peers_answered,
            majority.peers_asked,
            m.conflicts,
            m.tie_breaks,
            m.duration_micros
        );
    }
    Ok(())
}

/// `hivemesh advertise`: the node's current entry with the given fields
/// changed (the API replaces the whole profile, so the rest is read first).
pub async fn advertise(data_dir: &Path, target: &NodeArgs, change: &ProfileChange) -> anyhow::Result<()> {
    let api = api_client(target, data_dir)?;
    anyhow::ensure!(!change.is_empty(), "nothing to change: give --models, --role or --gpu");
    let report = api.call(Method::GET, "/v1/members?view=registry", None).await?;
    let report: ViewReport =
        serde_json::from_value(report).context("the node's registry entry has an unexpected shape")?;
    let profile = change.apply(advertised(&report.me));
    let body = serde_json::to_value(&profile)?;
    api.call(Method::POST, "/v1/advertise", Some(&body)).await?;
    let gpu = profile.gpu.as_ref().map_or("none".to_string(), |g| format!("{} ({} MB)", g.name, g.memory_mb));
    outln!("advertised: role {:?}, models [{}], GPU {gpu}", profile.role, profile.models.join(", "));
    Ok(())
}

fn format_age(unix_ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if unix_ms == 0 { "-".into() } else { format!("{:.1}s ago", now.saturating_sub(unix_ms) as f64 / 1000.0) }
}

pub async fn leave(data_dir: &Path, target: &NodeArgs) -> anyhow::Result<()> {
    let api = api_client(target, data_dir)?;
    api.call(Method::POST, "/v1/leave", None).await?;
    outln!("the node at {} is leaving the swarm", api.base);
    Ok(())
}
