//! A store's identity, kept in its data directory: its store id and its cluster's id
//! (file `identity`, JSON, replaced atomically). Written at a store's first start (a
//! bootstrap store: its `--id` and the cluster id it bootstraps with; a joining store:
//! what placement gave it), checked at every start after: a data directory never serves
//! as another store or in another cluster.
//!
//! A joining store first keeps a random token (file `join-token`) and sends it with its
//! Join: a join retried after a crash or a lost answer gets the same id back.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

const IDENTITY_FILE: &str = "identity";
const TOKEN_FILE: &str = "join-token";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub store_id: u64,
    pub cluster_id: u64,
}

/// The identity kept in `dir`, if any; an unreadable or garbled file is an error (never
/// silently replaced: the store would take a new identity over old data).
pub fn load(dir: &Path) -> Result<Option<Identity>, String> {
    let p = dir.join(IDENTITY_FILE);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            format!(
                "{} is corrupt ({e}); it names this store and its cluster",
                p.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading {}: {e}", p.display())),
    }
}

/// Writes `id` durably (temporary file, fsync, rename, fsync of the directory).
pub fn save(dir: &Path, id: &Identity) -> Result<(), String> {
    write_atomic(
        dir,
        IDENTITY_FILE,
        &serde_json::to_vec(id).expect("serializing"),
    )
}

/// The join token kept in `dir`, created (durably) on first use.
pub fn join_token(dir: &Path) -> Result<u64, String> {
    let p = dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&p) {
        Ok(s) => s
            .trim()
            .parse()
            .map_err(|e| format!("{} is corrupt: {e}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = random_u64();
            write_atomic(dir, TOKEN_FILE, token.to_string().as_bytes())?;
            Ok(token)
        }
        Err(e) => Err(format!("reading {}: {e}", p.display())),
    }
}

/// 64 random bits from the standard library's randomly seeded hasher, the time and the
/// process id (a token only has to differ between joining stores).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish().max(1)
}

fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let tmp = dir.join(format!("{name}.tmp"));
    let fin = dir.join(name);
    let io = |e: std::io::Error| format!("writing {}: {e}", fin.display());
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &fin).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_token_survive_a_reopen_and_garbage_is_refused() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(load(d.path()).unwrap(), None);
        let id = Identity {
            store_id: 4,
            cluster_id: 99,
        };
        save(d.path(), &id).unwrap();
        assert_eq!(load(d.path()).unwrap(), Some(id));
        let t = join_token(d.path()).unwrap();
        assert_eq!(join_token(d.path()).unwrap(), t, "the token is kept");
        std::fs::write(d.path().join(IDENTITY_FILE), b"{nope").unwrap();
        assert!(load(d.path()).is_err());
    }
}
