//! Membership changes: the `ConfChange` request carried in a log entry, its binary encoding,
//! and the rules that turn a `ConfState` into the next one (simple change or joint consensus).

use crate::types::{ConfState, NodeId};
use bytes::{BufMut, Bytes, BytesMut};

/// One membership operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfChangeKind {
    /// Add a voter, or promote a learner.
    AddVoter,
    /// Add a learner, or demote a voter.
    AddLearner,
    /// Remove a node in any role.
    RemoveNode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConfChangeItem {
    pub kind: ConfChangeKind,
    pub node: NodeId,
}

/// A membership change. An empty `changes` list means "leave the joint configuration".
///
/// A change that alters at most one voter is applied directly (a simple change); anything
/// larger, or any change with `joint` set, goes through joint consensus: first the joint
/// configuration (old and new voters must both agree), then, automatically, the new one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct ConfChange {
    pub changes: Vec<ConfChangeItem>,
    pub joint: bool,
    /// Opaque to Raft: what the application needs to apply the change (etcd's
    /// `ConfChangeV2.Context`), e.g. the stores of the nodes added. At most
    /// [`MAX_CONF_CHANGE_CONTEXT`] bytes.
    pub context: Bytes,
}

/// Without a context.
const ENCODING_VERSION: u8 = 1;
/// With a context after the items: `u32 len | bytes`.
const ENCODING_VERSION_CONTEXT: u8 = 2;
/// Largest context a conf change may carry.
pub const MAX_CONF_CHANGE_CONTEXT: usize = 64 * 1024;
/// A change touching more nodes than this is refused; groups are small.
pub const MAX_CONF_CHANGE_ITEMS: usize = 64;

impl ConfChange {
    pub fn add_voter(node: u64) -> ConfChange {
        Self::single(ConfChangeKind::AddVoter, node)
    }
    pub fn add_learner(node: u64) -> ConfChange {
        Self::single(ConfChangeKind::AddLearner, node)
    }
    pub fn remove_node(node: u64) -> ConfChange {
        Self::single(ConfChangeKind::RemoveNode, node)
    }
    fn single(kind: ConfChangeKind, node: u64) -> ConfChange {
        ConfChange {
            changes: vec![ConfChangeItem {
                kind,
                node: NodeId(node),
            }],
            joint: false,
            context: Bytes::new(),
        }
    }
    /// The request to leave a joint configuration.
    pub fn leave_joint() -> ConfChange {
        ConfChange::default()
    }

    pub fn is_leave_joint(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(10 + self.changes.len() * 9 + self.context.len());
        b.put_u8(if self.context.is_empty() {
            ENCODING_VERSION
        } else {
            ENCODING_VERSION_CONTEXT
        });
        b.put_u8(self.joint as u8);
        b.put_u32(self.changes.len() as u32);
        for c in &self.changes {
            b.put_u8(match c.kind {
                ConfChangeKind::AddVoter => 0,
                ConfChangeKind::AddLearner => 1,
                ConfChangeKind::RemoveNode => 2,
            });
            b.put_u64(c.node.0);
        }
        if !self.context.is_empty() {
            b.put_u32(self.context.len() as u32);
            b.extend_from_slice(&self.context);
        }
        b.freeze()
    }

    pub fn decode(mut data: &[u8]) -> Result<ConfChange, String> {
        use bytes::Buf;
        if data.len() < 6 {
            return Err(format!("conf change of {} bytes is truncated", data.len()));
        }
        let version = data.get_u8();
        if version != ENCODING_VERSION && version != ENCODING_VERSION_CONTEXT {
            return Err(format!("unknown conf change encoding version {version}"));
        }
        let joint = data.get_u8() != 0;
        let n = data.get_u32() as usize;
        let items_len = n.saturating_mul(9);
        let fits = if version == ENCODING_VERSION {
            data.len() == items_len
        } else {
            data.len() >= items_len.saturating_add(4)
        };
        if n > MAX_CONF_CHANGE_ITEMS || !fits {
            return Err(format!(
                "conf change claims {n} items but carries {} bytes",
                data.len()
            ));
        }
        let mut changes = Vec::with_capacity(n);
        for _ in 0..n {
            let kind = match data.get_u8() {
                0 => ConfChangeKind::AddVoter,
                1 => ConfChangeKind::AddLearner,
                2 => ConfChangeKind::RemoveNode,
                k => return Err(format!("unknown conf change kind {k}")),
            };
            let node = NodeId(data.get_u64());
            if node == NodeId::NONE {
                return Err("conf change names node 0".into());
            }
            changes.push(ConfChangeItem { kind, node });
        }
        let mut context = Bytes::new();
        if version == ENCODING_VERSION_CONTEXT {
            let len = data.get_u32() as usize;
            if len == 0 || len > MAX_CONF_CHANGE_CONTEXT || data.len() != len {
                return Err(format!(
                    "conf change context of {len} bytes with {} bytes left",
                    data.len()
                ));
            }
            context = Bytes::copy_from_slice(data);
        }
        Ok(ConfChange {
            changes,
            joint,
            context,
        })
    }
}

fn remove(v: &mut Vec<NodeId>, id: NodeId) {
    v.retain(|x| *x != id);
}

fn insert(v: &mut Vec<NodeId>, id: NodeId) {
    if !v.contains(&id) {
        v.push(id);
        v.sort();
    }
}

