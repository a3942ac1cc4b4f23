//! # api — RaftKV's gRPC API
//!
//! Generated from `proto/raftkv.proto` (protoc is vendored; cargo alone builds it):
//! - [`pb::kv_server`] / [`pb::kv_client`]: the client-facing `Kv` service (`Execute` runs
//!   one command; `Status` describes a store).
//! - [`etcdpb::kv_client`]: a client for etcd v3's `KV.Range`/`KV.Put` (the subset in
//!   `proto/etcd_kv.proto`), used by `raftkv bench` to load etcd the same way as RaftKV.

#[allow(clippy::all, missing_docs)]
pub mod etcdpb {
    tonic::include_proto!("etcdserverpb");
}

#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("raftkv");
}
