//! [`Connection`]: reads requests from and writes frames to one client socket, with a read
//! buffer for pipelined requests and an output buffer flushed when the client's pipeline is
//! drained, when a batch of pipelined commands has been answered, or when the buffer is
//! large: 100 pipelined commands cost one write, not 100.

use bytes::{Bytes, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::OUTPUT_FLUSH_BYTES;
use crate::frame::{parse_request, Frame, Protocol, ProtocolError, RequestLimits};

/// Initial read buffer size; it grows only as request bytes actually arrive.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Room made for one [`Connection::read_ready`].
const PIPELINE_READ_BYTES: usize = 16 * 1024;

/// Why reading a request failed.
#[derive(Debug, Error)]
pub enum ConnectionError {
    /// The client broke the protocol: answer `ERR Protocol error: ...` and close.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("connection reset by peer mid-request")]
    ClosedMidRequest,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One client socket with its buffers.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    input: BytesMut,
    output: Vec<u8>,
    /// How much of `output` is already written (see [`Connection::flush`]).
    written: usize,
    /// What queued frames are encoded in (see [`Connection::set_protocol`]).
    protocol: Protocol,
}

impl Connection {
    pub fn new(stream: TcpStream) -> Self {
        Connection {
            stream,
            input: BytesMut::with_capacity(READ_BUFFER_BYTES),
            output: Vec::new(),
            written: 0,
            protocol: Protocol::Resp2,
        }
    }

    /// Encodes the frames queued from now on in `protocol` (after HELLO or RESET, starting
    /// with their own reply, as Redis does).
    pub fn set_protocol(&mut self, protocol: Protocol) {
        self.protocol = protocol;
    }

    /// Reads the next request's arguments. `Ok(None)` when the client closed cleanly between
    /// requests. Pending replies are flushed before blocking on the socket, so a pipelining
    /// client gets all its answers in one write and a waiting client is never starved.
    ///
    /// Cancel safe: bytes already read stay in the buffer.
    pub async fn read_request(
        &mut self,
        limits: &RequestLimits,
    ) -> Result<Option<Vec<Bytes>>, ConnectionError> {
        loop {
            if let Some(arguments) = self.buffered_request(limits)? {
                return Ok(Some(arguments));
            }
            self.flush().await?;
            if self.stream.read_buf(&mut self.input).await? == 0 {
                return if self.input.is_empty() {
                    Ok(None)
                } else {
                    Err(ConnectionError::ClosedMidRequest)
                };
            }
        }
    }

    /// The next request if it has fully arrived already (a pipelined one), without touching
    /// the socket. `Ok(None)`: nothing complete in the buffer.
    pub fn buffered_request(
        &mut self,
        limits: &RequestLimits,
    ) -> Result<Option<Vec<Bytes>>, ConnectionError> {
        let Some(parsed) = parse_request(&self.input, limits)? else {
            return Ok(None);
        };
        let frozen = self.input.split_to(parsed.consumed).freeze();
        let arguments = match parsed.owned {
            Some(owned) => owned,
            None => parsed
                .ranges
                .into_iter()
                .map(|range| frozen.slice(range))
                .collect(),
        };
        Ok(Some(arguments))
    }

    /// Bytes read but not yet parsed into requests.
    pub fn buffered_bytes(&self) -> usize {
        self.input.len()
    }

    /// Reads whatever the socket holds right now, without waiting, into the input buffer
    /// (growing it by up to [`PIPELINE_READ_BYTES`]); the number of bytes read, 0 when none
    /// are waiting or the socket closed (the next [`Connection::read_request`] finds out).
    /// For a pipelining client: its requests beyond the first read's 4 KiB.
    pub fn read_ready(&mut self) -> usize {
        self.input.reserve(PIPELINE_READ_BYTES);
        self.stream.try_read_buf(&mut self.input).unwrap_or(0)
    }

    /// Queues a reply, encoded in the connection's protocol; flushes at once only if the
    /// output buffer is large.
    pub async fn queue(&mut self, frame: &Frame) -> std::io::Result<()> {
        frame.encode_with(self.protocol, &mut self.output);
        if self.output.len() >= OUTPUT_FLUSH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes all queued replies. Cancel safe: what was written is remembered, so a flush
    /// cut short (the connection's `select!`) resumes where it stopped instead of repeating.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        while self.written < self.output.len() {
            let n = self.stream.write(&self.output[self.written..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.written += n;
        }
        if !self.output.is_empty() {
            self.output.clear();
            self.written = 0;
            self.stream.flush().await?;
        }
        Ok(())
    }
}
