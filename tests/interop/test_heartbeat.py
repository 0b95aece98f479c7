"""test_heartbeat.py -- ZMTP heartbeats between libzmq (pyzmq) and us.

What a user relies on: an idle connection stays up as long as both ends
live (we answer libzmq's PINGs, libzmq answers ours); when our server
process freezes, libzmq notices within its heartbeat timeout and reconnects
once we are back; when a peer freezes, we notice within ours and drop it;
and PINGs that libzmq slips between the frames of a multipart message do
not damage the message.  Real time is unavoidable here (it is a property
of two processes); every wait is bounded and generous.
"""
import signal
import subprocess
import sys
import time

import common
from common import check, socket, wait_event, wait_until, zmq

HB = ["--heartbeat", "200", "--heartbeat-timeout", "600"]


def hb_socket(kind):
    return socket(kind, heartbeat_ivl=100, heartbeat_timeout=300, heartbeat_ttl=1000)


def test_idle_link_stays_up():
    db = common.db_path("hb-idle")
    srv = common.Server(db, ["--pull", "q=tcp://127.0.0.1:0"] + HB)
    push = hb_socket(zmq.PUSH)
    mon = common.monitor(push)
    push.connect(srv.endpoint(0))
    check(wait_event(mon, {zmq.EVENT_HANDSHAKE_SUCCEEDED}, 10) is not None, "connected")
    # Both sides PING: 2 s is 10 of our intervals and 20 of libzmq's.
    ev = wait_event(mon, {zmq.EVENT_DISCONNECTED}, 2.0)
    check(ev is None, "no disconnect while idle: %r" % ev)
    check("closed" not in srv.log_text(), "we did not drop the idle peer")
    push.send(b"still here")
    check([m[2] for m in common.collect(db, "q", 1)] == [b"still here"], "the link works")
    common.close(push)
    srv.stop()


def test_frozen_server_is_detected():
    db = common.db_path("hb-stop")
    srv = common.Server(db, ["--pull", "q=tcp://127.0.0.1:0"] + HB)
    push = hb_socket(zmq.PUSH)
    mon = common.monitor(push)
    push.connect(srv.endpoint(0))
    check(wait_event(mon, {zmq.EVENT_HANDSHAKE_SUCCEEDED}, 10) is not None, "connected")
    srv.signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        ev = wait_event(mon, {zmq.EVENT_DISCONNECTED}, 10)
        check(ev is not None, "libzmq noticed the frozen server")
        print("libzmq dropped the frozen server after %.2fs" % (time.monotonic() - t0))
    finally:
        srv.signal(signal.SIGCONT)
    check(wait_event(mon, {zmq.EVENT_HANDSHAKE_SUCCEEDED}, 20) is not None,
          "libzmq reconnected after SIGCONT")
    push.send(b"after the freeze")
    check([m[2] for m in common.collect(db, "q", 1)] == [b"after the freeze"], "works again")
    common.close(push)
    srv.stop()


PEER = r'''
import sys, time, zmq
s = zmq.Context().socket(zmq.PUSH)
s.connect(sys.argv[1])
s.send(b"hello from the peer")
time.sleep(60)
'''


def test_frozen_peer_is_dropped():
    db = common.db_path("hb-peer")
    srv = common.Server(db, ["--pull", "q=tcp://127.0.0.1:0"] + HB)
    peer = subprocess.Popen([sys.executable, "-c", PEER, srv.endpoint(0)])
    try:
        check([m[2] for m in common.collect(db, "q", 1)] == [b"hello from the peer"],
              "peer connected and sent")
        peer.send_signal(signal.SIGSTOP)
        wait_until(lambda: "silent" in srv.log_text(), 10, "our server dropping the frozen peer")
        peer.send_signal(signal.SIGCONT)
    finally:
        peer.kill()
        peer.wait(10)
    srv.stop()


def test_pings_inside_multipart():
    db = common.db_path("hb-multi")
    srv = common.Server(db, ["--pull", "q=tcp://127.0.0.1:0"] + HB)
    push = socket(zmq.PUSH, heartbeat_ivl=1, heartbeat_timeout=5000)
    push.connect(srv.endpoint(0))
    frames = [bytes([i % 256]) * 1024 for i in range(50)]
    for _ in range(50):
        push.send_multipart(frames)
    got = common.collect(db, "q", 50)
    want = b"".join(frames)
    check(all(m[2] == want and m[3]["zmtp-frames"] == ",".join(["1024"] * 50) for m in got),
          "50 messages of 50 frames, intact")
    push.close()
    srv.stop()


common.run([test_idle_link_stays_up, test_frozen_server_is_detected, test_frozen_peer_is_dropped,
            test_pings_inside_multipart])
