//! Prefix caching for the embedded model: the attention state (KV cache)
//! after a prompt's leading tokens, kept so a later prompt that starts with
//! the same tokens skips their prefill. The same idea as vLLM's automatic
//! prefix caching and llama.cpp's prompt cache, at chat-message granularity:
//! a state is kept where each message of the prompt starts (taken from the
//! messages, never from tokens in their text) and at the end of the prompt,
//! so a role prompt is prefilled once for every question asked under it, and
//! the voters of a council score candidates after a prompt the candidates'
//! writers already prefilled.
//!
//! A state is a `ModelWeights` clone: the weights are shared handles, the
//! KV tensors are immutable (the model's forward pass concatenates into new
//! tensors), so an entry is never changed by the generation that reuses it.

use std::collections::{HashSet, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Tokens of attention state the cache holds at most, all entries together.
/// One token of SmolLM2-135M's state is 30 layers × (K + V) × 3 KV heads ×
/// 64 dims × 4 bytes = 45 KiB, so the default bounds the cache at 45 MiB.
pub const DEFAULT_MAX_TOKENS: usize = 1024;

/// Entries the cache holds at most: each also keeps its last logits (192
/// KiB for a 49,152-token vocabulary), so at most 12 MiB of those.
pub const MAX_ENTRIES: usize = 64;

/// The prompt's state after `len` tokens, from the cache.
pub struct Hit<S> {
    /// How many leading tokens of the prompt the state covers (≥ 1).
    pub len: usize,
    /// The state after those tokens: for the model, its weights handle with
    /// the KV cache and the logits after the last token.
    pub state: S,
}

struct Entry<S> {
    tokens: Vec<u32>,
    state: S,
}

/// Least-recently-used states keyed by their exact token prefix. `S` is
/// cloned out on a hit, so it should be a handle (shared tensors).
pub struct PrefixCache<S> {
    /// Oldest use first.
    entries: VecDeque<Entry<S>>,
    held_tokens: usize,
    max_tokens: usize,
    hits: u64,
    misses: u64,
}

impl<S: Clone> PrefixCache<S> {
    /// An empty cache holding at most `max_tokens` tokens of state (0 turns
    /// caching off).
    pub fn new(max_tokens: usize) -> Self {
        Self { entries: VecDeque::new(), held_tokens: 0, max_tokens, hits: 0, misses: 0 }
    }

    /// The longest cached state whose tokens are a prefix of `prompt` (the
    /// whole prompt included), marked as just used.
    pub fn longest_prefix(&mut self, prompt: &[u32]) -> Option<Hit<S>> {
        let best = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, entry)| prompt.starts_with(&entry.tokens))
            .max_by_key(|(_, entry)| entry.tokens.len())
            .map(|(at, _)| at);
        let Some(at) = best else {
            self.misses += 1;
            return None;
        };
        self.hits += 1;
        let entry = self.entries.remove(at)?;
        let hit = Hit { len: entry.tokens.len(), state: entry.state.clone() };
        self.entries.push_back(entry);
        Some(hit)
    }

    /// Keeps the state after `tokens` (not empty), evicting the least
    /// recently used states beyond the token bound. A prefix longer than the
    /// bound is not kept.
    pub fn insert(&mut self, tokens: &[u32], state: &S) {
        if tokens.is_empty() || tokens.len() > self.max_tokens {
            return;
        }
        if let Some(at) = self.entries.iter().position(|entry| entry.tokens == tokens) {
            if let Some(entry) = self.entries.remove(at) {
                self.entries.push_back(entry);
            }
            return;
        }
        while self.held_tokens + tokens.len() > self.max_tokens || self.entries.len() >= MAX_ENTRIES {
            let Some(oldest) = self.entries.pop_front() else { break };
            self.held_tokens -= oldest.tokens.len();
        }
        self.held_tokens += tokens.len();
        self.entries.push_back(Entry { tokens: tokens.to_vec(), state: state.clone() });
    }

    /// Whether states are kept at all (a bound above 0).
    pub fn enabled(&self) -> bool {
        self.max_tokens > 0
    }

    /// Whether a state after `len` tokens would be kept.
    fn would_keep(&self, len: usize) -> bool {
        len > 0 && len <= self.max_tokens
    }

    /// `(hits, misses)` of [`longest_prefix`](Self::longest_prefix) so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }

    /// Tokens of state held now.
    pub fn held_tokens(&self) -> usize {
        self.held_tokens
    }
}

