/*
** test_stress.c -- many processes on one file for a bounded time: writers,
** readers that ack, a checkpointer and a process that only opens and
** closes, while the parent verifies the store every few seconds.
**
** This is the shape of the WAL-reset race (reliability note F5): several
** connections writing and checkpointing one WAL at once.  mq's answer is
** that every writer and every checkpoint, including the one at close, goes
** through the writer gate, so two mq connections never write or checkpoint
** at the same moment; this test leans on exactly that.  It also checks the
** promise that lock contention is the library's business: under the
** default busy timeout, MQ_EBUSY must never reach a caller of put, get,
** ack, touch or open (mq_store_checkpoint and mq_store_close may say
** MQ_EBUSY when readers keep the WAL from being restarted -- mq.h allows
** it, nothing is lost -- and those are counted apart).
**
** Three writers put (single puts and batches), three readers get and ack
** (single, batch, and get-touch-ack), one process checkpoints in a loop and
** one opens and closes the store.  Every child reports each completed call
** through one pipe (records below PIPE_BUF, so they never interleave): PUT
** (id, seq) after a put returned MQ_OK, GOT when a get returned, ACK after
** an ack returned MQ_OK, and ERR with the code of anything else.  The
** injected clock is frozen, so no lease ever ends and no redelivery is
** legitimate: every put-OK id must be delivered exactly once and acked
** exactly once, with its own payload, and the queue must be empty at the
** end.  The parent runs mq_store_verify and PRAGMA integrity_check every
** few seconds while all this runs, and once more at the end.
**
** Bounded: writers stop after 20 s (times MQ_FAULT_SCALE),
** readers drain what is left, a hard deadline kills everyone and fails.
** Throughput is printed (ops/s per process and each role's min/max share of
** the work, which is what the gate's fairness shows up as), never asserted;
** only progress is: each writer and each reader did some work.
*/
#include "testutil.h"

#define NW 3
#define NR 3
#define NCHILD (NW + NR + 2)
#define CHECK_EVERY_MS 3000

enum { R_PUT = 1, R_GOT, R_ACK, R_ERR, R_OPS };
/* Operations named in R_ERR records (seq field). */
enum { OP_PUT = 1, OP_GET, OP_ACK, OP_TOUCH, OP_OPEN, OP_CLOSE, OP_CKPT, OP_STATS, OP_DATA };
static const char *const op_names[] = {"?",    "put",   "get",        "ack",  "touch",
                                       "open", "close", "checkpoint", "stats", "payload"};

typedef struct shared {
  _Atomic int64_t put_ok, acked;
  _Atomic int writers_done, readers_done;
} shared;

static const char *g_path;
static shared *g_sh;
static int64_t g_put_until, g_deadline;

/* The payload of (who, n): a header naming both, then filler derived from
** them, 16..615 bytes. */
static size_t make_payload(int64_t seq, char *buf, size_t cap) {
  int n = snprintf(buf, cap, "seq=%lld;", (long long)seq);
  size_t len = 16 + (size_t)((seq * 2654435761u) % 600);
  if (len < (size_t)n) len = (size_t)n;
  if (len > cap) len = cap;
  for (size_t i = (size_t)n; i < len; i++) buf[i] = (char)('A' + (seq + (int64_t)i * 7) % 57);
  return len;
}

static int64_t payload_seq(const mq_msg *m) {
  char want[700], head[32];
  size_t n = mq_msg_size(m), hn = n < sizeof head - 1 ? n : sizeof head - 1;
  long long seq = -1;
  memcpy(head, mq_msg_data(m), hn);
  head[hn] = 0;
  if (sscanf(head, "seq=%lld;", &seq) != 1 || seq < 0) return -1;
  size_t wl = make_payload(seq, want, sizeof want);
  return wl == n && memcmp(want, mq_msg_data(m), n) == 0 ? seq : -1;
}

static mq_store *child_open(int fd, int who, int sync) {
  mq_store *s = NULL;
  mq_store_options o;
  mq_store_options_init(&o); /* the default busy timeout */
  o.sync = sync;
  o.clock = test_clock;
  o.min_free_bytes = 0;
  int rc = mq_store_open(g_path, &o, &s);
  if (rc != MQ_OK) {
    tu_rec_write(fd, R_ERR, who, 0, OP_OPEN, rc);
    fprintf(stderr, "  child %d: open: %s: %s\n", who, mq_errstr(rc), mq_errmsg(NULL));
    _exit(5);
  }
  return s;
}

