//! Key commands: TYPE, EXISTS, DEL, UNLINK, SCAN, KEYS, RENAME, RENAMENX, COPY, OBJECT
//! (ENCODING, HELP), MEMORY (USAGE, HELP); and [`inspect`], the `kv::Command::Inspect` read
//! behind TYPE, EXISTS, TTL, HLEN, WATCH, OBJECT and MEMORY.
//!
//! # SCAN cursors
//! Cursors are decimal integers, as clients expect (redis-cli and most libraries parse them as
//! unsigned 64-bit numbers). `0` starts (and, in a reply, ends) the iteration; any other cursor
//! names an entry of the server's [`CursorTable`], which holds the key to resume from (the last
//! returned key followed by a 0x00 byte, its immediate successor). The table is shared by all
//! connections of one front end (a cursor may be continued from another connection to the same
//! server, as in Redis) and bounded: once [`MAX_SCAN_CURSORS`] cursors are outstanding the
//! oldest is forgotten, and continuing it (or any unknown cursor) answers `ERR invalid cursor`
//! rather than silently restarting. A SCAN is one `kv::Command::ScanKeys { start, end: None,
//! limit: COUNT, key_type: TYPE }` (the backend crosses regions); MATCH filters the returned
//! page, so a reply may hold fewer keys than COUNT, or none, while the cursor is not 0 (as in
//! Redis). Keys are returned in order, each exactly once, whatever writes happen in between.
//! HSCAN uses the same table, its entries naming the field to resume after (see `hashes`).
//!
//! # KEYS
//! KEYS pages through `ScanKeys` from the pattern's literal prefix (the bytes before its first
//! `*`, `?`, `[` or `\`; the whole key space for a pattern starting with a wildcard) and stops
//! at the first key past the prefix. It is bounded: past [`MAX_KEYS_EXAMINED`] keys examined
//! it answers [`KEYS_TOO_MANY`] instead of building a reply of unbounded size.
//!
//! # OBJECT ENCODING and MEMORY USAGE
//! Answered from `Inspect`'s `KeyInfo`, in Redis's terms: a string is `int` when it is a
//! canonical 64-bit integer, `embstr` up to 44 bytes, `raw` beyond; a hash is `listpack` up to
//! 128 fields (Redis's `hash-max-listpack-entries`; its value-size rule is not applied) and
//! `hashtable` beyond. MEMORY USAGE is the state machine's estimate of the key's cost.

use bytes::Bytes;

use std::collections::{HashMap, VecDeque};

use super::{
    backend_error_frame, integer_argument, unexpected, wrong_arity, Context, SYNTAX_ERROR,
};
use crate::config::{
    DEFAULT_SCAN_COUNT, KEYS_TOO_MANY, MAX_KEYS_EXAMINED, MAX_SCAN_COUNT, MAX_SCAN_CURSORS,
};
use crate::frame::Frame;

/// What `kv::Command::Inspect` says about one key.
#[derive(Debug, Clone)]
pub(super) struct Inspected {
    /// `None`: the key is absent (or expired).
    pub info: Option<kv::KeyInfo>,
    /// The key's version (for an absent key, the region's deleted-version; see WATCH).
    pub version: u64,
    /// The time the read was judged at (ms since the Unix epoch).
    pub now_ms: u64,
}

fn inspected(response: kv::Response) -> Result<Inspected, Frame> {
    match response {
        kv::Response::KeyInfo {
            info,
            version,
            now_ms,
        } => Ok(Inspected {
            info,
            version,
            now_ms,
        }),
        other => Err(unexpected(&other)),
    }
}

/// One `Inspect` read.
pub(super) async fn inspect(context: &mut Context<'_>, key: &Bytes) -> Result<Inspected, Frame> {
    inspected(
        context
            .read(kv::Command::Inspect { key: key.clone() })
            .await?,
    )
}

