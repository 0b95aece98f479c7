/*
** bench_topic.c -- topics: what a publish to N subscriptions costs next to N
** plain puts, how big the file gets, and whether subject filters stay cheap
** with thousands of subscriptions.
**
** Table 1, fan-out.  One "message" reaches N consumers, N in {1, 10, 100}:
**   - publish: one mq_publish to a topic with N subscriptions (no filter);
**     the payload is stored once, plus N small delivery rows;
**   - N puts:  the same payload put into N plain queues, one mq_put each,
**     which is what an application does without topics (N transactions,
**     N copies of the payload);
**   - raw-WAL: the naive baseline of benchlib.c doing the same fan-out
**     itself: N copies inserted into its jobs table in one transaction.
** Each also runs batched: mq_publish_batch of 100 messages, N x
** mq_put_batch of 100, raw-WAL 100 x N inserts per transaction.  Rates are
** messages per second (each delivered to all N); the ratio is publish /
** other (above 1: publish faster).  Beside them: the file's growth per
** message (main file after a checkpoint, minus its size before the run),
** which shows the payload stored once.  Payloads are 1 KiB and do not
** compress.  Run under FULL and NORMAL unless --sync picks one.
**
** Table 2, filter matching.  A topic with S subscriptions, S in {1, 1000,
** 5000}, each with its own filter "sensors.r<i>.*"; every publish has a
** subject "sensors.r<j>.temp" that matches exactly one of them, so the rest
** is the cost of testing filters that do not match.  Publishes per second,
** single and batched, the ratio to S = 1 and the extra time per
** subscription per publish.  Under NORMAL unless --sync says otherwise (an
** fsync would hide what is measured).  A last line times mq_subject_matches
** alone, in memory, as the floor for one filter test.
**
** As in the other benchmarks: every run starts from a fresh file (set up
** under NORMAL, then reopened in the measured mode), the systems of a row
** take turns within each repetition in a rotating order, and the tables
** show medians of --reps runs and ratios of medians.  Nothing is asserted.
*/
#include "benchlib.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define TOPIC_PAYLOAD 1024
#define TOPIC_BATCH 100
#define TOPIC_MAX_FANOUT 100
#define TOPIC_MAX_REPS 1000

enum { FAN_PUB, FAN_PUTS, FAN_RAW, FAN_NSYS };

static int topic_mq_errors; /* any makes the exit status 1 */

static void topic_fail(mq_store *s, const char *what, int rc) {
  if (topic_mq_errors++ < 5)
    fprintf(stderr, "  [mq] %s: %s (%s)\n", what, mq_errstr(rc), mq_errmsg(s));
}

static int64_t topic_file_size(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (int64_t)st.st_size : 0;
}

static mq_store *topic_open(const char *path, int sync) {
  mq_store_options so;
  mq_store *s = NULL;
  mq_store_options_init(&so);
  so.sync = sync;
  int rc = mq_store_open(path, &so, &s);
  if (rc != MQ_OK)
    bench_die("mq_store_open %s: %s (%s)", path, mq_errstr(rc), mq_errmsg(NULL));
  return s;
}

/* A fresh store with topic "t" and nsubs subscriptions (filtered ones if
** filtered), or nsubs queues q000.. when queues is set.  Built under NORMAL:
** the setup is not what is measured. */
static void topic_setup(const char *path, int nsubs, int filtered, int queues) {
  mq_store *s = topic_open(path, MQ_SYNC_NORMAL);
  int rc = queues ? MQ_OK : mq_topic_create(s, "t", NULL);
  if (rc != MQ_OK) bench_die("mq_topic_create: %s (%s)", mq_errstr(rc), mq_errmsg(s));
  for (int i = 0; i < nsubs; i++) {
    char name[32], filter[48];
    snprintf(name, sizeof name, "%c%04d", queues ? 'q' : 's', i);
    snprintf(filter, sizeof filter, "sensors.r%d.*", i);
    rc = queues ? mq_queue_create(s, name, NULL)
                : mq_subscription_create(s, "t", name, filtered ? filter : NULL, NULL);
    if (rc != MQ_OK) bench_die("creating %s: %s (%s)", name, mq_errstr(rc), mq_errmsg(s));
  }
  rc = mq_store_close(s);
  if (rc != MQ_OK) bench_die("mq_store_close: %s", mq_errstr(rc));
}

/* ---- Table 1: fan-out ---------------------------------------------------- */

typedef struct fan_cfg {
  int nsubs;
  int batch; /* 1 or TOPIC_BATCH */
} fan_cfg;

