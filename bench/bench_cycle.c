/*
** bench_cycle.c -- put -> get -> ack cycles through mq, beside the same
** cycles through a raw SQLite file (rollback journal and WAL).
**
** One "op" is one message that went the whole way: put, leased by a get,
** deleted by an ack.  The matrix is threads {1, 4} x sync {FULL, NORMAL} x
** {one message per call, batches of 100} x payload {100 B, 4 KiB}, plus a
** put-only row per sync mode (batches of 100, no consumer).
**
** A repetition gives mq and both baselines a fresh file each and their
** threads, all at once, and lets them take turns in --slices short slices
** (bench_pool_run), starting with a different system in each slice, until
** each has run for --secs.  A burst of load from a neighbour therefore
** lands on all three alike rather than on whichever ran at that moment.
** Every configuration is repeated --reps times; the table shows the median
** of each system and the ratio of the medians (mq / baseline: above 1
** means mq is faster).
**
** mq's threads share one store handle, which is how the API is meant to be
** used (concurrent callers share commits); the baselines use one
** connection per thread, which is how SQLite is meant to be used.  A slice
** is timed from the moment its threads are let go until the last of them
** has finished the op it was in when time ran out, so an op that straddles
** the end is counted and timed.
*/
#include "benchlib.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CYCLE_BATCH 100
#define CYCLE_QUEUE "bench"

enum { CYCLE_MQ, CYCLE_NAIVE, CYCLE_WAL, CYCLE_NSYS };

typedef struct cycle_cfg {
  int threads;
  int batch;      /* 1 or CYCLE_BATCH */
  size_t payload; /* bytes */
  int put_only;   /* no consumer: measures the put path alone */
} cycle_cfg;

/* What the threads of one system share during one repetition. */
typedef struct cycle_ctx {
  const cycle_cfg *cfg;
  int sys;
  int sync;
  char path[1100];
  mq_store *store; /* shared by the threads (mq only) */
  const unsigned char *payload;
  atomic_int errors;
} cycle_ctx;

/* One thread's state. */
typedef struct cycle_worker {
  cycle_ctx *run;
  int64_t ops;
  int errors;
  char err[256];
  bench_raw raw;
} cycle_worker;

static void cycle_mq_fail(cycle_worker *w, const char *what, int rc) {
  if (w->errors++ == 0)
    snprintf(w->err, sizeof w->err, "%s: %s (%s)", what, mq_errstr(rc),
             mq_errmsg(w->run->store));
}

/* One message through mq, one call each. */
static void cycle_mq_single(cycle_worker *w) {
  cycle_ctx *r = w->run;
  mq_msg *m = NULL;
  int rc = mq_put(r->store, CYCLE_QUEUE, r->payload, r->cfg->payload, NULL,
                  NULL);
  if (rc != MQ_OK) {
    cycle_mq_fail(w, "mq_put", rc);
    return;
  }
  if (r->cfg->put_only) {
    w->ops++;
    return;
  }
  rc = mq_get(r->store, CYCLE_QUEUE, NULL, &m);
  if (rc == MQ_EMPTY) return; /* another thread took ours; the queue keeps
                                 one for us next time round */
  if (rc != MQ_OK) {
    cycle_mq_fail(w, "mq_get", rc);
    return;
  }
  if (mq_msg_size(m) != r->cfg->payload) cycle_mq_fail(w, "size", MQ_ERROR);
  rc = mq_ack(r->store, CYCLE_QUEUE, mq_msg_receipt(m));
  mq_msg_free(m);
  if (rc != MQ_OK) {
    cycle_mq_fail(w, "mq_ack", rc);
    return;
  }
  w->ops++;
}

