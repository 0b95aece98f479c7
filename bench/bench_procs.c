/*
** bench_procs.c -- several processes on one queue file: is the file shared
** fairly, and does throughput hold up as processes are added?
**
** Producers put one message per call; consumers get one and ack it.  Each
** process opens its own handle (after fork: a handle never crosses a
** fork) and counts its completed puts or get+acks; it reports the count
** through a pipe when the repetition ends.  First 1 producer + 1 consumer,
** then 4 + 4.  What matters:
**   - total rate at 4+4 against 1+1 (target for mq: >= 0.8x: contention
**     must not collapse throughput);
**   - the per-process counts: every process must make progress.  "min
**     share" is the smallest process's count over the mean count of all
**     processes (1.0 = perfectly even; 0 = starved), the worst over all
**     repetitions.  Consumers are included: a consumer locked out by the
**     producers is starved just as much.
** The baselines run the naive statements of benchlib.c with SQLite's own
** busy handler (sqlite3_busy_timeout(10000)), whose sleep-and-retry backoff
** is unfair by construction: a waiter that sleeps 100 ms loses to one that
** just released the lock.  An empty naive queue is polled every 1 ms; an mq
** consumer waits in mq_get (wait_ms) and is woken by the producers.  The
** baseline's numbers are printed as they come: starving there is expected.
**
** As in the other benchmarks, the configurations of one repetition all
** exist at once (each with its own fresh file and processes) and take
** turns in --slices slices, so that a slow patch of the disk hurts them
** alike.  The turns are driven through a process-shared mutex and
** condition variable in an anonymous shared mapping.  A slice is timed
** from the start signal to the stop signal; an op in flight at the stop
** is counted (at most one per process).
**
** A child that hangs is killed by alarm(); the parent gives up on a slice
** that does not end within a minute and reports the failure.
*/
#include "benchlib.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define PROCS_MAX 8
#define PROCS_PAYLOAD 100

enum { PROCS_MQ, PROCS_NAIVE, PROCS_WAL, PROCS_NSYS };
#define PROCS_NCFG 6 /* each system with 1+1 and 4+4 processes */

typedef struct procs_cfg {
  int sys;
  int pairs; /* producers = consumers = pairs */
} procs_cfg;

/* What a child sends back; smaller than PIPE_BUF, so each write is atomic
** on the pipe all children share. */
typedef struct procs_result {
  int idx;
  int consumer;
  int errors;
  int64_t count;
  char err[160];
} procs_result;

static int procs_failed; /* a child died or mq failed: exit status 1 */

static const char *procs_sys_name(int sys) {
  return sys == PROCS_MQ ? "mq" : bench_raw_name(sys == PROCS_WAL);
}

/* The turn-taking state shared by the parent and every child of one
** repetition (see the file comment).  Only the configuration named by
** `active` works, until `stop` is set; its processes then count themselves
** into `parked`. */
typedef struct procs_ctl {
  pthread_mutex_t mu;
  pthread_cond_t go, parked_cv;
  int active; /* configuration index, -1 for none */
  uint32_t gen;
  int quit;
  int parked;
  int ready;
  atomic_int stop;
} procs_ctl;

static void procs_lock(procs_ctl *c) {
  /* A child killed while holding the lock leaves it "owner dead"; the
  ** state it protects is a few counters, fine to carry on with. */
  if (pthread_mutex_lock(&c->mu) == EOWNERDEAD)
    pthread_mutex_consistent(&c->mu);
}

/* Wait on cv for at most 60 s; 0 on timeout. */
static int procs_wait(procs_ctl *c, pthread_cond_t *cv) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 60;
  int rc = pthread_cond_timedwait(cv, &c->mu, &ts);
  if (rc == EOWNERDEAD) pthread_mutex_consistent(&c->mu);
  return rc != ETIMEDOUT;
}