static void child_close(mq_store *s, int fd, int who) {
  int rc = mq_store_close(s);
  if (rc != MQ_OK) tu_rec_write(fd, R_ERR, who, 0, OP_CLOSE, rc);
}

/* Writer who: puts until g_put_until, one batch of 5 in every 8 rounds. */
static void run_writer(int fd, int who) {
  mq_store *s = child_open(fd, who, who == 0 ? MQ_SYNC_FULL : MQ_SYNC_NORMAL);
  int64_t n = 0, ops = 0, t0 = tu_mono_ms();
  char bufs[5][700];
  while (tu_mono_ms() < g_put_until) {
    int batch = n % 8 == 7 ? 5 : 1;
    mq_entry e[5];
    int64_t ids[5], seqs[5];
    for (int i = 0; i < batch; i++) {
      seqs[i] = (int64_t)who * 100000000 + n + i;
      e[i].data = bufs[i];
      e[i].len = make_payload(seqs[i], bufs[i], sizeof bufs[i]);
      e[i].opts = NULL;
    }
    int rc = batch == 1 ? mq_put(s, "q", e[0].data, e[0].len, NULL, &ids[0])
                        : mq_put_batch(s, "q", e, (size_t)batch, ids);
    ops++;
    if (rc == MQ_OK) {
      for (int i = 0; i < batch; i++) tu_rec_write(fd, R_PUT, who, ids[i], seqs[i], 0);
      atomic_fetch_add(&g_sh->put_ok, batch);
      n += batch;
    } else {
      tu_rec_write(fd, R_ERR, who, 0, OP_PUT, rc);
      tu_sleep_ms(1);
    }
  }
  child_close(s, fd, who);
  atomic_fetch_add(&g_sh->writers_done, 1);
  tu_rec_write(fd, R_OPS, who, ops, n, tu_mono_ms() - t0);
}

static int readers_may_stop(void) {
  return atomic_load(&g_sh->writers_done) == NW &&
         atomic_load(&g_sh->acked) >= atomic_load(&g_sh->put_ok);
}

static void got(int fd, int who, const mq_msg *m) {
  int64_t seq = payload_seq(m);
  tu_rec_write(fd, R_GOT, who, mq_msg_id(m), seq, mq_msg_receives(m));
  if (seq < 0) tu_rec_write(fd, R_ERR, who, mq_msg_id(m), OP_DATA, 0);
}

/* Reader who: mode 0 gets and acks one by one, mode 1 in batches of 8,
** mode 2 touches each lease before acking it. */
static void run_reader(int fd, int who, int mode) {
  mq_store *s = child_open(fd, who, MQ_SYNC_NORMAL);
  mq_get_options go;
  mq_get_options_init(&go);
  go.wait_ms = 100;
  int64_t ops = 0, acks = 0, t0 = tu_mono_ms();
  while (!readers_may_stop() && tu_mono_ms() < g_deadline) {
    mq_msg *msgs[8];
    size_t count = 0;
    int rc = mode == 1 ? mq_get_batch(s, "q", &go, 8, msgs, &count)
                       : mq_get(s, "q", &go, &msgs[0]);
    ops++;
    if (rc == MQ_EMPTY) continue;
    if (rc != MQ_OK) {
      tu_rec_write(fd, R_ERR, who, 0, OP_GET, rc);
      tu_sleep_ms(1);
      continue;
    }
    if (mode != 1) count = 1;
    const char *receipts[8];
    int results[8];
    for (size_t i = 0; i < count; i++) {
      got(fd, who, msgs[i]);
      receipts[i] = mq_msg_receipt(msgs[i]);
    }
    if (mode == 2) {
      rc = mq_touch(s, "q", receipts[0], 60000);
      ops++;
      if (rc != MQ_OK) tu_rec_write(fd, R_ERR, who, mq_msg_id(msgs[0]), OP_TOUCH, rc);
    }
    if (mode == 1) {
      rc = mq_ack_batch(s, "q", receipts, count, results);
      ops++;
      for (size_t i = 0; i < count; i++) {
        if (rc == MQ_OK && results[i] == MQ_OK) {
          tu_rec_write(fd, R_ACK, who, mq_msg_id(msgs[i]), payload_seq(msgs[i]), 0);
          atomic_fetch_add(&g_sh->acked, 1);
          acks++;
        } else {
          tu_rec_write(fd, R_ERR, who, mq_msg_id(msgs[i]), OP_ACK, rc != MQ_OK ? rc : results[i]);
        }
      }
    } else {
      rc = mq_ack(s, "q", receipts[0]);
      ops++;
      if (rc == MQ_OK) {
        tu_rec_write(fd, R_ACK, who, mq_msg_id(msgs[0]), payload_seq(msgs[0]), 0);
        atomic_fetch_add(&g_sh->acked, 1);
        acks++;
      } else {
        tu_rec_write(fd, R_ERR, who, mq_msg_id(msgs[0]), OP_ACK, rc);
      }
    }
    for (size_t i = 0; i < count; i++) mq_msg_free(msgs[i]);
  }
  child_close(s, fd, who);
  atomic_fetch_add(&g_sh->readers_done, 1);
  tu_rec_write(fd, R_OPS, who, ops, acks, tu_mono_ms() - t0);
}

