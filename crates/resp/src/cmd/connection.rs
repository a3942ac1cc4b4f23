//! Connection commands: PING, ECHO (inline in dispatch), QUIT (inline), RESET, SELECT, AUTH,
//! CLIENT, HELLO.

use bytes::Bytes;

use super::{integer_argument, wrong_arity, Context, SYNTAX_ERROR};
use crate::config::MAX_CLIENT_NAME_BYTES;
use crate::frame::Frame;

pub(super) fn ping(arguments: &[Bytes]) -> Result<Frame, Frame> {
    match arguments {
        [] => Ok(Frame::simple("PONG")),
        [message] => Ok(Frame::Bulk(message.clone())),
        _ => Err(wrong_arity("ping")),
    }
}

/// RESET: back to a fresh connection's state (name cleared, not authenticated when a password
/// is set). The write session keeps its id and sequence: they are not client-visible state and
/// restarting the sequence would make new writes look like stale retries.
pub(super) fn reset(context: &mut Context<'_>) -> Frame {
    context.session.name = None;
    context.session.authenticated = context.shared.config.password.is_none();
    Frame::simple("RESET")
}

pub(super) fn select(arguments: &[Bytes]) -> Result<Frame, Frame> {
    let index = integer_argument(&arguments[0])?;
    if index != 0 {
        return Err(Frame::error("ERR DB index is out of range"));
    }
    Ok(Frame::simple("OK"))
}

/// Compares without an early exit, so response timing does not reveal how much of a guessed
/// password was right.
fn constant_time_equal(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    left.iter()
        .zip(right)
        .fold(0u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

/// Checks `[username] password` against the configured password; the only user is "default".
fn check_credentials(
    context: &mut Context<'_>,
    username: Option<&[u8]>,
    password: &[u8],
) -> Result<(), Frame> {
    let Some(expected) = context.shared.config.password.as_deref() else {
        return Err(Frame::error(
            "ERR AUTH <password> called without any password configured for the default user. \
             Are you sure your configuration is correct?",
        ));
    };
    let user_ok = match username {
        Some(user) => user == b"default",
        None => true,
    };
    if user_ok && constant_time_equal(password, expected.as_bytes()) {
        context.session.authenticated = true;
        Ok(())
    } else {
        Err(Frame::error(
            "WRONGPASS invalid username-password pair or user is disabled.",
        ))
    }
}

pub(super) fn auth(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    match arguments {
        [password] => check_credentials(context, None, password)?,
        [username, password] => check_credentials(context, Some(username), password)?,
        _ => return Err(Frame::error(SYNTAX_ERROR)),
    }
    Ok(Frame::simple("OK"))
}

/// Client names: Redis allows only printable ASCII without spaces.
fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|b| (b'!'..=b'~').contains(b))
}

fn set_name(context: &mut Context<'_>, name: &Bytes) -> Result<(), Frame> {
    if !valid_client_name(name) || name.len() > MAX_CLIENT_NAME_BYTES {
        return Err(Frame::error(
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    context.session.name = (!name.is_empty()).then(|| name.clone());
    Ok(())
}

pub(super) fn client(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    let subcommand = String::from_utf8_lossy(&arguments[0]).to_ascii_lowercase();
    let rest = &arguments[1..];
    let arity_error = || wrong_arity(&format!("client|{subcommand}"));
    match subcommand.as_str() {
        "setname" => {
            let [name] = rest else {
                return Err(arity_error());
            };
            set_name(context, name)?;
            Ok(Frame::simple("OK"))
        }
        "getname" if rest.is_empty() => Ok(context
            .session
            .name
            .clone()
            .map_or(Frame::Null, Frame::Bulk)),
        "id" if rest.is_empty() => Ok(Frame::Integer(
            i64::try_from(context.session.connection_id).unwrap_or(i64::MAX),
        )),
        // Sent by newer client libraries on connect; accepted and ignored.
        "setinfo" if rest.len() == 2 => Ok(Frame::simple("OK")),
        "getname" | "id" | "setinfo" => Err(arity_error()),
        _ => Err(Frame::error(format!(
            "ERR unknown subcommand '{}'. Try CLIENT HELP.",
            String::from_utf8_lossy(&arguments[0])
        ))),
    }
}

/// HELLO [protover [AUTH username password] [SETNAME clientname]]. Only RESP2 is spoken.
pub(super) fn hello(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    if let Some(version) = arguments.first() {
        let version = integer_argument(version)
            .map_err(|_| Frame::error("ERR Protocol version is not an integer or out of range"))?;
        if version != 2 {
            return Err(Frame::error(
                "NOPROTO sorry, this protocol version is not supported",
            ));
        }
    }
    let mut index = 1;
    let mut name = None;
    while index < arguments.len() {
        let option = arguments[index].to_ascii_lowercase();
        let remaining = arguments.len() - index - 1;
        if option == b"auth" && remaining >= 2 {
            check_credentials(context, Some(&arguments[index + 1]), &arguments[index + 2])?;
            index += 3;
        } else if option == b"setname" && remaining >= 1 {
            name = Some(arguments[index + 1].clone());
            index += 2;
        } else {
            return Err(Frame::error(format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(&arguments[index])
            )));
        }
    }
    if !context.session.authenticated {
        return Err(Frame::error(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the \
             HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and \
             select the RESP protocol version at the same time",
        ));
    }
    if let Some(name) = name {
        set_name(context, &name)?;
    }
    Ok(Frame::Array(vec![
        Frame::bulk(&b"server"[..]),
        Frame::bulk(&b"redis"[..]),
        Frame::bulk(&b"version"[..]),
        Frame::bulk(context.shared.config.redis_version.clone()),
        Frame::bulk(&b"proto"[..]),
        Frame::Integer(2),
        Frame::bulk(&b"id"[..]),
        Frame::Integer(i64::try_from(context.session.connection_id).unwrap_or(i64::MAX)),
        Frame::bulk(&b"mode"[..]),
        Frame::bulk(&b"standalone"[..]),
        Frame::bulk(&b"role"[..]),
        Frame::bulk(&b"master"[..]),
        Frame::bulk(&b"modules"[..]),
        Frame::Array(vec![]),
    ]))
}
