//! The framing of a store-to-store TCP connection.
//!
//! ```text
//! connection := preface frame*
//! preface    := "RKVRAFT2" from_store:u64le cluster_id:u64le
//!                                                       (24 bytes, sent once by the dialer)
//! frame      := len:u32le crc:u32le payload[len]        (crc = CRC-32C of payload)
//! payload    := (msg_len:u32le msg[msg_len])*           (msg: one `codec` message)
//! ```
//!
//! `cluster_id` keeps a store out of the wrong cluster: the acceptor refuses (closes at
//! once, delivering nothing) a connection whose cluster id differs from its own. 0 means
//! "unknown" on either side and is accepted. The first version's preface,
//! `"RKVRAFT1" from_store:u64le` (16 bytes, no cluster id), is still recognised, only to be
//! refused with a log naming the old version ([`FrameError::OldVersion`]) rather than
//! handed on as another protocol.
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
pub const MAGIC: [u8; MAGIC_LEN] = *b"RKVRAFT2";
/// The magic of the first version's preface (`"RKVRAFT1" from_store:u64le`, no cluster
/// id). Recognised only to refuse such connections with a clear reason.
pub const MAGIC_V1: [u8; MAGIC_LEN] = *b"RKVRAFT1";
/// Length of the magic that opens a preface (of either version).
pub const MAGIC_LEN: usize = 8;
/// Length of the preface: magic, the dialer's store id and its cluster id.
pub const PREFACE_LEN: usize = 24;
/// Length of the first version's preface: magic and the dialer's store id.
pub const PREFACE_V1_LEN: usize = 16;
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
    /// The dialer sent the first version's preface (`RKVRAFT1`, without a cluster id): it
    /// runs an older RaftKV version, and is refused since its cluster cannot be checked.
    #[error("store {from_store} sent the old transport preface RKVRAFT1 (no cluster id): it runs an older RaftKV version")]
    OldVersion { from_store: u64 },
    /// The dialer's cluster id differs from the acceptor's (both non-zero).
    #[error("store {from_store} belongs to cluster {theirs}, this store to cluster {ours}")]
    WrongCluster {
        from_store: u64,
        theirs: u64,
        ours: u64,
    },
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_BYTES}")]
    TooLarge(usize),
    #[error("frame checksum mismatch: header says {expected:#010x}, payload has {actual:#010x}")]
    BadChecksum { expected: u32, actual: u32 },
    #[error("frame payload is cut inside a message at byte {0}")]
    Truncated(usize),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// What a dialer's preface says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preface {
    /// The dialing store.
    pub from_store: u64,
    /// The dialer's cluster id; 0 = unknown.
    pub cluster_id: u64,
}

