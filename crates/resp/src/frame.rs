//! RESP frames: the [`Frame`] type with its encoder (RESP2 or RESP3, see [`Protocol`]) and a
//! general parser, and [`parse_request`], the stricter parser for what a client may send (an
//! array of bulk strings, or an inline command line: the same in RESP2 and RESP3).
//!
//! A command builds one [`Frame`] whatever the connection speaks, using the RESP3 type Redis 7
//! uses for that reply (a map for HELLO and CONFIG GET, a verbatim string for INFO, ...); the
//! encoder writes it as RESP3, or downgrades it to the RESP2 form Redis sends (a map becomes a
//! flat array, a double a bulk string, a boolean 1/0, a null `$-1` or `*-1`). So RESP2 replies
//! are byte for byte what they were before RESP3 existed here, and no command needs two code
//! paths.
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

/// The protocol a connection speaks: RESP2 until the client switches with `HELLO 3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Resp2,
    Resp3,
}

impl Protocol {
    /// The number HELLO takes and reports (`proto`), and CLIENT LIST shows (`resp=`).
    pub fn version(self) -> i64 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }
}

/// One RESP value. The RESP3-only variants say how they are downgraded for RESP2 (as Redis
/// does, see [`Frame::encode_with`]). Not `Eq`: a double is not.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// `+text\r\n`
    Simple(String),
    /// `-text\r\n`
    Error(String),
    /// `:n\r\n`
    Integer(i64),
    /// `$len\r\nbytes\r\n`
    Bulk(Bytes),
    /// A missing value: `$-1\r\n` (a nil bulk string) in RESP2, `_\r\n` in RESP3.
    Null,
    /// `*len\r\n` followed by the elements.
    Array(Vec<Frame>),
    /// A missing array: `*-1\r\n` in RESP2, `_\r\n` in RESP3.
    NullArray,
    /// RESP3 `,<double>\r\n`, written as Redis's `d2string` does (`inf`, `-inf`, `nan`);
    /// RESP2: a bulk string of the same text.
    Double(f64),
    /// RESP3 `#t\r\n` / `#f\r\n`; RESP2 `:1\r\n` / `:0\r\n`.
    Boolean(bool),
    /// RESP3 `(<digits>\r\n`, an integer beyond 64 bits (an optional `-` and decimal
    /// digits); RESP2: a bulk string of the digits.
    BigNumber(String),
    /// RESP3 `%<pairs>\r\n` followed by key, value, key, value...; RESP2: a flat array of
    /// twice the length.
    Map(Vec<(Frame, Frame)>),
    /// RESP3 `~<len>\r\n` followed by the elements; RESP2: an array.
    Set(Vec<Frame>),
    /// RESP3 `=<len>\r\n<fmt>:<text>\r\n` (`fmt` is `txt` or `mkd`), what Redis answers
    /// INFO and CLIENT INFO/LIST with; RESP2: a bulk string of the text alone.
    Verbatim { format: [u8; 3], text: Bytes },
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

    /// A plain-text verbatim string (`=...\r\ntxt:...`; a bulk string in RESP2).
    pub fn verbatim(text: impl Into<Bytes>) -> Frame {
        Frame::Verbatim {
            format: *b"txt",
            text: text.into(),
        }
    }

    /// Appends the RESP2 encoding of `self` to `out` (see [`Frame::encode_with`]).
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_with(Protocol::Resp2, out);
    }

    /// Appends the wire encoding of `self` in `protocol` to `out`. RESP3-only types are
    /// downgraded for RESP2 exactly as Redis's `addReply*` functions do, so a RESP2 client
    /// sees what Redis would send it.
    ///
    /// Simple strings, errors and big numbers cannot carry CR or LF on the wire; they are
    /// replaced by spaces (as Redis does for error texts) so a reply can never break framing.
    pub fn encode_with(&self, protocol: Protocol, out: &mut Vec<u8>) {
        let resp3 = protocol == Protocol::Resp3;
        match self {
            Frame::Simple(text) => encode_line(out, b'+', text),
            Frame::Error(text) => encode_line(out, b'-', text),
            Frame::Integer(value) => encode_line(out, b':', &value.to_string()),
            Frame::Bulk(bytes) => encode_blob(out, b'$', &[], bytes),
            Frame::Null | Frame::NullArray if resp3 => out.extend_from_slice(b"_\r\n"),
            Frame::Null => out.extend_from_slice(b"$-1\r\n"),
            Frame::NullArray => out.extend_from_slice(b"*-1\r\n"),
            Frame::Array(items) => {
                encode_line(out, b'*', &items.len().to_string());
                for item in items {
                    item.encode_with(protocol, out);
                }
            }
            Frame::Double(value) if resp3 => encode_line(out, b',', &format_double(*value)),
            Frame::Double(value) => encode_blob(out, b'$', &[], format_double(*value).as_bytes()),
            Frame::Boolean(value) if resp3 => {
                out.extend_from_slice(if *value { b"#t\r\n" } else { b"#f\r\n" })
            }
            Frame::Boolean(value) => encode_line(out, b':', if *value { "1" } else { "0" }),
            Frame::BigNumber(digits) if resp3 => encode_line(out, b'(', digits),
            Frame::BigNumber(digits) => encode_blob(out, b'$', &[], digits.as_bytes()),
            Frame::Map(pairs) => {
                if resp3 {
                    encode_line(out, b'%', &pairs.len().to_string());
                } else {
                    encode_line(out, b'*', &(pairs.len() * 2).to_string());
                }
                for (key, value) in pairs {
                    key.encode_with(protocol, out);
                    value.encode_with(protocol, out);
                }
            }
            Frame::Set(items) => {
                encode_line(
                    out,
                    if resp3 { b'~' } else { b'*' },
                    &items.len().to_string(),
                );
                for item in items {
                    item.encode_with(protocol, out);
                }
            }
            Frame::Verbatim { format, text } if resp3 => {
                // The declared length covers "fmt:" too.
                encode_blob(out, b'=', &[format[0], format[1], format[2], b':'], text)
            }
            Frame::Verbatim { text, .. } => encode_blob(out, b'$', &[], text),
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

/// `<prefix><len>\r\n<head><body>\r\n`, the length counting `head` and `body`.
fn encode_blob(out: &mut Vec<u8>, prefix: u8, head: &[u8], body: &[u8]) {
    encode_line(out, prefix, &(head.len() + body.len()).to_string());
    out.extend_from_slice(head);
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

/// A double as Redis 7.2's `d2string` writes it: `nan`, `inf`, `-inf`, `0` or `-0`, an
/// integral value within ±2^62 as an integer, anything else as the shortest text that reads
/// back as the same double (Rust's `Display`, with an exponent for very large or small
/// magnitudes, which RESP3 allows: `1e300`).
pub fn format_double(value: f64) -> String {
    use std::num::FpCategory;
    match value.classify() {
        FpCategory::Nan => "nan".to_string(),
        FpCategory::Infinite if value < 0.0 => "-inf".to_string(),
        FpCategory::Infinite => "inf".to_string(),
        FpCategory::Zero if value.is_sign_negative() => "-0".to_string(),
        FpCategory::Zero => "0".to_string(),
        // Redis's `double2ll` range: within it every integral double is an exact i64.
        _ if value.fract() == 0.0 && value.abs() <= (i64::MAX / 2) as f64 => {
            (value as i64).to_string()
        }
        _ if (1e-5..1e17).contains(&value.abs()) => format!("{value}"),
        _ => format!("{value:e}"),
    }
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
            match read_blob(input, position, length)? {
                Some(bytes) => Frame::Bulk(Bytes::copy_from_slice(bytes)),
                None => return Ok(None),
            }
        }
        b'*' => {
            let length = parse_i64(line).ok_or(ProtocolError::InvalidMultibulkLength)?;
            if length == -1 {
                return Ok(Some(Frame::NullArray));
            }
            match parse_items(input, position, depth, length)? {
                Some(items) => Frame::Array(items),
                None => return Ok(None),
            }
        }
        // RESP3. Both nils arrive as `_`, so a parsed `_` is always `Null`.
        b'_' if line.is_empty() => Frame::Null,
        b'_' => return Err(ProtocolError::Invalid("bad null")),
        b'#' => match line {
            b"t" => Frame::Boolean(true),
            b"f" => Frame::Boolean(false),
            _ => return Err(ProtocolError::Invalid("bad boolean")),
        },
        b',' => Frame::Double(
            std::str::from_utf8(line)
                .ok()
                .and_then(|text| text.parse::<f64>().ok())
                .ok_or(ProtocolError::Invalid("bad double"))?,
        ),
        b'(' => {
            let digits = line.strip_prefix(b"-").unwrap_or(line);
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(ProtocolError::Invalid("bad big number"));
            }
            Frame::BigNumber(text()?)
        }
        b'%' => {
            let length = parse_i64(line).ok_or(ProtocolError::Invalid("bad map length"))?;
            match parse_items(input, position, depth, length.saturating_mul(2))? {
                Some(items) => {
                    let mut pairs = Vec::with_capacity(items.len() / 2);
                    let mut items = items.into_iter();
                    while let (Some(key), Some(value)) = (items.next(), items.next()) {
                        pairs.push((key, value));
                    }
                    Frame::Map(pairs)
                }
                None => return Ok(None),
            }
        }
        b'~' => {
            let length = parse_i64(line).ok_or(ProtocolError::Invalid("bad set length"))?;
            match parse_items(input, position, depth, length)? {
                Some(items) => Frame::Set(items),
                None => return Ok(None),
            }
        }
        b'=' => {
            let length = parse_i64(line).ok_or(ProtocolError::Invalid("bad verbatim length"))?;
            match read_blob(input, position, length)? {
                Some([a, b, c, b':', text @ ..]) => Frame::Verbatim {
                    format: [*a, *b, *c],
                    text: Bytes::copy_from_slice(text),
                },
                Some(_) => return Err(ProtocolError::Invalid("verbatim string without format")),
                None => return Ok(None),
            }
        }
        _ => return Err(ProtocolError::Invalid("unknown frame type byte")),
    };
    Ok(Some(frame))
}

