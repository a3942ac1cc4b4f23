//! Expiry commands: SETEX, PSETEX, GETEX, EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT, TTL, PTTL,
//! EXPIRETIME, PEXPIRETIME, PERSIST, DELIFEQ (Valkey 9), and the expiry options SET shares
//! with GETEX ([`ExpiryOption`]).
//!
//! # Time
//! A deadline is absolute log time (ms since the Unix epoch). A relative time (EX, PX, SETEX,
//! EXPIRE) is sent as [`kv::Expiry::In`] and resolved by the state machine against the clock
//! of the log entry that applies it, so every replica stores the same deadline. TTL and PTTL
//! are computed from the `now_ms` that `Inspect` was judged at (the serving leader's clock),
//! not from this front end's clock. This front end's wall clock is used only for Redis's
//! overflow check on relative times (`now + ms` must fit in 63 bits).
//!
//! Argument checks and error texts are Redis 7's (`getExpireMillisecondsOrReply`,
//! `expireGenericCommand`, `parseExtendedExpireArgumentsOrReply`), one deviation: EXPIRE's
//! `XX LT` together is refused (the state machine takes one condition; `XX GT` is the same as
//! `GT`, since GT never applies to a key without a deadline).

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::keys::inspect;
use super::{integer_argument, unexpected, Context, SYNTAX_ERROR};
use crate::frame::Frame;

/// The unit of an expiry argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    Seconds,
    Milliseconds,
}

/// This front end's wall clock, ms since the Unix epoch (overflow checks only).
fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Redis's `addReplyErrorExpireTime`: the text names the command.
fn invalid_expire_time(command: &str) -> Frame {
    Frame::error(format!("ERR invalid expire time in '{command}' command"))
}

/// SET's and GETEX's EX / PX / EXAT / PXAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ExpiryOption {
    Ex,
    Px,
    ExAt,
    PxAt,
}

impl ExpiryOption {
    /// The option named by `lowercase` (an argument already lowercased), if any.
    pub(super) fn parse(lowercase: &[u8]) -> Option<ExpiryOption> {
        match lowercase {
            b"ex" => Some(ExpiryOption::Ex),
            b"px" => Some(ExpiryOption::Px),
            b"exat" => Some(ExpiryOption::ExAt),
            b"pxat" => Some(ExpiryOption::PxAt),
            _ => None,
        }
    }

    fn unit(self) -> Unit {
        match self {
            ExpiryOption::Ex | ExpiryOption::ExAt => Unit::Seconds,
            ExpiryOption::Px | ExpiryOption::PxAt => Unit::Milliseconds,
        }
    }

    fn absolute(self) -> bool {
        matches!(self, ExpiryOption::ExAt | ExpiryOption::PxAt)
    }

    /// The option's time `argument` as a deadline, checked as Redis's
    /// `getExpireMillisecondsOrReply`: an integer (else "value is not an integer"), positive,
    /// and within 63 bits once in ms and (relative) added to now; `command` names the command
    /// in the error ("invalid expire time in 'set' command").
    pub(super) fn expiry(self, argument: &[u8], command: &str) -> Result<kv::Expiry, Frame> {
        positive_expiry(argument, self.unit(), self.absolute(), command)
    }
}

/// See [`ExpiryOption::expiry`]; SETEX and PSETEX use it directly.
fn positive_expiry(
    argument: &[u8],
    unit: Unit,
    absolute: bool,
    command: &str,
) -> Result<kv::Expiry, Frame> {
    let value = integer_argument(argument)?;
    if value <= 0 || (unit == Unit::Seconds && value > i64::MAX / 1000) {
        return Err(invalid_expire_time(command));
    }
    let ms = match unit {
        Unit::Seconds => value * 1000,
        Unit::Milliseconds => value,
    };
    if absolute {
        // Positive, so the cast is exact.
        return Ok(kv::Expiry::At { ms: ms as u64 });
    }
    if ms.checked_add(wall_clock_ms()).is_none() {
        return Err(invalid_expire_time(command));
    }
    Ok(kv::Expiry::In { ms: ms as u64 })
}

/// SETEX / PSETEX key time value: SET with a relative deadline.
pub(super) async fn setex(
    context: &mut Context<'_>,
    arguments: &[Bytes],
    unit: Unit,
    command: &str,
) -> Result<Frame, Frame> {
    let expiry = positive_expiry(&arguments[1], unit, false, command)?;
    let options = kv::PutOptions {
        expiry: kv::SetExpiry::Set(expiry),
        ..kv::PutOptions::default()
    };
    let response = context
        .write(kv::Command::Put {
            key: arguments[0].clone(),
            value: arguments[2].clone(),
            options,
        })
        .await?;
    match response {
        kv::Response::Put { .. } => Ok(Frame::simple("OK")),
        other => Err(unexpected(&other)),
    }
}

