//! Key commands: TYPE, TTL, PTTL, EXISTS, DEL, UNLINK, SCAN.
//!
//! # SCAN cursors
//! Cursors are decimal integers, as clients expect (redis-cli and most libraries parse them as
//! unsigned 64-bit numbers). `0` starts (and, in a reply, ends) the iteration; any other cursor
//! names an entry of the server's [`CursorTable`], which holds the key to resume from (the last
//! returned key followed by a 0x00 byte, its immediate successor). The table is shared by all
//! connections of one front end (a cursor may be continued from another connection to the same
//! server, as in Redis) and bounded: once [`MAX_SCAN_CURSORS`] cursors are outstanding the
//! oldest is forgotten, and continuing it (or any unknown cursor) answers `ERR invalid cursor`
//! rather than silently restarting. A SCAN is one `kv::Command::Scan { start, end: None,
//! limit: COUNT }`; MATCH and TYPE filter the returned page, so a reply may hold fewer keys than
//! COUNT, or none, while the cursor is not 0 (as in Redis). Keys are returned in order, each
//! exactly once, whatever writes happen in between.

use bytes::Bytes;

use std::collections::{HashMap, VecDeque};

use super::{integer_argument, unexpected, Context, SYNTAX_ERROR};
use crate::config::{DEFAULT_SCAN_COUNT, MAX_SCAN_COUNT, MAX_SCAN_CURSORS};
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

/// DEL and UNLINK: one `DeleteMany`, so a multi-key DEL is one atomic, exactly-once step. All
/// keys must be in one region (CROSSSLOT otherwise), as in Redis Cluster.
pub(super) async fn del(context: &mut Context<'_>, keys: &[Bytes]) -> Result<Frame, Frame> {
    context.check_same_region(&key_slices(keys))?;
    match context
        .write(kv::Command::DeleteMany {
            keys: keys.to_vec(),
        })
        .await?
    {
        kv::Response::Integer(deleted) => Ok(Frame::Integer(deleted)),
        other => Err(unexpected(&other)),
    }
}

/// The outstanding SCAN cursors of one front end: cursor number → key to resume from. Bounded
/// by [`MAX_SCAN_CURSORS`]; the oldest entry is forgotten first.
#[derive(Debug)]
pub(crate) struct CursorTable {
    next: u64,
    resume: HashMap<u64, Bytes>,
    order: VecDeque<u64>,
}

/// Cursor numbers stay below 2^53 so clients that hold numbers as doubles (JavaScript) keep
/// them exact.
const CURSOR_SPACE: u64 = 1 << 53;

impl CursorTable {
    /// `seed` picks where numbering starts, so cursors of an earlier server process are
    /// unlikely to name entries of this one.
    pub(crate) fn new(seed: u64) -> Self {
        CursorTable {
            next: (seed % (CURSOR_SPACE / 2)).max(1),
            resume: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn insert(&mut self, key: Bytes) -> u64 {
        if self.order.len() >= MAX_SCAN_CURSORS {
            if let Some(oldest) = self.order.pop_front() {
                self.resume.remove(&oldest);
            }
        }
        let cursor = self.next;
        self.next = if self.next + 1 >= CURSOR_SPACE {
            1
        } else {
            self.next + 1
        };
        self.resume.insert(cursor, key);
        self.order.push_back(cursor);
        debug_assert_eq!(self.resume.len(), self.order.len());
        cursor
    }

    fn get(&self, cursor: u64) -> Option<Bytes> {
        self.resume.get(&cursor).cloned()
    }
}

fn resume_key(context: &Context<'_>, cursor: &[u8]) -> Result<Bytes, Frame> {
    let invalid = || Frame::error("ERR invalid cursor");
    let number: u64 = std::str::from_utf8(cursor)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(invalid)?;
    if number == 0 {
        return Ok(Bytes::new());
    }
    let table = context
        .shared
        .cursors
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    table.get(number).ok_or_else(invalid)
}

pub(super) async fn scan(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    let start = resume_key(context, &arguments[0])?;
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
            let cursor = context
                .shared
                .cursors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(Bytes::from(successor));
            Bytes::from(cursor.to_string())
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
    fn cursor_table_is_bounded_and_forgets_the_oldest() {
        let mut table = CursorTable::new(41);
        let first = table.insert(Bytes::from_static(b"a"));
        assert_ne!(first, 0);
        assert_eq!(table.get(first).as_deref(), Some(&b"a"[..]));
        let mut last = first;
        for i in 0..MAX_SCAN_CURSORS {
            last = table.insert(Bytes::from(i.to_string()));
        }
        assert_eq!(table.get(first), None, "the oldest cursor must be evicted");
        assert_eq!(table.resume.len(), MAX_SCAN_CURSORS);
        assert_eq!(
            table.get(last).as_deref(),
            Some((MAX_SCAN_CURSORS - 1).to_string().as_bytes())
        );
    }

    #[test]
    fn cursor_numbers_wrap_below_the_double_exact_range_and_skip_zero() {
        let mut table = CursorTable::new(0);
        table.next = CURSOR_SPACE - 1;
        assert_eq!(table.insert(Bytes::new()), CURSOR_SPACE - 1);
        assert_eq!(table.insert(Bytes::new()), 1);
    }
}
