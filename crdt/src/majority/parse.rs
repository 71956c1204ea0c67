//! Views from JSON, with errors that say which view and which entry is wrong.

use serde_json::Value;

use super::entry::{Entry, EntryError};

#[derive(Debug, thiserror::Error)]
pub enum ViewsError {
    #[error("input is not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("expected an array of views or {{\"views\": [...]}}, found {0}")]
    WrongShape(&'static str),
    #[error("view {view}: expected an array of entries, found {found}")]
    ViewNotArray { view: usize, found: &'static str },
    #[error("view {view}, entry {entry}: {error}")]
    BadEntry { view: usize, entry: usize, error: EntryError },
}

/// Accepts a bare array of arrays of entries, or `{"views": [...]}`.
pub fn parse_views(text: &str) -> Result<Vec<Vec<Entry>>, ViewsError> {
    let value: Value = serde_json::from_str(text)?;
    let views = match value {
        Value::Array(views) => views,
        Value::Object(mut object) => match object.remove("views") {
            Some(Value::Array(views)) => views,
            Some(other) => return Err(ViewsError::WrongShape(kind(&other))),
            None => return Err(ViewsError::WrongShape("an object without \"views\"")),
        },
        other => return Err(ViewsError::WrongShape(kind(&other))),
    };
    views
        .into_iter()
        .enumerate()
        .map(|(view, entries)| match entries {
            Value::Array(entries) => entries
                .into_iter()
                .enumerate()
                .map(|(entry, value)| {
                    Entry::from_json(value).map_err(|error| ViewsError::BadEntry { view, entry, error })
                })
                .collect(),
            other => Err(ViewsError::ViewNotArray { view, found: kind(&other) }),
        })
        .collect()
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
