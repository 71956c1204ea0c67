//! [`RunConfig`]: every `run` setting, typed, as the merged layers give it.
//! Text values (addresses, paths, quotas) are read with the same parsers as
//! their flags, from a string or any other scalar (an environment variable
//! `HIVEMESH_MODEL=7` is the text "7").

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hivemesh::node::Multiaddr;
use hivemesh::node::federation::quota::{PeerOverride, QuotaLimits};
use serde::{Deserialize, Serialize};

use super::flags::{MIN_ANTI_ENTROPY_MS, RunFlags};
use crate::cli::{AdvertiseArgs, ApiAccessArgs, JobLimitArgs, LlmArgs, PrivateSwarmArgs};
use crate::node_cmd::{ProfileChange, RunArgs};

/// The settings of `hivemesh run`, one field per key (a key is the flag's
/// name with underscores). Unknown keys are refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    #[serde(default, deserialize_with = "text::multiaddrs", serialize_with = "text::display_list")]
    pub listen: Vec<Multiaddr>,
    #[serde(default, deserialize_with = "text::multiaddrs", serialize_with = "text::display_list")]
    pub bootstrap: Vec<Multiaddr>,
    #[serde(default)]
    pub mdns: bool,
    #[serde(deserialize_with = "text::one", serialize_with = "text::display")]
    pub api: SocketAddr,
    #[serde(default, deserialize_with = "text::opt", skip_serializing_if = "Option::is_none")]
    pub api_token: Option<String>,
    #[serde(default, deserialize_with = "text::allowed_hosts")]
    pub api_allow_host: Vec<String>,
    #[serde(default, deserialize_with = "text::allowed_origins")]
    pub api_allow_origin: Vec<String>,
    pub expected_size: u32,
    #[serde(default, deserialize_with = "text::opt_comma_list", skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    #[serde(default, deserialize_with = "text::role", skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, deserialize_with = "text::opt", skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    #[serde(deserialize_with = "text::anti_entropy_ms")]
    pub anti_entropy_ms: u64,
    pub majority_threshold: usize,
    #[serde(default)]
    pub no_jobs: bool,
    #[serde(deserialize_with = "text::one")]
    pub provider: String,
    #[serde(default, deserialize_with = "text::opt", skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
    #[serde(deserialize_with = "text::one")]
    pub provider_model: String,
    #[serde(default, deserialize_with = "text::opt", skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    #[serde(default, deserialize_with = "text::opt", skip_serializing_if = "Option::is_none")]
    pub embedding_model: Option<String>,
    #[serde(default, deserialize_with = "text::profiles", skip_serializing_if = "Option::is_none")]
    pub profiles: Option<ProfilesSetting>,
    pub max_jobs: usize,
    pub max_calls: usize,
    pub max_tokens: u32,
    #[serde(deserialize_with = "text::one", serialize_with = "text::display")]
    pub peer_quota: QuotaLimits,
    #[serde(
        default,
        deserialize_with = "text::peer_overrides_list",
        serialize_with = "text::peer_overrides"
    )]
    pub peer_quota_for: Vec<PeerOverride>,
    #[serde(default, deserialize_with = "text::opt", skip_serializing_if = "Option::is_none")]
    pub swarm_key: Option<PathBuf>,
    #[serde(default, deserialize_with = "text::opt", skip_serializing_if = "Option::is_none")]
    pub allow_peers: Option<PathBuf>,
}

impl From<&RunFlags> for RunConfig {
    fn from(flags: &RunFlags) -> Self {
        Self {
            listen: flags.listen.clone(),
            bootstrap: flags.bootstrap.clone(),
            mdns: flags.mdns,
            api: flags.api,
            api_token: flags.api_token.clone(),
            api_allow_host: flags.api_access.allow_hosts.clone(),
            api_allow_origin: flags.api_access.allow_origins.clone(),
            expected_size: flags.expected_size,
            models: flags.advertise.models.clone(),
            role: flags.advertise.role.clone(),
            gpu: flags.advertise.gpu.clone(),
            anti_entropy_ms: flags.anti_entropy_ms,
            majority_threshold: flags.majority_threshold,
            no_jobs: flags.no_jobs,
            provider: flags.llm.provider.clone(),
            model: flags.llm.model.clone(),
            provider_model: flags.llm.provider_model.clone(),
            api_key_env: flags.llm.api_key_env.clone(),
            embedding_model: flags.llm.embedding_model.clone(),
            profiles: flags.llm.profiles.clone().map(ProfilesSetting::File),
            max_jobs: flags.limits.max_jobs,
            max_calls: flags.limits.max_calls,
            max_tokens: flags.limits.max_tokens,
            peer_quota: flags.limits.peer_quota,
            peer_quota_for: flags.limits.peer_quota_for.clone(),
            swarm_key: flags.private.swarm_key.clone(),
            allow_peers: flags.private.allow_peers.clone(),
        }
    }
}

