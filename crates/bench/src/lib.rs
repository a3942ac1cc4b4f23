//! # bench — the load generator behind `raftkv bench`
//!
//! Runs one workload against one system and reports throughput and latency percentiles from
//! an HDR histogram, as a table row and as JSON. The same code drives RaftKV, redis-server and
//! etcd, so their numbers are comparable (`bench/compare` runs them side by side).
//!
//! ## Module map
//! - [`keys`]: key choice (uniform, YCSB scrambled zipfian), key bytes, a seedable RNG.
//! - [`target`]: [`target::TargetKind`] (RaftKV gRPC, any RESP server, etcd v3) and
//!   [`target::Connection`], one per logical client over shared TCP connections.
//! - [`run`]: [`run::BenchConfig`], [`run::Workload`] (write, read, YCSB-A, YCSB-B, load),
//!   [`run::run`]: preload, closed-loop or rate-limited (open-loop, no coordinated omission)
//!   clients, progress bar, merged histogram.
//! - [`report`]: [`report::Report`] (table row, JSON).
//! - [`disk`]: the disk's raw append + fdatasync latency, the floor under any durable write.

pub mod disk;
pub mod keys;
pub mod report;
pub mod run;
pub mod target;

pub use keys::Distribution;
pub use report::Report;
pub use run::{run, BenchConfig, Workload};
pub use target::TargetKind;
