//! The state machine each region replica applies committed entries to.

use crate::region::Region;
use bytes::Bytes;

/// A deterministic state machine: the same entries in the same order give the same state and
/// the same results on every replica. It owns no IO and reads no clock.
pub trait StateMachine: Sized {
    /// The state of a brand-new region.
    fn empty(region: &Region) -> Self;
    /// Applies the payload of the committed entry at `index` and returns the result for the
    /// proposer. A payload it cannot decode must be answered with an error result, never a
    /// panic: a replica must not crash on what a client managed to get into the log.
    fn apply(&mut self, index: u64, data: &[u8]) -> Bytes;
    /// Answers a read-only query against the current state (after ReadIndex).
    fn read(&self, query: &[u8]) -> Bytes;
    /// Serializes the whole state (for snapshots).
    fn snapshot(&self) -> Bytes;
    /// Restores from [`StateMachine::snapshot`] output; refuses corrupt input with a reason.
    fn restore(data: &[u8]) -> Result<Self, String>;
}
