/*
** benchlib.c -- the shared half of the benchmarks: options, clocks,
** medians, scratch files, the pool that lets several systems take turns in
** short slices, and the raw-SQLite baseline (see benchlib.h).
**
** The pool exists because one benchmark run after another is at the mercy
** of the machine: on a shared VM the cost of an fsync swings by 50x within
** seconds.  Keeping every system's threads alive and alternating them
** every few tens of milliseconds gives each the same mix of good and bad
** moments, so the ratios hold still even when the rates do not.
**
** The baseline is deliberately the straightforward program: prepared
** statements, one connection per thread or process, SQLite's own busy
** handler (sqlite3_busy_timeout) and nothing clever.  Batched variants use
** BEGIN IMMEDIATE so that two writers never deadlock on a lock upgrade,
** which a deferred BEGIN would do under contention; that is the one
** concession made to the baseline, so that its failures are its real limits
** and not a misuse.  A failure of the baseline is counted and reported, not
** fatal: starving or timing out under contention is part of what the
** benchmarks show.
*/
#include "benchlib.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef MQ_BENCH_DIR
#define MQ_BENCH_DIR "bench-data"
#endif

void bench_die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("bench: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

static void bench_usage(const char *prog, const char *extra) {
  fprintf(stderr,
          "usage: %s [options]\n"
          "  --reps N     runs per configuration, median reported "
          "(interleaved)\n"
          "  --secs S     measured seconds per run\n"
          "  --slices K   cut each run into K slices, interleaved with the\n"
          "               other systems' slices\n"
          "  --dir D      directory for scratch files (default %s)\n"
          "  --sync M     full | normal | off (default: the program's set)\n"
          "  --quick      a reduced matrix (smoke test)\n"
          "  --only TEXT  only the rows whose label contains TEXT\n"
          "  --mq-only    skip the baselines (to profile mq alone)\n"
          "  -v           print every run's result (to stderr)\n"
          "%s",
          prog, MQ_BENCH_DIR, extra ? extra : "");
  exit(2);
}

/* mkdir -p for the scratch directory: a fresh build tree has none. */
static void bench_mkdirs(const char *dir) {
  char tmp[1024];
  size_t n = strlen(dir);
  if (n == 0 || n >= sizeof tmp) bench_die("bad --dir '%s'", dir);
  memcpy(tmp, dir, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (tmp[i] == '/' || tmp[i] == '\0') {
      char c = tmp[i];
      tmp[i] = '\0';
      if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
        bench_die("mkdir %s: %s", tmp, strerror(errno));
      tmp[i] = c;
    }
  }
}

void bench_opts_parse(bench_opts *o, int argc, char **argv, int def_reps,
                      double def_secs, int def_slices,
                      const char *extra_usage) {
  memset(o, 0, sizeof *o);
  o->reps = def_reps;
  o->secs = def_secs;
  o->sync = -1;
  o->slices = def_slices;
  snprintf(o->dir, sizeof o->dir, "%s", MQ_BENCH_DIR);
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--reps") == 0 && v) {
      o->reps = atoi(v);
      i++;
    } else if (strcmp(a, "--secs") == 0 && v) {
      o->secs = atof(v);
      i++;
    } else if (strcmp(a, "--slices") == 0 && v) {
      o->slices = atoi(v);
      i++;
    } else if (strcmp(a, "--dir") == 0 && v) {
      snprintf(o->dir, sizeof o->dir, "%s", v);
      i++;
    } else if (strcmp(a, "--sync") == 0 && v) {
      if (strcmp(v, "full") == 0) o->sync = MQ_SYNC_FULL;
      else if (strcmp(v, "normal") == 0) o->sync = MQ_SYNC_NORMAL;
      else if (strcmp(v, "off") == 0) o->sync = MQ_SYNC_OFF;
      else bench_usage(argv[0], extra_usage);
      i++;
    } else if (strcmp(a, "--quick") == 0) {
      o->quick = 1;
    } else if (strcmp(a, "--only") == 0 && v) {
      snprintf(o->only, sizeof o->only, "%s", v);
      i++;
    } else if (strcmp(a, "--mq-only") == 0) {
      o->mq_only = 1;
    } else if (strcmp(a, "-v") == 0) {
      o->verbose = 1;
    } else {
      bench_usage(argv[0], extra_usage);
    }
  }
  if (o->reps < 1 || o->reps > 1000 || !(o->secs > 0.0) || o->secs > 3600 ||
      o->slices < 1 || o->slices > 1000)
    bench_usage(argv[0], extra_usage);
  bench_mkdirs(o->dir);
}