/* One system of one repetition: its file, its handle or connection. */
typedef struct fan_ctx {
  const fan_cfg *cfg;
  int sys;
  int sync;
  char path[1100];
  mq_store *store; /* mq systems: shared by the team's thread */
  bench_raw raw;   /* raw-WAL: opened in the team's thread */
  const unsigned char *payload;
  int next_queue;  /* N puts: the queue the next put goes to */
  int errors;
  int64_t size0;   /* file size before the run, after a checkpoint */
} fan_ctx;

static void *fan_init(void *arg, int idx) {
  fan_ctx *c = arg;
  (void)idx;
  if (c->sys == FAN_RAW) bench_raw_open(&c->raw, c->path, BENCH_RAW_WAL, c->sync);
  return c;
}

/* One step; returns deliveries made (a message to N subscribers counts N).
** N puts does one put (or one batch into one queue) per step, so that its
** steps are as short as the others' and the slices stay fair. */
static int64_t fan_step(void *state) {
  fan_ctx *c = state;
  const fan_cfg *cfg = c->cfg;
  int rc = MQ_OK;
  if (c->sys == FAN_RAW) {
    if (bench_raw_begin(&c->raw) != SQLITE_OK) return 0;
    int src = SQLITE_OK;
    for (int i = 0; i < cfg->batch * cfg->nsubs && src == SQLITE_OK; i++)
      src = bench_raw_put(&c->raw, c->payload, TOPIC_PAYLOAD);
    if (src != SQLITE_OK) {
      bench_raw_rollback(&c->raw);
      return 0;
    }
    return bench_raw_commit(&c->raw) == SQLITE_OK ? (int64_t)cfg->batch * cfg->nsubs : 0;
  }
  int64_t delivered = 0;
  if (c->sys == FAN_PUB && cfg->batch == 1) {
    rc = mq_publish(c->store, "t", NULL, c->payload, TOPIC_PAYLOAD, NULL, NULL, &delivered);
  } else if (c->sys == FAN_PUB) {
    mq_pub_entry e[TOPIC_BATCH];
    for (int i = 0; i < TOPIC_BATCH; i++) {
      e[i].subject = NULL;
      e[i].data = c->payload;
      e[i].len = TOPIC_PAYLOAD;
      e[i].opts = NULL;
    }
    rc = mq_publish_batch(c->store, "t", e, TOPIC_BATCH, NULL, &delivered);
  } else {
    char q[16];
    snprintf(q, sizeof q, "q%04d", c->next_queue);
    c->next_queue = (c->next_queue + 1) % cfg->nsubs;
    if (cfg->batch == 1) {
      rc = mq_put(c->store, q, c->payload, TOPIC_PAYLOAD, NULL, NULL);
    } else {
      mq_entry e[TOPIC_BATCH];
      for (int i = 0; i < TOPIC_BATCH; i++) {
        e[i].data = c->payload;
        e[i].len = TOPIC_PAYLOAD;
        e[i].opts = NULL;
      }
      rc = mq_put_batch(c->store, q, e, TOPIC_BATCH, NULL);
    }
    delivered = cfg->batch;
  }
  if (rc == MQ_OK && c->sys == FAN_PUB && delivered != (int64_t)cfg->batch * cfg->nsubs)
    rc = MQ_ERROR; /* every subscription must have got every message */
  if (rc != MQ_OK) {
    if (c->errors++ == 0) topic_fail(c->store, c->sys == FAN_PUB ? "publish" : "put", rc);
    return 0;
  }
  return delivered;
}

static void fan_fini(void *state) {
  fan_ctx *c = state;
  if (c->sys != FAN_RAW) return;
  c->errors += c->raw.errors;
  if (c->raw.errors)
    fprintf(stderr, "  [raw-WAL] %d errors, first: %s\n", c->raw.errors, c->raw.last_err);
  bench_raw_close(&c->raw); /* the last connection: SQLite checkpoints the WAL */
}

