//! What a region's normal log entries carry, as the store writes them: a state-machine
//! command wrapped with the region version it was routed with (checked again at apply), or
//! an admin command the store itself executes (a split).
//!
//! ```text
//! command := 0xC1 version:u64le payload        (payload: the state machine's bytes)
//! admin   := 0xA1 body                          (see AdminCommand::encode)
//! ```
//! An entry that starts with neither tag is a state-machine command written before the
//! envelope existed (data directories from before 2026-12-03): applied as it is, unchecked.
//! The state machine's own encodings start with a small version byte (kv's is 1), so the
//! tags cannot be mistaken for one.

use crate::region::{PeerMeta, Region, RegionEpoch, RegionId, StoreId};
use raft::NodeId;

const COMMAND: u8 = 0xC1;
const ADMIN: u8 = 0xA1;
/// The only admin command so far.
const SPLIT: u8 = 1;
const PREPARE_MERGE: u8 = 2;
const COMMIT_MERGE: u8 = 3;
const ROLLBACK_MERGE: u8 = 4;
/// Most peers a split names (a guard against a corrupt count).
const MAX_SPLIT_PEERS: usize = types::MAX_PEERS as usize;

/// A decoded normal entry.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StoreEntry<'a> {
    /// A state-machine command routed with region version `version`.
    Command {
        version: u64,
        payload: &'a [u8],
    },
    /// A command written before the envelope: applied without an epoch check.
    Legacy(&'a [u8]),
    Admin(AdminCommand),
    /// An admin entry that does not decode: refused at apply by every replica alike.
    BadAdmin,
}

/// A command the store executes on apply (not the state machine).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminCommand {
    /// Split the region at `split_key`: the region keeps `[start, split_key)`, a new region
    /// `new_region` gets `[split_key, end)` with one peer per store of the region
    /// (`new_peers`, in the region's peer order; each takes the role of the region's peer on
    /// its store, which the encoding does not carry). Refused at apply unless the region's epoch
    /// is still `epoch` and the key still lies strictly inside it.
    Split {
        epoch: RegionEpoch,
        split_key: Vec<u8>,
        new_region: RegionId,
        new_peers: Vec<PeerMeta>,
    },
    /// Freezes this region (the merge's source) for a merge into the adjacent `target`, as
    /// the proposer saw it (see `crate::merge`).
    PrepareMerge { epoch: RegionEpoch, target: Region },
    /// Merges `source`, frozen at `prepare_index` (an entry of `prepare_term`) with the
    /// descriptor `source`, into this region, if this region's epoch is still
    /// `target_epoch`.
    CommitMerge {
        source: Region,
        prepare_index: u64,
        prepare_term: u64,
        target_epoch: RegionEpoch,
    },
    /// Unfreezes this region: its merge prepared at `prepare_index` can no longer commit.
    RollbackMerge { prepare_index: u64 },
}

/// The store's part of a membership change (the `context` of a `raft::ConfChange`): the
/// region's conf version it was proposed against (refused at apply if it changed) and the
/// replicas it adds, so every replica learns their stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChangeContext {
    pub(crate) conf_version: u64,
    pub(crate) added: Vec<PeerMeta>,
}

impl ChangeContext {
    pub(crate) fn encode(&self) -> bytes::Bytes {
        let mut b = Vec::with_capacity(16 + 17 * self.added.len());
        put_u64(&mut b, self.conf_version);
        put_u64(&mut b, self.added.len() as u64);
        for p in &self.added {
            put_u64(&mut b, p.id.0);
            put_u64(&mut b, p.store.0);
            b.push(p.learner as u8);
        }
        b.into()
    }

