//! On-disk format of segment files. All integers are little-endian.
//!
//! ```text
//! segment file  = segment header, record*
//! segment header (24 B) = magic "RKVLOG\0\x01" (8) | format version u32 | segment seq u64
//!                         | crc32c of the previous 20 bytes u32
//! record        = magic u32 (0x4C56_4B52, never zero) | payload_len u32 | crc32c u32
//!                 | payload (payload_len bytes)
//!                 where crc32c covers the payload_len bytes and then the payload
//! payload       = item*      (one record = one LogBatch, written atomically)
//! item          = type u8 | group id u64 | body_len u32 | body (body_len bytes)
//! body Append / Rewrite = first_index u64 | count u32 | (term u64 | data_len u32 | data)*
//! body PutState   = key_len u32 | key | value_len u32 | value
//! body DeleteState= key_len u32 | key
//! body CompactTo  = index u64
//! body CleanGroup = (empty)
//! ```
//! Every length is checked against the bytes that remain (in the file, the payload or the
//! item) before anything is allocated or sliced.

use bytes::Bytes;

use crate::batch::Op;
use crate::{GroupId, LogEntry};

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"RKVLOG\0\x01";
/// Version of this format, in every segment header.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the segment header.
pub const SEGMENT_HEADER_BYTES: usize = 24;
/// First field of every record; non-zero so that a zero-filled tail is never a record.
pub const RECORD_MAGIC: u32 = 0x4C56_4B52;
/// Size of a record header.
pub const RECORD_HEADER_BYTES: usize = 12;
/// The largest payload one record (one batch) may have. A length field above it is corrupt,
/// whatever the file size: this bounds what recovery ever allocates for one record.
pub const MAX_RECORD_PAYLOAD_BYTES: u32 = 128 << 20;
pub(crate) const ITEM_HEADER_BYTES: usize = 1 + 8 + 4;
pub(crate) const ENTRIES_HEADER_BYTES: usize = 8 + 4;
pub(crate) const ENTRY_HEADER_BYTES: usize = 8 + 4;

/// Item types; the numbers are part of the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum ItemType {
    Append = 1,
    PutState = 2,
    DeleteState = 3,
    CompactTo = 4,
    CleanGroup = 5,
    Rewrite = 6,
}

pub(crate) fn segment_header(seq: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&header[..20]);
    header[20..24].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Checks a segment header; returns why it is bad.
pub(crate) fn check_segment_header(data: &[u8], expected_seq: u64) -> Result<(), String> {
    if data.len() < SEGMENT_HEADER_BYTES {
        return Err(format!(
            "segment header needs {SEGMENT_HEADER_BYTES} bytes, file has {}",
            data.len()
        ));
    }
    if data[..8] != SEGMENT_MAGIC {
        return Err("not a raft-log segment (bad magic)".to_string());
    }
    let crc = read_u32(data, 20);
    if crc32c::crc32c(&data[..20]) != crc {
        return Err("segment header checksum mismatch".to_string());
    }
    let version = read_u32(data, 8);
    if version != FORMAT_VERSION {
        return Err(format!(
            "segment format version {version} is not supported (this build reads {FORMAT_VERSION})"
        ));
    }
    let seq = read_u64(data, 12);
    if seq != expected_seq {
        return Err(format!(
            "segment header says sequence {seq}, the file name says {expected_seq}"
        ));
    }
    Ok(())
}

pub(crate) fn write_record_header(record: &mut [u8], payload_len: u32) {
    let len_bytes = payload_len.to_le_bytes();
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&len_bytes),
        &record[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + payload_len as usize],
    );
    record[..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    record[4..8].copy_from_slice(&len_bytes);
    record[8..12].copy_from_slice(&crc.to_le_bytes());
}

pub(crate) fn read_u32(data: &[u8], at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&data[at..at + 4]);
    u32::from_le_bytes(bytes)
}

pub(crate) fn read_u64(data: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&data[at..at + 8]);
    u64::from_le_bytes(bytes)
}

/// Why a record could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadRecord {
    /// The record (or its header) extends past the end of the file: a write cut short.
    Truncated,
    /// Only zero bytes from here on: space the disk allocated but no record reached.
    ZeroTail,
    /// The record is complete and well framed but its checksum does not match.
    Checksum,
    /// Bad magic, impossible length: this is not something we wrote.
    Malformed,
}

