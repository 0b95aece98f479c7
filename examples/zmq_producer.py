#!/usr/bin/env python3
"""zmq_producer.py -- a Python producer that feeds an mq queue over ZeroMQ
and knows every message it sent is stored.

    mq jobs.db create jobs
    mq jobs.db serve --router tcp://127.0.0.1:5555 &
    python3 examples/zmq_producer.py tcp://127.0.0.1:5555 jobs 1000
    ./worker jobs.db jobs                   # examples/worker.c drains it

It speaks the MQ1 protocol of doc/protocol.md over a plain pyzmq DEALER
socket (no mq code on this side): each PUT carries a client_msg_id, and the
server answers ACK only after the message is durably committed.  The
producer keeps up to WINDOW puts in flight and sends again any put whose
ACK has not come within RETRY seconds -- with the same client_msg_id, so
the server's dedup key makes the retry harmless even if the first one was
stored and only the ACK was lost (connection drop, server restart).  When
the script prints "all acknowledged", every message is in the queue once.

The simpler alternative is a PUSH socket connected to `serve --pull
QUEUE=...`: any ZeroMQ program can do that unchanged, but PUSH has no
acknowledgement, so messages in flight when a connection breaks are lost.
"""
import sys
import time
import uuid

import zmq

WINDOW = 100  # puts in flight at once
RETRY = 2.0   # seconds without ACK before a put is sent again


def main():
    if len(sys.argv) < 4:
        print("usage: zmq_producer.py ENDPOINT QUEUE COUNT", file=sys.stderr)
        return 2
    endpoint, queue, count = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
    sock = zmq.Context().socket(zmq.DEALER)
    # The Identity names this producer in the server's dedup keys; keep it
    # stable across restarts of this script if it resumes where it stopped.
    # A random one is fine for a run that starts from the beginning.
    sock.setsockopt(zmq.ROUTING_ID, b"producer-" + uuid.uuid4().hex[:8].encode())
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)

    pending = {}  # client_msg_id -> (frames, time sent)
    next_id, acked, start = 0, 0, time.monotonic()
    while acked < count:
        # Fill the window.
        while next_id < count and len(pending) < WINDOW:
            cid = b"%d" % next_id
            frames = [b"MQ1", b"PUT", queue, cid, b"job number %d" % next_id,
                      b"content-type", b"text/plain"]
            sock.send_multipart(frames)
            pending[cid] = (frames, time.monotonic())
            next_id += 1
        # Collect ACKs; they come in commit order, not necessarily send order.
        if sock.poll(100):
            reply = sock.recv_multipart()
            if reply[:2] == [b"MQ1", b"ACK"]:
                cid, status = reply[2], reply[3]
                if status == b"200":
                    if pending.pop(cid, None):
                        acked += 1
                elif status.startswith(b"4"):
                    # 4xx: the request itself is wrong (no such queue, too big):
                    # retrying cannot help.
                    print("put %s refused: %r" % (cid.decode(), reply[3:]), file=sys.stderr)
                    return 1
                # 5xx: leave it pending; it is retried below.
        # Retry what has waited too long.
        now = time.monotonic()
        for cid, (frames, sent) in list(pending.items()):
            if now - sent > RETRY:
                sock.send_multipart(frames)
                pending[cid] = (frames, now)
    secs = time.monotonic() - start
    print("all acknowledged: %d messages in %.2fs (%.0f/s)" % (count, secs, count / secs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