/// `Inspect` of each key, as one read: a lone `Inspect`, or one `Pipeline` of them (judged at
/// one instant, as one backend call, so EXISTS of many keys stays one command in a pipeline or
/// a transaction). The caller has checked that the keys share a region.
pub(super) async fn inspect_many(
    context: &mut Context<'_>,
    keys: &[Bytes],
) -> Result<Vec<Inspected>, Frame> {
    if let [key] = keys {
        return Ok(vec![inspect(context, key).await?]);
    }
    let commands = keys
        .iter()
        .map(|key| kv::Command::Inspect { key: key.clone() })
        .collect();
    match context.read(kv::Command::Pipeline { commands }).await? {
        kv::Response::Pipeline(results) if results.len() == keys.len() => results
            .into_iter()
            .map(|result| match result {
                Ok(response) => inspected(response),
                Err(error) => Err(backend_error_frame(error.into())),
            })
            .collect(),
        other => Err(unexpected(&other)),
    }
}

/// TYPE: `string`, `hash` or `none`.
pub(super) async fn key_type(
    context: &mut Context<'_>,
    arguments: &[Bytes],
) -> Result<Frame, Frame> {
    let info = inspect(context, &arguments[0]).await?.info;
    Ok(Frame::simple(
        info.map_or("none", |info| info.key_type.as_str()),
    ))
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

/// EXISTS counts a key once per mention, as Redis does; keys of any type count.
pub(super) async fn exists(context: &mut Context<'_>, keys: &[Bytes]) -> Result<Frame, Frame> {
    context.check_same_region(&key_slices(keys))?;
    let found = inspect_many(context, keys)
        .await?
        .iter()
        .filter(|inspected| inspected.info.is_some())
        .count();
    Ok(Frame::Integer(found as i64))
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

    pub(super) fn insert(&mut self, key: Bytes) -> u64 {
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

    pub(super) fn get(&self, cursor: u64) -> Option<Bytes> {
        self.resume.get(&cursor).cloned()
    }
}

/// The entry a cursor names: `None` for cursor 0 (start), else the table's entry; an unknown
/// or malformed cursor is `ERR invalid cursor`.
pub(super) fn cursor_entry(context: &Context<'_>, cursor: &[u8]) -> Result<Option<Bytes>, Frame> {
    let invalid = || Frame::error("ERR invalid cursor");
    let number: u64 = std::str::from_utf8(cursor)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(invalid)?;
    if number == 0 {
        return Ok(None);
    }
    let table = context
        .shared
        .cursors
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    table.get(number).map(Some).ok_or_else(invalid)
}

/// A new cursor naming `entry`, as the reply's bulk string.
pub(super) fn new_cursor(context: &Context<'_>, entry: Bytes) -> Bytes {
    let cursor = context
        .shared
        .cursors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(entry);
    Bytes::from(cursor.to_string())
}

/// The key right after `key` in byte order: `key` followed by 0x00.
fn successor(key: &[u8]) -> Bytes {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    Bytes::from(next)
}

/// SCAN's COUNT (and HSCAN's): at least 1 (else a syntax error, as Redis), clamped to what
/// the state machine allows in one page (COUNT is only a hint).
pub(super) fn scan_count(argument: &[u8]) -> Result<u32, Frame> {
    let requested = integer_argument(argument)?;
    if requested < 1 {
        return Err(Frame::error(SYNTAX_ERROR));
    }
    Ok(u32::try_from(requested)
        .unwrap_or(u32::MAX)
        .min(MAX_SCAN_COUNT))
}

/// A SCAN TYPE name: `Some(type)` for the types that exist here; `None` for any other name
/// (list, set, ...: no key has it, so it matches nothing, as Redis 7 does for an unknown name).
fn type_named(name: &[u8]) -> Option<kv::KeyType> {
    match name.to_ascii_lowercase().as_slice() {
        b"string" => Some(kv::KeyType::String),
        b"hash" => Some(kv::KeyType::Hash),
        _ => None,
    }
}

/// One `ScanKeys` page.
async fn scan_keys(
    context: &mut Context<'_>,
    start: Bytes,
    limit: u32,
    key_type: Option<kv::KeyType>,
) -> Result<(Vec<(Bytes, kv::KeyType)>, bool), Frame> {
    let command = kv::Command::ScanKeys {
        start,
        end: None,
        limit,
        key_type,
    };
    match context.read(command).await? {
        kv::Response::Keys { keys, more } => Ok((keys, more)),
        other => Err(unexpected(&other)),
    }
}

/// SCAN cursor [MATCH pattern] [COUNT count] [TYPE type].
pub(super) async fn scan(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    let start = cursor_entry(context, &arguments[0])?.unwrap_or_default();
    let mut pattern: Option<&[u8]> = None;
    let mut count = DEFAULT_SCAN_COUNT;
    // None: any type; Some(None): a type no key has.
    let mut wanted: Option<Option<kv::KeyType>> = None;
    let mut index = 1;
    while index < arguments.len() {
        let option = arguments[index].to_ascii_lowercase();
        let Some(value) = arguments.get(index + 1) else {
            return Err(Frame::error(SYNTAX_ERROR));
        };
        match option.as_slice() {
            b"match" => pattern = Some(value),
            b"count" => count = scan_count(value)?,
            b"type" => wanted = Some(type_named(value)),
            _ => return Err(Frame::error(SYNTAX_ERROR)),
        }
        index += 2;
    }
    let key_type = match wanted {
        Some(None) => {
            return Ok(Frame::Array(vec![
                Frame::Bulk(Bytes::from_static(b"0")),
                Frame::Array(vec![]),
            ]))
        }
        Some(Some(key_type)) => Some(key_type),
        None => None,
    };
    let (keys, more) = scan_keys(context, start, count, key_type).await?;
    let next_cursor = match keys.last() {
        Some((last, _)) if more => new_cursor(context, successor(last)),
        _ => Bytes::from_static(b"0"),
    };
    let keys = keys
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| pattern.is_none_or_match(key))
        .map(Frame::Bulk)
        .collect();
    Ok(Frame::Array(vec![
        Frame::Bulk(next_cursor),
        Frame::Array(keys),
    ]))
}

/// The bytes of a glob pattern before its first special character: every key it matches
/// starts with them.
fn literal_prefix(pattern: &[u8]) -> &[u8] {
    let end = pattern
        .iter()
        .position(|&b| matches!(b, b'*' | b'?' | b'[' | b'\\'))
        .unwrap_or(pattern.len());
    &pattern[..end]
}

/// KEYS pattern (see the module docs: bounded, from the literal prefix, across regions).
pub(super) async fn keys(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    let pattern = &arguments[0];
    let prefix = literal_prefix(pattern);
    let mut start = Bytes::copy_from_slice(prefix);
    let mut examined = 0usize;
    let mut found = Vec::new();
    loop {
        let (keys, more) = scan_keys(context, start, MAX_SCAN_COUNT, None).await?;
        let mut past_prefix = false;
        for (key, _) in &keys {
            if !key.starts_with(prefix) {
                past_prefix = true;
                break;
            }
            examined += 1;
            if glob_match(pattern, key) {
                found.push(Frame::Bulk(key.clone()));
            }
        }
        let Some((last, _)) = keys.last() else {
            break;
        };
        if past_prefix || !more {
            break;
        }
        if examined >= MAX_KEYS_EXAMINED {
            return Err(Frame::error(KEYS_TOO_MANY));
        }
        start = successor(last);
    }
    Ok(Frame::Array(found))
}

/// RENAME (`if_absent` false: answers OK) and RENAMENX (answers 1 or 0) source destination,
/// both keys in one region (CROSSSLOT otherwise). The value, type and deadline move.
pub(super) async fn rename(
    context: &mut Context<'_>,
    arguments: &[Bytes],
    if_absent: bool,
) -> Result<Frame, Frame> {
    context.check_same_region(&[&arguments[0][..], &arguments[1][..]])?;
    let command = kv::Command::Rename {
        from: arguments[0].clone(),
        to: arguments[1].clone(),
        if_absent,
    };
    match context.write(command).await? {
        kv::Response::Integer(renamed) if if_absent => Ok(Frame::Integer(renamed)),
        kv::Response::Integer(_) => Ok(Frame::simple("OK")),
        other => Err(unexpected(&other)),
    }
}

/// COPY source destination [DB 0] [REPLACE]: only database 0 exists, so DB must name it.
pub(super) async fn copy(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    let mut replace = false;
    let mut index = 2;
    while index < arguments.len() {
        let option = arguments[index].to_ascii_lowercase();
        match (option.as_slice(), arguments.get(index + 1)) {
            (b"replace", _) => replace = true,
            (b"db", Some(database)) => {
                if integer_argument(database)? != 0 {
                    return Err(Frame::error("ERR DB index is out of range"));
                }
                index += 1;
            }
            _ => return Err(Frame::error(SYNTAX_ERROR)),
        }
        index += 1;
    }
    if arguments[0] == arguments[1] {
        return Err(Frame::error(
            "ERR source and destination objects are the same",
        ));
    }
    context.check_same_region(&[&arguments[0][..], &arguments[1][..]])?;
    let command = kv::Command::Copy {
        from: arguments[0].clone(),
        to: arguments[1].clone(),
        replace,
    };
    match context.write(command).await? {
        kv::Response::Integer(copied) => Ok(Frame::Integer(copied)),
        other => Err(unexpected(&other)),
    }
}

/// OBJECT ENCODING's name for a key (module docs).
fn encoding(info: &kv::KeyInfo) -> &'static str {
    match info.key_type {
        kv::KeyType::String if info.is_integer => "int",
        kv::KeyType::String if info.len <= 44 => "embstr",
        kv::KeyType::String => "raw",
        kv::KeyType::Hash if info.len <= 128 => "listpack",
        kv::KeyType::Hash => "hashtable",
    }
}

