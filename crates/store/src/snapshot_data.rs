//! A region snapshot's data as the store writes it: the region's descriptor at the
//! snapshot's index, then the state machine's bytes.
//!
//! ```text
//! data := "RKVREGN1" len:u32le descriptor(len bytes) state-machine-bytes
//!       | "RKVREGN2" len:u32le descriptor(len bytes) frozen:u8 [merge-state(40 bytes)]
//!         absorbed:u32le region-id:u64le*absorbed state-machine-bytes
//! ```
//! The second form is for a region touched by merges: frozen by one at the snapshot's index
//! (its [`MergeState`]; a replica that catches up by this snapshot must stay frozen), and
//! the regions it absorbed (a source replica left behind on a lagging store learns from them
//! that it is dead, see `crate::merge`).
//! The descriptor travels with the snapshot because a replica that installs one may have
//! missed the entries that reshaped the region (a split in the compacted part of the log),
//! and a replica created from a message has no descriptor at all until its first snapshot.
//! Data without the magic is a snapshot written before the descriptor was added: only state
//! machine bytes.

use crate::merge::MergeState;
use crate::region::{Region, RegionId};
use types::DecodeError;

const MAGIC: &[u8; 8] = b"RKVREGN1";
const MAGIC_MERGING: &[u8; 8] = b"RKVREGN2";

/// What a snapshot carries besides the state machine's bytes.
pub(crate) struct Carried<'a> {
    /// None for data from before the descriptor was added.
    pub(crate) region: Option<Region>,
    pub(crate) merging: Option<MergeState>,
    pub(crate) absorbed: Vec<RegionId>,
    pub(crate) sm_data: &'a [u8],
}

/// The bytes that go before the state machine's in a snapshot of `region`.
pub(crate) fn header(
    region: &Region,
    merging: Option<&MergeState>,
    absorbed: &[RegionId],
) -> Vec<u8> {
    let desc = region.encode();
    let merges = merging.is_some() || !absorbed.is_empty();
    let mut h = Vec::with_capacity(12 + desc.len() + 45 + 8 * absorbed.len());
    h.extend_from_slice(if merges { MAGIC_MERGING } else { MAGIC });
    h.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    h.extend_from_slice(&desc);
    if merges {
        h.push(merging.is_some() as u8);
        if let Some(m) = merging {
            h.extend_from_slice(&m.encode());
        }
        h.extend_from_slice(&(absorbed.len() as u32).to_le_bytes());
        for r in absorbed {
            h.extend_from_slice(&r.0.to_le_bytes());
        }
    }
    h
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
    if rest.len() < n {
        return Err(DecodeError::Truncated {
            needed: n,
            left: rest.len(),
        });
    }
    let (a, b) = rest.split_at(n);
    *rest = b;
    Ok(a)
}

/// Splits snapshot data into what it carries and the state machine's bytes.
pub(crate) fn parse(data: &[u8]) -> Result<Carried<'_>, DecodeError> {
    let (rest, frozen) = if let Some(rest) = data.strip_prefix(MAGIC.as_slice()) {
        (rest, false)
    } else if let Some(rest) = data.strip_prefix(MAGIC_MERGING.as_slice()) {
        (rest, true)
    } else {
        return Ok(Carried {
            region: None,
            merging: None,
            absorbed: Vec::new(),
            sm_data: data,
        });
    };
    if rest.len() < 4 {
        return Err(DecodeError::Truncated {
            needed: 4,
            left: rest.len(),
        });
    }
    let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
    let rest = &rest[4..];
    if rest.len() < len {
        return Err(DecodeError::Truncated {
            needed: len,
            left: rest.len(),
        });
    }
    let region = Region::decode(&rest[..len])?;
    let mut rest = &rest[len..];
    let mut merging = None;
    let mut absorbed = Vec::new();
    if frozen {
        let flag = take(&mut rest, 1)?[0];
        if flag == 1 {
            merging = Some(MergeState::decode(take(
                &mut rest,
                MergeState::ENCODED_LEN,
            )?));
        }
        let n = u32::from_le_bytes(take(&mut rest, 4)?.try_into().expect("4 bytes")) as usize;
        let left = rest.len();
        let want = n.checked_mul(8).ok_or(DecodeError::Truncated {
            needed: usize::MAX,
            left,
        })?;
        let ids = take(&mut rest, want)?;
        absorbed = ids
            .chunks_exact(8)
            .map(|c| raft::GroupId(u64::from_le_bytes(c.try_into().expect("8 bytes"))))
            .collect();
    }
    Ok(Carried {
        region: Some(region),
        merging,
        absorbed,
        sm_data: rest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::StoreId;

    #[test]
    fn round_trip_and_legacy_and_truncation() {
        let r = Region::presplit(&[b"m".to_vec()], 1, &[StoreId(1), StoreId(2)])[1].clone();
        let m = MergeState {
            target: raft::GroupId(1),
            prepare_index: raft::LogIndex(9),
            prepare_term: raft::Term(3),
            target_epoch: crate::region::RegionEpoch {
                conf_version: 1,
                version: 4,
            },
        };
        for (merging, absorbed) in [
            (None, vec![]),
            (Some(m), vec![]),
            (None, vec![raft::GroupId(5), raft::GroupId(1 << 41)]),
            (Some(m), vec![raft::GroupId(6)]),
        ] {
            let mut data = header(&r, merging.as_ref(), &absorbed);
            data.extend_from_slice(b"\x01state");
            let c = parse(&data).unwrap();
            assert_eq!(
                (c.region, c.merging, c.absorbed, c.sm_data),
                (
                    Some(r.clone()),
                    merging,
                    absorbed.clone(),
                    &b"\x01state"[..]
                )
            );
            let h = header(&r, merging.as_ref(), &absorbed);
            for n in MAGIC.len()..h.len() {
                assert!(parse(&h[..n]).is_err(), "cut at {n}");
            }
        }
        let legacy = parse(b"\x01old").unwrap();
        assert_eq!((legacy.region, legacy.sm_data), (None, &b"\x01old"[..]));
    }
}
