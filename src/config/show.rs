//! `hivemesh config`: the effective configuration with each value's origin,
//! and the Markdown reference of every key.

use serde_json::{Value as Json, json};

use super::{DEFAULT_FILE_NAME, Resolved, keys, run_command};
use crate::output::outln;

/// What the reference adds to a flag's help for the config file.
const FILE_NOTES: &[(&str, &str)] = &[(
    "profiles",
    "In the config file, the `[profiles.NAME]` tables themselves may stand here instead of a path",
)];

/// Keys whose value is never printed.
const SECRET_KEYS: &[&str] = &["api_token"];

/// The value shown for a secret that is set.
const HIDDEN: &str = "(hidden)";

/// Prints one `key = value  # origin` line per key (valid TOML), keys no
/// layer sets as comments; with `json`, one document:
/// `{"file": PATH|null, "settings": [{"key", "value", "source", ...}]}`
/// where source is default, file (with path and line), env (with var) or flag.
pub fn print(resolved: &Resolved, json: bool) -> anyhow::Result<()> {
    let values = serde_json::to_value(&resolved.config)?;
    let mut settings = Vec::new();
    for key in keys() {
        let origin = resolved.origin(&key);
        let value =
            values.get(&key.name).cloned().filter(|_| origin.is_some()).map(|value| {
                if SECRET_KEYS.contains(&key.name.as_str()) { Json::from(HIDDEN) } else { value }
            });
        settings.push((key, value, origin));
    }
    if json {
        let settings: Vec<Json> = settings
            .iter()
            .map(|(key, value, origin)| {
                let mut entry = match origin {
                    Some(origin) => serde_json::to_value(origin)?,
                    None => json!({ "source": null }),
                };
                entry["key"] = Json::from(key.name.as_str());
                entry["value"] = value.clone().unwrap_or(Json::Null);
                Ok(entry)
            })
            .collect::<anyhow::Result<_>>()?;
        outln!("{}", serde_json::to_string_pretty(&json!({ "file": resolved.file, "settings": settings }))?);
        return Ok(());
    }
    outln!("# `hivemesh run` settings; each from, highest first: flag, environment, file, default.");
    match &resolved.file {
        Some(path) => outln!("# config file: {}", path.display()),
        None => outln!("# config file: none (no --config, and no DATA_DIR/{DEFAULT_FILE_NAME})"),
    }
    for (key, value, origin) in settings {
        match (value, origin) {
            (Some(value), Some(origin)) => outln!("{} = {}  # {origin}", key.name, toml_text(&value)),
            _ => outln!("# {} is not set", key.name),
        }
    }
    Ok(())
}

/// The Markdown table of every key: key, environment variable, flag,
/// default, description (the flag's help). README carries this output
/// between `<!-- config-reference:start -->` and `<!-- config-reference:end -->`.
pub fn reference() -> String {
    let mut command = run_command();
    command.build();
    let mut out = String::from("| Key | Environment variable | Flag | Default | Description |\n");
    out.push_str("| --- | --- | --- | --- | --- |\n");
    for key in keys() {
        let Some(arg) = command.get_arguments().find(|arg| arg.get_id() == key.id.as_str()) else { continue };
        let default: Vec<String> =
            arg.get_default_values().iter().map(|value| value.to_string_lossy().into_owned()).collect();
        let default = if default.is_empty() { String::new() } else { format!("`{}`", default.join(",")) };
        let help = arg.get_help().map(|help| help.to_string()).unwrap_or_default();
        let note = FILE_NOTES.iter().find(|(name, _)| *name == key.name).map(|(_, note)| *note);
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        let help = match note {
            Some(note) => format!("{}. {note}", help.trim_end_matches('.')),
            None => help,
        };
        let help = help.replace('|', "\\|");
        out.push_str(&format!(
            "| `{}` | `{}` | `--{}` | {default} | {help} |\n",
            key.name,
            key.env_var(),
            key.long
        ));
    }
    out
}

/// `value` as a TOML value (inline tables for tables), else as JSON.
fn toml_text(value: &Json) -> String {
    toml::Value::try_from(value).map(|value| value.to_string()).unwrap_or_else(|_| value.to_string())
}
