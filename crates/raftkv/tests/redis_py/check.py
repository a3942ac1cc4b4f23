"""What a redis-py user does first, against a running RaftKV RESP port.

Run by crates/raftkv/tests/redis_py.rs with the virtualenv from scripts/install-redis-py.sh:
    python check.py PORT [PORT...]
Every check runs with redis-py's default settings (no protocol given: redis-py 8 opens with
HELLO 3), with protocol=3 and with protocol=2. Exits non-zero with the failing check's message.
Keys of one transaction share a {hashtag}, so they live in one region.
"""

import sys
import threading
import time

import redis


def check(label, cond, detail=""):
    if not cond:
        raise AssertionError(f"{label}: {detail}")


def strings_and_expiry(r, tag):
    lock = f"{{{tag}}}:lock"
    r.delete(lock)
    # The standard lock recipe: SET NX PX, then a safe release with DELIFEQ.
    check("lock acquire", r.set(lock, "token-1", nx=True, px=30000) is True)
    check("lock held", r.set(lock, "token-2", nx=True, px=30000) is None)
    pttl = r.pttl(lock)
    check("lock pttl", 0 < pttl <= 30000, f"pttl={pttl}")
    ttl = r.ttl(lock)
    check("lock ttl", 0 < ttl <= 30, f"ttl={ttl}")
    check("lock wrong release", r.execute_command("DELIFEQ", lock, "token-2") == 0)
    check("lock release", r.execute_command("DELIFEQ", lock, "token-1") == 1)
    check("lock gone", r.get(lock) is None)

    k = f"{{{tag}}}:ttl"
    r.set(k, "v", ex=100)
    check("expire xx", r.expire(k, 50, xx=True) is True)
    check("expire gt refused", r.expire(k, 10, gt=True) is False)
    check("persist", r.persist(k) is True)
    check("ttl after persist", r.ttl(k) == -1)
    check("ttl of missing", r.ttl(f"{{{tag}}}:missing") == -2)
    r.set(k, "short", px=200)
    deadline = time.monotonic() + 5
    while r.get(k) is not None:
        check("short key expires", time.monotonic() < deadline, "still there after 5 s")
        time.sleep(0.05)
    check("expired key has no ttl", r.ttl(k) == -2)
    r.setex(k, 100, "x")
    check("getex persist", r.getex(k, persist=True) in (b"x", "x"))
    check("ttl after getex persist", r.ttl(k) == -1)
    r.delete(k)


def hashes(r, tag):
    h = f"{{{tag}}}:hash"
    r.delete(h)
    check("hset", r.hset(h, mapping={"a": "1", "b": "2"}) == 2)
    check("hset existing", r.hset(h, "a", "10") == 0)
    got = r.hgetall(h)
    norm = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in got.items()}
    check("hgetall", norm == {"a": "10", "b": "2"}, repr(got))
    check("hincrby", r.hincrby(h, "b", 5) == 7)
    check("hlen", r.hlen(h) == 2)
    check("hexists", r.hexists(h, "a") is True)
    check("hdel", r.hdel(h, "a", "zz") == 1)
    check("type hash", r.type(h) in (b"hash", "hash"))
    try:
        r.get(h)
        check("wrongtype", False, "GET on a hash succeeded")
    except redis.ResponseError as e:
        check("wrongtype text", str(e).startswith("WRONGTYPE"), str(e))
    r.delete(h)


def transactions(r, port, protocol, tag):
    counter = f"{{{tag}}}:counter"
    r.set(counter, 0)
    # MULTI/EXEC through a pipeline (redis-py's default pipeline is a transaction).
    p = r.pipeline()
    p.incr(counter).incr(counter).get(counter)
    res = p.execute()
    check("multi/exec", [int(x) for x in res] == [1, 2, 2], repr(res))

    # Optimistic increments with WATCH from several threads: none lost, none doubled.
    threads, per_thread = 4, 25

    def worker():
        kwargs = {} if protocol is None else {"protocol": protocol}
        c = redis.Redis(port=port, **kwargs)
        for _ in range(per_thread):
            while True:
                try:
                    with c.pipeline() as pipe:
                        pipe.watch(counter)
                        v = int(pipe.get(counter))
                        pipe.multi()
                        pipe.set(counter, v + 1)
                        pipe.execute()
                        break
                except redis.WatchError:
                    continue
        c.close()

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
        check("watch worker finished", not t.is_alive(), "a WATCH worker ran over 120 s")
    final = int(r.get(counter))
    check("watch increments", final == 2 + threads * per_thread, f"final={final}")
    r.delete(counter)


def key_space(r, tag):
    a, b = f"{{{tag}}}:ka", f"{{{tag}}}:kb"
    r.delete(a, b)
    r.set(a, "1")
    check("rename", r.rename(a, b) is True)
    check("renamed", r.get(b) in (b"1", "1") and r.exists(a) == 0)
    check("exists many", r.exists(b, b, a) == 2)
    found = {k.decode() if isinstance(k, bytes) else k for k in r.scan_iter(match=f"{{{tag}}}:k*")}
    check("scan", found == {b}, repr(found))
    check("keys", {k.decode() if isinstance(k, bytes) else k for k in r.keys(f"{{{tag}}}:k*")} == {b})
    r.delete(b)


def main():
    ports = [int(p) for p in sys.argv[1:]]
    check("usage", ports, "give at least one RESP port")
    for i, protocol in enumerate([None, 3, 2]):
        port = ports[i % len(ports)]
        kwargs = {} if protocol is None else {"protocol": protocol}
        r = redis.Redis(port=port, **kwargs)
        check("ping", r.ping() is True)
        tag = f"py{i}"
        for name, f in [("strings/expiry", lambda: strings_and_expiry(r, tag)),
                        ("hashes", lambda: hashes(r, tag)),
                        ("transactions", lambda: transactions(r, port, protocol, tag)),
                        ("key space", lambda: key_space(r, tag))]:
            try:
                f()
            except Exception as e:  # report which protocol failed, then fail
                print(f"FAILED protocol={protocol or 'default'} port={port} {name}: {e!r}")
                sys.exit(1)
        r.close()
        print(f"ok protocol={protocol or 'default (RESP3)'} port={port}")


if __name__ == "__main__":
    main()
