//! Changing one field of a big hash copies O(log n) of it, not the hash, even while a clone
//! (a snapshot's point-in-time view) shares it. Proven by counting the bytes this thread
//! allocates during the apply (a counting global allocator; deterministic, no timing), in a
//! test binary of its own so no other test's allocations are counted.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use common::b;
use kv::{
    ClientId, Command, KvStateMachine, Limits, RegionRange, Request, Response, Sequence,
    SessionPolicy,
};

struct Counting;

thread_local! {
    static ALLOCATED: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // `try_with`: the thread-local may be gone while a thread shuts down.
        let _ = ALLOCATED.try_with(|a| a.set(a.get() + layout.size() as u64));
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATED.try_with(|a| a.set(a.get() + new_size as u64));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocated() -> u64 {
    ALLOCATED.with(Cell::get)
}

const FIELDS: u32 = 100_000;

fn hset_one(field: &str, value: &str, sequence: u64) -> Request {
    Request {
        client_id: ClientId(1),
        sequence: Sequence(sequence),
        command: Command::HSet {
            key: b("big"),
            fields: vec![(b(field), b(value))],
            if_absent: false,
        },
        proposed_at_ms: 0,
    }
}

#[test]
fn hset_of_one_field_in_a_100k_field_hash_does_not_copy_the_hash() {
    let limits = Limits {
        max_batch_keys: FIELDS as usize,
        ..Limits::default()
    };
    let mut m = KvStateMachine::new(RegionRange::full(), limits, SessionPolicy::default());
    let fields: Vec<(Bytes, Bytes)> = (0..FIELDS)
        .map(|i| {
            (
                Bytes::from(format!("field{i:06}")),
                Bytes::from_static(b"value"),
            )
        })
        .collect();
    let load = Request {
        client_id: ClientId(1),
        sequence: Sequence(1),
        command: Command::HSet {
            key: b("big"),
            fields,
            if_absent: false,
        },
        proposed_at_ms: 0,
    };
    let before = allocated();
    assert_eq!(
        m.apply_request(1, &load).result,
        Ok(Response::Integer(i64::from(FIELDS)))
    );
    let loading = allocated() - before;

    // Unshared: the update happens in place.
    let request = hset_one("field050000", "changed", 2);
    let before = allocated();
    m.apply_request(2, &request).result.unwrap();
    let unshared = allocated() - before;

    // Shared with a clone (a snapshot in progress): only the path to the field is copied.
    let view = m.clone();
    let request = hset_one("field060000", "changed", 3);
    let before = allocated();
    m.apply_request(3, &request).result.unwrap();
    let shared = allocated() - before;

    // A copy of the map would allocate about what loading it did (megabytes); the path of a
    // B-tree of 100k fields is a handful of nodes (a few KiB each).
    assert!(
        loading > 2_000_000,
        "loading allocated only {loading} bytes"
    );
    assert!(
        unshared < 16 * 1024,
        "an unshared HSET allocated {unshared} bytes"
    );
    assert!(shared < 64 * 1024, "a shared HSET allocated {shared} bytes");
    assert!(
        shared * 20 < loading,
        "shared {shared} vs loading {loading}"
    );

    // And the clone still sees its point in time.
    let field = |m: &KvStateMachine, f: &str| match m.read(&Command::HGet {
        key: b("big"),
        fields: vec![b(f)],
    }) {
        Ok(Response::Values(values)) => values[0].clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(field(&view, "field060000"), Some(b("value")));
    assert_eq!(field(&m, "field060000"), Some(b("changed")));
    assert_eq!(field(&view, "field050000"), Some(b("changed")));
}