/* CYCLE_BATCH messages through mq: one put_batch, get_batch, ack_batch. */
static void cycle_mq_batch(cycle_worker *w) {
  cycle_ctx *r = w->run;
  mq_entry e[CYCLE_BATCH];
  mq_msg *m[CYCLE_BATCH];
  const char *receipts[CYCLE_BATCH];
  int results[CYCLE_BATCH];
  size_t n = 0;
  for (int i = 0; i < CYCLE_BATCH; i++) {
    e[i].data = r->payload;
    e[i].len = r->cfg->payload;
    e[i].opts = NULL;
  }
  int rc = mq_put_batch(r->store, CYCLE_QUEUE, e, CYCLE_BATCH, NULL);
  if (rc != MQ_OK) {
    cycle_mq_fail(w, "mq_put_batch", rc);
    return;
  }
  if (r->cfg->put_only) {
    w->ops += CYCLE_BATCH;
    return;
  }
  rc = mq_get_batch(r->store, CYCLE_QUEUE, NULL, CYCLE_BATCH, m, &n);
  if (rc == MQ_EMPTY) return;
  if (rc != MQ_OK) {
    cycle_mq_fail(w, "mq_get_batch", rc);
    return;
  }
  for (size_t i = 0; i < n; i++) receipts[i] = mq_msg_receipt(m[i]);
  rc = mq_ack_batch(r->store, CYCLE_QUEUE, receipts, n, results);
  for (size_t i = 0; i < n; i++) mq_msg_free(m[i]);
  if (rc != MQ_OK) {
    cycle_mq_fail(w, "mq_ack_batch", rc);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    if (results[i] == MQ_OK) w->ops++;
    else cycle_mq_fail(w, "mq_ack_batch result", results[i]);
  }
}

/* One message through the naive queue: three autocommit statements. */
static void cycle_raw_single(cycle_worker *w) {
  cycle_ctx *r = w->run;
  int64_t id;
  if (bench_raw_put(&w->raw, r->payload, r->cfg->payload) != SQLITE_OK)
    return;
  if (r->cfg->put_only) {
    w->ops++;
    return;
  }
  if (bench_raw_claim(&w->raw, &id) != SQLITE_ROW) return;
  if (bench_raw_delete(&w->raw, id) == SQLITE_OK) w->ops++;
}

/* CYCLE_BATCH messages through the naive queue: the same statements, one
** transaction per phase. */
static void cycle_raw_batch(cycle_worker *w) {
  cycle_ctx *r = w->run;
  bench_raw *b = &w->raw;
  int64_t ids[CYCLE_BATCH];
  int n = 0, rc = SQLITE_OK;
  if (bench_raw_begin(b) != SQLITE_OK) return;
  for (int i = 0; i < CYCLE_BATCH && rc == SQLITE_OK; i++)
    rc = bench_raw_put(b, r->payload, r->cfg->payload);
  if (rc != SQLITE_OK) {
    bench_raw_rollback(b);
    return;
  }
  if (bench_raw_commit(b) != SQLITE_OK) return;
  if (r->cfg->put_only) {
    w->ops += CYCLE_BATCH;
    return;
  }
  if (bench_raw_begin(b) != SQLITE_OK) return;
  while (n < CYCLE_BATCH) {
    rc = bench_raw_claim(b, &ids[n]);
    if (rc != SQLITE_ROW) break;
    n++;
  }
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    bench_raw_rollback(b);
    return;
  }
  if (bench_raw_commit(b) != SQLITE_OK || n == 0) return;
  if (bench_raw_begin(b) != SQLITE_OK) return;
  rc = SQLITE_OK;
  for (int i = 0; i < n && rc == SQLITE_OK; i++)
    rc = bench_raw_delete(b, ids[i]);
  if (rc != SQLITE_OK) {
    bench_raw_rollback(b);
    return;
  }
  if (bench_raw_commit(b) == SQLITE_OK) w->ops += n;
}

static void *cycle_init(void *arg, int idx) {
  cycle_ctx *r = arg;
  cycle_worker *w = calloc(1, sizeof *w);
  (void)idx;
  if (!w) bench_die("out of memory");
  w->run = r;
  if (r->sys != CYCLE_MQ)
    bench_raw_open(&w->raw, r->path,
                   r->sys == CYCLE_WAL ? BENCH_RAW_WAL : BENCH_RAW_NAIVE,
                   r->sync);
  return w;
}

