//! `KvStateMachine` as a store region's state machine (`types::StateMachine`): the one
//! adapter used by the server and the whole-cluster simulator.

use crate::{ApplyOutcome, Command, CommandError, KvStateMachine, RegionRange, Response};
use bytes::Bytes;
use types::{Region, StateMachine};

impl StateMachine for KvStateMachine {
    type Output = ApplyOutcome;
    type Query = Command;
    type ReadOutput = Result<Response, CommandError>;

    fn empty(region: &Region) -> Self {
        KvStateMachine::with_region(RegionRange {
            start: Bytes::from(region.start_key.clone()),
            end: region.end_key.clone().map(Bytes::from),
        })
    }

    fn apply(&mut self, index: u64, data: &[u8]) -> ApplyOutcome {
        KvStateMachine::apply(self, index, data)
    }

    fn apply_noop(&mut self, index: u64) {
        KvStateMachine::apply_noop(self, index)
    }

    fn split_off(&mut self, at_key: &[u8], right: &Region, applied: u64) -> Self {
        let mut r = KvStateMachine::split_off(self, Bytes::copy_from_slice(at_key))
            .unwrap_or_else(|e| panic!("split of a region the store checked: {e}"));
        debug_assert_eq!(r.region().end.as_deref(), right.end_key.as_deref());
        r.applied_index = applied;
        r
    }

    fn absorb(&mut self, source: Self, merged: &Region) {
        KvStateMachine::absorb(self, source)
            .unwrap_or_else(|e| panic!("merge of regions the store checked: {e}"));
        debug_assert_eq!(self.region().start.as_ref(), merged.start_key.as_slice());
    }

    fn read(&self, query: &Command) -> Result<Response, CommandError> {
        KvStateMachine::read(self, query)
    }

    fn approximate_size(&self) -> types::ApproximateSize {
        types::ApproximateSize {
            keys: self.len() as u64,
            bytes: self.data_bytes(),
        }
    }

    /// A clone: O(1), the table and the sessions are persistent maps.
    type View = KvStateMachine;

    fn view(&self) -> KvStateMachine {
        self.clone()
    }

    fn serialize(view: &KvStateMachine) -> Bytes {
        view.snapshot()
    }

    type RestoreError = crate::SnapshotError;

    fn restore(data: &[u8]) -> Result<Self, crate::SnapshotError> {
        KvStateMachine::restore(data)
    }
}
