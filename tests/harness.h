/*
** harness.h -- the tiny test harness every tests/test_*.c uses.
**
** A test program is a main() that calls TEST(fn) for each case and ends
** with `return test_done();`.  A failed CHECK prints the file, line and
** expression and marks the program failed, but the case goes on, so one run
** shows every broken assertion.  The program exits non-zero if any check
** failed; ctest reads only the exit status.
**
** Time in tests is injected: test_clock is an mq_clock_fn over a variable
** the test moves by hand (test_now_ms), so nothing here ever sleeps to test a
** timeout.  Files go under $MQ_TEST_TMPDIR (set by ctest) or /tmp, and are
** removed by test_done when every check passed.
*/
#ifndef MQ_TEST_HARNESS_H
#define MQ_TEST_HARNESS_H

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mq.h"

static int test_failures;
static int test_checks;
static const char *test_current = "";

#define CHECK(cond)                                                         \
  do {                                                                      \
    test_checks++;                                                          \
    if (!(cond)) {                                                          \
      test_failures++;                                                      \
      fprintf(stderr, "%s:%d: [%s] CHECK failed: %s\n", __FILE__, __LINE__, \
              test_current, #cond);                                         \
    }                                                                       \
  } while (0)

/* Compare a result code, naming both codes when they differ. */
#define CHECK_RC(expr, want)                                                  \
  do {                                                                        \
    int rc_ = (expr), want_ = (want);                                         \
    test_checks++;                                                            \
    if (rc_ != want_) {                                                       \
      test_failures++;                                                        \
      fprintf(stderr, "%s:%d: [%s] %s returned %d (%s), expected %d (%s)\n",  \
              __FILE__, __LINE__, test_current, #expr, rc_, mq_errstr(rc_),   \
              want_, mq_errstr(want_));                                       \
    }                                                                         \
  } while (0)

#define CHECK_OK(expr) CHECK_RC(expr, MQ_OK)

#define TEST(fn)                                                   \
  do {                                                             \
    int before_ = test_failures;                                   \
    test_current = #fn;                                            \
    fn();                                                          \
    fprintf(stderr, "%s %s\n", test_failures == before_ ? "ok  " : "FAIL", #fn); \
  } while (0)

/* Whether name is one test_path made in this process ("TAG-PID-N.db"),
** or one of its side files (-wal, -shm, a name with more after it). */
static inline int test_own_file(const char *name) {
  char mark[32];
  snprintf(mark, sizeof mark, "-%ld-", (long)getpid());
  for (const char *at = strstr(name, mark); at; at = strstr(at + 1, mark)) {
    const char *d = at + strlen(mark), *e = d;
    while (*e >= '0' && *e <= '9') e++;
    if (e > d && strncmp(e, ".db", 3) == 0) return 1;
  }
  return 0;
}

/* After a run with no failure, remove what this process left under the
** test directory, so repeated runs do not fill the disk; a failed run
** keeps its files to be looked at. */
static inline void test_remove_files(void) {
  const char *dir = getenv("MQ_TEST_TMPDIR");
  if (!dir || !*dir) dir = "/tmp";
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *e;
  char path[1024];
  while ((e = readdir(d)) != NULL) {
    if (!test_own_file(e->d_name)) continue;
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    unlink(path);
  }
  closedir(d);
}

static int test_done(void) {
  fprintf(stderr, "%d checks, %d failed\n", test_checks, test_failures);
  if (!test_failures) test_remove_files();
  return test_failures ? 1 : 0;
}

/* The injected clock: tests set test_now_ms and pass test_clock. */
static int64_t test_now_ms = 1700000000000LL;
static inline int64_t test_clock(void *ctx) {
  (void)ctx;
  return test_now_ms;
}

/* A fresh path for a store file, unique per process and call; any earlier
** file of that name and its -wal/-shm are removed. */
static inline const char *test_path(const char *tag) {
  static char buf[8][512];
  static int next;
  static unsigned counter;
  const char *dir = getenv("MQ_TEST_TMPDIR");
  char *p = buf[next++ % 8];
  if (!dir || !*dir) dir = "/tmp";
  mkdir(dir, 0700);
  snprintf(p, 512, "%s/%s-%ld-%u.db", dir, tag, (long)getpid(), counter++);
  char side[600];
  unlink(p);
  snprintf(side, sizeof side, "%s-wal", p);
  unlink(side);
  snprintf(side, sizeof side, "%s-shm", p);
  unlink(side);
  return p;
}

static inline void test_unlink_store(const char *path) {
  char side[600];
  unlink(path);
  snprintf(side, sizeof side, "%s-wal", path);
  unlink(side);
  snprintf(side, sizeof side, "%s-shm", path);
  unlink(side);
}

/* Open a store on the injected clock with the given sync mode. */
static inline mq_store *test_open(const char *path, int sync) {
  mq_store_options o;
  mq_store *s = NULL;
  mq_store_options_init(&o);
  o.sync = sync;
  o.clock = test_clock;
  o.min_free_bytes = 0;
  int rc = mq_store_open(path, &o, &s);
  if (rc != MQ_OK) {
    fprintf(stderr, "test_open(%s): %s: %s\n", path, mq_errstr(rc), mq_errmsg(NULL));
    exit(2);
  }
  return s;
}

#endif