    pub(crate) fn decode(mut d: &[u8]) -> Option<ChangeContext> {
        let d = &mut d;
        let conf_version = get_u64(d)?;
        let n = usize::try_from(get_u64(d)?).ok()?;
        if n > MAX_SPLIT_PEERS {
            return None;
        }
        let mut added = Vec::with_capacity(n);
        for _ in 0..n {
            let id = NodeId(get_u64(d)?);
            let store = StoreId(get_u64(d)?);
            let learner = match take(d, 1)?[0] {
                0 => false,
                1 => true,
                _ => return None,
            };
            added.push(PeerMeta { id, store, learner });
        }
        d.is_empty().then_some(ChangeContext {
            conf_version,
            added,
        })
    }
}

pub(crate) fn encode_command(version: u64, payload: &[u8]) -> bytes::Bytes {
    let mut b = Vec::with_capacity(9 + payload.len());
    b.push(COMMAND);
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(payload);
    b.into()
}

pub(crate) fn decode(data: &[u8]) -> StoreEntry<'_> {
    match data.first() {
        Some(&COMMAND) if data.len() >= 9 => StoreEntry::Command {
            version: u64::from_le_bytes(data[1..9].try_into().expect("8 bytes")),
            payload: &data[9..],
        },
        Some(&ADMIN) => match AdminCommand::decode(&data[1..]) {
            Some(a) => StoreEntry::Admin(a),
            None => StoreEntry::BadAdmin,
        },
        _ => StoreEntry::Legacy(data),
    }
}

impl AdminCommand {
    pub(crate) fn encode(&self) -> bytes::Bytes {
        let mut b = vec![ADMIN];
        match self {
            AdminCommand::Split {
                epoch,
                split_key,
                new_region,
                new_peers,
            } => {
                b.push(SPLIT);
                put_u64(&mut b, epoch.conf_version);
                put_u64(&mut b, epoch.version);
                put_u64(&mut b, split_key.len() as u64);
                b.extend_from_slice(split_key);
                put_u64(&mut b, new_region.0);
                put_u64(&mut b, new_peers.len() as u64);
                for p in new_peers {
                    put_u64(&mut b, p.id.0);
                    put_u64(&mut b, p.store.0);
                }
            }
            AdminCommand::PrepareMerge { epoch, target } => {
                b.push(PREPARE_MERGE);
                put_u64(&mut b, epoch.conf_version);
                put_u64(&mut b, epoch.version);
                put_region(&mut b, target);
            }
            AdminCommand::CommitMerge {
                source,
                prepare_index,
                prepare_term,
                target_epoch,
            } => {
                b.push(COMMIT_MERGE);
                put_region(&mut b, source);
                put_u64(&mut b, *prepare_index);
                put_u64(&mut b, *prepare_term);
                put_u64(&mut b, target_epoch.conf_version);
                put_u64(&mut b, target_epoch.version);
            }
            AdminCommand::RollbackMerge { prepare_index } => {
                b.push(ROLLBACK_MERGE);
                put_u64(&mut b, *prepare_index);
            }
        }
        b.into()
    }

    fn decode(mut d: &[u8]) -> Option<AdminCommand> {
        let d = &mut d;
        match take(d, 1)?[0] {
            SPLIT => {
                let epoch = RegionEpoch {
                    conf_version: get_u64(d)?,
                    version: get_u64(d)?,
                };
                let len = usize::try_from(get_u64(d)?).ok()?;
                let split_key = take(d, len)?.to_vec();
                let new_region = raft::GroupId(get_u64(d)?);
                let n = usize::try_from(get_u64(d)?).ok()?;
                if n > MAX_SPLIT_PEERS {
                    return None;
                }
                let mut new_peers = Vec::with_capacity(n);
                for _ in 0..n {
                    new_peers.push(PeerMeta::voter(NodeId(get_u64(d)?), StoreId(get_u64(d)?)));
                }
                d.is_empty().then_some(AdminCommand::Split {
                    epoch,
                    split_key,
                    new_region,
                    new_peers,
                })
            }
            PREPARE_MERGE => {
                let epoch = get_epoch(d)?;
                let target = get_region(d)?;
                d.is_empty()
                    .then_some(AdminCommand::PrepareMerge { epoch, target })
            }
            COMMIT_MERGE => {
                let source = get_region(d)?;
                let prepare_index = get_u64(d)?;
                let prepare_term = get_u64(d)?;
                let target_epoch = get_epoch(d)?;
                d.is_empty().then_some(AdminCommand::CommitMerge {
                    source,
                    prepare_index,
                    prepare_term,
                    target_epoch,
                })
            }
            ROLLBACK_MERGE => {
                let prepare_index = get_u64(d)?;
                d.is_empty()
                    .then_some(AdminCommand::RollbackMerge { prepare_index })
            }
            _ => None,
        }
    }
}

fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_region(b: &mut Vec<u8>, r: &Region) {
    let enc = r.encode();
    put_u64(b, enc.len() as u64);
    b.extend_from_slice(&enc);
}

fn get_region(d: &mut &[u8]) -> Option<Region> {
    let len = usize::try_from(get_u64(d)?).ok()?;
    Region::decode(take(d, len)?).ok()
}

fn get_epoch(d: &mut &[u8]) -> Option<RegionEpoch> {
    Some(RegionEpoch {
        conf_version: get_u64(d)?,
        version: get_u64(d)?,
    })
}

fn take<'a>(d: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if d.len() < n {
        return None;
    }
    let (a, rest) = d.split_at(n);
    *d = rest;
    Some(a)
}

fn get_u64(d: &mut &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(take(d, 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split() -> AdminCommand {
        AdminCommand::Split {
            epoch: RegionEpoch {
                conf_version: 3,
                version: 7,
            },
            split_key: b"m".to_vec(),
            new_region: raft::GroupId(1 << 40),
            new_peers: vec![
                PeerMeta::voter(NodeId(11), StoreId(1)),
                PeerMeta::voter(NodeId(12), StoreId(5000)),
            ],
        }
    }

    #[test]
    fn entries_round_trip() {
        let c = encode_command(9, b"\x01payload");
        assert_eq!(
            decode(&c),
            StoreEntry::Command {
                version: 9,
                payload: b"\x01payload"
            }
        );
        assert_eq!(decode(&split().encode()), StoreEntry::Admin(split()));
        assert_eq!(decode(b"\x01old"), StoreEntry::Legacy(b"\x01old"));
    }

    #[test]
    fn change_contexts_round_trip_and_refuse_truncation() {
        let c = ChangeContext {
            conf_version: 4,
            added: vec![PeerMeta {
                id: NodeId(77),
                store: StoreId(3),
                learner: true,
            }],
        };
        let enc = c.encode();
        assert_eq!(ChangeContext::decode(&enc), Some(c));
        for n in 0..enc.len() {
            assert_eq!(ChangeContext::decode(&enc[..n]), None, "cut at {n}");
        }
    }

    fn merges() -> Vec<AdminCommand> {
        let regions = Region::presplit(&[b"m".to_vec()], 1, &[StoreId(1), StoreId(2)]);
        let epoch = RegionEpoch {
            conf_version: 2,
            version: 5,
        };
        vec![
            AdminCommand::PrepareMerge {
                epoch,
                target: regions[0].clone(),
            },
            AdminCommand::CommitMerge {
                source: regions[1].clone(),
                prepare_index: 42,
                prepare_term: 7,
                target_epoch: epoch,
            },
            AdminCommand::RollbackMerge { prepare_index: 42 },
        ]
    }

    #[test]
    fn merge_entries_round_trip() {
        for m in merges() {
            assert_eq!(decode(&m.encode()), StoreEntry::Admin(m.clone()));
        }
    }

    #[test]
    fn every_truncation_of_an_admin_entry_is_refused() {
        for cmd in merges().into_iter().chain([split()]) {
            let full = cmd.encode();
            for n in 1..full.len() {
                assert_eq!(
                    decode(&full[..n]),
                    StoreEntry::BadAdmin,
                    "{cmd:?} cut at {n}"
                );
            }
            let mut longer = full.to_vec();
            longer.push(0);
            assert_eq!(decode(&longer), StoreEntry::BadAdmin);
        }
    }
}
