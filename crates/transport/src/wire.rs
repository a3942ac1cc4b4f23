//! The framing of a store-to-store TCP connection.
//!
//! ```text
//! connection := preface frame*
//! preface    := "RKVRAFT1" from_store:u64le            (16 bytes, sent once by the dialer)
//! frame      := len:u32le crc:u32le payload[len]        (crc = CRC-32C of payload)
//! payload    := (msg_len:u32le msg[msg_len])*           (msg: one `codec` message)
//! ```
//!
//! An empty payload is a keepalive. Traffic flows one way: the dialer writes frames, the
//! acceptor only reads; it closes its side after the dialer's end of input, once everything
//! read has been handed to the store (the snapshot sender waits for that close).
//!
//! Why not gRPC any more: the h2 stream cost three task hand-offs per direction, HPACK and
//! flow-control frames, and an extra copy per batch; on a 2-vCPU machine that was a
//! measurable part of a write's CPU and latency (docs/BENCHMARKS.md). The preface lets the
//! peer port keep serving gRPC (forwarded client requests) next to this protocol: the
//! acceptor peeks at the first bytes to tell them apart.
//!
//! Why a CRC on top of TCP: TCP's 16-bit checksum misses some corruption, and a flipped bit
//! in a Raft message (an index, a term) is worse than a lost message. A frame that fails its
//! check ends the connection; the sender reconnects and Raft retransmits.

use bytes::BufMut;
use raft::Message;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::codec;

/// The first bytes of a store-to-store connection.
pub const MAGIC: [u8; 8] = *b"RKVRAFT1";
/// Length of the preface: magic and the dialer's store id.
pub const PREFACE_LEN: usize = 16;
/// Length of a frame header: payload length and CRC.
pub const FRAME_HEADER_LEN: usize = 8;
/// Largest payload a reader accepts. Senders cut batches far below this (the transport's
/// `max_batch_bytes`); a larger length is a broken or hostile peer, refused before any
/// allocation.
pub const MAX_FRAME_BYTES: usize = 64 << 20;

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("connection does not start with the RaftKV transport preface")]
    BadPreface,
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_BYTES}")]
    TooLarge(usize),
    #[error("frame checksum mismatch: header says {expected:#010x}, payload has {actual:#010x}")]
    BadChecksum { expected: u32, actual: u32 },
    #[error("frame payload is cut inside a message at byte {0}")]
    Truncated(usize),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// The preface a dialer writes.
pub fn preface(from_store: u64) -> [u8; PREFACE_LEN] {
    let mut p = [0u8; PREFACE_LEN];
    p[..8].copy_from_slice(&MAGIC);
    p[8..].copy_from_slice(&from_store.to_le_bytes());
    p
}

/// Parses a preface; the dialer's store id.
pub fn parse_preface(p: &[u8; PREFACE_LEN]) -> Result<u64, FrameError> {
    if p[..8] != MAGIC {
        return Err(FrameError::BadPreface);
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&p[8..]);
    Ok(u64::from_le_bytes(id))
}

/// Builds one frame in place: messages are encoded straight into the output buffer, and the
/// header is filled in by [`FrameBuilder::finish`].
#[derive(Debug)]
pub struct FrameBuilder {
    buf: Vec<u8>,
    messages: usize,
}

impl Default for FrameBuilder {
    fn default() -> Self {
        FrameBuilder::new()
    }
}

impl FrameBuilder {
    pub fn new() -> FrameBuilder {
        let mut buf = Vec::with_capacity(64 << 10);
        buf.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
        FrameBuilder { buf, messages: 0 }
    }

    /// Starts a new, empty frame, keeping the buffer's capacity (up to a bound, so one huge
    /// snapshot batch does not pin its memory forever).
    pub fn clear(&mut self) {
        if self.buf.capacity() > 8 << 20 {
            self.buf = Vec::with_capacity(64 << 10);
        }
        self.buf.clear();
        self.buf.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
        self.messages = 0;
    }

    /// Appends one message.
    pub fn push(&mut self, m: &Message) {
        let at = self.buf.len();
        self.buf.put_u32_le(0);
        codec::encode_into(m, &mut self.buf);
        let len = u32::try_from(self.buf.len() - at - 4).expect("a message over 4 GiB");
        self.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
        self.messages += 1;
    }

    pub fn messages(&self) -> usize {
        self.messages
    }

    /// Payload bytes so far.
    pub fn payload_len(&self) -> usize {
        self.buf.len() - FRAME_HEADER_LEN
    }

    /// Fills in the header and returns the whole frame.
    pub fn finish(&mut self) -> &[u8] {
        let payload = &self.buf[FRAME_HEADER_LEN..];
        let len = u32::try_from(payload.len()).expect("a frame over 4 GiB");
        let crc = crc32c::crc32c(payload);
        self.buf[..4].copy_from_slice(&len.to_le_bytes());
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        &self.buf
    }
}

