//! Profiles: which model, temperature and length each stage uses. Three are
//! built in; users add their own in a TOML file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Stage;

/// One stage's settings. `model = "default"` means the provider's default model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSettings {
    #[serde(default = "default_model")]
    pub model: String,
    pub temperature: f32,
    pub max_tokens: u32,
    /// Replaces the stage's built-in role prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

fn default_model() -> String {
    "default".into()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub name: String,
    pub generator: StageSettings,
    pub refiner: StageSettings,
    pub validator: StageSettings,
    pub curator: StageSettings,
    /// Attempts per stage before the job fails (client retries come on top).
    pub stage_attempts: u32,
    /// What the curator does with the candidates it is given.
    #[serde(default)]
    pub curation: Curation,
}

/// What the curator does: write a new answer from the best candidates, or
/// select one of them verbatim. A model too small to synthesise (the
/// embedded 135M one) makes answers worse by rewriting them; `hivemesh eval`
/// measures both (README, docs/adr/0012-council-judgement.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Curation {
    /// `select` when the curating node's provider is the embedded model,
    /// `rewrite` for an HTTP provider.
    #[default]
    Auto,
    /// The answer is a candidate as written: the council's vote winner; in a
    /// pipeline, the draft or the refined answer, whichever the curator's
    /// model finds more likely as the answer.
    Select,
    /// The curator's model writes the answer from the winner (and runner-up),
    /// or the draft, refined answer and review.
    Rewrite,
}

impl Curation {
    /// What `Auto` means for a curator whose provider is `provider` (its
    /// `Provider::name`): select on the embedded model, rewrite elsewhere.
    pub fn resolve(self, provider: &str) -> Curation {
        match self {
            Curation::Auto if provider == crate::provider::embedded::PROVIDER_NAME => Curation::Select,
            Curation::Auto => Curation::Rewrite,
            other => other,
        }
    }

    /// The name used in profiles, outcomes and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Curation::Auto => "auto",
            Curation::Select => "select",
            Curation::Rewrite => "rewrite",
        }
    }
}

impl Profile {
    pub fn stage(&self, stage: Stage) -> &StageSettings {
        match stage {
            Stage::Generator => &self.generator,
            Stage::Refiner => &self.refiner,
            Stage::Validator => &self.validator,
            Stage::Curator => &self.curator,
        }
    }
}

fn settings(temperature: f32, max_tokens: u32) -> StageSettings {
    StageSettings { model: default_model(), temperature, max_tokens, prompt: None }
}

/// The names of the built-in profiles, fastest first.
pub const BUILTIN_PROFILES: [&str; 3] = ["fast", "balanced", "quality"];

fn builtin(name: &str) -> Option<Profile> {
    let (generator, refiner, validator, curator) = match name {
        "fast" => (settings(0.2, 96), settings(0.2, 96), settings(0.0, 48), settings(0.1, 128)),
        "balanced" => (settings(0.5, 192), settings(0.3, 192), settings(0.0, 96), settings(0.2, 256)),
        "quality" => (settings(0.7, 384), settings(0.3, 384), settings(0.0, 192), settings(0.2, 512)),
        _ => return None,
    };
    Some(Profile {
        name: name.into(),
        generator,
        refiner,
        validator,
        curator,
        stage_attempts: 2,
        curation: Curation::Auto,
    })
}

/// A user profile as written in TOML: stages left out come from `base`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserProfile {
    #[serde(default = "default_base")]
    base: String,
    generator: Option<StageSettings>,
    refiner: Option<StageSettings>,
    validator: Option<StageSettings>,
    curator: Option<StageSettings>,
    stage_attempts: Option<u32>,
    curation: Option<Curation>,
}

