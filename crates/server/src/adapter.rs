//! The state machine of the groups a server hosts: `placement::Hosted` (a data region's
//! `kv::KvStateMachine`, or the placement group's state), which implements
//! `store::StateMachine`.

pub type HostedSm = placement::Hosted;
