//! Helpers shared by the integration tests: a reference model of the log and comparisons.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use raft_log::{GroupId, LogBatch, LogEngine, LogEntry};

/// A test-side description of one batch operation (the model applies it, `to_batch` builds
/// the engine's batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelOp {
    Append {
        group: u64,
        first: u64,
        terms: Vec<u64>,
        tag: u64,
    },
    Put {
        group: u64,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        group: u64,
        key: Vec<u8>,
    },
    Compact {
        group: u64,
        index: u64,
    },
    Clean {
        group: u64,
    },
}

pub fn entry_data(group: u64, index: u64, tag: u64) -> Bytes {
    // Variable length, content tied to its origin, so a misplaced entry is noticed.
    let len = ((group * 7 + index * 13 + tag) % 40) as usize;
    let mut data = format!("g{group}i{index}t{tag}:").into_bytes();
    data.extend(std::iter::repeat(b'a' + (tag % 26) as u8).take(len));
    Bytes::from(data)
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelGroup {
    pub entries: BTreeMap<u64, (u64, Bytes)>,
    pub compacted_to: u64,
    pub states: BTreeMap<Vec<u8>, Vec<u8>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    pub groups: BTreeMap<u64, ModelGroup>,
}

impl Model {
    pub fn apply(&mut self, op: &ModelOp) {
        match op {
            ModelOp::Append {
                group,
                first,
                terms,
                tag,
            } => {
                let state = self.groups.entry(*group).or_default();
                let _ = state.entries.split_off(first);
                for (offset, term) in terms.iter().enumerate() {
                    let index = first + offset as u64;
                    state
                        .entries
                        .insert(index, (*term, entry_data(*group, index, *tag)));
                }
            }
            ModelOp::Put { group, key, value } => {
                self.groups
                    .entry(*group)
                    .or_default()
                    .states
                    .insert(key.clone(), value.clone());
            }
            ModelOp::Delete { group, key } => {
                if let Some(state) = self.groups.get_mut(group) {
                    state.states.remove(key);
                }
            }
            ModelOp::Compact { group, index } => {
                let state = self.groups.entry(*group).or_default();
                state.compacted_to = state.compacted_to.max(*index);
                state.entries = state.entries.split_off(index);
            }
            ModelOp::Clean { group } => {
                self.groups.remove(group);
            }
        }
    }

    pub fn first_last(&self, group: u64) -> Option<(u64, u64)> {
        let state = self.groups.get(&group)?;
        Some((
            *state.entries.keys().next()?,
            *state.entries.keys().next_back()?,
        ))
    }

    pub fn compacted_to(&self, group: u64) -> u64 {
        self.groups
            .get(&group)
            .map_or(0, |state| state.compacted_to)
    }

    pub fn live_groups(&self) -> Vec<GroupId> {
        self.groups
            .iter()
            .filter(|(_, state)| !state.entries.is_empty() || !state.states.is_empty())
            .map(|(group, _)| GroupId(*group))
            .collect()
    }
}

pub fn to_batch(ops: &[ModelOp]) -> LogBatch {
    let mut batch = LogBatch::new();
    for op in ops {
        match op {
            ModelOp::Append {
                group,
                first,
                terms,
                tag,
            } => {
                let entries = terms
                    .iter()
                    .enumerate()
                    .map(|(offset, term)| {
                        let index = first + offset as u64;
                        LogEntry {
                            index,
                            term: *term,
                            data: entry_data(*group, index, *tag),
                        }
                    })
                    .collect();
                batch
                    .append(GroupId(*group), entries)
                    .expect("contiguous entries");
            }
            ModelOp::Put { group, key, value } => batch.put_state(GroupId(*group), key, value),
            ModelOp::Delete { group, key } => batch.delete_state(GroupId(*group), key),
            ModelOp::Compact { group, index } => batch.compact_to(GroupId(*group), *index),
            ModelOp::Clean { group } => batch.clean_group(GroupId(*group)),
        }
    }
    batch
}

/// Describes the differences between the engine and the model (empty when equal).
pub fn diff(engine: &LogEngine, model: &Model, state_keys: &[Vec<u8>]) -> Vec<String> {
    let mut problems = Vec::new();
    let groups = engine.groups();
    if groups != model.live_groups() {
        problems.push(format!(
            "groups: engine {groups:?}, model {:?}",
            model.live_groups()
        ));
    }
    let all_groups: Vec<u64> = groups
        .iter()
        .map(|group| group.0)
        .chain(model.groups.keys().copied())
        .collect();
    for group in all_groups {
        let id = GroupId(group);
        let expected = model.first_last(group);
        let actual = engine.first_index(id).zip(engine.last_index(id));
        if expected != actual {
            problems.push(format!(
                "group {group}: first/last engine {actual:?}, model {expected:?}"
            ));
            continue;
        }
        if let Some((first, last)) = expected {
            match engine.entries(id, first, last + 1, usize::MAX) {
                Ok(entries) => {
                    let model_entries = &model.groups[&group].entries;
                    if entries.len() != model_entries.len() {
                        problems.push(format!(
                            "group {group}: {} entries, model {}",
                            entries.len(),
                            model_entries.len()
                        ));
                    }
                    for entry in entries {
                        let expected = model_entries.get(&entry.index);
                        if expected != Some(&(entry.term, entry.data.clone())) {
                            problems.push(format!(
                                "group {group} entry {}: engine ({}, {:?}), model {expected:?}",
                                entry.index, entry.term, entry.data
                            ));
                        }
                        if engine.term(id, entry.index) != Some(entry.term) {
                            problems
                                .push(format!("group {group}: term({}) disagrees", entry.index));
                        }
                    }
                }
                Err(error) => problems.push(format!("group {group}: entries failed: {error}")),
            }
        }
        for key in state_keys {
            let actual = engine.get_state(id, key).map(|value| value.to_vec());
            let expected = model
                .groups
                .get(&group)
                .and_then(|state| state.states.get(key).cloned());
            if actual != expected {
                problems.push(format!(
                    "group {group} state {key:?}: engine {actual:?}, model {expected:?}"
                ));
            }
        }
    }
    problems
}

/// Record boundaries of a segment file: (offset, total length) of each record.
pub fn record_spans(data: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut offset = raft_log::format::SEGMENT_HEADER_BYTES;
    while offset + raft_log::format::RECORD_HEADER_BYTES <= data.len() {
        let len = u32::from_le_bytes(data[offset + 4..offset + 8].try_into().unwrap()) as usize;
        let total = raft_log::format::RECORD_HEADER_BYTES + len;
        if offset + total > data.len() {
            break;
        }
        spans.push((offset, total));
        offset += total;
    }
    spans
}

pub fn segment_files(paths: &[PathBuf], dir: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<PathBuf> = paths
        .iter()
        .filter(|path| {
            path.parent() == Some(dir) && path.extension().is_some_and(|ext| ext == "rlog")
        })
        .cloned()
        .collect();
    segments.sort();
    segments
}