/* One repetition of a row: the three systems side by side, each on a fresh
** file, taking turns in slices.  rate[sys] gets messages per second (each
** delivered to all N), growth[sys] the file's growth per message. */
static void fan_rep(const bench_opts *o, const fan_cfg *cfg, int sync,
                    const unsigned char *payload, int rep, double *rate, double *growth,
                    int *raw_errors) {
  static fan_ctx ctx[FAN_NSYS];
  static const char *const tags[FAN_NSYS] = {"topic-pub", "topic-puts", "topic-raw"};
  int team[FAN_NSYS];
  int64_t ops[FAN_NSYS] = {0};
  double secs[FAN_NSYS] = {0};
  int skip[FAN_NSYS] = {0, 0, o->mq_only};
  bench_pool *pool = bench_pool_new();
  for (int sys = 0; sys < FAN_NSYS; sys++) {
    fan_ctx *c = &ctx[sys];
    if (skip[sys]) continue;
    memset(c, 0, sizeof *c);
    c->cfg = cfg;
    c->sys = sys;
    c->sync = sync;
    c->payload = payload;
    bench_db_path(c->path, sizeof c->path, o, tags[sys]);
    if (sys == FAN_RAW) {
      bench_raw_create(c->path, BENCH_RAW_WAL);
    } else {
      topic_setup(c->path, cfg->nsubs, 0, sys == FAN_PUTS);
      c->store = topic_open(c->path, sync);
      if (mq_store_checkpoint(c->store) != MQ_OK)
        bench_die("checkpoint: %s", mq_errmsg(c->store));
    }
    c->size0 = topic_file_size(c->path);
    bench_team_def def = {1, c, fan_init, fan_step, fan_fini};
    team[sys] = bench_pool_add(pool, &def);
  }
  for (int s = 0; s < o->slices; s++)
    for (int k = 0; k < FAN_NSYS; k++) {
      int sys = (rep + s + k) % FAN_NSYS;
      if (!skip[sys]) secs[sys] += bench_pool_run(pool, team[sys], o->secs / o->slices, &ops[sys]);
    }
  bench_pool_free(pool);
  for (int sys = 0; sys < FAN_NSYS; sys++) {
    fan_ctx *c = &ctx[sys];
    rate[sys] = growth[sys] = 0.0;
    if (skip[sys]) continue;
    if (c->store) {
      int rc = mq_store_checkpoint(c->store);
      if (rc != MQ_OK) topic_fail(c->store, "checkpoint", rc);
      rc = mq_store_close(c->store);
      if (rc != MQ_OK) fprintf(stderr, "  mq_store_close: %s\n", mq_errstr(rc));
      if (c->errors) topic_mq_errors += c->errors - 1; /* the first was counted */
    } else {
      *raw_errors += c->errors;
    }
    double msgs = (double)ops[sys] / cfg->nsubs;
    rate[sys] = secs[sys] > 0 ? msgs / secs[sys] : 0.0;
    growth[sys] = msgs > 0 ? (double)(topic_file_size(c->path) - c->size0) / msgs : 0.0;
    bench_db_remove(c->path);
  }
}

static void fan_label(const fan_cfg *c, char *buf, size_t cap) {
  snprintf(buf, cap, "%3d sub%s %s", c->nsubs, c->nsubs == 1 ? " " : "s",
           c->batch > 1 ? "batch100" : "single");
}

static void fan_row(const bench_opts *o, const fan_cfg *c, int sync, const unsigned char *payload) {
  static double v[FAN_NSYS][TOPIC_MAX_REPS], g[FAN_NSYS][TOPIC_MAX_REPS];
  static const char *const names[FAN_NSYS] = {"publish", "N puts", "raw-WAL"};
  double med[FAN_NSYS], gmed[FAN_NSYS];
  int raw_errors = 0;
  char label[48];
  fan_label(c, label, sizeof label);
  if (o->only[0] && !strstr(label, o->only)) return;
  for (int rep = 0; rep < o->reps; rep++) {
    double rate[FAN_NSYS], growth[FAN_NSYS];
    fan_rep(o, c, sync, payload, rep, rate, growth, &raw_errors);
    for (int k = 0; k < FAN_NSYS; k++) {
      v[k][rep] = rate[k];
      g[k][rep] = growth[k];
      if (o->verbose)
        fprintf(stderr, "  rep %d %s %s: %.0f msg/s, %.0f B/msg\n", rep, label, names[k],
                rate[k], growth[k]);
    }
  }
  for (int k = 0; k < FAN_NSYS; k++) {
    med[k] = bench_median(v[k], o->reps);
    gmed[k] = bench_median(g[k], o->reps);
  }
  printf("%-18s | %9.0f | %9.0f | %6.2fx | %9.0f | %6.2fx | %9.0f | %9.0f | %9.0f", label,
         med[FAN_PUB], med[FAN_PUTS], med[FAN_PUTS] > 0 ? med[FAN_PUB] / med[FAN_PUTS] : 0.0,
         med[FAN_RAW], med[FAN_RAW] > 0 ? med[FAN_PUB] / med[FAN_RAW] : 0.0, gmed[FAN_PUB],
         gmed[FAN_PUTS], gmed[FAN_RAW]);
  if (raw_errors) printf("  raw errors %d", raw_errors);
  printf("\n");
  fflush(stdout);
}