/// The outcome of reading one record at an offset.
pub(crate) enum Parsed<'a> {
    /// A valid record; the next one starts at `next`.
    Record { payload: &'a [u8], next: usize },
    /// Clean end of file.
    End,
    /// A bad record.
    Bad { kind: BadRecord, reason: String },
}

/// Reads the record at `offset` of `data` (a whole segment file).
pub(crate) fn parse_record(data: &[u8], offset: usize) -> Parsed<'_> {
    let remaining = data.len() - offset;
    if remaining == 0 {
        return Parsed::End;
    }
    if data[offset..].iter().all(|byte| *byte == 0) {
        return Parsed::Bad {
            kind: BadRecord::ZeroTail,
            reason: format!("{remaining} zero bytes after the last record"),
        };
    }
    if remaining < RECORD_HEADER_BYTES {
        return Parsed::Bad {
            kind: BadRecord::Truncated,
            reason: format!(
                "record header needs {RECORD_HEADER_BYTES} bytes, only {remaining} remain"
            ),
        };
    }
    let magic = read_u32(data, offset);
    if magic != RECORD_MAGIC {
        return Parsed::Bad {
            kind: BadRecord::Malformed,
            reason: format!("bad record magic {magic:#010x} (expected {RECORD_MAGIC:#010x})"),
        };
    }
    let payload_len = read_u32(data, offset + 4);
    if payload_len > MAX_RECORD_PAYLOAD_BYTES {
        return Parsed::Bad {
            kind: BadRecord::Malformed,
            reason: format!(
                "record claims {payload_len} payload bytes, more than the maximum {MAX_RECORD_PAYLOAD_BYTES}"
            ),
        };
    }
    let payload_len = payload_len as usize;
    if payload_len > remaining - RECORD_HEADER_BYTES {
        return Parsed::Bad {
            kind: BadRecord::Truncated,
            reason: format!(
                "record claims {payload_len} payload bytes, only {} remain in the file",
                remaining - RECORD_HEADER_BYTES
            ),
        };
    }
    let start = offset + RECORD_HEADER_BYTES;
    let payload = &data[start..start + payload_len];
    let stored_crc = read_u32(data, offset + 8);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&data[offset + 4..offset + 8]), payload);
    if crc != stored_crc {
        return Parsed::Bad {
            kind: BadRecord::Checksum,
            reason: format!(
                "record checksum mismatch (stored {stored_crc:#010x}, computed {crc:#010x})"
            ),
        };
    }
    Parsed::Record {
        payload,
        next: start + payload_len,
    }
}

/// A bounds-checked reader over a byte slice.
struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], String> {
        let remaining = self.data.len() - self.at;
        if len > remaining {
            return Err(format!(
                "{what} needs {len} bytes at payload offset {}, only {remaining} remain",
                self.at
            ));
        }
        let slice = &self.data[self.at..self.at + len];
        self.at += len;
        Ok(slice)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(read_u32(self.take(4, what)?, 0))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(read_u64(self.take(8, what)?, 0))
    }

    fn is_empty(&self) -> bool {
        self.at == self.data.len()
    }
}

