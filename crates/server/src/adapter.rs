//! The state machine of the server's regions: `kv::KvStateMachine`, which implements
//! `store::StateMachine` in the `kv` crate.

pub type KvSm = kv::KvStateMachine;
