//! `LogBatch`: the unit of atomic writing, and its on-disk encoding (one record per batch).

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::format::{self, ItemType};
use crate::{GroupId, LogEntry};

/// One operation of a batch. Public to the crate only; callers use the `LogBatch` builders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Entries with contiguous indexes; replaces the group's entries at and after the first.
    Append {
        group: GroupId,
        entries: Vec<LogEntry>,
    },
    PutState {
        group: GroupId,
        key: Bytes,
        value: Bytes,
    },
    DeleteState {
        group: GroupId,
        key: Bytes,
    },
    /// Entries with index < `index` are no longer needed.
    CompactTo {
        group: GroupId,
        index: u64,
    },
    /// Forget the group entirely (entries and states).
    CleanGroup {
        group: GroupId,
    },
    /// Written only by `purge`: the same entries as already live, copied forward. Unlike
    /// `Append` it never truncates later entries, so a purge that crashes after writing only
    /// some of its chunks cannot lose the entries of the chunks that did not make it.
    Rewrite {
        group: GroupId,
        entries: Vec<LogEntry>,
    },
}

impl Op {
    pub(crate) fn group(&self) -> GroupId {
        match self {
            Op::Append { group, .. }
            | Op::PutState { group, .. }
            | Op::DeleteState { group, .. }
            | Op::CompactTo { group, .. }
            | Op::CleanGroup { group }
            | Op::Rewrite { group, .. } => *group,
        }
    }

    /// Bytes this op takes in a record payload.
    fn encoded_len(&self) -> usize {
        format::ITEM_HEADER_BYTES
            + match self {
                Op::Append { entries, .. } | Op::Rewrite { entries, .. } => {
                    format::ENTRIES_HEADER_BYTES
                        + entries
                            .iter()
                            .map(|entry| format::ENTRY_HEADER_BYTES + entry.data.len())
                            .sum::<usize>()
                }
                Op::PutState { key, value, .. } => 8 + key.len() + value.len(),
                Op::DeleteState { key, .. } => 4 + key.len(),
                Op::CompactTo { .. } => 8,
                Op::CleanGroup { .. } => 0,
            }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let (item_type, group) = match self {
            Op::Append { group, .. } => (ItemType::Append, group),
            Op::PutState { group, .. } => (ItemType::PutState, group),
            Op::DeleteState { group, .. } => (ItemType::DeleteState, group),
            Op::CompactTo { group, .. } => (ItemType::CompactTo, group),
            Op::CleanGroup { group } => (ItemType::CleanGroup, group),
            Op::Rewrite { group, .. } => (ItemType::Rewrite, group),
        };
        let body_len = self.encoded_len() - format::ITEM_HEADER_BYTES;
        out.push(item_type as u8);
        out.extend_from_slice(&group.0.to_le_bytes());
        out.extend_from_slice(&(body_len as u32).to_le_bytes());
        let body_start = out.len();
        match self {
            Op::Append { entries, .. } | Op::Rewrite { entries, .. } => {
                let first_index = entries.first().map_or(0, |entry| entry.index);
                out.extend_from_slice(&first_index.to_le_bytes());
                out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
                for entry in entries {
                    out.extend_from_slice(&entry.term.to_le_bytes());
                    out.extend_from_slice(&(entry.data.len() as u32).to_le_bytes());
                    out.extend_from_slice(&entry.data);
                }
            }
            Op::PutState { key, value, .. } => {
                out.extend_from_slice(&(key.len() as u32).to_le_bytes());
                out.extend_from_slice(key);
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(value);
            }
            Op::DeleteState { key, .. } => {
                out.extend_from_slice(&(key.len() as u32).to_le_bytes());
                out.extend_from_slice(key);
            }
            Op::CompactTo { index, .. } => out.extend_from_slice(&index.to_le_bytes()),
            Op::CleanGroup { .. } => {}
        }
        assert_eq!(
            out.len() - body_start,
            body_len,
            "encoded body length differs from the computed one"
        );
    }
}

/// A set of operations written atomically: after a crash either all of a batch is in the log
/// or none of it (it is one checksummed record).
#[derive(Debug, Default, Clone)]
pub struct LogBatch {
    pub(crate) ops: Vec<Op>,
    payload_len: usize,
}

impl LogBatch {
    /// An empty batch.
    pub fn new() -> LogBatch {
        LogBatch::default()
    }

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Size of the batch's record on disk, in bytes.
    pub fn encoded_len(&self) -> usize {
        format::RECORD_HEADER_BYTES + self.payload_len
    }

    fn push(&mut self, op: Op) {
        self.payload_len += op.encoded_len();
        self.ops.push(op);
    }

    /// Appends `entries` (indexes must be contiguous) to `group`. Appending at index `i`
    /// deletes the group's existing entries `>= i` (a Raft log conflict). An empty vector is
    /// a no-op. Whether `i` fits the group's log (no gap, not below its compaction point) is
    /// checked by `LogEngine::write`.
    pub fn append(&mut self, group: GroupId, entries: Vec<LogEntry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        for pair in entries.windows(2) {
            if pair[0].index.checked_add(1) != Some(pair[1].index) {
                return Err(Error::InvalidArgument(format!(
                    "entries appended to group {group} must have contiguous indexes, got {} then {}",
                    pair[0].index, pair[1].index
                )));
            }
        }
        for entry in &entries {
            if entry.data.len() > format::MAX_RECORD_PAYLOAD_BYTES as usize {
                return Err(Error::BatchTooLarge {
                    size_bytes: entry.data.len() as u64,
                    limit_bytes: u64::from(format::MAX_RECORD_PAYLOAD_BYTES),
                });
            }
        }
        self.push(Op::Append { group, entries });
        Ok(())
    }

    /// Sets a per-group state value (hard state, metadata); the latest write wins.
    pub fn put_state(&mut self, group: GroupId, key: &[u8], value: &[u8]) {
        self.push(Op::PutState {
            group,
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
        });
    }

    /// Deletes a per-group state value.
    pub fn delete_state(&mut self, group: GroupId, key: &[u8]) {
        self.push(Op::DeleteState {
            group,
            key: Bytes::copy_from_slice(key),
        });
    }

    /// Declares that `group`'s entries with index `< index` are no longer needed (they are in
    /// a snapshot). They are dropped from memory at once and from disk by `purge`.
    pub fn compact_to(&mut self, group: GroupId, index: u64) {
        self.push(Op::CompactTo { group, index });
    }

    /// Removes everything of `group` (the region was removed from this store).
    pub fn clean_group(&mut self, group: GroupId) {
        self.push(Op::CleanGroup { group });
    }

    pub(crate) fn push_rewrite(&mut self, group: GroupId, entries: Vec<LogEntry>) {
        self.push(Op::Rewrite { group, entries });
    }

    pub(crate) fn push_state_bytes(&mut self, group: GroupId, key: Bytes, value: Bytes) {
        self.push(Op::PutState { group, key, value });
    }

    /// Appends the batch's framed record (header and payload) to `out`.
    pub(crate) fn encode_record(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.reserve(self.encoded_len());
        out.extend_from_slice(&[0; format::RECORD_HEADER_BYTES]);
        for op in &self.ops {
            op.encode(out);
        }
        let payload_len = out.len() - start - format::RECORD_HEADER_BYTES;
        assert_eq!(
            payload_len, self.payload_len,
            "batch payload length differs from the computed one"
        );
        format::write_record_header(&mut out[start..], payload_len as u32);
    }
}