/// Decodes a record payload into its operations. Entry data is copied out of `payload`, so
/// memory held afterwards is exactly the live data (not whole records or files).
pub(crate) fn decode_payload(payload: &[u8]) -> Result<Vec<Op>, String> {
    let mut reader = Reader {
        data: payload,
        at: 0,
    };
    let mut ops = Vec::new();
    while !reader.is_empty() {
        let item_type = reader.u8("item type")?;
        let group = GroupId(reader.u64("group id")?);
        let body_len = reader.u32("item length")? as usize;
        let mut body = Reader {
            data: reader.take(body_len, "item body")?,
            at: 0,
        };
        let op = match item_type {
            t if t == ItemType::Append as u8 || t == ItemType::Rewrite as u8 => {
                let first_index = body.u64("first index")?;
                let count = body.u32("entry count")? as usize;
                // Each entry takes at least its header: bound the count before allocating.
                if count > body_len / ENTRY_HEADER_BYTES {
                    return Err(format!("item claims {count} entries in {body_len} bytes"));
                }
                let mut entries = Vec::with_capacity(count);
                for position in 0..count {
                    let term = body.u64("entry term")?;
                    let data_len = body.u32("entry length")? as usize;
                    let data = Bytes::copy_from_slice(body.take(data_len, "entry data")?);
                    let index = first_index.checked_add(position as u64).ok_or_else(|| {
                        format!("entry index overflows: first {first_index} + {position}")
                    })?;
                    entries.push(LogEntry { index, term, data });
                }
                if t == ItemType::Append as u8 {
                    Op::Append { group, entries }
                } else {
                    Op::Rewrite { group, entries }
                }
            }
            t if t == ItemType::PutState as u8 => {
                let key_len = body.u32("key length")? as usize;
                let key = Bytes::copy_from_slice(body.take(key_len, "key")?);
                let value_len = body.u32("value length")? as usize;
                let value = Bytes::copy_from_slice(body.take(value_len, "value")?);
                Op::PutState { group, key, value }
            }
            t if t == ItemType::DeleteState as u8 => {
                let key_len = body.u32("key length")? as usize;
                let key = Bytes::copy_from_slice(body.take(key_len, "key")?);
                Op::DeleteState { group, key }
            }
            t if t == ItemType::CompactTo as u8 => Op::CompactTo {
                group,
                index: body.u64("compact index")?,
            },
            t if t == ItemType::CleanGroup as u8 => Op::CleanGroup { group },
            other => return Err(format!("unknown item type {other}")),
        };
        if !body.is_empty() {
            return Err(format!(
                "item of type {item_type} has {} unexplained trailing bytes",
                body.data.len() - body.at
            ));
        }
        ops.push(op);
    }
    Ok(ops)
}

/// What lies after a damaged record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterDamage {
    /// No valid record: the damage can be a torn last write.
    NothingValid,
    /// A valid record starts at this offset: the damage is not a torn write.
    ValidRecordAt(usize),
    /// Too many candidates to check (only hostile data gets here); treat as damage.
    Undecided,
}

