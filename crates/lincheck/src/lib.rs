//! `lincheck`: RaftKV's linearizability checker.
//!
//! Given a history of client operations (call time, input, output, return
//! time; or an unknown outcome), decide whether some total order of them
//! respects real time and a sequential [`Model`]. The search is Wing & Gong's
//! with Lowe's just-in-time linearization and memoization, the algorithm of
//! Porcupine, run separately on each partition (for a KV store: each key).
//!
//! Map of the crate:
//! - [`model`]: the [`Model`] trait (sequential specification and
//!   partitioning) and the [`Operation`] record.
//! - [`checker`]: [`check`], [`CheckOptions`] (state and time budget),
//!   [`CheckResult`] and the [`IllegalReport`] explaining a violation.
//! - [`history`]: [`History`], a thread-safe recorder for concurrent test
//!   clients, with a logical clock.
//! - [`kv`]: [`kv::KvModel`] for Get/Put/Delete/Append/Cas, partitioned by key.
//! - [`register`]: [`register::RegisterModel`], a `u64` read/write register.
//! - [`testing`]: generator of linearizable-by-construction KV histories for
//!   tests and benchmarks.
//!
//! ```
//! use lincheck::kv::{KvInput, KvModel, KvOutput};
//! use lincheck::{check, CheckOptions, History};
//!
//! let history = History::new();
//! let put = history.invoke(1, KvInput::Put { key: b"k".to_vec(), value: b"v".to_vec() });
//! history.complete(put, KvOutput::Put);
//! let get = history.invoke(2, KvInput::Get { key: b"k".to_vec() });
//! history.complete(get, KvOutput::Get(None)); // stale: the put had completed
//! let result = check(&KvModel, &history.into_operations(), &CheckOptions::default()).unwrap();
//! assert!(result.is_illegal(), "{result}");
//! ```

pub mod checker;
pub mod history;
pub mod kv;
pub mod model;
pub mod register;
pub mod testing;

pub use checker::{check, CheckOptions, CheckResult, HistoryError, IllegalReport};
pub use history::{History, OpId};
pub use model::{Model, Operation, Partition};
