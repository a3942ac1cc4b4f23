//! # types — the vocabulary every RaftKV crate speaks
//!
//! Ids, region descriptors and the state-machine trait, under everything else: the store
//! hosts regions, `kv` is a region's state machine, the transport, the client and (next) the
//! placement service name stores and regions, and none of them needs another's code to say
//! so.
//!
//! ## Module map
//! - [`keys`]: `split_boundary`, which moves a split key so that a region boundary never
//!   falls inside a Redis `{hash tag}` (and, once hashes exist, inside one hash's fields).
//! - [`region`]: `StoreId`, `RegionId`, `RegionEpoch`, `PeerMeta`, `Region` (key range,
//!   epoch, peers) and its persistent encoding (`DecodeError` when stored bytes are bad).
//! - [`region_map`]: `RegionMap` (regions by start key and by id) and `LiveRegions`, the one
//!   live map the store thread publishes and every router reads.
//! - [`state_machine`]: the `StateMachine` trait a region applies committed entries to
//!   (and where it would split by size, `StateMachine::size_split_key`).

pub mod keys;
pub mod region;
pub mod region_map;
pub mod state_machine;

pub use keys::split_boundary;
pub use region::{
    peer_id, peer_on_store, DecodeError, PeerMeta, Region, RegionEpoch, RegionId, StoreId,
    MAX_PEERS, PLACEMENT_REGION,
};
pub use region_map::{LiveRegions, RegionMap};
pub use state_machine::{ApproximateSize, StateMachine};
