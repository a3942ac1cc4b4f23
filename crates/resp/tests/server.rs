//! End-to-end tests over TCP on port 0 (mini-redis `tests/server.rs` style): an in-memory
//! `Backend` over one `kv::KvStateMachine` (see `common`), driven by the `redis` crate and by
//! raw sockets.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use resp::{serve, Frame, RespConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn connection_commands() {
    let server = start(RespConfig::default()).await;
    let mut c = client(&server).await;
    let pong: String = cmd("PING").query_async(&mut c).await.unwrap();
    assert_eq!(pong, "PONG");
    let echo: String = cmd("PING").arg("hi").query_async(&mut c).await.unwrap();
    assert_eq!(echo, "hi");
    let echo: String = cmd("ECHO").arg("x y").query_async(&mut c).await.unwrap();
    assert_eq!(echo, "x y");
    let _: () = cmd("SELECT").arg(0).query_async(&mut c).await.unwrap();
    assert_eq!(
        error_text::<()>(&mut c, cmd("SELECT").arg(1)).await,
        "ERR DB index is out of range"
    );
    assert_eq!(
        error_text::<()>(&mut c, cmd("SELECT").arg("x")).await,
        "ERR value is not an integer or out of range"
    );
    let _: () = cmd("CLIENT")
        .arg("SETNAME")
        .arg("me")
        .query_async(&mut c)
        .await
        .unwrap();
    let name: String = cmd("CLIENT")
        .arg("GETNAME")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(name, "me");
    let id: i64 = cmd("CLIENT").arg("ID").query_async(&mut c).await.unwrap();
    assert!(id >= 1);
    assert_eq!(
        error_text::<()>(&mut c, cmd("CLIENT").arg("SETNAME").arg("a b")).await,
        "ERR Client names cannot contain spaces, newlines or special characters."
    );
    assert_eq!(
        error_text::<()>(&mut c, cmd("AUTH").arg("pw")).await,
        "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"
    );
    assert_eq!(
        error_text::<()>(&mut c, cmd("FOO").arg("a").arg("b")).await,
        "ERR unknown command 'FOO', with args beginning with: 'a' 'b' "
    );
    assert_eq!(
        error_text::<()>(&mut c, &cmd("GET")).await,
        "ERR wrong number of arguments for 'get' command"
    );
    assert_eq!(
        error_text::<()>(&mut c, cmd("HELLO").arg(4)).await,
        "NOPROTO unsupported protocol version"
    );
    let hello: Vec<redis::Value> = cmd("HELLO").arg(2).query_async(&mut c).await.unwrap();
    assert_eq!(hello.len(), 14);
}

/// Sends `request` (inline commands or RESP arrays) and returns the raw bytes of the next
/// `count` replies, failing if more arrive with them.
async fn reply_bytes(stream: &mut TcpStream, request: &[u8], count: usize) -> Vec<u8> {
    stream.write_all(request).await.expect("write");
    let mut buffer = Vec::new();
    loop {
        let (mut position, mut complete) = (0, 0);
        while complete < count {
            match Frame::parse(&buffer[position..]) {
                Ok(Some((_, used))) => {
                    position += used;
                    complete += 1;
                }
                Ok(None) => break,
                Err(error) => panic!("{error}: {:?}", String::from_utf8_lossy(&buffer)),
            }
        }
        if complete == count {
            assert_eq!(position, buffer.len(), "more than {count} replies");
            return buffer;
        }
        let more = read_some(stream).await;
        assert!(!more.is_empty(), "server closed early");
        buffer.extend_from_slice(&more);
    }
}

/// Sends one request and returns its reply.
async fn ask(stream: &mut TcpStream, request: &[u8]) -> Frame {
    let bytes = reply_bytes(stream, request, 1).await;
    Frame::parse(&bytes).unwrap().unwrap().0
}

/// Sends one request and returns its reply's bytes as text.
async fn ask_text(stream: &mut TcpStream, request: &[u8]) -> String {
    String::from_utf8(reply_bytes(stream, request, 1).await).expect("UTF-8 reply")
}

fn bulk(text: &str) -> Frame {
    Frame::bulk(text.as_bytes().to_vec())
}

/// The value of `key` in a map reply.
fn map_value<'a>(frame: &'a Frame, key: &str) -> Option<&'a Frame> {
    match frame {
        Frame::Map(pairs) => pairs.iter().find(|(k, _)| *k == bulk(key)).map(|(_, v)| v),
        _ => None,
    }
}

/// The text of a bulk or verbatim string reply.
fn text_of(frame: Frame) -> String {
    match frame {
        Frame::Bulk(bytes) | Frame::Verbatim { text: bytes, .. } => {
            String::from_utf8(bytes.to_vec()).expect("UTF-8 text")
        }
        other => panic!("expected a string, got {other:?}"),
    }
}

async fn client_id(stream: &mut TcpStream) -> i64 {
    match ask(stream, b"CLIENT ID\r\n").await {
        Frame::Integer(id) => id,
        other => panic!("CLIENT ID answered {other:?}"),
    }
}

