/*
** test_topic_crash.c -- kill -9 a publisher of a topic with 50
** subscriptions at random points: every publish must end up in all the
** subscriptions it matched, or in none.
**
** mq promises that a publish stores its payload once and one delivery row
** per matching subscription in a single transaction, so a crash can never
** leave a message in some subscriptions and not in others, nor a payload
** whose reference count disagrees with the rows that share it.  This test
** tries hard to catch it doing otherwise.  Each round forks a publisher and
** a consumer on one store and SIGKILLs both at random moments (the random
** delays only choose kill points; nothing is timed).  The publisher sends
** single publishes and batches of up to BATCH_MAX, each payload carrying a
** unique sequence number and its subject "crash.even.<seq>" or
** "crash.odd.<seq>".  The topic has 50 subscriptions: c00..c04 are drained
** by the consumer while the rounds run (so acks, and the reference count
** going down, are also killed half-way), a05..a39 are never touched until
** the end, and e40..e49 take only "crash.even.*" -- an odd publish must
** reach 40 subscriptions, an even one all 50.
**
** Each child writes a fixed-size record to a pipe right after every call
** returns, before doing anything else (a record is below PIPE_BUF, so a
** killed child leaves whole records only): TRY before a publish (its first
** seq and size), PUB_OK per entry once the publish returned MQ_OK (with the
** publish id and the delivery count), GOT and ACK_OK for the consumer.  The
** last TRY of a round without its PUB_OKs is "maybe": it may or may not have
** committed, but whichever it did, it did for every subscription and every
** entry of its batch.  Time is an injected clock in shared memory, frozen
** within a round and moved past every lease between rounds.
**
** At the end the parent scans all 50 subscriptions (mq_queue_scan) and
** checks, per seq: present-or-acked in every matching subscription or in
** none (an ack whose outcome is unknown may account for one gap), never in
** a subscription whose filter does not match, never twice in one; every
** reported publish is there; nothing appears that was neither reported nor
** maybe; a batch is all there or all gone; an acked delivery never comes
** back.  Then, through SQLite itself: every payload is referenced by
** exactly 35 rows of the a-subscriptions and carries the subject and id
** that were reported; mq_store_verify (reference counts = rows) is MQ_OK and
** PRAGMA integrity_check is "ok".  Finally everything is purged or acked and
** no payload may remain.  Bounded by ROUNDS, ROUND_BUDGET_MS and an alarm().
*/
#include "testutil.h"

#define NSUBS 50
#define NCONSUMED 5 /* c00..c04: read and acked during the rounds */
#define NEVEN 10    /* e40..e49: filter "crash.even.*" */
#define NPLAIN (NSUBS - NCONSUMED - NEVEN) /* a05..a39 */
#define BATCH_MAX 8
#define ROUNDS 150
#define ROUND_BUDGET_MS 15000
#define LEASE_MS 60000
#define EVEN_FILTER "crash.even.*"

enum { R_TRY = 1, R_PUB_OK, R_GOT, R_ACK_OK, R_ERR };
#define ERR_BAD_DATA 1000

static const char *g_path;
static _Atomic int64_t *g_clock;

static void sub_name(int i, char *buf, size_t cap) {
  snprintf(buf, cap, "%c%02d", i < NCONSUMED ? 'c' : i < NCONSUMED + NPLAIN ? 'a' : 'e', i);
}

static void sub_path(int i, char *buf, size_t cap) {
  char n[16];
  sub_name(i, n, sizeof n);
  snprintf(buf, cap, "t/%s", n);
}

/* The subscriptions a publish of seq must reach, one bit each. */
static uint64_t expected_mask(int64_t seq) {
  uint64_t all = (UINT64_C(1) << NSUBS) - 1;
  uint64_t even_subs = ((UINT64_C(1) << NEVEN) - 1) << (NCONSUMED + NPLAIN);
  return seq % 2 == 0 ? all : all & ~even_subs;
}

