//! Hash commands: HSET, HMSET, HSETNX, HGET, HMGET, HGETALL, HDEL, HLEN, HEXISTS, HKEYS,
//! HVALS, HINCRBY, HINCRBYFLOAT, HSTRLEN, HRANDFIELD, HSCAN.
//!
//! Each is one state-machine command (a hash is one entry of the ordered table, never split
//! across regions), so a read-modify-write such as HINCRBY is atomic and applied once. On a
//! string key they answer WRONGTYPE (the state machine decides; HLEN checks `Inspect`'s type).
//!
//! HRANDFIELD picks from `HGetAll` here, in the front end, with Redis 7's rules (a negative
//! count allows repeats; WITHVALUES answers pairs: a flat array in RESP2, an array of
//! two-element arrays in RESP3). A negative count is bounded by
//! [`crate::config::MAX_RANDOM_FIELDS`]. HSCAN pages with `HScan` (fields in order); its
//! cursors live in the SCAN cursor table (see `keys`), each naming the field to resume after.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use bytes::Bytes;

use super::keys::{cursor_entry, glob_match, inspect, new_cursor, scan_count};
use super::strings::{parse_float, value_frame};
use super::{
    integer_argument, unexpected, wrong_arity, Context, NOT_A_FLOAT, SYNTAX_ERROR, WRONGTYPE,
};
use crate::config::{DEFAULT_SCAN_COUNT, MAX_RANDOM_FIELDS};
use crate::frame::{Frame, Protocol};

fn integer_frame(response: kv::Response) -> Result<Frame, Frame> {
    match response {
        kv::Response::Integer(value) => Ok(Frame::Integer(value)),
        other => Err(unexpected(&other)),
    }
}

/// HSET / HMSET key field value [field value ...]: HSET answers the number of new fields,
/// HMSET (its deprecated alias) OK.
pub(super) async fn hset(
    context: &mut Context<'_>,
    arguments: &[Bytes],
    name: &str,
) -> Result<Frame, Frame> {
    let pairs = &arguments[1..];
    if pairs.len() % 2 != 0 {
        return Err(wrong_arity(name));
    }
    let command = kv::Command::HSet {
        key: arguments[0].clone(),
        fields: pairs
            .chunks_exact(2)
            .map(|pair| (pair[0].clone(), pair[1].clone()))
            .collect(),
        if_absent: false,
    };
    let response = context.write(command).await?;
    if name == "hmset" {
        return match response {
            kv::Response::Integer(_) => Ok(Frame::simple("OK")),
            other => Err(unexpected(&other)),
        };
    }
    integer_frame(response)
}

pub(super) async fn hsetnx(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    let command = kv::Command::HSet {
        key: arguments[0].clone(),
        fields: vec![(arguments[1].clone(), arguments[2].clone())],
        if_absent: true,
    };
    integer_frame(context.write(command).await?)
}

/// The values of `fields` (None: absent field or key).
async fn field_values(
    context: &mut Context<'_>,
    key: &Bytes,
    fields: Vec<Bytes>,
) -> Result<Vec<Option<Bytes>>, Frame> {
    let count = fields.len();
    let command = kv::Command::HGet {
        key: key.clone(),
        fields,
    };
    match context.read(command).await? {
        kv::Response::Values(values) if values.len() == count => Ok(values),
        other => Err(unexpected(&other)),
    }
}

/// One field's value.
async fn field_value(
    context: &mut Context<'_>,
    key: &Bytes,
    field: &Bytes,
) -> Result<Option<Bytes>, Frame> {
    Ok(field_values(context, key, vec![field.clone()])
        .await?
        .into_iter()
        .next()
        .flatten())
}

pub(super) async fn hget(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    Ok(value_frame(
        field_value(context, &arguments[0], &arguments[1]).await?,
    ))
}

pub(super) async fn hmget(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    let values = field_values(context, &arguments[0], arguments[1..].to_vec()).await?;
    Ok(Frame::Array(values.into_iter().map(value_frame).collect()))
}

pub(super) async fn hexists(
    context: &mut Context<'_>,
    arguments: &[Bytes],
) -> Result<Frame, Frame> {
    let value = field_value(context, &arguments[0], &arguments[1]).await?;
    Ok(Frame::Integer(i64::from(value.is_some())))
}