static int64_t cycle_step(void *state) {
  cycle_worker *w = state;
  int64_t before = w->ops;
  int batch = w->run->cfg->batch > 1;
  if (w->run->sys == CYCLE_MQ) {
    if (batch) cycle_mq_batch(w);
    else cycle_mq_single(w);
  } else {
    if (batch) cycle_raw_batch(w);
    else cycle_raw_single(w);
  }
  return w->ops - before;
}

static void cycle_fini(void *state) {
  cycle_worker *w = state;
  cycle_ctx *r = w->run;
  if (r->sys != CYCLE_MQ) {
    w->errors += w->raw.errors;
    if (w->raw.errors) snprintf(w->err, sizeof w->err, "%s", w->raw.last_err);
    bench_raw_close(&w->raw);
  }
  if (w->errors) {
    atomic_fetch_add(&r->errors, w->errors);
    fprintf(stderr, "  [%s] %d errors, first: %s\n",
            r->sys == CYCLE_MQ ? "mq" : bench_raw_name(r->sys == CYCLE_WAL),
            w->errors, w->err);
  }
  free(w);
}

/* One repetition: the three systems side by side, each on a fresh file,
** taking turns in slices.  rate[sys] receives ops per second; systems
** with skip[sys] set do not run. */
static void cycle_rep(const bench_opts *o, const cycle_cfg *cfg, int sync,
                      const unsigned char *payload, int rep,
                      const int *skip, double *rate, int *errors) {
  static cycle_ctx ctx[CYCLE_NSYS];
  static const char *const tags[CYCLE_NSYS] = {"cycle-mq", "cycle-naive",
                                               "cycle-wal"};
  int team[CYCLE_NSYS];
  int64_t ops[CYCLE_NSYS] = {0};
  double secs[CYCLE_NSYS] = {0};
  bench_pool *pool = bench_pool_new();
  for (int sys = 0; sys < CYCLE_NSYS; sys++) {
    cycle_ctx *c = &ctx[sys];
    if (skip[sys]) continue;
    memset(c, 0, sizeof *c);
    c->cfg = cfg;
    c->sys = sys;
    c->sync = sync;
    c->payload = payload;
    atomic_init(&c->errors, 0);
    bench_db_path(c->path, sizeof c->path, o, tags[sys]);
    if (sys == CYCLE_MQ)
      c->store = bench_mq_open(c->path, sync);
    else
      bench_raw_create(c->path,
                       sys == CYCLE_WAL ? BENCH_RAW_WAL : BENCH_RAW_NAIVE);
    bench_team_def def = {cfg->threads, c, cycle_init, cycle_step,
                          cycle_fini};
    team[sys] = bench_pool_add(pool, &def);
  }
  for (int s = 0; s < o->slices; s++)
    for (int k = 0; k < CYCLE_NSYS; k++) {
      int sys = (rep + s + k) % CYCLE_NSYS;
      if (skip[sys]) continue;
      secs[sys] +=
          bench_pool_run(pool, team[sys], o->secs / o->slices, &ops[sys]);
    }
  bench_pool_free(pool);
  for (int sys = 0; sys < CYCLE_NSYS; sys++) {
    cycle_ctx *c = &ctx[sys];
    rate[sys] = 0.0;
    if (skip[sys]) continue;
    rate[sys] = (double)ops[sys] / secs[sys];
    errors[sys] += atomic_load(&c->errors);
    if (c->store) {
      int rc = mq_store_close(c->store);
      if (rc != MQ_OK)
        fprintf(stderr, "  mq_store_close: %s\n", mq_errstr(rc));
    }
    bench_db_remove(c->path);
  }
}

static void cycle_label(const cycle_cfg *c, char *buf, size_t cap) {
  snprintf(buf, cap, "%s %d thr %s %s",
           c->put_only ? "put-only" : "cycle", c->threads,
           c->batch > 1 ? "batch100" : "single",
           c->payload >= 1024 ? "4KiB" : "100B");
}

