"""common.py -- what the interop tests share: starting and stopping our
server process (tests/net_server.c), reading back what it stored, libzmq
monitor events, bounded waits, and the check/report harness.

Every interop test is a script run by ctest as
    /usr/bin/python3 tests/interop/test_X.py <net_server binary> <tmp dir>
It exits 0 when every check passed, 1 when one failed, and 77 (ctest's
SKIP_RETURN_CODE) when this Python has no pyzmq.  Every wait here has a
deadline, every socket talks to 127.0.0.1 only, and every server process is
stopped by the script that started it, also when a check fails.
"""
import os
import random
import select
import signal
import subprocess
import sys
import time

try:
    import zmq
    from zmq.utils.monitor import recv_monitor_message
except ImportError:
    print("SKIP: %s has no pyzmq (apt-get install python3-zmq)" % sys.executable)
    sys.exit(77)

if len(sys.argv) < 3:
    print("usage: %s NET_SERVER TMPDIR" % sys.argv[0])
    sys.exit(2)

SERVER = sys.argv[1]
TMP = sys.argv[2]
os.makedirs(TMP, exist_ok=True)
CTX = None  # set per test by run()
_failures = []
_servers = []
_seed = int(os.environ.get("MQ_TEST_SEED", str(int(time.time() * 1000) % 1000000)))
RNG = random.Random(_seed)


def check(cond, what):
    """Record a failed check (the test goes on, like the C harness)."""
    if not cond:
        _failures.append(what)
        print("CHECK failed: %s" % what, flush=True)
    return cond


