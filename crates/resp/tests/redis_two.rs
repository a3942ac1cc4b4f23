//! Redis compatibility, part two (issue 20): expiry, hashes, MULTI/EXEC/WATCH and the key
//! space, end to end over TCP against the in-memory backend of `common`, whose clock the
//! tests move (no sleeps).

mod common;

use common::*;
use resp::{Frame, RespConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

type Connection = redis::aio::MultiplexedConnection;

async fn int(c: &mut Connection, command: &redis::Cmd) -> i64 {
    command.query_async(c).await.expect("integer reply")
}

async fn text(c: &mut Connection, command: &redis::Cmd) -> Option<String> {
    command.query_async(c).await.expect("bulk or nil reply")
}

async fn ok(c: &mut Connection, command: &redis::Cmd) {
    let reply: String = command.query_async(c).await.expect("status reply");
    assert_eq!(reply, "OK");
}

fn encode(parts: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", parts.len()).into_bytes();
    for part in parts {
        out.extend_from_slice(format!("${}\r\n{part}\r\n", part.len()).as_bytes());
    }
    out
}

/// Sends one request on a raw connection and reads its one reply.
async fn ask(stream: &mut TcpStream, parts: &[&str]) -> Frame {
    stream.write_all(&encode(parts)).await.expect("write");
    read_frames(stream, 1).await.remove(0)
}

fn bulk(text: &str) -> Frame {
    Frame::Bulk(bytes::Bytes::copy_from_slice(text.as_bytes()))
}

fn error(text: &str) -> Frame {
    Frame::Error(text.to_string())
}

#[tokio::test]
async fn lock_recipe_set_nx_px_and_delifeq_release() {
    let server = start(RespConfig::default()).await;
    let mut c = client(&server).await;
    ok(
        &mut c,
        cmd("SET")
            .arg("lock")
            .arg("token-1")
            .arg("NX")
            .arg("PX")
            .arg(30_000),
    )
    .await;
    let taken: Option<String> = cmd("SET")
        .arg("lock")
        .arg("token-2")
        .arg("NX")
        .arg("PX")
        .arg(30_000)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(taken, None, "a held lock is not taken again");
    let pttl = int(&mut c, cmd("PTTL").arg("lock")).await;
    assert!((29_000..=30_000).contains(&pttl), "{pttl}");
    // Releasing with the wrong token changes nothing; with the right one deletes.
    assert_eq!(
        int(&mut c, cmd("DELIFEQ").arg("lock").arg("token-2")).await,
        0
    );
    assert_eq!(
        int(&mut c, cmd("DELIFEQ").arg("lock").arg("token-1")).await,
        1
    );
    assert_eq!(int(&mut c, cmd("EXISTS").arg("lock")).await, 0);
    // A lock whose holder died frees itself at its deadline.
    ok(
        &mut c,
        cmd("SET")
            .arg("lock")
            .arg("token-3")
            .arg("NX")
            .arg("PX")
            .arg(1_000),
    )
    .await;
    server.backend.advance(1_001);
    ok(
        &mut c,
        cmd("SET")
            .arg("lock")
            .arg("token-4")
            .arg("NX")
            .arg("PX")
            .arg(1_000),
    )
    .await;
    assert_eq!(
        text(&mut c, cmd("GET").arg("lock")).await.as_deref(),
        Some("token-4")
    );
}

#[tokio::test]
async fn ttl_family_persist_getex_and_set_options() {
    let server = start(RespConfig::default()).await;
    let mut c = client(&server).await;
    ok(&mut c, cmd("SET").arg("k").arg("v").arg("EX").arg(100)).await;
    assert_eq!(int(&mut c, cmd("TTL").arg("k")).await, 100);
    assert_eq!(int(&mut c, cmd("PTTL").arg("k")).await, 100_000);
    let now = server.backend.now();
    assert_eq!(
        int(&mut c, cmd("PEXPIRETIME").arg("k")).await,
        (now + 100_000) as i64
    );
    assert_eq!(
        int(&mut c, cmd("EXPIRETIME").arg("k")).await,
        ((now + 100_000 + 500) / 1000) as i64
    );
    // Rounded as Redis: 99.5 s left is 100, 99.4 s is 99.
    server.backend.advance(500);
    assert_eq!(int(&mut c, cmd("TTL").arg("k")).await, 100);
    server.backend.advance(100);
    assert_eq!(int(&mut c, cmd("TTL").arg("k")).await, 99);
    assert_eq!(int(&mut c, cmd("PERSIST").arg("k")).await, 1);
    assert_eq!(int(&mut c, cmd("PERSIST").arg("k")).await, 0);
    assert_eq!(int(&mut c, cmd("TTL").arg("k")).await, -1);
    assert_eq!(int(&mut c, cmd("TTL").arg("missing")).await, -2);
    assert_eq!(int(&mut c, cmd("EXPIRETIME").arg("k")).await, -1);
    // GETEX sets and removes deadlines and answers the value.
    let value = text(&mut c, cmd("GETEX").arg("k").arg("PX").arg(5_000)).await;
    assert_eq!(value.as_deref(), Some("v"));
    assert_eq!(int(&mut c, cmd("PTTL").arg("k")).await, 5_000);
    let value = text(&mut c, cmd("GETEX").arg("k").arg("PERSIST")).await;
    assert_eq!(value.as_deref(), Some("v"));
    assert_eq!(int(&mut c, cmd("TTL").arg("k")).await, -1);
    assert_eq!(text(&mut c, cmd("GETEX").arg("missing")).await, None);
    // KEEPTTL keeps it; a plain SET drops it.
    ok(&mut c, cmd("SETEX").arg("k").arg(50).arg("v2")).await;
    ok(&mut c, cmd("SET").arg("k").arg("v3").arg("KEEPTTL")).await;
    assert_eq!(int(&mut c, cmd("TTL").arg("k")).await, 50);
    ok(&mut c, cmd("SET").arg("k").arg("v4")).await;
    assert_eq!(int(&mut c, cmd("TTL").arg("k")).await, -1);
    ok(&mut c, cmd("PSETEX").arg("p").arg(1_500).arg("x")).await;
    assert_eq!(int(&mut c, cmd("PTTL").arg("p")).await, 1_500);
    let at = server.backend.now() / 1000 + 10;
    ok(&mut c, cmd("SET").arg("k").arg("v").arg("EXAT").arg(at)).await;
    assert_eq!(int(&mut c, cmd("EXPIRETIME").arg("k")).await, at as i64);
    // Redis 7's errors.
    let invalid = "ERR invalid expire time in 'set' command";
    for (option, time) in [("EX", "0"), ("PX", "-5"), ("EX", "9223372036854775807")] {
        assert_eq!(
            error_text::<()>(&mut c, cmd("SET").arg("k").arg("v").arg(option).arg(time)).await,
            invalid
        );
    }
    let syntax = "ERR syntax error";
    for options in [
        vec!["EX", "10", "PX", "10"],
        vec!["EX", "10", "KEEPTTL"],
        vec!["KEEPTTL", "PX", "10"],
        vec!["NX", "XX"],
        vec!["EX"],
    ] {
        let mut command = cmd("SET");
        command.arg("k").arg("v");
        for option in &options {
            command.arg(*option);
        }
        assert_eq!(
            error_text::<()>(&mut c, &command).await,
            syntax,
            "{options:?}"
        );
    }
    assert_eq!(
        error_text::<()>(&mut c, cmd("SET").arg("k").arg("v").arg("EX").arg("x")).await,
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        error_text::<()>(&mut c, cmd("SETEX").arg("k").arg(0).arg("v")).await,
        "ERR invalid expire time in 'setex' command"
    );
    assert_eq!(
        error_text::<()>(
            &mut c,
            cmd("GETEX").arg("k").arg("EX").arg(1).arg("PERSIST")
        )
        .await,
        syntax
    );
    assert_eq!(
        error_text::<()>(&mut c, cmd("GETEX").arg("k").arg("EX").arg(-1)).await,
        "ERR invalid expire time in 'getex' command"
    );
}

#[tokio::test]
async fn expire_conditions_nx_xx_gt_lt() {
    let server = start(RespConfig::default()).await;
    let mut c = client(&server).await;
    ok(&mut c, cmd("SET").arg("k").arg("v")).await;
    // No deadline: XX and GT fail, NX and LT apply (no TTL counts as infinite).
    assert_eq!(
        int(&mut c, cmd("EXPIRE").arg("k").arg(100).arg("XX")).await,
        0
    );
    assert_eq!(
        int(&mut c, cmd("EXPIRE").arg("k").arg(100).arg("GT")).await,
        0
    );
    assert_eq!(
        int(&mut c, cmd("EXPIRE").arg("k").arg(100).arg("NX")).await,
        1
    );
    assert_eq!(
        int(&mut c, cmd("EXPIRE").arg("k").arg(200).arg("NX")).await,
        0
    );
    assert_eq!(int(&mut c, cmd("TTL").arg("k")).await, 100);
    assert_eq!(
        int(&mut c, cmd("EXPIRE").arg("k").arg(50).arg("GT")).await,
        0
    );
    assert_eq!(
        int(&mut c, cmd("EXPIRE").arg("k").arg(150).arg("GT")).await,
        1
    );
    assert_eq!(
        int(&mut c, cmd("EXPIRE").arg("k").arg(200).arg("LT")).await,
        0
    );
    assert_eq!(
        int(&mut c, cmd("PEXPIRE").arg("k").arg(120_000).arg("LT")).await,
        1
    );
    assert_eq!(int(&mut c, cmd("PTTL").arg("k")).await, 120_000);
    assert_eq!(
        int(&mut c, cmd("EXPIRE").arg("k").arg(300).arg("XX")).await,
        1
    );
    assert_eq!(int(&mut c, cmd("TTL").arg("k")).await, 300);
    let at = server.backend.now() + 7_000;
    assert_eq!(int(&mut c, cmd("PEXPIREAT").arg("k").arg(at)).await, 1);
    assert_eq!(int(&mut c, cmd("PEXPIRETIME").arg("k")).await, at as i64);
    assert_eq!(int(&mut c, cmd("EXPIRE").arg("missing").arg(10)).await, 0);
    // A time already past deletes the key, answering 1.
    assert_eq!(int(&mut c, cmd("EXPIRE").arg("k").arg(-1)).await, 1);
    assert_eq!(int(&mut c, cmd("EXISTS").arg("k")).await, 0);
    for (options, message) in [
        (
            vec!["NX", "XX"],
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ),
        (
            vec!["NX", "GT"],
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ),
        (
            vec!["GT", "LT"],
            "ERR GT and LT options at the same time are not compatible",
        ),
        (vec!["FOO"], "ERR Unsupported option FOO"),
    ] {
        let mut command = cmd("EXPIRE");
        command.arg("k").arg(10);
        for option in &options {
            command.arg(*option);
        }
        assert_eq!(error_text::<()>(&mut c, &command).await, message);
    }
    assert_eq!(
        error_text::<()>(&mut c, cmd("EXPIRE").arg("k").arg("9223372036854775807")).await,
        "ERR invalid expire time in 'expire' command"
    );
}

#[tokio::test]
async fn a_key_is_gone_once_its_deadline_passes() {
    let server = start(RespConfig::default()).await;
    let mut c = client(&server).await;
    ok(&mut c, cmd("SET").arg("s").arg("v").arg("PX").arg(1_000)).await;
    assert_eq!(int(&mut c, cmd("HSET").arg("h").arg("f").arg("v")).await, 1);
    assert_eq!(int(&mut c, cmd("PEXPIRE").arg("h").arg(2_000)).await, 1);
    server.backend.advance(999);
    assert_eq!(
        text(&mut c, cmd("GET").arg("s")).await.as_deref(),
        Some("v")
    );
    server.backend.advance(1);
    // At the deadline the key is absent to every read, with nothing written since.
    assert_eq!(text(&mut c, cmd("GET").arg("s")).await, None);
    assert_eq!(int(&mut c, cmd("EXISTS").arg("s")).await, 0);
    assert_eq!(int(&mut c, cmd("TTL").arg("s")).await, -2);
    let kind: String = cmd("TYPE").arg("s").query_async(&mut c).await.unwrap();
    assert_eq!(kind, "none");
    assert_eq!(int(&mut c, cmd("HLEN").arg("h")).await, 1);
    server.backend.advance(1_000);
    assert_eq!(int(&mut c, cmd("HLEN").arg("h")).await, 0);
    let keys: Vec<String> = cmd("KEYS").arg("*").query_async(&mut c).await.unwrap();
    assert!(keys.is_empty(), "{keys:?}");
    // ...and to writes: SET NX succeeds on an expired key.
    ok(&mut c, cmd("SET").arg("s").arg("new").arg("NX")).await;
}

#[tokio::test]
async fn hash_commands() {
    let server = start(RespConfig::default()).await;
    let mut c = client(&server).await;
    assert_eq!(
        int(
            &mut c,
            cmd("HSET").arg("h").arg("a").arg("1").arg("b").arg("2")
        )
        .await,
        2
    );
    assert_eq!(
        int(
            &mut c,
            cmd("HSET").arg("h").arg("a").arg("10").arg("c").arg("3")
        )
        .await,
        1
    );
    ok(&mut c, cmd("HMSET").arg("h").arg("d").arg("4")).await;
    assert_eq!(
        int(&mut c, cmd("HSETNX").arg("h").arg("a").arg("x")).await,
        0
    );
    assert_eq!(
        int(&mut c, cmd("HSETNX").arg("h").arg("e").arg("5")).await,
        1
    );
    assert_eq!(
        text(&mut c, cmd("HGET").arg("h").arg("a")).await.as_deref(),
        Some("10")
    );
    assert_eq!(text(&mut c, cmd("HGET").arg("h").arg("zz")).await, None);
    assert_eq!(text(&mut c, cmd("HGET").arg("nohash").arg("a")).await, None);
    let values: Vec<Option<String>> = cmd("HMGET")
        .arg("h")
        .arg("a")
        .arg("zz")
        .arg("b")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(values, vec![Some("10".into()), None, Some("2".into())]);
    let all: Vec<(String, String)> = cmd("HGETALL").arg("h").query_async(&mut c).await.unwrap();
    let expected: Vec<(String, String)> =
        [("a", "10"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5")]
            .iter()
            .map(|(f, v)| (f.to_string(), v.to_string()))
            .collect();
    assert_eq!(all, expected);
    let fields: Vec<String> = cmd("HKEYS").arg("h").query_async(&mut c).await.unwrap();
    assert_eq!(fields, vec!["a", "b", "c", "d", "e"]);
    let values: Vec<String> = cmd("HVALS").arg("h").query_async(&mut c).await.unwrap();
    assert_eq!(values, vec!["10", "2", "3", "4", "5"]);
    assert_eq!(int(&mut c, cmd("HLEN").arg("h")).await, 5);
    assert_eq!(int(&mut c, cmd("HEXISTS").arg("h").arg("b")).await, 1);
    assert_eq!(int(&mut c, cmd("HEXISTS").arg("h").arg("zz")).await, 0);
    assert_eq!(int(&mut c, cmd("HSTRLEN").arg("h").arg("a")).await, 2);
    assert_eq!(int(&mut c, cmd("HSTRLEN").arg("h").arg("zz")).await, 0);
    assert_eq!(
        int(&mut c, cmd("HINCRBY").arg("h").arg("a").arg(5)).await,
        15
    );
    assert_eq!(
        int(&mut c, cmd("HINCRBY").arg("h").arg("new").arg(-2)).await,
        -2
    );
    let float = text(&mut c, cmd("HINCRBYFLOAT").arg("h").arg("b").arg("0.5")).await;
    assert_eq!(float.as_deref(), Some("2.5"));
    assert_eq!(
        int(&mut c, cmd("HSET").arg("h").arg("word").arg("abc")).await,
        1
    );
    assert_eq!(
        error_text::<()>(&mut c, cmd("HINCRBY").arg("h").arg("word").arg(1)).await,
        "ERR hash value is not an integer"
    );
    assert_eq!(
        error_text::<()>(&mut c, cmd("HINCRBYFLOAT").arg("h").arg("word").arg(1)).await,
        "ERR hash value is not a float"
    );
    assert_eq!(
        error_text::<()>(&mut c, cmd("HINCRBY").arg("h").arg("a").arg("x")).await,
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        error_text::<()>(&mut c, cmd("HSET").arg("h").arg("a")).await,
        "ERR wrong number of arguments for 'hset' command"
    );
    assert_eq!(
        error_text::<()>(&mut c, cmd("HSET").arg("h").arg("a").arg("1").arg("b")).await,
        "ERR wrong number of arguments for 'hset' command"
    );
    // HRANDFIELD: distinct fields for a positive count, repeats for a negative one.
    let one: String = cmd("HRANDFIELD")
        .arg("h")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        fields.contains(&one) || one == "new" || one == "word",
        "{one}"
    );
    let three: Vec<String> = cmd("HRANDFIELD")
        .arg("h")
        .arg(3)
        .query_async(&mut c)
        .await
        .unwrap();
    let mut distinct = three.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3);
    let many: Vec<String> = cmd("HRANDFIELD")
        .arg("h")
        .arg(-20)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(many.len(), 20);
    let everything: Vec<String> = cmd("HRANDFIELD")
        .arg("h")
        .arg(100)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(everything.len(), 7);
    let pairs: Vec<String> = cmd("HRANDFIELD")
        .arg("h")
        .arg(2)
        .arg("WITHVALUES")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(pairs.len(), 4);
    assert_eq!(text(&mut c, cmd("HRANDFIELD").arg("nohash")).await, None);
    // HSCAN pages through every field once.
    let mut cursor = "0".to_string();
    let mut seen = Vec::new();
    loop {
        let (next, page): (String, Vec<String>) = cmd("HSCAN")
            .arg("h")
            .arg(&cursor)
            .arg("COUNT")
            .arg(2)
            .query_async(&mut c)
            .await
            .unwrap();
        seen.extend(page.chunks(2).map(|pair| pair[0].clone()));
        if next == "0" {
            break;
        }
        cursor = next;
    }
    assert_eq!(seen, vec!["a", "b", "c", "d", "e", "new", "word"]);
    let (_, matched): (String, Vec<String>) = cmd("HSCAN")
        .arg("h")
        .arg(0)
        .arg("MATCH")
        .arg("w*")
        .arg("NOVALUES")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(matched, vec!["word"]);
    assert_eq!(
        int(&mut c, cmd("HDEL").arg("h").arg("a").arg("zz").arg("b")).await,
        2
    );
    let kind: String = cmd("TYPE").arg("h").query_async(&mut c).await.unwrap();
    assert_eq!(kind, "hash");
    // Deleting the last field deletes the key.
    assert_eq!(
        int(&mut c, cmd("HSET").arg("tiny").arg("f").arg("v")).await,
        1
    );
    assert_eq!(int(&mut c, cmd("HDEL").arg("tiny").arg("f")).await, 1);
    assert_eq!(int(&mut c, cmd("EXISTS").arg("tiny")).await, 0);
}

#[tokio::test]
async fn wrongtype_both_ways() {
    let server = start(RespConfig::default()).await;
    let mut c = client(&server).await;
    ok(&mut c, cmd("SET").arg("s").arg("1")).await;
    let _: i64 = cmd("HSET")
        .arg("h")
        .arg("f")
        .arg("v")
        .query_async(&mut c)
        .await
        .unwrap();
    let wrongtype = "WRONGTYPE Operation against a key holding the wrong kind of value";
    for command in [
        cmd("HGET").arg("s").arg("f").clone(),
        cmd("HSET").arg("s").arg("f").arg("v").clone(),
        cmd("HGETALL").arg("s").clone(),
        cmd("HLEN").arg("s").clone(),
        cmd("HINCRBY").arg("s").arg("f").arg(1).clone(),
        cmd("GET").arg("h").clone(),
        cmd("INCR").arg("h").clone(),
        cmd("APPEND").arg("h").arg("x").clone(),
        cmd("GETDEL").arg("h").clone(),
        cmd("DELIFEQ").arg("h").arg("v").clone(),
    ] {
        assert_eq!(error_text::<()>(&mut c, &command).await, wrongtype);
    }
    // MGET answers nil for a hash; SET overwrites any type; DEL deletes any type.
    let values: Vec<Option<String>> = cmd("MGET")
        .arg("h")
        .arg("s")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(values, vec![None, Some("1".into())]);
    ok(&mut c, cmd("SET").arg("h").arg("now a string")).await;
    let kind: String = cmd("TYPE").arg("h").query_async(&mut c).await.unwrap();
    assert_eq!(kind, "string");
    assert_eq!(int(&mut c, cmd("DEL").arg("h").arg("s")).await, 2);
}

#[tokio::test]
async fn hgetall_is_a_map_in_resp3_and_a_flat_array_in_resp2() {
    let server = start(RespConfig::default()).await;
    let mut stream = TcpStream::connect(server.address).await.unwrap();
    assert_eq!(
        ask(&mut stream, &["HSET", "h", "f1", "v1", "f2", "v2"]).await,
        Frame::Integer(2)
    );
    assert_eq!(
        ask(&mut stream, &["HGETALL", "h"]).await,
        Frame::Array(vec![bulk("f1"), bulk("v1"), bulk("f2"), bulk("v2")])
    );
    let pairs = ask(&mut stream, &["HRANDFIELD", "h", "5", "WITHVALUES"]).await;
    assert_eq!(
        pairs,
        Frame::Array(vec![bulk("f1"), bulk("v1"), bulk("f2"), bulk("v2")])
    );
    assert!(matches!(
        ask(&mut stream, &["HELLO", "3"]).await,
        Frame::Map(_)
    ));
    assert_eq!(
        ask(&mut stream, &["HGETALL", "h"]).await,
        Frame::Map(vec![(bulk("f1"), bulk("v1")), (bulk("f2"), bulk("v2"))])
    );
    assert_eq!(
        ask(&mut stream, &["HGETALL", "missing"]).await,
        Frame::Map(vec![])
    );
    let pairs = ask(&mut stream, &["HRANDFIELD", "h", "5", "WITHVALUES"]).await;
    assert_eq!(
        pairs,
        Frame::Array(vec![
            Frame::Array(vec![bulk("f1"), bulk("v1")]),
            Frame::Array(vec![bulk("f2"), bulk("v2")]),
        ])
    );
    assert_eq!(ask(&mut stream, &["HGET", "h", "nope"]).await, Frame::Null);
    // With the redis crate speaking RESP3 too.
    let url = format!("redis://{}/?protocol=resp3", server.address);
    let mut c = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_tokio_connection()
        .await
        .unwrap();
    let map: std::collections::HashMap<String, String> =
        cmd("HGETALL").arg("h").query_async(&mut c).await.unwrap();
    assert_eq!(map.get("f2").map(String::as_str), Some("v2"));
}

#[tokio::test]
async fn multi_exec_and_discard() {
    let server = start(RespConfig::default()).await;
    let mut s = TcpStream::connect(server.address).await.unwrap();
    assert_eq!(
        ask(&mut s, &["EXEC"]).await,
        error("ERR EXEC without MULTI")
    );
    assert_eq!(
        ask(&mut s, &["DISCARD"]).await,
        error("ERR DISCARD without MULTI")
    );
    assert_eq!(ask(&mut s, &["MULTI"]).await, Frame::simple("OK"));
    assert_eq!(
        ask(&mut s, &["MULTI"]).await,
        error("ERR MULTI calls can not be nested")
    );
    let queued = Frame::simple("QUEUED");
    assert_eq!(ask(&mut s, &["SET", "a", "1"]).await, queued);
    assert_eq!(ask(&mut s, &["INCR", "a"]).await, queued);
    assert_eq!(ask(&mut s, &["HSET", "h", "f", "v"]).await, queued);
    assert_eq!(ask(&mut s, &["HINCRBY", "h", "f", "1"]).await, queued);
    assert_eq!(ask(&mut s, &["GET", "a"]).await, queued);
    assert_eq!(ask(&mut s, &["EXISTS", "a", "h", "nope"]).await, queued);
    assert_eq!(ask(&mut s, &["SET", "a", "2", "EX", "0"]).await, queued);
    assert_eq!(ask(&mut s, &["PING"]).await, queued);
    assert_eq!(
        ask(&mut s, &["WATCH", "a"]).await,
        error("ERR WATCH inside MULTI is not allowed")
    );
    assert_eq!(
        ask(&mut s, &["EXEC"]).await,
        Frame::Array(vec![
            Frame::simple("OK"),
            Frame::Integer(2),
            Frame::Integer(1),
            error("ERR hash value is not an integer"),
            bulk("2"),
            Frame::Integer(2),
            error("ERR invalid expire time in 'set' command"),
            Frame::simple("PONG"),
        ])
    );
    // One log entry held the whole transaction.
    let execs: Vec<kv::Command> = server
        .backend
        .executed()
        .into_iter()
        .filter(|c| matches!(c, kv::Command::Exec { .. }))
        .collect();
    assert_eq!(execs.len(), 1);
    assert_eq!(ask(&mut s, &["MULTI"]).await, Frame::simple("OK"));
    assert_eq!(ask(&mut s, &["SET", "a", "100"]).await, queued);
    assert_eq!(ask(&mut s, &["DISCARD"]).await, Frame::simple("OK"));
    assert_eq!(ask(&mut s, &["GET", "a"]).await, bulk("2"));
    // An empty transaction answers an empty array.
    assert_eq!(ask(&mut s, &["MULTI"]).await, Frame::simple("OK"));
    assert_eq!(ask(&mut s, &["EXEC"]).await, Frame::Array(vec![]));
    // RESET leaves the transaction.
    assert_eq!(ask(&mut s, &["MULTI"]).await, Frame::simple("OK"));
    assert_eq!(ask(&mut s, &["RESET"]).await, Frame::simple("RESET"));
    assert_eq!(
        ask(&mut s, &["EXEC"]).await,
        error("ERR EXEC without MULTI")
    );
}

#[tokio::test]
async fn an_error_queued_inside_multi_aborts_exec() {
    let server = start(RespConfig::default()).await;
    let mut s = TcpStream::connect(server.address).await.unwrap();
    assert_eq!(ask(&mut s, &["MULTI"]).await, Frame::simple("OK"));
    assert_eq!(
        ask(&mut s, &["SET", "a", "1"]).await,
        Frame::simple("QUEUED")
    );
    let unknown = ask(&mut s, &["NOSUCHCOMMAND", "x"]).await;
    assert!(
        matches!(&unknown, Frame::Error(e) if e.starts_with("ERR unknown command 'NOSUCHCOMMAND'")),
        "{unknown:?}"
    );
    assert_eq!(
        ask(&mut s, &["EXEC"]).await,
        error("EXECABORT Transaction discarded because of previous errors.")
    );
    assert_eq!(
        ask(&mut s, &["GET", "a"]).await,
        Frame::Null,
        "nothing applied"
    );
    // A wrong arity aborts the same way; so does a command RaftKV cannot queue.
    assert_eq!(ask(&mut s, &["MULTI"]).await, Frame::simple("OK"));
    assert_eq!(
        ask(&mut s, &["GET"]).await,
        error("ERR wrong number of arguments for 'get' command")
    );
    assert_eq!(
        ask(&mut s, &["EXEC"]).await,
        error("EXECABORT Transaction discarded because of previous errors.")
    );
    assert_eq!(ask(&mut s, &["MULTI"]).await, Frame::simple("OK"));
    assert!(matches!(ask(&mut s, &["KEYS", "*"]).await, Frame::Error(_)));
    assert_eq!(
        ask(&mut s, &["EXEC"]).await,
        error("EXECABORT Transaction discarded because of previous errors.")
    );
}

#[tokio::test]
async fn watch_aborts_exec_when_the_key_changes_and_only_then() {
    let server = start(RespConfig::default()).await;
    let mut other = client(&server).await;
    ok(&mut other, cmd("SET").arg("counter").arg("1")).await;
    let mut s = TcpStream::connect(server.address).await.unwrap();
    assert_eq!(
        ask(&mut s, &["WATCH", "counter"]).await,
        Frame::simple("OK")
    );
    ok(&mut other, cmd("SET").arg("counter").arg("5")).await;
    assert_eq!(ask(&mut s, &["MULTI"]).await, Frame::simple("OK"));
    assert_eq!(
        ask(&mut s, &["INCR", "counter"]).await,
        Frame::simple("QUEUED")
    );
    assert_eq!(ask(&mut s, &["EXEC"]).await, Frame::NullArray);
    assert_eq!(ask(&mut s, &["GET", "counter"]).await, bulk("5"));
    // EXEC forgot the watch: the next transaction applies.
    assert_eq!(ask(&mut s, &["MULTI"]).await, Frame::simple("OK"));
    assert_eq!(
        ask(&mut s, &["INCR", "counter"]).await,
        Frame::simple("QUEUED")
    );
    assert_eq!(
        ask(&mut s, &["EXEC"]).await,
        Frame::Array(vec![Frame::Integer(6)])
    );
    // A change to another key does not abort it.
    assert_eq!(
        ask(&mut s, &["WATCH", "counter"]).await,
        Frame::simple("OK")
    );
    ok(&mut other, cmd("SET").arg("another").arg("x")).await;
    assert_eq!(ask(&mut s, &["MULTI"]).await, Frame::simple("OK"));
    assert_eq!(
        ask(&mut s, &["INCR", "counter"]).await,
        Frame::simple("QUEUED")
    );
    assert_eq!(
        ask(&mut s, &["EXEC"]).await,
        Frame::Array(vec![Frame::Integer(7)])
    );
    // UNWATCH forgets it.
    assert_eq!(
        ask(&mut s, &["WATCH", "counter"]).await,
        Frame::simple("OK")
    );
    assert_eq!(ask(&mut s, &["UNWATCH"]).await, Frame::simple("OK"));
    ok(&mut other, cmd("SET").arg("counter").arg("0")).await;
    assert_eq!(ask(&mut s, &["MULTI"]).await, Frame::simple("OK"));
    assert_eq!(
        ask(&mut s, &["INCR", "counter"]).await,
        Frame::simple("QUEUED")
    );
    assert_eq!(
        ask(&mut s, &["EXEC"]).await,
        Frame::Array(vec![Frame::Integer(1)])
    );
    // A deadline change counts as a change.
    assert_eq!(
        ask(&mut s, &["WATCH", "counter"]).await,
        Frame::simple("OK")
    );
    assert_eq!(
        int(&mut other, cmd("EXPIRE").arg("counter").arg(100)).await,
        1
    );
    assert_eq!(ask(&mut s, &["MULTI"]).await, Frame::simple("OK"));
    assert_eq!(
        ask(&mut s, &["INCR", "counter"]).await,
        Frame::simple("QUEUED")
    );
    assert_eq!(ask(&mut s, &["EXEC"]).await, Frame::NullArray);
}

#[tokio::test]
async fn pipelined_multi_set_exec_is_one_transaction() {
    let server = start_with(RespConfig::default(), MemoryBackend::with_routes(true)).await;
    let mut s = TcpStream::connect(server.address).await.unwrap();
    let mut request = encode(&["MULTI"]);
    request.extend(encode(&["SET", "a", "1"]));
    request.extend(encode(&["INCR", "a"]));
    request.extend(encode(&["EXEC"]));
    request.extend(encode(&["GET", "a"]));
    s.write_all(&request).await.unwrap();
    let replies = read_frames(&mut s, 5).await;
    assert_eq!(
        replies,
        vec![
            Frame::simple("OK"),
            Frame::simple("QUEUED"),
            Frame::simple("QUEUED"),
            Frame::Array(vec![Frame::simple("OK"), Frame::Integer(2)]),
            bulk("2"),
        ]
    );
    let executed = server.backend.executed();
    assert!(
        executed
            .iter()
            .any(|c| matches!(c, kv::Command::Exec { commands, .. } if commands.len() == 2)),
        "{executed:?}"
    );
    assert!(
        !executed
            .iter()
            .any(|c| matches!(c, kv::Command::Put { .. } | kv::Command::Pipeline { .. })),
        "the SET must not be applied outside the transaction: {executed:?}"
    );
}

#[tokio::test]
async fn key_space_commands() {
    let server = start(RespConfig::default()).await;
    let mut c = client(&server).await;
    for key in ["user:1", "user:2", "session:1"] {
        ok(&mut c, cmd("SET").arg(key).arg("v")).await;
    }
    let _: i64 = cmd("HSET")
        .arg("user:h")
        .arg("f")
        .arg("v")
        .query_async(&mut c)
        .await
        .unwrap();
    let mut users: Vec<String> = cmd("KEYS").arg("user:*").query_async(&mut c).await.unwrap();
    users.sort();
    assert_eq!(users, vec!["user:1", "user:2", "user:h"]);
    let all: Vec<String> = cmd("KEYS").arg("*").query_async(&mut c).await.unwrap();
    assert_eq!(all.len(), 4);
    let none: Vec<String> = cmd("KEYS").arg("zzz*").query_async(&mut c).await.unwrap();
    assert!(none.is_empty());
    let (_, hashes): (String, Vec<String>) = cmd("SCAN")
        .arg(0)
        .arg("COUNT")
        .arg(100)
        .arg("TYPE")
        .arg("hash")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(hashes, vec!["user:h"]);
    let (_, strings): (String, Vec<String>) = cmd("SCAN")
        .arg(0)
        .arg("COUNT")
        .arg(100)
        .arg("TYPE")
        .arg("string")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(strings.len(), 3);
    let (_, lists): (String, Vec<String>) = cmd("SCAN")
        .arg(0)
        .arg("TYPE")
        .arg("list")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(lists.is_empty());
    assert_eq!(
        int(
            &mut c,
            cmd("EXISTS").arg("user:1").arg("user:h").arg("nope")
        )
        .await,
        2
    );
    // RENAME moves value, type and deadline.
    assert_eq!(int(&mut c, cmd("EXPIRE").arg("user:h").arg(100)).await, 1);
    ok(&mut c, cmd("RENAME").arg("user:h").arg("user:hash")).await;
    assert_eq!(int(&mut c, cmd("EXISTS").arg("user:h")).await, 0);
    assert_eq!(int(&mut c, cmd("TTL").arg("user:hash")).await, 100);
    assert_eq!(
        text(&mut c, cmd("HGET").arg("user:hash").arg("f"))
            .await
            .as_deref(),
        Some("v")
    );
    assert_eq!(
        error_text::<()>(&mut c, cmd("RENAME").arg("nope").arg("x")).await,
        "ERR no such key"
    );
    assert_eq!(
        int(&mut c, cmd("RENAMENX").arg("user:1").arg("user:2")).await,
        0
    );
    assert_eq!(
        int(&mut c, cmd("RENAMENX").arg("user:1").arg("user:3")).await,
        1
    );
    // COPY, with and without REPLACE.
    assert_eq!(
        int(&mut c, cmd("COPY").arg("user:hash").arg("copy")).await,
        1
    );
    assert_eq!(int(&mut c, cmd("COPY").arg("user:2").arg("copy")).await, 0);
    assert_eq!(
        int(&mut c, cmd("COPY").arg("user:2").arg("copy").arg("REPLACE")).await,
        1
    );
    assert_eq!(
        text(&mut c, cmd("GET").arg("copy")).await.as_deref(),
        Some("v")
    );
    assert_eq!(
        error_text::<()>(&mut c, cmd("COPY").arg("copy").arg("copy")).await,
        "ERR source and destination objects are the same"
    );
    assert_eq!(
        error_text::<()>(&mut c, cmd("COPY").arg("user:2").arg("x").arg("DB").arg(1)).await,
        "ERR DB index is out of range"
    );
}

#[tokio::test]
async fn object_encoding_and_memory_usage() {
    let server = start(RespConfig::default()).await;
    let mut c = client(&server).await;
    ok(&mut c, cmd("SET").arg("int").arg("12345")).await;
    ok(&mut c, cmd("SET").arg("short").arg("hello")).await;
    ok(&mut c, cmd("SET").arg("long").arg("x".repeat(45))).await;
    let _: i64 = cmd("HSET")
        .arg("h")
        .arg("f")
        .arg("v")
        .query_async(&mut c)
        .await
        .unwrap();
    for (key, encoding) in [
        ("int", "int"),
        ("short", "embstr"),
        ("long", "raw"),
        ("h", "listpack"),
    ] {
        assert_eq!(
            text(&mut c, cmd("OBJECT").arg("ENCODING").arg(key))
                .await
                .as_deref(),
            Some(encoding),
            "{key}"
        );
    }
    assert_eq!(
        text(&mut c, cmd("OBJECT").arg("ENCODING").arg("nope")).await,
        None
    );
    let usage: Option<i64> = cmd("MEMORY")
        .arg("USAGE")
        .arg("long")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(usage.unwrap_or(0) >= 45, "{usage:?}");
    let usage: Option<i64> = cmd("MEMORY")
        .arg("USAGE")
        .arg("nope")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(usage, None);
    let help: Vec<String> = cmd("OBJECT").arg("HELP").query_async(&mut c).await.unwrap();
    assert!(!help.is_empty());
}

#[tokio::test]
async fn keys_in_two_regions_are_crossslot_and_nothing_is_applied() {
    // Keys below "m" and the rest are two regions.
    let server = start_with(RespConfig::default(), MemoryBackend::with_routes(true)).await;
    let mut c = client(&server).await;
    ok(&mut c, cmd("SET").arg("a").arg("1")).await;
    ok(&mut c, cmd("SET").arg("z").arg("1")).await;
    let crossslot = "CROSSSLOT Keys in request don't hash to the same slot";
    assert_eq!(
        error_text::<()>(&mut c, cmd("RENAME").arg("a").arg("z2")).await,
        crossslot
    );
    assert_eq!(
        error_text::<()>(&mut c, cmd("COPY").arg("a").arg("z2")).await,
        crossslot
    );
    assert_eq!(
        error_text::<()>(&mut c, cmd("EXISTS").arg("a").arg("z")).await,
        crossslot
    );
    let mut s = TcpStream::connect(server.address).await.unwrap();
    assert_eq!(ask(&mut s, &["MULTI"]).await, Frame::simple("OK"));
    assert_eq!(
        ask(&mut s, &["SET", "b", "2"]).await,
        Frame::simple("QUEUED")
    );
    assert_eq!(
        ask(&mut s, &["SET", "y", "2"]).await,
        Frame::simple("QUEUED")
    );
    assert_eq!(ask(&mut s, &["EXEC"]).await, error(crossslot));
    assert_eq!(ask(&mut s, &["GET", "b"]).await, Frame::Null);
    assert_eq!(ask(&mut s, &["GET", "y"]).await, Frame::Null);
    // KEYS crosses both regions.
    let mut keys: Vec<String> = cmd("KEYS").arg("*").query_async(&mut c).await.unwrap();
    keys.sort();
    assert_eq!(keys, vec!["a", "z"]);
    // A transaction within one region applies.
    assert_eq!(ask(&mut s, &["MULTI"]).await, Frame::simple("OK"));
    assert_eq!(
        ask(&mut s, &["SET", "b", "2"]).await,
        Frame::simple("QUEUED")
    );
    assert_eq!(
        ask(&mut s, &["RENAME", "b", "c"]).await,
        Frame::simple("QUEUED")
    );
    assert_eq!(
        ask(&mut s, &["EXEC"]).await,
        Frame::Array(vec![Frame::simple("OK"), Frame::simple("OK")])
    );
    assert_eq!(ask(&mut s, &["GET", "c"]).await, bulk("2"));
}

#[tokio::test]
async fn command_table_lists_the_new_commands() {
    let server = start(RespConfig::default()).await;
    let mut c = client(&server).await;
    let info: redis::Value = cmd("COMMAND")
        .arg("INFO")
        .arg("hset")
        .arg("exec")
        .arg("rename")
        .query_async(&mut c)
        .await
        .unwrap();
    let redis::Value::Array(entries) = info else {
        panic!("{info:?}")
    };
    assert_eq!(entries.len(), 3);
    assert!(entries.iter().all(|e| matches!(e, redis::Value::Array(_))));
}
