//! Hard limits on everything that arrives from the network.
//!
//! They live in one place so every decoder enforces the same numbers and a
//! peer cannot make a node allocate more than these bounds allow.

/// Largest frame body (after the 4-byte length prefix) a node accepts.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Largest envelope payload. Leaves room in a frame for the envelope header.
pub const MAX_PAYLOAD_BYTES: usize = 512 * 1024;

/// How far back (in sequence numbers) the per-sender replay window reaches.
pub const REPLAY_WINDOW: u64 = 128;

/// Senders whose replay windows are remembered at once; the least recently
/// seen is forgotten first. A forgotten sender is still protected by the
/// timestamp age check.
pub const MAX_TRACKED_SENDERS: usize = 65_536;

/// Envelopes older than this are rejected even if their sequence is new.
pub const MAX_ENVELOPE_AGE_MS: u64 = 5 * 60 * 1000;

/// Tolerated clock skew for envelopes stamped in the future.
pub const MAX_FUTURE_SKEW_MS: u64 = 30 * 1000;

/// Bounds on the contents of peer entries and ballots.
pub const MAX_ADDRESSES: usize = 16;
pub const MAX_MODELS: usize = 64;
pub const MAX_STRING_BYTES: usize = 256;
pub const MAX_CANDIDATES: usize = 1024;
