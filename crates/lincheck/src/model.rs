//! The sequential specification a history is checked against, and the
//! operation record the checker consumes.

use std::fmt::Debug;
use std::hash::Hash;

/// One client operation as observed from outside the system.
///
/// Times are any monotonic clock shared by all clients (the [`crate::History`]
/// recorder uses a logical counter). Operation `a` precedes `b` in real time
/// only if `a.return_time < b.call`; equal times count as concurrent, so a
/// coarse clock can make the checker more lenient but never produces a false
/// alarm.
///
/// An operation whose outcome is unknown (the client timed out, the
/// connection broke) has `output: None` and `return_time: None`: it may have
/// taken effect at any moment after `call`, or never.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// Which client issued the operation; only used in reports.
    pub client_id: u64,
    /// What the client asked for.
    pub input: I,
    /// When the client sent the request.
    pub call: u64,
    /// What the client got back; `None` if it never learned the outcome.
    pub output: Option<O>,
    /// When the client got the reply; `None` exactly when `output` is `None`.
    pub return_time: Option<u64>,
}

impl<I, O> Operation<I, O> {
    /// An operation that completed with `output` at `return_time`.
    pub fn completed(client_id: u64, input: I, call: u64, output: O, return_time: u64) -> Self {
        Operation {
            client_id,
            input,
            call,
            output: Some(output),
            return_time: Some(return_time),
        }
    }

    /// An operation whose outcome the client never learned.
    pub fn unknown(client_id: u64, input: I, call: u64) -> Self {
        Operation {
            client_id,
            input,
            call,
            output: None,
            return_time: None,
        }
    }

    /// True if the client never learned whether the operation took effect.
    pub fn is_unknown(&self) -> bool {
        self.output.is_none()
    }
}

/// A subset of a history that can be checked on its own, such as all the
/// operations on one key. Linearizability is compositional (Herlihy & Wing,
/// "locality"), so a history is linearizable iff every partition is, and the
/// search is exponential only in each partition's concurrency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Names the partition in reports, e.g. `key "user/7"`.
    pub label: String,
    /// Indices into the history passed to [`crate::check`].
    pub op_indices: Vec<usize>,
}

/// A sequential specification: the object every concurrent history must be
/// equivalent to.
///
/// # To ensure correctness
/// - `step` must be a pure function of its arguments: the search calls it
///   many times, in any order, and caches states.
/// - `State` equality must mean "no future operation can tell the two states
///   apart"; the memo cache prunes on it, so an equality that is too coarse
///   hides violations and one that is too fine only costs time.
/// - `partition` must put operations that can observe each other in the same
///   partition (for a key-value store: one partition per key, and multi-key
///   operations would need a single partition).
pub trait Model {
    /// The state of the object between operations.
    type State: Clone + Eq + Hash + Debug;
    /// A request.
    type Input: Debug;
    /// A reply.
    type Output: Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// The state after `input` is applied to `state` and answered with
    /// `output`, or `None` if the object could not have answered that.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: &Self::Output,
    ) -> Option<Self::State>;

    /// The state after `input` takes effect on `state` when the reply was
    /// never seen, or `None` if it cannot take effect in `state`. The checker
    /// separately considers the case where the operation never took effect,
    /// so this only describes the "it happened" branch. A model whose
    /// operations are nondeterministic should use a set of states as its
    /// `State` (the power-set construction Porcupine uses).
    fn step_unknown(&self, state: &Self::State, input: &Self::Input) -> Option<Self::State>;

    /// True if `input` never changes the state. Operations that are read-only
    /// and whose outcome is unknown constrain nothing, so the checker drops
    /// them instead of searching over where they go. The default is
    /// conservative.
    fn is_read_only(&self, input: &Self::Input) -> bool {
        let _ = input;
        false
    }

    /// Splits a history into independently checkable partitions. The default
    /// keeps the whole history together.
    fn partition(&self, history: &[Operation<Self::Input, Self::Output>]) -> Vec<Partition> {
        vec![Partition {
            label: "whole history".to_string(),
            op_indices: (0..history.len()).collect(),
        }]
    }

    /// Renders a state for failure reports.
    fn describe_state(&self, state: &Self::State) -> String {
        format!("{state:?}")
    }
}