/// HELLO answers what Redis 7 answers, switches between RESP2 and RESP3 (nils are `$-1` or
/// `_`), and a HELLO that fails changes nothing.
#[tokio::test]
async fn hello_switches_between_resp2_and_resp3() {
    let server = start(RespConfig::default()).await;
    let mut stream = TcpStream::connect(server.address).await.unwrap();
    assert_eq!(ask_text(&mut stream, b"GET missing\r\n").await, "$-1\r\n");
    let id = client_id(&mut stream).await;
    assert_eq!(
        ask(&mut stream, b"HELLO\r\n").await,
        Frame::Array(vec![
            bulk("server"),
            bulk("redis"),
            bulk("version"),
            bulk("7.2.0"),
            bulk("proto"),
            Frame::Integer(2),
            bulk("id"),
            Frame::Integer(id),
            bulk("mode"),
            bulk("standalone"),
            bulk("role"),
            bulk("master"),
            bulk("modules"),
            Frame::Array(vec![]),
        ])
    );
    let hello = reply_bytes(&mut stream, b"HELLO 3\r\n", 1).await;
    assert!(hello.starts_with(b"%7\r\n$6\r\nserver\r\n"), "{hello:?}");
    assert_eq!(
        Frame::parse(&hello).unwrap().unwrap().0,
        Frame::Map(vec![
            (bulk("server"), bulk("redis")),
            (bulk("version"), bulk("7.2.0")),
            (bulk("proto"), Frame::Integer(3)),
            (bulk("id"), Frame::Integer(id)),
            (bulk("mode"), bulk("standalone")),
            (bulk("role"), bulk("master")),
            (bulk("modules"), Frame::Array(vec![])),
        ])
    );
    // RESP3 nils; other replies as in RESP2 (INCRBYFLOAT is a bulk string in Redis 7 too).
    let cases: &[(&[u8], &str)] = &[
        (b"GET missing\r\n", "_\r\n"),
        (b"MGET missing other\r\n", "*2\r\n_\r\n_\r\n"),
        (b"SET k v\r\n", "+OK\r\n"),
        (b"SET k w NX\r\n", "_\r\n"),
        (b"GET k\r\n", "$1\r\nv\r\n"),
        (b"INCRBYFLOAT f 1.5\r\n", "$3\r\n1.5\r\n"),
        (b"CLIENT GETNAME\r\n", "_\r\n"),
        (b"PING\r\n", "+PONG\r\n"),
        (b"DBSIZE\r\n", ":2\r\n"),
    ];
    for (request, reply) in cases {
        assert_eq!(
            ask_text(&mut stream, request).await,
            *reply,
            "{}",
            String::from_utf8_lossy(request)
        );
    }
    let errors: &[(&[u8], &str)] = &[
        (b"HELLO 4\r\n", "-NOPROTO unsupported protocol version\r\n"),
        (b"HELLO 1\r\n", "-NOPROTO unsupported protocol version\r\n"),
        (
            b"HELLO x\r\n",
            "-ERR Protocol version is not an integer or out of range\r\n",
        ),
        (
            b"HELLO 2 FOO\r\n",
            "-ERR Syntax error in HELLO option 'FOO'\r\n",
        ),
        (
            b"HELLO 2 AUTH default\r\n",
            "-ERR Syntax error in HELLO option 'AUTH'\r\n",
        ),
        (
            b"HELLO 2 SETNAME\r\n",
            "-ERR Syntax error in HELLO option 'SETNAME'\r\n",
        ),
        (
            b"HELLO 2 SETNAME \"a b\"\r\n",
            "-ERR Client names cannot contain spaces, newlines or special characters.\r\n",
        ),
        (
            b"HELLO 2 AUTH bob pw\r\n",
            "-WRONGPASS invalid username-password pair or user is disabled.\r\n",
        ),
    ];
    for (request, error) in errors {
        assert_eq!(
            ask_text(&mut stream, request).await,
            *error,
            "{}",
            String::from_utf8_lossy(request)
        );
    }
    // None of them changed the protocol or the name.
    assert_eq!(ask_text(&mut stream, b"GET missing\r\n").await, "_\r\n");
    assert_eq!(ask_text(&mut stream, b"CLIENT GETNAME\r\n").await, "_\r\n");
    // Back to RESP2, naming the connection on the way.
    let hello = ask(&mut stream, b"HELLO 2 SETNAME me\r\n").await;
    assert!(
        matches!(&hello, Frame::Array(items) if items.len() == 14 && items[5] == Frame::Integer(2)),
        "{hello:?}"
    );
    assert_eq!(ask_text(&mut stream, b"GET missing\r\n").await, "$-1\r\n");
    assert_eq!(
        ask_text(&mut stream, b"CLIENT GETNAME\r\n").await,
        "$2\r\nme\r\n"
    );
    // Without a password the default user takes any password (Redis's `nopass`).
    let hello = ask(&mut stream, b"HELLO 3 AUTH default anything\r\n").await;
    assert_eq!(
        map_value(&hello, "proto"),
        Some(&Frame::Integer(3)),
        "{hello:?}"
    );
    // RESET goes back to RESP2 and forgets the name.
    assert_eq!(ask_text(&mut stream, b"RESET\r\n").await, "+RESET\r\n");
    assert_eq!(ask_text(&mut stream, b"GET missing\r\n").await, "$-1\r\n");
    assert_eq!(
        ask_text(&mut stream, b"CLIENT GETNAME\r\n").await,
        "$-1\r\n"
    );
}

/// With a password, HELLO must authenticate (HELLO 3 AUTH) or come after AUTH, with Redis 7's
/// texts; a wrong password or another user is refused and changes nothing.
#[tokio::test]
async fn hello_authenticates_when_a_password_is_set() {
    let config = RespConfig {
        password: Some("secret".into()),
        ..RespConfig::default()
    };
    let server = start(config).await;
    let mut stream = TcpStream::connect(server.address).await.unwrap();
    let noauth = "-NOAUTH HELLO must be called with the client already authenticated, \
                  otherwise the HELLO <proto> AUTH <user> <pass> option can be used to \
                  authenticate the client and select the RESP protocol version at the same \
                  time\r\n";
    for request in [
        &b"HELLO\r\n"[..],
        b"HELLO 3\r\n",
        b"HELLO 2 SETNAME app\r\n",
    ] {
        assert_eq!(ask_text(&mut stream, request).await, noauth);
    }
    let wrongpass = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";
    for request in [
        &b"HELLO 3 AUTH default wrong\r\n"[..],
        b"HELLO 3 AUTH bob secret\r\n",
    ] {
        assert_eq!(ask_text(&mut stream, request).await, wrongpass);
    }
    // A good password with a bad name: refused as a whole, the password not taken either.
    assert_eq!(
        ask_text(
            &mut stream,
            b"HELLO 3 AUTH default secret SETNAME \"a b\"\r\n"
        )
        .await,
        "-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
    );
    assert_eq!(
        ask_text(&mut stream, b"GET a\r\n").await,
        "-NOAUTH Authentication required.\r\n"
    );
    let hello = ask(&mut stream, b"HELLO 3 AUTH default secret SETNAME app\r\n").await;
    assert_eq!(
        map_value(&hello, "proto"),
        Some(&Frame::Integer(3)),
        "{hello:?}"
    );
    assert_eq!(ask_text(&mut stream, b"GET a\r\n").await, "_\r\n");
    assert_eq!(
        ask_text(&mut stream, b"CLIENT GETNAME\r\n").await,
        "$3\r\napp\r\n"
    );
    // After AUTH, a plain HELLO is fine.
    let mut other = TcpStream::connect(server.address).await.unwrap();
    assert_eq!(ask_text(&mut other, b"AUTH secret\r\n").await, "+OK\r\n");
    let hello = ask(&mut other, b"HELLO 3\r\n").await;
    assert_eq!(
        map_value(&hello, "proto"),
        Some(&Frame::Integer(3)),
        "{hello:?}"
    );
    // A client library connecting with RESP3 and a password sends HELLO 3 AUTH.
    let url = format!("redis://:secret@{}/?protocol=resp3", server.address);
    let mut c = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_tokio_connection()
        .await
        .unwrap();
    let missing: Option<String> = cmd("GET").arg("a").query_async(&mut c).await.unwrap();
    assert_eq!(missing, None);
    let wrong = format!("redis://:nope@{}/?protocol=resp3", server.address);
    assert!(redis::Client::open(wrong)
        .unwrap()
        .get_multiplexed_tokio_connection()
        .await
        .is_err());
}

