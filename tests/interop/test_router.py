"""test_router.py -- libzmq DEALER and REQ sockets (pyzmq) speak the MQ1
protocol of doc/protocol.md to our ROUTER endpoint.

What a user relies on: a PUT is acknowledged only once it is stored (the
message is there when the ACK arrives), a repeated PUT (same producer, same
client_msg_id) stores nothing new and gets the same id back, GET/CONSUME
lease messages and ACK/NACK settle them, a CONSUME window never has more
than `credit` unsettled messages out, what a consumer holds when it
disconnects comes back at once, and a REQ socket -- which insists on its
empty delimiter -- gets every reply it waits for.  What depends on lease
times (TOUCH and the credit count) is tested in tests/test_net.c, on the
server's injected clock, not here with real sleeps.
"""
import time

import common
from common import check, socket, zmq


def b(x):
    return x if isinstance(x, bytes) else str(x).encode()


def send(sock, *frames):
    sock.send_multipart([b"MQ1"] + [b(f) for f in frames])


def recv(sock):
    m = sock.recv_multipart()
    check(m[0] == b"MQ1", "reply tag MQ1: %r" % m[:2])
    return m[1:]


def producer(srv, n, tag, body="job %d"):
    """A DEALER that has put n messages into q (client ids tag0..)."""
    p = socket(zmq.DEALER)
    p.connect(srv.endpoint(0))
    for i in range(n):
        send(p, "PUT", "q", "%s%d" % (tag, i), (body % i).encode())
    for _ in range(n):
        check(recv(p)[2] == b"200", "put acked")
    return p


def serve(tag):
    db = common.db_path(tag)
    srv = common.Server(db, ["--create", "q", "--create", "other", "--router",
                             "tcp://127.0.0.1:0"])
    return db, srv


def test_dealer_put_get_ack():
    db, srv = serve("router")
    d = socket(zmq.DEALER, routing_id=b"producer-1")
    d.connect(srv.endpoint(0))
    n = 300
    for i in range(n):  # pipelined: ACKs come back per group commit
        send(d, "PUT", "q", "id-%d" % i, b"body %d" % i, "color", "red" if i % 2 else "blue")
    acks = {}
    for _ in range(n):
        r = recv(d)
        check(r[0] == b"ACK" and r[2] == b"200", "PUT acked 200: %r" % r)
        acks[r[1]] = int(r[3])
    check(len(acks) == n, "one ACK per PUT")
    # Once acked, stored: GET them all back (REQ-style envelope not needed).
    got = []
    for _ in range(n):
        send(d, "GET", "q")
        r = recv(d)
        check(r[0] == b"MSG", "GET returned a message: %r" % r[:2])
        if r[0] != b"MSG":
            break
        _, queue, mid, receipt, receives, payload = r[:6]
        hdrs = dict(zip(r[6::2], r[7::2]))
        got.append((int(mid), payload, hdrs))
        send(d, "ACK", "q", receipt)
        check(recv(d) == [b"DONE", receipt, b"200"], "ACK done")
    check([g[1] for g in got] == [b"body %d" % i for i in range(n)], "FIFO, bodies intact")
    check([g[0] for g in got] == [acks[b"id-%d" % i] for i in range(n)], "ids as acked")
    check(all(g[2] == {b"color": b"red" if i % 2 else b"blue"} for i, g in enumerate(got)),
          "headers kept")
    send(d, "GET", "q", 1000, 100)
    check(recv(d) == [b"EMPTY", b"q"], "GET on an empty queue waits, then says EMPTY")
    d.close()
    srv.stop()