static int others_running(void) {
  return atomic_load(&g_sh->readers_done) < NR && tu_mono_ms() < g_deadline;
}

/* The checkpointer: TRUNCATE checkpoints back to back.  MQ_EBUSY (readers
** kept the WAL) is an allowed answer and is counted in extra. */
static void run_checkpointer(int fd, int who) {
  mq_store *s = child_open(fd, who, MQ_SYNC_NORMAL);
  int64_t ops = 0, busy = 0, t0 = tu_mono_ms();
  while (others_running()) {
    int rc = mq_store_checkpoint(s);
    ops++;
    if (rc == MQ_EBUSY) busy++;
    else if (rc != MQ_OK) tu_rec_write(fd, R_ERR, who, 0, OP_CKPT, rc);
    tu_sleep_ms(2);
  }
  child_close(s, fd, who);
  tu_rec_write(fd, R_OPS, who, ops, busy, tu_mono_ms() - t0);
}

/* The opener: open, read the counts, close, again and again.  Its close
** is the last-connection checkpoint whenever everyone else is between
** handles, which is the path the gate must cover too. */
static void run_opener(int fd, int who) {
  int64_t ops = 0, t0 = tu_mono_ms();
  while (others_running()) {
    mq_store *s = child_open(fd, who, MQ_SYNC_NORMAL);
    mq_queue_stats st;
    int rc = mq_queue_stats_get(s, "q", &st);
    if (rc != MQ_OK) tu_rec_write(fd, R_ERR, who, 0, OP_STATS, rc);
    child_close(s, fd, who);
    ops++;
  }
  tu_rec_write(fd, R_OPS, who, ops, 0, tu_mono_ms() - t0);
}

/* ---- The parent's bookkeeping ----------------------------------------------- */

typedef struct idrec {
  int64_t seq;
  int puts, gots, acks;
  int64_t got_seq;
} idrec;

static idrec *g_ids;
static int64_t g_ids_cap;

static idrec *id_slot(int64_t id) {
  if (id <= 0 || id > 100000000) return NULL;
  if (id >= g_ids_cap) {
    int64_t cap = g_ids_cap ? g_ids_cap : 65536;
    while (cap <= id) cap *= 2;
    idrec *n = realloc(g_ids, (size_t)cap * sizeof *n);
    if (!n) return NULL;
    memset(n + g_ids_cap, 0, (size_t)(cap - g_ids_cap) * sizeof *n);
    g_ids = n;
    g_ids_cap = cap;
  }
  return &g_ids[id];
}

typedef struct tally {
  int64_t puts, gots, acks, busy, errors, bad_payload, unknown_ids;
  int64_t ckpt_ops, ckpt_busy, close_busy, opens;
  int64_t ops[NCHILD], work[NCHILD], ms[NCHILD];
  int reported[NCHILD];
} tally;

static void take(tally *t, const tu_rec *r) {
  idrec *x = id_slot(r->id);
  switch (r->kind) {
    case R_PUT:
      t->puts++;
      if (x) {
        x->puts++;
        x->seq = r->seq;
      }
      break;
    case R_GOT:
      t->gots++;
      if (x) {
        x->gots++;
        x->got_seq = r->seq;
      }
      if (r->seq < 0) t->bad_payload++;
      break;
    case R_ACK:
      t->acks++;
      if (x) x->acks++;
      break;
    case R_ERR: {
      int rc = (int)r->extra;
      int op = r->seq >= 0 && r->seq <= OP_DATA ? (int)r->seq : 0;
      if (op == OP_CLOSE && rc == MQ_EBUSY) {
        t->close_busy++; /* allowed by mq.h: the final checkpoint did not run */
        break;
      }
      if (op == OP_DATA) break; /* counted from the GOT */
      if (rc == MQ_EBUSY) t->busy++;
      else t->errors++;
      if (t->busy + t->errors <= 10)
        fprintf(stderr, "  child %d: %s returned %d (%s)\n", r->who, op_names[op], rc,
                mq_errstr(rc));
      break;
    }
    case R_OPS:
      if (r->who >= 0 && r->who < NCHILD) {
        t->ops[r->who] = r->id;
        t->work[r->who] = r->seq;
        t->ms[r->who] = r->extra;
        t->reported[r->who] = 1;
        if (r->who == NW + NR) {
          t->ckpt_ops = r->id;
          t->ckpt_busy = r->seq;
        }
        if (r->who == NW + NR + 1) t->opens = r->id;
      }
      break;
  }
}

