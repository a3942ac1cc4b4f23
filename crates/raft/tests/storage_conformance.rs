//! The `Storage` conformance suite against the in-memory `MemStorage`.

use raft::storage_suite::run_all;
use raft::MemStorage;

#[test]
fn mem_storage_passes_the_storage_conformance_suite() {
    run_all(MemStorage::new);
}