/// Looks for a valid record (magic, sane length, matching checksum) starting after `from`. A
/// damaged record followed by a valid one is not a torn tail: a crash can only cut the last
/// write short. The bytes checksummed are bounded (data full of fake headers would otherwise
/// make this quadratic).
pub(crate) fn find_valid_record_after(data: &[u8], from: usize) -> AfterDamage {
    let magic = RECORD_MAGIC.to_le_bytes();
    let mut budget_bytes = 4 * data.len() + (1 << 20);
    let mut at = from;
    while at + RECORD_HEADER_BYTES <= data.len() {
        let Some(found) = data[at..].windows(4).position(|window| window == magic) else {
            return AfterDamage::NothingValid;
        };
        let position = at + found;
        if position + RECORD_HEADER_BYTES > data.len() {
            return AfterDamage::NothingValid;
        }
        let claimed = read_u32(data, position + 4) as usize;
        budget_bytes = match budget_bytes.checked_sub(claimed.min(data.len())) {
            Some(left) => left,
            None => return AfterDamage::Undecided,
        };
        if let Parsed::Record { .. } = parse_record(data, position) {
            return AfterDamage::ValidRecordAt(position);
        }
        at = position + 1;
    }
    AfterDamage::NothingValid
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::LogBatch;

    fn record(batch: &LogBatch) -> Vec<u8> {
        let mut out = Vec::new();
        batch.encode_record(&mut out);
        out
    }

    #[test]
    fn record_roundtrip() {
        let mut batch = LogBatch::new();
        let entries = vec![
            LogEntry {
                index: 7,
                term: 2,
                data: Bytes::from_static(b"seven"),
            },
            LogEntry {
                index: 8,
                term: 3,
                data: Bytes::new(),
            },
        ];
        batch.append(GroupId(4), entries.clone()).expect("append");
        batch.put_state(GroupId(4), b"k", b"v");
        batch.delete_state(GroupId(5), b"k");
        batch.compact_to(GroupId(4), 7);
        batch.clean_group(GroupId(6));
        let bytes = record(&batch);
        assert_eq!(bytes.len(), batch.encoded_len());
        let Parsed::Record { payload, next } = parse_record(&bytes, 0) else {
            panic!("valid record not parsed");
        };
        assert_eq!(next, bytes.len());
        let ops = decode_payload(payload).expect("decode");
        assert_eq!(ops, batch.ops);
    }

    #[test]
    fn every_truncation_of_a_record_is_reported_as_truncated() {
        let mut batch = LogBatch::new();
        batch.put_state(GroupId(1), b"key", b"value");
        let bytes = record(&batch);
        for len in 1..bytes.len() {
            match parse_record(&bytes[..len], 0) {
                Parsed::Bad {
                    kind: BadRecord::Truncated,
                    ..
                } => {}
                Parsed::Bad { kind, reason } => panic!("cut at {len}: {kind:?} {reason}"),
                _ => panic!("cut at {len}: accepted"),
            }
        }
    }

    #[test]
    fn zero_tail_and_bad_magic_are_told_apart() {
        assert!(matches!(
            parse_record(&[0u8; 40], 0),
            Parsed::Bad {
                kind: BadRecord::ZeroTail,
                ..
            }
        ));
        let mut garbage = vec![0u8; 40];
        garbage[30] = 1;
        assert!(matches!(
            parse_record(&garbage, 0),
            Parsed::Bad {
                kind: BadRecord::Malformed,
                ..
            }
        ));
    }

    #[test]
    fn decoding_checks_every_inner_length_before_allocating() {
        // An Append item claiming 2^32-1 entries in a 12-byte body.
        let mut payload = vec![ItemType::Append as u8];
        payload.extend_from_slice(&1u64.to_le_bytes());
        payload.extend_from_slice(&12u32.to_le_bytes());
        payload.extend_from_slice(&1u64.to_le_bytes());
        payload.extend_from_slice(&u32::MAX.to_le_bytes());
        let error = decode_payload(&payload).expect_err("impossible count");
        assert!(error.contains("entries"), "{error}");
        // An item body longer than the payload.
        let mut payload = vec![ItemType::PutState as u8];
        payload.extend_from_slice(&1u64.to_le_bytes());
        payload.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_payload(&payload)
            .expect_err("long body")
            .contains("item body"));
        // A key length past the body.
        let mut payload = vec![ItemType::DeleteState as u8];
        payload.extend_from_slice(&1u64.to_le_bytes());
        payload.extend_from_slice(&4u32.to_le_bytes());
        payload.extend_from_slice(&1000u32.to_le_bytes());
        assert!(decode_payload(&payload)
            .expect_err("long key")
            .contains("key"));
        // Unknown item type.
        let mut payload = vec![99u8];
        payload.extend_from_slice(&1u64.to_le_bytes());
        payload.extend_from_slice(&0u32.to_le_bytes());
        assert!(decode_payload(&payload)
            .expect_err("type")
            .contains("unknown"));
    }

    #[test]
    fn valid_record_is_found_after_damage() {
        let mut batch = LogBatch::new();
        batch.put_state(GroupId(1), b"key", b"value");
        let one = record(&batch);
        let mut data = one.clone();
        data.extend_from_slice(&one);
        data[20] ^= 1;
        assert!(matches!(
            parse_record(&data, 0),
            Parsed::Bad {
                kind: BadRecord::Checksum,
                ..
            }
        ));
        assert_eq!(
            find_valid_record_after(&data, 1),
            AfterDamage::ValidRecordAt(one.len())
        );
        assert_eq!(
            find_valid_record_after(&data[..one.len() + 5], 1),
            AfterDamage::NothingValid
        );
    }

    #[test]
    fn scanning_fake_headers_is_bounded() {
        // Every 12 bytes a fake header claiming most of the file: without a budget this
        // would checksum ~n^2/24 bytes.
        let mut data = Vec::new();
        while data.len() < (4 << 20) {
            data.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
            data.extend_from_slice(&(3u32 << 20).to_le_bytes());
            data.extend_from_slice(&0u32.to_le_bytes());
        }
        assert_eq!(find_valid_record_after(&data, 1), AfterDamage::Undecided);
    }

    #[test]
    fn segment_header_checks() {
        let header = segment_header(42);
        assert!(check_segment_header(&header, 42).is_ok());
        assert!(check_segment_header(&header, 43)
            .expect_err("seq")
            .contains("sequence"));
        let mut damaged = header;
        damaged[15] ^= 4;
        assert!(check_segment_header(&damaged, 42)
            .expect_err("crc")
            .contains("checksum"));
        assert!(check_segment_header(&header[..10], 42).is_err());
    }
}