/// The preface a dialer writes: store `from_store` of cluster `cluster_id` (0 = unknown).
pub fn preface(from_store: u64, cluster_id: u64) -> [u8; PREFACE_LEN] {
    let mut p = [0u8; PREFACE_LEN];
    p[..8].copy_from_slice(&MAGIC);
    p[8..16].copy_from_slice(&from_store.to_le_bytes());
    p[16..].copy_from_slice(&cluster_id.to_le_bytes());
    p
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Parses a preface. One that starts with the first version's magic is refused as
/// [`FrameError::OldVersion`] (naming the store from its bytes 8..16); anything else that
/// does not start with [`MAGIC`] as [`FrameError::BadPreface`].
pub fn parse_preface(p: &[u8; PREFACE_LEN]) -> Result<Preface, FrameError> {
    if p[..MAGIC_LEN] == MAGIC_V1 {
        return Err(FrameError::OldVersion {
            from_store: u64_at(p, 8),
        });
    }
    if p[..MAGIC_LEN] != MAGIC {
        return Err(FrameError::BadPreface);
    }
    Ok(Preface {
        from_store: u64_at(p, 8),
        cluster_id: u64_at(p, 16),
    })
}

/// Whether `first`, the first bytes of a connection (at most [`MAGIC_LEN`] of them), are
/// the start of a preface of either version: what the acceptor checks to tell
/// store-to-store connections from others.
pub fn is_magic_prefix(first: &[u8]) -> bool {
    first.len() <= MAGIC_LEN && (MAGIC.starts_with(first) || MAGIC_V1.starts_with(first))
}

/// Reads a preface from the start of a connection. Reads the magic first and then only as
/// many bytes as its version's preface has, so a dialer of the first version (16 bytes)
/// is refused at once as [`FrameError::OldVersion`] instead of being waited on for 24.
pub async fn read_preface<R: AsyncRead + Unpin>(r: &mut R) -> Result<Preface, FrameError> {
    let mut p = [0u8; PREFACE_LEN];
    r.read_exact(&mut p[..MAGIC_LEN]).await?;
    if p[..MAGIC_LEN] == MAGIC_V1 {
        r.read_exact(&mut p[MAGIC_LEN..PREFACE_V1_LEN]).await?;
    } else if p[..MAGIC_LEN] == MAGIC {
        r.read_exact(&mut p[MAGIC_LEN..]).await?;
    }
    parse_preface(&p)
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
        let p = preface(42, 0xDEAD_BEEF_0000_0007);
        assert_eq!(p.len(), 24);
        assert_eq!(&p[..8], b"RKVRAFT2");
        assert_eq!(
            parse_preface(&p).unwrap(),
            Preface {
                from_store: 42,
                cluster_id: 0xDEAD_BEEF_0000_0007
            }
        );
        assert_eq!(
            parse_preface(&preface(u64::MAX, 0)).unwrap(),
            Preface {
                from_store: u64::MAX,
                cluster_id: 0
            }
        );
        let mut h2 = [0u8; PREFACE_LEN];
        h2.copy_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert!(matches!(parse_preface(&h2), Err(FrameError::BadPreface)));
        // The first version's preface names its store but is refused.
        let mut v1 = [0u8; PREFACE_LEN];
        v1[..8].copy_from_slice(b"RKVRAFT1");
        v1[8..16].copy_from_slice(&5u64.to_le_bytes());
        assert!(matches!(
            parse_preface(&v1),
            Err(FrameError::OldVersion { from_store: 5 })
        ));
    }

    #[test]
    fn magic_prefixes_of_both_versions_are_recognised() {
        assert!(is_magic_prefix(b""));
        assert!(is_magic_prefix(b"RKV"));
        assert!(is_magic_prefix(b"RKVRAFT"));
        assert!(is_magic_prefix(b"RKVRAFT2"));
        assert!(is_magic_prefix(b"RKVRAFT1"));
        assert!(!is_magic_prefix(b"RKVRAFT3"));
        assert!(!is_magic_prefix(b"PRI * HT"));
        assert!(!is_magic_prefix(b"RKVRAFT2+"), "longer than the magic");
    }

    #[tokio::test]
    async fn read_preface_reads_only_its_version_s_length() {
        // Version 2: 24 bytes, then the first frame follows untouched.
        let mut stream = preface(3, 77).to_vec();
        stream.extend_from_slice(&KEEPALIVE);
        let mut r = &stream[..];
        assert_eq!(
            read_preface(&mut r).await.unwrap(),
            Preface {
                from_store: 3,
                cluster_id: 77
            }
        );
        assert_eq!(r, &KEEPALIVE[..]);
        // Version 1: refused after its 16 bytes (no wait for 24 that may never come).
        let mut v1 = b"RKVRAFT1".to_vec();
        v1.extend_from_slice(&9u64.to_le_bytes());
        let mut r = &v1[..];
        assert!(matches!(
            read_preface(&mut r).await,
            Err(FrameError::OldVersion { from_store: 9 })
        ));
        // A stranger: refused after the magic.
        let mut r = &b"PRI * HTTP/2.0\r\n"[..];
        assert!(matches!(
            read_preface(&mut r).await,
            Err(FrameError::BadPreface)
        ));
        // Cut short: an i/o error, not a verdict.
        let p = preface(3, 77);
        let mut r = &p[..20];
        assert!(matches!(read_preface(&mut r).await, Err(FrameError::Io(_))));
    }
}
