//! The in-memory index (and cache) of every group's live entries and states.
//!
//! Entry payloads are kept in memory (`Bytes`): reads never touch the disk. Memory is bounded
//! by what is live: compaction and `clean_group` drop entries at once. Each item remembers
//! the segment (`seq`) holding its newest copy, which is what decides when a segment can be
//! deleted.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;

use crate::batch::Op;
use crate::{GroupId, LogEntry};

#[derive(Debug, Clone)]
pub(crate) struct StoredEntry {
    pub(crate) term: u64,
    pub(crate) data: Bytes,
    pub(crate) seq: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct StoredState {
    pub(crate) value: Bytes,
    pub(crate) seq: u64,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct GroupState {
    /// Index of `entries[0]`; meaningless when `entries` is empty.
    pub(crate) first_index: u64,
    pub(crate) entries: VecDeque<StoredEntry>,
    /// Entries below this index were compacted (0: never).
    pub(crate) compacted_to: u64,
    pub(crate) states: BTreeMap<Bytes, StoredState>,
    pub(crate) entry_bytes: usize,
}

impl GroupState {
    pub(crate) fn first(&self) -> Option<u64> {
        (!self.entries.is_empty()).then_some(self.first_index)
    }

    pub(crate) fn last(&self) -> Option<u64> {
        (!self.entries.is_empty()).then(|| self.first_index + self.entries.len() as u64 - 1)
    }

    pub(crate) fn entry(&self, index: u64) -> Option<&StoredEntry> {
        let offset = index.checked_sub(self.first_index)?;
        self.entries.get(usize::try_from(offset).ok()?)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.states.is_empty()
    }

    /// Bytes `purge` would copy to move this group forward: entry payloads with their
    /// headers, and states.
    pub(crate) fn live_bytes(&self) -> u64 {
        let entries = self.entry_bytes as u64
            + (self.entries.len() * crate::format::ENTRY_HEADER_BYTES) as u64;
        let states: u64 = self
            .states
            .iter()
            .map(|(key, state)| (key.len() + state.value.len()) as u64)
            .sum();
        entries + states
    }

    /// The oldest segment holding something live of this group.
    pub(crate) fn min_seq(&self) -> Option<u64> {
        // Not just the first entry: a partly replayed purge can leave newer copies of the
        // first entries and older copies of later ones.
        let entries = self.entries.iter().map(|entry| entry.seq);
        let states = self.states.values().map(|state| state.seq);
        entries.chain(states).min()
    }

    fn truncate_from(&mut self, index: u64) {
        let keep = index.saturating_sub(self.first_index);
        let keep = usize::try_from(keep)
            .unwrap_or(usize::MAX)
            .min(self.entries.len());
        for entry in self.entries.drain(keep..) {
            self.entry_bytes -= entry.data.len();
        }
    }

    fn push(&mut self, entry: LogEntry, seq: u64) {
        if self.entries.is_empty() {
            self.first_index = entry.index;
        }
        assert_eq!(
            entry.index,
            self.first_index + self.entries.len() as u64,
            "pushed entry index must follow the last one (first {}, len {})",
            self.first_index,
            self.entries.len()
        );
        self.entry_bytes += entry.data.len();
        self.entries.push_back(StoredEntry {
            term: entry.term,
            data: entry.data,
            seq,
        });
    }

    fn compact_to(&mut self, index: u64) {
        if index <= self.compacted_to {
            return;
        }
        self.compacted_to = index;
        let n = usize::try_from(index.saturating_sub(self.first_index))
            .unwrap_or(usize::MAX)
            .min(self.entries.len());
        if n >= DROP_ELSEWHERE_ENTRIES {
            // Many entries, each its own allocation: keep the (short) rest and free the
            // prefix on the reclaim thread (see `crate::reclaim`).
            let kept = self.entries.split_off(n);
            let dropped = std::mem::replace(&mut self.entries, kept);
            self.entry_bytes -= dropped.iter().map(|e| e.data.len()).sum::<usize>();
            self.first_index += n as u64;
            crate::reclaim::drop_elsewhere(dropped);
        }
        while !self.entries.is_empty() && self.first_index < index {
            if let Some(entry) = self.entries.pop_front() {
                self.entry_bytes -= entry.data.len();
            }
            self.first_index += 1;
        }
        // VecDeque never shrinks by itself; give memory back once mostly empty.
        if self.entries.capacity() > 64 && self.entries.len() < self.entries.capacity() / 4 {
            self.entries.shrink_to_fit();
        }
    }
}

/// Compactions dropping at least this many entries free them on the reclaim thread.
const DROP_ELSEWHERE_ENTRIES: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct MemTable {
    pub(crate) groups: HashMap<GroupId, GroupState>,
}

impl MemTable {
    pub(crate) fn group(&self, group: GroupId) -> Option<&GroupState> {
        self.groups.get(&group)
    }

    /// Applies one operation written to segment `seq`. Fails (changing nothing) if it would
    /// leave a gap in the group's entries.
    pub(crate) fn apply(&mut self, op: Op, seq: u64) -> Result<(), String> {
        match op {
            Op::Append { group, entries } => {
                let Some(first) = entries.first().map(|entry| entry.index) else {
                    return Ok(());
                };
                let state = self.groups.entry(group).or_default();
                if let Some(last) = state.last() {
                    if first > last + 1 {
                        return Err(format!(
                            "append at index {first} to group {group} leaves a gap after its last index {last}"
                        ));
                    }
                    if first <= state.first_index {
                        state.truncate_from(state.first_index);
                    } else {
                        state.truncate_from(first);
                    }
                }
                for entry in entries {
                    state.push(entry, seq);
                }
            }
            Op::Rewrite { group, entries } => {
                let Some(first) = entries.first().map(|entry| entry.index) else {
                    return Ok(());
                };
                let state = self.groups.entry(group).or_default();
                match state.last() {
                    Some(last) if first > last + 1 => {
                        return Err(format!(
                            "rewrite at index {first} of group {group} leaves a gap after its last index {last}"
                        ));
                    }
                    Some(_) if first >= state.first_index => {
                        // Overwrite in place, extend past the end; never truncate.
                        for entry in entries {
                            match state.entry(entry.index) {
                                Some(_) => {
                                    let offset = (entry.index - state.first_index) as usize;
                                    let slot = &mut state.entries[offset];
                                    state.entry_bytes =
                                        state.entry_bytes - slot.data.len() + entry.data.len();
                                    *slot = StoredEntry {
                                        term: entry.term,
                                        data: entry.data,
                                        seq,
                                    };
                                }
                                None => state.push(entry, seq),
                            }
                        }
                    }
                    _ => {
                        // Empty group, or the rewrite starts below what we hold: it is the
                        // whole live log, take it.
                        state.truncate_from(state.first_index);
                        for entry in entries {
                            state.push(entry, seq);
                        }
                    }
                }
            }
            Op::PutState { group, key, value } => {
                let state = self.groups.entry(group).or_default();
                state.states.insert(key, StoredState { value, seq });
            }
            Op::DeleteState { group, key } => {
                if let Some(state) = self.groups.get_mut(&group) {
                    state.states.remove(&key);
                }
            }
            Op::CompactTo { group, index } => {
                self.groups.entry(group).or_default().compact_to(index);
            }
            Op::CleanGroup { group } => {
                self.groups.remove(&group);
            }
        }
        Ok(())
    }
}

/// What validation needs to know about a group, tracked across the batches of one group
/// commit before any of them reaches the memtable.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Bounds {
    pub(crate) first: Option<u64>,
    pub(crate) last: Option<u64>,
    pub(crate) compacted_to: u64,
}

impl Bounds {
    pub(crate) fn of(state: Option<&GroupState>) -> Bounds {
        state.map_or_else(Bounds::default, |state| Bounds {
            first: state.first(),
            last: state.last(),
            compacted_to: state.compacted_to,
        })
    }

