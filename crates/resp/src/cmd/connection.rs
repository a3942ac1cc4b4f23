//! Connection commands: PING, ECHO (inline in dispatch), QUIT (inline), RESET, SELECT, AUTH,
//! CLIENT, HELLO.
//!
//! HELLO, CLIENT SETINFO and CLIENT SETNAME are what client libraries send when they connect
//! (redis-py 5+: `HELLO 3` by default from 8.0, then `CLIENT SETINFO LIB-NAME` and `LIB-VER`,
//! whose errors it ignores); they are answered as Redis 7.2 does. The only user is `default`:
//! there are no ACL users.

use bytes::Bytes;

use super::{command_name, integer_argument, wrong_arity, Context, SYNTAX_ERROR};
use crate::config::{MAX_CLIENT_LIB_BYTES, MAX_CLIENT_NAME_BYTES};
use crate::frame::{Frame, Protocol};

pub(super) fn ping(arguments: &[Bytes]) -> Result<Frame, Frame> {
    match arguments {
        [] => Ok(Frame::simple("PONG")),
        [message] => Ok(Frame::Bulk(message.clone())),
        _ => Err(wrong_arity("ping")),
    }
}

/// RESET: back to a fresh connection's state (name cleared, RESP2, not authenticated when a
/// password is set), as Redis's RESET; the library name and version stay, as in Redis (they
/// still describe the library behind the connection). The write session keeps its id and
/// sequence: they are not client-visible state and restarting the sequence would make new
/// writes look like stale retries. An open transaction is discarded and the watches
/// forgotten, as in Redis.
pub(super) fn reset(context: &mut Context<'_>) -> Frame {
    context.session.transaction = None;
    context.session.watches.clear();
    context.session.client.update(|state| state.name = None);
    context.session.set_protocol(Protocol::Resp2);
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

const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// Checks `[username] password` as Redis's default user would, without changing anything:
/// the only user is `default`. With a password configured it must match. Without one the
/// default user has Redis's `nopass`: any password is accepted for it, except that the
/// one-argument `AUTH password` is an error, as Redis makes it (a configuration mistake).
fn verify_credentials(
    context: &Context<'_>,
    username: Option<&[u8]>,
    password: &[u8],
) -> Result<(), Frame> {
    let user_ok = username.map_or(true, |user| user == b"default");
    match context.shared.config.password.as_deref() {
        None if username.is_none() => Err(Frame::error(
            "ERR AUTH <password> called without any password configured for the default user. \
             Are you sure your configuration is correct?",
        )),
        None if user_ok => Ok(()),
        Some(expected) if user_ok && constant_time_equal(password, expected.as_bytes()) => Ok(()),
        _ => Err(Frame::error(WRONGPASS)),
    }
}

pub(super) fn auth(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    match arguments {
        [password] => verify_credentials(context, None, password)?,
        [username, password] => verify_credentials(context, Some(username), password)?,
        _ => return Err(Frame::error(SYNTAX_ERROR)),
    }
    context.session.authenticated = true;
    Ok(Frame::simple("OK"))
}

/// Client names and library fields: Redis allows only printable ASCII without spaces, which
/// also keeps CLIENT LIST's `key=value` lines parseable.
fn valid_client_attribute(value: &[u8]) -> bool {
    value.iter().all(|b| (b'!'..=b'~').contains(b))
}

/// Checks a CLIENT SETNAME / HELLO SETNAME name; `Some(name)` to set, `None` to clear (an
/// empty name, as in Redis).
fn checked_name(name: &Bytes) -> Result<Option<Bytes>, Frame> {
    if !valid_client_attribute(name) || name.len() > MAX_CLIENT_NAME_BYTES {
        return Err(Frame::error(
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    Ok((!name.is_empty()).then(|| name.clone()))
}

/// CLIENT SETINFO LIB-NAME|LIB-VER value, with Redis 7.2's checks and texts (`attribute` is
/// shown as the client wrote it). An empty value clears the field, as in Redis.
fn set_info(context: &Context<'_>, attribute: &Bytes, value: &Bytes) -> Result<Frame, Frame> {
    let shown = String::from_utf8_lossy(attribute);
    let is_name = attribute.eq_ignore_ascii_case(b"lib-name");
    if !is_name && !attribute.eq_ignore_ascii_case(b"lib-ver") {
        return Err(Frame::error(format!("ERR Unrecognized option '{shown}'")));
    }
    if !valid_client_attribute(value) {
        return Err(Frame::error(format!(
            "ERR {shown} cannot contain spaces, newlines or special characters."
        )));
    }
    // Not a Redis check (Redis bounds it only by the request size): each connection keeps it.
    if value.len() > MAX_CLIENT_LIB_BYTES {
        return Err(Frame::error(format!(
            "ERR {shown} is longer than {MAX_CLIENT_LIB_BYTES} bytes"
        )));
    }
    let value = (!value.is_empty()).then(|| value.clone());
    context.session.client.update(|state| {
        if is_name {
            state.lib_name = value;
        } else {
            state.lib_ver = value;
        }
    });
    Ok(Frame::simple("OK"))
}

/// CLIENT LIST [TYPE type | ID id [id ...]]: one line per connection of this front end (not
/// of the cluster's other servers), each ending in a newline, as a verbatim string.
fn list(context: &Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    let clients = &context.shared.clients;
    let records = match arguments {
        [] => clients.all(),
        [option, kind] if option.eq_ignore_ascii_case(b"type") => {
            match kind.to_ascii_lowercase().as_slice() {
                // Every connection here is a normal one: no replicas, no pub/sub.
                b"normal" => clients.all(),
                b"master" | b"replica" | b"slave" | b"pubsub" => Vec::new(),
                _ => {
                    return Err(Frame::error(format!(
                        "ERR Unknown client type '{}'",
                        String::from_utf8_lossy(kind)
                    )))
                }
            }
        }
        [option, ids @ ..] if option.eq_ignore_ascii_case(b"id") && !ids.is_empty() => {
            let mut records = Vec::new();
            for id in ids {
                let id = integer_argument(id).map_err(|_| Frame::error("ERR Invalid client ID"))?;
                // A negative id names no client.
                if let Some(record) = u64::try_from(id).ok().and_then(|id| clients.get(id)) {
                    records.push(record);
                }
            }
            records
        }
        _ => return Err(Frame::error(SYNTAX_ERROR)),
    };
    let mut text = String::new();
    for record in records {
        text.push_str(&record.info_line(command_name));
        text.push('\n');
    }
    Ok(Frame::verbatim(text))
}

/// CLIENT NO-EVICT / NO-TOUCH on|off: accepted, changing nothing (nothing is evicted, and
/// keys have no access times to spare), so clients that set them on connect go on.
fn on_off(argument: &[u8]) -> Result<Frame, Frame> {
    if argument.eq_ignore_ascii_case(b"on") || argument.eq_ignore_ascii_case(b"off") {
        Ok(Frame::simple("OK"))
    } else {
        Err(Frame::error(SYNTAX_ERROR))
    }
}

pub(super) fn client(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    let subcommand = String::from_utf8_lossy(&arguments[0]).to_ascii_lowercase();
    let rest = &arguments[1..];
    let arity_error = || wrong_arity(&format!("client|{subcommand}"));
    match (subcommand.as_str(), rest) {
        ("setname", [name]) => {
            let name = checked_name(name)?;
            context.session.client.update(|state| state.name = name);
            Ok(Frame::simple("OK"))
        }
        ("getname", []) => Ok(context
            .session
            .client
            .state()
            .name
            .map_or(Frame::Null, Frame::Bulk)),
        ("id", []) => Ok(Frame::Integer(
            i64::try_from(context.session.connection_id).unwrap_or(i64::MAX),
        )),
        ("setinfo", [attribute, value]) => set_info(context, attribute, value),
        ("info", []) => {
            let mut line = context.session.client.info_line(command_name);
            line.push('\n');
            Ok(Frame::verbatim(line))
        }
        ("list", options) => list(context, options),
        ("no-evict" | "no-touch", [value]) => on_off(value),
        ("setname" | "getname" | "id" | "setinfo" | "info" | "no-evict" | "no-touch", _) => {
            Err(arity_error())
        }
        _ => Err(Frame::error(format!(
            "ERR unknown subcommand '{}'. Try CLIENT HELP.",
            String::from_utf8_lossy(&arguments[0])
        ))),
    }
}

/// The NOAUTH text of Redis 7 for HELLO on a connection that has not authenticated.
const HELLO_NOAUTH: &str = "NOAUTH HELLO must be called with the client already authenticated, \
     otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the \
     client and select the RESP protocol version at the same time";

/// HELLO [protover [AUTH username password] [SETNAME clientname]], as Redis 7.2: checks in
/// Redis's order (version, options, credentials, authentication, name), then switches the
/// protocol and answers in the new one. One deviation: a request that fails changes nothing,
/// where Redis keeps an AUTH that succeeded before a bad SETNAME.
pub(super) fn hello(context: &mut Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    let mut protocol = None;
    if let Some(version) = arguments.first() {
        let version = integer_argument(version)
            .map_err(|_| Frame::error("ERR Protocol version is not an integer or out of range"))?;
        protocol = Some(match version {
            2 => Protocol::Resp2,
            3 => Protocol::Resp3,
            _ => return Err(Frame::error("NOPROTO unsupported protocol version")),
        });
    }
    let mut index = 1;
    let mut credentials = None;
    let mut name = None;
    while index < arguments.len() {
        let option = arguments[index].to_ascii_lowercase();
        let remaining = arguments.len() - index - 1;
        if option == b"auth" && remaining >= 2 {
            credentials = Some((&arguments[index + 1], &arguments[index + 2]));
            index += 3;
        } else if option == b"setname" && remaining >= 1 {
            name = Some(&arguments[index + 1]);
            index += 2;
        } else {
            return Err(Frame::error(format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(&arguments[index])
            )));
        }
    }
    if let Some((username, password)) = credentials {
        verify_credentials(context, Some(username), password)?;
    }
    if !context.session.authenticated && credentials.is_none() {
        return Err(Frame::error(HELLO_NOAUTH));
    }
    let name = name.map(checked_name).transpose()?;
    // Everything is valid: apply it.
    if credentials.is_some() {
        context.session.authenticated = true;
    }
    if let Some(name) = name {
        context.session.client.update(|state| state.name = name);
    }
    if let Some(protocol) = protocol {
        context.session.set_protocol(protocol);
    }
    Ok(hello_reply(context))
}

/// HELLO's map (a flat array in RESP2), Redis 7's fields in Redis's order.
fn hello_reply(context: &Context<'_>) -> Frame {
    let text = |text: &str| Frame::bulk(Bytes::copy_from_slice(text.as_bytes()));
    Frame::Map(vec![
        (text("server"), text("redis")),
        (
            text("version"),
            text(context.shared.config.redis_version.as_str()),
        ),
        (
            text("proto"),
            Frame::Integer(context.session.protocol.version()),
        ),
        (
            text("id"),
            Frame::Integer(i64::try_from(context.session.connection_id).unwrap_or(i64::MAX)),
        ),
        (text("mode"), text("standalone")),
        (text("role"), text("master")),
        (text("modules"), Frame::Array(vec![])),
    ])
}
