//! Key commands: TYPE, TTL, PTTL, EXISTS, DEL, UNLINK, SCAN.
//!
//! # SCAN cursors
//! The cursor is stateless: `0` starts (and, in a reply, ends) the iteration; any other cursor
//! is the lowercase hex encoding of the key to resume from (the last returned key followed by a
//! 0x00 byte, its immediate successor). A SCAN is one `kv::Command::Scan { start, end: None,
//! limit: COUNT }`; MATCH and TYPE filter the returned page, so a reply may hold fewer keys than
//! COUNT, or none, while the cursor is not 0 (as in Redis). Keys are returned in order, each
//! exactly once, whatever writes happen in between.

use bytes::Bytes;

use super::{integer_argument, unexpected, Context, SYNTAX_ERROR};
use crate::config::{DEFAULT_SCAN_COUNT, MAX_SCAN_COUNT};
use crate::frame::Frame;

pub(super) async fn key_type(
    context: &mut Context<'_>,
    arguments: &[Bytes],
) -> Result<Frame, Frame> {
    let exists = get(context, &arguments[0]).await?.is_some();
    // Every value is a string: the state machine has no other type.
    Ok(Frame::simple(if exists { "string" } else { "none" }))
}

/// TTL and PTTL: keys never expire, so -1 for an existing key and -2 for a missing one.
pub(super) async fn ttl(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    let exists = get(context, &arguments[0]).await?.is_some();
    Ok(Frame::Integer(if exists { -1 } else { -2 }))
}

pub(super) async fn get(context: &mut Context<'_>, key: &Bytes) -> Result<Option<Bytes>, Frame> {
    match context.read(kv::Command::Get { key: key.clone() }).await? {
        kv::Response::Value(value) => Ok(value),
        other => Err(unexpected(&other)),
    }
}

fn key_slices(keys: &[Bytes]) -> Vec<&[u8]> {
    keys.iter().map(|k| k.as_ref()).collect()
}

/// EXISTS counts a key once per mention, as Redis does.
pub(super) async fn exists(context: &mut Context<'_>, keys: &[Bytes]) -> Result<Frame, Frame> {
    context.check_same_region(&key_slices(keys))?;
    match context
        .read(kv::Command::BatchGet {
            keys: keys.to_vec(),
        })
        .await?
    {
        kv::Response::Values(values) => Ok(Frame::Integer(
            values.iter().filter(|v| v.is_some()).count() as i64,
        )),
        other => Err(unexpected(&other)),
    }
}

/// DEL and UNLINK. The state machine has no multi-key delete, so each key is one `Delete`:
/// each deletion is atomic and exactly-once, but a multi-key DEL is not one atomic step (see
/// the crate docs' deviations). All keys must still be in one region.
pub(super) async fn del(context: &mut Context<'_>, keys: &[Bytes]) -> Result<Frame, Frame> {
    context.check_same_region(&key_slices(keys))?;
    let mut deleted = 0;
    for key in keys {
        match context
            .write(kv::Command::Delete { key: key.clone() })
            .await?
        {
            kv::Response::Deleted(true) => deleted += 1,
            kv::Response::Deleted(false) => {}
            other => return Err(unexpected(&other)),
        }
    }
    Ok(Frame::Integer(deleted))
}

fn encode_cursor(key: &[u8]) -> Bytes {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = Vec::with_capacity(key.len() * 2);
    for byte in key {
        text.push(HEX[usize::from(byte >> 4)]);
        text.push(HEX[usize::from(byte & 0xf)]);
    }
    Bytes::from(text)
}

fn decode_cursor(cursor: &[u8]) -> Option<Bytes> {
    if cursor == b"0" {
        return Some(Bytes::new());
    }
    if cursor.is_empty() || cursor.len() % 2 != 0 {
        return None;
    }
    let digit = |b: u8| (b as char).to_digit(16);
    cursor
        .chunks(2)
        .map(|pair| Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8))
        .collect::<Option<Vec<u8>>>()
        .map(Bytes::from)
}

