//! RESP2 frames: the [`Frame`] type with its encoder and a general parser, and
//! [`parse_request`], the stricter parser for what a client may send (an array of bulk
//! strings, or an inline command line).
//!
//! Both parsers work on a byte slice that holds whatever has arrived so far and return
//! `Ok(None)` when more bytes are needed. Neither allocates in proportion to a length the peer
//! claims: lengths are checked against [`RequestLimits`] first, and element vectors grow only as
//! elements are actually parsed. Neither panics, whatever the input (see the proptest in
//! `tests/`).

use std::ops::Range;

use bytes::Bytes;
use thiserror::Error;

/// Longest inline command line (Redis `PROTO_INLINE_MAX_SIZE`).
pub const MAX_INLINE_BYTES: usize = 64 * 1024;
/// Longest `*<n>` / `$<n>` header line we wait for before calling it garbage. Redis uses the
/// same 64 KiB bound for any line.
const MAX_HEADER_LINE_BYTES: usize = MAX_INLINE_BYTES;
/// Deepest nesting the general [`Frame::parse`] accepts; requests are never nested, and a bound
/// keeps a hostile reply from overflowing the stack.
pub const MAX_FRAME_DEPTH: usize = 32;

/// One RESP2 value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `+text\r\n`
    Simple(String),
    /// `-text\r\n`
    Error(String),
    /// `:n\r\n`
    Integer(i64),
    /// `$len\r\nbytes\r\n`
    Bulk(Bytes),
    /// `$-1\r\n`
    Null,
    /// `*len\r\n` followed by the elements.
    Array(Vec<Frame>),
    /// `*-1\r\n`
    NullArray,
}

/// Why a byte stream is not valid RESP. The `Display` texts are Redis's own, so the server
/// sends `ERR Protocol error: <text>` exactly as Redis would.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    #[error("invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("invalid bulk length")]
    InvalidBulkLength,
    #[error("expected '$', got '{0}'")]
    ExpectedBulk(char),
    #[error("too big mbulk count string")]
    TooBigMultibulkCount,
    #[error("too big bulk count string")]
    TooBigBulkCount,
    #[error("too big inline request")]
    TooBigInline,
    #[error("unbalanced quotes in request")]
    UnbalancedQuotes,
    /// Not a Redis text: Redis closes such a client silently (query buffer limit). We say why.
    #[error("request exceeds the maximum of {max} bytes")]
    RequestTooLarge { max: usize },
    /// General-frame parser only (replies): an unknown type byte or a malformed line.
    #[error("invalid frame: {0}")]
    Invalid(&'static str),
}

impl Frame {
    /// A simple string from a static text (`+OK`).
    pub fn simple(text: &str) -> Frame {
        Frame::Simple(text.to_string())
    }

    /// An error reply; the text must start with the Redis error code (`ERR`, `NOAUTH`, ...).
    pub fn error(text: impl Into<String>) -> Frame {
        Frame::Error(text.into())
    }

    /// A bulk string copied from bytes.
    pub fn bulk(bytes: impl Into<Bytes>) -> Frame {
        Frame::Bulk(bytes.into())
    }