static int expected_count(int64_t seq) { return seq % 2 == 0 ? NSUBS : NSUBS - NEVEN; }

static void make_subject(int64_t seq, char *buf, size_t cap) {
  snprintf(buf, cap, "crash.%s.%lld", seq % 2 == 0 ? "even" : "odd", (long long)seq);
}

/* The payload of seq: its number, then filler derived from it, so a reader
** can tell a damaged or mixed-up payload from the real one. */
static size_t make_payload(int64_t seq, char *buf, size_t cap) {
  int n = snprintf(buf, cap, "seq=%lld;", (long long)seq);
  size_t len = (size_t)n + (size_t)((seq * 7919) % 600);
  if (len > cap) len = cap;
  for (size_t i = (size_t)n; i < len; i++) buf[i] = (char)('a' + (seq + (int64_t)i) % 26);
  return len;
}

/* The seq a message carries, or -1 if its payload or subject is not exactly
** what the publisher produced for that seq. */
static int64_t check_msg(const mq_msg *m) {
  char want[1024], head[32], subj[48];
  long long seq = -1;
  size_t n = mq_msg_size(m);
  size_t hn = n < sizeof head - 1 ? n : sizeof head - 1;
  memcpy(head, mq_msg_data(m), hn);
  head[hn] = 0;
  if (sscanf(head, "seq=%lld;", &seq) != 1 || seq < 0) return -1;
  size_t len = make_payload(seq, want, sizeof want);
  if (len != n || memcmp(want, mq_msg_data(m), n) != 0) return -1;
  make_subject(seq, subj, sizeof subj);
  if (!mq_msg_subject(m) || strcmp(mq_msg_subject(m), subj) != 0) return -1;
  return seq;
}

static mq_store *child_open(int sync) {
  mq_store *s = NULL;
  int rc = tu_open_ex(g_path, sync, MQ_OPEN_CREATE, tu_shared_clock, (void *)g_clock, &s);
  if (rc != MQ_OK) _exit(5);
  return s;
}

static void run_publisher(int fd, int sync, int64_t base, uint64_t rng) {
  mq_store *s = child_open(sync);
  static char bufs[BATCH_MAX][1024];
  char subj[BATCH_MAX][48];
  mq_pub_entry e[BATCH_MAX];
  int64_t ids[BATCH_MAX];
  int64_t seq = base;
  for (int iter = 0; iter < 100000; iter++) {
    int n = tu_rand(&rng) % 3 == 0 ? 1 + (int)(tu_rand(&rng) % BATCH_MAX) : 1;
    for (int k = 0; k < n; k++) {
      make_subject(seq + k, subj[k], sizeof subj[k]);
      e[k].subject = subj[k];
      e[k].data = bufs[k];
      e[k].len = make_payload(seq + k, bufs[k], sizeof bufs[k]);
      e[k].opts = NULL;
    }
    tu_rec_write(fd, R_TRY, 0, n, seq, 0);
    int64_t delivered = -1;
    int rc = n == 1 ? mq_publish(s, "t", e[0].subject, e[0].data, e[0].len, NULL, &ids[0],
                                 &delivered)
                    : mq_publish_batch(s, "t", e, (size_t)n, ids, &delivered);
    if (rc != MQ_OK) {
      /* The outcome is not known; stop, so the unknown publish stays last. */
      tu_rec_write(fd, R_ERR, 0, 0, seq, rc);
      break;
    }
    for (int k = 0; k < n; k++) tu_rec_write(fd, R_PUB_OK, 0, ids[k], seq + k, delivered);
    seq += n;
  }
  mq_store_close(s);
}