fn help_lines(lines: &[&str]) -> Frame {
    Frame::Array(lines.iter().map(|line| Frame::simple(line)).collect())
}

fn unknown_subcommand(subcommand: &[u8], command: &str) -> Frame {
    Frame::error(format!(
        "ERR unknown subcommand '{}'. Try {command} HELP.",
        String::from_utf8_lossy(subcommand)
    ))
}

/// OBJECT ENCODING key | HELP. FREQ, IDLETIME and REFCOUNT are refused: RaftKV keeps no
/// access times or counts.
pub(super) async fn object(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    let subcommand = String::from_utf8_lossy(&arguments[0]).to_ascii_lowercase();
    match (subcommand.as_str(), &arguments[1..]) {
        ("encoding", [key]) => {
            let info = inspect(context, key).await?.info;
            Ok(info.map_or(Frame::Null, |info| {
                Frame::bulk(Bytes::from_static(encoding(&info).as_bytes()))
            }))
        }
        ("help", []) => Ok(help_lines(&[
            "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "ENCODING <key>",
            "    Return the kind of internal representation used in order to store the value",
            "    associated with a <key>.",
            "HELP",
            "    Print this help.",
        ])),
        ("encoding" | "help", _) => Err(wrong_arity(&format!("object|{subcommand}"))),
        ("freq" | "idletime" | "refcount", _) => Err(Frame::error(format!(
            "ERR OBJECT {} is not supported by RaftKV (only ENCODING)",
            subcommand.to_ascii_uppercase()
        ))),
        _ => Err(unknown_subcommand(&arguments[0], "OBJECT")),
    }
}