/// Replies Redis 7 sends as RESP3 maps, sets, verbatim strings and nulls use them after
/// HELLO 3, and are exactly as before in RESP2.
#[tokio::test]
async fn resp3_replies_use_redis_7_types() {
    let server = start(RespConfig::default()).await;
    let mut stream = TcpStream::connect(server.address).await.unwrap();
    let info = "# Replication\r\nrole:master\r\nconnected_slaves:0\r\n";
    let get_info = "*10\r\n$3\r\nget\r\n:2\r\n*2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n\
                    *1\r\n+@string\r\n*0\r\n*0\r\n*0\r\n";
    let docs = Frame::Map(vec![(
        bulk("get"),
        Frame::Map(vec![
            (bulk("summary"), bulk("Returns the string value of a key.")),
            (bulk("since"), bulk("1.0.0")),
            (bulk("group"), bulk("string")),
        ]),
    )]);
    // RESP2: Redis's RESP2 forms.
    assert_eq!(
        ask_text(&mut stream, b"CONFIG GET appendonly\r\n").await,
        "*2\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n"
    );
    assert_eq!(
        ask_text(&mut stream, b"INFO replication\r\n").await,
        format!("${}\r\n{info}\r\n", info.len())
    );
    assert_eq!(
        ask_text(&mut stream, b"COMMAND INFO get nosuch\r\n").await,
        format!("*2\r\n{get_info}$-1\r\n")
    );
    let mut flat = Vec::new();
    docs.encode(&mut flat);
    assert_eq!(
        reply_bytes(&mut stream, b"COMMAND DOCS get nosuch\r\n", 1).await,
        flat
    );
    assert!(flat.starts_with(b"*2\r\n$3\r\nget\r\n*6\r\n"));
    assert_eq!(
        ask_text(&mut stream, b"COMMAND DOCS nosuch\r\n").await,
        "*0\r\n"
    );
    // RESP3.
    let hello = ask(&mut stream, b"HELLO 3\r\n").await;
    assert_eq!(map_value(&hello, "proto"), Some(&Frame::Integer(3)));
    assert_eq!(
        ask_text(&mut stream, b"CONFIG GET appendonly\r\n").await,
        "%1\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n"
    );
    assert_eq!(
        ask_text(&mut stream, b"INFO replication\r\n").await,
        format!("={}\r\ntxt:{info}\r\n", info.len() + 4)
    );
    let get_info3 = get_info
        .replace("*2\r\n+readonly", "~2\r\n+readonly")
        .replace("*1\r\n+@", "~1\r\n+@");
    assert_eq!(
        ask_text(&mut stream, b"COMMAND INFO get nosuch\r\n").await,
        format!("*2\r\n{get_info3}_\r\n")
    );
    assert_eq!(ask(&mut stream, b"COMMAND DOCS get nosuch\r\n").await, docs);
    assert_eq!(
        ask_text(&mut stream, b"COMMAND DOCS nosuch\r\n").await,
        "%0\r\n"
    );
    let Frame::Integer(count) = ask(&mut stream, b"COMMAND COUNT\r\n").await else {
        panic!("COMMAND COUNT answers an integer");
    };
    let Frame::Array(all) = ask(&mut stream, b"COMMAND\r\n").await else {
        panic!("COMMAND answers an array");
    };
    let Frame::Array(names) = ask(&mut stream, b"COMMAND LIST\r\n").await else {
        panic!("COMMAND LIST answers an array");
    };
    assert_eq!(all.len() as i64, count);
    assert_eq!(names.len() as i64, count);
    assert!(names.contains(&bulk("hello")) && names.contains(&bulk("client")));
    assert!(
        all.iter().all(
            |entry| matches!(entry, Frame::Array(fields) if matches!(fields[2], Frame::Set(_)))
        ),
        "COMMAND's flags are sets in RESP3"
    );
}