static int cycle_mq_errors; /* any makes the exit status 1 */

static void cycle_row(const bench_opts *o, const cycle_cfg *cfg, int sync,
                      const unsigned char *payload) {
  double v[CYCLE_NSYS][1000];
  int errors[CYCLE_NSYS] = {0};
  double med[CYCLE_NSYS];
  char label[64];
  cycle_label(cfg, label, sizeof label);
  if (o->only[0] && !strstr(label, o->only)) return;
  int skip[CYCLE_NSYS] = {0, o->mq_only, o->mq_only};
  for (int rep = 0; rep < o->reps; rep++) {
    double rate[CYCLE_NSYS];
    cycle_rep(o, cfg, sync, payload, rep, skip, rate, errors);
    for (int sys = 0; sys < CYCLE_NSYS; sys++) {
      v[sys][rep] = rate[sys];
      if (o->verbose && !skip[sys])
        fprintf(stderr, "  rep %d %s %s: %.0f ops/s\n", rep, label,
                sys == CYCLE_MQ ? "mq" : bench_raw_name(sys == CYCLE_WAL),
                rate[sys]);
    }
  }
  for (int s = 0; s < CYCLE_NSYS; s++) med[s] = bench_median(v[s], o->reps);
  cycle_mq_errors += errors[CYCLE_MQ];
  printf("%-28s | %10.0f | %10.0f | %6.2fx | %10.0f | %6.2fx", label,
         med[CYCLE_MQ], med[CYCLE_NAIVE],
         med[CYCLE_NAIVE] > 0 ? med[CYCLE_MQ] / med[CYCLE_NAIVE] : 0.0,
         med[CYCLE_WAL],
         med[CYCLE_WAL] > 0 ? med[CYCLE_MQ] / med[CYCLE_WAL] : 0.0);
  if (errors[0] + errors[1] + errors[2])
    printf("  errors mq/naive/WAL %d/%d/%d", errors[0], errors[1], errors[2]);
  printf("\n");
  fflush(stdout);
}

int main(int argc, char **argv) {
  bench_opts o;
  static unsigned char payload[4096];
  static const int threads[] = {1, 4};
  static const int batches[] = {1, CYCLE_BATCH};
  static const size_t sizes[] = {100, 4096};
  int syncs[2], nsync = 0;
  bench_opts_parse(&o, argc, argv, 5, 0.2, 4, "");
  bench_fill(payload, sizeof payload, 42);
  if (o.sync >= 0) syncs[nsync++] = o.sync;
  else {
    syncs[nsync++] = MQ_SYNC_FULL;
    syncs[nsync++] = MQ_SYNC_NORMAL;
  }
  printf("bench_cycle: one op = one message put, leased by a get and acked;"
         " ratio = mq / baseline (>1: mq faster).\n"
         "raw-naive = SQLite defaults (rollback journal), raw-WAL = "
         "journal_mode=WAL; both with PRAGMA synchronous = the row's mode.\n");
  for (int si = 0; si < nsync; si++) {
    bench_header("bench_cycle", "put->get->ack", syncs[si], &o);
    printf("%-28s | %10s | %10s | %7s | %10s | %7s\n", "config", "mq ops/s",
           "raw-naive", "ratio", "raw-WAL", "ratio");
    for (size_t ti = 0; ti < 2; ti++)
      for (size_t bi = 0; bi < 2; bi++)
        for (size_t pi = 0; pi < 2; pi++) {
          cycle_cfg c = {threads[ti], batches[bi], sizes[pi], 0};
          if (o.quick && (ti || pi)) continue;
          cycle_row(&o, &c, syncs[si], payload);
        }
    for (size_t pi = 0; pi < 2; pi++) {
      cycle_cfg c = {1, CYCLE_BATCH, sizes[pi], 1};
      if (o.quick && pi) continue;
      cycle_row(&o, &c, syncs[si], payload);
    }
  }
  return cycle_mq_errors ? 1 : 0;
}
