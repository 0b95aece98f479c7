/*
** test_gate.c -- the writer gate shared by processes on one file.
**
** - Its shared-memory object exists while a handle is open and is removed
**   by the last one to close, so opening many stores leaves no litter in
**   /dev/shm.
** - A process killed while it holds its turn, or while it waits for it,
**   must not stall everyone behind it: the next writers skip dead tickets.
**   Several dead tickets in a row once hung every writer forever.
** The gate is driven through its internal interface; the processes are
** real (fork + SIGKILL).  A watchdog turns a hang into a failure.
*/
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "harness.h"
#include "mqi.h"

static int shm_exists(const char *path) {
  struct stat st;
  char name[128];
  if (stat(path, &st) != 0) return -1;
  snprintf(name, sizeof name, "/dev/shm/mq-%llx-%llx", (unsigned long long)st.st_dev,
           (unsigned long long)st.st_ino);
  return access(name, F_OK) == 0;
}

static void shm_removed_by_last_close(void) {
  const char *p = test_path("gate-shm");
  mq_store *a = test_open(p, MQ_SYNC_NORMAL);
  if (shm_exists(p) == 0) {
    fprintf(stderr, "  no /dev/shm here: the gate is private; skipping\n");
    mq_store_close(a);
    test_unlink_store(p);
    return;
  }
  mq_store *b = test_open(p, MQ_SYNC_NORMAL);
  CHECK(shm_exists(p) == 1);
  mq_store_close(a);
  CHECK(shm_exists(p) == 1); /* b still uses it */
  mq_store_close(b);
  CHECK(shm_exists(p) == 0);
  /* Opening again after the unlink makes a fresh, working gate. */
  a = test_open(p, MQ_SYNC_NORMAL);
  CHECK_OK(mq_queue_create(a, "q", NULL));
  CHECK_OK(mq_put(a, "q", "x", 1, NULL, NULL));
  mq_store_close(a);
  CHECK(shm_exists(p) == 0);
  test_unlink_store(p);
}

/* A child takes a ticket (holding or waiting) and is killed. */
static pid_t child_with_ticket(mqi_gate *g, int fd) {
  pid_t pid = fork();
  if (pid == 0) {
    mqi_gate_enter(g); /* may wait: then it dies waiting */
    (void)!write(fd, "x", 1);
    for (;;) pause();
  }
  return pid;
}

static void dead_tickets_are_skipped(void) {
  const char *p = test_path("gate-dead");
  mq_store *s = test_open(p, MQ_SYNC_NORMAL);
  mq_store_close(s);
  uint64_t dev, ino;
  CHECK_OK(mqi_os_file_id(p, &dev, &ino));
  mqi_gate *g = mqi_gate_open(dev, ino, 0600);
  CHECK(g != NULL);
  if (!g) return;
  int fds[2];
  CHECK(pipe(fds) == 0);
  /* The first child holds its turn; the next two queue behind it.  All
  ** three die.  Then this process must still get its turn. */
  pid_t holder = child_with_ticket(g, fds[1]);
  char c;
  CHECK(read(fds[0], &c, 1) == 1); /* the holder has its turn */
  pid_t w1 = child_with_ticket(g, fds[1]);
  pid_t w2 = child_with_ticket(g, fds[1]);
  /* A moment for the waiters to take their tickets (this only picks the
  ** kill point; a waiter killed before taking one just tests less). */
  struct timespec ts = {0, 100 * 1000000L};
  nanosleep(&ts, NULL);
  kill(w1, SIGKILL);
  kill(w2, SIGKILL);
  kill(holder, SIGKILL);
  waitpid(w1, NULL, 0);
  waitpid(w2, NULL, 0);
  waitpid(holder, NULL, 0);
  alarm(20); /* a hang here is the bug */
  uint32_t t1 = mqi_gate_enter(g);
  mqi_gate_leave(g, t1);
  uint32_t t2 = mqi_gate_enter(g); /* and the gate keeps working */
  mqi_gate_leave(g, t2);
  alarm(0);
  /* Nobody else is left: our two turns came one after the other. */
  CHECK(t2 == t1 + 1);
  close(fds[0]);
  close(fds[1]);
  mqi_gate_close(g);
  test_unlink_store(p);
}

int main(void) {
  TEST(shm_removed_by_last_close);
  TEST(dead_tickets_are_skipped);
  return test_done();
}
