//! The connections of one front end as CLIENT INFO and CLIENT LIST show them: a
//! [`ClientRecord`] per connection, listed in the [`ClientRegistry`] while it is open.
//!
//! The registry holds at most `max_connections` records (a connection registers only while it
//! holds one of the connection limit's permits, and its [`Registration`] removes it when the
//! connection ends, however it ends), so it is bounded like the connections themselves.
//! Everything a record shows is bounded too: client names by
//! [`crate::config::MAX_CLIENT_NAME_BYTES`], library names and versions by
//! [`crate::config::MAX_CLIENT_LIB_BYTES`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;

use crate::frame::Protocol;

/// What a client may change about its connection (CLIENT SETNAME, CLIENT SETINFO, HELLO).
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientState {
    pub name: Option<Bytes>,
    pub lib_name: Option<Bytes>,
    pub lib_ver: Option<Bytes>,
    pub protocol: Protocol,
}

/// One connection, as other connections' CLIENT LIST sees it. Shared by the connection's
/// session (and its copies in pipeline segments) and the registry.
#[derive(Debug)]
pub(crate) struct ClientRecord {
    /// CLIENT ID: small, local, increasing.
    pub id: u64,
    addr: String,
    laddr: String,
    /// The socket's file descriptor (-1 where there is none to show).
    fd: i64,
    created: Instant,
    /// When the last command started, in milliseconds after `created`: CLIENT LIST's `idle`.
    last_command_ms: AtomicU64,
    /// The last command, as an index into the command table (`usize::MAX`: none yet). An
    /// atomic rather than the state's lock because every command sets it.
    last_command: AtomicUsize,
    state: Mutex<ClientState>,
}

impl ClientRecord {
    pub fn new(id: u64, addr: String, laddr: String, fd: i64) -> Self {
        ClientRecord {
            id,
            addr,
            laddr,
            fd,
            created: Instant::now(),
            last_command_ms: AtomicU64::new(0),
            last_command: AtomicUsize::new(usize::MAX),
            state: Mutex::new(ClientState::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ClientState> {
        // Nothing panics while holding it; a poisoned lock still holds consistent fields.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the changeable fields.
    pub fn state(&self) -> ClientState {
        self.lock().clone()
    }

    pub fn update(&self, change: impl FnOnce(&mut ClientState)) {
        change(&mut self.lock());
    }

    /// Notes that command `command` (an index into the command table) starts now.
    pub fn touch(&self, command: usize) {
        let elapsed = u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_command_ms.store(elapsed, Ordering::Relaxed);
        self.last_command.store(command, Ordering::Relaxed);
    }

    /// One CLIENT LIST line (without its newline), with Redis 7.2's fields in Redis's order,
    /// so tools that split it into `key=value` pairs find what they look for. `command_name`
    /// names the command table's entries. Fields this front end does not track (buffers,
    /// memory, subscriptions: there are none) are shown as Redis shows an idle client's.
    pub fn info_line(&self, command_name: impl Fn(usize) -> Option<&'static str>) -> String {
        let state = self.state();
        let text = |value: &Option<Bytes>| {
            // Validated printable ASCII without spaces when set, so the line stays parseable.
            value
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned()
        };
        let age = self.created.elapsed().as_secs();
        let last_ms = self.last_command_ms.load(Ordering::Relaxed);
        let idle = age.saturating_sub(last_ms / 1000);
        let command = command_name(self.last_command.load(Ordering::Relaxed)).unwrap_or("NULL");
        let mut line = String::new();
        let _ = write!(
            line,
            "id={} addr={} laddr={} fd={} name={} age={age} idle={idle} flags=N db=0 sub=0 \
             psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 \
             obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={command} user=default redir=-1 \
             resp={} lib-name={} lib-ver={}",
            self.id,
            self.addr,
            self.laddr,
            self.fd,
            text(&state.name),
            state.protocol.version(),
            text(&state.lib_name),
            text(&state.lib_ver),
        );
        line
    }
}

/// The open connections of one front end, by id (so CLIENT LIST shows them oldest first, as
/// Redis does). Bounded: see the module docs.
#[derive(Debug)]
pub(crate) struct ClientRegistry {
    limit: usize,
    records: Mutex<BTreeMap<u64, Arc<ClientRecord>>>,
}

impl ClientRegistry {
    pub fn new(limit: usize) -> Self {
        ClientRegistry {
            limit,
            records: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<ClientRecord>>> {
        // Nothing panics while holding it.
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lists `record` until the returned registration is dropped. Past the limit (which the
    /// connection limit keeps it from reaching) the record is simply not listed.
    pub fn register(&self, record: Arc<ClientRecord>) -> Registration<'_> {
        let id = record.id;
        let mut records = self.lock();
        if records.len() < self.limit {
            records.insert(id, record);
        }
        Registration { registry: self, id }
    }

    /// Every listed record, oldest first. Copies the `Arc`s so the lock is not held while
    /// the caller renders them.
    pub fn all(&self) -> Vec<Arc<ClientRecord>> {
        self.lock().values().cloned().collect()
    }

    pub fn get(&self, id: u64) -> Option<Arc<ClientRecord>> {
        self.lock().get(&id).cloned()
    }
}

/// Removes its record from the registry when dropped (the connection's end, a panic or the
/// connection task being aborted alike).
pub(crate) struct Registration<'a> {
    registry: &'a ClientRegistry,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64) -> Arc<ClientRecord> {
        Arc::new(ClientRecord::new(
            id,
            "127.0.0.1:5000".into(),
            "127.0.0.1:6379".into(),
            7,
        ))
    }

    #[test]
    fn registry_is_bounded_and_forgets_closed_connections() {
        let registry = ClientRegistry::new(2);
        let first = registry.register(record(1));
        let second = registry.register(record(2));
        let third = registry.register(record(3));
        let ids: Vec<u64> = registry.all().iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![1, 2], "past the limit a record is not listed");
        drop(third);
        drop(first);
        let ids: Vec<u64> = registry.all().iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![2]);
        assert!(registry.get(1).is_none());
        assert_eq!(registry.get(2).map(|r| r.id), Some(2));
        drop(second);
        assert!(registry.all().is_empty());
    }

    #[test]
    fn info_line_shows_what_the_client_set() {
        let record = record(9);
        let names = |index: usize| (index == 4).then_some("ping");
        let line = record.info_line(names);
        assert!(
            line.starts_with("id=9 addr=127.0.0.1:5000 laddr=127.0.0.1:6379 fd=7 name= age="),
            "{line}"
        );
        assert!(line.contains(" cmd=NULL "), "{line}");
        assert!(line.ends_with(" resp=2 lib-name= lib-ver="), "{line}");
        record.update(|state| {
            state.name = Some(Bytes::from_static(b"worker"));
            state.lib_name = Some(Bytes::from_static(b"redis-py"));
            state.lib_ver = Some(Bytes::from_static(b"8.1.0"));
            state.protocol = Protocol::Resp3;
        });
        record.touch(4);
        let line = record.info_line(names);
        assert!(line.contains(" name=worker age="), "{line}");
        assert!(line.contains(" idle=0 "), "{line}");
        assert!(line.contains(" cmd=ping "), "{line}");
        assert!(
            line.ends_with(" resp=3 lib-name=redis-py lib-ver=8.1.0"),
            "{line}"
        );
        assert!(!line.contains('\n') && !line.contains('\r'));
    }
}
