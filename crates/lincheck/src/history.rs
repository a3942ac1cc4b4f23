//! A thread-safe recorder that concurrent test clients share (via `Arc`) to
//! build the history [`crate::check`] consumes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::model::Operation;

/// Identifies an invoked operation in a [`History`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpId(usize);

#[derive(Debug)]
enum Outcome<O> {
    Pending,
    Completed {
        output: O,
        return_time: u64,
    },
    Unknown,
    /// Surely never took effect: left out of the history.
    Dropped,
}

#[derive(Debug)]
struct Entry<I, O> {
    client_id: u64,
    input: I,
    call: u64,
    outcome: Outcome<O>,
}

/// Records calls and returns with a logical clock.
///
/// Every `invoke` and `complete` takes a fresh tick from one atomic counter,
/// so if a client sees a reply (and calls `complete`) before another client
/// calls `invoke`, the first operation's return time is smaller than the
/// second's call time: real-time order is preserved without trusting wall
/// clocks. Call `invoke` just before sending the request and `complete` just
/// after receiving the reply, so the recorded interval contains the real one.
#[derive(Debug)]
pub struct History<I, O> {
    clock: AtomicU64,
    entries: Mutex<Vec<Entry<I, O>>>,
}

impl<I, O> Default for History<I, O> {
    fn default() -> Self {
        Self::new()
    }
}

impl<I, O> History<I, O> {
    /// An empty history.
    pub fn new() -> Self {
        History {
            clock: AtomicU64::new(0),
            entries: Mutex::new(Vec::new()),
        }
    }

    fn tick(&self) -> u64 {
        // SeqCst: ticks must follow the real-time order of the calls across
        // threads, which is exactly the total order SeqCst guarantees.
        self.clock.fetch_add(1, Ordering::SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Entry<I, O>>> {
        // A client that panicked mid-test leaves the entries consistent (each
        // update is a single assignment), so a poisoned lock is still usable.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that `client_id` is about to send `input`.
    pub fn invoke(&self, client_id: u64, input: I) -> OpId {
        let call = self.tick();
        let mut entries = self.lock();
        entries.push(Entry {
            client_id,
            input,
            call,
            outcome: Outcome::Pending,
        });
        OpId(entries.len() - 1)
    }

    /// Records the reply to `id`.
    ///
    /// # Panics
    /// If `id` was already resolved: that is a bug in the test client.
    pub fn complete(&self, id: OpId, output: O) {
        let return_time = self.tick();
        self.resolve(
            id,
            Outcome::Completed {
                output,
                return_time,
            },
        );
    }

    /// Records that the client will never learn whether `id` took effect
    /// (timeout, broken connection). It may take effect at any later time.
    ///
    /// # Panics
    /// If `id` was already resolved.
    pub fn fail_unknown(&self, id: OpId) {
        self.resolve(id, Outcome::Unknown);
    }

    /// Records that `id` surely did not take effect (e.g. rejected before
    /// being proposed); it is left out of the history.
    ///
    /// # Panics
    /// If `id` was already resolved.
    pub fn fail_definite(&self, id: OpId) {
        self.resolve(id, Outcome::Dropped);
    }

    fn resolve(&self, id: OpId, outcome: Outcome<O>) {
        let mut entries = self.lock();
        let entry = entries
            .get_mut(id.0)
            .unwrap_or_else(|| panic!("{id:?} was not returned by this History's invoke"));
        assert!(
            matches!(entry.outcome, Outcome::Pending),
            "{id:?} resolved twice; each invoke needs exactly one complete/fail_unknown/fail_definite"
        );
        entry.outcome = outcome;
    }

    /// Number of operations invoked so far (including dropped ones).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True if nothing was invoked yet.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The history so far. Operations still pending count as unknown: a
    /// check run while clients are stuck must not assume they failed.
    pub fn operations(&self) -> Vec<Operation<I, O>>
    where
        I: Clone,
        O: Clone,
    {
        self.lock()
            .iter()
            .filter_map(|entry| {
                let outcome = match &entry.outcome {
                    Outcome::Pending => Outcome::Unknown,
                    Outcome::Completed {
                        output,
                        return_time,
                    } => Outcome::Completed {
                        output: output.clone(),
                        return_time: *return_time,
                    },
                    Outcome::Unknown => Outcome::Unknown,
                    Outcome::Dropped => Outcome::Dropped,
                };
                to_operation(entry.client_id, entry.input.clone(), entry.call, outcome)
            })
            .collect()
    }

    /// Consumes the recorder and returns the history, as [`Self::operations`].
    pub fn into_operations(self) -> Vec<Operation<I, O>> {
        self.entries
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .into_iter()
            .filter_map(|entry| {
                to_operation(entry.client_id, entry.input, entry.call, entry.outcome)
            })
            .collect()
    }
}

fn to_operation<I, O>(
    client_id: u64,
    input: I,
    call: u64,
    outcome: Outcome<O>,
) -> Option<Operation<I, O>> {
    match outcome {
        Outcome::Completed {
            output,
            return_time,
        } => Some(Operation::completed(
            client_id,
            input,
            call,
            output,
            return_time,
        )),
        Outcome::Pending | Outcome::Unknown => Some(Operation::unknown(client_id, input, call)),
        Outcome::Dropped => None,
    }
}