static void verify_problem(void *ctx, const char *problem) {
  (void)ctx;
  fprintf(stderr, "  verify: %s\n", problem);
}

/* One check from the parent: the library's verify and SQLite's own
** integrity check on a separate read-only connection.  1 if both are ok. */
static int check_store(mq_store *s, int64_t *busy) {
  int rc = mq_store_verify(s, verify_problem, NULL, NULL);
  if (rc == MQ_EBUSY) (*busy)++;
  if (rc != MQ_OK) fprintf(stderr, "  verify: %s: %s\n", mq_errstr(rc), mq_errmsg(s));
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;
  int ok = 0;
  if (sqlite3_open_v2(g_path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
    sqlite3_busy_timeout(db, 10000);
    if (sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
      const char *r = (const char *)sqlite3_column_text(st, 0);
      ok = r && strcmp(r, "ok") == 0;
      if (!ok) fprintf(stderr, "  integrity_check: %s\n", r ? r : "(null)");
    } else {
      fprintf(stderr, "  integrity_check could not run: %s\n", sqlite3_errmsg(db));
    }
    sqlite3_finalize(st);
  }
  sqlite3_close(db);
  return rc == MQ_OK && ok;
}

static void share(const tally *t, int from, int to, double *lo, double *hi) {
  double sum = 0;
  *lo = *hi = 0;
  for (int i = from; i < to; i++) sum += (double)t->work[i];
  if (sum <= 0) return;
  *lo = 1e9;
  for (int i = from; i < to; i++) {
    double sh = (double)t->work[i] / sum;
    if (sh < *lo) *lo = sh;
    if (sh > *hi) *hi = sh;
  }
}

static void test_stress(void) {
  const char *sc = getenv("MQ_FAULT_SCALE");
  int scale = sc && atoi(sc) > 0 ? atoi(sc) : 1;
  int64_t run_ms = 20000LL * scale;
  g_path = test_path("stress");
  mq_store *s = test_open(g_path, MQ_SYNC_FULL);
  CHECK_OK(mq_queue_create(s, "q", NULL));
  CHECK_OK(mq_store_close(s));

  g_sh = mmap(NULL, sizeof *g_sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (g_sh == MAP_FAILED) {
    CHECK(g_sh != MAP_FAILED);
    return;
  }
  memset(g_sh, 0, sizeof *g_sh);
  int p[2];
  CHECK(pipe(p) == 0);
  int64_t t0 = tu_mono_ms();
  g_put_until = t0 + run_ms;
  g_deadline = t0 + run_ms + 30000;
  pid_t pids[NCHILD];
  fflush(NULL);
  for (int i = 0; i < NCHILD; i++) {
    pids[i] = fork();
    if (pids[i] == 0) {
      tu_child_setup();
      close(p[0]);
      if (i < NW) run_writer(p[1], i);
      else if (i < NW + NR) run_reader(p[1], i, i - NW);
      else if (i == NW + NR) run_checkpointer(p[1], i);
      else run_opener(p[1], i);
      _exit(0);
    }
    CHECK(pids[i] > 0);
  }
  close(p[1]);

  tally t;
  memset(&t, 0, sizeof t);
  tu_reader rd;
  tu_reader_init(&rd, p[0]);
  s = test_open(g_path, MQ_SYNC_NORMAL); /* opened after the forks: never shared */
  int64_t next_check = tu_mono_ms() + CHECK_EVERY_MS, checks = 0, checks_ok = 0, vbusy = 0;
  int live = NCHILD, status[NCHILD];
  for (int i = 0; i < NCHILD; i++) status[i] = -1;
  while ((live > 0 || !rd.eof) && tu_mono_ms() < g_deadline + 5000) {
    tu_reader_fill(&rd, 100);
    tu_rec r;
    while (tu_reader_next(&rd, &r)) take(&t, &r);
    for (int i = 0; i < NCHILD; i++) {
      int st;
      if (status[i] == -1 && pids[i] > 0 && waitpid(pids[i], &st, WNOHANG) == pids[i]) {
        status[i] = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        live--;
      }
    }
    if (tu_mono_ms() >= next_check && live > 0) {
      checks++;
      checks_ok += check_store(s, &vbusy);
      next_check = tu_mono_ms() + CHECK_EVERY_MS;
    }
  }
  for (int i = 0; i < NCHILD; i++) {
    if (status[i] == -1 && pids[i] > 0) {
      kill(pids[i], SIGKILL);
      status[i] = tu_wait(pids[i]);
      fprintf(stderr, "  child %d overran the deadline and was killed\n", i);
    }
    CHECK(status[i] == 0);
  }
  close(p[0]);
  int64_t elapsed = tu_mono_ms() - t0;

  /* Every put-OK id delivered once, acked once, with its own payload. */
  int64_t lost = 0, dup_got = 0, dup_ack = 0, unacked = 0, ghost = 0, wrong = 0;
  for (int64_t id = 1; id < g_ids_cap; id++) {
    idrec *x = &g_ids[id];
    if (!x->puts && !x->gots && !x->acks) continue;
    if (x->puts > 1) ghost++;
    if (!x->puts) ghost++;
    if (x->puts && !x->gots) lost++;
    if (x->gots > 1) dup_got++;
    if (x->acks > 1) dup_ack++;
    if (x->puts && x->acks == 0) unacked++;
    if (x->gots && x->puts && x->got_seq != x->seq) wrong++;
  }
  CHECK(t.puts > 0);
  CHECK(lost == 0);
  CHECK(dup_got == 0);
  CHECK(dup_ack == 0);
  CHECK(unacked == 0);
  CHECK(ghost == 0);
  CHECK(wrong == 0);
  CHECK(t.bad_payload == 0);
  CHECK(t.busy == 0);
  CHECK(t.errors == 0);
  CHECK(vbusy == 0);
  for (int i = 0; i < NW + NR; i++) CHECK(t.reported[i] && t.work[i] > 0);
  CHECK(checks > 0);
  CHECK(checks_ok == checks);
  mq_queue_stats st;
  CHECK_OK(mq_queue_stats_get(s, "q", &st));
  CHECK(st.total == 0);
  CHECK(check_store(s, &vbusy));
  CHECK_OK(mq_store_close(s));
  if (lost || dup_got || dup_ack || unacked || ghost || wrong)
    fprintf(stderr, "  lost %lld, delivered twice %lld, acked twice %lld, never acked %lld, "
            "unknown ids %lld, wrong payload %lld\n", (long long)lost, (long long)dup_got,
            (long long)dup_ack, (long long)unacked, (long long)ghost, (long long)wrong);

  double wlo, whi, rlo, rhi;
  share(&t, 0, NW, &wlo, &whi);
  share(&t, NW, NW + NR, &rlo, &rhi);
  char per[512] = "";
  static const char *const role[NCHILD] = {"w0", "w1", "w2", "r0", "r1", "r2", "ckpt", "open"};
  for (int i = 0; i < NCHILD; i++) {
    size_t l = strlen(per);
    double secs = t.ms[i] > 0 ? (double)t.ms[i] / 1000.0 : 1.0;
    snprintf(per + l, sizeof per - l, "%s%s %.0f", l ? ", " : "", role[i], (double)t.ops[i] / secs);
  }
  printf("stress: %d writers + %d readers + checkpointer + opener, %.1f s, SQLite %s · puts %lld "
         "· acks %lld · ops/s %s · share of work min/max: writers %.2f/%.2f, readers %.2f/%.2f "
         "· checkpoints %lld (MQ_EBUSY %lld) · opens %lld (close MQ_EBUSY %lld) · MQ_EBUSY to "
         "callers %lld · other errors %lld · lost %lld · duplicates %lld · verify+integrity "
         "checks %lld/%lld ok\n",
         NW, NR, (double)elapsed / 1000.0, mq_sqlite_version(), (long long)t.puts,
         (long long)t.acks, per, wlo, whi, rlo, rhi, (long long)t.ckpt_ops,
         (long long)t.ckpt_busy, (long long)t.opens, (long long)t.close_busy,
         (long long)(t.busy + vbusy), (long long)t.errors, (long long)lost,
         (long long)(dup_got + dup_ack), (long long)checks_ok, (long long)checks);
  free(g_ids);
  test_unlink_store(g_path);
}

int main(void) {
  const char *sc = getenv("MQ_FAULT_SCALE");
  int scale = sc && atoi(sc) > 0 ? atoi(sc) : 1;
  tu_watchdog((unsigned)(120 + 40 * scale));
  TEST(test_stress);
  return test_done();
}