fn default_base() -> String {
    "balanced".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfilesFile {
    #[serde(default)]
    profiles: BTreeMap<String, UserProfile>,
}

/// Why a profiles file was refused, or a profile name not found.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The text is not TOML, or has a key or value the format does not
    /// allow (`[profiles.NAME]` tables of `StageSettings`).
    #[error("profiles file: {0}")]
    Toml(#[source] toml::de::Error),
    /// A profile's `base` names no built-in or earlier profile.
    #[error("profile {name:?}: unknown base profile {base:?}")]
    UnknownBase { name: String, base: String },
    /// A stage's temperature is outside 0..=2, or its `max_tokens` is 0.
    #[error("profile {name:?}, {stage}: temperature must be 0..=2 and max_tokens above 0")]
    BadStage { name: String, stage: Stage },
    /// No profile of that name; `known` lists the defined ones, sorted.
    #[error("unknown profile {name:?}; known profiles: {}", known.join(", "))]
    Unknown { name: String, known: Vec<String> },
}

/// The built-in profiles plus any the user defined.
#[derive(Clone, Debug)]
pub struct Profiles {
    profiles: BTreeMap<String, Profile>,
}

impl Default for Profiles {
    fn default() -> Self {
        let profiles =
            BUILTIN_PROFILES.iter().filter_map(|name| builtin(name)).map(|p| (p.name.clone(), p)).collect();
        Self { profiles }
    }
}

impl Profiles {
    /// Adds the profiles of a TOML file (`[profiles.NAME]` tables). A user
    /// profile may replace a built-in one of the same name.
    ///
    /// # Errors
    /// [`ProfileError::Toml`], [`ProfileError::UnknownBase`] or
    /// [`ProfileError::BadStage`]; no profile of a refused file is added.
    pub fn with_toml(mut self, text: &str) -> Result<Self, ProfileError> {
        let file: ProfilesFile = toml::from_str(text).map_err(ProfileError::Toml)?;
        for (name, user) in file.profiles {
            let Some(base) = self.profiles.get(&user.base).cloned() else {
                return Err(ProfileError::UnknownBase { name, base: user.base });
            };
            let profile = Profile {
                name: name.clone(),
                generator: user.generator.unwrap_or(base.generator),
                refiner: user.refiner.unwrap_or(base.refiner),
                validator: user.validator.unwrap_or(base.validator),
                curator: user.curator.unwrap_or(base.curator),
                stage_attempts: user.stage_attempts.unwrap_or(base.stage_attempts).max(1),
                curation: user.curation.unwrap_or(base.curation),
            };
            for stage in Stage::ALL {
                let settings = profile.stage(stage);
                if !(0.0..=2.0).contains(&settings.temperature) || settings.max_tokens == 0 {
                    return Err(ProfileError::BadStage { name, stage });
                }
            }
            self.profiles.insert(name, profile);
        }
        Ok(self)
    }

    /// The profile called `name`.
    ///
    /// # Errors
    /// [`ProfileError::Unknown`], naming the profiles there are.
    pub fn get(&self, name: &str) -> Result<&Profile, ProfileError> {
        self.profiles.get(name).ok_or_else(|| ProfileError::Unknown {
            name: name.to_string(),
            known: self.profiles.keys().cloned().collect(),
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.profiles.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_profiles_inherit_from_their_base_and_are_checked() {
        let profiles = Profiles::default()
            .with_toml(
                r#"
                [profiles.mine]
                base = "fast"
                curator = { model = "meta-llama/llama-3.1-8b-instruct", temperature = 0.3, max_tokens = 300 }
                "#,
            )
            .expect("valid profile");
        let mine = profiles.get("mine").expect("defined");
        assert_eq!(mine.curator.model, "meta-llama/llama-3.1-8b-instruct");
        assert_eq!(mine.generator, profiles.get("fast").expect("builtin").generator);
        let unknown = profiles.get("nope").expect_err("unknown");
        assert_eq!(
            unknown.to_string(),
            "unknown profile \"nope\"; known profiles: balanced, fast, mine, quality"
        );

        let bad = Profiles::default().with_toml("[profiles.x]\nbase = \"turbo\"").expect_err("bad base");
        assert_eq!(bad.to_string(), "profile \"x\": unknown base profile \"turbo\"");
        let hot = Profiles::default()
            .with_toml("[profiles.x]\ngenerator = { temperature = 9.0, max_tokens = 10 }")
            .expect_err("temperature");
        assert_eq!(
            hot.to_string(),
            "profile \"x\", generator: temperature must be 0..=2 and max_tokens above 0"
        );
        let unknown_key = Profiles::default().with_toml("[profiles.x]\ncolour = 1").expect_err("unknown key");
        assert!(matches!(unknown_key, ProfileError::Toml(_)), "{unknown_key:?}");
        assert!(unknown_key.to_string().starts_with("profiles file: "), "{unknown_key}");
        let rewriting =
            Profiles::default().with_toml("[profiles.w]\ncuration = \"rewrite\"").expect("curation key");
        assert_eq!(rewriting.get("w").expect("defined").curation, Curation::Rewrite);
        assert!(Profiles::default().with_toml("[profiles.x]\ncuration = \"merge\"").is_err());
    }

    #[test]
    fn auto_curation_selects_on_the_embedded_model_and_rewrites_elsewhere() {
        assert_eq!(Curation::Auto.resolve("local"), Curation::Select);
        assert_eq!(Curation::Auto.resolve("openrouter"), Curation::Rewrite);
        assert_eq!(Curation::Rewrite.resolve("local"), Curation::Rewrite);
        assert_eq!(Curation::Select.resolve("http://127.0.0.1:1/v1"), Curation::Select);
    }
}