static void run_consumer(int fd, int sync) {
  mq_store *s = child_open(sync);
  mq_get_options go;
  mq_get_options_init(&go);
  go.visibility_ms = LEASE_MS;
  char q[NCONSUMED][32];
  for (int i = 0; i < NCONSUMED; i++) sub_path(i, q[i], sizeof q[i]);
  int idle = 0;
  for (int i = 0; i < 2000000; i++) {
    int sub = i % NCONSUMED;
    mq_msg *m = NULL;
    int rc = mq_get(s, q[sub], &go, &m);
    if (rc == MQ_EMPTY) {
      if (++idle >= NCONSUMED) { /* all five empty: let the publisher run */
        tu_sleep_ms(1);
        idle = 0;
      }
      continue;
    }
    idle = 0;
    if (rc != MQ_OK) {
      tu_rec_write(fd, R_ERR, 1, 0, -1, rc);
      break;
    }
    int64_t seq = check_msg(m);
    tu_rec_write(fd, R_GOT, sub, mq_msg_id(m), seq, mq_msg_receives(m));
    if (seq < 0) tu_rec_write(fd, R_ERR, 1, mq_msg_id(m), seq, ERR_BAD_DATA);
    rc = mq_ack(s, q[sub], mq_msg_receipt(m));
    if (rc == MQ_OK) tu_rec_write(fd, R_ACK_OK, sub, mq_msg_id(m), seq, 0);
    else tu_rec_write(fd, R_ERR, 1, mq_msg_id(m), seq, rc);
    mq_msg_free(m);
    if (rc != MQ_OK) break;
  }
  mq_store_close(s);
}

/* What the parent knows about one seq. */
typedef struct item {
  uint64_t present; /* subscriptions holding it at the end (scan) */
  uint64_t acked;   /* subscriptions where an ack of it returned MQ_OK */
  uint64_t unknown; /* subscriptions where its ack may or may not have happened */
  int64_t pub_id;   /* publish id reported by PUB_OK, 0 if none */
  int64_t msg_id[NCONSUMED];
  int got_round[NCONSUMED]; /* last round a consumer got it there, or -1 */
  int64_t try_first;        /* first seq of the publish call it was in */
  int try_n;                /* entries of that call, 0 if no TRY named it */
  unsigned reported : 1;
  unsigned maybe : 1;
} item;

static item *g_items;
static int64_t g_cap;

static item *item_at(int64_t seq) {
  if (seq < 0 || seq > 50000000) return NULL;
  while (seq >= g_cap) {
    int64_t ncap = g_cap ? g_cap * 2 : 65536;
    item *n = realloc(g_items, (size_t)ncap * sizeof *n);
    if (!n) {
      perror("realloc");
      exit(2);
    }
    memset(n + g_cap, 0, (size_t)(ncap - g_cap) * sizeof *n);
    for (int64_t i = g_cap; i < ncap; i++)
      for (int k = 0; k < NCONSUMED; k++) n[i].got_round[k] = -1;
    g_items = n;
    g_cap = ncap;
  }
  return &g_items[seq];
}

typedef struct counts {
  int tries, pub_ok, got, ack_ok, errors, bad_data, bad_delivered, double_lease,
      acked_redelivered, ack_without_get, id_conflict, duplicate, lost, partial,
      wrong_sub, unexplained, acked_present, torn_batch, present_total;
} counts;

static counts g_c;

/* mq_queue_scan callback: mark the message's seq present in one subscription. */
typedef struct scan_ctx {
  int sub;
} scan_ctx;

static int scan_one(void *ctx, const mq_msg *m, int state) {
  (void)state;
  scan_ctx *sc = ctx;
  int64_t seq = check_msg(m);
  item *x = item_at(seq);
  if (!x) {
    g_c.bad_data++;
    return 0;
  }
  uint64_t bit = UINT64_C(1) << sc->sub;
  if (x->present & bit) g_c.duplicate++;
  x->present |= bit;
  g_c.present_total++;
  return 0;
}

static void verify_problem(void *ctx, const char *problem) {
  int *n = ctx;
  if ((*n)++ < 5) fprintf(stderr, "  verify: %s\n", problem);
}