    /// Appends the wire encoding of `self` to `out`.
    ///
    /// Simple strings and errors cannot carry CR or LF on the wire; they are replaced by
    /// spaces (as Redis does for error texts) so a reply can never break framing.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Simple(text) => encode_line(out, b'+', text),
            Frame::Error(text) => encode_line(out, b'-', text),
            Frame::Integer(value) => {
                out.push(b':');
                out.extend_from_slice(value.to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Frame::Bulk(bytes) => {
                out.push(b'$');
                out.extend_from_slice(bytes.len().to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(bytes);
                out.extend_from_slice(b"\r\n");
            }
            Frame::Null => out.extend_from_slice(b"$-1\r\n"),
            Frame::Array(items) => {
                out.push(b'*');
                out.extend_from_slice(items.len().to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
                for item in items {
                    item.encode(out);
                }
            }
            Frame::NullArray => out.extend_from_slice(b"*-1\r\n"),
        }
    }

    /// Parses one frame of any type from the start of `input`. Returns the frame and the number
    /// of bytes it used, or `None` if `input` is an incomplete prefix. Used for replies (tests,
    /// clients); the server parses requests with [`parse_request`].
    pub fn parse(input: &[u8]) -> Result<Option<(Frame, usize)>, ProtocolError> {
        let mut position = 0;
        match parse_frame(input, &mut position, 0)? {
            Some(frame) => Ok(Some((frame, position))),
            None => Ok(None),
        }
    }
}

fn encode_line(out: &mut Vec<u8>, prefix: u8, text: &str) {
    out.push(prefix);
    out.extend(
        text.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

/// Finds the next CRLF-terminated line starting at `position`; returns the line (without CRLF)
/// and advances `position` past it. `None` = the line is not complete yet.
fn read_line<'a>(input: &'a [u8], position: &mut usize) -> Option<&'a [u8]> {
    let rest = input.get(*position..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    let line = &rest[..end];
    *position += end + 2;
    Some(line)
}

/// Parses a signed decimal as Redis's `string2ll` does: no sign-only, no leading `+`,
/// no leading zeros other than "0" itself, no spaces, within i64.
pub fn parse_i64(text: &[u8]) -> Option<i64> {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if digits.len() > 1 && digits[0] == b'0' {
        return None;
    }
    if text.starts_with(b"-") && digits == b"0" {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

fn parse_frame(
    input: &[u8],
    position: &mut usize,
    depth: usize,
) -> Result<Option<Frame>, ProtocolError> {
    if depth > MAX_FRAME_DEPTH {
        return Err(ProtocolError::Invalid("nesting too deep"));
    }
    let Some(&kind) = input.get(*position) else {
        return Ok(None);
    };
    *position += 1;
    let Some(line) = read_line(input, position) else {
        if input.len() - *position > MAX_HEADER_LINE_BYTES {
            return Err(ProtocolError::Invalid("line too long"));
        }
        return Ok(None);
    };
    let text = || {
        std::str::from_utf8(line)
            .map(str::to_string)
            .map_err(|_| ProtocolError::Invalid("line is not UTF-8"))
    };
    let frame = match kind {
        b'+' => Frame::Simple(text()?),
        b'-' => Frame::Error(text()?),
        b':' => Frame::Integer(parse_i64(line).ok_or(ProtocolError::Invalid("bad integer"))?),
        b'$' => {
            let length = parse_i64(line).ok_or(ProtocolError::InvalidBulkLength)?;
            if length == -1 {
                return Ok(Some(Frame::Null));
            }
            let length = usize::try_from(length).map_err(|_| ProtocolError::InvalidBulkLength)?;
            let start = *position;
            let Some(end) = start.checked_add(length) else {
                return Err(ProtocolError::InvalidBulkLength);
            };
            let Some(terminated) = end.checked_add(2) else {
                return Err(ProtocolError::InvalidBulkLength);
            };
            if input.len() < terminated {
                return Ok(None);
            }
            if &input[end..terminated] != b"\r\n" {
                return Err(ProtocolError::Invalid("bulk string not terminated by CRLF"));
            }
            *position = terminated;
            Frame::Bulk(Bytes::copy_from_slice(&input[start..end]))
        }
        b'*' => {
            let length = parse_i64(line).ok_or(ProtocolError::InvalidMultibulkLength)?;
            if length == -1 {
                return Ok(Some(Frame::NullArray));
            }
            let length =
                usize::try_from(length).map_err(|_| ProtocolError::InvalidMultibulkLength)?;
            // Grow as elements arrive: `length` is the peer's claim, not a fact.
            let mut items = Vec::new();
            for _ in 0..length {
                match parse_frame(input, position, depth + 1)? {
                    Some(item) => items.push(item),
                    None => return Ok(None),
                }
            }
            Frame::Array(items)
        }
        _ => return Err(ProtocolError::Invalid("unknown frame type byte")),
    };
    Ok(Some(frame))
}

/// Bounds applied while parsing a request, before anything is allocated for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Largest `$<len>` accepted.
    pub max_bulk_bytes: usize,
    /// Largest `*<len>` accepted.
    pub max_array_len: usize,
    /// Largest whole request (header lines plus all bulks).
    pub max_request_bytes: usize,
}

/// A complete request found at the start of the buffer: the byte ranges of its arguments and
/// how many bytes it used. Ranges (not copies) let the caller slice one frozen buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRequest {
    /// Argument ranges into the input. Inline arguments with escapes cannot be expressed as
    /// ranges; those arrive in `owned` instead and `ranges` is empty.
    pub ranges: Vec<Range<usize>>,
    /// Arguments of an inline command (unescaped copies).
    pub owned: Option<Vec<Bytes>>,
    /// Bytes consumed.
    pub consumed: usize,
}

/// Parses one client request: `*<n>\r\n` followed by `n` bulk strings, or an inline command
/// (any line not starting with `*`). Returns `Ok(None)` while incomplete. An empty inline line
/// or `*0`/`*-1` yields a request with no arguments, which the caller skips (as Redis does).
pub fn parse_request(
    input: &[u8],
    limits: &RequestLimits,
) -> Result<Option<ParsedRequest>, ProtocolError> {
    match input.first() {
        None => Ok(None),
        Some(b'*') => parse_multibulk(input, limits),
        Some(_) => parse_inline(input),
    }
}

fn parse_multibulk(
    input: &[u8],
    limits: &RequestLimits,
) -> Result<Option<ParsedRequest>, ProtocolError> {
    let mut position = 1;
    let Some(line) = read_line(input, &mut position) else {
        if input.len() > MAX_HEADER_LINE_BYTES {
            return Err(ProtocolError::TooBigMultibulkCount);
        }
        return Ok(None);
    };
    let count = parse_i64(line).ok_or(ProtocolError::InvalidMultibulkLength)?;
    if count <= 0 {
        // Redis treats *0 and *-1 as an empty request and moves on.
        return Ok(Some(ParsedRequest {
            ranges: Vec::new(),
            owned: None,
            consumed: position,
        }));
    }
    let count = usize::try_from(count).map_err(|_| ProtocolError::InvalidMultibulkLength)?;
    if count > limits.max_array_len {
        return Err(ProtocolError::InvalidMultibulkLength);
    }
    let mut ranges = Vec::new();
    for _ in 0..count {
        let Some(&kind) = input.get(position) else {
            return Ok(None);
        };
        if kind != b'$' {
            return Err(ProtocolError::ExpectedBulk(char::from(kind)));
        }
        position += 1;
        let Some(line) = read_line(input, &mut position) else {
            if input.len() - position > MAX_HEADER_LINE_BYTES {
                return Err(ProtocolError::TooBigBulkCount);
            }
            return Ok(None);
        };
        let length = parse_i64(line)
            .and_then(|length| usize::try_from(length).ok())
            .filter(|length| *length <= limits.max_bulk_bytes)
            .ok_or(ProtocolError::InvalidBulkLength)?;
        let end = position + length; // cannot overflow: length <= max_bulk_bytes
        if end > limits.max_request_bytes {
            return Err(ProtocolError::RequestTooLarge {
                max: limits.max_request_bytes,
            });
        }
        if input.len() < end + 2 {
            return Ok(None);
        }
        // Redis does not check the CRLF after a bulk either; it just skips two bytes.
        ranges.push(position..end);
        position = end + 2;
    }
    Ok(Some(ParsedRequest {
        ranges,
        owned: None,
        consumed: position,
    }))
}

fn parse_inline(input: &[u8]) -> Result<Option<ParsedRequest>, ProtocolError> {
    let Some(newline) = input.iter().position(|&b| b == b'\n') else {
        if input.len() > MAX_INLINE_BYTES {
            return Err(ProtocolError::TooBigInline);
        }
        return Ok(None);
    };
    if newline > MAX_INLINE_BYTES {
        return Err(ProtocolError::TooBigInline);
    }
    let mut line = &input[..newline];
    if let Some(stripped) = line.strip_suffix(b"\r") {
        line = stripped;
    }
    let arguments = split_inline(line)?;
    Ok(Some(ParsedRequest {
        ranges: Vec::new(),
        owned: Some(arguments),
        consumed: newline + 1,
    }))
}

/// Splits an inline line like Redis's `sdssplitargs`: whitespace separates arguments,
/// `"..."` supports `\n \r \t \b \a \\ \" \xHH`, `'...'` supports `\'`. A closing quote must be
/// followed by whitespace or the end of the line.
fn split_inline(line: &[u8]) -> Result<Vec<Bytes>, ProtocolError> {
    let mut arguments = Vec::new();
    let mut index = 0;
    loop {
        while index < line.len() && line[index].is_ascii_whitespace() {
            index += 1;
        }
        if index >= line.len() {
            return Ok(arguments);
        }
        let mut current = Vec::new();
        let mut in_double = false;
        let mut in_single = false;
        loop {
            let Some(&byte) = line.get(index) else {
                if in_double || in_single {
                    return Err(ProtocolError::UnbalancedQuotes);
                }
                break;
            };
            if in_double {
                if byte == b'\\' && line.get(index + 1) == Some(&b'x') {
                    let high = line.get(index + 2).and_then(|b| (*b as char).to_digit(16));
                    let low = line.get(index + 3).and_then(|b| (*b as char).to_digit(16));
                    if let (Some(high), Some(low)) = (high, low) {
                        // Two hex digits always fit a byte.
                        current.push((high * 16 + low) as u8);
                        index += 4;
                        continue;
                    }
                }
                if byte == b'\\' {
                    if let Some(&next) = line.get(index + 1) {
                        current.push(match next {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 8,
                            b'a' => 7,
                            other => other,
                        });
                        index += 2;
                        continue;
                    }
                }
                if byte == b'"' {
                    if line
                        .get(index + 1)
                        .is_some_and(|b| !b.is_ascii_whitespace())
                    {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    index += 1;
                    break;
                }
                current.push(byte);
            } else if in_single {
                if byte == b'\\' && line.get(index + 1) == Some(&b'\'') {
                    current.push(b'\'');
                    index += 2;
                    continue;
                }
                if byte == b'\'' {
                    if line
                        .get(index + 1)
                        .is_some_and(|b| !b.is_ascii_whitespace())
                    {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    index += 1;
                    break;
                }
                current.push(byte);
            } else {
                match byte {
                    // Only ASCII whitespace separates; the outer loop skips exactly these.
                    byte if byte.is_ascii_whitespace() => break,
                    b'"' => in_double = true,
                    b'\'' => in_single = true,
                    other => current.push(other),
                }
            }
            index += 1;
        }
        arguments.push(Bytes::from(current));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: Frame) {
        let mut encoded = Vec::new();
        frame.encode(&mut encoded);
        let (parsed, used) = Frame::parse(&encoded)
            .expect("valid encoding")
            .expect("complete encoding");
        assert_eq!(parsed, frame);
        assert_eq!(used, encoded.len());
        // Every strict prefix is incomplete, never an error.
        for cut in 0..encoded.len() {
            assert_eq!(Frame::parse(&encoded[..cut]), Ok(None), "prefix {cut}");
        }
    }

    #[test]
    fn every_frame_type_round_trips() {
        round_trip(Frame::simple("OK"));
        round_trip(Frame::error("ERR something"));
        round_trip(Frame::Integer(0));
        round_trip(Frame::Integer(i64::MIN));
        round_trip(Frame::Integer(i64::MAX));
        round_trip(Frame::bulk(&b"binary\r\n\0bytes"[..]));
        round_trip(Frame::bulk(Bytes::new()));
        round_trip(Frame::Null);
        round_trip(Frame::NullArray);
        round_trip(Frame::Array(vec![]));
        round_trip(Frame::Array(vec![
            Frame::Integer(1),
            Frame::Array(vec![Frame::Null, Frame::bulk(&b"x"[..])]),
            Frame::simple("s"),
        ]));
    }

    #[test]
    fn error_text_cannot_break_framing() {
        let mut encoded = Vec::new();
        Frame::error("ERR a\r\nb").encode(&mut encoded);
        assert_eq!(encoded, b"-ERR a  b\r\n");
    }

    const LIMITS: RequestLimits = RequestLimits {
        max_bulk_bytes: 16,
        max_array_len: 4,
        max_request_bytes: 64,
    };

    #[test]
    fn request_parser_enforces_limits_before_reading_data() {
        assert_eq!(
            parse_request(b"*5\r\n", &LIMITS),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(
            parse_request(b"*1\r\n$17\r\n", &LIMITS),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(
            parse_request(b"*1\r\n+x\r\n", &LIMITS),
            Err(ProtocolError::ExpectedBulk('+'))
        );
        assert_eq!(parse_request(b"*1\r\n$3\r\nab", &LIMITS), Ok(None));
    }

    #[test]
    fn inline_commands_split_like_redis() {
        let parsed = parse_request(b"SET \"a b\" 'c\\'d' \"\\x41\\n\"\r\n", &LIMITS)
            .expect("valid")
            .expect("complete");
        let arguments = parsed.owned.expect("inline");
        assert_eq!(arguments, vec!["SET", "a b", "c'd", "A\n"]);
        assert_eq!(
            parse_request(b"GET \"abc\r\n", &LIMITS),
            Err(ProtocolError::UnbalancedQuotes)
        );
        assert_eq!(parse_request(b"PING", &LIMITS), Ok(None));
    }

    #[test]
    fn parse_i64_is_strict() {
        assert_eq!(parse_i64(b"-12"), Some(-12));
        assert_eq!(parse_i64(b"0"), Some(0));
        for bad in [
            &b""[..],
            b"-",
            b"+1",
            b"01",
            b"-0",
            b" 1",
            b"1.0",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_i64(bad), None, "{bad:?}");
        }
    }
}
