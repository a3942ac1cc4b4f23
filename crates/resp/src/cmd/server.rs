//! Server commands: COMMAND (bare, COUNT, DOCS, INFO, LIST), INFO, DBSIZE, CONFIG GET.
//!
//! Replies use the RESP3 types Redis 7 uses for them (CONFIG GET and COMMAND DOCS: maps;
//! COMMAND's flags and ACL categories: sets; INFO: a verbatim string), which a RESP2
//! connection gets in Redis's RESP2 form.

use bytes::Bytes;

use super::{
    backend_error_frame, lookup, wrong_arity, CommandSpec, Context, COMMANDS, SYNTAX_ERROR,
};
use crate::frame::Frame;

/// CONFIG GET: a fixed set of parameters describing RaftKV in Redis's terms. Durability is
/// not configurable per front end: every write is fsynced on a majority before it is
/// acknowledged, which Redis calls `appendonly yes` + `appendfsync always`. CONFIG SET and the
/// other subcommands are refused: nothing here is changed at run time.
pub(super) fn config(context: &Context<'_>, arguments: &[Bytes]) -> Result<Frame, Frame> {
    if !arguments[0].eq_ignore_ascii_case(b"get") {
        return Err(Frame::error(format!(
            "ERR CONFIG {} is not supported by RaftKV (only CONFIG GET)",
            String::from_utf8_lossy(&arguments[0]).to_ascii_uppercase()
        )));
    }
    if arguments.len() < 2 {
        return Err(wrong_arity("config|get"));
    }
    let maxclients = context.shared.config.max_connections.to_string();
    let max_bulk = context.shared.config.max_bulk_bytes.to_string();
    let parameters: [(&str, &str); 6] = [
        ("appendonly", "yes"),
        ("appendfsync", "always"),
        ("save", ""),
        ("databases", "1"),
        ("maxclients", &maxclients),
        ("proto-max-bulk-len", &max_bulk),
    ];
    let mut reply = Vec::new();
    for (name, value) in parameters {
        if arguments[1..]
            .iter()
            .any(|pattern| super::keys::glob_match(&pattern.to_ascii_lowercase(), name.as_bytes()))
        {
            reply.push((bulk(name), bulk(value)));
        }
    }
    Ok(Frame::Map(reply))
}

fn bulk(text: &str) -> Frame {
    Frame::bulk(Bytes::copy_from_slice(text.as_bytes()))
}

/// One COMMAND entry, Redis 7 shape: name, arity, flags (a set), first key, last key, step,
/// ACL categories (a set), tips, key specs, subcommands.
fn command_entry(spec: &CommandSpec) -> Frame {
    Frame::Array(vec![
        bulk(spec.name),
        Frame::Integer(spec.arity),
        Frame::Set(spec.flags.iter().map(|f| Frame::simple(f)).collect()),
        Frame::Integer(spec.first_key),
        Frame::Integer(spec.last_key),
        Frame::Integer(spec.step),
        Frame::Set(vec![Frame::simple(&format!("@{}", spec.group))]),
        Frame::Array(vec![]),
        Frame::Array(vec![]),
        Frame::Array(vec![]),
    ])
}

/// One COMMAND DOCS entry: the name and a map of its docs (in RESP2 a map is a flat array of
/// alternating keys and values).
fn docs_entry(spec: &CommandSpec) -> (Frame, Frame) {
    (
        bulk(spec.name),
        Frame::Map(vec![
            (bulk("summary"), bulk(spec.summary)),
            (bulk("since"), bulk("1.0.0")),
            (bulk("group"), bulk(spec.group)),
        ]),
    )
}

