/*
** test_crash.c -- kill -9 at random points, then account for every message.
**
** Each round forks a producer and a consumer on one store file and
** SIGKILLs both at random moments (the random delays only choose kill
** points; nothing here asserts timing).  Each child writes a record to a
** pipe right after every call completes, before doing anything else:
** PUT_OK (id, seq) once a put returned MQ_OK, GOT (id, seq) once a get
** returned, ACK_OK once an ack returned MQ_OK.  A record is below PIPE_BUF,
** so a killed child leaves whole records only.  This is the invoke/ok/info
** model: a put whose process died before reporting is "unknown" -- the
** message may or may not exist -- and so is an ack whose GOT was the
** consumer's last word.
**
** Time is the injected clock, kept in shared memory: the parent moves it
** past every lease between rounds, so the next consumer gets the messages
** a killed one was holding (real redeliveries, with new receipts), while
** inside a round no lease can end, so a second delivery of a message within
** a round is a double lease.  At the end the parent drains the queue and
** checks: every PUT_OK message was acked, or is still there, or its ack was
** unknown (no acknowledged put lost); no ACK_OK message is ever delivered
** again; no payload was damaged or stored twice, no id names two payloads;
** SQLite's integrity_check and mq_store_verify find nothing.
** The rounds alternate MQ_SYNC_FULL and MQ_SYNC_NORMAL (both survive a
** process crash).  Bounded: at most ROUNDS rounds and ROUND_BUDGET_MS of
** rounds, plus an alarm() watchdog for a hang.
*/
#include "testutil.h"

#define ROUNDS 120
#define ROUND_BUDGET_MS 20000
#define LEASE_MS 60000

enum { R_PUT_OK = 1, R_GOT, R_ACK_OK, R_ACK_STALE, R_ERR };
#define ERR_BAD_DATA 1000

static const char *g_path;
static _Atomic int64_t *g_clock;

/* The payload of seq: its number, then filler derived from it, so a reader
** can tell a damaged or mixed-up payload from the real one. */
static size_t make_payload(int64_t seq, char *buf, size_t cap) {
  int n = snprintf(buf, cap, "seq=%lld;", (long long)seq);
  size_t len = (size_t)n + (size_t)((seq * 7919) % 700);
  if (len > cap) len = cap;
  for (size_t i = (size_t)n; i < len; i++) buf[i] = (char)('a' + (seq + (int64_t)i) % 26);
  return len;
}

/* The seq a payload carries, or -1 if it is not exactly what make_payload
** produced for that seq. */
static int64_t check_payload(const mq_msg *m) {
  char want[1024];
  long long seq = -1;
  size_t n = mq_msg_size(m);
  char head[32];
  size_t hn = n < sizeof head - 1 ? n : sizeof head - 1;
  memcpy(head, mq_msg_data(m), hn);
  head[hn] = 0;
  if (sscanf(head, "seq=%lld;", &seq) != 1 || seq < 0) return -1;
  size_t len = make_payload(seq, want, sizeof want);
  if (len != n || memcmp(want, mq_msg_data(m), n) != 0) return -1;
  return seq;
}

static mq_store *child_open(int sync) {
  mq_store *s = NULL;
  int rc = tu_open_ex(g_path, sync, MQ_OPEN_CREATE, tu_shared_clock, (void *)g_clock, &s);
  if (rc != MQ_OK) _exit(5);
  return s;
}

static void run_producer(int fd, int sync, int64_t base) {
  mq_store *s = child_open(sync);
  char buf[1024];
  for (int64_t i = 0; i < 200000; i++) {
    int64_t seq = base + i;
    size_t len = make_payload(seq, buf, sizeof buf);
    int64_t id = 0;
    int rc = mq_put(s, "q", buf, len, NULL, &id);
    if (rc == MQ_OK) {
      tu_rec_write(fd, R_PUT_OK, 0, id, seq, 0);
      /* Pace the producer near the consumer's speed, so the final drain
      ** stays short; the kill can still land inside a put. */
      struct timespec pause = {0, 250000};
      nanosleep(&pause, NULL);
    } else {
      /* The outcome is not known; stop, so the unknown put stays the last. */
      tu_rec_write(fd, R_ERR, 0, 0, seq, rc);
      break;
    }
  }
  mq_store_close(s);
}