pub(super) async fn hstrlen(
    context: &mut Context<'_>,
    arguments: &[Bytes],
) -> Result<Frame, Frame> {
    let value = field_value(context, &arguments[0], &arguments[1]).await?;
    Ok(Frame::Integer(value.map_or(0, |v| v.len() as i64)))
}

/// Every (field, value) of the hash, in field order ([] for an absent key).
async fn all_pairs(context: &mut Context<'_>, key: &Bytes) -> Result<Vec<(Bytes, Bytes)>, Frame> {
    match context
        .read(kv::Command::HGetAll { key: key.clone() })
        .await?
    {
        kv::Response::Pairs(pairs) => Ok(pairs),
        other => Err(unexpected(&other)),
    }
}

/// HGETALL: a map in RESP3, a flat array of field, value, ... in RESP2 (as Redis).
pub(super) async fn hgetall(
    context: &mut Context<'_>,
    arguments: &[Bytes],
) -> Result<Frame, Frame> {
    let pairs = all_pairs(context, &arguments[0]).await?;
    Ok(Frame::Map(
        pairs
            .into_iter()
            .map(|(field, value)| (Frame::Bulk(field), Frame::Bulk(value)))
            .collect(),
    ))
}

/// HKEYS (`fields`) and HVALS.
pub(super) async fn hkeys_or_hvals(
    context: &mut Context<'_>,
    arguments: &[Bytes],
    fields: bool,
) -> Result<Frame, Frame> {
    let pairs = all_pairs(context, &arguments[0]).await?;
    Ok(Frame::Array(
        pairs
            .into_iter()
            .map(|(field, value)| Frame::Bulk(if fields { field } else { value }))
            .collect(),
    ))
}

pub(super) async fn hdel(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    let command = kv::Command::HDel {
        key: arguments[0].clone(),
        fields: arguments[1..].to_vec(),
    };
    integer_frame(context.write(command).await?)
}

/// HLEN: the field count `Inspect` reports; WRONGTYPE on a string, 0 for an absent key.
pub(super) async fn hlen(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    match inspect(context, &arguments[0]).await?.info {
        None => Ok(Frame::Integer(0)),
        Some(info) if info.key_type == kv::KeyType::Hash => {
            Ok(Frame::Integer(i64::try_from(info.len).unwrap_or(i64::MAX)))
        }
        Some(_) => Err(Frame::error(WRONGTYPE)),
    }
}

pub(super) async fn hincrby(
    context: &mut Context<'_>,
    arguments: &[Bytes],
) -> Result<Frame, Frame> {
    let delta = integer_argument(&arguments[2])?;
    let command = kv::Command::HIncrBy {
        key: arguments[0].clone(),
        field: arguments[1].clone(),
        delta,
    };
    integer_frame(context.write(command).await?)
}

/// HINCRBYFLOAT key field increment: Redis 7 refuses an infinite increment up front ("value
/// is NaN or Infinity"); a result that is not finite is the state machine's `NotFinite`.
pub(super) async fn hincrbyfloat(
    context: &mut Context<'_>,
    arguments: &[Bytes],
) -> Result<Frame, Frame> {
    let delta = parse_float(&arguments[2]).ok_or_else(|| Frame::error(NOT_A_FLOAT))?;
    if delta.is_infinite() {
        return Err(Frame::error("ERR value is NaN or Infinity"));
    }
    let command = kv::Command::HIncrByFloat {
        key: arguments[0].clone(),
        field: arguments[1].clone(),
        delta_bits: delta.to_bits(),
    };
    match context.write(command).await? {
        kv::Response::Value(value) => Ok(value_frame(value)),
        other => Err(unexpected(&other)),
    }
}

/// A small xorshift generator seeded from std's per-process random keys: HRANDFIELD needs
/// no more (the crate has no `rand` dependency).
struct Random(u64);