pub(super) fn command(arguments: &[Bytes]) -> Result<Frame, Frame> {
    let Some(subcommand) = arguments.first() else {
        return Ok(Frame::Array(COMMANDS.iter().map(command_entry).collect()));
    };
    let subcommand = String::from_utf8_lossy(subcommand).to_ascii_lowercase();
    let rest = &arguments[1..];
    match subcommand.as_str() {
        "count" if rest.is_empty() => Ok(Frame::Integer(COMMANDS.len() as i64)),
        "count" => Err(wrong_arity("command|count")),
        "info" => Ok(Frame::Array(if rest.is_empty() {
            COMMANDS.iter().map(command_entry).collect()
        } else {
            rest.iter()
                .map(|name| lookup(name).map_or(Frame::Null, command_entry))
                .collect()
        })),
        "docs" => {
            // Unknown names are left out, as Redis does.
            let specs: Vec<&CommandSpec> = if rest.is_empty() {
                COMMANDS.iter().collect()
            } else {
                rest.iter().filter_map(|name| lookup(name)).collect()
            };
            Ok(Frame::Map(specs.into_iter().map(docs_entry).collect()))
        }
        // Without Redis's FILTERBY: every command is listed.
        "list" if rest.is_empty() => Ok(Frame::Array(
            COMMANDS.iter().map(|spec| bulk(spec.name)).collect(),
        )),
        "list" => Err(Frame::error(SYNTAX_ERROR)),
        _ => Err(Frame::error(format!(
            "ERR unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(&arguments[0])
        ))),
    }
}

pub(super) async fn dbsize(context: &mut Context<'_>) -> Result<Frame, Frame> {
    let keys = context
        .shared
        .backend
        .dbsize()
        .await
        .map_err(backend_error_frame)?;
    Ok(Frame::Integer(i64::try_from(keys).unwrap_or(i64::MAX)))
}

const SECTIONS: &[&str] = &["server", "clients", "replication", "keyspace", "raftkv"];

/// INFO [section ...]: "default", "all" and "everything" (or no argument) give every section;
/// unknown sections are ignored, as in Redis. A verbatim string, as Redis 7 answers it (a
/// bulk string in RESP2).
pub(super) async fn info(context: &mut Context<'_>, arguments: &[Bytes]) -> Frame {
    let requested: Vec<String> = arguments
        .iter()
        .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
        .collect();
    let all = requested.is_empty()
        || requested
            .iter()
            .any(|s| matches!(s.as_str(), "all" | "default" | "everything"));
    let shared = context.shared;
    let mut text = String::new();
    for section in SECTIONS {
        if !all && !requested.iter().any(|s| s == section) {
            continue;
        }
        if !text.is_empty() {
            text.push_str("\r\n");
        }
        let fields: Vec<(String, String)> = match *section {
            "server" => vec![
                ("redis_version".into(), shared.config.redis_version.clone()),
                ("redis_mode".into(), "standalone".into()),
                ("server_name".into(), "raftkv".into()),
                ("arch_bits".into(), (usize::BITS).to_string()),
                ("process_id".into(), std::process::id().to_string()),
                ("tcp_port".into(), shared.port.to_string()),
                (
                    "uptime_in_seconds".into(),
                    shared.started.elapsed().as_secs().to_string(),
                ),
            ],
            "clients" => vec![
                (
                    "connected_clients".into(),
                    shared.connected_clients().to_string(),
                ),
                (
                    "maxclients".into(),
                    shared.config.max_connections.to_string(),
                ),
            ],
            "replication" => vec![
                ("role".into(), "master".into()),
                ("connected_slaves".into(), "0".into()),
            ],
            "keyspace" => match shared.backend.dbsize().await {
                // Redis omits db0 when it is empty.
                Ok(0) => vec![],
                Ok(keys) => vec![("db0".into(), format!("keys={keys},expires=0,avg_ttl=0"))],
                Err(error) => vec![("raftkv_keyspace_error".into(), error.to_string())],
            },
            _ => shared.backend.info(),
        };
        let mut title = section.to_string();
        title[..1].make_ascii_uppercase();
        if *section == "raftkv" {
            title = "RaftKV".into();
        }
        text.push_str(&format!("# {title}\r\n"));
        for (name, value) in fields {
            // CR/LF in a value would forge extra fields; INFO is line-oriented.
            let value = value.replace(['\r', '\n'], " ");
            text.push_str(&format!("{name}:{value}\r\n"));
        }
    }
    Frame::verbatim(text)
}
