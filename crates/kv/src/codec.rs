//! The low-level pieces of every binary format in this crate: a [`Sink`] that bytes are
//! written into (a buffer, or a hasher for [`crate::KvStateMachine::state_hash`]), and a
//! bounds-checked [`Reader`].
//!
//! Primitives (all formats are built from these):
//! - `u8`: one byte.
//! - `varint`: unsigned LEB128, at most 10 bytes; overlong or overflowing encodings are
//!   rejected.
//! - `i64`: zigzag, then varint (small negative deltas stay small).
//! - `u64 fixed`: 8 bytes little endian (used for `f64` bits, where varints would not help).
//! - `bytes`: varint length, then the bytes.
//! - `option<bytes>`: one byte `0` (absent) or `1` (present) followed by `bytes`.
//! - `list<T>`: varint count, then the items.
//!
//! Every length and count is compared with the bytes that remain *before* anything is
//! allocated, so a hostile length prefix cannot make us reserve gigabytes.

use bytes::Bytes;
use thiserror::Error;

/// Why a byte string is not a valid encoding.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The input ends before the field is complete.
    #[error("truncated input: {what} needs {needed} more bytes but only {remaining} remain")]
    Truncated {
        what: &'static str,
        needed: u64,
        remaining: usize,
    },
    /// The first byte names a format version this build does not understand.
    #[error("unsupported codec version {found} (this build reads version {supported}); upgrade the replica")]
    UnsupportedVersion { found: u8, supported: u8 },
    /// A tag byte (command, response or error kind) is unknown.
    #[error("unknown {what} tag {tag}")]
    UnknownTag { what: &'static str, tag: u8 },
    /// A varint is longer than 10 bytes or does not fit in 64 bits.
    #[error("varint for {what} overflows 64 bits")]
    VarintOverflow { what: &'static str },
    /// A field holds a value outside its domain (a flag byte that is not 0 or 1, ...).
    #[error("invalid {what}: {reason}")]
    Invalid {
        what: &'static str,
        reason: &'static str,
    },
    /// A pipeline inside a pipeline: refused on its tag, before anything under it is read, so
    /// a crafted input cannot make the decoder recurse deeply.
    #[error("a {what} inside a {what}")]
    NestedPipeline { what: &'static str },
    /// The input continues after a complete value: it was not produced by our encoder.
    #[error("{count} trailing bytes after a complete value")]
    TrailingBytes { count: usize },
}

/// Somewhere encoded bytes go. Implemented for `Vec<u8>` (encoding) and [`Fnv64`]
/// (hashing), so that the state hash is computed over exactly the snapshot encoding
/// without materialising it.
pub(crate) trait Sink {
    fn put_slice(&mut self, bytes: &[u8]);

    fn put_u8(&mut self, value: u8) {
        self.put_slice(&[value]);
    }

    fn put_varint(&mut self, mut value: u64) {
        let mut buf = [0u8; 10];
        let mut len = 0;
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                buf[len] = byte;
                len += 1;
                break;
            }
            buf[len] = byte | 0x80;
            len += 1;
        }
        self.put_slice(&buf[..len]);
    }

    fn put_i64(&mut self, value: i64) {
        // Zigzag: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ...
        self.put_varint(((value << 1) ^ (value >> 63)) as u64);
    }

    fn put_u64_fixed(&mut self, value: u64) {
        self.put_slice(&value.to_le_bytes());
    }

    fn put_bool(&mut self, value: bool) {
        self.put_u8(u8::from(value));
    }

    fn put_bytes(&mut self, bytes: &[u8]) {
        self.put_varint(bytes.len() as u64);
        self.put_slice(bytes);
    }

    fn put_opt_bytes(&mut self, bytes: Option<&Bytes>) {
        match bytes {
            None => self.put_u8(0),
            Some(bytes) => {
                self.put_u8(1);
                self.put_bytes(bytes);
            }
        }
    }
}