static void run_consumer(int fd, int sync) {
  mq_store *s = child_open(sync);
  mq_get_options go;
  mq_get_options_init(&go);
  go.wait_ms = 20;
  go.visibility_ms = LEASE_MS;
  for (int i = 0; i < 1000000; i++) {
    mq_msg *m = NULL;
    int rc = mq_get(s, "q", &go, &m);
    if (rc == MQ_EMPTY) continue;
    if (rc != MQ_OK) {
      tu_rec_write(fd, R_ERR, 1, 0, -1, rc);
      break;
    }
    int64_t seq = check_payload(m);
    tu_rec_write(fd, R_GOT, 1, mq_msg_id(m), seq, mq_msg_receives(m));
    if (seq < 0) tu_rec_write(fd, R_ERR, 1, mq_msg_id(m), seq, ERR_BAD_DATA);
    rc = mq_ack(s, "q", mq_msg_receipt(m));
    if (rc == MQ_OK) tu_rec_write(fd, R_ACK_OK, 1, mq_msg_id(m), seq, 0);
    else if (rc == MQ_ESTALE) tu_rec_write(fd, R_ACK_STALE, 1, mq_msg_id(m), seq, 0);
    else tu_rec_write(fd, R_ERR, 1, mq_msg_id(m), seq, rc);
    mq_msg_free(m);
    if (rc != MQ_OK && rc != MQ_ESTALE) break;
  }
  mq_store_close(s);
}

/* What the parent knows about one seq. */
typedef struct item {
  int64_t id;          /* 0 until a report names it */
  unsigned put_ok : 1; /* PUT_OK seen */
  unsigned maybe : 1;  /* the unknown put of its round */
  unsigned acked : 1;  /* ACK_OK seen */
  unsigned ack_unknown : 1;
  unsigned drained : 1;
  int got_round;       /* last round that delivered it, or -1 */
} item;

static item *g_items;
static int64_t g_cap;

static item *item_at(int64_t seq) {
  if (seq < 0) return NULL;
  while (seq >= g_cap) {
    int64_t ncap = g_cap ? g_cap * 2 : 65536;
    item *n = realloc(g_items, (size_t)ncap * sizeof *n);
    if (!n) {
      perror("realloc");
      exit(2);
    }
    memset(n + g_cap, 0, (size_t)(ncap - g_cap) * sizeof *n);
    for (int64_t i = g_cap; i < ncap; i++) n[i].got_round = -1;
    g_items = n;
    g_cap = ncap;
  }
  return &g_items[seq];
}

typedef struct counts {
  int put_ok, got, ack_ok, stale, errors, bad_data, id_conflict, double_lease,
      acked_redelivered, ack_without_get, unexplained, drained, lost;
} counts;

/* Bind seq to id, counting a conflict if either report disagrees. */
static void bind_id(counts *c, item *x, int64_t id) {
  if (x->id && x->id != id) c->id_conflict++;
  if (!x->id) x->id = id;
}

/* What the parent learns about the current round as its reports arrive. */
typedef struct round_state {
  int round;
  int64_t last_ok;  /* highest seq the producer reported PUT_OK for */
  int64_t max_seq;  /* highest seq named by any report */
  int64_t last_got; /* seq of the consumer's last GOT */
  int cons_last_was_got;
} round_state;

static void process(counts *c, round_state *rs, const tu_rec *r) {
  if (r->seq > rs->max_seq) rs->max_seq = r->seq;
  item *x = item_at(r->seq);
  switch (r->kind) {
    case R_PUT_OK:
      c->put_ok++;
      if (!x) break;
      x->put_ok = 1;
      bind_id(c, x, r->id);
      if (r->seq > rs->last_ok) rs->last_ok = r->seq;
      break;
    case R_GOT:
      c->got++;
      rs->cons_last_was_got = 1;
      rs->last_got = r->seq;
      if (!x) {
        c->bad_data++;
        break;
      }
      bind_id(c, x, r->id);
      if (x->acked) c->acked_redelivered++;
      if (x->got_round == rs->round) c->double_lease++; /* no lease ended */
      x->got_round = rs->round;
      break;
    case R_ACK_OK:
      c->ack_ok++;
      rs->cons_last_was_got = 0;
      if (!x || x->got_round != rs->round || x->id != r->id) {
        c->ack_without_get++;
        break;
      }
      x->acked = 1;
      x->ack_unknown = 0;
      break;
    case R_ACK_STALE:
      c->stale++; /* one consumer, frozen clock: never legitimate */
      rs->cons_last_was_got = 0;
      break;
    case R_ERR:
      if (r->extra == ERR_BAD_DATA) {
        c->bad_data++;
      } else {
        c->errors++;
        if (c->errors <= 5)
          fprintf(stderr, "  round %d: %s failed: %s\n", rs->round,
                  r->who ? "consumer" : "producer", mq_errstr((int)r->extra));
      }
      if (r->who == 1) rs->cons_last_was_got = 0;
      break;
  }
}

