/*
** test_pack_procs.c -- settling a large backlog of packs does not lock
** other processes out.
**
** A PULL endpoint can store millions of messages in packs while no one
** consumes (an edge device offline for a day); the first get then turns
** them all into rows, 4096 messages per transaction, for seconds.  Another
** process writing to the same file meanwhile must get its turn between
** those transactions, not wait for all of them: its busy timeout is shorter
** than the whole settle, and an MQ_EBUSY there would be a put refused for
** no reason.  Real processes, as the gate (gate.c) is shared memory between
** them.  The settle's length is made, not measured: the backlog is sized so
** that it takes many times the writer's busy timeout on any build.
**
** This test stores packs with the internal mqi_pack_put on purpose.
*/
#include "harness.h"
#include "packutil.h"

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>

#define TP_BACKLOG 2000000 /* packed messages: ~500 settle transactions */
#define TP_WRITER_BUSY 300 /* ms: the writer's busy timeout */

static double tp_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* The writer: after "go", put one message at a time until "stop" (or the
** pipe closes); says "ready" after its first put, and at the end how many
** puts it did and how many failed. */
static void tp_writer(const char *path, int in, int out) {
  mq_store_options o;
  mq_store_options_init(&o);
  o.sync = MQ_SYNC_NORMAL;
  o.busy_timeout_ms = TP_WRITER_BUSY;
  o.min_free_bytes = 0;
  mq_store *s = NULL;
  int res[2] = {0, 0}; /* puts, failures */
  char c;
  if (mq_store_open(path, &o, &s) != MQ_OK || read(in, &c, 1) != 1) _exit(3);
  for (int i = 0; i < 100000; i++) {
    struct pollfd p = {in, POLLIN, 0};
    if (poll(&p, 1, 0) != 0) break; /* stop, or the parent is gone */
    int rc = mq_put(s, "side", "w", 1, NULL, NULL);
    if (rc == MQ_OK) {
      if (res[0]++ == 0 && write(out, "r", 1) != 1) _exit(4);
    } else {
      fprintf(stderr, "writer: put: %s: %s\n", mq_errstr(rc), mq_errmsg(s));
      res[1]++;
      break;
    }
  }
  if (write(out, res, sizeof res) != (ssize_t)sizeof res) _exit(4);
  mq_store_close(s);
  _exit(0);
}

static void settle_lets_others_write(void) {
  const char *path = test_path("packprocs");
  mq_store *s = test_open(path, MQ_SYNC_NORMAL);
  CHECK_OK(mq_queue_create(s, "q", NULL));
  CHECK_OK(mq_queue_create(s, "side", NULL));
  for (int i = 0; i < TP_BACKLOG / 8192 + 1; i++) CHECK_OK(pack_n(s, "q", 8192, 16, "b"));
  int go[2], back[2];
  CHECK(pipe(go) == 0 && pipe(back) == 0);
  pid_t pid = fork();
  if (pid == 0) {
    close(go[1]);
    close(back[0]);
    tp_writer(path, go[0], back[1]);
  }
  close(go[0]);
  close(back[1]);
  CHECK(write(go[1], "g", 1) == 1);
  /* The writer is under way (its first put done) before the get starts. */
  char r = 0;
  CHECK(read(back[0], &r, 1) == 1 && r == 'r');
  mq_msg *m = NULL;
  double t0 = tp_now();
  CHECK_OK(mq_get(s, "q", NULL, &m));
  double took = tp_now() - t0;
  CHECK(m && memcmp(mq_msg_data(m), "b-0", 4) == 0);
  mq_msg_free(m);
  CHECK(write(go[1], "s", 1) == 1);
  int res[2] = {-1, -1}, status = 0;
  CHECK(read(back[0], res, sizeof res) == (ssize_t)sizeof res);
  CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
  fprintf(stderr, "  settle of %d messages took %.2f s; the writer put %d, %d failed\n", TP_BACKLOG,
          took, res[0], res[1]);
  /* The claim holds only if the settle outlasted the writer's patience. */
  CHECK(took > 3.0 * TP_WRITER_BUSY / 1000.0);
  CHECK(res[1] == 0);
  CHECK(res[0] > 1); /* puts between the settle's transactions */
  close(go[1]);
  close(back[0]);
  mq_store_close(s);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN); /* a writer that failed is gone when told to stop */
  TEST(settle_lets_others_write);
  return test_done();
}