static procs_ctl *procs_ctl_new(void) {
  pthread_mutexattr_t ma;
  pthread_condattr_t ca;
  procs_ctl *c = mmap(NULL, sizeof *c, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (c == MAP_FAILED) bench_die("mmap failed");
  memset(c, 0, sizeof *c);
  pthread_mutexattr_init(&ma);
  pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(&c->mu, &ma);
  pthread_mutexattr_destroy(&ma);
  pthread_condattr_init(&ca);
  pthread_condattr_setpshared(&ca, PTHREAD_PROCESS_SHARED);
  pthread_cond_init(&c->go, &ca);
  pthread_cond_init(&c->parked_cv, &ca);
  pthread_condattr_destroy(&ca);
  c->active = -1;
  atomic_init(&c->stop, 0);
  return c;
}

static void procs_ctl_free(procs_ctl *c) {
  pthread_mutex_destroy(&c->mu);
  pthread_cond_destroy(&c->go);
  pthread_cond_destroy(&c->parked_cv);
  munmap(c, sizeof *c);
}

static void procs_write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n) {
    ssize_t k = write(fd, c, n);
    if (k <= 0) _exit(3);
    c += k;
    n -= (size_t)k;
  }
}

/* One producer or consumer op; returns 1 if it completed one. */
static int procs_op(const procs_cfg *cfg, mq_store *s, bench_raw *raw,
                    int consumer, const unsigned char *payload,
                    procs_result *res) {
  int rc = MQ_OK;
  const char *what = "";
  if (cfg->sys != PROCS_MQ) {
    int64_t id;
    if (!consumer)
      return bench_raw_put(raw, payload, PROCS_PAYLOAD) == SQLITE_OK;
    rc = bench_raw_claim(raw, &id);
    if (rc == SQLITE_ROW) return bench_raw_delete(raw, id) == SQLITE_OK;
    if (rc == SQLITE_DONE) usleep(1000);
    return 0;
  }
  if (!consumer) {
    what = "mq_put";
    rc = mq_put(s, "bench", payload, PROCS_PAYLOAD, NULL, NULL);
    if (rc == MQ_OK) return 1;
  } else {
    mq_get_options go;
    mq_msg *m = NULL;
    mq_get_options_init(&go);
    go.wait_ms = 20; /* short: a slice may end while we wait */
    what = "mq_get";
    rc = mq_get(s, "bench", &go, &m);
    if (rc == MQ_EMPTY) return 0;
    if (rc == MQ_OK) {
      what = "mq_ack";
      rc = mq_ack(s, "bench", mq_msg_receipt(m));
      mq_msg_free(m);
      if (rc == MQ_OK) return 1;
    }
  }
  if (res->errors++ == 0)
    snprintf(res->err, sizeof res->err, "%s: %s (%s)", what, mq_errstr(rc),
             mq_errmsg(s));
  return 0;
}

static void procs_child(const bench_opts *o, procs_ctl *ctl, int ci,
                        const procs_cfg *cfg, int sync, const char *path,
                        int idx, int consumer, int res_w) {
  procs_result res;
  unsigned char payload[PROCS_PAYLOAD];
  mq_store *s = NULL;
  bench_raw raw;
  uint32_t seen = 0;
  memset(&res, 0, sizeof res);
  res.idx = idx;
  res.consumer = consumer;
  bench_fill(payload, sizeof payload, (uint64_t)idx);
  /* A bound on the whole repetition, whatever happens. */
  alarm((unsigned)(o->secs * PROCS_NCFG) + 120);
  if (cfg->sys == PROCS_MQ) {
    mq_store_options so;
    mq_store_options_init(&so);
    so.sync = sync;
    int rc = mq_store_open(path, &so, &s);
    if (rc != MQ_OK) bench_die("child mq_store_open: %s", mq_errstr(rc));
  } else {
    bench_raw_open(&raw, path, cfg->sys == PROCS_WAL, sync);
  }
  procs_lock(ctl);
  ctl->ready++;
  pthread_cond_broadcast(&ctl->parked_cv);
  for (;;) {
    while (!ctl->quit && (ctl->active != ci || ctl->gen == seen))
      pthread_cond_wait(&ctl->go, &ctl->mu);
    if (ctl->quit) break;
    seen = ctl->gen;
    pthread_mutex_unlock(&ctl->mu);
    while (!atomic_load_explicit(&ctl->stop, memory_order_relaxed))
      res.count += procs_op(cfg, s, &raw, consumer, payload, &res);
    procs_lock(ctl);
    ctl->parked++;
    pthread_cond_broadcast(&ctl->parked_cv);
  }
  pthread_mutex_unlock(&ctl->mu);
  if (cfg->sys != PROCS_MQ) {
    res.errors = raw.errors;
    snprintf(res.err, sizeof res.err, "%.150s", raw.last_err);
  }
  procs_write_all(res_w, &res, sizeof res);
  if (s) mq_store_close(s);
  else bench_raw_close(&raw);
  _exit(0);
}