static void setup_store(void) {
  mq_store *s = NULL;
  CHECK_OK(tu_open_ex(g_path, MQ_SYNC_FULL, MQ_OPEN_CREATE, tu_shared_clock, (void *)g_clock, &s));
  if (!s) exit(2);
  mq_queue_options qo;
  mq_queue_options_init(&qo);
  qo.visibility_ms = LEASE_MS;
  CHECK_OK(mq_topic_create(s, "t", NULL));
  for (int i = 0; i < NSUBS; i++) {
    char n[16];
    sub_name(i, n, sizeof n);
    CHECK_OK(mq_subscription_create(s, "t", n, i >= NCONSUMED + NPLAIN ? EVEN_FILTER : NULL, &qo));
  }
  CHECK_OK(mq_store_close(s));
}

/* Read one round's reports; returns the seq the next round starts at. */
static int64_t read_round(int fd, int round, int64_t base) {
  tu_reader rd;
  tu_reader_init(&rd, fd);
  int64_t next = base, last_try = -1;
  int last_try_n = 0, last_try_done = 1, cons_last_got_sub = -1;
  int64_t cons_last_got_seq = -1;
  for (int spins = 0; !rd.eof && spins < 100000; spins++) {
    tu_reader_fill(&rd, 1000);
    tu_rec r;
    while (tu_reader_next(&rd, &r)) {
      item *x = item_at(r.seq);
      switch (r.kind) {
        case R_TRY:
          g_c.tries++;
          last_try = r.seq;
          last_try_n = (int)r.id;
          last_try_done = 0;
          if (r.seq + r.id > next) next = r.seq + r.id;
          for (int64_t k = 0; k < r.id; k++) {
            item *y = item_at(r.seq + k);
            if (!y) continue;
            y->try_first = r.seq;
            y->try_n = (int)r.id;
          }
          break;
        case R_PUB_OK: {
          g_c.pub_ok++;
          if (!x || x->try_n == 0) {
            g_c.bad_data++;
            break;
          }
          if (x->reported) g_c.id_conflict++;
          x->reported = 1;
          x->pub_id = r.id;
          if (r.id <= 0) g_c.id_conflict++;
          int64_t want = 0;
          for (int64_t k = 0; k < x->try_n; k++) want += expected_count(x->try_first + k);
          if (r.extra != want) {
            if (g_c.bad_delivered++ < 5)
              fprintf(stderr, "  seq %lld: delivered %lld, expected %lld\n", (long long)r.seq,
                      (long long)r.extra, (long long)want);
          }
          if (r.seq == x->try_first + x->try_n - 1 && x->try_first == last_try) last_try_done = 1;
          break;
        }
        case R_GOT:
          g_c.got++;
          cons_last_got_sub = r.who;
          cons_last_got_seq = r.seq;
          if (!x || r.who < 0 || r.who >= NCONSUMED) {
            g_c.bad_data++;
            cons_last_got_sub = -1;
            break;
          }
          if (x->acked & (UINT64_C(1) << r.who)) g_c.acked_redelivered++;
          if (x->got_round[r.who] == round) g_c.double_lease++; /* no lease ended */
          if (x->msg_id[r.who] && x->msg_id[r.who] != r.id) g_c.id_conflict++;
          x->msg_id[r.who] = r.id;
          x->got_round[r.who] = round;
          break;
        case R_ACK_OK:
          g_c.ack_ok++;
          cons_last_got_sub = -1;
          if (!x || r.who < 0 || r.who >= NCONSUMED || x->got_round[r.who] != round ||
              x->msg_id[r.who] != r.id) {
            g_c.ack_without_get++;
            break;
          }
          x->acked |= UINT64_C(1) << r.who;
          x->unknown &= ~(UINT64_C(1) << r.who);
          break;
        case R_ERR:
          if (r.extra == ERR_BAD_DATA) {
            g_c.bad_data++;
          } else {
            g_c.errors++;
            if (g_c.errors <= 5)
              fprintf(stderr, "  round %d: %s failed: %s\n", round,
                      r.who ? "consumer" : "publisher", mq_errstr((int)r.extra));
          }
          if (r.who == 1) cons_last_got_sub = -1;
          break;
      }
    }
  }
  /* The consumer died between a get and the report of its ack. */
  if (cons_last_got_sub >= 0) {
    item *x = item_at(cons_last_got_seq);
    if (x) x->unknown |= UINT64_C(1) << cons_last_got_sub;
  }
  /* The publisher died inside (or just after) its last publish call. */
  if (last_try >= 0 && !last_try_done)
    for (int k = 0; k < last_try_n; k++) {
      item *x = item_at(last_try + k);
      if (x) x->maybe = 1;
    }
  return next;
}

