//! Identifier newtypes and the data the core exchanges with its caller: log entries, hard
//! state, membership and messages.

use bytes::Bytes;
use std::fmt;

macro_rules! id_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_newtype!(
    /// A Raft peer within one group. In a multi-Raft store this is the peer id, unique in
    /// the cluster. `NodeId(0)` is never a valid peer: it stands for "nobody".
    NodeId
);
id_newtype!(
    /// A Raft group (a region). Every message carries it so one store can route messages of
    /// many groups over one connection.
    GroupId
);
id_newtype!(
    /// A Raft term.
    Term
);
id_newtype!(
    /// A position in the Raft log; the first real entry has index 1.
    LogIndex
);

impl NodeId {
    /// "No node": no leader known, no vote cast.
    pub const NONE: NodeId = NodeId(0);
}

impl Term {
    pub fn next(self) -> Term {
        Term(self.0 + 1)
    }
}

impl LogIndex {
    pub const ZERO: LogIndex = LogIndex(0);
    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }
    /// The previous index; saturates at zero because index 0 is the log's sentinel.
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }
}

impl std::ops::Add<u64> for LogIndex {
    type Output = LogIndex;
    fn add(self, rhs: u64) -> LogIndex {
        LogIndex(self.0 + rhs)
    }
}

/// What an entry carries. The core interprets only `ConfChange`; `Normal` data is opaque.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum EntryKind {
    #[default]
    Normal,
    /// A serialized [`crate::ConfChange`]; applied by the core when the caller reports it
    /// applied through [`crate::RawNode::apply_conf_change`].
    ConfChange,
}

/// One log entry.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Entry {
    pub term: Term,
    pub index: LogIndex,
    pub kind: EntryKind,
    pub data: Bytes,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Entry{{i:{} t:{} {:?} {}B}}",
            self.index,
            self.term,
            self.kind,
            self.data.len()
        )
    }
}

impl Entry {
    pub fn new(term: Term, index: LogIndex, data: Bytes) -> Entry {
        Entry {
            term,
            index,
            kind: EntryKind::Normal,
            data,
        }
    }

    /// Bytes this entry counts for in size limits (payload plus a fixed header estimate).
    pub fn size_bytes(&self) -> u64 {
        self.data.len() as u64 + ENTRY_OVERHEAD_BYTES
    }
}

/// Fixed per-entry overhead used in size accounting, so that a flood of empty entries is
/// still bounded by byte limits.
pub const ENTRY_OVERHEAD_BYTES: u64 = 24;

/// The state that must be persisted before any message that depends on it is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct HardState {
    pub term: Term,
    pub vote: NodeId,
    pub commit: LogIndex,
}

/// Membership of a group. In a joint configuration `voters_outgoing` is non-empty and a
/// decision needs a majority of both `voters` and `voters_outgoing`.
#[derive(Clone, Debug, PartialEq, Eq, Default, Hash)]
pub struct ConfState {
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// Voters of the outgoing configuration while in joint consensus; empty otherwise.
    pub voters_outgoing: Vec<NodeId>,
    /// Learners that will be added when leaving the joint configuration (voters that are
    /// being demoted: they must keep voting in the outgoing config until then).
    pub learners_next: Vec<NodeId>,
    /// Leave the joint configuration automatically once it is committed.
    pub auto_leave: bool,
}

impl ConfState {
    pub fn from_voters(voters: impl IntoIterator<Item = u64>) -> ConfState {
        ConfState {
            voters: voters.into_iter().map(NodeId).collect(),
            ..Default::default()
        }
    }

    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Every node that belongs to this configuration in any role.
    pub fn all_nodes(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> = self
            .voters
            .iter()
            .chain(&self.learners)
            .chain(&self.voters_outgoing)
            .chain(&self.learners_next)
            .copied()
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

/// Describes a snapshot: the last entry it covers and the membership at that point.
#[derive(Clone, Debug, PartialEq, Eq, Default, Hash)]
pub struct SnapshotMetadata {
    pub index: LogIndex,
    pub term: Term,
    pub conf_state: ConfState,
}

/// A point-in-time image of the application state machine.
#[derive(Clone, PartialEq, Eq, Default, Hash)]
pub struct Snapshot {
    pub metadata: SnapshotMetadata,
    pub data: Bytes,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Snapshot{{i:{} t:{} {:?} {}B}}",
            self.metadata.index,
            self.metadata.term,
            self.metadata.conf_state,
            self.data.len()
        )
    }
}

impl Snapshot {
    pub fn is_empty(&self) -> bool {
        self.metadata.index == LogIndex::ZERO
    }
}

/// What a leader needs to start sending a snapshot, without its data
/// ([`crate::Storage::snapshot_info`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub metadata: SnapshotMetadata,
    /// Length of the snapshot's data.
    pub total_bytes: u64,
    /// crc32c of the whole data.
    pub checksum: u32,
}

/// A chunk of a snapshot being received, handed out in [`crate::Ready::snapshot_chunks`]
/// when [`crate::Config::stream_snapshot_chunks`] is set: the caller appends it to a file of
/// its own, so a follower never holds a whole snapshot in memory. The core hands out a
/// transfer's chunks in order without gaps, each once: a chunk at offset 0 starts a new
/// transfer (drop whatever an earlier one left). The transfer's last chunk is followed by
/// [`crate::Ready::snapshot`] in the same `Ready` (its `data` then empty: the caller has it)
/// once the chunks matched `checksum`; a transfer that did not finish or was not installed
/// is simply followed by another one's chunk at offset 0, or by nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct SnapshotChunk {
    pub metadata: SnapshotMetadata,
    /// Length of the whole snapshot's data.
    pub total_bytes: u64,
    /// crc32c of the whole data, as the sender announced it.
    pub checksum: u32,
    /// Where `data` starts in the snapshot's data.
    pub offset: u64,
    pub data: Bytes,
}