/// Applies `cc` to `cs`, returning the next configuration or why the change is invalid.
pub fn apply(cs: &ConfState, cc: &ConfChange) -> Result<ConfState, String> {
    if cc.changes.len() > MAX_CONF_CHANGE_ITEMS {
        return Err(format!("{} changes exceed the limit", cc.changes.len()));
    }
    if cc.is_leave_joint() {
        if !cs.is_joint() {
            return Err("not in a joint configuration".into());
        }
        let mut next = cs.clone();
        for l in std::mem::take(&mut next.learners_next) {
            insert(&mut next.learners, l);
        }
        next.voters_outgoing.clear();
        next.auto_leave = false;
        return Ok(next);
    }
    if cs.is_joint() {
        return Err("already in a joint configuration; leave it first".into());
    }
    let mut next = cs.clone();
    let use_joint = cc.joint || {
        // Count the voters that would change in a simple application.
        let mut probe = cs.clone();
        apply_items(&mut probe, cc, false);
        let before: std::collections::BTreeSet<_> = cs.voters.iter().collect();
        let after: std::collections::BTreeSet<_> = probe.voters.iter().collect();
        before.symmetric_difference(&after).count() > 1
    };
    if use_joint {
        next.voters_outgoing = cs.voters.clone();
        next.auto_leave = true;
    }
    apply_items(&mut next, cc, use_joint);
    if next.voters.is_empty() {
        return Err("the change would remove every voter".into());
    }
    if !use_joint {
        debug_assert!(next.learners_next.is_empty());
    }
    Ok(next)
}

fn apply_items(cs: &mut ConfState, cc: &ConfChange, joint: bool) {
    for c in &cc.changes {
        let id = c.node;
        match c.kind {
            ConfChangeKind::AddVoter => {
                remove(&mut cs.learners, id);
                remove(&mut cs.learners_next, id);
                insert(&mut cs.voters, id);
            }
            ConfChangeKind::AddLearner => {
                remove(&mut cs.voters, id);
                remove(&mut cs.learners, id);
                remove(&mut cs.learners_next, id);
                // A demoted voter keeps voting in the outgoing config until the joint
                // config is left; only then does it become a learner.
                if joint && cs.voters_outgoing.contains(&id) {
                    insert(&mut cs.learners_next, id);
                } else {
                    insert(&mut cs.learners, id);
                }
            }
            ConfChangeKind::RemoveNode => {
                remove(&mut cs.voters, id);
                remove(&mut cs.learners, id);
                remove(&mut cs.learners_next, id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> Vec<NodeId> {
        v.iter().copied().map(NodeId).collect()
    }

    #[test]
    fn encoding_round_trips_and_rejects_garbage() {
        let cc = ConfChange {
            changes: vec![
                ConfChangeItem {
                    kind: ConfChangeKind::AddVoter,
                    node: NodeId(4),
                },
                ConfChangeItem {
                    kind: ConfChangeKind::RemoveNode,
                    node: NodeId(1),
                },
            ],
            joint: true,
            context: Default::default(),
        };
        assert_eq!(ConfChange::decode(&cc.encode()), Ok(cc.clone()));
        let with_context = ConfChange {
            context: Bytes::from_static(b"stores"),
            ..cc.clone()
        };
        let enc2 = with_context.encode();
        assert_eq!(ConfChange::decode(&enc2), Ok(with_context.clone()));
        for n in 0..enc2.len() {
            assert!(ConfChange::decode(&enc2[..n]).is_err(), "cut at {n}");
        }
        let enc = cc.encode();
        assert!(ConfChange::decode(&enc[..enc.len() - 1]).is_err());
        assert!(ConfChange::decode(&[9, 0, 0, 0, 0, 0]).is_err());
        assert!(ConfChange::decode(&[1, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn single_voter_change_is_simple() {
        let cs = ConfState::from_voters([1, 2, 3]);
        let next = apply(&cs, &ConfChange::add_voter(4)).unwrap();
        assert_eq!(next.voters, ids(&[1, 2, 3, 4]));
        assert!(!next.is_joint());
    }

    #[test]
    fn replacing_a_voter_goes_through_joint() {
        let cs = ConfState::from_voters([1, 2, 3]);
        let cc = ConfChange {
            changes: vec![
                ConfChangeItem {
                    kind: ConfChangeKind::AddVoter,
                    node: NodeId(4),
                },
                ConfChangeItem {
                    kind: ConfChangeKind::AddLearner,
                    node: NodeId(1),
                },
            ],
            joint: false,
            context: Default::default(),
        };
        let joint = apply(&cs, &cc).unwrap();
        assert_eq!(joint.voters, ids(&[2, 3, 4]));
        assert_eq!(joint.voters_outgoing, ids(&[1, 2, 3]));
        assert_eq!(joint.learners_next, ids(&[1]));
        assert!(joint.auto_leave);
        let left = apply(&joint, &ConfChange::leave_joint()).unwrap();
        assert_eq!(left.voters, ids(&[2, 3, 4]));
        assert_eq!(left.learners, ids(&[1]));
        assert!(!left.is_joint());
        assert!(apply(&left, &ConfChange::leave_joint()).is_err());
        assert!(apply(&joint, &ConfChange::add_voter(9)).is_err());
    }

    #[test]
    fn cannot_remove_every_voter() {
        let cs = ConfState::from_voters([1]);
        assert!(apply(&cs, &ConfChange::remove_node(1)).is_err());
    }
}
