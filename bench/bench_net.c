/*
** bench_net.c -- ingest throughput of a PULL endpoint, next to libzmq's own
** PUSH -> PULL on the same loopback, in the same run.
**
** The producer is the same in both columns: a libzmq PUSH socket in its own
** process sending N messages of SIZE bytes as fast as it can.  They differ
** in the receiver:
**   libzmq   a libzmq PULL socket in its own process that just receives
**            (nothing is stored: this is the transport's ceiling);
**   mq       our PULL endpoint (mq_server, this process) storing every
**            message durably in a queue, MQ_SYNC_FULL by default, all the
**            messages read while the last commit ran in one commit (group
**            commit), in a file of SQLite's default 4 KiB pages and in one
**            of 64 KiB pages (mq_store_options.page_size).
** The peers run twice, in C (zmq_peer, when libzmq's headers were found at
** build time) and in Python (pyzmq, when /usr/bin/python3 has it); with
** neither the program says so and exits 0.
** Throughput is messages over the time from the first message received
** (libzmq) or the first commit (mq; its messages are not counted) to the
** last, so process start-up is not counted.  The server runs in a thread
** of this process; mq's count is the endpoint's own counter
** (mq_server_endpoint_stats), which is free to read.  The table shows the
** median of --reps runs per row, alternating the order within each
** repetition, and the ratio mq / libzmq (the target is at least 0.5:
** storing durably at half the speed of not storing at all).  Another
** column is raw SQLite storing the same messages with the same durability
** and page size, one row per message, from memory (net_run_sqlite); the
** last ("raw packs") is raw SQLite storing the same bytes in rows of
** NET_PACK messages, as packs hold them, with nothing else to do: the
** storage engine alone doing the endpoint's writes, through SQLite's own
** VFS (mq's writing connection starts write-back early, src/vfs.c).  The
** endpoint stores packs (src/pack.c), which the first get turns into
** message rows: the "settled" column counts until that is done too.
** Not a test: nothing is asserted.
*/
#include "benchlib.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define NET_PYTHON "/usr/bin/python3"
#define NET_MAXREPS 100
#define NET_TXN 8192 /* messages per transaction: mq's PULL batch at most */
#define NET_PACK 256 /* messages per row of "raw packs": MQI_PACK_MSGS */

static const char *net_producer =
    "import sys, zmq\n"
    "c = zmq.Context()\n"
    "s = c.socket(zmq.PUSH)\n"
    "s.setsockopt(zmq.SNDHWM, 100000)\n"
    "s.connect(sys.argv[1])\n"
    "n, p = int(sys.argv[2]), b'x' * int(sys.argv[3])\n"
    "for i in range(n): s.send(p)\n"
    "s.close(linger=-1)\n"
    "c.term()\n";

static const char *net_receiver =
    "import sys, time, zmq\n"
    "c = zmq.Context()\n"
    "s = c.socket(zmq.PULL)\n"
    "print(s.bind_to_random_port('tcp://127.0.0.1'), flush=True)\n"
    "n = int(sys.argv[1])\n"
    "s.recv()\n"
    "t0 = time.monotonic()\n"
    "for i in range(n - 1): s.recv()\n"
    "print('%.6f' % (time.monotonic() - t0), flush=True)\n";

/* The peers: libzmq's own sockets, in C (zmq_peer, built when libzmq's
** headers are installed) or in Python (pyzmq).  Both speak the same
** protocol: "push ENDPOINT N SIZE" sends, "pull N" binds, prints its port,
** receives and prints the seconds from the first message to the last. */
typedef struct net_peer {
  const char *name;
  const char *exe; /* zmq_peer, or NULL for pyzmq */
} net_peer;

/* Start the peer in role ("push" or "pull") with args a1.. (NULL-ended
** at three); its stdout into *out (if not NULL). */
static pid_t net_spawn(const net_peer *peer, const char *role, const char *a1, const char *a2,
                       const char *a3, int *out) {
  posix_spawn_file_actions_t fa;
  int fds[2] = {-1, -1};
  pid_t pid = -1;
  const char *script = strcmp(role, "push") == 0 ? net_producer : net_receiver;
  char *py[] = {(char *)NET_PYTHON, (char *)"-c", (char *)script,
                (char *)a1,         (char *)a2,   (char *)a3, NULL};
  char *exe[] = {(char *)peer->exe, (char *)role, (char *)a1, (char *)a2, (char *)a3, NULL};
  char **argv = peer->exe ? exe : py;
  posix_spawn_file_actions_init(&fa);
  if (out) {
    if (pipe(fds) != 0) bench_die("pipe: %s", strerror(errno));
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
  }
  if (posix_spawn(&pid, argv[0], &fa, NULL, argv, environ) != 0) pid = -1;
  posix_spawn_file_actions_destroy(&fa);
  if (out) {
    close(fds[1]);
    *out = fds[0];
  }
  return pid;
}