/// A prefill ended early: the caller's cancel flag was set.
#[derive(Debug)]
pub enum PrefillError<E> {
    Cancelled,
    /// The caller's forward pass failed.
    Forward(E),
}

/// A prompt's state, ready for its first decode step.
pub struct Prefilled<S> {
    pub state: S,
    /// Leading tokens whose state came from the cache.
    pub cached_tokens: usize,
    /// Time spent waiting for an identical prompt another caller was
    /// prefilling (its state then came from the cache).
    pub waited: Duration,
}

struct Shared<S> {
    cache: PrefixCache<S>,
    /// Whole prompts being prefilled now, by callers that will store them.
    in_flight: HashSet<Vec<u32>>,
}

/// A [`PrefixCache`] shared by concurrent generations. The lock is held only
/// to look up and store states, never during a forward pass, so different
/// prompts prefill side by side; a prompt identical to one being prefilled
/// (and small enough to be kept) waits for that state instead of computing
/// it again (single flight).
pub struct SharedPrefixCache<S> {
    shared: Mutex<Shared<S>>,
    stored: Condvar,
}

impl<S: Clone> SharedPrefixCache<S> {
    /// See [`PrefixCache::new`].
    pub fn new(max_tokens: usize) -> Self {
        Self {
            shared: Mutex::new(Shared { cache: PrefixCache::new(max_tokens), in_flight: HashSet::new() }),
            stored: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared<S>> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state after `prompt` (not empty). Starts from the longest cached
    /// prefix and calls `extend(state so far, or None at the start, range)`
    /// for each remaining segment: up to each of `message_starts` (offsets
    /// into `prompt` where a message begins) and then to the end, keeping the
    /// state after each. `cancelled` is checked before each segment and while
    /// waiting.
    ///
    /// Errors: [`PrefillError::Cancelled`], or the error `extend` returned.
    pub fn prefill<E>(
        &self,
        prompt: &[u32],
        message_starts: &[usize],
        cancelled: &AtomicBool,
        mut extend: impl FnMut(Option<S>, Range<usize>) -> Result<S, E>,
    ) -> Result<Prefilled<S>, PrefillError<E>> {
        let asked = Instant::now();
        let mut shared = self.lock();
        let single_flight = shared.cache.would_keep(prompt.len());
        while single_flight && shared.in_flight.contains(prompt) {
            if cancelled.load(Ordering::Relaxed) {
                return Err(PrefillError::Cancelled);
            }
            let (guard, _) = self
                .stored
                .wait_timeout(shared, Duration::from_millis(50))
                .unwrap_or_else(PoisonError::into_inner);
            shared = guard;
        }
        let hit = shared.cache.longest_prefix(prompt);
        let waited = asked.elapsed();
        let (mut start, mut state) = match hit {
            Some(hit) if hit.len == prompt.len() => {
                return Ok(Prefilled { state: hit.state, cached_tokens: hit.len, waited });
            }
            Some(hit) => (hit.len, Some(hit.state)),
            None => (0, None),
        };
        let keeping = shared.cache.enabled();
        let _flight = single_flight.then(|| {
            shared.in_flight.insert(prompt.to_vec());
            InFlight { cache: self, prompt }
        });
        drop(shared);
        let cached_tokens = start;
        let ends: Vec<usize> = message_starts
            .iter()
            .copied()
            .filter(|&end| keeping && end > start && end < prompt.len())
            .chain([prompt.len()])
            .collect();
        for end in ends {
            if cancelled.load(Ordering::Relaxed) {
                return Err(PrefillError::Cancelled);
            }
            let next = extend(state.take(), start..end).map_err(PrefillError::Forward)?;
            if keeping {
                self.lock().cache.insert(&prompt[..end], &next);
            }
            state = Some(next);
            start = end;
        }
        // `extend` ran at least once: the prompt is not empty and nothing
        // cached covered all of it.
        let state = state.ok_or(PrefillError::Cancelled)?;
        Ok(Prefilled { state, cached_tokens, waited })
    }

    /// `(hits, misses, tokens held)` so far.
    pub fn counts(&self) -> (u64, u64, usize) {
        let shared = self.lock();
        let (hits, misses) = shared.cache.counts();
        (hits, misses, shared.cache.held_tokens())
    }
}

/// Marks a prompt as being prefilled; dropping it (done, failed, cancelled
/// or unwinding) wakes whoever waits for it.
struct InFlight<'a, S: Clone> {
    cache: &'a SharedPrefixCache<S>,
    prompt: &'a [u32],
}

impl<S: Clone> Drop for InFlight<'_, S> {
    fn drop(&mut self) {
        self.cache.lock().in_flight.remove(self.prompt);
        self.cache.stored.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    use super::{PrefillError, PrefixCache, SharedPrefixCache};

    #[test]
    fn the_longest_cached_prefix_wins_and_the_least_recently_used_goes_first() {
        let mut cache = PrefixCache::new(10);
        cache.insert(&[1, 2], &"a");
        cache.insert(&[1, 2, 3, 4], &"b");
        cache.insert(&[9], &"c");
        assert_eq!(cache.held_tokens(), 7);
        let hit = cache.longest_prefix(&[1, 2, 3, 4, 5]).map(|hit| (hit.len, hit.state));
        assert_eq!(hit, Some((4, "b")));
        assert_eq!(cache.longest_prefix(&[1, 2, 7]).map(|hit| hit.state), Some("a"));
        assert!(cache.longest_prefix(&[2, 1]).is_none(), "a prefix, not any overlap");
        assert!(cache.longest_prefix(&[1]).is_none(), "an entry longer than the prompt is no prefix of it");
        assert_eq!(cache.counts(), (2, 2));

        // Room for 4 more tokens means dropping the least recently used: "c"
        // (inserted before the hits on "a" and "b"), then "b".
        cache.insert(&[5, 6, 7, 8], &"d");
        assert_eq!(cache.held_tokens(), 10);
        assert!(cache.longest_prefix(&[9]).is_none(), "c went first");
        cache.insert(&[4, 4], &"e");
        assert_eq!(cache.held_tokens(), 8, "b went too (4 tokens), not a or d");
        assert_eq!(cache.longest_prefix(&[1, 2, 3, 4]).map(|hit| hit.len), Some(2));

        // Storing a prefix again refreshes it without counting its tokens twice.
        cache.insert(&[1, 2], &"a");
        assert_eq!(cache.held_tokens(), 8);
        // A prefix over the bound is not kept, and evicts nothing.
        cache.insert(&[0; 11], &"big");
        assert_eq!(cache.held_tokens(), 8);
        assert!(cache.longest_prefix(&[0; 11]).is_none());
        // A bound of 0 keeps nothing.
        let mut off = PrefixCache::new(0);
        off.insert(&[1], &"x");
        assert!(!off.enabled() && off.longest_prefix(&[1]).is_none() && off.held_tokens() == 0);
    }

    #[test]
    fn a_prefill_stops_at_message_starts_after_the_cached_part_and_reuses_states() {
        let cache = SharedPrefixCache::new(100);
        let go = AtomicBool::new(false);
        let mut calls = Vec::new();
        let mut extend = |state: Option<Vec<u32>>, range: std::ops::Range<usize>| {
            calls.push(range.clone());
            let mut state = state.unwrap_or_default();
            state.extend(range.map(|at| at as u32));
            Ok::<_, ()>(state)
        };
        let prompt = [7, 1, 2, 7, 3, 7, 4, 5];
        let done = cache.prefill(&prompt, &[0, 3, 5], &go, &mut extend).map_err(|_| "prefill").unwrap();
        assert_eq!((done.state, done.cached_tokens), (vec![0, 1, 2, 3, 4, 5, 6, 7], 0));
        // The same first two messages, another third: only the third runs.
        let other = [7, 1, 2, 7, 3, 7, 9];
        let done = cache.prefill(&other, &[0, 3, 5], &go, &mut extend).map_err(|_| "prefill").unwrap();
        assert_eq!((done.state, done.cached_tokens), (vec![0, 1, 2, 3, 4, 5, 6], 5));
        let again = cache.prefill(&prompt, &[0, 3, 5], &go, &mut extend).map_err(|_| "prefill").unwrap();
        assert_eq!(again.cached_tokens, prompt.len());
        assert_eq!(calls, [0..3, 3..5, 5..8, 5..7], "one pass per uncached segment");
        assert_eq!(cache.counts(), (2, 1, 3 + 5 + 8 + 7));

        let stop = AtomicBool::new(true);
        let cancelled = cache.prefill(&[1, 2, 3], &[], &stop, |_, _| Ok::<Vec<u32>, ()>(vec![]));
        assert!(matches!(cancelled, Err(PrefillError::Cancelled)));
        let failed = cache.prefill(&[1, 2, 3], &[], &go, |_, _| Err::<Vec<u32>, _>("boom"));
        assert!(matches!(failed, Err(PrefillError::Forward("boom"))));
    }

    /// Counts forward passes; each pass waits (up to 10 s) until `together`
    /// passes have started, so passes that cannot run side by side fail.
    struct Rendezvous {
        started: std::sync::Mutex<usize>,
        all_in: std::sync::Condvar,
        together: usize,
    }

    impl Rendezvous {
        fn new(together: usize) -> std::sync::Arc<Self> {
            std::sync::Arc::new(Self { started: Default::default(), all_in: Default::default(), together })
        }

        fn pass(&self, end: usize) -> Result<usize, &'static str> {
            let mut started = self.started.lock().unwrap();
            *started += 1;
            self.all_in.notify_all();
            let (started, wait) = self
                .all_in
                .wait_timeout_while(started, Duration::from_secs(10), |n| *n < self.together)
                .unwrap();
            drop(started);
            if wait.timed_out() { Err("passes did not run side by side") } else { Ok(end) }
        }

        fn passes(&self) -> usize {
            *self.started.lock().unwrap()
        }
    }

