//! String commands. Each read-modify-write command is exactly one state-machine command, so it
//! is atomic and applied once even when the backend retries it. On a hash key they answer
//! WRONGTYPE (the state machine decides), except SET, which overwrites any type, and MGET,
//! which answers nil for it, as in Redis.

use bytes::Bytes;

use super::expiry::ExpiryOption;
use super::keys::get as read_value;
use super::{integer_argument, unexpected, wrong_arity, Context, NOT_A_FLOAT, SYNTAX_ERROR};
use crate::frame::Frame;

/// Redis refuses float arguments longer than this (`MAX_LONG_DOUBLE_CHARS`).
const MAX_FLOAT_ARGUMENT_BYTES: usize = 5 * 1024;

pub(super) fn value_frame(value: Option<Bytes>) -> Frame {
    value.map_or(Frame::Null, Frame::Bulk)
}

fn written_frame(response: kv::Response) -> Result<Frame, Frame> {
    match response {
        kv::Response::Written(written) => Ok(Frame::Integer(i64::from(written))),
        other => Err(unexpected(&other)),
    }
}

fn previous_value(response: kv::Response) -> Result<Frame, Frame> {
    match response {
        kv::Response::Value(value) => Ok(value_frame(value)),
        other => Err(unexpected(&other)),
    }
}

fn length_frame(response: kv::Response) -> Result<Frame, Frame> {
    match response {
        kv::Response::Length(length) => {
            Ok(Frame::Integer(i64::try_from(length).unwrap_or(i64::MAX)))
        }
        other => Err(unexpected(&other)),
    }
}

pub(super) async fn get(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    Ok(value_frame(read_value(context, &arguments[0]).await?))
}

/// SET key value [NX|XX] [GET] [EX s|PX ms|EXAT ts|PXAT ts|KEEPTTL], with Redis 7's option
/// rules (`parseExtendedStringArgumentsOrReply`): NX with XX, or two different expiry options
/// (KEEPTTL included), are a syntax error; the same expiry option twice takes the last. A SET
/// without an expiry option drops the key's deadline, as in Redis.
pub(super) async fn set(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    let mut options = kv::PutOptions::default();
    let mut chosen: Option<(ExpiryOption, &Bytes)> = None;
    let mut keep_ttl = false;
    let mut index = 2;
    while index < arguments.len() {
        let option = arguments[index].to_ascii_lowercase();
        let next = arguments.get(index + 1);
        match (option.as_slice(), ExpiryOption::parse(&option), next) {
            (b"nx", ..) if !options.if_present => options.if_absent = true,
            (b"xx", ..) if !options.if_absent => options.if_present = true,
            (b"get", ..) => options.return_previous = true,
            (b"keepttl", ..) if chosen.is_none() => keep_ttl = true,
            (_, Some(kind), Some(time))
                if !keep_ttl && chosen.map_or(true, |(earlier, _)| earlier == kind) =>
            {
                chosen = Some((kind, time));
                index += 1;
            }
            _ => return Err(Frame::error(SYNTAX_ERROR)),
        }
        index += 1;
    }
    options.expiry = match chosen {
        Some((kind, time)) => kv::SetExpiry::Set(kind.expiry(time, "set")?),
        None if keep_ttl => kv::SetExpiry::Keep,
        None => kv::SetExpiry::Clear,
    };
    let return_previous = options.return_previous;
    let response = context
        .write(kv::Command::Put {
            key: arguments[0].clone(),
            value: arguments[1].clone(),
            options,
        })
        .await?;
    match response {
        kv::Response::Put { previous, .. } if return_previous => Ok(value_frame(previous)),
        kv::Response::Put { written: true, .. } => Ok(Frame::simple("OK")),
        kv::Response::Put { written: false, .. } => Ok(Frame::Null),
        other => Err(unexpected(&other)),
    }
}

pub(super) async fn setnx(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    let command = kv::Command::SetNx {
        key: arguments[0].clone(),
        value: arguments[1].clone(),
    };
    written_frame(context.write(command).await?)
}

pub(super) async fn getset(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    let command = kv::Command::GetSet {
        key: arguments[0].clone(),
        value: arguments[1].clone(),
    };
    previous_value(context.write(command).await?)
}

pub(super) async fn getdel(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    let command = kv::Command::GetDel {
        key: arguments[0].clone(),
    };
    previous_value(context.write(command).await?)
}

pub(super) async fn mget(context: &mut Context<'_>, keys: &[Bytes]) -> Result<Frame, Frame> {
    let slices: Vec<&[u8]> = keys.iter().map(|k| k.as_ref()).collect();
    context.check_same_region(&slices)?;
    let command = kv::Command::BatchGet {
        keys: keys.to_vec(),
    };
    match context.read(command).await? {
        kv::Response::Values(values) => {
            Ok(Frame::Array(values.into_iter().map(value_frame).collect()))
        }
        other => Err(unexpected(&other)),
    }
}

/// The key/value pairs of MSET and MSETNX, after the arity and region checks.
fn pairs(
    context: &Context<'_>,
    name: &str,
    arguments: &[Bytes],
) -> Result<Vec<(Bytes, Bytes)>, Frame> {
    if arguments.len() % 2 != 0 {
        return Err(wrong_arity(name));
    }
    let keys: Vec<&[u8]> = arguments.iter().step_by(2).map(|k| k.as_ref()).collect();
    context.check_same_region(&keys)?;
    Ok(arguments
        .chunks_exact(2)
        .map(|pair| (pair[0].clone(), pair[1].clone()))
        .collect())
}