/* Read and process reports until until_ms (real time) or, with
** until_ms < 0, until every writer is gone (bounded at 30 s).  Reading
** while the children run keeps the pipe from filling up and stalling them. */
static void pump(tu_reader *rd, counts *c, round_state *rs, int64_t until_ms) {
  int64_t stop = until_ms >= 0 ? until_ms : tu_mono_ms() + 30000;
  while (!rd->eof) {
    int64_t left = stop - tu_mono_ms();
    if (left <= 0) break;
    tu_reader_fill(rd, (int)(left < 50 ? left : 50));
    tu_rec r;
    while (tu_reader_next(rd, &r)) process(c, rs, &r);
  }
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

static void test_kill_nine(void) {
  g_path = test_path("crash");
  g_clock = tu_shared_clock_new();
  {
    mq_store *s = NULL;
    CHECK_OK(tu_open_ex(g_path, MQ_SYNC_FULL, MQ_OPEN_CREATE, tu_shared_clock,
                        (void *)g_clock, &s));
    if (!s) return;
    tu_create(s, "q", LEASE_MS, 0, NULL);
    CHECK_OK(mq_store_close(s));
  }
  uint64_t rng = (uint64_t)getpid() * 2654435761u + (uint64_t)tu_mono_ms();
  fprintf(stderr, "  seed %llu\n", (unsigned long long)rng);
  counts c;
  memset(&c, 0, sizeof c);
  int64_t next_seq = 0, t_start = tu_mono_ms();
  int rounds = 0, odd_exit = 0;

  for (int round = 0; round < ROUNDS && tu_mono_ms() - t_start < ROUND_BUDGET_MS; round++) {
    rounds++;
    int sync = round % 2 ? MQ_SYNC_NORMAL : MQ_SYNC_FULL;
    int64_t base = next_seq;
    int fds[2];
    CHECK(pipe(fds) == 0);
    fflush(NULL);
    pid_t prod = fork();
    if (prod == 0) {
      tu_child_setup();
      close(fds[0]);
      run_producer(fds[1], sync, base);
      _exit(0);
    }
    pid_t cons = fork();
    if (cons == 0) {
      tu_child_setup();
      close(fds[0]);
      run_consumer(fds[1], sync);
      _exit(0);
    }
    close(fds[1]);
    CHECK(prod > 0 && cons > 0);

    /* Kill points: sometimes almost at once (during open), mostly mid-run,
    ** in either order. */
    int64_t d1 = (int64_t)(tu_rand(&rng) % 8 == 0 ? tu_rand(&rng) % 5 : 20 + tu_rand(&rng) % 400);
    int64_t d2 = (int64_t)(tu_rand(&rng) % 100);
    int cons_first = (int)(tu_rand(&rng) % 2);
    round_state rs = {round, base - 1, base - 1, -1, 0};
    tu_reader rd;
    tu_reader_init(&rd, fds[0]);
    pump(&rd, &c, &rs, tu_mono_ms() + d1);
    kill(cons_first ? cons : prod, SIGKILL);
    pump(&rd, &c, &rs, tu_mono_ms() + d2);
    kill(cons_first ? prod : cons, SIGKILL);
    int sp = tu_wait(prod), sc = tu_wait(cons);
    if (sp != 128 + SIGKILL || sc != 128 + SIGKILL) {
      odd_exit++;
      fprintf(stderr, "  round %d: producer status %d, consumer status %d\n", round, sp, sc);
    }
    pump(&rd, &c, &rs, -1); /* the rest, up to end of file */
    CHECK(rd.eof);
    close(fds[0]);
    /* The consumer died between a get and the report of its ack: that ack
    ** may or may not have happened. */
    if (rs.cons_last_was_got && rs.last_got >= 0) item_at(rs.last_got)->ack_unknown = 1;
    /* The producer's next put may have committed without a report. */
    item_at(rs.last_ok + 1)->maybe = 1;
    /* Every message delivered this round was either put for sure or was
    ** the unknown put of some round up to this one. */
    for (int64_t q = 0; q <= rs.max_seq && q < g_cap; q++) {
      item *x = &g_items[q];
      if (x->got_round == round && !x->put_ok && !x->maybe) c.unexplained++;
    }
    next_seq = (rs.max_seq > rs.last_ok + 1 ? rs.max_seq : rs.last_ok + 1) + 1;
    atomic_fetch_add(g_clock, LEASE_MS + 1); /* every lease is over now */
  }

  /* Drain what is left with a handle of our own. */
  atomic_fetch_add(g_clock, LEASE_MS + 1);
  mq_store *s = NULL;
  CHECK_OK(tu_open_ex(g_path, MQ_SYNC_FULL, MQ_OPEN_CREATE, tu_shared_clock, (void *)g_clock, &s));
  if (!s) return;
  for (int64_t i = 0; i <= next_seq + 10; i++) {
    mq_msg *m = NULL;
    int rc = mq_get(s, "q", NULL, &m);
    if (rc == MQ_EMPTY) break;
    CHECK_RC(rc, MQ_OK);
    if (rc != MQ_OK) break;
    int64_t seq = check_payload(m);
    item *x = item_at(seq);
    if (!x) {
      c.bad_data++;
    } else {
      bind_id(&c, x, mq_msg_id(m));
      if (x->acked) c.acked_redelivered++;
      if (x->drained) c.double_lease++;
      if (!x->put_ok && !x->maybe) c.unexplained++;
      x->drained = 1;
      c.drained++;
    }
    CHECK_OK(mq_ack(s, "q", mq_msg_receipt(m)));
    mq_msg_free(m);
  }
  CHECK_STATS(s, "q", 0, 0, 0, 0, 0);
  int64_t problems = -1;
  CHECK_OK(mq_store_verify(s, NULL, NULL, &problems));
  CHECK(problems == 0);
  CHECK_OK(mq_store_close(s));

  /* No acknowledged put lost. */
  for (int64_t q = 0; q < next_seq && q < g_cap; q++) {
    item *x = &g_items[q];
    if (x->put_ok && !x->acked && !x->drained && !x->ack_unknown) {
      if (c.lost++ < 5) fprintf(stderr, "  lost: seq %lld id %lld\n", (long long)q, (long long)x->id);
    }
  }
  /* No id names two different payloads. */
  int64_t n_ids = 0;
  int64_t *ids = malloc((size_t)(next_seq + 1) * sizeof *ids);
  for (int64_t q = 0; ids && q < next_seq && q < g_cap; q++)
    if (g_items[q].id) ids[n_ids++] = g_items[q].id;
  int same_id = 0;
  if (ids) {
    qsort(ids, (size_t)n_ids, sizeof *ids, cmp_i64);
    for (int64_t i = 1; i < n_ids; i++) same_id += ids[i] == ids[i - 1];
  }
  free(ids);

  /* How often the uncertain cases happened (for the log; both outcomes are
  ** correct). */
  int unknown_put_found = 0, ack_unknown = 0;
  for (int64_t q = 0; q < next_seq && q < g_cap; q++) {
    item *x = &g_items[q];
    if (x->maybe && !x->put_ok && (x->got_round >= 0 || x->drained)) unknown_put_found++;
    if (x->ack_unknown && !x->acked && !x->drained) ack_unknown++;
  }
  fprintf(stderr, "  unknown puts that did commit %d, acks of unknown outcome that did %d\n",
          unknown_put_found, ack_unknown);

  char ic[64];
  tu_sql_text(g_path, "PRAGMA integrity_check", ic, sizeof ic);
  fprintf(stderr,
          "  %d rounds: %d puts ok, %d gets, %d acks ok, %d drained; lost %d, "
          "acked then delivered %d, double leases %d, stale %d, errors %d, bad data %d, "
          "payload under two ids %d, id reused %d, unexplained %d, integrity %s\n",
          rounds, c.put_ok, c.got, c.ack_ok, c.drained, c.lost, c.acked_redelivered,
          c.double_lease, c.stale, c.errors, c.bad_data, c.id_conflict, same_id,
          c.unexplained, ic);
  CHECK(c.lost == 0);
  CHECK(c.acked_redelivered == 0);
  CHECK(c.double_lease == 0);
  CHECK(c.stale == 0);
  CHECK(c.errors == 0);
  CHECK(c.bad_data == 0);
  CHECK(c.id_conflict == 0);
  CHECK(same_id == 0);
  CHECK(c.unexplained == 0);
  CHECK(c.ack_without_get == 0);
  CHECK(odd_exit == 0);
  CHECK(strcmp(ic, "ok") == 0);
  /* The test proves nothing unless work got done between the kills. */
  CHECK(c.put_ok > 100);
  CHECK(c.ack_ok > 50);
  free(g_items);
  test_unlink_store(g_path);
}

int main(void) {
  tu_watchdog(120); /* a hang (e.g. a lock left by a killed process) fails */
  TEST(test_kill_nine);
  return test_done();
}