pub(super) async fn scan(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    let start = decode_cursor(&arguments[0]).ok_or_else(|| Frame::error("ERR invalid cursor"))?;
    let mut pattern: Option<&[u8]> = None;
    let mut count = DEFAULT_SCAN_COUNT;
    let mut strings_only = true;
    let mut index = 1;
    while index < arguments.len() {
        let option = arguments[index].to_ascii_lowercase();
        let Some(value) = arguments.get(index + 1) else {
            return Err(Frame::error(SYNTAX_ERROR));
        };
        match option.as_slice() {
            b"match" => pattern = Some(value),
            b"count" => {
                let requested = integer_argument(value)?;
                if requested < 1 {
                    return Err(Frame::error(SYNTAX_ERROR));
                }
                // Clamped: the state machine caps scan pages, and COUNT is only a hint.
                count = u32::try_from(requested)
                    .unwrap_or(u32::MAX)
                    .min(MAX_SCAN_COUNT);
            }
            b"type" => strings_only = value.eq_ignore_ascii_case(b"string"),
            _ => return Err(Frame::error(SYNTAX_ERROR)),
        }
        index += 2;
    }
    let (pairs, more) = match context
        .read(kv::Command::Scan {
            start,
            end: None,
            limit: count,
        })
        .await?
    {
        kv::Response::Scan { pairs, more } => (pairs, more),
        other => return Err(unexpected(&other)),
    };
    let next_cursor = match pairs.last() {
        Some((last, _)) if more => {
            let mut successor = last.to_vec();
            successor.push(0);
            encode_cursor(&successor)
        }
        _ => Bytes::from_static(b"0"),
    };
    let keys = pairs
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| strings_only && pattern.is_none_or_match(key))
        .map(Frame::Bulk)
        .collect();
    Ok(Frame::Array(vec![
        Frame::Bulk(next_cursor),
        Frame::Array(keys),
    ]))
}

trait PatternExt {
    fn is_none_or_match(&self, key: &[u8]) -> bool;
}

impl PatternExt for Option<&[u8]> {
    fn is_none_or_match(&self, key: &[u8]) -> bool {
        match self {
            None => true,
            Some(pattern) => glob_match(pattern, key),
        }
    }
}

/// Redis glob matching (`stringmatchlen`): `*`, `?`, `[abc]`, `[^a-z]`, `\x` escapes.
/// Iterative with single-star backtracking, so a hostile pattern costs O(pattern × key), not
/// exponential time.
pub(crate) fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => match_class(pattern, p, text[t]),
            Some(b'\\') if p + 1 < pattern.len() => (pattern[p + 1] == text[t]).then_some(p + 2),
            Some(&literal) => (literal == text[t]).then_some(p + 1),
            None => None,
        };
        match step {
            Some(next) => {
                p = next;
                t += 1;
            }
            None => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&b| b == b'*')
}

/// Matches `byte` against the class starting at `pattern[open] == b'['`; returns the index after
/// the class on a match. An unterminated class runs to the end of the pattern (as in Redis).
fn match_class(pattern: &[u8], open: usize, byte: u8) -> Option<usize> {
    let mut i = open + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    while i < pattern.len() && pattern[i] != b']' {
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            matched |= pattern[i + 1] == byte;
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (low, high) = (
                pattern[i].min(pattern[i + 2]),
                pattern[i].max(pattern[i + 2]),
            );
            matched |= (low..=high).contains(&byte);
            i += 3;
        } else {
            matched |= pattern[i] == byte;
            i += 1;
        }
    }
    let after = (i + 1).min(pattern.len());
    (matched != negate).then_some(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_redis() {
        assert!(glob_match(b"*", b"anything"));
        assert!(glob_match(b"user:*", b"user:1"));
        assert!(!glob_match(b"user:*", b"session:1"));
        assert!(glob_match(b"h?llo", b"hello"));
        assert!(glob_match(b"h[ae]llo", b"hallo"));
        assert!(!glob_match(b"h[^e]llo", b"hello"));
        assert!(glob_match(b"h[a-b]llo", b"hbllo"));
        assert!(glob_match(b"a\\*b", b"a*b"));
        assert!(!glob_match(b"a\\*b", b"axb"));
        assert!(glob_match(b"*a*b*c*", b"xxaxxbxxcxx"));
        assert!(!glob_match(b"", b"x"));
        assert!(glob_match(b"", b""));
    }

    #[test]
    fn cursors_round_trip() {
        for key in [&b"a"[..], b"\x00\xff", b"user:42\x00"] {
            assert_eq!(decode_cursor(&encode_cursor(key)).as_deref(), Some(key));
        }
        assert_eq!(decode_cursor(b"0").as_deref(), Some(&b""[..]));
        assert_eq!(decode_cursor(b"zz"), None);
        assert_eq!(decode_cursor(b"abc"), None);
    }
}