double bench_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int64_t bench_wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void bench_sleep(double secs) {
  struct timespec ts;
  ts.tv_sec = (time_t)secs;
  ts.tv_nsec = (long)((secs - (double)ts.tv_sec) * 1e9);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static int bench_cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

double bench_median(double *v, int n) {
  if (n <= 0) return 0.0;
  qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
  if (n % 2) return v[n / 2];
  return (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

/* ------------------------------------------------------------------------
** Interleaved runs: teams of threads parked on one condition variable.
** Only the team named by `active` works, until `stop` is set; it then
** counts itself back into `parked`, and the controller waits for all of
** them before the next slice, so two teams never overlap.
*/
#define BENCH_POOL_TEAMS 8
#define BENCH_POOL_THREADS 16

typedef struct bench_pool_thread {
  pthread_t th;
  bench_pool *pool;
  int team;
  void *state;
  int64_t ops; /* written by the thread while it works, read by the
                  controller once the thread is parked */
} bench_pool_thread;

struct bench_pool {
  pthread_mutex_t mu;
  pthread_cond_t go, parked_cv;
  int active;        /* the team that may work, -1 for none */
  uint64_t gen;      /* bumped for every slice */
  int quit;
  int parked;        /* threads of the active team back from the slice */
  int ready;         /* threads started and initialised */
  atomic_int stop;
  int nteams;
  bench_team_def def[BENCH_POOL_TEAMS];
  int nthreads[BENCH_POOL_TEAMS];
  bench_pool_thread t[BENCH_POOL_TEAMS][BENCH_POOL_THREADS];
};

static void *bench_pool_main(void *arg) {
  bench_pool_thread *t = arg;
  bench_pool *p = t->pool;
  const bench_team_def *d = &p->def[t->team];
  uint64_t seen = 0;
  t->state = d->init(d->arg, (int)(t - p->t[t->team]));
  pthread_mutex_lock(&p->mu);
  p->ready++;
  pthread_cond_broadcast(&p->parked_cv);
  for (;;) {
    while (!p->quit && (p->active != t->team || p->gen == seen))
      pthread_cond_wait(&p->go, &p->mu);
    if (p->quit) break;
    seen = p->gen;
    pthread_mutex_unlock(&p->mu);
    while (!atomic_load_explicit(&p->stop, memory_order_relaxed))
      t->ops += d->step(t->state);
    pthread_mutex_lock(&p->mu);
    p->parked++;
    pthread_cond_broadcast(&p->parked_cv);
  }
  pthread_mutex_unlock(&p->mu);
  d->fini(t->state);
  return NULL;
}

bench_pool *bench_pool_new(void) {
  bench_pool *p = calloc(1, sizeof *p);
  if (!p) bench_die("out of memory");
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->go, NULL);
  pthread_cond_init(&p->parked_cv, NULL);
  p->active = -1;
  atomic_init(&p->stop, 0);
  return p;
}

int bench_pool_add(bench_pool *p, const bench_team_def *def) {
  int team = p->nteams;
  if (team == BENCH_POOL_TEAMS || def->threads < 1 ||
      def->threads > BENCH_POOL_THREADS)
    bench_die("bench_pool_add: too many teams or threads");
  p->def[team] = *def;
  p->nthreads[team] = def->threads;
  p->nteams++;
  pthread_mutex_lock(&p->mu);
  int want = p->ready + def->threads;
  pthread_mutex_unlock(&p->mu);
  for (int i = 0; i < def->threads; i++) {
    bench_pool_thread *t = &p->t[team][i];
    t->pool = p;
    t->team = team;
    if (pthread_create(&t->th, NULL, bench_pool_main, t) != 0)
      bench_die("pthread_create failed");
  }
  pthread_mutex_lock(&p->mu);
  while (p->ready < want) pthread_cond_wait(&p->parked_cv, &p->mu);
  pthread_mutex_unlock(&p->mu);
  return team;
}

double bench_pool_run(bench_pool *p, int team, double secs, int64_t *ops) {
  int n = p->nthreads[team];
  pthread_mutex_lock(&p->mu);
  for (int i = 0; i < n; i++) p->t[team][i].ops = 0;
  atomic_store(&p->stop, 0);
  p->active = team;
  p->gen++;
  p->parked = 0;
  double t0 = bench_now();
  pthread_cond_broadcast(&p->go);
  pthread_mutex_unlock(&p->mu);
  bench_sleep(secs);
  atomic_store(&p->stop, 1);
  pthread_mutex_lock(&p->mu);
  while (p->parked < n) pthread_cond_wait(&p->parked_cv, &p->mu);
  double t1 = bench_now();
  p->active = -1;
  for (int i = 0; i < n; i++) *ops += p->t[team][i].ops;
  pthread_mutex_unlock(&p->mu);
  return t1 - t0;
}

void bench_pool_free(bench_pool *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  p->quit = 1;
  pthread_cond_broadcast(&p->go);
  pthread_mutex_unlock(&p->mu);
  for (int team = 0; team < p->nteams; team++)
    for (int i = 0; i < p->nthreads[team]; i++)
      pthread_join(p->t[team][i].th, NULL);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->go);
  pthread_cond_destroy(&p->parked_cv);
  free(p);
}

const char *bench_sync_name(int sync) {
  switch (sync) {
  case MQ_SYNC_FULL: return "FULL";
  case MQ_SYNC_NORMAL: return "NORMAL";
  case MQ_SYNC_OFF: return "OFF";
  default: return "?";
  }
}

void bench_header(const char *prog, const char *what, int sync,
                  const bench_opts *o) {
  printf("\n== %s: %s | SQLite %s (mq links %s) | sync %s | median of %d "
         "reps x %.2f s in %d slices | dir %s ==\n",
         prog, what, sqlite3_libversion(), mq_sqlite_version(),
         bench_sync_name(sync), o->reps, o->secs, o->slices, o->dir);
  fflush(stdout);
}

void bench_db_remove(const char *path) {
  static const char *const suffixes[] = {"", "-wal", "-shm", "-journal"};
  char buf[1100];
  for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++) {
    snprintf(buf, sizeof buf, "%s%s", path, suffixes[i]);
    unlink(buf);
  }
}

