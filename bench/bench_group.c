/*
** bench_group.c -- group commit: does durable put throughput grow with the
** number of threads sharing one handle?
**
** Under MQ_SYNC_FULL every put that returns MQ_OK has been fsynced.  One
** thread can therefore put at most one message per fsync; mq promises that
** concurrent puts on one handle share a commit, so 8 threads should put at
** least 4 times as fast as one (the target printed beside the number).  The
** baseline is what SQLite gives without help: a WAL file with
** synchronous=FULL, one connection per thread, one row per transaction,
** where every commit pays its own fsync and the writers queue on the write
** lock, so adding threads adds nothing.
**
** In each repetition every configuration (mq with 1, 2, 4 and 8 threads;
** raw with 1 and 8) gets a fresh file and its threads, and they take turns
** in short slices (bench_pool_run) until each has run for --secs, so that
** a slow patch of the disk hurts them all alike.  The table shows the
** median over --reps repetitions and the ratio of medians.
*/
#include "benchlib.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GROUP_MAX_CFGS 8
#define GROUP_PAYLOAD 100

typedef struct group_cfg {
  int raw; /* 0 = mq, 1 = raw-WAL */
  int threads;
} group_cfg;

/* What the threads of one configuration share during one repetition. */
typedef struct group_ctx {
  const group_cfg *cfg;
  int sync;
  char path[1100];
  mq_store *store;
  const unsigned char *payload;
  atomic_int errors;
} group_ctx;

typedef struct group_worker {
  group_ctx *run;
  int errors;
  char err[256];
  bench_raw raw;
} group_worker;

static void *group_init(void *arg, int idx) {
  group_ctx *r = arg;
  group_worker *w = calloc(1, sizeof *w);
  (void)idx;
  if (!w) bench_die("out of memory");
  w->run = r;
  if (r->cfg->raw) bench_raw_open(&w->raw, r->path, BENCH_RAW_WAL, r->sync);
  return w;
}

static int64_t group_step(void *state) {
  group_worker *w = state;
  group_ctx *r = w->run;
  if (r->cfg->raw)
    return bench_raw_put(&w->raw, r->payload, GROUP_PAYLOAD) == SQLITE_OK;
  int rc = mq_put(r->store, "bench", r->payload, GROUP_PAYLOAD, NULL, NULL);
  if (rc == MQ_OK) return 1;
  if (w->errors++ == 0)
    snprintf(w->err, sizeof w->err, "mq_put: %s (%s)", mq_errstr(rc),
             mq_errmsg(r->store));
  return 0;
}

static void group_fini(void *state) {
  group_worker *w = state;
  group_ctx *r = w->run;
  if (r->cfg->raw) {
    w->errors += w->raw.errors;
    if (w->raw.errors) snprintf(w->err, sizeof w->err, "%s", w->raw.last_err);
    bench_raw_close(&w->raw);
  }
  if (w->errors) {
    atomic_fetch_add(&r->errors, w->errors);
    fprintf(stderr, "  [%s] %d errors, first: %s\n",
            r->cfg->raw ? "raw-WAL" : "mq", w->errors, w->err);
  }
  free(w);
}

static void group_label(const group_cfg *c, char *buf, size_t cap) {
  snprintf(buf, cap, "%s %d thread%s", c->raw ? "raw-WAL" : "mq", c->threads,
           c->threads > 1 ? "s" : "");
}

/* --mq-only leaves out the baselines; --only TEXT keeps the labels that
** contain TEXT. */
static int group_skip(const bench_opts *o, const group_cfg *c) {
  char label[32];
  group_label(c, label, sizeof label);
  return (c->raw && o->mq_only) || (o->only[0] && !strstr(label, o->only));
}