impl Sink for Vec<u8> {
    fn put_slice(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// 64-bit FNV-1a. Chosen for the state hash because it is tiny, has no dependency and, unlike
/// `std`'s `DefaultHasher`, is guaranteed stable across Rust versions and processes.
pub(crate) struct Fnv64(u64);

impl Fnv64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    pub(crate) fn new() -> Self {
        Fnv64(Self::OFFSET_BASIS)
    }

    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

impl Sink for Fnv64 {
    fn put_slice(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }
}

/// A cursor over untrusted bytes. Every accessor checks the remaining length first and
/// returns a [`DecodeError`] instead of panicking.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn take(&mut self, len: u64, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let remaining = self.remaining();
        // Compare as u64 so a huge length cannot wrap when converted to usize.
        if len > remaining as u64 {
            return Err(DecodeError::Truncated {
                what,
                needed: len,
                remaining,
            });
        }
        let len = len as usize;
        let slice = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(slice)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    pub(crate) fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid {
                what,
                reason: "boolean byte must be 0 or 1",
            }),
        }
    }

    pub(crate) fn varint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        for shift_index in 0..10u32 {
            let byte = self.u8(what)?;
            let payload = u64::from(byte & 0x7f);
            // The 10th byte may only contribute the single top bit.
            if shift_index == 9 && payload > 1 {
                return Err(DecodeError::VarintOverflow { what });
            }
            value |= payload << (7 * shift_index);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::VarintOverflow { what })
    }

    pub(crate) fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        let zigzag = self.varint(what)?;
        Ok(((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64))
    }

    pub(crate) fn u64_fixed(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let slice = self.take(8, what)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(slice);
        Ok(u64::from_le_bytes(array))
    }

    pub(crate) fn usize(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        usize::try_from(self.varint(what)?).map_err(|_| DecodeError::Invalid {
            what,
            reason: "does not fit in usize on this platform",
        })
    }

    pub(crate) fn bytes(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.varint(what)?;
        let slice = self.take(len, what)?;
        Ok(Bytes::copy_from_slice(slice))
    }

    /// A `bytes` field borrowed from the input (no copy).
    pub(crate) fn bytes_ref(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.varint(what)?;
        self.take(len, what)
    }

    pub(crate) fn opt_bytes(&mut self, what: &'static str) -> Result<Option<Bytes>, DecodeError> {
        match self.u8(what)? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes(what)?)),
            _ => Err(DecodeError::Invalid {
                what,
                reason: "option flag must be 0 or 1",
            }),
        }
    }

    /// Reads a list count. `min_item_bytes` is the smallest encoding of one item; the count is
    /// rejected unless that many items could fit in the remaining input, so the caller can
    /// `Vec::with_capacity(count)` safely.
    pub(crate) fn count(
        &mut self,
        what: &'static str,
        min_item_bytes: u64,
    ) -> Result<usize, DecodeError> {
        let count = self.varint(what)?;
        let needed = count.saturating_mul(min_item_bytes.max(1));
        let remaining = self.remaining();
        if needed > remaining as u64 {
            return Err(DecodeError::Truncated {
                what,
                needed,
                remaining,
            });
        }
        // `count <= remaining`, which is a usize.
        Ok(count as usize)
    }

    /// Fails unless the whole input has been consumed.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { count }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trips_edges() {
        for value in [
            0,
            1,
            127,
            128,
            300,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut buf = Vec::new();
            buf.put_varint(value);
            let mut reader = Reader::new(&buf);
            assert_eq!(reader.varint("v"), Ok(value));
            assert_eq!(reader.finish(), Ok(()));
        }
    }

    #[test]
    fn zigzag_round_trips_edges() {
        for value in [0, 1, -1, i64::MIN, i64::MAX, 63, -64] {
            let mut buf = Vec::new();
            buf.put_i64(value);
            assert_eq!(Reader::new(&buf).i64("v"), Ok(value));
        }
    }

    #[test]
    fn varint_rejects_overflow_and_overlong() {
        let eleven = [0xffu8; 11];
        assert_eq!(
            Reader::new(&eleven).varint("v"),
            Err(DecodeError::VarintOverflow { what: "v" })
        );
        let mut ten = [0xffu8; 10];
        ten[9] = 0x02; // would be bit 64
        assert_eq!(
            Reader::new(&ten).varint("v"),
            Err(DecodeError::VarintOverflow { what: "v" })
        );
    }

    #[test]
    fn huge_length_prefix_is_rejected_before_allocating() {
        let mut buf = Vec::new();
        buf.put_varint(u64::MAX);
        assert!(matches!(
            Reader::new(&buf).bytes("value"),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            Reader::new(&buf).count("list", 1),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