/// What client libraries send on connect, as redis-py 8 does by default (HELLO 3, then CLIENT
/// SETINFO, pipelined), and CLIENT ID / INFO / LIST / SETINFO / NO-EVICT / NO-TOUCH.
#[tokio::test]
async fn client_commands_for_connecting_libraries() {
    let server = start(RespConfig::default()).await;
    let requests: Vec<Vec<&str>> = vec![
        vec!["HELLO", "3"],
        vec!["CLIENT", "SETINFO", "LIB-NAME", "redis-py"],
        vec!["CLIENT", "SETINFO", "LIB-VER", "8.1.0"],
        vec!["SELECT", "0"],
        vec!["GET", "missing"],
        vec!["PING"],
    ];
    let replies = replies_pipelined(&server, &requests).await;
    assert_eq!(
        map_value(&replies[0], "proto"),
        Some(&Frame::Integer(3)),
        "{replies:?}"
    );
    assert_eq!(
        replies[1..],
        [
            Frame::simple("OK"),
            Frame::simple("OK"),
            Frame::simple("OK"),
            Frame::Null,
            Frame::simple("PONG")
        ]
    );

    let mut first = TcpStream::connect(server.address).await.unwrap();
    let first_id = client_id(&mut first).await;
    for request in [
        &b"CLIENT SETINFO LIB-NAME redis-py(django_v5)\r\n"[..],
        b"CLIENT SETINFO lib-ver 8.1.0\r\n",
        b"CLIENT NO-EVICT on\r\n",
        b"CLIENT NO-TOUCH OFF\r\n",
        b"CLIENT SETNAME first\r\n",
    ] {
        assert_eq!(
            ask_text(&mut first, request).await,
            "+OK\r\n",
            "{}",
            String::from_utf8_lossy(request)
        );
    }
    let long = format!("CLIENT SETINFO LIB-VER {}\r\n", "v".repeat(300));
    let errors: &[(&[u8], &str)] = &[
        (
            b"CLIENT SETINFO LIB-NAME \"a b\"\r\n",
            "-ERR LIB-NAME cannot contain spaces, newlines or special characters.\r\n",
        ),
        (
            b"CLIENT SETINFO LIB-FOO x\r\n",
            "-ERR Unrecognized option 'LIB-FOO'\r\n",
        ),
        (
            b"CLIENT SETINFO LIB-NAME\r\n",
            "-ERR wrong number of arguments for 'client|setinfo' command\r\n",
        ),
        (long.as_bytes(), "-ERR LIB-VER is longer than 256 bytes\r\n"),
        (b"CLIENT NO-EVICT maybe\r\n", "-ERR syntax error\r\n"),
        (
            b"CLIENT INFO extra\r\n",
            "-ERR wrong number of arguments for 'client|info' command\r\n",
        ),
        (b"CLIENT LIST ID x\r\n", "-ERR Invalid client ID\r\n"),
        (
            b"CLIENT LIST TYPE nope\r\n",
            "-ERR Unknown client type 'nope'\r\n",
        ),
        (b"CLIENT LIST EXTRA\r\n", "-ERR syntax error\r\n"),
        (
            b"CLIENT TRACKING on\r\n",
            "-ERR unknown subcommand 'TRACKING'. Try CLIENT HELP.\r\n",
        ),
    ];
    for (request, error) in errors {
        assert_eq!(
            ask_text(&mut first, request).await,
            *error,
            "{}",
            String::from_utf8_lossy(request)
        );
    }
    // RESP2: a bulk string of one line; the refused SETINFOs changed nothing.
    let info = ask(&mut first, b"CLIENT INFO\r\n").await;
    assert!(matches!(info, Frame::Bulk(_)), "{info:?}");
    let line = text_of(info);
    assert!(
        line.starts_with(&format!("id={first_id} addr=127.0.0.1:")),
        "{line}"
    );
    for field in [
        format!(" laddr={} ", server.address),
        " name=first ".to_string(),
        " db=0 ".to_string(),
        " cmd=client ".to_string(),
        " user=default ".to_string(),
        " resp=2 ".to_string(),
        " lib-name=redis-py(django_v5) ".to_string(),
        " lib-ver=8.1.0\n".to_string(),
    ] {
        assert!(line.contains(&field), "{field:?} missing from {line}");
    }
    assert!(
        line.ends_with('\n') && line.matches('\n').count() == 1,
        "{line}"
    );

    // CLIENT LIST: every connection of this front end, oldest first.
    let mut second = TcpStream::connect(server.address).await.unwrap();
    assert_eq!(
        ask_text(&mut second, b"CLIENT SETNAME second\r\n").await,
        "+OK\r\n"
    );
    let second_id = client_id(&mut second).await;
    let list = text_of(ask(&mut first, b"CLIENT LIST\r\n").await);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert!(
        lines[0].starts_with(&format!("id={first_id} ")) && lines[0].contains(" name=first "),
        "{list}"
    );
    assert!(
        lines[1].starts_with(&format!("id={second_id} "))
            && lines[1].contains(" name=second ")
            && lines[1].contains(" cmd=client ")
            && lines[1].ends_with(" resp=2 lib-name= lib-ver="),
        "{list}"
    );
    let by_id = format!("CLIENT LIST ID {second_id} 999999 -1\r\n");
    let only = text_of(ask(&mut first, by_id.as_bytes()).await);
    assert!(
        only.lines().count() == 1 && only.starts_with(&format!("id={second_id} ")),
        "{only}"
    );
    let normal = text_of(ask(&mut first, b"CLIENT LIST TYPE normal\r\n").await);
    assert_eq!(normal.lines().count(), 2, "{normal}");
    assert_eq!(
        ask_text(&mut first, b"CLIENT LIST TYPE pubsub\r\n").await,
        "$0\r\n\r\n"
    );
    // In RESP3 the same texts are verbatim strings.
    ask(&mut first, b"HELLO 3\r\n").await;
    let info = ask(&mut first, b"CLIENT INFO\r\n").await;
    assert!(
        matches!(&info, Frame::Verbatim { format, .. } if format == b"txt"),
        "{info:?}"
    );
    assert!(text_of(info).contains(" resp=3 "));
    // A closed connection leaves the list.
    drop(second);
    let mut remaining = 0;
    for _ in 0..200 {
        let list = text_of(ask(&mut first, b"CLIENT LIST\r\n").await);
        remaining = list.lines().count();
        if remaining == 1 {
            assert!(list.starts_with(&format!("id={first_id} ")), "{list}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(remaining, 1, "the closed connection is still listed");
}

/// A client library speaking RESP3 (redis-rs with `protocol=resp3`: HELLO 3 and CLIENT
/// SETINFO on connect) gets typed replies it understands.
#[tokio::test]
async fn a_resp3_client_library_works() {
    let server = start(RespConfig::default()).await;
    let url = format!("redis://{}/?protocol=resp3", server.address);
    let mut c = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_tokio_connection()
        .await
        .unwrap();
    let missing: Option<String> = cmd("GET").arg("k").query_async(&mut c).await.unwrap();
    assert_eq!(missing, None);
    let _: () = cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut c)
        .await
        .unwrap();
    let value: String = cmd("GET").arg("k").query_async(&mut c).await.unwrap();
    assert_eq!(value, "v");
    let config: std::collections::HashMap<String, String> = cmd("CONFIG")
        .arg("GET")
        .arg("append*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        config.get("appendfsync").map(String::as_str),
        Some("always")
    );
    let info: String = cmd("INFO").arg("server").query_async(&mut c).await.unwrap();
    assert!(
        info.starts_with("# Server\r\n") && info.contains("redis_version:7.2.0\r\n"),
        "{info}"
    );
    let client_info: String = cmd("CLIENT").arg("INFO").query_async(&mut c).await.unwrap();
    assert!(
        client_info.contains(" resp=3 ") && client_info.contains(" lib-name=redis-rs "),
        "{client_info}"
    );
    let hello: redis::Value = cmd("HELLO").arg(3).query_async(&mut c).await.unwrap();
    assert!(matches!(hello, redis::Value::Map(_)), "{hello:?}");
}

#[tokio::test]
async fn server_commands() {
    let server = start(RespConfig::default()).await;
    let mut c = client(&server).await;
    let count: i64 = cmd("COMMAND")
        .arg("COUNT")
        .query_async(&mut c)
        .await
        .unwrap();
    let all: Vec<redis::Value> = cmd("COMMAND").query_async(&mut c).await.unwrap();
    assert_eq!(all.len() as i64, count);
    let docs: Vec<redis::Value> = cmd("COMMAND")
        .arg("DOCS")
        .arg("get")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(docs.len(), 2);
    let _: () = cmd("SET")
        .arg("a")
        .arg("1")
        .query_async(&mut c)
        .await
        .unwrap();
    let size: i64 = cmd("DBSIZE").query_async(&mut c).await.unwrap();
    assert_eq!(size, 1);
    let info: String = cmd("INFO").query_async(&mut c).await.unwrap();
    for needle in [
        "# Server",
        "redis_version:",
        "# Replication",
        "role:master",
        "# Keyspace",
        "db0:keys=1,expires=0,avg_ttl=0",
        "raftkv_regions:1",
    ] {
        assert!(info.contains(needle), "{needle} missing from {info}");
    }
    let replication: String = cmd("INFO")
        .arg("replication")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(replication.starts_with("# Replication\r\n") && !replication.contains("# Server"));
}

#[tokio::test]
async fn key_commands() {
    let server = start(RespConfig::default()).await;
    let mut c = client(&server).await;
    let _: () = cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut c)
        .await
        .unwrap();
    let kind: String = cmd("TYPE").arg("k").query_async(&mut c).await.unwrap();
    assert_eq!(kind, "string");
    let kind: String = cmd("TYPE")
        .arg("missing")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(kind, "none");
    let ttl: i64 = cmd("TTL").arg("k").query_async(&mut c).await.unwrap();
    assert_eq!(ttl, -1);
    let ttl: i64 = cmd("PTTL")
        .arg("missing")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(ttl, -2);
    let n: i64 = cmd("EXISTS")
        .arg("k")
        .arg("k")
        .arg("missing")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 2);
    let _: () = cmd("SET")
        .arg("k2")
        .arg("v")
        .query_async(&mut c)
        .await
        .unwrap();
    let n: i64 = cmd("DEL")
        .arg("k")
        .arg("k2")
        .arg("missing")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 2);
    let _: () = cmd("SET")
        .arg("k3")
        .arg("v")
        .query_async(&mut c)
        .await
        .unwrap();
    let n: i64 = cmd("UNLINK").arg("k3").query_async(&mut c).await.unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn scan_visits_every_key_once() {
    let server = start(RespConfig::default()).await;
    let mut c = client(&server).await;
    for i in 0..25 {
        let _: () = cmd("SET")
            .arg(format!("user:{i:02}"))
            .arg(i)
            .query_async(&mut c)
            .await
            .unwrap();
        let _: () = cmd("SET")
            .arg(format!("other:{i:02}"))
            .arg(i)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let mut cursor = "0".to_string();
    let mut seen = Vec::new();
    loop {
        let (next, keys): (String, Vec<String>) = cmd("SCAN")
            .arg(&cursor)
            .arg("MATCH")
            .arg("user:*")
            .arg("COUNT")
            .arg(7)
            .query_async(&mut c)
            .await
            .unwrap();
        seen.extend(keys);
        if next == "0" {
            break;
        }
        // Clients such as redis-cli parse the cursor as an unsigned 64-bit integer.
        next.parse::<u64>()
            .unwrap_or_else(|_| panic!("cursor {next:?} is not an integer"));
        cursor = next;
    }
    let expected: Vec<String> = (0..25).map(|i| format!("user:{i:02}")).collect();
    assert_eq!(seen, expected);
    // A cursor may be continued from another connection to the same server.
    let (next, first): (String, Vec<String>) = cmd("SCAN")
        .arg(0)
        .arg("COUNT")
        .arg(10)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(first.len(), 10);
    let mut other = client(&server).await;
    let (_, rest): (String, Vec<String>) = cmd("SCAN")
        .arg(&next)
        .arg("COUNT")
        .arg(10)
        .query_async(&mut other)
        .await
        .unwrap();
    assert_eq!(rest.len(), 10);
    assert!(
        rest[0] > first[9],
        "the second page must resume after the first"
    );
    // An integer cursor this server never handed out is refused, not restarted from 0.
    assert_eq!(
        error_text::<()>(&mut c, cmd("SCAN").arg("12345")).await,
        "ERR invalid cursor"
    );
    let (_, keys): (String, Vec<String>) = cmd("SCAN")
        .arg(0)
        .arg("TYPE")
        .arg("hash")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(keys.is_empty());
    assert_eq!(
        error_text::<()>(&mut c, cmd("SCAN").arg("zz")).await,
        "ERR invalid cursor"
    );
    assert_eq!(
        error_text::<()>(&mut c, cmd("SCAN").arg(0).arg("COUNT").arg(0)).await,
        "ERR syntax error"
    );
}

#[tokio::test]
async fn string_commands() {
    let server = start(RespConfig::default()).await;
    let mut c = client(&server).await;
    let missing: Option<String> = cmd("GET").arg("s").query_async(&mut c).await.unwrap();
    assert_eq!(missing, None);
    let ok: Option<String> = cmd("SET")
        .arg("s")
        .arg("a")
        .arg("XX")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(ok, None, "XX on a missing key writes nothing");
    let ok: String = cmd("SET")
        .arg("s")
        .arg("a")
        .arg("NX")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(ok, "OK");
    let not: Option<String> = cmd("SET")
        .arg("s")
        .arg("b")
        .arg("NX")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(not, None);
    let previous: Option<String> = cmd("SET")
        .arg("s")
        .arg("c")
        .arg("GET")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(previous.as_deref(), Some("a"));
    assert_eq!(
        error_text::<()>(&mut c, cmd("SET").arg("s").arg("c").arg("NX").arg("XX")).await,
        "ERR syntax error"
    );
    let expiry = error_text::<()>(&mut c, cmd("SET").arg("s").arg("x").arg("EX").arg(0)).await;
    assert_eq!(expiry, "ERR invalid expire time in 'set' command");
    let still: String = cmd("GET").arg("s").query_async(&mut c).await.unwrap();
    assert_eq!(still, "c", "a refused SET EX changes nothing");
    let n: i64 = cmd("SETNX")
        .arg("s")
        .arg("x")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 0);
    let old: String = cmd("GETSET")
        .arg("s")
        .arg("d")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(old, "c");
    let old: String = cmd("GETDEL").arg("s").query_async(&mut c).await.unwrap();
    assert_eq!(old, "d");
    let _: () = cmd("MSET")
        .arg("a")
        .arg("1")
        .arg("b")
        .arg("2")
        .query_async(&mut c)
        .await
        .unwrap();
    let values: Vec<Option<String>> = cmd("MGET")
        .arg("a")
        .arg("x")
        .arg("b")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(values, vec![Some("1".into()), None, Some("2".into())]);
    assert_eq!(
        error_text::<()>(&mut c, cmd("MSET").arg("a").arg("1").arg("b")).await,
        "ERR wrong number of arguments for 'mset' command"
    );
    let n: i64 = cmd("MSETNX")
        .arg("a")
        .arg("9")
        .arg("new")
        .arg("9")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 0);
    let n: i64 = cmd("MSETNX")
        .arg("n1")
        .arg("9")
        .arg("n2")
        .arg("9")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let n: i64 = cmd("APPEND")
        .arg("ap")
        .arg("Hello")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 5);
    let n: i64 = cmd("APPEND")
        .arg("ap")
        .arg(" World")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 11);
    let n: i64 = cmd("STRLEN").arg("ap").query_async(&mut c).await.unwrap();
    assert_eq!(n, 11);
    let part: String = cmd("GETRANGE")
        .arg("ap")
        .arg(-5)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(part, "World");
    let n: i64 = cmd("SETRANGE")
        .arg("ap")
        .arg(6)
        .arg("Redis")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 11);
    let whole: String = cmd("GET").arg("ap").query_async(&mut c).await.unwrap();
    assert_eq!(whole, "Hello Redis");
    assert_eq!(
        error_text::<()>(&mut c, cmd("SETRANGE").arg("ap").arg(-1).arg("x")).await,
        "ERR offset is out of range"
    );
    let n: i64 = cmd("INCR").arg("n").query_async(&mut c).await.unwrap();
    assert_eq!(n, 1);
    let n: i64 = cmd("INCRBY")
        .arg("n")
        .arg(10)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 11);
    let n: i64 = cmd("DECR").arg("n").query_async(&mut c).await.unwrap();
    assert_eq!(n, 10);
    let n: i64 = cmd("DECRBY")
        .arg("n")
        .arg(4)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 6);
    assert_eq!(
        error_text::<()>(&mut c, cmd("INCR").arg("ap")).await,
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        error_text::<()>(&mut c, cmd("INCRBY").arg("n").arg("1.5")).await,
        "ERR value is not an integer or out of range"
    );
    let _: () = cmd("SET")
        .arg("big")
        .arg(i64::MAX)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        error_text::<()>(&mut c, cmd("INCR").arg("big")).await,
        "ERR increment or decrement would overflow"
    );
    let f: String = cmd("INCRBYFLOAT")
        .arg("f")
        .arg("2.5")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(f, "2.5");
    assert_eq!(
        error_text::<()>(&mut c, cmd("INCRBYFLOAT").arg("f").arg("abc")).await,
        "ERR value is not a valid float"
    );
    assert_eq!(
        error_text::<()>(&mut c, cmd("INCRBYFLOAT").arg("ap").arg("1")).await,
        "ERR value is not a valid float"
    );
}

