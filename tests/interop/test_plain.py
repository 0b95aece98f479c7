"""test_plain.py -- PLAIN authentication between libzmq clients (pyzmq)
and our server.

What a user relies on: the right user and password get in and their
messages are stored; wrong ones are refused with an ERROR that libzmq
reports to its application as an authentication failure (AUTH 400) -- and
libzmq then stops retrying, so a misconfigured client does not hammer the
server; a client without PLAIN is a mechanism mismatch (a plain close).
"""
import time

import common
from common import check, socket, wait_event, zmq


def serve(tag):
    db = common.db_path(tag)
    srv = common.Server(db, ["--pull", "q=tcp://127.0.0.1:0", "--router", "tcp://127.0.0.1:0",
                             "--create", "q", "--plain", "admin:s3cret"])
    return db, srv


def test_good_credentials():
    db, srv = serve("plain-good")
    push = socket(zmq.PUSH, plain_username=b"admin", plain_password=b"s3cret")
    push.connect(srv.endpoint(0))
    for i in range(100):
        push.send(b"secret %d" % i)
    got = [m[2] for m in common.collect(db, "q", 100)]
    check(got == [b"secret %d" % i for i in range(100)], "all stored, in order")
    d = socket(zmq.DEALER, plain_username=b"admin", plain_password=b"s3cret")
    d.connect(srv.endpoint(1))
    d.send_multipart([b"MQ1", b"PUT", b"q", b"p1", b"via router"])
    check(d.recv_multipart()[1:4:2] == [b"ACK", b"200"], "DEALER over PLAIN: PUT acked")
    push.close()
    d.close()
    srv.stop()


def test_bad_credentials():
    db, srv = serve("plain-bad")
    for user, pw in ((b"admin", b"wrong"), (b"root", b"s3cret")):
        push = socket(zmq.PUSH, plain_username=user, plain_password=pw)
        mon = common.monitor(push)
        push.connect(srv.endpoint(0))
        ev = wait_event(mon, {zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_SUCCEEDED,
                              zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL}, 10)
        check(ev is not None and ev["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH
              and ev["value"] == 400, "libzmq reports AUTH 400 for %r: %r" % (user, ev))
        try:
            push.send(b"must not be stored", zmq.NOBLOCK)
        except zmq.Again:
            pass  # no connection to queue it on: that is the point
        # libzmq does not retry after an authentication ERROR.
        check(wait_event(mon, {zmq.EVENT_CONNECTED}, 1.0) is None, "no reconnect after ERROR")
        common.close(push)
    check(srv.log_text().count("authentication failed") == 2, "two refusals logged")
    srv.stop()
    check(common.drain(db, "q") == [], "nothing stored from refused clients")


def test_null_client_on_plain_server():
    db, srv = serve("plain-null")
    push = socket(zmq.PUSH)
    mon = common.monitor(push)
    push.connect(srv.endpoint(0))
    ev = wait_event(mon, {zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_SUCCEEDED,
                          zmq.EVENT_HANDSHAKE_FAILED_AUTH}, 10)
    check(ev is not None and ev["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
          and ev["value"] == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH,
          "mechanism mismatch reported: %r" % ev)
    common.close(push)
    srv.stop()


common.run([test_good_credentials, test_bad_credentials, test_null_client_on_plain_server])