/* One repetition: every configuration on its own fresh file, taking turns
** in slices.  rate[c] receives puts per second (0 for skipped ones). */
static void group_rep(const bench_opts *o, const group_cfg *cfgs, int ncfg,
                      int sync, const unsigned char *payload, int rep,
                      double *rate, int *errors) {
  static group_ctx ctx[GROUP_MAX_CFGS];
  int team[GROUP_MAX_CFGS];
  int64_t ops[GROUP_MAX_CFGS] = {0};
  double secs[GROUP_MAX_CFGS] = {0};
  bench_pool *pool = bench_pool_new();
  for (int i = 0; i < ncfg; i++) {
    group_ctx *c = &ctx[i];
    char tag[32];
    if (group_skip(o, &cfgs[i])) continue;
    memset(c, 0, sizeof *c);
    c->cfg = &cfgs[i];
    c->sync = sync;
    c->payload = payload;
    atomic_init(&c->errors, 0);
    snprintf(tag, sizeof tag, "group-%s%d", cfgs[i].raw ? "raw" : "mq",
             cfgs[i].threads);
    bench_db_path(c->path, sizeof c->path, o, tag);
    if (cfgs[i].raw) bench_raw_create(c->path, BENCH_RAW_WAL);
    else c->store = bench_mq_open(c->path, sync);
    bench_team_def def = {cfgs[i].threads, c, group_init, group_step,
                          group_fini};
    team[i] = bench_pool_add(pool, &def);
  }
  for (int s = 0; s < o->slices; s++)
    for (int k = 0; k < ncfg; k++) {
      int i = (rep + s + k) % ncfg;
      if (group_skip(o, &cfgs[i])) continue;
      secs[i] += bench_pool_run(pool, team[i], o->secs / o->slices, &ops[i]);
    }
  bench_pool_free(pool);
  for (int i = 0; i < ncfg; i++) {
    rate[i] = 0.0;
    if (group_skip(o, &cfgs[i])) continue;
    rate[i] = (double)ops[i] / secs[i];
    errors[i] += atomic_load(&ctx[i].errors);
    if (ctx[i].store) mq_store_close(ctx[i].store);
    bench_db_remove(ctx[i].path);
  }
}

int main(int argc, char **argv) {
  static const group_cfg cfgs[] = {{0, 1}, {0, 2}, {0, 4}, {0, 8},
                                   {1, 1}, {1, 8}};
  enum { NCFG = sizeof cfgs / sizeof *cfgs };
  static double v[NCFG][1000];
  double med[NCFG];
  int errors[NCFG] = {0};
  static unsigned char payload[GROUP_PAYLOAD];
  bench_opts o;
  bench_opts_parse(&o, argc, argv, 5, 0.5, 6, "");
  int sync = o.sync >= 0 ? o.sync : MQ_SYNC_FULL;
  bench_fill(payload, sizeof payload, 7);

  printf("bench_group: puts of %d B into one queue; mq threads share ONE "
         "handle, raw-WAL threads have one connection each.\n",
         GROUP_PAYLOAD);
  bench_header("bench_group", "group commit", sync, &o);
  for (int rep = 0; rep < o.reps; rep++) {
    double rate[NCFG];
    group_rep(&o, cfgs, NCFG, sync, payload, rep, rate, errors);
    for (int c = 0; c < NCFG; c++) {
      v[c][rep] = rate[c];
      if (o.verbose && !group_skip(&o, &cfgs[c]))
        fprintf(stderr, "  rep %d %s %d threads: %.0f puts/s\n", rep,
                cfgs[c].raw ? "raw-WAL" : "mq", cfgs[c].threads, rate[c]);
    }
  }
  for (int c = 0; c < NCFG; c++) med[c] = bench_median(v[c], o.reps);

  printf("%-22s | %10s | %12s\n", "config", "puts/s", "vs 1 thread");
  for (int c = 0; c < NCFG; c++) {
    double base = cfgs[c].raw ? med[4] : med[0];
    char label[32];
    group_label(&cfgs[c], label, sizeof label);
    printf("%-22s | %10.0f | %11.2fx", label, med[c],
           base > 0 ? med[c] / base : 0.0);
    if (!cfgs[c].raw && cfgs[c].threads == 8 && sync == MQ_SYNC_FULL)
      printf("  (target >= 4x: %s)",
             med[0] > 0 && med[c] / med[0] >= 4.0 ? "met" : "NOT met");
    if (errors[c]) printf("  errors %d", errors[c]);
    printf("\n");
  }
  printf("%-22s | %10s | %11.2fx\n", "mq 8 / raw-WAL 8", "",
         med[5] > 0 ? med[3] / med[5] : 0.0);
  printf("%-22s | %10s | %11.2fx\n", "mq 1 / raw-WAL 1", "",
         med[4] > 0 ? med[0] / med[4] : 0.0);
  return errors[0] + errors[1] + errors[2] + errors[3] ? 1 : 0;
}