/* ---- Table 2: filter matching -------------------------------------------- */

#define MATCH_NS 3 /* subscription counts compared: 1, 1000, 5000 */
static const int match_subs[MATCH_NS] = {1, 1000, 5000};

typedef struct match_ctx {
  int nsubs;
  int batch;
  char path[1100];
  mq_store *store;
  const unsigned char *payload;
  int64_t seq; /* publishes so far: picks the next subject */
  int errors;
} match_ctx;

static void *match_init(void *arg, int idx) {
  (void)idx;
  return arg;
}

/* One publish or one batch; every message matches exactly one filter. */
static int64_t match_step(void *state) {
  match_ctx *c = state;
  mq_pub_entry e[TOPIC_BATCH];
  char subj[TOPIC_BATCH][48];
  int64_t delivered = 0;
  for (int k = 0; k < c->batch; k++) {
    /* "sensors.r<j>.temp" for a j spread over all filters. */
    snprintf(subj[k], sizeof subj[k], "sensors.r%lld.temp",
             (long long)((c->seq++ * 7919) % c->nsubs));
    e[k].subject = subj[k];
    e[k].data = c->payload;
    e[k].len = 100;
    e[k].opts = NULL;
  }
  int rc = mq_publish_batch(c->store, "t", e, (size_t)c->batch, NULL, &delivered);
  if (rc == MQ_OK && delivered != c->batch) rc = MQ_ERROR; /* one match each */
  if (rc != MQ_OK) {
    if (c->errors++ == 0) topic_fail(c->store, "publish", rc);
    return 0;
  }
  return c->batch;
}

static void match_fini(void *state) { (void)state; }

/* One repetition: a topic with each subscription count, side by side,
** taking turns in slices; rate[i] gets publishes per second. */
static void match_rep(const bench_opts *o, int batch, int sync, const unsigned char *payload,
                      int rep, const int *skip, double *rate) {
  static match_ctx ctx[MATCH_NS];
  int team[MATCH_NS];
  int64_t ops[MATCH_NS] = {0};
  double secs[MATCH_NS] = {0};
  bench_pool *pool = bench_pool_new();
  for (int i = 0; i < MATCH_NS; i++) {
    match_ctx *c = &ctx[i];
    char tag[32];
    if (skip[i]) continue;
    memset(c, 0, sizeof *c);
    c->nsubs = match_subs[i];
    c->batch = batch;
    c->payload = payload;
    snprintf(tag, sizeof tag, "match-%d", c->nsubs);
    bench_db_path(c->path, sizeof c->path, o, tag);
    topic_setup(c->path, c->nsubs, 1, 0);
    c->store = topic_open(c->path, sync);
    bench_team_def def = {1, c, match_init, match_step, match_fini};
    team[i] = bench_pool_add(pool, &def);
  }
  for (int s = 0; s < o->slices; s++)
    for (int k = 0; k < MATCH_NS; k++) {
      int i = (rep + s + k) % MATCH_NS;
      if (!skip[i]) secs[i] += bench_pool_run(pool, team[i], o->secs / o->slices, &ops[i]);
    }
  bench_pool_free(pool);
  for (int i = 0; i < MATCH_NS; i++) {
    match_ctx *c = &ctx[i];
    rate[i] = 0.0;
    if (skip[i]) continue;
    rate[i] = secs[i] > 0 ? (double)ops[i] / secs[i] : 0.0;
    if (c->errors > 1) topic_mq_errors += c->errors - 1;
    int rc = mq_store_close(c->store);
    if (rc != MQ_OK) fprintf(stderr, "  mq_store_close: %s\n", mq_errstr(rc));
    bench_db_remove(c->path);
  }
}

/* Nanoseconds per mq_subject_matches call, over nf filters (in memory). */
static double match_pure_ns(int nf) {
  char(*filters)[32] = malloc((size_t)nf * sizeof *filters);
  char subj[48];
  if (!filters) bench_die("out of memory");
  for (int i = 0; i < nf; i++) snprintf(filters[i], sizeof filters[i], "sensors.r%d.*", i);
  long hits = 0, calls = 0;
  double t0 = bench_now(), t1 = t0;
  for (int64_t j = 0; j < 1000000 && t1 - t0 < 0.2; j++) {
    snprintf(subj, sizeof subj, "sensors.r%lld.temp", (long long)((j * 7919) % nf));
    for (int i = 0; i < nf; i++) hits += mq_subject_matches(filters[i], subj) == 1;
    calls += nf;
    t1 = bench_now();
  }
  free(filters);
  if (hits * (long)nf != calls) bench_die("mq_subject_matches: %ld hits in %ld calls", hits, calls);
  return (t1 - t0) * 1e9 / (double)calls;
}