/* One repetition: every configuration's processes started at once, each
** on its own fresh file, then taking turns in slices.  counts[c][i]
** receives process i's count (producers first), rate[c] the total ops per
** second of configuration c. */
static void procs_rep(const bench_opts *o, const procs_cfg *cfgs, int sync,
                      int rep, const int *skip,
                      int64_t (*counts)[2 * PROCS_MAX], double *rate,
                      int *errors) {
  char path[PROCS_NCFG][1100];
  int res[PROCS_NCFG][2];
  pid_t pids[PROCS_NCFG][2 * PROCS_MAX];
  double secs[PROCS_NCFG] = {0};
  int want = 0;
  procs_ctl *ctl = procs_ctl_new();
  fflush(stdout);
  fflush(stderr);
  for (int c = 0; c < PROCS_NCFG; c++) {
    char tag[32];
    if (skip[c]) continue;
    snprintf(tag, sizeof tag, "procs-%d", c);
    bench_db_path(path[c], sizeof path[c], o, tag);
    if (cfgs[c].sys == PROCS_MQ) mq_store_close(bench_mq_open(path[c], sync));
    else bench_raw_create(path[c], cfgs[c].sys == PROCS_WAL);
    if (pipe(res[c])) bench_die("pipe failed");
    for (int i = 0; i < 2 * cfgs[c].pairs; i++) {
      pids[c][i] = fork();
      if (pids[c][i] < 0) bench_die("fork failed");
      if (pids[c][i] == 0) {
        close(res[c][0]);
        procs_child(o, ctl, c, &cfgs[c], sync, path[c], i,
                    i >= cfgs[c].pairs, res[c][1]);
      }
      want++;
    }
    close(res[c][1]);
  }
  procs_lock(ctl);
  while (ctl->ready < want)
    if (!procs_wait(ctl, &ctl->parked_cv)) bench_die("children did not start");
  pthread_mutex_unlock(&ctl->mu);

  for (int s = 0; s < o->slices; s++)
    for (int k = 0; k < PROCS_NCFG; k++) {
      int c = (rep + s + k) % PROCS_NCFG;
      if (skip[c]) continue;
      procs_lock(ctl);
      atomic_store(&ctl->stop, 0);
      ctl->active = c;
      ctl->gen++;
      ctl->parked = 0;
      double t0 = bench_now();
      pthread_cond_broadcast(&ctl->go);
      pthread_mutex_unlock(&ctl->mu);
      bench_sleep(o->secs / o->slices);
      atomic_store(&ctl->stop, 1);
      secs[c] += bench_now() - t0;
      procs_lock(ctl);
      while (ctl->parked < 2 * cfgs[c].pairs)
        if (!procs_wait(ctl, &ctl->parked_cv))
          bench_die("%s: a process did not stop", procs_sys_name(cfgs[c].sys));
      ctl->active = -1;
      pthread_mutex_unlock(&ctl->mu);
    }
  procs_lock(ctl);
  ctl->quit = 1;
  pthread_cond_broadcast(&ctl->go);
  pthread_mutex_unlock(&ctl->mu);

  for (int c = 0; c < PROCS_NCFG; c++) {
    int n = 2 * cfgs[c].pairs;
    int64_t total = 0;
    rate[c] = 0.0;
    if (skip[c]) continue;
    for (int i = 0; i < n; i++) counts[c][i] = -1;
    for (int got = 0; got < n; got++) {
      procs_result r;
      size_t have = 0;
      while (have < sizeof r) {
        ssize_t k = read(res[c][0], (char *)&r + have, sizeof r - have);
        if (k <= 0) break;
        have += (size_t)k;
      }
      if (have < sizeof r) break; /* a child died: reported below */
      if (r.idx < 0 || r.idx >= n) bench_die("bad result from a child");
      counts[c][r.idx] = r.count;
      if (r.errors) {
        errors[c] += r.errors;
        if (cfgs[c].sys == PROCS_MQ) procs_failed = 1;
        fprintf(stderr, "  [%s %s %d] %d errors, first: %s\n",
                procs_sys_name(cfgs[c].sys),
                r.consumer ? "consumer" : "producer", r.idx, r.errors, r.err);
      }
    }
    close(res[c][0]);
    for (int i = 0; i < n; i++) {
      int st;
      waitpid(pids[c][i], &st, 0);
      if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        procs_failed = 1;
        fprintf(stderr, "  [%s] child %d failed (status 0x%x)\n",
                procs_sys_name(cfgs[c].sys), i, st);
      }
      if (counts[c][i] < 0) {
        errors[c]++;
        counts[c][i] = 0;
      }
      total += counts[c][i];
    }
    bench_db_remove(path[c]);
    rate[c] = (double)total / secs[c];
  }
  procs_ctl_free(ctl);
}

