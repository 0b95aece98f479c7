/*
** testutil.h -- helpers shared by the behaviour tests of the queue core.
**
** harness.h gives CHECK and the injected clock; this file adds what several
** behaviour tests need on top of it: short put/get/stats wrappers that CHECK
** their own result codes, a snapshot of every queue's counts so a test can
** prove a failed call "changed nothing", direct SQLite access to the store
** file (to corrupt it, read its schema version, or run integrity_check as a
** user with `sqlite3 queue.db` would), a clock that lives in shared memory so
** forked children follow the parent's moves of time, and fixed-size records
** that child processes write to a pipe.  Records are smaller than PIPE_BUF,
** so each write is atomic: a child killed with SIGKILL leaves either a whole
** record or none, never half of one, which is what lets the crash test trust
** what it reads.
**
** Everything here is static inline, so a test program that uses only part of
** it still builds warning-free.  Real time (tu_mono_ms) is used only to bound
** loops and to pick kill points, never to assert that something was fast.
*/
#ifndef MQ_TEST_TESTUTIL_H
#define MQ_TEST_TESTUTIL_H

#include <poll.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>

#include "harness.h"

/* Monotonic real time in milliseconds, for deadlines that bound loops. */
static inline int64_t tu_mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void tu_sleep_ms(int64_t ms) {
  struct timespec ts;
  ts.tv_sec = (time_t)(ms / 1000);
  ts.tv_nsec = (long)(ms % 1000) * 1000000L;
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* The options every test opens with: the injected clock, no free-space
** floor; a test that needs one more field (page_size, busy_timeout_ms)
** sets it after this. */
static inline void tu_options(mq_store_options *o, int sync) {
  mq_store_options_init(o);
  o->sync = sync;
  o->clock = test_clock;
  o->min_free_bytes = 0;
}

/* Open a store with the given clock; returns the result code. */
static inline int tu_open_ex(const char *path, int sync, int flags,
                             mq_clock_fn clock, void *ctx, mq_store **out) {
  mq_store_options o;
  tu_options(&o, sync);
  o.flags = flags;
  o.clock = clock;
  o.clock_ctx = ctx;
  return mq_store_open(path, &o, out);
}

static inline void tu_print_problem(void *ctx, const char *problem) {
  (void)ctx;
  fprintf(stderr, "  verify: %s\n", problem);
}

/* mq_store_verify finds nothing wrong (and prints what it finds). */
#define CHECK_VERIFY_CLEAN(s)                                           \
  do {                                                                  \
    int64_t problems_ = -1;                                             \
    CHECK_OK(mq_store_verify((s), tu_print_problem, NULL, &problems_)); \
    CHECK(problems_ == 0);                                              \
  } while (0)

/* Create a queue with the defaults except visibility, max_receives and dlq. */
static inline void tu_create(mq_store *s, const char *q, int64_t visibility_ms,
                             int max_receives, const char *dlq) {
  mq_queue_options o;
  mq_queue_options_init(&o);
  if (visibility_ms) o.visibility_ms = visibility_ms;
  o.max_receives = max_receives;
  o.dlq = dlq;
  CHECK_OK(mq_queue_create(s, q, &o));
}

/* Put a string payload (without its NUL); returns the id or -1. */
static inline int64_t tu_put(mq_store *s, const char *q, const char *text) {
  int64_t id = -1;
  int rc = mq_put(s, q, text, strlen(text), NULL, &id);
  CHECK_RC(rc, MQ_OK);
  return rc == MQ_OK ? id : -1;
}

static inline int64_t tu_put_opts(mq_store *s, const char *q, const char *text,
                                  const mq_put_options *po) {
  int64_t id = -1;
  int rc = mq_put(s, q, text, strlen(text), po, &id);
  CHECK_RC(rc, MQ_OK);
  return rc == MQ_OK ? id : -1;
}

/* Get with the queue's visibility and no wait.  NULL when the queue is
** empty; any code other than MQ_OK and MQ_EMPTY fails the check. */
static inline mq_msg *tu_get(mq_store *s, const char *q) {
  mq_msg *m = (mq_msg *)&test_failures; /* a sentinel the call must reset */
  int rc = mq_get(s, q, NULL, &m);
  CHECK(rc == MQ_OK || rc == MQ_EMPTY);
  if (rc != MQ_OK) {
    CHECK(m == NULL);
    if (rc != MQ_EMPTY)
      fprintf(stderr, "  tu_get(%s): %s: %s\n", q, mq_errstr(rc), mq_errmsg(s));
    return NULL;
  }
  CHECK(m != NULL);
  return m;
}

/* Get with a per-call visibility. */
static inline mq_msg *tu_get_vis(mq_store *s, const char *q, int64_t vis) {
  mq_get_options go;
  mq_msg *m = NULL;
  mq_get_options_init(&go);
  go.visibility_ms = vis;
  int rc = mq_get(s, q, &go, &m);
  CHECK(rc == MQ_OK || rc == MQ_EMPTY);
  return rc == MQ_OK ? m : NULL;
}

/* True when the message's payload is exactly text (without its NUL). */
static inline int tu_msg_is(const mq_msg *m, const char *text) {
  size_t n = strlen(text);
  return m && mq_msg_size(m) == n && memcmp(mq_msg_data(m), text, n) == 0;
}

static inline mq_queue_stats tu_stats(mq_store *s, const char *q) {
  mq_queue_stats st;
  memset(&st, 0x5a, sizeof st);
  CHECK_OK(mq_queue_stats_get(s, q, &st));
  return st;
}

static inline int tu_stats_eq(const mq_queue_stats *a, const mq_queue_stats *b) {
  return a->ready == b->ready && a->inflight == b->inflight &&
         a->delayed == b->delayed && a->dead == b->dead &&
         a->total == b->total && a->oldest_age_ms == b->oldest_age_ms &&
         a->bytes == b->bytes;
}

/* Check every counter at once, printing them all when one differs. */
#define CHECK_STATS(s, q, r, i, dl, dd, t)                                     \
  do {                                                                         \
    mq_queue_stats st_ = tu_stats((s), (q));                                   \
    int ok_ = st_.ready == (r) && st_.inflight == (i) && st_.delayed == (dl) &&\
              st_.dead == (dd) && st_.total == (t);                            \
    CHECK(ok_);                                                                \
    if (!ok_)                                                                  \
      fprintf(stderr,                                                          \
              "  stats(%s): ready %lld inflight %lld delayed %lld dead %lld "  \
              "total %lld; expected %d %d %d %d %d\n",                         \
              (q), (long long)st_.ready, (long long)st_.inflight,              \
              (long long)st_.delayed, (long long)st_.dead,                     \
              (long long)st_.total, (int)(r), (int)(i), (int)(dl), (int)(dd),  \
              (int)(t));                                                       \
  } while (0)

/* Everything a user can observe about a store without changing it: the
** queue names and each queue's counts.  Used to prove "changes nothing". */
#define TU_SNAP_MAX 16
typedef struct tu_snapshot {
  size_t n;
  char names[TU_SNAP_MAX][MQ_NAME_MAX + 1];
  mq_queue_stats st[TU_SNAP_MAX];
} tu_snapshot;

static inline void tu_snap(mq_store *s, tu_snapshot *snap) {
  char **names = NULL;
  size_t n = 0;
  memset(snap, 0, sizeof *snap);
  CHECK_OK(mq_queue_list(s, &names, &n));
  CHECK(n <= TU_SNAP_MAX);
  for (size_t i = 0; i < n && i < TU_SNAP_MAX; i++) {
    snprintf(snap->names[i], sizeof snap->names[i], "%s", names[i]);
    CHECK_OK(mq_queue_stats_get(s, names[i], &snap->st[i]));
  }
  snap->n = n < TU_SNAP_MAX ? n : TU_SNAP_MAX;
  mq_list_free(names, n);
}

static inline int tu_snap_eq(const tu_snapshot *a, const tu_snapshot *b) {
  if (a->n != b->n) return 0;
  for (size_t i = 0; i < a->n; i++)
    if (strcmp(a->names[i], b->names[i]) || !tu_stats_eq(&a->st[i], &b->st[i]))
      return 0;
  return 1;
}

/* ---- Direct SQLite access to a store file (as `sqlite3 queue.db`). ---- */

static inline int tu_sql_exec(const char *path, const char *sql) {
  sqlite3 *db = NULL;
  int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL);
  if (rc == SQLITE_OK) {
    sqlite3_busy_timeout(db, 5000);
    rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
      fprintf(stderr, "  sqlite3_exec(%s): %s\n", sql, sqlite3_errmsg(db));
  }
  sqlite3_close(db);
  return rc;
}