def test_put_is_idempotent():
    db, srv = serve("router-dedup")
    d = socket(zmq.DEALER, routing_id=b"prod-A")
    d.connect(srv.endpoint(0))
    send(d, "PUT", "q", "same", b"first")
    a1 = recv(d)
    send(d, "PUT", "q", "same", b"second attempt")
    a2 = recv(d)
    check(a1[2] == b"200" and a2[2] == b"200" and a1[3] == a2[3], "a retry gets the first id")
    d.close()
    # Another producer (Identity) may use the same client_msg_id.
    e = socket(zmq.DEALER, routing_id=b"prod-B")
    e.connect(srv.endpoint(0))
    send(e, "PUT", "q", "same", b"other producer")
    check(recv(e)[2] == b"200", "B's put")
    # An explicit :producer overrides the Identity: same key as prod-A's.
    send(e, "PUT", "q", "same", b"as A", ":producer", "prod-A")
    check(recv(e)[3] == a1[3], ":producer names A: deduplicated against A's put")
    e.close()
    srv.stop()
    bodies = [m[2] for m in common.drain(db, "q")]
    check(bodies == [b"first", b"other producer"], "two messages stored: %r" % bodies)


def test_req_client():
    db, srv = serve("router-req")
    r = socket(zmq.REQ)
    r.connect(srv.endpoint(0))
    send(r, "PUT", "q", "r1", b"from REQ", ":priority", "5")
    a = recv(r)
    check(a[:3] == [b"ACK", b"r1", b"200"], "REQ put acked: %r" % a)
    send(r, "GET", "q", 60000)
    m = recv(r)
    check(m[0] == b"MSG" and m[5] == b"from REQ" and m[4] == b"1", "REQ get: %r" % m[:6])
    send(r, "NACK", "q", m[3], 0, "try again")
    check(recv(r)[:3] == [b"DONE", m[3], b"200"], "nack done")
    send(r, "GET", "q")
    m2 = recv(r)
    check(m2[0] == b"MSG" and m2[4] == b"2", "redelivered after NACK, receives 2: %r" % m2[:6])
    send(r, "TOUCH", "q", m2[3], 120000)
    check(recv(r)[2] == b"200", "touch done")
    send(r, "ACK", "q", m2[3])
    check(recv(r)[2] == b"200", "ack done")
    send(r, "ACK", "q", m2[3])
    check(recv(r)[2] == b"410", "a second ACK of the receipt is stale (410)")
    send(r, "PUT", "nosuch", "r2", b"x")
    check(recv(r)[2] == b"404", "PUT to an unknown queue: 404")
    send(r, "FROB")
    check(recv(r)[:2] == [b"ERR", b"400"], "unknown verb: ERR 400")
    r.send_multipart([b"HTTP", b"GET"])
    check(r.recv_multipart()[1:3] == [b"ERR", b"400"], "not MQ1: ERR 400")
    r.close()
    srv.stop()


def test_consume_window_and_disconnect():
    db, srv = serve("router-consume")
    p = producer(srv, 20, "c")
    c = socket(zmq.DEALER)
    c.connect(srv.endpoint(0))
    send(c, "CONSUME", "q", 5, 60000)
    check(recv(c) == [b"CONSUMING", b"q", b"5"], "consuming with credit 5")
    held = [recv(c) for _ in range(5)]
    check(all(h[0] == b"MSG" for h in held), "five deliveries")
    check(not c.poll(500), "no sixth delivery while five are unsettled")
    send(c, "ACK", "q", held[0][3])
    check(recv(c)[:3] == [b"DONE", held[0][3], b"200"], "ack")
    m = recv(c)
    check(m[0] == b"MSG" and m[5] == b"job 5", "one settled, one more delivered: %r" % m[:6])
    held = held[1:] + [m]
    # The consumer goes away holding five: they come back at once.
    c.close()
    d = socket(zmq.DEALER)
    d.connect(srv.endpoint(0))
    send(d, "CONSUME", "q", 100)
    check(recv(d)[0] == b"CONSUMING", "second consumer")
    seen, done = {}, 0
    end = time.monotonic() + 20
    while (len(seen) < 19 or done < len(seen)) and time.monotonic() < end:
        if d.poll(200):
            m = recv(d)
            if m[0] == b"MSG":  # DONE replies come interleaved
                seen[m[5]] = int(m[4])
                send(d, "ACK", "q", m[3])
            elif m[0] == b"DONE":
                done += m[2] == b"200"
    check(len(seen) == 19, "the 19 unacked jobs reach the second consumer (%d)" % len(seen))
    check(all(seen.get(h[5]) == 2 for h in held), "held ones redelivered with receives 2")
    d.close()
    p.close()
    srv.stop()
    check(common.drain(db, "q") == [], "all acked")