#[tokio::test]
async fn crossslot_is_refused_and_nothing_is_applied() {
    let server = start(RespConfig::default()).await;
    let mut c = client(&server).await;
    server.backend.same_region.store(false, Ordering::Relaxed);
    for command in [
        cmd("MSET").arg("a").arg("1").arg("b").arg("2").clone(),
        cmd("MSETNX").arg("a").arg("1").arg("b").arg("2").clone(),
        cmd("MGET").arg("a").arg("b").clone(),
        cmd("DEL").arg("a").arg("b").clone(),
        cmd("EXISTS").arg("a").arg("b").clone(),
    ] {
        assert_eq!(
            error_text::<()>(&mut c, &command).await,
            "CROSSSLOT Keys in request don't hash to the same slot"
        );
    }
    let size: i64 = cmd("DBSIZE").query_async(&mut c).await.unwrap();
    assert_eq!(size, 0);
    // Single-key commands are unaffected.
    let _: () = cmd("SET")
        .arg("a")
        .arg("1")
        .query_async(&mut c)
        .await
        .unwrap();
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let server = start(RespConfig::default()).await;
    let mut request = Vec::new();
    for _ in 0..100 {
        Frame::Array(vec![
            Frame::bulk(&b"INCR"[..]),
            Frame::bulk(&b"counter"[..]),
        ])
        .encode(&mut request);
    }
    let mut stream = TcpStream::connect(server.address).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let frames = read_frames(&mut stream, 100).await;
    let expected: Vec<Frame> = (1..=100).map(Frame::Integer).collect();
    assert_eq!(frames, expected);
}