/* Read one line (at most cap-1 bytes) from fd; 0 on success. */
static int net_line(int fd, char *buf, size_t cap) {
  size_t n = 0;
  while (n + 1 < cap) {
    ssize_t k = read(fd, buf + n, 1);
    if (k <= 0) return -1;
    if (buf[n] == '\n') break;
    n++;
  }
  buf[n] = '\0';
  return 0;
}

static int net_wait(pid_t pid) {
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static int net_have_pyzmq(void) {
  pid_t pid = -1;
  char *argv[] = {(char *)NET_PYTHON, (char *)"-c", (char *)"import zmq", NULL};
  if (posix_spawn(&pid, NET_PYTHON, NULL, NULL, argv, environ) != 0) return 0;
  return net_wait(pid) == 0;
}

/* libzmq PUSH -> libzmq PULL: messages per second. */
static double net_run_libzmq(const net_peer *peer, long n, long size) {
  char ns[32], ss[32], ep[96], line[64];
  int out = -1;
  snprintf(ns, sizeof ns, "%ld", n);
  snprintf(ss, sizeof ss, "%ld", size);
  pid_t rx = net_spawn(peer, "pull", ns, NULL, NULL, &out);
  if (rx < 0 || net_line(out, line, sizeof line) != 0) bench_die("libzmq receiver did not start");
  snprintf(ep, sizeof ep, "tcp://127.0.0.1:%s", line);
  pid_t tx = net_spawn(peer, "push", ep, ns, ss, NULL);
  if (tx < 0) bench_die("producer did not start");
  if (net_line(out, line, sizeof line) != 0) bench_die("libzmq receiver failed");
  net_wait(tx);
  net_wait(rx);
  close(out);
  double secs = atof(line);
  return secs > 0 ? (double)n / secs : 0;
}

/* Raw SQLite (WAL, the naive one-table queue of benchlib) storing the
** same n messages in transactions of as many as mq's PULL commits at most,
** from memory, no network, per_row messages' bytes in each row: with 1,
** how fast the storage engine alone goes with the least a durable queue
** must write; with NET_PACK, how fast it takes the bytes at all in rows
** the size of packs.  Messages per second. */
static double net_run_sqlite(const bench_opts *o, int sync, int page_size, long n, long size,
                             long per_row) {
  char path[1100];
  bench_raw r;
  size_t row = (size_t)(size * per_row);
  unsigned char *p = malloc(row ? row : 1);
  if (!p) bench_die("out of memory");
  bench_fill(p, row, 7);
  bench_db_path(path, sizeof path, o, "netraw");
  bench_raw_create_paged(path, BENCH_RAW_WAL, page_size);
  bench_raw_open(&r, path, BENCH_RAW_WAL, sync);
  double t0 = bench_now();
  for (long i = 0; i < n;) {
    if (bench_raw_begin(&r) != SQLITE_OK) bench_die("raw: %s", r.last_err);
    for (long k = 0; k < NET_TXN && i < n;) {
      long m = n - i < per_row ? n - i : per_row;
      if (bench_raw_put(&r, p, (size_t)(m * size)) != SQLITE_OK) bench_die("raw: %s", r.last_err);
      k += m;
      i += m;
    }
    if (bench_raw_commit(&r) != SQLITE_OK) bench_die("raw: %s", r.last_err);
  }
  double secs = bench_now() - t0;
  bench_raw_close(&r);
  bench_db_remove(path);
  free(p);
  return secs > 0 ? (double)n / secs : 0;
}

/* Both raw SQLite runs, unless --mq-only. */
static void net_run_raws(const bench_opts *o, int sync, int page_size, long n, long size,
                         double *rows, double *packs) {
  *rows = o->mq_only ? 0 : net_run_sqlite(o, sync, page_size, n, size, 1);
  *packs = o->mq_only ? 0 : net_run_sqlite(o, sync, page_size, n, size, NET_PACK);
}

/* "min-max" of v[0..n) in thousands, in a static buffer of two. */
static const char *net_range(const double *v, int n) {
  static char buf[2][40];
  static int which;
  double lo = n ? v[0] : 0, hi = lo;
  for (int i = 1; i < n; i++) {
    if (v[i] < lo) lo = v[i];
    if (v[i] > hi) hi = v[i];
  }
  char *b = buf[which++ % 2];
  snprintf(b, sizeof buf[0], "%.0fk-%.0fk", lo / 1000, hi / 1000);
  return b;
}

static void *net_serve(void *arg) {
  mq_server_run(arg, -1);
  return NULL;
}

/* Messages the PULL endpoint has stored: its counter, which costs nothing
** to read (a count of the queue would scan it and hold up the commits). */
static int64_t net_total(mq_server *srv) {
  mq_endpoint_stats st;
  if (mq_server_endpoint_stats(srv, 0, &st) != MQ_OK) bench_die("endpoint stats");
  return st.messages_in;
}

/* libzmq PUSH -> our PULL endpoint, stored: messages per second; and in
** *settled, counting until they were all message rows too (the endpoint
** stores packs; a get turns what is left into rows first). */
static double net_run_mq(const net_peer *peer, const bench_opts *o, int sync, int page_size, long n,
                         long size, double *settled) {
  char path[1100], ep[128], ns[32], ss[32];
  mq_server *srv = NULL;
  pthread_t th;
  bench_db_path(path, sizeof path, o, "net");
  mq_store *s = bench_mq_open_paged(path, sync, page_size);
  if (mq_server_new(s, NULL, &srv) != MQ_OK ||
      mq_server_pull(srv, "bench", "tcp://127.0.0.1:0") != MQ_OK ||
      mq_server_endpoint(srv, 0, ep, sizeof ep) != MQ_OK)
    bench_die("server: %s", mq_errmsg(s));
  if (pthread_create(&th, NULL, net_serve, srv) != 0) bench_die("pthread_create");
  snprintf(ns, sizeof ns, "%ld", n);
  snprintf(ss, sizeof ss, "%ld", size);
  pid_t tx = net_spawn(peer, "push", ep, ns, ss, NULL);
  if (tx < 0) bench_die("producer did not start");
  double t0 = 0, t1 = 0, deadline = bench_now() + 300;
  int64_t first;
  while ((first = net_total(srv)) == 0) {
    if (bench_now() > deadline) bench_die("mq stored nothing");
    bench_sleep(0.0005);
  }
  /* The first commit's messages arrived before t0: not counted. */
  t0 = bench_now();
  for (;;) {
    int64_t total = net_total(srv);
    if (total >= n) break;
    if (bench_now() > deadline) bench_die("mq stored only %lld of %ld", (long long)total, n);
    bench_sleep(0.0005);
  }
  t1 = bench_now();
  mq_msg *m = NULL;
  if (mq_get(s, "bench", NULL, &m) != MQ_OK ||
      mq_nack(s, "bench", mq_msg_receipt(m), 0, NULL) != MQ_OK)
    bench_die("get after ingest: %s", mq_errmsg(s));
  mq_msg_free(m);
  double t2 = bench_now();
  *settled = t2 > t0 ? (double)(n - first) / (t2 - t0) : 0;
  net_wait(tx);
  mq_server_stop(srv);
  pthread_join(th, NULL);
  mq_server_free(srv);
  mq_store_close(s);
  bench_db_remove(path);
  return t1 > t0 ? (double)(n - first) / (t1 - t0) : 0;
}

/* Messages per run: enough that a run of libzmq's receiver at 8M msg/s
** lasts over 100 ms (a shorter one measures its start as much as its
** rate), within about 200 MB per file. */
static long net_count(const bench_opts *o, long size) {
  if (o->quick) return 50000;
  return size <= 100 ? 1000000 : 200000;
}

/* One table: libzmq, and mq and raw SQLite (a row per message, and rows
** of packs' size) at each page size, per size. */
static void net_table(const net_peer *peer, const bench_opts *o, int sync) {
  static const long sizes[] = {100, 1000};
  static const int pages[] = {0, 65536}; /* SQLite's default, and the largest */
  enum { NPAGES = sizeof pages / sizeof pages[0] };
  printf("\npeers: %s\n", peer->name);
  printf("%-8s %6s %12s %14s %8s %12s %8s %12s %8s %12s %8s\n", "size", "pages", "libzmq msg/s",
         "mq PULL msg/s", "ratio", "settled", "ratio", "SQLite msg/s", "ratio", "raw packs",
         "ratio");
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    char what[16];
    snprintf(what, sizeof what, "%ld B", sizes[k]);
    if (o->only[0] && !strstr(what, o->only)) continue;
    long n = net_count(o, sizes[k]);
    double base[NET_MAXREPS], ours[NPAGES][NET_MAXREPS], raw[NPAGES][NET_MAXREPS];
    double rows[NPAGES][NET_MAXREPS], packs[NPAGES][NET_MAXREPS];
    int reps = o->reps > NET_MAXREPS ? NET_MAXREPS : o->reps;
    for (int r = 0; r < reps; r++) {
      /* Alternate the order, so drift hurts all rows alike. */
      int first = r % 2 == 0;
      if (first) base[r] = o->mq_only ? 0 : net_run_libzmq(peer, n, sizes[k]);
      for (int i = 0; i < NPAGES; i++) {
        int g = first ? i : NPAGES - 1 - i;
        if (!first) net_run_raws(o, sync, pages[g], n, sizes[k], &raw[g][r], &packs[g][r]);
        ours[g][r] = net_run_mq(peer, o, sync, pages[g], n, sizes[k], &rows[g][r]);
        if (first) net_run_raws(o, sync, pages[g], n, sizes[k], &raw[g][r], &packs[g][r]);
      }
      if (!first) base[r] = o->mq_only ? 0 : net_run_libzmq(peer, n, sizes[k]);
      if (o->verbose)
        fprintf(stderr,
                "  %ld B rep %d: libzmq %.0f, mq %.0f / %.0f, SQLite %.0f / %.0f, raw packs %.0f / "
                "%.0f\n",
                sizes[k], r, base[r], ours[0][r], ours[1][r], raw[0][r], raw[1][r], packs[0][r],
                packs[1][r]);
    }
    double b = bench_median(base, reps);
    for (int g = 0; g < NPAGES; g++) {
      double m = bench_median(ours[g], reps), q = bench_median(raw[g], reps);
      double w = bench_median(rows[g], reps), c = bench_median(packs[g], reps);
      char label[16], page[16];
      snprintf(label, sizeof label, "%ld B", sizes[k]);
      snprintf(page, sizeof page, "%dK", (pages[g] ? pages[g] : 4096) / 1024);
      printf("%-8s %6s %12.0f %14.0f %8.2f %12.0f %8.2f %12.0f %8.2f %12.0f %8.2f\n", label, page,
             b, m, b > 0 ? m / b : 0.0, w, b > 0 ? w / b : 0.0, q, q > 0 ? m / q : 0.0, c,
             c > 0 ? m / c : 0.0);
      /* libzmq's rate can swing between runs: show the spread, so a ratio
      ** is read with it. */
      printf("%-8s %6s %12s %14s\n", "", "", g == 0 ? net_range(base, reps) : "",
             net_range(ours[g], reps));
    }
    fflush(stdout);
  }
}