/// MEMORY USAGE key [SAMPLES count] | HELP: the state machine's estimate of what the key costs
/// (nil for an absent key). SAMPLES is accepted and changes nothing (nothing is sampled).
pub(super) async fn memory(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    let subcommand = String::from_utf8_lossy(&arguments[0]).to_ascii_lowercase();
    match (subcommand.as_str(), &arguments[1..]) {
        ("usage", [key, options @ ..]) => {
            match options {
                [] => {}
                [samples, count] if samples.eq_ignore_ascii_case(b"samples") => {
                    integer_argument(count)?;
                }
                _ => return Err(Frame::error(SYNTAX_ERROR)),
            }
            let info = inspect(context, key).await?.info;
            Ok(info.map_or(Frame::Null, |info| {
                Frame::Integer(i64::try_from(info.memory_bytes).unwrap_or(i64::MAX))
            }))
        }
        ("help", []) => Ok(help_lines(&[
            "MEMORY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "USAGE <key> [SAMPLES <count>]",
            "    Return memory in bytes used by <key> and its value.",
            "HELP",
            "    Print this help.",
        ])),
        ("usage" | "help", _) => Err(wrong_arity(&format!("memory|{subcommand}"))),
        _ => Err(unknown_subcommand(&arguments[0], "MEMORY")),
    }
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