/// `profiles`: a file of `[profiles.NAME]` tables (as `--profiles FILE`),
/// or, in the config file, those tables themselves.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum ProfilesSetting {
    File(PathBuf),
    /// The tables under `profiles`, already checked by the profile loader.
    Inline(toml::Table),
}

impl ProfilesSetting {
    /// The profiles as the text of a profiles file (`[profiles.NAME]` tables).
    fn file_text(table: &toml::Table) -> Result<String, toml::ser::Error> {
        let mut file = toml::Table::new();
        file.insert("profiles".into(), toml::Value::Table(table.clone()));
        toml::to_string(&file)
    }
}

impl RunConfig {
    /// What `node_cmd::run` takes. Errors: a `gpu` that is not NAME:MEMORY_MB or none.
    pub fn into_run_args(self) -> anyhow::Result<RunArgs> {
        let advertise = AdvertiseArgs { models: self.models, role: self.role, gpu: self.gpu };
        let mut llm = LlmArgs {
            provider: self.provider,
            model: self.model,
            provider_model: self.provider_model,
            api_key_env: self.api_key_env,
            embedding_model: self.embedding_model,
            profiles: None,
        };
        let mut inline_profiles = None;
        match self.profiles {
            Some(ProfilesSetting::File(path)) => llm.profiles = Some(path),
            Some(ProfilesSetting::Inline(table)) => {
                inline_profiles = Some(ProfilesSetting::file_text(&table)?)
            }
            None => {}
        }
        Ok(RunArgs {
            listen: self.listen,
            bootstrap: self.bootstrap,
            mdns: self.mdns,
            api: self.api,
            api_token: self.api_token,
            api_access: ApiAccessArgs {
                allow_hosts: self.api_allow_host,
                allow_origins: self.api_allow_origin,
            },
            expected_size: self.expected_size,
            profile: ProfileChange::parse(&advertise)?,
            anti_entropy: Duration::from_millis(self.anti_entropy_ms),
            majority_threshold: self.majority_threshold,
            llm: (!self.no_jobs).then_some(llm),
            limits: JobLimitArgs {
                max_jobs: self.max_jobs,
                max_calls: self.max_calls,
                max_tokens: self.max_tokens,
                peer_quota: self.peer_quota,
                peer_quota_for: self.peer_quota_for,
            },
            private: PrivateSwarmArgs { swarm_key: self.swarm_key, allow_peers: self.allow_peers },
            inline_profiles,
        })
    }
}

/// Serde helpers reading text settings from any scalar, and lists from an
/// array or from one value.
mod text {
    use std::fmt;
    use std::str::FromStr;

    use hivemesh::node::Multiaddr;
    use hivemesh::node::federation::quota::PeerOverride;
    use serde::de::{self, Deserializer, SeqAccess, Visitor};
    use serde::{Deserialize, Serializer};

    /// A scalar as text: strings as they are, numbers and booleans written out.
    struct Text(String);

