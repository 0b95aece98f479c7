"""test_connect.py -- our connecting endpoints against libzmq sockets that
bind (pyzmq): mq_server_pull_connect and mq_server_push_connect.

What a user relies on: a PULL that connects stores what a binding libzmq
PUSH sends; a PUSH that connects feeds a binding libzmq PULL from the
queue; when the libzmq side goes away and comes back on the same address
we reconnect by ourselves (backoff shortened here with --reconnect) and go
on without losing what was stored; with PLAIN credentials we log in to a
libzmq PLAIN server (ZAP through zmq.auth's ThreadAuthenticator), and with
wrong ones we are refused, store and send nothing, and say so in the log.
"""
import socket as pysocket
import time

import common
from common import check, socket, wait_until, zmq
from zmq.auth.thread import ThreadAuthenticator

FAST = ["--reconnect", "20", "--reconnect-max", "200"]


def free_port():
    """A port nobody listens on right now (bound once, then released)."""
    s = pysocket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_pull_connect():
    db = common.db_path("pull-connect")
    push = socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    srv = common.Server(db, FAST + ["--pull-connect", "q=tcp://127.0.0.1:%d" % port])
    check(srv.endpoint(0) == "tcp://127.0.0.1:%d" % port, "endpoint names where we connect")
    sent = [b"m%04d" % i for i in range(500)]
    for m in sent:
        push.send(m)  # blocks (bounded by sndtimeo) until we are connected
    got = [m[2] for m in common.collect(db, "q", len(sent))]
    check(got == sent, "stored in order, once each")
    push.close()
    srv.stop()


def test_push_connect():
    db = common.db_path("push-connect")
    pull = socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    srv = common.Server(db, FAST + ["--pull", "q=tcp://127.0.0.1:0",
                                    "--push-connect", "q=tcp://127.0.0.1:%d" % port])
    feed = socket(zmq.PUSH)
    feed.connect(srv.endpoint(0))
    sent = [[b"job%03d" % i] if i % 50 else [b"multi%03d" % i, b"", b"tail"] for i in range(300)]
    for m in sent:
        feed.send_multipart(m)
    got = []
    try:
        for _ in sent:
            got.append(pull.recv_multipart())
    except zmq.Again:
        pass
    check(got == sent, "received %d of %d, same frames, same order" % (len(got), len(sent)))
    time.sleep(0.2)
    check(common.drain(db, "q") == [], "delivered messages are gone from the queue")
    feed.close()
    pull.close()
    srv.stop()


def test_peer_restarts():
    """The binding side restarts on the same port; we come back by ourselves."""
    db = common.db_path("connect-restart")
    port = free_port()
    ep = "tcp://127.0.0.1:%d" % port
    # Started before anything listens: the first attempts are refused.
    srv = common.Server(db, FAST + ["--pull-connect", "q=" + ep])
    time.sleep(0.3)
    for round_ in range(3):
        push = socket(zmq.PUSH)
        push.bind(ep)
        batch = [b"r%d-%03d" % (round_, i) for i in range(100)]
        for m in batch:
            push.send(m)
        got = [m[2] for m in common.collect(db, "q", len(batch))]
        check(got == batch, "round %d: all stored after (re)connecting" % round_)
        push.close()
        time.sleep(0.1)
    srv.stop()
    check("connecting again in" in srv.log_text(), "lost connections are logged with the retry")


def plain_server_pull(ctx):
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.allow("127.0.0.1")
    auth.configure_plain(domain="*", passwords={"edge": "s3cret"})
    pull = socket(zmq.PULL, plain_server=True)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    return auth, pull, port


def test_plain_client_good():
    db = common.db_path("connect-plain-good")
    auth, pull, port = plain_server_pull(common.CTX)
    # --plain also guards our own listening PULL, so the feeder logs in too.
    srv = common.Server(db, FAST + ["--plain", "edge:s3cret", "--pull", "q=tcp://127.0.0.1:0",
                                    "--push-connect", "q=tcp://127.0.0.1:%d" % port])
    feed = socket(zmq.PUSH, plain_username=b"edge", plain_password=b"s3cret")
    feed.connect(srv.endpoint(0))
    for i in range(50):
        feed.send(b"auth %d" % i)
    got = []
    try:
        for _ in range(50):
            got.append(pull.recv())
    except zmq.Again:
        pass
    check(got == [b"auth %d" % i for i in range(50)], "PLAIN login accepted, all delivered")
    feed.close()
    pull.close()
    auth.stop()
    srv.stop()


def test_plain_client_bad():
    db = common.db_path("connect-plain-bad")
    auth, pull, port = plain_server_pull(common.CTX)
    srv = common.Server(db, FAST + ["--plain", "edge:wrong", "--pull", "q=tcp://127.0.0.1:0",
                                    "--push-connect", "q=tcp://127.0.0.1:%d" % port])
    feed = socket(zmq.PUSH, plain_username=b"edge", plain_password=b"wrong")
    feed.connect(srv.endpoint(0))
    feed.send(b"stays here")
    wait_until(lambda: "refused the connection" in srv.log_text(), 10, "the refusal in the log")
    check("connecting again in 300 s" in srv.log_text(), "a refusal backs off for 5 minutes")
    pull.rcvtimeo = 500
    try:
        pull.recv()
        check(False, "nothing may reach the PULL without a login")
    except zmq.Again:
        pass
    # One attempt, then the long wait: not a retry every few milliseconds.
    time.sleep(0.5)
    check(srv.log_text().count("refused the connection") == 1, "no fast retries after ERROR")
    srv.stop()
    check([m[2] for m in common.drain(db, "q")] == [b"stays here"], "the message stayed queued")
    feed.close()
    pull.close()
    auth.stop()


common.run([test_pull_connect, test_push_connect, test_peer_restarts, test_plain_client_good,
            test_plain_client_bad])