/* Acks or purges everything left; no payload may survive. */
static void empty_everything(mq_store *s) {
  char q[32];
  for (int i = NCONSUMED; i < NSUBS; i++) {
    sub_path(i, q, sizeof q);
    CHECK_OK(mq_queue_purge(s, q, NULL));
  }
  for (int i = 0; i < NCONSUMED; i++) {
    sub_path(i, q, sizeof q);
    for (int b = 0; b < 100000; b++) {
      mq_msg *m[100];
      const char *receipts[100];
      size_t n = 0;
      int rc = mq_get_batch(s, q, NULL, 100, m, &n);
      if (rc == MQ_EMPTY) break;
      CHECK_OK(rc);
      if (rc != MQ_OK) break;
      for (size_t k = 0; k < n; k++) receipts[k] = mq_msg_receipt(m[k]);
      CHECK_OK(mq_ack_batch(s, q, receipts, n, NULL));
      for (size_t k = 0; k < n; k++) mq_msg_free(m[k]);
    }
  }
}

static void test_all_or_none(void) {
  g_path = test_path("topic-crash");
  g_clock = tu_shared_clock_new();
  setup_store();
  uint64_t rng = (uint64_t)getpid() * 2654435761u + (uint64_t)tu_mono_ms();
  fprintf(stderr, "  seed %llu\n", (unsigned long long)rng);
  int64_t next_seq = 0, t_start = tu_mono_ms();
  int rounds = 0, odd_exit = 0;

  for (int round = 0; round < ROUNDS && tu_mono_ms() - t_start < ROUND_BUDGET_MS; round++) {
    rounds++;
    int sync = round % 2 ? MQ_SYNC_NORMAL : MQ_SYNC_FULL;
    int fds[2];
    CHECK(pipe(fds) == 0);
    uint64_t child_rng = tu_rand(&rng);
    fflush(NULL);
    pid_t pub = fork();
    if (pub == 0) {
      tu_child_setup();
      close(fds[0]);
      run_publisher(fds[1], sync, next_seq, child_rng);
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
    CHECK(pub > 0 && cons > 0);

    /* Kill points: sometimes almost at once (during open), mostly mid-run,
    ** in either order. */
    int64_t d1 = (int64_t)(tu_rand(&rng) % 8 == 0 ? tu_rand(&rng) % 5 : 5 + tu_rand(&rng) % 150);
    int64_t d2 = (int64_t)(tu_rand(&rng) % 40);
    int cons_first = (int)(tu_rand(&rng) % 2);
    tu_sleep_ms(d1);
    kill(cons_first ? cons : pub, SIGKILL);
    tu_sleep_ms(d2);
    kill(cons_first ? pub : cons, SIGKILL);
    int sp = tu_wait(pub), sc = tu_wait(cons);
    if (sp != 128 + SIGKILL || sc != 128 + SIGKILL) {
      odd_exit++;
      fprintf(stderr, "  round %d: publisher status %d, consumer status %d\n", round, sp, sc);
    }
    next_seq = read_round(fds[0], round, next_seq);
    close(fds[0]);
    atomic_fetch_add(g_clock, LEASE_MS + 1); /* every lease is over now */
  }

  /* Look at every subscription with a handle of our own. */
  mq_store *s = NULL;
  CHECK_OK(tu_open_ex(g_path, MQ_SYNC_FULL, MQ_OPEN_CREATE, tu_shared_clock, (void *)g_clock, &s));
  if (!s) return;
  for (int i = 0; i < NSUBS; i++) {
    char q[32];
    int64_t corrupt = -1;
    scan_ctx sc = {i};
    sub_path(i, q, sizeof q);
    CHECK_OK(mq_queue_scan(s, q, scan_one, &sc, &corrupt));
    CHECK(corrupt == 0);
  }

  int64_t reported = 0, maybe_committed = 0;
  for (int64_t seq = 0; seq < next_seq && seq < g_cap; seq++) {
    item *x = &g_items[seq];
    uint64_t want = expected_mask(seq), have = x->present | x->acked;
    if (x->present & x->acked) g_c.acked_present++;
    if (have & ~want) g_c.wrong_sub++;
    if (x->reported) reported++;
    if (have == 0) {
      if (x->reported && g_c.lost++ < 5) fprintf(stderr, "  lost: seq %lld\n", (long long)seq);
      continue;
    }
    if (!x->reported) maybe_committed++;
    if (((have | x->unknown) & want) != want && g_c.partial++ < 5)
      fprintf(stderr, "  seq %lld in %d of %d subscriptions\n", (long long)seq,
              __builtin_popcountll(have & want), expected_count(seq));
    if (!x->reported && !x->maybe) g_c.unexplained++;
    /* A batch is one transaction: all of its entries or none. */
    if (x->try_n > 1 && seq == x->try_first)
      for (int64_t k = 1; k < x->try_n; k++) {
        item *y = item_at(seq + k);
        if (y && (y->present | y->acked) == 0) {
          g_c.torn_batch++;
          break;
        }
      }
  }
  for (int64_t seq = 0; seq < next_seq && seq < g_cap; seq++) {
    item *x = &g_items[seq];
    if (x->try_n > 1 && seq == x->try_first && (x->present | x->acked) == 0)
      for (int64_t k = 1; k < x->try_n; k++) {
        item *y = item_at(seq + k);
        if (y && (y->present | y->acked) != 0) {
          g_c.torn_batch++;
          break;
        }
      }
  }

  /* The same, seen through SQLite: each payload is shared by exactly the 35
  ** a-subscriptions (never consumed), and is the one that was reported. */
  char sql[300];
  snprintf(sql, sizeof sql,
           "SELECT count(*) FROM (SELECT m.body_id, count(*) c FROM mq_msg m"
           " JOIN mq_queue q ON q.id = m.queue_id WHERE q.name LIKE 't/a%%'"
           " GROUP BY m.body_id) WHERE c != %d",
           NPLAIN);
  CHECK(tu_sql_int(g_path, sql) == 0);
  CHECK(tu_sql_int(g_path,
                   "SELECT count(*) FROM mq_body WHERE id NOT IN (SELECT m.body_id FROM mq_msg m"
                   " JOIN mq_queue q ON q.id = m.queue_id WHERE q.name LIKE 't/a%')") == 0);
  int64_t bodies = tu_sql_int(g_path, "SELECT count(*) FROM mq_body");
  CHECK(bodies == reported + maybe_committed);
  int id_mismatch = 0;
  {
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    CHECK(sqlite3_open_v2(g_path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK);
    CHECK(sqlite3_prepare_v2(db, "SELECT subject, refs FROM mq_body WHERE id = ?1", -1, &st,
                             NULL) == SQLITE_OK);
    for (int64_t seq = 0; st && seq < next_seq && seq < g_cap; seq++) {
      item *x = &g_items[seq];
      if (!x->reported) continue;
      char subj[48];
      make_subject(seq, subj, sizeof subj);
      sqlite3_bind_int64(st, 1, x->pub_id);
      int ok = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0) &&
               strcmp((const char *)sqlite3_column_text(st, 0), subj) == 0 &&
               sqlite3_column_int64(st, 1) == __builtin_popcountll(x->present);
      sqlite3_reset(st);
      if (!ok && id_mismatch++ < 5)
        fprintf(stderr, "  seq %lld: payload %lld is not its publish\n", (long long)seq,
                (long long)x->pub_id);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
  }
  int problems = 0;
  int64_t nproblems = -1;
  CHECK_OK(mq_store_verify(s, verify_problem, &problems, &nproblems));
  CHECK(nproblems == 0 && problems == 0);
  char ic[64];
  tu_sql_text(g_path, "PRAGMA integrity_check", ic, sizeof ic);

  fprintf(stderr,
          "  %d rounds: %d publish calls, %d publishes ok (%lld committed unreported), "
          "%d gets, %d acks; %d deliveries left, %lld payloads; lost %d, partial %d, "
          "wrong subscription %d, duplicates %d, torn batches %d, acked yet present %d, "
          "acked then delivered %d, double leases %d, unexplained %d, bad data %d, "
          "bad delivered %d, id conflicts %d/%d, errors %d, integrity %s\n",
          rounds, g_c.tries, g_c.pub_ok, (long long)maybe_committed, g_c.got, g_c.ack_ok,
          g_c.present_total, (long long)bodies, g_c.lost, g_c.partial, g_c.wrong_sub,
          g_c.duplicate, g_c.torn_batch, g_c.acked_present, g_c.acked_redelivered,
          g_c.double_lease, g_c.unexplained, g_c.bad_data, g_c.bad_delivered, g_c.id_conflict,
          id_mismatch, g_c.errors, ic);
  CHECK(g_c.lost == 0);
  CHECK(g_c.partial == 0);
  CHECK(g_c.wrong_sub == 0);
  CHECK(g_c.duplicate == 0);
  CHECK(g_c.torn_batch == 0);
  CHECK(g_c.acked_present == 0);
  CHECK(g_c.acked_redelivered == 0);
  CHECK(g_c.double_lease == 0);
  CHECK(g_c.unexplained == 0);
  CHECK(g_c.bad_data == 0);
  CHECK(g_c.bad_delivered == 0);
  CHECK(g_c.id_conflict == 0);
  CHECK(g_c.ack_without_get == 0);
  CHECK(id_mismatch == 0);
  CHECK(g_c.errors == 0);
  CHECK(odd_exit == 0);
  CHECK(strcmp(ic, "ok") == 0);
  /* The test proves nothing unless work got done between the kills. */
  CHECK(g_c.pub_ok > 200);
  CHECK(g_c.ack_ok > 50);
  CHECK(rounds >= 10);

  /* The last ack or purge of each payload frees it: nothing may leak. */
  empty_everything(s);
  CHECK(tu_sql_int(g_path, "SELECT count(*) FROM mq_msg") == 0);
  CHECK(tu_sql_int(g_path, "SELECT count(*) FROM mq_body") == 0);
  mq_topic_stats ts;
  CHECK_OK(mq_topic_stats_get(s, "t", &ts));
  CHECK(ts.subscriptions == NSUBS && ts.messages == 0 && ts.payloads == 0);
  CHECK_OK(mq_store_verify(s, verify_problem, &problems, &nproblems));
  CHECK_OK(mq_store_close(s));
  free(g_items);
  test_unlink_store(g_path);
}

int main(void) {
  alarm(150); /* a watchdog: a hang (e.g. a lock left by a killed process) fails */
  TEST(test_all_or_none);
  return test_done();
}
