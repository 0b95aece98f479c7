"""test_restart.py -- libzmq peers outlive restarts of our server.

What a user relies on: when our server process stops (cleanly, or killed
with SIGKILL) and comes back on the same port, connected libzmq sockets
reconnect by themselves and traffic resumes -- which only works because we
never end a connection with a protocol error (libzmq then gives up on the
endpoint for good).  Both directions are checked: a PUSH producer into our
PULL, and a PULL consumer of our PUSH.
"""
import signal

import common
from common import check, socket, wait_event, zmq


def restart(sig):
    db = common.db_path("restart-%d" % sig)
    srv = common.Server(db, ["--pull", "q=tcp://127.0.0.1:0", "--push", "out=tcp://127.0.0.1:0"])
    pull_ep, push_ep = srv.endpoint(0), srv.endpoint(1)
    fixed = ["--pull", "q=" + pull_ep, "--push", "out=" + push_ep]
    producer = socket(zmq.PUSH)
    pmon = common.monitor(producer)
    producer.connect(pull_ep)
    consumer = socket(zmq.PULL)
    cmon = common.monitor(consumer)
    consumer.connect(push_ep)
    check(wait_event(pmon, {zmq.EVENT_HANDSHAKE_SUCCEEDED}, 10) is not None, "producer up")
    check(wait_event(cmon, {zmq.EVENT_HANDSHAKE_SUCCEEDED}, 10) is not None, "consumer up")
    for i in range(10):
        producer.send(b"before %d" % i)
    got = [m[2] for m in common.collect(db, "q", 10)]
    check(got == [b"before %d" % i for i in range(10)], "stored before the restart")
    srv.stop(sig)
    check(wait_event(pmon, {zmq.EVENT_DISCONNECTED}, 10) is not None, "producer saw the stop")
    srv.start(fixed)
    check(wait_event(pmon, {zmq.EVENT_HANDSHAKE_SUCCEEDED}, 20) is not None,
          "producer reconnected by itself")
    check(wait_event(cmon, {zmq.EVENT_HANDSHAKE_SUCCEEDED}, 20) is not None,
          "consumer reconnected by itself")
    for i in range(10):
        producer.send(b"after %d" % i)
    got = [m[2] for m in common.collect(db, "q", 10)]
    check(got == [b"after %d" % i for i in range(10)], "stored after the restart")
    # The egress side: restart once more, now also taking messages for
    # "out" by PULL, and see one reach the reconnected consumer.
    srv.stop()
    srv.start(fixed + ["--pull", "out=tcp://127.0.0.1:0"])
    check(wait_event(cmon, {zmq.EVENT_HANDSHAKE_SUCCEEDED}, 20) is not None,
          "consumer reconnected again")
    feeder = socket(zmq.PUSH)
    feeder.connect(srv.endpoint(2))
    feeder.send(b"to the consumer")
    check(consumer.recv() == b"to the consumer", "the consumer receives after restarts")
    common.close(producer, consumer, feeder)
    srv.stop()


def test_restart_after_sigterm():
    restart(signal.SIGTERM)


def test_restart_after_sigkill():
    restart(signal.SIGKILL)


common.run([test_restart_after_sigterm, test_restart_after_sigkill])