/// A keepalive frame: empty payload (whose CRC-32C is 0).
pub const KEEPALIVE: [u8; FRAME_HEADER_LEN] = [0; FRAME_HEADER_LEN];

/// Reads one frame's payload into `buf` (replacing its contents). `Ok(false)` on a clean
/// end of input before a new frame; an end of input inside a frame is an error.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<bool, FrameError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    // The first byte separately: EOF there is a clean close, anywhere else a broken one.
    match r.read(&mut header[..1]).await? {
        0 => return Ok(false),
        _ => r.read_exact(&mut header[1..]).await?,
    };
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let expected = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    // Read as the bytes arrive rather than allocating `len` up front: a peer that sends a
    // header and nothing else must not pin 64 MiB per connection.
    buf.clear();
    let got = (&mut *r).take(len as u64).read_to_end(buf).await?;
    if got != len {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    let actual = crc32c::crc32c(buf);
    if actual != expected {
        return Err(FrameError::BadChecksum { expected, actual });
    }
    Ok(true)
}

/// The messages of a payload, each still encoded. Stops at the first framing error (a
/// message length running past the payload), which the caller treats as a broken
/// connection: the CRC matched, so the sender itself is broken.
pub fn messages(payload: &[u8]) -> impl Iterator<Item = Result<&[u8], FrameError>> {
    let mut at = 0usize;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || at == payload.len() {
            return None;
        }
        let rest = &payload[at..];
        if rest.len() < 4 {
            failed = true;
            return Some(Err(FrameError::Truncated(at)));
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        if rest.len() - 4 < len {
            failed = true;
            return Some(Err(FrameError::Truncated(at)));
        }
        at += 4 + len;
        Some(Ok(&rest[4..4 + len]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::{GroupId, LogIndex, MessageBody, NodeId, Term};

    fn hb(i: u64) -> Message {
        Message {
            group: GroupId(i),
            from: NodeId(1),
            to: NodeId(2),
            term: Term(i),
            body: MessageBody::Heartbeat {
                commit: LogIndex(i),
                read_context: None,
                lease_tick: i,
            },
        }
    }

    #[tokio::test]
    async fn frames_round_trip_and_corruption_is_refused() {
        let mut fb = FrameBuilder::new();
        for i in 0..5 {
            fb.push(&hb(i));
        }
        assert_eq!(fb.messages(), 5);
        let frame = fb.finish().to_vec();
        let mut stream = frame.clone();
        stream.extend_from_slice(&KEEPALIVE);
        let mut r = &stream[..];
        let mut buf = Vec::new();
        assert!(read_frame(&mut r, &mut buf).await.unwrap());
        let got: Vec<Message> = messages(&buf)
            .map(|m| codec::decode(m.unwrap()).unwrap())
            .collect();
        assert_eq!(got, (0..5).map(hb).collect::<Vec<_>>());
        assert!(read_frame(&mut r, &mut buf).await.unwrap(), "keepalive");
        assert!(buf.is_empty());
        assert!(!read_frame(&mut r, &mut buf).await.unwrap(), "clean EOF");

        // Every single-bit flip in the payload is caught by the CRC.
        for bit in 0..(frame.len() - FRAME_HEADER_LEN) * 8 {
            let mut bad = frame.clone();
            bad[FRAME_HEADER_LEN + bit / 8] ^= 1 << (bit % 8);
            let mut r = &bad[..];
            assert!(
                matches!(
                    read_frame(&mut r, &mut buf).await,
                    Err(FrameError::BadChecksum { .. })
                ),
                "bit {bit}"
            );
        }
        // A truncated frame is an error, not a clean end.
        let mut r = &frame[..frame.len() - 1];
        assert!(matches!(
            read_frame(&mut r, &mut buf).await,
            Err(FrameError::Io(_))
        ));
        // A huge length is refused before allocating.
        let mut huge = KEEPALIVE;
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut r = &huge[..];
        assert!(matches!(
            read_frame(&mut r, &mut buf).await,
            Err(FrameError::TooLarge(_))
        ));
    }

    #[test]
    fn message_lengths_past_the_payload_are_refused() {
        let mut payload = Vec::new();
        payload.put_u32_le(3);
        payload.extend_from_slice(b"abc");
        payload.put_u32_le(10);
        payload.extend_from_slice(b"short");
        let got: Vec<_> = messages(&payload).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].as_ref().unwrap(), b"abc");
        assert!(matches!(got[1], Err(FrameError::Truncated(7))));
    }

    #[test]
    fn preface_round_trips_and_rejects_strangers() {
        assert_eq!(parse_preface(&preface(42)).unwrap(), 42);
        let mut h2 = [0u8; PREFACE_LEN];
        h2.copy_from_slice(b"PRI * HTTP/2.0\r\n");
        assert!(matches!(parse_preface(&h2), Err(FrameError::BadPreface)));
    }
}