void bench_db_path(char *buf, size_t cap, const bench_opts *o,
                   const char *tag) {
  int n = snprintf(buf, cap, "%s/%s-%ld.db", o->dir, tag, (long)getpid());
  if (n < 0 || (size_t)n >= cap) bench_die("path too long in %s", o->dir);
  bench_db_remove(buf);
}

void bench_fill(void *buf, size_t n, uint64_t seed) {
  unsigned char *p = buf;
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    p[i] = (unsigned char)(x >> 24);
  }
}

mq_store *bench_mq_open(const char *path, int sync) { return bench_mq_open_paged(path, sync, 0); }

mq_store *bench_mq_open_paged(const char *path, int sync, int page_size) {
  mq_store_options so;
  mq_store *s = NULL;
  mq_store_options_init(&so);
  so.sync = sync;
  so.page_size = page_size;
  int rc = mq_store_open(path, &so, &s);
  if (rc != MQ_OK)
    bench_die("mq_store_open %s: %s (%s)", path, mq_errstr(rc),
              mq_errmsg(NULL));
  rc = mq_queue_create(s, "bench", NULL);
  if (rc != MQ_OK)
    bench_die("mq_queue_create: %s (%s)", mq_errstr(rc), mq_errmsg(s));
  return s;
}

/* ------------------------------------------------------------------------
** The raw-SQLite baseline.
*/
const char *bench_raw_name(int kind) {
  return kind == BENCH_RAW_WAL ? "raw-WAL" : "raw-naive";
}

static void bench_raw_exec(sqlite3 *db, const char *sql) {
  char *err = NULL;
  if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
    bench_die("sqlite: %s: %s", sql, err ? err : "?");
}

void bench_raw_create(const char *path, int kind) { bench_raw_create_paged(path, kind, 0); }

void bench_raw_create_paged(const char *path, int kind, int page_size) {
  sqlite3 *db = NULL;
  if (sqlite3_open(path, &db) != SQLITE_OK)
    bench_die("sqlite3_open %s: %s", path, db ? sqlite3_errmsg(db) : "?");
  sqlite3_busy_timeout(db, 10000);
  if (page_size > 0) {
    char sql[40];
    snprintf(sql, sizeof sql, "PRAGMA page_size=%d", page_size);
    bench_raw_exec(db, sql);
  }
  if (kind == BENCH_RAW_WAL) bench_raw_exec(db, "PRAGMA journal_mode=WAL");
  bench_raw_exec(db,
                 "CREATE TABLE jobs(id INTEGER PRIMARY KEY, body BLOB, "
                 "visible_at INTEGER NOT NULL, lease INTEGER);"
                 "CREATE INDEX jobs_visible ON jobs(visible_at);");
  sqlite3_close(db);
}

static sqlite3_stmt *bench_raw_prepare(sqlite3 *db, const char *sql) {
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st,
                         NULL) != SQLITE_OK)
    bench_die("prepare %s: %s", sql, sqlite3_errmsg(db));
  return st;
}

