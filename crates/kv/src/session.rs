//! The exactly-once session table: client id → last applied sequence, its cached reply and
//! when the client was last seen (in log time). Expiry and eviction rules are documented on
//! [`crate::SessionPolicy`].

use crate::command::{ClientId, Sequence};
use crate::response::{CommandError, Response};

/// One client's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The highest sequence applied for this client.
    pub last_sequence: Sequence,
    /// The reply to `last_sequence`, returned again if it is retried.
    pub result: Result<Response, CommandError>,
    /// Log time (`proposed_at_ms`) of the last request from this client, retries included.
    pub last_seen_ms: u64,
}

/// Sessions keyed by client, plus an index by age so that expiry and eviction cost
/// O(log n) per removed session instead of a scan of the whole table on every entry. Both
/// are persistent maps, so cloning the table (a snapshot's point-in-time copy) is O(1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SessionTable {
    by_client: imbl::OrdMap<ClientId, Session>,
    /// `(last_seen_ms, client)`, ordered oldest first; the client id breaks ties so the
    /// eviction order is the same on every replica.
    by_age: imbl::OrdSet<(u64, ClientId)>,
}

impl SessionTable {
    pub(crate) fn len(&self) -> usize {
        self.by_client.len()
    }

    pub(crate) fn get(&self, client: ClientId) -> Option<&Session> {
        self.by_client.get(&client)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&ClientId, &Session)> {
        self.by_client.iter()
    }

    /// Drops every session with `last_seen_ms + ttl_ms < now_ms`.
    pub(crate) fn expire(&mut self, now_ms: u64, ttl_ms: u64) {
        while let Some(&(last_seen_ms, client)) = self.by_age.get_min() {
            if last_seen_ms.saturating_add(ttl_ms) >= now_ms {
                break;
            }
            self.remove(client);
        }
    }

    /// Records that `client` was seen at `now_ms` (a retry keeps the session alive).
    pub(crate) fn touch(&mut self, client: ClientId, now_ms: u64) {
        if let Some(session) = self.by_client.get_mut(&client) {
            move_age(&mut self.by_age, client, session.last_seen_ms, now_ms);
            session.last_seen_ms = now_ms;
        }
    }

    /// Stores the reply to `sequence`, evicting the oldest session first if `client` is new
    /// and the table is full.
    ///
    /// A known client's session is updated in place: one lookup, plus the age index moved
    /// only when the time changed (every write of every client comes here, on every replica;
    /// the remove-and-reinsert it replaces was five B-tree operations per write).
    pub(crate) fn record(
        &mut self,
        client: ClientId,
        sequence: Sequence,
        result: Result<Response, CommandError>,
        now_ms: u64,
        max_sessions: usize,
    ) {
        let session = Session {
            last_sequence: sequence,
            result,
            last_seen_ms: now_ms,
        };
        if let Some(current) = self.by_client.get_mut(&client) {
            move_age(&mut self.by_age, client, current.last_seen_ms, now_ms);
            *current = session;
            return;
        }
        while self.by_client.len() >= max_sessions.max(1) {
            let Some(&(_, oldest)) = self.by_age.get_min() else {
                break;
            };
            self.remove(oldest);
        }
        self.by_age.insert((now_ms, client));
        self.by_client.insert(client, session);
    }

    /// Evicts the oldest sessions (by `(last_seen_ms, client)`, the same order on every
    /// replica) until at most `max_sessions` remain.
    pub(crate) fn evict_to(&mut self, max_sessions: usize) {
        while self.by_client.len() > max_sessions.max(1) {
            let Some(&(_, oldest)) = self.by_age.get_min() else {
                break;
            };
            self.remove(oldest);
        }
    }

    /// Inserts or replaces a session (also used by snapshot restore).
    pub(crate) fn insert(&mut self, client: ClientId, session: Session) {
        self.remove(client);
        self.by_age.insert((session.last_seen_ms, client));
        self.by_client.insert(client, session);
    }

    /// Panics unless the age index mirrors the table exactly.
    pub(crate) fn assert_consistent(&self) {
        assert_eq!(
            self.by_client.len(),
            self.by_age.len(),
            "session age index size differs from the table"
        );
        for (client, session) in &self.by_client {
            assert_ne!(*client, ClientId::NONE, "client 0 must never own a session");
            assert!(
                self.by_age.contains(&(session.last_seen_ms, *client)),
                "session of {client:?} missing from the age index"
            );
        }
    }

    fn remove(&mut self, client: ClientId) {
        if let Some(old) = self.by_client.remove(&client) {
            self.by_age.remove(&(old.last_seen_ms, client));
        }
    }
}

/// Moves `client`'s entry in the age index from `from_ms` to `to_ms` (nothing to do when they
/// are equal). Panics if the entry is missing: the index no longer mirrors the table.
fn move_age(
    by_age: &mut imbl::OrdSet<(u64, ClientId)>,
    client: ClientId,
    from_ms: u64,
    to_ms: u64,
) {
    if from_ms == to_ms {
        return;
    }
    let moved = by_age.remove(&(from_ms, client));
    assert!(
        moved.is_some(),
        "session age index has no entry for {client:?} seen at {from_ms}"
    );
    by_age.insert((to_ms, client));
}