impl SnapshotChunk {
    /// Whether this chunk ends the snapshot's data.
    pub fn is_last(&self) -> bool {
        self.offset + self.data.len() as u64 == self.total_bytes
    }
}

impl fmt::Debug for SnapshotChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SnapshotChunk{{i:{} t:{} [{}, {}) of {}B crc {:#010x}}}",
            self.metadata.index,
            self.metadata.term,
            self.offset,
            self.offset + self.data.len() as u64,
            self.total_bytes,
            self.checksum
        )
    }
}

/// Why a follower refused an append: the hint lets the leader skip a whole term of
/// conflicting entries at once (fast backtracking) instead of one index per round trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RejectHint {
    /// The highest index at or below the probed one whose term is at most `term`.
    pub index: LogIndex,
    /// The follower's term at `index`.
    pub term: Term,
}

/// Opaque context of a linearizable read request, echoed back in the [`ReadState`].
pub type ReadContext = Bytes;

/// A linearizable read that may be served once the applied index reaches `index`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ReadState {
    pub index: LogIndex,
    pub context: ReadContext,
}

/// The body of a Raft message; the envelope in [`Message`] carries group, sender,
/// recipient and term.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MessageBody {
    /// PreVote request (Ongaro §9.6); `Message::term` is the term the sender would campaign in.
    PreVote {
        last_index: LogIndex,
        last_term: Term,
    },
    PreVoteResponse {
        reject: bool,
    },
    Vote {
        last_index: LogIndex,
        last_term: Term,
        /// Set when the election follows a leader transfer: such a vote may disturb a
        /// follower that still believes in its leader's lease.
        leader_transfer: bool,
    },
    VoteResponse {
        reject: bool,
    },
    Append {
        prev_index: LogIndex,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: LogIndex,
    },
    AppendResponse {
        /// On success, the last index now known to match; on rejection, the probed
        /// `prev_index` that failed.
        index: LogIndex,
        reject: Option<RejectHint>,
    },
    Heartbeat {
        commit: LogIndex,
        /// Set when the heartbeat confirms leadership for ReadIndex requests.
        read_context: Option<ReadContext>,
        /// The leader's tick counter when it sent this heartbeat, echoed back so the leader
        /// knows from when a quorum acknowledged it (the start of its lease).
        lease_tick: u64,
    },
    HeartbeatResponse {
        read_context: Option<ReadContext>,
        lease_tick: u64,
    },
    /// One chunk of a snapshot transfer. The snapshot's metadata travels in every chunk so a
    /// follower can discard chunks of a transfer it no longer wants.
    Snapshot {
        metadata: SnapshotMetadata,
        offset: u64,
        total_bytes: u64,
        /// crc32c of the snapshot's whole data, as the sender's storage knows it before the
        /// first chunk ([`crate::SnapshotInfo::checksum`]): the receiver checks the chunks it
        /// put together against it before it installs anything.
        checksum: u32,
        data: Bytes,
        done: bool,
    },
    /// Acknowledges a snapshot chunk, or rejects it to make the leader restart the transfer.
    SnapshotResponse {
        index: LogIndex,
        next_offset: u64,
        reject: bool,
    },
    /// Sent by a leader transferring leadership: campaign at once, skipping PreVote.
    TimeoutNow,
    /// A follower forwarding a linearizable read request to its leader.
    ReadIndex {
        context: ReadContext,
    },
    ReadIndexResponse {
        index: LogIndex,
        context: ReadContext,
    },
}

/// A message between two peers of one group.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Message {
    pub group: GroupId,
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub body: MessageBody,
}

impl Message {
    /// Short name of the message kind, for logs and traces.
    pub fn kind_name(&self) -> &'static str {
        match &self.body {
            MessageBody::PreVote { .. } => "PreVote",
            MessageBody::PreVoteResponse { .. } => "PreVoteResponse",
            MessageBody::Vote { .. } => "Vote",
            MessageBody::VoteResponse { .. } => "VoteResponse",
            MessageBody::Append { .. } => "Append",
            MessageBody::AppendResponse { .. } => "AppendResponse",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResponse",
            MessageBody::Snapshot { .. } => "Snapshot",
            MessageBody::SnapshotResponse { .. } => "SnapshotResponse",
            MessageBody::TimeoutNow => "TimeoutNow",
            MessageBody::ReadIndex { .. } => "ReadIndex",
            MessageBody::ReadIndexResponse { .. } => "ReadIndexResponse",
        }
    }

    /// Approximate encoded size, used for batching limits.
    pub fn size_bytes(&self) -> u64 {
        let body = match &self.body {
            MessageBody::Append { entries, .. } => entries.iter().map(Entry::size_bytes).sum(),
            MessageBody::Snapshot { data, .. } => data.len() as u64,
            MessageBody::ReadIndex { context } | MessageBody::ReadIndexResponse { context, .. } => {
                context.len() as u64
            }
            _ => 0,
        };
        body + 48
    }
}

/// The role of a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Role {
    #[default]
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Volatile state the caller may want to observe (leader changes, role).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SoftState {
    pub leader: NodeId,
    pub role: Role,
}