def test_dedup_keys_do_not_collide():
    # Key = producer "/" client_msg_id, and both may hold "/": two producers
    # must never make the same key, or a distinct message is acked and lost.
    db, srv = serve("router-keys")
    a = socket(zmq.DEALER, routing_id=b"site-1/line-2")
    a.connect(srv.endpoint(0))
    send(a, "PUT", "q", "7", b"from A")
    ra = recv(a)
    e = socket(zmq.DEALER, routing_id=b"site-1")
    e.connect(srv.endpoint(0))
    send(e, "PUT", "q", "line-2/7", b"from B")
    rb = recv(e)
    send(e, "PUT", "q", "7", b"from C", ":producer", "site-1/line-2")
    rc = recv(e)
    check(ra[2] == b"200" and rb[2] == b"200" and ra[3] != rb[3],
          "identity with '/' and a client id with '/': two messages: %r %r" % (ra, rb))
    check(rc[3] == ra[3], ":producer with '/' names the same producer as that Identity")
    common.close(a, e)
    srv.stop()
    bodies = [m[2] for m in common.drain(db, "q")]
    check(bodies == [b"from A", b"from B"], "both stored: %r" % bodies)


def test_bad_receipt_alone():
    # A malformed receipt is answered 400 on its own; the valid ACKs read in
    # the same turn (from any connection) still settle their messages.
    db, srv = serve("router-badrcpt")
    p = producer(srv, 10, "b")
    c = socket(zmq.DEALER)
    c.connect(srv.endpoint(0))
    receipts = []
    for _ in range(10):
        send(c, "GET", "q", 60000)
        m = recv(c)
        check(m[0] == b"MSG", "leased: %r" % m[:2])
        receipts.append(m[3])
    frames = []
    for r in receipts[:5]:
        frames.append([b"MQ1", b"ACK", b"q", r])
    frames.append([b"MQ1", b"ACK", b"q", b"not-a-receipt"])
    for r in receipts[5:]:
        frames.append([b"MQ1", b"ACK", b"q", r])
    for f in frames:  # one burst: read in one turn
        c.send_multipart(f, copy=True)
    answers = {}
    for _ in range(len(frames)):
        r = recv(c)
        answers[r[1]] = r[2]
    check(answers.get(b"not-a-receipt") == b"400", "the malformed receipt: 400")
    check(all(answers.get(r) == b"200" for r in receipts), "every valid ACK: 200: %r" % answers)
    common.close(p, c)
    srv.stop()
    check(common.drain(db, "q") == [], "all ten acked")


def test_identity_handover():
    db, srv = serve("router-handover")
    a = socket(zmq.DEALER, routing_id=b"node-1")
    mon = common.monitor(a)
    a.connect(srv.endpoint(0))
    send(a, "PUT", "q", "h1", b"x")
    check(recv(a)[2] == b"200", "first connection works")
    b2 = socket(zmq.DEALER, routing_id=b"node-1")
    b2.connect(srv.endpoint(0))
    send(b2, "PUT", "q", "h2", b"y")
    check(recv(b2)[2] == b"200", "the newer connection with the same Identity works")
    check(common.wait_event(mon, {zmq.EVENT_DISCONNECTED}, 10) is not None,
          "the older one was closed (handover)")
    common.close(a)
    b2.close()
    srv.stop()


common.run([test_dealer_put_get_ack, test_put_is_idempotent, test_req_client,
            test_consume_window_and_disconnect, test_dedup_keys_do_not_collide,
            test_bad_receipt_alone, test_identity_handover])
