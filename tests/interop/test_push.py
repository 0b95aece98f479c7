"""test_push.py -- our PUSH endpoint feeds libzmq PULL sockets (pyzmq).

What a user relies on: messages leave the queue in order, each exactly once
to one of the connected PULL peers (round-robin when there are several), a
multipart message ingested by PULL goes out with the same frames, nothing is
taken from the queue while no peer is there to receive it, and a delivered
message is gone from the queue (acked once written).
"""
import time

import common
from common import check, socket, wait_until, zmq


def serve(tag):
    db = common.db_path(tag)
    srv = common.Server(db, ["--pull", "q=tcp://127.0.0.1:0", "--push", "q=tcp://127.0.0.1:0"])
    return db, srv


def test_order_and_frames():
    db, srv = serve("push")
    push = socket(zmq.PUSH)
    push.connect(srv.endpoint(0))
    sent = []
    for i in range(10000):
        if i % 1000 == 7:
            parts = [b"part%d" % i, b"", b"x" * (i % 300)]
        else:
            parts = [b"m%05d" % i + b"y" * common.RNG.randrange(0, 400)]
        push.send_multipart(parts)
        sent.append(parts)
    pull = socket(zmq.PULL)
    pull.connect(srv.endpoint(1))
    got = []
    try:
        for _ in range(len(sent)):
            got.append(pull.recv_multipart())
    except zmq.Again:
        pass
    check(len(got) == len(sent), "received %d of %d" % (len(got), len(sent)))
    check(got == sent[:len(got)], "same messages, same frames, same order")
    # Delivered means acked: the queue is empty.
    time.sleep(0.2)
    check(common.drain(db, "q") == [], "nothing left in the queue")
    push.close()
    pull.close()
    srv.stop()


def test_round_robin_three_peers():
    db, srv = serve("push-rr")
    pulls = [socket(zmq.PULL, rcvhwm=50) for _ in range(3)]
    for p in pulls:
        p.connect(srv.endpoint(1))
    time.sleep(0.3)  # all three connected before the first message
    push = socket(zmq.PUSH)
    push.connect(srv.endpoint(0))
    n = 3000
    for i in range(n):
        push.send(b"%d" % i)
    got = [[] for _ in pulls]
    poller = zmq.Poller()
    for p in pulls:
        poller.register(p, zmq.POLLIN)
    end = time.monotonic() + 60
    while sum(map(len, got)) < n and time.monotonic() < end:
        for sock, _ in poller.poll(100):
            got[pulls.index(sock)].append(int(sock.recv()))
    allgot = sorted(x for g in got for x in g)
    check(allgot == list(range(n)), "every message exactly once (%d received)" % len(allgot))
    for k, g in enumerate(got):
        check(len(g) >= n // 10, "peer %d got %d of %d: round-robin" % (k, len(g), n))
        check(g == sorted(g), "peer %d got its share in queue order" % k)
    for p in pulls + [push]:
        p.close()
    srv.stop()


def test_nothing_leased_without_peer():
    db, srv = serve("push-idle")
    push = socket(zmq.PUSH)
    push.connect(srv.endpoint(0))
    for i in range(5):
        push.send(b"wait%d" % i)
    wait_until(lambda: "connection #1" in srv.log_text(), 10, "the producer connected")
    time.sleep(0.5)  # the queue holds them, unleased, while no PULL is there
    pull = socket(zmq.PULL)
    pull.connect(srv.endpoint(1))
    got = [pull.recv() for _ in range(5)]
    check(got == [b"wait%d" % i for i in range(5)], "a late PULL gets them all, first delivery")
    push.close()
    pull.close()
    srv.stop()


common.run([test_order_and_frames, test_round_robin_three_peers, test_nothing_leased_without_peer])