int main(int argc, char **argv) {
  bench_opts o;
  bench_opts_parse(&o, argc, argv, 7, 1.0, 1, "");
  int sync = o.sync < 0 ? MQ_SYNC_FULL : o.sync;
  net_peer peers[2];
  int npeers = 0;
#ifdef MQ_ZMQ_PEER
  if (access(MQ_ZMQ_PEER, X_OK) == 0)
    peers[npeers++] = (net_peer){"libzmq in C (zmq_peer): the transport's own ceiling", MQ_ZMQ_PEER};
#endif
  if ((npeers == 0 || !o.quick) && net_have_pyzmq())
    peers[npeers++] = (net_peer){"pyzmq (" NET_PYTHON "), as in examples/", NULL};
  if (npeers == 0) {
    printf("bench_net: neither libzmq's headers (libzmq3-dev) nor pyzmq (python3-zmq) for %s: "
           "skipped\n",
           NET_PYTHON);
    return 0;
  }
  signal(SIGPIPE, SIG_IGN);
  bench_header("bench_net", "PUSH -> PULL ingest over loopback", sync, &o);
  printf("%ld messages of 100 B, %ld of 1000 B per run; --secs and --slices are not used here\n",
         net_count(&o, 100), net_count(&o, 1000));
  for (int i = 0; i < npeers; i++) net_table(&peers[i], &o, sync);
  printf("\nratios: mq / libzmq (target >= 0.50; mq stores every message durably, in packs of\n"
         "up to 256 per row, libzmq stores nothing); settled: until every message was also an\n"
         "ordinary message row (what the first get does with packs), and its ratio to\n"
         "libzmq; mq / SQLite (raw SQLite, WAL, one table, one row per message, storing the same\n"
         "messages in transactions of %d from memory, no network); raw packs: raw SQLite\n"
         "storing the same bytes, %d messages' worth per row as in a pack, through SQLite's\n"
         "own VFS, and mq / raw packs (the storage engine alone doing the endpoint's writes).\n"
         "pages: the file's page size (mq_store_options.page_size; SQLite's default is 4K)\n",
         NET_TXN, NET_PACK);
  return 0;
}
