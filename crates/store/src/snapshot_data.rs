//! A region snapshot's data as the store writes it: the region's descriptor at the
//! snapshot's index, then the state machine's bytes.
//!
//! ```text
//! data := "RKVREGN1" len:u32le descriptor(len bytes) state-machine-bytes
//! ```
//! The descriptor travels with the snapshot because a replica that installs one may have
//! missed the entries that reshaped the region (a split in the compacted part of the log),
//! and a replica created from a message has no descriptor at all until its first snapshot.
//! Data without the magic is a snapshot written before the descriptor was added: only state
//! machine bytes.

use crate::region::Region;
use types::DecodeError;

const MAGIC: &[u8; 8] = b"RKVREGN1";

/// The bytes that go before the state machine's in a snapshot of `region`.
pub(crate) fn header(region: &Region) -> Vec<u8> {
    let desc = region.encode();
    let mut h = Vec::with_capacity(12 + desc.len());
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    h.extend_from_slice(&desc);
    h
}

/// Splits snapshot data into the descriptor it carries (None for data from before the
/// descriptor was added) and the state machine's bytes.
pub(crate) fn parse(data: &[u8]) -> Result<(Option<Region>, &[u8]), DecodeError> {
    let Some(rest) = data.strip_prefix(MAGIC.as_slice()) else {
        return Ok((None, data));
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
    Ok((Some(region), &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::StoreId;

    #[test]
    fn round_trip_and_legacy_and_truncation() {
        let r = Region::presplit(&[b"m".to_vec()], 1, &[StoreId(1), StoreId(2)])[1].clone();
        let mut data = header(&r);
        data.extend_from_slice(b"\x01state");
        assert_eq!(parse(&data).unwrap(), (Some(r), &b"\x01state"[..]));
        assert_eq!(parse(b"\x01old").unwrap(), (None, &b"\x01old"[..]));
        let h = header(&Region::presplit(&[], 1, &[StoreId(1)])[0]);
        for n in MAGIC.len()..h.len() {
            assert!(parse(&h[..n]).is_err(), "cut at {n}");
        }
    }
}
