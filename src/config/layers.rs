//! Merging the layers with figment and saying where each value came from.

use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, FromArgMatches};
use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::{DEFAULT_FILE_NAME, ENV_PREFIX, Key, RunConfig, RunFlags, keys, run_command};

const DEFAULTS: &str = "default";
const FLAGS: &str = "command-line flag";
const ENVIRONMENT: &str = "environment variable";

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--config FILE` names no file.
    #[error("config file {0} not found")]
    Missing(PathBuf),
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The file is not TOML (the message names the line).
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    /// A key no `run` flag has.
    #[error("unknown key `{key}` in {origin}; `hivemesh config --reference` lists the keys")]
    UnknownKey { key: String, origin: String },
    /// A value of the wrong type or one its parser refuses.
    #[error("`{key}` ({origin}): {message}")]
    Invalid { key: String, origin: String, message: String },
    /// The defaults could not be read from the flag definitions (a bug).
    #[error("cannot read run's defaults: {0}")]
    Defaults(#[from] clap::Error),
}

/// Where one value came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum Origin {
    Default,
    File { path: PathBuf, line: Option<usize> },
    Env { var: String },
    Flag { flag: String },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File { path, line: Some(line) } => write!(f, "{} line {line}", path.display()),
            Origin::File { path, line: None } => write!(f, "{}", path.display()),
            Origin::Env { var } => write!(f, "environment variable {var}"),
            Origin::Flag { flag } => write!(f, "flag {flag}"),
        }
    }
}

/// The merged configuration and how to trace each value.
pub struct Resolved {
    pub config: RunConfig,
    /// The config file read, if any.
    pub file: Option<PathBuf>,
    figment: Figment,
    file_text: String,
}

impl Resolved {
    /// Where `key`'s value came from; `None` when no layer sets it.
    pub fn origin(&self, key: &Key) -> Option<Origin> {
        let metadata = self.figment.find_metadata(&key.name)?;
        Some(origin_of(metadata, key, &self.file_text))
    }
}

fn origin_of(metadata: &Metadata, key: &Key, file_text: &str) -> Origin {
    if let Some(figment::Source::File(path)) = &metadata.source {
        return Origin::File { path: path.clone(), line: line_of(file_text, &key.name) };
    }
    match metadata.name.as_ref() {
        DEFAULTS => Origin::Default,
        FLAGS => Origin::Flag { flag: format!("--{}", key.long) },
        ENVIRONMENT => Origin::Env { var: key.env_var() },
        _ => Origin::Default,
    }
}

/// Merges defaults < `file` (or DATA_DIR/hivemesh.toml when present) <
/// environment < the flags given on the command line (`flags`, with the
/// matches of `run` telling which were given; `None` for none).
pub fn resolve(
    data_dir: &Path,
    file: Option<&Path>,
    flags: Option<(&RunFlags, &ArgMatches)>,
) -> Result<Resolved, ConfigError> {
    let keys = keys();
    let file = match file {
        Some(path) if !path.is_file() => return Err(ConfigError::Missing(path.to_owned())),
        Some(path) => Some(path.to_owned()),
        None => Some(data_dir.join(DEFAULT_FILE_NAME)).filter(|path| path.is_file()),
    };
    let file_text = match &file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.clone(), source })?,
        None => String::new(),
    };

    // Defaults: what clap gives when no flag and no environment variable is set.
    let bare = run_command().mut_args(|arg| arg.env(None)).try_get_matches_from(["run"])?;
    let defaults = RunFlags::from_arg_matches(&bare)?;
    let mut figment =
        Figment::new().merge(layer(DEFAULTS, &defaults, &bare, &keys, ValueSource::DefaultValue));
    if let Some(path) = &file {
        figment = figment.merge(Toml::file_exact(path));
    }
    let names: Vec<&str> = keys.iter().map(|key| key.name.as_str()).collect();
    figment = figment.merge(RawEnv(Env::prefixed(ENV_PREFIX).only(&names)));
    if let Some((flags, matches)) = flags {
        figment = figment.merge(layer(FLAGS, flags, matches, &keys, ValueSource::CommandLine));
    }

    let config =
        figment.extract_lossy::<RunConfig>().map_err(|error| explain(error, file.as_deref(), &file_text))?;
    Ok(Resolved { config, file, figment, file_text })
}

/// The first of figment's errors, naming the key, its source and line.
fn explain(error: figment::Error, file: Option<&Path>, file_text: &str) -> ConfigError {
    let path = || file.map(Path::to_owned).unwrap_or_default();
    let Some(error) = error.into_iter().next() else {
        return ConfigError::Syntax { path: path(), message: "unknown error".into() };
    };
    match &error.kind {
        figment::error::Kind::UnknownField(name, _) => {
            let mut key = error.path.clone();
            if key.last() != Some(name) {
                key.push(name.clone());
            }
            let key = key.join(".");
            let line = line_of(file_text, &key);
            ConfigError::UnknownKey { key, origin: Origin::File { path: path(), line }.to_string() }
        }
        figment::error::Kind::Message(message) if error.path.is_empty() && file.is_some() => {
            ConfigError::Syntax { path: path(), message: message.trim().to_owned() }
        }
        kind => {
            let name = error.path.join(".");
            let key = keys().into_iter().find(|key| key.name == name);
            let origin = match (&error.metadata, &key) {
                (Some(metadata), Some(key)) => origin_of(metadata, key, file_text).to_string(),
                _ => "configuration".to_owned(),
            };
            ConfigError::Invalid { key: name, origin, message: kind.to_string() }
        }
    }
}

/// The top-level keys of `config` that clap says came from `source`.
fn layer(
    name: &'static str,
    flags: &RunFlags,
    matches: &ArgMatches,
    keys: &[Key],
    source: ValueSource,
) -> Layer {
    let mut dict = match Value::serialize(RunConfig::from(flags)) {
        Ok(Value::Dict(_, dict)) => dict,
        _ => Dict::new(),
    };
    dict.retain(|name, _| {
        keys.iter().any(|key| key.name == *name && matches.value_source(&key.id) == Some(source))
    });
    Layer { name, dict }
}

/// A figment provider of fixed values, named for provenance.
struct Layer {
    name: &'static str,
    dict: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// figment's `Env`, each value kept as the text it is (figment's own would
/// read `HIVEMESH_API_TOKEN=1e5` as the number 100000): numbers and
/// booleans are read from text when extracted, like the file's.
struct RawEnv(Env);

impl Provider for RawEnv {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENVIRONMENT)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let dict = self.0.iter().map(|(key, value)| (key.into_string(), Value::from(value))).collect();
        Ok(Profile::Default.collect(dict))
    }
}

/// The 1-based line of top-level `key` in TOML `text` (toml's spans), if there.
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    let table = toml::de::DeTable::parse(text).ok()?;
    let (name, _) = table.get_ref().iter().find(|(name, _)| name.get_ref().as_ref() == key)?;
    let start = name.span().start;
    Some(text.get(..start)?.matches('\n').count() + 1)
}
