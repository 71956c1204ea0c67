//! Majority-rule resolution of peer views (../shared/spec/majority-rule.md):
//! how a small cluster agrees on its member list.

mod entry;
mod parse;
mod resolve;

pub use entry::{Entry, EntryError};
pub use parse::{ViewsError, parse_views};
pub use resolve::{Metrics, Resolution, ResolveError, resolve};

impl Resolution<'_> {
    /// `{"entries": [...], "metrics": {...}}`, the CLI's output.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "entries": self.entries.iter().map(|entry| entry.to_json()).collect::<Vec<_>>(),
            "metrics": self.metrics,
        })
    }
}