def wait_until(pred, timeout, what, step=0.01):
    """Poll pred until it is true or timeout seconds pass; a check."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return check(pred(), "timed out after %.1fs waiting for %s" % (timeout, what))


def db_path(tag):
    p = os.path.join(TMP, "interop-%s-%d.db" % (tag, os.getpid()))
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(p + suffix)
        except FileNotFoundError:
            pass
    return p


class Server:
    """One net_server process serving db with the given arguments."""

    def __init__(self, db, args):
        self.db = db
        self.args = list(args)
        self.proc = None
        self.endpoints = []
        self.log = db + ".log"
        _servers.append(self)
        self.start()

    def start(self, args=None):
        if args is not None:
            self.args = list(args)
        logf = open(self.log, "a")
        self.proc = subprocess.Popen([SERVER, self.db] + self.args, stdout=subprocess.PIPE,
                                     stderr=logf)
        logf.close()
        self.endpoints = []
        # Raw reads of the pipe: a buffered readline would hide lines that
        # select() then never reports.
        fd = self.proc.stdout.fileno()
        buf = b""
        end = time.monotonic() + 20
        while time.monotonic() < end:
            r, _, _ = select.select([fd], [], [], 0.5)
            if not r:
                if self.proc.poll() is not None:
                    break
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                line = line.decode()
                if line.startswith("ENDPOINT"):
                    self.endpoints.append(line.split()[2])
                elif line.strip() == "READY":
                    return
        self.dump_log()
        raise RuntimeError("net_server did not start: %r" % (self.args,))

    def port(self, i):
        return int(self.endpoints[i].rsplit(":", 1)[1])

    def endpoint(self, i):
        return self.endpoints[i]

    def stop(self, sig=signal.SIGTERM):
        """Stop with sig and wait; a SIGTERM must end in a clean exit."""
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(5)
            check(False, "net_server did not stop on signal %d" % sig)
        if sig == signal.SIGTERM:
            out = self.proc.stdout.read().decode()
            check(rc == 0 and "STOPPED" in out, "clean stop on SIGTERM (rc %s)" % rc)
        self.proc.stdout.close()
        return rc

    def signal(self, sig):
        self.proc.send_signal(sig)

    def log_text(self):
        try:
            with open(self.log) as f:
                return f.read()
        except OSError:
            return ""

    def dump_log(self):
        text = self.log_text()
        print("---- server log (%s), last lines ----" % self.log)
        print("\n".join(text.splitlines()[-40:]))


def drain(db, queue):
    """Every ready message of queue, taken out of the store (and acked):
    a list of (id, receives, payload bytes, {header: value})."""
    out = subprocess.run([SERVER, db, "--drain", queue], stdout=subprocess.PIPE, text=True,
                         timeout=120, check=True).stdout
    msgs = []
    for line in out.splitlines():
        if not line.startswith("MSG "):
            continue
        f = line.split(" ")
        data = b"" if f[3] == "-" else bytes.fromhex(f[3])
        hdrs = {}
        for h in f[4:]:
            n, v = h.split("=")
            hdrs[bytes.fromhex(n).decode()] = "" if v == "-" else bytes.fromhex(v).decode()
        msgs.append((int(f[1]), int(f[2]), data, hdrs))
    check(out.rstrip().endswith("END"), "drain of %s finished" % queue)
    return msgs


def collect(db, queue, n, timeout=60):
    """Drain queue repeatedly (the server keeps running and writing) until
    n messages were taken or timeout seconds passed; returns them all."""
    got = []
    end = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < end:
        more = drain(db, queue)
        got.extend(more)
        if not more:
            time.sleep(0.05)
    check(len(got) == n, "collected %d of %d messages from %s" % (len(got), n, queue))
    return got


_monitors = [0]


def monitor(sock):
    """A PAIR socket receiving sock's monitor events.  Each gets its own
    address (pyzmq's get_monitor_socket reuses one per fd number, which
    fails once a closed socket's number comes back)."""
    _monitors[0] += 1
    addr = "inproc://mq-monitor-%d" % _monitors[0]
    sock.monitor(addr, zmq.EVENT_ALL)
    m = CTX.socket(zmq.PAIR)
    m.linger = 0
    m.connect(addr)
    _monitored.append((sock, m))
    return m


def close(*socks):
    """Close sockets, stopping their monitors first: libzmq's I/O thread
    can block for good on a monitor whose reader went away first, which
    stalls every socket of the context."""
    for s in socks:
        for ms, m in list(_monitored):
            if ms is s:
                s.disable_monitor()
                m.close()
                _monitored.remove((ms, m))
        s.close()


_monitored = []


def wait_event(mon, events, timeout):
    """The first monitor event in events (a set of zmq.EVENT_*) within
    timeout seconds, or None.  Other events are skipped."""
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return None
        if mon.poll(int(left * 1000) + 1):
            ev = recv_monitor_message(mon)
            if ev["event"] in events:
                return ev


def socket(kind, **opts):
    s = CTX.socket(kind)
    s.linger = 0
    # A stuck peer must fail the test (zmq.Again), never hang it.
    s.sndtimeo = 20000
    s.rcvtimeo = 20000
    for k, v in opts.items():
        setattr(s, k, v)
    return s


def remove_files():
    """After a run with no failure, remove this process's files (db_path
    names carry the pid), so repeated runs do not fill the disk; a failed
    run keeps them to be looked at."""
    mark = "-%d.db" % os.getpid()
    for name in os.listdir(TMP):
        if name.startswith("interop-") and mark in name:
            try:
                os.unlink(os.path.join(TMP, name))
            except OSError:
                pass


def run(tests):
    """Run the test functions, stop every server, report, exit."""
    global CTX
    print("seed %d (set MQ_TEST_SEED to repeat)" % _seed, flush=True)
    for t in tests:
        before = len(_failures)
        CTX = zmq.Context()  # a fresh one per test: no state carried over
        try:
            t()
        except Exception as e:  # a crash of one test is a failure, not an abort
            import traceback
            traceback.print_exc()
            check(False, "%s raised %r" % (t.__name__, e))
        print("%s %s" % ("ok  " if len(_failures) == before else "FAIL", t.__name__), flush=True)
        if len(_failures) != before:
            for s in _servers:
                s.dump_log()
        for s in _servers:
            if s.proc and s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait(10)
        del _servers[:]
        for ms, m in _monitored:
            ms.disable_monitor()
            m.close()
        del _monitored[:]
        CTX.destroy(linger=0)
    print("%d failed" % len(_failures))
    if not _failures:
        remove_files()
    sys.exit(1 if _failures else 0)