/* The first column of the first row as an integer; -1 if no row or error. */
static inline int64_t tu_sql_int(const char *path, const char *sql) {
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;
  int64_t v = -1;
  if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK) {
    sqlite3_busy_timeout(db, 5000);
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
      if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
        v = sqlite3_column_int64(st, 0);
    } else {
      fprintf(stderr, "  prepare(%s): %s\n", sql, sqlite3_errmsg(db));
    }
    sqlite3_finalize(st);
  }
  sqlite3_close(db);
  return v;
}

/* The first column of the first row as text into buf ("" if none). */
static inline void tu_sql_text(const char *path, const char *sql, char *buf,
                               size_t cap) {
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;
  buf[0] = 0;
  if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK) {
    sqlite3_busy_timeout(db, 5000);
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
      if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
        snprintf(buf, cap, "%s", (const char *)sqlite3_column_text(st, 0));
    } else {
      fprintf(stderr, "  prepare(%s): %s\n", sql, sqlite3_errmsg(db));
    }
    sqlite3_finalize(st);
  }
  sqlite3_close(db);
}

/* Message id's stored payload is in one of two rows: its own mq_msg row
** (body_id 0: a small payload of a plain put, format version 2) or the
** mq_body row it names.  Both have the columns size, crc, codec, headers
** and data, so a SET clause or an expression over them works on either. */

