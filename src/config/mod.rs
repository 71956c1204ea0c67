//! Layered configuration for `hivemesh run` (issue 15): each setting comes
//! from, lowest first, its default, the config file (TOML), the environment
//! (`HIVEMESH_<KEY>`), then the command line. figment merges the layers;
//! clap stays the flag parser and the flags' definitions ([`RunFlags`]) are
//! the single list of keys, defaults and descriptions.

mod flags;
mod keys;
mod layers;
pub mod show;

pub use flags::RunFlags;
pub use keys::RunConfig;
pub use layers::{Resolved, resolve};

/// The config file `run` reads from DATA_DIR when `--config` is not given.
pub const DEFAULT_FILE_NAME: &str = "hivemesh.toml";

/// Prefix of the environment variables: `HIVEMESH_` + the key in upper case.
pub const ENV_PREFIX: &str = "HIVEMESH_";

/// One setting of `run`: its config key, flag and clap argument id.
#[derive(Debug, Clone)]
pub struct Key {
    /// The file key: the flag's long name with underscores, e.g. `no_jobs`.
    pub name: String,
    /// The flag's long name, e.g. `no-jobs`.
    pub long: String,
    /// clap's id for the argument (the struct field's name).
    pub id: String,
}

impl Key {
    /// `HIVEMESH_NO_JOBS` for `no_jobs`.
    pub fn env_var(&self) -> String {
        format!("{ENV_PREFIX}{}", self.name.to_uppercase())
    }
}

/// `run`'s flags as a clap command of their own (for defaults and the reference).
pub fn run_command() -> clap::Command {
    use clap::Args;
    RunFlags::augment_args(clap::Command::new("run"))
}

/// Every key, in the order `run --help` lists the flags (`--config` itself excluded).
pub fn keys() -> Vec<Key> {
    run_command()
        .get_arguments()
        .filter(|arg| arg.get_id() != "config")
        .filter_map(|arg| {
            let long = arg.get_long()?;
            Some(Key { name: long.replace('-', "_"), long: long.to_owned(), id: arg.get_id().to_string() })
        })
        .collect()
}
