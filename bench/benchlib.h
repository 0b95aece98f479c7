/*
** benchlib.h -- what the benchmark programs in bench/ share: command-line
** options, clocks, medians, scratch files, and the raw-SQLite baseline.
**
** Every benchmark compares mq with a plain SQLite program doing the naive
** thing, in the same run, on the same disk, interleaving the two, because
** on a shared machine only ratios measured side by side mean anything.  The
** baseline lives here, once, so that all three programs measure the same
** naive queue: table jobs(id, body, visible_at, lease) with an index on
** visible_at, claimed by an UPDATE ... RETURNING on the oldest visible row
** and deleted by id.  It is the queue people write on SQLite before they
** reach for a library, and the number mq has to beat.
**
** Nothing here is part of the library; this code may print and exit.
*/
#ifndef BENCHLIB_H
#define BENCHLIB_H

#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "mq.h"

/* Options every benchmark accepts (bench_opts_parse). */
typedef struct bench_opts {
  int reps;          /* runs of each configuration; the median is reported */
  double secs;       /* measured time of one run, in seconds */
  int slices;        /* a run is cut into this many slices, interleaved
                        with the other configurations' slices */
  char dir[1024];    /* where the scratch files go (a real disk: fsync cost
                        is what is being measured) */
  int sync;          /* -1 = the program's default set of modes, else one
                        MQ_SYNC_* mode */
  int quick;         /* a smaller matrix, for smoke tests */
  char only[64];     /* run only the rows whose label contains this */
  int mq_only;       /* skip the baselines (for profiling mq alone) */
  int verbose;       /* print every run's result to stderr */
} bench_opts;

/* Parse argv into *o, after setting the defaults given.  Unknown options
** print the usage text (common part plus extra_usage) and exit(2). */
void bench_opts_parse(bench_opts *o, int argc, char **argv, int def_reps,
                      double def_secs, int def_slices,
                      const char *extra_usage);

/* Seconds on a monotonic clock, for measuring durations. */
double bench_now(void);
/* Wall-clock milliseconds, the naive queue's notion of "now". */
int64_t bench_wall_ms(void);
/* Sleep for secs seconds (restarted when a signal interrupts it). */
void bench_sleep(double secs);

/* The median of v[0..n-1] (sorts v in place); 0 for n == 0. */
double bench_median(double *v, int n);

/* ------------------------------------------------------------------------
** Interleaved runs.  A pool holds several teams of threads, one team per
** system being compared (mq, a baseline, ...), each with its own file and
** connections, all alive at once.  bench_pool_run lets one team work for a
** slice of time while the others sleep; the caller alternates teams in
** short slices, so that a burst of load from a neighbour (a slow fsync
** lasting a second, say) falls on every team alike instead of on whichever
** one happened to be running.
*/
typedef struct bench_pool bench_pool;

typedef struct bench_team_def {
  int threads;
  void *arg;
  /* Called in each new thread before it reports ready; returns that
  ** thread's state (its connection, counters). */
  void *(*init)(void *arg, int idx);
  /* One unit of work; returns how many ops it completed. */
  int64_t (*step)(void *state);
  /* Called in the thread when the pool is freed. */
  void (*fini)(void *state);
} bench_team_def;

bench_pool *bench_pool_new(void);
/* Start a team (threads parked, ready); returns its index. */
int bench_pool_add(bench_pool *p, const bench_team_def *def);
/* Let team work for secs; returns the seconds it actually ran (until its
** last thread finished the step it was in) and adds its ops to *ops. */
double bench_pool_run(bench_pool *p, int team, double secs, int64_t *ops);
/* Stop and join every thread (fini runs in each), then free the pool. */
void bench_pool_free(bench_pool *p);

/* "FULL", "NORMAL" or "OFF". */
const char *bench_sync_name(int sync);

/* Print the header line every table starts with: program, SQLite version,
** sync mode, repetitions, run length, directory. */
void bench_header(const char *prog, const char *what, int sync,
                  const bench_opts *o);

/* Build a fresh scratch file name dir/<tag>-<pid>.db into buf and remove
** any leftover file of that name and its -wal, -shm and -journal. */
void bench_db_path(char *buf, size_t cap, const bench_opts *o,
                   const char *tag);
/* Remove a database file and its companions. */
void bench_db_remove(const char *path);

/* Fill buf with n bytes that do not compress. */
void bench_fill(void *buf, size_t n, uint64_t seed);

/* Print msg and exit(1): for failures that make a run meaningless. */
void bench_die(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2), noreturn))
#endif
    ;

/* Open an mq store on path with the given sync mode and create queue
** "bench" in it; exits on failure. */
mq_store *bench_mq_open(const char *path, int sync);
/* The same in a file of that page size (mq_store_options.page_size). */
mq_store *bench_mq_open_paged(const char *path, int sync, int page_size);

/* ------------------------------------------------------------------------
** The raw-SQLite baseline.
*/
#define BENCH_RAW_NAIVE 0 /* SQLite defaults: rollback journal */
#define BENCH_RAW_WAL 1   /* the same statements with journal_mode=WAL */

typedef struct bench_raw {
  sqlite3 *db;
  sqlite3_stmt *ins, *claim, *del, *begin, *commit, *rollback;
  int64_t lease;       /* the lease token the next claim writes */
  unsigned char *body; /* the last claimed body, copied like a consumer */
  size_t body_cap;
  int errors;          /* SQLITE_BUSY and other failures, for the report */
  char last_err[256];
} bench_raw;

/* Create the naive schema in a new file at path, in the journal mode of
** kind; exits on failure. */
void bench_raw_create(const char *path, int kind);
/* The same with PRAGMA page_size first (0: SQLite's default). */
void bench_raw_create_paged(const char *path, int kind, int page_size);

/* Open one connection (one per thread or process) with busy_timeout 10000
** and PRAGMA synchronous matching the MQ_SYNC_* mode; exits on failure. */
void bench_raw_open(bench_raw *r, const char *path, int kind, int sync);
void bench_raw_close(bench_raw *r);

/* Each returns SQLITE_OK, or the SQLite error (counted in r->errors). */
int bench_raw_put(bench_raw *r, const void *data, size_t len);
/* SQLITE_ROW with *id set when a job was claimed, SQLITE_DONE when none
** was visible. */
int bench_raw_claim(bench_raw *r, int64_t *id);
int bench_raw_delete(bench_raw *r, int64_t id);
/* BEGIN IMMEDIATE / COMMIT / ROLLBACK for the batched variants. */
int bench_raw_begin(bench_raw *r);
int bench_raw_commit(bench_raw *r);
void bench_raw_rollback(bench_raw *r);

/* "raw-naive" or "raw-WAL". */
const char *bench_raw_name(int kind);

#endif /* BENCHLIB_H */
