"""test_pull.py -- a libzmq PUSH socket (pyzmq) feeds our PULL endpoint.

What a user relies on: every message a PUSH sends on a clean link is
stored, byte for byte and in order, whatever its size (0, 255, 256 bytes --
the short/long frame boundary -- and 1 MiB); a multipart message is stored
as its frames concatenated with their sizes in the "zmtp-frames" header;
and when a peer breaks our limits we close the connection without a ZMTP
ERROR, so the libzmq peer reconnects instead of giving up for good.
"""
import common
from common import check, socket, wait_event, zmq


def test_sizes_multipart_and_order():
    db = common.db_path("pull")
    srv = common.Server(db, ["--pull", "q=tcp://127.0.0.1:0"])
    push = socket(zmq.PUSH, sndhwm=0)
    push.connect(srv.endpoint(0))
    sent = []
    for size in (0, 255, 256, 1 << 20):
        body = bytes(common.RNG.randrange(256) for _ in range(min(size, 4096))) * (
            max(1, size // 4096))
        body = body[:size]
        push.send(body)
        sent.append((body, None))
    parts2 = [b"key", b"value"]
    parts100 = [b"f%d" % i * (i % 7) for i in range(100)]
    for parts in (parts2, parts100, [b"", b""]):
        push.send_multipart(parts)
        sent.append((b"".join(parts), ",".join(str(len(p)) for p in parts)))
    for i in range(10000):
        body = b"m%05d" % i + b"x" * common.RNG.randrange(0, 300)
        push.send(body)
        sent.append((body, None))
    got = common.collect(db, "q", len(sent))
    push.close()
    srv.stop()
    bad = 0
    for (body, frames), (_, _, data, hdrs) in zip(sent, got):
        if data != body or hdrs.get("zmtp-frames") != frames:
            bad += 1
    check(bad == 0, "%d messages differ or are out of order" % bad)


def test_limit_closes_and_peer_reconnects():
    db = common.db_path("pull-limit")
    srv = common.Server(db, ["--pull", "q=tcp://127.0.0.1:0", "--max-frame", "1000"])
    push = socket(zmq.PUSH)
    mon = common.monitor(push)
    push.connect(srv.endpoint(0))
    check(wait_event(mon, {zmq.EVENT_HANDSHAKE_SUCCEEDED}, 10) is not None, "first handshake")
    push.send(b"y" * 1000)  # at the limit: fine
    push.send(b"z" * 1001)  # over: we close the connection
    check(wait_event(mon, {zmq.EVENT_DISCONNECTED}, 10) is not None, "closed over the limit")
    # A plain close, no ERROR: libzmq reconnects by itself.
    check(wait_event(mon, {zmq.EVENT_HANDSHAKE_SUCCEEDED}, 10) is not None,
          "libzmq reconnected after our close")
    push.send(b"after")
    got = [m[2] for m in common.collect(db, "q", 2)]
    common.close(push)
    srv.stop()
    check(got[:1] == [b"y" * 1000], "the message at the limit was stored")
    check(b"z" * 1001 not in got, "the message over the limit was not stored")
    check(got[-1:] == [b"after"], "a message after the reconnect was stored")


def test_two_producers():
    db = common.db_path("pull-two")
    srv = common.Server(db, ["--pull", "q=tcp://127.0.0.1:0"])
    a, b = socket(zmq.PUSH), socket(zmq.PUSH)
    a.connect(srv.endpoint(0))
    b.connect(srv.endpoint(0))
    for i in range(2000):
        a.send(b"a%d" % i)
        b.send(b"b%d" % i)
    got = [m[2] for m in common.collect(db, "q", 4000)]
    a.close()
    b.close()
    srv.stop()
    # Order is kept per producer.
    check([g for g in got if g[:1] == b"a"] == [b"a%d" % i for i in range(2000)], "a in order")
    check([g for g in got if g[:1] == b"b"] == [b"b%d" % i for i in range(2000)], "b in order")


common.run([test_sizes_multipart_and_order, test_limit_closes_and_peer_reconnects,
            test_two_producers])