#[tokio::test]
async fn inline_commands_work() {
    let server = start(RespConfig::default()).await;
    let (reply, mut stream) = raw(&server, b"PING\r\n").await;
    assert_eq!(reply, b"+PONG\r\n");
    stream
        .write_all(b"SET \"a key\" 'v'\r\nGET \"a key\"\n")
        .await
        .unwrap();
    let frames = read_frames(&mut stream, 2).await;
    assert_eq!(frames, vec![Frame::simple("OK"), Frame::bulk(&b"v"[..])]);
}

#[tokio::test]
async fn protocol_errors_answer_then_close() {
    let config = RespConfig {
        max_bulk_bytes: 1024,
        ..RespConfig::default()
    };
    let server = start(config).await;
    let cases: &[(&[u8], &[u8])] = &[
        (
            b"*abc\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*1\r\n$2000\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*1\r\n$-5\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*1\r\n:1\r\n",
            b"-ERR Protocol error: expected '$', got ':'\r\n",
        ),
        (
            b"GET \"x\r\n",
            b"-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
        (
            b"*99999999\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
        ),
    ];
    for (request, expected) in cases {
        let (reply, mut stream) = raw(&server, request).await;
        assert_eq!(
            String::from_utf8_lossy(&reply),
            String::from_utf8_lossy(expected)
        );
        assert_closed(&mut stream).await;
    }
    // An inline line longer than 64 KiB.
    let (reply, _) = raw(&server, &vec![b'a'; 70 * 1024]).await;
    assert_eq!(reply, b"-ERR Protocol error: too big inline request\r\n");
}

#[tokio::test]
async fn unauthenticated_clients_are_limited() {
    let config = RespConfig {
        password: Some("secret".into()),
        ..RespConfig::default()
    };
    let server = start(config).await;
    let (reply, _) = raw(&server, b"GET a\r\n").await;
    assert_eq!(reply, b"-NOAUTH Authentication required.\r\n");
    // Before AUTH a 2 KiB bulk is refused at its header, before any of it is buffered.
    let (reply, mut stream) = raw(&server, b"*2\r\n$4\r\nAUTH\r\n$2048\r\n").await;
    assert_eq!(reply, b"-ERR Protocol error: invalid bulk length\r\n");
    assert_closed(&mut stream).await;
    let (reply, _) = raw(&server, b"*11\r\n").await;
    assert_eq!(reply, b"-ERR Protocol error: invalid multibulk length\r\n");
    let (reply, mut stream) = raw(&server, b"AUTH wrong\r\n").await;
    assert_eq!(
        reply,
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    stream.write_all(b"AUTH default secret\r\n").await.unwrap();
    assert_eq!(read_some(&mut stream).await, b"+OK\r\n");
    // After AUTH large bulks are fine.
    let mut request = Vec::new();
    Frame::Array(vec![
        Frame::bulk(&b"SET"[..]),
        Frame::bulk(&b"k"[..]),
        Frame::bulk(vec![b'x'; 4096]),
    ])
    .encode(&mut request);
    stream.write_all(&request).await.unwrap();
    assert_eq!(read_some(&mut stream).await, b"+OK\r\n");
    // RESET drops the authentication.
    stream.write_all(b"RESET\r\nGET k\r\n").await.unwrap();
    let frames = read_frames(&mut stream, 2).await;
    assert_eq!(
        frames,
        vec![
            Frame::simple("RESET"),
            Frame::error("NOAUTH Authentication required.")
        ]
    );
    // The redis crate authenticates from the URL.
    let url = format!("redis://:secret@{}/", server.address);
    let mut c = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_tokio_connection()
        .await
        .unwrap();
    let value: String = cmd("GET").arg("k").query_async(&mut c).await.unwrap();
    assert_eq!(value.len(), 4096);
}

#[tokio::test]
async fn quit_answers_then_closes() {
    let server = start(RespConfig::default()).await;
    let (reply, mut stream) = raw(&server, b"QUIT\r\n").await;
    assert_eq!(reply, b"+OK\r\n");
    assert_closed(&mut stream).await;
}

#[tokio::test]
async fn connection_limit_refuses_with_redis_text() {
    let config = RespConfig {
        max_connections: 1,
        ..RespConfig::default()
    };
    let server = start(config).await;
    let (reply, _first) = raw(&server, b"PING\r\n").await;
    assert_eq!(reply, b"+PONG\r\n");
    let mut second = TcpStream::connect(server.address).await.unwrap();
    assert_eq!(
        read_some(&mut second).await,
        b"-ERR max number of clients reached\r\n"
    );
    assert_closed(&mut second).await;
}

#[tokio::test]
async fn shutdown_closes_connections_and_returns() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        MemoryBackend::new(),
        RespConfig::default(),
        stopped,
    ));
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(b"PING\r\n").await.unwrap();
    assert_eq!(read_some(&mut stream).await, b"+PONG\r\n");
    drop(stop);
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns")
        .unwrap();
    assert_closed(&mut stream).await;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary bytes never panic either parser.
    #[test]
    fn parsers_never_panic(input in proptest::collection::vec(any::<u8>(), 0..256)) {
        let limits = resp::frame::RequestLimits { max_bulk_bytes: 64, max_array_len: 8, max_request_bytes: 512 };
        let _ = resp::frame::parse_request(&input, &limits);
        let _ = Frame::parse(&input);
    }

    /// RESP-shaped garbage (valid prefixes glued to random bytes) reaches the deeper paths.
    #[test]
    fn parsers_never_panic_on_resp_like_input(
        parts in proptest::collection::vec(prop_oneof![
            Just(b"*".to_vec()), Just(b"$".to_vec()), Just(b"\r\n".to_vec()), Just(b"-1".to_vec()),
            Just(b"3".to_vec()), Just(b"\"".to_vec()), Just(b"'".to_vec()), Just(b"\\x".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..4),
        ], 0..40)
    ) {
        let input: Vec<u8> = parts.concat();
        let limits = resp::frame::RequestLimits { max_bulk_bytes: 64, max_array_len: 8, max_request_bytes: 512 };
        let _ = resp::frame::parse_request(&input, &limits);
        let _ = Frame::parse(&input);
    }
}