/* Apply the SET clause set (?1 bound to blob when blob is not NULL) to the
** row holding message id's payload; returns the rows changed (1). */
static inline int tu_payload_set(const char *path, int64_t id, const char *set,
                                 const void *blob, int len) {
  static const char *const where[] = {
      "UPDATE mq_msg SET %s WHERE id = %lld AND body_id = 0",
      "UPDATE mq_body SET %s WHERE id = (SELECT body_id FROM mq_msg WHERE id = %lld)"};
  sqlite3 *db = NULL;
  int changed = 0;
  if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK) {
    sqlite3_busy_timeout(db, 5000);
    for (int i = 0; i < 2; i++) {
      char sql[512];
      sqlite3_stmt *st = NULL;
      snprintf(sql, sizeof sql, where[i], set, (long long)id);
      if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        fprintf(stderr, "  prepare(%s): %s\n", sql, sqlite3_errmsg(db));
        continue;
      }
      if (blob) sqlite3_bind_blob(st, 1, blob, len, SQLITE_TRANSIENT);
      if (sqlite3_step(st) == SQLITE_DONE) changed += sqlite3_changes(db);
      sqlite3_finalize(st);
    }
  }
  sqlite3_close(db);
  return changed;
}

/* The integer expression expr over message id's payload row; -1 if none. */
static inline int64_t tu_payload_int(const char *path, int64_t id, const char *expr) {
  char sql[512];
  snprintf(sql, sizeof sql,
           "SELECT CASE WHEN m.body_id = 0 THEN (SELECT %s FROM mq_msg WHERE id = m.id)"
           " ELSE (SELECT %s FROM mq_body WHERE id = m.body_id) END"
           " FROM mq_msg m WHERE m.id = %lld",
           expr, expr, (long long)id);
  return tu_sql_int(path, sql);
}

/* A malloc'd copy of message id's stored payload bytes, *len of them;
** NULL (and *len 0) if it has none. */
static inline unsigned char *tu_payload_get(const char *path, int64_t id, int *len) {
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;
  unsigned char *copy = NULL;
  *len = 0;
  if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK) {
    sqlite3_busy_timeout(db, 5000);
    if (sqlite3_prepare_v2(db,
                           "SELECT CASE WHEN m.body_id = 0 THEN m.data"
                           " ELSE (SELECT data FROM mq_body WHERE id = m.body_id) END"
                           " FROM mq_msg m WHERE m.id = ?1",
                           -1, &st, NULL) == SQLITE_OK) {
      sqlite3_bind_int64(st, 1, id);
      int n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_bytes(st, 0) : 0;
      if (n > 0 && (copy = malloc((size_t)n)) != NULL) {
        memcpy(copy, sqlite3_column_blob(st, 0), (size_t)n);
        *len = n;
      }
    }
    sqlite3_finalize(st);
  }
  sqlite3_close(db);
  return copy;
}

/* 1 if message id keeps its payload in its own row, 0 if in mq_body, -1
** if there is no such message (compare with 1 or 0, never as a truth). */
static inline int tu_payload_inline(const char *path, int64_t id) {
  char sql[96];
  snprintf(sql, sizeof sql, "SELECT body_id = 0 FROM mq_msg WHERE id = %lld", (long long)id);
  return (int)tu_sql_int(path, sql);
}