    impl<'de> Deserialize<'de> for Text {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(TextVisitor).map(Text)
        }
    }

    struct TextVisitor;

    impl<'de> Visitor<'de> for TextVisitor {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
            Ok(v)
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_char<E: de::Error>(self, v: char) -> Result<String, E> {
            Ok(v.to_string())
        }
    }

    /// An array of scalars, or one scalar (one item).
    struct TextList(Vec<String>);

    impl<'de> Deserialize<'de> for TextList {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct ListVisitor;
            impl<'de> Visitor<'de> for ListVisitor {
                type Value = Vec<String>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("an array of strings, or one string")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
                    let mut items = Vec::new();
                    while let Some(Text(item)) = seq.next_element()? {
                        items.push(item);
                    }
                    Ok(items)
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
                    Ok(vec![v.to_owned()])
                }
                fn visit_bool<E: de::Error>(self, v: bool) -> Result<Vec<String>, E> {
                    Ok(vec![v.to_string()])
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<Vec<String>, E> {
                    Ok(vec![v.to_string()])
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<Vec<String>, E> {
                    Ok(vec![v.to_string()])
                }
                fn visit_f64<E: de::Error>(self, v: f64) -> Result<Vec<String>, E> {
                    Ok(vec![v.to_string()])
                }
            }
            deserializer.deserialize_any(ListVisitor).map(TextList)
        }
    }

    fn parse<T: FromStr, E: de::Error>(text: &str) -> Result<T, E>
    where
        T::Err: fmt::Display,
    {
        text.parse().map_err(|e| E::custom(format_args!("{text:?}: {e}")))
    }

    /// Items of a list, each split at `separator` (commas, as `--models`
    /// does: one environment variable can hold several).
    fn split_items<'de, D: Deserializer<'de>>(
        deserializer: D,
        separator: char,
    ) -> Result<Vec<String>, D::Error> {
        let TextList(items) = TextList::deserialize(deserializer)?;
        Ok(items.iter().flat_map(|item| item.split(separator)).map(|s| s.trim().to_owned()).collect())
    }

    fn comma_items<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
        split_items(deserializer, ',')
    }

    pub fn one<'de, D: Deserializer<'de>, T: FromStr>(deserializer: D) -> Result<T, D::Error>
    where
        T::Err: fmt::Display,
    {
        let Text(text) = Text::deserialize(deserializer)?;
        parse(&text)
    }

    pub fn opt<'de, D: Deserializer<'de>, T: FromStr>(deserializer: D) -> Result<Option<T>, D::Error>
    where
        T::Err: fmt::Display,
    {
        one(deserializer).map(Some)
    }

    /// Multiaddrs, read as `--listen` and `--bootstrap` read them; one text
    /// may hold several, comma-separated.
    pub fn multiaddrs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Multiaddr>, D::Error> {
        let items = comma_items(deserializer)?;
        let items = items.iter().filter(|item| !item.is_empty());
        items.map(|item| crate::cli::parse_multiaddr(item).map_err(de::Error::custom)).collect()
    }

    /// `PEERID:LIMITS` entries; one text may hold several, `;`-separated
    /// (LIMITS has commas).
    pub fn peer_overrides_list<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<PeerOverride>, D::Error> {
        let items = split_items(deserializer, ';')?;
        items.iter().filter(|item| !item.is_empty()).map(|item| parse(item)).collect()
    }

    pub fn opt_comma_list<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<String>>, D::Error> {
        comma_items(deserializer).map(Some)
    }

    pub fn allowed_hosts<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
        let items = comma_items(deserializer)?;
        items.iter().map(|item| hivemesh::node::api::allowed_host(item).map_err(de::Error::custom)).collect()
    }

    pub fn allowed_origins<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
        let items = comma_items(deserializer)?;
        items
            .iter()
            .map(|item| hivemesh::node::api::allowed_origin(item).map_err(de::Error::custom))
            .collect()
    }

    pub fn role<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
        let Text(role) = Text::deserialize(deserializer)?;
        match role.as_str() {
            "worker" | "bootstrap" | "observer" => Ok(Some(role)),
            _ => Err(de::Error::custom(format_args!("{role:?}: expected worker, bootstrap or observer"))),
        }
    }

    pub fn anti_entropy_ms<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        let ms = u64::deserialize(deserializer)?;
        if ms < super::MIN_ANTI_ENTROPY_MS {
            return Err(de::Error::custom(format_args!(
                "{ms} is below the least, {}",
                super::MIN_ANTI_ENTROPY_MS
            )));
        }
        Ok(ms)
    }

    /// A profiles file's path, or `[profiles.NAME]` tables that the profile
    /// loader accepts (same base profiles, ranges and unknown-key checks).
    pub fn profiles<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<super::ProfilesSetting>, D::Error> {
        struct ProfilesVisitor;
        impl<'de> Visitor<'de> for ProfilesVisitor {
            type Value = super::ProfilesSetting;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a profiles file's path, or [profiles.NAME] tables")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(super::ProfilesSetting::File(v.into()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let table = toml::Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let text = super::ProfilesSetting::file_text(&table).map_err(de::Error::custom)?;
                hivemesh::llm::pipeline::Profiles::default().with_toml(&text).map_err(de::Error::custom)?;
                Ok(super::ProfilesSetting::Inline(table))
            }
        }
        deserializer.deserialize_any(ProfilesVisitor).map(Some)
    }

    pub fn display<S: Serializer, T: fmt::Display>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub fn display_list<S: Serializer, T: fmt::Display>(
        values: &[T],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(values.iter().map(ToString::to_string))
    }

    pub fn peer_overrides<S: Serializer>(values: &[PeerOverride], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(values.iter().map(|o| format!("{}:{}", o.peer, o.limits)))
    }
}