/// GETEX key [EX s | PX ms | EXAT ts | PXAT ts | PERSIST]. Without an option it is a plain
/// read (`Get`: WRONGTYPE on a hash too), not a log entry.
pub(super) async fn getex(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    let mut chosen: Option<(ExpiryOption, &Bytes)> = None;
    let mut persist = false;
    let mut index = 1;
    while index < arguments.len() {
        let option = arguments[index].to_ascii_lowercase();
        let next = arguments.get(index + 1);
        match (ExpiryOption::parse(&option), next) {
            // Redis accepts the same option again (the last one wins), never two different.
            (Some(kind), Some(time))
                if !persist && chosen.map_or(true, |(earlier, _)| earlier == kind) =>
            {
                chosen = Some((kind, time));
                index += 1;
            }
            (None, _) if option == b"persist" && chosen.is_none() => persist = true,
            _ => return Err(Frame::error(SYNTAX_ERROR)),
        }
        index += 1;
    }
    let key = arguments[0].clone();
    let expiry = match chosen {
        Some((kind, time)) => kv::GetExExpiry::Set(kind.expiry(time, "getex")?),
        None if persist => kv::GetExExpiry::Persist,
        None => {
            return match context.read(kv::Command::Get { key }).await? {
                kv::Response::Value(value) => Ok(value.map_or(Frame::Null, Frame::Bulk)),
                other => Err(unexpected(&other)),
            };
        }
    };
    match context.write(kv::Command::GetEx { key, expiry }).await? {
        kv::Response::Value(value) => Ok(value.map_or(Frame::Null, Frame::Bulk)),
        other => Err(unexpected(&other)),
    }
}