/* Fairness among peers: the smallest process's count over the mean count
** of its role (producers, consumers), the lower of the two.  1.0 = every
** producer did as much as every other, and every consumer likewise; near
** 0 = one of them was starved by its peers. */
static double procs_min_share(const int64_t *counts, int pairs) {
  double worst = 1.0;
  for (int role = 0; role < 2; role++) {
    const int64_t *v = counts + role * pairs;
    double sum = 0;
    for (int i = 0; i < pairs; i++) sum += (double)v[i];
    if (sum <= 0) return 0.0;
    for (int i = 0; i < pairs; i++)
      if ((double)v[i] / (sum / pairs) < worst)
        worst = (double)v[i] / (sum / pairs);
  }
  return worst;
}

/* --quick leaves out raw-WAL; --mq-only leaves out both baselines. */
static int procs_skip(const bench_opts *o, const procs_cfg *cfg) {
  return (o->quick && cfg->sys == PROCS_WAL) ||
         (o->mq_only && cfg->sys != PROCS_MQ);
}

int main(int argc, char **argv) {
  static const procs_cfg cfgs[] = {{PROCS_MQ, 1},    {PROCS_MQ, 4},
                                   {PROCS_NAIVE, 1}, {PROCS_NAIVE, 4},
                                   {PROCS_WAL, 1},   {PROCS_WAL, 4}};
  enum { NCFG = sizeof cfgs / sizeof *cfgs };
  _Static_assert(NCFG == PROCS_NCFG, "PROCS_NCFG must count cfgs");
  static int64_t counts[NCFG][1000][2 * PROCS_MAX];
  static int64_t counts_rep[NCFG][2 * PROCS_MAX];
  static double rate[NCFG][1000], sorted[1000];
  int errors[NCFG] = {0};
  bench_opts o;
  bench_opts_parse(&o, argc, argv, 5, 1.0, 4, "");
  int sync = o.sync >= 0 ? o.sync : MQ_SYNC_FULL;
  signal(SIGPIPE, SIG_IGN);

  printf("bench_procs: producers put %d B messages, consumers get+ack; one "
         "process per role instance, each with its own handle.\n"
         "min share = smallest count / mean count of its role (producers or "
         "consumers), worst rep: 1.0 = even, near 0 = starved by its peers.\n"
         "get/put = consumer ops / producer ops: near 0 = consumers locked "
         "out by producers.\n",
         PROCS_PAYLOAD);
  bench_header("bench_procs", "processes sharing one file", sync, &o);
  int skip[NCFG];
  for (int c = 0; c < NCFG; c++) skip[c] = procs_skip(&o, &cfgs[c]);
  for (int rep = 0; rep < o.reps; rep++) {
    double r[NCFG];
    procs_rep(&o, cfgs, sync, rep, skip, counts_rep, r, errors);
    for (int c = 0; c < NCFG; c++) {
      rate[c][rep] = r[c];
      memcpy(counts[c][rep], counts_rep[c], sizeof counts_rep[c]);
      if (o.verbose && !skip[c])
        fprintf(stderr, "  rep %d %s %dP+%dC: %.0f ops/s\n", rep,
                procs_sys_name(cfgs[c].sys), cfgs[c].pairs, cfgs[c].pairs,
                r[c]);
    }
  }

  printf("%-16s | %10s | %7s | %9s | %9s | %7s | %9s | %s\n", "config",
         "total op/s", "vs 1+1", "put/s", "get+ack/s", "get/put",
         "min share", "min..max per process");
  double med[NCFG];
  for (int c = 0; c < NCFG; c++) {
    int pairs = cfgs[c].pairs, n = 2 * pairs, mid = 0;
    if (skip[c]) continue;
    memcpy(sorted, rate[c], sizeof(double) * (size_t)o.reps);
    med[c] = bench_median(sorted, o.reps);
    /* The repetition closest to the median, to show its counts. */
    for (int rep = 1; rep < o.reps; rep++) {
      double d = rate[c][rep] - med[c], dm = rate[c][mid] - med[c];
      if (d * d < dm * dm) mid = rep;
    }
    double put = 0, get = 0, worst = 1.0;
    int zero = 0;
    int64_t lo = INT64_MAX, hi = 0;
    for (int i = 0; i < n; i++) {
      int64_t v = counts[c][mid][i];
      if (i < pairs) put += (double)v;
      else get += (double)v;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    for (int rep = 0; rep < o.reps; rep++) {
      double sh = procs_min_share(counts[c][rep], pairs);
      for (int i = 0; i < n; i++) zero += counts[c][rep][i] == 0;
      if (sh < worst) worst = sh;
    }
    char label[32], share[16];
    snprintf(label, sizeof label, "%s %dP+%dC", procs_sys_name(cfgs[c].sys),
             pairs, pairs);
    if (pairs > 1) snprintf(share, sizeof share, "%.2f", worst);
    else snprintf(share, sizeof share, "-");
    double base = pairs == 1 ? med[c] : med[c - 1];
    printf("%-16s | %10.0f | %6.2fx | %9.0f | %9.0f | %7.2f | %9s | "
           "%lld..%lld",
           label, med[c], base > 0 ? med[c] / base : 0.0,
           put + get > 0 ? rate[c][mid] * put / (put + get) : 0.0,
           put + get > 0 ? rate[c][mid] * get / (put + get) : 0.0,
           put > 0 ? get / put : 0.0, share, (long long)lo, (long long)hi);
    if (cfgs[c].sys == PROCS_MQ && pairs > 1)
      printf("  (target >= 0.8x: %s)",
             base > 0 && med[c] / base >= 0.8 ? "met" : "NOT met");
    if (zero) printf("  %d process-runs made NO progress", zero);
    if (errors[c]) printf("  errors %d", errors[c]);
    printf("\n");
    if (pairs > 1) {
      printf("%-16s   counts of the median rep: P", "");
      for (int i = 0; i < n; i++)
        printf(" %lld%s", (long long)counts[c][mid][i],
               i == pairs - 1 ? " | C" : "");
      printf("\n");
    }
  }
  return procs_failed;
}