/// The `length` bytes of a bulk or verbatim string starting at `position` (just after its
/// header line) and their CRLF; advances `position` past them. `None`: not all arrived yet.
fn read_blob<'a>(
    input: &'a [u8],
    position: &mut usize,
    length: i64,
) -> Result<Option<&'a [u8]>, ProtocolError> {
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
    Ok(Some(&input[start..end]))
}

/// `length` frames one level deeper (array, set, or a map's keys and values). `None`: not all
/// arrived yet.
fn parse_items(
    input: &[u8],
    position: &mut usize,
    depth: usize,
    length: i64,
) -> Result<Option<Vec<Frame>>, ProtocolError> {
    let length = usize::try_from(length).map_err(|_| ProtocolError::InvalidMultibulkLength)?;
    // Grow as elements arrive: `length` is the peer's claim, not a fact.
    let mut items = Vec::new();
    for _ in 0..length {
        match parse_frame(input, position, depth + 1)? {
            Some(item) => items.push(item),
            None => return Ok(None),
        }
    }
    Ok(Some(items))
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

    fn encoded(frame: &Frame, protocol: Protocol) -> String {
        let mut out = Vec::new();
        frame.encode_with(protocol, &mut out);
        String::from_utf8(out).expect("test frames encode to UTF-8")
    }

    fn sample_map() -> Frame {
        Frame::Map(vec![
            (Frame::simple("a"), Frame::Integer(1)),
            (Frame::bulk(&b"b"[..]), Frame::Null),
        ])
    }

    /// Each RESP3 type's exact bytes, and the RESP2 form Redis sends for it.
    #[test]
    fn resp3_types_encode_exactly_and_downgrade_for_resp2() {
        let cases: Vec<(Frame, &str, &str)> = vec![
            (Frame::Null, "_\r\n", "$-1\r\n"),
            (Frame::NullArray, "_\r\n", "*-1\r\n"),
            (Frame::Boolean(true), "#t\r\n", ":1\r\n"),
            (Frame::Boolean(false), "#f\r\n", ":0\r\n"),
            (Frame::Double(1.5), ",1.5\r\n", "$3\r\n1.5\r\n"),
            (Frame::Double(3.0), ",3\r\n", "$1\r\n3\r\n"),
            (Frame::Double(-0.25), ",-0.25\r\n", "$5\r\n-0.25\r\n"),
            (Frame::Double(f64::INFINITY), ",inf\r\n", "$3\r\ninf\r\n"),
            (
                Frame::Double(f64::NEG_INFINITY),
                ",-inf\r\n",
                "$4\r\n-inf\r\n",
            ),
            (Frame::Double(f64::NAN), ",nan\r\n", "$3\r\nnan\r\n"),
            (Frame::Double(-0.0), ",-0\r\n", "$2\r\n-0\r\n"),
            (Frame::Double(1e300), ",1e300\r\n", "$5\r\n1e300\r\n"),
            (
                Frame::BigNumber("-1234567890123456789012345678901234567890".into()),
                "(-1234567890123456789012345678901234567890\r\n",
                "$41\r\n-1234567890123456789012345678901234567890\r\n",
            ),
            (
                sample_map(),
                "%2\r\n+a\r\n:1\r\n$1\r\nb\r\n_\r\n",
                "*4\r\n+a\r\n:1\r\n$1\r\nb\r\n$-1\r\n",
            ),
            (Frame::Map(vec![]), "%0\r\n", "*0\r\n"),
            (
                Frame::Set(vec![Frame::simple("x"), Frame::Integer(2)]),
                "~2\r\n+x\r\n:2\r\n",
                "*2\r\n+x\r\n:2\r\n",
            ),
            (
                Frame::verbatim(&b"a\r\nb"[..]),
                "=8\r\ntxt:a\r\nb\r\n",
                "$4\r\na\r\nb\r\n",
            ),
            // Nested values are converted too.
            (
                Frame::Array(vec![sample_map(), Frame::Boolean(true)]),
                "*2\r\n%2\r\n+a\r\n:1\r\n$1\r\nb\r\n_\r\n#t\r\n",
                "*2\r\n*4\r\n+a\r\n:1\r\n$1\r\nb\r\n$-1\r\n:1\r\n",
            ),
        ];
        for (frame, resp3, resp2) in cases {
            assert_eq!(
                encoded(&frame, Protocol::Resp3),
                resp3,
                "{frame:?} in RESP3"
            );
            assert_eq!(
                encoded(&frame, Protocol::Resp2),
                resp2,
                "{frame:?} in RESP2"
            );
        }
    }

    /// The RESP2 types are written the same in both protocols (except the nils).
    #[test]
    fn resp2_types_are_unchanged_in_resp3() {
        for frame in [
            Frame::simple("OK"),
            Frame::error("ERR x"),
            Frame::Integer(-7),
            Frame::bulk(&b"v"[..]),
            Frame::Array(vec![Frame::Integer(1), Frame::bulk(&b""[..])]),
        ] {
            assert_eq!(
                encoded(&frame, Protocol::Resp3),
                encoded(&frame, Protocol::Resp2)
            );
        }
    }

    #[test]
    fn resp3_frames_parse_back() {
        for frame in [
            Frame::Null,
            Frame::Boolean(true),
            Frame::Boolean(false),
            Frame::Double(-2.5),
            Frame::Double(f64::INFINITY),
            Frame::Double(1e-300),
            Frame::BigNumber("123456789012345678901234567890".into()),
            sample_map(),
            Frame::Map(vec![(Frame::simple("k"), sample_map())]),
            Frame::Set(vec![Frame::Integer(1), Frame::simple("s")]),
            Frame::verbatim(&b"id=1 addr=x\n"[..]),
            Frame::Verbatim {
                format: *b"mkd",
                text: Bytes::new(),
            },
        ] {
            let mut out = Vec::new();
            frame.encode_with(Protocol::Resp3, &mut out);
            assert_eq!(Frame::parse(&out), Ok(Some((frame.clone(), out.len()))));
            for cut in 0..out.len() {
                assert_eq!(
                    Frame::parse(&out[..cut]),
                    Ok(None),
                    "{frame:?} prefix {cut}"
                );
            }
        }
        // NaN is not equal to itself; check its text instead.
        assert!(matches!(
            Frame::parse(b",nan\r\n"),
            Ok(Some((Frame::Double(value), 6))) if value.is_nan()
        ));
        assert_eq!(
            Frame::parse(b"_\r\n"),
            Ok(Some((Frame::Null, 3))),
            "both nils read back as Null"
        );
    }

    #[test]
    fn malformed_resp3_frames_are_errors() {
        for bad in [
            &b"_x\r\n"[..],
            b"#x\r\n",
            b"#\r\n",
            b",abc\r\n",
            b"(12a\r\n",
            b"(\r\n",
            b"%-1\r\n",
            b"~-1\r\n",
            b"=3\r\nabc\r\n",
            b"=-1\r\n",
            b">1\r\n:1\r\n",
        ] {
            assert!(
                Frame::parse(bad).is_err(),
                "{:?} should not parse",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn doubles_are_written_like_redis() {
        assert_eq!(format_double(0.1), "0.1");
        assert_eq!(format_double(-17.0), "-17");
        assert_eq!(format_double(1e16 + 0.5), "10000000000000000");
        assert_eq!(format_double(1.5e-7), "1.5e-7");
        assert_eq!(format_double(0.0), "0");
        // Beyond ±2^62 an integral double is not written as an integer.
        assert_eq!(format_double(1e19), "1e19");
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