static void match_table(const bench_opts *o, int sync, const unsigned char *payload) {
  static double v[MATCH_NS][TOPIC_MAX_REPS];
  bench_header("bench_topic", "filter matching, one match per publish", sync, o);
  printf("%-18s | %11s | %9s | %15s\n", "config", "publishes/s", "vs 1 sub",
         "us per sub/pub");
  for (int b = 0; b < 2; b++) {
    double med[MATCH_NS] = {0};
    char label[MATCH_NS][48];
    int skip[MATCH_NS];
    for (int i = 0; i < MATCH_NS; i++) {
      snprintf(label[i], sizeof label[i], "%4d sub%s %s", match_subs[i], i ? "s" : " ",
               b ? "batch100" : "single");
      /* The 1-subscription row is the reference: it always runs. */
      skip[i] = i > 0 && ((o->quick && i == MATCH_NS - 1) ||
                          (o->only[0] && !strstr(label[i], o->only)));
    }
    for (int rep = 0; rep < o->reps; rep++) {
      double rate[MATCH_NS];
      match_rep(o, b ? TOPIC_BATCH : 1, sync, payload, rep, skip, rate);
      for (int i = 0; i < MATCH_NS; i++) {
        v[i][rep] = rate[i];
        if (o->verbose && !skip[i])
          fprintf(stderr, "  rep %d %s: %.0f publishes/s\n", rep, label[i], rate[i]);
      }
    }
    for (int i = 0; i < MATCH_NS; i++) {
      if (skip[i]) continue;
      med[i] = bench_median(v[i], o->reps);
      printf("%-18s | %11.0f | %8.2fx", label[i], med[i], med[0] > 0 ? med[i] / med[0] : 0.0);
      if (i > 0 && med[i] > 0 && med[0] > 0)
        printf(" | %15.3f", (1.0 / med[i] - 1.0 / med[0]) * 1e6 / (match_subs[i] - 1));
      printf("\n");
      fflush(stdout);
    }
  }
  printf("%-18s | %.1f ns per call (in memory, 5000 filters; validates the filter each call)\n",
         "mq_subject_matches", match_pure_ns(5000));
}

int main(int argc, char **argv) {
  bench_opts o;
  static unsigned char payload[TOPIC_PAYLOAD];
  static const int fanouts[] = {1, 10, 100};
  int syncs[2], nsync = 0;
  bench_opts_parse(&o, argc, argv, 5, 0.4, 4, "");
  if (o.reps > TOPIC_MAX_REPS) bench_die("--reps is at most %d", TOPIC_MAX_REPS);
  bench_fill(payload, sizeof payload, 11);
  if (o.sync >= 0) syncs[nsync++] = o.sync;
  else {
    syncs[nsync++] = MQ_SYNC_FULL;
    syncs[nsync++] = MQ_SYNC_NORMAL;
  }
  printf("bench_topic: one message reaches N consumers: publish = 1 mq_publish to N "
         "subscriptions;\nN puts = the payload put into N queues (1 transaction each); "
         "raw-WAL = N copies in one jobs table, 1 transaction.\nmsg/s = messages delivered "
         "to all N per second; ratio = publish / other (>1: publish faster);\n"
         "B/msg = file growth per message after a checkpoint.  Payload %d B, incompressible.\n",
         TOPIC_PAYLOAD);
  for (int si = 0; si < nsync; si++) {
    bench_header("bench_topic", "fan-out", syncs[si], &o);
    printf("%-18s | %9s | %9s | %7s | %9s | %7s | %8s | %8s | %8s\n", "config", "publish",
           "N puts", "ratio", "raw-WAL", "ratio", "B/msg pub", "B/msg put", "B/msg raw");
    for (int b = 0; b < 2; b++)
      for (size_t fi = 0; fi < sizeof fanouts / sizeof fanouts[0]; fi++) {
        fan_cfg c = {fanouts[fi], b ? TOPIC_BATCH : 1};
        if (o.quick && fi == 2) continue;
        fan_row(&o, &c, syncs[si], payload);
      }
  }
  match_table(&o, o.sync >= 0 ? o.sync : MQ_SYNC_NORMAL, payload);
  return topic_mq_errors ? 1 : 0;
}