/// The condition of EXPIRE and friends: `[NX | XX | GT | LT]...` with Redis 7's checks.
fn expire_condition(options: &[Bytes]) -> Result<kv::ExpireCondition, Frame> {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for option in options {
        match option.to_ascii_lowercase().as_slice() {
            b"nx" => nx = true,
            b"xx" => xx = true,
            b"gt" => gt = true,
            b"lt" => lt = true,
            _ => {
                return Err(Frame::error(format!(
                    "ERR Unsupported option {}",
                    String::from_utf8_lossy(option)
                )))
            }
        }
    }
    if nx && (xx || gt || lt) {
        return Err(Frame::error(
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Err(Frame::error(
            "ERR GT and LT options at the same time are not compatible",
        ));
    }
    Ok(match (nx, xx, gt, lt) {
        (true, ..) => kv::ExpireCondition::Nx,
        // GT never applies to a key without a deadline (its TTL counts as infinite), so
        // XX GT is GT.
        (_, _, true, _) => kv::ExpireCondition::Gt,
        (_, true, _, true) => {
            return Err(Frame::error(
                "ERR XX and LT options together are not supported by RaftKV",
            ))
        }
        (_, _, _, true) => kv::ExpireCondition::Lt,
        (_, true, _, _) => kv::ExpireCondition::Xx,
        _ => kv::ExpireCondition::Always,
    })
}

/// EXPIRE / PEXPIRE (relative) and EXPIREAT / PEXPIREAT (`absolute`) key time [conditions].
/// As in Redis, a time already past deletes the key (answering 1 if it existed); the options
/// are checked before the time.
pub(super) async fn expire(
    context: &mut Context<'_>,
    arguments: &[Bytes],
    unit: Unit,
    absolute: bool,
    command: &str,
) -> Result<Frame, Frame> {
    let condition = expire_condition(&arguments[2..])?;
    let mut when = integer_argument(&arguments[1])?;
    if unit == Unit::Seconds {
        if !(i64::MIN / 1000..=i64::MAX / 1000).contains(&when) {
            return Err(invalid_expire_time(command));
        }
        when *= 1000;
    }
    let base = if absolute { 0 } else { wall_clock_ms() };
    if when > i64::MAX - base {
        return Err(invalid_expire_time(command));
    }
    let deadline = if absolute {
        // A negative time is as past as the epoch.
        kv::Expiry::At {
            ms: u64::try_from(when).unwrap_or(0),
        }
    } else if when > 0 {
        kv::Expiry::In { ms: when as u64 }
    } else {
        // Now or earlier: the key goes at once.
        kv::Expiry::At { ms: 0 }
    };
    let command = kv::Command::Expire {
        key: arguments[0].clone(),
        when: deadline,
        condition,
    };
    integer_frame(context.write(command).await?)
}

fn integer_frame(response: kv::Response) -> Result<Frame, Frame> {
    match response {
        kv::Response::Integer(value) => Ok(Frame::Integer(value)),
        other => Err(unexpected(&other)),
    }
}

/// TTL (`in_ms` false), PTTL, EXPIRETIME (`absolute`), PEXPIRETIME, as Redis's
/// `ttlGenericCommand`: -2 for an absent key, -1 without a deadline, otherwise the remaining
/// time (never negative; seconds rounded: `(ms + 500) / 1000`) or the deadline itself.
pub(super) async fn ttl(
    context: &mut Context<'_>,
    arguments: &[Bytes],
    in_ms: bool,
    absolute: bool,
) -> Result<Frame, Frame> {
    let inspected = inspect(context, &arguments[0]).await?;
    let Some(info) = inspected.info else {
        return Ok(Frame::Integer(-2));
    };
    let Some(deadline) = info.expires_at_ms else {
        return Ok(Frame::Integer(-1));
    };
    let ms = if absolute {
        deadline
    } else {
        deadline.saturating_sub(inspected.now_ms)
    };
    let value = if in_ms {
        ms
    } else {
        ms.saturating_add(500) / 1000
    };
    Ok(Frame::Integer(i64::try_from(value).unwrap_or(i64::MAX)))
}

pub(super) async fn persist(
    context: &mut Context<'_>,
    arguments: &[Bytes],
) -> Result<Frame, Frame> {
    let command = kv::Command::Persist {
        key: arguments[0].clone(),
    };
    integer_frame(context.write(command).await?)
}

/// DELIFEQ key value (Valkey 9): deletes the key only if it holds exactly `value`, in one log
/// entry: the safe release of a `SET key token NX PX ms` lock.
pub(super) async fn delifeq(
    context: &mut Context<'_>,
    arguments: &[Bytes],
) -> Result<Frame, Frame> {
    let command = kv::Command::DelIfEq {
        key: arguments[0].clone(),
        value: arguments[1].clone(),
    };
    integer_frame(context.write(command).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(options: &[&str]) -> Result<kv::ExpireCondition, Frame> {
        let options: Vec<Bytes> = options
            .iter()
            .map(|o| Bytes::copy_from_slice(o.as_bytes()))
            .collect();
        expire_condition(&options)
    }

    #[test]
    fn expire_conditions_follow_redis() {
        use kv::ExpireCondition as C;
        assert!(matches!(condition(&[]), Ok(C::Always)));
        assert!(matches!(condition(&["nx"]), Ok(C::Nx)));
        assert!(matches!(condition(&["XX"]), Ok(C::Xx)));
        assert!(matches!(condition(&["gt"]), Ok(C::Gt)));
        assert!(matches!(condition(&["xx", "gt"]), Ok(C::Gt)));
        assert!(matches!(condition(&["lt"]), Ok(C::Lt)));
        let error = |options: &[&str]| match condition(options) {
            Err(Frame::Error(text)) => text,
            _ => String::new(),
        };
        assert_eq!(
            error(&["nx", "xx"]),
            "ERR NX and XX, GT or LT options at the same time are not compatible"
        );
        assert_eq!(
            error(&["gt", "lt"]),
            "ERR GT and LT options at the same time are not compatible"
        );
        assert_eq!(error(&["foo"]), "ERR Unsupported option foo");
    }

    #[test]
    fn expiry_arguments_are_checked_like_redis() {
        let set = |argument: &str, option: ExpiryOption| option.expiry(argument.as_bytes(), "set");
        assert_eq!(
            set("10", ExpiryOption::Ex),
            Ok(kv::Expiry::In { ms: 10_000 })
        );
        assert_eq!(set("10", ExpiryOption::Px), Ok(kv::Expiry::In { ms: 10 }));
        assert_eq!(
            set("7", ExpiryOption::ExAt),
            Ok(kv::Expiry::At { ms: 7_000 })
        );
        let invalid = Err(Frame::error("ERR invalid expire time in 'set' command"));
        assert_eq!(set("0", ExpiryOption::Ex), invalid);
        assert_eq!(set("-1", ExpiryOption::Px), invalid);
        assert_eq!(set("9223372036854775807", ExpiryOption::Ex), invalid);
        assert_eq!(set("9223372036854775807", ExpiryOption::Px), invalid);
        assert_eq!(
            set("x", ExpiryOption::Ex),
            Err(Frame::error(super::super::NOT_AN_INTEGER))
        );
    }
}