    /// Checks a caller's operation and updates the bounds as applying it would.
    pub(crate) fn check_and_apply(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::Append { group, entries } | Op::Rewrite { group, entries } => {
                let (Some(first), Some(last_new)) = (
                    entries.first().map(|entry| entry.index),
                    entries.last().map(|entry| entry.index),
                ) else {
                    return Ok(());
                };
                if first < self.compacted_to {
                    return Err(format!(
                        "append at index {first} to group {group} is below its compaction point {}",
                        self.compacted_to
                    ));
                }
                if let (Some(old_first), Some(last)) = (self.first, self.last) {
                    if first > last + 1 {
                        return Err(format!(
                            "append at index {first} to group {group} would leave a gap after its last index {last}"
                        ));
                    }
                    self.first = Some(old_first.min(first));
                } else {
                    self.first = Some(first);
                }
                self.last = Some(last_new);
            }
            Op::CompactTo { index, .. } => {
                self.compacted_to = self.compacted_to.max(*index);
                if let (Some(first), Some(last)) = (self.first, self.last) {
                    if *index > last {
                        self.first = None;
                        self.last = None;
                    } else if *index > first {
                        self.first = Some(*index);
                    }
                }
            }
            Op::CleanGroup { .. } => *self = Bounds::default(),
            Op::PutState { .. } | Op::DeleteState { .. } => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(first: u64, count: u64, term: u64) -> Vec<LogEntry> {
        (first..first + count)
            .map(|index| LogEntry {
                index,
                term,
                data: Bytes::from(vec![term as u8; 3]),
            })
            .collect()
    }

    /// A compaction of many entries (freed on the reclaim thread) and one of a few (freed
    /// here) leave the same first index, entries and byte count.
    #[test]
    fn large_and_small_compactions_agree() {
        let count = 3 * DROP_ELSEWHERE_ENTRIES as u64;
        for cut in [5, 2 * DROP_ELSEWHERE_ENTRIES as u64 + 7, count + 10] {
            let mut table = MemTable::default();
            let group = GroupId(1);
            table
                .apply(
                    Op::Append {
                        group,
                        entries: entries(1, count, 1),
                    },
                    1,
                )
                .expect("append");
            table
                .apply(Op::CompactTo { group, index: cut }, 2)
                .expect("compact");
            let state = table.group(group).expect("group");
            let left = count.saturating_sub(cut - 1);
            assert_eq!(
                state.live_bytes(),
                left * (3 + crate::format::ENTRY_HEADER_BYTES as u64),
                "cut {cut}"
            );
            if left > 0 {
                assert_eq!(state.first(), Some(cut), "cut {cut}");
                assert_eq!(state.last(), Some(count));
                assert!(state.entry(cut - 1).is_none());
                assert_eq!(state.entry(cut).map(|e| e.term), Some(1));
            } else {
                assert_eq!(state.first(), None, "cut {cut}");
            }
        }
    }

    #[test]
    fn rewrite_overwrites_without_truncating_and_min_seq_sees_every_entry() {
        let mut table = MemTable::default();
        let group = GroupId(1);
        table
            .apply(
                Op::Append {
                    group,
                    entries: entries(1, 10, 1),
                },
                3,
            )
            .expect("append");
        // A purge that got only its first chunk to disk before a crash.
        table
            .apply(
                Op::Rewrite {
                    group,
                    entries: entries(1, 4, 1),
                },
                9,
            )
            .expect("rewrite");
        let state = table.group(group).expect("group");
        assert_eq!((state.first(), state.last()), (Some(1), Some(10)));
        assert_eq!(
            state.min_seq(),
            Some(3),
            "entries 5..=10 still live in segment 3"
        );
        assert_eq!(state.entry_bytes, 30);
    }

    #[test]
    fn append_truncates_and_gaps_are_refused() {
        let mut table = MemTable::default();
        let group = GroupId(1);
        table
            .apply(
                Op::Append {
                    group,
                    entries: entries(5, 5, 1),
                },
                1,
            )
            .expect("append");
        table
            .apply(
                Op::Append {
                    group,
                    entries: entries(7, 1, 2),
                },
                1,
            )
            .expect("append");
        assert_eq!(table.group(group).and_then(GroupState::last), Some(7));
        let error = table
            .apply(
                Op::Append {
                    group,
                    entries: entries(9, 1, 2),
                },
                1,
            )
            .expect_err("gap");
        assert!(error.contains("gap"), "{error}");
        table
            .apply(
                Op::Append {
                    group,
                    entries: entries(2, 2, 3),
                },
                1,
            )
            .expect("below first");
        let state = table.group(group).expect("group");
        assert_eq!((state.first(), state.last()), (Some(2), Some(3)));
        table
            .apply(Op::CompactTo { group, index: 10 }, 2)
            .expect("compact");
        let state = table.group(group).expect("group");
        assert_eq!(
            (state.first(), state.entry_bytes, state.compacted_to),
            (None, 0, 10)
        );
    }

    #[test]
    fn bounds_track_earlier_batches_of_a_group_commit() {
        let group = GroupId(1);
        let mut bounds = Bounds::default();
        bounds
            .check_and_apply(&Op::Append {
                group,
                entries: entries(1, 3, 1),
            })
            .expect("first");
        bounds
            .check_and_apply(&Op::Append {
                group,
                entries: entries(4, 1, 1),
            })
            .expect("next");
        assert!(bounds
            .check_and_apply(&Op::Append {
                group,
                entries: entries(6, 1, 1)
            })
            .is_err());
        bounds
            .check_and_apply(&Op::CompactTo { group, index: 3 })
            .expect("compact");
        assert!(bounds
            .check_and_apply(&Op::Append {
                group,
                entries: entries(2, 1, 1)
            })
            .is_err());
        bounds
            .check_and_apply(&Op::CleanGroup { group })
            .expect("clean");
        bounds
            .check_and_apply(&Op::Append {
                group,
                entries: entries(1, 1, 1),
            })
            .expect("fresh");
    }
}
