"""test_crash.py -- no acknowledged PUT is lost when our server dies.

A pyzmq DEALER producer speaks the MQ1 protocol with a window of PUTs in
flight and resends every PUT whose ACK has not come within a timeout, with
the same client_msg_id.  Meanwhile the server process is killed with
SIGKILL at random moments and started again on the same port (FULL sync).
In the end every PUT that was ever acknowledged must be in the queue, and
no client_msg_id may be there twice: the ACK comes only after the durable
commit, and the dedup key turns the resends into no-ops.  This is the
at-least-once-over-the-network promise, checked with real process crashes.
"""
import signal
import time

import common
from common import check, socket, zmq

N = 3000
WINDOW = 64
RESEND_S = 1.0


def test_acked_puts_survive_sigkill():
    db = common.db_path("crash")
    srv = common.Server(db, ["--create", "q", "--router", "tcp://127.0.0.1:0", "--sync", "full"])
    fixed = ["--create", "q", "--router", srv.endpoint(0), "--sync", "full"]
    d = socket(zmq.DEALER, routing_id=b"crash-producer")
    d.connect(srv.endpoint(0))
    acked = set()
    sent_at = {}  # cid -> time of the last send, for those not acked yet
    next_i = 0
    kills = 0
    kill_at = sorted(common.RNG.sample(range(200, N - 200), 4))
    end = time.monotonic() + 180
    while len(acked) < N and time.monotonic() < end:
        now = time.monotonic()
        while next_i < N and len(sent_at) < WINDOW:
            cid = b"m%06d" % next_i
            d.send_multipart([b"MQ1", b"PUT", b"q", cid, b"payload of " + cid])
            sent_at[cid] = now
            next_i += 1
        for cid, t in list(sent_at.items()):
            if now - t > RESEND_S:
                d.send_multipart([b"MQ1", b"PUT", b"q", cid, b"payload of " + cid])
                sent_at[cid] = now
        if d.poll(50):
            r = d.recv_multipart()
            if r[1] == b"ACK" and r[3] == b"200":
                acked.add(r[2])
                sent_at.pop(r[2], None)
        if kills < len(kill_at) and len(acked) >= kill_at[kills]:
            srv.stop(signal.SIGKILL)
            kills += 1
            srv.start(fixed)
    check(len(acked) == N, "all %d PUTs acknowledged in the end (%d)" % (N, len(acked)))
    check(kills == len(kill_at), "the server was killed %d times" % kills)
    common.close(d)
    srv.stop()
    got = common.drain(db, "q")
    cids = [m[2][len(b"payload of "):] for m in got]
    missing = acked - set(cids)
    check(not missing, "%d acknowledged PUTs lost, e.g. %r" % (len(missing), sorted(missing)[:5]))
    check(len(cids) == len(set(cids)), "%d duplicates" % (len(cids) - len(set(cids))))


common.run([test_acked_puts_survive_sigkill])
