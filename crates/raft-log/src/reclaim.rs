//! Freeing large amounts of memory off the caller's thread.
//!
//! Compacting a region's log after a snapshot drops every entry up to the snapshot: under a
//! bulk load, 10^5 entries, each its own allocation. Dropping them inside the engine write
//! that commits the snapshot took the store thread 1–44 ms (docs/BENCHMARKS.md), which every
//! region of the store waited through. [`drop_elsewhere`] hands such a value to one
//! background thread, started on first use, that drops it.

use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock};

/// Values waiting to be dropped; past this the caller drops its value itself (bounded memory
/// held by the queue, and the caller slows down instead of memory growing).
const MAX_QUEUED: usize = 64;

type Garbage = Box<dyn Send>;

fn sender() -> Option<&'static Mutex<SyncSender<Garbage>>> {
    static SENDER: OnceLock<Option<Mutex<SyncSender<Garbage>>>> = OnceLock::new();
    SENDER
        .get_or_init(|| {
            let (tx, rx) = sync_channel::<Garbage>(MAX_QUEUED);
            std::thread::Builder::new()
                .name("raftkv-reclaim".into())
                .spawn(move || {
                    while let Ok(garbage) = rx.recv() {
                        drop(garbage);
                    }
                })
                .ok()
                .map(|_| Mutex::new(tx))
        })
        .as_ref()
}

/// Drops `value` on the reclaim thread, or here when its queue is full or the thread could
/// not be started.
pub(crate) fn drop_elsewhere<T: Send + 'static>(value: T) {
    let Some(tx) = sender() else {
        return drop(value);
    };
    let tx = tx.lock().unwrap_or_else(|e| e.into_inner());
    match tx.try_send(Box::new(value)) {
        Ok(()) => {}
        Err(TrySendError::Full(garbage)) | Err(TrySendError::Disconnected(garbage)) => {
            drop(tx);
            drop(garbage);
        }
    }
}