    fn prefill_in_thread(
        cache: &std::sync::Arc<SharedPrefixCache<usize>>,
        meet: &std::sync::Arc<Rendezvous>,
        prompt: Vec<u32>,
    ) -> std::thread::JoinHandle<Result<usize, &'static str>> {
        let (cache, meet) = (cache.clone(), meet.clone());
        std::thread::spawn(move || {
            let go = AtomicBool::new(false);
            match cache.prefill(&prompt, &[], &go, |_, range| meet.pass(range.end)) {
                Ok(done) => Ok(done.cached_tokens),
                Err(PrefillError::Forward(err)) => Err(err),
                Err(PrefillError::Cancelled) => Err("cancelled"),
            }
        })
    }

    #[test]
    fn identical_prompts_asked_together_are_prefilled_once_and_others_run_beside_them() {
        let cache = std::sync::Arc::new(SharedPrefixCache::new(100));
        let meet = Rendezvous::new(2);
        let same: Vec<_> = (0..3).map(|_| prefill_in_thread(&cache, &meet, vec![1, 2, 3])).collect();
        let other = prefill_in_thread(&cache, &meet, vec![4, 5]);
        let mut cached: Vec<usize> = same.into_iter().map(|t| t.join().unwrap().unwrap()).collect();
        cached.sort_unstable();
        assert_eq!(cached, [0, 3, 3], "one computed it, two waited for its state");
        assert_eq!(other.join().unwrap(), Ok(0), "another prompt ran beside it");
        assert_eq!(meet.passes(), 2, "one pass per distinct prompt");
    }

    #[test]
    fn a_prompt_too_long_to_keep_is_not_waited_for() {
        let cache = std::sync::Arc::new(SharedPrefixCache::new(2));
        let meet = Rendezvous::new(2);
        let threads: Vec<_> = (0..2).map(|_| prefill_in_thread(&cache, &meet, vec![1, 2, 3])).collect();
        for thread in threads {
            assert_eq!(thread.join().unwrap(), Ok(0), "both computed it, side by side");
        }
    }
}