impl Random {
    fn new() -> Random {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        Random(hasher.finish() | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform enough in `0..bound` (`bound > 0`).
    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

/// Redis's `getRangeLongFromObjectOrReply(-LONG_MAX, LONG_MAX)` text.
const COUNT_OUT_OF_RANGE: &str = "ERR value is out of range, value must between \
     -9223372036854775807 and 9223372036854775807";

/// HRANDFIELD key [count [WITHVALUES]] (module docs).
pub(super) async fn hrandfield(
    context: &mut Context<'_>,
    arguments: &[Bytes],
) -> Result<Frame, Frame> {
    let key = &arguments[0];
    let Some(count) = arguments.get(1) else {
        let pairs = all_pairs(context, key).await?;
        if pairs.is_empty() {
            return Ok(Frame::Null);
        }
        let pick = Random::new().below(pairs.len());
        return Ok(Frame::Bulk(pairs[pick].0.clone()));
    };
    let count = integer_argument(count)?;
    if count == i64::MIN {
        return Err(Frame::error(COUNT_OUT_OF_RANGE));
    }
    let with_values = match &arguments[2..] {
        [] => false,
        [option] if option.eq_ignore_ascii_case(b"withvalues") => {
            if !(-(i64::MAX / 2)..=i64::MAX / 2).contains(&count) {
                return Err(Frame::error("ERR value is out of range"));
            }
            true
        }
        _ => return Err(Frame::error(SYNTAX_ERROR)),
    };
    if count < 0 && count.unsigned_abs() > MAX_RANDOM_FIELDS {
        return Err(Frame::error(format!(
            "ERR HRANDFIELD with a negative count is limited to {MAX_RANDOM_FIELDS} fields by RaftKV"
        )));
    }
    // Read first, as Redis looks the key up (and checks its type) before using the count.
    let pairs = all_pairs(context, key).await?;
    if pairs.is_empty() || count == 0 {
        return Ok(Frame::Array(vec![]));
    }
    let mut random = Random::new();
    let chosen: Vec<usize> = if count < 0 {
        // Repeats allowed: `|count|` independent picks.
        (0..count.unsigned_abs())
            .map(|_| random.below(pairs.len()))
            .collect()
    } else if count as u64 >= pairs.len() as u64 {
        (0..pairs.len()).collect()
    } else {
        // `count` distinct fields: a partial Fisher-Yates shuffle of the indexes.
        let mut indexes: Vec<usize> = (0..pairs.len()).collect();
        let wanted = count as usize;
        for i in 0..wanted {
            let j = i + random.below(indexes.len() - i);
            indexes.swap(i, j);
        }
        indexes.truncate(wanted);
        indexes
    };
    let resp3 = context.session.protocol == Protocol::Resp3;
    let mut reply = Vec::with_capacity(chosen.len() * if with_values { 2 } else { 1 });
    for index in chosen {
        let (field, value) = &pairs[index];
        let field = Frame::Bulk(field.clone());
        match (with_values, resp3) {
            (false, _) => reply.push(field),
            (true, true) => reply.push(Frame::Array(vec![field, Frame::Bulk(value.clone())])),
            (true, false) => {
                reply.push(field);
                reply.push(Frame::Bulk(value.clone()));
            }
        }
    }
    Ok(Frame::Array(reply))
}

/// HSCAN key cursor [MATCH pattern] [COUNT count] [NOVALUES]: a flat array of field, value,
/// ... (fields only with NOVALUES) in both protocols, as Redis.
pub(super) async fn hscan(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    let after = cursor_entry(context, &arguments[1])?;
    let mut pattern: Option<&Bytes> = None;
    let mut count = DEFAULT_SCAN_COUNT;
    let mut no_values = false;
    let mut index = 2;
    while index < arguments.len() {
        let option = arguments[index].to_ascii_lowercase();
        match (option.as_slice(), arguments.get(index + 1)) {
            (b"novalues", _) => {
                no_values = true;
                index += 1;
                continue;
            }
            (b"match", Some(value)) => pattern = Some(value),
            (b"count", Some(value)) => count = scan_count(value)?,
            _ => return Err(Frame::error(SYNTAX_ERROR)),
        }
        index += 2;
    }
    let command = kv::Command::HScan {
        key: arguments[0].clone(),
        after,
        limit: count,
    };
    let (pairs, more) = match context.read(command).await? {
        kv::Response::HScan { pairs, more } => (pairs, more),
        other => return Err(unexpected(&other)),
    };
    let next_cursor = match pairs.last() {
        Some((last, _)) if more => new_cursor(context, last.clone()),
        _ => Bytes::from_static(b"0"),
    };
    let mut items = Vec::new();
    for (field, value) in pairs {
        if pattern.map_or(true, |pattern| glob_match(pattern, &field)) {
            items.push(Frame::Bulk(field));
            if !no_values {
                items.push(Frame::Bulk(value));
            }
        }
    }
    Ok(Frame::Array(vec![
        Frame::Bulk(next_cursor),
        Frame::Array(items),
    ]))
}