/// A multi-key DEL is one state-machine command (one log entry), so it can never be half
/// applied.
#[tokio::test]
async fn multi_key_del_is_one_atomic_command() {
    let server = start(RespConfig::default()).await;
    let mut c = client(&server).await;
    let _: () = cmd("MSET")
        .arg("a")
        .arg("1")
        .arg("b")
        .arg("2")
        .query_async(&mut c)
        .await
        .unwrap();
    let before = server.backend.state.lock().unwrap()[0].1;
    let n: i64 = cmd("DEL")
        .arg("a")
        .arg("b")
        .arg("a")
        .arg("missing")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 2, "a repeated key is deleted (and counted) once");
    let after = server.backend.state.lock().unwrap()[0].1;
    assert_eq!(after, before + 1, "DEL of 3 keys must be one command");
}

#[tokio::test]
async fn config_get_answers_the_durability_parameters_and_refuses_set() {
    let server = start(RespConfig::default()).await;
    let mut c = client(&server).await;
    let pairs: Vec<String> = cmd("CONFIG")
        .arg("GET")
        .arg("append*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(pairs, vec!["appendonly", "yes", "appendfsync", "always"]);
    let pairs: Vec<String> = cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(pairs, vec!["save", ""]);
    let none: Vec<String> = cmd("CONFIG")
        .arg("GET")
        .arg("no-such-thing")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(
        error_text::<()>(&mut c, cmd("CONFIG").arg("SET").arg("save").arg("")).await,
        "ERR CONFIG SET is not supported by RaftKV (only CONFIG GET)"
    );
    assert_eq!(
        error_text::<()>(&mut c, cmd("CONFIG").arg("GET")).await,
        "ERR wrong number of arguments for 'config|get' command"
    );
}

/// Encodes requests as RESP arrays of bulk strings.
fn encode_requests(requests: &[Vec<&str>]) -> Vec<u8> {
    let mut out = Vec::new();
    for request in requests {
        Frame::Array(
            request
                .iter()
                .map(|argument| Frame::bulk(argument.as_bytes().to_vec()))
                .collect(),
        )
        .encode(&mut out);
    }
    out
}

/// All requests in one write (a pipeline): the replies, in order.
async fn replies_pipelined(server: &TestServer, requests: &[Vec<&str>]) -> Vec<Frame> {
    let mut stream = TcpStream::connect(server.address).await.unwrap();
    stream.write_all(&encode_requests(requests)).await.unwrap();
    read_frames(&mut stream, requests.len()).await
}

/// One request at a time, each answered before the next is sent.
async fn replies_one_at_a_time(server: &TestServer, requests: &[Vec<&str>]) -> Vec<Frame> {
    let mut stream = TcpStream::connect(server.address).await.unwrap();
    let mut replies = Vec::new();
    for request in requests {
        stream
            .write_all(&encode_requests(std::slice::from_ref(request)))
            .await
            .unwrap();
        replies.extend(read_frames(&mut stream, 1).await);
    }
    replies
}

/// A pipeline's commands become one `Pipeline` per region, and its answers are exactly those
/// of the same commands sent one at a time: in order, each failing on its own (a non-integer
/// INCR, an unknown command, a wrong arity), later commands seeing earlier writes.
#[tokio::test]
async fn a_pipeline_is_one_entry_per_region_with_the_answers_of_one_at_a_time() {
    let requests: Vec<Vec<&str>> = vec![
        vec!["SET", "a", "1"],
        vec!["INCR", "a"],
        vec!["SET", "z", "x"],
        vec!["APPEND", "z", "y"],
        vec!["GET", "a"],
        vec!["INCR", "z"],
        vec!["NOSUCH", "a"],
        vec!["GET"],
        vec!["GETSET", "z", "w"],
        vec!["DEL", "a"],
        vec!["EXISTS", "a", "b"],
        vec!["PING"],
        vec!["MGET", "z", "y"],
        vec!["MGET", "a", "z"],
        vec!["STRLEN", "z"],
    ];
    let pipelined = start_with(RespConfig::default(), MemoryBackend::with_routes(true)).await;
    let got = replies_pipelined(&pipelined, &requests).await;
    let sequential = start_with(RespConfig::default(), MemoryBackend::with_routes(true)).await;
    let want = replies_one_at_a_time(&sequential, &requests).await;
    assert_eq!(got, want);
    assert_eq!(got[1], Frame::Integer(2));
    assert!(
        matches!(&got[5], Frame::Error(e) if e.contains("not an integer")),
        "{:?}",
        got[5]
    );
    // The 11 backend calls went as (at most) one command per region: the read path and the
    // write path each see Pipelines, never 11 separate commands.
    let executed = pipelined.backend.executed();
    assert!(
        executed.len() <= 2,
        "a pipeline over two regions should be two commands, got {executed:?}"
    );
    assert!(executed
        .iter()
        .all(|c| matches!(c, kv::Command::Pipeline { .. })));
    assert_eq!(sequential.backend.executed().len(), 11);
}

/// QUIT inside a pipeline answers and closes: the commands after it are not executed.
#[tokio::test]
async fn quit_inside_a_pipeline_stops_what_follows() {
    let server = start(RespConfig::default()).await;
    let requests = vec![vec!["SET", "a", "1"], vec!["QUIT"], vec!["SET", "a", "2"]];
    let mut stream = TcpStream::connect(server.address).await.unwrap();
    stream.write_all(&encode_requests(&requests)).await.unwrap();
    let frames = read_frames(&mut stream, 2).await;
    assert_eq!(frames, vec![Frame::simple("OK"), Frame::simple("OK")]);
    assert_closed(&mut stream).await;
    let again = replies_one_at_a_time(&server, &[vec!["GET", "a"]]).await;
    assert_eq!(again, vec![Frame::bulk(&b"1"[..])]);
}

/// AUTH pipelined with the commands it unlocks: each request is parsed and checked with the
/// authentication state of its turn.
#[tokio::test]
async fn auth_inside_a_pipeline_unlocks_what_follows() {
    let config = RespConfig {
        password: Some("secret".into()),
        ..RespConfig::default()
    };
    let server = start(config).await;
    let requests = vec![
        vec!["GET", "a"],
        vec!["AUTH", "secret"],
        vec!["SET", "a", "1"],
        vec!["GET", "a"],
    ];
    let frames = replies_pipelined(&server, &requests).await;
    assert!(
        matches!(&frames[0], Frame::Error(e) if e.starts_with("NOAUTH")),
        "{frames:?}"
    );
    assert_eq!(
        frames[1..],
        [
            Frame::simple("OK"),
            Frame::simple("OK"),
            Frame::bulk(&b"1"[..])
        ]
    );
}

/// Longer than one batch (`MAX_PIPELINE_COMMANDS`) and than one read of the socket: still
/// every answer, in order.
#[tokio::test]
async fn a_long_pipeline_is_answered_in_order() {
    let server = start(RespConfig::default()).await;
    let requests: Vec<Vec<&str>> = (0..3000)
        .map(|i| {
            if i % 2 == 0 {
                vec!["INCR", "a"]
            } else {
                vec!["INCR", "z"]
            }
        })
        .collect();
    let frames = replies_pipelined(&server, &requests).await;
    let want: Vec<Frame> = (0..3000).map(|i| Frame::Integer(i / 2 + 1)).collect();
    assert_eq!(frames, want);
}

fn pipeline_request() -> impl Strategy<Value = Vec<String>> {
    let key = proptest::sample::select(vec!["a", "b", "y", "z"]).prop_map(str::to_string);
    let value = proptest::sample::select(vec!["1", "22", "x"]).prop_map(str::to_string);
    prop_oneof![
        (key.clone(), value.clone()).prop_map(|(k, v)| vec!["SET".into(), k, v]),
        (key.clone(), value.clone()).prop_map(|(k, v)| vec!["SET".into(), k, v, "NX".into()]),
        key.clone().prop_map(|k| vec!["GET".into(), k]),
        key.clone().prop_map(|k| vec!["INCR".into(), k]),
        (key.clone(), value.clone()).prop_map(|(k, v)| vec!["APPEND".into(), k, v]),
        key.clone().prop_map(|k| vec!["DEL".into(), k]),
        (key.clone(), key.clone()).prop_map(|(k, l)| vec!["EXISTS".into(), k, l]),
        (key.clone(), value.clone()).prop_map(|(k, v)| vec!["GETSET".into(), k, v]),
        (key.clone(), key.clone()).prop_map(|(k, l)| vec!["MGET".into(), k, l]),
        key.clone().prop_map(|k| vec!["GETDEL".into(), k]),
        (key.clone(), -3i64..3).prop_map(|(k, n)| vec!["INCRBY".into(), k, n.to_string()]),
        key.clone().prop_map(|k| vec!["STRLEN".into(), k]),
        Just(vec!["PING".to_string()]),
        Just(vec!["CLIENT".to_string(), "SETNAME".into(), "x".into()]),
        Just(vec!["DBSIZE".to_string()]),
        key.prop_map(|k| vec!["INCR".into(), k, "extra".into()]),
    ]
}

/// Runs `requests` against a fresh server the way `slow` says (all in one write to a plain
/// backend, or trickled to a backend whose commands finish out of order) and, one at a time,
/// against another fresh server: both answers, to compare.
fn pipelined_and_one_at_a_time(
    requests: &[Vec<String>],
    routes: bool,
    slow: bool,
) -> (Vec<Frame>, Vec<Frame>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let requests: Vec<Vec<&str>> = requests
        .iter()
        .map(|r| r.iter().map(String::as_str).collect())
        .collect();
    runtime.block_on(async {
        let sequential =
            start_with(RespConfig::default(), MemoryBackend::with_routes(routes)).await;
        let want = replies_one_at_a_time(&sequential, &requests).await;
        let got = if slow {
            let server =
                start_with(RespConfig::default(), MemoryBackend::with_delays(routes)).await;
            replies_trickled(&server, &requests).await
        } else {
            let server =
                start_with(RespConfig::default(), MemoryBackend::with_routes(routes)).await;
            replies_pipelined(&server, &requests).await
        };
        (got, want)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any pipeline of key, connection and server commands over keys in two regions answers
    /// exactly what the same commands sent one at a time answer, whether or not the backend
    /// can route keys to regions.
    #[test]
    fn pipelined_answers_equal_one_at_a_time(
        requests in proptest::collection::vec(pipeline_request(), 1..60),
        routes in any::<bool>(),
    ) {
        let (got, want) = pipelined_and_one_at_a_time(&requests, routes, false);
        prop_assert_eq!(got, want);
    }
}

/// Each request in its own write, yielding between them, so the server reads them in several
/// batches while earlier segments still wait for the (slow) backend.
async fn replies_trickled(server: &TestServer, requests: &[Vec<&str>]) -> Vec<Frame> {
    let mut stream = TcpStream::connect(server.address).await.unwrap();
    for request in requests {
        stream
            .write_all(&encode_requests(std::slice::from_ref(request)))
            .await
            .unwrap();
        tokio::task::yield_now().await;
    }
    read_frames(&mut stream, requests.len()).await
}

/// Segments overlap: while `INCR a` waits for the slow backend, the next request (`INCR z`,
/// another region, so another segment's group) is already running; yet each region's
/// commands take effect in order, so the answers are those of one at a time.
#[tokio::test(flavor = "current_thread")]
async fn segments_overlap_and_each_region_keeps_its_order() {
    let requests: Vec<Vec<&str>> = (0..200)
        .map(|i| match i % 4 {
            0 => vec!["INCR", "a"],
            1 => vec!["INCR", "z"],
            2 => vec!["APPEND", "b", "x"],
            _ => vec!["GET", "a"],
        })
        .collect();
    let slow = start_with(RespConfig::default(), MemoryBackend::with_delays(true)).await;
    let got = replies_trickled(&slow, &requests).await;
    let sequential = start_with(RespConfig::default(), MemoryBackend::with_routes(true)).await;
    let want = replies_one_at_a_time(&sequential, &requests).await;
    assert_eq!(got, want);
    let most = slow.backend.running.1.load(Ordering::SeqCst);
    assert!(
        most >= 2,
        "backend calls never overlapped (at most {most} at once)"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The same as `pipelined_answers_equal_one_at_a_time`, with a backend whose commands
    /// finish out of order and requests arriving in many reads: overlapping segments must
    /// not reorder anything a client can see.
    #[test]
    fn overlapped_answers_equal_one_at_a_time(
        requests in proptest::collection::vec(pipeline_request(), 1..60),
        routes in any::<bool>(),
    ) {
        let (got, want) = pipelined_and_one_at_a_time(&requests, routes, true);
        prop_assert_eq!(got, want);
    }
}