void bench_raw_open(bench_raw *r, const char *path, int kind, int sync) {
  memset(r, 0, sizeof *r);
  if (sqlite3_open(path, &r->db) != SQLITE_OK)
    bench_die("sqlite3_open %s: %s", path,
              r->db ? sqlite3_errmsg(r->db) : "?");
  sqlite3_busy_timeout(r->db, 10000);
  if (kind == BENCH_RAW_WAL) bench_raw_exec(r->db, "PRAGMA journal_mode=WAL");
  bench_raw_exec(r->db, sync == MQ_SYNC_FULL     ? "PRAGMA synchronous=FULL"
                        : sync == MQ_SYNC_NORMAL ? "PRAGMA synchronous=NORMAL"
                                                 : "PRAGMA synchronous=OFF");
  /* The WAL folded in every ~4 MB whatever the page size, as mq does. */
  sqlite3_stmt *ps = bench_raw_prepare(r->db, "PRAGMA page_size");
  int page = sqlite3_step(ps) == SQLITE_ROW ? sqlite3_column_int(ps, 0) : 0;
  sqlite3_finalize(ps);
  sqlite3_wal_autocheckpoint(r->db, page > 0 ? 4096000 / page : 1000);
  r->ins = bench_raw_prepare(
      r->db, "INSERT INTO jobs(body, visible_at) VALUES(?1, ?2)");
  r->claim = bench_raw_prepare(
      r->db,
      "UPDATE jobs SET visible_at=?1+30000, lease=?2 WHERE id=(SELECT id "
      "FROM jobs WHERE visible_at<=?1 ORDER BY visible_at,id LIMIT 1) "
      "RETURNING id, body");
  r->del = bench_raw_prepare(r->db, "DELETE FROM jobs WHERE id=?1");
  r->begin = bench_raw_prepare(r->db, "BEGIN IMMEDIATE");
  r->commit = bench_raw_prepare(r->db, "COMMIT");
  r->rollback = bench_raw_prepare(r->db, "ROLLBACK");
  r->lease = ((int64_t)getpid() << 32) ^ (int64_t)(intptr_t)r;
}

void bench_raw_close(bench_raw *r) {
  sqlite3_finalize(r->ins);
  sqlite3_finalize(r->claim);
  sqlite3_finalize(r->del);
  sqlite3_finalize(r->begin);
  sqlite3_finalize(r->commit);
  sqlite3_finalize(r->rollback);
  sqlite3_close(r->db);
  free(r->body);
  r->db = NULL;
  r->body = NULL;
}

/* Record a failure: the first message is kept for the report. */
static int bench_raw_fail(bench_raw *r, int rc) {
  if (r->errors++ == 0)
    snprintf(r->last_err, sizeof r->last_err, "%s (%s)", sqlite3_errstr(rc),
             sqlite3_errmsg(r->db));
  return rc;
}

/* Step a statement that returns no rows, then reset it. */
static int bench_raw_run(bench_raw *r, sqlite3_stmt *st) {
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? SQLITE_OK : bench_raw_fail(r, rc);
}

int bench_raw_put(bench_raw *r, const void *data, size_t len) {
  sqlite3_bind_blob(r->ins, 1, data, (int)len, SQLITE_STATIC);
  sqlite3_bind_int64(r->ins, 2, bench_wall_ms());
  int rc = bench_raw_run(r, r->ins);
  sqlite3_clear_bindings(r->ins);
  return rc;
}

int bench_raw_claim(bench_raw *r, int64_t *id) {
  sqlite3_bind_int64(r->claim, 1, bench_wall_ms());
  sqlite3_bind_int64(r->claim, 2, ++r->lease);
  int rc = sqlite3_step(r->claim);
  if (rc == SQLITE_ROW) {
    *id = sqlite3_column_int64(r->claim, 0);
    const void *b = sqlite3_column_blob(r->claim, 1);
    size_t n = (size_t)sqlite3_column_bytes(r->claim, 1);
    if (n > r->body_cap) {
      free(r->body);
      r->body = malloc(n);
      if (!r->body) bench_die("out of memory");
      r->body_cap = n;
    }
    if (n) memcpy(r->body, b, n);
    /* RETURNING rows are produced before the statement ends; the update
    ** is committed (autocommit) only when the statement runs to the end. */
    int rc2 = sqlite3_step(r->claim);
    sqlite3_reset(r->claim);
    if (rc2 != SQLITE_DONE) return bench_raw_fail(r, rc2);
    return SQLITE_ROW;
  }
  sqlite3_reset(r->claim);
  if (rc == SQLITE_DONE) return SQLITE_DONE;
  return bench_raw_fail(r, rc);
}

int bench_raw_delete(bench_raw *r, int64_t id) {
  sqlite3_bind_int64(r->del, 1, id);
  return bench_raw_run(r, r->del);
}

int bench_raw_begin(bench_raw *r) { return bench_raw_run(r, r->begin); }

int bench_raw_commit(bench_raw *r) {
  int rc = bench_raw_run(r, r->commit);
  if (rc != SQLITE_OK && !sqlite3_get_autocommit(r->db)) bench_raw_rollback(r);
  return rc;
}

void bench_raw_rollback(bench_raw *r) {
  if (!sqlite3_get_autocommit(r->db)) {
    sqlite3_step(r->rollback);
    sqlite3_reset(r->rollback);
  }
}