/* ---- A clock in shared memory, for forked children. ---- */

/* An int64 counter in an anonymous MAP_SHARED page: children forked after
** this call read the parent's later moves.  Starts at test_now_ms. */
static inline _Atomic int64_t *tu_shared_clock_new(void) {
  void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                 -1, 0);
  if (p == MAP_FAILED) {
    perror("mmap");
    exit(2);
  }
  _Atomic int64_t *c = (_Atomic int64_t *)p;
  atomic_store(c, test_now_ms);
  return c;
}

static inline int64_t tu_shared_clock(void *ctx) {
  return atomic_load((_Atomic int64_t *)ctx);
}

/* ---- Fixed-size reports from child processes. ---- */

typedef struct tu_rec {
  int32_t kind;  /* what completed; each test defines its kinds */
  int32_t who;   /* which child */
  int64_t id;    /* message id */
  int64_t seq;   /* the producer's sequence number carried in the payload */
  int64_t extra; /* receive count, result code, ... */
} tu_rec;

/* Write one record; a short write cannot happen below PIPE_BUF. */
static inline void tu_rec_write(int fd, int kind, int who, int64_t id,
                                int64_t seq, int64_t extra) {
  tu_rec r;
  memset(&r, 0, sizeof r);
  r.kind = kind;
  r.who = who;
  r.id = id;
  r.seq = seq;
  r.extra = extra;
  ssize_t n;
  do {
    n = write(fd, &r, sizeof r);
  } while (n < 0 && errno == EINTR);
}

/* A reader that reassembles records from a pipe (read may split them). */
typedef struct tu_reader {
  int fd;
  unsigned char buf[sizeof(tu_rec) * 256];
  size_t have;
  size_t pos;
  int eof;
} tu_reader;

static inline void tu_reader_init(tu_reader *r, int fd) {
  memset(r, 0, sizeof *r);
  r->fd = fd;
}

/* Wait up to timeout_ms for data, read what is there.  Returns the number of
** whole records now buffered; sets eof when every writer has gone. */
static inline size_t tu_reader_fill(tu_reader *r, int timeout_ms) {
  if (r->pos) {
    memmove(r->buf, r->buf + r->pos, r->have - r->pos);
    r->have -= r->pos;
    r->pos = 0;
  }
  if (!r->eof && r->have < sizeof r->buf) {
    struct pollfd pfd = {r->fd, POLLIN, 0};
    if (poll(&pfd, 1, timeout_ms) > 0) {
      ssize_t n = read(r->fd, r->buf + r->have, sizeof r->buf - r->have);
      if (n == 0) r->eof = 1;
      if (n > 0) r->have += (size_t)n;
    }
  }
  return (r->have - r->pos) / sizeof(tu_rec);
}

static inline int tu_reader_next(tu_reader *r, tu_rec *out) {
  if (r->have - r->pos < sizeof(tu_rec)) return 0;
  memcpy(out, r->buf + r->pos, sizeof *out);
  r->pos += sizeof *out;
  return 1;
}

/* In a freshly forked child: die with the parent, so a failed test leaves
** no process behind. */
static inline void tu_child_setup(void) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() == 1) _exit(3);
}

/* Reap a child; returns its exit status, or 128+signal. */
static inline int tu_wait(pid_t pid) {
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(st)) return WEXITSTATUS(st);
  if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
  return -1;
}

/* A watchdog for tests with child processes: if the test is still running
** after seconds, say so and fail (a hang must fail, not stall CI).  Children
** set up with tu_child_setup die with the parent. */
static inline void tu_watchdog_fire(int sig) {
  static const char msg[] = "watchdog: the test hung (a lock or wait that never ends?)\n";
  (void)sig;
  ssize_t n = write(2, msg, sizeof msg - 1);
  (void)n;
  _exit(99);
}

static inline void tu_watchdog(unsigned seconds) {
  signal(SIGALRM, tu_watchdog_fire);
  alarm(seconds);
}

/* A small deterministic PRNG (xorshift), so runs can be replayed by seed. */
static inline uint64_t tu_rand(uint64_t *state) {
  uint64_t x = *state ? *state : 0x9e3779b97f4a7c15ULL;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  *state = x;
  return x;
}

/* The last path component, for checking that an error message names a file. */
static inline const char *tu_basename(const char *path) {
  const char *s = strrchr(path, '/');
  return s ? s + 1 : path;
}

#endif /* MQ_TEST_TESTUTIL_H */
