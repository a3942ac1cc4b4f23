//! `KvSm`: the KV state machine as a store region's state machine.

use bytes::Bytes;
use kv::{ApplyOutcome, Command, CommandError, KvStateMachine, RegionRange, Response};
use store::{Region, StateMachine};

pub struct KvSm(pub KvStateMachine);

impl StateMachine for KvSm {
    type Output = ApplyOutcome;
    type Query = Command;
    type ReadOutput = Result<Response, CommandError>;

    fn empty(region: &Region) -> Self {
        KvSm(KvStateMachine::with_region(RegionRange {
            start: Bytes::from(region.start_key.clone()),
            end: region.end_key.clone().map(Bytes::from),
        }))
    }

    fn apply(&mut self, index: u64, data: &[u8]) -> ApplyOutcome {
        self.0.apply(index, data)
    }

    fn apply_noop(&mut self, index: u64) {
        self.0.apply_noop(index)
    }

    fn read(&self, query: &Command) -> Result<Response, CommandError> {
        self.0.read(query)
    }

    fn snapshot(&self) -> Bytes {
        self.0.snapshot()
    }

    fn restore(data: &[u8]) -> Result<Self, String> {
        KvStateMachine::restore(data)
            .map(KvSm)
            .map_err(|e| e.to_string())
    }
}