pub(super) async fn mset(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    let pairs = pairs(context, "mset", arguments)?;
    match context.write(kv::Command::BatchPut { pairs }).await? {
        kv::Response::Done => Ok(Frame::simple("OK")),
        other => Err(unexpected(&other)),
    }
}

pub(super) async fn msetnx(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    let pairs = pairs(context, "msetnx", arguments)?;
    written_frame(context.write(kv::Command::MSetNx { pairs }).await?)
}

pub(super) async fn append(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    let command = kv::Command::Append {
        key: arguments[0].clone(),
        value: arguments[1].clone(),
    };
    length_frame(context.write(command).await?)
}

pub(super) async fn strlen(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    let length = read_value(context, &arguments[0])
        .await?
        .map_or(0, |v| v.len());
    Ok(Frame::Integer(length as i64))
}

/// GETRANGE key start end, with Redis 7's index rules: negative indexes count from the end,
/// both ends are clamped, an empty or inverted range gives "".
pub(super) async fn getrange(
    context: &mut Context<'_>,
    arguments: &[Bytes],
) -> Result<Frame, Frame> {
    let start = integer_argument(&arguments[1])?;
    let end = integer_argument(&arguments[2])?;
    let value = read_value(context, &arguments[0])
        .await?
        .unwrap_or_default();
    Ok(Frame::Bulk(substring(&value, start, end)))
}

fn substring(value: &Bytes, start: i64, end: i64) -> Bytes {
    let length = value.len() as i64;
    if length == 0 || (start < 0 && end < 0 && start > end) {
        return Bytes::new();
    }
    let resolve = |index: i64| {
        if index < 0 {
            (length + index).max(0)
        } else {
            index
        }
    };
    let start = resolve(start);
    let end = resolve(end).min(length - 1);
    if start > end {
        return Bytes::new();
    }
    // Both are within 0..length here, so the casts are exact.
    value.slice(start as usize..=end as usize)
}

pub(super) async fn setrange(
    context: &mut Context<'_>,
    arguments: &[Bytes],
) -> Result<Frame, Frame> {
    let offset = integer_argument(&arguments[1])?;
    let offset = u64::try_from(offset).map_err(|_| Frame::error("ERR offset is out of range"))?;
    let command = kv::Command::SetRange {
        key: arguments[0].clone(),
        offset,
        value: arguments[2].clone(),
    };
    length_frame(context.write(command).await?)
}

pub(super) async fn incr_by(
    context: &mut Context<'_>,
    key: &Bytes,
    delta: i64,
) -> Result<Frame, Frame> {
    let command = kv::Command::Incr {
        key: key.clone(),
        delta,
    };
    match context.write(command).await? {
        kv::Response::Integer(value) => Ok(Frame::Integer(value)),
        other => Err(unexpected(&other)),
    }
}

/// INCRBY and DECRBY (`negate`).
pub(super) async fn incrby(
    context: &mut Context<'_>,
    arguments: &[Bytes],
    negate: bool,
) -> Result<Frame, Frame> {
    let delta = integer_argument(&arguments[1])?;
    let delta = if negate {
        delta
            .checked_neg()
            .ok_or_else(|| Frame::error("ERR decrement would overflow"))?
    } else {
        delta
    };
    incr_by(context, &arguments[0], delta).await
}

/// Parses a float like Redis's `string2ld`: no surrounding spaces, no NaN, bounded length.
pub(super) fn parse_float(text: &[u8]) -> Option<f64> {
    if text.is_empty() || text.len() > MAX_FLOAT_ARGUMENT_BYTES {
        return None;
    }
    let value: f64 = std::str::from_utf8(text).ok()?.parse().ok()?;
    (!value.is_nan()).then_some(value)
}

pub(super) async fn incrbyfloat(
    context: &mut Context<'_>,
    arguments: &[Bytes],
) -> Result<Frame, Frame> {
    let delta = parse_float(&arguments[1]).ok_or_else(|| Frame::error(NOT_A_FLOAT))?;
    if delta.is_infinite() {
        return Err(Frame::error("ERR increment would produce NaN or Infinity"));
    }
    let command = kv::Command::IncrByFloat {
        key: arguments[0].clone(),
        delta_bits: delta.to_bits(),
    };
    previous_value(context.write(command).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substring_follows_redis_rules() {
        let value = Bytes::from_static(b"This is a string");
        let cases: &[(i64, i64, &[u8])] = &[
            (0, 3, b"This"),
            (-3, -1, b"ing"),
            (0, -1, b"This is a string"),
            (10, 100, b"string"),
            (5, 3, b""),
            (-1, -5, b""),
            (-100, 3, b"This"),
        ];
        for (start, end, expected) in cases {
            assert_eq!(
                &substring(&value, *start, *end)[..],
                *expected,
                "{start} {end}"
            );
        }
        assert_eq!(&substring(&Bytes::new(), 0, -1)[..], b"");
    }

    #[test]
    fn floats_parse_like_redis() {
        assert_eq!(parse_float(b"1.5"), Some(1.5));
        assert_eq!(parse_float(b"-5e3"), Some(-5000.0));
        assert_eq!(parse_float(b"nan"), None);
        assert_eq!(parse_float(b" 1"), None);
        assert_eq!(parse_float(b""), None);
        assert_eq!(parse_float(b"abc"), None);
    }
}
