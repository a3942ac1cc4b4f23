//! The state machine each region replica applies committed entries to.

use crate::region::Region;

/// A region's size as its state machine counts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApproximateSize {
    pub keys: u64,
    pub bytes: u64,
}
use bytes::Bytes;

/// A deterministic state machine: the same entries in the same order give the same state and
/// the same results on every replica. It owns no IO and reads no clock.
pub trait StateMachine: Sized {
    /// What applying one entry returns to its proposer.
    type Output: Clone + std::fmt::Debug + PartialEq;
    /// A read-only query, served after ReadIndex.
    type Query: std::fmt::Debug;
    /// What a query returns.
    type ReadOutput: Clone + std::fmt::Debug + PartialEq;

    /// The state of a brand-new region.
    fn empty(region: &Region) -> Self;
    /// Applies the payload of the committed entry at `index`. A payload it cannot decode must
    /// be answered with an error result, never a panic: a replica must not crash on what a
    /// client managed to get into the log.
    fn apply(&mut self, index: u64, data: &[u8]) -> Self::Output;
    /// An entry without a payload for the state machine (a leader's empty entry, a
    /// membership change) was committed at `index`.
    fn apply_noop(&mut self, _index: u64) {}
    /// Splits the state at `at_key`, which the caller checked lies strictly inside the
    /// region: `self` keeps the keys below it, the returned state holds the keys from it on as
    /// the first state of the new region `right`, whose log starts after index `applied`
    /// (it must accept entries from `applied + 1`). Deterministic like `apply`: every replica
    /// splits at the same entry and gets the same halves.
    fn split_off(&mut self, at_key: &[u8], right: &Region, applied: u64) -> Self;
    /// Takes in the whole state of `source`, an adjacent region merged into this one (the
    /// caller checked adjacency); `merged` is the region after the merge. Deterministic like
    /// `apply`: every replica absorbs the same source state at the same entry.
    fn absorb(&mut self, source: Self, merged: &Region);
    /// Answers a read-only query against the current state, judged at `now_ms` (the serving
    /// replica's wall clock when the read arrived, ms since the Unix epoch): a state machine
    /// whose data can expire (Redis TTLs) treats what is due by then as gone, and never judges
    /// earlier than the time of the last entry it applied. No default: a wrapper must forward
    /// the time (a forgotten forward would serve expired keys).
    fn read(&self, query: &Self::Query, now_ms: u64) -> Self::ReadOutput;
    /// A command the region's leader should propose to keep the state tidy at `now_ms` (the
    /// KV state machine: delete keys whose deadline passed, so their memory comes back), as an
    /// entry payload for [`StateMachine::apply`], or None when there is nothing to do. Asked
    /// on the leader every few ticks (`StoreConfig::housekeeping_every_ticks`); the payload
    /// must be harmless if applied twice or after a newer one. No default, as for `read`.
    fn housekeeping(&self, now_ms: u64) -> Option<Bytes>;
    /// Why [`StateMachine::restore`] refused its input (a store reports it, with the region,
    /// as a storage failure).
    type RestoreError: std::fmt::Display;
    /// A point-in-time copy of the whole state that another thread serializes while this one
    /// goes on applying (see the store's `snapshot_job`).
    type View: Send + 'static;

    /// Takes the view. Called on the store thread, so it must be cheap whatever the size of
    /// the state: O(1) for a persistent structure (the store's stall per snapshot is this
    /// plus publishing the file).
    fn view(&self) -> Self::View;
    /// Serializes a view; equal to [`StateMachine::snapshot`] of the state it was taken from.
    fn serialize(view: &Self::View) -> Bytes;
    /// Serializes the whole state now, on this thread.
    fn snapshot(&self) -> Bytes {
        Self::serialize(&self.view())
    }
    /// The number of keys and their bytes (keys plus values), cheaply (it is asked for on
    /// every status request): what `raftkv status` reports as the region's approximate size.
    fn approximate_size(&self) -> ApproximateSize;
    /// Where to split the region by size: a key that leaves about half of the state's bytes
    /// on each side, passed through [`crate::split_boundary`] (no split inside a hash tag),
    /// and strictly inside the region with keys on both sides of it; None when there is no
    /// such key (no state, or every key in one hash tag). Asked for on the leader by the
    /// store when placement wants a large region split.
    ///
    /// To ensure correctness and keep the store responsive, an implementation must:
    /// 1. read the state in place (walk it, never copy it): it runs on the store thread;
    /// 2. return a key `k` with `start < k` and `k < end` of its region, or None.
    ///
    /// No default: a wrapper that forgot to forward it would never be split (the server's
    /// `placement::Hosted` did, once). A state machine that cannot tell returns None.
    fn size_split_key(&self) -> Option<Vec<u8>>;
    /// Restores from [`StateMachine::snapshot`] output; refuses corrupt input with a reason.
    fn restore(data: &[u8]) -> Result<Self, Self::RestoreError>;

    /// The keys a proposed payload (what [`StateMachine::apply`] will be given) is for, in
    /// order, each passed to `key` until it returns false: what the leader's load sampler
    /// samples, so a batch (a pipeline, a multi-key get, put or delete) counts each of its
    /// keys, and a hot range read or written in batches splits by load instead of looking
    /// like one hot key. Called on the leader's store thread for every proposal: it must not
    /// copy more than the keys. `routing_key` is the key the request was routed by.
    ///
    /// Default: `routing_key` alone (a state machine whose payloads name one key each). A
    /// wrapper must forward it, or its batches are sampled by their routing key only.
    fn payload_keys(data: &[u8], routing_key: &[u8], key: &mut dyn FnMut(&[u8]) -> bool) {
        let _ = data;
        key(routing_key);
    }

    /// The keys a read query is for, like [`StateMachine::payload_keys`]. Default:
    /// `routing_key` alone.
    fn query_keys(query: &Self::Query, routing_key: &[u8], key: &mut dyn FnMut(&[u8]) -> bool) {
        let _ = query;
        key(routing_key);
    }
}
